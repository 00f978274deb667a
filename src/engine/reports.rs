//! I/O of ROI reports. Three parts:
//! - `note_report_facts`: what the event path adds for reports, one multi-row insert per
//!   round and only when the round has such events (opens, clicks, unsubscribes, revenue).
//! - `roll_up_reports`: the holder of the `reports` lease adds the facts stored since the
//!   watermark to the daily rollups, in one transaction that moves the watermark
//!   (compare-and-set, so a fact is added exactly once whoever runs it).
//! - `roi_report`: the rollups of the days asked for, plus the facts stored since the
//!   watermark, read in one snapshot: reports are fresh without scanning history.
//!
//! Why a background rollup and not counters bumped where facts are written: the step batch and
//! the ingest group stay as they are (no extra statement, no hot counter row that parallel
//! batches would queue on), and a rollup run recomputes nothing: it adds a few minutes of facts.

use super::runner::{Engine, Result};
use crate::expr::EventFacts;
use crate::reports::{self, Conversion, Model, Place, Roi, Rollup, Window};
use crate::store::{self, reports as facts};
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use std::collections::HashSet;
use tracing::{debug, warn};

/// Facts are rolled up once they are this old: every transaction that stored one with an
/// earlier time has committed by then. Younger facts are read live by each report.
const SETTLE_MS: i64 = 120_000;

/// Events that come back from a journey's email, kept as touches: (event, kind).
const TOUCH_EVENTS: [(&str, &str); 3] = [
    ("Email Opened", "opened"),
    ("Email Link Clicked", "clicked"),
    ("Unsubscribed", "unsubscribed"),
];

