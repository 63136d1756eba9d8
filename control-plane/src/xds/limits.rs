//! Bounds on what one xDS client may ask for. A request is already capped
//! at 4 MiB by the transport; these bound what a stream accumulates
//! (delta subscriptions add up request after request) and refuse names no
//! real client sends, so a hostile or broken client with a valid SVID
//! cannot grow the control plane's memory without limit.

/// The longest resource name taken (Envoy's and Rampart's are < 300 bytes;
/// xdstp:// names stay well under this).
pub const MAX_NAME_BYTES: usize = 4096;
/// The most names one stream may subscribe to per type.
pub const MAX_NAMES_PER_TYPE: usize = 100_000;

/// Whether `names` (added to `already` subscribed ones) are within bounds.
pub fn check_names<'a>(
    type_url: &str,
    names: impl IntoIterator<Item = &'a String>,
    already: usize,
) -> Result<(), String> {
    let mut count = already;
    for name in names {
        if name.len() > MAX_NAME_BYTES {
            return Err(format!(
                "{type_url}: a resource name of {} bytes (at most {MAX_NAME_BYTES})",
                name.len()
            ));
        }
        count += 1;
    }
    if count > MAX_NAMES_PER_TYPE {
        return Err(format!(
            "{type_url}: {count} resource names subscribed (at most {MAX_NAMES_PER_TYPE} per type)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_and_too_many_are_refused() {
        let ok = vec!["outbound|8080||echo.default".to_owned()];
        assert!(check_names("cds", &ok, 0).is_ok());
        let long = vec!["x".repeat(MAX_NAME_BYTES + 1)];
        assert!(
            check_names("cds", &long, 0)
                .unwrap_err()
                .contains("4097 bytes")
        );
        assert!(
            check_names("cds", &ok, MAX_NAMES_PER_TYPE)
                .unwrap_err()
                .contains("at most 100000")
        );
    }
}
