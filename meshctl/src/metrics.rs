//! Reading Prometheus text exposition from Rampart's metrics endpoints.

use std::collections::BTreeMap;

/// The sample lines of `name`.
fn samples<'a>(metrics: &'a str, name: &str) -> impl Iterator<Item = &'a str> {
    metrics.lines().filter(move |l| {
        !l.starts_with('#')
            && l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// A sample line's value.
fn sample_value(line: &str) -> Option<f64> {
    line.rsplit(' ').next()?.parse().ok()
}

/// The value of `label` in a sample line.
fn label_of(line: &str, label: &str) -> Option<String> {
    let key = format!("{label}=\"");
    let start = line.find(&key)? + key.len();
    let end = line[start..].find('"')?;
    Some(line[start..start + end].to_owned())
}

/// The sum of the samples of `name` whose labels contain all of `labels`.
pub fn sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    samples(metrics, name)
        .filter(|l| labels.iter().all(|p| l.contains(p)))
        .filter_map(sample_value)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// The sums of the samples of `name` by the value of `label` (samples
/// without it are left out).
pub fn sum_by(metrics: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in samples(metrics, name) {
        if let (Some(value), Some(n)) = (label_of(line, label), sample_value(line)) {
            *out.entry(value).or_insert(0.0) += n;
        }
    }
    out
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
    samples(metrics, name).find_map(|line| label_of(line, label))
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
    fn sums_by_a_label_s_values() {
        let text = "f{listener=\"a\",reason=\"not_tls\"} 2\nf{listener=\"b\",reason=\"not_tls\"} 1\nf{listener=\"a\",reason=\"timeout\"} 4\nf{listener=\"a\"} 9\nf_other{reason=\"x\"} 5\n";
        let by = sum_by(text, "f", "reason");
        assert_eq!(
            by.into_iter().collect::<Vec<_>>(),
            [("not_tls".to_owned(), 3.0), ("timeout".to_owned(), 4.0)]
        );
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
