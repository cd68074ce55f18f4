//! Normalisations, composed from differentiable candle ops (candle's fused layer_norm drops gradients).

use std::collections::BTreeMap;

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use super::{
    default_true, expect_inputs, AdaptInput, Chan, ChannelCx, Ctx, Init, OpRules, ParamDecl,
    ParamView, Role,
};

fn default_eps() -> f64 {
    1e-5
}
fn default_momentum() -> f64 {
    0.1
}

/// Batch normalisation over channel axis 0 of the per-sample shape ([C], [C, L] or [C, H, W]): BatchNorm1d
/// and BatchNorm2d. Training mode uses batch statistics and updates the running statistics (PyTorch's rule,
/// unbiased running variance); eval mode uses the running statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNorm {
    pub num_features: usize,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default = "default_true")]
    pub affine: bool,
}

impl BatchNorm {
    pub fn new(num_features: usize) -> Self {
        Self {
            num_features,
            eps: default_eps(),
            momentum: default_momentum(),
            affine: true,
        }
    }

    /// The forward pass; `fuse_relu` (honoured on the fused-kernel path only) applies a following ReLU.
    fn forward_impl(
        &self,
        xs: &[Tensor],
        p: &ParamView,
        ctx: &mut Ctx,
        fuse_relu: bool,
    ) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        let c = self.num_features;
        // [B, C, rest..] -> [C, B*rest]: the statistics are one contiguous reduction per channel.
        let dims = x.dims().to_vec();
        let mut bshape = vec![1usize; dims.len()];
        bshape[1] = c;
        if ctx.train && crate::kernels::supported(x) {
            // fused kernel: one pass for the statistics, one to normalise (and the same backward)
            let (gamma, beta) = if self.affine {
                (p.get("weight")?, p.get("bias")?)
            } else {
                let dt = x.dtype();
                (
                    Tensor::ones(c, dt, x.device())?,
                    Tensor::zeros(c, dt, x.device())?,
                )
            };
            let (y, mean, var) =
                crate::kernels::batch_norm::train(x, &gamma, &beta, self.eps, fuse_relu)?;
            let n = x.elem_count() / c;
            if n < 2 {
                candle_core::bail!(
                    "batch norm in training mode needs more than one value per channel"
                );
            }
            let m = self.momentum;
            let unbiased = n as f64 / (n as f64 - 1.0);
            for (name, stat, factor) in
                [("running_mean", mean, 1.0), ("running_var", var, unbiased)]
            {
                let v = p.var(name)?;
                let upd: Vec<f64> = stat.iter().map(|s| s * factor * m).collect();
                let upd = Tensor::from_vec(upd, c, x.device())?.to_dtype(v.dtype())?;
                v.set(&((v.as_tensor() * (1.0 - m))? + upd)?)?;
            }
            Ok(y)
        } else if ctx.train {
            let xt = x.transpose(0, 1)?;
            let tdims = xt.dims().to_vec();
            let xt = xt.flatten_from(1)?.contiguous()?;
            let n = xt.dim(1)?;
            if n < 2 {
                candle_core::bail!(
                    "batch norm in training mode needs more than one value per channel"
                );
            }
            let mean = xt.mean_keepdim(1)?;
            let xc = xt.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(1)?;
            let m = self.momentum;
            let rm = p.var("running_mean")?;
            rm.set(&((rm.as_tensor() * (1.0 - m))? + (mean.flatten_all()?.detach() * m)?)?)?;
            let rv = p.var("running_var")?;
            let unbiased = var.flatten_all()?.detach() * (m * n as f64 / (n as f64 - 1.0));
            rv.set(&((rv.as_tensor() * (1.0 - m))? + unbiased?)?)?;
            let mut y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
            if self.affine {
                y = y
                    .broadcast_mul(&p.get("weight")?.reshape((c, 1))?)?
                    .broadcast_add(&p.get("bias")?.reshape((c, 1))?)?;
            }
            y.reshape(tdims)?.transpose(0, 1)
        } else {
            // y = x * scale + shift with scale = gamma / sqrt(var + eps), shift = beta - mean * scale
            let inv = (p.get("running_var")? + self.eps)?.sqrt()?.recip()?;
            let (scale, shift) = if self.affine {
                let scale = (p.get("weight")? * inv)?;
                let shift = (p.get("bias")? - (p.get("running_mean")? * &scale)?)?;
                (scale, shift)
            } else {
                let shift = (p.get("running_mean")?.neg()? * &inv)?;
                (inv, shift)
            };
            crate::kernels::channel::channel_affine(x, &scale, &shift)
        }
    }
}

