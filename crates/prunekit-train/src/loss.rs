//! The losses (defined in `prunekit_graph::loss`, re-exported here) and the accuracy metric.

use candle_core::{DType, Tensor, D};

pub use prunekit_graph::loss::{cross_entropy, mse};

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
}
