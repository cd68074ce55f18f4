//! Linear: y = x W^T + b over the last axis; MatMul: the product of two activations.

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
        if let Some(a) = ctx.sparse_weight(&xs[0]) {
            return crate::kernels::sparse::linear(&xs[0], a, p.opt("bias")?.as_ref());
        }
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

/// The product of two activations with numpy `matmul` rules on per-sample shapes: a [.., M, K]
/// times b [.., K, N] gives [.., M, N], the leading axes broadcast (aligned from the right, a
/// batch axis of 1 against any batch, as a [`super::Constant`] operand has); a rank-1 a [K] is a
/// row [1, K] and a rank-1 b [K] a column [K, 1], their unit axis dropped from the output (both
/// rank 1: a dot product, per-sample shape []). ONNX `MatMul`, PyTorch `torch.matmul` (attention
/// scores q k^T of a decomposed export, a MatMul by a constant weight). MACs: M K N times the
/// broadcast leading axes.
///
/// Channel rule: none. Both operands' channels are protected (`cx.opaque()`): a channel on K is
/// contracted between two activations, and one on M or N would index the other operand's values
/// in ways no parameter slice follows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatMul {}

/// The matrix geometry of a matmul of per-sample shapes.
struct MatMulShape {
    /// the broadcast leading axes
    lead: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    out: Vec<usize>,
}

/// The geometry of a matmul of per-sample shapes a and b, or why they do not fit.
fn matmul_shape(a: &[usize], b: &[usize]) -> Result<MatMulShape, String> {
    if a.is_empty() || b.is_empty() {
        return Err(format!(
            "expects inputs of rank at least 1, got {a:?} and {b:?}"
        ));
    }
    let (a_lead, m, ka) = match a {
        [k] => (&a[..0], 1, *k),
        _ => (&a[..a.len() - 2], a[a.len() - 2], a[a.len() - 1]),
    };
    let (b_lead, kb, n) = match b {
        [k] => (&b[..0], *k, 1),
        _ => (&b[..b.len() - 2], b[b.len() - 2], b[b.len() - 1]),
    };
    if ka != kb {
        return Err(format!(
            "the inner axes differ: {a:?} x {b:?} multiplies K = {ka} by K = {kb}"
        ));
    }
    let rank = a_lead.len().max(b_lead.len());
    let mut lead = vec![1usize; rank];
    for s in [a_lead, b_lead] {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut lead[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(format!(
                    "the leading axes of {a:?} and {b:?} do not broadcast"
                ));
            }
        }
    }
    let mut out = lead.clone();
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(MatMulShape {
        lead,
        m,
        k: ka,
        n,
        out,
    })
}

impl OpRules for MatMul {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let ins = expect_inputs(inputs, 2)?;
        Ok(matmul_shape(ins[0], ins[1])?.out)
    }

    fn macs(&self, inputs: &[&[usize]], _output: &[usize]) -> u64 {
        match matmul_shape(inputs[0], inputs[1]) {
            Ok(s) => numel(&s.lead) * (s.m * s.k * s.n) as u64,
            Err(_) => 0,
        }
    }

    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let (a_row, b_col) = (xs[0].rank() == 2, xs[1].rank() == 2);
        // per-sample [K] as a row [1, K] and a column [K, 1]
        let a = if a_row {
            xs[0].unsqueeze(1)?
        } else {
            xs[0].clone()
        };
        let b = if b_col {
            xs[1].unsqueeze(2)?
        } else {
            xs[1].clone()
        };
        // unit axes after the batch axis align the leading axes from the right
        let rank = a.rank().max(b.rank());
        let align = |x: &Tensor| -> candle_core::Result<Tensor> {
            let mut dims = vec![x.dim(0)?];
            dims.extend(std::iter::repeat_n(1, rank - x.rank()));
            dims.extend_from_slice(&x.dims()[1..]);
            x.reshape(dims)
        };
        let (a, b) = (align(&a)?, align(&b)?);
        let lead: Vec<usize> = a.dims()[..rank - 2]
            .iter()
            .zip(&b.dims()[..rank - 2])
            .map(|(&x, &y)| x.max(y))
            .collect();
        // broadcast, then one batch axis (candle's CPU matmul takes at most two batch axes)
        let batch: usize = lead.iter().product();
        let expand = |x: &Tensor| -> candle_core::Result<Tensor> {
            let mut dims = lead.clone();
            dims.extend_from_slice(&x.dims()[rank - 2..]);
            let x = if dims == x.dims() {
                x.contiguous()?
            } else {
                x.broadcast_as(dims)?.contiguous()?
            };
            let (r, c) = (x.dim(rank - 2)?, x.dim(rank - 1)?);
            x.reshape((batch, r, c))
        };
        let y = expand(&a)?.matmul(&expand(&b)?)?;
        let mut dims = lead.clone();
        dims.extend_from_slice(&y.dims()[1..]);
        let mut y = y.reshape(dims)?;
        if b_col {
            y = y.squeeze(rank - 1)?;
        }
        if a_row {
            y = y.squeeze(rank - 2)?;
        }
        Ok(y)
    }

    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        cx.opaque()
    }
}
