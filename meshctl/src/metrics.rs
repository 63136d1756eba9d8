//! Reading Prometheus text exposition from Rampart's metrics endpoints.

/// The sum of the samples of `name` whose labels contain all of `labels`.
pub fn sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// The value of an unlabelled sample of `name`, if it is exported.
pub fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The value of `label` on the first sample of `name` (e.g. the version in
/// `rampart_build_info{component="rampart-control",version="0.1.0"} 1`).
pub fn label(metrics: &str, name: &str, label: &str) -> Option<String> {
    let line = metrics.lines().find(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{'))
    })?;
    let key = format!("{label}=\"");
    let start = line.find(&key)? + key.len();
    let end = line[start..].find('"')?;
    Some(line[start..start + end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_the_named_metric_with_the_labels() {
        let text = "# HELP x\nrampart_proxy_requests_total{direction=\"inbound\",code=\"200\"} 3\nrampart_proxy_requests_total{direction=\"outbound\"} 5\nrampart_proxy_requests_total_other 7\nrampart_xds_connected_streams 4\n";
        assert_eq!(
            sum(
                text,
                "rampart_proxy_requests_total",
                &["direction=\"inbound\""]
            ),
            3.0
        );
        assert_eq!(sum(text, "rampart_proxy_requests_total", &[]), 8.0);
        assert_eq!(sum(text, "rampart_xds_connected_streams", &[]), 4.0);
        assert_eq!(sum(text, "missing", &[]), 0.0);
    }

    #[test]
    fn reads_a_value() {
        let text = "rampart_ca_expiry_timestamp_seconds 2111175300\nrampart_ca_expiry_timestamp_seconds_x 1\n";
        assert_eq!(
            value(text, "rampart_ca_expiry_timestamp_seconds"),
            Some(2111175300.0)
        );
        assert_eq!(value(text, "rampart_missing"), None);
    }

    #[test]
    fn reads_a_label() {
        let text = "rampart_build_info{component=\"rampart-control\",version=\"0.1.0\"} 1\n";
        assert_eq!(
            label(text, "rampart_build_info", "version").as_deref(),
            Some("0.1.0")
        );
        assert_eq!(label(text, "rampart_build_info", "nope"), None);
        assert_eq!(label(text, "other", "version"), None);
    }
}
