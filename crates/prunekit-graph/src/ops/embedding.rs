//! Embedding: integer ids [T] -> vectors [T, D].

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
