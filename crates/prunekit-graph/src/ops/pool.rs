//! Pooling and reductions. Max and average 2-D pooling run through our own candle custom ops (forward and backward
//! for any kernel, stride and padding; candle's own pooling has no backward when kernel != stride).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use num_traits::Float;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    expect_inputs, numel, resolve_axis, AdaptInput, Chan, ChannelCx, Ctx, OpRules, ParamView,
};

/// Kernel, stride (defaults to the kernel) and symmetric zero padding, each [height, width].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool2dAttrs {
    pub kernel: [usize; 2],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<[usize; 2]>,
    #[serde(default)]
    pub padding: [usize; 2],
}

impl Pool2dAttrs {
    pub fn new(kernel: usize, stride: usize) -> Self {
        Self {
            kernel: [kernel, kernel],
            stride: Some([stride, stride]),
            padding: [0, 0],
        }
    }
    pub fn stride(&self) -> [usize; 2] {
        self.stride.unwrap_or(self.kernel)
    }

    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let [c, h, w] = x else {
            return Err(format!(
                "expects a [channels, height, width] input, got {x:?}"
            ));
        };
        let s = self.stride();
        if self.kernel.contains(&0) || s.contains(&0) {
            return Err("kernel and stride must be positive".into());
        }
        if self.padding[0] * 2 > self.kernel[0] || self.padding[1] * 2 > self.kernel[1] {
            return Err(format!(
                "padding {:?} exceeds half the kernel {:?}",
                self.padding, self.kernel
            ));
        }
        let out = |len: usize, i: usize| {
            let padded = len + 2 * self.padding[i];
            (padded >= self.kernel[i]).then(|| (padded - self.kernel[i]) / s[i] + 1)
        };
        match (out(*h, 0), out(*w, 1)) {
            (Some(oh), Some(ow)) => Ok(vec![*c, oh, ow]),
            _ => Err(format!(
                "kernel {:?} does not fit the input {h}x{w}",
                self.kernel
            )),
        }
    }

    fn run(&self, x: &Tensor, max: bool) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let s = self.stride();
        let geom = Geom {
            h,
            w,
            kh: self.kernel[0],
            kw: self.kernel[1],
            sh: s[0],
            sw: s[1],
            ph: self.padding[0],
            pw: self.padding[1],
            oh: (h + 2 * self.padding[0] - self.kernel[0]) / s[0] + 1,
            ow: (w + 2 * self.padding[1] - self.kernel[1]) / s[1] + 1,
        };
        if !crate::kernels::enabled() && s == self.kernel && self.padding == [0, 0] {
            // candle's own pooling, the reference (its backward needs kernel == stride)
            let k = (self.kernel[0], self.kernel[1]);
            return if max {
                x.max_pool2d_with_stride(k, k)
            } else {
                x.avg_pool2d_with_stride(k, k)
            };
        }
        let argmax = (max && x.track_op()).then(|| Arc::new(Mutex::new(None)));
        x.contiguous()?.apply_op1(Pool2d { geom, max, argmax })
    }
}

fn pool_channels(cx: &mut ChannelCx) -> Option<Chan> {
    cx.pass(Some(0), &[])
}

/// Max pooling; padded positions never win.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MaxPool2d(pub Pool2dAttrs);

/// Average pooling; padded positions count as zeros (PyTorch's count_include_pad = true).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AvgPool2d(pub Pool2dAttrs);

impl OpRules for MaxPool2d {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        self.0.infer(inputs)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        self.0.run(&xs[0], true)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        pool_channels(cx)
    }
}

impl OpRules for AvgPool2d {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        self.0.infer(inputs)
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        self.0.run(&xs[0], false)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        pool_channels(cx)
    }
}

/// Mean over every axis after the channel axis: [C, H, W] -> [C].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalAvgPool {}

impl OpRules for GlobalAvgPool {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        if x.len() < 2 {
            return Err(format!("expects a [channels, spatial..] input, got {x:?}"));
        }
        Ok(vec![x[0]])
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        xs[0].flatten_from(2)?.mean(2)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        pool_channels(cx)
    }
}

