//! # dual-layers
//!
//! One dual per layer kind, each implementing a trait of `dual-core`:
//!
//! | layer | dual | trait |
//! |---|---|---|
//! | l_inf ball, ball ∩ box, l2 ball | [`InfBall`], [`InfBallBounded`], [`L2Ball`] | `DualSource` |
//! | Linear | [`DualLinear`] | `DualAffine` |
//! | Conv2d | [`DualConv2d`] | `DualAffine` |
//! | Flatten / reshape | [`DualReshape`] | `DualAffine` |
//! | Dense (skip connections) | [`DualDense`] | `DualAffine` |
//! | BatchNorm2d | [`DualBatchNorm2d`] | `DualAffine` |
//! | Identity | [`DualIdentity`] | `DualAffine` |
//! | ReLU | [`DualReLU`] | `DualActivation` |
//! | AvgPool2d | [`DualAvgPool2d`] | `DualAffine` |
//! | Pad (constant, 2-d) | [`DualPad`] | `DualAffine` |
//! | MaxPool2d | [`DualMaxPool2d`] | `DualActivation` (no exact dual) |
//! | Sigmoid, Tanh | [`DualSmooth`] | `DualActivation` |
//!
//! Architecture invariant: a dual holds the math of its layer and nothing else — no file IO, no
//! knowledge of the network around it. Hot loops (conv, conv transpose, matmul over columns) sit
//! in one function per layer kind, so they can be replaced by faster kernels in one place.

// `!(a <= b)` is how the input checks reject NaN together with the wrong order.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod batchnorm;
mod columns;
mod conv;
pub mod cpu;
mod dense;
mod identity;
mod input;
pub mod kernels;
mod linear;
mod maxpool;
mod pad;
mod pool;
mod relu;
mod relu_linear;
mod reshape;
mod smooth;
mod smooth_dual;
mod threat;
mod window;

pub use batchnorm::DualBatchNorm2d;
pub use columns::{merge_columns, split_columns, sum_over_columns};
pub use conv::DualConv2d;
pub use dense::DualDense;
pub use identity::DualIdentity;
pub use input::{identity_columns, validate_input};
pub use input::{Epsilon, InfBall, InfBallBounded, L2Ball};
pub use linear::DualLinear;
pub use maxpool::{window_lines, DualMaxPool2d, MaxPoolLinear};
pub use pad::DualPad;
pub use pool::DualAvgPool2d;
pub use relu::{one_hot_columns, relu_lower_term, DualReLU, ReluParts, ReluRelaxation};
pub use relu_linear::ReluLinear;
pub use reshape::DualReshape;
pub use smooth::{DualSmooth, Smooth, SmoothLinear};
pub use smooth_dual::{slope_and_box, SmoothRelaxation};
pub use threat::{BallNorm, ThreatModel};
pub use window::Windows;
