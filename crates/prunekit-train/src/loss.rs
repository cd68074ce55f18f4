//! Losses and the accuracy metric, composed from differentiable candle ops.

use candle_core::{DType, Tensor, D};
use prunekit_graph::ops::activation::log_softmax;

/// Mean cross-entropy of logits [B, C] against class ids [B] (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let logp = log_softmax(logits)?;
    let picked = logp.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// Mean squared error.
pub fn mse(pred: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    (pred - target)?.sqr()?.mean_all()
}

/// Number of rows whose arg-max equals the target.
pub fn accuracy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    let hits = pred
        .eq(&targets.to_dtype(DType::U32)?)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(hits as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_hand_computation() {
        let logits = Tensor::new(&[[1.0f32, 2.0, 3.0], [0.5, 0.5, 0.5]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        let l = cross_entropy(&logits, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let e: f32 = [1.0f32, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        let want = (-(3.0f32.exp() / e).ln() + 3.0f32.ln()) / 2.0;
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
        assert_eq!(accuracy(&logits, &y).unwrap(), 2);
    }

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
