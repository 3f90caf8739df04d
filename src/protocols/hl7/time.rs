//! HL7 times and the zone a time without offset is read in (module docs of [`super`], "Time").

use chrono::{Offset, TimeZone};

use crate::decode::{Now, RejectReason, Rejection};

/// How times without a zone offset are read (`hl7.time_zone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// The gateway's zone (`TZ`, else `/etc/localtime`), daylight saving time included.
    Local,
    /// A fixed offset from UTC.
    Fixed(chrono::FixedOffset),
}

impl Zone {
    pub fn utc() -> Self {
        Self::Fixed(chrono::Utc.fix())
    }

    /// Reads `"local"`, `"UTC"` or a fixed offset such as `"+01:00"` or `"-0330"`.
    pub fn parse(s: &str) -> Result<Self, ZoneError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("local") {
            return Ok(Self::Local);
        }
        if s.eq_ignore_ascii_case("UTC") {
            return Ok(Self::utc());
        }
        let bad = || ZoneError(s.to_owned());
        let (sign, hhmm) = match s.as_bytes().first() {
            Some(b'+') => (1, &s[1..]),
            Some(b'-') => (-1, &s[1..]),
            _ => return Err(bad()),
        };
        let digits = match (hhmm.len(), hhmm.get(2..3)) {
            (5, Some(":")) => format!("{}{}", &hhmm[..2], &hhmm[3..]),
            (4, _) => hhmm.to_owned(),
            _ => return Err(bad()),
        };
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let (h, m) = (digits[..2].parse::<i32>().map_err(|_| bad())?, digits[2..].parse::<i32>().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60)).map(Self::Fixed).ok_or_else(bad)
    }
}

/// A `hl7.time_zone` that is neither `"local"`, `"UTC"` nor an offset; the text names what is
/// accepted (configuration validation prints it after the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither \"local\", \"UTC\" nor an offset such as \"+01:00\"")]
pub struct ZoneError(String);

/// A time read from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// ns since the epoch.
    At(i64),
    /// A local time its zone skips (the hour a change to daylight saving time jumps over).
    Skipped,
    /// A local time its zone has twice (the hour repeated when daylight saving time ends):
    /// the earlier and the later instant.
    Twice(i64, i64),
}

/// Parses an HL7 time (`YYYY[MM[DD[HH[MM[SS[.ffff]]]]]][+/-ZZZZ]`); a time without offset is
/// read in `zone`. `None`: not a time.
pub fn parse_time(s: &str, zone: Zone) -> Option<Stamp> {
    let s = s.trim();
    let (main, offset_secs) = match s.find(['+', '-']) {
        Some(i) => {
            let z = &s[i + 1..];
            if z.len() != 4 || !z.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let mins = z[..2].parse::<i64>().ok()? * 60 + z[2..].parse::<i64>().ok()?;
            let sign = if s.as_bytes()[i] == b'-' { -1 } else { 1 };
            (&s[..i], Some(sign * mins * 60))
        }
        None => (s, None),
    };
    let (digits, frac) = main.split_once('.').unwrap_or((main, ""));
    if digits.len() < 8
        || digits.len() > 14
        || digits.len() % 2 != 0
        || !digits.bytes().all(|c| c.is_ascii_digit())
        || frac.len() > 9
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).map_or(Some(0), |x| x.parse::<u32>().ok());
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(4..6)?, num(6..8)?)?;
    let time = chrono::NaiveTime::from_hms_opt(num(8..10)?, num(10..12)?, num(12..14)?)?;
    let frac_ns = if frac.is_empty() { 0 } else { frac.parse::<i64>().ok()? * 10i64.pow(9 - frac.len() as u32) };
    let local = date.and_time(time);
    let ns = |utc_secs: i64| utc_secs.checked_mul(1_000_000_000)?.checked_add(frac_ns);
    let offset = match (offset_secs, zone) {
        (Some(o), _) => o,
        (None, Zone::Fixed(o)) => i64::from(o.local_minus_utc()),
        (None, Zone::Local) => {
            return match chrono::Local.from_local_datetime(&local) {
                chrono::MappedLocalTime::Single(t) => Some(Stamp::At(ns(t.timestamp())?)),
                chrono::MappedLocalTime::None => Some(Stamp::Skipped),
                chrono::MappedLocalTime::Ambiguous(a, b) => {
                    let (a, b) = (ns(a.timestamp())?, ns(b.timestamp())?);
                    Some(Stamp::Twice(a.min(b), a.max(b)))
                }
            };
        }
    };
    Some(Stamp::At(ns(local.and_utc().timestamp() - offset)?))
}

