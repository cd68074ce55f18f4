//! Shape ops on the per-sample shape (the batch axis is kept): Flatten, Reshape, Narrow, Transpose,
//! Slice, Gather with constant indices, Pad.

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

/// Permutes the per-sample axes: output axis i is input axis `perm[i]` (the batch axis stays
/// first). ONNX `Transpose` with the batch axis fixed (`perm` here is ONNX's perm without its
/// leading 0, every entry minus 1), PyTorch `x.permute(0, 1 + perm[0], ..)`. A Conv1d's [C, T] to
/// the [T, C] an LSTM or Linear reads; a channel shuffle's [g, C/g, H, W] -> [C/g, g, H, W].
///
/// Channel rule: the input's channel axis moves to its permuted position, carrying its elements,
/// so a layer whose channels are transposed onto another axis is pruned through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transpose {
    pub perm: Vec<usize>,
}

impl OpRules for Transpose {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let mut seen = vec![false; x.len()];
        let is_perm = self.perm.len() == x.len()
            && self
                .perm
                .iter()
                .all(|&a| a < x.len() && !std::mem::replace(&mut seen[a], true));
        if !is_perm {
            return Err(format!(
                "perm {:?} is not a permutation of the {} axes of the input {x:?}",
                self.perm,
                x.len()
            ));
        }
        Ok(self.perm.iter().map(|&a| x[a]).collect())
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let mut dims = vec![0];
        dims.extend(self.perm.iter().map(|&a| a + 1));
        xs[0].permute(dims)?.contiguous()
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let c = cx.input(0)?.clone();
        let axis = self.perm.iter().position(|&a| a == c.axis)?;
        Some(Chan {
            axis,
            elems: c.elems,
        })
    }
}

/// `(start, len)` of an ONNX slice along an axis of length `d` (negative bounds count from the
/// end, then both are clamped to [0, d]; step >= 1).
fn slice_range(start: i64, end: i64, step: i64, d: usize) -> (usize, usize) {
    let d = d as i64;
    let resolve = |v: i64| if v < 0 { v + d } else { v }.clamp(0, d);
    let (s, e) = (resolve(start), resolve(end));
    let len = if e > s { (e - s + step - 1) / step } else { 0 };
    (s as usize, len as usize)
}

/// Every `step`-th position of `start..end` along one per-sample axis (ONNX `Slice` with one axis
/// and constant starts / ends / steps; PyTorch `x[..., start:end:step, ...]`). ONNX's rules:
/// a negative `start` or `end` counts from the end of the axis, then both are clamped to
/// [0, length]; `end` past the axis means "to the end". An importer clamps ONNX's INT64_MAX "to
/// the end" to the axis length first (every integer attribute is bounded by 2^31). Negative steps
/// (reversal) are refused, as are empty results. Output: the input shape with the axis shortened
/// to ceil((end - start) / step) after resolving.
///
/// Channel rule: on another axis the channels pass through; on the channel axis with step 1 the
/// slice takes its range of elements (like [`Narrow`]), and the range follows removals; a strided
/// slice of the channel axis protects the channels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slice {
    pub axis: isize,
    pub start: i64,
    pub end: i64,
    #[serde(default = "one_i64")]
    pub step: i64,
}

fn one_i64() -> i64 {
    1
}

impl Slice {
    /// The resolved axis, first position and length for an input of shape `x`.
    fn resolve(&self, x: &[usize]) -> Result<(usize, usize, usize), String> {
        let axis = resolve_axis(self.axis, x.len())?;
        if self.step < 1 {
            return Err(format!(
                "step = {} is not supported: step must be at least 1 (negative steps are refused)",
                self.step
            ));
        }
        let (start, len) = slice_range(self.start, self.end, self.step, x[axis]);
        if len == 0 {
            return Err(format!(
                "slice {}..{} (step {}) of axis {axis} of {x:?} is empty",
                self.start, self.end, self.step
            ));
        }
        Ok((axis, start, len))
    }
}

