//! Unstructured pruning by any [`Criterion`]: masks over the prunable weights (every weight of
//! rank >= 2, [`prunekit_graph::Param::is_prunable_weight`]), per layer, across all layers, within
//! each output row, or N:M along the input dimension. An element's score is
//! `criterion.reduce(importance)`; the lowest go.
//!
//! - Weights that are already masked stay masked and count as pruned.
//! - Weights the criterion gives no importance (None: Wanda on an embedding table, nodes a recipe
//!   excludes) are left as they are, listed in [`UnstructuredReport::left_out`], and the ratio is
//!   over the weights actually scored.
//! - No output row is ever emptied: the highest-scoring live weight of every row (index along
//!   axis 0: a neuron, a filter, a gate unit) is never pruned, so no layer loses every weight
//!   whatever the scales of the layers. Per layer and globally the ratio is still met exactly by
//!   pruning the next-lowest weights elsewhere; [`UnstructuredReport::rows_kept`] counts the rows
//!   this saved.
//!
//! Which criteria compare across layers ([`UnstructuredScope::Global`]) safely: those invariant to
//! rescaling one layer by a and the next by 1/a (which leaves a ReLU network's function unchanged):
//! [`SCALE_SAFE_CRITERIA`]. Raw magnitudes (`l1`, `l2`) and Wanda are not: compare them per layer or
//! per row. The default for global scope is LAMP ([`default_unstructured_criterion`]).

use std::ops::Deref;

use candle_core::{DType, Tensor};
use prunekit_graph::{count_zeros, Graph};
use serde::Serialize;

use crate::criteria::{param_of, Criterion};
use crate::magnitude::{prunable_weights, LayerSparsity, Scope, Target};
use crate::{check_ratio, PruneError, Result};

/// Where a ratio applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnstructuredScope {
    /// every weight tensor reaches the ratio
    Layer,
    /// the ratio holds over all scored weights together
    Global,
    /// every output row (index along axis 0) of every weight reaches the ratio (Wanda)
    Row,
}

impl UnstructuredScope {
    /// The name recipes and the CLI use: `layer`, `global`, `row`.
    pub fn name(self) -> &'static str {
        match self {
            UnstructuredScope::Layer => "layer",
            UnstructuredScope::Global => "global",
            UnstructuredScope::Row => "row",
        }
    }
}

impl From<Scope> for UnstructuredScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Layer => UnstructuredScope::Layer,
            Scope::Global => UnstructuredScope::Global,
        }
    }
}

/// Criteria whose scores compare across layers: invariant to rescaling a layer's weights by a and
/// the next layer's by 1/a (a function-preserving change in ReLU networks), or drawn uniformly.
/// LAMP normalises within each layer (Lee et al. 2021); the gradient saliencies are products w*g
/// (w scales by a, g by 1/a).
pub const SCALE_SAFE_CRITERIA: &[&str] =
    &["lamp", "random", "taylor", "fisher", "snip", "movement"];

/// The criterion unstructured pruning uses when none is named: LAMP for global scope (raw
/// magnitudes across layers of different scale empty the small-scale layers first), magnitude
/// (`l1`) per layer and per row.
pub fn default_unstructured_criterion(scope: UnstructuredScope) -> &'static str {
    match scope {
        UnstructuredScope::Global => "lamp",
        UnstructuredScope::Layer | UnstructuredScope::Row => "l1",
    }
}

/// The scope unstructured pruning uses when none is named: per output row for `wanda` (as Sun et
/// al. 2024 compare), per layer otherwise.
pub fn default_unstructured_scope(criterion: &str) -> UnstructuredScope {
    if criterion == "wanda" {
        UnstructuredScope::Row
    } else {
        UnstructuredScope::Layer
    }
}

/// A prunable weight a pass left as it was, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    pub node: String,
    pub param: String,
    pub reason: String,
}

/// What an unstructured or N:M pass did. Derefs to the per-weight sparsity of the weights it
/// scored (their zeros after the pass, earlier masks included).
#[derive(Clone, Debug, Default, Serialize)]
pub struct UnstructuredReport {
    /// every scored weight after the pass
    pub layers: Vec<LayerSparsity>,
    /// prunable weights left dense (not scored, or N:M not applicable), with the reason
    pub left_out: Vec<LeftOut>,
    /// output rows that would have lost every weight and keep their highest-scoring one
    pub rows_kept: usize,
}

