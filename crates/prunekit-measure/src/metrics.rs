//! Task metrics beyond accuracy (top-k, binary precision / recall / F1 / ROC AUC, RMSE, hit rate@k,
//! perplexity, mean episode return), per-layer widths and sparsity, the train/test gap, and the peak
//! resident memory of an inference run.
//!
//! Every metric that can be undefined (no samples, no positives, ...) returns `None` rather than NaN.
//! The pure functions over slices carry the definitions and are tested against hand-computed values;
//! the functions over a [`Graph`] run the model and feed them.

use candle_core::{DType, Tensor};
use prunekit_data::Dataset;
use prunekit_graph::{count_nonzeros, live_rows, Executor, Graph, WeightCounts};
use serde::{Deserialize, Serialize};

use crate::{MeasureError, Result};

fn invalid(msg: impl Into<String>) -> MeasureError {
    MeasureError::Invalid(msg.into())
}

fn check_finite(what: &str, v: impl IntoIterator<Item = f64>) -> Result<()> {
    if v.into_iter().any(|x| x.is_nan()) {
        return Err(invalid(format!("{what} contain NaN")));
    }
    Ok(())
}

/// Whether the relevant entry of `row` is within the top `k`, ties resolved pessimistically: fewer
/// than `k` *other* entries score at least as high as it (a tie, or a NaN competitor, counts
/// against it). So constant scores are never a hit, rather than always one: a model that has
/// collapsed to one output scores 0, not 100%. A NaN score of its own is never a hit.
fn within_top_k(row: &[f32], relevant: usize, k: usize) -> bool {
    let s = row[relevant];
    !s.is_nan()
        && row
            .iter()
            .enumerate()
            // v >= s, or v is NaN (incomparable): both count against the relevant entry
            .filter(|&(j, &v)| j != relevant && v.partial_cmp(&s) != Some(std::cmp::Ordering::Less))
            .count()
            < k
}

/// Top-k accuracy: the fraction of samples whose label is among the `k` highest scores. `scores` is
/// row-major `[labels.len(), classes]`; ties count against the label (see `within_top_k`: constant
/// scores give 0). `None` for no samples.
pub fn top_k_accuracy(scores: &[f32], labels: &[u32], k: usize) -> Result<Option<f64>> {
    if k == 0 {
        return Err(invalid("top-k accuracy needs k >= 1"));
    }
    if labels.is_empty() {
        return Ok(None);
    }
    let classes = scores.len() / labels.len();
    if classes == 0 || classes * labels.len() != scores.len() {
        return Err(invalid(format!(
            "{} scores do not split into rows for {} labels",
            scores.len(),
            labels.len()
        )));
    }
    let mut hits = 0usize;
    for (row, &y) in scores.chunks(classes).zip(labels) {
        if y as usize >= classes {
            return Err(invalid(format!(
                "label {y} is out of range for {classes} classes"
            )));
        }
        hits += usize::from(within_top_k(row, y as usize, k));
    }
    Ok(Some(hits as f64 / labels.len() as f64))
}

/// Hit rate@k for ranking (recommendation): for each query, the scores of its candidates and the
/// index of the one relevant candidate; a hit when fewer than `k` other candidates score at least as
/// high (ties count against it, as in [`top_k_accuracy`]).
/// Candidate lists may differ in length. `None` for no queries.
pub fn hit_rate_at_k(candidates: &[Vec<f32>], relevant: &[usize], k: usize) -> Result<Option<f64>> {
    if k == 0 {
        return Err(invalid("hit rate@k needs k >= 1"));
    }
    if candidates.len() != relevant.len() {
        return Err(invalid(format!(
            "{} candidate lists but {} relevant indices",
            candidates.len(),
            relevant.len()
        )));
    }
    if candidates.is_empty() {
        return Ok(None);
    }
    let mut hits = 0usize;
    for (i, (row, &r)) in candidates.iter().zip(relevant).enumerate() {
        if r >= row.len() {
            return Err(invalid(format!(
                "query {i}: relevant index {r} but only {} candidates",
                row.len()
            )));
        }
        hits += usize::from(within_top_k(row, r, k));
    }
    Ok(Some(hits as f64 / candidates.len() as f64))
}

