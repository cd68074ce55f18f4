//! 1-D and 2-D convolutions over NCL / NCHW inputs, with stride, symmetric padding, dilation and
//! groups, and the transposed 2-D convolution.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{
    default_true, expect_inputs, numel, AdaptInput, Chan, ChannelCx, Ctx, Init, OpRules, ParamDecl,
    ParamView, Role,
};

fn one() -> usize {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    /// [height, width]
    pub kernel: [usize; 2],
    #[serde(default = "one")]
    pub stride: usize,
    #[serde(default)]
    pub padding: usize,
    #[serde(default = "one")]
    pub dilation: usize,
    #[serde(default = "one")]
    pub groups: usize,
    #[serde(default = "default_true")]
    pub bias: bool,
}

impl Conv2d {
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: [kernel, kernel],
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }

    /// Output length of one spatial axis, or None when the kernel does not fit.
    pub fn out_len(&self, len: usize, k: usize) -> Option<usize> {
        let span = self.dilation * (k - 1) + 1;
        let padded = len + 2 * self.padding;
        (padded >= span && self.stride > 0).then(|| (padded - span) / self.stride + 1)
    }
}

/// weight [out, in per group, kernel..] and bias [out], PyTorch's init.
fn conv_params(cin: usize, out: usize, kernel: &[usize], bias: bool) -> Vec<ParamDecl> {
    let init = Init::FanInUniform {
        fan_in: cin * kernel.iter().product::<usize>(),
    };
    let mut shape = vec![out, cin];
    shape.extend_from_slice(kernel);
    let mut p = vec![ParamDecl::new("weight", shape, Role::Weight, init)];
    if bias {
        p.push(ParamDecl::new("bias", vec![out], Role::Bias, init));
    }
    p
}

/// The channel rule of every convolution: with one group it consumes the input's channels (weight
/// columns) and creates the output's (weight rows, bias); grouped and depthwise convolutions make
/// every input and output channel of one group one unit (removing it removes the group: its
/// weight rows, its bias entries and its input channels).
pub(crate) fn conv_channels(cx: &mut ChannelCx, groups: usize) -> Option<Chan> {
    if groups == 1 {
        return cx.transform(0, &[("weight", 1)], 0, &[("weight", 0), ("bias", 0)]);
    }
    let input = match cx.input(0) {
        Some(c) if c.axis == 0 => c.elems.clone(),
        _ => return cx.opaque(),
    };
    let out_n = cx.out_shape()[0];
    let out = cx.new_space(out_n, "channels");
    let (cin, cout) = (input.len() / groups, out_n / groups);
    for k in 0..groups {
        let head = out[k * cout];
        for &e in &input[k * cin..(k + 1) * cin] {
            cx.union(head, e);
        }
        for &e in &out[k * cout..(k + 1) * cout] {
            cx.union(head, e);
        }
    }
    cx.touch_all(&[("weight", 0), ("bias", 0)], &out);
    Some(Chan {
        axis: 0,
        elems: out,
    })
}

/// Channel counts from the weight [out, in per group, kernel..] after slicing.
fn resize_conv(
    shapes: &BTreeMap<String, Vec<usize>>,
    out_channels: &mut usize,
    in_channels: &mut usize,
    groups: usize,
) {
    if let Some(w) = shapes.get("weight") {
        *out_channels = w[0];
        *in_channels = w[1] * groups;
    }
}

/// After whole groups were removed, the group count follows the input width (the channels per
/// group stay).
pub(crate) fn adapt_groups(in_channels: &mut usize, groups: &mut usize, inputs: &[AdaptInput]) {
    let Some(new) = inputs.first().and_then(|i| i.new_shape.first().copied()) else {
        return;
    };
    if *groups > 1 {
        let per_group = (*in_channels / *groups).max(1);
        *groups = (new / per_group).max(1);
    }
    *in_channels = new;
}