/// The mean over per-sample `axes` (negative counts from the end; an empty list reduces every
/// axis, ONNX's default), keeping each reduced axis with length 1 when `keepdims` (ONNX
/// `ReduceMean` with constant axes, PyTorch `x.mean(dim=[1 + a..], keepdim=keepdims)`). Output:
/// the input shape with the reduced axes set to 1 or removed (reducing every axis without
/// keepdims gives the per-sample shape []). MACs: 0 (like pooling).
///
/// Channel rule: channels on an axis that is not reduced pass through (moving down past removed
/// axes); reducing the channel axis protects them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReduceMean {
    pub axes: Vec<isize>,
    #[serde(default = "super::default_true")]
    pub keepdims: bool,
}

impl ReduceMean {
    /// The resolved reduced axes, ascending, for a rank-`rank` input.
    fn axes(&self, rank: usize) -> Result<Vec<usize>, String> {
        if self.axes.is_empty() {
            return Ok((0..rank).collect());
        }
        let mut out = Vec::with_capacity(self.axes.len());
        for &a in &self.axes {
            let r = resolve_axis(a, rank)?;
            if out.contains(&r) {
                return Err(format!("axes {:?} name axis {r} twice", self.axes));
            }
            out.push(r);
        }
        out.sort_unstable();
        Ok(out)
    }
}

impl OpRules for ReduceMean {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let axes = self.axes(x.len())?;
        Ok((0..x.len())
            .filter_map(|a| match (axes.contains(&a), self.keepdims) {
                (false, _) => Some(x[a]),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect())
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        let axes = self.axes(x.rank() - 1).map_err(candle_core::Error::Msg)?;
        let mut y = x.clone();
        for &a in &axes {
            y = y.mean_keepdim(a + 1)?;
        }
        if !self.keepdims {
            for &a in axes.iter().rev() {
                y = y.squeeze(a + 1)?;
            }
        }
        Ok(y)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let axes = self.axes(cx.in_shape(0).len()).ok()?;
        let c = cx.input(0)?.clone();
        if axes.contains(&c.axis) {
            return cx.opaque();
        }
        let shift = if self.keepdims {
            0
        } else {
            axes.iter().filter(|&&a| a < c.axis).count()
        };
        Some(Chan {
            axis: c.axis - shift,
            elems: c.elems,
        })
    }
}

/// Mean over the real tokens of a sequence: x [N, T, dim] and a token mask [N, T] (1 = real
/// token, 0 = padding; per sample [T, dim] and [T]) give [N, dim] =
/// sum_t mask_t x_t / max(sum_t mask_t, eps). This is sentence-transformers' `Pooling` module
/// with `pooling_mode_mean_tokens` (`torch.sum(x * m, 1) / torch.clamp(m.sum(1), min=1e-9)`), so
/// a fully padded sample gives zeros, not NaN. No parameters; MACs T * dim per sample.
///
/// Channel rule: the channels on x's last axis pass through to the output (axis 0); pooling
/// along the channel axis protects them. The mask is not a channel space: its positions are
/// protected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskedMeanPool {
    pub dim: usize,
    #[serde(default = "default_pool_eps")]
    pub eps: f64,
}

fn default_pool_eps() -> f64 {
    1e-9
}

impl MaskedMeanPool {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            eps: default_pool_eps(),
        }
    }
}

