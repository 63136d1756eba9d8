//! The admin API's mesh-model calls: apply, get, delete. Parsing and
//! validation happen here, on the server, so every client gets the same
//! checks; nothing invalid is ever stored.

use std::collections::BTreeSet;

use rampart_api::admin::*;
use rampart_api::mesh::{Kind, Resource, ResourceKey, parse_documents};
use rampart_certs::TrustDomain;
use tonic::Status;

use crate::store::{MeshStore, StoreError};

fn internal(e: StoreError) -> Status {
    match &e {
        // sled takes no more writes after one failed (a full disk, say):
        // say what to do rather than fail every apply the same way.
        StoreError::Sled(sled::Error::Io(io)) => {
            tracing::error!(error = %io, "the store failed to write; it takes no writes until rampart-control restarts");
            Status::unavailable(format!(
                "{e}: nothing was stored; the store takes no writes until rampart-control is restarted (after freeing space, if the disk is full)"
            ))
        }
        _ => Status::internal(e.to_string()),
    }
}

fn reference(key: &ResourceKey) -> ResourceRef {
    ResourceRef {
        kind: key.kind.to_string(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

/// Parses every source, checks it against this control plane, stores it all
/// or nothing.
pub async fn apply(
    store: &impl MeshStore,
    trust_domain: &TrustDomain,
    request: ApplyResourcesRequest,
) -> Result<ApplyResourcesResponse, Status> {
    if request.sources.is_empty() {
        return Err(Status::invalid_argument(
            "nothing to apply: no sources given",
        ));
    }
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    for source in &request.sources {
        match parse_documents(&source.source, &source.text) {
            Ok(parsed) => resources.extend(parsed),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let mut seen = BTreeSet::new();
    for resource in &resources {
        if !seen.insert(resource.key()) {
            problems.push(format!("{} is given more than once", resource.key()));
        }
        if let Resource::MeshConfig(config) = resource
            && let Some(td) = &config.spec.trust_domain
            && td != trust_domain.as_str()
        {
            problems.push(format!(
                "{}: spec.trustDomain is {td:?} but this control plane issues identities for {trust_domain:?} (--trust-domain)",
                resource.key()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(Status::invalid_argument(format!(
            "nothing was applied:\n{}",
            problems.join("\n")
        )));
    }
    let warnings = dangling_services(store, &resources)?;
    let outcomes = store
        .apply(&resources, request.dry_run)
        .await
        .map_err(internal)?;
    let results = resources
        .iter()
        .zip(outcomes)
        .map(|(resource, outcome)| AppliedResource {
            r#ref: Some(reference(&resource.key())),
            outcome: outcome.as_str().to_owned(),
        })
        .collect();
    Ok(ApplyResourcesResponse { results, warnings })
}

/// Warns about references to services that exist neither in the store nor in
/// the input: allowed (the service may come later) but often a typo.
fn dangling_services(store: &impl MeshStore, input: &[Resource]) -> Result<Vec<String>, Status> {
    let mut known: BTreeSet<(String, String)> = store
        .list(Some(Kind::Service), None, None)
        .map_err(internal)?
        .iter()
        .map(|s| (s.key().namespace, s.key().name))
        .collect();
    known.extend(
        input
            .iter()
            .filter(|r| r.kind() == Kind::Service)
            .map(|s| (s.key().namespace, s.key().name)),
    );
    let mut warnings = Vec::new();
    for resource in input {
        let namespace = resource.key().namespace;
        let referenced: Vec<&str> = match resource {
            Resource::WorkloadEntry(o) => vec![&o.spec.service],
            Resource::TrafficPolicy(o) => {
                let mut names = vec![o.spec.service.as_str()];
                names.extend(o.spec.mirror.as_ref().map(|m| m.service.as_str()));
                names
            }
            _ => Vec::new(),
        };
        for service in referenced {
            if !known.contains(&(namespace.clone(), service.to_owned())) {
                warnings.push(format!(
                    "{} refers to Service {namespace}/{service}, which does not exist (yet)",
                    resource.key()
                ));
            }
        }
    }
    Ok(warnings)
}

/// Resources matching the request, as canonical JSON.
pub fn get(
    store: &impl MeshStore,
    request: GetResourcesRequest,
) -> Result<GetResourcesResponse, Status> {
    let kind = match request.kind.as_str() {
        "" => None,
        k => Some(Kind::parse(k).ok_or_else(|| unknown_kind(k))?),
    };
    let namespace = Some(request.namespace.as_str()).filter(|n| !n.is_empty());
    let name = Some(request.name.as_str()).filter(|n| !n.is_empty());
    let resources = store.list(kind, namespace, name).map_err(internal)?;
    if let (Some(kind), Some(name), true) = (kind, name, resources.is_empty()) {
        let where_ = namespace
            .map(|ns| format!(" in namespace {ns}"))
            .unwrap_or_default();
        return Err(Status::not_found(format!(
            "{kind} {name:?} not found{where_}"
        )));
    }
    Ok(GetResourcesResponse {
        resources_json: resources.iter().map(Resource::to_json).collect(),
    })
}

fn unknown_kind(kind: &str) -> Status {
    let known: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    Status::invalid_argument(format!(
        "unknown kind {kind:?}; known: {}",
        known.join(", ")
    ))
}

/// Deletes the named resources in one step.
pub async fn delete(
    store: &impl MeshStore,
    request: DeleteResourcesRequest,
) -> Result<DeleteResourcesResponse, Status> {
    let mut keys = Vec::new();
    for r in &request.refs {
        let kind = Kind::parse(&r.kind).ok_or_else(|| unknown_kind(&r.kind))?;
        if r.name.is_empty() {
            return Err(Status::invalid_argument(format!(
                "delete {kind}: a name is required"
            )));
        }
        let namespace = match (kind.namespaced(), r.namespace.as_str()) {
            (false, _) => String::new(),
            (true, "") => "default".to_owned(),
            (true, ns) => ns.to_owned(),
        };
        keys.push(ResourceKey {
            kind,
            namespace,
            name: r.name.clone(),
        });
    }
    let existed = store.delete(&keys).await.map_err(internal)?;
    let mut response = DeleteResourcesResponse::default();
    for (key, existed) in keys.iter().zip(existed) {
        if existed {
            response.deleted.push(reference(key));
        } else {
            response.not_found.push(reference(key));
        }
    }
    Ok(response)
}
