//! Fused recurrent layers on the CPU: the whole time loop of one GRU or LSTM layer as one op, with
//! backpropagation through time as one op.
//!
//! Composed from candle ops, one step of a GRU is about fifteen tensors (narrows, sigmoids, adds,
//! products), each allocated and each with its own backward; the backward of the per-step `narrow`
//! of the projected inputs also pads its gradient to the whole sequence, so a layer's backward
//! grew with T^2 (a GRU over 128 tokens took 11x its forward time). Here the input projection
//! stays one matmul outside (`x W_ih^T + b`, as before), and the op runs the recurrence: per step
//! one GEMM `h_{t-1} W_hh^T` for a block of samples and one pass over the gates. The backward
//! recomputes the gates (cheaper than keeping them), runs BPTT per block of samples, and forms the
//! gradient of `W_hh` as one GEMM over every (sample, step) at the end.
//!
//! Samples are independent, so blocks of [`ROWS`] samples run in parallel; the block size is fixed
//! and the one reduction across samples (the `W_hh` / `b_hh` gradients) is a single ordered GEMM /
//! sum, so results are bitwise the same for any number of threads.
//!
//! Equations and gate order are PyTorch's (`torch.nn.GRU`: r, z, n; `torch.nn.LSTM`: i, f, g, o),
//! the same as the composed reference in `ops::recurrent`; the tests compare both.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{matmul, Elem, Mat};

/// Samples per parallel block: fixed, so that the per-sample results do not depend on the number
/// of threads.
const ROWS: usize = 16;

/// The gate nonlinearities: exact (`exp`, `tanh` of the standard library) for f64, the
/// reference in tests; for f32 a branch-free exp that the compiler can vectorise (relative error
/// below 2e-7, about one f32 ulp), since libm's scalar `expf` / `tanhf` calls took most of a
/// step's time.
pub(crate) trait Gate: Elem {
    fn sigmoid(self) -> Self;
    fn tanh_gate(self) -> Self;
}

impl Gate for f64 {
    fn sigmoid(self) -> f64 {
        1.0 / (1.0 + (-self).exp())
    }
    fn tanh_gate(self) -> f64 {
        self.tanh()
    }
}

/// e^x for f32 by Cody-Waite range reduction (x = n ln2 + r, |r| <= ln2 / 2) and a degree-6
/// polynomial for e^r (Cephes' `expf` coefficients), 2^n built in the exponent bits; inputs are
/// clamped to [-87, 88] (the results there are the f32 extremes, as the gates need).
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

impl Gate for f32 {
    #[inline(always)]
    fn sigmoid(self) -> f32 {
        1.0 / (1.0 + exp_f32(-self))
    }
    #[inline(always)]
    fn tanh_gate(self) -> f32 {
        // tanh x = 1 - 2 / (e^{2x} + 1): exact limits at both ends, no cancellation for large |x|
        1.0 - 2.0 / (exp_f32(2.0 * self) + 1.0)
    }
}

fn sigmoid<T: Gate>(v: T) -> T {
    v.sigmoid()
}

/// The sizes of one call: batch, steps, hidden units.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    steps: usize,
    hidden: usize,
}

impl Dims {
    /// From the projected inputs [B, T, gates * H].
    fn of(xw: &Tensor, gates: usize) -> candle_core::Result<Self> {
        let (batch, steps, width) = xw.dims3()?;
        if width % gates != 0 || width == 0 {
            candle_core::bail!("recurrent kernel: projected width {width} is not {gates} x hidden");
        }
        Ok(Self {
            batch,
            steps,
            hidden: width / gates,
        })
    }
}

/// pre [nb, G] += h_{t-1} [nb, H] W_hh^T (W_hh [G, H]): the recurrent term of one step.
fn add_recurrent_term<T: Elem>(pre: &mut [T], hprev: &[T], w_hh: &[T], h: usize) {
    let nb = hprev.len() / h.max(1);
    let g = pre.len() / nb.max(1);
    matmul(
        nb,
        g,
        h,
        pre,
        Mat::rows(hprev, h),
        Mat::transposed(w_hh, h),
        true,
        1,
    );
}

