//! Importance criteria: scores for every parameter, consumed by both granularities. Higher is more
//! important everywhere; only `Role::Weight` parameters are scored.
//!
//! - Unstructured masks ([`crate::unstructured`]): an element's score is
//!   `reduce(importance(element))`.
//! - Structured units ([`crate::structured`]): a criterion gives, per parameter slice (a unit's
//!   indices along one axis), one sum per *term* ([`Criterion::slice_terms`]: one term for most
//!   criteria, one per calibration batch for Taylor). Either each slice's sums are reduced
//!   ([`Criterion::reduce_terms`]) and the unit's slice scores aggregated (sum / mean / max), or,
//!   for criteria that score a group of parameters as one ([`Criterion::whole_unit`]: Taylor,
//!   Fisher), the sums over every slice of the unit are added first and reduced once. A unit no
//!   slice of which is scored has no score: its group is left out of the ranking and reported.
//!
//! Notation: w a weight; g = dL/dw. L is the mean cross-entropy ([`prunekit_graph::loss`]) in eval
//! mode with gradients ([`Mode::EVAL_GRAD`]: BatchNorm uses its running statistics, so samples do
//! not interact); g_b its gradient over calibration batch b (B batches), g_i the gradient of the
//! loss of sample i alone (N samples), g_all the gradient of the mean loss over all N samples
//! (= sum_b n_b g_b / N). S is a structured unit (every weight element of every slice it owns).
//!
//! | name | element score | structured unit score | source | across layers (global) |
//! | --- | --- | --- | --- | --- |
//! | `l1` | \|w\| | per slice sum \|w\| | Li et al. 2017, Pruning Filters for Efficient ConvNets | no: follows each layer's weight scale |
//! | `l2` | \|w\| | per slice sqrt(sum w^2) | (Frobenius norm of the slice) | no: as l1 |
//! | `random` | seeded U(0, 1) | per slice sum | baseline | yes (uniform) |
//! | `lamp` | w_u^2 / sum of w_v^2 over v at or after u in ascending order, per tensor | per slice sum | Lee et al. 2021, Layer-adaptive Sparsity for the Magnitude-based Pruning | yes: normalised per layer (its purpose) |
//! | `fpgm` | a filter's score spread over its row | per filter sum_j \|\|F_i - F_j\|\|_2 over the layer's other filters (output rows of Linear / conv weights only) | He et al. 2019, Filter Pruning via Geometric Median | no: distances follow the layer's scale |
//! | `bn-scale` | \|gamma\| (BatchNorm weights only) | per slice sum \|gamma\| | Liu et al. 2017, Network Slimming | across BatchNorm layers, as the paper's global threshold |
//! | `taylor` | (1/B) sum_b (w g_b)^2 | (1/B) sum_b (sum_{w in S} w g_b)^2 | Molchanov et al. 2019, Importance Estimation for Neural Network Pruning (per parameter and the group form, averaged over mini-batches) | yes: estimates the squared loss change |
//! | `fisher` | 0.5 w^2 (1/N) sum_i g_i^2 | sum over S of the element scores | LeCun et al. 1990, Optimal Brain Damage, with the empirical Fisher as the Hessian diagonal | yes: estimates the loss increase |
//! | `snip` | \|w g_all\| / sum over the model of \|w g_all\| | per slice sum | Lee et al. 2019, SNIP: Single-shot Network Pruning based on Connection Sensitivity | yes: normalised over the whole model |
//! | `movement` | -sum_t w_t g_t over fine-tuning steps t (or over calibration batches) | per slice sum | Sanh et al. 2020, Movement Pruning | yes: a first-order loss change |
//! | `wanda` | \|W_ij\| \|\|X_j\|\|_2 over the calibration inputs of every weight matrix (o_weight, weight_hh included) | per slice sum | Sun et al. 2024, A Simple and Effective Pruning Approach for LLMs | no: meant within each output row |
//!
//! "Across layers" says whether scores of different layers may be ranked together (global scope):
//! the loss-based criteria (taylor, fisher, snip, movement) are invariant under the rescaling of a
//! layer that leaves the function unchanged (w -> c w, the next layer / c through a ReLU, since
//! w g is invariant), and LAMP normalises per layer; magnitudes (l1, l2, fpgm) are not, so a global
//! ranking by them can empty a small-scale layer. Structured pruning divides unit scores by their
//! group's mean by default ([`crate::Normalize::Mean`]), which removes the scale of any criterion
//! but also the differences in importance between groups.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use prunekit_data::{Batch, Dataset};
use prunekit_graph::loss::Loss;
use prunekit_graph::{param_grads, Executor, Graph, Hooks, InputKind, Mode, Op, Param, Role};
use rand::{Rng, SeedableRng};

use crate::{PruneError, Result};

/// Importance of parameters. An element's score (unstructured) is `reduce(importance)`; a
/// structured unit's score comes from its slices' per-term sums ([`Criterion::slice_terms`],
/// [`Criterion::reduce_terms`], [`Criterion::whole_unit`]). The defaults describe a criterion with
/// one additive term equal to its importance.
pub trait Criterion {
    fn name(&self) -> &'static str;
    /// Element-wise importance of `param` of `node` (same shape, f64), or None to leave it out.
    fn importance(&self, g: &Graph, node: &str, param: &str) -> Result<Option<Tensor>>;
    /// Turns one element's importance (or a one-term sum) into its score (sqrt for L2).
    fn reduce(&self, sum: f64) -> f64 {
        sum
    }
    /// Brings scores that depend on the model's state (gradients, activations) up to date with
    /// `g`. The pruners call it once before every scoring round; criteria computed from the
    /// weights at hand do nothing.
    fn prepare(&self, _g: &Graph) -> Result<()> {
        Ok(())
    }
    /// Per additive term, the terms of `param` summed over every axis but `axis`: `[terms][len
    /// of axis]` (one term by default: the importance; Taylor: one per calibration batch), or
    /// None to leave this slice out of unit scores.
    fn slice_terms(
        &self,
        g: &Graph,
        node: &str,
        param: &str,
        axis: usize,
    ) -> Result<Option<Vec<Vec<f64>>>> {
        match self.importance(g, node, param)? {
            Some(t) => Ok(Some(vec![sums_along(&t, axis)?])),
            None => Ok(None),
        }
    }
    /// The score of a set of elements (a slice, or a whole unit) from its per-term sums: by
    /// default `reduce` of their total. Invariant: for one element, `reduce_terms(its terms) ==
    /// reduce(importance)`.
    fn reduce_terms(&self, sums: &[f64]) -> f64 {
        self.reduce(sums.iter().sum())
    }
    /// Whether a structured unit is scored as one set: the per-term sums over every slice of the
    /// unit (all its parameters and indices) are added before `reduce_terms` (group importance,
    /// Molchanov et al. 2019; additive saliency, OBD). Otherwise each slice is reduced alone and
    /// the slice scores are aggregated ([`crate::Aggregate`]).
    fn whole_unit(&self) -> bool {
        false
    }
    /// Why a structured group none of whose units this criterion can score is left out (shown
    /// in the report).
    fn unscored_reason(&self) -> String {
        format!(
            "criterion `{}` gives no importance to any parameter of this group",
            self.name()
        )
    }
}

