//! Linear: y = x W^T + b over the last axis.

use std::collections::BTreeMap;

use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};

use super::{
    default_true, expect_inputs, numel, Chan, ChannelCx, Ctx, Init, OpRules, ParamDecl, ParamView,
    Role,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    #[serde(default = "default_true")]
    pub bias: bool,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Self {
            in_features,
            out_features,
            bias: true,
        }
    }
}

impl OpRules for Linear {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        match x.last() {
            Some(&f) if f == self.in_features => {
                let mut out = x.to_vec();
                *out.last_mut().expect("non-empty") = self.out_features;
                Ok(out)
            }
            _ => Err(format!(
                "input shape {x:?} does not end in in_features = {}",
                self.in_features
            )),
        }
    }

    fn params(&self) -> Vec<ParamDecl> {
        let init = Init::FanInUniform {
            fan_in: self.in_features,
        };
        let mut p = vec![ParamDecl::new(
            "weight",
            vec![self.out_features, self.in_features],
            Role::Weight,
            init,
        )];
        if self.bias {
            p.push(ParamDecl::new(
                "bias",
                vec![self.out_features],
                Role::Bias,
                init,
            ));
        }
        p
    }

    fn macs(&self, _inputs: &[&[usize]], output: &[usize]) -> u64 {
        numel(output) * self.in_features as u64
    }

    fn weight_macs(&self, inputs: &[&[usize]], output: &[usize]) -> Vec<(&'static str, u64)> {
        vec![("weight", self.macs(inputs, output))]
    }

    fn forward(&self, xs: &[Tensor], p: &ParamView, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        ctx.report_weight_input("weight", &xs[0]);
        candle_nn::Linear::new(p.get("weight")?, p.opt("bias")?).forward(&xs[0])
    }

    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let last = cx.last_axis(0);
        cx.transform(last, &[("weight", 1)], last, &[("weight", 0), ("bias", 0)])
    }

    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        if let Some(w) = shapes.get("weight") {
            self.out_features = w[0];
            self.in_features = w[1];
        }
    }
}
