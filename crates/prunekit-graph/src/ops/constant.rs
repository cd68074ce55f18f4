//! Constant: a value with no inputs (the initializers of decomposed exports).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{expect_inputs, Chan, ChannelCx, Ctx, Init, OpRules, ParamDecl, ParamView, Role};

/// A constant value of per-sample shape `shape`, read from no input (ONNX `Constant` or an
/// initializer feeding an op; PyTorch a registered buffer used in arithmetic).
///
/// Parameter: `value` [shape..] with `Role::Buffer`: not trainable, not counted as a parameter,
/// saved and loaded by the model format like BatchNorm's running statistics. The forward pass
/// returns it with a batch axis of 1, [1, shape..] (the same for every sample), so Add, Mul, Sub,
/// Div and MatMul broadcast it against a batch [B, ..]; every other op applies to it as to a batch
/// of one.
///
/// Channel rule: none. Its output carries no channels, so an elementwise op that reads it at
/// full extent along another input's channel axis (a per-channel constant [C, 1, 1]) protects
/// those channels; one broadcast along them (a scalar [1], a row [1, W]) leaves them prunable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constant {
    pub shape: Vec<usize>,
}

impl OpRules for Constant {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        expect_inputs(inputs, 0)?;
        if self.shape.contains(&0) {
            return Err(format!(
                "shape {:?}: every dimension must be at least 1",
                self.shape
            ));
        }
        Ok(self.shape.clone())
    }
    fn params(&self) -> Vec<ParamDecl> {
        vec![ParamDecl::new(
            "value",
            self.shape.clone(),
            Role::Buffer,
            Init::Zeros,
        )]
    }
    fn forward(
        &self,
        _xs: &[Tensor],
        p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        p.var("value")?.as_tensor().detach().unsqueeze(0)
    }
    fn channels(&self, _cx: &mut ChannelCx) -> Option<Chan> {
        None
    }
}