/// A criterion with some nodes left out: their weights get no importance, so unstructured and N:M
/// pruning leave them dense (e.g. a first convolution whose input width N:M does not divide).
pub struct Excluding<C: Criterion> {
    pub inner: C,
    pub nodes: Vec<String>,
}

impl<C: Criterion> Excluding<C> {
    /// Checks every name is a node of `g`.
    pub fn new(g: &Graph, inner: C, nodes: Vec<String>) -> Result<Self> {
        for n in &nodes {
            if g.node(n).is_err() {
                return Err(PruneError::Invalid(format!(
                    "excluded node `{n}` is not in the model"
                )));
            }
        }
        Ok(Self { inner, nodes })
    }
    fn excludes(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n == node)
    }
}

/// The methods of a criterion that hands every call to another (`$s => $inner`), except the
/// nodes for which `$node => $skip` holds, which get no importance.
macro_rules! forward_criterion {
    ($s:ident => $inner:expr, $node:ident => $skip:expr) => {
        fn name(&self) -> &'static str {
            let $s = self;
            $inner.name()
        }
        fn importance(&self, g: &Graph, node: &str, param: &str) -> Result<Option<Tensor>> {
            let ($s, $node) = (self, node);
            if $skip {
                return Ok(None);
            }
            $inner.importance(g, node, param)
        }
        fn reduce(&self, sum: f64) -> f64 {
            let $s = self;
            $inner.reduce(sum)
        }
        fn prepare(&self, g: &Graph) -> Result<()> {
            let $s = self;
            $inner.prepare(g)
        }
        fn slice_terms(
            &self,
            g: &Graph,
            node: &str,
            param: &str,
            axis: usize,
        ) -> Result<Option<Vec<Vec<f64>>>> {
            let ($s, $node) = (self, node);
            if $skip {
                return Ok(None);
            }
            $inner.slice_terms(g, node, param, axis)
        }
        fn reduce_terms(&self, sums: &[f64]) -> f64 {
            let $s = self;
            $inner.reduce_terms(sums)
        }
        fn whole_unit(&self) -> bool {
            let $s = self;
            $inner.whole_unit()
        }
        fn unscored_reason(&self) -> String {
            let $s = self;
            $inner.unscored_reason()
        }
    };
}

/// A borrowed criterion is a criterion.
impl<T: Criterion + ?Sized> Criterion for &T {
    forward_criterion!(c => (**c), _n => false);
}
/// A boxed criterion is a criterion.
impl<T: Criterion + ?Sized> Criterion for Box<T> {
    forward_criterion!(c => (**c), _n => false);
}
impl<C: Criterion> Criterion for Excluding<C> {
    forward_criterion!(c => c.inner, n => c.excludes(n));
}

/// Every criterion [`criterion_by_name`] knows.
pub const CRITERIA: &[&str] = &[
    "l1", "l2", "random", "lamp", "fpgm", "bn-scale", "taylor", "fisher", "snip", "movement",
    "wanda",
];

/// The criteria that need calibration batches (gradients or activations).
pub const DATA_CRITERIA: &[&str] = &["taylor", "fisher", "snip", "movement", "wanda"];

/// A criterion by name. Gradient and activation criteria (see [`DATA_CRITERIA`]) are computed
/// here from `calib` on `g`; `seed` drives `random`. `movement` built here is the movement of one
/// infinitesimal gradient step per calibration batch (-w g summed over batches at the current
/// weights); to accumulate it over real fine-tuning, pass a [`Movement`] to
/// `prunekit_train::fit_with` as a step hook (the hook lives in `prunekit_train`). `bn-scale`
/// built here only scores (lambda 0).
pub fn criterion_by_name(
    name: &str,
    g: &Graph,
    calib: Option<&Calibration>,
    seed: u64,
) -> Result<Box<dyn Criterion>> {
    let data = || {
        calib.ok_or_else(|| {
            PruneError::Invalid(format!(
                "criterion `{name}` needs calibration data (batches of inputs and labels from a \
                 dataset) to compute its {}; none was given",
                if name == "wanda" {
                    "activation norms"
                } else {
                    "gradients"
                }
            ))
        })
    };
    Ok(match name {
        "l1" => Box::new(Norm::L1),
        "l2" => Box::new(Norm::L2),
        "random" => Box::new(RandomScores::new(seed)),
        "lamp" => Box::new(Lamp),
        "fpgm" => Box::new(Fpgm),
        "bn-scale" => Box::new(BnScale::new(0.0)?),
        "taylor" => Box::new(Taylor::new(g, data()?)?),
        "fisher" => Box::new(Fisher::new(g, data()?)?),
        "snip" => Box::new(Snip::new(g, data()?)?),
        "movement" => Box::new(Movement::from_calibration(g, data()?)?),
        "wanda" => Box::new(Wanda::new(g, data()?)?),
        other => {
            return Err(PruneError::Invalid(format!(
                "unknown criterion `{other}`; known: {}",
                CRITERIA.join(", ")
            )))
        }
    })
}

/// `t` (any shape) summed over every axis but `axis`, in f64.
pub(crate) fn sums_along(t: &Tensor, axis: usize) -> Result<Vec<f64>> {
    let len = t.dim(axis)?;
    Ok(t.to_dtype(DType::F64)?
        .transpose(0, axis)?
        .contiguous()?
        .reshape((len, ()))?
        .sum(1)?
        .to_vec1::<f64>()?)
}

/// The parameter `param` of `node`, or an error naming both.
pub(crate) fn param_of<'a>(g: &'a Graph, node: &str, param: &str) -> Result<&'a Param> {
    g.node(node)?
        .params
        .get(param)
        .ok_or_else(|| PruneError::Invalid(format!("node `{node}` has no `{param}`")))
}

/// The parameter as f64 when it is a weight, else None.
fn weight_f64(g: &Graph, node: &str, param: &str) -> Result<Option<Tensor>> {
    let p = param_of(g, node, param)?;
    if p.role != Role::Weight {
        return Ok(None);
    }
    Ok(Some(p.tensor().to_dtype(DType::F64)?))
}
// ---------------------------------------------------------------------------------------------
// Criteria from the weights alone

/// L1 (sum of |w|) or L2 (sqrt of the sum of w^2) norm of every weight slice (biases and buffers
/// are left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    L1,
    L2,
}

impl Criterion for Norm {
    fn name(&self) -> &'static str {
        match self {
            Norm::L1 => "l1",
            Norm::L2 => "l2",
        }
    }
    fn importance(&self, g: &Graph, node: &str, param: &str) -> Result<Option<Tensor>> {
        let Some(w) = weight_f64(g, node, param)? else {
            return Ok(None);
        };
        Ok(Some(match self {
            Norm::L1 => w.abs()?,
            Norm::L2 => w.sqr()?,
        }))
    }
    fn reduce(&self, sum: f64) -> f64 {
        match self {
            Norm::L1 => sum,
            Norm::L2 => sum.sqrt(),
        }
    }
}

