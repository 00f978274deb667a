//! Message templates: `templates/NAME[.LANG].email.hbs` (front matter + HTML), an optional
//! `NAME[.LANG].email.txt.hbs` text part, `NAME[.LANG].sms.hbs`, and `partials/NAME.hbs`.
//!
//! Templates are checked when journeys compile: syntax, variables that nothing can provide,
//! unknown partials and helpers, the unsubscribe link of marketing mail and SMS length.
//! Rendering is pure too, so the simulator and the engine render the same way.

use super::decode::{Reader, is_slug};
use super::diagnostic::{Diagnostic, did_you_mean};
use super::values::Tracking;
use super::yaml::{self, Pos};
use crate::limits::{MAX_TEMPLATE_BYTES, MAX_TEMPLATE_DEPTH};
use handlebars::template::{Parameter, Template, TemplateElement};
use handlebars::{Handlebars, Path};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};

/// Variables a template may use, and the fields of the fixed-shape ones.
const ROOTS: [(&str, Option<&[&str]>); 12] = [
    (
        "contact",
        Some(&["id", "email", "phone", "timezone", "language", "created_at"]),
    ),
    ("traits", None),
    ("trigger", Some(&["name", "properties", "timestamp"])),
    ("event", Some(&["name", "properties", "timestamp"])),
    ("score", Some(&[])),
    ("stage", Some(&[])),
    ("tags", None),
    ("journey", Some(&["id", "name", "version"])),
    ("unsubscribe_url", Some(&[])),
    ("now", Some(&[])),
    // Only in the notifications of `sales.yaml`: the lead given to a rep, and the rep.
    (
        "lead",
        Some(&[
            "id",
            "team",
            "team_name",
            "accept_by",
            "accept_within",
            "why",
            "reasons",
        ]),
    ),
    ("rep", Some(&["id", "name", "email", "phone"])),
];
const BUILTIN_HELPERS: [&str; 15] = [
    "if", "unless", "each", "with", "lookup", "eq", "ne", "gt", "gte", "lt", "lte", "and", "or", "not", "len",
];
const OUR_HELPERS: [&str; 3] = ["default", "upper", "lower"];
/// An SMS longer than this many parts is refused: it costs like ten messages and reads badly.
pub const MAX_SMS_SEGMENTS: u32 = 10;
/// The length assumed for a variable when counting SMS segments before sending.
const TYPICAL_VARIABLE_LENGTH: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MailClass {
    /// Promotional mail: needs an unsubscribe link and List-Unsubscribe headers.
    Marketing,
    /// Receipts and password resets: sent even to unsubscribed contacts.
    Transactional,
}

#[derive(Clone, Debug)]
pub struct EmailVariant {
    pub file: String,
    pub subject: String,
    pub from: Option<String>,
    pub reply_to: Option<String>,
    pub preheader: Option<String>,
    pub class: MailClass,
    /// Opens and clicks tracked when this template is sent; `None`: as the journey says.
    pub tracking: Option<Tracking>,
    pub html: String,
    pub text: Option<String>,
}

#[derive(Clone, Debug)]
pub struct SmsVariant {
    pub file: String,
    pub body: String,
}

