//! Lead scoring, pure: the decayed value of score entries, and the stage a score qualifies for.
//! The rules come from `scoring.yaml` (`journey::scoring`); the engine applies them to events.

use crate::journey::scoring::{Decay, Scoring};
use crate::journey::values::Stage;
use chrono::{DateTime, Utc};

/// What an entry of `points` earned at `at` is worth at `now`.
pub fn decayed(points: i64, at: DateTime<Utc>, decay: Option<Decay>, now: DateTime<Utc>) -> f64 {
    match decay {
        Some(Decay::HalfLife(half_life)) if half_life.seconds > 0 => {
            let age = (now - at).num_seconds().max(0) as f64;
            points as f64 * 0.5f64.powf(age / half_life.seconds as f64)
        }
        _ => points as f64,
    }
}

/// The score now: entries decayed by age, or less `n` points per whole week without activity.
pub fn score(
    entries: &[(i64, DateTime<Utc>)],
    decay: Option<Decay>,
    last_seen: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> i64 {
    let total: f64 = entries
        .iter()
        .map(|(points, at)| decayed(*points, *at, decay, now))
        .sum();
    let total = total.round() as i64;
    match decay {
        Some(Decay::PointsPerInactiveWeek(per_week)) => {
            let weeks = last_seen.map(|seen| (now - seen).num_weeks().max(0)).unwrap_or(0);
            // Inactivity takes points away, but never below zero.
            if total > 0 {
                (total - per_week * weeks).max(0)
            } else {
                total
            }
        }
        _ => total,
    }
}

/// Many entries of one rule as one that is worth the same now and ever after: the same points
/// (so caps still count them), at the time from which they decay to what the entries are
/// worth together. Under a half-life that time exists only if the entries' worth has the sign
/// of their points and is no larger; otherwise `None` (keep them as they are). Without decay,
/// or under a weekly inactivity decay (which reads only the sum), it is the newest entry's time.
pub fn fold(entries: &[(i64, DateTime<Utc>)], decay: Option<Decay>) -> Option<(i64, DateTime<Utc>)> {
    let newest = entries.iter().map(|(_, at)| *at).max()?;
    let points: i64 = entries.iter().map(|(points, _)| *points).sum();
    match decay {
        Some(Decay::HalfLife(half_life)) if half_life.seconds > 0 => {
            let worth: f64 = entries
                .iter()
                .map(|(points, at)| decayed(*points, *at, decay, newest))
                .sum();
            let ratio = points as f64 / worth;
            // Equal signs and |worth| <= |points|: the ratio is at least 1.
            if points == 0 || !ratio.is_finite() || ratio < 1.0 {
                return None;
            }
            let age = (half_life.seconds as f64 * ratio.log2()).round() as i64;
            Some((points, newest - chrono::Duration::seconds(age)))
        }
        _ => Some((points, newest)),
    }
}

/// The stage a score moves the contact to, if any: forward only, never back.
pub fn qualifies(scoring: &Scoring, score: i64, stage: Stage) -> Option<Stage> {
    if score >= scoring.sql && stage < Stage::Sql {
        Some(Stage::Sql)
    } else if score >= scoring.mql && stage < Stage::Mql {
        Some(Stage::Mql)
    } else {
        None
    }
}

/// How many of `points` a capped rule may still give, given what it gave in the window.
pub fn within_cap(points: i64, given: i64, cap: Option<i64>) -> i64 {
    match cap {
        Some(cap) if points > 0 => points.min((cap - given).max(0)),
        _ => points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::values::Delay;
    use chrono::Duration;

    #[test]
    fn folded_entries_are_worth_what_the_entries_were_now_and_later() {
        let now = DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let decay = Some(Decay::HalfLife(Delay::from_secs(30 * 86_400)));
        let entries: Vec<(i64, DateTime<Utc>)> = (0..50).map(|day| (5, now - Duration::days(90 - day))).collect();
        let folded = fold(&entries, decay).unwrap();
        assert_eq!(folded.0, 250, "the points stay, for caps");
        for later in [0, 10, 100] {
            let at = now + Duration::days(later);
            let before = score(&entries, decay, None, at);
            let after = score(&[folded], decay, None, at);
            assert!((before - after).abs() <= 1, "{later} days on: {before} vs {after}");
        }
        assert_eq!(
            fold(&[(5, now), (-5, now - Duration::days(40))], decay),
            None,
            "worth without points"
        );
        let weekly = Some(Decay::PointsPerInactiveWeek(5));
        assert_eq!(fold(&entries, weekly), Some((250, now - Duration::days(41))));
    }

    #[test]
    fn half_life_halves_the_points() {
        let now = DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let decay = Some(Decay::HalfLife(Delay::from_secs(30 * 86_400)));
        assert_eq!(score(&[(100, now - Duration::days(30))], decay, None, now), 50);
        assert_eq!(score(&[(100, now)], decay, None, now), 100);
    }

    #[test]
    fn inactive_weeks_cost_points_but_not_below_zero() {
        let now = DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let decay = Some(Decay::PointsPerInactiveWeek(5));
        assert_eq!(score(&[(40, now)], decay, Some(now - Duration::weeks(3)), now), 25);
        assert_eq!(score(&[(10, now)], decay, Some(now - Duration::weeks(10)), now), 0);
    }

    #[test]
    fn stages_only_move_forward() {
        let scoring = Scoring {
            mql: 50,
            sql: 100,
            decay: None,
            rules: vec![],
        };
        assert_eq!(qualifies(&scoring, 60, Stage::Lead), Some(Stage::Mql));
        assert_eq!(qualifies(&scoring, 120, Stage::Lead), Some(Stage::Sql));
        assert_eq!(qualifies(&scoring, 120, Stage::Sql), None);
        assert_eq!(qualifies(&scoring, 10, Stage::Sql), None, "never backwards");
        assert_eq!(within_cap(10, 15, Some(20)), 5);
        assert_eq!(within_cap(-10, 15, Some(20)), -10);
    }
}