/// Seeded uniform scores in [0, 1) for every weight: the baseline. The numbers of a parameter
/// depend only on the seed, the node and parameter names and the shape (not on call order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomScores {
    pub seed: u64,
}

impl RandomScores {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }
}

/// A seed for one parameter's stream: FNV-1a over the names, mixed with the seed.
fn stream_seed(seed: u64, node: &str, param: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in node.bytes().chain([0xff]).chain(param.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Criterion for RandomScores {
    fn name(&self) -> &'static str {
        "random"
    }
    fn importance(&self, g: &Graph, node: &str, param: &str) -> Result<Option<Tensor>> {
        let p = param_of(g, node, param)?;
        if p.role != Role::Weight {
            return Ok(None);
        }
        let t = p.tensor();
        let mut rng = rand::rngs::StdRng::seed_from_u64(stream_seed(self.seed, node, param));
        let v: Vec<f64> = (0..t.elem_count()).map(|_| rng.random::<f64>()).collect();
        Ok(Some(Tensor::from_vec(v, t.dims(), t.device())?))
    }
}

/// Layer-adaptive magnitude pruning (Lee et al. 2021, "Layer-adaptive Sparsity for the
/// Magnitude-based Pruning"): per weight tensor, with the weights sorted
/// ascending by w^2 (ties by position), score(u) = w_u^2 / sum over v at or after u of w_v^2.
/// Comparable across layers, so meant for global unstructured pruning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lamp;

/// LAMP scores of a flat list of weights.
pub fn lamp_scores(w: &[f64]) -> Vec<f64> {
    let sq: Vec<f64> = w.iter().map(|x| x * x).collect();
    let mut order: Vec<usize> = (0..sq.len()).collect();
    order.sort_by(|&a, &b| sq[a].total_cmp(&sq[b]).then(a.cmp(&b)));
    let mut out = vec![0.0; sq.len()];
    let mut tail = 0.0;
    for &u in order.iter().rev() {
        tail += sq[u];
        out[u] = if tail > 0.0 { sq[u] / tail } else { 0.0 };
    }
    out
}

impl Criterion for Lamp {
    fn name(&self) -> &'static str {
        "lamp"
    }
    fn importance(&self, g: &Graph, node: &str, param: &str) -> Result<Option<Tensor>> {
        let Some(w) = weight_f64(g, node, param)? else {
            return Ok(None);
        };
        let s = lamp_scores(&w.flatten_all()?.to_vec1::<f64>()?);
        Ok(Some(Tensor::from_vec(s, w.dims(), w.device())?))
    }
}

/// Filter pruning via the geometric median (He et al. 2019, "Filter Pruning via Geometric Median
/// for Deep Convolutional Neural Networks Acceleration"): for every Linear / Conv weight, a
/// filter's (output row's) score is the sum of its Euclidean distances to the layer's other
/// filters; filters near the geometric median are redundant. The importance spreads a filter's
/// score evenly over its row; only the output axis of those weights takes part in structured
/// unit scores (every other parameter and axis gives None), so groups without a Linear or
/// convolution filter (recurrent units, attention heads) are left out of the ranking. Meant for
/// structured pruning within each layer (distances follow the layer's weight scale).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fpgm;

/// Whether `param` of `node` is the weight of a Linear or convolution (rows are filters).
fn is_filter_weight(g: &Graph, node: &str, param: &str) -> Result<bool> {
    let n = g.node(node)?;
    Ok(param == "weight"
        && matches!(n.op, Op::Linear(_) | Op::Conv1d(_) | Op::Conv2d(_))
        && n.params.get(param).is_some_and(|p| p.role == Role::Weight))
}

impl Fpgm {
    /// Each filter's summed distance to the other filters of the layer, or None when `param` is
    /// not a Linear / Conv weight.
    pub fn filter_scores(g: &Graph, node: &str, param: &str) -> Result<Option<Vec<f64>>> {
        if !is_filter_weight(g, node, param)? {
            return Ok(None);
        }
        let w = param_of(g, node, param)?.tensor().to_dtype(DType::F64)?;
        let out = w.dim(0)?;
        let rows = w.reshape((out, ()))?;
        let gram = rows.matmul(&rows.t()?)?.to_vec2::<f64>()?;
        Ok(Some(
            (0..out)
                .map(|i| {
                    (0..out)
                        .filter(|&j| j != i)
                        .map(|j| (gram[i][i] + gram[j][j] - 2.0 * gram[i][j]).max(0.0).sqrt())
                        .sum()
                })
                .collect(),
        ))
    }
}

impl Criterion for Fpgm {
    fn name(&self) -> &'static str {
        "fpgm"
    }
    fn importance(&self, g: &Graph, node: &str, param: &str) -> Result<Option<Tensor>> {
        let Some(scores) = Fpgm::filter_scores(g, node, param)? else {
            return Ok(None);
        };
        let w = param_of(g, node, param)?.tensor();
        let row_len = w.elem_count() / scores.len().max(1);
        let mut shape = vec![1usize; w.rank()];
        shape[0] = scores.len();
        let per = scores.iter().map(|s| s / row_len.max(1) as f64).collect();
        let t = Tensor::from_vec(per, shape, w.device())?;
        Ok(Some(t.broadcast_as(w.dims())?.contiguous()?))
    }
    fn slice_terms(
        &self,
        g: &Graph,
        node: &str,
        param: &str,
        axis: usize,
    ) -> Result<Option<Vec<Vec<f64>>>> {
        if axis != 0 {
            return Ok(None);
        }
        Ok(Fpgm::filter_scores(g, node, param)?.map(|s| vec![s]))
    }
    fn unscored_reason(&self) -> String {
        "criterion `fpgm` scores filters (the output rows of Linear and convolution weights) and \
         this group has none (recurrent units and attention heads are not filters)"
            .into()
    }
}

/// Network slimming (Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
/// Slimming"). As a [`Criterion`] a BatchNorm weight's importance is |gamma| and every other
/// parameter gives None, so structured groups through a BatchNorm are ranked by its scales and
/// groups without one are left out of the ranking (and reported). [`BnScale::penalty`] is the
/// sparsity-training term lambda * sum |gamma| over every BatchNorm weight; the training hook that
/// adds it to the loss (`impl StepHook for BnScale`) lives in `prunekit_train`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnScale {
    lambda: f64,
}

