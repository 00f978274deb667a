//! Everything a marketer writes, compiled. Pure: takes `(path, text)` pairs, does no I/O.
pub mod diagnostic;
pub mod values;
pub mod yaml;
pub mod decode;
pub mod model;
pub mod parse;
pub mod check;
pub mod templates;
pub mod sales;
pub mod scoring;
pub mod compile;
pub mod graph;

pub use compile::{compile, Catalog, Sources};
pub use diagnostic::Diagnostic;
pub use model::*;
pub use templates::SourceFile;