impl OpRules for Conv2d {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let [c, h, w] = x else {
            return Err(format!(
                "expects a [channels, height, width] input, got {x:?}"
            ));
        };
        if *c != self.in_channels {
            return Err(format!(
                "input has {c} channels, in_channels is {}",
                self.in_channels
            ));
        }
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return Err(format!(
                "groups = {} must divide in_channels = {} and out_channels = {}",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        if self.kernel.contains(&0) || self.stride == 0 || self.dilation == 0 {
            return Err("kernel, stride and dilation must be positive".into());
        }
        match (
            self.out_len(*h, self.kernel[0]),
            self.out_len(*w, self.kernel[1]),
        ) {
            (Some(ho), Some(wo)) => Ok(vec![self.out_channels, ho, wo]),
            _ => Err(format!(
                "kernel {:?} does not fit the input {h}x{w}",
                self.kernel
            )),
        }
    }

    fn params(&self) -> Vec<ParamDecl> {
        conv_params(
            self.in_channels / self.groups.max(1),
            self.out_channels,
            &self.kernel,
            self.bias,
        )
    }

    fn macs(&self, _inputs: &[&[usize]], output: &[usize]) -> u64 {
        numel(output)
            * (self.in_channels / self.groups) as u64
            * (self.kernel[0] * self.kernel[1]) as u64
    }

    fn weight_macs(&self, inputs: &[&[usize]], output: &[usize]) -> Vec<(&'static str, u64)> {
        vec![("weight", self.macs(inputs, output))]
    }

    fn forward(&self, xs: &[Tensor], p: &ParamView, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        ctx.report_weight_input("weight", &xs[0]);
        if let Some(a) = ctx.sparse_weight(&xs[0]).filter(|_| self.groups == 1) {
            return crate::kernels::sparse::conv2d(
                &xs[0],
                a,
                self.kernel,
                self.stride,
                self.padding,
                self.dilation,
                p.opt("bias")?.as_ref(),
            );
        }
        let y = crate::kernels::conv::conv2d(
            &xs[0],
            &p.get("weight")?,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )?;
        match p.opt("bias")? {
            Some(b) => crate::kernels::channel::channel_bias(&y, &b),
            None => Ok(y),
        }
    }

    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        conv_channels(cx, self.groups)
    }

    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        resize_conv(
            shapes,
            &mut self.out_channels,
            &mut self.in_channels,
            self.groups,
        );
    }

    fn adapt(&mut self, inputs: &[AdaptInput]) {
        adapt_groups(&mut self.in_channels, &mut self.groups, inputs);
    }
}

/// 1-D convolution over [channels, length] inputs (speech, sequences). Runs as a 2-D convolution
/// of height 1 on the same kernels; padding is applied along the length only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    #[serde(default = "one")]
    pub stride: usize,
    #[serde(default)]
    pub padding: usize,
    #[serde(default = "one")]
    pub dilation: usize,
    #[serde(default = "one")]
    pub groups: usize,
    #[serde(default = "default_true")]
    pub bias: bool,
}

impl Conv1d {
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }
    /// The equivalent 2-D convolution (kernel 1 x k) for the shape rule.
    fn as_2d(&self) -> Conv2d {
        Conv2d {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kernel: [1, self.kernel],
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
            bias: self.bias,
        }
    }
}

impl OpRules for Conv1d {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let [c, l] = x else {
            return Err(format!("expects a [channels, length] input, got {x:?}"));
        };
        // the 2-D rule on a unit height (whose padded output rows are not used)
        let out = self.as_2d().infer(&[&[*c, 1, *l]])?;
        Ok(vec![out[0], out[2]])
    }

    fn params(&self) -> Vec<ParamDecl> {
        conv_params(
            self.in_channels / self.groups.max(1),
            self.out_channels,
            &[self.kernel],
            self.bias,
        )
    }

    fn macs(&self, _inputs: &[&[usize]], output: &[usize]) -> u64 {
        numel(output) * (self.in_channels / self.groups) as u64 * self.kernel as u64
    }

    fn weight_macs(&self, inputs: &[&[usize]], output: &[usize]) -> Vec<(&'static str, u64)> {
        vec![("weight", self.macs(inputs, output))]
    }

    fn forward(&self, xs: &[Tensor], p: &ParamView, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        ctx.report_weight_input("weight", &xs[0]);
        let x = xs[0]
            .unsqueeze(2)?
            .pad_with_zeros(3, self.padding, self.padding)?;
        let y = crate::kernels::conv::conv2d(
            &x,
            &p.get("weight")?.unsqueeze(2)?,
            self.stride,
            0,
            self.dilation,
            self.groups,
        )?
        .squeeze(2)?;
        match p.opt("bias")? {
            Some(b) => crate::kernels::channel::channel_bias(&y, &b),
            None => Ok(y),
        }
    }

    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        conv_channels(cx, self.groups)
    }

    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        resize_conv(
            shapes,
            &mut self.out_channels,
            &mut self.in_channels,
            self.groups,
        );
    }

    fn adapt(&mut self, inputs: &[AdaptInput]) {
        adapt_groups(&mut self.in_channels, &mut self.groups, inputs);
    }
}

