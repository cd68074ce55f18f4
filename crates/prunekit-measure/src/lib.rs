//! Measuring a model for real: accuracy on held-out data, parameter and nonzero counts, MACs counted
//! from the graph, the size of the saved files, and latency (median of many timed runs after warm-up).

pub mod evaluate;
pub mod metrics;
pub mod profile;

pub use evaluate::{check_task, evaluate, model_inputs, Evaluation};
pub use metrics::{
    classification_metrics, inference_memory, layer_stats, train_test_gap, Classification,
    InferenceMemory, LayerStats, TrainTestGap,
};
pub use prunekit_data::Direction;

use std::time::Instant;

use candle_core::{DType, Tensor};
use prunekit_data::Dataset;
use prunekit_graph::{Executor, Graph, InputKind};
use prunekit_io::native as format;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error(transparent)]
    Graph(#[from] prunekit_graph::GraphError),
    #[error(transparent)]
    Data(#[from] prunekit_data::DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, MeasureError>;

/// Latency statistics in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub batch: usize,
    /// untimed runs before the timed ones
    #[serde(default)]
    pub warmup: usize,
    /// timed runs
    pub runs: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub threads: usize,
}

impl Summary {
    /// Test accuracy, for tasks that report it.
    pub fn accuracy(&self) -> Option<f64> {
        self.metrics.get("accuracy").copied()
    }

    /// The headline metric's name and value, when measured.
    pub fn headline_metric(&self) -> Option<(&str, f64)> {
        let name = self.headline.as_deref()?;
        Some((name, *self.metrics.get(name)?))
    }
}

/// Every number of a before/after table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// the task's metrics on the test data by their standard names (`accuracy`, `auc`, `rmse`,
    /// `hit_rate@10`, ...), empty without test data
    #[serde(flatten)]
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// the name of the task's headline metric (`None` without test data)
    #[serde(default)]
    pub headline: Option<String>,
    /// the task's loss on the test data
    pub loss: Option<f64>,
    /// trainable values (weights and biases)
    pub params: usize,
    /// of them nonzero
    pub nonzeros: usize,
    /// zeros among the weight matrices and kernels ([`prunekit_graph::WeightCounts`]: biases and
    /// norm scales, which may start at zero, are not counted)
    #[serde(default)]
    pub weight_sparsity: f64,
    pub macs: u64,
    /// MACs when the zeros of every weight are skipped ([`Graph::effective_macs`])
    pub effective_macs: u64,
    /// median batch-1 latency
    pub latency_ms: f64,
    pub latency: Latency,
    pub file_bytes: u64,
}

/// Threads the CPU kernels use (rayon's pool, which candle's gemm shares).
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// A random batch for every model input, in order: N(0, 1) floats `[batch, ..shape]` in the
/// model's dtype, id 0 for id inputs (valid for every embedding).
///
/// # Errors
/// A model without inputs, or a candle error.
pub fn random_inputs(g: &Graph, batch: usize) -> Result<Vec<Tensor>> {
    if g.inputs.is_empty() {
        return Err(prunekit_graph::GraphError::Invalid("the model has no input".into()).into());
    }
    let device = g.device();
    g.inputs
        .iter()
        .map(|spec| {
            let mut dims = vec![batch];
            dims.extend_from_slice(&spec.shape);
            Ok(match spec.kind {
                InputKind::Float => Tensor::randn(0f32, 1.0, dims, &device)?.to_dtype(g.dtype())?,
                InputKind::Ids => Tensor::zeros(dims, DType::U32, &device)?,
            })
        })
        .collect()
}

/// Eval-mode forward latency at `batch`: `warmup` untimed runs, then the median and 90th percentile
/// of `runs` timed runs.
pub fn latency(g: &Graph, batch: usize, warmup: usize, runs: usize) -> Result<Latency> {
    let x = random_inputs(g, batch)?;
    let mut exec = Executor::new(0);
    for _ in 0..warmup {
        exec.eval(g, &x)?;
    }
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        exec.eval(g, &x)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let q = |f: f64| times[((times.len() - 1) as f64 * f).round() as usize];
    Ok(Latency {
        batch,
        warmup,
        runs: times.len(),
        median_ms: q(0.5),
        p90_ms: q(0.9),
        threads: threads(),
    })
}

/// Size in bytes of the model as written in our format.
pub fn file_size(g: &Graph) -> Result<u64> {
    let dir = tempfile::tempdir()?;
    format::save(g, dir.path())?;
    Ok(format::model_size(dir.path())?)
}

/// Measures a classification model: accuracy and loss on `test` (when given), counts, size and
/// batch-1 latency.
pub fn summarize(g: &Graph, test: Option<&Dataset>) -> Result<Summary> {
    let eval = test.map(|t| evaluate(g, t, 256)).transpose()?;
    let lat = latency(g, 1, 10, 50)?;
    Ok(Summary {
        loss: eval.as_ref().map(|e| e.loss),
        headline: eval.as_ref().map(|e| e.headline.clone()),
        metrics: eval.map(|e| e.metrics).unwrap_or_default(),
        params: g.param_count(),
        nonzeros: g.nonzero_count()?,
        weight_sparsity: g.weight_counts()?.sparsity(),
        macs: g.macs()?,
        effective_macs: g.effective_macs()?,
        latency_ms: lat.median_ms,
        latency: lat,
        file_bytes: file_size(g)?,
    })
}
