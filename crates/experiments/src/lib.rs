pub mod datasets;
pub mod attacks;
