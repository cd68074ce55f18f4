//! Depthwise 2-D convolution on the CPU (groups == in_channels: each group has one input channel and
//! m = out_channels / in_channels output channels): direct loops instead of one tiny GEMM per group,
//! with forward and both backward passes.
//!
//! Each input plane is first copied, zero-padded, into its stride x stride phase planes (phase (a, b)
//! holds the padded pixels (s*i + a, s*j + b)). On them every kernel tap reads a contiguous run at a
//! fixed offset, for every stride: out[oy, ox] += w[tap] * phase[(oy + qy) * pitch + ox + qx].
//! Computed on rows of the phase pitch (the columns past the output width are dropped at the end),
//! a whole output plane is one flat array and every tap one shifted read of its phase plane, so:
//! - forward: 64 outputs at a time, all taps accumulated in registers;
//! - input gradient: the same gather, run backwards (phase position r collects the output gradient
//!   at r - offset of each tap of its phase), then the padding cropped;
//! - weight gradient: one dot product per tap, sample and output channel.
//!
//! The loops are long, contiguous and free of bounds tests, so they vectorise, and they are
//! compiled for AVX-512 or AVX2 when the CPU has them. (sample, channel) planes run in parallel;
//! the weight gradient sums per-worker partial sums in f64 at the end.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::ConvGeom;
use super::{Elem, Isa};

/// One kernel tap on the phase planes.
#[derive(Clone, Copy, Debug)]
struct Tap {
    /// index in the kernel's kh * kw taps
    t: usize,
    /// which phase plane the tap reads
    phase: usize,
    /// offset qy * pitch + qx of the tap's reads in its phase plane
    off: usize,
}

/// Outputs computed at once, in registers: a multiple of every vector width.
const CHUNK: usize = 64;

fn round_up(v: usize) -> usize {
    v.div_ceil(CHUNK) * CHUNK
}

/// The output positions [lo, hi) along one axis whose input position o * stride + off lies in
/// [0, len).
fn reach(out: usize, stride: usize, off: isize, len: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let end = len as isize - off;
    let hi = if end <= 0 {
        0
    } else {
        ((end + s - 1) / s).min(out as isize)
    };
    (lo.min(hi) as usize, hi as usize)
}

/// A depthwise convolution's geometry, its phase-plane layout and its taps.
///
/// Buffers (per worker, zeroed once; the kernels write only their interiors, so the padding and
/// slack stay zero from plane to plane):
/// - phase planes: stride^2 planes of `plane` elements, rows of `pitch`; `plane` covers the rows
///   and CHUNK-sized overhang of every tap's reads;
/// - `flat`: output rows at the phase pitch, rounded up to CHUNK;
/// - for the input gradient, per output channel of the group, the output-gradient plane at the
///   phase pitch behind `max_off` zeros (zero in the columns past ow), of `max_off + plane`.
#[derive(Clone, Debug)]
struct Plan {
    g: ConvGeom,
    /// output channels per input channel
    m: usize,
    /// rows and row pitch of a phase plane
    rows: usize,
    pitch: usize,
    plane: usize,
    /// output rows at the phase pitch (oh * pitch) rounded up to CHUNK
    flat: usize,
    /// the largest tap offset
    max_off: usize,
    /// taps sorted by phase plane; those of phase k are taps[by_phase[k]..by_phase[k + 1]]
    taps: Vec<Tap>,
    by_phase: Vec<usize>,
}