/// The instant of an observation's time, or why it has none. In the repeated hour, the later
/// instant is ruled out while it still lies further ahead of the gateway clock than a device
/// clock may be; otherwise either may be meant and the time is refused: taking the earlier
/// would write the readings of the second pass an hour early, over the first pass's points
/// (same series and time) and perhaps to the patient who had the bed an hour before.
pub(super) fn instant(stamp: Stamp, now: Now) -> Result<i64, Rejection> {
    match stamp {
        Stamp::At(t) => Ok(t),
        Stamp::Skipped => Err(Rejection::new(
            RejectReason::NonexistentLocalTime,
            "local time skipped by a change to daylight saving time (hl7.time_zone)",
        )),
        Stamp::Twice(earlier, later) if now.too_far_ahead(later).is_some() => Ok(earlier),
        Stamp::Twice(..) => Err(Rejection::new(
            RejectReason::AmbiguousLocalTime,
            "local time repeated when daylight saving time ends (hl7.time_zone)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::hl7::testutil::{T_VITALS, now};

    #[test]
    fn times_parse_with_offsets_and_precision() {
        let utc = |s: &str| parse_time(s, Zone::utc());
        assert_eq!(utc("20240517103015+0000"), Some(Stamp::At(T_VITALS)));
        assert_eq!(utc("20240517103015"), Some(Stamp::At(T_VITALS)));
        assert_eq!(utc("20240517123015.25+0200"), Some(Stamp::At(T_VITALS + 250_000_000)));
        assert_eq!(utc("202405171030"), Some(Stamp::At(T_VITALS - 15_000_000_000)));
        assert_eq!(utc("2024051710301"), None);
        assert_eq!(utc("20241317103015"), None);
        assert_eq!(utc("20240517103015+00"), None);
        assert_eq!(utc(""), None);
        // Without an offset, the configured zone's; with one, its own.
        let plus2 = Zone::parse("+02:00").expect("offset");
        assert_eq!(parse_time("20240517123015", plus2), Some(Stamp::At(T_VITALS)));
        assert_eq!(parse_time("20240517103015+0000", plus2), Some(Stamp::At(T_VITALS)));
        let minus0330 = Zone::parse("-0330").expect("offset");
        assert_eq!(parse_time("20240517070015", minus0330), Some(Stamp::At(T_VITALS)));
    }

    #[test]
    fn time_zones_are_named_local_utc_or_an_offset() {
        assert_eq!(Zone::parse("local"), Ok(Zone::Local));
        assert_eq!(Zone::parse("UTC"), Ok(Zone::utc()));
        assert_eq!(Zone::parse("+00:00"), Ok(Zone::utc()));
        assert_eq!(Zone::parse("+05:30"), Ok(Zone::Fixed(chrono::FixedOffset::east_opt(19_800).expect("offset"))));
        for bad in ["Europe/Berlin", "+1", "+01:60", "+24:00", "01:00", "+01:00:00", "", "+:0100"] {
            assert!(Zone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_zone_that_is_none_of_these_is_named_in_the_error() {
        // `check-config` prints this text after `hl7.time_zone: `.
        let e = Zone::parse(" Europe/Berlin ").expect_err("not a zone the gateway reads");
        assert_eq!(e.to_string(), r#""Europe/Berlin" is neither "local", "UTC" nor an offset such as "+01:00""#);
    }

    #[test]
    fn the_repeated_hour_is_refused_unless_its_later_instant_is_still_ahead() {
        let hour = 3_600_000_000_000;
        let twice = Stamp::Twice(T_VITALS, T_VITALS + hour);
        // During the first pass the later instant lies an hour ahead: no device clock is there.
        assert_eq!(instant(twice, now(T_VITALS + 5_000_000_000)), Ok(T_VITALS));
        // During the second pass (or after) either could be meant.
        let r = instant(twice, now(T_VITALS + hour + 5_000_000_000)).expect_err("ambiguous");
        assert_eq!(r.reason, RejectReason::AmbiguousLocalTime);
        assert_eq!(
            instant(Stamp::Skipped, now(T_VITALS)).map_err(|r| r.reason),
            Err(RejectReason::NonexistentLocalTime)
        );
    }
}