impl OpRules for MaskedMeanPool {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let ins = expect_inputs(inputs, 2)?;
        let (x, m) = (ins[0], ins[1]);
        let &[t, d] = x else {
            return Err(format!("expects x as [tokens, dim], got {x:?}"));
        };
        let &[tm] = m else {
            return Err(format!("expects the mask as [tokens], got {m:?}"));
        };
        if tm != t {
            return Err(format!(
                "the mask has {tm} tokens, x has {t} (x {x:?}, mask {m:?})"
            ));
        }
        if d != self.dim {
            return Err(format!("x {x:?} does not end in dim = {}", self.dim));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(format!("eps must be positive and finite, got {}", self.eps));
        }
        Ok(vec![d])
    }
    fn macs(&self, inputs: &[&[usize]], _output: &[usize]) -> u64 {
        inputs.first().map_or(0, |x| numel(x))
    }
    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let (x, m) = (&xs[0], &xs[1].to_dtype(xs[0].dtype())?);
        let sum = x.broadcast_mul(&m.unsqueeze(2)?)?.sum(1)?;
        let count = m.sum_keepdim(1)?.maximum(self.eps)?;
        sum.broadcast_div(&count)
    }
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        // the mask is not a channel space (its positions are tokens); not a blocked channel
        if let Some(m) = cx.input(1).cloned() {
            cx.protect(&m.elems);
        }
        let c = cx.input(0)?.clone();
        if c.axis != cx.last_axis(0) {
            cx.protect_unfollowed(&c.elems);
            return None;
        }
        Some(Chan {
            axis: 0,
            elems: c.elems,
        })
    }
    fn adapt(&mut self, inputs: &[AdaptInput]) {
        if let Some(&d) = inputs.first().and_then(|x| x.new_shape.last()) {
            self.dim = d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The kernels: one plane (one sample, one channel) per rayon task.

#[derive(Clone, Copy, Debug)]
struct Geom {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    /// In-bounds input rows and columns of the window of output (oy, ox).
    #[inline]
    fn window(&self, oy: usize, ox: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let y0 = (oy * self.sh) as isize - self.ph as isize;
        let x0 = (ox * self.sw) as isize - self.pw as isize;
        let ys = y0.max(0) as usize..((y0 + self.kh as isize).min(self.h as isize)).max(0) as usize;
        let xs = x0.max(0) as usize..((x0 + self.kw as isize).min(self.w as isize)).max(0) as usize;
        (ys, xs)
    }

    /// Index (within the plane) of the first maximum of the window of output (oy, ox).
    #[inline]
    fn argmax<T: Float>(&self, plane: &[T], oy: usize, ox: usize) -> usize {
        let (ys, xs) = self.window(oy, ox);
        let mut best = ys.start * self.w + xs.start;
        let mut m = T::neg_infinity();
        for iy in ys {
            for ix in xs.clone() {
                let v = plane[iy * self.w + ix];
                if v > m || v.is_nan() {
                    m = v;
                    best = iy * self.w + ix;
                }
            }
        }
        best
    }

    fn fwd<T: Float + Send + Sync>(&self, x: &[T], max: bool) -> Vec<T> {
        let (hw, ohw) = (self.h * self.w, self.oh * self.ow);
        let mut out = vec![T::zero(); x.len() / hw * ohw];
        let div = T::from(self.kh * self.kw).unwrap_or_else(T::one);
        let plane = |(o, plane): (&mut [T], &[T])| {
            for oy in 0..self.oh {
                let (ys, _) = self.window(oy, 0);
                let orow = &mut o[oy * self.ow..(oy + 1) * self.ow];
                for (ox, ov) in orow.iter_mut().enumerate() {
                    let (_, xs) = self.window(0, ox);
                    let mut acc = if max { T::neg_infinity() } else { T::zero() };
                    for iy in ys.clone() {
                        let row = &plane[iy * self.w..(iy + 1) * self.w];
                        for &v in &row[xs.clone()] {
                            acc = if max { acc.max(v) } else { acc + v };
                        }
                    }
                    *ov = if max { acc } else { acc / div };
                }
            }
        };
        // planes in parallel only when there is enough work to pay for the threads
        if x.len() >= 1 << 16 {
            out.par_chunks_mut(ohw)
                .zip(x.par_chunks(hw))
                .for_each(plane);
        } else {
            out.chunks_mut(ohw).zip(x.chunks(hw)).for_each(plane);
        }
        out
    }

    /// Max pooling that also returns, per output, the in-plane index of its window's first maximum.
    fn fwd_argmax<T: Float + Send + Sync>(&self, x: &[T]) -> (Vec<T>, Vec<u32>) {
        let (hw, ohw) = (self.h * self.w, self.oh * self.ow);
        let planes = x.len() / hw;
        let mut out = vec![T::zero(); planes * ohw];
        let mut idx = vec![0u32; planes * ohw];
        out.par_chunks_mut(ohw)
            .zip(idx.par_chunks_mut(ohw))
            .zip(x.par_chunks(hw))
            .for_each(|((o, ix), plane)| {
                for oy in 0..self.oh {
                    for ox in 0..self.ow {
                        let i = self.argmax(plane, oy, ox);
                        o[oy * self.ow + ox] = plane[i];
                        ix[oy * self.ow + ox] = i as u32;
                    }
                }
            });
        (out, idx)
    }

    fn bwd<T: Float + Send + Sync>(&self, x: &[T], g: &[T], max: bool) -> Vec<T> {
        let (hw, ohw) = (self.h * self.w, self.oh * self.ow);
        let mut dx = vec![T::zero(); x.len()];
        let div = T::from(self.kh * self.kw).unwrap_or_else(T::one);
        dx.par_chunks_mut(hw)
            .zip(x.par_chunks(hw).zip(g.par_chunks(ohw)))
            .for_each(|(d, (plane, gp))| {
                for oy in 0..self.oh {
                    for ox in 0..self.ow {
                        let gv = gp[oy * self.ow + ox];
                        if max {
                            let i = self.argmax(plane, oy, ox);
                            d[i] = d[i] + gv;
                        } else {
                            let (ys, xs) = self.window(oy, ox);
                            let share = gv / div;
                            for iy in ys {
                                for ix in xs.clone() {
                                    d[iy * self.w + ix] = d[iy * self.w + ix] + share;
                                }
                            }
                        }
                    }
                }
            });
        dx
    }
}

/// Forward pooling custom op (max or average).
struct Pool2d {
    geom: Geom,
    max: bool,
    /// under autodiff, max pooling records each window's maximum here so the backward is one scatter
    argmax: Option<Arc<Mutex<Option<Vec<u32>>>>>,
}

impl CustomOp1 for Pool2d {
    fn name(&self) -> &'static str {
        if self.max {
            "prunekit-max-pool2d"
        } else {
            "prunekit-avg-pool2d"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, _, _) = l.shape().dims4()?;
        let shape = Shape::from((n, c, self.geom.oh, self.geom.ow));
        let record = |idx: Vec<u32>| -> candle_core::Result<()> {
            if let Some(slot) = &self.argmax {
                *slot
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("pool: poisoned lock".into()))? =
                    Some(idx);
            }
            Ok(())
        };
        let out = crate::kernels::float_kernel!(self.name(); x = s, l => {
            if self.argmax.is_some() {
                let (out, idx) = self.geom.fwd_argmax(x);
                record(idx)?;
                out
            } else {
                self.geom.fwd(x, self.max)
            }
        });
        Ok((out, shape))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        let recorded = self
            .argmax
            .as_ref()
            .and_then(|slot| slot.lock().ok().and_then(|s| s.clone()));
        if let Some(idx) = recorded {
            let plane = self.geom.h * self.geom.w;
            return Ok(Some(g.apply_op1_no_bwd(&Scatter {
                idx,
                plane,
                shape: arg.shape().clone(),
            })?));
        }
        Ok(Some(arg.apply_op2_no_bwd(
            &g,
            &Pool2dBackward {
                geom: self.geom,
                max: self.max,
            },
        )?))
    }
}