/// GRU forward over one block of samples. `xw`: the block's [nb, T, 3H] projected inputs (with
/// `b_ih`); `w_hh` [3H, H]; `b_hh` [3H]; writes every step's h into `out` [nb, T, H] and, when
/// given, (r, z, n, h W_hn^T + b_hn) of every step into `saved` [nb, T, 4H].
fn gru_rows<T: Gate>(
    d: Dims,
    xw: &[T],
    w_hh: &[T],
    b_hh: &[T],
    out: &mut [T],
    mut saved: Option<&mut [T]>,
) {
    let (steps, h) = (d.steps, d.hidden);
    let g3 = 3 * h;
    let nb = out.len() / (steps * h).max(1);
    let mut hw = vec![T::zero(); nb * g3];
    let mut hprev = vec![T::zero(); nb * h];
    for t in 0..steps {
        for row in hw.chunks_exact_mut(g3) {
            row.copy_from_slice(b_hh);
        }
        if t > 0 {
            add_recurrent_term(&mut hw, &hprev, w_hh, h);
        }
        for r in 0..nb {
            let at = r * steps + t;
            let x = &xw[at * g3..][..g3];
            let hr = &hw[r * g3..][..g3];
            let hp = &mut hprev[r * h..][..h];
            let o = &mut out[at * h..][..h];
            for j in 0..h {
                let rg = sigmoid(x[j] + hr[j]);
                let zg = sigmoid(x[h + j] + hr[h + j]);
                let n = (x[2 * h + j] + rg * hr[2 * h + j]).tanh_gate();
                o[j] = n + zg * (hp[j] - n);
                if let Some(s) = saved.as_deref_mut() {
                    let s = &mut s[at * 4 * h..][..4 * h];
                    (s[j], s[h + j], s[2 * h + j], s[3 * h + j]) = (rg, zg, n, hr[2 * h + j]);
                }
            }
            hp.copy_from_slice(o);
        }
    }
}

/// LSTM forward over one block of samples. `xw`: the block's [nb, T, 4H] projected inputs (with
/// both biases); `w_hh` [4H, H]; writes every step's h into `out` [nb, T, H] and, when given,
/// (i, f, g, o, c) of every step into `saved` [nb, T, 5H].
fn lstm_rows<T: Gate>(d: Dims, xw: &[T], w_hh: &[T], out: &mut [T], mut saved: Option<&mut [T]>) {
    let (steps, h) = (d.steps, d.hidden);
    let g4 = 4 * h;
    let nb = out.len() / (steps * h).max(1);
    let mut gates = vec![T::zero(); nb * g4];
    let mut hprev = vec![T::zero(); nb * h];
    let mut c = vec![T::zero(); nb * h];
    for t in 0..steps {
        for (r, row) in gates.chunks_exact_mut(g4).enumerate() {
            row.copy_from_slice(&xw[(r * steps + t) * g4..][..g4]);
        }
        if t > 0 {
            add_recurrent_term(&mut gates, &hprev, w_hh, h);
        }
        for r in 0..nb {
            let at = r * steps + t;
            let g = &gates[r * g4..][..g4];
            let cr = &mut c[r * h..][..h];
            let o = &mut out[at * h..][..h];
            for j in 0..h {
                let i = sigmoid(g[j]);
                let f = sigmoid(g[h + j]);
                let gg = g[2 * h + j].tanh_gate();
                let og = sigmoid(g[3 * h + j]);
                cr[j] = f * cr[j] + i * gg;
                o[j] = og * cr[j].tanh_gate();
                if let Some(s) = saved.as_deref_mut() {
                    let s = &mut s[at * 5 * h..][..5 * h];
                    (s[j], s[h + j], s[2 * h + j], s[3 * h + j], s[4 * h + j]) =
                        (i, f, gg, og, cr[j]);
                }
            }
            hprev[r * h..][..h].copy_from_slice(o);
        }
    }
}

