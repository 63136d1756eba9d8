//! Localities as every Rampart input writes them: `region[/zone[/sub-zone]]`.
//! One parser, so a WorkloadEntry, a sidecar's metadata and rampart-proxy's
//! `--locality` agree on the syntax and the errors.

/// The parts of `text`, region first; each is letters, digits, `.`, `_`
/// or `-`, at most 63 long.
pub fn parse(text: &str) -> Result<Vec<&str>, String> {
    let parts: Vec<&str> = text.split('/').collect();
    let fine = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if parts.len() > 3 || !parts.iter().all(|p| fine(p)) {
        return Err(format!(
            "{text:?} is not a locality: region[/zone[/sub-zone]], each part letters, digits, '.', '_' or '-' (e.g. us-east1/us-east1-b)"
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parts_and_errors() {
        assert_eq!(parse("r1/z1/rack9"), Ok(vec!["r1", "z1", "rack9"]));
        assert_eq!(parse("r1"), Ok(vec!["r1"]));
        for bad in ["", "a//b", "a/b/c/d", "a b"] {
            assert!(
                parse(bad).unwrap_err().contains("is not a locality"),
                "{bad}"
            );
        }
    }
}
