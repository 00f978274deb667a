//! Conditions in CEL: compiled and type-checked once when a journey is compiled, evaluated many
//! times against a contact's facts.
//!
//! The `cel` crate parses and evaluates; it has no type checker, so `check.rs` walks the parsed
//! expression to reject unknown variables, fields and functions and mismatched comparisons before
//! a journey ships, each error pointing at the character where it was written.

mod check;

pub use check::{FUNCTIONS, Ty};

use crate::journey::values::Delay;
use crate::limits::{MAX_CONDITION_CHARS, MAX_CONDITION_DEPTH};
use cel::{Context, Env, Program, Value as CelValue};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Where an expression is written, which decides the variables it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A `where:` on a trigger, a `wait_for` or a goal: `event` is the event being matched.
    EventFilter { has_trigger: bool },
    /// A condition about the contact inside a journey (`exit_when`, `branch`, `enrollment_key`).
    Contact { has_trigger: bool },
    /// A schedule audience or a scoring trait rule: no event at all.
    Audience,
}

/// What an expression must produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Bool,
    Key,
}

/// A compiled CEL expression.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
    roots: Arc<BTreeSet<String>>,
    /// `traits.X` names the expression reads; absent ones are bound to null so a missing trait
    /// makes `==` false and `!=` true instead of an error. (Names tested with `has()` are left
    /// absent; ordering a missing value still fails, and a failed condition counts as false.)
    trait_names: Arc<BTreeSet<String>>,
    property_names: Arc<BTreeSet<String>>,
    count_calls: Arc<Vec<(String, Delay)>>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// A compile error inside an expression, `offset` characters from its start.
#[derive(Clone, Debug, PartialEq)]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
    pub hint: Option<String>,
    /// A limit of `crate::limits` was passed (`J008`), not a mistake in CEL.
    pub limit: bool,
}

/// Counts a contact's events, for `count_events(name, window)`.
pub trait EventCounter: Sync {
    fn count_events(&self, name: &str, since: DateTime<Utc>) -> i64;
}

impl EventCounter for () {
    fn count_events(&self, _name: &str, _since: DateTime<Utc>) -> i64 {
        0
    }
}

/// An event as conditions see it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventFacts {
    pub name: String,
    pub properties: Map<String, Json>,
    pub timestamp: Option<DateTime<Utc>>,
}

/// Everything a condition may read about a contact at one moment.
pub struct Facts<'a> {
    pub score: i64,
    pub stage: &'a str,
    pub tags: &'a [String],
    pub traits: &'a Map<String, Json>,
    pub contact: &'a ContactFacts,
    pub trigger: Option<&'a EventFacts>,
    pub event: Option<&'a EventFacts>,
    pub inactive_days: i64,
    pub now: DateTime<Utc>,
    pub counter: &'a dyn EventCounter,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ContactFacts {
    pub id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub timezone: Option<String>,
    pub language: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stack `Expr::compile` runs on.
const PARSER_STACK: usize = 32 * 1024 * 1024;

fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib())).clone()
}

impl Expr {
    pub fn compile(source: &str, place: Place, want: Want) -> Result<Expr, Vec<ExprError>> {
        // The `cel` parser takes a lot of stack for each level of brackets (16 levels overflowed
        // the 2 MB of a tokio worker in a debug build), so it gets a stack of its own: mapped
        // when needed, touched only as deep as it goes. Evaluation stays within 1 MB at the
        // depth limit.
        stacker::grow(PARSER_STACK, || Expr::compile_here(source, place, want))
    }

    fn compile_here(source: &str, place: Place, want: Want) -> Result<Expr, Vec<ExprError>> {
        if source.trim().is_empty() {
            return Err(vec![ExprError {
                offset: 0,
                message: "the condition is empty".into(),
                hint: Some("write a CEL condition such as `score >= 50`".into()),
                limit: false,
            }]);
        }
        within_limits(source)?;
        let program = env().compile(source).map_err(|errors| {
            // The parser's later errors are echoes of the first.
            let first = errors.errors.first();
            let offset = first.map(|e| line_col_to_offset(source, e.pos.0, e.pos.1)).unwrap_or(0);
            let mut message = first
                .map(|e| e.msg.trim_start_matches("Syntax error: ").to_string())
                .unwrap_or_default();
            // The parser's own nesting limit, reached by what the bracket count does not see
            // (`a ? b : c ? d : ...`).
            if message.contains("Recursion limit") {
                return vec![depth_error(offset)];
            }
            if message.starts_with("mismatched input '<EOF>'") {
                message = "it ends too early: a value is missing at the end".into();
            }
            vec![ExprError {
                offset,
                message: format!("cannot parse the condition: {message}"),
                hint: parse_hint(source),
                limit: false,
            }]
        })?;
        if let Some(id) = too_deep(program.expression(), 1) {
            let offset = program
                .source_info()
                .offset_for(id)
                .map(|(start, _)| start as usize)
                .unwrap_or(0);
            return Err(vec![depth_error(offset.min(source.chars().count()))]);
        }
        let checked = check::check(&program, source, place, want)?;
        Ok(Expr {
            source: source.into(),
            program: Arc::new(program),
            roots: Arc::new(checked.roots),
            trait_names: Arc::new(checked.trait_names),
            property_names: Arc::new(checked.property_names),
            count_calls: Arc::new(checked.count_calls),
        })
    }