impl Plan {
    fn new(g: ConvGeom) -> candle_core::Result<Self> {
        if g.groups != g.c
            || g.c == 0
            || !g.o.is_multiple_of(g.c)
            || g.stride == 0
            || g.kh * g.kw == 0
        {
            candle_core::bail!(
                "depthwise conv2d: {} input and {} output channels in {} groups",
                g.c,
                g.o,
                g.groups
            );
        }
        let s = g.stride;
        let (qy, qx) = ((g.kh - 1) * g.dil / s, (g.kw - 1) * g.dil / s);
        let (rows, pitch) = (g.oh + qy, g.ow + qx);
        let max_off = qy * pitch + qx;
        let flat = round_up(g.oh * pitch);
        // (oh + qy) * pitch <= flat + max_off: the rows fit
        let plane = round_up(flat + max_off);
        let mut taps = Vec::with_capacity(g.kh * g.kw);
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let (dy, dx) = (ky * g.dil, kx * g.dil);
                taps.push(Tap {
                    t: ky * g.kw + kx,
                    phase: (dy % s) * s + dx % s,
                    off: (dy / s) * pitch + dx / s,
                });
            }
        }
        taps.sort_by_key(|t| t.phase);
        let by_phase = (0..=s * s)
            .map(|k| taps.partition_point(|t| t.phase < k))
            .collect();
        Ok(Self {
            g,
            m: g.o / g.c,
            rows,
            pitch,
            plane,
            flat,
            max_off,
            taps,
            by_phase,
        })
    }

    fn hw(&self) -> usize {
        self.g.h * self.g.w
    }
    fn ohw(&self) -> usize {
        self.g.oh * self.g.ow
    }
    fn kk(&self) -> usize {
        self.g.kh * self.g.kw
    }
    /// Elements of the stride^2 phase planes.
    fn phases(&self) -> usize {
        self.g.stride * self.g.stride * self.plane
    }
    /// Elements of one output-gradient plane of the input gradient.
    fn shifted(&self) -> usize {
        self.max_off + self.plane
    }
    /// Scratch elements of one worker, enough for every pass.
    fn scratch(&self) -> usize {
        self.phases() + self.flat.max(self.m * self.shifted())
    }

    /// Copies one input plane x[h, w] into the interior of its phase planes.
    #[inline(always)]
    fn pad_into_phases<T: Elem>(&self, x: &[T], ph: &mut [T]) {
        let (s, p, w, pitch) = (self.g.stride, self.g.pad, self.g.w, self.pitch);
        for (k, plane) in ph.chunks_exact_mut(self.plane).enumerate() {
            let (a, b) = (k / s, k % s);
            let (j0, j1) = reach(pitch, s, b as isize - p as isize, w);
            let (i0, i1) = reach(self.rows, s, a as isize - p as isize, self.g.h);
            if j0 == j1 {
                continue;
            }
            for i in i0..i1 {
                let (iy, ix0) = (s * i + a - p, s * j0 + b - p);
                let src = &x[iy * w + ix0..(iy + 1) * w];
                let dst = &mut plane[i * pitch + j0..i * pitch + j1];
                if s == 1 {
                    dst.copy_from_slice(&src[..dst.len()]);
                } else {
                    dst.iter_mut()
                        .zip(src.iter().step_by(s))
                        .for_each(|(d, &v)| *d = v);
                }
            }
        }
    }

    /// The input plane dx[h, w] of phase planes (the padding dropped; pixels no tap reads get 0).
    #[inline(always)]
    fn crop_phases<T: Elem>(&self, ph: &[T], dx: &mut [T]) {
        let (s, p, w, pitch) = (self.g.stride, self.g.pad, self.g.w, self.pitch);
        for (iy, row) in dx.chunks_exact_mut(w).enumerate() {
            let (a, i) = ((iy + p) % s, (iy + p) / s);
            if i >= self.rows {
                row.iter_mut().for_each(|v| *v = T::zero());
                continue;
            }
            for b in 0..s {
                let (j0, j1) = reach(pitch, s, b as isize - p as isize, w);
                if j0 == j1 {
                    continue;
                }
                let start = (a * s + b) * self.plane + i * pitch;
                let src = &ph[start + j0..start + j1];
                let dst = &mut row[s * j0 + b - p..];
                if s == 1 {
                    dst[..src.len()].copy_from_slice(src);
                } else {
                    dst.iter_mut()
                        .step_by(s)
                        .zip(src)
                        .for_each(|(d, &v)| *d = v);
                }
            }
            // columns past the last phase column no tap reads
            let covered = (s * pitch).saturating_sub(p).min(w);
            row[covered..].iter_mut().for_each(|v| *v = T::zero());
        }
    }

    /// Copies an output plane y[oh, ow] into the first ow columns of rows at the phase pitch.
    #[inline(always)]
    fn to_flat<T: Elem>(&self, y: &[T], flat: &mut [T]) {
        let ow = self.g.ow;
        for (src, dst) in y.chunks_exact(ow).zip(flat.chunks_mut(self.pitch)) {
            dst[..ow].copy_from_slice(src);
        }
    }

    /// The m output planes y[m, oh, ow] of one input plane x[h, w] with its kernels w[m, kh, kw]:
    /// CHUNK outputs at a time, all taps accumulated in registers.
    #[inline(always)]
    fn forward_plane<T: Elem>(&self, x: &[T], w: &[T], y: &mut [T], scratch: &mut [T]) {
        let (ow, kk) = (self.g.ow, self.kk());
        let (ph, out) = scratch.split_at_mut(self.phases());
        let out = &mut out[..self.flat];
        self.pad_into_phases(x, ph);
        for (yj, wj) in y.chunks_exact_mut(self.ohw()).zip(w.chunks_exact(kk)) {
            for (k, dst) in out.chunks_exact_mut(CHUNK).enumerate() {
                let mut acc = [T::zero(); CHUNK];
                for tap in &self.taps {
                    let a = wj[tap.t];
                    let start = tap.phase * self.plane + tap.off + k * CHUNK;
                    let src = &ph[start..start + CHUNK];
                    for (v, &s) in acc.iter_mut().zip(src) {
                        *v = *v + a * s;
                    }
                }
                dst.copy_from_slice(&acc);
            }
            for (dst, src) in yj.chunks_exact_mut(ow).zip(out.chunks_exact(self.pitch)) {
                dst.copy_from_slice(&src[..ow]);
            }
        }
    }

    /// The input-gradient plane dx[h, w] of one channel from its m output-gradient planes
    /// gy[m, oh, ow]. Output position q reached phase position q + off through a tap, so phase
    /// position r gathers gy[r - off] over its taps: with each gy plane laid behind max_off zeros,
    /// that is a read at r + max_off - off, the forward's pattern, CHUNK positions at a time.
    #[inline(always)]
    fn input_grad_plane<T: Elem>(&self, gy: &[T], w: &[T], dx: &mut [T], scratch: &mut [T]) {
        let (kk, shifted) = (self.kk(), self.shifted());
        let (ph, gys) = scratch.split_at_mut(self.phases());
        let gys = &mut gys[..self.m * shifted];
        for (gj, dst) in gy
            .chunks_exact(self.ohw())
            .zip(gys.chunks_exact_mut(shifted))
        {
            self.to_flat(gj, &mut dst[self.max_off..]);
        }
        for (k, plane) in ph.chunks_exact_mut(self.plane).enumerate() {
            let taps = &self.taps[self.by_phase[k]..self.by_phase[k + 1]];
            for (c, dst) in plane.chunks_exact_mut(CHUNK).enumerate() {
                let mut acc = [T::zero(); CHUNK];
                for (gj, wj) in gys.chunks_exact(shifted).zip(w.chunks_exact(kk)) {
                    for tap in taps {
                        let a = wj[tap.t];
                        let start = c * CHUNK + self.max_off - tap.off;
                        let src = &gj[start..start + CHUNK];
                        for (v, &s) in acc.iter_mut().zip(src) {
                            *v = *v + a * s;
                        }
                    }
                }
                dst.copy_from_slice(&acc);
            }
        }
        self.crop_phases(ph, dx);
    }

    /// Adds gy * x of one sample and channel (x[h, w], gy[m, oh, ow]) into acc[m, kh * kw]: per
    /// output channel and tap, one dot product of the output-gradient plane at the phase pitch
    /// (zeros past ow) with the tap's run of its phase plane.
    #[inline(always)]
    fn weight_grad_plane<T: Elem>(&self, x: &[T], gy: &[T], acc: &mut [f64], scratch: &mut [T]) {
        let kk = self.kk();
        let len = self.g.oh * self.pitch;
        let (ph, flat) = scratch.split_at_mut(self.phases());
        let flat = &mut flat[..len];
        self.pad_into_phases(x, ph);
        for (gj, accj) in gy.chunks_exact(self.ohw()).zip(acc.chunks_exact_mut(kk)) {
            self.to_flat(gj, flat);
            for tap in &self.taps {
                let start = tap.phase * self.plane + tap.off;
                let d = dot(flat, &ph[start..start + len]);
                accj[tap.t] += d.to_f64().unwrap_or(f64::NAN);
            }
        }
    }

    fn forward<T: Elem>(&self, x: &[T], w: &[T]) -> Vec<T> {
        let (hw, mohw, mkk) = (self.hw(), self.m * self.ohw(), self.m * self.kk());
        let mut y = vec![T::zero(); self.g.n * self.g.o * self.ohw()];
        if hw == 0 {
            return y; // all padding
        }
        let isa = Isa::get();
        // plane (n, c) of x feeds output planes (n, c*m .. c*m + m), a contiguous block
        y.par_chunks_mut(mohw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each_init(
                || vec![T::zero(); self.scratch()],
                |scratch, (p, (yp, xp))| {
                    let c = p % self.g.c;
                    let wc = &w[c * mkk..(c + 1) * mkk];
                    isa.run(
                        self,
                        Work::Forward {
                            x: xp,
                            w: wc,
                            y: yp,
                        },
                        scratch,
                    );
                },
            );
        y
    }

    fn backward_input<T: Elem>(&self, gy: &[T], w: &[T]) -> Vec<T> {
        let (hw, mohw, mkk) = (self.hw(), self.m * self.ohw(), self.m * self.kk());
        let mut dx = vec![T::zero(); self.g.n * self.g.c * hw];
        if hw == 0 {
            return dx;
        }
        let isa = Isa::get();
        dx.par_chunks_mut(hw)
            .zip(gy.par_chunks(mohw))
            .enumerate()
            .for_each_init(
                || vec![T::zero(); self.scratch()],
                |scratch, (p, (dxp, gyp))| {
                    let c = p % self.g.c;
                    let wc = &w[c * mkk..(c + 1) * mkk];
                    isa.run(
                        self,
                        Work::InputGrad {
                            gy: gyp,
                            w: wc,
                            dx: dxp,
                        },
                        scratch,
                    );
                },
            );
        dx
    }

    fn backward_weight<T: Elem>(&self, x: &[T], gy: &[T]) -> Vec<T> {
        let (hw, mohw, mkk) = (self.hw(), self.m * self.ohw(), self.m * self.kk());
        let wlen = self.g.o * self.kk();
        if hw == 0 {
            return vec![T::zero(); wlen];
        }
        let isa = Isa::get();
        // (sample, channel) planes in memory order, split into fixed parts that each sum one dot
        // product per output channel and tap into their own partial sums (f64), added in order
        let sums = super::ordered_sum(
            x.len() / hw,
            || (vec![0f64; wlen], vec![T::zero(); self.scratch()]),
            |(acc, scratch), planes| {
                for p in planes {
                    let c = p % self.g.c;
                    isa.run(
                        self,
                        Work::WeightGrad {
                            x: &x[p * hw..(p + 1) * hw],
                            gy: &gy[p * mohw..(p + 1) * mohw],
                            acc: &mut acc[c * mkk..(c + 1) * mkk],
                        },
                        scratch,
                    );
                }
            },
            |a, b| a.0.iter_mut().zip(b.0).for_each(|(x, y)| *x += y),
        )
        .0;
        sums.into_iter()
            .map(|a| T::from(a).unwrap_or_else(T::nan))
            .collect()
    }
}

