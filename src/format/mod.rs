//! Record formats: decoding bytes into typed rows of a `Batch` and encoding rows back to bytes.
//!
//! Owns the shared pieces every format needs: how a record's event time is found
//! (`EventTimeSource`), the per-record `DecodeError`, the text forms of timestamps and
//! dates (parse and allocation-free write) and exact decimal parsing. Each format lives in
//! its own file (`json.rs`).
//! This module does no I/O: sources split input into records and sinks write the bytes.
//!
//! Text forms:
//! - timestamp: RFC 3339, e.g. `2026-01-01T00:00:00.123Z`. Written in UTC with `Z`, always
//!   with a fraction: 3 digits (milliseconds) unless sub-millisecond digits exist, then 6.
//!   Read also with a space instead of `T`, without offset (UTC), with `±HH:MM`/`±HHMM`/`±HH`
//!   offsets, with 0–9+ fraction digits (digits past microseconds are truncated) and
//!   second `60` (counted as the next minute's `00`).
//! - date: `YYYY-MM-DD`.
//! - Years outside `0000..=9999` (far outside any real data, but every `i64` timestamp and
//!   `i32` date must round-trip) use ISO 8601 expanded form: a sign and at least 4 digits,
//!   e.g. `+12345-01-01`, `-0001-12-31`.

pub mod json;

pub use json::{JsonDecoder, JsonEncoder};

use rust_decimal::Decimal;

use crate::types::EventTime;

/// How the event time of a record is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventTimeSource {
    /// The value of the field at this schema index, which must be a `timestamp` column
    /// (micros, floored to millis) or an `int` column (epoch milliseconds).
    Field(usize),
    /// The record carries no event time: the caller assigns one.
    None,
}

/// Why one record could not be decoded. A bad record is not a pipeline error: the caller
/// routes it to `dead_letter` with this reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DecodeError {
    pub reason: String,
}

impl DecodeError {
    pub fn new(reason: impl Into<String>) -> DecodeError {
        DecodeError {
            reason: reason.into(),
        }
    }
}

/// Event time (epoch millis) of a timestamp value (epoch micros): floor division, so times
/// before 1970 stay ordered.
pub fn micros_to_event_time(micros: i64) -> EventTime {
    micros.div_euclid(1000)
}

