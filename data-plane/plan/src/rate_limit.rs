//! Local rate limits (Envoy's `local_ratelimit` HTTP filter): a token
//! bucket per listener's HTTP connection manager; a request that finds it
//! empty gets 429 without reaching the app. Only the bucket itself is
//! read; descriptors and partial enforcement are refused (NACK).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use http::StatusCode;

use crate::Refusal;

pub struct TokenBucket {
    max: u32,
    per_fill: u32,
    interval: Duration,
    pub status: StatusCode,
    /// Tokens left, and when the bucket was last filled.
    state: Mutex<(u32, Instant)>,
}

impl std::fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenBucket({} max, {} per {:?})",
            self.max, self.per_fill, self.interval
        )
    }
}

/// Two plans with the same bucket settings are the same plan.
impl PartialEq for TokenBucket {
    fn eq(&self, other: &Self) -> bool {
        (self.max, self.per_fill, self.interval, self.status)
            == (other.max, other.per_fill, other.interval, other.status)
    }
}

impl TokenBucket {
    fn new(max: u32, per_fill: u32, interval: Duration, status: StatusCode) -> TokenBucket {
        TokenBucket {
            max,
            per_fill,
            interval,
            status,
            state: Mutex::new((max, Instant::now())),
        }
    }

    /// Takes a token if there is one. The bucket fills in whole steps, one
    /// per interval, as Envoy's does.
    pub fn take(&self) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock().expect("token bucket lock");
        let (tokens, filled) = &mut *state;
        let steps = now.saturating_duration_since(*filled).as_nanos() / self.interval.as_nanos();
        if steps > 0 {
            let added = u64::from(self.per_fill).saturating_mul(steps as u64);
            *tokens = u64::from(*tokens)
                .saturating_add(added)
                .min(u64::from(self.max)) as u32;
            *filled += self.interval * steps as u32;
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }
}

/// Whether a runtime fraction is all (true) or nothing (false, also when
/// unset: Envoy's default); anything between is refused.
fn all_or_nothing(field: &str, f: Option<&RuntimeFractionalPercent>) -> Result<bool, Refusal> {
    let Some(p) = f.and_then(|f| f.default_value.as_ref()) else {
        return Ok(false);
    };
    match crate::proto::percent(Some(p)) {
        p if p <= 0.0 => Ok(false),
        p if p >= 100.0 => Ok(true),
        p => Err(Refusal::unsupported(format!(
            "local_ratelimit.{field}: {p}% given, only 0% or 100% is supported"
        ))),
    }
}

/// The bucket of a `local_ratelimit` filter, or `None` if the filter
/// limits nothing (not enabled, or not enforced).
pub fn compile(config: &LocalRateLimit) -> Result<Option<TokenBucket>, Refusal> {
    if !config.descriptors.is_empty() {
        return Err(Refusal::unsupported(
            "local_ratelimit.descriptors are not supported",
        ));
    }
    if !config.response_headers_to_add.is_empty()
        || !config.request_headers_to_add_when_not_enforced.is_empty()
    {
        return Err(Refusal::unsupported(
            "local_ratelimit headers to add are not supported",
        ));
    }
    let enabled = all_or_nothing("filter_enabled", config.filter_enabled.as_ref())?;
    let enforced = all_or_nothing("filter_enforced", config.filter_enforced.as_ref())?;
    let Some(bucket) = &config.token_bucket else {
        return Err(Refusal::invalid("local_ratelimit needs a token_bucket"));
    };
    let field = "local_ratelimit.token_bucket.fill_interval";
    let interval = crate::proto::checked_duration(field, bucket.fill_interval.as_ref(), None)?
        .filter(|d| *d >= Duration::from_millis(50))
        .ok_or_else(|| Refusal::invalid(format!("{field} must be at least 50ms")))?;
    if bucket.max_tokens == 0 {
        return Err(Refusal::invalid(
            "local_ratelimit.token_bucket.max_tokens must be at least 1",
        ));
    }
    let per_fill = bucket.tokens_per_fill.map_or(1, |v| v.value);
    let status = config
        .status
        .as_ref()
        .and_then(|s| u16::try_from(s.code).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|s| s.as_u16() >= 400)
        .unwrap_or(StatusCode::TOO_MANY_REQUESTS);
    Ok((enabled && enforced)
        .then(|| TokenBucket::new(bucket.max_tokens, per_fill, interval, status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_its_burst_through_then_refills_in_steps() {
        let bucket = TokenBucket::new(
            3,
            2,
            Duration::from_secs(3600),
            StatusCode::TOO_MANY_REQUESTS,
        );
        let taken = (0..5).filter(|_| bucket.take()).count();
        assert_eq!(taken, 3);
        // One interval later: two more, not three.
        bucket.state.lock().unwrap().1 -= Duration::from_secs(3600);
        let taken = (0..5).filter(|_| bucket.take()).count();
        assert_eq!(taken, 2);
        // Many intervals later: full, not more.
        bucket.state.lock().unwrap().1 -= Duration::from_secs(36000);
        let taken = (0..10).filter(|_| bucket.take()).count();
        assert_eq!(taken, 3);
    }
}
