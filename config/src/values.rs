//! The value syntax of cuttlefish config files: durations, byte sizes, booleans,
//! bounded integers, floats and listen addresses.
//!
//! Every function here is pure: it takes the value text (already trimmed and unquoted)
//! and returns either the typed value or a description of what was expected, such as
//! `"a size like 1MB"`. It never knows the key or where the text came from; the caller
//! adds file:line and key (see `Entry::read`), so the description must read well after
//! "expected ".

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// What a value should have looked like, phrased to follow "expected ".
pub(super) type Expected = String;

const DURATION_EXPECTED: &str = "a duration like 30s, 500ms or 1h30m (units: ms, s, m, h, d, w)";
const SIZE_EXPECTED: &str = "a size like 1MB";

/// `500ms`, `30s`, `1m`, `2h`, `1d`, `1w`, or several of them run together (`1h30m`).
///
/// A bare `0` means zero. Any other number without a unit is refused: cuttlefish would
/// read `idle_timeout = 15` as 15 milliseconds, which is never what the writer meant.
pub(super) fn duration(text: &str) -> Result<Duration, Expected> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("a duration with a unit, like 15s or 500ms".to_string());
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(DURATION_EXPECTED.to_string());
    }
    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits_len..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits_len == 0 || unit_len == 0 {
            return Err(DURATION_EXPECTED.to_string());
        }
        let number: u64 = rest[..digits_len]
            .parse()
            .map_err(|_| DURATION_EXPECTED.to_string())?;
        let unit_ms: u64 = match &rest[digits_len..digits_len + unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return Err(DURATION_EXPECTED.to_string()),
        };
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| "a duration small enough to count in milliseconds".to_string())?;
        rest = &rest[digits_len + unit_len..];
    }
    Ok(Duration::from_millis(total_ms))
}

/// `512` (bytes), `64KB`, `1MB`, `2GB`, `1TB`; units are powers of 1024 and may be
/// written in any case (`64kb`). A trailing `B` alone is also accepted (`512B`).
pub(super) fn size(text: &str) -> Result<u64, Expected> {
    let digits_len = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits_len == 0 {
        return Err(SIZE_EXPECTED.to_string());
    }
    let number: u64 = text[..digits_len]
        .parse()
        .map_err(|_| "a size below 16EB".to_string())?;
    let multiplier: u64 = match text[digits_len..].to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return Err(SIZE_EXPECTED.to_string()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| "a size below 16EB".to_string())
}

/// `true | false | on | off`, in any case.
pub(super) fn boolean(text: &str) -> Result<bool, Expected> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "on" => Ok(true),
        "false" | "off" => Ok(false),
        _ => Err("true, false, on or off".to_string()),
    }
}

/// A decimal integer in `min..=max`, converted to the field's type.
///
/// The bounds are inclusive and must fit `T`; the conversion after the range check
/// therefore cannot fail, but is still checked rather than cast.
pub(super) fn uint<T: TryFrom<u64>>(text: &str, min: u64, max: u64) -> Result<T, Expected> {
    let expected = || describe_range(min, max);
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected());
    }
    let number: u64 = text.parse().map_err(|_| expected())?;
    if number < min || number > max {
        return Err(expected());
    }
    T::try_from(number).map_err(|_| expected())
}

fn describe_range(min: u64, max: u64) -> Expected {
    let unbounded = max == u64::MAX || max == usize::MAX as u64;
    match (min, unbounded) {
        (0, true) => "a non-negative integer".to_string(),
        (min, true) => format!("an integer >= {min}"),
        (min, false) => format!("an integer from {min} to {max}"),
    }
}

/// A finite decimal number strictly greater than `min_exclusive`.
pub(super) fn float_above(text: &str, min_exclusive: f64) -> Result<f64, Expected> {
    let expected = || format!("a number greater than {min_exclusive}, like 0.75");
    let number: f64 = text.parse().map_err(|_| expected())?;
    if !number.is_finite() || number <= min_exclusive {
        return Err(expected());
    }
    Ok(number)
}

/// A listen address: `1883` (all IPv4 interfaces), `127.0.0.1:1883` or `[::1]:1883`.
///
/// Host names are not accepted: a listener binds to an interface, and resolving a name
/// at startup would make the bound address depend on DNS.
pub(super) fn listen_addr(text: &str) -> Result<SocketAddr, Expected> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| "a port like 1883, or ip:port like 127.0.0.1:1883 or [::1]:1883".to_string())
}

