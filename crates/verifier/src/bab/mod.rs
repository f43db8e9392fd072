//! Branch and bound: split the clause's input box into sub-domains, bound many of them in one
//! pass of the bound method, close those a sound bound proves unreachable, and look for
//! counterexamples in the open ones, until every domain is closed (`unsat`), a counterexample
//! checks in f64 (`sat`) or the time runs out.
//!
//! * [`beta`]: β-CROWN bounds of a batch of ReLU-split domains (α and β optimised jointly);
//! * [`clock`]: how many domains a round may take to end by the deadline;
//! * [`domain`]: a sub-domain with its bounds, and the queue (worst margin first);
//! * [`layer_alpha`]: the intermediate layers' bounds at the root, tightened by their own α;
//! * [`refine`]: the intermediate layers' bounds at the root, tightened by a tree per unit;
//! * `leaf_lp`: on a leaf with every ReLU fixed, the LP's worst point as a candidate counterexample;
//! * [`input_split`]: which input feature to halve (the bound's sensitivity × the radius);
//! * [`driver`]: the batched loop over input boxes;
//! * `relu_split`: branch and bound on the signs of unstable ReLUs (high-dimensional inputs).

pub mod beta;
pub mod clock;
pub mod domain;
pub mod driver;
pub mod input_split;
pub mod layer_alpha;
pub(crate) mod leaf_lp;
pub mod refine;
pub(crate) mod relu_split;

pub use beta::BetaOptions;
pub use driver::{BabOptions, BabStats, InputBab};
pub use relu_split::{relu_domain_bound, relu_root_layers};
