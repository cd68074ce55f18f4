//! The bridge from recipe names to the pruning library: criteria by name, calibration batches,
//! unstructured and N:M pruning, and re-initialisation for the lottery-ticket control.

use candle_core::{Device, Tensor};
use prunekit_data::{Batches, Dataset};
use prunekit_graph::Graph;
use prunekit_prune::{magnitude::Scope, magnitude_prune, Criterion, Norm, Target};

use crate::{RecipeError, Result};

/// Calibration batches (inputs, labels) for data-driven criteria.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub batches: Vec<(Tensor, Tensor)>,
}

/// `n` seeded batches of `size` training samples.
pub fn calibration(
    data: &Dataset,
    n: usize,
    size: usize,
    seed: u64,
    device: &Device,
) -> Result<Calibration> {
    let batches = Batches::new(data.len(), size.max(1), true, false, seed ^ 0xca1);
    let mut out = Vec::new();
    for idx in batches.epoch(0).into_iter().take(n) {
        out.push(data.batch(&idx, device)?);
    }
    Ok(Calibration { batches: out })
}

/// Where unstructured ratios hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnstructuredScope {
    Layer,
    Global,
    Row,
}

/// A criterion by name.
pub fn make_criterion(
    name: &str,
    _g: &Graph,
    _calib: Option<&Calibration>,
    _seed: u64,
) -> Result<Box<dyn Criterion>> {
    match name {
        "l1" => Ok(Box::new(Norm::L1)),
        "l2" => Ok(Box::new(Norm::L2)),
        other => Err(RecipeError::Invalid(format!(
            "unknown criterion `{other}`; known: l1, l2"
        ))),
    }
}

/// Masks weights by a criterion to a target.
pub fn prune_unstructured(
    g: &mut Graph,
    criterion: &dyn Criterion,
    target: Target,
    scope: UnstructuredScope,
) -> Result<()> {
    let scope = match scope {
        UnstructuredScope::Layer => Scope::Layer,
        UnstructuredScope::Global => Scope::Global,
        UnstructuredScope::Row => {
            return Err(RecipeError::Invalid(
                "row scope needs a per-row criterion".into(),
            ))
        }
    };
    if !matches!(criterion.name(), "l1" | "l2") {
        return Err(RecipeError::Invalid(format!(
            "unstructured pruning by `{}` is not available",
            criterion.name()
        )));
    }
    magnitude_prune(g, target, scope)?;
    Ok(())
}

/// N:M sparsity.
pub fn prune_nm(_g: &mut Graph, criterion: &dyn Criterion, n: usize, m: usize) -> Result<()> {
    Err(RecipeError::Invalid(format!(
        "{n}:{m} pruning by `{}` is not available",
        criterion.name()
    )))
}

/// Fraction of zero values among the prunable weights.
pub fn sparsity_of(g: &Graph) -> Result<f64> {
    let (mut zeros, mut total) = (0usize, 0usize);
    for (node, param) in prunekit_prune::prunable_weights(g) {
        let t = g.node(&node)?.params[&param].tensor();
        total += t.elem_count();
        zeros += t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .eq(0f32)?
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
    }
    Ok(if total == 0 {
        0.0
    } else {
        zeros as f64 / total as f64
    })
}

/// A copy of `g` with freshly initialised parameters (same structure, new seed).
pub fn reinit_like(g: &Graph, seed: u64) -> Result<Graph> {
    let mut fresh = g.try_clone()?;
    let mut rng = prunekit_graph::graph::rng(seed);
    let (dtype, device) = (g.dtype(), g.device());
    for n in &mut fresh.nodes {
        let decls = n.op.rules().params();
        let params = prunekit_graph::graph::init_params(&decls, dtype, &device, &mut rng)?;
        for (k, p) in params {
            if let Some(old) = n.params.get_mut(&k) {
                old.value = p.value;
            }
        }
    }
    Ok(fresh)
}
