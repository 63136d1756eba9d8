//! Reading protobuf fields as Envoy reads them: durations (unset, zero,
//! malformed) and fractional percentages. A leaf, shared by the plan
//! compiler and what it builds.

use std::time::Duration;

type Result<T> = std::result::Result<T, String>;

/// A duration field; unset or zero is `None`.
pub(super) fn duration(
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
) -> Option<Duration> {
    d.filter(|d| d.seconds > 0 || d.nanos > 0)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// A duration field as Envoy reads a timeout: unset is `default`, zero is
/// none (the timeout off), a negative or malformed one is refused.
pub(super) fn checked_duration(
    field: &str,
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
    default: Option<Duration>,
) -> Result<Option<Duration>> {
    let Some(d) = d else { return Ok(default) };
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(format!(
            "{field}: {}s {}ns is not a valid duration (negative or nanos out of range)",
            d.seconds, d.nanos
        ));
    }
    Ok(duration(Some(d)))
}

/// A fraction as a percentage; unset is 100 %.
pub(super) fn percent(p: Option<&envoy_types::pb::envoy::r#type::v3::FractionalPercent>) -> f64 {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
    let Some(p) = p else { return 100.0 };
    let denominator = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::TenThousand) => 10_000.0,
        Ok(DenominatorType::Million) => 1_000_000.0,
        _ => 100.0,
    };
    f64::from(p.numerator) * 100.0 / denominator
}