/// Transposed 2-D convolution ("deconvolution") over [in_channels, H, W] inputs: PyTorch
/// `nn.ConvTranspose2d` (ONNX `ConvTranspose` with symmetric pads, equal strides / dilations on
/// both axes and `output_padding`), with PyTorch's weight layout.
///
/// - Parameters: `weight` [in_channels, out_channels / groups, kh, kw] (input channels on axis 0,
///   the transpose of Conv2d's layout), `bias` [out_channels]; PyTorch's init (fan-in
///   out_channels / groups * kh * kw).
/// - Output: [out_channels, H_out, W_out] with H_out = (H - 1) * stride - 2 * padding +
///   dilation * (kh - 1) + output_padding + 1 (W likewise); output_padding must be below stride
///   or dilation (PyTorch's rule).
/// - MACs: in_channels * out_channels / groups * kh * kw * H * W (every input value meets every
///   tap of its group's kernels).
/// - Forward: candle's `conv_transpose2d` (whose backward gives both gradients) per group, the
///   groups concatenated; the bias through `kernels::channel::channel_bias`. The input reported
///   for `weight` ([`Ctx::report_weight_input`]) is x [batch, in_channels, H, W], whose channels
///   index the weight's axis 0 (not axis 1 as for Conv2d).
/// - Channel rule: with one group, it consumes the input's channels (weight axis 0) and creates
///   the output's (weight axis 1, bias). With groups > 1 every input and output channel of one
///   group is one unit (as for grouped Conv2d): removing it removes the group's weight rows
///   (axis 0) and bias entries, and the group count follows the input width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvTranspose2d {
    pub in_channels: usize,
    pub out_channels: usize,
    /// [height, width]
    pub kernel: [usize; 2],
    #[serde(default = "one")]
    pub stride: usize,
    #[serde(default)]
    pub padding: usize,
    #[serde(default)]
    pub output_padding: usize,
    #[serde(default = "one")]
    pub dilation: usize,
    #[serde(default = "one")]
    pub groups: usize,
    #[serde(default = "default_true")]
    pub bias: bool,
}

impl ConvTranspose2d {
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: [kernel, kernel],
            stride: 1,
            padding: 0,
            output_padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }

    /// Output length of one spatial axis, or None when it would be below 1.
    pub fn out_len(&self, len: usize, k: usize) -> Option<usize> {
        let n = (len as i64 - 1) * self.stride as i64 - 2 * self.padding as i64
            + self.dilation as i64 * (k as i64 - 1)
            + self.output_padding as i64
            + 1;
        (n >= 1).then_some(n as usize)
    }
}

