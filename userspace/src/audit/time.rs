//! Timestamps: microseconds since the Unix epoch (UTC), shown as RFC 3339.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// Days since 1970-01-01 from a civil date, and back (H. Hinnant's algorithms).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-21T10:50:54.123456Z`.
pub fn format_ts(us: u64) -> String {
    let secs = i64::try_from(us / 1_000_000).unwrap_or(i64::MAX);
    let micros = us % 1_000_000;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses a point in time: RFC 3339 in UTC (`2026-11-21T10:50:54Z`, fraction optional),
/// a date (`2026-11-21`, midnight UTC), or an age before `now_us` (`90m`, `12h`, `7d`).
pub fn parse_time(s: &str, now_us: u64) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(age) = crate::config::audit::parse_duration(s) {
        let age = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
        return Ok(now_us.saturating_sub(age));
    }
    let bad = || {
        format!(
            "`{s}`: expected RFC 3339 UTC time (2026-11-21T10:50:00Z), a date, or an age (90m, 12h, 7d)"
        )
    };
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (
            d,
            Some(
                t.strip_suffix('Z')
                    .or_else(|| t.strip_suffix("+00:00"))
                    .ok_or_else(bad)?,
            ),
        ),
        None => (s, None),
    };
    let mut parts = date
        .splitn(3, '-')
        .map(|p| p.parse::<i64>().map_err(|_| bad()));
    let (y, m, d) = (
        parts.next().ok_or_else(bad)??,
        parts.next().ok_or_else(bad)??,
        parts.next().ok_or_else(bad)??,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    let mut micros = 0i64;
    if let Some(t) = time {
        let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
        let mut f = hms
            .splitn(3, ':')
            .map(|p| p.parse::<i64>().map_err(|_| bad()));
        let h = f.next().ok_or_else(bad)??;
        let mi = f.next().ok_or_else(bad)??;
        let se = f.next().unwrap_or(Ok(0))?;
        if h > 23 || mi > 59 || se > 60 {
            return Err(bad());
        }
        secs += h * 3600 + mi * 60 + se;
        if !frac.is_empty() {
            let digits: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
            micros = digits.parse().map_err(|_| bad())?;
        }
    }
    u64::try_from(secs * 1_000_000 + micros).map_err(|_| bad())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ages() {
        let t = parse_time("2026-11-21T10:50:54.123456Z", 0).unwrap();
        assert_eq!(format_ts(t), "2026-11-21T10:50:54.123456Z");
        assert_eq!(parse_time("1970-01-02", 0).unwrap(), 86_400_000_000);
        assert_eq!(
            parse_time("2h", 10 * 3_600_000_000).unwrap(),
            8 * 3_600_000_000
        );
        assert!(parse_time("yesterday", 0).is_err());
        assert!(parse_time("2026-13-01", 0).is_err());
    }
}