/// GRU backward over one block: from the upstream gradient `gy` [nb, T, H], writes the gradient
/// of the projected inputs into `dxw` [nb, T, 3H], that of the recurrent pre-activations
/// (h W_hh^T + b_hh) into `dhw` [nb, T, 3H] and h_{t-1} of every step into `hprev` [nb, T, H]
/// (both for the weight gradient).
#[allow(clippy::too_many_arguments)] // one block's inputs and three outputs
fn gru_rows_backward<T: Gate>(
    d: Dims,
    xw: &[T],
    w_hh: &[T],
    b_hh: &[T],
    gy: &[T],
    dxw: &mut [T],
    dhw: &mut [T],
    hprev: &mut [T],
) {
    let (steps, h) = (d.steps, d.hidden);
    let g3 = 3 * h;
    let nb = gy.len() / (steps * h).max(1);
    let mut hs = vec![T::zero(); nb * steps * h];
    let mut saved = vec![T::zero(); nb * steps * 4 * h];
    gru_rows(d, xw, w_hh, b_hh, &mut hs, Some(&mut saved));
    let one = T::one();
    let mut dh = vec![T::zero(); nb * h];
    let mut dhw_t = vec![T::zero(); nb * g3];
    for t in (0..steps).rev() {
        for r in 0..nb {
            let at = r * steps + t;
            let s = &saved[at * 4 * h..][..4 * h];
            let g = &gy[at * h..][..h];
            let dx = &mut dxw[at * g3..][..g3];
            let dw = &mut dhw_t[r * g3..][..g3];
            let dhr = &mut dh[r * h..][..h];
            let hp = &mut hprev[at * h..][..h];
            if t > 0 {
                hp.copy_from_slice(&hs[(at - 1) * h..][..h]);
            } else {
                hp.iter_mut().for_each(|v| *v = T::zero());
            }
            for j in 0..h {
                let (rg, zg, n, hn) = (s[j], s[h + j], s[2 * h + j], s[3 * h + j]);
                let gj = g[j] + dhr[j];
                let dn = gj * (one - zg);
                let dz = gj * (hp[j] - n);
                let dnp = dn * (one - n * n);
                let drp = dnp * hn * rg * (one - rg);
                let dzp = dz * zg * (one - zg);
                dx[j] = drp;
                dx[h + j] = dzp;
                dx[2 * h + j] = dnp;
                dw[j] = drp;
                dw[h + j] = dzp;
                dw[2 * h + j] = dnp * rg;
                dhr[j] = gj * zg;
            }
            dhw[at * g3..][..g3].copy_from_slice(dw);
        }
        if t > 0 {
            matmul(
                nb,
                h,
                g3,
                &mut dh,
                Mat::rows(&dhw_t, g3),
                Mat::rows(w_hh, h),
                true,
                1,
            );
        }
    }
}

/// LSTM backward over one block: from `gy` [nb, T, H], writes the gradient of the projected
/// inputs (= that of the gate pre-activations) into `dxw` [nb, T, 4H] and h_{t-1} of every step
/// into `hprev` [nb, T, H].
fn lstm_rows_backward<T: Gate>(
    d: Dims,
    xw: &[T],
    w_hh: &[T],
    gy: &[T],
    dxw: &mut [T],
    hprev: &mut [T],
) {
    let (steps, h) = (d.steps, d.hidden);
    let g4 = 4 * h;
    let nb = gy.len() / (steps * h).max(1);
    let mut hs = vec![T::zero(); nb * steps * h];
    let mut saved = vec![T::zero(); nb * steps * 5 * h];
    lstm_rows(d, xw, w_hh, &mut hs, Some(&mut saved));
    let one = T::one();
    let mut dh = vec![T::zero(); nb * h];
    let mut dc = vec![T::zero(); nb * h];
    let mut dg_t = vec![T::zero(); nb * g4];
    for t in (0..steps).rev() {
        for r in 0..nb {
            let at = r * steps + t;
            let s = &saved[at * 5 * h..][..5 * h];
            let g = &gy[at * h..][..h];
            let dx = &mut dxw[at * g4..][..g4];
            let dhr = &dh[r * h..][..h];
            let dcr = &mut dc[r * h..][..h];
            let hp = &mut hprev[at * h..][..h];
            if t > 0 {
                hp.copy_from_slice(&hs[(at - 1) * h..][..h]);
            } else {
                hp.iter_mut().for_each(|v| *v = T::zero());
            }
            for j in 0..h {
                let (i, f, gg, o, c) = (s[j], s[h + j], s[2 * h + j], s[3 * h + j], s[4 * h + j]);
                let c_prev = if t > 0 {
                    saved[(at - 1) * 5 * h + 4 * h + j]
                } else {
                    T::zero()
                };
                let gj = g[j] + dhr[j];
                let tc = c.tanh_gate();
                let d_o = gj * tc;
                let dcj = gj * o * (one - tc * tc) + dcr[j];
                dx[j] = dcj * gg * i * (one - i);
                dx[h + j] = dcj * c_prev * f * (one - f);
                dx[2 * h + j] = dcj * i * (one - gg * gg);
                dx[3 * h + j] = d_o * o * (one - o);
                dcr[j] = dcj * f;
            }
            dg_t[r * g4..][..g4].copy_from_slice(dx);
        }
        if t > 0 {
            matmul(
                nb,
                h,
                g4,
                &mut dh,
                Mat::rows(&dg_t, g4),
                Mat::rows(w_hh, h),
                false,
                1,
            );
        }
    }
}

