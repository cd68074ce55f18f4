//! Batch normalisation on the CPU, fused: training forward is one pass for the per-channel statistics
//! and one to normalise; its backward is one pass for the per-channel sums and one for the input
//! gradient, producing the input, scale and shift gradients together. Layout: x [N, C, S] (S = the
//! product of the spatial axes), channels in parallel for the statistics, (sample, channel) planes in
//! parallel for the elementwise passes.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::Elem;

#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    s: usize,
}

impl Dims {
    fn of(shape: &Shape) -> candle_core::Result<Self> {
        let d = shape.dims();
        if d.len() < 2 {
            candle_core::bail!("batch norm expects [batch, channels, ...], got {d:?}");
        }
        Ok(Self {
            n: d[0],
            c: d[1],
            s: d[2..].iter().product(),
        })
    }
    /// Per-channel sums over samples of the pair f(plane range, channel): each plane is summed in
    /// the element type (vectorisable), the planes are accumulated in f64.
    fn channel_sums(
        &self,
        f: impl Fn(std::ops::Range<usize>, usize) -> (f64, f64) + Sync,
    ) -> Vec<(f64, f64)> {
        (0..self.c)
            .into_par_iter()
            .map(|ch| {
                let (mut a, mut b) = (0f64, 0f64);
                for n in 0..self.n {
                    let base = (n * self.c + ch) * self.s;
                    let (p, q) = f(base..base + self.s, ch);
                    a += p;
                    b += q;
                }
                (a, b)
            })
            .collect()
    }
}

fn f64_of<T: Elem>(v: T) -> f64 {
    v.to_f64().unwrap_or(f64::NAN)
}

/// Batch statistics of the last training forward: per-channel mean and biased variance.
pub type Stats = Arc<Mutex<Option<(Vec<f64>, Vec<f64>)>>>;

struct TrainForward {
    eps: f64,
    /// apply max(0, .) to the output (a following ReLU, fused)
    relu: bool,
    stats: Stats,
}

fn train_forward<T: Elem>(
    d: Dims,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    eps: f64,
    relu: bool,
) -> (Vec<T>, Vec<f64>, Vec<f64>) {
    let m = (d.n * d.s) as f64;
    let sums = d.channel_sums(|r, _| (f64_of(x[r].iter().fold(T::zero(), |a, &v| a + v)), 0.0));
    let mean: Vec<f64> = sums.iter().map(|(s, _)| s / m).collect();
    // second pass for the variance: exact even when |mean| >> std
    let var: Vec<f64> = d
        .channel_sums(|r, ch| {
            let m = T::from(mean[ch]).unwrap_or_else(T::zero);
            (
                f64_of(x[r].iter().fold(T::zero(), |a, &v| a + (v - m) * (v - m))),
                0.0,
            )
        })
        .iter()
        .map(|(s, _)| s / m)
        .collect();
    let mut y = vec![T::zero(); x.len()];
    let scale: Vec<T> = (0..d.c)
        .map(|ch| gamma[ch] * T::from(1.0 / (var[ch] + eps).sqrt()).unwrap_or_else(T::zero))
        .collect();
    let shift: Vec<T> = (0..d.c)
        .map(|ch| beta[ch] - T::from(mean[ch]).unwrap_or_else(T::zero) * scale[ch])
        .collect();
    y.par_chunks_mut(d.s)
        .zip(x.par_chunks(d.s))
        .enumerate()
        .for_each(|(plane, (yo, xi))| {
            let ch = plane % d.c;
            let (a, b) = (scale[ch], shift[ch]);
            if relu {
                yo.iter_mut()
                    .zip(xi)
                    .for_each(|(o, &v)| *o = (v * a + b).max(T::zero()));
            } else {
                yo.iter_mut().zip(xi).for_each(|(o, &v)| *o = v * a + b);
            }
        });
    (y, mean, var)
}

