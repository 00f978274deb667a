//! ROI reporting. **Pure**: what the rollups hold (`Rollup`), how conversions are credited to
//! the touches before them (`credit`), and the report rows, tables and CSV made from them.
//! The facts are read and the rollups kept by `engine/reports.rs`; the SQL is in
//! `store/reports.rs`.

pub mod attribution;
pub mod dashboard;
pub mod funnel;
pub mod render;

pub use attribution::Model;

use std::collections::{BTreeMap, HashMap};

pub const DAY_MS: i64 = 86_400_000;

/// Midnight (UTC, ms) of the day `at` falls on.
pub fn day_of(at: i64) -> i64 {
    at.div_euclid(DAY_MS) * DAY_MS
}

/// Money as integer micro-units: `12.5` is 12,500,000.
pub fn micros(amount: f64) -> i64 {
    (amount * 1e6).round() as i64
}

/// Channels as reports name them: messages by their kind, a lead handed to sales, entering a
/// journey, and a journey's fixed cost.
pub fn channel_of_effect(kind: &str) -> &str {
    match kind {
        "assignment" => "sales",
        other => other,
    }
}
pub const ENROLLMENT: &str = "enrollment";
pub const FIXED: &str = "fixed";

/// What a row of the rollups is about: a day and a journey's step on a channel. Entering the
/// journey and its fixed cost have no step (`""`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Place {
    pub day: i64,
    pub journey: String,
    pub step: String,
    pub channel: String,
}

/// What happened in a place: counts and cost (micro-units of the workspace currency).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub enrolled: i64,
    pub sent: i64,
    pub delivered: i64,
    pub opened: i64,
    pub clicked: i64,
    pub unsubscribed: i64,
    pub cost: i64,
}

impl Activity {
    fn add(&mut self, other: &Activity) {
        self.enrolled += other.enrolled;
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.opened += other.opened;
        self.clicked += other.clicked;
        self.unsubscribed += other.unsubscribed;
        self.cost += other.cost;
    }
}

/// Credit earned: thousandths of conversions and revenue (micro-units).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Credit {
    pub conversions: i64,
    pub revenue: i64,
}

impl Credit {
    fn add(&mut self, other: &Credit) {
        self.conversions += other.conversions;
        self.revenue += other.revenue;
    }
}

/// Daily sums: what the rollup tables hold, and what the facts since the last rollup add.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rollup {
    pub activity: BTreeMap<Place, Activity>,
    /// Per model; the conversion's day. Unattributed credit has an empty journey and channel.
    pub credits: BTreeMap<(Model, Place), Credit>,
    /// Revenue in a currency with no rate: (day, currency) -> (conversions, amount).
    pub unconverted: BTreeMap<(i64, String), Credit>,
}

impl Rollup {
    pub fn activity_at(&mut self, place: Place) -> &mut Activity {
        self.activity.entry(place).or_default()
    }

    pub fn merge(&mut self, other: &Rollup) {
        for (place, activity) in &other.activity {
            self.activity.entry(place.clone()).or_default().add(activity);
        }
        for (key, credit) in &other.credits {
            self.credits.entry(key.clone()).or_default().add(credit);
        }
        for (key, credit) in &other.unconverted {
            self.unconverted.entry(key.clone()).or_default().add(credit);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.activity.is_empty() && self.credits.is_empty() && self.unconverted.is_empty()
    }
}

/// Something a journey did with a contact that may earn credit: entering it, a message handed
/// over, a lead handed to sales, an open, a click.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Touch {
    pub at: i64,
    pub journey: String,
    pub step: String,
    pub channel: String,
}

/// A conversion to credit: revenue (or a journey's goal) of a contact at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversion {
    pub contact: i64,
    pub at: i64,
    /// Micro-units of the workspace currency.
    pub revenue: i64,
    /// A journey's goal is credited to that journey's touches only; revenue to any journey's.
    pub journey: Option<String>,
}

/// How far back touches count, and the half-life of `time_decay` (both ms).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub lookback: i64,
    pub half_life: i64,
}