impl Engine {
    /// Records what reports need from a round of stored events (`event_ids` in the same order):
    /// the revenue of revenue events, converted to the workspace currency where a rate is
    /// known, and opens, clicks and unsubscribes with their journey and step as columns.
    pub(crate) async fn note_report_facts(
        &self,
        tx: &mut store::Tx<'_>,
        events: &[(i64, &EventFacts, DateTime<Utc>, &crate::store::contacts::Received)],
        event_ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let config = &self.config.reports;
        let mut revenue = Vec::new();
        let mut touches = Vec::new();
        for ((contact_id, event, at, _), event_id) in events.iter().zip(event_ids) {
            if let Some(property) = config.revenue_events.get(&event.name) {
                let Some(amount) = event.properties.get(property).and_then(number) else {
                    continue;
                };
                let currency = event
                    .properties
                    .get("currency")
                    .and_then(Json::as_str)
                    .map(|c| c.trim().to_ascii_uppercase())
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| config.currency.clone());
                let amount = reports::micros(amount);
                revenue.push(facts::NewRevenue {
                    event_id: *event_id,
                    contact_id: *contact_id,
                    name: &event.name,
                    amount,
                    value: config.rate(&currency).map(|rate| (amount as f64 * rate).round() as i64),
                    currency,
                    at: store::ms(*at),
                    recorded_at: store::ms(now),
                });
            } else if let Some((_, kind)) = TOUCH_EVENTS.iter().find(|(name, _)| *name == event.name) {
                let text = |name: &str| event.properties.get(name).and_then(Json::as_str);
                let Some(journey_id) = text("journey") else { continue };
                touches.push(facts::NewTouch {
                    contact_id: *contact_id,
                    journey_id,
                    step: text("step").unwrap_or_default(),
                    channel: text("channel").unwrap_or("email"),
                    kind,
                    at: store::ms(now),
                });
            }
        }
        if !revenue.is_empty() {
            facts::record_revenue(tx, &revenue).await?;
        }
        if !touches.is_empty() {
            facts::record_touches(tx, &touches).await?;
        }
        Ok(())
    }

    /// Makes the prices of `[reports.costs]` the ones messages are charged from now on.
    pub async fn record_prices(&self) -> Result<()> {
        let costs = &self.config.reports.costs;
        let mut connection = self.store.pool.acquire().await?;
        facts::set_unit_costs(
            &mut connection,
            &[
                ("email", reports::micros(costs.email)),
                ("assignment", reports::micros(costs.assignment)),
            ],
            store::ms(self.clock.now()),
        )
        .await?;
        Ok(())
    }

    /// Adds the facts that have settled since the last run to the rollups, if this process
    /// holds the `reports` lease. Returns whether it added any.
    pub async fn roll_up_reports(&self, holder: &str) -> Result<bool> {
        let now = self.clock.now();
        let every =
            chrono::Duration::from_std(self.config.reports.roll_up_every).unwrap_or(chrono::Duration::minutes(1));
        if !self.store.take_lease("reports", holder, now, now + every * 3).await? {
            return Ok(false);
        }
        self.roll_up_until(store::ms(now) - SETTLE_MS).await
    }

    /// Adds the facts stored before `until` (ms) and after the watermark to the rollups.
    pub async fn roll_up_until(&self, until: i64) -> Result<bool> {
        let mut tx = self.store.begin().await?;
        let from = facts::watermark(&mut tx).await?;
        if until <= from {
            return Ok(false);
        }
        let rollup = self.facts_between(&mut tx, from, until).await?;
        if !facts::add_rollup(&mut tx, &rollup, from, until).await? {
            debug!("Another process rolled up the reports first.");
            return Ok(false);
        }
        tx.commit().await?;
        debug!(from, until, places = rollup.activity.len(), "Reports rolled up.");
        Ok(true)
    }

    /// The ROI report of the days `[from, to]` (midnights, ms).
    pub async fn roi_report(&self, from: i64, to: i64, model: Model, group_by: reports::GroupBy) -> Result<Roi> {
        let mut tx = self.store.begin().await?;
        if self.store.kind == store::Kind::Postgres {
            // The rollups and the facts after the watermark must be read in one snapshot, or
            // a rollup committing between the two reads would be counted twice.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let watermark = facts::watermark(&mut tx).await?;
        let mut rollup = facts::rollup_of_days(&mut tx, from, to, model).await?;
        let now = store::ms(self.clock.now());
        if now >= watermark {
            let recent = self.facts_between(&mut tx, watermark, now + 1).await?;
            rollup.merge(&recent);
        }
        tx.commit().await?;
        Ok(reports::roi(&rollup, from, to, model, group_by))
    }

    /// Everything stored in `[after, until)` (ms) as rollup rows: activity and its cost, each
    /// journey's fixed cost for the days starting in the range, and the credit of the
    /// conversions stored in it under every model.
    async fn facts_between(&self, connection: &mut sqlx::AnyConnection, after: i64, until: i64) -> Result<Rollup> {
        let config = &self.config.reports;
        let mut rollup = Rollup::default();
        let sms = facts::activity_between(connection, after, until, &mut rollup).await?;
        for ((place, currency), amount) in sms {
            match config.rate(&currency) {
                Some(rate) => rollup.activity_at(place).cost += reports::micros(amount * rate),
                None => warn!(%currency, "SMS cost in a currency with no rate under [reports.rates]; left out."),
            }
        }
        self.fixed_costs(connection, after, until, &mut rollup).await?;

        let stored = facts::conversions_between(connection, after, until).await?;
        if stored.is_empty() {
            return Ok(rollup);
        }
        let mut conversions = Vec::with_capacity(stored.len());
        for c in stored {
            match (&c.journey_id, c.value) {
                // A goal whose event carries revenue is counted once, as that revenue.
                (Some(_), _) if config.revenue_events.contains_key(&c.event_name) => {}
                (Some(journey), _) => conversions.push(Conversion {
                    contact: c.contact_id,
                    at: c.at,
                    revenue: c.goal_revenue.map(reports::micros).unwrap_or(0),
                    journey: Some(journey.clone()),
                }),
                (None, Some(value)) => conversions.push(Conversion {
                    contact: c.contact_id,
                    at: c.at,
                    revenue: value,
                    journey: None,
                }),
                (None, None) => {
                    let credit = rollup
                        .unconverted
                        .entry((reports::day_of(c.at), c.currency))
                        .or_default();
                    credit.conversions += reports::attribution::CONVERSION;
                    credit.revenue += c.amount;
                }
            }
        }
        let window = Window {
            lookback: config.lookback.as_millis() as i64,
            half_life: config.half_life.as_millis() as i64,
        };
        let contacts: Vec<i64> = conversions
            .iter()
            .map(|c| c.contact)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let since = conversions.iter().map(|c| c.at).min().unwrap_or(0) - window.lookback;
        let until = conversions.iter().map(|c| c.at).max().unwrap_or(0);
        let touches = facts::touches_of(connection, &contacts, since, until).await?;
        reports::credit(&mut rollup, &conversions, &touches, window);
        Ok(rollup)
    }

    /// A journey's `cost` is per month (30 days), charged a thirtieth on each day that starts
    /// in `[after, until)` from the day the journey was first loaded.
    async fn fixed_costs(
        &self,
        connection: &mut sqlx::AnyConnection,
        after: i64,
        until: i64,
        rollup: &mut Rollup,
    ) -> Result<()> {
        let catalog = self.catalog();
        let priced: Vec<_> = catalog.journeys.iter().filter(|j| j.settings.cost.is_some()).collect();
        if priced.is_empty() {
            return Ok(());
        }
        let since = facts::journeys_since(connection).await?;
        for journey in priced {
            let Some(first) = since.get(&journey.id).copied() else {
                continue;
            };
            let Some(rate) = self.config.reports.rate(&journey.settings.currency) else {
                warn!(journey = %journey.id, currency = %journey.settings.currency,
                    "The journey's cost is in a currency with no rate under [reports.rates]; left out.");
                continue;
            };
            let daily = reports::micros(journey.settings.cost.unwrap_or(0.0) * rate) / 30;
            // The first midnight at or after `after`, and not before the journey's first day.
            let start = after.max(reports::day_of(first));
            let mut day = reports::day_of(start + reports::DAY_MS - 1);
            while day < until {
                let place = Place {
                    day,
                    journey: journey.id.clone(),
                    step: String::new(),
                    channel: reports::FIXED.into(),
                };
                rollup.activity_at(place).cost += daily;
                day += reports::DAY_MS;
            }
        }
        Ok(())
    }
}