impl CustomOp3 for TrainForward {
    fn name(&self) -> &'static str {
        "prunekit-batch-norm-train"
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
        let d = Dims::of(l1.shape())?;
        let stats;
        let out = super::float_kernel!(self.name(); x = s1, l1; g = s2, l2; b = s3, l3 => {
            let (y, m, v) = train_forward(d, x, g, b, self.eps, self.relu);
            stats = (m, v);
            y
        });
        let (mean, var) = stats;
        if let Ok(mut s) = self.stats.lock() {
            *s = Some((mean, var));
        }
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // with the ReLU fused, its gradient mask comes from the output
        let gy = if self.relu {
            super::activation::relu_grad(res, gy)?
        } else {
            gy.clone()
        };
        let (mean, var) = match self.stats.lock().ok().and_then(|s| s.clone()) {
            Some(s) => s,
            None => candle_core::bail!("{}: backward before forward", self.name()),
        };
        let c = gamma.dim(0)?;
        let packed = x.apply_op3_no_bwd(
            gamma,
            &gy.contiguous()?,
            &TrainBackward {
                eps: self.eps,
                mean,
                var,
            },
        )?;
        let numel = x.elem_count();
        let dx = packed.narrow(0, 0, numel)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, numel, c)?;
        let dbeta = packed.narrow(0, numel + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// (x, gamma, dy) -> [dx (flattened), dgamma, dbeta] in one tensor.
struct TrainBackward {
    eps: f64,
    mean: Vec<f64>,
    var: Vec<f64>,
}

impl TrainBackward {
    fn run<T: Elem>(&self, d: Dims, x: &[T], gamma: &[T], gy: &[T]) -> Vec<T> {
        let m = (d.n * d.s) as f64;
        let inv: Vec<f64> = self
            .var
            .iter()
            .map(|v| 1.0 / (v + self.eps).sqrt())
            .collect();
        let mean_t: Vec<T> = self
            .mean
            .iter()
            .map(|&v| T::from(v).unwrap_or_else(T::zero))
            .collect();
        let inv_t: Vec<T> = inv
            .iter()
            .map(|&v| T::from(v).unwrap_or_else(T::zero))
            .collect();
        let sums = d.channel_sums(|r, ch| {
            let (mu, iv) = (mean_t[ch], inv_t[ch]);
            let (sg, sgx) = gy[r.clone()]
                .iter()
                .zip(&x[r])
                .fold((T::zero(), T::zero()), |(a, b), (&g, &v)| {
                    (a + g, b + g * (v - mu) * iv)
                });
            (f64_of(sg), f64_of(sgx))
        });
        let mut out = vec![T::zero(); x.len() + 2 * d.c];
        let (dx, rest) = out.split_at_mut(x.len());
        dx.par_chunks_mut(d.s).enumerate().for_each(|(plane, o)| {
            let ch = plane % d.c;
            // dx = k * (m * g - sum(g) - xhat * sum(g * xhat)), k = gamma * inv / m, in the element type
            let (sg, sgx) = sums[ch];
            let k = gamma[ch].to_f64().unwrap_or(0.0) * inv[ch] / m;
            let t = |v: f64| T::from(v).unwrap_or_else(T::zero);
            let (km, c0, c1) = (t(k * m), t(k * sg), t(k * sgx));
            let (mu, iv) = (mean_t[ch], inv_t[ch]);
            let base = plane * d.s;
            let (xs, gs) = (&x[base..base + d.s], &gy[base..base + d.s]);
            for ((v, &xv), &g) in o.iter_mut().zip(xs).zip(gs) {
                *v = km * g - c0 - (xv - mu) * iv * c1;
            }
        });
        for ch in 0..d.c {
            rest[ch] = T::from(sums[ch].1).unwrap_or_else(T::zero);
            rest[d.c + ch] = T::from(sums[ch].0).unwrap_or_else(T::zero);
        }
        out
    }
}

impl CustomOp3 for TrainBackward {
    fn name(&self) -> &'static str {
        "prunekit-batch-norm-train-backward"
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
        let d = Dims::of(l1.shape())?;
        let out = super::float_kernel!(self.name(); x = s1, l1; g = s2, l2; dy = s3, l3 => self.run(d, x, g, dy));
        Ok((out, Shape::from(l1.shape().elem_count() + 2 * d.c)))
    }
}