/// Credits each conversion to the touches of its contact within the window before it, under
/// every model, into `rollup` (by the conversion's day). `touches` are each contact's, in any
/// order. Revenue with no touch in the window is credited as unattributed, never dropped.
pub fn credit(rollup: &mut Rollup, conversions: &[Conversion], touches: &HashMap<i64, Vec<Touch>>, window: Window) {
    for conversion in conversions {
        let mut eligible: Vec<&Touch> = touches
            .get(&conversion.contact)
            .map(|list| {
                list.iter()
                    .filter(|t| t.at <= conversion.at && t.at >= conversion.at - window.lookback)
                    .filter(|t| conversion.journey.as_ref().is_none_or(|j| *j == t.journey))
                    .collect()
            })
            .unwrap_or_default();
        // Oldest first; touches at the same time in a fixed order, so shares never depend on
        // the order rows came back in.
        eligible.sort_by(|a, b| {
            (a.at, channel_rank(&a.channel), &a.journey, &a.step).cmp(&(
                b.at,
                channel_rank(&b.channel),
                &b.journey,
                &b.step,
            ))
        });
        let day = day_of(conversion.at);
        let times: Vec<i64> = eligible.iter().map(|t| t.at).collect();
        for model in Model::ALL {
            if eligible.is_empty() {
                let place = Place {
                    day,
                    journey: String::new(),
                    step: String::new(),
                    channel: String::new(),
                };
                rollup.credits.entry((model, place)).or_default().add(&Credit {
                    conversions: attribution::CONVERSION,
                    revenue: conversion.revenue,
                });
                continue;
            }
            let weights = attribution::weights(model, &times, conversion.at, window.half_life);
            let revenue = attribution::split_money(conversion.revenue, &weights);
            let conversions = attribution::split(attribution::CONVERSION, &weights);
            for ((touch, revenue), conversions) in eligible.iter().zip(revenue).zip(conversions) {
                if revenue == 0 && conversions == 0 {
                    continue;
                }
                let place = Place {
                    day,
                    journey: touch.journey.clone(),
                    step: touch.step.clone(),
                    channel: touch.channel.clone(),
                };
                rollup
                    .credits
                    .entry((model, place))
                    .or_default()
                    .add(&Credit { conversions, revenue });
            }
        }
    }
}

/// Entering a journey comes before what the journey then sends, and a message before what is
/// done with it, when they share a millisecond.
fn channel_rank(channel: &str) -> u8 {
    match channel {
        ENROLLMENT => 0,
        "email" | "sms" | "sales" => 1,
        "opened" => 2,
        _ => 3,
    }
}

/// How a report's rows are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Journey,
    Step,
    Channel,
}

impl std::str::FromStr for GroupBy {
    type Err = String;

    fn from_str(text: &str) -> Result<GroupBy, String> {
        match text {
            "journey" => Ok(GroupBy::Journey),
            "step" => Ok(GroupBy::Step),
            "channel" => Ok(GroupBy::Channel),
            other => Err(format!("cannot group by `{other}`; write journey, step or channel")),
        }
    }
}

/// One row of the ROI report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoiRow {
    /// `None` for the unattributed row.
    pub journey: Option<String>,
    pub step: Option<String>,
    pub channel: Option<String>,
    pub activity: Activity,
    pub credit: Credit,
}

impl RoiRow {
    pub fn unattributed(&self) -> bool {
        self.journey.is_none() && self.channel.is_none()
    }

    pub fn conversions(&self) -> f64 {
        self.credit.conversions as f64 / attribution::CONVERSION as f64
    }

    /// Conversions per contact reached: per enrollment where the row has some, else per
    /// message delivered.
    pub fn conversion_rate(&self) -> Option<f64> {
        let reached = if self.activity.enrolled > 0 {
            self.activity.enrolled
        } else {
            self.activity.delivered
        };
        (reached > 0).then(|| self.conversions() / reached as f64)
    }

    /// (revenue - cost) / cost; none without cost.
    pub fn roi(&self) -> Option<f64> {
        (self.activity.cost > 0).then(|| (self.credit.revenue - self.activity.cost) as f64 / self.activity.cost as f64)
    }

    pub fn cost_per_conversion(&self) -> Option<f64> {
        (self.credit.conversions > 0).then(|| money(self.activity.cost) / self.conversions())
    }
}

/// Micro-units as an amount.
pub fn money(micros: i64) -> f64 {
    micros as f64 / 1e6
}

/// The ROI report over days `[from, to]` (midnights, ms) under `model`, grouped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Roi {
    pub rows: Vec<RoiRow>,
    /// Every row added up: attributed and unattributed revenue together.
    pub total: RoiRow,
    /// Revenue in currencies without a rate: currency -> credit.
    pub unconverted: BTreeMap<String, Credit>,
}

type GroupKey = (Option<String>, Option<String>, Option<String>);

fn row_of(rows: &mut BTreeMap<GroupKey, RoiRow>, key: GroupKey) -> &mut RoiRow {
    rows.entry(key.clone()).or_insert_with(|| RoiRow {
        journey: key.0,
        step: key.1,
        channel: key.2,
        ..RoiRow::default()
    })
}

/// What a report was asked for: days `[from, to]` (midnights, ms), a model and a grouping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asked {
    pub from: i64,
    pub to: i64,
    pub model: Model,
    pub group_by: GroupBy,
}

