//! The built-in layers, one file per family (the struct holds the math; `crate::build` loads).

mod batchnorm;
mod conv;
mod dense;
mod linear;
mod pool;
mod simple;

pub use batchnorm::BatchNorm2d;
pub use conv::Conv2d;
pub use dense::Dense;
pub use linear::Linear;
pub use pool::{AvgPool2d, MaxPool2d, Pad, Reshape};
pub use simple::{Flatten, Identity, ReLU, Sigmoid, Tanh};
