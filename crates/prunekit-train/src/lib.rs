//! Training and evaluation of prunekit graphs, and the training hooks of the pruning criteria
//! that follow training ([`criterion_hooks`]: movement, BatchNorm-scale sparsity).

pub mod criterion_hooks;
pub mod distill;
pub mod group_sparsity;
pub mod loss;
pub mod optim;
pub mod recalibrate;
pub mod rl;
pub mod schedule;
pub mod trainer;

pub use distill::{kd_loss, DistillConfig, Distillation};
pub use group_sparsity::GroupSparsity;
pub use loss::{accuracy, cross_entropy, mse};
pub use optim::{AdamW, Optimizer, OptimizerKind, Sgd};
pub use prunekit_measure::{evaluate, Evaluation};
pub use recalibrate::{has_batch_norm, recalibrate_batch_norm, Recalibration};
pub use schedule::LrSchedule;
pub use trainer::{fit, fit_with, EpochLog, StepCx, StepHook, TrainConfig};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Graph(#[from] prunekit_graph::GraphError),
    #[error(transparent)]
    Data(#[from] prunekit_data::DataError),
    #[error(transparent)]
    Measure(#[from] prunekit_measure::MeasureError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;