impl Asked {
    /// Reads what the API's query or the command's flags say: days as `YYYY-MM-DD` (the last
    /// 30 days to `today` by default), `last_touch` and `journey` by default. A mistake names
    /// its field.
    pub fn read(
        from: Option<&str>,
        to: Option<&str>,
        model: Option<&str>,
        group_by: Option<&str>,
        today: i64,
    ) -> Result<Asked, (&'static str, String)> {
        let day = |field: &'static str, text: Option<&str>| {
            text.map(|text| parse_day(text).ok_or((field, format!("`{text}` is not a date; write it as YYYY-MM-DD"))))
                .transpose()
        };
        let to = day("to", to)?.unwrap_or(today);
        let from = day("from", from)?.unwrap_or(to - 29 * DAY_MS);
        if from > to {
            return Err(("from", "`from` is after `to`".into()));
        }
        Ok(Asked {
            from,
            to,
            model: model
                .map(str::parse)
                .transpose()
                .map_err(|e| ("model", e))?
                .unwrap_or(Model::LastTouch),
            group_by: group_by
                .map(str::parse)
                .transpose()
                .map_err(|e| ("group_by", e))?
                .unwrap_or(GroupBy::Journey),
        })
    }
}

/// Midnight UTC of a `YYYY-MM-DD` day, in ms.
pub fn parse_day(text: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// Groups the rollups of `[from, to]` into report rows under `model`.
pub fn roi(rollup: &Rollup, from: i64, to: i64, model: Model, group_by: GroupBy) -> Roi {
    let key = |place: &Place| -> GroupKey {
        if place.journey.is_empty() && place.channel.is_empty() {
            return (None, None, None);
        }
        match group_by {
            GroupBy::Journey => (Some(place.journey.clone()), None, None),
            GroupBy::Step => (Some(place.journey.clone()), Some(place.step.clone()), None),
            GroupBy::Channel => (None, None, Some(place.channel.clone())),
        }
    };
    let within = |day: i64| day >= from && day <= to;
    let mut rows: BTreeMap<GroupKey, RoiRow> = BTreeMap::new();
    let mut total = RoiRow::default();
    for (place, activity) in rollup.activity.iter().filter(|(p, _)| within(p.day)) {
        row_of(&mut rows, key(place)).activity.add(activity);
        total.activity.add(activity);
    }
    for ((_, place), credit) in rollup.credits.iter().filter(|((m, p), _)| *m == model && within(p.day)) {
        row_of(&mut rows, key(place)).credit.add(credit);
        total.credit.add(credit);
    }
    let mut unconverted: BTreeMap<String, Credit> = BTreeMap::new();
    for ((day, currency), credit) in &rollup.unconverted {
        if within(*day) {
            unconverted.entry(currency.clone()).or_default().add(credit);
        }
    }
    // The unattributed row comes last.
    let (mut rows, unattributed): (Vec<RoiRow>, Vec<RoiRow>) = rows.into_values().partition(|r| !r.unattributed());
    rows.extend(unattributed);
    Roi {
        rows,
        total,
        unconverted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(at: i64, journey: &str, step: &str, channel: &str) -> Touch {
        Touch {
            at,
            journey: journey.into(),
            step: step.into(),
            channel: channel.into(),
        }
    }

    #[test]
    fn revenue_without_a_touch_in_the_window_is_unattributed_and_a_goal_credits_its_own_journey() {
        let window = Window {
            lookback: 30 * DAY_MS,
            half_life: 7 * DAY_MS,
        };
        let touches = HashMap::from([(
            1,
            vec![
                touch(0, "a", "mail", "email"),
                touch(40 * DAY_MS, "b", "", ENROLLMENT),
                touch(41 * DAY_MS, "a", "mail", "email"),
            ],
        )]);
        let conversions = [
            // Day 35: the touch of day 0 is out of the window.
            Conversion {
                contact: 1,
                at: 35 * DAY_MS,
                revenue: 10_000_000,
                journey: None,
            },
            // Day 42: b's goal, credited to b only.
            Conversion {
                contact: 1,
                at: 42 * DAY_MS,
                revenue: 0,
                journey: Some("b".into()),
            },
        ];
        let mut rollup = Rollup::default();
        credit(&mut rollup, &conversions, &touches, window);
        let report = roi(&rollup, 0, 100 * DAY_MS, Model::Linear, GroupBy::Journey);
        let rows: Vec<(Option<&str>, i64, i64)> = report
            .rows
            .iter()
            .map(|r| (r.journey.as_deref(), r.credit.conversions, r.credit.revenue))
            .collect();
        assert_eq!(rows, [(Some("b"), 1000, 0), (None, 1000, 10_000_000)]);
        assert!(report.rows[1].unattributed());
        assert_eq!(report.total.credit.revenue, 10_000_000);
    }
}
