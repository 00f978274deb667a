//! A YAML document as a tree of nodes that remember where they were written.
//!
//! The journey language is decoded by hand from this tree rather than through serde, because
//! serde stops at the first error and forgets positions; a marketer gets every mistake of a file
//! at once, each with its own line and column.

use crate::limits::{MAX_YAML_DEPTH, MAX_YAML_FILE_BYTES, MAX_YAML_VALUES};
use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

/// A 1-based line and column in a source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub fn new(line: u32, col: u32) -> Pos {
        Pos { line, col }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Quoted scalars are always strings; plain ones may be numbers or booleans.
    pub quoted: bool,
    /// Block scalars (`|` and `>`) start on the line after the indicator.
    pub block: bool,
}

/// A problem that makes the file unreadable as YAML, or too large to read (`limit`).
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    /// A limit of `crate::limits` was passed; the YAML itself may be fine.
    pub limit: bool,
}

impl SyntaxError {
    fn new(pos: Pos, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos,
            message: message.into(),
            limit: false,
        }
    }

    fn limit(pos: Pos, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            limit: true,
            ..SyntaxError::new(pos, message)
        }
    }
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The entry of a mapping with this key, if the node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// What kind of YAML value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar(s) if !s.quoted && s.text.parse::<f64>().is_ok() => "a number",
            Value::Scalar(s) if !s.quoted && (s.text == "true" || s.text == "false") => "a boolean",
            Value::Scalar(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The node as plain JSON: plain scalars become numbers, booleans or null where they spell
    /// one, and mapping keys keep their order.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Scalar(s) if s.quoted || s.block => J::String(s.text.clone()),
            Value::Scalar(s) => plain_scalar_to_json(&s.text),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

fn plain_scalar_to_json(text: &str) -> serde_json::Value {
    use serde_json::Value as J;
    match text {
        "true" | "True" | "TRUE" => return J::Bool(true),
        "false" | "False" | "FALSE" => return J::Bool(false),
        "null" | "Null" | "NULL" | "~" | "" => return J::Null,
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return J::from(i);
    }
    if let Ok(f) = text.parse::<f64>()
        && f.is_finite()
    {
        return J::from(f);
    }
    J::String(text.to_string())
}

fn depth_message() -> String {
    format!("mappings and lists nest deeper than {MAX_YAML_DEPTH} levels here")
}

/// Parses one YAML document. An empty file is a null node. The file, its nesting and the values
/// its aliases repeat are bounded (`crate::limits`), so no file can take unbounded time or memory.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.len() > MAX_YAML_FILE_BYTES {
        return Err(SyntaxError::limit(
            Pos::new(1, 1),
            format!(
                "this file is {} KB; a YAML file is at most {} KB",
                text.len().div_ceil(1024),
                MAX_YAML_FILE_BYTES / 1024
            ),
        ));
    }
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        values: 0,
    };
    let mut documents = 0;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|error| {
            let pos = Pos::new(error.marker().line() as u32, error.marker().col() as u32 + 1);
            // The parser has a nesting limit of its own, which it may reach while reading ahead.
            if error.info().contains("recursion limit") {
                SyntaxError::limit(pos, depth_message())
            } else {
                SyntaxError::new(pos, error.info().to_string())
            }
        })?;
        if let Event::DocumentStart(_) = event {
            documents += 1;
            if documents > 1 {
                return Err(SyntaxError::new(
                    pos_of(&span),
                    "a journey file holds one YAML document; remove the second `---`",
                ));
            }
            continue;
        }
        builder.event(event, span)?;
    }
    Ok(builder.root.unwrap_or(Node {
        pos: Pos::new(1, 1),
        value: Value::Null,
    }))
}

fn pos_of(span: &Span) -> Pos {
    Pos::new(span.start.line() as u32, span.start.col() as u32 + 1)
}

enum Open {
    Seq(Node, usize),
    Map(Node, usize, Option<Node>),
}

struct Builder {
    stack: Vec<Open>,
    /// Each anchored node with its number of values and its depth, which an alias repeats.
    anchors: HashMap<usize, (Node, usize, usize)>,
    root: Option<Node>,
    /// Values so far, aliases counted as what they repeat.
    values: usize,
}