/// sum a[i] * b[i], in independent lanes so that it vectorises.
#[inline(always)]
fn dot<T: Elem>(a: &[T], b: &[T]) -> T {
    const LANES: usize = 32;
    let b = &b[..a.len()];
    let mut acc = [T::zero(); LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] = acc[i] + x[i] * y[i];
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

// the plane loops: plain Rust inlined into functions built for each extension of
// [`super::Isa`] so that LLVM vectorises them with its registers
impl Isa {
    #[inline(always)]
    fn run<T: Elem>(self, p: &Plan, work: Work<T>, scratch: &mut [T]) {
        match self {
            // SAFETY: the CPU has the features these functions are compiled for (checked in `get`).
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { plane_avx512(p, work, scratch) },
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { plane_avx2(p, work, scratch) },
            Self::Base => p.plane(work, scratch),
        }
    }
}

/// One plane's work and its operands (see the plane functions of [`Plan`]).
enum Work<'a, T> {
    Forward {
        x: &'a [T],
        w: &'a [T],
        y: &'a mut [T],
    },
    InputGrad {
        gy: &'a [T],
        w: &'a [T],
        dx: &'a mut [T],
    },
    WeightGrad {
        x: &'a [T],
        gy: &'a [T],
        acc: &'a mut [f64],
    },
}

