//! Calendar months as the service counts them: in Japan (Asia/Tokyo is +09:00 all year, with
//! no daylight saving, so a fixed offset is exact).

use chrono::{DateTime, Datelike, FixedOffset, Months, NaiveDate, NaiveTime, Utc};

const TOKYO_OFFSET_SECS: i32 = 9 * 3600;

pub fn tokyo() -> FixedOffset {
    FixedOffset::east_opt(TOKYO_OFFSET_SECS).expect("+09:00 is a valid offset")
}

/// The first day of the month that `t` falls in, in Tokyo.
pub fn tokyo_month_of(t: DateTime<Utc>) -> NaiveDate {
    let day = t.with_timezone(&tokyo()).date_naive();
    day.with_day(1).expect("every month has a first day")
}

/// Midnight at the start of `day` in Tokyo.
pub fn tokyo_midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN)
        .and_local_timezone(tokyo())
        .single()
        .expect("a fixed offset maps every local time once")
        .with_timezone(&Utc)
}

/// The month starting on `first` (a first day), as `[start, end)` instants.
pub fn tokyo_month_span(first: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let next = first
        .checked_add_months(Months::new(1))
        .expect("a month after a valid month is valid");
    (tokyo_midnight(first), tokyo_midnight(next))
}

/// When a tenant cancelled at `cancelled_at` is deleted (R-DEL-1): at the end of the second
/// month after the month of cancellation, that is the first instant of the third month after
/// it. Cancelled any day in January: deleted when March ends (1 April 00:00 in Tokyo).
pub fn deletion_due(cancelled_at: DateTime<Utc>) -> DateTime<Utc> {
    let month = tokyo_month_of(cancelled_at);
    tokyo_midnight(
        month
            .checked_add_months(Months::new(3))
            .expect("three months after a valid month is valid"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_cancellation_any_day_of_january_is_deleted_when_march_ends() {
        let due = utc("2026-03-31T15:00:00Z"); // 1 April 00:00 in Tokyo
        for cancelled in [
            "2025-12-31T15:00:00Z", // 1 January 00:00 in Tokyo
            "2026-01-15T03:00:00Z",
            "2026-01-31T14:59:59Z", // 31 January 23:59:59 in Tokyo
        ] {
            assert_eq!(deletion_due(utc(cancelled)), due, "{cancelled}");
        }
        // 31 January 15:00 UTC is already 1 February in Tokyo: the end of April.
        assert_eq!(
            deletion_due(utc("2026-01-31T15:00:00Z")),
            utc("2026-04-30T15:00:00Z")
        );
        // Across a year: November → end of January.
        assert_eq!(
            deletion_due(utc("2026-11-26T00:00:00Z")),
            utc("2027-01-31T15:00:00Z")
        );
    }
}