    /// Whether the expression reads the contact (score, stage, tags, traits, profile,
    /// activity, event counts), not only the event and the time.
    pub fn reads_contact(&self) -> bool {
        !self.count_calls.is_empty()
            || self
                .roots
                .iter()
                .any(|root| !matches!(root.as_str(), "trigger" | "event" | "now"))
    }

    /// The `count_events(name, window)` calls in this expression.
    pub fn count_calls(&self) -> &[(String, Delay)] {
        &self.count_calls
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn eval(&self, facts: &Facts<'_>) -> Result<Json, EvalError> {
        let mut context = Context::with_env(env());
        // Only the variables the expression reads are bound: converting a contact's traits or
        // an event's properties to CEL values is most of an evaluation's cost (an enrollment key
        // such as `trigger.properties.ref` is evaluated for every triggering event).
        let reads = |name: &str| self.roots.contains(name);
        let bind = |context: &mut Context, name: &str, value: CelValue| {
            context.add_variable_from_value(name, value);
        };
        if reads("score") {
            bind(&mut context, "score", CelValue::Int(facts.score));
        }
        if reads("stage") {
            bind(&mut context, "stage", CelValue::from(facts.stage));
        }
        if reads("tags") {
            bind(&mut context, "tags", to_cel(&facts.tags)?);
        }
        if reads("traits") {
            bind(
                &mut context,
                "traits",
                to_cel(&with_nulls(facts.traits, &self.trait_names))?,
            );
        }
        if reads("contact") {
            bind(&mut context, "contact", to_cel(facts.contact)?);
        }
        if reads("inactive_days") {
            bind(&mut context, "inactive_days", CelValue::Int(facts.inactive_days));
        }
        if reads("now") {
            bind(&mut context, "now", CelValue::Timestamp(facts.now.fixed_offset()));
        }
        for (name, event) in [("trigger", facts.trigger), ("event", facts.event)] {
            if let Some(event) = event.filter(|_| reads(name)) {
                let mut event = event.clone();
                event.properties = with_nulls(&event.properties, &self.property_names);
                bind(&mut context, name, to_cel(&event)?);
            }
        }
        if !self.count_calls.is_empty() {
            let counts: Vec<(String, String, i64)> = self
                .count_calls
                .iter()
                .map(|(name, window)| {
                    let since = facts.now - window.as_duration();
                    (
                        name.clone(),
                        window.to_string(),
                        facts.counter.count_events(name, since),
                    )
                })
                .collect();
            let counts = Arc::new(counts);
            context
                .add_function("count_events", move |name: Arc<String>, window: Arc<String>| {
                    let window = window.parse::<Delay>().map(|d| d.to_string()).unwrap_or_default();
                    counts
                        .iter()
                        .find(|(n, w, _)| n == name.as_str() && *w == window)
                        .map(|(_, _, count)| *count)
                        .unwrap_or(0)
                })
                .map_err(|error| EvalError(error.to_string()))?;
        }
        let value = self
            .program
            .execute(&context)
            .map_err(|error| EvalError(error.to_string()))?;
        value
            .json()
            .map_err(|error| EvalError(format!("the result cannot be used: {error:?}")))
    }

    /// The values the expression reads, for explaining a decision: `score = 20, traits.industry = "retail"`.
    pub fn explain(&self, facts: &Facts<'_>) -> String {
        let mut parts = Vec::new();
        for root in self.roots.iter() {
            match root.as_str() {
                "score" => parts.push(format!("score = {}", facts.score)),
                "stage" => parts.push(format!("stage = {}", facts.stage)),
                "tags" => parts.push(format!("tags = [{}]", facts.tags.join(", "))),
                "inactive_days" => parts.push(format!("inactive_days = {}", facts.inactive_days)),
                "traits" => {
                    for name in self.trait_names.iter() {
                        let value = facts.traits.get(name).cloned().unwrap_or(Json::Null);
                        parts.push(format!("traits.{name} = {value}"));
                    }
                }
                _ => {}
            }
        }
        parts.join(", ")
    }

    pub fn eval_bool(&self, facts: &Facts<'_>) -> Result<bool, EvalError> {
        match self.eval(facts)? {
            Json::Bool(b) => Ok(b),
            Json::Null => Ok(false),
            other => Err(EvalError(format!("the condition gave {other}, not true or false"))),
        }
    }
}

/// Refuses a condition that is too long, or nests brackets and prefix operators too deep for the
/// parser, before it is parsed: the parser recurses once per level, on the caller's stack.
fn within_limits(source: &str) -> Result<(), Vec<ExprError>> {
    let length = source.chars().count();
    if length > MAX_CONDITION_CHARS {
        return Err(vec![ExprError {
            offset: MAX_CONDITION_CHARS,
            message: format!("the condition is {length} characters; a condition is at most {MAX_CONDITION_CHARS}"),
            hint: Some("split it: a branch arm, a trait set by a step, or a scoring rule".into()),
            limit: true,
        }]);
    }
    let mut depth = 0usize;
    let mut prefix_run = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (offset, c) in source.chars().enumerate() {
        if let Some(open) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == open => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        // `!!!x` and `- - -1` nest like brackets; a binary `-` is counted too, which errs on
        // the safe side only for conditions no one writes.
        match c {
            '!' | '-' => prefix_run += 1,
            c if c.is_whitespace() => {}
            _ => prefix_run = 0,
        }
        if depth + prefix_run > MAX_CONDITION_DEPTH {
            return Err(vec![depth_error(offset)]);
        }
    }
    Ok(())
}

fn depth_error(offset: usize) -> ExprError {
    ExprError {
        offset,
        message: format!("the condition nests deeper than {MAX_CONDITION_DEPTH} levels here"),
        hint: Some("write it flatter: `a && b && c` rather than `(a && (b && c))`".into()),
        limit: true,
    }
}

/// The first node of a parsed condition that nests deeper than `MAX_CONDITION_DEPTH` (each
/// operator, call, list or map is a level): checking and evaluating recurse once per level.
fn too_deep(expr: &cel::common::ast::IdedExpr, depth: usize) -> Option<u64> {
    use cel::common::ast::{EntryExpr, Expr as Node};
    if depth > MAX_CONDITION_DEPTH {
        return Some(expr.id);
    }
    let deeper = |child: &cel::common::ast::IdedExpr| too_deep(child, depth + 1);
    match &expr.expr {
        Node::Call(call) => call
            .target
            .iter()
            .map(|t| t.as_ref())
            .chain(call.args.iter())
            .find_map(deeper),
        Node::Select(select) => deeper(&select.operand),
        Node::List(list) => list.elements.iter().find_map(deeper),
        Node::Map(map) => map.entries.iter().find_map(|entry| match &entry.expr {
            EntryExpr::MapEntry(entry) => deeper(&entry.key).or_else(|| deeper(&entry.value)),
            EntryExpr::StructField(field) => deeper(&field.value),
        }),
        Node::Struct(object) => object.entries.iter().find_map(|entry| match &entry.expr {
            EntryExpr::MapEntry(entry) => deeper(&entry.key).or_else(|| deeper(&entry.value)),
            EntryExpr::StructField(field) => deeper(&field.value),
        }),
        Node::Comprehension(comprehension) => [
            &comprehension.iter_range,
            &comprehension.accu_init,
            &comprehension.loop_cond,
            &comprehension.loop_step,
            &comprehension.result,
        ]
        .into_iter()
        .find_map(deeper),
        _ => None,
    }
}

/// A likely fix for a condition that does not parse.
fn parse_hint(source: &str) -> Option<String> {
    let bytes: Vec<char> = source.chars().collect();
    let lone_equals = bytes.iter().enumerate().any(|(i, c)| {
        *c == '='
            && !matches!(bytes.get(i + 1), Some('='))
            && !matches!(i.checked_sub(1).and_then(|j| bytes.get(j)), Some('=' | '!' | '<' | '>'))
    });
    if lone_equals {
        return Some("compare with `==`; a single `=` is not an operator".into());
    }
    if source.contains(" and ") || source.contains(" or ") {
        return Some("join conditions with `&&` and `||`".into());
    }
    if source.contains('\'') && !source.contains('"') {
        return None;
    }
    Some("conditions are CEL, e.g. `score >= 50 && traits.industry == \"manufacturing\"`".into())
}

fn with_nulls(map: &Map<String, Json>, names: &BTreeSet<String>) -> Map<String, Json> {
    let mut map = map.clone();
    for name in names {
        map.entry(name.clone()).or_insert(Json::Null);
    }
    map
}

fn to_cel<T: serde::Serialize + ?Sized>(value: &T) -> Result<CelValue, EvalError> {
    cel::to_value(value).map_err(|error| EvalError(error.to_string()))
}

/// Turns the parser's 1-based line and 0-based column into a character offset.
fn line_col_to_offset(source: &str, line: isize, col: isize) -> usize {
    let mut offset = 0;
    for (index, text) in source.split_inclusive('\n').enumerate() {
        if index as isize + 1 == line {
            // The parser counts columns from 1.
            return offset + (col - 1).max(0) as usize;
        }
        offset += text.chars().count();
    }
    offset
}

#[cfg(test)]
mod tests;
