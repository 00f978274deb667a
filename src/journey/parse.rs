//! Reads one journey file into a `Journey`, reporting every mistake at once.

use super::decode::{Fields, Reader, is_slug};
use super::diagnostic::{Diagnostic, did_you_mean};
use super::model::*;
use super::values::{
    self, CRON_HINT, CronSchedule, Days, FrequencyCap, Guardrails, QuietHours, Stage, TIME_HINT, TimeOfDay,
};
use super::yaml::{Node, Pos, Value};
use crate::expr::{Place, Want};
use crate::limits::MAX_TAG_CHARS;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// What a journey may refer to outside its own file.
pub struct Refs<'a> {
    pub has_email_template: &'a dyn Fn(&str) -> bool,
    pub has_sms_template: &'a dyn Fn(&str) -> bool,
    pub sales_teams: TeamNames,
    /// The workspace's guardrails (`nurture.toml`): a journey may tighten them, not loosen them.
    pub guardrails: &'a Guardrails,
}

pub enum TeamNames {
    NoSalesFile,
    Known(Vec<String>),
    /// `sales.yaml` exists but is broken: its own errors say so.
    Unchecked,
}

const JOURNEY_KEYS: [&str; 12] = [
    "id",
    "name",
    "description",
    "trigger",
    "re_entry",
    "enrollment_key",
    "goal",
    "exit_when",
    "settings",
    "steps",
    "on_change",
    "migrate",
];
const STEP_KINDS: [&str; 13] = StepKind::KEYWORDS;
const STEP_EXTRA_KEYS: [&str; 7] = ["id", "name", "description", "next", "on_timeout", "on_event", "else"];

pub fn parse_journey(file: &str, text: &str, refs: &Refs<'_>, diagnostics: &mut Vec<Diagnostic>) -> Option<Journey> {
    let root = super::decode::parse_yaml(file, text, diagnostics)?;
    let errors_before = diagnostics.iter().filter(|d| d.is_error()).count();
    let mut reader = Reader::new(file, text, diagnostics);
    let journey = JourneyParser {
        reader: &mut reader,
        refs,
    }
    .journey(&root);
    let errors_after = reader.sink.diagnostics.iter().filter(|d| d.is_error()).count();
    journey.filter(|_| errors_after == errors_before)
}

