//! Small values of the journey language, parsed once from their text: durations, times of day,
//! weekdays, quiet hours, frequency caps, cron schedules, time zones and lifecycle stages.

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use std::fmt;
use std::str::FromStr;

/// A length of time as marketers write it: `30s`, `15m`, `2h`, `3d`, `1w`, or `1d12h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Delay {
    pub seconds: u64,
}

pub const DELAY_HINT: &str = "write a number and a unit: 30s, 15m, 2h, 3d, 1w (or combined, like 1d12h)";

impl Delay {
    pub fn from_secs(seconds: u64) -> Delay {
        Delay { seconds }
    }

    pub fn as_duration(&self) -> Duration {
        Duration::seconds(self.seconds as i64)
    }
}

impl FromStr for Delay {
    type Err = String;

    fn from_str(text: &str) -> Result<Delay, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty duration".into());
        }
        let mut seconds: u64 = 0;
        let mut number = String::new();
        let mut saw_unit = false;
        for ch in text.chars() {
            if ch.is_ascii_digit() {
                number.push(ch);
                continue;
            }
            if ch == ' ' {
                continue;
            }
            let unit = match ch {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return Err(format!("`{text}` is not a duration: unknown unit `{ch}`")),
            };
            let value: u64 = number
                .parse()
                .map_err(|_| format!("`{text}` is not a duration: a number must come before `{ch}`"))?;
            seconds = value
                .checked_mul(unit)
                .and_then(|v| seconds.checked_add(v))
                .ok_or_else(|| format!("`{text}` is too long"))?;
            number.clear();
            saw_unit = true;
        }
        if !number.is_empty() || !saw_unit {
            return Err(format!("`{text}` is not a duration: the unit is missing"));
        }
        if seconds > 10 * 365 * 86_400 {
            return Err(format!("`{text}` is longer than 10 years"));
        }
        Ok(Delay { seconds })
    }
}

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.seconds == 0 {
            return write!(f, "0s");
        }
        let mut rest = self.seconds;
        for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

/// A wall-clock time, `09:00`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(pub NaiveTime);

pub const TIME_HINT: &str = "write a 24-hour time like 09:00 or 21:30";

impl FromStr for TimeOfDay {
    type Err = String;

    fn from_str(text: &str) -> Result<TimeOfDay, String> {
        NaiveTime::parse_from_str(text.trim(), "%H:%M")
            .map(TimeOfDay)
            .map_err(|_| format!("`{text}` is not a time of day"))
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0.hour(), self.0.minute())
    }
}

/// A set of weekdays, Monday first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Days(pub u8);

impl Days {
    pub const ALL: Days = Days(0b111_1111);

    pub fn contains(&self, day: Weekday) -> bool {
        self.0 & (1 << day.num_days_from_monday()) != 0
    }

    pub fn parse_day(text: &str) -> Result<Weekday, String> {
        let day = match text.trim().to_ascii_lowercase().as_str() {
            "mon" | "monday" => Weekday::Mon,
            "tue" | "tuesday" => Weekday::Tue,
            "wed" | "wednesday" => Weekday::Wed,
            "thu" | "thursday" => Weekday::Thu,
            "fri" | "friday" => Weekday::Fri,
            "sat" | "saturday" => Weekday::Sat,
            "sun" | "sunday" => Weekday::Sun,
            _ => return Err(format!("`{text}` is not a day of the week")),
        };
        Ok(day)
    }

    pub fn with(self, day: Weekday) -> Days {
        Days(self.0 | (1 << day.num_days_from_monday()))
    }
}

impl fmt::Display for Days {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Days::ALL {
            return write!(f, "every day");
        }
        let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let chosen: Vec<&str> = (0..7).filter(|i| self.0 & (1 << i) != 0).map(|i| names[i]).collect();
        write!(f, "{}", chosen.join(","))
    }
}

