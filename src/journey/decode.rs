//! Helpers that read typed values out of YAML nodes and report every mistake with its place.

use super::diagnostic::{Diagnostic, Sink, did_you_mean};
use super::values::{DELAY_HINT, Delay};
use super::yaml::{Node, Pos, Value};
use crate::expr::{Expr, Place, Want};

pub struct Reader<'a> {
    pub sink: Sink<'a>,
    /// The file's text, to place errors inside block scalars.
    pub text: &'a str,
}

/// The entries of a mapping whose keys have been checked against the allowed ones.
pub struct Fields<'n> {
    pub node: &'n Node,
    entries: &'n [(Node, Node)],
}

impl<'n> Fields<'n> {
    /// A mapping whose keys the caller has already checked.
    pub fn from_checked(node: &'n Node) -> Option<Fields<'n>> {
        node.as_map().map(|entries| Fields { node, entries })
    }

    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, _)| k.pos)
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn entries(&self) -> &'n [(Node, Node)] {
        self.entries
    }
}

impl<'a> Reader<'a> {
    pub fn new(file: &'a str, text: &'a str, diagnostics: &'a mut Vec<Diagnostic>) -> Self {
        Reader {
            sink: Sink { file, diagnostics },
            text,
        }
    }

    pub fn file(&self) -> &str {
        self.sink.file
    }

