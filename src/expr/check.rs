//! A small type checker for the CEL that journeys use.
//!
//! It knows the variables each place offers (`score`, `traits`, `event`, ...) and the standard
//! functions, and infers a type for every node. Where a type is unknown (a trait or an event
//! property) it is `Dyn` and anything goes; only certain mistakes are reported.

use super::{ExprError, Place, Want};
use crate::journey::diagnostic::did_you_mean;
use crate::journey::values::Delay;
use cel::Program;
use cel::common::ast::{EntryExpr, Expr as Node, IdedExpr, LiteralValue, operators};
use std::collections::{BTreeSet, HashMap};
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Ty {
    Bool,
    Int,
    Double,
    String,
    Timestamp,
    Duration,
    Null,
    List(Box<Ty>),
    Map,
    Contact,
    Event,
    /// Unknown until run time: traits, event properties.
    Dyn,
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Ty::Bool => "a boolean",
            Ty::Int => "a whole number",
            Ty::Double => "a number",
            Ty::String => "a string",
            Ty::Timestamp => "a timestamp",
            Ty::Duration => "a duration",
            Ty::Null => "null",
            Ty::List(_) => "a list",
            Ty::Map => "a map",
            Ty::Contact => "the contact",
            Ty::Event => "an event",
            Ty::Dyn => "a value",
        };
        f.write_str(name)
    }
}

impl Ty {
    fn is_dyn(&self) -> bool {
        matches!(self, Ty::Dyn | Ty::Null)
    }
    fn is_number(&self) -> bool {
        matches!(self, Ty::Int | Ty::Double)
    }
    fn comparable_with(&self, other: &Ty) -> bool {
        self.is_dyn()
            || other.is_dyn()
            || (self.is_number() && other.is_number())
            || std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

const CONTACT_FIELDS: [(&str, Ty); 6] = [
    ("id", Ty::String),
    ("email", Ty::String),
    ("phone", Ty::String),
    ("created_at", Ty::Timestamp),
    ("timezone", Ty::String),
    ("language", Ty::String),
];

const EVENT_FIELDS: [(&str, Ty); 3] = [
    ("name", Ty::String),
    ("properties", Ty::Map),
    ("timestamp", Ty::Timestamp),
];

/// The functions conditions may call.
pub const FUNCTIONS: [&str; 26] = [
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "timestamp",
    "duration",
    "dyn",
    "type",
    "getFullYear",
    "getMonth",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "count_events",
    "has",
];

pub(super) struct Checked {
    pub roots: BTreeSet<String>,
    pub trait_names: BTreeSet<String>,
    pub property_names: BTreeSet<String>,
    pub count_calls: Vec<(String, Delay)>,
}

pub(super) fn check(program: &Program, source: &str, place: Place, want: Want) -> Result<Checked, Vec<ExprError>> {
    let mut variables: HashMap<String, Ty> = HashMap::new();
    for (name, ty) in [
        ("score", Ty::Int),
        ("stage", Ty::String),
        ("tags", Ty::List(Box::new(Ty::String))),
        ("traits", Ty::Map),
        ("contact", Ty::Contact),
        ("inactive_days", Ty::Int),
        ("now", Ty::Timestamp),
    ] {
        variables.insert(name.into(), ty);
    }
    let (has_trigger, has_event) = match place {
        Place::EventFilter { has_trigger } => (has_trigger, true),
        Place::Contact { has_trigger } => (has_trigger, false),
        Place::Audience => (false, false),
    };
    if has_trigger {
        variables.insert("trigger".into(), Ty::Event);
    }
    if has_event {
        variables.insert("event".into(), Ty::Event);
    }
    let mut checker = Checker {
        program,
        source,
        scopes: vec![variables],
        errors: Vec::new(),
        roots: BTreeSet::new(),
        tested: BTreeSet::new(),
        trait_names: BTreeSet::new(),
        property_names: BTreeSet::new(),
        count_calls: Vec::new(),
    };
    let root = program.expression();
    let ty = checker.infer(root);
    match want {
        Want::Bool if !matches!(ty, Ty::Bool | Ty::Dyn | Ty::Null) => {
            checker.error(
                root,
                format!("this condition gives {ty}, but it must be true or false"),
                Some("compare it, e.g. `score >= 50` or `traits.plan == \"pro\"`".into()),
            );
        }
        Want::Key if !matches!(ty, Ty::String | Ty::Int | Ty::Dyn) => {
            checker.error(
                root,
                format!("an enrollment key must be a string or a number, this gives {ty}"),
                None,
            );
        }
        _ => {}
    }
    if checker.errors.is_empty() {
        Ok(Checked {
            roots: checker.roots,
            trait_names: checker.trait_names.difference(&checker.tested).cloned().collect(),
            property_names: checker.property_names.difference(&checker.tested).cloned().collect(),
            count_calls: checker.count_calls,
        })
    } else {
        Err(checker.errors)
    }
}

struct Checker<'a> {
    program: &'a Program,
    source: &'a str,
    scopes: Vec<HashMap<String, Ty>>,
    errors: Vec<ExprError>,
    roots: BTreeSet<String>,
    /// Fields tested with `has()`: left absent so the test means something.
    tested: BTreeSet<String>,
    trait_names: BTreeSet<String>,
    property_names: BTreeSet<String>,
    count_calls: Vec<(String, Delay)>,
}

impl Checker<'_> {
    fn offset(&self, expr: &IdedExpr) -> usize {
        let start = self
            .program
            .source_info()
            .offset_for(expr.id)
            .map(|(start, _)| start as usize)
            .unwrap_or(0);
        start.min(self.source.chars().count())
    }

