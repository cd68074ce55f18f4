//! Embeddings: integer ids [T] -> vectors [T, D], and learned positional embeddings added to [T, D].

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{expect_inputs, Chan, ChannelCx, Ctx, Init, OpRules, ParamDecl, ParamView, Role};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embedding {
    pub num_embeddings: usize,
    pub embedding_dim: usize,
}

impl OpRules for Embedding {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let mut out = x.to_vec();
        out.push(self.embedding_dim);
        Ok(out)
    }

    fn params(&self) -> Vec<ParamDecl> {
        vec![ParamDecl::new(
            "weight",
            vec![self.num_embeddings, self.embedding_dim],
            Role::Weight,
            Init::Normal { std: 1.0 },
        )]
    }

    fn forward(&self, xs: &[Tensor], p: &ParamView, _ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let ids = &xs[0];
        let mut out_dims = ids.dims().to_vec();
        out_dims.push(self.embedding_dim);
        let flat = ids.flatten_all()?;
        let max = flat
            .max(0)?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        if max as usize >= self.num_embeddings {
            candle_core::bail!(
                "embedding id {max} is out of range (num_embeddings = {})",
                self.num_embeddings
            );
        }
        p.get("weight")?.index_select(&flat, 0)?.reshape(out_dims)
    }

    /// The embedding width is a new channel space on the output's last axis.
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        cx.protect_inputs();
        let elems = cx.new_space(self.embedding_dim, "channels");
        cx.touch_all(&[("weight", 1)], &elems);
        Some(Chan {
            axis: cx.out_shape().len() - 1,
            elems,
        })
    }

    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        if let Some(s) = shapes.get("weight") {
            self.num_embeddings = s[0];
            self.embedding_dim = s[1];
        }
    }
}

/// Learned positional embedding: x [T, dim] -> x + weight[..T], with `weight` [max_len, dim] (one
/// learned vector per position, GPT-2 style) and T <= max_len.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionalEmbedding {
    pub max_len: usize,
    pub dim: usize,
}

impl OpRules for PositionalEmbedding {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        match *x {
            [t, d] if d == self.dim && t <= self.max_len => Ok(x.to_vec()),
            [t, d] if d == self.dim => Err(format!(
                "the sequence has {t} positions, more than max_len = {}",
                self.max_len
            )),
            _ => Err(format!("input shape {x:?} is not [T, dim = {}]", self.dim)),
        }
    }

    fn params(&self) -> Vec<ParamDecl> {
        vec![ParamDecl::new(
            "weight",
            vec![self.max_len, self.dim],
            Role::Weight,
            Init::Normal { std: 0.02 },
        )]
    }

    fn forward(&self, xs: &[Tensor], p: &ParamView, _ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        let steps = x.dim(1)?;
        if steps > self.max_len {
            candle_core::bail!(
                "the sequence has {steps} positions, more than max_len = {}",
                self.max_len
            );
        }
        x.broadcast_add(&p.get("weight")?.narrow(0, 0, steps)?)
    }

    /// The channels on the last axis pass through and index the table's columns.
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let last = cx.last_axis(0);
        cx.pass(Some(last), &[("weight", 1)])
    }

    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        if let Some(&[max_len, dim]) = shapes.get("weight").map(Vec::as_slice) {
            self.max_len = max_len;
            self.dim = dim;
        }
    }
}
