//! Per-channel elementwise kernels over x [N, C, S...]: the affine map y = x * scale[c] + shift[c]
//! (eval-mode batch norm, conv bias) and per-channel sums (their backward). One pass each, planes in
//! parallel, where candle needs a broadcast op per term and a strided reduction per gradient.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::Elem;

/// (channels, plane size) of an [N, C, S...] shape.
fn planes(shape: &Shape) -> candle_core::Result<(usize, usize)> {
    let d = shape.dims();
    if d.len() < 2 {
        candle_core::bail!("channel kernel: expects [batch, channels, ...], got {d:?}");
    }
    Ok((d[1], d[2..].iter().product()))
}

/// Below this many elements the work runs on one thread.
const PAR_MIN: usize = 1 << 15;

fn for_planes<T: Elem>(out: &mut [T], s: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let s = s.max(1);
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(s).enumerate().for_each(|(p, o)| f(p, o));
    } else {
        out.chunks_mut(s).enumerate().for_each(|(p, o)| f(p, o));
    }
}

/// Sum over samples and positions of f(plane slice a, plane slice b) per channel.
fn channel_reduce<T: Elem>(
    a: &[T],
    b: Option<&[T]>,
    c: usize,
    s: usize,
    f: impl Fn(T, T) -> T + Sync,
) -> Vec<T> {
    let n = a.len() / (c * s).max(1);
    let per_channel = |ch: usize| {
        let mut acc = T::zero();
        for i in 0..n {
            let base = (i * c + ch) * s;
            match b {
                Some(b) => {
                    for j in base..base + s {
                        acc = acc + f(a[j], b[j]);
                    }
                }
                None => {
                    for &v in &a[base..base + s] {
                        acc = acc + f(v, T::one());
                    }
                }
            }
        }
        acc
    };
    if a.len() >= PAR_MIN {
        (0..c).into_par_iter().map(per_channel).collect()
    } else {
        (0..c).map(per_channel).collect()
    }
}

struct Affine;
struct Bias;
struct AffineInputGrad;
struct ChannelDot;
struct ChannelSum;

fn affine<T: Elem>(x: &[T], scale: &[T], shift: &[T], c: usize, s: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    for_planes(&mut out, s, |p, o| {
        let (a, b) = (scale[p % c], shift[p % c]);
        o.iter_mut()
            .zip(&x[p * s..(p + 1) * s])
            .for_each(|(o, &v)| *o = v * a + b);
    });
    out
}

fn scale_planes<T: Elem>(g: &[T], scale: &[T], c: usize, s: usize) -> Vec<T> {
    let mut out = vec![T::zero(); g.len()];
    for_planes(&mut out, s, |p, o| {
        let a = scale[p % c];
        o.iter_mut()
            .zip(&g[p * s..(p + 1) * s])
            .for_each(|(o, &v)| *o = v * a);
    });
    out
}

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        "prunekit-channel-affine"
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
        let (c, s) = planes(l1.shape())?;
        let out = super::float_kernel!(self.name(); x = s1, l1; a = s2, l2; b = s3, l3 => affine(x, a, b, c, s));
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _shift: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let dx = if x.track_op() {
            Some(gy.apply_op2_no_bwd(scale, &AffineInputGrad)?)
        } else {
            None
        };
        let dscale = x.apply_op2_no_bwd(&gy, &ChannelDot)?;
        let dshift = gy.apply_op1_no_bwd(&ChannelSum)?;
        Ok((dx, Some(dscale), Some(dshift)))
    }
}

fn add_bias<T: Elem>(x: &[T], b: &[T], c: usize, s: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    for_planes(&mut out, s, |p, o| {
        let v0 = b[p % c];
        o.iter_mut()
            .zip(&x[p * s..(p + 1) * s])
            .for_each(|(o, &v)| *o = v + v0);
    });
    out
}

impl CustomOp2 for Bias {
    fn name(&self) -> &'static str {
        "prunekit-channel-bias"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (c, s) = planes(l1.shape())?;
        let out = super::float_kernel!(self.name(); x = s1, l1; b = s2, l2 => add_bias(x, b, c, s));
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            Some(gy.clone()),
            Some(gy.contiguous()?.apply_op1_no_bwd(&ChannelSum)?),
        ))
    }
}

