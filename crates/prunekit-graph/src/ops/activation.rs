//! Elementwise activations, softmax and dropout. All shape-preserving and channel pass-through.

use candle_core::{Tensor, D};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{expect_inputs, resolve_axis, Chan, ChannelCx, Ctx, OpRules, ParamView};

fn same_shape(inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
    Ok(expect_inputs(inputs, 1)?[0].to_vec())
}

fn pass_through(cx: &mut ChannelCx) -> Option<Chan> {
    cx.pass(None, &[])
}

/// Declares a parameterless elementwise activation: `name, doc, |x| forward`.
macro_rules! activation {
    ($name:ident, $doc:literal, |$x:ident| $body:expr) => {
        #[doc = $doc]
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {}

        impl OpRules for $name {
            fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
                same_shape(inputs)
            }
            fn forward(
                &self,
                xs: &[Tensor],
                _p: &ParamView,
                _ctx: &mut Ctx,
            ) -> candle_core::Result<Tensor> {
                let $x = &xs[0];
                $body
            }
            fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
                pass_through(cx)
            }
        }
    };
}

activation!(Relu, "max(x, 0)", |x| crate::kernels::activation::relu(x));
activation!(Silu, "x * sigmoid(x)", |x| x.silu());
activation!(Tanh, "tanh(x)", |x| x.tanh());
activation!(Sigmoid, "1 / (1 + exp(-x))", |x| candle_nn::ops::sigmoid(x));

/// GELU, exact (erf) by default as in PyTorch; `"approximate": "tanh"` for the tanh form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gelu {
    #[serde(default)]
    pub approximate: GeluApprox,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeluApprox {
    #[default]
    None,
    Tanh,
}

impl OpRules for Gelu {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        same_shape(inputs)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        match self.approximate {
            GeluApprox::None => xs[0].gelu_erf(),
            GeluApprox::Tanh => xs[0].gelu(),
        }
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        pass_through(cx)
    }
}

fn minus_one() -> isize {
    -1
}

/// Softmax along a per-sample axis (default: the last), composed so gradients flow
/// (candle's fused softmax_last_dim has no backward).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Softmax {
    #[serde(default = "minus_one")]
    pub axis: isize,
}

impl Default for Softmax {
    fn default() -> Self {
        Self { axis: -1 }
    }
}

/// Numerically stable softmax along `dim` of a batched tensor; differentiable.
pub fn softmax(x: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(dim)?)
}

/// Numerically stable log-softmax along the last axis; differentiable.
pub fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let z = x.broadcast_sub(&max)?;
    z.broadcast_sub(&z.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

impl OpRules for Softmax {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        resolve_axis(self.axis, x.len())?;
        Ok(x.to_vec())
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        let axis = resolve_axis(self.axis, x.rank() - 1).map_err(candle_core::Error::Msg)?;
        softmax(x, axis + 1)
    }
    /// Channels on another axis pass through; along the softmax axis every channel feeds every
    /// output, so they are protected.
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let axis = resolve_axis(self.axis, cx.in_shape(0).len()).ok()?;
        match cx.input(0) {
            Some(c) if c.axis != axis => pass_through(cx),
            _ => cx.opaque(),
        }
    }
}

/// Dropout: in training, zeroes each value with probability `p` and scales the rest by 1/(1-p).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropout {
    pub p: f64,
}

impl OpRules for Dropout {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(format!("p = {} is outside [0, 1)", self.p));
        }
        same_shape(inputs)
    }
    fn forward(&self, xs: &[Tensor], _p: &ParamView, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        if !ctx.train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = 1.0 / keep;
        let mask: Vec<f64> = (0..x.elem_count())
            .map(|_| {
                if ctx.rng.random::<f64>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        pass_through(cx)
    }
}
