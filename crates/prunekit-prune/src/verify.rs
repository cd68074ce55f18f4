//! The correctness check of every structured rewrite: the pruned model must compute what the
//! unpruned model computes with the removed slices masked (relative error <= 1e-5 in the tests).

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Tensor};
use prunekit_graph::channels::{analyse, mask_slices, ChannelAnalysis, SliceKey};
use prunekit_graph::{Executor, Graph, InputKind, Mode, Op};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::Result;

/// Output of [`verify`]: the largest relative error between the masked original and the pruned model.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub max_rel_error: f64,
    pub batches: usize,
}

/// ||a - b|| / ||a|| over all elements (0 when both are zero).
pub fn rel_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?;
    let num = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let den = a.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if den == 0.0 { num } else { num / den })
}

/// Random inputs for every graph input at `batch`: N(0, 1) floats, and ids below the smallest
/// vocabulary of the embeddings that read them.
pub fn random_inputs(g: &Graph, batch: usize, seed: u64) -> Result<Vec<Tensor>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let device = g.device();
    let mut out = Vec::with_capacity(g.inputs.len());
    for spec in &g.inputs {
        let mut dims = vec![batch];
        dims.extend_from_slice(&spec.shape);
        let n: usize = dims.iter().product();
        out.push(match spec.kind {
            InputKind::Float => {
                let v: Vec<f32> = (0..n)
                    .map(|_| {
                        // Box-Muller from the seeded generator
                        let (u1, u2): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
                        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                    })
                    .collect();
                Tensor::from_vec(v, dims, &device)?.to_dtype(g.dtype())?
            }
            InputKind::Ids => {
                let vocab = g
                    .consumers(&spec.name)
                    .iter()
                    .filter_map(|&(i, _)| match &g.nodes[i].op {
                        Op::Embedding(e) => Some(e.num_embeddings),
                        _ => None,
                    })
                    .min()
                    .unwrap_or(1)
                    .max(1);
                let v: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab as u32)).collect();
                Tensor::from_vec(v, dims, &device)?
            }
        });
    }
    Ok(out)
}

/// Reruns `original` with every removed slice masked and compares it with `pruned` on `inputs`
/// (eval mode): the relative error per output, the largest over outputs and input batches.
pub fn verify(
    original: &Graph,
    pruned: &Graph,
    removed: &BTreeMap<SliceKey, BTreeSet<usize>>,
    inputs: &[Vec<Tensor>],
) -> Result<Verification> {
    let mut masked = original.try_clone()?;
    mask_slices(&mut masked, removed)?;
    let mut worst = 0f64;
    let mut exec = Executor::new(0);
    for xs in inputs {
        let a = exec.run(&masked, xs, Mode::EVAL, None)?;
        let b = exec.run(pruned, xs, Mode::EVAL, None)?;
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max(rel_error(x, y)?);
        }
    }
    Ok(Verification {
        max_rel_error: worst,
        batches: inputs.len(),
    })
}

/// One removal checked against masking: see [`removal_error`].
#[derive(Clone, Debug)]
pub struct RemovalCheck {
    /// the graph with the units removed
    pub pruned: Graph,
    /// the units actually removed (the requested ones less those `keep_nonempty` kept)
    pub removed: Vec<usize>,
    /// relative error between the pruned model and the masked original
    pub max_rel_error: f64,
}

/// Physically removes `units` of the analysis `a` of `g` (less those whose removal would empty a
/// parameter axis or a value: [`ChannelAnalysis::keep_nonempty`] keeps the later-listed ones) and
/// compares the result with the masked original on random inputs at batch 3 drawn from `seed`.
/// Errors: unknown unit ids, and any failure of removal, validation or the forward passes.
pub fn removal_error(
    g: &Graph,
    a: &ChannelAnalysis,
    units: &[usize],
    seed: u64,
) -> Result<RemovalCheck> {
    let mut remove = units.to_vec();
    let rank: BTreeMap<usize, usize> = units.iter().enumerate().map(|(i, &u)| (u, i)).collect();
    a.keep_nonempty(g, &mut remove, &|u| {
        rank.get(&u).copied().unwrap_or(0) as f64
    })?;
    let mut pruned = g.try_clone()?;
    a.remove(&mut pruned, &remove)?;
    let plan = a.removal_plan(&remove)?;
    let inputs = vec![random_inputs(g, 3, seed ^ 0x5eed)?];
    let v = verify(g, &pruned, &plan, &inputs)?;
    Ok(RemovalCheck {
        pruned,
        removed: remove,
        max_rel_error: v.max_rel_error,
    })
}

/// Removal trials that cover every kind of unit of every group deterministically, then `random`
/// random ones (seeded by `seed`); each trial is a list of unit ids that removes something. Units
/// of one *kind* come from the same spaces and slice the same (node, param, axis) set (a
/// residual stream's channels; a split's two ranges are two kinds; GQA's KV groups and query-head
/// slots are groups of their own). Groups of a single unit are never removable and are skipped.
///
/// - per group and kind: the middle unit of that kind alone;
/// - per group: every second unit (with 2 or 3 units: all but one);
/// - the middle unit of every group at once (overlapping structures such as a KV group and a
///   query slot compose);
/// - `random` times: a random non-empty strict subset of every group.
pub fn removal_trials(a: &ChannelAnalysis, random: usize, seed: u64) -> Vec<Vec<usize>> {
    let groups: Vec<&[usize]> = a
        .groups
        .iter()
        .map(|gr| gr.units.as_slice())
        .filter(|units| units.len() >= 2)
        .collect();
    let mut trials: Vec<Vec<usize>> = Vec::new();
    for units in &groups {
        let mut kinds: BTreeMap<(Vec<String>, Vec<&SliceKey>), Vec<usize>> = BTreeMap::new();
        for &u in *units {
            let unit = &a.units[u];
            let key = (unit.sources.clone(), unit.slices.keys().collect());
            kinds.entry(key).or_default().push(u);
        }
        for of_kind in kinds.values() {
            trials.push(vec![of_kind[of_kind.len() / 2]]);
        }
        trials.push(units.iter().step_by(2).copied().collect());
    }
    if groups.len() > 1 {
        trials.push(groups.iter().map(|units| units[units.len() / 2]).collect());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..random {
        let mut remove = Vec::new();
        for units in &groups {
            let mut units = units.to_vec();
            let n = units.len();
            for i in (1..n).rev() {
                units.swap(i, rng.random_range(0..=i));
            }
            remove.extend_from_slice(&units[..rng.random_range(1..n)]);
        }
        if !remove.is_empty() {
            trials.push(remove);
        }
    }
    trials
}

/// Removes a random non-empty subset of the units of every group (each group keeps at least
/// one) and checks the result against masking (see [`removal_error`]).
pub fn random_removal_error(g: &Graph, seed: u64) -> Result<RemovalCheck> {
    let a = analyse(g)?;
    let units = removal_trials(&a, 1, seed).pop().unwrap_or_default();
    removal_error(g, &a, &units, seed)
}
