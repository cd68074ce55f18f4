//! Unstructured pruning by any [`Criterion`]: masks over the prunable weights (every weight of
//! rank >= 2), per layer, across all layers, within each output row, or N:M along the input
//! dimension. An element's score is `criterion.reduce(importance)`; the lowest go. Weights that
//! are already masked stay masked and count as pruned; weights the criterion gives no importance
//! (None) are left as they are and are not counted.

use candle_core::{DType, Tensor};
use prunekit_graph::Graph;

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

impl From<Scope> for UnstructuredScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Layer => UnstructuredScope::Layer,
            Scope::Global => UnstructuredScope::Global,
        }
    }
}

/// One scored weight: element scores (already-masked elements at -inf).
struct Scored {
    node: String,
    param: String,
    dims: Vec<usize>,
    scores: Vec<f64>,
}

/// Scores of every prunable weight the criterion covers.
fn score_weights(g: &Graph, criterion: &dyn Criterion) -> Result<Vec<Scored>> {
    let names = prunable_weights(g);
    if names.is_empty() {
        return Err(PruneError::Invalid(
            "the model has no prunable weights".into(),
        ));
    }
    criterion.prepare(g)?;
    let mut out = Vec::with_capacity(names.len());
    for (n, k) in &names {
        let Some(imp) = criterion.importance(g, n, k)? else {
            continue;
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
            let m = m.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            for (s, m) in scores.iter_mut().zip(m) {
                if m == 0.0 {
                    *s = f64::NEG_INFINITY;
                }
            }
        }
        out.push(Scored {
            node: n.clone(),
            param: k.clone(),
            dims,
            scores,
        });
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
    Ok(out)
}

/// Keep-flags (1 keep, 0 prune) for `values` so that exactly `k` of the smallest are pruned; ties
/// are broken by position so the result is deterministic.
fn smallest_k(values: &[f64], k: usize) -> Vec<f32> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    if k < values.len() && k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| {
            values[a].total_cmp(&values[b]).then(a.cmp(&b))
        });
    }
    let mut keep = vec![1f32; values.len()];
    for &i in order.iter().take(k.min(values.len())) {
        keep[i] = 0.0;
    }
    keep
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
        let zeros = mask
            .eq(0.0)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
        report.push(LayerSparsity {
            node: s.node.clone(),
            param: s.param.clone(),
            total: mask.elem_count(),
            zeros,
        });
        g.set_mask(&s.node, &s.param, mask)?;
    }
    Ok(report)
}

/// Masks the lowest-scoring weights by `criterion`: a ratio per layer, globally or per output
/// row, or a threshold on the score (score < threshold is pruned). Existing masks are kept.
pub fn prune_unstructured(
    g: &mut Graph,
    criterion: &dyn Criterion,
    target: Target,
    scope: UnstructuredScope,
) -> Result<Vec<LayerSparsity>> {
    match target {
        Target::Ratio(r) => check_ratio("unstructured", r)?,
        Target::Threshold(t) if t.is_nan() => {
            return Err(PruneError::Invalid(format!(
                "threshold {t} must be a number"
            )))
        }
        Target::Threshold(_) => {}
    }
    let scored = score_weights(g, criterion)?;
    let count = |r: f64, n: usize| (r * n as f64).round() as usize;
    let keeps: Vec<Vec<f32>> = match (target, scope) {
        (Target::Threshold(t), _) => scored
            .iter()
            .map(|s| {
                s.scores
                    .iter()
                    .map(|&x| if x < t { 0.0 } else { 1.0 })
                    .collect()
            })
            .collect(),
        (Target::Ratio(r), UnstructuredScope::Layer) => scored
            .iter()
            .map(|s| smallest_k(&s.scores, count(r, s.scores.len())))
            .collect(),
        (Target::Ratio(r), UnstructuredScope::Row) => scored
            .iter()
            .map(|s| {
                let rows = s.dims.first().copied().unwrap_or(1).max(1);
                let len = s.scores.len() / rows;
                s.scores
                    .chunks(len.max(1))
                    .flat_map(|row| smallest_k(row, count(r, row.len())))
                    .collect()
            })
            .collect(),
        (Target::Ratio(r), UnstructuredScope::Global) => {
            let all: Vec<f64> = scored
                .iter()
                .flat_map(|s| s.scores.iter().copied())
                .collect();
            let keep = smallest_k(&all, count(r, all.len()));
            let mut out = Vec::with_capacity(scored.len());
            let mut off = 0;
            for s in &scored {
                out.push(keep[off..off + s.scores.len()].to_vec());
                off += s.scores.len();
            }
            out
        }
    };
    write_masks(g, &scored, keeps)
}