impl BnScale {
    /// `lambda` (the penalty weight) must be a finite number >= 0.
    pub fn new(lambda: f64) -> Result<Self> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(PruneError::Invalid(format!(
                "bn-scale: lambda {lambda} must be a finite number >= 0"
            )));
        }
        Ok(Self { lambda })
    }
    pub fn lambda(&self) -> f64 {
        self.lambda
    }
    /// lambda * sum |gamma| over every BatchNorm weight (differentiable in the weights), or None
    /// when lambda is 0 or the model has no affine BatchNorm.
    pub fn penalty(&self, g: &Graph) -> Result<Option<Tensor>> {
        if self.lambda == 0.0 {
            return Ok(None);
        }
        let mut total: Option<Tensor> = None;
        for n in &g.nodes {
            if !matches!(n.op, Op::BatchNorm(_)) {
                continue;
            }
            if let Some(p) = n.params.get("weight") {
                let s = p.tensor().abs()?.sum_all()?;
                total = Some(match total {
                    Some(t) => (t + s)?,
                    None => s,
                });
            }
        }
        Ok(match total {
            Some(t) => Some(t.affine(self.lambda, 0.0)?),
            None => None,
        })
    }
}

impl Criterion for BnScale {
    fn name(&self) -> &'static str {
        "bn-scale"
    }
    fn importance(&self, g: &Graph, node: &str, param: &str) -> Result<Option<Tensor>> {
        let n = g.node(node)?;
        if !matches!(n.op, Op::BatchNorm(_)) || param != "weight" {
            return Ok(None);
        }
        Ok(weight_f64(g, node, param)?.map(|w| w.abs()).transpose()?)
    }
    fn unscored_reason(&self) -> String {
        "criterion `bn-scale` scores BatchNorm scales and no BatchNorm follows this group".into()
    }
}

// ---------------------------------------------------------------------------------------------
// Calibration data and the passes over it

/// Calibration batches (the model's inputs and the targets of each batch) and the task's loss,
/// which the gradient criteria differentiate.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// The batches, each `inputs` `[B, ..]` per model input and `target` `[B, ..]`.
    pub batches: Vec<Batch>,
    /// The loss of the task the batches come from.
    pub loss: Loss,
}

impl Calibration {
    /// Single-input classification batches: (inputs `[B, ..]`, class ids `[B]`) pairs with the
    /// cross-entropy loss, or with per-position ids `[B, T]` the token-level cross-entropy. At
    /// least one batch; every batch's inputs and labels agree on the batch size.
    ///
    /// # Errors
    /// [`PruneError::Invalid`] for no batch or a batch-size mismatch.
    pub fn new(batches: Vec<(Tensor, Tensor)>) -> Result<Self> {
        let tokens = batches.first().is_some_and(|(_, y)| y.rank() > 1);
        let loss = if tokens {
            Loss::TokenCrossEntropy {
                ignore: prunekit_data::IGNORE,
            }
        } else {
            Loss::CrossEntropy {
                class_weights: None,
            }
        };
        Self::from_batches(
            batches
                .into_iter()
                .map(|(x, y)| Batch {
                    inputs: vec![x],
                    target: y,
                })
                .collect(),
            loss,
        )
    }

    /// Batches of any task with its loss. At least one batch; in every batch each input and the
    /// target share one positive batch size.
    ///
    /// # Errors
    /// [`PruneError::Invalid`] for no batch or a batch-size mismatch.
    pub fn from_batches(batches: Vec<Batch>, loss: Loss) -> Result<Self> {
        if batches.is_empty() {
            return Err(PruneError::Invalid(
                "calibration needs at least one batch".into(),
            ));
        }
        for (i, b) in batches.iter().enumerate() {
            let by = b.target.dims().first().copied();
            let ok = by.is_some_and(|n| n > 0)
                && !b.inputs.is_empty()
                && b.inputs.iter().all(|x| x.dims().first().copied() == by);
            if !ok {
                return Err(PruneError::Invalid(format!(
                    "calibration batch {i}: inputs {:?} and targets {:?} must share a positive batch size",
                    b.inputs.iter().map(|x| x.dims().to_vec()).collect::<Vec<_>>(),
                    b.target.dims()
                )));
            }
        }
        Ok(Self { batches, loss })
    }

    /// `batches` batches of `batch_size` distinct samples of `data`, chosen with `seed`, with the
    /// loss of `data`'s task.
    ///
    /// # Errors
    /// [`PruneError::Invalid`] when the dataset has fewer samples than asked for.
    pub fn from_dataset(
        data: &Dataset,
        batches: usize,
        batch_size: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if batches == 0 || batch_size == 0 {
            return Err(PruneError::Invalid(format!(
                "calibration needs at least one batch of at least one sample, got {batches} batch(es) of {batch_size}"
            )));
        }
        let want = batches.saturating_mul(batch_size);
        if want > data.len() {
            return Err(PruneError::Invalid(format!(
                "calibration wants {batches} batches of {batch_size} = {want} samples but dataset `{}` has {}",
                data.name,
                data.len()
            )));
        }
        let mut rng = prunekit_graph::graph::rng(seed);
        let mut idx: Vec<usize> = (0..data.len()).collect();
        for i in (1..idx.len()).rev() {
            idx.swap(i, rng.random_range(0..=i));
        }
        let out = idx[..want]
            .chunks(batch_size)
            .map(|c| data.batch(c, device))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Self::from_batches(out, data.task.loss())
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
    /// Samples over all batches.
    pub fn samples(&self) -> usize {
        self.batches
            .iter()
            .map(|b| b.target.dims().first().copied().unwrap_or(0))
            .sum()
    }
}

/// Checks the model has one output (what calibration passes read).
fn check_model(g: &Graph, what: &str) -> Result<()> {
    if g.outputs.len() != 1 {
        return Err(PruneError::Invalid(format!(
            "criterion `{what}` runs calibration batches through the model and needs one output; \
             the model has {}",
            g.outputs.len()
        )));
    }
    Ok(())
}

/// A batch's inputs as the model takes them: real-valued inputs converted to the model's dtype.
fn model_inputs(g: &Graph, xs: &[Tensor]) -> Result<Vec<Tensor>> {
    xs.iter()
        .enumerate()
        .map(|(i, x)| {
            let float = g.inputs.get(i).map(|s| s.kind) == Some(InputKind::Float);
            Ok(if float && x.dtype() != g.dtype() {
                x.to_dtype(g.dtype())?
            } else {
                x.clone()
            })
        })
        .collect()
}

/// The calibration loss of `output` against `target`, class ids checked against the outputs.
fn task_loss(loss: &Loss, output: &Tensor, target: &Tensor, what: &str) -> Result<Tensor> {
    if !matches!(loss, Loss::Mse | Loss::Detection { .. }) {
        let classes = output.dims().last().copied().unwrap_or(0);
        let vals = target
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let ignore = match loss {
            Loss::TokenCrossEntropy { ignore } => Some(f64::from(*ignore)),
            _ => None,
        };
        if let Some(v) = vals
            .iter()
            .find(|&&v| Some(v) != ignore && (v < 0.0 || v >= classes as f64))
        {
            return Err(PruneError::Invalid(format!(
                "criterion `{what}`: calibration label {v} is not a class of the model's {classes} outputs"
            )));
        }
    }
    loss.compute(output, target)
        .map_err(|e| PruneError::Invalid(format!("criterion `{what}`: {e}")))
}

/// Weight gradients (or scores) by (node, param).
type Grads = HashMap<(String, String), Tensor>;

/// Gradients of every weight (f64) of the mean loss over one calibration batch, in eval mode.
fn batch_grads(
    g: &Graph,
    exec: &mut Executor,
    b: &Batch,
    loss: &Loss,
    what: &str,
) -> Result<Grads> {
    let xs = model_inputs(g, &b.inputs)?;
    let out = exec
        .run(g, &xs, Mode::EVAL_GRAD, None)?
        .into_iter()
        .next()
        .ok_or_else(|| PruneError::Invalid("the model produced no output".into()))?;
    let grads = task_loss(loss, &out, &b.target, what)?.backward()?;
    weight_grads(g, &grads)
}

/// The gradients in `grads` of every weight, as f64.
fn weight_grads(g: &Graph, grads: &GradStore) -> Result<Grads> {
    let mut out = HashMap::new();
    for ((n, k), t) in param_grads(g, grads) {
        if param_of(g, &n, &k)?.role == Role::Weight {
            out.insert((n, k), t.to_dtype(DType::F64)?);
        }
    }
    Ok(out)
}

/// A weight as f64 by key.
fn weight_by_key(g: &Graph, key: &(String, String)) -> Result<Tensor> {
    Ok(param_of(g, &key.0, &key.1)?.tensor().to_dtype(DType::F64)?)
}

/// What one gradient of [`each_gradient`] is taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GradOf {
    /// the mean loss of one calibration batch
    Batch,
    /// the loss of one sample (its batch split into batches of one: one backward pass each; exact,
    /// since eval mode makes samples independent)
    Sample,
}

