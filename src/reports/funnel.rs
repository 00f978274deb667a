//! The journey funnel (contacts reaching each step, drop-off, median time between steps, per
//! version) and the sales KPIs (lead -> MQL -> SQL -> won). **Pure**: rows in, reports out.

use super::render::{Table, step_name};
use serde_json::{Value, json};
use std::collections::HashMap;

/// One step of one version's funnel.
#[derive(Clone, Debug, PartialEq)]
pub struct FunnelStep {
    pub step: String,
    pub reached: i64,
    /// Contacts that reached the step before this one (in the journey's order) but not this.
    pub drop_off: i64,
    /// Median ms from the step each contact was at before (or from entering) to this one.
    pub median_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Funnel {
    pub version: String,
    pub enrolled: i64,
    pub goals: i64,
    pub steps: Vec<FunnelStep>,
}

/// The funnel of one version: `steps` in the journey's order, `enrollments` as `(id, entered
/// at)`, `reached` as `(enrollment, step, first at)`.
pub fn funnel(
    version: &str,
    steps: &[String],
    enrollments: &[(i64, i64)],
    reached: &[(i64, String, i64)],
    goals: i64,
) -> Funnel {
    let entered: HashMap<i64, i64> = enrollments.iter().copied().collect();
    let mut by_enrollment: HashMap<i64, Vec<(i64, &str)>> = HashMap::new();
    for (enrollment, step, at) in reached {
        if entered.contains_key(enrollment) {
            by_enrollment.entry(*enrollment).or_default().push((*at, step));
        }
    }
    let mut waits: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for (enrollment, mut visits) in by_enrollment {
        visits.sort();
        let mut before = entered[&enrollment];
        for (at, step) in visits {
            *counts.entry(step).or_default() += 1;
            waits.entry(step).or_default().push(at - before);
            before = at;
        }
    }
    let mut previous = enrollments.len() as i64;
    let steps = steps
        .iter()
        .map(|step| {
            let reached = counts.get(step.as_str()).copied().unwrap_or(0);
            let median_ms = waits.get_mut(step.as_str()).map(|times| median(times));
            let drop_off = (previous - reached).max(0);
            previous = reached;
            FunnelStep {
                step: step.clone(),
                reached,
                drop_off,
                median_ms,
            }
        })
        .collect();
    Funnel {
        version: version.to_string(),
        enrolled: enrollments.len() as i64,
        goals,
        steps,
    }
}

/// The lower middle value: a time that some contact actually took.
fn median(times: &mut [i64]) -> i64 {
    times.sort_unstable();
    times[(times.len() - 1) / 2]
}

/// `1d 2h`, `3h 5m`, `42s`: durations as a marketer reads them.
pub fn duration(ms: i64) -> String {
    let seconds = ms / 1000;
    let (days, hours, minutes) = (seconds / 86_400, seconds % 86_400 / 3600, seconds % 3600 / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m {}s", seconds % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

pub fn funnel_table(funnels: &[Funnel]) -> Table {
    let mut table = Table::new(&["version", "step", "reached", "drop_off", "median_time_from_previous"]);
    for funnel in funnels {
        table.rows.push(vec![
            short(&funnel.version),
            "(enrolled)".into(),
            funnel.enrolled.to_string(),
            String::new(),
            String::new(),
        ]);
        for step in &funnel.steps {
            table.rows.push(vec![
                short(&funnel.version),
                step_name(&step.step),
                step.reached.to_string(),
                step.drop_off.to_string(),
                step.median_ms.map(duration).unwrap_or_else(|| "-".into()),
            ]);
        }
        table.rows.push(vec![
            short(&funnel.version),
            "(goal)".into(),
            funnel.goals.to_string(),
            String::new(),
            String::new(),
        ]);
    }
    table
}

fn short(version: &str) -> String {
    version.chars().take(12).collect()
}

pub fn funnel_json(journey: &str, funnels: &[Funnel]) -> Value {
    let versions: Vec<Value> = funnels
        .iter()
        .map(|f| {
            let steps: Vec<Value> = f
                .steps
                .iter()
                .map(|s| json!({"step": s.step, "reached": s.reached, "drop_off": s.drop_off, "median_seconds_from_previous": s.median_ms.map(|ms| ms as f64 / 1000.0)}))
                .collect();
            json!({"version": f.version, "enrolled": f.enrolled, "goals": f.goals, "steps": steps})
        })
        .collect();
    json!({"journey": journey, "versions": versions})
}

/// Stages in the order a lead moves through them.
const STAGES: [&str; 4] = ["lead", "mql", "sql", "customer"];

/// The sales KPIs of the leads created in a range.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Kpis {
    /// Leads that reached at least each stage of `STAGES`.
    pub reached: [i64; 4],
    /// Average ms spent in lead, MQL and SQL before moving on.
    pub average_in_stage: [Option<i64>; 3],
    /// Average ms from creation to won.
    pub sales_cycle: Option<i64>,
    /// Channel -> (cost per lead, cost per acquisition), amounts.
    pub channels: Vec<(String, Option<f64>, Option<f64>)>,
    pub unsubscribe_rate: Option<f64>,
}

/// Tallies `leads` (`(id, created at, stage now)`) and `reached` (`(id, stage, first at)`).
pub fn stages(kpis: &mut Kpis, leads: &[(i64, i64, String)], reached: &[(i64, String, i64)]) {
    let rank = |stage: &str| match stage {
        "mql" => 1,
        "sql" | "opportunity" => 2,
        "customer" => 3,
        _ => 0,
    };
    let mut first: HashMap<(i64, usize), i64> = HashMap::new();
    for (id, stage, at) in reached {
        let slot = first.entry((*id, rank(stage))).or_insert(*at);
        *slot = (*slot).min(*at);
    }
    let mut spent: [Vec<i64>; 3] = Default::default();
    let mut cycles = Vec::new();
    for (id, created, stage) in leads {
        // Stages only move forward: a lead at SQL has been a lead and an MQL.
        let now = rank(stage).max((1..4).filter(|r| first.contains_key(&(*id, *r))).max().unwrap_or(0));
        for counted in kpis.reached.iter_mut().take(now + 1) {
            *counted += 1;
        }
        let mut since = Some(*created);
        for (index, next) in (1..4).enumerate() {
            let at = first.get(&(*id, next)).copied();
            if let (Some(start), Some(end)) = (since, at) {
                spent[index].push(end - start);
            }
            since = at;
        }
        if let Some(won) = first.get(&(*id, 3)) {
            cycles.push(won - created);
        }
    }
    let average = |values: &[i64]| (!values.is_empty()).then(|| values.iter().sum::<i64>() / values.len() as i64);
    for (slot, values) in kpis.average_in_stage.iter_mut().zip(&spent) {
        *slot = average(values);
    }
    kpis.sales_cycle = average(&cycles);
}

fn rate(from: i64, to: i64) -> Option<f64> {
    (from > 0).then(|| to as f64 / from as f64)
}

pub fn kpis_json(kpis: &Kpis) -> Value {
    let seconds = |ms: Option<i64>| ms.map(|ms| ms as f64 / 1000.0);
    let stages: Vec<Value> = STAGES
        .iter()
        .zip(kpis.reached)
        .map(|(stage, reached)| json!({"stage": stage, "contacts": reached}))
        .collect();
    let channels: Vec<Value> = kpis
        .channels
        .iter()
        .map(|(channel, per_lead, per_acquisition)| json!({"channel": channel, "cost_per_lead": per_lead, "cost_per_acquisition": per_acquisition}))
        .collect();
    json!({
        "stages": stages,
        "conversion_rates": {
            "lead_to_mql": rate(kpis.reached[0], kpis.reached[1]),
            "mql_to_sql": rate(kpis.reached[1], kpis.reached[2]),
            "sql_to_won": rate(kpis.reached[2], kpis.reached[3]),
            "lead_to_won": rate(kpis.reached[0], kpis.reached[3]),
        },
        "average_seconds_in_stage": {
            "lead": seconds(kpis.average_in_stage[0]),
            "mql": seconds(kpis.average_in_stage[1]),
            "sql": seconds(kpis.average_in_stage[2]),
        },
        "sales_cycle_seconds": seconds(kpis.sales_cycle),
        "channels": channels,
        "unsubscribe_rate": kpis.unsubscribe_rate,
    })
}

pub fn kpis_table(kpis: &Kpis) -> Table {
    let mut table = Table::new(&["kpi", "value"]);
    let percent = |r: Option<f64>| r.map(|r| format!("{:.2}%", r * 100.0)).unwrap_or_else(|| "-".into());
    let time = |ms: Option<i64>| ms.map(duration).unwrap_or_else(|| "-".into());
    let money = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    for (stage, reached) in STAGES.iter().zip(kpis.reached) {
        table
            .rows
            .push(vec![format!("contacts reaching {stage}"), reached.to_string()]);
    }
    for (name, (from, to)) in [
        ("lead -> MQL", (0, 1)),
        ("MQL -> SQL", (1, 2)),
        ("SQL -> won", (2, 3)),
        ("lead -> won", (0, 3)),
    ] {
        table
            .rows
            .push(vec![name.into(), percent(rate(kpis.reached[from], kpis.reached[to]))]);
    }
    for (stage, average) in ["lead", "MQL", "SQL"].iter().zip(kpis.average_in_stage) {
        table.rows.push(vec![format!("average time as {stage}"), time(average)]);
    }
    table.rows.push(vec!["sales cycle".into(), time(kpis.sales_cycle)]);
    for (channel, per_lead, per_acquisition) in &kpis.channels {
        table
            .rows
            .push(vec![format!("cost per lead: {channel}"), money(*per_lead)]);
        table.rows.push(vec![
            format!("cost per acquisition: {channel}"),
            money(*per_acquisition),
        ]);
    }
    table
        .rows
        .push(vec!["unsubscribe rate".into(), percent(kpis.unsubscribe_rate)]);
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_funnel_counts_each_step_once_per_contact_with_the_median_wait() {
        let steps = vec!["mail".to_string(), "wait".to_string(), "sms".to_string()];
        let enrollments = [(1, 0), (2, 0), (3, 0)];
        let reached = vec![
            (1, "mail".to_string(), 0),
            (1, "wait".to_string(), 1000),
            (1, "sms".to_string(), 61_000),
            (2, "mail".to_string(), 0),
            (2, "wait".to_string(), 3000),
            (3, "mail".to_string(), 0),
            (3, "wait".to_string(), 2000),
        ];
        let f = funnel("v1", &steps, &enrollments, &reached, 1);
        let got: Vec<(i64, i64, Option<i64>)> = f.steps.iter().map(|s| (s.reached, s.drop_off, s.median_ms)).collect();
        assert_eq!(got, [(3, 0, Some(0)), (3, 0, Some(2000)), (1, 2, Some(60_000))]);
        assert_eq!(duration(60_000), "1m 0s");
        assert_eq!(duration(90_000_000), "1d 1h");
    }

    #[test]
    fn a_lead_at_sql_has_passed_mql_and_the_times_between_stages_are_averaged() {
        let leads = vec![
            (1, 0, "sql".to_string()),
            (2, 0, "lead".to_string()),
            (3, 0, "customer".to_string()),
        ];
        let reached = vec![
            (1, "sql".to_string(), 5000),
            (3, "mql".to_string(), 1000),
            (3, "sql".to_string(), 3000),
            (3, "customer".to_string(), 7000),
        ];
        let mut kpis = Kpis::default();
        stages(&mut kpis, &leads, &reached);
        assert_eq!(kpis.reached, [3, 2, 2, 1]);
        assert_eq!(kpis.average_in_stage, [Some(1000), Some(2000), Some(4000)]);
        assert_eq!(kpis.sales_cycle, Some(7000));
    }
}
