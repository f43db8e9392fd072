//! Training: robust (the dual bound's loss), baseline and PGD adversarial training, with the
//! papers' schedules, checkpoints every epoch, resume, best-model tracking and a JSON-lines log.

pub mod augment;
pub mod distributed;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod optim;
pub mod resume;
pub mod schedule;
mod trainer;

pub use augment::Augment;
pub use optim::{Optimizer, OptimizerConfig};
pub use resume::RunData;
pub use schedule::{EpsilonSchedule, LrSchedule};
pub use trainer::{plot_log, train, train_with, EpochLog, LossKind, TrainConfig, TrainSummary};