/// Calls `f(samples, grads)` for every calibration batch (or every sample of every batch) in
/// order, with the weight gradients of the mean loss over those `samples`.
fn each_gradient(
    g: &Graph,
    calib: &Calibration,
    what: &str,
    of: GradOf,
    mut f: impl FnMut(usize, Grads) -> Result<()>,
) -> Result<()> {
    check_model(g, what)?;
    let mut exec = Executor::new(0);
    for b in &calib.batches {
        let n = b.target.dim(0)?;
        match of {
            GradOf::Batch => f(n, batch_grads(g, &mut exec, b, &calib.loss, what)?)?,
            GradOf::Sample => {
                for i in 0..n {
                    let one = Batch {
                        inputs: b
                            .inputs
                            .iter()
                            .map(|x| x.narrow(0, i, 1))
                            .collect::<candle_core::Result<_>>()?,
                        target: b.target.narrow(0, i, 1)?,
                    };
                    f(1, batch_grads(g, &mut exec, &one, &calib.loss, what)?)?;
                }
            }
        }
    }
    Ok(())
}

/// Per weight, the sum over [`each_gradient`] of `term(samples, key, gradient)`; with the
/// samples and the number of gradients seen.
fn sum_over_gradients(
    g: &Graph,
    calib: &Calibration,
    what: &str,
    of: GradOf,
    mut term: impl FnMut(usize, &(String, String), Tensor) -> Result<Tensor>,
) -> Result<(Grads, usize, usize)> {
    let (mut sums, mut samples, mut seen): (Grads, usize, usize) = (HashMap::new(), 0, 0);
    each_gradient(g, calib, what, of, |n, grads| {
        samples += n;
        seen += 1;
        for (k, gr) in grads {
            let t = term(n, &k, gr)?;
            let v = match sums.remove(&k) {
                Some(a) => (a + t)?,
                None => t,
            };
            sums.insert(k, v);
        }
        Ok(())
    })?;
    Ok((sums, samples, seen))
}

type Scores = HashMap<(String, String), Tensor>;

/// The cached scores of one weight: the element-wise importance, and for criteria with several
/// terms (Taylor: one per batch) the per-term sums along every axis (`[axis][term][index]`).
#[derive(Clone, Debug)]
struct Entry {
    importance: Tensor,
    slices: Option<Vec<Vec<Vec<f64>>>>,
}

type Entries = HashMap<(String, String), Entry>;

/// What a data criterion's `scores` may return: element-wise importance per weight (one term),
/// or full entries.
trait IntoEntries {
    fn into_entries(self) -> Entries;
}

impl IntoEntries for Scores {
    fn into_entries(self) -> Entries {
        self.into_iter()
            .map(|(k, importance)| {
                let e = Entry {
                    importance,
                    slices: None,
                };
                (k, e)
            })
            .collect()
    }
}

impl IntoEntries for Entries {
    fn into_entries(self) -> Entries {
        self
    }
}

/// Names, shape and (sum, sum of squares) of every parameter: scores computed for one
/// fingerprint are stale for another.
type Fingerprint = Vec<(String, String, Vec<usize>, f64, f64)>;

fn fingerprint(g: &Graph) -> Result<Fingerprint> {
    g.params()
        .map(|(n, k, p)| {
            let t = p.tensor().to_dtype(DType::F64)?;
            Ok((
                n.name.clone(),
                k.clone(),
                t.dims().to_vec(),
                t.sum_all()?.to_scalar::<f64>()?,
                t.sqr()?.sum_all()?.to_scalar::<f64>()?,
            ))
        })
        .collect()
}

/// Scores of a data criterion for the model state they were computed on.
#[derive(Debug, Default)]
struct ScoreCache(Mutex<Option<(Fingerprint, Entries)>>);

impl ScoreCache {
    fn lock(&self) -> MutexGuard<'_, Option<(Fingerprint, Entries)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Recomputes the scores when `g` differs from the model they were computed on.
    fn refresh(&self, g: &Graph, compute: impl FnOnce() -> Result<Entries>) -> Result<()> {
        let fp = fingerprint(g)?;
        let mut slot = self.lock();
        if slot.as_ref().is_some_and(|(old, _)| *old == fp) {
            return Ok(());
        }
        *slot = Some((fp, compute()?));
        Ok(())
    }
    /// The cached scores of a parameter if present and of the parameter's current shape.
    fn get(&self, g: &Graph, node: &str, param: &str) -> Result<Lookup> {
        let p = param_of(g, node, param)?;
        let slot = self.lock();
        let Some((_, scores)) = slot.as_ref() else {
            return Ok(Lookup::Stale);
        };
        match scores.get(&(node.to_string(), param.to_string())) {
            Some(e) if e.importance.dims() == p.tensor().dims() => Ok(Lookup::Found(e.clone())),
            Some(_) => Ok(Lookup::Stale),
            None => Ok(Lookup::Absent),
        }
    }
}

enum Lookup {
    Found(Entry),
    Absent,
    Stale,
}

/// A criterion computed from calibration batches: `compute` maps the model to its scores.
trait DataScores {
    fn what(&self) -> &'static str;
    fn cache(&self) -> &ScoreCache;
    fn compute(&self, g: &Graph) -> Result<Entries>;

