//! Recipes: multi-stage pruning runs described in TOML (`prunekit run RECIPE.toml`), and the
//! schedules they use (one-shot, iterative, gradual cubic, lottery ticket).

pub mod criteria;
pub mod fields;
pub mod recipe;
pub mod rl;
pub mod schedule;
pub mod sweep;

pub use recipe::{run, run_stage, Recipe, RecipeReport, RunCx, Stage, StageLog, StageOutcome};

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error(transparent)]
    Graph(#[from] prunekit_graph::GraphError),
    #[error(transparent)]
    Io(#[from] prunekit_io::IoError),
    #[error(transparent)]
    Data(#[from] prunekit_data::DataError),
    #[error(transparent)]
    Train(#[from] prunekit_train::TrainError),
    #[error(transparent)]
    Prune(#[from] prunekit_prune::PruneError),
    #[error(transparent)]
    Measure(#[from] prunekit_measure::MeasureError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, RecipeError>;
