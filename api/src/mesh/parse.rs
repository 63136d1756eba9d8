//! From YAML (or JSON) text to validated resources. Every problem in every
//! document is reported, each naming the document, the field and why; if
//! there is any, nothing is returned, so nothing is half-applied.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{API_VERSION, Kind, Object, Resource, validate};

/// One problem in one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// Where the text came from (a file name, or `-`).
    pub source: String,
    /// 1-based document number in the source; 0 for the whole text.
    pub document: usize,
    /// `Kind namespace/name` when known.
    pub resource: Option<String>,
    /// Dotted field path, e.g. `spec.ports[0].port`; empty for the document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(resource) = &self.resource {
            write!(f, " ({resource})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub errors: Vec<DocumentError>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}

/// Parses and validates every document of `text` (YAML, `---`-separated, or
/// JSON). `source` names the text in errors.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Resource>, ParseError> {
    let fail = |document, resource, field: &str, message: String| DocumentError {
        source: source.to_owned(),
        document,
        resource,
        field: field.to_owned(),
        message,
    };
    let documents: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        let text = e.to_string();
        // The parser's resource budget (e.g. at most 1,024 documents per
        // input) protects the control plane; say what to do about it.
        let message = if text.contains("budget breached") {
            format!("input too large for one parse (at most 1024 documents per file): split it into several files ({text})")
        } else {
            format!("not valid YAML: {text}")
        };
        ParseError {
            errors: vec![fail(0, None, "", message)],
        }
    })?;

    let mut resources = Vec::new();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, document) in documents.into_iter().enumerate() {
        let number = i + 1;
        if document.is_null() {
            continue; // an empty document between `---` separators
        }
        match parse_one(document) {
            Ok(resource) => {
                let name = resource.key().to_string();
                let problems = validate::check(&resource);
                if problems.is_empty() && !seen.insert(resource.key()) {
                    errors.push(fail(
                        number,
                        Some(name.clone()),
                        "",
                        "appears twice in this input".into(),
                    ));
                } else if problems.is_empty() {
                    resources.push(resource);
                }
                for (field, message) in problems {
                    errors.push(fail(number, Some(name.clone()), &field, message));
                }
            }
            Err((resource, field, message)) => errors.push(fail(number, resource, &field, message)),
        }
    }
    if !errors.is_empty() {
        return Err(ParseError { errors });
    }
    if resources.is_empty() {
        return Err(ParseError {
            errors: vec![fail(0, None, "", "no resources found".into())],
        });
    }
    Ok(resources)
}

type Failure = (Option<String>, String, String);

fn parse_one(mut document: Value) -> Result<Resource, Failure> {
    let Some(object) = document.as_object_mut() else {
        return Err((
            None,
            String::new(),
            "a resource must be a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    };
    let label = describe(object);
    match object.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err((
                label,
                "apiVersion".into(),
                format!("is {other:?}; expected {API_VERSION:?}"),
            ));
        }
        None => {
            return Err((
                label,
                "apiVersion".into(),
                format!("missing; expected {API_VERSION:?}"),
            ));
        }
    }
    let kind_name = match object.remove("kind") {
        Some(Value::String(kind)) => kind,
        _ => return Err((label, "kind".into(), "missing".into())),
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind_name)
        .ok_or_else(|| {
            let known: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            (
                label.clone(),
                "kind".to_owned(),
                format!("unknown kind {kind_name:?}; known: {}", known.join(", ")),
            )
        })?;
    let label = label.map(|l| format!("{kind} {l}"));
    match kind {
        Kind::MeshConfig => typed(document, label).map(Resource::MeshConfig),
        Kind::Service => typed(document, label).map(Resource::Service),
        Kind::WorkloadEntry => typed(document, label).map(Resource::WorkloadEntry),
        Kind::TrafficPolicy => typed(document, label).map(|o| Resource::TrafficPolicy(Box::new(o))),
        Kind::AuthorizationPolicy => typed(document, label).map(Resource::AuthorizationPolicy),
        Kind::SecurityPolicy => typed(document, label).map(Resource::SecurityPolicy),
        Kind::VulnerabilityReport => typed(document, label).map(Resource::VulnerabilityReport),
    }
}

fn typed<S: DeserializeOwned>(
    document: Value,
    label: Option<String>,
) -> Result<Object<S>, Failure> {
    serde_path_to_error::deserialize(document).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        (label, field, e.into_inner().to_string())
    })
}

/// `namespace/name` from raw metadata, for error messages.
fn describe(object: &serde_json::Map<String, Value>) -> Option<String> {
    let metadata = object.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    Some(format!("{namespace}/{name}"))
}