    fn refresh(&self, g: &Graph) -> Result<()> {
        self.cache().refresh(g, || self.compute(g))
    }
    /// The scores of a parameter, recomputed first when the cached ones have another shape (the
    /// model was pruned structurally since).
    fn lookup(&self, g: &Graph, node: &str, param: &str) -> Result<Option<Entry>> {
        for _ in 0..2 {
            match self.cache().get(g, node, param)? {
                Lookup::Found(e) => return Ok(Some(e)),
                Lookup::Absent => return Ok(None),
                Lookup::Stale => self.refresh(g)?,
            }
        }
        Err(PruneError::Invalid(format!(
            "criterion `{}`: no scores of the current shape for `{node}.{param}`",
            self.what()
        )))
    }
}

/// A criterion computed from calibration data: the struct (its calibration and score cache), its
/// constructor and the cache plumbing around the type's `scores(&self, g)` (returning [`Scores`]
/// or [`Entries`]). The second form also implements [`Criterion`] for one additive term with
/// `reduce` = `$reduce` (and optionally `whole_unit`).
macro_rules! data_criterion {
    (@base $(#[$doc:meta])* $t:ident, $name:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $t {
            calib: Calibration,
            cache: ScoreCache,
        }

        impl $t {
            /// Computes the scores of `g` over `calib` (recomputed by `prepare` when the model
            /// changes).
            pub fn new(g: &Graph, calib: &Calibration) -> Result<Self> {
                check_model(g, $name)?;
                let c = Self {
                    calib: calib.clone(),
                    cache: ScoreCache::default(),
                };
                c.refresh(g)?;
                Ok(c)
            }
        }

        impl DataScores for $t {
            fn what(&self) -> &'static str {
                $name
            }
            fn cache(&self) -> &ScoreCache {
                &self.cache
            }
            fn compute(&self, g: &Graph) -> Result<Entries> {
                Ok(self.scores(g)?.into_entries())
            }
        }
    };
    ($(#[$doc:meta])* $t:ident, $name:literal, $reduce:expr $(, whole_unit = $whole:expr)?) => {
        data_criterion!(@base $(#[$doc])* $t, $name);

        impl Criterion for $t {
            fn name(&self) -> &'static str {
                $name
            }
            fn importance(&self, g: &Graph, node: &str, param: &str) -> Result<Option<Tensor>> {
                Ok(self.lookup(g, node, param)?.map(|e| e.importance))
            }
            fn reduce(&self, sum: f64) -> f64 {
                let f: fn(f64) -> f64 = $reduce;
                f(sum)
            }
            fn prepare(&self, g: &Graph) -> Result<()> {
                self.refresh(g)
            }
            $(fn whole_unit(&self) -> bool {
                $whole
            })?
        }
    };
}

impl Taylor {
    /// Per weight: (1/B) sum_b (w g_b)^2, and the per-batch sums of w g_b along every axis.
    fn scores(&self, g: &Graph) -> Result<Entries> {
        let mut slices: HashMap<(String, String), Vec<Vec<Vec<f64>>>> = HashMap::new();
        let (squares, _, batches) =
            sum_over_gradients(g, &self.calib, "taylor", GradOf::Batch, |_, k, gr| {
                let wg = (weight_by_key(g, k)? * gr)?;
                let per_axis = slices
                    .entry(k.clone())
                    .or_insert_with(|| vec![Vec::new(); wg.rank()]);
                for (axis, terms) in per_axis.iter_mut().enumerate() {
                    terms.push(sums_along(&wg, axis)?);
                }
                Ok(wg.sqr()?)
            })?;
        let inv = 1.0 / batches.max(1) as f64;
        squares
            .into_iter()
            .map(|(k, sq)| {
                let e = Entry {
                    importance: sq.affine(inv, 0.0)?,
                    slices: slices.remove(&k),
                };
                Ok((k, e))
            })
            .collect()
    }
}
data_criterion!(@base
    /// First-order Taylor importance (Molchanov et al. 2019, "Importance Estimation for Neural
    /// Network Pruning"): with g_b the gradient of calibration batch b's mean loss (B batches), a
    /// weight scores (1/B) sum_b (w g_b)^2, and a structured unit S (every weight of every slice
    /// it owns: its filters, the next layer's input columns, BatchNorm scales, ...) scores the
    /// group importance (1/B) sum_b (sum_{w in S} w g_b)^2: the squared first-order estimate of
    /// the loss change from removing S, averaged over batches ([`Criterion::whole_unit`]).
    Taylor,
    "taylor");

impl Criterion for Taylor {
    fn name(&self) -> &'static str {
        "taylor"
    }
    fn importance(&self, g: &Graph, node: &str, param: &str) -> Result<Option<Tensor>> {
        Ok(self.lookup(g, node, param)?.map(|e| e.importance))
    }
    fn prepare(&self, g: &Graph) -> Result<()> {
        self.refresh(g)
    }
    /// Per batch b, the sums of w g_b along `axis`.
    fn slice_terms(
        &self,
        g: &Graph,
        node: &str,
        param: &str,
        axis: usize,
    ) -> Result<Option<Vec<Vec<f64>>>> {
        let Some(e) = self.lookup(g, node, param)? else {
            return Ok(None);
        };
        let mut slices = e.slices.ok_or_else(|| {
            PruneError::Invalid(format!("taylor: no per-batch sums for `{node}.{param}`"))
        })?;
        if axis >= slices.len() {
            return Err(PruneError::Invalid(format!(
                "taylor: `{node}.{param}` has no axis {axis}"
            )));
        }
        Ok(Some(slices.swap_remove(axis)))
    }
    /// The mean over batches of the squared per-batch sums.
    fn reduce_terms(&self, sums: &[f64]) -> f64 {
        sums.iter().map(|s| s * s).sum::<f64>() / sums.len().max(1) as f64
    }
    fn whole_unit(&self) -> bool {
        true
    }
}

impl Fisher {
    /// Per weight: 0.5 w^2 (1/N) sum_i g_i^2 over the N calibration samples.
    fn scores(&self, g: &Graph) -> Result<Scores> {
        let (squares, samples, _) =
            sum_over_gradients(g, &self.calib, "fisher", GradOf::Sample, |_, _, gr| {
                Ok(gr.sqr()?)
            })?;
        let scale = 0.5 / samples.max(1) as f64;
        squares
            .into_iter()
            .map(|(k, s)| {
                let w = weight_by_key(g, &k)?;
                Ok((k, (w.sqr()? * s)?.affine(scale, 0.0)?))
            })
            .collect()
    }
}
data_criterion!(
    /// Optimal brain damage (LeCun et al. 1990) with the empirical Fisher as the Hessian diagonal:
    /// importance = 0.5 * w^2 * (1/N) sum_i g_i^2, g_i the gradient of calibration sample i's loss
    /// alone (one backward pass per sample; N samples), the estimated loss increase from zeroing
    /// w. A structured unit scores the sum of its elements' importance (OBD saliency is
    /// additive), whatever the aggregate.
    Fisher,
    "fisher", |s| s, whole_unit = true);