const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian civil date (H. Hinnant's algorithm).
/// `month` is 1..=12, `day` 1..=31; valid for any year whose result fits in `i64`.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Two ASCII digits.
fn two_digits(b: &[u8]) -> Option<u32> {
    match b {
        [a @ b'0'..=b'9', c @ b'0'..=b'9'] => Some(u32::from(a - b'0') * 10 + u32::from(c - b'0')),
        _ => None,
    }
}

/// Parses `[±]YYYY-MM-DD` at the start of `b`: the day count and the rest of the input.
fn parse_date_prefix(b: &[u8]) -> Option<(i64, &[u8])> {
    let (negative, signed, b) = match b.first()? {
        b'+' => (false, true, &b[1..]),
        b'-' => (true, true, &b[1..]),
        _ => (false, false, b),
    };
    let year_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if !(4..=9).contains(&year_len) || (!signed && year_len != 4) {
        return None;
    }
    let mut year = b[..year_len]
        .iter()
        .fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0'));
    if negative {
        year = -year;
    }
    let b = &b[year_len..];
    if b.len() < 6 || b[0] != b'-' || b[3] != b'-' {
        return None;
    }
    let month = two_digits(&b[1..3])?;
    let day = two_digits(&b[4..6])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some((days_from_civil(year, month, day), &b[6..]))
}

/// Parses a date `YYYY-MM-DD` into days since the epoch.
pub fn parse_date(s: &str) -> Option<i32> {
    match parse_date_prefix(s.as_bytes())? {
        (days, []) => i32::try_from(days).ok(),
        _ => None,
    }
}

/// Parses an RFC 3339 timestamp (see the module docs for the accepted variants) into
/// microseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let (days, b) = parse_date_prefix(s.as_bytes())?;
    let (&sep, b) = b.split_first()?;
    if !matches!(sep, b'T' | b't' | b' ') || b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let hour = two_digits(&b[0..2])?;
    let minute = two_digits(&b[3..5])?;
    let second = two_digits(&b[6..8])?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut b = &b[8..];
    let mut frac = 0i64;
    if let [b'.', rest @ ..] = b {
        let n = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, c) in rest[..n].iter().enumerate().take(6) {
            frac += i64::from(c - b'0') * 10i64.pow(5 - i as u32);
        }
        b = &rest[n..];
    }
    let offset_secs = match b {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest {
                [h0, h1] => (two_digits(&[*h0, *h1])?, 0),
                [h0, h1, m0, m1] | [h0, h1, b':', m0, m1] => {
                    (two_digits(&[*h0, *h1])?, two_digits(&[*m0, *m1])?)
                }
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    // At most 9 year digits: |days * 86400| < 2^55, no overflow before the range check.
    let secs = days * SECS_PER_DAY + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    let micros = i128::from(secs) * i128::from(MICROS_PER_SEC) + i128::from(frac);
    i64::try_from(micros).ok()
}

/// Parses a decimal exactly: `123.45`, `-0.1`, `1e3`, `1.5E-7`. `None` when the text is not
/// a number or its value cannot be held exactly (more than 28 fraction digits, or beyond
/// ±79228162514264337593543950335).
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    let Some(e) = text.find(['e', 'E']) else {
        return Decimal::from_str_exact(text).ok();
    };
    let mut d = Decimal::from_str_exact(&text[..e]).ok()?;
    let exp: i64 = text[e + 1..].parse().ok()?;
    let scale = i64::from(d.scale()) - exp;
    if scale >= 0 {
        d.set_scale(u32::try_from(scale).ok()?).ok()?;
        Some(d)
    } else {
        // Too many zeros to express as a negative scale: multiply, exactly or not at all.
        let zeros = u32::try_from(-scale).ok().filter(|z| *z <= 28)?;
        d.set_scale(0).ok()?;
        d.checked_mul(Decimal::from_i128_with_scale(10i128.pow(zeros), 0))
    }
}

fn push_digits(out: &mut Vec<u8>, value: u32, width: u32) {
    for i in (0..width).rev() {
        out.push(b'0' + (value / 10u32.pow(i) % 10) as u8);
    }
}

fn push_year(out: &mut Vec<u8>, year: i64) {
    if (0..=9999).contains(&year) {
        push_digits(out, year as u32, 4);
    } else {
        out.push(if year < 0 { b'-' } else { b'+' });
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(year.unsigned_abs());
        for _ in digits.len()..4 {
            out.push(b'0');
        }
        out.extend_from_slice(digits.as_bytes());
    }
}

fn push_civil(out: &mut Vec<u8>, days: i64) {
    let (year, month, day) = civil_from_days(days);
    push_year(out, year);
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
}

/// Appends a date (days since the epoch) as `YYYY-MM-DD`.
pub fn write_date(days: i32, out: &mut Vec<u8>) {
    push_civil(out, i64::from(days));
}

/// Appends a timestamp (micros since the epoch) as RFC 3339 UTC: `YYYY-MM-DDTHH:MM:SS.mmmZ`,
/// or with 6 fraction digits when the value has sub-millisecond digits.
pub fn write_timestamp(micros: i64, out: &mut Vec<u8>) {
    let secs = micros.div_euclid(MICROS_PER_SEC);
    let frac = micros.rem_euclid(MICROS_PER_SEC) as u32;
    let second_of_day = secs.rem_euclid(SECS_PER_DAY) as u32;
    push_civil(out, secs.div_euclid(SECS_PER_DAY));
    out.push(b'T');
    push_digits(out, second_of_day / 3600, 2);
    out.push(b':');
    push_digits(out, second_of_day / 60 % 60, 2);
    out.push(b':');
    push_digits(out, second_of_day % 60, 2);
    out.push(b'.');
    if frac.is_multiple_of(1000) {
        push_digits(out, frac / 1000, 3);
    } else {
        push_digits(out, frac, 6);
    }
    out.push(b'Z');
}

