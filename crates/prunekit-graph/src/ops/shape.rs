//! Flatten and Reshape of the per-sample shape (the batch axis is kept).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{
    expect_inputs, numel, resolve_axis, AdaptInput, Chan, ChannelCx, Ctx, OpRules, ParamView,
};

/// [d0, d1, ..] -> [d0 * d1 * ..].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flatten {}

impl OpRules for Flatten {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        Ok(vec![numel(expect_inputs(inputs, 1)?[0]) as usize])
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        xs[0].flatten_from(1)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let c = cx.input(0)?.clone();
        let inner: usize = cx.in_shape(0)[c.axis + 1..].iter().product();
        let n = cx.out_shape()[0];
        let elems = (0..n)
            .map(|p| c.elems[(p / inner) % c.elems.len()])
            .collect();
        Some(Chan { axis: 0, elems })
    }
}

/// Reshape to a fixed per-sample shape with the same number of elements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reshape {
    pub shape: Vec<usize>,
}

impl OpRules for Reshape {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        if numel(x) != numel(&self.shape) {
            return Err(format!(
                "cannot reshape {x:?} to {:?}: element counts differ",
                self.shape
            ));
        }
        Ok(self.shape.clone())
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let mut dims = vec![xs[0].dim(0)?];
        dims.extend_from_slice(&self.shape);
        xs[0].reshape(dims)
    }
    /// The channel axis survives when some output axis holds exactly the input's channel axis
    /// (same extent, same number of elements before it); a reshape to one axis flattens. Any
    /// other reshape mixes channels and is opaque.
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let c = cx.input(0)?.clone();
        let x = cx.in_shape(0).to_vec();
        if let Some(j) = kept_axis(&x, c.axis, &self.shape) {
            return Some(Chan {
                axis: j,
                elems: c.elems,
            });
        }
        if self.shape.len() == 1 {
            let inner: usize = x[c.axis + 1..].iter().product();
            let elems = (0..self.shape[0])
                .map(|p| c.elems[(p / inner) % c.elems.len()])
                .collect();
            return Some(Chan { axis: 0, elems });
        }
        cx.opaque()
    }
    fn adapt(&mut self, inputs: &[AdaptInput]) {
        let Some(input) = inputs.first() else { return };
        let Some((axis, _)) = &input.kept else { return };
        if let Some(j) = kept_axis(input.old_shape, *axis, &self.shape) {
            self.shape[j] = input.new_shape[*axis];
        } else if self.shape.len() == 1 {
            self.shape[0] = numel(input.new_shape) as usize;
        }
    }
}

/// The output axis that is the input's `axis` unchanged, if any.
fn kept_axis(x: &[usize], axis: usize, out: &[usize]) -> Option<usize> {
    let before: usize = x[..axis].iter().product();
    (0..out.len()).find(|&j| out[j] == x[axis] && out[..j].iter().product::<usize>() == before)
}

/// A contiguous range `start..start + len` of one per-sample axis: one piece of a Split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Narrow {
    pub axis: isize,
    pub start: usize,
    pub len: usize,
}

impl OpRules for Narrow {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let axis = resolve_axis(self.axis, x.len())?;
        if self.len == 0 || self.start + self.len > x[axis] {
            return Err(format!(
                "range {}..{} is empty or outside axis {axis} of {x:?}",
                self.start,
                self.start + self.len
            ));
        }
        let mut out = x.to_vec();
        out[axis] = self.len;
        Ok(out)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let axis = resolve_axis(self.axis, xs[0].rank() - 1).map_err(candle_core::Error::Msg)?;
        xs[0].narrow(axis + 1, self.start, self.len)
    }
    /// Along the channel axis the piece takes its range of elements; otherwise channels pass.
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let axis = resolve_axis(self.axis, cx.in_shape(0).len()).ok()?;
        let c = cx.input(0)?.clone();
        if c.axis != axis {
            return cx.pass(None, &[]);
        }
        Some(Chan {
            axis,
            elems: c.elems[self.start..self.start + self.len].to_vec(),
        })
    }
    /// The range shrinks to the kept positions before and inside it.
    fn adapt(&mut self, inputs: &[AdaptInput]) {
        let Some(input) = inputs.first() else { return };
        let Some((chan_axis, kept)) = &input.kept else {
            return;
        };
        let Ok(axis) = resolve_axis(self.axis, input.old_shape.len()) else {
            return;
        };
        if *chan_axis == axis && self.start + self.len <= kept.len() {
            let before = kept[..self.start].iter().filter(|&&k| k).count();
            let inside = kept[self.start..self.start + self.len]
                .iter()
                .filter(|&&k| k)
                .count();
            self.start = before;
            self.len = inside;
        }
    }
}
