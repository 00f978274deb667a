//! CEL conditions on any text: compiled in every place, evaluated when they compile.
#![no_main]

#[path = "../../tests/it/fuzz_checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|text: &str| checks::evaluate(text, &checks::World::plain()));
