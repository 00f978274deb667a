//! The one integration test binary: `mod`s per area, shared helpers in `support`.

mod api;
mod assignment;
mod browser;
mod cli;
mod dashboard;
mod durability;
mod email;
mod engine;
mod fuzz;
mod fuzz_checks;
mod guardrails;
mod import;
mod ingest_holes;
mod language;
mod limits;
mod reports;
mod restarts;
mod retries;
mod sales;
mod scoring;
mod simulate;
mod sms;
mod support;
mod versions;
mod webhook;
