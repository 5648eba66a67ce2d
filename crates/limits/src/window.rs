//! Quota windows: which calendar window an instant falls in, in the configured time zone
//! (days start at local midnight, months on the 1st, weeks on Monday; across a daylight
//! saving change a day is 23 or 25 hours long, as the people billed for it count it).

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, ZonedDateTime};
use portcullis_config::QuotaWindow;

/// One window: its bounds, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Its first millisecond.
    pub start_ms: i64,
    /// The first millisecond after it.
    pub end_ms: i64,
}

/// The window of kind `kind` that holds `now`, in time zone `tz`. `None` only at the ends of
/// the representable calendar.
pub fn window(kind: QuotaWindow, now: Timestamp, tz: &TimeZone) -> Option<Window> {
    let local = now.to_zoned_datetime(tz.clone());
    let (start, end): (ZonedDateTime, ZonedDateTime) = match kind {
        QuotaWindow::Hour => {
            let start = local.with().minute(0).second(0).subsec_nanosecond(0).build().ok()?;
            let end = start.checked_add(1.hour()).ok()?;
            (start, end)
        }
        QuotaWindow::Day => {
            let start = local.start_of_day().ok()?;
            (start.clone(), start.tomorrow().ok()?.start_of_day().ok()?)
        }
        QuotaWindow::Week => {
            let back = i64::from(local.weekday().to_monday_zero_offset());
            let start = local.checked_sub(back.days()).ok()?.start_of_day().ok()?;
            let end = start.checked_add(7.days()).ok()?.start_of_day().ok()?;
            (start, end)
        }
        QuotaWindow::Month => {
            let start = local.first_of_month().ok()?.start_of_day().ok()?;
            let end = start.checked_add(1.month()).ok()?.start_of_day().ok()?;
            (start, end)
        }
        QuotaWindow::Every(length) => {
            // Fixed windows from local midnight; the day's last one ends at the next midnight.
            let day = local.start_of_day().ok()?;
            let next_day = day.tomorrow().ok()?.start_of_day().ok()?.timestamp().as_millisecond();
            let day_ms = day.timestamp().as_millisecond();
            let len = i64::try_from(length.as_millis()).ok()?.max(1);
            let start = day_ms + (now.as_millisecond() - day_ms) / len * len;
            return Some(Window { start_ms: start, end_ms: (start + len).min(next_day) });
        }
    };
    Some(Window { start_ms: start.timestamp().as_millisecond(), end_ms: end.timestamp().as_millisecond() })
}

/// The time zone named in config: an IANA name (`Europe/Paris`), `UTC`, or a fixed offset
/// (`+02:00`).
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.eq_ignore_ascii_case("utc") {
        return Ok(TimeZone::UTC);
    }
    if let Some(offset) = fixed_offset(name) {
        return Ok(TimeZone::fixed(offset));
    }
    TimeZone::get(name).map_err(|e| format!("`{name}` is not a time zone this system knows: {e}"))
}

/// `+HH:MM`, `-HH:MM` or `+HH`.
fn fixed_offset(text: &str) -> Option<jiff::tz::Offset> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let digits = |s: &str| {
        (!s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i32>().ok())
            .flatten()
    };
    let (h, m) = (digits(h)?, digits(m)?);
    if h > 23 || m > 59 {
        return None;
    }
    jiff::tz::Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn ms(text: &str) -> i64 {
        at(text).as_millisecond()
    }

    #[test]
    fn utc_calendar_windows() {
        let utc = TimeZone::UTC;
        let now = at("2024-02-29T13:45:10.5Z");
        let w = |k| window(k, now, &utc).unwrap();
        assert_eq!(
            w(QuotaWindow::Hour),
            Window { start_ms: ms("2024-02-29T13:00:00Z"), end_ms: ms("2024-02-29T14:00:00Z") }
        );
        assert_eq!(
            w(QuotaWindow::Day),
            Window { start_ms: ms("2024-02-29T00:00:00Z"), end_ms: ms("2024-03-01T00:00:00Z") }
        );
        // 2024-02-29 is a Thursday: the week began on Monday the 26th.
        assert_eq!(
            w(QuotaWindow::Week),
            Window { start_ms: ms("2024-02-26T00:00:00Z"), end_ms: ms("2024-03-04T00:00:00Z") }
        );
        // A leap February.
        assert_eq!(
            w(QuotaWindow::Month),
            Window { start_ms: ms("2024-02-01T00:00:00Z"), end_ms: ms("2024-03-01T00:00:00Z") }
        );
        // December rolls into the next year.
        let dec = window(QuotaWindow::Month, at("2026-12-31T23:59:59.999Z"), &utc).unwrap();
        assert_eq!(dec, Window { start_ms: ms("2026-12-01T00:00:00Z"), end_ms: ms("2027-01-01T00:00:00Z") });
        // The boundary belongs to the new window.
        let jan = window(QuotaWindow::Month, at("2027-01-01T00:00:00Z"), &utc).unwrap();
        assert_eq!(jan.start_ms, dec.end_ms);
    }

    #[test]
    fn days_follow_the_zone_and_its_daylight_saving() {
        let paris = time_zone("Europe/Paris").unwrap();
        // 23:30 UTC on 2026-03-28 is already the 29th in Paris, the day clocks go forward:
        // a 23-hour day.
        let w = window(QuotaWindow::Day, at("2026-03-28T23:30:00Z"), &paris).unwrap();
        assert_eq!(w, Window { start_ms: ms("2026-03-28T23:00:00Z"), end_ms: ms("2026-03-29T22:00:00Z") });
        // And back in October: 25 hours.
        let w = window(QuotaWindow::Day, at("2026-10-25T12:00:00Z"), &paris).unwrap();
        assert_eq!(w.end_ms - w.start_ms, 25 * 3_600_000);
        // A fixed offset.
        let w = window(QuotaWindow::Day, at("2026-12-07T23:30:00Z"), &time_zone("+02:00").unwrap()).unwrap();
        assert_eq!(w.start_ms, ms("2026-12-07T22:00:00Z"));
        assert!(time_zone("Mars/Olympus").is_err());
    }

    #[test]
    fn fixed_windows_start_at_midnight() {
        let utc = TimeZone::UTC;
        let every = |s| QuotaWindow::Every(std::time::Duration::from_secs(s));
        let w = window(every(10), at("2026-12-07T10:00:27.3Z"), &utc).unwrap();
        assert_eq!(w, Window { start_ms: ms("2026-12-07T10:00:20Z"), end_ms: ms("2026-12-07T10:00:30Z") });
        // 7 hours do not divide a day: the last window is cut at midnight.
        let w = window(every(7 * 3600), at("2026-12-07T23:00:00Z"), &utc).unwrap();
        assert_eq!(w, Window { start_ms: ms("2026-12-07T21:00:00Z"), end_ms: ms("2026-12-08T00:00:00Z") });
    }
}