/// An event time (milliseconds) as RFC 3339 UTC, for messages.
pub fn display_event_time(t: EventTime) -> String {
    let mut out = Vec::new();
    write_timestamp(t.saturating_mul(1000), &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Option<i64> {
        parse_timestamp(s)
    }

    fn fmt_ts(micros: i64) -> String {
        let mut out = Vec::new();
        write_timestamp(micros, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn fmt_date(days: i32) -> String {
        let mut out = Vec::new();
        write_date(days, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(-719_528), (0, 1, 1));
        for d in -800_000..800_000 {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn timestamps_parse_in_all_accepted_forms() {
        let base = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
        assert_eq!(ts("2026-01-01T00:00:00Z"), Some(base));
        assert_eq!(ts("2026-01-01t00:00:00z"), Some(base));
        assert_eq!(ts("2026-01-01 00:00:00"), Some(base));
        assert_eq!(ts("2026-01-01T00:00:00"), Some(base));
        assert_eq!(ts("2026-01-01T00:00:00.123Z"), Some(base + 123_000));
        assert_eq!(ts("2026-01-01 00:00:00.123456"), Some(base + 123_456));
        assert_eq!(ts("2026-01-01T00:00:00.1234567891Z"), Some(base + 123_456));
        assert_eq!(ts("2026-01-01T01:30:00+01:30"), Some(base));
        assert_eq!(ts("2026-01-01T01:30:00+0130"), Some(base));
        assert_eq!(ts("2025-12-31T22:00:00-02"), Some(base));
        assert_eq!(ts("2025-12-31T23:59:60Z"), Some(base));
        assert_eq!(ts("1969-12-31T23:59:59.999999Z"), Some(-1));
        assert_eq!(ts("+2026-01-01T00:00:00Z"), Some(base));
        for bad in [
            "",
            "2026-01-01",
            "2026-1-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00ZZ",
            "2026-01-01T00:00:00+25:00",
            "2026-01-01X00:00:00Z",
            "20260-01-01T00:00:00Z",
            "+99999999-01-01T00:00:00Z",
        ] {
            assert_eq!(ts(bad), None, "{bad}");
        }
        assert_eq!(ts("2024-02-29T00:00:00Z").map(|_| ()), Some(()));
    }

    #[test]
    fn timestamps_write_milliseconds_unless_finer_digits_exist() {
        let base = 1_767_225_600_000_000;
        assert_eq!(fmt_ts(base), "2026-01-01T00:00:00.000Z");
        assert_eq!(fmt_ts(base + 123_000), "2026-01-01T00:00:00.123Z");
        assert_eq!(fmt_ts(base + 123_456), "2026-01-01T00:00:00.123456Z");
        assert_eq!(fmt_ts(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(fmt_ts(i64::MIN), "-290308-12-21T19:59:05.224192Z");
        assert_eq!(fmt_ts(i64::MAX), "+294247-01-10T04:00:54.775807Z");
    }

    #[test]
    fn dates_parse_and_write() {
        assert_eq!(parse_date("2026-01-01"), Some(20_454));
        assert_eq!(parse_date("1969-12-31"), Some(-1));
        assert_eq!(parse_date("2026-01-01T00:00:00Z"), None);
        assert_eq!(parse_date("2026-02-30"), None);
        assert_eq!(fmt_date(20_454), "2026-01-01");
        assert_eq!(fmt_date(-719_529), "-0001-12-31");
        assert_eq!(fmt_date(2_932_897), "+10000-01-01");
        assert_eq!(parse_date("-0001-12-31"), Some(-719_529));
        assert_eq!(parse_date("+10000-01-01"), Some(2_932_897));
    }

    #[test]
    fn event_time_floors_micros() {
        assert_eq!(micros_to_event_time(1_999), 1);
        assert_eq!(micros_to_event_time(-1), -1);
    }

    proptest! {
        #[test]
        fn timestamp_text_round_trips(micros in any::<i64>()) {
            prop_assert_eq!(parse_timestamp(&fmt_ts(micros)), Some(micros));
        }

        #[test]
        fn date_text_round_trips(days in any::<i32>()) {
            prop_assert_eq!(parse_date(&fmt_date(days)), Some(days));
        }
    }
}