impl OpRules for BatchNorm {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        match x.first() {
            Some(&c) if c == self.num_features => Ok(x.to_vec()),
            _ => Err(format!(
                "input shape {x:?} does not start with num_features = {}",
                self.num_features
            )),
        }
    }

    fn params(&self) -> Vec<ParamDecl> {
        let c = vec![self.num_features];
        let mut p = Vec::new();
        if self.affine {
            p.push(ParamDecl::new(
                "weight",
                c.clone(),
                Role::Weight,
                Init::Ones,
            ));
            p.push(ParamDecl::new("bias", c.clone(), Role::Bias, Init::Zeros));
        }
        p.push(ParamDecl::new(
            "running_mean",
            c.clone(),
            Role::Buffer,
            Init::Zeros,
        ));
        p.push(ParamDecl::new("running_var", c, Role::Buffer, Init::Ones));
        p
    }

    fn forward(&self, xs: &[Tensor], p: &ParamView, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        self.forward_impl(xs, p, ctx, false)
    }

    fn forward_fused_relu(
        &self,
        xs: &[Tensor],
        p: &ParamView,
        ctx: &mut Ctx,
    ) -> candle_core::Result<Option<Tensor>> {
        if ctx.train && crate::kernels::supported(&xs[0]) {
            self.forward_impl(xs, p, ctx, true).map(Some)
        } else {
            Ok(None)
        }
    }

    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        cx.pass(
            Some(0),
            &[
                ("running_mean", 0),
                ("running_var", 0),
                ("weight", 0),
                ("bias", 0),
            ],
        )
    }

    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        if let Some(s) = shapes.get("running_mean") {
            self.num_features = s[0];
        }
    }
}

/// Layer normalisation over the last axis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerNorm {
    pub normalized_shape: usize,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_true")]
    pub affine: bool,
}

impl LayerNorm {
    pub fn new(normalized_shape: usize) -> Self {
        Self {
            normalized_shape,
            eps: default_eps(),
            affine: true,
        }
    }
}

impl OpRules for LayerNorm {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        match x.last() {
            Some(&c) if c == self.normalized_shape => Ok(x.to_vec()),
            _ => Err(format!(
                "input shape {x:?} does not end in normalized_shape = {}",
                self.normalized_shape
            )),
        }
    }

    fn params(&self) -> Vec<ParamDecl> {
        if !self.affine {
            return Vec::new();
        }
        let c = vec![self.normalized_shape];
        vec![
            ParamDecl::new("weight", c.clone(), Role::Weight, Init::Ones),
            ParamDecl::new("bias", c, Role::Bias, Init::Zeros),
        ]
    }

    fn forward(&self, xs: &[Tensor], p: &ParamView, _ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let y = normalise_last(&xs[0], p.mask("weight"), self.eps, true)?;
        if self.affine {
            y.broadcast_mul(&p.get("weight")?)?
                .broadcast_add(&p.get("bias")?)
        } else {
            Ok(y)
        }
    }

    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        last_axis_norm_channels(cx, self.affine, &[("weight", 0), ("bias", 0)])
    }

    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        if let Some(s) = shapes.get("weight") {
            self.normalized_shape = s[0];
        }
    }
}

