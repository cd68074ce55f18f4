//! Multi-input ops: Add and Mul (numpy broadcasting over per-sample shapes) and Concat.

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
