//! nurture: marketing-automation journeys that live in git.
//!
//! The map (same words as ARCHITECTURE.md):
//! - [`journey`]: everything a marketer writes (journeys, templates, `sales.yaml`,
//!   `scoring.yaml`), compiled from text into checked state machines. Pure: no I/O.
//! - [`expr`]: CEL conditions, type-checked at compile time. Pure.
//! - [`engine`]: the enrollment state machine (`transition`), the clock and the simulator.
//! - [`cli`]: the `nurture` command.

pub mod addresses;
pub mod api;
pub mod app;
pub mod channels;
pub mod cli;
pub mod config;
pub mod engine;
pub mod events;
pub mod expr;
pub mod journey;
pub mod limits;
pub mod metrics;
mod nodelay;
pub mod project;
pub mod queue;
pub mod redact;
pub mod reports;
pub mod scoring;
pub mod store;
pub mod supervise;

/// mimalloc instead of the system allocator, for every binary built on this library (the
/// `nurture` command, tests, benches): glibc's malloc and free took about a third of the
/// process's CPU in a profile of the reference bench (row and argument conversion in sqlx,
/// JSON, SQL text).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
