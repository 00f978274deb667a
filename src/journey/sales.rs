//! `sales.yaml`: sales teams, their reps and how leads are shared among them.
//!
//! ```yaml
//! teams:
//!   inbound:
//!     strategy: round_robin        # round_robin | territory | least_loaded
//!     accept_within: 4h            # unaccepted leads return to the pool, then another rep
//!     notify:                      # optional: the built-in email to the rep otherwise
//!       email: lead-assigned       # a template (`false`: no email)
//!       webhook: {url: "https://oapi.dingtalk.com/robot/send?access_token=...", body: {...}}
//!     reps:
//!       - {id: li-wei, name: Li Wei, email: li.wei@example.com, capacity: 30,
//!          territory: 'traits.region == "Shanghai"'}
//! ```

use super::decode::{Reader, is_slug};
use super::diagnostic::Diagnostic;
use super::model::Webhook;
use super::values::Delay;
use super::yaml::Pos;
use crate::expr::{Expr, Place, Want};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Sales {
    pub teams: BTreeMap<String, Team>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    Territory,
    LeastLoaded,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub strategy: Strategy,
    pub accept_within: Option<Delay>,
    pub reps: Vec<Rep>,
    /// How the rep hears of a lead given to them.
    pub notify: Notify,
}

impl Team {
    /// A team that tells its reps nothing (`notify: {email: false}` and no webhook): its leads
    /// are recorded as told when they are placed, and no notice work follows.
    pub fn is_silent(&self) -> bool {
        self.notify.email == NotifyEmail::Off && self.notify.webhook.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Notify {
    pub email: NotifyEmail,
    /// A robot of the team's chat (DingTalk, WeCom, Slack): JSON whose strings are templates.
    pub webhook: Option<Webhook>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub enum NotifyEmail {
    /// A plain email to the rep's address, written by nurture.
    #[default]
    BuiltIn,
    /// An email template; `pos` is where sales.yaml names it.
    Template {
        name: String,
        pos: Pos,
    },
    Off,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rep {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// Most open leads this rep holds at once.
    pub capacity: Option<u32>,
    /// Which contacts this rep covers, for the territory strategy.
    pub territory: Option<Expr>,
}

pub fn parse_sales(file: &str, text: &str, diagnostics: &mut Vec<Diagnostic>) -> Option<Sales> {
    let root = super::decode::parse_yaml(file, text, diagnostics)?;
    let before = diagnostics.len();
    let mut reader = Reader::new(file, text, diagnostics);
    let fields = reader.fields(&root, "sales.yaml", &["teams"])?;
    let Some(teams_node) = fields.get("teams") else {
        reader.missing(
            &fields,
            "teams",
            "sales.yaml",
            "{inbound: {strategy: round_robin, reps: [...]}}",
        );
        return None;
    };
    let Some(entries) = teams_node.as_map() else {
        reader.sink.error_hint(
            teams_node.pos,
            "J052",
            "`teams` must map team ids to teams",
            "write `teams:` then `  inbound:` with the team under it",
        );
        return None;
    };
    let mut teams = BTreeMap::new();
    for (key, node) in entries {
        let id = key.as_str().unwrap_or_default().to_string();
        if !is_slug(&id) {
            reader.sink.error(
                key.pos,
                "J052",
                format!("team id `{id}` may only use lowercase letters, digits and dashes"),
            );
        }
        let Some(team) = reader.fields(node, "a team", &["name", "strategy", "accept_within", "reps", "notify"]) else {
            continue;
        };
        let name = reader.optional_string(&team, "name").unwrap_or_else(|| id.clone());
        let strategy = match reader.optional_string(&team, "strategy").as_deref() {
            None | Some("round_robin") => Strategy::RoundRobin,
            Some("territory") => Strategy::Territory,
            Some("least_loaded") => Strategy::LeastLoaded,
            Some(other) => {
                let pos = team.get("strategy").map(|n| n.pos).unwrap_or(node.pos);
                reader.sink.error_hint(
                    pos,
                    "J052",
                    format!("`{other}` is not an assignment strategy"),
                    "write round_robin, territory or least_loaded",
                );
                Strategy::RoundRobin
            }
        };
        let accept_within = team.get("accept_within").and_then(|n| reader.delay(n, "accept_within"));
        let mut reps = Vec::new();
        match team.get("reps").map(|n| (n, n.as_seq())) {
            Some((_, Some(items))) if !items.is_empty() => {
                for item in items {
                    let Some(rep) = reader.fields(
                        item,
                        "a rep",
                        &["id", "name", "email", "phone", "capacity", "territory"],
                    ) else {
                        continue;
                    };
                    let Some(rep_id) = reader.required_string(&rep, "id", "a rep", "li-wei") else {
                        continue;
                    };
                    if reps.iter().any(|r: &Rep| r.id == rep_id) {
                        reader.sink.error(
                            rep.get("id").map(|n| n.pos).unwrap_or(item.pos),
                            "J052",
                            format!("rep `{rep_id}` is listed twice in team `{id}`"),
                        );
                    }
                    let capacity = rep.get("capacity").and_then(|n| {
                        let value = reader.integer(n, "capacity")?;
                        if value <= 0 {
                            reader.sink.error(n.pos, "J052", "`capacity` must be at least 1");
                            return None;
                        }
                        Some(value as u32)
                    });
                    let territory = rep
                        .get("territory")
                        .and_then(|n| reader.expr(n, "territory", Place::Audience, Want::Bool));
                    reps.push(Rep {
                        name: reader.optional_string(&rep, "name").unwrap_or_else(|| rep_id.clone()),
                        id: rep_id,
                        email: reader.optional_string(&rep, "email"),
                        phone: reader.optional_string(&rep, "phone"),
                        capacity,
                        territory,
                    });
                }
            }
            Some((n, _)) => reader.sink.error_hint(
                n.pos,
                "J052",
                format!("team `{id}` needs a list of reps"),
                "write `reps:` then `- {id: li-wei, email: li.wei@example.com}`",
            ),
            None => reader.missing(&team, "reps", "a team", "[{id: li-wei, email: li.wei@example.com}]"),
        }
        if strategy == Strategy::Territory && !reps.is_empty() && reps.iter().all(|r| r.territory.is_none()) {
            reader.sink.error_hint(
                node.pos,
                "J052",
                format!("team `{id}` assigns by territory but no rep has one"),
                "give reps `territory: 'traits.region == \"Shanghai\"'`",
            );
        }
        let notify = team.get("notify").map(|n| notify(&mut reader, n)).unwrap_or_default();
        warn_about_unreachable_reps(&mut reader, &id, node.pos, &reps, &notify, accept_within);
        teams.insert(
            id.clone(),
            Team {
                id,
                name,
                strategy,
                accept_within,
                reps,
                notify,
            },
        );
    }
    let errors = reader.sink.diagnostics[before..]
        .iter()
        .filter(|d| d.is_error())
        .count();
    (errors == 0).then_some(Sales { teams })
}

/// `notify: {email: TEMPLATE | false, webhook: {...}}`.
fn notify(reader: &mut Reader<'_>, node: &super::yaml::Node) -> Notify {
    let Some(fields) = reader.fields(node, "notify", &["email", "webhook"]) else {
        return Notify::default();
    };
    let email = match fields.get("email") {
        None => NotifyEmail::BuiltIn,
        Some(node) if node.as_scalar().is_some_and(|s| !s.quoted && s.text == "false") => NotifyEmail::Off,
        Some(node) => match reader.string(node, "email") {
            Some(name) => NotifyEmail::Template { name, pos: node.pos },
            None => NotifyEmail::BuiltIn,
        },
    };
    let webhook = fields.get("webhook").and_then(|n| super::webhook::parse(reader, n));
    Notify { email, webhook }
}

/// Warnings: a rep nobody can tell about a lead, and a lead that cannot move on when its rep
/// lets it go.
fn warn_about_unreachable_reps(
    reader: &mut Reader<'_>,
    team: &str,
    pos: Pos,
    reps: &[Rep],
    notify: &Notify,
    accept_within: Option<Delay>,
) {
    if notify.webhook.is_none() {
        for rep in reps {
            let silent = match notify.email {
                NotifyEmail::Off => true,
                _ => rep.email.is_none(),
            };
            if silent {
                let warning = Diagnostic::warning(
                    reader.file(),
                    pos,
                    "J053",
                    format!("nobody tells rep `{}` of team `{team}` about new leads", rep.id),
                );
                reader.sink.push(warning.with_hint(
                    "give the rep an `email:`, or the team `notify: {webhook: {url: ...}}` (a DingTalk, WeCom or Slack robot)",
                ));
            }
        }
    }
    if accept_within.is_some() && reps.len() == 1 {
        let warning = Diagnostic::warning(
            reader.file(),
            pos,
            "J053",
            format!(
                "team `{team}` has one rep: a lead they do not accept in time waits in the pool, as it never goes to the same rep twice in a row"
            ),
        );
        reader
            .sink
            .push(warning.with_hint("add a second rep, or remove `accept_within`"));
    }
}
