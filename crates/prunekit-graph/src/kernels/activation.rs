//! ReLU on the CPU with a one-pass backward (candle's takes five passes: zeros, compare, convert,
//! multiply, add).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::Elem;

/// Elements per parallel task; smaller tensors run on one thread (rayon's overhead would dominate).
const CHUNK: usize = 1 << 16;

/// Elementwise map on one thread: memory-bound, and a collect without zero-filling vectorises.
fn map<T: Elem>(x: &[T], f: impl Fn(T) -> T) -> Vec<T> {
    x.iter().map(|&v| f(v)).collect()
}

fn zip<T: Elem>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    if a.len() <= CHUNK {
        return a.iter().zip(b).map(|(&p, &q)| f(p, q)).collect();
    }
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (x, y))| {
            o.iter_mut()
                .zip(x.iter().zip(y))
                .for_each(|(o, (&p, &q))| *o = f(p, q))
        });
    out
}

struct Relu;
struct ReluBackward;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "prunekit-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = super::float_kernel!(self.name(); x = s, l => map(x, |v| v.max(num_traits::Zero::zero())));
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, res: &Tensor, gy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&gy.contiguous()?, &ReluBackward)?,
        ))
    }
}

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        "prunekit-relu-backward"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = super::float_kernel!(self.name(); y = s1, l1; g = s2, l2 => {
            zip(y, g, |y, g| if y > num_traits::Zero::zero() { g } else { num_traits::Zero::zero() })
        });
        Ok((out, l1.shape().clone()))
    }
}

/// The gradient through a ReLU given its output: gy where y > 0, else 0 (one pass).
pub fn relu_grad(y: &Tensor, gy: &Tensor) -> candle_core::Result<Tensor> {
    y.contiguous()?
        .apply_op2_no_bwd(&gy.contiguous()?, &ReluBackward)
}

/// max(x, 0): our kernel on CPU f32/f64, candle's relu elsewhere.
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if super::supported(x) {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_relu_and_its_gradient() {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 50_000), &Device::Cpu).unwrap())
            .unwrap();
        let r = Tensor::randn(0f32, 1.0, (3, 50_000), &Device::Cpu).unwrap();
        let (a, b) = (relu(&x).unwrap(), x.relu().unwrap());
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let ga = (&a * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (ga.get(&x).unwrap(), gb.get(&x).unwrap());
        assert_eq!(
            ga.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            gb.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
