//! Durations as every Rampart command line writes them: `90s`, `10m`, `24h`,
//! `7d`. One parser, so the binaries agree on the syntax and the errors.

use std::time::Duration;

/// Parses a positive duration with a unit.
pub fn parse(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 10m, 24h or 7d"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?} needs a unit: s, m, h or d (e.g. 10m)")),
    };
    if seconds == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse("90s").unwrap().as_secs(), 90);
        assert_eq!(parse("10m").unwrap().as_secs(), 600);
        assert_eq!(parse("24h").unwrap().as_secs(), 86400);
        assert_eq!(parse("7d").unwrap().as_secs(), 604800);
        assert!(parse("10").unwrap_err().contains("unit"));
        assert!(parse("5y").unwrap_err().contains("unit"));
        assert!(parse("ten").unwrap_err().contains("duration"));
        assert!(parse("0s").is_err());
    }
}
