//! The built-in layers, one file per family (the struct holds the math; `crate::build` loads).

mod batchnorm;
mod conv;
mod dense;
mod linear;
mod simple;

pub use batchnorm::BatchNorm2d;
pub use conv::Conv2d;
pub use dense::Dense;
pub use linear::Linear;
pub use simple::{Flatten, Identity, ReLU};
