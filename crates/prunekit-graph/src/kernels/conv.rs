//! 2-D convolution on the CPU: im2col + GEMM forward, and both backward passes (GEMM + col2im for the
//! input gradient, GEMM over im2col for the weight gradient). 1x1 convolutions with stride 1 and no
//! padding skip im2col. Work is split over samples when the batch can feed every thread, otherwise
//! inside the GEMM.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{matmul, Elem, Mat};

/// The geometry of one convolution call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub dil: usize,
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    fn og(&self) -> usize {
        self.o / self.groups
    }
    /// Rows of the im2col matrix of one group.
    fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    /// 1x1, stride 1, no padding: the input plane block is already the im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Input column of output column `o` for kernel tap `t`, or None in the padding.
    #[inline]
    fn src(&self, o: usize, t: usize, len: usize) -> Option<usize> {
        let i = (o * self.stride + t * self.dil) as isize - self.pad as isize;
        (i >= 0 && (i as usize) < len).then_some(i as usize)
    }

    /// col[k, oh*ow] from one group's input planes x[cg, h, w].
    pub(super) fn im2col<T: Elem>(&self, x: &[T], col: &mut [T]) {
        let (ohw, hw) = (self.ohw(), self.hw());
        for ci in 0..self.cg() {
            let plane = &x[ci * hw..(ci + 1) * hw];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (ci * self.kh + ky) * self.kw + kx;
                    let dst = &mut col[row * ohw..(row + 1) * ohw];
                    for oy in 0..self.oh {
                        let d = &mut dst[oy * self.ow..(oy + 1) * self.ow];
                        match self.src(oy, ky, self.h) {
                            None => d.iter_mut().for_each(|v| *v = T::zero()),
                            Some(iy) => {
                                let src_row = &plane[iy * self.w..(iy + 1) * self.w];
                                for (ox, v) in d.iter_mut().enumerate() {
                                    *v = self
                                        .src(ox, kx, self.w)
                                        .map_or(T::zero(), |ix| src_row[ix]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds col[k, oh*ow] back onto one group's input-gradient planes dx[cg, h, w].
    fn col2im<T: Elem>(&self, col: &[T], dx: &mut [T]) {
        let (ohw, hw) = (self.ohw(), self.hw());
        for ci in 0..self.cg() {
            let plane = &mut dx[ci * hw..(ci + 1) * hw];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (ci * self.kh + ky) * self.kw + kx;
                    let src = &col[row * ohw..(row + 1) * ohw];
                    for oy in 0..self.oh {
                        let Some(iy) = self.src(oy, ky, self.h) else {
                            continue;
                        };
                        let s = &src[oy * self.ow..(oy + 1) * self.ow];
                        let dst_row = &mut plane[iy * self.w..(iy + 1) * self.w];
                        for (ox, v) in s.iter().enumerate() {
                            if let Some(ix) = self.src(ox, kx, self.w) {
                                dst_row[ix] = dst_row[ix] + *v;
                            }
                        }
                    }
                }
            }
        }
    }

    fn threads() -> usize {
        rayon::current_num_threads()
    }

    /// Whether to split over samples (each GEMM single-threaded) or inside each GEMM.
    fn per_sample(&self) -> bool {
        self.n >= Self::threads()
    }

    /// Stride-1 convolutions run as shifted GEMMs instead of im2col: with the input zero-padded once,
    /// the input seen by kernel tap (ky, kx) is the padded plane read from offset ky*dil*pw + kx*dil,
    /// so out[o, :] += W[:, :, ky, kx] x padded[:, offset..] computes the output on the padded width
    /// (the extra columns are dropped at the end). No k*k-fold im2col copy is written.
    fn shifted(&self) -> bool {
        self.stride == 1 && !self.pointwise()
    }

    /// (padded width, padded plane stride incl. tail, rows of output on the padded grid)
    pub(super) fn shifted_dims(&self) -> (usize, usize) {
        let pw = self.w + 2 * self.pad;
        let ph = self.h + 2 * self.pad;
        (pw, ph * pw + self.dil * (self.kw - 1))
    }

    /// Copies one group's planes x[cg, h, w] into the zeroed padded layout of [`Self::shifted_dims`].
    pub(super) fn pad_planes<T: Elem>(&self, xg: &[T], padded: &mut [T]) {
        let (pw, plane) = self.shifted_dims();
        padded.iter_mut().for_each(|v| *v = T::zero());
        for c in 0..self.cg() {
            for iy in 0..self.h {
                let dst = c * plane + (iy + self.pad) * pw + self.pad;
                let src = (c * self.h + iy) * self.w;
                padded[dst..dst + self.w].copy_from_slice(&xg[src..src + self.w]);
            }
        }
    }

    fn shifted_scratch(&self) -> usize {
        let (pw, plane) = self.shifted_dims();
        self.cg() * plane + self.og() * self.oh * pw
    }

    fn shifted_group<T: Elem>(
        &self,
        xg: &[T],
        wg: &[T],
        yg: &mut [T],
        scratch: &mut [T],
        threads: usize,
    ) {
        let (pw, plane) = self.shifted_dims();
        let (cg, og, kk) = (self.cg(), self.og(), self.kh * self.kw);
        let (padded, acc) = scratch.split_at_mut(cg * plane);
        self.pad_planes(xg, padded);
        let n = self.oh * pw;
        let acc = &mut acc[..og * n];
        for ky in 0..self.kh {
            for kx in 0..self.kw {
                let tap = ky * self.kw + kx;
                let off = ky * self.dil * pw + kx * self.dil;
                let a = Mat {
                    data: &wg[tap..],
                    rs: cg * kk,
                    cs: kk,
                };
                let b = Mat {
                    data: &padded[off..],
                    rs: plane,
                    cs: 1,
                };
                matmul(og, n, cg, acc, a, b, tap > 0, threads);
            }
        }
        for o in 0..og {
            for oy in 0..self.oh {
                let src = o * n + oy * pw;
                let dst = (o * self.oh + oy) * self.ow;
                yg[dst..dst + self.ow].copy_from_slice(&acc[src..src + self.ow]);
            }
        }
    }

    /// Weight gradient of one group and sample by shifted GEMMs (see [`Self::shifted`]): with the output
    /// gradient laid on the padded grid (zeros in the extra columns), dW[:, :, ky, kx] += gy x
    /// padded[:, offset..]^T.
    fn shifted_weight_grad<T: Elem>(
        &self,
        xg: &[T],
        gyg: &[T],
        dwg: &mut [T],
        scratch: &mut [T],
        threads: usize,
    ) {
        let (pw, plane) = self.shifted_dims();
        let (cg, og, kk) = (self.cg(), self.og(), self.kh * self.kw);
        let n = self.oh * pw;
        let (padded, rest) = scratch.split_at_mut(cg * plane);
        let (gpad, tap_grad) = rest.split_at_mut(og * n);
        self.pad_planes(xg, padded);
        gpad.iter_mut().for_each(|v| *v = T::zero());
        for o in 0..og {
            for oy in 0..self.oh {
                let src = (o * self.oh + oy) * self.ow;
                gpad[o * n + oy * pw..o * n + oy * pw + self.ow]
                    .copy_from_slice(&gyg[src..src + self.ow]);
            }
        }
        let tap_grad = &mut tap_grad[..og * cg];
        for ky in 0..self.kh {
            for kx in 0..self.kw {
                let tap = ky * self.kw + kx;
                let off = ky * self.dil * pw + kx * self.dil;
                let a = Mat::rows(gpad, n);
                let b = Mat {
                    data: &padded[off..],
                    rs: 1,
                    cs: plane,
                };
                matmul(og, cg, n, tap_grad, a, b, false, threads);
                for o in 0..og {
                    for c in 0..cg {
                        let d = (o * cg + c) * kk + tap;
                        dwg[d] = dwg[d] + tap_grad[o * cg + c];
                    }
                }
            }
        }
    }

    fn forward<T: Elem>(&self, x: &[T], wt: &[T]) -> Vec<T> {
        let (og, k, ohw, cg, hw) = (self.og(), self.k(), self.ohw(), self.cg(), self.hw());
        let mut out = vec![T::zero(); self.n * self.o * ohw];
        let gemm_threads = if self.per_sample() {
            1
        } else {
            Self::threads()
        };
        let shifted = self.shifted();
        let one = |col: &mut Vec<T>, (y, xn): (&mut [T], &[T])| {
            for g in 0..self.groups {
                let xg = &xn[g * cg * hw..(g + 1) * cg * hw];
                if shifted {
                    let wg = &wt[g * og * k..(g + 1) * og * k];
                    self.shifted_group(
                        xg,
                        wg,
                        &mut y[g * og * ohw..(g + 1) * og * ohw],
                        col,
                        gemm_threads,
                    );
                    continue;
                }
                let b = if self.pointwise() {
                    Mat::rows(xg, ohw)
                } else {
                    self.im2col(xg, col);
                    Mat::rows(col.as_slice(), ohw)
                };
                let a = Mat::rows(&wt[g * og * k..(g + 1) * og * k], k);
                matmul(
                    og,
                    ohw,
                    k,
                    &mut y[g * og * ohw..(g + 1) * og * ohw],
                    a,
                    b,
                    false,
                    gemm_threads,
                );
            }
        };
        let col_len = if shifted {
            self.shifted_scratch()
        } else if self.pointwise() {
            0
        } else {
            k * ohw
        };
        let items = out
            .par_chunks_mut(self.o * ohw)
            .zip(x.par_chunks(self.c * hw));
        if self.per_sample() {
            items.for_each_init(|| vec![T::zero(); col_len], one);
        } else {
            let mut col = vec![T::zero(); col_len];
            out.chunks_mut(self.o * ohw)
                .zip(x.chunks(self.c * hw))
                .for_each(|p| one(&mut col, p));
        }
        out
    }

    /// For a stride-1 convolution with a square kernel, the input gradient is itself a convolution:
    /// of the output gradient, with the kernel flipped and its in/out channels swapped within each
    /// group, padding dil*(k-1) - pad. That runs as a forward pass (GEMMs whose inner dimension is
    /// out_channels * k * k instead of out_channels, and no col2im scatter).
    fn as_transposed_forward(&self) -> Option<ConvGeom> {
        let span = self.dil * (self.kh - 1);
        (self.stride == 1 && self.kh == self.kw && self.pad <= span && !self.pointwise()).then(
            || ConvGeom {
                n: self.n,
                c: self.o,
                h: self.oh,
                w: self.ow,
                o: self.c,
                kh: self.kh,
                kw: self.kw,
                stride: 1,
                pad: span - self.pad,
                dil: self.dil,
                groups: self.groups,
                oh: self.h,
                ow: self.w,
            },
        )
    }

    /// The kernel [O, C/g, kh, kw] flipped spatially with in/out channels swapped per group: [C, O/g, kh, kw].
    fn flipped_transposed<T: Elem>(&self, wt: &[T]) -> Vec<T> {
        let (og, cg, kk) = (self.og(), self.cg(), self.kh * self.kw);
        let mut out = vec![T::zero(); wt.len()];
        for g in 0..self.groups {
            for ol in 0..og {
                for cl in 0..cg {
                    let src = ((g * og + ol) * cg + cl) * kk;
                    let dst = ((g * cg + cl) * og + ol) * kk;
                    for t in 0..kk {
                        out[dst + t] = wt[src + kk - 1 - t];
                    }
                }
            }
        }
        out
    }

    fn backward_input<T: Elem>(&self, gy: &[T], wt: &[T]) -> Vec<T> {
        if let Some(t) = self.as_transposed_forward() {
            return t.forward(gy, &self.flipped_transposed(wt));
        }
        let (og, k, ohw, cg, hw) = (self.og(), self.k(), self.ohw(), self.cg(), self.hw());
        let mut dx = vec![T::zero(); self.n * self.c * hw];
        let gemm_threads = if self.per_sample() {
            1
        } else {
            Self::threads()
        };
        let one = |col: &mut Vec<T>, (dxn, gyn): (&mut [T], &[T])| {
            for g in 0..self.groups {
                // dcol[k, ohw] = W_g^T [k, og] x gy_g [og, ohw]
                let a = Mat::transposed(&wt[g * og * k..(g + 1) * og * k], k);
                let b = Mat::rows(&gyn[g * og * ohw..(g + 1) * og * ohw], ohw);
                let dxg = &mut dxn[g * cg * hw..(g + 1) * cg * hw];
                if self.pointwise() {
                    matmul(k, ohw, og, dxg, a, b, false, gemm_threads);
                } else {
                    matmul(k, ohw, og, col, a, b, false, gemm_threads);
                    self.col2im(col, dxg);
                }
            }
        };
        let col_len = if self.pointwise() { 0 } else { k * ohw };
        if self.per_sample() {
            dx.par_chunks_mut(self.c * hw)
                .zip(gy.par_chunks(self.o * ohw))
                .for_each_init(|| vec![T::zero(); col_len], one);
        } else {
            let mut col = vec![T::zero(); col_len];
            dx.chunks_mut(self.c * hw)
                .zip(gy.chunks(self.o * ohw))
                .for_each(|p| one(&mut col, p));
        }
        dx
    }

    fn backward_weight<T: Elem>(&self, x: &[T], gy: &[T]) -> Vec<T> {
        let (og, k, ohw, cg, hw) = (self.og(), self.k(), self.ohw(), self.cg(), self.hw());
        let wlen = self.o * k;
        // shifted GEMMs pay off for the weight gradient on larger planes (measured: slower at 8x8)
        let shifted = self.shifted() && ohw >= 256;
        let col_len = if shifted {
            self.shifted_scratch() + og * cg
        } else if self.pointwise() {
            0
        } else {
            k * ohw
        };
        let gemm_threads = if self.per_sample() {
            1
        } else {
            Self::threads()
        };
        // dW_g [og, k] += gy_g [og, ohw] x col^T [ohw, k], summed over samples
        let accumulate = |(mut dw, mut col): (Vec<T>, Vec<T>), (xn, gyn): (&[T], &[T])| {
            for g in 0..self.groups {
                let xg = &xn[g * cg * hw..(g + 1) * cg * hw];
                if shifted {
                    let gyg = &gyn[g * og * ohw..(g + 1) * og * ohw];
                    self.shifted_weight_grad(
                        xg,
                        gyg,
                        &mut dw[g * og * k..(g + 1) * og * k],
                        &mut col,
                        gemm_threads,
                    );
                    continue;
                }
                let b = if self.pointwise() {
                    Mat::transposed(xg, ohw)
                } else {
                    self.im2col(xg, &mut col);
                    Mat::transposed(col.as_slice(), ohw)
                };
                let a = Mat::rows(&gyn[g * og * ohw..(g + 1) * og * ohw], ohw);
                matmul(
                    og,
                    k,
                    ohw,
                    &mut dw[g * og * k..(g + 1) * og * k],
                    a,
                    b,
                    true,
                    gemm_threads,
                );
            }
            (dw, col)
        };
        let init = || (vec![T::zero(); wlen], vec![T::zero(); col_len]);
        if self.per_sample() {
            // samples in fixed parts, partial sums added in order: the same bits on every run
            let (xs, gs) = (self.c * hw, self.o * ohw);
            super::ordered_sum(
                x.len() / xs.max(1),
                init,
                |acc, range| {
                    for n in range {
                        let taken = std::mem::take(acc);
                        *acc = accumulate(
                            taken,
                            (&x[n * xs..(n + 1) * xs], &gy[n * gs..(n + 1) * gs]),
                        );
                    }
                },
                |a, b| a.0.iter_mut().zip(b.0).for_each(|(x, y)| *x = *x + y),
            )
            .0
        } else {
            x.chunks(self.c * hw)
                .zip(gy.chunks(self.o * ohw))
                .fold(init(), accumulate)
                .0
        }
    }
}

struct ConvForward(ConvGeom);
struct ConvBackwardInput(ConvGeom);
struct ConvBackwardWeight(ConvGeom);

impl CustomOp2 for ConvForward {
    fn name(&self) -> &'static str {
        "prunekit-conv2d"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out = super::float_kernel!(self.name(); x = s1, l1; w = s2, l2 => g.forward(x, w));
        Ok((out, Shape::from((g.n, g.o, g.oh, g.ow))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        // no input gradient for a model input (the first layer's is the costliest)
        let dx = if x.track_op() {
            Some(gy.apply_op2_no_bwd(w, &ConvBackwardInput(self.0))?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(&gy, &ConvBackwardWeight(self.0))?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp2 for ConvBackwardInput {
    fn name(&self) -> &'static str {
        "prunekit-conv2d-backward-input"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out =
            super::float_kernel!(self.name(); gy = s1, l1; w = s2, l2 => g.backward_input(gy, w));
        Ok((out, Shape::from((g.n, g.c, g.h, g.w))))
    }
}

impl CustomOp2 for ConvBackwardWeight {
    fn name(&self) -> &'static str {
        "prunekit-conv2d-backward-weight"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out =
            super::float_kernel!(self.name(); x = s1, l1; gy = s2, l2 => g.backward_weight(x, gy));
        Ok((out, Shape::from((g.o, g.c / g.groups, g.kh, g.kw))))
    }
}

/// Convolution of x [N, C, H, W] with w [O, C/groups, kh, kw] (no bias). Our kernels on CPU f32/f64
/// (depthwise convolutions, groups == C > 1, run the direct kernel of [`super::depthwise`], the rest
/// im2col/shifted GEMMs); candle's conv2d elsewhere.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    dil: usize,
    groups: usize,
) -> candle_core::Result<Tensor> {
    if !(super::supported(x) && x.dtype() == w.dtype()) {
        return candle_conv2d(x, w, stride, pad, dil, groups);
    }
    let geom = ConvGeom::of(x, w, stride, pad, dil, groups)?;
    if geom.groups > 1 && geom.groups == geom.c {
        return super::depthwise::depthwise_conv2d(x, w, geom);
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, ConvForward(geom))
}

/// [`conv2d`] on the GEMM path even for depthwise convolutions: the baseline of the depthwise
/// kernel's benchmark. CPU f32/f64 only.
#[cfg(test)]
pub(crate) fn gemm_conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    dil: usize,
    groups: usize,
) -> candle_core::Result<Tensor> {
    let geom = ConvGeom::of(x, w, stride, pad, dil, groups)?;
    x.contiguous()?
        .apply_op2(&w.contiguous()?, ConvForward(geom))
}

impl ConvGeom {
    /// The geometry of x [N, C, H, W] convolved with w [O, C/groups, kh, kw]; an error when they
    /// do not fit.
    pub(crate) fn of(
        x: &Tensor,
        w: &Tensor,
        stride: usize,
        pad: usize,
        dil: usize,
        groups: usize,
    ) -> candle_core::Result<Self> {
        Self::of_dims(x.dims4()?, w.dims4()?, stride, pad, dil, groups)
    }

    /// [`Self::of`] from the shapes x [N, C, H, W] and w [O, C/groups, kh, kw].
    pub(crate) fn of_dims(
        (n, c, h, wd): (usize, usize, usize, usize),
        (o, cg, kh, kw): (usize, usize, usize, usize),
        stride: usize,
        pad: usize,
        dil: usize,
        groups: usize,
    ) -> candle_core::Result<Self> {
        if groups == 0 || c != cg * groups || o % groups != 0 || stride == 0 || dil == 0 {
            candle_core::bail!(
                "conv2d: input {:?} and kernel {:?} do not fit groups = {groups}",
                [n, c, h, wd],
                [o, cg, kh, kw]
            );
        }
        let span = |k: usize| dil * (k - 1) + 1;
        if kh == 0 || kw == 0 || h + 2 * pad < span(kh) || wd + 2 * pad < span(kw) {
            candle_core::bail!("conv2d: kernel {kh}x{kw} does not fit the input {h}x{wd}");
        }
        Ok(Self {
            n,
            c,
            h,
            w: wd,
            o,
            kh,
            kw,
            stride,
            pad,
            dil,
            groups,
            oh: (h + 2 * pad - span(kh)) / stride + 1,
            ow: (wd + 2 * pad - span(kw)) / stride + 1,
        })
    }
}

/// candle's conv2d, made safe for its backward: candle derives the input gradient's extent from the
/// height alone, so when height and width leave different remainders under the stride, pad
/// explicitly and crop what no window reads (both remainders become zero). The reference of the
/// kernels' tests.
pub(crate) fn candle_conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    dil: usize,
    groups: usize,
) -> candle_core::Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let span = |k: usize| dil * (k - 1) + 1;
    let slack = |len: usize, k: usize| (len + 2 * pad).saturating_sub(span(k)) % stride.max(1);
    if slack(h, kh) == slack(wd, kw) {
        return x.conv2d(w, pad, stride, dil, groups);
    }
    let (oh, ow) = (
        (h + 2 * pad - span(kh)) / stride + 1,
        (wd + 2 * pad - span(kw)) / stride + 1,
    );
    x.pad_with_zeros(2, pad, pad)?
        .pad_with_zeros(3, pad, pad)?
        .narrow(2, 0, (oh - 1) * stride + span(kh))?
        .narrow(3, 0, (ow - 1) * stride + span(kw))?
        .conv2d(w, 0, stride, dil, groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    use crate::kernels::test_util::max_abs_diff;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::kernels::test_util::uniform(shape, seed, -1.0, 1.0)
    }

    /// Outputs and both gradients equal candle's conv2d (the reference) on odd shapes, strides,
    /// padding, dilation and groups. (candle's own backward is wrong when height and width leave
    /// different remainders under the stride, so those shapes are checked against finite
    /// differences in tests/gradients.rs instead.)
    #[test]
    fn matches_candle_forward_and_backward() {
        let cases = [
            // n, c, h, w, o, k, stride, pad, dil, groups
            (2, 3, 7, 9, 4, 3, 1, 1, 1, 1),
            (3, 4, 8, 8, 6, 3, 2, 1, 1, 2),
            (1, 2, 9, 7, 3, 1, 1, 0, 1, 1),
            (2, 4, 11, 11, 4, 3, 1, 2, 2, 4),
            (4, 6, 6, 4, 6, 2, 2, 0, 1, 3),
            (2, 3, 5, 5, 5, 5, 1, 2, 1, 1),
            (2, 4, 7, 6, 6, 3, 1, 0, 1, 2),
            (1, 3, 9, 9, 2, 3, 1, 3, 2, 1),
            (1, 1, 10, 7, 2, 3, 3, 1, 1, 1),
        ];
        for (i, &(n, c, h, w, o, k, s, p, d, g)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&rand(&[n, c, h, w], i as u64)).unwrap();
            let wt = Var::from_tensor(&rand(&[o, c / g, k, k], 100 + i as u64)).unwrap();
            let ours = conv2d(&x, &wt, s, p, d, g).unwrap();
            let reference = x.conv2d(&wt, p, s, d, g).unwrap();
            assert_eq!(ours.dims(), reference.dims(), "case {i}");
            assert!(max_abs_diff(&ours, &reference) < 1e-12, "case {i}: forward");
            let r = rand(ours.dims(), 200 + i as u64);
            let g1 = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&reference * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert!(
                max_abs_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-11,
                "case {i}: input gradient"
            );
            assert!(
                max_abs_diff(g1.get(&wt).unwrap(), g2.get(&wt).unwrap()) < 1e-11,
                "case {i}: weight gradient"
            );
        }
    }

    /// The weight gradient summed over a batch is the same to the bit on every run: the samples
    /// are summed in fixed parts in a fixed order (rayon's work-stealing fold gave run-to-run
    /// differences in the last bits, which training amplified: two runs of one recipe differed
    /// by 0.4 pt of mAP). Shapes of the yolo-tiny stem, its 1x1 head, and a depthwise conv.
    #[test]
    fn weight_gradients_are_bitwise_reproducible() {
        let cases = [
            // n, c, h, w, o, k, stride, pad, groups
            (32, 1, 48, 48, 16, 3, 2, 1, 1),
            (32, 32, 24, 24, 15, 1, 1, 0, 1),
            (32, 8, 12, 12, 8, 3, 1, 1, 8),
        ];
        for (i, &(n, c, h, w, o, k, s, p, g)) in cases.iter().enumerate() {
            let x = rand(&[n, c, h, w], i as u64).to_dtype(DType::F32).unwrap();
            let wt = Var::from_tensor(
                &rand(&[o, c / g, k, k], 50 + i as u64)
                    .to_dtype(DType::F32)
                    .unwrap(),
            )
            .unwrap();
            let grad = || {
                let y = conv2d(&x, &wt, s, p, 1, g).unwrap();
                let gs = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                gs.get(&wt)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let first = grad();
            for run in 0..20 {
                assert!(
                    grad() == first,
                    "case {i}, run {run}: the weight gradient changed"
                );
            }
        }
    }

    #[test]
    fn f32_and_non_contiguous_inputs() {
        let x = rand(&[2, 5, 6, 3], 1)
            .to_dtype(DType::F32)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let w = rand(&[4, 5, 3, 3], 2).to_dtype(DType::F32).unwrap();
        let ours = conv2d(&x, &w, 1, 1, 1, 1).unwrap();
        let reference = x.conv2d(&w, 1, 1, 1, 1).unwrap();
        let diff = (ours - reference)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