impl OpRules for Slice {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let (axis, _, len) = self.resolve(x)?;
        let mut out = x.to_vec();
        out[axis] = len;
        Ok(out)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        let (axis, start, len) = self
            .resolve(&x.dims()[1..])
            .map_err(candle_core::Error::Msg)?;
        if self.step == 1 {
            return x.narrow(axis + 1, start, len);
        }
        let step = self.step as usize;
        let idx: Vec<u32> = (0..len).map(|i| (start + i * step) as u32).collect();
        let idx = Tensor::new(idx.as_slice(), x.device())?;
        x.contiguous()?.index_select(&idx, axis + 1)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let (axis, start, len) = self.resolve(cx.in_shape(0)).ok()?;
        let c = cx.input(0)?.clone();
        if c.axis != axis {
            return cx.pass(None, &[]);
        }
        if self.step != 1 {
            return cx.opaque();
        }
        Some(Chan {
            axis,
            elems: c.elems[start..start + len].to_vec(),
        })
    }
    /// On the channel axis, the range shrinks to the kept positions before and inside it
    /// (written as non-negative bounds).
    fn adapt(&mut self, inputs: &[AdaptInput]) {
        let Some(input) = inputs.first() else { return };
        let Some((chan_axis, kept)) = &input.kept else {
            return;
        };
        let Ok((axis, start, len)) = self.resolve(input.old_shape) else {
            return;
        };
        if *chan_axis == axis && self.step == 1 && start + len <= kept.len() {
            let before = kept[..start].iter().filter(|&&k| k).count();
            let inside = kept[start..start + len].iter().filter(|&&k| k).count();
            self.start = before as i64;
            self.end = (before + inside) as i64;
        }
    }
}

/// Picks positions `indices` of one per-sample axis, in that order (repeats allowed): ONNX
/// `Gather` with a constant 1-D index tensor, or with a 0-d index when `scalar` is true (then
/// exactly one index and the axis is removed: ONNX's rank-0 indices, PyTorch `x[:, .., i]` /
/// `x.select(1 + axis, i)`); otherwise PyTorch `x.index_select(1 + axis, indices)`. Negative
/// indices count from the end; an index outside [-length, length) is an error. Output: the input
/// shape with the axis replaced by `indices.len()` (or removed).
///
/// Channel rule: channels on another axis pass through (moving down one axis when a scalar gather
/// removes an axis before them); gathering along the channel axis protects the channels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gather {
    pub axis: isize,
    pub indices: Vec<i64>,
    #[serde(default)]
    pub scalar: bool,
}

impl Gather {
    /// The resolved axis and the non-negative indices for an input of shape `x`.
    fn resolve(&self, x: &[usize]) -> Result<(usize, Vec<u32>), String> {
        let axis = resolve_axis(self.axis, x.len())?;
        if self.indices.is_empty() {
            return Err("indices is empty".into());
        }
        if self.scalar && self.indices.len() != 1 {
            return Err(format!(
                "scalar = true takes exactly one index, got {}",
                self.indices.len()
            ));
        }
        let d = x[axis] as i64;
        let idx = self
            .indices
            .iter()
            .map(|&i| {
                if i < -d || i >= d {
                    Err(format!(
                        "index {i} is out of range for axis {axis} of {x:?} (length {d})"
                    ))
                } else {
                    Ok(if i < 0 { i + d } else { i } as u32)
                }
            })
            .collect::<Result<Vec<u32>, String>>()?;
        Ok((axis, idx))
    }
}

impl OpRules for Gather {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let (axis, idx) = self.resolve(x)?;
        let mut out = x.to_vec();
        if self.scalar {
            out.remove(axis);
        } else {
            out[axis] = idx.len();
        }
        Ok(out)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        let (axis, idx) = self
            .resolve(&x.dims()[1..])
            .map_err(candle_core::Error::Msg)?;
        if self.scalar {
            return x.narrow(axis + 1, idx[0] as usize, 1)?.squeeze(axis + 1);
        }
        let idx = Tensor::new(idx.as_slice(), x.device())?;
        x.contiguous()?.index_select(&idx, axis + 1)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let axis = resolve_axis(self.axis, cx.in_shape(0).len()).ok()?;
        let c = cx.input(0)?.clone();
        if c.axis == axis {
            return cx.opaque();
        }
        let shift = usize::from(self.scalar && axis < c.axis);
        Some(Chan {
            axis: c.axis - shift,
            elems: c.elems,
        })
    }
}

