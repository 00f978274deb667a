//! Every size limit on what nurture reads from outside, in one place. Pure constants.
//!
//! Each limit bounds the memory and time one request or one file can take, and each has a clear
//! error: the API answers `400` JSON naming the field, the compiler `J008` at file:line:column.
//! `docs/limits.md` lists them for users, and a test keeps that table equal to this file.

// Events (the Segment routes).

/// One request body as sent, before gunzip (`413` past it).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// One message, measured decompressed as compact JSON (Segment's limit).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// One batch request, measured decompressed, counting the batch-level `context` in every message.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Messages in one batch.
pub const MAX_BATCH_MESSAGES: usize = 2500;
/// `messageId`, `userId`, `anonymousId`, `previousId` and `groupId`, in characters.
pub const MAX_ID_CHARS: usize = 200;
/// A track call's `event` name, in characters.
pub const MAX_EVENT_NAME_CHARS: usize = 200;
/// Nesting of objects and lists inside `traits`, `properties` and `context`: the field itself
/// is level 1, so `{"traits": {"address": {"city": "Berlin"}}}` is 2 deep.
pub const MAX_JSON_DEPTH: usize = 10;
/// Keys of one object inside `traits`, `properties` and `context`, the top-level ones included.
/// Traits per contact (all messages together) are bounded where they are stored.
pub const MAX_JSON_KEYS: usize = 255;
/// A key inside `traits`, `properties` and `context`, in characters.
pub const MAX_KEY_CHARS: usize = 255;
/// A string value inside `traits`, `properties` and `context`, in characters.
pub const MAX_STRING_CHARS: usize = 8 * 1024;

// Files the compiler reads.

/// A journey file, `sales.yaml` or `scoring.yaml`.
pub const MAX_YAML_FILE_BYTES: usize = 256 * 1024;
/// Nesting of mappings and lists in a YAML file.
pub const MAX_YAML_DEPTH: usize = 32;
/// Values in a YAML file, each alias counted as the values it repeats (a "billion laughs"
/// file of a few lines would otherwise expand to gigabytes).
pub const MAX_YAML_VALUES: usize = 100_000;
/// A CEL condition, in characters.
pub const MAX_CONDITION_CHARS: usize = 2_000;
/// Nesting in a CEL condition: brackets (`(`, `[`, `{`), prefix `!` and `-`, operators and calls.
pub const MAX_CONDITION_DEPTH: usize = 32;
/// A template file (email HTML, text part, SMS, partial). Gmail clips email past 102 KB.
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// Nesting of blocks (`{{#if}}`, `{{#each}}`, ...) in a template.
pub const MAX_TEMPLATE_DEPTH: usize = 32;
/// Different tags that a project's journeys add: a contact has only tags that `tag` steps added,
/// so this bounds the tags per contact too.
pub const MAX_PROJECT_TAGS: usize = 500;
/// A tag, in characters.
pub const MAX_TAG_CHARS: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;

    /// `1,234,567`, as the docs write numbers.
    fn thousands(value: usize) -> String {
        let digits = value.to_string();
        let mut out = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index).is_multiple_of(3) {
                out.push(',');
            }
            out.push(digit);
        }
        out
    }

    #[test]
    fn docs_limits_md_lists_every_limit_with_its_value() {
        for (file, docs) in [
            ("docs/limits.md", include_str!("../docs/limits.md")),
            ("README.md", include_str!("../README.md")),
        ] {
            check_table(file, docs);
        }
    }

    fn check_table(file: &str, docs: &str) {
        let source = include_str!("limits.rs");
        let all = [
            ("MAX_REQUEST_BYTES", MAX_REQUEST_BYTES),
            ("MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES),
            ("MAX_BATCH_BYTES", MAX_BATCH_BYTES),
            ("MAX_BATCH_MESSAGES", MAX_BATCH_MESSAGES),
            ("MAX_ID_CHARS", MAX_ID_CHARS),
            ("MAX_EVENT_NAME_CHARS", MAX_EVENT_NAME_CHARS),
            ("MAX_JSON_DEPTH", MAX_JSON_DEPTH),
            ("MAX_JSON_KEYS", MAX_JSON_KEYS),
            ("MAX_KEY_CHARS", MAX_KEY_CHARS),
            ("MAX_STRING_CHARS", MAX_STRING_CHARS),
            ("MAX_YAML_FILE_BYTES", MAX_YAML_FILE_BYTES),
            ("MAX_YAML_DEPTH", MAX_YAML_DEPTH),
            ("MAX_YAML_VALUES", MAX_YAML_VALUES),
            ("MAX_CONDITION_CHARS", MAX_CONDITION_CHARS),
            ("MAX_CONDITION_DEPTH", MAX_CONDITION_DEPTH),
            ("MAX_TEMPLATE_BYTES", MAX_TEMPLATE_BYTES),
            ("MAX_TEMPLATE_DEPTH", MAX_TEMPLATE_DEPTH),
            ("MAX_PROJECT_TAGS", MAX_PROJECT_TAGS),
            ("MAX_TAG_CHARS", MAX_TAG_CHARS),
        ];
        let declared = source.matches("\npub const MAX_").count();
        assert_eq!(declared, all.len(), "a limit is missing from this test");
        for (name, value) in all {
            let row = docs
                .lines()
                .find(|line| line.contains(&format!("`{name}`")))
                .unwrap_or_else(|| panic!("{file} has no row for {name}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert!(
                cells[2] == thousands(value) || cells[2].starts_with(&format!("{} ", thousands(value))),
                "{file} says {} for {name}, which is {value}",
                cells[2]
            );
        }
    }
}