/// dW_hh [G, H] = sum over every (sample, step) of dpre^T h_{t-1}: one GEMM, fixed order.
fn weight_grad<T: Elem>(d: Dims, gates: usize, dpre: &[T], hprev: &[T], dw: &mut [T]) {
    let g = gates * d.hidden;
    matmul(
        g,
        d.hidden,
        d.batch * d.steps,
        dw,
        Mat::transposed(dpre, g),
        Mat::rows(hprev, d.hidden),
        false,
        1,
    );
}

/// Runs `f` on blocks of [`ROWS`] samples in parallel: `inputs` are per-sample slices of the given
/// widths (elements per sample), `outputs` per-sample mutable buffers of the given widths.
fn per_block<T: Elem>(
    batch: usize,
    xw: (&[T], usize),
    gy: Option<(&[T], usize)>,
    outs: Vec<(&mut [T], usize)>,
    f: impl Fn(&[T], Option<&[T]>, Vec<&mut [T]>) + Sync,
) {
    let blocks = batch.div_ceil(ROWS);
    // split every buffer into the blocks' ranges up front, then run the blocks in parallel
    let mut out_blocks: Vec<Vec<&mut [T]>> = (0..blocks).map(|_| Vec::new()).collect();
    for (buf, width) in outs {
        for (b, chunk) in buf.chunks_mut(ROWS * width).enumerate() {
            out_blocks[b].push(chunk);
        }
    }
    out_blocks
        .into_par_iter()
        .enumerate()
        .for_each(|(b, outs)| {
            let rows = (b * ROWS)..((b + 1) * ROWS).min(batch);
            let x = &xw.0[rows.start * xw.1..rows.end * xw.1];
            let g = gy.map(|(g, w)| &g[rows.start * w..rows.end * w]);
            f(x, g, outs);
        });
}

struct GruSeq(Dims);
struct GruSeqBackward(Dims);
struct LstmSeq(Dims);
struct LstmSeqBackward(Dims);

fn gru_forward<T: Gate>(d: Dims, xw: &[T], w_hh: &[T], b_hh: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); d.batch * d.steps * d.hidden];
    per_block(
        d.batch,
        (xw, d.steps * 3 * d.hidden),
        None,
        vec![(&mut out, d.steps * d.hidden)],
        |x, _, mut o| gru_rows(d, x, w_hh, b_hh, o.remove(0), None),
    );
    out
}

fn lstm_forward<T: Gate>(d: Dims, xw: &[T], w_hh: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); d.batch * d.steps * d.hidden];
    per_block(
        d.batch,
        (xw, d.steps * 4 * d.hidden),
        None,
        vec![(&mut out, d.steps * d.hidden)],
        |x, _, mut o| lstm_rows(d, x, w_hh, o.remove(0), None),
    );
    out
}

