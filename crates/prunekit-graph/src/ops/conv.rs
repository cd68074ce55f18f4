//! 2-D convolution over NCHW inputs, with stride, symmetric padding, dilation and groups.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{
    default_true, expect_inputs, numel, ChannelAxis, ChannelRule, Ctx, Init, OpRules, ParamDecl,
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
        let cin = self.in_channels / self.groups.max(1);
        let init = Init::FanInUniform {
            fan_in: cin * self.kernel[0] * self.kernel[1],
        };
        let mut p = vec![ParamDecl::new(
            "weight",
            vec![self.out_channels, cin, self.kernel[0], self.kernel[1]],
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

    fn macs(&self, _inputs: &[&[usize]], output: &[usize]) -> u64 {
        numel(output)
            * (self.in_channels / self.groups) as u64
            * (self.kernel[0] * self.kernel[1]) as u64
    }

    fn forward(&self, xs: &[Tensor], p: &ParamView, _ctx: &mut Ctx) -> candle_core::Result<Tensor> {
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

    fn channels(&self) -> ChannelRule {
        if self.groups != 1 {
            // grouped and depthwise convolutions couple input and output channels: the dependency
            // analysis issue adds that rule.
            return ChannelRule::Opaque;
        }
        ChannelRule::Transform {
            input_axis: ChannelAxis::First,
            output_axis: ChannelAxis::First,
            out_params: vec![("weight", 0), ("bias", 0)],
            in_params: vec![("weight", 1)],
        }
    }

    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        if let Some(w) = shapes.get("weight") {
            self.out_channels = w[0];
            self.in_channels = w[1] * self.groups;
        }
    }
}
