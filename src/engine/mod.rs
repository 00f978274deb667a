//! The enrollment state machine and what runs it.
//!
//! - `transition`: PURE. One move of an enrollment, returning changes and keyed effects; who
//!   enters (enrollment key, start position, re-entry).
//! - `kinds`: PURE. One module per step kind, called by `transition`.
//! - `contact`: the contact's facts and the changes steps make to them.
//! - `clock`: `Clock`, with a system and a virtual implementation.
//! - `message`: PURE. The data templates render with.
//! - `simulate`: PURE. Runs a journey for one contact on a virtual clock.
//! - `controls`: pausing and resuming journeys, and their live counts.
//! - `sales`, `lead_notices`: the sales loop (leads placed, accepted, rejected, recycled and
//!   closed, with their events), their accept deadlines, and telling reps about their leads.

pub mod clock;
pub mod contact;
pub mod controls;
pub mod email;
mod erasure;
mod groups;
pub mod inbox;
pub mod ingest;
pub mod kinds;
pub mod lead_deadlines;
pub mod lead_notices;
pub mod message;
pub mod outbound;
pub mod plan;
mod profile;
pub mod reactions;
pub mod reconcile;
pub mod reports;
pub mod runner;
pub mod sales;
pub mod score_fold;
pub mod scoring;
pub mod simulate;
pub mod steps;
pub mod transition;

pub use clock::{Clock, SystemClock, VirtualClock};
pub use contact::{Contact, ContactChange};
pub use transition::{
    Advance, Effect, EffectKey, Enrollment, Input, Outcome, Park, Position, Refused, Status, World, advance,
};