/// Max-pool gradient from the recorded maxima: dx[plane][idx[o]] += g[o].
struct Scatter {
    idx: Vec<u32>,
    plane: usize,
    shape: Shape,
}

impl Scatter {
    fn run<T: Float + Send + Sync>(&self, g: &[T]) -> Vec<T> {
        let mut dx = vec![T::zero(); self.shape.elem_count()];
        let per = g.len() / (dx.len() / self.plane.max(1)).max(1);
        dx.par_chunks_mut(self.plane)
            .zip(
                g.par_chunks(per.max(1))
                    .zip(self.idx.par_chunks(per.max(1))),
            )
            .for_each(|(d, (gp, ip))| {
                for (&v, &i) in gp.iter().zip(ip) {
                    d[i as usize] = d[i as usize] + v;
                }
            });
        dx
    }
}

impl CustomOp1 for Scatter {
    fn name(&self) -> &'static str {
        "prunekit-max-pool2d-backward"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = crate::kernels::float_kernel!(self.name(); g = s, l => self.run(g));
        Ok((out, self.shape.clone()))
    }
}

/// Gradient of [`Pool2d`] with respect to its input: (input, output gradient) -> input gradient.
struct Pool2dBackward {
    geom: Geom,
    max: bool,
}

impl CustomOp2 for Pool2dBackward {
    fn name(&self) -> &'static str {
        "prunekit-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = crate::kernels::float_kernel!(self.name(); x = s1, l1; g = s2, l2 => self.geom.bwd(x, g, self.max));
        Ok((out, l1.shape().clone()))
    }
}
