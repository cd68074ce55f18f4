//! Multi-input ops: Add, Mul, Sub and Div (numpy broadcasting over per-sample shapes; a batch axis
//! of 1, as a [`super::Constant`] has, broadcasts against any batch) and Concat.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{resolve_axis, Chan, ChannelCx, Ctx, OpRules, ParamView};

/// numpy broadcasting of per-sample shapes.
fn broadcast(inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
    if inputs.len() < 2 {
        return Err(format!("expects at least 2 inputs, got {}", inputs.len()));
    }
    let rank = inputs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in inputs {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(format!("input shapes {inputs:?} do not broadcast"));
            }
        }
    }
    Ok(out)
}

/// Folds batched inputs with `f`, first giving lower-rank inputs unit axes after the batch axis so
/// broadcasting aligns per-sample axes from the right (the batch axis stays first).
fn fold(
    xs: &[Tensor],
    f: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let rank = xs.iter().map(|x| x.rank()).max().unwrap_or(0);
    let align = |x: &Tensor| -> candle_core::Result<Tensor> {
        if x.rank() == rank {
            return Ok(x.clone());
        }
        let mut dims = vec![x.dim(0)?];
        dims.extend(std::iter::repeat_n(1, rank - x.rank()));
        dims.extend_from_slice(&x.dims()[1..]);
        x.reshape(dims)
    };
    let mut acc = align(&xs[0])?;
    for x in &xs[1..] {
        acc = f(&acc, &align(x)?)?;
    }
    Ok(acc)
}

/// Sum of two or more inputs (a residual connection).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Add {}

impl OpRules for Add {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        broadcast(inputs)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        fold(xs, |a, b| a.broadcast_add(b))
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        cx.elementwise()
    }
}

/// Product of two or more inputs (gating).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mul {}

impl OpRules for Mul {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        broadcast(inputs)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        fold(xs, |a, b| a.broadcast_mul(b))
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        cx.elementwise()
    }
}

fn two_inputs(inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
    if inputs.len() != 2 {
        return Err(format!("expects 2 inputs, got {}", inputs.len()));
    }
    broadcast(inputs)
}

/// a - b with numpy broadcasting of the per-sample shapes (aligned from the right; ONNX `Sub`,
/// PyTorch `a - b`). Exactly two inputs. Channel rule: Add's (`cx.elementwise()`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sub {}

impl OpRules for Sub {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        two_inputs(inputs)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        fold(xs, |a, b| a.broadcast_sub(b))
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        cx.elementwise()
    }
}

/// a / b with numpy broadcasting of the per-sample shapes (ONNX `Div`, PyTorch `a / b`). Exactly
/// two inputs.
///
/// Channel rule: Mul's (`cx.elementwise()`), except that a divisor whose channels span the
/// output's channel axis is protected (with everything unified with it): a masked divisor channel
/// would divide by zero, so masking could not stand for removal. A broadcast divisor (the
/// `sqrt(var + eps)` of a decomposed LayerNorm, a constant) leaves the dividend's channels free.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Div {}

impl OpRules for Div {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        two_inputs(inputs)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        fold(xs, |a, b| a.broadcast_div(b))
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let divisor = cx.input(1).cloned();
        let out = cx.elementwise()?;
        if let Some(d) = divisor {
            let offset = cx.out_shape().len() - cx.in_shape(1).len();
            if d.axis + offset == out.axis && cx.in_shape(1)[d.axis] == cx.out_shape()[out.axis] {
                cx.protect_unfollowed(&d.elems);
            }
        }
        Some(out)
    }
}

/// Concatenation along a per-sample axis (0 = channels of an NCHW tensor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concat {
    pub axis: isize,
}

impl OpRules for Concat {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let first = inputs.first().ok_or("expects at least 1 input")?;
        let axis = resolve_axis(self.axis, first.len())?;
        let mut out = first.to_vec();
        for s in &inputs[1..] {
            let fits = s.len() == first.len()
                && s.iter()
                    .zip(first.iter())
                    .enumerate()
                    .all(|(i, (a, b))| i == axis || a == b);
            if !fits {
                return Err(format!(
                    "input shapes {inputs:?} differ outside axis {axis}"
                ));
            }
            out[axis] += s[axis];
        }
        Ok(out)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let axis = resolve_axis(self.axis, xs[0].rank() - 1).map_err(candle_core::Error::Msg)?;
        Tensor::cat(xs, axis + 1)
    }
    /// When some input carries its channels on the concatenation axis, the inputs' channels lie
    /// side by side along it (offsets follow); an input that carries none there contributes
    /// positions that are never removed, and its own channels (on an axis the output does not
    /// follow) are protected, so it neither blocks nor couples the others. When none does, the
    /// inputs are unified like an elementwise op (each must carry its channels on the same axis).
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let axis = resolve_axis(self.axis, cx.in_shape(0).len()).ok()?;
        let n = cx.num_inputs();
        if (0..n).any(|i| cx.input(i).is_some_and(|c| c.axis == axis)) {
            let mut elems = Vec::new();
            for i in 0..n {
                match cx.input(i).cloned() {
                    Some(c) if c.axis == axis => elems.extend(c.elems),
                    other => {
                        if let Some(c) = other {
                            cx.protect_unfollowed(&c.elems);
                        }
                        let len = cx.in_shape(i)[axis];
                        elems.extend(cx.fixed_space(len));
                    }
                }
            }
            return Some(Chan { axis, elems });
        }
        let chans: Option<Vec<Chan>> = (0..n).map(|i| cx.input(i).cloned()).collect();
        let Some(chans) = chans else {
            return cx.opaque();
        };
        if chans.iter().all(|c| c.axis == chans[0].axis) {
            let first = chans[0].elems.clone();
            for c in &chans[1..] {
                for (&a, &b) in first.iter().zip(&c.elems) {
                    cx.union(a, b);
                }
            }
            return Some(Chan {
                axis: chans[0].axis,
                elems: first,
            });
        }
        cx.opaque()
    }
}