/// The version of a journey: a hash of its content with comments, spacing and key order removed.
pub fn version_of(root: &Node) -> String {
    let canonical = serde_json::to_string(&root.to_json()).unwrap_or_default();
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

struct JourneyParser<'r, 'a> {
    reader: &'r mut Reader<'a>,
    refs: &'r Refs<'r>,
}

/// A step's id and where it is, gathered before the steps are read so that forward
/// references resolve.
struct StepIds {
    ids: Vec<(String, Pos)>,
}

impl StepIds {
    fn resolve(&self, name: &str) -> Option<Target> {
        if name == "end" {
            return Some(Target::End);
        }
        self.ids.iter().position(|(id, _)| id == name).map(Target::Step)
    }
}

impl JourneyParser<'_, '_> {
    fn journey(&mut self, root: &Node) -> Option<Journey> {
        let fields = self.reader.fields(root, "a journey", &JOURNEY_KEYS)?;
        let id = self.reader.required_string(&fields, "id", "a journey", "my-journey");
        if let (Some(id), Some(node)) = (&id, fields.get("id"))
            && !is_slug(id)
        {
            self.reader.sink.error_hint(
                node.pos,
                "J010",
                format!("journey id `{id}` may only use lowercase letters, digits and dashes"),
                format!("write `id: {}`", super::decode::slugify(id)),
            );
        }
        let name = self
            .reader
            .optional_string(&fields, "name")
            .or_else(|| id.clone())
            .unwrap_or_default();
        let description = self.reader.optional_string(&fields, "description");

        let trigger = match fields.get("trigger") {
            Some(node) => self.trigger(node),
            None => {
                self.reader
                    .missing(&fields, "trigger", "a journey", "{event: Signed Up}");
                None
            }
        };
        let has_trigger = matches!(trigger, Some(Trigger::Event(_)) | Some(Trigger::Stage(_)));
        let event_trigger = matches!(trigger, Some(Trigger::Event(_)));
        let re_entry = fields
            .get("re_entry")
            .map(|node| self.re_entry(node))
            .unwrap_or(Some(ReEntry::Never));
        let enrollment_key = fields.get("enrollment_key").and_then(|node| {
            if !event_trigger {
                self.reader.sink.error_hint(
                    node.pos,
                    "J026",
                    "`enrollment_key` needs an event trigger",
                    "key enrollments by a property of the triggering event, e.g. `trigger.properties.cart_id`",
                );
                return None;
            }
            self.reader
                .expr(node, "enrollment_key", Place::Contact { has_trigger: true }, Want::Key)
        });
        let goal = fields
            .get("goal")
            .and_then(|node| self.event_match(node, "goal", has_trigger));
        let exit_when = fields.get("exit_when").and_then(|node| {
            self.reader
                .expr(node, "exit_when", Place::Contact { has_trigger }, Want::Bool)
        });
        let settings = match fields.get("settings") {
            Some(node) => self.settings(node),
            None => Some(default_settings()),
        };
        let steps = match fields.get("steps") {
            Some(node) => self.steps(node, has_trigger),
            None => {
                self.reader.missing(&fields, "steps", "a journey", "[...]");
                None
            }
        };
        let on_change = self.on_change(&fields, steps.as_deref());
        Some(Journey {
            id: id?,
            name,
            description,
            version: version_of(root),
            file: self.reader.file().to_string(),
            trigger: trigger?,
            re_entry: re_entry?,
            enrollment_key,
            goal,
            exit_when,
            settings: settings?,
            on_change: on_change?,
            steps: steps?,
        })
    }

    fn trigger(&mut self, node: &Node) -> Option<Trigger> {
        let fields = self.reader.fields(
            node,
            "the trigger",
            &["event", "where", "stage", "schedule", "at", "audience"],
        )?;
        let kinds: Vec<&str> = ["event", "stage", "schedule", "at"]
            .into_iter()
            .filter(|k| fields.has(k))
            .collect();
        if kinds.len() != 1 {
            let message = if kinds.is_empty() {
                "the trigger needs one of `event`, `stage`, `schedule` or `at`".to_string()
            } else {
                format!(
                    "the trigger has {}; a journey starts in exactly one way",
                    kinds.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" and ")
                )
            };
            self.reader.sink.error_hint(node.pos, "J004", message, "e.g. `trigger: {event: Signed Up}`, `trigger: {stage: sql}`, `trigger: {schedule: \"0 9 * * MON\", audience: \"inactive_days >= 90\"}` or `trigger: {at: \"2026-12-24T09:00:00+08:00\", audience: \"stage == 'mql'\"}`");
            return None;
        }
        match kinds[0] {
            "event" => {
                if let Some(pos) = fields.key_pos("audience") {
                    self.reader.sink.error_hint(
                        pos,
                        "J017",
                        "`audience` belongs to a schedule trigger",
                        "filter the event with `where:`",
                    );
                }
                self.event_match(node, "trigger", true).map(Trigger::Event)
            }
            "stage" => {
                for key in ["where", "audience"] {
                    if let Some(pos) = fields.key_pos(key) {
                        self.reader
                            .sink
                            .error(pos, "J017", format!("`{key}` is not used with a stage trigger"));
                    }
                }
                let stage_node = fields.get("stage")?;
                let stage: Stage = self.reader.parsed(
                    stage_node,
                    "stage",
                    "J025",
                    &format!("stages are: {}", Stage::NAMES.join(", ")),
                )?;
                Some(Trigger::Stage(stage))
            }
            _ => {
                if let Some(pos) = fields.key_pos("where") {
                    self.reader.sink.error_hint(
                        pos,
                        "J017",
                        "a schedule trigger picks contacts with `audience`, not `where`",
                        "rename `where` to `audience`",
                    );
                }
                let when = if kinds[0] == "at" {
                    self.broadcast_time(fields.get("at")?)
                } else {
                    self.reader
                        .parsed::<CronSchedule>(fields.get("schedule")?, "schedule", "J021", CRON_HINT)
                        .map(|cron| When::Cron(Box::new(cron)))
                };
                let audience = match fields.get("audience") {
                    Some(node) => self.reader.expr(node, "audience", Place::Audience, Want::Bool),
                    None => {
                        self.reader
                            .missing(&fields, "audience", "a schedule trigger", "\"inactive_days >= 90\"");
                        None
                    }
                };
                Some(Trigger::Schedule {
                    when: when?,
                    audience: audience?,
                })
            }
        }
    }

    /// The time of a one-off broadcast (`at:`): RFC 3339 with its offset, so it means the
    /// same moment wherever the process runs.
    fn broadcast_time(&mut self, node: &Node) -> Option<When> {
        let text = self.reader.string(node, "at")?;
        let hint = "write a time with its offset, e.g. `2026-12-24T09:00:00+08:00` or `2026-12-24T01:00:00Z`";
        match chrono::DateTime::parse_from_rfc3339(text.trim()) {
            Ok(time) => Some(When::At {
                time: time.with_timezone(&chrono::Utc),
                text: text.trim().to_string(),
                pos: node.pos,
            }),
            Err(_) => {
                let message = if chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M:%S").is_ok()
                    || chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S").is_ok()
                {
                    format!("`at: {text}` has no offset: which time zone's {text} is meant?")
                } else {
                    format!("`at: {text}` is not an RFC 3339 time")
                };
                self.reader.sink.error_hint(node.pos, "J075", message, hint);
                None
            }
        }
    }

    /// `{event: NAME, where: CONDITION}` as used by triggers, goals and `wait_for`.
    fn event_match(&mut self, node: &Node, what: &str, has_trigger: bool) -> Option<EventMatch> {
        let allowed: &[&str] = match what {
            "trigger" => &["event", "where", "stage", "schedule", "at", "audience"],
            "wait_for" => &["event", "where", "timeout"],
            _ => &["event", "where"],
        };
        let fields = if what == "trigger" {
            // The trigger's keys were already checked.
            super::decode::Fields::from_checked(node)?
        } else {
            self.reader.fields(node, &format!("the {what}"), allowed)?
        };
        let event = self
            .reader
            .required_string(&fields, "event", &format!("the {what}"), "Order Completed");
        if let (Some(event), Some(node)) = (&event, fields.get("event"))
            && event.trim().is_empty()
        {
            self.reader.sink.error(node.pos, "J005", "the event name is empty");
        }
        let condition = fields.get("where").and_then(|node| {
            self.reader
                .expr(node, "where", Place::EventFilter { has_trigger }, Want::Bool)
        });
        Some(EventMatch {
            event: event?,
            condition,
        })
    }

    fn re_entry(&mut self, node: &Node) -> Option<ReEntry> {
        let text = self.reader.string(node, "re_entry")?;
        let hint = "write `never`, `always` or `after 30d`";
        match text.trim() {
            "never" => Some(ReEntry::Never),
            "always" => Some(ReEntry::Always),
            other => match other.strip_prefix("after ") {
                Some(delay) => match delay.parse() {
                    Ok(delay) => Some(ReEntry::After(delay)),
                    Err(reason) => {
                        self.reader.sink.error_hint(
                            node.pos,
                            "J020",
                            format!("bad duration in `re_entry`: {reason}"),
                            hint,
                        );
                        None
                    }
                },
                None => {
                    self.reader
                        .sink
                        .error_hint(node.pos, "J026", format!("`{other}` is not a re-entry policy"), hint);
                    None
                }
            },
        }
    }

    fn settings(&mut self, node: &Node) -> Option<Settings> {
        let fields = self.reader.fields(
            node,
            "settings",
            &[
                "timezone",
                "quiet_hours",
                "frequency_cap",
                "cost",
                "currency",
                "tracking",
            ],
        )?;
        let mut settings = default_settings();
        let mut ok = true;
        if let Some(node) = fields.get("timezone") {
            match self.reader.string(node, "timezone").map(|t| values::parse_timezone(&t)) {
                Some(Ok(zone)) => settings.timezone = zone,
                Some(Err(reason)) => {
                    let text = node.as_str().unwrap_or_default();
                    let names = chrono_tz::TZ_VARIANTS.iter().map(|z| z.name());
                    let hint = match did_you_mean(text, names) {
                        Some(name) => format!("did you mean `{name}`?"),
                        None => "use an IANA name like Asia/Shanghai or Europe/Berlin".into(),
                    };
                    self.reader.sink.error_hint(node.pos, "J022", reason, hint);
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(node) = fields.get("quiet_hours") {
            let quiet: Option<QuietHours> =
                self.reader
                    .parsed(node, "quiet_hours", "J024", "write a range like \"21:00-08:00\"");
            ok &= quiet.is_some();
            if let (Some(quiet), Some(workspace)) = (&quiet, &self.refs.guardrails.quiet_hours)
                && !quiet.covers(workspace)
            {
                self.reader.sink.error_hint(
                    node.pos,
                    "J027",
                    format!("quiet hours {quiet} would allow messages during the workspace's quiet hours {workspace} (nurture.toml)"),
                    format!("a journey may only widen the quiet hours: write a range that includes {workspace}, or leave `quiet_hours` out"),
                );
                ok = false;
            }
            settings.quiet_hours = quiet;
        }
        if let Some(node) = fields.get("frequency_cap") {
            let cap: Option<FrequencyCap> =
                self.reader
                    .parsed(node, "frequency_cap", "J024", "write it like `3 per 7d`");
            ok &= cap.is_some();
            if let (Some(cap), Some(workspace)) = (&cap, &self.refs.guardrails.frequency_cap)
                && cap.loosens(workspace)
            {
                self.reader.sink.error_hint(
                    node.pos,
                    "J027",
                    format!(
                        "frequency cap `{cap}` allows more messages than the workspace's `{workspace}` (nurture.toml)"
                    ),
                    format!(
                        "a journey may only tighten the cap: write at most {} per {}, or leave `frequency_cap` out",
                        workspace.messages, workspace.window
                    ),
                );
                ok = false;
            }
            settings.frequency_cap = cap;
        }
        if let Some(node) = fields.get("tracking") {
            let tracking = self.reader.parsed(node, "tracking", "J024", values::TRACKING_HINT);
            ok &= tracking.is_some();
            settings.tracking = tracking;
        }
        if let Some(node) = fields.get("cost") {
            settings.cost = self.reader.number(node, "cost");
            ok &= settings.cost.is_some();
            if settings.cost.is_some_and(|c| c < 0.0) {
                self.reader.sink.error(node.pos, "J005", "`cost` cannot be negative");
                ok = false;
            }
        }
        if let Some(node) = fields.get("currency") {
            match self.reader.string(node, "currency") {
                Some(code) if code.len() == 3 && code.chars().all(|c| c.is_ascii_uppercase()) => {
                    settings.currency = code
                }
                Some(code) => {
                    self.reader.sink.error_hint(
                        node.pos,
                        "J005",
                        format!("`{code}` is not a currency code"),
                        "use a three-letter ISO 4217 code like CNY, USD or EUR",
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        ok.then_some(settings)
    }

    fn on_change(&mut self, fields: &Fields<'_>, steps: Option<&[Step]>) -> Option<OnChange> {
        let mode = match fields.get("on_change") {
            Some(node) => self.reader.string(node, "on_change")?,
            None => "keep".into(),
        };
        match mode.as_str() {
            "keep" => {
                if let Some(pos) = fields.key_pos("migrate") {
                    self.reader.sink.error_hint(
                        pos,
                        "J017",
                        "`migrate` is only used with `on_change: migrate`",
                        "add `on_change: migrate`, or remove `migrate`",
                    );
                    return None;
                }
                Some(OnChange::Keep)
            }
            "migrate" => {
                let mut map = BTreeMap::new();
                if let Some(node) = fields.get("migrate") {
                    let Some(entries) = node.as_map() else {
                        self.reader.sink.error_hint(
                            node.pos,
                            "J002",
                            "`migrate` must be a mapping",
                            "write `migrate: {old-step: new-step}`",
                        );
                        return None;
                    };
                    for (old, new) in entries {
                        let (Some(old), Some(new_id)) = (old.as_str(), self.reader.string(new, "migrate")) else {
                            continue;
                        };
                        if let Some(steps) = steps
                            && new_id != "end"
                            && !steps.iter().any(|s| s.id == new_id)
                        {
                            let hint = did_you_mean(&new_id, steps.iter().map(|s| s.id.as_str()))
                                .map(|s| format!("did you mean `{s}`?"))
                                .unwrap_or_else(|| "map each old step to a step of this version, or to `end`".into());
                            self.reader.sink.error_hint(
                                new.pos,
                                "J012",
                                format!("`migrate` moves `{old}` to unknown step `{new_id}`"),
                                hint,
                            );
                        }
                        map.insert(old.to_string(), new_id);
                    }
                }
                Some(OnChange::Migrate(map))
            }
            other => {
                let node = fields.get("on_change")?;
                self.reader.sink.error_hint(
                    node.pos,
                    "J026",
                    format!("`{other}` is not an on_change policy"),
                    "write `keep` (running contacts finish on their version) or `migrate`",
                );
                None
            }
        }
    }

    fn steps(&mut self, node: &Node, has_trigger: bool) -> Option<Vec<Step>> {
        let Value::Seq(items) = &node.value else {
            self.reader.sink.error_hint(
                node.pos,
                "J002",
                format!("`steps` must be a list, not {}", node.kind()),
                "start each step with `- id: ...`",
            );
            return None;
        };
        if items.is_empty() {
            self.reader.sink.error_hint(
                node.pos,
                "J004",
                "a journey needs at least one step",
                "add a step, e.g. `- id: welcome` with `send_email: {template: welcome}`",
            );
            return None;
        }
        // First pass: ids, so that steps may jump forward.
        let mut ids = StepIds { ids: Vec::new() };
        let mut seen: HashMap<String, Pos> = HashMap::new();
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let id_node = item.get("id");
            let id = id_node.and_then(|n| n.as_str()).map(str::to_string);
            let pos = id_node.map(|n| n.pos).unwrap_or(item.pos);
            let id = match id {
                Some(id) if id == "end" => {
                    self.reader.sink.error_hint(
                        pos,
                        "J010",
                        "`end` is reserved: it means the journey is over",
                        "give the step another id",
                    );
                    ok = false;
                    id
                }
                Some(id) if !is_slug(&id) => {
                    self.reader.sink.error_hint(
                        pos,
                        "J010",
                        format!("step id `{id}` may only use lowercase letters, digits and dashes"),
                        format!("write `id: {}`", super::decode::slugify(&id)),
                    );
                    ok = false;
                    id
                }
                Some(id) => id,
                None => {
                    if item.as_map().is_some() {
                        self.reader.sink.error_hint(
                            item.pos,
                            "J004",
                            format!("step {} needs an `id`", index + 1),
                            "add `id: a-short-name` so reports and jumps can name it",
                        );
                    }
                    ok = false;
                    format!("#{}", index + 1)
                }
            };
            if let Some(first) = seen.get(&id) {
                self.reader.sink.error_hint(
                    pos,
                    "J011",
                    format!("duplicate step id `{id}`"),
                    format!("it is already used on line {}; step ids must be unique", first.line),
                );
                ok = false;
            } else {
                seen.insert(id.clone(), pos);
            }
            ids.ids.push((id, pos));
        }
        let mut steps = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let default_next = if index + 1 < items.len() {
                Target::Step(index + 1)
            } else {
                Target::End
            };
            match self.step(item, &ids, default_next, has_trigger) {
                Some(step) => steps.push(step),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        Some(steps)
    }

    fn target(&mut self, node: &Node, key: &str, ids: &StepIds) -> Option<Target> {
        let name = self.reader.string(node, key)?;
        if let Some(target) = ids.resolve(name.trim()) {
            return Some(target);
        }
        let hint = match did_you_mean(&name, ids.ids.iter().map(|(id, _)| id.as_str()).chain(["end"])) {
            Some(suggestion) => {
                let line = ids
                    .ids
                    .iter()
                    .find(|(id, _)| id == suggestion)
                    .map(|(_, pos)| format!(" (line {})", pos.line))
                    .unwrap_or_default();
                format!("did you mean `{suggestion}`{line}?")
            }
            None => format!(
                "steps are: {}, or `end`",
                ids.ids.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(", ")
            ),
        };
        self.reader
            .sink
            .error_hint(node.pos, "J012", format!("unknown step `{name}` in `{key}`"), hint);
        None
    }

    fn step(&mut self, node: &Node, ids: &StepIds, default_next: Target, has_trigger: bool) -> Option<Step> {
        let allowed: Vec<&str> = STEP_EXTRA_KEYS.iter().chain(STEP_KINDS.iter()).copied().collect();
        let fields = self.reader.fields(node, "a step", &allowed)?;
        let id = fields
            .get("id")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        let kinds: Vec<&str> = STEP_KINDS.iter().copied().filter(|k| fields.has(k)).collect();
        let has_unknown_key = fields
            .entries()
            .iter()
            .any(|(k, _)| !allowed.contains(&k.as_str().unwrap_or_default()));
        if kinds.is_empty() && has_unknown_key {
            // The unknown key, already reported with a suggestion, is most likely the kind.
            return None;
        }
        if kinds.len() != 1 {
            let message = if kinds.is_empty() {
                format!("step `{id}` does not say what to do")
            } else {
                format!(
                    "step `{id}` does {} at once",
                    kinds.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" and ")
                )
            };
            self.reader.sink.error_hint(
                node.pos,
                "J016",
                message,
                format!("give each step exactly one of: {}", STEP_KINDS.join(", ")),
            );
            return None;
        }
        let kind_key = kinds[0];
        for (key, only_for) in [("on_timeout", "wait_for"), ("on_event", "wait_for"), ("else", "branch")] {
            if kind_key != only_for
                && let Some(pos) = fields.key_pos(key)
            {
                self.reader
                    .sink
                    .error(pos, "J017", format!("`{key}` only belongs to a `{only_for}` step"));
            }
        }
        if matches!(kind_key, "branch" | "split")
            && let Some(pos) = fields.key_pos("next")
        {
            let hint = if kind_key == "branch" {
                "each arm says `goto:`; use `else:` for the default"
            } else {
                "each arm says `goto:`"
            };
            self.reader
                .sink
                .error_hint(pos, "J017", format!("a `{kind_key}` step does not use `next`"), hint);
        }
        let mut next = match fields.get("next") {
            Some(node) => self.target(node, "next", ids)?,
            None => default_next,
        };
        let value = fields.get(kind_key)?;
        let kind = match kind_key {
            "wait" => StepKind::Wait(self.reader.delay(value, "wait")?),
            "wait_until" => self.wait_until(value)?,
            "wait_for" => {
                let wait = self.reader.fields(value, "wait_for", &["event", "where", "timeout"])?;
                let event = self.event_match(value, "wait_for", has_trigger);
                let timeout = match wait.get("timeout") {
                    Some(node) => self.reader.delay(node, "timeout"),
                    None => {
                        self.reader.sink.error_hint(value.pos, "J004", "`wait_for` needs a `timeout`", "add `timeout: 3d` (and `on_timeout: STEP` to go somewhere other than the next step); a contact must never wait forever");
                        None
                    }
                };
                let on_timeout = match fields.get("on_timeout") {
                    Some(node) => self.target(node, "on_timeout", ids),
                    None => Some(default_next),
                };
                if let Some(node) = fields.get("on_event") {
                    if fields.has("next") {
                        self.reader
                            .sink
                            .error(node.pos, "J017", "write either `on_event` or `next`, not both");
                    }
                    next = self.target(node, "on_event", ids)?;
                }
                StepKind::WaitFor {
                    event: event?,
                    timeout: timeout?,
                    on_timeout: on_timeout?,
                }
            }
            "branch" => {
                let otherwise = match fields.get("else") {
                    Some(node) => self.target(node, "else", ids),
                    None => Some(default_next),
                };
                let arms = self.branch_arms(value, ids, has_trigger);
                next = otherwise?;
                StepKind::Branch {
                    arms: arms?,
                    otherwise: otherwise?,
                }
            }
            "split" => StepKind::Split {
                arms: self.split_arms(value, ids)?,
            },
            "send_email" | "send_sms" => {
                let email = kind_key == "send_email";
                let template = self.template_ref(value, kind_key)?;
                let exists = if email {
                    (self.refs.has_email_template)(&template)
                } else {
                    (self.refs.has_sms_template)(&template)
                };
                if !exists {
                    let file = if email {
                        format!("templates/{template}.email.hbs")
                    } else {
                        format!("templates/{template}.sms.hbs")
                    };
                    let pos = value.get("template").map(|n| n.pos).unwrap_or(value.pos);
                    self.reader.sink.error_hint(
                        pos,
                        "J040",
                        format!("missing template `{template}`: there is no {file}"),
                        format!("create {file}, or fix the name"),
                    );
                    return None;
                }
                if email {
                    StepKind::SendEmail { template }
                } else {
                    StepKind::SendSms { template }
                }
            }
            "tag" | "untag" => {
                let tags = self.reader.string_list(value, kind_key)?;
                if tags.iter().any(|t| t.trim().is_empty()) {
                    self.reader.sink.error(value.pos, "J005", "a tag cannot be empty");
                    return None;
                }
                if let Some(long) = tags.iter().find(|t| t.chars().count() > MAX_TAG_CHARS) {
                    let start: String = long.chars().take(20).collect();
                    self.reader.sink.error(
                        value.pos,
                        "J008",
                        format!("the tag `{start}…` is longer than {MAX_TAG_CHARS} characters"),
                    );
                    return None;
                }
                if kind_key == "tag" {
                    StepKind::Tag(tags)
                } else {
                    StepKind::Untag(tags)
                }
            }
            "set" => {
                let entries = value.as_map().filter(|e| !e.is_empty());
                let Some(entries) = entries else {
                    self.reader.sink.error_hint(
                        value.pos,
                        "J005",
                        "`set` needs traits and their values",
                        "write `set: {plan: trial, trial_started: true}`",
                    );
                    return None;
                };
                StepKind::Set(
                    entries
                        .iter()
                        .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.to_json()))
                        .collect(),
                )
            }
            "score" => {
                let points = self.reader.integer(value, "score")?;
                if points == 0 {
                    self.reader.sink.error(value.pos, "J005", "`score: 0` changes nothing");
                    return None;
                }
                StepKind::Score(points)
            }
            "assign_to_sales" => {
                let team = match &value.value {
                    Value::Scalar(s) => s.text.clone(),
                    _ => {
                        let fields = self.reader.fields(value, "assign_to_sales", &["team"])?;
                        self.reader
                            .required_string(&fields, "team", "assign_to_sales", "inbound")?
                    }
                };
                let pos = value.get("team").map(|n| n.pos).unwrap_or(value.pos);
                match &self.refs.sales_teams {
                    TeamNames::Unchecked => StepKind::AssignToSales { team },
                    TeamNames::NoSalesFile => {
                        self.reader.sink.error_hint(
                            pos,
                            "J050",
                            format!("unknown sales team `{team}`: there is no sales.yaml"),
                            "create sales.yaml with the team and its reps (see docs/journeys.md)",
                        );
                        return None;
                    }
                    TeamNames::Known(teams) if !teams.contains(&team) => {
                        let hint = did_you_mean(&team, teams.iter().map(String::as_str))
                            .map(|t| format!("did you mean `{t}`?"))
                            .unwrap_or_else(|| format!("teams in sales.yaml: {}", teams.join(", ")));
                        self.reader
                            .sink
                            .error_hint(pos, "J050", format!("unknown sales team `{team}`"), hint);
                        return None;
                    }
                    TeamNames::Known(_) => StepKind::AssignToSales { team },
                }
            }
            _ => StepKind::Webhook(self.webhook(value)?),
        };
        Some(Step {
            id,
            pos: node.pos,
            kind,
            next,
        })
    }

    fn template_ref(&mut self, value: &Node, key: &str) -> Option<String> {
        match &value.value {
            Value::Scalar(s) => Some(s.text.clone()),
            _ => {
                let fields = self.reader.fields(value, key, &["template"])?;
                self.reader.required_string(&fields, "template", key, "welcome")
            }
        }
    }

    fn wait_until(&mut self, value: &Node) -> Option<StepKind> {
        let (time_node, days_node) = match &value.value {
            Value::Scalar(_) => (value, None),
            _ => {
                let fields = self.reader.fields(value, "wait_until", &["time", "days"])?;
                let Some(time) = fields.get("time") else {
                    self.reader.missing(&fields, "time", "wait_until", "\"09:00\"");
                    return None;
                };
                (time, fields.get("days"))
            }
        };
        let time: TimeOfDay = self.reader.parsed(time_node, "wait_until", "J023", TIME_HINT)?;
        let mut days = Days::ALL;
        if let Some(node) = days_node {
            days = Days(0);
            for item in node.as_seq().unwrap_or(std::slice::from_ref(node)) {
                let text = self.reader.string(item, "days")?;
                match Days::parse_day(&text) {
                    Ok(day) => days = days.with(day),
                    Err(reason) => {
                        self.reader.sink.error_hint(
                            item.pos,
                            "J023",
                            reason,
                            "write days as mon, tue, wed, thu, fri, sat, sun",
                        );
                        return None;
                    }
                }
            }
        }
        Some(StepKind::WaitUntil { time, days })
    }

    fn branch_arms(&mut self, value: &Node, ids: &StepIds, has_trigger: bool) -> Option<Vec<BranchArm>> {
        let Some(items) = value.as_seq().filter(|items| !items.is_empty()) else {
            self.reader.sink.error_hint(
                value.pos,
                "J002",
                "`branch` must be a list of arms",
                "write `- when: score >= 50` with `goto: STEP` under it",
            );
            return None;
        };
        let mut arms = Vec::new();
        let mut ok = true;
        for item in items {
            let Some(fields) = self.reader.fields(item, "a branch arm", &["when", "goto"]) else {
                ok = false;
                continue;
            };
            let when = match fields.get("when") {
                Some(node) => self
                    .reader
                    .expr(node, "when", Place::Contact { has_trigger }, Want::Bool),
                None => {
                    self.reader.missing(&fields, "when", "a branch arm", "score >= 50");
                    None
                }
            };
            let goto = match fields.get("goto") {
                Some(node) => self.target(node, "goto", ids),
                None => {
                    self.reader.missing(&fields, "goto", "a branch arm", "a-step-id");
                    None
                }
            };
            match (when, goto) {
                (Some(when), Some(goto)) => arms.push(BranchArm { when, goto }),
                _ => ok = false,
            }
        }
        ok.then_some(arms)
    }

    fn split_arms(&mut self, value: &Node, ids: &StepIds) -> Option<Vec<SplitArm>> {
        let Some(items) = value.as_seq().filter(|items| items.len() >= 2) else {
            self.reader.sink.error_hint(
                value.pos,
                "J002",
                "`split` must be a list of at least two arms",
                "write `- {percent: 50, goto: a}` and `- {percent: 50, goto: b}`",
            );
            return None;
        };
        let mut arms = Vec::new();
        let mut ok = true;
        for item in items {
            let Some(fields) = self.reader.fields(item, "a split arm", &["percent", "goto"]) else {
                ok = false;
                continue;
            };
            let percent = match fields.get("percent") {
                Some(node) => self.reader.integer(node, "percent").and_then(|p| {
                    if (1..=100).contains(&p) {
                        Some(p as u8)
                    } else {
                        self.reader.sink.error(
                            node.pos,
                            "J051",
                            format!("a split arm takes 1 to 100 percent, not {p}"),
                        );
                        None
                    }
                }),
                None => {
                    self.reader.missing(&fields, "percent", "a split arm", "50");
                    None
                }
            };
            let goto = match fields.get("goto") {
                Some(node) => self.target(node, "goto", ids),
                None => {
                    self.reader.missing(&fields, "goto", "a split arm", "a-step-id");
                    None
                }
            };
            match (percent, goto) {
                (Some(percent), Some(goto)) => arms.push(SplitArm { percent, goto }),
                _ => ok = false,
            }
        }
        if ok {
            let total: u32 = arms.iter().map(|a| u32::from(a.percent)).sum();
            if total != 100 {
                let percents: Vec<String> = arms.iter().map(|a| a.percent.to_string()).collect();
                self.reader.sink.error_hint(
                    value.pos,
                    "J051",
                    format!("split percents add up to {total}, not 100 ({})", percents.join(" + ")),
                    "make the arms add up to exactly 100",
                );
                return None;
            }
        }
        ok.then_some(arms)
    }

    fn webhook(&mut self, value: &Node) -> Option<Webhook> {
        super::webhook::parse(self.reader, value)
    }
}

fn default_settings() -> Settings {
    Settings {
        timezone: chrono_tz::UTC,
        quiet_hours: None,
        frequency_cap: None,
        cost: None,
        currency: "USD".into(),
        tracking: None,
    }
}
