//! The APIs' ISO 8601 UTC times (`2026-12-01T21:45:51Z`, optionally with
//! fractional seconds), as milliseconds since the Unix epoch.

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff...]Z` (also `+00:00`); None otherwise.
pub fn parse_ms(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let ms: i64 = match frac.get(..3.min(frac.len())) {
        Some(f) if !f.is_empty() => format!("{f:0<3}").parse().ok()?,
        _ => 0,
    };
    // Days from civil (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 86_400 + hh * 3_600 + mm * 60 + ss) * 1_000) + ms;
    u64::try_from(total).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn parses_the_apis_times() {
        assert_eq!(parse_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(
            parse_ms("2026-12-01T21:45:51.250000Z"),
            Some(1_796_161_551_250)
        );
        assert_eq!(
            parse_ms("2026-12-01T21:45:51+00:00"),
            Some(1_796_161_551_000)
        );
        assert_eq!(parse_ms("yesterday"), None);
        assert_eq!(parse_ms("2026-13-01T00:00:00Z"), None);
    }
}
