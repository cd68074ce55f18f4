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

/// Class-weighted mean cross-entropy of logits [B, C] against class ids [B], as PyTorch's
/// `cross_entropy(weight=w)`: `sum_i w[y_i] (-log softmax(logits_i)[y_i]) / sum_i w[y_i]`.
/// `weights` has one entry per class (C).
pub fn weighted_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: &[f32],
) -> candle_core::Result<Tensor> {
    let classes = logits.dim(1)?;
    if weights.len() != classes {
        candle_core::bail!(
            "class weights: {} weights for {classes} classes",
            weights.len()
        );
    }
    let logp = log_softmax(logits)?;
    let y = targets.to_dtype(DType::U32)?;
    let picked = logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
    let w = Tensor::from_slice(weights, classes, logits.device())?
        .to_dtype(logits.dtype())?
        .index_select(&y, 0)?;
    let total = w.sum_all()?;
    (picked * &w)?.sum_all()?.neg()?.broadcast_div(&total)
}

/// Mean cross-entropy of logits [B, T, V] against token ids [B, T] over the positions whose id
/// is not `ignore` (PyTorch's `ignore_index`): `-(1/K) sum_{(b,t): y != ignore} log
/// softmax(logits_bt)[y_bt]`, K the number of counted positions (0 gives a zero loss).
pub fn token_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    ignore: u32,
) -> candle_core::Result<Tensor> {
    let vocab = logits.dim(candle_core::D::Minus1)?;
    let logits = logits.reshape(((), vocab))?;
    let y = targets.flatten_all()?.to_dtype(DType::U32)?;
    let keep = y.ne(ignore)?;
    let safe = keep.where_cond(&y, &y.zeros_like()?)?;
    let logp = log_softmax(&logits)?;
    let picked = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
    let keep = keep.to_dtype(logits.dtype())?;
    let count = keep.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    (picked * keep)?.sum_all()?.neg()? / count.max(1.0)
}

/// The loss of a task (see `prunekit_data::Task::loss`), one value per batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    /// [`cross_entropy`], or [`weighted_cross_entropy`] with per-class weights: logits [B, C]
    /// against class ids [B].
    CrossEntropy {
        /// One weight per class, or `None` for the plain mean.
        class_weights: Option<Vec<f32>>,
    },
    /// [`mse`]: outputs [B, D] against real targets [B, D] (a target [B] is read as [B, 1]).
    Mse,
    /// [`token_cross_entropy`]: logits [B, T, V] against ids [B, T], `ignore` left out.
    TokenCrossEntropy {
        /// The id of positions that do not count.
        ignore: u32,
    },
}

impl Loss {
    /// The loss of `output` against `target` (a scalar tensor, differentiable in `output`).
    ///
    /// # Errors
    /// When the shapes do not fit the loss (named in the message), or a candle error.
    pub fn compute(&self, output: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Loss::CrossEntropy { class_weights } => {
                let (od, td) = (output.dims(), target.dims());
                if od.len() != 2 || td.len() != 1 || od[0] != td[0] {
                    candle_core::bail!(
                        "cross-entropy needs logits [batch, classes] and class ids [batch]; the \
                         model outputs {od:?} for targets {td:?}"
                    );
                }
                match class_weights {
                    Some(w) => weighted_cross_entropy(output, target, w),
                    None => cross_entropy(output, target),
                }
            }
            Loss::Mse => {
                let target = target.to_dtype(output.dtype())?;
                let target = if target.rank() == 1 && output.rank() == 2 {
                    target.unsqueeze(1)?
                } else {
                    target
                };
                if output.dims() != target.dims() {
                    candle_core::bail!(
                        "mean squared error needs outputs and targets of one shape; the model \
                         outputs {:?} for targets {:?}",
                        output.dims(),
                        target.dims()
                    );
                }
                mse(output, &target)
            }
            Loss::TokenCrossEntropy { ignore } => {
                let (od, td) = (output.dims(), target.dims());
                if od.len() < 2 || td != &od[..od.len() - 1] {
                    candle_core::bail!(
                        "token cross-entropy needs logits [batch, positions, vocabulary] and ids \
                         [batch, positions]; the model outputs {od:?} for targets {td:?}"
                    );
                }
                token_cross_entropy(output, target, *ignore)
            }
        }
    }
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
    fn weighted_and_token_cross_entropy_match_hand_computation() {
        let d = &Device::Cpu;
        let logits = Tensor::new(&[[0.0f64, 1.0], [2.0, 0.0]], d).unwrap();
        let y = Tensor::new(&[1u32, 1], d).unwrap();
        let nll = |a: f64, b: f64, k: usize| {
            let z = (a.exp() + b.exp()).ln();
            z - [a, b][k]
        };
        // all weights equal: the plain mean
        let w = weighted_cross_entropy(&logits, &y, &[1.0, 3.0]).unwrap();
        let want = (nll(0.0, 1.0, 1) * 3.0 + nll(2.0, 0.0, 1) * 3.0) / 6.0;
        assert!((w.to_scalar::<f64>().unwrap() - want).abs() < 1e-12);
        let y2 = Tensor::new(&[0u32, 1], d).unwrap();
        let w = weighted_cross_entropy(&logits, &y2, &[1.0, 3.0]).unwrap();
        let want = (nll(0.0, 1.0, 0) + 3.0 * nll(2.0, 0.0, 1)) / 4.0;
        assert!((w.to_scalar::<f64>().unwrap() - want).abs() < 1e-12);
        // token loss: the ignored position does not count
        let lt = logits.unsqueeze(0).unwrap();
        let yt = Tensor::new(&[[0u32, u32::MAX]], d).unwrap();
        let l = token_cross_entropy(&lt, &yt, u32::MAX).unwrap();
        assert!((l.to_scalar::<f64>().unwrap() - nll(0.0, 1.0, 0)).abs() < 1e-12);
        let shape = Loss::CrossEntropy {
            class_weights: None,
        }
        .compute(&lt, &yt)
        .unwrap_err();
        assert!(shape.to_string().contains("[batch, classes]"), "{shape}");
    }

    #[test]
    fn mse_is_mean_of_squares() {
        let a = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.0f32, 4.0], &Device::Cpu).unwrap();
        assert_eq!(mse(&a, &b).unwrap().to_scalar::<f32>().unwrap(), 2.5);
    }
}