/// N:M semi-structured sparsity (2:4, 4:8): for every scored weight [out, in, rest..], within
/// each run of `m` consecutive input indices at each (out, rest..) position, the `n` highest
/// scores are kept (ties by position) and the rest masked. An input size not divisible by `m` is
/// an error naming the layer (nothing is masked then); so are `m == 0`, `n == 0` and `n >= m`.
pub fn prune_nm(
    g: &mut Graph,
    criterion: &dyn Criterion,
    n: usize,
    m: usize,
) -> Result<Vec<LayerSparsity>> {
    if m == 0 || n == 0 || n >= m {
        return Err(PruneError::Invalid(format!(
            "N:M sparsity needs 0 < N < M, got {n}:{m}"
        )));
    }
    let scored = score_weights(g, criterion)?;
    for s in &scored {
        let input = s.dims.get(1).copied().unwrap_or(0);
        if input % m != 0 {
            return Err(PruneError::Invalid(format!(
                "N:M sparsity {n}:{m}: layer `{}` ({}) has input size {input}, which M = {m} does \
                 not divide (no padding is done)",
                s.node, s.param
            )));
        }
    }
    let keeps = scored
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
    write_masks(g, &scored, keeps)
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
        // row 0 is all large, row 1 all small: per layer, row 1 would go entirely
        let mut g = layer(vec![5.0, 6.0, 7.0, 8.0, 0.1, 0.2, 0.3, 0.4], 2, 4);
        prune_unstructured(
            &mut g,
            &Norm::L1,
            Target::Ratio(0.5),
            UnstructuredScope::Row,
        )
        .unwrap();
        assert_eq!(weights(&g), vec![0.0, 0.0, 7.0, 8.0, 0.0, 0.0, 0.3, 0.4]);
        let mut g = layer(vec![5.0, 6.0, 7.0, 8.0, 0.1, 0.2, 0.3, 0.4], 2, 4);
        prune_unstructured(
            &mut g,
            &Norm::L1,
            Target::Ratio(0.5),
            UnstructuredScope::Layer,
        )
        .unwrap();
        assert_eq!(weights(&g), vec![5.0, 6.0, 7.0, 8.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn nm_keeps_the_n_largest_of_every_group() {
        let mut g = layer(vec![1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3], 1, 8);
        let r = prune_nm(&mut g, &Norm::L1, 2, 4).unwrap();
        assert_eq!(weights(&g), vec![0.0, -4.0, 3.0, 0.0, 0.5, 0.0, 0.0, 0.3]);
        assert_eq!(r[0].zeros, 4);
    }

    #[test]
    fn nm_errors() {
        let mut g = layer(vec![1.0; 6], 1, 6);
        let msg = prune_nm(&mut g, &Norm::L1, 2, 4).unwrap_err().to_string();
        assert!(
            msg.contains("linear1") && msg.contains("input size 6") && msg.contains("M = 4"),
            "{msg}"
        );
        assert!(g.node("linear1").unwrap().params["weight"].mask.is_none());
        for (n, m) in [(4, 4), (5, 4), (1, 0), (0, 4)] {
            assert!(prune_nm(&mut g, &Norm::L1, n, m).is_err(), "{n}:{m}");
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
}
