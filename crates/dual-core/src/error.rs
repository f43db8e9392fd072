//! Errors of the bound computation.

/// Everything that can go wrong while building a dual network or evaluating its objective.
#[derive(Debug, thiserror::Error)]
pub enum DualError {
    /// A tensor operation failed inside Candle (shape mismatch, out of memory, ...).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The caller gave an input the method is not defined for (NaN, negative epsilon, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Shapes of the pieces handed to the engine do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The network contains a layer for which no dual is known.
    #[error("unsupported layer: {0}")]
    Unsupported(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, DualError>;

impl DualError {
    /// Shorthand for [`DualError::InvalidInput`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        DualError::InvalidInput(msg.into())
    }
    /// Shorthand for [`DualError::Shape`].
    pub fn shape(msg: impl Into<String>) -> Self {
        DualError::Shape(msg.into())
    }
}