/// [dxw (B T 3H) | dW_hh (3H H) | db_hh (3H)] in one buffer. `wb`: W_hh then b_hh, flat.
fn gru_backward<T: Gate>(d: Dims, xw: &[T], wb: &[T], gy: &[T]) -> Vec<T> {
    let (h, bt) = (d.hidden, d.batch * d.steps);
    let g3 = 3 * h;
    let (w_hh, b_hh) = wb.split_at(g3 * h);
    let mut out = vec![T::zero(); bt * g3 + g3 * h + g3];
    let mut dhw = vec![T::zero(); bt * g3];
    let mut hprev = vec![T::zero(); bt * h];
    let (dxw, rest) = out.split_at_mut(bt * g3);
    per_block(
        d.batch,
        (xw, d.steps * g3),
        Some((gy, d.steps * h)),
        vec![
            (dxw, d.steps * g3),
            (&mut dhw, d.steps * g3),
            (&mut hprev, d.steps * h),
        ],
        |x, g, o| {
            let mut o = o.into_iter();
            if let (Some(g), Some(a), Some(b), Some(c)) = (g, o.next(), o.next(), o.next()) {
                gru_rows_backward(d, x, w_hh, b_hh, g, a, b, c);
            }
        },
    );
    let (dw, db) = rest.split_at_mut(g3 * h);
    weight_grad(d, 3, &dhw, &hprev, dw);
    for row in dhw.chunks_exact(g3) {
        for (acc, &v) in db.iter_mut().zip(row) {
            *acc = *acc + v;
        }
    }
    out
}

/// [dxw (B T 4H) | dW_hh (4H H)] in one buffer.
fn lstm_backward<T: Gate>(d: Dims, xw: &[T], w_hh: &[T], gy: &[T]) -> Vec<T> {
    let (h, bt) = (d.hidden, d.batch * d.steps);
    let g4 = 4 * h;
    let mut out = vec![T::zero(); bt * g4 + g4 * h];
    let mut hprev = vec![T::zero(); bt * h];
    let (dxw, dw) = out.split_at_mut(bt * g4);
    per_block(
        d.batch,
        (xw, d.steps * g4),
        Some((gy, d.steps * h)),
        vec![(&mut *dxw, d.steps * g4), (&mut hprev, d.steps * h)],
        |x, g, o| {
            let mut o = o.into_iter();
            if let (Some(g), Some(a), Some(b)) = (g, o.next(), o.next()) {
                lstm_rows_backward(d, x, w_hh, g, a, b);
            }
        },
    );
    weight_grad(d, 4, dxw, &hprev, dw);
    out
}

impl CustomOp3 for GruSeq {
    fn name(&self) -> &'static str {
        "prunekit-gru"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.0;
        let out = super::float_kernel!(self.name(); x = s1, l1; w = s2, l2; b = s3, l3 => gru_forward(d, x, w, b));
        Ok((out, Shape::from((d.batch, d.steps, d.hidden))))
    }
    fn bwd(
        &self,
        xw: &Tensor,
        w_hh: &Tensor,
        b_hh: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = self.0;
        let (h, bt) = (d.hidden, d.batch * d.steps);
        let wb = Tensor::cat(&[&w_hh.flatten_all()?, &b_hh.flatten_all()?], 0)?;
        let flat = xw
            .contiguous()?
            .apply_op3_no_bwd(&wb, &gy.contiguous()?, &GruSeqBackward(d))?;
        let dxw = flat
            .narrow(0, 0, bt * 3 * h)?
            .reshape((d.batch, d.steps, 3 * h))?;
        let dw = flat.narrow(0, bt * 3 * h, 3 * h * h)?.reshape((3 * h, h))?;
        let db = flat.narrow(0, bt * 3 * h + 3 * h * h, 3 * h)?;
        Ok((Some(dxw), Some(dw), Some(db)))
    }
}

impl CustomOp3 for GruSeqBackward {
    fn name(&self) -> &'static str {
        "prunekit-gru-backward"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.0;
        let out = super::float_kernel!(self.name(); x = s1, l1; wb = s2, l2; g = s3, l3 => gru_backward(d, x, wb, g));
        let n = d.batch * d.steps * 3 * d.hidden + 3 * d.hidden * d.hidden + 3 * d.hidden;
        Ok((out, Shape::from(n)))
    }
}

impl CustomOp2 for LstmSeq {
    fn name(&self) -> &'static str {
        "prunekit-lstm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.0;
        let out =
            super::float_kernel!(self.name(); x = s1, l1; w = s2, l2 => lstm_forward(d, x, w));
        Ok((out, Shape::from((d.batch, d.steps, d.hidden))))
    }
    fn bwd(
        &self,
        xw: &Tensor,
        w_hh: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = self.0;
        let (h, bt) = (d.hidden, d.batch * d.steps);
        let flat = xw.contiguous()?.apply_op3_no_bwd(
            &w_hh.contiguous()?,
            &gy.contiguous()?,
            &LstmSeqBackward(d),
        )?;
        let dxw = flat
            .narrow(0, 0, bt * 4 * h)?
            .reshape((d.batch, d.steps, 4 * h))?;
        let dw = flat.narrow(0, bt * 4 * h, 4 * h * h)?.reshape((4 * h, h))?;
        Ok((Some(dxw), Some(dw)))
    }
}