impl Snip {
    /// Per weight: |w g_all| / sum over the model, g_all the gradient of the mean loss over every
    /// calibration sample (each batch's mean gradient weighted by its size).
    fn scores(&self, g: &Graph) -> Result<Scores> {
        let (sums, samples, _) =
            sum_over_gradients(g, &self.calib, "snip", GradOf::Batch, |n, _, gr| {
                Ok(gr.affine(n as f64, 0.0)?)
            })?;
        let inv = 1.0 / samples.max(1) as f64;
        let mut scores: Scores = HashMap::new();
        let mut total = 0.0;
        for (k, gsum) in sums {
            let s = (weight_by_key(g, &k)? * gsum.affine(inv, 0.0)?)?.abs()?;
            total += s.sum_all()?.to_scalar::<f64>()?;
            scores.insert(k, s);
        }
        if total > 0.0 {
            for s in scores.values_mut() {
                *s = s.affine(1.0 / total, 0.0)?;
            }
        }
        Ok(scores)
    }
}
data_criterion!(
    /// Connection sensitivity (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on
    /// Connection Sensitivity"), meant at initialisation: |w * g| with g the gradient of the mean
    /// loss over every calibration batch (the batch-size-weighted mean of the batch gradients) at
    /// the current weights, normalised to sum 1 over every weight of the model.
    Snip,
    "snip", |s| s);

/// How a weight's input features map onto its columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feature {
    /// the last axis of the input is the weight's axis 1 (Linear, attention, recurrent)
    Last,
    /// axis 1 of the batched input is the kernel's axis 1, with this many groups (convolutions)
    Channel(usize),
}

/// The weights Wanda scores on a node of this op, each with how its input's features are taken:
/// every weight matrix that multiplies an activation. The op reports each one's input during the
/// forward pass ([`prunekit_graph::Ctx::report_weight_input`]), including inputs internal to the
/// op: attention's concatenated head outputs (o_weight), the hidden states h_{t-1} (weight_hh).
/// Embedding tables are lookups, not products with an activation, and are not scored (Sun et al.
/// prune the linear layers only).
fn wanda_params(op: &Op) -> Vec<(&'static str, Feature)> {
    match op {
        Op::Linear(_) => vec![("weight", Feature::Last)],
        Op::Conv2d(c) => vec![("weight", Feature::Channel(c.groups))],
        Op::Conv1d(c) => vec![("weight", Feature::Channel(c.groups))],
        Op::Attention(_) => ["q_weight", "k_weight", "v_weight", "o_weight"]
            .map(|p| (p, Feature::Last))
            .to_vec(),
        Op::Lstm(_) | Op::Gru(_) => {
            vec![("weight_ih", Feature::Last), ("weight_hh", Feature::Last)]
        }
        _ => Vec::new(),
    }
}

/// Per-feature sums of squares of a batched input piece.
fn feature_sumsq(x: &Tensor, feature: Feature) -> Result<Vec<f64>> {
    let x = x.to_dtype(DType::F64)?.sqr()?;
    Ok(match feature {
        Feature::Last => {
            let f = x.dims().last().copied().unwrap_or(0);
            x.reshape(((), f))?.sum(0)?.to_vec1::<f64>()?
        }
        Feature::Channel(_) => sums_along(&x, 1)?,
    })
}

/// ||X_j||_2 per input feature of one weight, broadcast to the weight's shape `dims`: along axis
/// 1 for matrices ([out, in]); along the input channels of each group for kernels ([out, in /
/// groups, k..]).
fn wanda_scale(
    name: &str,
    dims: &[usize],
    feature: Feature,
    norms: &[f64],
    device: &Device,
) -> Result<Tensor> {
    let mismatch = |what: String| {
        PruneError::Invalid(format!(
            "wanda: `{name}` has shape {dims:?} but its input has {} features{what}",
            norms.len()
        ))
    };
    let mut shape = vec![1usize; dims.len()];
    match feature {
        Feature::Last => {
            let inf = dims.get(1).copied().unwrap_or(0);
            if dims.len() != 2 || inf != norms.len() {
                return Err(mismatch(String::new()));
            }
            shape[1] = inf;
            Ok(Tensor::from_vec(norms.to_vec(), shape, device)?)
        }
        Feature::Channel(groups) => {
            let (out, per) = (dims[0], dims.get(1).copied().unwrap_or(0));
            let groups = groups.max(1);
            if per * groups != norms.len() || out % groups != 0 {
                return Err(mismatch(format!(" in {groups} group(s)")));
            }
            let out_per_group = out / groups;
            let v: Vec<f64> = (0..out)
                .flat_map(|o| {
                    let base = (o / out_per_group) * per;
                    norms[base..base + per].iter().copied()
                })
                .collect();
            shape[0] = out;
            shape[1] = per;
            Ok(Tensor::from_vec(v, shape, device)?)
        }
    }
}

impl Wanda {
    fn scores(&self, g: &Graph) -> Result<Scores> {
        let mut targets: HashMap<(String, String), Feature> = HashMap::new();
        for n in &g.nodes {
            for (param, feature) in wanda_params(&n.op) {
                if n.params.get(param).is_some_and(|p| p.role == Role::Weight) {
                    targets.insert((n.name.clone(), param.to_string()), feature);
                }
            }
        }
        let mut sumsq: HashMap<(String, String), Vec<f64>> = HashMap::new();
        let mut exec = Executor::new(0);
        for b in &self.calib.batches {
            let mut hooks = Hooks::weight_inputs_of(targets.keys().cloned());
            exec.run(
                g,
                &model_inputs(g, &b.inputs)?,
                Mode::EVAL,
                Some(&mut hooks),
            )?;
            for (key, pieces) in hooks.weight_inputs {
                let Some(&feature) = targets.get(&key) else {
                    continue;
                };
                for piece in pieces {
                    let s = feature_sumsq(&piece, feature)?;
                    let acc = sumsq
                        .entry(key.clone())
                        .or_insert_with(|| vec![0.0; s.len()]);
                    if acc.len() != s.len() {
                        return Err(PruneError::Invalid(format!(
                            "wanda: the input of `{}.{}` changed from {} to {} features between \
                             pieces",
                            key.0,
                            key.1,
                            acc.len(),
                            s.len()
                        )));
                    }
                    acc.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
                }
            }
        }
        let mut scores = HashMap::new();
        for (key, ss) in sumsq {
            let feature = targets[&key];
            let Some(w) = weight_f64(g, &key.0, &key.1)? else {
                continue;
            };
            let norms: Vec<f64> = ss.iter().map(|v| v.sqrt()).collect();
            let name = format!("{}.{}", key.0, key.1);
            let scale = wanda_scale(&name, w.dims(), feature, &norms, w.device())?;
            scores.insert(key, w.abs()?.broadcast_mul(&scale)?);
        }
        Ok(scores)
    }
}
data_criterion!(
    /// Wanda (Sun et al. 2024, "A Simple and Effective Pruning Approach for Large Language
    /// Models", eq. 1): importance = |W_ij| * ||X_j||_2, X_j being input feature j of the weight
    /// over every calibration sample and position. Every weight matrix that multiplies an
    /// activation is scored, each with its own input as the op reports it (see
    /// [`prunekit_graph::Hooks`]): Linear weights; attention's q, k, v (the layer input) and o
    /// (the concatenated head outputs); recurrent weight_ih (the input sequence) and weight_hh
    /// (h_{t-1} over every step with a recurrent term); convolutions use each input channel's
    /// norm over samples and positions, broadcast over the kernel (and following the group
    /// structure). Embedding tables give None (unstructured pruning lists them as left out).
    /// Meant for unstructured pruning compared within each output row
    /// ([`crate::UnstructuredScope::Row`], the default scope for `wanda`).
    Wanda,
    "wanda", |s| s);

