//! `scoring.yaml`: how behaviour and profile earn a contact lead-score points, how points decay,
//! and the thresholds that make a lead an MQL and then an SQL.
//!
//! ```yaml
//! thresholds: {mql: 50, sql: 100}
//! decay: {half_life: 30d}            # or {points_per_inactive_week: 5}
//! rules:
//!   - {id: pricing-view, event: Pricing Page Viewed, points: 10, max_per_day: 20}
//!   - {id: manufacturing, when: 'traits.industry == "manufacturing"', points: 15}
//! ```

use super::decode::{Reader, is_slug};
use super::diagnostic::Diagnostic;
use super::values::Delay;
use crate::expr::{Expr, Place, Want};

#[derive(Clone, Debug, PartialEq)]
pub struct Scoring {
    pub mql: i64,
    pub sql: i64,
    pub decay: Option<Decay>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decay {
    HalfLife(Delay),
    PointsPerInactiveWeek(i64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub id: String,
    pub on: RuleOn,
    pub points: i64,
    pub max_per_day: Option<i64>,
    pub max_total: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RuleOn {
    Event {
        name: String,
        condition: Option<Expr>,
    },
    /// A profile condition, scored once while it holds.
    Trait(Expr),
}

pub fn parse_scoring(file: &str, text: &str, diagnostics: &mut Vec<Diagnostic>) -> Option<Scoring> {
    let root = super::decode::parse_yaml(file, text, diagnostics)?;
    let before = diagnostics.len();
    let mut reader = Reader::new(file, text, diagnostics);
    let fields = reader.fields(&root, "scoring.yaml", &["thresholds", "decay", "rules"])?;
    let (mut mql, mut sql) = (None, None);
    match fields.get("thresholds") {
        Some(node) => {
            if let Some(thresholds) = reader.fields(node, "thresholds", &["mql", "sql"]) {
                mql = thresholds.get("mql").and_then(|n| reader.integer(n, "mql"));
                sql = thresholds.get("sql").and_then(|n| reader.integer(n, "sql"));
                if mql.is_none() && !thresholds.has("mql") {
                    reader.missing(&thresholds, "mql", "thresholds", "50");
                }
                if sql.is_none() && !thresholds.has("sql") {
                    reader.missing(&thresholds, "sql", "thresholds", "100");
                }
                if let (Some(m), Some(s)) = (mql, sql)
                    && (m <= 0 || s <= m)
                {
                    reader.sink.error_hint(
                        node.pos,
                        "J060",
                        format!("thresholds must grow: 0 < mql ({m}) < sql ({s})"),
                        "an SQL is a lead that scored past the MQL threshold, e.g. mql: 50, sql: 100",
                    );
                }
            }
        }
        None => reader.missing(&fields, "thresholds", "scoring.yaml", "{mql: 50, sql: 100}"),
    }
    let decay = fields.get("decay").and_then(|node| {
        let decay = reader.fields(node, "decay", &["half_life", "points_per_inactive_week"])?;
        match (decay.get("half_life"), decay.get("points_per_inactive_week")) {
            (Some(n), None) => reader.delay(n, "half_life").map(Decay::HalfLife),
            (None, Some(n)) => reader
                .integer(n, "points_per_inactive_week")
                .map(Decay::PointsPerInactiveWeek),
            _ => {
                reader.sink.error_hint(
                    node.pos,
                    "J060",
                    "decay takes exactly one of `half_life` or `points_per_inactive_week`",
                    "e.g. `decay: {half_life: 30d}`",
                );
                None
            }
        }
    });
    let mut rules: Vec<Rule> = Vec::new();
    if let Some(node) = fields.get("rules") {
        for item in node.as_seq().unwrap_or_default() {
            let Some(rule) = reader.fields(
                item,
                "a scoring rule",
                &["id", "event", "where", "when", "points", "max_per_day", "max_total"],
            ) else {
                continue;
            };
            let Some(id) = reader.required_string(&rule, "id", "a scoring rule", "pricing-view") else {
                continue;
            };
            let id_pos = rule.get("id").map(|n| n.pos).unwrap_or(item.pos);
            if !is_slug(&id) {
                reader.sink.error(
                    id_pos,
                    "J060",
                    format!("rule id `{id}` may only use lowercase letters, digits and dashes"),
                );
            }
            if rules.iter().any(|r| r.id == id) {
                reader.sink.error(id_pos, "J060", format!("duplicate rule id `{id}`"));
            }
            let on = match (rule.get("event"), rule.get("when")) {
                (Some(event), None) => {
                    let condition = rule
                        .get("where")
                        .and_then(|n| reader.expr(n, "where", Place::EventFilter { has_trigger: false }, Want::Bool));
                    reader
                        .string(event, "event")
                        .map(|name| RuleOn::Event { name, condition })
                }
                (None, Some(when)) => {
                    if let Some(pos) = rule.key_pos("where") {
                        reader.sink.error(
                            pos,
                            "J017",
                            "`where` filters an event; a trait rule states its condition in `when`",
                        );
                    }
                    reader
                        .expr(when, "when", Place::Audience, Want::Bool)
                        .map(RuleOn::Trait)
                }
                _ => {
                    reader.sink.error_hint(item.pos, "J060", format!("rule `{id}` needs exactly one of `event` or `when`"), "score an event (`event: Pricing Page Viewed`) or a profile condition (`when: traits.industry == \"manufacturing\"`)");
                    None
                }
            };
            let points = match rule.get("points") {
                Some(n) => reader.integer(n, "points").filter(|p| {
                    if *p == 0 {
                        reader.sink.error(n.pos, "J060", "a rule worth 0 points does nothing");
                    }
                    *p != 0
                }),
                None => {
                    reader.missing(&rule, "points", "a scoring rule", "10");
                    None
                }
            };
            let max_per_day = rule.get("max_per_day").and_then(|n| reader.integer(n, "max_per_day"));
            let max_total = rule.get("max_total").and_then(|n| reader.integer(n, "max_total"));
            if let (Some(on), Some(points)) = (on, points) {
                rules.push(Rule {
                    id,
                    on,
                    points,
                    max_per_day,
                    max_total,
                });
            }
        }
    }
    if reader.sink.diagnostics.len() != before {
        return None;
    }
    Some(Scoring {
        mql: mql?,
        sql: sql?,
        decay,
        rules,
    })
}