impl OpRules for ConvTranspose2d {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let [c, h, w] = x else {
            return Err(format!(
                "expects a [channels, height, width] input, got {x:?}"
            ));
        };
        if *c != self.in_channels {
            return Err(format!(
                "input has {c} channels, in_channels is {}",
                self.in_channels
            ));
        }
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return Err(format!(
                "groups = {} must divide in_channels = {} and out_channels = {}",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        if self.kernel.contains(&0) || self.stride == 0 || self.dilation == 0 {
            return Err("kernel, stride and dilation must be positive".into());
        }
        if self.output_padding >= self.stride.max(self.dilation) {
            return Err(format!(
                "output_padding = {} must be below stride = {} or dilation = {}",
                self.output_padding, self.stride, self.dilation
            ));
        }
        match (
            self.out_len(*h, self.kernel[0]),
            self.out_len(*w, self.kernel[1]),
        ) {
            (Some(ho), Some(wo)) => Ok(vec![self.out_channels, ho, wo]),
            _ => Err(format!(
                "padding = {} leaves no output for the input {h}x{w} and kernel {:?}",
                self.padding, self.kernel
            )),
        }
    }

    fn params(&self) -> Vec<ParamDecl> {
        let per_group = self.out_channels / self.groups.max(1);
        let init = Init::FanInUniform {
            fan_in: per_group * self.kernel[0] * self.kernel[1],
        };
        let mut p = vec![ParamDecl::new(
            "weight",
            vec![self.in_channels, per_group, self.kernel[0], self.kernel[1]],
            Role::Weight,
            init,
        )];
        if self.bias {
            p.push(ParamDecl::new(
                "bias",
                vec![self.out_channels],
                Role::Bias,
                init,
            ));
        }
        p
    }

    fn macs(&self, inputs: &[&[usize]], _output: &[usize]) -> u64 {
        numel(inputs[0])
            * (self.out_channels / self.groups) as u64
            * (self.kernel[0] * self.kernel[1]) as u64
    }

    fn weight_macs(&self, inputs: &[&[usize]], output: &[usize]) -> Vec<(&'static str, u64)> {
        vec![("weight", self.macs(inputs, output))]
    }

    fn forward(&self, xs: &[Tensor], p: &ParamView, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        ctx.report_weight_input("weight", x);
        let w = p.get("weight")?;
        let conv = |x: &Tensor, w: &Tensor| {
            x.contiguous()?.conv_transpose2d(
                &w.contiguous()?,
                self.padding,
                self.output_padding,
                self.stride,
                self.dilation,
            )
        };
        let y = if self.groups == 1 {
            conv(x, &w)?
        } else {
            let cin = self.in_channels / self.groups;
            let parts = (0..self.groups)
                .map(|g| conv(&x.narrow(1, g * cin, cin)?, &w.narrow(0, g * cin, cin)?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&parts, 1)?
        };
        match p.opt("bias")? {
            Some(b) => crate::kernels::channel::channel_bias(&y, &b),
            None => Ok(y),
        }
    }

    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        if self.groups == 1 {
            return cx.transform(0, &[("weight", 0)], 0, &[("weight", 1), ("bias", 0)]);
        }
        let input = match cx.input(0) {
            Some(c) if c.axis == 0 => c.elems.clone(),
            _ => return cx.opaque(),
        };
        let out_n = cx.out_shape()[0];
        let out = cx.new_space(out_n, "channels");
        let (cin, cout) = (input.len() / self.groups, out_n / self.groups);
        for k in 0..self.groups {
            let head = out[k * cout];
            for &e in input[k * cin..(k + 1) * cin]
                .iter()
                .chain(&out[k * cout..(k + 1) * cout])
            {
                cx.union(head, e);
            }
        }
        cx.touch_all(&[("weight", 0)], &input);
        cx.touch_all(&[("bias", 0)], &out);
        Some(Chan {
            axis: 0,
            elems: out,
        })
    }

    /// in_channels from the weight's axis 0; with one group out_channels from its axis 1 (with
    /// more, whole groups go and [`adapt`](OpRules::adapt) re-derives both counts).
    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        if let Some(w) = shapes.get("weight") {
            self.in_channels = w[0];
            if self.groups == 1 {
                self.out_channels = w[1];
            }
        }
    }

    /// After whole groups were removed, the group count follows the input width (the channels per
    /// group stay) and out_channels with it.
    fn adapt(&mut self, inputs: &[AdaptInput]) {
        let Some(input) = inputs.first() else { return };
        let (Some(&old), Some(&new)) = (input.old_shape.first(), input.new_shape.first()) else {
            return;
        };
        if self.groups > 1 && old != new {
            let per_in = (old / self.groups).max(1);
            let per_out = self.out_channels / self.groups;
            self.groups = (new / per_in).max(1);
            self.out_channels = per_out * self.groups;
        }
        self.in_channels = new;
    }
}