/// A non-empty string; `what` names the kind of thing expected (`"a file name"`).
pub(super) fn non_empty(text: &str, what: &str) -> Result<String, Expected> {
    if text.is_empty() {
        return Err(what.to_string());
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(duration("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_combine() {
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(duration("1m30s500ms"), Ok(Duration::from_millis(90_500)));
    }

    #[test]
    fn malformed_durations_say_what_was_expected() {
        for bad in [
            "", "abc", "s", "1x", "1.5s", "1 s", "-1s", "1h30", "30S", "ms",
        ] {
            let err = duration(bad).unwrap_err();
            assert!(err.starts_with("a duration"), "{bad:?} gave {err:?}");
        }
        assert_eq!(
            duration("15").unwrap_err(),
            "a duration with a unit, like 15s or 500ms"
        );
        assert!(duration("99999999999999999999w").is_err());
        assert!(duration("18446744073709551615w").is_err());
    }

    #[test]
    fn sizes_use_powers_of_1024() {
        assert_eq!(size("512"), Ok(512));
        assert_eq!(size("512B"), Ok(512));
        assert_eq!(size("64KB"), Ok(64 * 1024));
        assert_eq!(size("64kb"), Ok(64 * 1024));
        assert_eq!(size("1MB"), Ok(1024 * 1024));
        assert_eq!(size("2GB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(size("1TB"), Ok(1 << 40));
        assert_eq!(size("0"), Ok(0));
    }

    #[test]
    fn malformed_sizes_say_what_was_expected() {
        for bad in ["", "abc", "MB", "1.5MB", "1 MB", "1XB", "-1", "1MiB"] {
            assert_eq!(size(bad), Err("a size like 1MB".to_string()), "{bad:?}");
        }
        assert!(size("17000000000TB").is_err());
    }

    #[test]
    fn booleans() {
        for (text, value) in [
            ("true", true),
            ("on", true),
            ("ON", true),
            ("false", false),
            ("off", false),
            ("False", false),
        ] {
            assert_eq!(boolean(text), Ok(value), "{text}");
        }
        for bad in ["", "yes", "1", "0", "enabled"] {
            assert_eq!(boolean(bad), Err("true, false, on or off".to_string()));
        }
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(uint::<u16>("32", 1, 65_535), Ok(32));
        assert_eq!(uint::<u8>("2", 0, 2), Ok(2));
        assert_eq!(uint::<usize>("0", 0, usize::MAX as u64), Ok(0));
        assert_eq!(
            uint::<u16>("0", 1, 65_535),
            Err("an integer from 1 to 65535".to_string())
        );
        assert_eq!(
            uint::<u8>("3", 0, 2),
            Err("an integer from 0 to 2".to_string())
        );
        assert_eq!(
            uint::<usize>("-1", 0, usize::MAX as u64),
            Err("a non-negative integer".to_string())
        );
        assert_eq!(
            uint::<usize>("", 1, usize::MAX as u64),
            Err("an integer >= 1".to_string())
        );
        assert!(uint::<u64>("1e3", 0, u64::MAX).is_err());
        assert!(uint::<u64>("+5", 0, u64::MAX).is_err());
        assert!(uint::<u64>("99999999999999999999999", 0, u64::MAX).is_err());
    }

    #[test]
    fn floats() {
        assert_eq!(float_above("0.75", 0.5), Ok(0.75));
        assert_eq!(float_above("2", 0.5), Ok(2.0));
        for bad in ["0.5", "0.1", "abc", "", "NaN", "inf"] {
            assert!(float_above(bad, 0.5).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(listen_addr("1883"), Ok("0.0.0.0:1883".parse().unwrap()));
        assert_eq!(
            listen_addr("127.0.0.1:11883"),
            Ok("127.0.0.1:11883".parse().unwrap())
        );
        assert_eq!(listen_addr("[::1]:1883"), Ok("[::1]:1883".parse().unwrap()));
        assert_eq!(listen_addr("0"), Ok("0.0.0.0:0".parse().unwrap()));
        for bad in [
            "",
            "localhost:1883",
            "::1:1883",
            "70000",
            "1.2.3.4",
            "1.2.3.4:x",
        ] {
            assert!(
                listen_addr(bad).unwrap_err().starts_with("a port like"),
                "{bad}"
            );
        }
    }
}
