//! The one integration test binary: `mod`s per area, shared helpers in `support`.

mod api;
mod api_properties;
mod assignment;
mod browser;
mod cli;
mod dashboard;
mod durability;
mod edge;
mod email;
mod engine;
mod guardrails;
mod import;
mod ingest_holes;
mod language;
mod reports;
mod restarts;
mod retries;
mod sales;
mod scoring;
mod secrets;
mod security;
mod simulate;
mod sms;
mod support;
mod versions;
mod webhook;
