//! Durations as every Rampart command line and resource writes them:
//! `500ms`, `90s`, `10m`, `24h`, `7d`. One parser, so the binaries agree on the syntax and the errors.

use std::time::Duration;

/// Parses a positive duration with a unit.
pub fn parse(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 10m, 24h or 7d"))?;
    let unit_millis: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?} needs a unit: ms, s, m, h or d (e.g. 10m)")),
    };
    let millis = n
        .checked_mul(unit_millis)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    if millis == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_millis(millis))
}

/// Parses a timeout that `0s` (zero in any unit) turns off: `None`.
pub fn parse_timeout(s: &str) -> Result<Option<Duration>, String> {
    let zero = s.strip_prefix('0').is_some_and(|unit| {
        let unit = unit.trim_start_matches('0');
        ["ms", "s", "m", "h", "d"].contains(&unit)
    });
    if zero { Ok(None) } else { parse(s).map(Some) }
}

#[cfg(test)]
mod tests {
    use super::{parse, parse_timeout};

    #[test]
    fn a_zero_timeout_is_off() {
        assert_eq!(parse_timeout("0s"), Ok(None));
        assert_eq!(parse_timeout("00ms"), Ok(None));
        assert_eq!(parse_timeout("90s").unwrap().unwrap().as_secs(), 90);
        assert!(parse_timeout("0").unwrap_err().contains("unit"));
        assert!(parse_timeout("0x").unwrap_err().contains("unit"));
    }

    #[test]
    fn units_and_errors() {
        assert_eq!(parse("90s").unwrap().as_secs(), 90);
        assert_eq!(parse("10m").unwrap().as_secs(), 600);
        assert_eq!(parse("24h").unwrap().as_secs(), 86400);
        assert_eq!(parse("7d").unwrap().as_secs(), 604800);
        assert_eq!(parse("250ms").unwrap().as_millis(), 250);
        assert!(parse("10").unwrap_err().contains("unit"));
        assert!(parse("5y").unwrap_err().contains("unit"));
        assert!(parse("ten").unwrap_err().contains("duration"));
        assert!(parse("0s").is_err());
    }
}
