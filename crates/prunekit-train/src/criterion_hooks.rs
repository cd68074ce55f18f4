//! The training side of the pruning criteria that follow training: the criteria themselves live in
//! `prunekit_prune::criteria` (which knows nothing of the trainer); here they become
//! [`StepHook`]s of [`crate::fit_with`].
//!
//! - [`Movement`] (Sanh et al. 2020): after every backward pass, accumulates -w * g of every weight
//!   (before the optimizer moves it).
//! - [`BnScale`] (network slimming, Liu et al. 2017): adds lambda * sum |gamma| over every
//!   BatchNorm weight to the loss (sparsity training).

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use prunekit_graph::Graph;
use prunekit_prune::{BnScale, Movement, PruneError};

use crate::trainer::{StepCx, StepHook};
use crate::{Result, TrainError};

impl StepHook for Movement {
    fn after_backward(&mut self, g: &Graph, grads: &GradStore, _cx: &StepCx) -> Result<()> {
        Ok(self.observe(g, grads)?)
    }
}

impl StepHook for BnScale {
    fn extra_loss(&mut self, g: &Graph, _cx: &StepCx) -> Result<Option<Tensor>> {
        Ok(self.penalty(g)?)
    }
}

impl From<PruneError> for TrainError {
    fn from(e: PruneError) -> Self {
        match e {
            PruneError::Graph(e) => TrainError::Graph(e),
            PruneError::Candle(e) => TrainError::Candle(e),
            PruneError::Data(e) => TrainError::Data(e),
            PruneError::Invalid(m) => TrainError::Invalid(m),
        }
    }
}