impl CustomOp3 for LstmSeqBackward {
    fn name(&self) -> &'static str {
        "prunekit-lstm-backward"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.0;
        let out = super::float_kernel!(self.name(); x = s1, l1; w = s2, l2; g = s3, l3 => lstm_backward(d, x, w, g));
        let n = d.batch * d.steps * 4 * d.hidden + 4 * d.hidden * d.hidden;
        Ok((out, Shape::from(n)))
    }
}

/// Every hidden state of a GRU layer: `xw` [B, T, 3H] (the projected inputs x W_ih^T + b_ih, gates
/// r, z, n), `w_hh` [3H, H], `b_hh` [3H] -> h [B, T, H], with h_0 = 0 and PyTorch's equations:
/// r = σ(xw_r + h W_hr^T + b_hr), z = σ(xw_z + h W_hz^T + b_hz),
/// n = tanh(xw_n + r ⊙ (h W_hn^T + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h. Differentiable in all three
/// inputs. Caller checks [`super::supported`] (CPU, f32 / f64).
///
/// # Errors
/// A width of `xw` that is not 3H for `w_hh`'s H, mismatched dtypes, or candle's errors.
pub fn gru(xw: &Tensor, w_hh: &Tensor, b_hh: &Tensor) -> candle_core::Result<Tensor> {
    let d = Dims::of(xw, 3)?;
    if w_hh.dims() != [3 * d.hidden, d.hidden] || b_hh.dims() != [3 * d.hidden] {
        candle_core::bail!(
            "gru kernel: weight_hh {:?} / bias_hh {:?} do not fit projected inputs {:?}",
            w_hh.dims(),
            b_hh.dims(),
            xw.dims()
        );
    }
    xw.contiguous()?
        .apply_op3(&w_hh.contiguous()?, &b_hh.contiguous()?, GruSeq(d))
}

