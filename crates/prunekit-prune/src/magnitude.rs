//! Unstructured magnitude pruning: the smallest |w| are masked, per layer or across all layers
//! (the targets and scopes shared with [`crate::unstructured`]).

use prunekit_graph::Graph;
use serde::Serialize;

use crate::criteria::Norm;
use crate::unstructured::{prune_unstructured, UnstructuredReport};
use crate::{PruneError, Result};

/// How much to prune.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// this fraction of the weights end up zero (already-masked weights count)
    Ratio(f64),
    /// every weight with |w| < threshold is masked
    Threshold(f64),
}

/// Where a ratio applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// every layer reaches the ratio
    Layer,
    /// the ratio holds over all prunable weights together
    Global,
}

/// Sparsity of one weight after pruning: `zeros` of its `total` elements (integer counts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerSparsity {
    pub node: String,
    pub param: String,
    pub total: usize,
    pub zeros: usize,
}

/// The weights unstructured pruning touches, as (node, param): every weight matrix or kernel
/// ([`prunekit_graph::Param::is_prunable_weight`]: rank >= 2) of Linear, Conv, attention,
/// recurrent and Embedding ops. Norm scales and biases are left dense.
pub fn prunable_weights(g: &Graph) -> Vec<(String, String)> {
    g.prunable_weights()
        .map(|(n, k, _)| (n.name.clone(), k.clone()))
        .collect()
}

/// Masks weights by magnitude (|w|): [`prune_unstructured`] with [`Norm::L1`]. Existing masks are
/// kept (a pruned weight stays pruned) and no output row is emptied. Magnitudes are not
/// comparable across layers of different scale: with [`Scope::Global`] prefer LAMP
/// ([`crate::Lamp`]).
pub fn magnitude_prune(g: &mut Graph, target: Target, scope: Scope) -> Result<UnstructuredReport> {
    if let Target::Threshold(t) = target {
        if t.is_nan() || t < 0.0 {
            return Err(PruneError::Invalid(format!(
                "threshold {t} must be a non-negative number"
            )));
        }
    }
    prune_unstructured(g, &Norm::L1, target, scope.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prunekit_graph::GraphBuilder;

    fn mlp() -> Graph {
        let mut b = GraphBuilder::new("mlp", 3);
        let x = b.input("x", &[16]);
        let h = b.linear(&x, 32).unwrap();
        let h = b.relu(&h).unwrap();
        let y = b.linear(&h, 4).unwrap();
        b.finish(&[&y]).unwrap()
    }

    fn zeros_of(g: &Graph, n: &str) -> usize {
        prunekit_graph::count_zeros(g.node(n).unwrap().params["weight"].tensor()).unwrap()
    }

    #[test]
    fn layerwise_ratio_prunes_each_layer_exactly() {
        let mut g = mlp();
        magnitude_prune(&mut g, Target::Ratio(0.5), Scope::Layer).unwrap();
        assert_eq!(zeros_of(&g, "linear1"), 256);
        assert_eq!(zeros_of(&g, "linear2"), 64);
    }

    #[test]
    fn global_ratio_hits_the_total_and_removes_the_smallest() {
        let mut g = mlp();
        let before: Vec<f32> = prunable_weights(&g)
            .iter()
            .flat_map(|(n, k)| {
                g.node(n).unwrap().params[k]
                    .tensor()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect();
        let r = magnitude_prune(&mut g, Target::Ratio(0.75), Scope::Global).unwrap();
        let total = zeros_of(&g, "linear1") + zeros_of(&g, "linear2");
        assert_eq!(total, (0.75f64 * 640.0).round() as usize);
        // the largest weight of every row (16 per row of linear1, 32 of linear2) always stays
        let mut best = vec![false; before.len()];
        let mut rows_floored = 0;
        for (start, len) in (0..512)
            .step_by(16)
            .map(|s| (s, 16))
            .chain((512..640).step_by(32).map(|s| (s, 32)))
        {
            let i = (start..start + len)
                .max_by(|&a, &b| before[a].total_cmp(&before[b]))
                .unwrap();
            best[i] = true;
        }
        // every other surviving weight is at least as large as every pruned one
        let after: Vec<f32> = prunable_weights(&g)
            .iter()
            .flat_map(|(n, k)| {
                g.node(n).unwrap().params[k]
                    .tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect();
        let max_pruned = before
            .iter()
            .zip(&after)
            .filter(|(_, a)| **a == 0.0)
            .map(|(b, _)| *b)
            .fold(0f32, f32::max);
        let min_kept = before
            .iter()
            .zip(&after)
            .zip(&best)
            .filter(|((_, a), best)| **a != 0.0 && !**best)
            .map(|((b, _), _)| *b)
            .fold(f32::MAX, f32::min);
        assert!(max_pruned <= min_kept);
        // the rows saved: those whose best is among the 480 smallest of all
        let mut sorted = before.clone();
        sorted.sort_by(f32::total_cmp);
        let cut = sorted[total - 1];
        for (i, b) in best.iter().enumerate() {
            if *b {
                assert_ne!(after[i], 0.0, "a row's best weight was pruned");
                if before[i] <= cut {
                    rows_floored += 1;
                }
            }
        }
        assert_eq!(r.rows_kept, rows_floored);
    }

    #[test]
    fn threshold_masks_small_weights_and_masks_accumulate() {
        let mut g = mlp();
        magnitude_prune(&mut g, Target::Threshold(0.1), Scope::Layer).unwrap();
        let w = g.node("linear1").unwrap().params["weight"]
            .tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(w.iter().all(|v| *v == 0.0 || v.abs() >= 0.1));
        let z1 = zeros_of(&g, "linear1");
        magnitude_prune(&mut g, Target::Ratio(0.1), Scope::Layer).unwrap();
        assert!(
            zeros_of(&g, "linear1") >= z1,
            "an earlier mask is never undone"
        );
    }

    #[test]
    fn bad_ratio_is_an_error() {
        let mut g = mlp();
        assert!(magnitude_prune(&mut g, Target::Ratio(1.0), Scope::Layer).is_err());
        assert!(magnitude_prune(&mut g, Target::Ratio(-0.1), Scope::Global).is_err());
        assert!(magnitude_prune(&mut g, Target::Threshold(f64::NAN), Scope::Global).is_err());
    }
}