/// Confusion counts and the metrics of a binary classifier at one threshold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    /// a score at or above it predicts the positive class
    pub threshold: f64,
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
    /// tp / (tp + fp); `None` when nothing is predicted positive
    pub precision: Option<f64>,
    /// tp / (tp + fn); `None` when there are no positives
    pub recall: Option<f64>,
    /// 2 tp / (2 tp + fp + fn); `None` when there are no positives and none is predicted
    pub f1: Option<f64>,
    /// area under the ROC curve (threshold-free); `None` without both classes
    pub roc_auc: Option<f64>,
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Precision, recall, F1 at `threshold` and ROC AUC of scores against labels (`true` = positive).
pub fn binary_metrics(scores: &[f64], labels: &[bool], threshold: f64) -> Result<BinaryMetrics> {
    if scores.len() != labels.len() {
        return Err(invalid(format!(
            "{} scores but {} labels",
            scores.len(),
            labels.len()
        )));
    }
    check_finite("binary scores", scores.iter().copied())?;
    let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
    for (&s, &y) in scores.iter().zip(labels) {
        match (s >= threshold, y) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    Ok(BinaryMetrics {
        threshold,
        tp,
        fp,
        tn,
        fn_,
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fn_),
        f1: ratio(2 * tp, 2 * tp + fp + fn_),
        roc_auc: roc_auc(scores, labels)?,
    })
}

/// The sample indices in ascending order of score, with the counts of positives and negatives;
/// `None` without both classes. Errors for unequal lengths or a NaN score (`what` names them).
fn ascending(
    scores: &[f64],
    labels: &[bool],
    what: &str,
) -> Result<Option<(Vec<usize>, usize, usize)>> {
    if scores.len() != labels.len() {
        return Err(invalid(format!(
            "{} scores but {} labels",
            scores.len(),
            labels.len()
        )));
    }
    check_finite(what, scores.iter().copied())?;
    let pos = labels.iter().filter(|&&y| y).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return Ok(None);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    Ok(Some((order, pos, neg)))
}

/// ROC AUC as the Mann-Whitney statistic: the probability that a random positive scores above a
/// random negative, ties counting one half (average ranks). `None` without both classes.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Result<Option<f64>> {
    let Some((order, pos, neg)) = ascending(scores, labels, "ROC scores")? else {
        return Ok(None);
    };
    let mut rank_sum = 0f64; // 1-based ranks of the positives, ties averaged
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Ok(Some(u / (pos as f64 * neg as f64)))
}

/// The Kolmogorov-Smirnov statistic of a binary scorer (credit scoring's standard separation
/// measure): the largest distance between the empirical score distributions of positives and
/// negatives, `max_t |F_pos(t) - F_neg(t)|` = the largest `|TPR - FPR|` over thresholds, in [0, 1].
/// Tied scores move together. `None` without both classes.
pub fn ks_statistic(scores: &[f64], labels: &[bool]) -> Result<Option<f64>> {
    let Some((order, pos, neg)) = ascending(scores, labels, "KS scores")? else {
        return Ok(None);
    };
    let (mut cp, mut cn, mut best) = (0usize, 0usize, 0f64);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            if labels[order[j]] {
                cp += 1;
            } else {
                cn += 1;
            }
            j += 1;
        }
        best = best.max((cp as f64 / pos as f64 - cn as f64 / neg as f64).abs());
        i = j;
    }
    Ok(Some(best))
}

/// Root mean squared error (regression, ratings). `None` for no samples.
pub fn rmse(pred: &[f64], target: &[f64]) -> Result<Option<f64>> {
    if pred.len() != target.len() {
        return Err(invalid(format!(
            "{} predictions but {} targets",
            pred.len(),
            target.len()
        )));
    }
    if pred.is_empty() {
        return Ok(None);
    }
    let se: f64 = pred
        .iter()
        .zip(target)
        .map(|(p, t)| (p - t) * (p - t))
        .sum();
    Ok(Some((se / pred.len() as f64).sqrt()))
}

/// Perplexity from the mean token cross-entropy in nats: `exp(mean_nll)`.
pub fn perplexity(mean_nll: f64) -> f64 {
    mean_nll.exp()
}

/// Perplexity of language-model logits `[.., vocab]` against token ids `[..]` (the same leading
/// shape): exp of the mean cross-entropy over every token. `None` for no tokens.
pub fn token_perplexity(logits: &Tensor, targets: &Tensor) -> Result<Option<f64>> {
    let dims = logits.dims();
    let Some((&vocab, lead)) = dims.split_last() else {
        return Err(invalid("logits must have a vocabulary axis"));
    };
    if targets.dims() != lead {
        return Err(invalid(format!(
            "logits {dims:?} do not match targets {:?}",
            targets.dims()
        )));
    }
    let tokens = targets.elem_count();
    if tokens == 0 {
        return Ok(None);
    }
    let flat = logits.reshape((tokens, vocab))?.to_dtype(DType::F64)?;
    let logp = prunekit_graph::ops::activation::log_softmax(&flat)?;
    let ids = targets.reshape((tokens, 1))?.to_dtype(DType::U32)?;
    let nll = logp
        .gather(&ids, 1)?
        .mean_all()?
        .neg()?
        .to_scalar::<f64>()?;
    Ok(Some(perplexity(nll)))
}