/// Normalises over the last axis: (x - mean) / sqrt(var + eps) when `center`, x / sqrt(mean(x^2) +
/// eps) (RMSNorm) otherwise. With a channel mask (the weight's mask after structured masking), the
/// statistics are taken over the kept channels only, so a masked model computes what the model
/// with those channels removed computes.
pub(crate) fn normalise_last(
    x: &Tensor,
    mask: Option<&Tensor>,
    eps: f64,
    center: bool,
) -> candle_core::Result<Tensor> {
    let mean = |t: &Tensor| -> candle_core::Result<Tensor> {
        match mask {
            Some(m) => {
                let kept = m
                    .to_dtype(candle_core::DType::F64)?
                    .sum_all()?
                    .to_scalar::<f64>()?;
                t.broadcast_mul(&m.to_dtype(t.dtype())?)?
                    .sum_keepdim(D::Minus1)?
                    .affine(1.0 / kept.max(1.0), 0.0)
            }
            None => t.mean_keepdim(D::Minus1),
        }
    };
    let xc = if center {
        x.broadcast_sub(&mean(x)?)?
    } else {
        x.clone()
    };
    let var = mean(&xc.sqr()?)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// Channel rule of a normalisation over the last axis: channels on that axis pass through and
/// index `params` (the weight's mask then carries which are kept); without a weight to carry the
/// mask they are protected. Channels on another axis pass through untouched.
pub(crate) fn last_axis_norm_channels(
    cx: &mut ChannelCx,
    has_weight: bool,
    params: &[(&'static str, usize)],
) -> Option<Chan> {
    let last = cx.last_axis(0);
    match cx.input(0) {
        Some(c) if c.axis == last && has_weight => cx.pass(Some(last), params),
        Some(c) if c.axis == last => cx.opaque(),
        Some(_) => cx.pass(None, &[]),
        None => None,
    }
}

/// Root-mean-square normalisation over the last axis (Llama): x / sqrt(mean(x^2) + eps) * weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmsNorm {
    pub dim: usize,
    #[serde(default = "default_rms_eps")]
    pub eps: f64,
}

fn default_rms_eps() -> f64 {
    1e-6
}

impl RmsNorm {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            eps: default_rms_eps(),
        }
    }
}

impl OpRules for RmsNorm {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        match x.last() {
            Some(&c) if c == self.dim => Ok(x.to_vec()),
            _ => Err(format!(
                "input shape {x:?} does not end in dim = {}",
                self.dim
            )),
        }
    }

    fn params(&self) -> Vec<ParamDecl> {
        vec![ParamDecl::new(
            "weight",
            vec![self.dim],
            Role::Weight,
            Init::Ones,
        )]
    }

    fn forward(&self, xs: &[Tensor], p: &ParamView, _ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        normalise_last(&xs[0], p.mask("weight"), self.eps, false)?.broadcast_mul(&p.get("weight")?)
    }

    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        last_axis_norm_channels(cx, true, &[("weight", 0)])
    }

    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        if let Some(s) = shapes.get("weight") {
            self.dim = s[0];
        }
    }
}

/// Group normalisation over channel axis 0 of [C, rest..]: statistics per group of C / num_groups
/// channels (over the group's channels and every position), then a per-channel affine map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupNorm {
    pub num_groups: usize,
    pub num_channels: usize,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_true")]
    pub affine: bool,
}

impl GroupNorm {
    pub fn new(num_groups: usize, num_channels: usize) -> Self {
        Self {
            num_groups,
            num_channels,
            eps: default_eps(),
            affine: true,
        }
    }
}

