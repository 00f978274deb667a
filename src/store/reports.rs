//! ROI reports: the facts written beside the event path (opens, clicks, revenue, stage
//! changes), the price list, the reads that add a time range of facts to the rollups, and the
//! rollups themselves (`report_days`, `report_credits`, `report_unconverted`).

use super::{Result, Tx, padded_rows_per_statement, rows_per_statement, value_rows};
use crate::reports::{Activity, Credit, Model, Place, Rollup, Touch};
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;

/// An open, click or unsubscribe of a journey's message.
pub struct NewTouch<'a> {
    pub contact_id: i64,
    pub journey_id: &'a str,
    pub step: &'a str,
    pub channel: &'a str,
    pub kind: &'a str,
    pub at: i64,
}

pub async fn record_touches(tx: &mut Tx<'_>, touches: &[NewTouch<'_>]) -> Result<()> {
    for chunk in touches.chunks(rows_per_statement(6)) {
        let sql = format!(
            "INSERT INTO touches (contact_id, journey_id, step, channel, kind, at) VALUES {}",
            value_rows(1, chunk.len(), &[""; 6])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for t in chunk {
            query = query
                .bind(t.contact_id)
                .bind(t.journey_id)
                .bind(t.step)
                .bind(t.channel)
                .bind(t.kind)
                .bind(t.at);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// A revenue event's amount, read once when it is stored.
pub struct NewRevenue<'a> {
    pub event_id: i64,
    pub contact_id: i64,
    pub name: &'a str,
    pub amount: i64,
    pub currency: String,
    /// In the workspace currency; `None` without a rate.
    pub value: Option<i64>,
    pub at: i64,
    pub recorded_at: i64,
}

pub async fn record_revenue(tx: &mut Tx<'_>, rows: &[NewRevenue<'_>]) -> Result<()> {
    for chunk in rows.chunks(rows_per_statement(8)) {
        let sql = format!(
            "INSERT INTO revenue_events (event_id, contact_id, name, amount, currency, value, at, recorded_at) VALUES {} ON CONFLICT DO NOTHING",
            value_rows(1, chunk.len(), &[""; 8])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for r in chunk {
            query = query
                .bind(r.event_id)
                .bind(r.contact_id)
                .bind(r.name)
                .bind(r.amount)
                .bind(r.currency.clone())
                .bind(r.value)
                .bind(r.at)
                .bind(r.recorded_at);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

pub async fn record_stage(tx: &mut Tx<'_>, contact_id: i64, stage: &str, at: i64) -> Result<()> {
    sqlx::query("INSERT INTO stage_changes (contact_id, stage, at) VALUES ($1, $2, $3)")
        .bind(contact_id)
        .bind(stage)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Makes `(channel, price)` the prices from `now` on, keeping the old ones for what was sent
/// under them. Unchanged prices write nothing.
pub async fn set_unit_costs(connection: &mut AnyConnection, prices: &[(&str, i64)], now: i64) -> Result<()> {
    for (channel, cost) in prices {
        let current = sqlx::query("SELECT cost FROM unit_costs WHERE channel = $1 AND until IS NULL")
            .bind(*channel)
            .fetch_optional(&mut *connection)
            .await?
            .map(|row| row.try_get::<i64, _>(0))
            .transpose()?;
        if current == Some(*cost) || (current.is_none() && *cost == 0) {
            continue;
        }
        let mut tx = sqlx::Connection::begin(&mut *connection).await?;
        sqlx::query("UPDATE unit_costs SET until = $1 WHERE channel = $2 AND until IS NULL")
            .bind(now)
            .bind(*channel)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO unit_costs (channel, cost, since) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(*channel)
            .bind(*cost)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The activity of the facts stored in `[after, until)` (ms), added to `rollup`: enrollments,
/// messages recorded (sent) and handed over (delivered, with their cost), opens, clicks and
/// unsubscribes. SMS costs come in their own currency: `(place, currency) -> amount`.
pub async fn activity_between(
    connection: &mut AnyConnection,
    after: i64,
    until: i64,
    rollup: &mut Rollup,
) -> Result<HashMap<(Place, String), f64>> {
    let day = |column: &str| format!("({column} / 86400000) * 86400000");
    let place = |day: i64, journey: String, step: String, channel: &str| Place {
        day,
        journey,
        step,
        channel: crate::reports::channel_of_effect(channel).to_string(),
    };
    let sql = format!(
        "SELECT {}, journey_id, COUNT(*) FROM enrollments WHERE entered_at >= $1 AND entered_at < $2 GROUP BY 1, 2",
        day("entered_at")
    );
    for row in sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(until)
        .fetch_all(&mut *connection)
        .await?
    {
        let at = place(
            row.try_get(0)?,
            row.try_get(1)?,
            String::new(),
            crate::reports::ENROLLMENT,
        );
        rollup.activity_at(at).enrolled += row.try_get::<i64, _>(2)?;
    }
    let sql = format!(
        "SELECT {}, journey_id, step, kind, COUNT(*) FROM effects
         WHERE created_at >= $1 AND created_at < $2 AND kind IN ('email', 'sms', 'assignment') GROUP BY 1, 2, 3, 4",
        day("created_at")
    );
    for row in sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(until)
        .fetch_all(&mut *connection)
        .await?
    {
        let kind: String = row.try_get(3)?;
        let at = place(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, &kind);
        rollup.activity_at(at).sent += row.try_get::<i64, _>(4)?;
    }
    // A message costs the price of its channel when it was handed over, or for SMS what the
    // SMS log recorded (segments times the price per segment).
    let sql = format!(
        "SELECT {}, e.journey_id, e.step, e.kind, COALESCE(s.currency, ''), COUNT(DISTINCT e.effect_key),
                CAST(COALESCE(SUM(p.cost), 0) AS BIGINT), CAST(COALESCE(SUM(s.cost), 0) AS DOUBLE PRECISION)
         FROM effects e
         LEFT JOIN unit_costs p ON p.channel = e.kind AND p.since <= e.done_at AND (p.until IS NULL OR e.done_at < p.until)
         LEFT JOIN sms_messages s ON s.effect_key = e.effect_key
         WHERE e.status = 'done' AND e.done_at >= $1 AND e.done_at < $2 AND e.kind IN ('email', 'sms', 'assignment')
         GROUP BY 1, 2, 3, 4, 5",
        day("e.done_at")
    );
    let mut sms_costs = HashMap::new();
    for row in sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(until)
        .fetch_all(&mut *connection)
        .await?
    {
        let kind: String = row.try_get(3)?;
        let at = place(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, &kind);
        let activity = rollup.activity_at(at.clone());
        activity.delivered += row.try_get::<i64, _>(5)?;
        activity.cost += row.try_get::<i64, _>(6)?;
        let currency: String = row.try_get(4)?;
        let sms: f64 = row.try_get(7)?;
        if !currency.is_empty() && sms != 0.0 {
            *sms_costs.entry((at, currency)).or_insert(0.0) += sms;
        }
    }
    let sql = format!(
        "SELECT {}, journey_id, step, channel, kind, COUNT(*) FROM touches WHERE at >= $1 AND at < $2 GROUP BY 1, 2, 3, 4, 5",
        day("at")
    );
    for row in sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(until)
        .fetch_all(&mut *connection)
        .await?
    {
        let kind: String = row.try_get(4)?;
        let channel: String = row.try_get(3)?;
        let activity = rollup.activity_at(place(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, &channel));
        let count: i64 = row.try_get(5)?;
        match kind.as_str() {
            "opened" => activity.opened += count,
            "clicked" => activity.clicked += count,
            "unsubscribed" => activity.unsubscribed += count,
            _ => {}
        }
    }
    Ok(sms_costs)
}

/// A conversion stored in a time range, before it is credited.
pub struct StoredConversion {
    pub contact_id: i64,
    pub at: i64,
    /// Revenue in the workspace currency; for a goal, the goal event's `revenue` as written.
    pub value: Option<i64>,
    pub goal_revenue: Option<f64>,
    pub amount: i64,
    pub currency: String,
    /// The journey whose goal this is; `None` for a revenue event.
    pub journey_id: Option<String>,
    pub event_name: String,
}

/// Revenue events stored in `[after, until)`, and goals reached then.
pub async fn conversions_between(
    connection: &mut AnyConnection,
    after: i64,
    until: i64,
) -> Result<Vec<StoredConversion>> {
    let mut conversions = Vec::new();
    let rows = sqlx::query(
        "SELECT contact_id, at, value, amount, currency, name FROM revenue_events WHERE recorded_at >= $1 AND recorded_at < $2 ORDER BY event_id",
    )
    .bind(after)
    .bind(until)
    .fetch_all(&mut *connection)
    .await?;
    for row in rows {
        conversions.push(StoredConversion {
            contact_id: row.try_get(0)?,
            at: row.try_get(1)?,
            value: row.try_get(2)?,
            goal_revenue: None,
            amount: row.try_get(3)?,
            currency: row.try_get(4)?,
            journey_id: None,
            event_name: row.try_get(5)?,
        });
    }
    let rows = sqlx::query(
        "SELECT contact_id, at, revenue, journey_id, event_name FROM conversions WHERE at >= $1 AND at < $2 ORDER BY enrollment_id",
    )
    .bind(after)
    .bind(until)
    .fetch_all(&mut *connection)
    .await?;
    for row in rows {
        conversions.push(StoredConversion {
            contact_id: row.try_get(0)?,
            at: row.try_get(1)?,
            value: None,
            goal_revenue: row.try_get(2)?,
            amount: 0,
            currency: String::new(),
            journey_id: Some(row.try_get(3)?),
            event_name: row.try_get(4)?,
        });
    }
    Ok(conversions)
}

/// The touches of `contacts` in `[since, until]`: entering a journey, messages handed over,
/// leads handed to sales, opens and clicks (on the channel of the message opened or clicked).
pub async fn touches_of(
    connection: &mut AnyConnection,
    contacts: &[i64],
    since: i64,
    until: i64,
) -> Result<HashMap<i64, Vec<Touch>>> {
    let mut touches: HashMap<i64, Vec<Touch>> = HashMap::new();
    for chunk in contacts.chunks(super::IN_CHUNK / 4) {
        let n = super::padded_len(chunk.len());
        let list = |first: usize| super::placeholders(first, n);
        let sql = format!(
            "SELECT contact_id, entered_at, journey_id, '', 'enrollment' FROM enrollments
               WHERE contact_id IN ({}) AND entered_at >= $1 AND entered_at <= $2
             UNION ALL SELECT contact_id, done_at, journey_id, step, kind FROM effects
               WHERE contact_id IN ({}) AND status = 'done' AND done_at >= $1 AND done_at <= $2 AND kind IN ('email', 'sms', 'assignment')
             UNION ALL SELECT contact_id, at, journey_id, step, channel FROM touches
               WHERE contact_id IN ({}) AND at >= $1 AND at <= $2 AND kind IN ('opened', 'clicked')",
            list(3),
            list(3 + n),
            list(3 + 2 * n)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(since).bind(until);
        for _ in 0..3 {
            for id in super::padded(chunk) {
                query = query.bind(*id);
            }
        }
        for row in query.fetch_all(&mut *connection).await? {
            let kind: String = row.try_get(4)?;
            touches.entry(row.try_get(0)?).or_default().push(Touch {
                at: row.try_get(1)?,
                journey: row.try_get(2)?,
                step: row.try_get(3)?,
                channel: crate::reports::channel_of_effect(&kind).to_string(),
            });
        }
    }
    Ok(touches)
}

/// When each journey was first loaded: its fixed cost runs from that day.
pub async fn journeys_since(connection: &mut AnyConnection) -> Result<HashMap<String, i64>> {
    let rows = sqlx::query("SELECT journey_id, MIN(loaded_at) FROM journey_versions GROUP BY journey_id")
        .fetch_all(connection)
        .await?;
    rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
}

pub async fn watermark(connection: &mut AnyConnection) -> Result<i64> {
    let row = sqlx::query("SELECT rolled_until FROM report_watermark WHERE id = 1")
        .fetch_one(connection)
        .await?;
    Ok(row.try_get(0)?)
}

/// Adds `rollup` to the rollup tables and moves the watermark from `from` to `to`, in `tx`;
/// false (and nothing to commit) if another process moved it first.
pub async fn add_rollup(tx: &mut Tx<'_>, rollup: &Rollup, from: i64, to: i64) -> Result<bool> {
    let moved = sqlx::query("UPDATE report_watermark SET rolled_until = $1 WHERE id = 1 AND rolled_until = $2")
        .bind(to)
        .bind(from)
        .execute(&mut **tx)
        .await?;
    if moved.rows_affected() != 1 {
        return Ok(false);
    }
    let activity: Vec<(&Place, &Activity)> = rollup.activity.iter().collect();
    for chunk in activity.chunks(padded_rows_per_statement(11)) {
        let sql = format!(
            "INSERT INTO report_days (day, journey_id, step, channel, enrolled, sent, delivered, opened, clicked, unsubscribed, cost)
             VALUES {} ON CONFLICT (day, journey_id, step, channel) DO UPDATE SET
               enrolled = report_days.enrolled + excluded.enrolled, sent = report_days.sent + excluded.sent,
               delivered = report_days.delivered + excluded.delivered, opened = report_days.opened + excluded.opened,
               clicked = report_days.clicked + excluded.clicked, unsubscribed = report_days.unsubscribed + excluded.unsubscribed,
               cost = report_days.cost + excluded.cost",
            value_rows(1, chunk.len(), &[""; 11])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for (p, a) in chunk {
            query = query
                .bind(p.day)
                .bind(p.journey.clone())
                .bind(p.step.clone())
                .bind(p.channel.clone())
                .bind(a.enrolled)
                .bind(a.sent)
                .bind(a.delivered)
                .bind(a.opened)
                .bind(a.clicked)
                .bind(a.unsubscribed)
                .bind(a.cost);
        }
        query.execute(&mut **tx).await?;
    }
    let credits: Vec<(&(Model, Place), &Credit)> = rollup.credits.iter().collect();
    for chunk in credits.chunks(rows_per_statement(7)) {
        let sql = format!(
            "INSERT INTO report_credits (day, model, journey_id, step, channel, conversions, revenue) VALUES {}
             ON CONFLICT (day, model, journey_id, step, channel) DO UPDATE SET
               conversions = report_credits.conversions + excluded.conversions, revenue = report_credits.revenue + excluded.revenue",
            value_rows(1, chunk.len(), &[""; 7])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(super::for_dialect(tx, sql)));
        for ((model, p), c) in chunk {
            query = query
                .bind(p.day)
                .bind(model.as_str())
                .bind(p.journey.clone())
                .bind(p.step.clone())
                .bind(p.channel.clone())
                .bind(c.conversions)
                .bind(c.revenue);
        }
        query.execute(&mut **tx).await?;
    }
    for ((day, currency), c) in &rollup.unconverted {
        sqlx::query(
            "INSERT INTO report_unconverted (day, currency, conversions, amount) VALUES ($1, $2, $3, $4)
             ON CONFLICT (day, currency) DO UPDATE SET conversions = report_unconverted.conversions + excluded.conversions,
               amount = report_unconverted.amount + excluded.amount",
        )
        .bind(*day)
        .bind(currency)
        .bind(c.conversions)
        .bind(c.revenue)
        .execute(&mut **tx)
        .await?;
    }
    Ok(true)
}

/// The rollups of days `[from, to]` (midnights, ms), for one model's credit.
pub async fn rollup_of_days(connection: &mut AnyConnection, from: i64, to: i64, model: Model) -> Result<Rollup> {
    let mut rollup = Rollup::default();
    let rows = sqlx::query(
        "SELECT day, journey_id, step, channel, enrolled, sent, delivered, opened, clicked, unsubscribed, cost
         FROM report_days WHERE day >= $1 AND day <= $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut *connection)
    .await?;
    for row in rows {
        let place = Place {
            day: row.try_get(0)?,
            journey: row.try_get(1)?,
            step: row.try_get(2)?,
            channel: row.try_get(3)?,
        };
        rollup.activity.insert(
            place,
            Activity {
                enrolled: row.try_get(4)?,
                sent: row.try_get(5)?,
                delivered: row.try_get(6)?,
                opened: row.try_get(7)?,
                clicked: row.try_get(8)?,
                unsubscribed: row.try_get(9)?,
                cost: row.try_get(10)?,
            },
        );
    }
    let rows = sqlx::query(
        "SELECT day, journey_id, step, channel, conversions, revenue FROM report_credits WHERE model = $1 AND day >= $2 AND day <= $3",
    )
    .bind(model.as_str())
    .bind(from)
    .bind(to)
    .fetch_all(&mut *connection)
    .await?;
    for row in rows {
        let place = Place {
            day: row.try_get(0)?,
            journey: row.try_get(1)?,
            step: row.try_get(2)?,
            channel: row.try_get(3)?,
        };
        rollup.credits.insert(
            (model, place),
            Credit {
                conversions: row.try_get(4)?,
                revenue: row.try_get(5)?,
            },
        );
    }
    let rows =
        sqlx::query("SELECT day, currency, conversions, amount FROM report_unconverted WHERE day >= $1 AND day <= $2")
            .bind(from)
            .bind(to)
            .fetch_all(&mut *connection)
            .await?;
    for row in rows {
        rollup.unconverted.insert(
            (row.try_get(0)?, row.try_get(1)?),
            Credit {
                conversions: row.try_get(2)?,
                revenue: row.try_get(3)?,
            },
        );
    }
    Ok(rollup)
}

/// Every enrollment of a journey: `(id, version, entered at)`.
pub async fn enrollments_of_journey(
    connection: &mut AnyConnection,
    journey_id: &str,
) -> Result<Vec<(i64, String, i64)>> {
    let rows = sqlx::query("SELECT id, version, entered_at FROM enrollments WHERE journey_id = $1")
        .bind(journey_id)
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
}

/// When each enrollment of a journey first reached each step: `(enrollment, step, at)`.
pub async fn steps_reached(connection: &mut AnyConnection, journey_id: &str) -> Result<Vec<(i64, String, i64)>> {
    let rows = sqlx::query(
        "SELECT enrollment_id, step, MIN(at) FROM step_history WHERE journey_id = $1 AND outcome NOT IN ('exited', 'migrated') GROUP BY enrollment_id, step",
    )
    .bind(journey_id)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
}

/// Goals reached per version of a journey.
pub async fn goals_of_journey(connection: &mut AnyConnection, journey_id: &str) -> Result<HashMap<String, i64>> {
    let rows = sqlx::query("SELECT version, COUNT(*) FROM conversions WHERE journey_id = $1 GROUP BY version")
        .bind(journey_id)
        .fetch_all(connection)
        .await?;
    rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
}

/// Contacts created in `[from, to)` (ms): `(id, created at, current stage)`, and when each
/// reached a stage (its first `stage_changes` row; a won deal's `Lead Won` counts as customer).
pub async fn leads_between(
    connection: &mut AnyConnection,
    from: i64,
    to: i64,
) -> Result<(Vec<(i64, i64, String)>, Vec<(i64, String, i64)>)> {
    let rows = sqlx::query("SELECT id, created_at, stage FROM contacts WHERE created_at >= $1 AND created_at < $2")
        .bind(from)
        .bind(to)
        .fetch_all(&mut *connection)
        .await?;
    let leads = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect::<Result<Vec<_>>>()?;
    let rows = sqlx::query(
        "SELECT s.contact_id, s.stage, MIN(s.at) FROM stage_changes s JOIN contacts c ON c.id = s.contact_id
           WHERE c.created_at >= $1 AND c.created_at < $2 GROUP BY s.contact_id, s.stage
         UNION ALL SELECT r.contact_id, 'customer', MIN(r.at) FROM revenue_events r JOIN contacts c ON c.id = r.contact_id
           WHERE r.name = 'Lead Won' AND c.created_at >= $1 AND c.created_at < $2 GROUP BY r.contact_id",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut *connection)
    .await?;
    let reached = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok((leads, reached))
}
