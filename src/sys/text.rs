//! Payload text of `uptime` and `datetime`, as EMQX writes them.

/// `3 days, 4 hours, 5 minutes, 6 seconds`; leading zero units left out.
pub fn uptime(secs: u64) -> String {
    let units = [
        (secs / 86_400, "days"),
        (secs / 3600 % 24, "hours"),
        (secs / 60 % 60, "minutes"),
        (secs % 60, "seconds"),
    ];
    let first = units.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    units[first..]
        .iter()
        .map(|(n, unit)| format!("{n} {unit}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `2026-11-30 23:58:30` (UTC) for Unix ms.
pub fn datetime(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_and_datetime_read_as_emqx_writes_them() {
        assert_eq!(uptime(0), "0 seconds");
        assert_eq!(uptime(65), "1 minutes, 5 seconds");
        assert_eq!(uptime(90_061), "1 days, 1 hours, 1 minutes, 1 seconds");
        assert_eq!(datetime(0), "1970-01-01 00:00:00");
        assert_eq!(datetime(1_798_675_110_000), "2026-12-30 23:58:30");
        assert_eq!(datetime(951_782_400_000), "2000-02-29 00:00:00");
    }
}
