//! Templates on any text: split at NUL into subject, HTML, text part, SMS, two partials and an
//! inline template, compiled and rendered.
#![no_main]

#[path = "../../tests/it/fuzz_checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|text: &str| {
    let mut parts = text.split('\0').map(str::to_string);
    let mut next = || parts.next().unwrap_or_default();
    let case = checks::TemplateCase {
        subject: next(),
        html: next(),
        text: next(),
        sms: next(),
        partial_a: next(),
        partial_b: next(),
        inline: next(),
        data: serde_json::json!({
            "contact": {"id": 1, "email": "ada@example.com"},
            "traits": {"name": "Ada", "x": {"y": [1, "2"]}},
            "tags": ["vip"],
            "unsubscribe_url": "https://x.example/u/t",
        }),
    };
    checks::render_everything(&case);
});