impl OpRules for GroupNorm {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        if x.first() != Some(&self.num_channels) {
            return Err(format!(
                "input shape {x:?} does not start with num_channels = {}",
                self.num_channels
            ));
        }
        if self.num_groups == 0 || !self.num_channels.is_multiple_of(self.num_groups) {
            return Err(format!(
                "num_groups = {} must divide num_channels = {}",
                self.num_groups, self.num_channels
            ));
        }
        Ok(x.to_vec())
    }

    fn params(&self) -> Vec<ParamDecl> {
        if !self.affine {
            return Vec::new();
        }
        let c = vec![self.num_channels];
        vec![
            ParamDecl::new("weight", c.clone(), Role::Weight, Init::Ones),
            ParamDecl::new("bias", c, Role::Bias, Init::Zeros),
        ]
    }

    fn forward(&self, xs: &[Tensor], p: &ParamView, _ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        let dims = x.dims().to_vec();
        let b = dims[0];
        let g = x.reshape((b, self.num_groups, ()))?;
        let y = normalise_last(&g, None, self.eps, true)?.reshape(dims.clone())?;
        if !self.affine {
            return Ok(y);
        }
        let mut bshape = vec![1usize; dims.len()];
        bshape[1] = self.num_channels;
        y.broadcast_mul(&p.get("weight")?.reshape(bshape.clone())?)?
            .broadcast_add(&p.get("bias")?.reshape(bshape)?)
    }

    /// The channels of one group form one unit: removing it removes the whole group, so the
    /// statistics of the kept groups are unchanged.
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let c = match cx.input(0) {
            Some(c) if c.axis == 0 => c.clone(),
            _ => return cx.opaque(),
        };
        let per = c.elems.len() / self.num_groups.max(1);
        for k in 0..self.num_groups {
            for &e in &c.elems[k * per + 1..(k + 1) * per] {
                cx.union(c.elems[k * per], e);
            }
        }
        cx.pass(Some(0), &[("weight", 0), ("bias", 0)])
    }

    fn adapt(&mut self, inputs: &[AdaptInput]) {
        let Some(&new) = inputs.first().and_then(|i| i.new_shape.first()) else {
            return;
        };
        let per = (self.num_channels / self.num_groups.max(1)).max(1);
        self.num_groups = (new / per).max(1);
        self.num_channels = new;
    }
}

/// L2 normalisation over the last axis: [N, .., dim] -> x / max(||x||_2, eps), the norm taken
/// over the last axis (`torch.nn.functional.normalize(x, p=2, dim=-1)`, sentence-transformers'
/// `Normalize` module), so a zero vector stays zero. No parameters; MACs 2 per element.
///
/// Computed as x / sqrt(max(sum x^2, eps^2)), the same value, whose gradient is finite at a
/// zero vector (the gradient of a norm at 0 is not).
///
/// Channel rule: the channels on the last axis pass through. Removing channels that masking
/// zeroes leaves the norm unchanged, so removal equals masking when the masked channels reach
/// this op as zeros (the output of a masked Linear, norm, embedding or attention, after ReLU,
/// GELU, tanh, pooling); an op between them that maps 0 to another value (a sigmoid) would make
/// the masked model's norm count them. Channels on another axis pass through untouched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2Normalize {
    pub dim: usize,
    #[serde(default = "default_l2_eps")]
    pub eps: f64,
}

fn default_l2_eps() -> f64 {
    1e-12
}

impl L2Normalize {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            eps: default_l2_eps(),
        }
    }
}

impl OpRules for L2Normalize {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(format!("eps must be positive and finite, got {}", self.eps));
        }
        match x.last() {
            Some(&c) if c == self.dim => Ok(x.to_vec()),
            _ => Err(format!(
                "input shape {x:?} does not end in dim = {}",
                self.dim
            )),
        }
    }
    fn macs(&self, inputs: &[&[usize]], _output: &[usize]) -> u64 {
        inputs.first().map_or(0, |x| 2 * super::numel(x))
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        let norm = x
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .maximum(self.eps * self.eps)?
            .sqrt()?;
        x.broadcast_div(&norm)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        cx.pass(None, &[])
    }
    fn adapt(&mut self, inputs: &[AdaptInput]) {
        if let Some(&d) = inputs.first().and_then(|x| x.new_shape.last()) {
            self.dim = d;
        }
    }
}
