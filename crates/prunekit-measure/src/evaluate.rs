//! Evaluation through the task: one eval-mode pass over a dataset computes its task's loss and
//! every metric of the task by its standard name (`accuracy`, `auc`, `f1`, `rmse`,
//! `hit_rate@10`, `ndcg@10`, `perplexity`, ...).
//!
//! Metrics that are sums over samples (accuracy, top-k, hit rate, NDCG, squared and absolute
//! errors, token log-likelihoods) are accumulated batch by batch, so a training set with a large
//! catalogue never holds all its logits; AUC, KS and ranking lists keep one score per sample.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, D};
use prunekit_data::{Dataset, Direction, TaskKind, Values, IGNORE};
use prunekit_graph::{Executor, Graph, InputKind};
use serde::{Deserialize, Serialize};

use crate::metrics::{binary_metrics, ks_statistic, roc_auc};
use crate::{MeasureError, Result};

/// The cut-off of `hit_rate@10` and `ndcg@10`.
pub const RANK_CUTOFF: usize = 10;

/// A model's loss and metrics on one dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Samples evaluated.
    pub samples: usize,
    /// The task's loss (mean over samples; for a class-weighted loss, the batch-size-weighted
    /// mean of the batch losses).
    pub loss: f64,
    /// Every metric of the task by its standard name; metrics that are undefined on this data
    /// (AUC with one class only) are absent.
    pub metrics: BTreeMap<String, f64>,
    /// The name of the headline metric.
    pub headline: String,
}

impl Evaluation {
    /// The headline metric's value (`None` when undefined on this data).
    pub fn headline_value(&self) -> Option<f64> {
        self.metrics.get(&self.headline).copied()
    }

    /// The headline's direction.
    pub fn direction(&self) -> Direction {
        Direction::of(&self.headline)
    }

    /// A metric by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }

    /// Accuracy, for tasks that report it.
    pub fn accuracy(&self) -> Option<f64> {
        self.get("accuracy")
    }
}

fn invalid(msg: impl Into<String>) -> MeasureError {
    MeasureError::Invalid(msg.into())
}