/// Training-mode batch norm of x [N, C, ...] with scale `gamma` and shift `beta` [C]; returns the
/// output and the batch's per-channel mean and biased variance (for the running statistics).
pub fn train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> candle_core::Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let stats: Stats = Arc::new(Mutex::new(None));
    let y = x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        TrainForward {
            eps,
            relu,
            stats: stats.clone(),
        },
    )?;
    let taken = stats.lock().ok().and_then(|s| s.clone());
    match taken {
        Some((m, v)) => Ok((y, m, v)),
        None => candle_core::bail!("batch norm kernel: statistics missing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    use crate::kernels::test_util::uniform as rand;

    /// The composed reference: (x - mean) / sqrt(var + eps) * gamma + beta over (N, S).
    fn reference(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let c = g.dim(0).unwrap();
        let xt = x.transpose(0, 1).unwrap().flatten_from(1).unwrap();
        let mean = xt.mean_keepdim(1).unwrap();
        let xc = xt.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(1).unwrap();
        let y = xc
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap();
        let y = y
            .broadcast_mul(&g.reshape((c, 1)).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape((c, 1)).unwrap())
            .unwrap();
        let mut dims = x.dims().to_vec();
        dims.swap(0, 1);
        y.reshape(dims).unwrap().transpose(0, 1).unwrap()
    }

    #[test]
    fn fused_relu_equals_batch_norm_then_relu() {
        let x = Var::from_tensor(&rand(&[4, 3, 5, 5], 1, -2.0, 2.0)).unwrap();
        let g = Var::from_tensor(&rand(&[3], 2, 0.5, 1.5)).unwrap();
        let b = Var::from_tensor(&rand(&[3], 3, -1.0, 1.0)).unwrap();
        let (fused, _, _) = train(&x, &g, &b, 1e-5, true).unwrap();
        let (plain, _, _) = train(&x, &g, &b, 1e-5, false).unwrap();
        let plain = plain.relu().unwrap();
        let r = rand(&[4, 3, 5, 5], 4, -1.0, 1.0);
        let diff = crate::kernels::test_util::max_abs_diff;
        assert!(diff(&fused, &plain) < 1e-12);
        let g1 = (&fused * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&plain * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [x.as_tensor(), g.as_tensor(), b.as_tensor()] {
            assert!(diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-10);
        }
    }

    #[test]
    fn matches_the_composed_reference_with_gradients() {
        for (i, shape) in [
            vec![4, 3, 5, 7],
            vec![6, 5],
            vec![2, 4, 9],
            vec![3, 2, 1, 1],
        ]
        .into_iter()
        .enumerate()
        {
            let c = shape[1];
            let x = Var::from_tensor(&rand(&shape, i as u64, 2.0, 5.0)).unwrap();
            let g = Var::from_tensor(&rand(&[c], 10 + i as u64, 0.5, 1.5)).unwrap();
            let b = Var::from_tensor(&rand(&[c], 20 + i as u64, -1.0, 1.0)).unwrap();
            let (ours, mean, _) = train(&x, &g, &b, 1e-5, false).unwrap();
            let refy = reference(&x, &g, &b, 1e-5);
            let diff = crate::kernels::test_util::max_abs_diff;
            assert!(diff(&ours, &refy) < 1e-12, "case {i} forward");
            let want_mean = x
                .transpose(0, 1)
                .unwrap()
                .flatten_from(1)
                .unwrap()
                .mean(1)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            assert!(mean
                .iter()
                .zip(&want_mean)
                .all(|(a, b)| (a - b).abs() < 1e-12));
            let r = rand(&shape, 30 + i as u64, -1.0, 1.0);
            let g1 = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&refy * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [
                ("x", x.as_tensor()),
                ("gamma", g.as_tensor()),
                ("beta", b.as_tensor()),
            ] {
                assert!(
                    diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-10,
                    "case {i}: gradient of {name}"
                );
            }
        }
    }
}