/// Every hidden state of an LSTM layer: `xw` [B, T, 4H] (x W_ih^T + b_ih + b_hh, gates i, f, g, o),
/// `w_hh` [4H, H] -> h [B, T, H], with h_0 = c_0 = 0 and PyTorch's equations:
/// [i, f, g, o] = xw + h W_hh^T, c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g), h' = σ(o) ⊙ tanh(c').
/// Differentiable in both inputs. Caller checks [`super::supported`] (CPU, f32 / f64).
///
/// # Errors
/// A width of `xw` that is not 4H for `w_hh`'s H, mismatched dtypes, or candle's errors.
pub fn lstm(xw: &Tensor, w_hh: &Tensor) -> candle_core::Result<Tensor> {
    let d = Dims::of(xw, 4)?;
    if w_hh.dims() != [4 * d.hidden, d.hidden] {
        candle_core::bail!(
            "lstm kernel: weight_hh {:?} does not fit projected inputs {:?}",
            w_hh.dims(),
            xw.dims()
        );
    }
    xw.contiguous()?.apply_op2(&w_hh.contiguous()?, LstmSeq(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{max_abs_diff, uniform};
    use crate::ops::recurrent::{gru_steps, lstm_steps};
    use candle_core::Var;

    /// Gradients of sum(y * r) with respect to each of `inputs` (zeros where the graph does not
    /// reach an input: the composed ops never use W_hh over one step).
    fn grads(inputs: &[Var], y: &Tensor, r: &Tensor) -> Vec<Tensor> {
        let g = (y * r)
            .and_then(|p| p.sum_all())
            .and_then(|l| l.backward())
            .expect("backward");
        inputs
            .iter()
            .map(|v| match g.get(v) {
                Some(t) => t.clone(),
                None => v.zeros_like().expect("zeros"),
            })
            .collect()
    }

    /// The fused kernel against the composed candle ops: outputs and every gradient, f64, over a
    /// batch of several blocks with a partial last block.
    fn check(gates: usize, batch: usize, steps: usize, hidden: usize) {
        let g = gates * hidden;
        let xw = Var::from_tensor(&uniform(&[batch, steps, g], 1, -2.0, 2.0)).unwrap();
        let w = Var::from_tensor(&uniform(&[g, hidden], 2, -0.8, 0.8)).unwrap();
        let b = Var::from_tensor(&uniform(&[g], 3, -0.5, 0.5)).unwrap();
        let r = uniform(&[batch, steps, hidden], 4, -1.0, 1.0);
        let (fused, reference) = if gates == 3 {
            (
                gru(&xw, &w, &b).unwrap(),
                gru_steps(&xw, &w, &b, |_| ()).unwrap(),
            )
        } else {
            (lstm(&xw, &w).unwrap(), lstm_steps(&xw, &w, |_| ()).unwrap())
        };
        let reference = Tensor::stack(&reference, 1).unwrap();
        assert!(max_abs_diff(&fused, &reference) < 1e-12, "outputs differ");
        let vars: Vec<Var> = if gates == 3 {
            vec![xw, w, b]
        } else {
            vec![xw, w]
        };
        let gf = grads(&vars, &fused, &r);
        let gr = grads(&vars, &reference, &r);
        for (k, (a, e)) in gf.iter().zip(&gr).enumerate() {
            let d = max_abs_diff(a, e);
            assert!(d < 1e-10, "gradient {k} differs by {d}");
        }
    }

    #[test]
    fn gru_matches_the_composed_ops_in_value_and_gradient() {
        check(3, 37, 6, 5);
        check(3, 1, 1, 1);
        check(3, 16, 3, 17);
    }

    #[test]
    fn lstm_matches_the_composed_ops_in_value_and_gradient() {
        check(4, 37, 6, 5);
        check(4, 1, 1, 1);
        check(4, 16, 3, 17);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let xw = Var::from_tensor(
                    &uniform(&[70, 9, 24], 5, -2.0, 2.0)
                        .to_dtype(candle_core::DType::F32)
                        .unwrap(),
                )
                .unwrap();
                let w = Var::from_tensor(
                    &uniform(&[24, 8], 6, -0.8, 0.8)
                        .to_dtype(candle_core::DType::F32)
                        .unwrap(),
                )
                .unwrap();
                let b = Var::from_tensor(
                    &uniform(&[24], 7, -0.5, 0.5)
                        .to_dtype(candle_core::DType::F32)
                        .unwrap(),
                )
                .unwrap();
                let y = gru(&xw, &w, &b).unwrap();
                let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                [
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    g.get(&w)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                    g.get(&xw)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap(),
                ]
            })
        };
        let one = run(1);
        for threads in [2, 3, 8] {
            assert_eq!(one, run(threads), "{threads} threads");
        }
    }

    #[test]
    fn f32_gates_are_accurate_and_saturate() {
        let mut worst: f64 = 0.0;
        for k in -20_000..=20_000 {
            let x = k as f32 * 0.0043; // -86 .. 86
            let (e, want) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max((e - want).abs() / want);
        }
        assert!(worst < 3e-7, "exp relative error {worst}");
        for k in -2_000..=2_000 {
            let x = k as f32 * 0.01;
            assert!(
                (x.tanh_gate() as f64 - (x as f64).tanh()).abs() < 3e-7,
                "tanh({x})"
            );
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((Gate::sigmoid(x) as f64 - s).abs() < 3e-7, "sigmoid({x})");
        }
        for x in [
            -1e30f32,
            -200.0,
            200.0,
            1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            let (s, t) = (Gate::sigmoid(x), x.tanh_gate());
            assert!(
                (0.0..=1.0).contains(&s) && (-1.0..=1.0).contains(&t),
                "{x}: {s} {t}"
            );
        }
    }

    #[test]
    fn mismatched_weights_are_errors() {
        let xw = uniform(&[2, 3, 12], 1, -1.0, 1.0);
        let e = gru(
            &xw,
            &uniform(&[12, 3], 2, -1.0, 1.0),
            &uniform(&[12], 3, -1.0, 1.0),
        );
        assert!(e.unwrap_err().to_string().contains("weight_hh"));
        let e = lstm(
            &uniform(&[2, 3, 10], 1, -1.0, 1.0),
            &uniform(&[8, 2], 2, -1.0, 1.0),
        );
        assert!(e.unwrap_err().to_string().contains("4 x hidden"));
    }
}