/// Checks that `g` can be run on `data`: as many inputs as the dataset has, each of the samples'
/// shape and kind (float or ids), one output, a non-empty dataset, and an output wide enough for
/// the classes of class targets.
///
/// # Errors
/// [`MeasureError::Invalid`] naming the model, the input and the mismatch.
pub fn check_task(g: &Graph, data: &Dataset) -> Result<()> {
    if g.inputs.len() != data.inputs.len() {
        return Err(invalid(format!(
            "the model `{}` takes {} input(s) ({}) but the dataset `{}` has {} ({})",
            g.name,
            g.inputs.len(),
            g.inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            data.name,
            data.inputs.len(),
            data.inputs
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    for (spec, f) in g.inputs.iter().zip(&data.inputs) {
        if spec.shape != f.shape {
            return Err(invalid(format!(
                "the model `{}` takes input `{}` of shape {:?} but the dataset `{}` has `{}` of shape {:?}",
                g.name, spec.name, spec.shape, data.name, f.name, f.shape
            )));
        }
        let ok = matches!(
            (spec.kind, &f.values),
            (InputKind::Float, Values::F32(_)) | (InputKind::Ids, Values::U32(_))
        );
        if !ok {
            return Err(invalid(format!(
                "the model `{}` takes {:?} values for input `{}` but the dataset `{}` gives {}",
                g.name,
                spec.kind,
                spec.name,
                data.name,
                match f.values {
                    Values::F32(_) => "real values",
                    Values::U32(_) => "ids",
                }
            )));
        }
    }
    if data.is_empty() {
        return Err(invalid(format!("the dataset `{}` is empty", data.name)));
    }
    let [out] = g.outputs.as_slice() else {
        return Err(invalid(format!(
            "the model `{}` has {} outputs; evaluation needs exactly one",
            g.name,
            g.outputs.len()
        )));
    };
    let shapes = g.validate()?;
    if let TaskKind::Detection { classes, stride } = data.task.kind {
        let image = data.sample_shape();
        let want = match image {
            [_, h, w] if stride > 0 => vec![5 + classes, h / stride, w / stride],
            _ => Vec::new(),
        };
        if shapes[out] != want {
            return Err(invalid(format!(
                "the detection task of `{}` (images {image:?}, {classes} classes, stride {stride}) \
                 needs an output of shape {want:?} per image (objectness, box, classes per cell); \
                 the model `{}` gives {:?}",
                data.name, g.name, shapes[out]
            )));
        }
        return Ok(());
    }
    let width = shapes[out].last().copied().unwrap_or(1);
    if let Some(classes) = data.num_classes() {
        if width < classes {
            return Err(invalid(format!(
                "the model `{}` has {width} outputs but the dataset `{}` has {classes} classes",
                g.name, data.name
            )));
        }
    }
    Ok(())
}

/// The inputs of a batch as the model takes them (float inputs in the model's dtype).
pub fn model_inputs(g: &Graph, xs: Vec<Tensor>) -> Result<Vec<Tensor>> {
    xs.into_iter()
        .map(|x| {
            Ok(if x.dtype().is_float() && x.dtype() != g.dtype() {
                x.to_dtype(g.dtype())?
            } else {
                x
            })
        })
        .collect()
}

/// Rank of the target among a row's scores: the number of other entries scoring at least as high
/// (ties and NaN competitors count against the target, the rule of
/// [`crate::metrics::top_k_accuracy`]); `usize::MAX` when the target's own score is NaN.
fn rank_of(row: &[f32], target: usize) -> usize {
    let s = row[target];
    if s.is_nan() {
        return usize::MAX;
    }
    row.iter()
        .enumerate()
        .filter(|&(j, &v)| j != target && v.partial_cmp(&s) != Some(std::cmp::Ordering::Less))
        .count()
}

/// NDCG@k of one relevant item at `rank` (0-based): `1 / log2(rank + 2)` within the cut-off, else
/// 0 (He et al. 2017, section 4.1; with one relevant item the ideal DCG is 1).
fn ndcg(rank: usize, k: usize) -> f64 {
    if rank < k {
        1.0 / ((rank + 2) as f64).log2()
    } else {
        0.0
    }
}

/// Probability of class 1 from a row of logits (softmax of two, or the sigmoid of one).
fn positive_score(row: &[f32]) -> f64 {
    match row {
        [z] => 1.0 / (1.0 + (-f64::from(*z)).exp()),
        [a, b, ..] => 1.0 / (1.0 + (f64::from(*a) - f64::from(*b)).exp()),
        [] => f64::NAN,
    }
}

#[derive(Default)]
struct Acc {
    loss: f64,
    top1: usize,
    top5: usize,
    hits: usize,
    ndcg: f64,
    sq: f64,
    abs: f64,
    values: usize,
    nll: f64,
    tokens: usize,
    detections: Vec<crate::detection::Detection>,
    objects: Vec<crate::detection::GroundTruth>,
    scores: Vec<f64>,
    labels: Vec<bool>,
}

/// Runs `g` over `data` in eval mode (batches of `batch_size`) and computes the task's loss and
/// metrics (see [`prunekit_data::TaskKind`] for which metrics each task reports).
///
/// # Errors
/// As [`check_task`]; a loss or metric error (an output of the wrong shape) names the problem.
pub fn evaluate(g: &Graph, data: &Dataset, batch_size: usize) -> Result<Evaluation> {
    check_task(g, data)?;
    let device = g.device();
    let loss_fn = data.task.loss();
    let mut exec = Executor::new(0);
    let mut acc = Acc::default();
    let all: Vec<usize> = (0..data.len()).collect();
    let kind = &data.task.kind;
    for idx in all.chunks(batch_size.max(1)) {
        let b = data.batch(idx, &device)?;
        let out = exec
            .eval(g, &model_inputs(g, b.inputs)?)?
            .into_iter()
            .next()
            .ok_or_else(|| invalid("the model produced no output"))?;
        let l = loss_fn
            .compute(&out, &b.target)
            .map_err(|e| invalid(format!("dataset `{}`: {e}", data.name)))?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        acc.loss += l * idx.len() as f64;
        let out = out.to_dtype(DType::F32)?;
        match kind {
            TaskKind::Classification | TaskKind::NextItem => {
                let width = out.dim(D::Minus1)?;
                let rows = out.flatten_all()?.to_vec1::<f32>()?;
                let y = b.target.to_vec1::<u32>()?;
                for (row, &t) in rows.chunks(width.max(1)).zip(&y) {
                    let r = rank_of(row, t as usize);
                    acc.top1 += usize::from(r < 1);
                    acc.top5 += usize::from(r < 5);
                    acc.hits += usize::from(r < RANK_CUTOFF);
                    acc.ndcg += ndcg(r, RANK_CUTOFF);
                }
            }
            TaskKind::Binary | TaskKind::Ranking { .. } => {
                let width = out.dim(D::Minus1)?;
                let rows = out.flatten_all()?.to_vec1::<f32>()?;
                let y = b.target.to_vec1::<u32>()?;
                for (row, &t) in rows.chunks(width.max(1)).zip(&y) {
                    acc.scores.push(positive_score(row));
                    acc.labels.push(t == 1);
                    let hit = if width >= 2 {
                        row[1] > row[0]
                    } else {
                        row[0] > 0.0
                    };
                    acc.top1 += usize::from(hit == (t == 1));
                }
            }
            TaskKind::Regression => {
                let pred = out.flatten_all()?.to_vec1::<f32>()?;
                let target = b
                    .target
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                for (p, t) in pred.iter().zip(&target) {
                    let d = f64::from(*p) - f64::from(*t);
                    acc.sq += d * d;
                    acc.abs += d.abs();
                }
                acc.values += target.len();
            }
            TaskKind::LanguageModel => {
                let y = b.target.flatten_all()?.to_vec1::<u32>()?;
                let counted = y.iter().filter(|&&t| t != IGNORE).count();
                acc.nll += l * counted as f64;
                acc.tokens += counted;
            }
            TaskKind::Detection { stride, .. } => {
                let cfg = crate::detection::DecodeConfig::default();
                acc.detections
                    .extend(crate::detection::decode(&out, *stride, idx[0], &cfg)?);
                acc.objects
                    .extend(crate::detection::ground_truths(&b.target, idx[0])?);
            }
        }
    }
    let n = data.len() as f64;
    let mut metrics = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        if v.is_finite() {
            metrics.insert(k.to_string(), v);
        }
    };
    match kind {
        TaskKind::Classification => {
            put("accuracy", acc.top1 as f64 / n);
            if data.num_classes().is_some_and(|c| c > 5) {
                put("top5_accuracy", acc.top5 as f64 / n);
            }
        }
        TaskKind::NextItem => {
            put("hit_rate@10", acc.hits as f64 / n);
            put("ndcg@10", acc.ndcg / n);
            put("accuracy", acc.top1 as f64 / n);
        }
        TaskKind::Binary => {
            if let Some(auc) = roc_auc(&acc.scores, &acc.labels)? {
                put("auc", auc);
            }
            let m = binary_metrics(&acc.scores, &acc.labels, 0.5)?;
            for (k, v) in [
                ("f1", m.f1),
                ("precision", m.precision),
                ("recall", m.recall),
            ] {
                if let Some(v) = v {
                    put(k, v);
                }
            }
            if let Some(ks) = ks_statistic(&acc.scores, &acc.labels)? {
                put("ks", ks);
            }
            put("accuracy", acc.top1 as f64 / n);
        }
        TaskKind::Ranking { list_len } => {
            let lists = acc.scores.len() / list_len;
            let (mut hits, mut gain) = (0usize, 0f64);
            for list in acc.scores.chunks(*list_len) {
                let row: Vec<f32> = list.iter().map(|&s| s as f32).collect();
                let r = rank_of(&row, 0);
                hits += usize::from(r < RANK_CUTOFF);
                gain += ndcg(r, RANK_CUTOFF);
            }
            put("hit_rate@10", hits as f64 / lists.max(1) as f64);
            put("ndcg@10", gain / lists.max(1) as f64);
        }
        TaskKind::Regression => {
            let v = acc.values.max(1) as f64;
            put("rmse", (acc.sq / v).sqrt());
            put("mae", acc.abs / v);
        }
        TaskKind::Detection { classes, .. } => {
            let m = crate::detection::detection_metrics(&acc.detections, &acc.objects, *classes);
            for (k, v) in m {
                put(&k, v);
            }
        }
        TaskKind::LanguageModel => {
            put(
                "perplexity",
                crate::metrics::perplexity(acc.nll / acc.tokens.max(1) as f64),
            );
        }
    }
    Ok(Evaluation {
        samples: data.len(),
        loss: acc.loss / n,
        metrics,
        headline: data.task.headline().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_gains() {
        assert_eq!(rank_of(&[0.1, 0.9, 0.5], 1), 0);
        assert_eq!(rank_of(&[0.5, 0.5, 0.1], 0), 1); // a tie counts against
        assert_eq!(rank_of(&[f32::NAN, 0.5], 0), usize::MAX);
        assert_eq!(ndcg(0, 10), 1.0);
        assert!((ndcg(1, 10) - 1.0 / 3f64.log2()).abs() < 1e-12);
        assert_eq!(ndcg(10, 10), 0.0);
        assert!((positive_score(&[0.0, 0.0]) - 0.5).abs() < 1e-12);
        assert!(positive_score(&[0.0, 5.0]) > 0.99);
    }
}
