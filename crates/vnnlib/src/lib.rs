//! # vnnlib
//!
//! VNN-LIB 1.0 properties (the format of VNN-COMP): `(declare-const X_i Real)`,
//! `(declare-const Y_j Real)` and `(assert …)` with `and`, `or`, `<=`, `>=`, `<`, `>`, `=` over
//! linear terms (`+`, `-`, `*` by constants). The conjunction of the assertions is the *unsafe*
//! set; it is normalised to a disjunction of conjunctions ([`Property::clauses`]) of linear
//! inequalities over the inputs and outputs. Every error carries the line and column.
//!
//! No Candle, no networks: this crate only reads the property.

mod property;
pub mod sexp;

pub use property::{Clause, Constraint, Property, MAX_CLAUSES};
pub use sexp::Pos;
use std::path::Path;

/// A syntax or meaning error, with where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}line {}, column {}: {msg}", file.as_deref().map(|f| format!("{f}: ")).unwrap_or_default(), pos.line, pos.col)]
pub struct ParseError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub msg: String,
    /// The file, when read from one.
    pub file: Option<String>,
}

impl ParseError {
    /// An error at a position.
    pub fn at(pos: Pos, msg: impl Into<String>) -> Self {
        ParseError { pos, msg: msg.into(), file: None }
    }
}

/// Parses a property from text.
pub fn parse_str(text: &str) -> Result<Property, ParseError> {
    property::interpret(&sexp::parse(text)?)
}

/// Reads and parses a property file.
pub fn parse_file(path: impl AsRef<Path>) -> Result<Property, ParseError> {
    let p = path.as_ref();
    let text = std::fs::read_to_string(p).map_err(|e| ParseError {
        pos: Pos { line: 0, col: 0 },
        msg: format!("cannot read the file: {e}"),
        file: Some(p.display().to_string()),
    })?;
    parse_str(&text).map_err(|mut e| {
        e.file = Some(p.display().to_string());
        e
    })
}