impl CustomOp2 for AffineInputGrad {
    fn name(&self) -> &'static str {
        "prunekit-channel-scale"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (c, s) = planes(l1.shape())?;
        let out =
            super::float_kernel!(self.name(); g = s1, l1; a = s2, l2 => scale_planes(g, a, c, s));
        Ok((out, l1.shape().clone()))
    }
}

impl CustomOp2 for ChannelDot {
    fn name(&self) -> &'static str {
        "prunekit-channel-dot"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (c, s) = planes(l1.shape())?;
        let out = super::float_kernel!(self.name(); x = s1, l1; g = s2, l2 => channel_reduce(x, Some(g), c, s, |p, q| p * q));
        Ok((out, Shape::from(c)))
    }
}

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "prunekit-channel-sum"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (c, s) = planes(l1.shape())?;
        let out = super::float_kernel!(self.name(); g = s1, l1 => channel_reduce(g, None, c, s, |p, _| p));
        Ok((out, Shape::from(c)))
    }
}

/// Per-channel sum of x [N, C, S...] over samples and positions: [C]. Our kernel on CPU f32/f64.
pub fn channel_sum(x: &Tensor) -> candle_core::Result<Tensor> {
    if super::supported(x) {
        x.contiguous()?.apply_op1_no_bwd(&ChannelSum)
    } else {
        let dims: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
        x.sum(dims)
    }
}

/// y = x + bias[c] for x [N, C, S...] and bias [C]; differentiable in both.
pub fn channel_bias(x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if super::supported(x) && x.dtype() == bias.dtype() {
        return x.contiguous()?.apply_op2(&bias.contiguous()?, Bias);
    }
    let mut bshape = vec![1usize; x.rank()];
    bshape[1] = x.dim(1)?;
    x.broadcast_add(&bias.reshape(bshape)?)
}

/// y = x * scale[c] + shift[c] for x [N, C, S...] and scale, shift [C]; differentiable in all three.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> candle_core::Result<Tensor> {
    if super::supported(x) && x.dtype() == scale.dtype() && x.dtype() == shift.dtype() {
        return x
            .contiguous()?
            .apply_op3(&scale.contiguous()?, &shift.contiguous()?, Affine);
    }
    let mut bshape = vec![1usize; x.rank()];
    bshape[1] = x.dim(1)?;
    x.broadcast_mul(&scale.reshape(bshape.as_slice())?)?
        .broadcast_add(&shift.reshape(bshape.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn affine_matches_broadcast_ops_with_gradients() {
        for shape in [vec![3usize, 4, 5, 6], vec![2, 3], vec![64, 8, 16, 16]] {
            let c = shape[1];
            let x = Var::from_tensor(
                &Tensor::randn(0f64, 1.0, shape.as_slice(), &Device::Cpu).unwrap(),
            )
            .unwrap();
            let a = Var::from_tensor(&Tensor::randn(0f64, 1.0, c, &Device::Cpu).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, c, &Device::Cpu).unwrap()).unwrap();
            let ours = channel_affine(&x, &a, &b).unwrap();
            let mut bshape = vec![1usize; shape.len()];
            bshape[1] = c;
            let reference = x
                .broadcast_mul(&a.reshape(bshape.as_slice()).unwrap())
                .unwrap()
                .broadcast_add(&b.reshape(bshape.as_slice()).unwrap())
                .unwrap();
            let r = Tensor::randn(0f64, 1.0, shape.as_slice(), &Device::Cpu).unwrap();
            let diff = crate::kernels::test_util::max_abs_diff;
            assert!(diff(&ours, &reference) < 1e-12);
            let g1 = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&reference * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [x.as_tensor(), a.as_tensor(), b.as_tensor()] {
                assert!(diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-10);
            }
            let ours = channel_bias(&x, &b).unwrap();
            let reference = x
                .broadcast_add(&b.reshape(bshape.as_slice()).unwrap())
                .unwrap();
            assert!(diff(&ours, &reference) < 1e-12);
            let g1 = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&reference * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [x.as_tensor(), b.as_tensor()] {
                assert!(diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-10);
            }
        }
    }
}