    /// Reads a mapping; reports keys that are not in `allowed`, with the closest allowed one.
    pub fn fields<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.sink.error_hint(
                node.pos,
                "J002",
                format!("{what} must be a mapping of `key: value` lines, not {}", node.kind()),
                format!("known keys: {}", allowed.join(", ")),
            );
            return None;
        };
        for (key, _) in entries {
            let name = key.as_str().unwrap_or_default();
            if allowed.contains(&name) {
                continue;
            }
            let hint = match did_you_mean(name, allowed.iter().copied()) {
                Some(suggestion) => format!("did you mean `{suggestion}`?"),
                None => format!("known keys: {}", allowed.join(", ")),
            };
            self.sink
                .error_hint(key.pos, "J003", format!("unknown key `{name}` in {what}"), hint);
        }
        Some(Fields { node, entries })
    }

    pub fn missing(&mut self, fields: &Fields<'_>, key: &str, what: &str, example: &str) {
        self.sink.error_hint(
            fields.node.pos,
            "J004",
            format!("{what} needs `{key}`"),
            format!("add `{key}: {example}`"),
        );
    }

    /// A required text value.
    pub fn required_string(&mut self, fields: &Fields<'_>, key: &str, what: &str, example: &str) -> Option<String> {
        match fields.get(key) {
            Some(node) => self.string(node, key),
            None => {
                self.missing(fields, key, what, example);
                None
            }
        }
    }

    pub fn optional_string(&mut self, fields: &Fields<'_>, key: &str) -> Option<String> {
        fields.get(key).and_then(|node| self.string(node, key))
    }

    pub fn string(&mut self, node: &Node, key: &str) -> Option<String> {
        match &node.value {
            Value::Scalar(scalar) => Some(scalar.text.clone()),
            _ => {
                self.sink
                    .error(node.pos, "J005", format!("`{key}` must be text, not {}", node.kind()));
                None
            }
        }
    }

    /// A whole number, possibly written with a sign (`+15`).
    pub fn integer(&mut self, node: &Node, key: &str) -> Option<i64> {
        let parsed = node.as_scalar().filter(|s| !s.quoted).and_then(|s| {
            let text = s.text.trim();
            text.strip_prefix('+').unwrap_or(text).parse::<i64>().ok()
        });
        if parsed.is_none() {
            self.sink.error_hint(
                node.pos,
                "J005",
                format!("`{key}` must be a whole number, not {}", describe(node)),
                "write digits without quotes, e.g. 15 or -10",
            );
        }
        parsed
    }

    pub fn number(&mut self, node: &Node, key: &str) -> Option<f64> {
        let parsed = node
            .as_scalar()
            .filter(|s| !s.quoted)
            .and_then(|s| s.text.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite());
        if parsed.is_none() {
            self.sink.error(
                node.pos,
                "J005",
                format!("`{key}` must be a number, not {}", describe(node)),
            );
        }
        parsed
    }

    /// One string or a list of strings.
    pub fn string_list(&mut self, node: &Node, key: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::Scalar(s) => Some(vec![s.text.clone()]),
            Value::Seq(items) => items.iter().map(|item| self.string(item, key)).collect(),
            _ => {
                self.sink.error(
                    node.pos,
                    "J005",
                    format!("`{key}` must be a word or a list of words, not {}", node.kind()),
                );
                None
            }
        }
    }

    pub fn delay(&mut self, node: &Node, key: &str) -> Option<Delay> {
        let text = self.string(node, key)?;
        match text.parse::<Delay>() {
            Ok(delay) => Some(delay),
            Err(reason) => {
                self.sink.error_hint(
                    node.pos,
                    "J020",
                    format!("bad duration in `{key}`: {reason}"),
                    DELAY_HINT,
                );
                None
            }
        }
    }

    /// Parses a value with `FromStr`, reporting `code` and `hint` when it fails.
    pub fn parsed<T: std::str::FromStr<Err = String>>(
        &mut self,
        node: &Node,
        key: &str,
        code: &'static str,
        hint: &str,
    ) -> Option<T> {
        let text = self.string(node, key)?;
        match text.parse::<T>() {
            Ok(value) => Some(value),
            Err(reason) => {
                self.sink
                    .error_hint(node.pos, code, format!("bad `{key}`: {reason}"), hint);
                None
            }
        }
    }

    /// Compiles a CEL condition; errors point at the character inside the YAML value.
    pub fn expr(&mut self, node: &Node, key: &str, place: Place, want: Want) -> Option<Expr> {
        let scalar = match &node.value {
            Value::Scalar(s) => s,
            // Plain YAML turns `true` into a scalar too; a list or mapping is a mistake.
            _ => {
                self.sink.error_hint(
                    node.pos,
                    "J030",
                    format!("`{key}` must be a CEL condition, not {}", node.kind()),
                    "write it on one line, e.g. `where: event.properties.plan == \"pro\"`",
                );
                return None;
            }
        };
        match Expr::compile(&scalar.text, place, want) {
            Ok(expr) => Some(expr),
            Err(errors) => {
                for error in errors {
                    let pos = self.pos_in_scalar(node, &scalar.text, error.offset);
                    let code = if error.limit { "J008" } else { "J031" };
                    let diagnostic =
                        Diagnostic::error(self.sink.file, pos, code, format!("in `{key}`: {}", error.message))
                            .maybe_hint(error.hint);
                    self.sink.push(diagnostic);
                }
                None
            }
        }
    }

    /// Where the character `offset` of a scalar's text was written in the file.
    pub fn pos_in_scalar(&self, node: &Node, text: &str, offset: usize) -> Pos {
        let scalar = node.as_scalar();
        let before: String = text.chars().take(offset).collect();
        let line_in_text = before.matches('\n').count() as u32;
        let col_in_line = before.rsplit('\n').next().unwrap_or("").chars().count() as u32;
        match scalar {
            Some(s) if s.block => {
                // Block scalars start on the next line, indented.
                let line = node.pos.line + 1 + line_in_text;
                let indent = self
                    .text
                    .lines()
                    .nth(line as usize - 1)
                    .map(|l| l.chars().take_while(|c| *c == ' ').count() as u32)
                    .unwrap_or(0);
                Pos::new(line, indent + 1 + col_in_line)
            }
            Some(s) if line_in_text == 0 => Pos::new(node.pos.line, node.pos.col + u32::from(s.quoted) + col_in_line),
            _ => Pos::new(node.pos.line + line_in_text, col_in_line + 1),
        }
    }
}

fn describe(node: &Node) -> String {
    match node.as_str() {
        Some(text) => format!("`{text}`"),
        None => node.kind().to_string(),
    }
}

/// Parses a YAML file, reporting a syntax error as `J001`.
pub fn parse_yaml(file: &str, text: &str, diagnostics: &mut Vec<Diagnostic>) -> Option<Node> {
    match super::yaml::parse(text) {
        Ok(root) => Some(root),
        Err(error) if error.limit => {
            diagnostics.push(Diagnostic::error(file, error.pos, "J008", error.message).with_hint(
                "split it into smaller files, or write the repeated part once; docs/limits.md lists the limits",
            ));
            None
        }
        Err(error) => {
            diagnostics.push(
                Diagnostic::error(
                    file,
                    error.pos,
                    "J001",
                    format!("this is not valid YAML: {}", error.message),
                )
                .with_hint("check the indentation and that every `key:` has a space after the colon"),
            );
            None
        }
    }
}

/// Ids of journeys, steps, templates, teams and rules: lowercase letters, digits and dashes.
pub fn is_slug(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

pub fn slugify(text: &str) -> String {
    let mut slug = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').to_string()
}
