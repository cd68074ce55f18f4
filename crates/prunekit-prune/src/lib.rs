//! Pruning passes over the model graph.
//!
//! - [`criteria`]: importance criteria (norms, random, LAMP, FPGM, BatchNorm scales, Taylor, Fisher,
//!   SNIP, movement, Wanda) and calibration data; every one serves both granularities.
//! - [`unstructured`]: masks by any criterion per layer, globally, per output row, or N:M; no
//!   output row is ever emptied, and weights a criterion cannot score are listed.
//! - [`magnitude`]: unstructured masks by weight magnitude, by threshold or target ratio, per layer or global.
//! - [`structured`]: units from the dependency analysis (channels, heads, recurrent units, conv
//!   groups) scored by a criterion and removed physically with every coupled slice; `verify`
//!   checks the result against the masked original.
//! - [`layers`]: whole residual blocks and transformer layers, scored by block influence or ablation.

pub mod criteria;
pub mod layers;
pub mod magnitude;
pub mod sensitivity;
pub mod structured;
pub mod unstructured;
pub mod verify;

pub use criteria::{
    criterion_by_name, lamp_scores, BnScale, Calibration, Excluding, Fisher, Fpgm, Lamp, Movement,
    RandomScores, Snip, Taylor, Wanda, CRITERIA, DATA_CRITERIA,
};

pub use layers::{
    ablation_scores, block_influence, find_blocks, find_layers, prune_layers, remove_layers, Block,
    Layer, LayersRemoved,
};
pub use magnitude::{magnitude_prune, prunable_weights, LayerSparsity, Scope, Target};
pub use sensitivity::{
    analyse_sensitivity, propose, prune_weight, Granularity, Proposal, Sensitivity,
};
pub use structured::{
    prune_structured, unit_scores, unscored_groups, Aggregate, Criterion, GroupPruned, HeadCounts,
    Limit, Norm, Normalize, Shortfall, StructuredConfig, StructuredReport, UnscoredGroup,
};
pub use unstructured::{
    default_unstructured_criterion, default_unstructured_scope, prune_nm, prune_unstructured,
    LeftOut, UnstructuredReport, UnstructuredScope, SCALE_SAFE_CRITERIA,
};
pub use verify::{
    random_inputs, random_removal_error, rel_error, removal_error, removal_trials, verify,
    RemovalCheck, Verification,
};

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Graph(#[from] prunekit_graph::GraphError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] prunekit_data::DataError),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, PruneError>;

/// Checks a pruning ratio is in [0, 1).
pub fn check_ratio(what: &str, ratio: f64) -> Result<()> {
    if !(0.0..1.0).contains(&ratio) || ratio.is_nan() {
        return Err(PruneError::Invalid(format!(
            "{what} ratio {ratio} is outside [0, 1)"
        )));
    }
    Ok(())
}

/// Zeros per prunable weight (what unstructured pruning and N:M leave), counted in integers.
pub fn layer_sparsity(g: &prunekit_graph::Graph) -> Result<Vec<LayerSparsity>> {
    g.prunable_weights()
        .map(|(n, k, p)| {
            Ok(LayerSparsity {
                node: n.name.clone(),
                param: k.clone(),
                total: p.tensor().elem_count(),
                zeros: prunekit_graph::count_zeros(p.tensor())?,
            })
        })
        .collect()
}
