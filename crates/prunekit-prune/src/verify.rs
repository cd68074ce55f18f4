//! The correctness check of every structured rewrite: the pruned model must compute what the
//! unpruned model computes with the removed slices masked (relative error <= 1e-5 in the tests).

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Tensor};
use prunekit_graph::channels::{analyse, mask_slices, SliceKey};
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

/// Removes a random subset of the units of every group (each group keeps at least one) and
/// returns the pruned graph and the relative error against masking on random inputs at batch 3.
pub fn random_removal_error(g: &Graph, seed: u64) -> Result<(Graph, f64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let a = analyse(g)?;
    let mut remove = Vec::new();
    for group in &a.groups {
        let n = group.units.len();
        let k = rng.random_range(0..n);
        let mut units = group.units.clone();
        for i in (1..n).rev() {
            units.swap(i, rng.random_range(0..=i));
        }
        remove.extend_from_slice(&units[..k]);
    }
    let priority: Vec<f64> = (0..a.units.len()).map(|_| rng.random()).collect();
    a.keep_nonempty(g, &mut remove, &|u| priority[u])?;
    let mut pruned = g.try_clone()?;
    a.remove(&mut pruned, &remove)?;
    let removed = a.removal_plan(&remove)?;
    let inputs = vec![random_inputs(g, 3, seed ^ 0x5eed)?];
    let v = verify(g, &pruned, &removed, &inputs)?;
    Ok((pruned, v.max_rel_error))
}
