//! Losses composed from differentiable candle ops, shared by training (`prunekit_train`
//! re-exports them) and the gradient criteria of `prunekit_prune` (which must not depend on the
//! training crate).

use candle_core::{DType, Tensor};

use crate::ops::activation::log_softmax;

/// Mean cross-entropy of logits [B, C] against class ids [B] (any integer or float dtype holding
/// ids in 0..C): -(1/B) sum_i log softmax(logits_i)[y_i]. Differentiable in `logits`
/// (log-softmax is a composition of candle ops, not the fused kernel that drops gradients).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let logp = log_softmax(logits)?;
    let picked = logp.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// Mean squared error over every element: mean((pred - target)^2), shapes equal.
pub fn mse(pred: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    (pred - target)?.sqr()?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_gradient_is_softmax_minus_onehot() {
        let v = candle_core::Var::new(&[[0.2f64, -1.0, 0.7]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        let g = cross_entropy(v.as_tensor(), &y)
            .unwrap()
            .backward()
            .unwrap();
        let grad = g
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let z: f64 = [0.2f64, -1.0, 0.7].iter().map(|x| x.exp()).sum();
        let want = [
            0.2f64.exp() / z,
            (-1.0f64).exp() / z - 1.0,
            0.7f64.exp() / z,
        ];
        for (a, b) in grad.iter().zip(want) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn mse_is_mean_of_squares() {
        let a = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.0f32, 4.0], &Device::Cpu).unwrap();
        assert_eq!(mse(&a, &b).unwrap().to_scalar::<f32>().unwrap(), 2.5);
    }
}
