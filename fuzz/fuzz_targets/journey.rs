//! The journey compiler on any text: as a journey, `sales.yaml` and `scoring.yaml`.
#![no_main]

#[path = "../../tests/it/fuzz_checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|text: &str| checks::compile_text(text));