/// All templates of a project, by name and language (`""` is the default language).
#[derive(Clone, Default)]
pub struct Templates {
    pub emails: BTreeMap<String, BTreeMap<String, EmailVariant>>,
    pub sms: BTreeMap<String, BTreeMap<String, SmsVariant>>,
    pub partials: BTreeMap<String, String>,
    html: Handlebars<'static>,
    plain: Handlebars<'static>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RenderedEmail {
    pub template: String,
    pub language: String,
    pub subject: String,
    pub from: Option<String>,
    pub reply_to: Option<String>,
    pub preheader: Option<String>,
    pub class: MailClass,
    /// What the template says about tracking; the journey decides when it says nothing.
    #[serde(skip)]
    pub tracking: Option<Tracking>,
    pub html: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RenderedSms {
    pub template: String,
    pub language: String,
    pub body: String,
    pub segments: u32,
    pub encoding: SmsEncoding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SmsEncoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("there is no {channel} template `{name}`")]
    Missing { channel: &'static str, name: String },
    #[error("template `{name}` failed to render: {reason}")]
    Failed { name: String, reason: String },
}

/// A template file as read from disk: its path for messages and its text.
#[derive(Clone)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

enum Kind {
    Email,
    EmailText,
    Sms,
    Partial,
}

/// Splits `templates/partials/footer.hbs` or `templates/intro.zh.email.hbs` into its parts.
fn classify(path: &str) -> Option<(Kind, String, String)> {
    let normalized = path.replace('\\', "/");
    let file_name = normalized.rsplit('/').next()?;
    let in_partials = normalized.contains("/partials/") || normalized.starts_with("partials/");
    if in_partials {
        return file_name
            .strip_suffix(".hbs")
            .map(|name| (Kind::Partial, name.to_string(), String::new()));
    }
    let (kind, stem) = if let Some(stem) = file_name.strip_suffix(".email.txt.hbs") {
        (Kind::EmailText, stem)
    } else if let Some(stem) = file_name.strip_suffix(".email.hbs") {
        (Kind::Email, stem)
    } else if let Some(stem) = file_name.strip_suffix(".sms.hbs") {
        (Kind::Sms, stem)
    } else {
        return None;
    };
    let (name, language) = match stem.split_once('.') {
        Some((name, language)) => (name, language),
        None => (stem, ""),
    };
    Some((kind, name.to_string(), language.to_string()))
}

impl Templates {
    /// Reads every template file; reports mistakes and keeps the templates that are sound.
    pub fn compile(files: &[SourceFile], diagnostics: &mut Vec<Diagnostic>) -> Templates {
        let mut templates = Templates {
            html: registry(true),
            plain: registry(false),
            ..Templates::default()
        };
        let files: Vec<&SourceFile> = files
            .iter()
            .filter(|file| within_limits(&file.path, &file.text, diagnostics))
            .collect();
        let mut texts: Vec<(&SourceFile, String, String)> = Vec::new();
        let mut parsed: Vec<(&SourceFile, Template, u32, &'static str)> = Vec::new();
        // Partials first: the others may use them.
        for file in files.iter().copied() {
            if let Some((Kind::Partial, name, _)) = classify(&file.path)
                && let Some(template) = compile_body(&file.path, &file.text, 0, diagnostics)
            {
                templates.partials.insert(name.clone(), file.text.clone());
                let _ = templates.html.register_partial(&name, &file.text);
                let _ = templates.plain.register_partial(&name, &file.text);
                parsed.push((file, template, 0, "partial"));
            }
        }
        for (name, diagnostic) in partial_cycles(&parsed) {
            // Unregistered, so that even a catalog with errors cannot render it forever (it stays
            // in `partials`, so the templates that include it are not also told it is unknown).
            templates.html.unregister_template(&name);
            templates.plain.unregister_template(&name);
            diagnostics.push(diagnostic);
        }
        for file in files.iter().copied() {
            let Some((kind, name, language)) = classify(&file.path) else {
                if file.path.ends_with(".hbs") {
                    diagnostics.push(Diagnostic::error(&file.path, Pos::new(1, 1), "J045", "this template's name does not say its channel").with_hint("name it NAME.email.hbs, NAME.email.txt.hbs or NAME.sms.hbs (NAME.zh.email.hbs for a language)"));
                }
                continue;
            };
            if !matches!(kind, Kind::Partial) && !is_slug(&name) {
                diagnostics.push(Diagnostic::error(
                    &file.path,
                    Pos::new(1, 1),
                    "J045",
                    format!("template name `{name}` may only use lowercase letters, digits and dashes"),
                ));
                continue;
            }
            match kind {
                Kind::Partial => {}
                Kind::Email => {
                    if let Some((variant, template, offset)) = email_variant(file, diagnostics) {
                        parsed.push((file, template, offset, "email"));
                        templates.emails.entry(name).or_default().insert(language, variant);
                    }
                }
                Kind::EmailText => {
                    if let Some(template) = compile_body(&file.path, &file.text, 0, diagnostics) {
                        parsed.push((file, template, 0, "text"));
                        texts.push((file, name, language));
                    }
                }
                Kind::Sms => {
                    if let Some(template) = compile_body(&file.path, &file.text, 0, diagnostics) {
                        check_sms_length(file, diagnostics);
                        parsed.push((file, template, 0, "sms"));
                        templates.sms.entry(name).or_default().insert(
                            language,
                            SmsVariant {
                                file: file.path.clone(),
                                body: file.text.clone(),
                            },
                        );
                    }
                }
            }
        }
        for (file, name, language) in texts {
            match templates
                .emails
                .get_mut(&name)
                .and_then(|variants| variants.get_mut(&language))
            {
                Some(variant) => variant.text = Some(file.text.clone()),
                None => diagnostics.push(Diagnostic::error(
                    &file.path,
                    Pos::new(1, 1),
                    "J045",
                    format!(
                        "text part without an email: there is no {name}{}.email.hbs",
                        if language.is_empty() {
                            String::new()
                        } else {
                            format!(".{language}")
                        }
                    ),
                )),
            }
        }
        for (file, template, line_offset, what) in &parsed {
            let mut references = References::default();
            collect(template, *line_offset, &mut references, false);
            if *what == "partial" {
                // A partial may be given parameters (`{{> button url="..."}}`): only names under
                // the known roots can be checked.
                references.variables.retain(|(path, _)| {
                    let root = path.split(['.', '/']).next().unwrap_or_default();
                    ROOTS.iter().any(|(name, _)| *name == root)
                });
            }
            check_references(&file.path, &references, &templates.partials, diagnostics);
            if matches!(*what, "email" | "partial") {
                warn_unescaped(&file.path, &references, diagnostics);
            }
            if *what == "email"
                && let Some((_, name, language)) = classify(&file.path)
                && let Some(variant) = templates.emails.get(&name).and_then(|v| v.get(&language))
                && variant.class == MailClass::Marketing
                && !uses_unsubscribe(&references, &templates.partials)
            {
                diagnostics.push(Diagnostic::error(&file.path, Pos::new(line_offset + 1, 1), "J043", "marketing email without an unsubscribe link").with_hint("add <a href=\"{{unsubscribe_url}}\">Unsubscribe</a> (or a partial that has it), or mark a receipt `class: transactional`"));
            }
        }
        // Register what survived, for rendering.
        for (name, variants) in &templates.emails {
            for (language, variant) in variants {
                let key = format!("email/{name}/{language}");
                let _ = templates
                    .plain
                    .register_template_string(&format!("{key}/subject"), &variant.subject);
                let _ = templates
                    .html
                    .register_template_string(&format!("{key}/html"), &variant.html);
                if let Some(text) = &variant.text {
                    let _ = templates.plain.register_template_string(&format!("{key}/text"), text);
                }
                if let Some(preheader) = &variant.preheader {
                    let _ = templates
                        .plain
                        .register_template_string(&format!("{key}/preheader"), preheader);
                }
            }
        }
        for (name, variants) in &templates.sms {
            for (language, variant) in variants {
                let _ = templates
                    .plain
                    .register_template_string(&format!("sms/{name}/{language}"), &variant.body);
            }
        }
        templates
    }

    pub fn has_email(&self, name: &str) -> bool {
        self.emails.get(name).is_some_and(|v| v.contains_key(""))
    }

    pub fn has_sms(&self, name: &str) -> bool {
        self.sms.get(name).is_some_and(|v| v.contains_key(""))
    }

    /// The class of the email a contact with this language would get: whether consent applies.
    pub fn email_class(&self, name: &str, language: Option<&str>) -> Option<MailClass> {
        let variants = self.emails.get(name)?;
        variants.get(&pick_language(variants.keys(), language)).map(|v| v.class)
    }

    /// Renders an email in the contact's language, falling back to the default one.
    pub fn render_email(&self, name: &str, language: Option<&str>, data: &Json) -> Result<RenderedEmail, RenderError> {
        let variants = self.emails.get(name).ok_or_else(|| RenderError::Missing {
            channel: "email",
            name: name.into(),
        })?;
        let language = pick_language(variants.keys(), language);
        let variant = &variants[&language];
        let key = format!("email/{name}/{language}");
        let failed = |error: handlebars::RenderError| RenderError::Failed {
            name: name.into(),
            reason: error.to_string(),
        };
        let subject = self.plain.render(&format!("{key}/subject"), data).map_err(failed)?;
        let html = self.html.render(&format!("{key}/html"), data).map_err(failed)?;
        let text = match &variant.text {
            Some(_) => self.plain.render(&format!("{key}/text"), data).map_err(failed)?,
            None => html_to_text(&html),
        };
        let preheader = match &variant.preheader {
            Some(_) => Some(self.plain.render(&format!("{key}/preheader"), data).map_err(failed)?),
            None => None,
        };
        Ok(RenderedEmail {
            template: name.into(),
            language,
            subject: subject.trim().to_string(),
            from: variant.from.clone(),
            reply_to: variant.reply_to.clone(),
            preheader,
            class: variant.class,
            tracking: variant.tracking,
            html,
            text,
        })
    }

    pub fn render_sms(&self, name: &str, language: Option<&str>, data: &Json) -> Result<RenderedSms, RenderError> {
        let variants = self.sms.get(name).ok_or_else(|| RenderError::Missing {
            channel: "SMS",
            name: name.into(),
        })?;
        let language = pick_language(variants.keys(), language);
        let body = self
            .plain
            .render(&format!("sms/{name}/{language}"), data)
            .map_err(|error| RenderError::Failed {
                name: name.into(),
                reason: error.to_string(),
            })?;
        let body = body.trim().to_string();
        let (segments, encoding) = sms_segments(&body);
        Ok(RenderedSms {
            template: name.into(),
            language,
            body,
            segments,
            encoding,
        })
    }

    /// Checks a string template written inside a journey (webhook URL, headers and body).
    pub fn check_inline(text: &str) -> Result<(), String> {
        let mut diagnostics = Vec::new();
        if !within_limits("", text, &mut diagnostics) {
            return Err(diagnostics.remove(0).message);
        }
        let template = Template::compile(text).map_err(|error| format!("not a valid template: {}", error.reason()))?;
        let mut references = References::default();
        collect(&template, 0, &mut references, false);
        let mut diagnostics = Vec::new();
        check_references("", &references, &BTreeMap::new(), &mut diagnostics);
        match diagnostics.into_iter().next() {
            Some(diagnostic) => Err(match diagnostic.hint {
                Some(hint) => format!("{} ({hint})", diagnostic.message),
                None => diagnostic.message,
            }),
            None => Ok(()),
        }
    }

    /// Renders a string template (webhook URLs and bodies) without HTML escaping.
    pub fn render_inline(&self, template: &str, data: &Json) -> Result<String, String> {
        self.plain
            .render_template(template, data)
            .map_err(|error| error.to_string())
    }

    /// Renders every string inside a JSON value as a template (webhook and SMS gateway bodies).
    pub fn render_json(&self, value: &Json, data: &Json) -> Result<Json, String> {
        Ok(match value {
            Json::String(text) => Json::String(self.render_inline(text, data)?),
            Json::Array(items) => Json::Array(
                items
                    .iter()
                    .map(|item| self.render_json(item, data))
                    .collect::<Result<_, _>>()?,
            ),
            Json::Object(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(name, item)| Ok((name.clone(), self.render_json(item, data)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }
}

/// Whether a template is within its size and nesting limits; reports `J008` where it is not. The
/// parser and the renderer recurse once per block and subexpression, on the caller's stack.
fn within_limits(path: &str, text: &str, diagnostics: &mut Vec<Diagnostic>) -> bool {
    if text.len() > MAX_TEMPLATE_BYTES {
        diagnostics.push(
            Diagnostic::error(
                path,
                Pos::new(1, 1),
                "J008",
                format!(
                    "this template is {} KB; a template is at most {} KB",
                    text.len().div_ceil(1024),
                    MAX_TEMPLATE_BYTES / 1024
                ),
            )
            .with_hint("move repeated parts into partials, and images and styles to links"),
        );
        return false;
    }
    let mut blocks = 0usize;
    let mut searched = 0;
    while let Some(found) = text[searched..].find("{{") {
        let start = searched + found;
        let inside = text[start + 2..].trim_start_matches(['{', '~']);
        let end = inside.find("}}").unwrap_or(inside.len());
        let tag = &inside[..end];
        match tag.chars().next() {
            Some('#') => blocks += 1,
            Some('^') if !tag[1..].trim().trim_end_matches('~').is_empty() => blocks += 1,
            Some('/') => blocks = blocks.saturating_sub(1),
            _ => {}
        }
        let mut parens = 0usize;
        let mut deepest = 0usize;
        for c in tag.chars() {
            match c {
                '(' => parens += 1,
                ')' => parens = parens.saturating_sub(1),
                _ => {}
            }
            deepest = deepest.max(parens);
        }
        if blocks + deepest > MAX_TEMPLATE_DEPTH {
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            diagnostics.push(
                Diagnostic::error(
                    path,
                    Pos::new(line as u32, col as u32),
                    "J008",
                    format!("blocks and subexpressions nest deeper than {MAX_TEMPLATE_DEPTH} levels here"),
                )
                .with_hint("close blocks sooner, or move the inner part into a partial"),
            );
            return false;
        }
        searched = start + 2;
    }
    true
}

fn registry(html: bool) -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    if !html {
        registry.register_escape_fn(handlebars::no_escape);
    }
    handlebars::handlebars_helper!(default_helper: |value: Json, fallback: Json| {
        if value.is_null() || *value == "" { fallback.clone() } else { value.clone() }
    });
    handlebars::handlebars_helper!(upper: |value: str| value.to_uppercase());
    handlebars::handlebars_helper!(lower: |value: str| value.to_lowercase());
    registry.register_helper("default", Box::new(default_helper));
    registry.register_helper("upper", Box::new(upper));
    registry.register_helper("lower", Box::new(lower));
    registry
}

/// `zh-CN` matches `zh-CN`, then `zh`, then the default.
fn pick_language<'a>(available: impl Iterator<Item = &'a String> + Clone, wanted: Option<&str>) -> String {
    if let Some(wanted) = wanted.map(|w| w.trim().to_ascii_lowercase()).filter(|w| !w.is_empty()) {
        let primary = wanted.split(['-', '_']).next().unwrap_or_default().to_string();
        for candidate in [wanted.replace('_', "-"), primary] {
            if let Some(found) = available.clone().find(|a| a.to_ascii_lowercase() == candidate) {
                return found.clone();
            }
        }
    }
    String::new()
}

fn compile_body(path: &str, body: &str, line_offset: u32, diagnostics: &mut Vec<Diagnostic>) -> Option<Template> {
    match Template::compile(body) {
        Ok(template) => Some(template),
        Err(error) => {
            let (line, col) = error.pos().unwrap_or((1, 1));
            let reason = error.reason().to_string();
            // The parser lists every token it expected; the first words are what help.
            let reason = reason.split(": expected").next().unwrap_or(&reason).to_string();
            diagnostics.push(
                Diagnostic::error(
                    path,
                    Pos::new(line as u32 + line_offset, col as u32),
                    "J041",
                    format!("template syntax error: {reason}"),
                )
                .with_hint(
                    "check that every {{#if}} / {{#each}} has its {{/if}} / {{/each}} and that braces are balanced",
                ),
            );
            None
        }
    }
}

/// Splits front matter from the body; returns the variant, the compiled body and the line where
/// the body starts (minus one).
fn email_variant(file: &SourceFile, diagnostics: &mut Vec<Diagnostic>) -> Option<(EmailVariant, Template, u32)> {
    let text = file.text.trim_start_matches('\u{feff}');
    let Some(rest) = text.strip_prefix("---\n").or_else(|| text.strip_prefix("---\r\n")) else {
        diagnostics.push(
            Diagnostic::error(
                &file.path,
                Pos::new(1, 1),
                "J045",
                "an email template starts with front matter",
            )
            .with_hint("begin the file with `---`, a `subject:` line, and `---` before the HTML"),
        );
        return None;
    };
    let Some(end) = rest.find("\n---") else {
        diagnostics.push(
            Diagnostic::error(&file.path, Pos::new(1, 1), "J045", "the front matter is not closed")
                .with_hint("put a line with `---` between the front matter and the HTML"),
        );
        return None;
    };
    let front = &rest[..end + 1];
    let after = &rest[end + 4..];
    let body = after.split_once('\n').map(|(_, body)| body).unwrap_or("");
    let body_offset = 1 + front.lines().count() as u32 + 1;
    let root = match yaml::parse(front) {
        Ok(root) => root,
        Err(error) => {
            diagnostics.push(Diagnostic::error(
                &file.path,
                Pos::new(error.pos.line + 1, error.pos.col),
                "J045",
                format!("the front matter is not valid YAML: {}", error.message),
            ));
            return None;
        }
    };
    let errors_before = diagnostics.len();
    let mut reader = Reader::new(&file.path, front, diagnostics);
    let fields = reader.fields(
        &root,
        "the front matter",
        &["subject", "from", "reply_to", "preheader", "class", "tracking"],
    );
    let mut variant = None;
    if let Some(fields) = fields {
        let subject = reader.required_string(&fields, "subject", "an email template", "\"Your whitepaper is here\"");
        let from = reader.optional_string(&fields, "from");
        let reply_to = reader.optional_string(&fields, "reply_to");
        let preheader = reader.optional_string(&fields, "preheader");
        let class = match reader.optional_string(&fields, "class").as_deref() {
            None | Some("marketing") => Some(MailClass::Marketing),
            Some("transactional") => Some(MailClass::Transactional),
            Some(other) => {
                let pos = fields.get("class").map(|n| n.pos).unwrap_or_default();
                reader.sink.error_hint(
                    pos,
                    "J045",
                    format!("`{other}` is not a mail class"),
                    "write `marketing` (the default) or `transactional`",
                );
                None
            }
        };
        let tracking: Option<Tracking> = fields
            .get("tracking")
            .and_then(|node| reader.parsed(node, "tracking", "J046", super::values::TRACKING_HINT));
        if class == Some(MailClass::Transactional)
            && let Some(tracking) = tracking.filter(|t| *t != Tracking::Off)
        {
            let pos = fields.get("tracking").map(|n| n.pos).unwrap_or_default();
            reader.sink.error_hint(
                pos,
                "J046",
                format!("transactional mail is never tracked, but this template asks for `tracking: {tracking}`"),
                "remove `tracking`, or make the template `class: marketing` if it is promotional",
            );
        }
        for (key, value) in [("subject", &subject), ("preheader", &preheader)] {
            if let Some(value) = value
                && let Err(error) = Template::compile(value)
            {
                let pos = fields.get(key).map(|n| n.pos).unwrap_or_default();
                reader.sink.error(
                    pos,
                    "J041",
                    format!("the {key} is not a valid template: {}", error.reason()),
                );
            }
        }
        if let (Some(subject), Some(class)) = (subject, class) {
            variant = Some(EmailVariant {
                file: file.path.clone(),
                subject,
                from,
                reply_to,
                preheader,
                class,
                tracking,
                html: body.to_string(),
                text: None,
            });
        }
    }
    // Positions inside the front matter are one line down in the file.
    for diagnostic in &mut diagnostics[errors_before..] {
        diagnostic.line += 1;
    }
    if diagnostics.len() > errors_before {
        return None;
    }
    // Variables used in the subject and preheader are checked like the body's.
    let mut combined = variant.as_ref().map(|v| v.subject.clone()).unwrap_or_default();
    if let Some(preheader) = variant.as_ref().and_then(|v| v.preheader.clone()) {
        combined.push(' ');
        combined.push_str(&preheader);
    }
    if let Ok(front_template) = Template::compile(&combined) {
        let mut references = References::default();
        collect(&front_template, 1, &mut references, false);
        check_references(&file.path, &references, &BTreeMap::new(), diagnostics);
    }
    let template = compile_body(&file.path, body, body_offset, diagnostics)?;
    variant.map(|variant| (variant, template, body_offset))
}

#[derive(Default)]
struct References {
    variables: Vec<(String, Pos)>,
    helpers: Vec<(String, Pos)>,
    partials: Vec<(String, Pos)>,
    /// Variables in triple-stash `{{{ }}}`, which HTML does not escape.
    unescaped: Vec<(String, Pos)>,
}

/// Roots whose values come from contacts and events (anyone who can send an event or fill in a
/// form), as opposed to our own (`unsubscribe_url`, `journey`, `now`, `score`, `stage`).
const CONTACT_DATA: [&str; 6] = ["contact", "traits", "trigger", "event", "tags", "lead"];

/// `J073`: contact data in `{{{ }}}` goes into an email's HTML unescaped, so a trait like
/// `<a href=...>` becomes a link in mail sent under the sender's name.
fn warn_unescaped(file: &str, references: &References, diagnostics: &mut Vec<Diagnostic>) {
    for (path, pos) in &references.unescaped {
        let root = path.split(['.', '/']).next().unwrap_or_default();
        if CONTACT_DATA.contains(&root) {
            diagnostics.push(
                Diagnostic::warning(
                    file,
                    *pos,
                    "J073",
                    format!("`{{{{{{{path}}}}}}}` puts contact data into the email unescaped"),
                )
                .with_hint(format!(
                    "write {{{{{path}}}}}: a value with `<` or `&` would become HTML (a link, a form) in your mail"
                )),
            );
        }
    }
}

/// Walks a template; `nested` is true inside `#each`/`#with`, where the context changes and
/// relative paths are not checked.
fn collect(template: &Template, line_offset: u32, out: &mut References, nested: bool) {
    for (index, element) in template.elements.iter().enumerate() {
        let pos = template
            .mapping
            .get(index)
            .map(|m| Pos::new(m.0 as u32 + line_offset, m.1 as u32))
            .unwrap_or(Pos::new(line_offset + 1, 1));
        match element {
            TemplateElement::Expression(helper)
            | TemplateElement::HtmlExpression(helper)
            | TemplateElement::HelperBlock(helper) => {
                let is_call = !helper.params.is_empty() || !helper.hash.is_empty() || helper.block;
                if matches!(element, TemplateElement::HtmlExpression(_)) {
                    let mut inner = References::default();
                    if !is_call {
                        parameter(&helper.name, pos, &mut inner, false);
                    }
                    for param in helper.params.iter().chain(helper.hash.values()) {
                        parameter(param, pos, &mut inner, false);
                    }
                    out.unescaped.extend(inner.variables);
                }
                match (&helper.name, is_call) {
                    (Parameter::Name(name), true) => out.helpers.push((name.clone(), pos)),
                    (Parameter::Path(Path::Relative((_, raw))), true) => out.helpers.push((raw.clone(), pos)),
                    (name, false) => parameter(name, pos, out, nested),
                    _ => {}
                }
                for param in helper.params.iter().chain(helper.hash.values()) {
                    parameter(param, pos, out, nested);
                }
                let changes_context = matches!(&helper.name, Parameter::Name(n) if n == "each" || n == "with");
                if let Some(inner) = &helper.template {
                    collect(inner, line_offset, out, nested || changes_context);
                }
                if let Some(inverse) = &helper.inverse {
                    collect(inverse, line_offset, out, nested);
                }
            }
            TemplateElement::PartialExpression(partial) | TemplateElement::PartialBlock(partial) => {
                let name = match &partial.name {
                    Parameter::Name(name) => Some(name.clone()),
                    Parameter::Path(Path::Relative((_, raw))) => Some(raw.clone()),
                    _ => None,
                };
                if let Some(name) = name {
                    out.partials.push((name, pos));
                }
                if let Some(inner) = &partial.template {
                    collect(inner, line_offset, out, nested);
                }
            }
            _ => {}
        }
    }
}

fn parameter(param: &Parameter, pos: Pos, out: &mut References, nested: bool) {
    match param {
        Parameter::Path(Path::Relative((_, raw))) => {
            if let Some(rooted) = raw.strip_prefix("@root.").or_else(|| raw.strip_prefix("@root/")) {
                out.variables.push((rooted.to_string(), pos));
            } else if !nested && !raw.starts_with("this") && !raw.starts_with('@') && !raw.starts_with("..") {
                out.variables.push((raw.clone(), pos));
            }
        }
        Parameter::Name(name) if !nested => out.variables.push((name.clone(), pos)),
        Parameter::Subexpression(sub) => {
            if let TemplateElement::Expression(helper) = sub.element.as_ref() {
                if let Parameter::Name(name) = &helper.name {
                    out.helpers.push((name.clone(), pos));
                }
                for inner in helper.params.iter().chain(helper.hash.values()) {
                    parameter(inner, pos, out, nested);
                }
            }
        }
        _ => {}
    }
}

fn check_references(
    file: &str,
    references: &References,
    partials: &BTreeMap<String, String>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    for (path, pos) in &references.variables {
        let segments: Vec<&str> = path.split(['.', '/']).filter(|s| !s.is_empty()).collect();
        let Some(root) = segments.first() else {
            continue;
        };
        match ROOTS.iter().find(|(name, _)| name == root) {
            None => {
                let hint = match did_you_mean(root, ROOTS.iter().map(|(n, _)| *n)) {
                    Some(suggestion) => format!("did you mean `{suggestion}`?"),
                    None => {
                        format!("profile fields are under `traits.`: write {{{{traits.{path}}}}}")
                    }
                };
                diagnostics.push(
                    Diagnostic::error(file, *pos, "J042", format!("no contact or event provides `{path}`"))
                        .with_hint(hint),
                );
            }
            Some((_, Some(fields))) => {
                if let Some(field) = segments.get(1)
                    && !fields.contains(field)
                {
                    let hint = if fields.is_empty() {
                        format!("`{root}` has no fields")
                    } else {
                        did_you_mean(field, fields.iter().copied())
                            .map(|s| format!("did you mean `{root}.{s}`?"))
                            .unwrap_or_else(|| {
                                format!(
                                    "`{root}` has: {}; profile fields are under `traits.`",
                                    fields.join(", ")
                                )
                            })
                    };
                    diagnostics.push(
                        Diagnostic::error(file, *pos, "J042", format!("no contact or event provides `{path}`"))
                            .with_hint(hint),
                    );
                }
            }
            Some((_, None)) => {}
        }
    }
    for (helper, pos) in &references.helpers {
        if !BUILTIN_HELPERS.contains(&helper.as_str()) && !OUR_HELPERS.contains(&helper.as_str()) {
            let all = BUILTIN_HELPERS.iter().chain(OUR_HELPERS.iter()).copied();
            let hint = did_you_mean(helper, all)
                .map(|h| format!("did you mean `{h}`?"))
                .unwrap_or_else(|| format!("helpers: {}", OUR_HELPERS.join(", ")));
            diagnostics
                .push(Diagnostic::error(file, *pos, "J045", format!("unknown helper `{helper}`")).with_hint(hint));
        }
    }
    for (partial, pos) in &references.partials {
        // `{{> @partial-block}}` is the body a layout wraps, not a file.
        if !partials.contains_key(partial) && !partial.starts_with('@') {
            let hint = did_you_mean(partial, partials.keys().map(String::as_str))
                .map(|p| format!("did you mean `{p}`?"))
                .unwrap_or_else(|| format!("create templates/partials/{partial}.hbs"));
            diagnostics
                .push(Diagnostic::error(file, *pos, "J045", format!("unknown partial `{partial}`")).with_hint(hint));
        }
    }
}

/// Partials that include themselves, directly or through others: rendering one would recurse
/// until the stack overflows. Each cycle is reported once, where it closes.
fn partial_cycles(parsed: &[(&SourceFile, Template, u32, &'static str)]) -> Vec<(String, Diagnostic)> {
    // Each partial's file and the partials it includes, with where.
    type Includes<'f> = (&'f str, Vec<(String, Pos)>);
    let mut includes: BTreeMap<String, Includes<'_>> = BTreeMap::new();
    for (file, template, _, what) in parsed {
        let Some((Kind::Partial, name, _)) = classify(&file.path).filter(|_| *what == "partial") else {
            continue;
        };
        let mut references = References::default();
        collect(template, 0, &mut references, false);
        includes.insert(name, (file.path.as_str(), references.partials));
    }
    let mut found = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    for start in includes.keys() {
        // Depth-first, without recursion: the stack holds each partial and its next include.
        let mut path: Vec<(String, usize)> = vec![(start.clone(), 0)];
        while let Some((name, next)) = path.last().cloned() {
            let edges = includes.get(&name).map(|(_, edges)| edges.as_slice()).unwrap_or(&[]);
            let Some((included, pos)) = edges.get(next) else {
                done.insert(name);
                path.pop();
                continue;
            };
            path.last_mut().expect("not empty").1 += 1;
            if done.contains(included) || !includes.contains_key(included) {
                continue;
            }
            if let Some(at) = path.iter().position(|(n, _)| n == included) {
                let cycle: Vec<&str> = path[at..]
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .chain([included.as_str()])
                    .collect();
                let file = includes[&name].0;
                found.push((
                    name.clone(),
                    Diagnostic::error(
                        file,
                        *pos,
                        "J045",
                        format!("partial `{}` includes itself: {}", included, cycle.join(" → ")),
                    )
                    .with_hint("rendering it would never end: remove one of these includes"),
                ));
                continue;
            }
            path.push((included.clone(), 0));
        }
    }
    found
}

/// Whether the template, or a partial it includes, uses `unsubscribe_url`.
fn uses_unsubscribe(references: &References, partials: &BTreeMap<String, String>) -> bool {
    let mut seen = BTreeSet::new();
    let mut pending: Vec<String> = references.partials.iter().map(|(p, _)| p.clone()).collect();
    if references.variables.iter().any(|(v, _)| v == "unsubscribe_url") {
        return true;
    }
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(Ok(template)) = partials.get(&name).map(|text| Template::compile(text)) else {
            continue;
        };
        let mut inner = References::default();
        collect(&template, 0, &mut inner, false);
        if inner.variables.iter().any(|(v, _)| v == "unsubscribe_url") {
            return true;
        }
        pending.extend(inner.partials.into_iter().map(|(p, _)| p));
    }
    false
}

fn check_sms_length(file: &SourceFile, diagnostics: &mut Vec<Diagnostic>) {
    // Estimate the sent length: static text as written, each variable at a typical length.
    let mut estimate = String::new();
    let mut rest = file.text.trim();
    while let Some(start) = rest.find("{{") {
        estimate.push_str(&rest[..start]);
        match rest[start..].find("}}") {
            Some(end) => {
                let inner = &rest[start + 2..start + end];
                if !inner.starts_with(['#', '/', '!', '>']) && !inner.starts_with("else") {
                    estimate.push_str(&"x".repeat(TYPICAL_VARIABLE_LENGTH));
                }
                rest = rest[start + end + 2..].trim_start_matches('}');
            }
            None => break,
        }
    }
    estimate.push_str(rest);
    let (segments, encoding) = sms_segments(&estimate);
    if segments > MAX_SMS_SEGMENTS {
        let per = match encoding {
            SmsEncoding::Gsm7 => "153 GSM-7 characters",
            SmsEncoding::Ucs2 => "67 characters when it has Chinese or emoji (UCS-2)",
        };
        diagnostics.push(
            Diagnostic::error(
                &file.path,
                Pos::new(1, 1),
                "J044",
                format!("this SMS would be sent as {segments} parts; the limit is {MAX_SMS_SEGMENTS}"),
            )
            .with_hint(format!("each part holds {per}: shorten it, or link to a page")),
        );
    }
}

/// How many billed parts an SMS body takes, and its encoding.
pub fn sms_segments(body: &str) -> (u32, SmsEncoding) {
    const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const GSM_EXTENDED: &str = "^{}\\[~]|€\u{000C}";
    let mut septets = 0usize;
    let mut gsm = true;
    for ch in body.chars() {
        if GSM_BASIC.contains(ch) {
            septets += 1;
        } else if GSM_EXTENDED.contains(ch) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    if gsm {
        let segments = if septets <= 160 { 1 } else { septets.div_ceil(153) };
        (segments.max(1) as u32, SmsEncoding::Gsm7)
    } else {
        let units: usize = body.chars().map(char::len_utf16).sum();
        let segments = if units <= 70 { 1 } else { units.div_ceil(67) };
        (segments as u32, SmsEncoding::Ucs2)
    }
}

/// A readable text part from HTML: links keep their address, block ends become line breaks.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    let mut pending_href: Vec<Option<String>> = Vec::new();
    let mut skip_depth: u32 = 0;
    while let Some(start) = rest.find('<') {
        if skip_depth == 0 {
            out.push_str(&rest[..start]);
        }
        let Some(end) = rest[start..].find('>') else {
            break;
        };
        let tag = &rest[start + 1..start + end];
        rest = &rest[start + end + 1..];
        let lower = tag.to_ascii_lowercase();
        let name: String = lower
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let closing = lower.starts_with('/');
        match name.as_str() {
            "style" | "script" | "head" | "title" => {
                if closing {
                    skip_depth = skip_depth.saturating_sub(1)
                } else {
                    skip_depth += 1
                }
            }
            "br" => out.push('\n'),
            "p" | "div" | "h1" | "h2" | "h3" | "h4" | "tr" | "li" | "table" if closing => out.push('\n'),
            "li" => out.push_str("- "),
            "a" if !closing => pending_href.push(attribute(tag, "href")),
            "a" => {
                if let Some(Some(href)) = pending_href.pop()
                    && !href.starts_with('#')
                    && !out.ends_with(&href)
                {
                    out.push_str(&format!(" ({href})"));
                }
            }
            _ => {}
        }
    }
    if skip_depth == 0 {
        out.push_str(rest);
    }
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#x3D;", "=")
        .replace("&amp;", "&");
    let mut lines: Vec<String> = Vec::new();
    for line in decoded.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() && lines.last().is_none_or(|l| l.is_empty()) {
            continue;
        }
        lines.push(line);
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let at = lower.find(&format!("{name}="))?;
    let rest = &tag[at + name.len() + 1..];
    let quote = rest.chars().next()?;
    if quote == '"' || quote == '\'' {
        rest[1..].split(quote).next().map(str::to_string)
    } else {
        rest.split([' ', '>']).next().map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sms_segments_follow_the_carrier_rules() {
        assert_eq!(sms_segments(&"a".repeat(160)), (1, SmsEncoding::Gsm7));
        assert_eq!(sms_segments(&"a".repeat(161)), (2, SmsEncoding::Gsm7));
        assert_eq!(sms_segments(&"中".repeat(70)), (1, SmsEncoding::Ucs2));
        assert_eq!(sms_segments(&"中".repeat(71)), (2, SmsEncoding::Ucs2));
        assert_eq!(sms_segments("€"), (1, SmsEncoding::Gsm7));
    }

    #[test]
    fn html_becomes_readable_text() {
        let text = html_to_text(
            "<html><head><style>p{}</style></head><body><h1>Hi Ada</h1><p>Read <a href=\"https://x.example/w\">the whitepaper</a>.</p><p>Bye &amp; thanks</p></body></html>",
        );
        assert_eq!(text, "Hi Ada\nRead the whitepaper (https://x.example/w).\nBye & thanks");
    }

    #[test]
    fn contact_data_in_a_triple_stash_gets_a_warning_with_its_place() {
        let files = [SourceFile {
            path: "templates/welcome.email.hbs".into(),
            text: "---\nsubject: Hi\n---\n<p>{{traits.name}}</p>\n<p>{{{traits.bio}}} and {{{default contact.email \"x\"}}}</p>\n<a href=\"{{{unsubscribe_url}}}\">Unsubscribe</a>\n".into(),
        }];
        let mut diagnostics = Vec::new();
        Templates::compile(&files, &mut diagnostics);
        let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(
            text[0].starts_with("templates/welcome.email.hbs:5:4: warning[J073]: `{{{traits.bio}}}`"),
            "{text:#?}"
        );
        assert!(
            text[1].contains(":5:") && text[1].contains("`{{{contact.email}}}`"),
            "{text:#?}"
        );
        assert!(!diagnostics.iter().any(Diagnostic::is_error), "{text:#?}");
    }

    #[test]
    fn the_contacts_language_picks_the_variant() {
        let available = ["".to_string(), "zh".to_string()];
        assert_eq!(pick_language(available.iter(), Some("zh-CN")), "zh");
        assert_eq!(pick_language(available.iter(), Some("en")), "");
        assert_eq!(pick_language(available.iter(), None), "");
    }
}