/// The values in a node and how deep it nests (a scalar is 0 deep).
fn measure(node: &Node) -> (usize, usize) {
    match &node.value {
        Value::Null | Value::Scalar(_) => (1, 0),
        Value::Seq(items) => items
            .iter()
            .map(measure)
            .fold((1, 1), |(values, depth), (v, d)| (values + v, depth.max(d + 1))),
        Value::Map(entries) => entries
            .iter()
            .flat_map(|(key, value)| [key, value])
            .map(measure)
            .fold((1, 1), |(values, depth), (v, d)| (values + v, depth.max(d + 1))),
    }
}

impl Builder {
    /// Counts `values` more, nested `depth` below the open collections, against the limits.
    fn grow(&mut self, pos: Pos, values: usize, depth: usize) -> Result<(), SyntaxError> {
        if self.stack.len() + depth > MAX_YAML_DEPTH {
            return Err(SyntaxError::limit(pos, depth_message()));
        }
        self.values += values;
        if self.values > MAX_YAML_VALUES {
            return Err(SyntaxError::limit(
                pos,
                format!("the file has more than {MAX_YAML_VALUES} values, counting what each alias repeats"),
            ));
        }
        Ok(())
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let pos = pos_of(&span);
        match &event {
            Event::Scalar(..) => self.grow(pos, 1, 0)?,
            Event::SequenceStart(..) | Event::MappingStart(..) => self.grow(pos, 1, 1)?,
            Event::Alias(id) => {
                if let Some((_, values, depth)) = self.anchors.get(id) {
                    let (values, depth) = (*values, *depth);
                    self.grow(pos, values, depth)?;
                }
            }
            _ => {}
        }
        match event {
            Event::Scalar(text, style, anchor, _tag) => {
                let value = if style == ScalarStyle::Plain && is_null(&text) {
                    Value::Null
                } else {
                    Value::Scalar(Scalar {
                        text: text.into_owned(),
                        quoted: matches!(style, ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted),
                        block: matches!(style, ScalarStyle::Literal | ScalarStyle::Folded),
                    })
                };
                self.complete(Node { pos, value }, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Open::Seq(
                    Node {
                        pos,
                        value: Value::Seq(Vec::new()),
                    },
                    anchor,
                ));
                Ok(())
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Map(
                    Node {
                        pos,
                        value: Value::Map(Vec::new()),
                    },
                    anchor,
                    None,
                ));
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Seq(node, anchor)) | Some(Open::Map(node, anchor, None)) => self.complete(node, anchor),
                _ => Err(SyntaxError::new(pos, "unbalanced YAML structure")),
            },
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((node, _, _)) => {
                    let mut node = node.clone();
                    node.pos = pos;
                    self.complete(node, 0)
                }
                None => Err(SyntaxError::new(pos, "alias refers to an unknown anchor")),
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => Ok(()),
            Event::DocumentStart(_) => Ok(()),
        }
    }

    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            let (values, depth) = measure(&node);
            self.anchors.insert(anchor, (node.clone(), values, depth));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(seq, _)) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some(Open::Map(map, _, pending)) => match pending.take() {
                None => {
                    if !matches!(node.value, Value::Scalar(_)) {
                        return Err(SyntaxError::new(node.pos, "mapping keys must be plain words"));
                    }
                    let earlier = map.as_map().and_then(|entries| {
                        entries
                            .iter()
                            .find(|(k, _)| k.as_str() == node.as_str())
                            .map(|(k, _)| k.pos.line)
                    });
                    if let Some(line) = earlier {
                        return Err(SyntaxError::new(
                            node.pos,
                            format!(
                                "key `{}` appears twice in this mapping (first on line {line})",
                                node.as_str().unwrap_or_default()
                            ),
                        ));
                    }
                    *pending = Some(node);
                }
                Some(key) => {
                    if let Value::Map(entries) = &mut map.value {
                        entries.push((key, node));
                    }
                }
            },
        }
        Ok(())
    }
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_remember_line_and_column() {
        let doc = parse("id: a\nsteps:\n  - id: one\n    wait: 1h\n").unwrap();
        let steps = doc.get("steps").unwrap().as_seq().unwrap();
        let wait = steps[0].get("wait").unwrap();
        assert_eq!(wait.pos, Pos::new(4, 11));
        assert_eq!(wait.as_str(), Some("1h"));
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let error = parse("id: a\nid: b\n").unwrap_err();
        assert_eq!(error.pos, Pos::new(2, 1));
        assert!(error.message.contains("twice"), "{}", error.message);
    }

    #[test]
    fn aliases_expand_to_their_anchor() {
        let doc = parse("a: &x {k: 1}\nb: *x\n").unwrap();
        assert_eq!(doc.get("b").unwrap().get("k").unwrap().as_str(), Some("1"));
    }
}
