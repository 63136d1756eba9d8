//! Instants as numbers, so that a time can live in an atomic (read on
//! every request, where a mutex would be a lock per read).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Now, as tokio's clock reads it: the same as `Instant::now()`, except in
/// tests that pause time, where the timeouts built on it are then checked
/// without waiting.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` as nanoseconds since the process first asked.
pub fn ticks(at: Instant) -> u64 {
    let since = at.saturating_duration_since(epoch());
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// The instant `ticks` stands for.
pub fn instant(ticks: u64) -> Instant {
    epoch() + Duration::from_nanos(ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_survives_the_round_trip_to_the_nanosecond() {
        // Instants before the epoch (the first call) read as the epoch.
        let before = Instant::now();
        assert!(instant(ticks(before)) >= before);
        let now = Instant::now();
        assert_eq!(instant(ticks(now)), now);
        let later = now + Duration::from_secs(3600);
        assert_eq!(instant(ticks(later)) - now, Duration::from_secs(3600));
    }
}