/// How [`Pad`] fills the border.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// the constant `value`
    #[default]
    Constant,
    /// mirrored about the edge value, which is not repeated (PyTorch "reflect", numpy "reflect")
    Reflect,
    /// the edge value repeated (PyTorch "replicate", numpy "edge")
    Edge,
}

/// Pads every per-sample axis: `pads` = [begin_0, .., begin_{r-1}, end_0, .., end_{r-1}] (ONNX
/// `Pad` order without the batch axis's two entries; PyTorch `F.pad` lists the last axis first:
/// `F.pad(x, (wb, we, hb, he))` on [C, H, W] is `pads = [0, hb, wb, 0, he, we]`). Modes (ONNX
/// names): `constant` (`value`, default 0), `reflect` (each pad below the axis length, as
/// PyTorch requires) and `edge` (PyTorch "replicate"). Output: each axis grows by its two pads.
///
/// Channel rule: the channels pass through when their axis is not padded; padding the channel
/// axis protects them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pad {
    pub pads: Vec<usize>,
    #[serde(default)]
    pub mode: PadMode,
    #[serde(default)]
    pub value: f64,
}

impl OpRules for Pad {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let r = x.len();
        if self.pads.len() != 2 * r {
            return Err(format!(
                "pads has {} entries, a rank-{r} input {x:?} needs {} (the begin of every axis, \
                 then the end of every axis)",
                self.pads.len(),
                2 * r
            ));
        }
        if !self.value.is_finite() {
            return Err(format!("value = {} must be finite", self.value));
        }
        let mut out = x.to_vec();
        for a in 0..r {
            let (b, e) = (self.pads[a], self.pads[r + a]);
            if self.mode == PadMode::Reflect && (b >= x[a] || e >= x[a]) {
                return Err(format!(
                    "reflect padding {b}, {e} of axis {a} of {x:?} must be below the axis length {}",
                    x[a]
                ));
            }
            out[a] += b + e;
        }
        Ok(out)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let mut y = xs[0].clone();
        let r = y.rank() - 1;
        for a in 0..r {
            let (b, e) = (self.pads[a], self.pads[r + a]);
            if b == 0 && e == 0 {
                continue;
            }
            let dim = a + 1;
            let d = y.dim(dim)?;
            y = match self.mode {
                PadMode::Constant if self.value == 0.0 => y.pad_with_zeros(dim, b, e)?,
                PadMode::Constant => {
                    let fill = |n: usize| -> candle_core::Result<Tensor> {
                        let mut shape = y.dims().to_vec();
                        shape[dim] = n;
                        Tensor::ones(shape, y.dtype(), y.device())? * self.value
                    };
                    let mut parts = Vec::with_capacity(3);
                    if b > 0 {
                        parts.push(fill(b)?);
                    }
                    parts.push(y.clone());
                    if e > 0 {
                        parts.push(fill(e)?);
                    }
                    Tensor::cat(&parts, dim)?
                }
                PadMode::Reflect | PadMode::Edge => {
                    let idx: Vec<u32> = (0..b + d + e)
                        .map(|j| {
                            let i = j as i64 - b as i64;
                            let last = d as i64 - 1;
                            let i = if self.mode == PadMode::Edge {
                                i.clamp(0, last)
                            } else if i < 0 {
                                -i
                            } else if i > last {
                                2 * last - i
                            } else {
                                i
                            };
                            i as u32
                        })
                        .collect();
                    y.contiguous()?
                        .index_select(&Tensor::new(idx.as_slice(), y.device())?, dim)?
                }
            };
        }
        Ok(y)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let c = cx.input(0)?.clone();
        let r = cx.in_shape(0).len();
        let padded = self.pads.get(c.axis).is_some_and(|&p| p > 0)
            || self.pads.get(r + c.axis).is_some_and(|&p| p > 0);
        if padded {
            return cx.opaque();
        }
        cx.pass(None, &[])
    }
}