/// Movement pruning (Sanh et al. 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning"): the
/// importance of a weight is -sum_t w_t g_t accumulated over steps t (before the optimizer moves
/// it): higher means the weight moved away from zero, so it is kept. Accumulate over fine-tuning
/// with the training hook (`impl StepHook for Movement` in `prunekit_train`, which calls
/// [`Movement::observe`]), or from calibration batches ([`Movement::from_calibration`]).
#[derive(Debug, Default)]
pub struct Movement {
    scores: Scores,
    steps: usize,
}

impl Movement {
    /// No steps seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The movement of one infinitesimal gradient step per calibration batch: -w * g summed over
    /// the batches at the current weights (eval mode).
    pub fn from_calibration(g: &Graph, calib: &Calibration) -> Result<Self> {
        let mut m = Self::new();
        each_gradient(g, calib, "movement", GradOf::Batch, |_, grads| {
            m.accumulate(g, &grads)
        })?;
        Ok(m)
    }

    /// Adds -w * g for every weight of `g` that `grads` (a backward pass over `g`) holds, and
    /// counts a step.
    pub fn observe(&mut self, g: &Graph, grads: &GradStore) -> Result<()> {
        let grads = weight_grads(g, grads)?;
        self.accumulate(g, &grads)
    }

    /// Adds -w * g for every weight in `grads` ((node, param) -> gradient) and counts a step.
    pub fn accumulate(
        &mut self,
        g: &Graph,
        grads: &HashMap<(String, String), Tensor>,
    ) -> Result<()> {
        for (k, gr) in grads {
            let p = param_of(g, &k.0, &k.1)?;
            if p.role != Role::Weight {
                continue;
            }
            let s = (p.tensor().to_dtype(DType::F64)? * gr.to_dtype(DType::F64)?)?.neg()?;
            let v = match self.scores.remove(k) {
                Some(acc) if acc.dims() == s.dims() => (acc + s)?,
                Some(acc) => {
                    return Err(PruneError::Invalid(format!(
                        "movement: scores of `{}.{}` have shape {:?} but the weight now has {:?} \
                         (the model was pruned structurally); start a new Movement",
                        k.0,
                        k.1,
                        acc.dims(),
                        s.dims()
                    )))
                }
                None => s,
            };
            self.scores.insert(k.clone(), v);
        }
        self.steps += 1;
        Ok(())
    }

    /// Steps (or calibration batches) accumulated.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The accumulated scores by (node, param).
    pub fn scores(&self) -> &HashMap<(String, String), Tensor> {
        &self.scores
    }
}

impl Criterion for Movement {
    fn name(&self) -> &'static str {
        "movement"
    }
    fn importance(&self, g: &Graph, node: &str, param: &str) -> Result<Option<Tensor>> {
        let p = param_of(g, node, param)?;
        if self.steps == 0 {
            return Err(PruneError::Invalid(
                "movement has no scores yet: pass it to fit_with as a step hook (or build it from \
                 calibration data) before pruning"
                    .into(),
            ));
        }
        match self.scores.get(&(node.to_string(), param.to_string())) {
            Some(s) if s.dims() == p.tensor().dims() => Ok(Some(s.clone())),
            Some(s) => Err(PruneError::Invalid(format!(
                "movement: scores of `{node}.{param}` have shape {:?} but the weight now has {:?} \
                 (the model was pruned structurally since they were accumulated)",
                s.dims(),
                p.tensor().dims()
            ))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prunekit_graph::GraphBuilder;

    fn mlp() -> Graph {
        let mut b = GraphBuilder::new("mlp", 3);
        let x = b.input("x", &[6]);
        let h = b.linear(&x, 5).unwrap();
        let h = b.relu(&h).unwrap();
        let y = b.linear(&h, 3).unwrap();
        b.finish(&[&y]).unwrap()
    }

    #[test]
    fn lamp_matches_the_formula() {
        let w = [0.5, -2.0, 1.0, 0.0, -1.0, 3.0];
        let s = lamp_scores(&w);
        // ascending by w^2 (ties by position): 0.0, 0.5, 1.0(idx2), -1.0(idx4), -2.0, 3.0
        let tail = |from: &[f64]| from.iter().map(|x| x * x).sum::<f64>();
        let order = [3usize, 0, 2, 4, 1, 5];
        for (i, &u) in order.iter().enumerate() {
            let rest: Vec<f64> = order[i..].iter().map(|&v| w[v]).collect();
            let want = if tail(&rest) > 0.0 {
                w[u] * w[u] / tail(&rest)
            } else {
                0.0
            };
            assert!((s[u] - want).abs() < 1e-15, "{u}: {} vs {want}", s[u]);
        }
        // the largest weight always scores 1
        assert_eq!(s[5], 1.0);
    }

    #[test]
    fn random_is_reproducible_and_seeded() {
        let g = mlp();
        let a = RandomScores::new(7)
            .importance(&g, "linear1", "weight")
            .unwrap()
            .unwrap();
        let b = RandomScores::new(7)
            .importance(&g, "linear1", "weight")
            .unwrap()
            .unwrap();
        let c = RandomScores::new(8)
            .importance(&g, "linear1", "weight")
            .unwrap()
            .unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(v(&a), v(&b));
        assert_ne!(v(&a), v(&c));
        assert!(v(&a).iter().all(|x| (0.0..1.0).contains(x)));
        assert!(RandomScores::new(7)
            .importance(&g, "linear1", "bias")
            .unwrap()
            .is_none());
    }

    #[test]
    fn names_and_missing_data() {
        let g = mlp();
        for name in CRITERIA {
            let r = criterion_by_name(name, &g, None, 0);
            if DATA_CRITERIA.contains(name) {
                let msg = r.err().expect("needs data").to_string();
                assert!(
                    msg.contains(name) && msg.contains("calibration data"),
                    "{msg}"
                );
            } else {
                assert_eq!(r.unwrap().name(), *name);
            }
        }
        let msg = criterion_by_name("obd", &g, None, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("obd") && msg.contains("taylor, fisher"),
            "{msg}"
        );
    }

    #[test]
    fn bn_scale_rejects_bad_lambda() {
        assert!(BnScale::new(-1.0).is_err());
        assert!(BnScale::new(f64::NAN).is_err());
        assert!(BnScale::new(1e-4).is_ok());
    }
}