/// The next moment at or after `after` whose local time in `zone` is `time` on one of `days`.
pub fn next_time_of_day(after: DateTime<Utc>, zone: Tz, time: TimeOfDay, days: Days) -> DateTime<Utc> {
    let local = after.with_timezone(&zone);
    for offset in 0..=8 {
        let date = local.date_naive() + Duration::days(offset);
        if !days.contains(date.weekday()) {
            continue;
        }
        // A time skipped by a daylight-saving jump moves to the first valid instant after it.
        let candidate = zone.from_local_datetime(&date.and_time(time.0)).earliest().or_else(|| {
            zone.from_local_datetime(&(date.and_time(time.0) + Duration::hours(1)))
                .earliest()
        });
        if let Some(candidate) = candidate {
            let candidate = candidate.with_timezone(&Utc);
            if candidate >= after {
                return candidate;
            }
        }
    }
    after
}

/// Hours in which no message is sent, `21:00-08:00` (it may wrap midnight).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuietHours {
    pub start: TimeOfDay,
    pub end: TimeOfDay,
}

impl FromStr for QuietHours {
    type Err = String;

    fn from_str(text: &str) -> Result<QuietHours, String> {
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| format!("`{text}` is not a time range"))?;
        let quiet = QuietHours {
            start: start.parse()?,
            end: end.parse()?,
        };
        if quiet.start == quiet.end {
            return Err("quiet hours start and end at the same time".into());
        }
        Ok(quiet)
    }
}

impl QuietHours {
    /// When a message due at `at` may go out: `at` itself, or the end of the quiet hours.
    pub fn release_time(&self, at: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
        if self.contains(at.with_timezone(&zone).time()) {
            next_time_of_day(at, zone, self.end, Days::ALL)
        } else {
            at
        }
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// At most `messages` messages per contact within `window`, across all journeys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrequencyCap {
    pub messages: u32,
    pub window: Delay,
}

impl FromStr for FrequencyCap {
    type Err = String;

    fn from_str(text: &str) -> Result<FrequencyCap, String> {
        let (count, window) = text
            .split_once(" per ")
            .ok_or_else(|| format!("`{text}` is not a frequency cap"))?;
        let messages: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not a whole number of messages", count.trim()))?;
        if messages == 0 {
            return Err("a frequency cap of 0 would block every message".into());
        }
        Ok(FrequencyCap {
            messages,
            window: window.parse()?,
        })
    }
}

impl QuietHours {
    /// Whether a local time falls inside the range (which may wrap midnight).
    pub fn contains(&self, local: NaiveTime) -> bool {
        let (start, end) = (self.start.0, self.end.0);
        if start < end {
            local >= start && local < end
        } else {
            local >= start || local < end
        }
    }

    /// Whether every quiet minute of `other` is quiet here too: a journey may widen the
    /// workspace's quiet hours, never narrow them.
    pub fn covers(&self, other: &QuietHours) -> bool {
        (0..24 * 60).all(|minute| {
            let time = NaiveTime::from_num_seconds_from_midnight_opt(minute * 60, 0).unwrap_or_default();
            !other.contains(time) || self.contains(time)
        })
    }
}

impl FrequencyCap {
    /// The most messages this cap lets through in any stretch of `window`.
    fn most_within(&self, window: Delay) -> u64 {
        u64::from(self.messages) * window.seconds.div_ceil(self.window.seconds.max(1)).max(1)
    }

    /// Whether a journey's cap promises more than the workspace's allows: more messages within
    /// the journey's own window than the workspace cap lets through in that window.
    pub fn loosens(&self, workspace: &FrequencyCap) -> bool {
        u64::from(self.messages) > workspace.most_within(self.window)
    }
}

impl fmt::Display for FrequencyCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {}", self.messages, self.window)
    }
}

/// Limits on messages that hold for every journey of the workspace (`[guardrails]` in
/// `nurture.toml`). A journey's own `settings` may tighten them, never loosen them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Guardrails {
    pub quiet_hours: Option<QuietHours>,
    pub frequency_cap: Option<FrequencyCap>,
}

/// A standard 5-field cron expression (minute hour day-of-month month day-of-week).
#[derive(Clone, Debug)]
pub struct CronSchedule {
    pub text: String,
    schedule: cron::Schedule,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

pub const CRON_HINT: &str =
    "write five fields: minute hour day-of-month month day-of-week, e.g. \"0 9 * * MON\" for Mondays at 09:00";

impl FromStr for CronSchedule {
    type Err = String;