impl UnstructuredReport {
    /// Zeros and elements over the scored weights.
    pub fn counts(&self) -> (usize, usize) {
        self.layers
            .iter()
            .fold((0, 0), |(z, t), l| (z + l.zeros, t + l.total))
    }
    /// Fraction of the scored weights that are zero: the ratio a pass reached.
    pub fn sparsity(&self) -> f64 {
        let (z, t) = self.counts();
        if t == 0 {
            0.0
        } else {
            z as f64 / t as f64
        }
    }
    /// One line per note a user should see: weights left out, rows kept by the floor.
    pub fn notes(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .left_out
            .iter()
            .map(|l| format!("{}.{} left dense: {}", l.node, l.param, l.reason))
            .collect();
        if self.rows_kept > 0 {
            out.push(format!(
                "{} output row(s) would have lost every weight and keep their highest-scoring one \
                 (no row or layer is ever emptied)",
                self.rows_kept
            ));
        }
        out
    }
}

impl Deref for UnstructuredReport {
    type Target = [LayerSparsity];
    fn deref(&self) -> &[LayerSparsity] {
        &self.layers
    }
}

impl<'a> IntoIterator for &'a UnstructuredReport {
    type Item = &'a LayerSparsity;
    type IntoIter = std::slice::Iter<'a, LayerSparsity>;
    fn into_iter(self) -> Self::IntoIter {
        self.layers.iter()
    }
}

/// One scored weight: element scores (already-masked elements at -inf).
struct Scored {
    node: String,
    param: String,
    dims: Vec<usize>,
    scores: Vec<f64>,
}

impl Scored {
    /// Elements per output row (index along axis 0).
    fn row_len(&self) -> usize {
        self.scores.len() / self.dims.first().copied().unwrap_or(1).max(1)
    }
}