/// An environment for reinforcement-learning policies: the RL work implements it. One call runs one
/// episode of `policy` from `seed` and returns its total (undiscounted) reward.
pub trait Environment {
    fn episode_return(&mut self, policy: &Graph, seed: u64) -> Result<f64>;
}

/// Statistics of episode returns.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodeReturns {
    pub episodes: usize,
    pub mean: f64,
    /// population standard deviation
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl EpisodeReturns {
    /// `None` for no episodes.
    pub fn from_returns(returns: &[f64]) -> Option<Self> {
        if returns.is_empty() {
            return None;
        }
        let n = returns.len() as f64;
        let mean = returns.iter().sum::<f64>() / n;
        let var = returns.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / n;
        Some(Self {
            episodes: returns.len(),
            mean,
            std: var.sqrt(),
            min: returns.iter().copied().fold(f64::INFINITY, f64::min),
            max: returns.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// Mean episode return of `policy` over `episodes` episodes seeded `seed, seed + 1, ...`.
pub fn mean_episode_return(
    env: &mut dyn Environment,
    policy: &Graph,
    episodes: usize,
    seed: u64,
) -> Result<Option<EpisodeReturns>> {
    let returns = (0..episodes as u64)
        .map(|i| env.episode_return(policy, seed + i))
        .collect::<Result<Vec<f64>>>()?;
    check_finite("episode returns", returns.iter().copied())?;
    Ok(EpisodeReturns::from_returns(&returns))
}

/// Eval-mode outputs of every sample, row-major `[data.len(), outputs]` (the output flattened
/// per sample), with the width.
///
/// # Errors
/// As [`crate::check_task`].
pub fn logits(g: &Graph, data: &Dataset, batch: usize) -> Result<(Vec<f32>, usize)> {
    crate::check_task(g, data)?;
    let device = g.device();
    let mut exec = Executor::new(0);
    let all: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::new();
    let mut width = 0;
    for idx in all.chunks(batch.max(1)) {
        let b = data.batch(idx, &device)?;
        let y = exec.eval(g, &crate::model_inputs(g, b.inputs)?)?.remove(0);
        let y = y.flatten_from(1)?.to_dtype(DType::F32)?;
        width = y.dim(1)?;
        out.extend(y.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok((out, width))
}

/// Top-k accuracy at one k.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    pub k: usize,
    pub accuracy: f64,
}

/// Classification metrics beyond top-1 accuracy and loss (those are in [`crate::Summary`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub samples: usize,
    pub classes: usize,
    /// one entry per requested k below the number of classes
    pub top_k: Vec<TopK>,
    /// for two classes: the softmax probability of class 1 as the score, threshold 0.5
    pub binary: Option<BinaryMetrics>,
}

/// Runs `g` over `data` once and computes top-k accuracy for each `k` in `ks` smaller than the number
/// of classes (top-k at k >= classes is always 1) and, for two classes, the binary metrics.
/// `None` for datasets without class targets.
pub fn classification_metrics(
    g: &Graph,
    data: &Dataset,
    ks: &[usize],
) -> Result<Option<Classification>> {
    let (Some(labels), Some(classes)) = (data.labels(), data.num_classes()) else {
        return Ok(None);
    };
    if matches!(data.task.kind, prunekit_data::TaskKind::Ranking { .. }) {
        return Ok(None);
    }
    let (scores, width) = logits(g, data, 256)?;
    let mut top_k = Vec::new();
    for &k in ks.iter().filter(|&&k| k < classes.max(width)) {
        if let Some(accuracy) = top_k_accuracy(&scores, labels, k)? {
            top_k.push(TopK { k, accuracy });
        }
    }
    let binary = if classes == 2 && width == 2 {
        let p1: Vec<f64> = scores
            .chunks(2)
            .map(|r| 1.0 / (1.0 + (r[0] as f64 - r[1] as f64).exp()))
            .collect();
        let labels: Vec<bool> = labels.iter().map(|&y| y == 1).collect();
        Some(binary_metrics(&p1, &labels, 0.5)?)
    } else {
        None
    };
    Ok(Some(Classification {
        samples: data.len(),
        classes,
        top_k,
        binary,
    }))
}

/// One layer (a node with trainable parameters) as it stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerStats {
    pub node: String,
    pub op: String,
    /// per-sample output shape
    pub output_shape: Vec<usize>,
    /// rows of the weight (a convolution's or linear layer's output channels), if it has one
    pub width: Option<usize>,
    /// rows of the weight with any nonzero value (the width once masked rows are dropped)
    pub live_width: Option<usize>,
    /// trainable values (weights and biases)
    pub params: usize,
    /// of them nonzero
    pub nonzeros: usize,
    /// zeros among the layer's weight matrices and kernels ([`prunekit_graph::WeightCounts`]);
    /// biases and norm scales are not counted (0 without such weights)
    pub sparsity: f64,
    pub macs: u64,
    /// MACs with the zeros of every weight skipped, as in [`Graph::effective_macs`]
    pub effective_macs: u64,
}

/// Widths, counts, sparsity and MACs of every node with trainable parameters, in graph order.
pub fn layer_stats(g: &Graph) -> Result<Vec<LayerStats>> {
    let shapes = g.validate()?;
    let macs = g.node_macs()?;
    let mut out = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let trainable: Vec<_> = n.params.values().filter(|p| p.role.trainable()).collect();
        if trainable.is_empty() {
            continue;
        }
        let (mut params, mut nonzeros) = (0usize, 0usize);
        for p in &trainable {
            params += p.tensor().elem_count();
            nonzeros += count_nonzeros(p.tensor())?;
        }
        let output_shape = shapes[&n.name].clone();
        let (mut width, mut live_width) = (None, None);
        // a borrowed weight (`Node::shared`) gives the width; its counts stay with its owner
        if let Some(w) = g.param_of(n, "weight") {
            let t = w.tensor();
            if let Some(&rows) = t.dims().first() {
                width = Some(rows);
                live_width = Some(live_rows(t)?);
            }
        }
        let weights = WeightCounts::of(n.params.values())?;
        out.push(LayerStats {
            node: n.name.clone(),
            op: n.op.type_name().to_string(),
            output_shape,
            width,
            live_width,
            params,
            nonzeros,
            sparsity: weights.sparsity(),
            macs: macs[i].dense,
            effective_macs: macs[i].effective.round() as u64,
        });
    }
    Ok(out)
}

/// Loss and the task's metrics on one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitEval {
    pub samples: usize,
    pub loss: f64,
    /// the task's metrics by name
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// The headline metric and loss on the training and the test split, and their differences.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainTestGap {
    pub train: SplitEval,
    pub test: SplitEval,
    /// the task's headline metric (`accuracy`, `auc`, `rmse`, ...)
    pub headline: String,
    /// train headline - test headline (positive when a higher-is-better metric is better on the
    /// training data; negative for a lower-is-better one such as RMSE that is lower in training)
    pub headline_gap: Option<f64>,
    /// test loss - train loss
    pub loss_gap: f64,
}

/// Evaluates `g` on both splits. With `max_train`, the training split is thinned to at most that many
/// samples, evenly spaced (whole ranking lists for ranking data; large training sets cost more than
/// the gap is worth).
///
/// # Errors
/// As [`crate::evaluate`].
pub fn train_test_gap(
    g: &Graph,
    train: &Dataset,
    test: &Dataset,
    max_train: Option<usize>,
) -> Result<TrainTestGap> {
    let thinned;
    let train = match max_train {
        Some(m) if m > 0 && train.len() > m => {
            let units = train.len() / train.subset_unit();
            let m = (m / train.subset_unit()).clamp(1, units);
            let idx: Vec<usize> = (0..m).map(|i| i * units / m).collect();
            thinned = train.subset_lists(&idx);
            &thinned
        }
        _ => train,
    };
    let ev = |d: &Dataset| -> Result<(SplitEval, Option<f64>, String)> {
        let e = crate::evaluate(g, d, 256)?;
        let h = e.headline_value();
        Ok((
            SplitEval {
                samples: e.samples,
                loss: e.loss,
                metrics: e.metrics,
            },
            h,
            e.headline,
        ))
    };
    let (tr, htr, _) = ev(train)?;
    let (te, hte, headline) = ev(test)?;
    Ok(TrainTestGap {
        loss_gap: te.loss - tr.loss,
        headline_gap: htr.zip(hte).map(|(a, b)| a - b),
        headline,
        train: tr,
        test: te,
    })
}

/// Resident memory of one inference run, from /proc/self/status.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferenceMemory {
    pub batch: usize,
    /// resident set (VmRSS) just before the run, input already built
    pub baseline_kb: u64,
    /// resident-set high-water mark (VmHWM) after the run
    pub peak_kb: u64,
    /// peak - baseline: the memory the run added at its peak
    pub delta_kb: u64,
    /// whether the high-water mark was reset to the current resident set before the run (writing 5
    /// to /proc/self/clear_refs); if not, a run that stays below an earlier peak reads as 0
    pub hwm_reset: bool,
}