impl Engine {
    /// The funnel of every version of a journey that has enrollments; `None`: no such journey.
    pub async fn funnel_report(&self, journey_id: &str) -> Result<Option<Vec<reports::funnel::Funnel>>> {
        let mut connection = self.store.pool.acquire().await?;
        let enrollments = facts::enrollments_of_journey(&mut connection, journey_id).await?;
        let current = self.catalog().journeys.iter().find(|j| j.id == journey_id).cloned();
        if enrollments.is_empty() && current.is_none() {
            return Ok(None);
        }
        let reached = facts::steps_reached(&mut connection, journey_id).await?;
        let goals = facts::goals_of_journey(&mut connection, journey_id).await?;
        let mut versions: Vec<String> = enrollments
            .iter()
            .map(|(_, v, _)| v.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if let Some(journey) = &current
            && !versions.contains(&journey.version)
        {
            versions.push(journey.version.clone());
        }
        versions.sort();
        let mut funnels = Vec::new();
        for version in versions {
            let Some(journey) = self.journey(&mut connection, journey_id, &version).await? else {
                continue;
            };
            let steps: Vec<String> = journey.steps.iter().map(|s| s.id.clone()).collect();
            let of_version: Vec<(i64, i64)> = enrollments
                .iter()
                .filter(|(_, v, _)| *v == version)
                .map(|(id, _, at)| (*id, *at))
                .collect();
            funnels.push(reports::funnel::funnel(
                &version,
                &steps,
                &of_version,
                &reached,
                goals.get(&version).copied().unwrap_or(0),
            ));
        }
        // The running version first.
        if let Some(journey) = current {
            funnels.sort_by_key(|f| f.version != journey.version);
        }
        Ok(Some(funnels))
    }

    /// Sales KPIs of the leads created on days `[from, to]`, with costs per channel under `model`.
    pub async fn kpi_report(&self, from: i64, to: i64, model: Model) -> Result<reports::funnel::Kpis> {
        let mut kpis = reports::funnel::Kpis::default();
        let mut connection = self.store.pool.acquire().await?;
        let (leads, reached) = facts::leads_between(&mut connection, from, to + reports::DAY_MS).await?;
        drop(connection);
        reports::funnel::stages(&mut kpis, &leads, &reached);
        let by_channel = self.roi_report(from, to, model, reports::GroupBy::Channel).await?;
        for row in by_channel.rows.iter().filter(|r| !r.unattributed()) {
            let channel = row.channel.clone().unwrap_or_default();
            let cost = reports::money(row.activity.cost);
            let per_lead = (kpis.reached[0] > 0).then(|| cost / kpis.reached[0] as f64);
            kpis.channels.push((channel, per_lead, row.cost_per_conversion()));
        }
        let email = by_channel.rows.iter().find(|r| r.channel.as_deref() == Some("email"));
        kpis.unsubscribe_rate = email
            .filter(|r| r.activity.delivered > 0)
            .map(|r| r.activity.unsubscribed as f64 / r.activity.delivered as f64);
        Ok(kpis)
    }
}

/// A revenue amount: a number, or a number written as text (`"49.90"`).
fn number(value: &Json) -> Option<f64> {
    match value {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|v: &f64| v.is_finite())
}

/// Runs `roll_up_reports` every `[reports] roll_up_every` until `shutdown`.
pub async fn run_rollups(
    engine: std::sync::Arc<Engine>,
    holder: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        if let Err(error) = engine.roll_up_reports(&holder).await {
            warn!(%error, "Report rollup failed; the next run takes its facts.");
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(engine.config.reports.roll_up_every) => {}
        }
    }
}
