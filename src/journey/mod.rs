//! Everything a marketer writes, compiled. Pure: takes `(path, text)` pairs, does no I/O.
pub mod check;
pub mod compile;
pub mod decode;
pub mod diagnostic;
pub mod graph;
pub mod model;
pub mod parse;
pub mod sales;
pub mod scoring;
pub mod templates;
pub mod values;
pub mod webhook;
pub mod yaml;

pub use compile::{Catalog, Sources, broadcast_warnings, compile, compile_with};
pub use diagnostic::Diagnostic;
pub use model::*;
pub use templates::SourceFile;