impl Plan {
    #[inline(always)]
    fn plane<T: Elem>(&self, work: Work<T>, scratch: &mut [T]) {
        match work {
            Work::Forward { x, w, y } => self.forward_plane(x, w, y, scratch),
            Work::InputGrad { gy, w, dx } => self.input_grad_plane(gy, w, dx, scratch),
            Work::WeightGrad { x, gy, acc } => self.weight_grad_plane(x, gy, acc, scratch),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn plane_avx512<T: Elem>(p: &Plan, work: Work<T>, scratch: &mut [T]) {
    p.plane(work, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2<T: Elem>(p: &Plan, work: Work<T>, scratch: &mut [T]) {
    p.plane(work, scratch)
}

struct DepthwiseForward(Plan);
struct DepthwiseBackwardInput(Plan);
struct DepthwiseBackwardWeight(Plan);

/// An error unless a tensor holds `want` elements.
fn check(l: &Layout, want: usize, what: &str) -> candle_core::Result<()> {
    if l.shape().elem_count() != want {
        candle_core::bail!("{what}: expected {want} elements, got shape {:?}", l.dims());
    }
    Ok(())
}

impl CustomOp2 for DepthwiseForward {
    fn name(&self) -> &'static str {
        "prunekit-depthwise-conv2d"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = &self.0;
        check(l1, p.g.n * p.g.c * p.hw(), self.name())?;
        check(l2, p.g.o * p.kk(), self.name())?;
        let out = super::float_kernel!(self.name(); x = s1, l1; w = s2, l2 => p.forward(x, w));
        Ok((out, Shape::from((p.g.n, p.g.o, p.g.oh, p.g.ow))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        // as in conv2d: no input gradient for a model input; none for a frozen kernel either
        let dx = if x.track_op() {
            Some(gy.apply_op2_no_bwd(w, &DepthwiseBackwardInput(self.0.clone()))?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&gy, &DepthwiseBackwardWeight(self.0.clone()))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for DepthwiseBackwardInput {
    fn name(&self) -> &'static str {
        "prunekit-depthwise-conv2d-backward-input"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = &self.0;
        check(l1, p.g.n * p.g.o * p.ohw(), self.name())?;
        check(l2, p.g.o * p.kk(), self.name())?;
        let out =
            super::float_kernel!(self.name(); gy = s1, l1; w = s2, l2 => p.backward_input(gy, w));
        Ok((out, Shape::from((p.g.n, p.g.c, p.g.h, p.g.w))))
    }
}

impl CustomOp2 for DepthwiseBackwardWeight {
    fn name(&self) -> &'static str {
        "prunekit-depthwise-conv2d-backward-weight"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = &self.0;
        check(l1, p.g.n * p.g.c * p.hw(), self.name())?;
        check(l2, p.g.n * p.g.o * p.ohw(), self.name())?;
        let out =
            super::float_kernel!(self.name(); x = s1, l1; gy = s2, l2 => p.backward_weight(x, gy));
        Ok((out, Shape::from((p.g.o, 1, p.g.kh, p.g.kw))))
    }
}

/// Depthwise convolution of x [N, C, H, W] with w [m*C, 1, kh, kw] on the geometry `g` (groups ==
/// C; built by [`super::conv::conv2d`]). CPU f32/f64.
pub(crate) fn depthwise_conv2d(x: &Tensor, w: &Tensor, g: ConvGeom) -> candle_core::Result<Tensor> {
    let plan = Plan::new(g)?;
    x.contiguous()?
        .apply_op2(&w.contiguous()?, DepthwiseForward(plan))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Var};

    use super::*;
    use crate::kernels::conv::{candle_conv2d, conv2d};
    use crate::kernels::test_util::max_abs_diff;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::kernels::test_util::uniform(shape, seed, -1.0, 1.0)
    }

    /// loss = sum(y * r) and its gradients with respect to `x` and `w`.
    fn grads(y: &Tensor, r: &Tensor, x: &Tensor, w: &Tensor) -> (Tensor, Tensor) {
        let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
        (g.get(x).unwrap().clone(), g.get(w).unwrap().clone())
    }

    #[test]
    fn reach_is_the_valid_window() {
        for out in 0..6 {
            for stride in 1..4 {
                for off in -5isize..5 {
                    for len in 0..7 {
                        let (lo, hi) = reach(out, stride, off, len);
                        let want: Vec<usize> = (0..out)
                            .filter(|&o| {
                                (0..len as isize).contains(&(o as isize * stride as isize + off))
                            })
                            .collect();
                        assert_eq!(
                            (lo..hi).collect::<Vec<_>>(),
                            want,
                            "{out} {stride} {off} {len}"
                        );
                    }
                }
            }
        }
    }

    /// Outputs and both gradients equal candle's grouped conv2d (groups = C) on odd and non-square
    /// shapes, strides 1-3, padding 0-2, dilation 2, channel multipliers 1 and 2, batches 1-3.
    #[test]
    fn matches_candle_forward_and_backward() {
        let cases = [
            // n, c, h, w, m, kh, kw, stride, pad, dil
            (2, 3, 7, 9, 1, 3, 3, 1, 1, 1),
            (3, 4, 8, 8, 2, 3, 3, 2, 1, 1),
            (1, 5, 9, 7, 1, 3, 3, 3, 2, 1),
            (2, 4, 11, 10, 2, 3, 3, 1, 2, 2),
            (3, 2, 6, 13, 1, 5, 5, 2, 0, 1),
            (1, 3, 10, 7, 2, 3, 3, 3, 1, 1),
            (2, 6, 5, 5, 1, 1, 1, 1, 0, 1),
            (1, 3, 2, 3, 1, 5, 5, 1, 2, 1),
            (2, 4, 9, 12, 2, 3, 2, 2, 1, 2),
            (3, 3, 12, 9, 1, 3, 3, 2, 0, 2),
            (1, 2, 15, 8, 2, 7, 3, 3, 2, 1),
            (3, 2, 1, 6, 2, 1, 3, 1, 0, 1),
            (2, 3, 7, 8, 2, 1, 1, 3, 0, 1),
            (1, 2, 9, 9, 1, 2, 2, 3, 1, 1),
            (2, 5, 4, 17, 1, 3, 3, 2, 2, 1),
        ];
        for (i, &(n, c, h, w, m, kh, kw, s, p, d)) in cases.iter().enumerate() {
            let i = i as u64;
            let x = Var::from_tensor(&rand(&[n, c, h, w], i)).unwrap();
            let wt = Var::from_tensor(&rand(&[m * c, 1, kh, kw], 100 + i)).unwrap();
            let ours = conv2d(&x, &wt, s, p, d, c).unwrap();
            let reference = candle_conv2d(&x, &wt, s, p, d, c).unwrap();
            assert_eq!(ours.dims(), reference.dims(), "case {i}");
            assert!(max_abs_diff(&ours, &reference) < 1e-12, "case {i}: forward");
            let r = rand(ours.dims(), 200 + i);
            let (dx, dw) = grads(&ours, &r, &x, &wt);
            let (rx, rw) = grads(&reference, &r, &x, &wt);
            assert!(max_abs_diff(&dx, &rx) < 1e-12, "case {i}: input gradient");
            assert!(max_abs_diff(&dw, &rw) < 1e-11, "case {i}: weight gradient");
        }
    }

    /// Central finite differences of sum(y * r) in f64 on a tiny strided, dilated, multiplied case.
    #[test]
    fn gradients_match_finite_differences() {
        let (n, c, h, w, m, k, s, p, d) = (2, 2, 6, 5, 2, 3, 2, 2, 2);
        let x0 = rand(&[n, c, h, w], 7);
        let w0 = rand(&[m * c, 1, k, k], 8);
        let loss = |x: &Tensor, wt: &Tensor, r: &Tensor| -> f64 {
            let y = conv2d(x, wt, s, p, d, c).unwrap();
            (y * r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let (xv, wv) = (
            Var::from_tensor(&x0).unwrap(),
            Var::from_tensor(&w0).unwrap(),
        );
        let y = conv2d(&xv, &wv, s, p, d, c).unwrap();
        let r = rand(y.dims(), 9);
        let (dx, dw) = grads(&y, &r, &xv, &wv);
        let eps = 1e-6;
        for (which, t, analytic) in [(0, &x0, &dx), (1, &w0, &dw)] {
            let base = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let an = analytic.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for j in 0..base.len() {
                let at = |delta: f64| {
                    let mut v = base.clone();
                    v[j] += delta;
                    let pert = Tensor::from_vec(v, t.dims(), t.device()).unwrap();
                    if which == 0 {
                        loss(&pert, &w0, &r)
                    } else {
                        loss(&x0, &pert, &r)
                    }
                };
                let num = (at(eps) - at(-eps)) / (2.0 * eps);
                assert!(
                    (num - an[j]).abs() < 1e-7 * (1.0 + num.abs()),
                    "{} element {j}: finite difference {num}, autodiff {}",
                    ["input", "weight"][which],
                    an[j]
                );
            }
        }
    }

    /// Non-contiguous input and kernel (spatial transposes) in f64 with gradients, and f32.
    #[test]
    fn non_contiguous_inputs_and_f32() {
        let (n, c, m) = (2, 3, 2);
        let xb = Var::from_tensor(&rand(&[n, c, 7, 6], 1)).unwrap();
        let wb = Var::from_tensor(&rand(&[m * c, 1, 3, 2], 2)).unwrap();
        let x = xb.transpose(2, 3).unwrap();
        let wt = wb.transpose(2, 3).unwrap();
        assert!(!x.is_contiguous() && !wt.is_contiguous());
        let ours = conv2d(&x, &wt, 2, 1, 1, c).unwrap();
        let reference = candle_conv2d(&x, &wt, 2, 1, 1, c).unwrap();
        assert!(max_abs_diff(&ours, &reference) < 1e-12);
        let r = rand(ours.dims(), 3);
        let (dx, dw) = grads(&ours, &r, &xb, &wb);
        let (rx, rw) = grads(&reference, &r, &xb, &wb);
        assert!(max_abs_diff(&dx, &rx) < 1e-12 && max_abs_diff(&dw, &rw) < 1e-11);

        let (x32, w32) = (
            x.to_dtype(DType::F32).unwrap(),
            wt.to_dtype(DType::F32).unwrap(),
        );
        let ours = conv2d(&x32, &w32, 1, 1, 1, c).unwrap();
        let reference = candle_conv2d(&x32, &w32, 1, 1, 1, c).unwrap();
        let diff = max_abs_diff(
            &ours.to_dtype(DType::F64).unwrap(),
            &reference.to_dtype(DType::F64).unwrap(),
        );
        assert!(diff < 1e-5, "{diff}");
    }

    /// An input of zero height (all padding) gives zeros, without a panic.
    #[test]
    fn empty_planes() {
        let x = Var::from_tensor(&rand(&[2, 3, 0, 4], 1)).unwrap();
        let w = Var::from_tensor(&rand(&[6, 1, 1, 1], 2)).unwrap();
        let y = conv2d(&x, &w, 1, 1, 1, 3).unwrap();
        assert_eq!(y.dims(), &[2, 6, 2, 6]);
        assert_eq!(
            y.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            0.0
        );
        let g = y.backward().unwrap();
        assert_eq!(g.get(&x).unwrap().dims(), &[2, 3, 0, 4]);
        assert_eq!(g.get(&w).unwrap().dims(), &[6, 1, 1, 1]);
    }

    /// A model input (a plain tensor) gets no input gradient, a frozen kernel no weight gradient;
    /// the other gradient is still right.
    #[test]
    fn untracked_operands_get_no_gradient() {
        let x = rand(&[2, 4, 6, 6], 4);
        let wv = Var::from_tensor(&rand(&[4, 1, 3, 3], 5)).unwrap();
        let y = conv2d(&x, &wv, 1, 1, 1, 4).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none());
        let rw = candle_conv2d(&x, &wv, 1, 1, 1, 4)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(max_abs_diff(g.get(&wv).unwrap(), rw.get(&wv).unwrap()) < 1e-11);

        let xv = Var::from_tensor(&x).unwrap();
        let w = rand(&[4, 1, 3, 3], 5);
        let g = conv2d(&xv, &w, 1, 1, 1, 4)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(&w).is_none() && g.get(&xv).is_some());
    }

    /// Median ms of each of `k` contenders (`run(i)` runs contender i) over `runs` timed runs after
    /// 3 warm-ups, the contenders alternating so that drift hits all alike.
    fn medians(k: usize, runs: usize, run: impl Fn(usize)) -> Vec<f64> {
        for i in 0..k {
            (0..3).for_each(|_| run(i));
        }
        let mut t = vec![Vec::with_capacity(runs); k];
        for _ in 0..runs {
            for (i, ts) in t.iter_mut().enumerate() {
                let start = std::time::Instant::now();
                run(i);
                ts.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        t.into_iter()
            .map(|mut v| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            })
            .collect()
    }

    /// The direct kernel (also on one thread) vs the GEMM-per-group path vs candle's conv on
    /// MobileNet-like 3x3 depthwise layers, f32, forward and forward + backward (both gradients,
    /// from a gradient of ones). Run with `RAYON_NUM_THREADS=2 cargo test --release -p
    /// prunekit-graph --lib depthwise::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench() {
        type Conv = fn(&Tensor, &Tensor, usize, usize, usize, usize) -> candle_core::Result<Tensor>;
        let contenders: [(Conv, bool); 4] = [
            (conv2d, false),
            (conv2d, true),
            (crate::kernels::conv::gemm_conv2d, false),
            (candle_conv2d, false),
        ];
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        println!("rayon threads: {}", rayon::current_num_threads());
        println!("| layer | pass | direct ms | direct, 1 thread ms | GEMM per group ms | candle ms | GEMM / direct | candle / direct |");
        println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (n, c, h, s) in [(32, 64, 32, 1), (32, 128, 16, 2)] {
            let f32_var = |t: Tensor| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap();
            let (x, w) = (
                f32_var(rand(&[n, c, h, h], 1)),
                f32_var(rand(&[c, 1, 3, 3], 2)),
            );
            for backward in [false, true] {
                let m = medians(contenders.len(), 25, |i| {
                    let (f, single) = contenders[i];
                    let go = || {
                        let y = f(&x, &w, s, 1, 1, c).unwrap();
                        if backward {
                            y.backward().unwrap();
                        }
                    };
                    if single {
                        one_thread.install(go)
                    } else {
                        go()
                    }
                });
                println!(
                    "| {n}x{c}x{h}x{h}, stride {s} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2}x | {:.2}x |",
                    if backward { "forward + backward" } else { "forward" },
                    m[0],
                    m[1],
                    m[2],
                    m[3],
                    m[2] / m[0],
                    m[3] / m[0]
                );
            }
        }
    }
}
