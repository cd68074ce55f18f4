//! The bridge from recipe names to the pruning library: criteria by name, calibration batches,
//! sparsity, and re-initialisation for the lottery-ticket control.

use candle_core::Device;
use prunekit_data::Dataset;
use prunekit_graph::Graph;
use prunekit_prune::Criterion;

use crate::Result;

pub use prunekit_prune::{prune_nm, prune_unstructured, Calibration, UnstructuredScope};

/// `n` seeded batches of `size` training samples.
pub fn calibration(
    data: &Dataset,
    n: usize,
    size: usize,
    seed: u64,
    device: &Device,
) -> Result<Calibration> {
    Ok(Calibration::from_dataset(data, n, size, seed, device)?)
}

/// A criterion by name (see `prunekit_prune::CRITERIA`).
pub fn make_criterion(
    name: &str,
    g: &Graph,
    calib: Option<&Calibration>,
    seed: u64,
) -> Result<Box<dyn Criterion>> {
    Ok(prunekit_prune::criterion_by_name(name, g, calib, seed)?)
}

/// [`make_criterion`] with the weights of `exclude` left out (they stay dense).
pub fn make_criterion_excluding(
    name: &str,
    g: &Graph,
    calib: Option<&Calibration>,
    seed: u64,
    exclude: &[String],
) -> Result<Box<dyn Criterion>> {
    let inner = make_criterion(name, g, calib, seed)?;
    if exclude.is_empty() {
        return Ok(inner);
    }
    Ok(Box::new(prunekit_prune::Excluding::new(
        g,
        inner,
        exclude.to_vec(),
    )?))
}

/// Fraction of zero values among the prunable weights.
pub fn sparsity_of(g: &Graph) -> Result<f64> {
    Ok(g.weight_counts()?.sparsity())
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
