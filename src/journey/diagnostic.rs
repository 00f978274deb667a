//! Diagnostics: every mistake in a journey, template, `sales.yaml` or `scoring.yaml`, with the
//! place it was written, a stable code and a hint saying what to write instead.

use super::yaml::Pos;
use serde::Serialize;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub severity: Severity,
    /// Stable code, documented in `docs/journeys.md` (e.g. `J012`).
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(file: &str, pos: Pos, code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_string(),
            line: pos.line,
            column: pos.col,
            severity: Severity::Error,
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn warning(file: &str, pos: Pos, code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, pos, code, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}[{}]: {}",
            self.file, self.line, self.column, self.code, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one file.
pub struct Sink<'a> {
    pub file: &'a str,
    pub diagnostics: &'a mut Vec<Diagnostic>,
}

impl Sink<'_> {
    pub fn error(&mut self, pos: Pos, code: &'static str, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::error(self.file, pos, code, message));
    }

    pub fn error_hint(&mut self, pos: Pos, code: &'static str, message: impl Into<String>, hint: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::error(self.file, pos, code, message).with_hint(hint));
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    pub fn warning(&mut self, pos: Pos, code: &'static str, message: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::warning(self.file, pos, code, message));
    }
}

/// The closest candidate to a misspelt name, if one is close enough to be what was meant.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(&word_lower, &candidate.to_lowercase()), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.chars().count().max(3) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance with adjacent transpositions counted as one edit.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut previous_previous = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut current = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            current[j] = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                current[j] = current[j].min(previous_previous[j - 2] + 1);
            }
        }
        previous_previous = std::mem::replace(&mut previous, current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_name() {
        let keys = ["send_email", "send_sms", "wait", "wait_for"];
        assert_eq!(did_you_mean("sned_email", keys), Some("send_email"));
        assert_eq!(
            did_you_mean("hand-to-sale", ["hand-to-sales", "check-score"]),
            Some("hand-to-sales")
        );
        assert_eq!(did_you_mean("completely-different", keys), None);
    }
}
