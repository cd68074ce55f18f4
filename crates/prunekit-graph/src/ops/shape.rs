//! Flatten and Reshape of the per-sample shape (the batch axis is kept).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{expect_inputs, numel, ChannelRule, Ctx, OpRules, ParamView};

/// [d0, d1, ..] -> [d0 * d1 * ..].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flatten {}

impl OpRules for Flatten {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        Ok(vec![numel(expect_inputs(inputs, 1)?[0]) as usize])
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        xs[0].flatten_from(1)
    }
    fn channels(&self) -> ChannelRule {
        ChannelRule::Flatten
    }
}

/// Reshape to a fixed per-sample shape with the same number of elements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reshape {
    pub shape: Vec<usize>,
}

impl OpRules for Reshape {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        if numel(x) != numel(&self.shape) {
            return Err(format!(
                "cannot reshape {x:?} to {:?}: element counts differ",
                self.shape
            ));
        }
        Ok(self.shape.clone())
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let mut dims = vec![xs[0].dim(0)?];
        dims.extend_from_slice(&self.shape);
        xs[0].reshape(dims)
    }
}
