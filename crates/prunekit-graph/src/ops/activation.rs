//! Elementwise activations, softmax and dropout. All shape-preserving and channel pass-through.

use std::collections::BTreeMap;

use candle_core::{Tensor, D};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{
    expect_inputs, resolve_axis, Chan, ChannelCx, Ctx, Init, OpRules, ParamDecl, ParamView, Role,
};

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
activation!(
    Erf,
    "The Gauss error function erf(x), elementwise on any per-sample shape (ONNX `Erf`, PyTorch \
     `torch.erf`); what decomposed exports of exact GELU use. Channels pass through.",
    |x| x.erf()
);
activation!(
    Sqrt,
    "The square root sqrt(x), elementwise on any per-sample shape (ONNX `Sqrt`, PyTorch \
     `torch.sqrt`; NaN for x < 0, an infinite gradient at 0). Channels pass through.",
    |x| x.sqrt()
);
activation!(
    HardSwish,
    "x * hardsigmoid(x) = x * max(0, min(1, x / 6 + 1 / 2)), elementwise on any per-sample shape \
     (ONNX `HardSwish`, PyTorch `nn.Hardswish`). Channels pass through.",
    |x| x * hard_sigmoid(x, 1.0 / 6.0, 0.5)?
);

/// max(0, min(1, alpha x + beta)); differentiable (the gradient is alpha inside (0, 1), else 0).
pub fn hard_sigmoid(x: &Tensor, alpha: f64, beta: f64) -> candle_core::Result<Tensor> {
    x.affine(alpha, beta)?.clamp(0f64, 1f64)
}

/// relu(x) + slope * min(x, 0) for any slope (a broadcastable tensor): LeakyReLU and PReLU.
fn leaky(x: &Tensor, slope: &Tensor) -> candle_core::Result<Tensor> {
    let pos = x.relu()?;
    let neg = (x - &pos)?;
    pos + neg.broadcast_mul(slope)?
}

/// Clamps every value to [min, max], either bound optional (ONNX `Clip` with constant bounds,
/// PyTorch `torch.clamp`; ReLU6 is `{"min": 0, "max": 6}`). Any per-sample shape; channels pass
/// through. Without bounds it is the identity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clip {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl Clip {
    /// ReLU6: clip to [0, 6].
    pub fn relu6() -> Self {
        Self {
            min: Some(0.0),
            max: Some(6.0),
        }
    }
}

impl OpRules for Clip {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        for (name, b) in [("min", self.min), ("max", self.max)] {
            if b.is_some_and(f64::is_nan) {
                return Err(format!("{name} is NaN"));
            }
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max) {
            if lo > hi {
                return Err(format!("min = {lo} is above max = {hi}"));
            }
        }
        same_shape(inputs)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let mut y = xs[0].clone();
        if let Some(lo) = self.min {
            y = y.maximum(lo)?;
        }
        if let Some(hi) = self.max {
            y = y.minimum(hi)?;
        }
        Ok(y)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        pass_through(cx)
    }
}

fn hard_sigmoid_alpha() -> f64 {
    0.2
}
fn hard_sigmoid_beta() -> f64 {
    0.5
}

/// y = max(0, min(1, alpha x + beta)), elementwise on any per-sample shape (ONNX `HardSigmoid`,
/// whose defaults alpha = 0.2, beta = 0.5 are the serde defaults here; PyTorch's
/// `nn.Hardsigmoid` is alpha = 1/6, beta = 0.5: [`HardSigmoid::pytorch`]). Channels pass through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardSigmoid {
    #[serde(default = "hard_sigmoid_alpha")]
    pub alpha: f64,
    #[serde(default = "hard_sigmoid_beta")]
    pub beta: f64,
}

impl Default for HardSigmoid {
    /// ONNX's defaults: alpha = 0.2, beta = 0.5.
    fn default() -> Self {
        Self {
            alpha: hard_sigmoid_alpha(),
            beta: hard_sigmoid_beta(),
        }
    }
}

impl HardSigmoid {
    /// PyTorch's `nn.Hardsigmoid`: relu6(x + 3) / 6, i.e. alpha = 1/6, beta = 0.5.
    pub fn pytorch() -> Self {
        Self {
            alpha: 1.0 / 6.0,
            beta: 0.5,
        }
    }
}

impl OpRules for HardSigmoid {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        if !self.alpha.is_finite() || !self.beta.is_finite() {
            return Err(format!(
                "alpha = {} and beta = {} must be finite",
                self.alpha, self.beta
            ));
        }
        same_shape(inputs)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        hard_sigmoid(&xs[0], self.alpha, self.beta)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        pass_through(cx)
    }
}

fn leaky_alpha() -> f64 {
    0.01
}

/// y = x for x >= 0, alpha x otherwise, elementwise on any per-sample shape (ONNX `LeakyRelu`,
/// PyTorch `nn.LeakyReLU(negative_slope = alpha)`; both default to alpha = 0.01, the serde
/// default here). Channels pass through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakyRelu {
    #[serde(default = "leaky_alpha")]
    pub alpha: f64,
}

impl Default for LeakyRelu {
    fn default() -> Self {
        Self {
            alpha: leaky_alpha(),
        }
    }
}

impl OpRules for LeakyRelu {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        if !self.alpha.is_finite() {
            return Err(format!("alpha = {} must be finite", self.alpha));
        }
        same_shape(inputs)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        let pos = x.relu()?;
        let neg = (x - &pos)?;
        pos + (neg * self.alpha)?
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        pass_through(cx)
    }
}

/// Parametric ReLU: y = x for x >= 0, a_c x otherwise, with a learned slope per channel (per-sample
/// axis 0 of any input [C, ..]: `num_parameters` = C) or one slope shared by every value
/// (`num_parameters` = 1). PyTorch `nn.PReLU(num_parameters)` (init 0.25); ONNX `PRelu` with a
/// slope of shape [C, 1, ..] or [1].
///
/// Parameter: `weight` [num_parameters], the slopes. It is trainable and counted as a parameter,
/// but it is a per-channel slope, not a weight the criteria score: its role is `Role::Bias`, so
/// it is never masked by unstructured pruning. With one slope per channel, the channels pass
/// through and index `weight` (removing a channel removes its slope).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PRelu {
    pub num_parameters: usize,
}

impl OpRules for PRelu {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        if self.num_parameters == 0 {
            return Err("num_parameters must be at least 1".into());
        }
        if self.num_parameters > 1 && x.first() != Some(&self.num_parameters) {
            return Err(format!(
                "input shape {x:?} does not have num_parameters = {} channels on axis 0",
                self.num_parameters
            ));
        }
        Ok(x.to_vec())
    }
    fn params(&self) -> Vec<ParamDecl> {
        vec![ParamDecl::new(
            "weight",
            vec![self.num_parameters],
            Role::Bias,
            Init::Constant { value: 0.25 },
        )]
    }
    fn forward(&self, xs: &[Tensor], p: &ParamView, _ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        let w = p.get("weight")?;
        let mut shape = vec![1usize; x.rank()];
        if self.num_parameters > 1 {
            shape[1] = self.num_parameters;
        }
        leaky(x, &w.reshape(shape)?)
    }
    /// Channels pass through; on axis 0 with one slope per channel they index `weight`.
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        match cx.input(0) {
            Some(c) if c.axis == 0 && self.num_parameters > 1 => cx.pass(Some(0), &[("weight", 0)]),
            _ => pass_through(cx),
        }
    }
    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        if let Some(w) = shapes.get("weight") {
            self.num_parameters = w[0];
        }
    }
}

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
