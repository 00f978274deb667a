//! Behavioural events as websites send them: the Segment tracking spec (and what real client
//! libraries put on the wire), turned into checked `Message`s. Pure: no I/O.

pub mod segment;

pub use segment::{Body, Invalid, Kind, Message, Parsed, parse_batch, parse_single};