    fn error(&mut self, expr: &IdedExpr, message: String, hint: Option<String>) {
        let offset = self.offset(expr);
        // One error per place is enough: the first explains the rest.
        if self.errors.iter().any(|e| e.offset == offset) {
            return;
        }
        self.errors.push(ExprError {
            offset,
            message,
            hint,
            limit: false,
        });
    }

    fn lookup(&self, name: &str) -> Option<Ty> {
        self.scopes.iter().rev().find_map(|scope| scope.get(name).cloned())
    }

    fn infer(&mut self, expr: &IdedExpr) -> Ty {
        match &expr.expr {
            Node::Unspecified => Ty::Dyn,
            Node::Literal(literal) => match literal {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Int(_) | LiteralValue::UInt(_) => Ty::Int,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::Bytes(_) => Ty::Dyn,
                LiteralValue::Null => Ty::Null,
            },
            Node::Ident(name) => self.ident(expr, name),
            Node::Select(select) => {
                let operand = self.infer(&select.operand);
                if select.test {
                    self.tested.insert(select.field.clone());
                    return Ty::Bool;
                }
                self.record_names(&select.operand, &select.field);
                self.field(expr, &operand, &select.field)
            }
            Node::List(list) => {
                let mut element = None;
                for item in &list.elements {
                    let ty = self.infer(item);
                    element.get_or_insert(ty);
                }
                Ty::List(Box::new(element.unwrap_or(Ty::Dyn)))
            }
            Node::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(entry) = &entry.expr {
                        self.infer(&entry.key);
                        self.infer(&entry.value);
                    }
                }
                Ty::Map
            }
            Node::Struct(_) => {
                self.error(
                    expr,
                    "message literals are not supported in journey conditions".into(),
                    None,
                );
                Ty::Dyn
            }
            Node::Comprehension(comprehension) => {
                let range = self.infer(&comprehension.iter_range);
                let element = match range {
                    Ty::List(element) => *element,
                    Ty::Map => Ty::String,
                    Ty::Dyn | Ty::Null => Ty::Dyn,
                    other => {
                        self.error(&comprehension.iter_range, format!("cannot loop over {other}"), None);
                        Ty::Dyn
                    }
                };
                let accumulator = self.infer(&comprehension.accu_init);
                let mut scope = HashMap::new();
                scope.insert(comprehension.iter_var.clone(), element);
                if let Some(second) = &comprehension.iter_var2 {
                    scope.insert(second.clone(), Ty::Dyn);
                }
                scope.insert(comprehension.accu_var.clone(), accumulator);
                self.scopes.push(scope);
                self.infer(&comprehension.loop_cond);
                self.infer(&comprehension.loop_step);
                let result = self.infer(&comprehension.result);
                self.scopes.pop();
                result
            }
            Node::Call(call) => self.call(expr, &call.func_name, call.target.as_deref(), &call.args),
        }
    }

    fn ident(&mut self, expr: &IdedExpr, name: &str) -> Ty {
        if let Some(ty) = self.lookup(name) {
            if self.scopes[0].contains_key(name) {
                self.roots.insert(name.to_string());
            }
            return ty;
        }
        let known: Vec<String> = self.scopes[0].keys().cloned().collect();
        let message = match name {
            "event" => "`event` is only known in the `where:` of a trigger, a `wait_for` or a goal".to_string(),
            "trigger" => {
                "`trigger` is not known here: a scheduled journey or a scoring rule has no triggering event".to_string()
            }
            _ => format!("unknown variable `{name}`"),
        };
        let hint = match did_you_mean(name, known.iter().map(String::as_str)) {
            Some(suggestion) => format!("did you mean `{suggestion}`?"),
            None => {
                let mut known = known;
                known.sort();
                format!("known here: {}", known.join(", "))
            }
        };
        self.error(expr, message, Some(hint));
        Ty::Dyn
    }

    /// Remembers `traits.X` and `event.properties.X`, so absent ones can be bound to null.
    fn record_names(&mut self, operand: &IdedExpr, field: &str) {
        match &operand.expr {
            Node::Ident(name) if name == "traits" => {
                self.trait_names.insert(field.to_string());
            }
            Node::Select(select) if select.field == "properties" => {
                self.property_names.insert(field.to_string());
            }
            _ => {}
        }
    }

    fn field(&mut self, expr: &IdedExpr, operand: &Ty, field: &str) -> Ty {
        let fields: &[(&str, Ty)] = match operand {
            Ty::Map | Ty::Dyn | Ty::Null => return Ty::Dyn,
            Ty::Contact => &CONTACT_FIELDS,
            Ty::Event => &EVENT_FIELDS,
            other => {
                self.error(expr, format!("{other} has no field `{field}`"), None);
                return Ty::Dyn;
            }
        };
        if let Some((_, ty)) = fields.iter().find(|(name, _)| *name == field) {
            return ty.clone();
        }
        let hint = match did_you_mean(field, fields.iter().map(|(name, _)| *name)) {
            Some(suggestion) => format!("did you mean `{suggestion}`?"),
            None => format!(
                "known fields: {}",
                fields.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
            ),
        };
        let what = if *operand == Ty::Contact {
            "the contact"
        } else {
            "an event"
        };
        let extra = if *operand == Ty::Event {
            " (event data is under `properties`)"
        } else {
            ""
        };
        self.error(expr, format!("{what} has no field `{field}`{extra}"), Some(hint));
        Ty::Dyn
    }

    fn call(&mut self, expr: &IdedExpr, name: &str, target: Option<&IdedExpr>, args: &[IdedExpr]) -> Ty {
        let target_ty = target.map(|t| self.infer(t));
        let arg_tys: Vec<Ty> = args.iter().map(|a| self.infer(a)).collect();
        let binary = |checker: &mut Checker, op: &str| -> Option<(Ty, Ty)> {
            if arg_tys.len() == 2 {
                Some((arg_tys[0].clone(), arg_tys[1].clone()))
            } else {
                checker.error(expr, format!("`{op}` needs two operands"), None);
                None
            }
        };
        match name {
            operators::LOGICAL_AND | operators::LOGICAL_OR => {
                for (arg, ty) in args.iter().zip(&arg_tys) {
                    if !matches!(ty, Ty::Bool | Ty::Dyn | Ty::Null) {
                        let op = if name == operators::LOGICAL_AND { "&&" } else { "||" };
                        self.error(
                            arg,
                            format!("`{op}` joins conditions, but this is {ty}"),
                            Some("compare it to something, e.g. `score >= 50`".into()),
                        );
                    }
                }
                Ty::Bool
            }
            operators::LOGICAL_NOT | operators::NOT_STRICTLY_FALSE => Ty::Bool,
            operators::EQUALS | operators::NOT_EQUALS => {
                if let Some((left, right)) = binary(self, name)
                    && !left.comparable_with(&right)
                {
                    self.error(
                        expr,
                        format!("compares {left} with {right}, which is never equal"),
                        quote_hint(&left, &right),
                    );
                }
                Ty::Bool
            }
            operators::LESS | operators::LESS_EQUALS | operators::GREATER | operators::GREATER_EQUALS => {
                if let Some((left, right)) = binary(self, name) {
                    let orderable = |t: &Ty| {
                        matches!(
                            t,
                            Ty::Int | Ty::Double | Ty::String | Ty::Timestamp | Ty::Duration | Ty::Dyn | Ty::Null
                        )
                    };
                    if !left.comparable_with(&right) || !orderable(&left) || !orderable(&right) {
                        self.error(
                            expr,
                            format!("cannot order {left} against {right}"),
                            quote_hint(&left, &right),
                        );
                    }
                }
                Ty::Bool
            }
            operators::ADD | operators::SUBSTRACT | operators::MULTIPLY | operators::DIVIDE | operators::MODULO => {
                let Some((left, right)) = binary(self, name) else {
                    return Ty::Dyn;
                };
                match (&left, &right) {
                    (l, r) if l.is_dyn() || r.is_dyn() => Ty::Dyn,
                    (Ty::Int, Ty::Int) => Ty::Int,
                    (l, r) if l.is_number() && r.is_number() => Ty::Double,
                    (Ty::String, Ty::String) if name == operators::ADD => Ty::String,
                    (Ty::List(_), Ty::List(_)) if name == operators::ADD => left.clone(),
                    (Ty::Timestamp, Ty::Duration) => Ty::Timestamp,
                    (Ty::Timestamp, Ty::Timestamp) if name == operators::SUBSTRACT => Ty::Duration,
                    (Ty::Duration, Ty::Duration) => Ty::Duration,
                    _ => {
                        self.error(
                            expr,
                            format!("cannot combine {left} and {right} with `{}`", name.trim_matches('_')),
                            None,
                        );
                        Ty::Dyn
                    }
                }
            }
            operators::NEGATE => arg_tys.first().cloned().unwrap_or(Ty::Dyn),
            operators::CONDITIONAL => arg_tys.get(1).cloned().unwrap_or(Ty::Dyn),
            operators::IN => {
                if let Some((_, container)) = binary(self, name)
                    && !matches!(container, Ty::List(_) | Ty::Map | Ty::Dyn | Ty::Null)
                {
                    self.error(
                        &args[1],
                        format!("`in` needs a list or a map on its right, this is {container}"),
                        None,
                    );
                }
                Ty::Bool
            }
            operators::INDEX | operators::OPT_INDEX => match arg_tys.first() {
                Some(Ty::List(element)) => (**element).clone(),
                Some(Ty::Map | Ty::Dyn | Ty::Null) => Ty::Dyn,
                Some(other) => {
                    let other = other.clone();
                    self.error(expr, format!("cannot index into {other}"), None);
                    Ty::Dyn
                }
                None => Ty::Dyn,
            },
            "size" => Ty::Int,
            "contains" | "startsWith" | "endsWith" | "matches" => {
                if let Some(target) = &target_ty
                    && !matches!(target, Ty::String | Ty::Dyn | Ty::Null)
                {
                    let hint =
                        matches!(target, Ty::List(_)).then(|| "for a list, write `\"value\" in list`".to_string());
                    self.error(expr, format!("`{name}` works on strings, not on {target}"), hint);
                }
                Ty::Bool
            }
            "int" | "uint" => Ty::Int,
            "double" => Ty::Double,
            "string" => Ty::String,
            "bool" => Ty::Bool,
            "timestamp" => Ty::Timestamp,
            "duration" => Ty::Duration,
            "dyn" | "type" => Ty::Dyn,
            "has" => Ty::Bool,
            "getFullYear" | "getMonth" | "getDate" | "getDayOfMonth" | "getDayOfWeek" | "getDayOfYear" | "getHours"
            | "getMinutes" | "getSeconds" | "getMilliseconds" => Ty::Int,
            "count_events" => {
                self.count_events(expr, args);
                Ty::Int
            }
            _ => {
                let hint = did_you_mean(name, FUNCTIONS).map(|f| format!("did you mean `{f}`?"));
                self.error(expr, format!("unknown function `{name}`"), hint);
                Ty::Dyn
            }
        }
    }

    fn count_events(&mut self, expr: &IdedExpr, args: &[IdedExpr]) {
        let literal = |arg: &IdedExpr| match &arg.expr {
            Node::Literal(LiteralValue::String(s)) => Some(s.inner().to_string()),
            _ => None,
        };
        let usage = "write `count_events(\"Event Name\", \"7d\")` with both arguments in quotes";
        match args {
            [name, window] => match (literal(name), literal(window)) {
                (Some(name), Some(window_text)) => match window_text.parse::<Delay>() {
                    Ok(window) => self.count_calls.push((name, window)),
                    Err(reason) => self.error(
                        &args[1],
                        format!("bad window for count_events: {reason}"),
                        Some(crate::journey::values::DELAY_HINT.into()),
                    ),
                },
                _ => self.error(
                    expr,
                    "count_events needs a literal event name and window".into(),
                    Some(usage.into()),
                ),
            },
            _ => self.error(
                expr,
                format!("count_events takes 2 arguments, not {}", args.len()),
                Some(usage.into()),
            ),
        }
    }
}

fn quote_hint(left: &Ty, right: &Ty) -> Option<String> {
    if (left.is_number() && *right == Ty::String) || (*left == Ty::String && right.is_number()) {
        Some("a number in quotes is a string: drop the quotes, or quote both sides".into())
    } else {
        None
    }
}
