//! Pruning passes over the model graph.
//!
//! - [`magnitude`]: unstructured masks by weight magnitude, by threshold or target ratio, per layer or global.
//! - [`channel`]: channel groups found from every op's channel rule, scored by L1/L2 norm and removed
//!   physically (the structured rewrite), or masked (the reference the rewrite must equal).

pub mod channel;
pub mod magnitude;

pub use channel::{
    channel_groups, group_scores, mask_channels, prune_channels, remove_channels, ChannelGroup,
    GroupPruned, Norm, Slice,
};
pub use magnitude::{magnitude_prune, prunable_weights, LayerSparsity, Scope, Target};

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Graph(#[from] prunekit_graph::GraphError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
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
