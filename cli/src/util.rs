//! Small helpers shared by the subcommands.

use std::time::Duration;

/// Parses `10`, `10s`, `500ms`, `2m`, `1.5s` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration \"{s}\": expected e.g. 10s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration \"{s}\": unit must be ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("invalid duration \"{s}\""));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration that must be more than zero: for the timeouts where 0 would
/// not mean "none" but "at once" (every connection closed as soon as it is
/// accepted). Leaving the option out is how to ask for no timeout.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "a timeout of \"{}\" would close every connection at once; give a duration over 0 (e.g. 30s, 500ms), or leave the option out",
            s.trim()
        ));
    }
    Ok(d)
}
