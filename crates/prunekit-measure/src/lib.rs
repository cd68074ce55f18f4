//! Measuring a model for real: accuracy on held-out data, parameter and nonzero counts, MACs counted
//! from the graph, the size of the saved files, and latency (median of many timed runs after warm-up).

pub mod detection;
pub mod evaluate;
pub mod metrics;
pub mod policy;
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
    /// layers that ran on the sparse kernels ([`Executor::for_inference`]); 0: all dense
    #[serde(default)]
    pub sparse_layers: usize,
}

impl Latency {
    /// The statistics of timed runs of `times` ms each (at least one).
    fn of(batch: usize, warmup: usize, mut times: Vec<f64>, sparse_layers: usize) -> Self {
        times.sort_by(f64::total_cmp);
        let q = |f: f64| times[((times.len() - 1) as f64 * f).round() as usize];
        Latency {
            batch,
            warmup,
            runs: times.len(),
            median_ms: q(0.5),
            p90_ms: q(0.9),
            threads: threads(),
            sparse_layers,
        }
    }
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
    /// tokens per sample of a sequence model ([`sequence_length`]); `None` for other models
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
    /// `macs / seq_len`: MACs per token at that sequence length (attention's share grows with it)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macs_per_token: Option<f64>,
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
/// of `runs` timed runs. Layers pruned enough run on the sparse kernels where they measure faster
/// on this machine ([`Executor::for_inference`]), as inference of the model does.
pub fn latency(g: &Graph, batch: usize, warmup: usize, runs: usize) -> Result<Latency> {
    let x = random_inputs(g, batch)?;
    let mut exec = Executor::for_inference(g, batch)?;
    for _ in 0..warmup {
        exec.eval(g, &x)?;
    }
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        exec.eval(g, &x)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let sparse = exec.sparse_plan().map_or(0, |p| p.len());
    Ok(Latency::of(batch, warmup, times, sparse))
}

/// Eval-mode forward latency at `batch` within a time budget, for models where a run takes
/// seconds (a Transformer at a long sequence): one untimed warm-up run, then timed runs until
/// `budget_s` seconds have passed, at least 3 and at most 30. Sparse kernels as in [`latency`].
pub fn latency_within(g: &Graph, batch: usize, budget_s: f64) -> Result<Latency> {
    let x = random_inputs(g, batch)?;
    let mut exec = Executor::for_inference(g, batch)?;
    exec.eval(g, &x)?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (times.len() < 30 && start.elapsed().as_secs_f64() < budget_s) {
        let t0 = Instant::now();
        exec.eval(g, &x)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let sparse = exec.sparse_plan().map_or(0, |p| p.len());
    Ok(Latency::of(batch, 1, times, sparse))
}

/// The size and cost measures of one model without data: parameters, MACs per sample and (for a
/// sequence model) per token at its sequence length, latency at batch 1 and at a larger batch,
/// and the peak resident memory of one inference at that batch. For a Transformer the larger
/// batch is `batch x seq_len` tokens per run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeasures {
    /// trainable values
    pub params: usize,
    /// of them nonzero
    pub nonzeros: usize,
    /// MACs per sample (one sequence of `seq_len` tokens for a sequence model)
    pub macs: u64,
    /// tokens per sample ([`sequence_length`])
    pub seq_len: Option<usize>,
    /// MACs per token at `seq_len`
    pub macs_per_token: Option<f64>,
    /// batch-1 latency (ms)
    pub latency: Latency,
    /// latency at the larger batch (ms), when one was asked
    pub latency_batch: Option<Latency>,
    /// peak resident memory of one cold inference at the larger batch (or batch 1), measured
    /// before the timed runs; `None` off Linux
    pub memory: Option<InferenceMemory>,
}

/// [`ModelMeasures`] of `g`: memory first (at `batch`, or 1), then latency at batch 1 and at
/// `batch`, each within `budget_s` seconds of timed runs ([`latency_within`]).
///
/// # Errors
/// A `batch` of 0; errors of the forward passes.
pub fn model_measures(g: &Graph, batch: Option<usize>, budget_s: f64) -> Result<ModelMeasures> {
    if batch == Some(0) {
        return Err(MeasureError::Invalid(
            "the batch size must be at least 1".into(),
        ));
    }
    let memory = inference_memory(g, batch.unwrap_or(1))?;
    let latency = latency_within(g, 1, budget_s)?;
    let latency_batch = match batch {
        Some(b) if b > 1 => Some(latency_within(g, b, budget_s)?),
        _ => None,
    };
    Ok(ModelMeasures {
        params: g.param_count(),
        nonzeros: g.nonzero_count()?,
        macs: g.macs()?,
        seq_len: sequence_length(g).map(|(_, t)| t),
        macs_per_token: macs_per_token(g)?,
        latency,
        latency_batch,
        memory,
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
        seq_len: sequence_length(g).map(|(_, t)| t),
        macs_per_token: macs_per_token(g)?,
    })
}

/// The token axis of a sequence model: the name and length `T` of its first integer-id input of
/// per-sample shape `[T]` with `T > 1` (token ids of a Transformer or a recurrent text model, an
/// item history). `None` for models without one (images, tabular features, single ids).
pub fn sequence_length(g: &Graph) -> Option<(String, usize)> {
    g.inputs
        .iter()
        .find(|i| i.kind == InputKind::Ids && i.shape.len() == 1 && i.shape[0] > 1)
        .map(|i| (i.name.clone(), i.shape[0]))
}

/// MACs per token at the graph's sequence length ([`sequence_length`]): [`Graph::macs`] (per
/// sample of `T` tokens) divided by `T`. The figure depends on `T` (attention's score and value
/// products grow as `T^2`), so it is only meaningful with the length stated beside it.
///
/// # Errors
/// As [`Graph::macs`].
pub fn macs_per_token(g: &Graph) -> Result<Option<f64>> {
    Ok(match sequence_length(g) {
        Some((_, t)) => Some(g.macs()? as f64 / t as f64),
        None => None,
    })
}