    fn from_str(text: &str) -> Result<CronSchedule, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!("`{text}` has {} fields, a schedule has 5", fields.len()));
        }
        let day_of_week = translate_day_of_week(fields[4])?;
        // The cron crate wants seconds first and counts weekdays from Sunday = 1.
        let expression = format!(
            "0 {} {} {} {} {}",
            fields[0], fields[1], fields[2], fields[3], day_of_week
        );
        let schedule = cron::Schedule::from_str(&expression)
            .map_err(|error| format!("`{text}` is not a valid schedule: {error}"))?;
        Ok(CronSchedule {
            text: fields.join(" "),
            schedule,
        })
    }
}

impl CronSchedule {
    /// The first tick strictly after `after`, in `zone`.
    pub fn next_after(&self, after: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&zone))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Standard cron counts Sunday as 0 or 7 and Monday as 1; the cron crate counts Sunday as 1.
fn translate_day_of_week(field: &str) -> Result<String, String> {
    let shift = |token: &str| -> Result<String, String> {
        match token.parse::<u8>() {
            Ok(n @ 0..=7) => Ok(((n % 7) + 1).to_string()),
            Ok(n) => Err(format!("day of week `{n}` is out of range 0-7")),
            Err(_) => Ok(token.to_string()),
        }
    };
    let mut parts = Vec::new();
    for part in field.split(',') {
        let (base, step) = match part.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (part, None),
        };
        let translated = match base.split_once('-') {
            Some((from, "7")) if from.parse::<u8>().is_ok() => {
                // A range ending on Sunday (7) wraps in the crate's numbering: split it.
                let from = shift(from)?;
                parts.push("1".to_string());
                format!("{from}-7")
            }
            Some((from, to)) => format!("{}-{}", shift(from)?, shift(to)?),
            None => shift(base)?,
        };
        parts.push(match step {
            Some(step) => format!("{translated}/{step}"),
            None => translated,
        });
    }
    Ok(parts.join(","))
}

pub fn parse_timezone(text: &str) -> Result<Tz, String> {
    text.trim()
        .parse::<Tz>()
        .map_err(|_| format!("`{text}` is not an IANA time zone"))
}

/// Which opens and clicks of an email are tracked: `clicks and opens` (or `true`), `clicks`,
/// `opens`, or `off` (or `false`). Transactional mail is never tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Tracking {
    #[default]
    Off,
    Clicks,
    Opens,
    ClicksAndOpens,
}

pub const TRACKING_HINT: &str = "write `clicks and opens` (or `true`), `clicks`, `opens` or `off` (or `false`)";

impl Tracking {
    pub fn clicks(self) -> bool {
        matches!(self, Tracking::Clicks | Tracking::ClicksAndOpens)
    }

    pub fn opens(self) -> bool {
        matches!(self, Tracking::Opens | Tracking::ClicksAndOpens)
    }
}

impl FromStr for Tracking {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let words: Vec<String> = text.split_whitespace().map(str::to_ascii_lowercase).collect();
        match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["true" | "on" | "yes"] | ["clicks", "and", "opens"] | ["opens", "and", "clicks"] => {
                Ok(Tracking::ClicksAndOpens)
            }
            ["false" | "off" | "no"] => Ok(Tracking::Off),
            ["clicks"] => Ok(Tracking::Clicks),
            ["opens"] => Ok(Tracking::Opens),
            _ => Err(format!("`{text}` is not a kind of tracking")),
        }
    }
}

impl fmt::Display for Tracking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tracking::Off => "off",
            Tracking::Clicks => "clicks",
            Tracking::Opens => "opens",
            Tracking::ClicksAndOpens => "clicks and opens",
        })
    }
}