/// Scores of every prunable weight the criterion covers, and the prunable weights it does not.
fn score_weights(g: &Graph, criterion: &dyn Criterion) -> Result<(Vec<Scored>, Vec<LeftOut>)> {
    let names = prunable_weights(g);
    if names.is_empty() {
        return Err(PruneError::Invalid(
            "the model has no prunable weights".into(),
        ));
    }
    criterion.prepare(g)?;
    let mut out = Vec::with_capacity(names.len());
    let mut left_out = Vec::new();
    for (n, k) in &names {
        match score_one(g, criterion, n, k)? {
            Some(s) => out.push(s),
            None => left_out.push(LeftOut {
                node: n.clone(),
                param: k.clone(),
                reason: format!("criterion `{}` gives it no score", criterion.name()),
            }),
        }
    }
    if out.is_empty() {
        return Err(PruneError::Invalid(format!(
            "criterion `{}` scores none of the prunable weights ({}); use it for structured pruning \
             or pick another criterion",
            criterion.name(),
            names
                .iter()
                .map(|(n, k)| format!("{n}.{k}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok((out, left_out))
}

/// The element scores of one weight (masked elements at -inf), or None when the criterion gives
/// it no importance. The caller has prepared the criterion.
fn score_one(g: &Graph, criterion: &dyn Criterion, n: &str, k: &str) -> Result<Option<Scored>> {
    let Some(imp) = criterion.importance(g, n, k)? else {
        return Ok(None);
    };
    let p = param_of(g, n, k)?;
    let dims = p.tensor().dims().to_vec();
    if imp.dims() != dims.as_slice() {
        return Err(PruneError::Invalid(format!(
            "criterion `{}` gave importance of shape {:?} for `{n}.{k}` of shape {dims:?}",
            criterion.name(),
            imp.dims()
        )));
    }
    let mut scores: Vec<f64> = imp
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?
        .into_iter()
        .map(|v| criterion.reduce(v))
        .collect();
    if scores.iter().any(|v| v.is_nan()) {
        return Err(PruneError::Invalid(format!(
            "criterion `{}` gave a NaN score for `{n}.{k}`",
            criterion.name()
        )));
    }
    if let Some(m) = &p.mask {
        let m = m.eq(0.0)?.flatten_all()?.to_vec1::<u8>()?;
        for (s, masked) in scores.iter_mut().zip(m) {
            if masked != 0 {
                *s = f64::NEG_INFINITY;
            }
        }
    }
    Ok(Some(Scored {
        node: n.to_string(),
        param: k.to_string(),
        dims,
        scores,
    }))
}

/// Masks the `count` lowest-scoring elements of one weight (earlier masks kept and counted; the
/// best weight of every output row kept): the per-weight step of sensitivity analysis. Errors
/// when the criterion does not score the weight.
pub(crate) fn prune_one(
    g: &mut Graph,
    criterion: &dyn Criterion,
    node: &str,
    param: &str,
    count: usize,
) -> Result<LayerSparsity> {
    criterion.prepare(g)?;
    let s = score_one(g, criterion, node, param)?.ok_or_else(|| {
        PruneError::Invalid(format!(
            "criterion `{}` does not score `{node}.{param}`",
            criterion.name()
        ))
    })?;
    let mut protected = vec![false; s.scores.len()];
    protect_row_best(&s.scores, s.row_len(), &mut protected);
    let (keep, _) = smallest_k(&s.scores, &protected, count);
    let s = [s];
    Ok(write_masks(g, &s, vec![keep])?.remove(0))
}

/// The order every selection uses: by score, ties by position.
fn before(values: &[f64], a: usize, b: usize) -> std::cmp::Ordering {
    values[a].total_cmp(&values[b]).then(a.cmp(&b))
}

/// The floor of every row of `row_len` elements of `values` (offset by `base` in the flags):
/// marks in `protected` the last element of each row in the selection order (highest score, then
/// latest position) among its live elements (score > -inf); rows with none stay unprotected.
fn protect_row_best(values: &[f64], row_len: usize, protected: &mut [bool]) {
    if row_len == 0 {
        return;
    }
    for (r, row) in values.chunks(row_len).enumerate() {
        let best = (0..row.len())
            .filter(|&i| row[i] > f64::NEG_INFINITY)
            .max_by(|&a, &b| before(row, a, b));
        if let Some(i) = best {
            protected[r * row_len + i] = true;
        }
    }
}

/// Keep-flags (1 keep, 0 prune) pruning the `k` lowest of `values` (ties by position) outside
/// `protected` (at most every unprotected one); and how many protected elements are among the `k`
/// lowest overall (the rows the floor saved).
fn smallest_k(values: &[f64], protected: &[bool], k: usize) -> (Vec<f32>, usize) {
    let mut keep = vec![1f32; values.len()];
    if k == 0 || values.is_empty() {
        return (keep, 0);
    }
    let mut all: Vec<usize> = (0..values.len()).collect();
    let cut = if k < all.len() {
        all.select_nth_unstable_by(k - 1, |&a, &b| before(values, a, b));
        Some(all[k - 1])
    } else {
        None
    };
    let saved = (0..values.len())
        .filter(|&i| protected[i])
        .filter(|&i| cut.is_none_or(|c| before(values, i, c).is_le()))
        .count();
    let mut pool: Vec<usize> = (0..values.len()).filter(|&i| !protected[i]).collect();
    let k = k.min(pool.len());
    if k > 0 && k < pool.len() {
        pool.select_nth_unstable_by(k - 1, |&a, &b| before(values, a, b));
    }
    for &i in pool.iter().take(k) {
        keep[i] = 0.0;
    }
    (keep, saved)
}

/// Sets `keep` (times any earlier mask) as the mask of every scored weight; returns the sparsity.
fn write_masks(
    g: &mut Graph,
    scored: &[Scored],
    keeps: Vec<Vec<f32>>,
) -> Result<Vec<LayerSparsity>> {
    let mut report = Vec::with_capacity(scored.len());
    for (s, keep) in scored.iter().zip(keeps) {
        let p = param_of(g, &s.node, &s.param)?;
        let mut mask = Tensor::from_vec(keep, s.dims.as_slice(), p.tensor().device())?
            .to_dtype(p.tensor().dtype())?;
        if let Some(old) = &p.mask {
            mask = (mask * old)?;
        }
        report.push(LayerSparsity {
            node: s.node.clone(),
            param: s.param.clone(),
            total: mask.elem_count(),
            zeros: count_zeros(&mask)?,
        });
        g.set_mask(&s.node, &s.param, mask)?;
    }
    Ok(report)
}

/// Masks the lowest-scoring weights by `criterion`: a ratio per layer, globally or per output
/// row, or a threshold on the score (score < threshold is pruned). Existing masks are kept; the
/// highest-scoring live weight of every output row is never pruned (see the module docs), and
/// weights the criterion does not score are left dense and listed. Errors: a ratio outside
/// [0, 1), a NaN threshold, a model without prunable weights, a criterion that scores none of
/// them or gives NaN scores.
pub fn prune_unstructured(
    g: &mut Graph,
    criterion: &dyn Criterion,
    target: Target,
    scope: UnstructuredScope,
) -> Result<UnstructuredReport> {
    match target {
        Target::Ratio(r) => check_ratio("unstructured", r)?,
        Target::Threshold(t) if t.is_nan() => {
            return Err(PruneError::Invalid(format!(
                "threshold {t} must be a number"
            )))
        }
        Target::Threshold(_) => {}
    }
    let (scored, left_out) = score_weights(g, criterion)?;
    let count = |r: f64, n: usize| (r * n as f64).round() as usize;
    let floor = |s: &Scored| {
        let mut p = vec![false; s.scores.len()];
        protect_row_best(&s.scores, s.row_len(), &mut p);
        p
    };
    let mut rows_kept = 0;
    let keeps: Vec<Vec<f32>> = match (target, scope) {
        (Target::Threshold(t), _) => scored
            .iter()
            .map(|s| {
                let protected = floor(s);
                s.scores
                    .iter()
                    .zip(&protected)
                    .map(|(&x, &p)| {
                        if x < t && p {
                            rows_kept += 1;
                        }
                        if x < t && !p {
                            0.0
                        } else {
                            1.0
                        }
                    })
                    .collect()
            })
            .collect(),
        (Target::Ratio(r), UnstructuredScope::Layer) => scored
            .iter()
            .map(|s| {
                let (keep, saved) = smallest_k(&s.scores, &floor(s), count(r, s.scores.len()));
                rows_kept += saved;
                keep
            })
            .collect(),
        (Target::Ratio(r), UnstructuredScope::Row) => scored
            .iter()
            .map(|s| {
                let protected = floor(s);
                let len = s.row_len().max(1);
                s.scores
                    .chunks(len)
                    .zip(protected.chunks(len))
                    .flat_map(|(row, p)| {
                        let (keep, saved) = smallest_k(row, p, count(r, row.len()));
                        rows_kept += saved;
                        keep
                    })
                    .collect()
            })
            .collect(),
        (Target::Ratio(r), UnstructuredScope::Global) => {
            let all: Vec<f64> = scored
                .iter()
                .flat_map(|s| s.scores.iter().copied())
                .collect();
            let protected: Vec<bool> = scored.iter().flat_map(floor).collect();
            let (keep, saved) = smallest_k(&all, &protected, count(r, all.len()));
            rows_kept = saved;
            let mut out = Vec::with_capacity(scored.len());
            let mut off = 0;
            for s in &scored {
                out.push(keep[off..off + s.scores.len()].to_vec());
                off += s.scores.len();
            }
            out
        }
    };
    Ok(UnstructuredReport {
        layers: write_masks(g, &scored, keeps)?,
        left_out,
        rows_kept,
    })
}

/// N:M semi-structured sparsity (2:4, 4:8): for every scored weight [out, in, rest..], within
/// each run of `m` consecutive input indices at each (out, rest..) position, the `n` highest
/// scores are kept (ties by position) and the rest masked. A weight whose input size `m` does not
/// divide (a first convolution over 1 or 3 channels, a depthwise kernel) is left dense and listed
/// in [`UnstructuredReport::left_out`]; with `strict` it is an error naming every such weight
/// (nothing is masked then). Errors also: `m == 0`, `n == 0`, `n >= m`, and no weight that N:M
/// applies to.
pub fn prune_nm(
    g: &mut Graph,
    criterion: &dyn Criterion,
    n: usize,
    m: usize,
    strict: bool,
) -> Result<UnstructuredReport> {
    if m == 0 || n == 0 || n >= m {
        return Err(PruneError::Invalid(format!(
            "N:M sparsity needs 0 < N < M, got {n}:{m}"
        )));
    }
    let (scored, mut left_out) = score_weights(g, criterion)?;
    let (fits, misfits): (Vec<Scored>, Vec<Scored>) = scored
        .into_iter()
        .partition(|s| s.dims.get(1).is_some_and(|&input| input % m == 0));
    let describe = |s: &Scored| {
        format!(
            "`{}.{}` (input size {})",
            s.node,
            s.param,
            s.dims.get(1).copied().unwrap_or(0)
        )
    };
    if !misfits.is_empty() && (strict || fits.is_empty()) {
        let list: Vec<String> = misfits.iter().map(describe).collect();
        return Err(PruneError::Invalid(format!(
            "N:M sparsity {n}:{m}: M = {m} does not divide the input size of {} (no padding is \
             done){}",
            list.join(", "),
            if fits.is_empty() {
                "; no weight is left to prune"
            } else {
                "; without strict these are left dense"
            }
        )));
    }
    left_out.extend(misfits.iter().map(|s| LeftOut {
        node: s.node.clone(),
        param: s.param.clone(),
        reason: format!(
            "N:M {n}:{m} needs an input size divisible by M = {m}, it has {}",
            s.dims.get(1).copied().unwrap_or(0)
        ),
    }));
    let keeps = fits
        .iter()
        .map(|s| {
            let (out, input) = (s.dims[0], s.dims[1]);
            let rest: usize = s.dims[2..].iter().product();
            let mut keep = vec![0f32; s.scores.len()];
            let mut group: Vec<usize> = Vec::with_capacity(m);
            for o in 0..out {
                for start in (0..input).step_by(m) {
                    for r in 0..rest {
                        group.clear();
                        group.extend((start..start + m).map(|i| (o * input + i) * rest + r));
                        group.sort_by(|&a, &b| s.scores[b].total_cmp(&s.scores[a]).then(a.cmp(&b)));
                        for &i in &group[..n] {
                            keep[i] = 1.0;
                        }
                    }
                }
            }
            keep
        })
        .collect();
    Ok(UnstructuredReport {
        layers: write_masks(g, &fits, keeps)?,
        left_out,
        rows_kept: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criteria::Norm;
    use prunekit_graph::GraphBuilder;

    fn layer(values: Vec<f32>, out: usize, input: usize) -> Graph {
        let mut b = GraphBuilder::new("one", 0);
        let x = b.input("x", &[input]);
        let y = b.linear(&x, out).unwrap();
        let g = b.finish(&[&y]).unwrap();
        let w = Tensor::from_vec(values, (out, input), &g.device()).unwrap();
        g.node("linear1").unwrap().params["weight"]
            .value
            .set(&w)
            .unwrap();
        g
    }

    fn weights(g: &Graph) -> Vec<f32> {
        g.node("linear1").unwrap().params["weight"]
            .tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn row_scope_prunes_within_each_row() {
        // row 0 is all large, row 1 all small
        let mut g = layer(vec![5.0, 6.0, 7.0, 8.0, 0.1, 0.2, 0.3, 0.4], 2, 4);
        let r = prune_unstructured(
            &mut g,
            &Norm::L1,
            Target::Ratio(0.5),
            UnstructuredScope::Row,
        )
        .unwrap();
        assert_eq!(weights(&g), vec![0.0, 0.0, 7.0, 8.0, 0.0, 0.0, 0.3, 0.4]);
        assert_eq!(r.rows_kept, 0);
        // per layer row 1 would go entirely: it keeps its largest, and row 0 loses one more
        let mut g = layer(vec![5.0, 6.0, 7.0, 8.0, 0.1, 0.2, 0.3, 0.4], 2, 4);
        let r = prune_unstructured(
            &mut g,
            &Norm::L1,
            Target::Ratio(0.5),
            UnstructuredScope::Layer,
        )
        .unwrap();
        assert_eq!(weights(&g), vec![0.0, 6.0, 7.0, 8.0, 0.0, 0.0, 0.0, 0.4]);
        assert_eq!((r.rows_kept, r[0].zeros), (1, 4));
        assert!(r.notes().iter().any(|n| n.contains("1 output row")));
    }

    #[test]
    fn no_row_is_emptied_by_any_target() {
        // rows of one element: a row ratio of 0.75 would empty every row
        let mut g = layer(vec![1.0, 2.0, 3.0, 4.0], 4, 1);
        prune_unstructured(
            &mut g,
            &Norm::L1,
            Target::Ratio(0.75),
            UnstructuredScope::Row,
        )
        .unwrap();
        assert_eq!(weights(&g), vec![1.0, 2.0, 3.0, 4.0]);
        // a threshold above every weight keeps the largest of each row
        let mut g = layer(vec![0.1, 0.3, 0.2, 0.5, 0.4, 0.6], 2, 3);
        let r = prune_unstructured(
            &mut g,
            &Norm::L1,
            Target::Threshold(1.0),
            UnstructuredScope::Layer,
        )
        .unwrap();
        assert_eq!(weights(&g), vec![0.0, 0.3, 0.0, 0.0, 0.0, 0.6]);
        assert_eq!(r.rows_kept, 2);
        // global: the most the floor allows, and an already-empty row stays empty
        let mut g = layer(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3);
        let m = Tensor::new(&[[0f32, 0.0, 0.0], [1.0, 1.0, 1.0]], &g.device()).unwrap();
        g.set_mask("linear1", "weight", m).unwrap();
        prune_unstructured(
            &mut g,
            &Norm::L1,
            Target::Ratio(0.9),
            UnstructuredScope::Global,
        )
        .unwrap();
        assert_eq!(weights(&g), vec![0.0, 0.0, 0.0, 0.0, 0.0, 6.0]);
    }

    #[test]
    fn nm_keeps_the_n_largest_of_every_group() {
        let mut g = layer(vec![1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3], 1, 8);
        let r = prune_nm(&mut g, &Norm::L1, 2, 4, false).unwrap();
        assert_eq!(weights(&g), vec![0.0, -4.0, 3.0, 0.0, 0.5, 0.0, 0.0, 0.3]);
        assert_eq!(r[0].zeros, 4);
        assert!(r.left_out.is_empty());
    }

    #[test]
    fn nm_errors() {
        let mut g = layer(vec![1.0; 6], 1, 6);
        for strict in [false, true] {
            // the only weight does not fit: an error either way
            let msg = prune_nm(&mut g, &Norm::L1, 2, 4, strict)
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("linear1") && msg.contains("input size 6") && msg.contains("M = 4"),
                "{msg}"
            );
        }
        assert!(g.node("linear1").unwrap().params["weight"].mask.is_none());
        for (n, m) in [(4, 4), (5, 4), (1, 0), (0, 4)] {
            assert!(prune_nm(&mut g, &Norm::L1, n, m, false).is_err(), "{n}:{m}");
        }
    }

    #[test]
    fn masked_weights_stay_masked_and_count() {
        let mut g = layer(vec![5.0, 6.0, 7.0, 8.0], 1, 4);
        let m = Tensor::new(&[[1f32, 1.0, 1.0, 0.0]], &g.device()).unwrap();
        g.set_mask("linear1", "weight", m).unwrap();
        // 50%: the masked 8.0 counts, so one more (the smallest, 5.0) goes
        prune_unstructured(
            &mut g,
            &Norm::L1,
            Target::Ratio(0.5),
            UnstructuredScope::Layer,
        )
        .unwrap();
        assert_eq!(weights(&g), vec![0.0, 6.0, 7.0, 0.0]);
    }

    #[test]
    fn defaults_follow_the_scope_and_the_criterion() {
        assert_eq!(
            default_unstructured_criterion(UnstructuredScope::Global),
            "lamp"
        );
        assert!(SCALE_SAFE_CRITERIA.contains(&"lamp"));
        assert!(!SCALE_SAFE_CRITERIA.contains(&"l1"));
        assert_eq!(default_unstructured_scope("wanda"), UnstructuredScope::Row);
        assert_eq!(default_unstructured_scope("l1"), UnstructuredScope::Layer);
    }
}
