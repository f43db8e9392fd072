//! Training: robust (the dual bound's loss), certified training on interval bounds (IBP,
//! CROWN-IBP, MTL-IBP, with Shi et al.'s initialisation and warm-up regulariser), baseline and PGD
//! adversarial training, with the papers' schedules, checkpoints every epoch, resume,
//! best-model tracking and a JSON-lines log.

mod adam;
pub mod augment;
pub mod batchnorm;
pub mod certified;
pub mod distributed;
pub mod init;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod optim;
pub mod regularizer;
pub mod resume;
pub mod schedule;
mod trainer;

pub use augment::Augment;
pub use certified::{BoundLoss, PgdSettings};
pub use optim::{Optimizer, OptimizerConfig};
pub use resume::RunData;
pub use schedule::{EpsilonSchedule, LrSchedule, Mix, RampShape};
pub use trainer::{plot_log, train, train_with, EpochLog, LossKind, Recipe, TrainConfig, TrainSummary};