/// A contact's lifecycle stage, in the order a lead moves through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Subscriber,
    Lead,
    Mql,
    Sql,
    Opportunity,
    Customer,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Subscriber,
        Stage::Lead,
        Stage::Mql,
        Stage::Sql,
        Stage::Opportunity,
        Stage::Customer,
    ];
    pub const NAMES: [&'static str; 6] = ["subscriber", "lead", "mql", "sql", "opportunity", "customer"];

    pub fn as_str(&self) -> &'static str {
        Stage::NAMES[*self as usize]
    }
}

impl FromStr for Stage {
    type Err = String;

    fn from_str(text: &str) -> Result<Stage, String> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == text.trim())
            .ok_or_else(|| format!("`{text}` is not a lifecycle stage"))
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_marketers_write_them() {
        assert_eq!("90s".parse::<Delay>().unwrap().seconds, 90);
        assert_eq!("1d12h".parse::<Delay>().unwrap().seconds, 129_600);
        assert_eq!("1w".parse::<Delay>().unwrap().to_string(), "1w");
        assert!("3".parse::<Delay>().is_err());
        assert!("3x".parse::<Delay>().is_err());
        assert!("h".parse::<Delay>().is_err());
    }

    #[test]
    fn quiet_hours_wrap_midnight() {
        let quiet: QuietHours = "21:00-08:00".parse().unwrap();
        let zone: Tz = "Asia/Shanghai".parse().unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 5, 14, 0, 0).unwrap(); // 22:00 in Shanghai
        assert_eq!(
            quiet.release_time(at, zone),
            Utc.with_ymd_and_hms(2026, 1, 6, 0, 0, 0).unwrap()
        );
        let noon = Utc.with_ymd_and_hms(2026, 1, 5, 4, 0, 0).unwrap();
        assert_eq!(quiet.release_time(noon, zone), noon);
    }

    #[test]
    fn cron_uses_standard_weekday_numbers() {
        let monday: CronSchedule = "0 9 * * 1".parse().unwrap();
        let by_name: CronSchedule = "0 9 * * MON".parse().unwrap();
        let zone: Tz = "UTC".parse().unwrap();
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(); // a Thursday
        let next = monday.next_after(start, zone).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0).unwrap());
        assert_eq!(by_name.next_after(start, zone), Some(next));
        let weekend: CronSchedule = "0 9 * * 6-7".parse().unwrap();
        assert_eq!(
            weekend.next_after(start, zone),
            Some(Utc.with_ymd_and_hms(2026, 1, 3, 9, 0, 0).unwrap())
        );
        assert!("0 9 * *".parse::<CronSchedule>().is_err());
    }

    #[test]
    fn a_journey_may_widen_quiet_hours_but_not_narrow_them() {
        let workspace: QuietHours = "21:00-08:00".parse().unwrap();
        assert!("20:00-09:00".parse::<QuietHours>().unwrap().covers(&workspace));
        assert!(workspace.covers(&workspace));
        assert!(!"22:00-08:00".parse::<QuietHours>().unwrap().covers(&workspace));
        assert!(!"09:00-17:00".parse::<QuietHours>().unwrap().covers(&workspace));
    }

    #[test]
    fn a_journey_cap_loosens_when_it_promises_more_than_the_workspace_allows() {
        let workspace: FrequencyCap = "3 per 7d".parse().unwrap();
        let cap = |text: &str| text.parse::<FrequencyCap>().unwrap();
        assert!(!cap("3 per 7d").loosens(&workspace));
        assert!(!cap("2 per 7d").loosens(&workspace));
        assert!(
            !cap("1 per 1d").loosens(&workspace),
            "one a day is tighter within a day"
        );
        assert!(!cap("3 per 14d").loosens(&workspace));
        assert!(cap("4 per 7d").loosens(&workspace));
        assert!(cap("10 per 1d").loosens(&workspace));
        assert!(
            cap("7 per 14d").loosens(&workspace),
            "the workspace lets 6 through in 14 days"
        );
    }

    #[test]
    fn frequency_caps_need_a_count_and_a_window() {
        let cap: FrequencyCap = "3 per 7d".parse().unwrap();
        assert_eq!((cap.messages, cap.window.seconds), (3, 7 * 86_400));
        assert!("3 in 7d".parse::<FrequencyCap>().is_err());
    }
}
