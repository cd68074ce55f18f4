//! The losses (defined in `prunekit_graph::loss`, re-exported here) and the accuracy metric.

use candle_core::{DType, Tensor, D};

pub use prunekit_graph::loss::{cross_entropy, mse};

/// Number of rows of logits [B, C] whose target class (ids [B]) scores strictly above every other
/// class. Ties count against the target (the rule of `prunekit_measure::metrics::top_k_accuracy`
/// at k = 1): a model whose logits are constant scores 0, not the share of whichever class an
/// arg-max would pick first. A NaN logit of the target, or of a competitor, is a miss.
pub fn accuracy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<usize> {
    let logits = logits.detach();
    let classes = logits.dim(D::Minus1)?;
    let picked = logits.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    // classes scoring strictly below the target: every other one for a hit (false for NaN)
    let below = logits
        .broadcast_lt(&picked)?
        .to_dtype(DType::F32)?
        .sum(D::Minus1)?;
    let finite = picked.eq(&picked)?.squeeze(1)?.to_dtype(DType::F32)?;
    let hits = below
        .eq((classes - 1) as f64)?
        .to_dtype(DType::F32)?
        .mul(&finite)?
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
        // the second row is a three-way tie: not a hit for class 0 (an arg-max would say it is)
        assert_eq!(accuracy(&logits, &y).unwrap(), 1);
    }

    #[test]
    fn ties_count_against_the_target() {
        let dev = Device::Cpu;
        // constant logits: no class beats the others, so no row is a hit (an arg-max would have
        // counted every row of class 0)
        let logits = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
        let y = Tensor::new(&[0u32, 0, 1, 2], &dev).unwrap();
        assert_eq!(accuracy(&logits, &y).unwrap(), 0);
        // a tie for the maximum is a miss for both tied classes; a clear maximum is a hit
        let logits = Tensor::new(
            &[
                [2.0f32, 2.0, 0.0],
                [2.0, 2.0, 0.0],
                [0.0, 1.0, 3.0],
                [f32::NAN, 0.0, 0.0],
            ],
            &dev,
        )
        .unwrap();
        let y = Tensor::new(&[0u32, 1, 2, 0], &dev).unwrap();
        assert_eq!(accuracy(&logits, &y).unwrap(), 1);
        let nan_rival = Tensor::new(&[[1.0f64, f64::NAN]], &dev).unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        assert_eq!(accuracy(&nan_rival, &y).unwrap(), 0);
    }
}