/// (VmRSS, VmHWM) of this process in KiB; `None` where /proc is not available.
pub fn memory_kb() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Peak resident memory of one eval-mode forward at `batch`, measured in this process (no child):
/// the high-water mark is reset, the resident set read, one cold run made with a fresh executor, and
/// the high-water mark read again. Memory the allocator already holds from earlier work is reused
/// without showing up, so measure before other work where it matters. `None` off Linux.
pub fn inference_memory(g: &Graph, batch: usize) -> Result<Option<InferenceMemory>> {
    if batch == 0 {
        return Err(invalid("the batch size must be at least 1"));
    }
    let x = crate::random_inputs(g, batch)?;
    let mut exec = Executor::for_inference(g, batch)?;
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let Some((baseline, _)) = memory_kb() else {
        return Ok(None);
    };
    let y = exec.eval(g, &x)?;
    drop(y);
    let Some((_, peak)) = memory_kb() else {
        return Ok(None);
    };
    Ok(Some(InferenceMemory {
        batch,
        baseline_kb: baseline,
        peak_kb: peak,
        delta_kb: peak.saturating_sub(baseline),
        hwm_reset,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn ks_statistic_by_hand() {
        // positives 0.9, 0.8, 0.3; negatives 0.7, 0.2, 0.1: after 0.3 all 3 negatives below...
        let s = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1];
        let y = [true, true, true, false, false, false];
        // ascending: 0.1n 0.2n 0.3p 0.7n 0.8p 0.9p; |Fp - Fn| peaks at 2/3 after 0.2
        let ks = ks_statistic(&s, &y).unwrap().unwrap();
        assert!((ks - 2.0 / 3.0).abs() < 1e-12, "{ks}");
        assert_eq!(
            ks_statistic(&[0.5, 0.5], &[true, false]).unwrap(),
            Some(0.0)
        );
        assert_eq!(ks_statistic(&[0.5], &[true]).unwrap(), None);
    }

    #[test]
    fn top_k_by_hand() {
        // row 0: label 1 is the max -> top-1 hit
        // row 1: label 2 (0.4) has 0.5 above it -> top-1 miss, top-2 hit
        // row 2: label 0 (0.3) ties with class 1, 0.4 above it -> two others score at least as
        //        high (ties count against it) -> hit only at k = 3
        // row 3: label 0 (0.1) has two above it -> hit only at k = 3
        let scores = [
            0.1, 0.8, 0.1, //
            0.1, 0.5, 0.4, //
            0.3, 0.3, 0.4, //
            0.1, 0.5, 0.4,
        ];
        let labels = [1, 2, 0, 0];
        assert_eq!(top_k_accuracy(&scores, &labels, 1).unwrap(), Some(0.25));
        assert_eq!(top_k_accuracy(&scores, &labels, 2).unwrap(), Some(0.5));
        assert_eq!(top_k_accuracy(&scores, &labels, 3).unwrap(), Some(1.0));
        assert_eq!(top_k_accuracy(&[], &[], 1).unwrap(), None);
        assert!(top_k_accuracy(&scores, &labels, 0).is_err());
        assert!(top_k_accuracy(&scores[..11], &labels, 1).is_err());
        assert!(top_k_accuracy(&scores, &[1, 2, 0, 3], 1).is_err());
        // a NaN score is never a hit
        assert_eq!(
            top_k_accuracy(&[f32::NAN, 0.0], &[0], 2).unwrap(),
            Some(0.0)
        );
    }

    /// A collapsed model (the same score for every class) is not a perfect one: constant logits
    /// give 0 at every k below the number of classes, and 1 only when k covers every class.
    #[test]
    fn ties_count_against_the_label() {
        let classes = 10;
        let scores = vec![0.25f32; 7 * classes];
        let labels = [0, 1, 2, 3, 4, 5, 9];
        for k in [1, 5, classes - 1] {
            assert_eq!(
                top_k_accuracy(&scores, &labels, k).unwrap(),
                Some(0.0),
                "top-{k}"
            );
        }
        assert_eq!(
            top_k_accuracy(&scores, &labels, classes).unwrap(),
            Some(1.0)
        );
        // a NaN competitor counts against the label too
        assert_eq!(
            top_k_accuracy(&[0.5, f32::NAN, 0.1], &[0], 1).unwrap(),
            Some(0.0)
        );
        // the same rule for ranking: three tied candidates, the relevant one is third
        let lists = vec![vec![0.5f32, 0.5, 0.5]];
        assert_eq!(hit_rate_at_k(&lists, &[0], 2).unwrap(), Some(0.0));
        assert_eq!(hit_rate_at_k(&lists, &[2], 2).unwrap(), Some(0.0));
        assert_eq!(hit_rate_at_k(&lists, &[1], 3).unwrap(), Some(1.0));
    }

    #[test]
    fn hit_rate_by_hand() {
        let lists = vec![vec![0.9, 0.1, 0.2], vec![0.1, 0.2, 0.3, 0.4], vec![0.5]];
        // query 0: relevant 0 is first; query 1: relevant 1 is third of four; query 2: alone
        let rel = [0, 1, 0];
        assert!(close(
            hit_rate_at_k(&lists, &rel, 1).unwrap().unwrap(),
            2.0 / 3.0
        ));
        assert!(close(
            hit_rate_at_k(&lists, &rel, 2).unwrap().unwrap(),
            2.0 / 3.0
        ));
        assert_eq!(hit_rate_at_k(&lists, &rel, 3).unwrap(), Some(1.0));
        assert_eq!(hit_rate_at_k(&[], &[], 10).unwrap(), None);
        assert!(hit_rate_at_k(&lists, &[0, 4, 0], 1).is_err());
        assert!(hit_rate_at_k(&lists, &[0], 1).is_err());
    }

    #[test]
    fn binary_by_hand() {
        // threshold 0.5: predictions 1 1 0 1 0 0 against labels 1 0 1 1 0 0
        let s = [0.9, 0.6, 0.4, 0.7, 0.2, 0.1];
        let y = [true, false, true, true, false, false];
        let m = binary_metrics(&s, &y, 0.5).unwrap();
        assert_eq!((m.tp, m.fp, m.tn, m.fn_), (2, 1, 2, 1));
        assert!(close(m.precision.unwrap(), 2.0 / 3.0));
        assert!(close(m.recall.unwrap(), 2.0 / 3.0));
        assert!(close(m.f1.unwrap(), 2.0 / 3.0));
        // pairs (pos, neg) ranked correctly: 0.9 > all 3, 0.4 > 0.2 and 0.1, 0.7 > all 3 -> 8 / 9
        assert!(close(m.roc_auc.unwrap(), 8.0 / 9.0));
    }

    #[test]
    fn binary_edge_cases_are_none_not_nan() {
        // no positives and none predicted: precision, recall, F1 undefined, AUC undefined
        let m = binary_metrics(&[0.1, 0.2], &[false, false], 0.5).unwrap();
        assert_eq!(
            (m.tn, m.precision, m.recall, m.f1, m.roc_auc),
            (2, None, None, None, None)
        );
        // positives but none predicted: precision undefined, recall 0, F1 0
        let m = binary_metrics(&[0.1, 0.2], &[true, false], 0.5).unwrap();
        assert_eq!((m.precision, m.recall, m.f1), (None, Some(0.0), Some(0.0)));
        // no positives, some predicted: precision 0, recall undefined, F1 0
        let m = binary_metrics(&[0.9, 0.2], &[false, false], 0.5).unwrap();
        assert_eq!((m.precision, m.recall, m.f1), (Some(0.0), None, Some(0.0)));
        // empty input
        let m = binary_metrics(&[], &[], 0.5).unwrap();
        assert_eq!(
            (m.precision, m.recall, m.f1, m.roc_auc),
            (None, None, None, None)
        );
        assert!(binary_metrics(&[f64::NAN], &[true], 0.5).is_err());
        assert!(binary_metrics(&[0.1], &[true, false], 0.5).is_err());
    }

    #[test]
    fn auc_with_ties() {
        // three tied at 0.5 (ranks 1..3, average 2), 0.9 rank 4; positive ranks 2 + 4 = 6;
        // U = 6 - 3 = 3 of 2 x 2 pairs -> 0.75 (the tied pair counts one half)
        let auc = roc_auc(&[0.5, 0.5, 0.5, 0.9], &[false, true, false, true]).unwrap();
        assert_eq!(auc, Some(0.75));
        // everything tied -> 0.5
        assert_eq!(
            roc_auc(&[1.0; 4], &[true, false, true, false]).unwrap(),
            Some(0.5)
        );
        // the textbook example
        let auc = roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert_eq!(auc, Some(0.75));
        // perfectly wrong
        assert_eq!(roc_auc(&[0.9, 0.1], &[false, true]).unwrap(), Some(0.0));
        assert_eq!(roc_auc(&[0.9], &[true]).unwrap(), None);
    }

    #[test]
    fn rmse_by_hand() {
        // squared errors 0, 4, 4 -> sqrt(8 / 3)
        let r = rmse(&[1.0, 2.0, 3.0], &[1.0, 4.0, 1.0]).unwrap().unwrap();
        assert!(close(r, (8.0f64 / 3.0).sqrt()));
        assert_eq!(rmse(&[], &[]).unwrap(), None);
        assert!(rmse(&[1.0], &[]).is_err());
    }

    #[test]
    fn perplexity_by_hand() {
        let dev = Device::Cpu;
        // uniform over 4 tokens -> perplexity 4
        let logits = Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap();
        let t = Tensor::zeros((2, 3), DType::U32, &dev).unwrap();
        let p = token_perplexity(&logits, &t).unwrap().unwrap();
        assert!((p - 4.0).abs() < 1e-6);
        // logits ln 1, ln 3: p(1) = 0.75, p(0) = 0.25; tokens 1 then 0 -> 1 / sqrt(0.75 * 0.25)
        let l = Tensor::new(&[[0f32, 3f32.ln()], [0.0, 3f32.ln()]], &dev).unwrap();
        let t = Tensor::new(&[1u32, 0], &dev).unwrap();
        let p = token_perplexity(&l, &t).unwrap().unwrap();
        assert!((p - 1.0 / (0.75f64 * 0.25).sqrt()).abs() < 1e-5);
        assert!(close(perplexity(0.0), 1.0));
        assert!(token_perplexity(&l, &Tensor::new(&[1u32], &dev).unwrap()).is_err());
        let empty = Tensor::zeros((0, 4), DType::F32, &dev).unwrap();
        let none = Tensor::zeros(0, DType::U32, &dev).unwrap();
        assert_eq!(token_perplexity(&empty, &none).unwrap(), None);
    }

    /// x [2] -> linear "fc1" (3, weights set by hand) -> linear "fc2" (2)
    fn tiny() -> Graph {
        let mut b = prunekit_graph::GraphBuilder::new("tiny", 0);
        let x = b.input("x", &[2]);
        let h = b.named("fc1").linear(&x, 3).unwrap();
        let y = b.named("fc2").linear(&h, 2).unwrap();
        let g = b.finish(&[&y]).unwrap();
        let set = |node: &str, param: &str, t: Tensor| {
            g.node(node).unwrap().params[param].value.set(&t).unwrap();
        };
        let dev = Device::Cpu;
        set(
            "fc1",
            "weight",
            Tensor::new(&[[1f32, 0.], [0., 0.], [2., 3.]], &dev).unwrap(),
        );
        set("fc1", "bias", Tensor::new(&[0f32, 1., 0.], &dev).unwrap());
        g
    }

    #[test]
    fn layer_stats_by_hand() {
        let l = layer_stats(&tiny()).unwrap();
        assert_eq!(l.len(), 2);
        let fc1 = &l[0];
        assert_eq!((fc1.node.as_str(), fc1.op.as_str()), ("fc1", "linear"));
        assert_eq!(fc1.output_shape, vec![3]);
        // weight 6 + bias 3; nonzero: 3 weights + 1 bias; one weight row all zero
        assert_eq!((fc1.params, fc1.nonzeros), (9, 4));
        // sparsity counts the weight only: its 3 zeros of 6 (the 2 zero biases do not count)
        assert!(close(fc1.sparsity, 0.5), "{}", fc1.sparsity);
        assert_eq!((fc1.width, fc1.live_width), (Some(3), Some(2)));
        // 3 outputs x 2 inputs; weight density 3 / 6
        assert_eq!((fc1.macs, fc1.effective_macs), (6, 3));
        assert_eq!((l[1].params, l[1].macs, l[1].width), (8, 6, Some(2)));
    }

    /// identity logits: the linear layer's weight is I, its bias 0
    fn identity() -> Graph {
        let mut b = prunekit_graph::GraphBuilder::new("id", 0);
        let x = b.input("x", &[2]);
        let y = b.named("fc").linear(&x, 2).unwrap();
        let g = b.finish(&[&y]).unwrap();
        let n = g.node("fc").unwrap();
        let dev = Device::Cpu;
        n.params["weight"]
            .value
            .set(&Tensor::new(&[[1f32, 0.], [0., 1.]], &dev).unwrap())
            .unwrap();
        n.params["bias"]
            .value
            .set(&Tensor::zeros(2, DType::F32, &dev).unwrap())
            .unwrap();
        g
    }

    #[test]
    fn binary_metrics_of_a_model() {
        let g = identity();
        // logit differences x1 - x0: -1, 1, 2, -1 for labels 0 0 1 1
        let data = Dataset::new(
            "d",
            vec![2., 1., 0., 1., 1., 3., 1., 0.],
            vec![0, 0, 1, 1],
            vec![2],
            2,
        )
        .unwrap();
        let c = classification_metrics(&g, &data, &[1, 5]).unwrap().unwrap();
        assert_eq!((c.samples, c.classes), (4, 2));
        assert_eq!(
            c.top_k,
            vec![TopK {
                k: 1,
                accuracy: 0.5
            }]
        );
        let b = c.binary.unwrap();
        assert_eq!((b.tp, b.fp, b.tn, b.fn_), (1, 1, 1, 1));
        // positives score 2 and -1, negatives -1 and 1: 1 + 1 + 0.5 + 0 of 4 pairs
        assert_eq!(b.roc_auc, Some(0.625));
        let gap = train_test_gap(&g, &data, &data.subset(&[0, 2]), Some(2)).unwrap();
        // train thinned to samples 0 and 2 (both right), test is the same two
        assert_eq!((gap.train.samples, gap.train.metrics["accuracy"]), (2, 1.0));
        assert!(close(gap.headline_gap.unwrap(), 0.0) && close(gap.loss_gap, 0.0));
        // the same data as a binary task: every binary metric by name, AUC the headline
        let mut bin = data.clone();
        bin.task = prunekit_data::Task::new(prunekit_data::TaskKind::Binary);
        let e = crate::evaluate(&g, &bin, 3).unwrap();
        assert_eq!(
            (e.headline.as_str(), e.headline_value()),
            ("auc", Some(0.625))
        );
        assert_eq!(e.get("accuracy"), Some(0.5));
        assert_eq!(e.get("precision"), Some(0.5));
        assert_eq!(e.get("f1"), Some(0.5));
        // scores ascending: -1 (0), -1 (1), 1 (0), 2 (1): KS peaks at 0.5
        assert_eq!(e.get("ks"), Some(0.5));
    }

    #[test]
    fn mismatched_data_is_a_clear_error() {
        let g = identity();
        let wrong = Dataset::new("d3", vec![0.; 3], vec![0], vec![3], 2).unwrap();
        let e = crate::check_task(&g, &wrong).unwrap_err().to_string();
        assert!(e.contains("[2]") && e.contains("[3]"), "{e}");
        let empty = Dataset::new("e", vec![], vec![], vec![2], 2).unwrap();
        assert!(crate::check_task(&g, &empty)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let many = Dataset::new("m", vec![0.; 2], vec![4], vec![2], 5).unwrap();
        let e = crate::check_task(&g, &many).unwrap_err().to_string();
        assert!(e.contains("2 outputs") && e.contains("5 classes"), "{e}");
    }

    #[test]
    fn inference_memory_reads_proc() {
        let m = inference_memory(&tiny(), 4).unwrap();
        if cfg!(target_os = "linux") {
            let m = m.unwrap();
            assert!(m.peak_kb >= m.baseline_kb || !m.hwm_reset);
            assert_eq!(m.batch, 4);
        }
        assert!(inference_memory(&tiny(), 0).is_err());
    }

    struct Table(Vec<f64>);
    impl Environment for Table {
        fn episode_return(&mut self, _: &Graph, seed: u64) -> Result<f64> {
            Ok(self.0[seed as usize])
        }
    }

    #[test]
    fn episode_returns_by_hand() {
        // returns 1 2 3 6: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5
        let mut env = Table(vec![0.0, 1.0, 2.0, 3.0, 6.0]);
        let r = mean_episode_return(&mut env, &tiny(), 4, 1)
            .unwrap()
            .unwrap();
        assert!(close(r.mean, 3.0) && close(r.std, 3.5f64.sqrt()));
        assert_eq!((r.min, r.max, r.episodes), (1.0, 6.0, 4));
        assert_eq!(mean_episode_return(&mut env, &tiny(), 0, 0).unwrap(), None);
        assert_eq!(EpisodeReturns::from_returns(&[]), None);
    }
}
