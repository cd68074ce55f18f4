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

/// Focal loss's class balance alpha and focusing gamma (Lin et al. 2017, "Focal Loss for Dense
/// Object Detection", eq. 5 and section 5.1: alpha 0.25, gamma 2).
pub const FOCAL_ALPHA: f64 = 0.25;
/// See [`FOCAL_ALPHA`].
pub const FOCAL_GAMMA: f64 = 2.0;

/// `ln(1 + e^z)`, stable for any `z`: `max(z, 0) + ln(1 + e^-|z|)`; differentiable.
pub fn softplus(z: &Tensor) -> candle_core::Result<Tensor> {
    z.relu()? + z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?
}

/// The logistic sigmoid `1 / (1 + e^-z)` as `exp(-softplus(-z))`: no overflow and a finite
/// gradient for any `z`.
pub fn stable_sigmoid(z: &Tensor) -> candle_core::Result<Tensor> {
    softplus(&z.neg()?)?.neg()?.exp()
}

/// Where each object of a box target falls on a detector's output grid, and what the cell must
/// predict there (see [`detection_loss`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DetectionAssignment {
    /// Flat index `b * H * W + y * W + x` of each object's centre cell.
    pub cells: Vec<u32>,
    /// `[dx, dy, ln(w / stride), ln(h / stride)]` per object: the centre's offset inside its
    /// cell in [0, 1) and the box size in strides, in logs.
    pub boxes: Vec<[f32; 4]>,
    /// The class id per object.
    pub classes: Vec<u32>,
}

/// Assigns the objects of `targets` (`[B, M, 5]` rows `[class, x1, y1, x2, y2]` in input pixels,
/// class < 0 for none) to an output grid of `grid = (H, W)` cells of `stride` pixels: each object
/// to the cell holding its centre (CenterNet's rule; an object whose cell is taken by an earlier
/// one is left out, as two centres in one cell cannot both be predicted). Widths and heights are
/// floored at one pixel.
///
/// # Errors
/// A target not `[B, M, 5]`, a stride of 0.
pub fn assign_objects(
    targets: &Tensor,
    grid: (usize, usize),
    stride: usize,
) -> candle_core::Result<DetectionAssignment> {
    let (batch, rows, width) = targets.dims3()?;
    if width != 5 || stride == 0 {
        candle_core::bail!(
            "detection targets must be [batch, objects, 5] with a positive stride; got {:?}, \
             stride {stride}",
            targets.dims()
        );
    }
    let (gh, gw) = grid;
    let v = targets
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let s = stride as f32;
    let mut out = DetectionAssignment::default();
    let mut taken = std::collections::HashSet::new();
    for b in 0..batch {
        for r in v[b * rows * 5..(b + 1) * rows * 5].chunks_exact(5) {
            if r[0] < 0.0 || gh == 0 || gw == 0 {
                continue;
            }
            let (cx, cy) = ((r[1] + r[3]) / (2.0 * s), (r[2] + r[4]) / (2.0 * s));
            let gx = (cx.floor().max(0.0) as usize).min(gw - 1);
            let gy = (cy.floor().max(0.0) as usize).min(gh - 1);
            let cell = (b * gh * gw + gy * gw + gx) as u32;
            if !taken.insert(cell) {
                continue;
            }
            out.cells.push(cell);
            out.boxes.push([
                (cx - gx as f32).clamp(0.0, 1.0),
                (cy - gy as f32).clamp(0.0, 1.0),
                ((r[3] - r[1]).max(1.0) / s).ln(),
                ((r[4] - r[2]).max(1.0) / s).ln(),
            ]);
            out.classes.push(r[0] as u32);
        }
    }
    Ok(out)
}

/// The loss of a single-stage anchor-free detector's output `[B, 5 + C, H, W]` against box
/// targets `[B, M, 5]` (see `prunekit_data::TaskKind::Detection` for the channel layout):
///
/// `L = (1/P) [ sum_cells FL(obj) + sum_objects ( |sigmoid(d) - d*|_1 + |s - s*|_1 + CE(cls) ) ]`
///
/// with P the number of assigned objects (at least 1), FL the focal loss of the objectness
/// logit against 1 at the objects' centre cells and 0 elsewhere (Lin et al. 2017, eq. 5, alpha
/// [`FOCAL_ALPHA`], gamma [`FOCAL_GAMMA`], normalised by the positives as in RetinaNet and FCOS),
/// d the centre-offset logits, s the log-size outputs, and CE the cross-entropy of the class
/// logits, all at each object's centre cell ([`assign_objects`]). Differentiable in `output`.
///
/// # Errors
/// An output not 4-D with more than 5 channels, targets not `[B, M, 5]` of the same batch, a
/// class id not below C.
pub fn detection_loss(
    output: &Tensor,
    targets: &Tensor,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let od = output.dims();
    if od.len() != 4 || od[1] <= 5 || targets.rank() != 3 || targets.dim(0)? != od[0] {
        candle_core::bail!(
            "the detection loss needs outputs [batch, 5 + classes, height, width] and targets \
             [batch, objects, 5]; the model outputs {:?} for targets {:?}",
            output.dims(),
            targets.dims()
        );
    }
    let (batch, ch, gh, gw) = output.dims4()?;
    let a = assign_objects(targets, (gh, gw), stride)?;
    if let Some(c) = a.classes.iter().find(|&&c| c as usize >= ch - 5) {
        candle_core::bail!(
            "detection: class {c} is not one of the model's {} classes",
            ch - 5
        );
    }
    let dev = output.device();
    let dt = output.dtype();
    let cells = batch * gh * gw;
    // [B*H*W, 5 + C], one row per cell
    let flat = output.permute((0, 2, 3, 1))?.reshape((cells, ch))?;
    let z = flat.narrow(1, 0, 1)?.squeeze(1)?;
    let mut t = vec![0f32; cells];
    for &c in &a.cells {
        t[c as usize] = 1.0;
    }
    let t = Tensor::from_vec(t, cells, dev)?.to_dtype(dt)?;
    let one_minus_t = t.affine(-1.0, 1.0)?;
    // focal loss from softplus: ce(t=1) = sp(-z), ce(t=0) = sp(z); (1 - p_t)^g = e^{-g sp(z)} for
    // t = 1 and e^{-g sp(-z)} for t = 0
    let (sp, spn) = (softplus(&z)?, softplus(&z.neg()?)?);
    let pos = ((spn.clone() * (sp.clone() * -FOCAL_GAMMA)?.exp()?)? * FOCAL_ALPHA)?;
    let neg = ((sp * (spn * -FOCAL_GAMMA)?.exp()?)? * (1.0 - FOCAL_ALPHA))?;
    let focal = ((pos * &t)? + (neg * one_minus_t)?)?.sum_all()?;
    let p = a.cells.len();
    let norm = p.max(1) as f64;
    if p == 0 {
        return focal / norm;
    }
    let idx = Tensor::from_vec(a.cells.clone(), p, dev)?;
    let at = flat.index_select(&idx, 0)?;
    let want: Vec<f32> = a.boxes.iter().flatten().copied().collect();
    let want = Tensor::from_vec(want, (p, 4), dev)?.to_dtype(dt)?;
    let offsets = stable_sigmoid(&at.narrow(1, 1, 2)?)?;
    let pred = Tensor::cat(&[offsets, at.narrow(1, 3, 2)?], 1)?;
    let l1 = (pred - want)?.abs()?.sum_all()?;
    let cls = Tensor::from_vec(a.classes, p, dev)?;
    let ce = (cross_entropy(&at.narrow(1, 5, ch - 5)?, &cls)? * p as f64)?;
    ((focal + l1)? + ce)? / norm
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
    /// [`detection_loss`]: outputs `[B, 5 + C, H, W]` against boxes `[B, M, 5]`.
    Detection {
        /// Input pixels per output cell.
        stride: usize,
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
            Loss::Detection { stride } => detection_loss(output, target, *stride),
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

    /// Two images, a 2x3 grid of stride 4, 2 classes: one object in image 0, two in image 1
    /// (the second sharing the first's cell, so left out), one padding row.
    fn detection_case() -> (Vec<f64>, Tensor) {
        let d = &Device::Cpu;
        let targets = Tensor::new(
            &[
                [[1.0f64, 4.0, 0.0, 12.0, 6.0], [-1.0, 0.0, 0.0, 0.0, 0.0]],
                [[0.0, 0.0, 4.0, 2.0, 8.0], [1.0, 0.0, 5.0, 1.0, 7.0]],
            ],
            d,
        )
        .unwrap();
        let out: Vec<f64> = (0..2 * 7 * 2 * 3)
            .map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0)
            .collect();
        (out, targets)
    }

    #[test]
    fn detection_assignment_by_hand() {
        let (_, targets) = detection_case();
        let a = assign_objects(&targets, (2, 3), 4).unwrap();
        // image 0: centre (8, 3) -> cell (x 2, y 0), offset (0, 0.75), size 8x6 px = 2 x 1.5 strides
        // image 1: centre (1, 6) -> cell (x 0, y 1) = 6 + 3; the second object's centre is there too
        assert_eq!(a.cells, vec![2, 9]);
        assert_eq!(a.classes, vec![1, 0]);
        let want = [
            [0.0, 0.75, 2f32.ln(), 1.5f32.ln()],
            [0.25, 0.5, 0.5f32.ln(), 1.0f32.ln()],
        ];
        for (got, want) in a.boxes.iter().zip(want) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{got:?}");
            }
        }
        assert!(assign_objects(&targets, (2, 3), 0).is_err());
    }

    #[test]
    fn detection_loss_gradient_matches_finite_differences() {
        let (out, targets) = detection_case();
        let d = &Device::Cpu;
        let f = |v: &[f64]| {
            let t = Tensor::from_slice(v, (2, 7, 2, 3), d).unwrap();
            detection_loss(&t, &targets, 4)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let var =
            candle_core::Var::from_tensor(&Tensor::from_slice(&out, (2, 7, 2, 3), d).unwrap())
                .unwrap();
        let loss = detection_loss(var.as_tensor(), &targets, 4).unwrap();
        assert!(loss.to_scalar::<f64>().unwrap().is_finite());
        let g = loss.backward().unwrap();
        let grad = g
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let h = 1e-6;
        for i in 0..out.len() {
            let (mut a, mut b) = (out.clone(), out.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (f(&a) - f(&b)) / (2.0 * h);
            assert!(
                (fd - grad[i]).abs() < 1e-6,
                "element {i}: {fd} vs {}",
                grad[i]
            );
        }
        // the focal term by hand for one negative cell: alpha' p^2 ln(1 / (1 - p))
        let z = 3.0f64;
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let p = 1.0 / (1.0 + (-z).exp());
        let focal = (1.0 - FOCAL_ALPHA) * p * p * sp(z);
        let one = Tensor::new(&[z], d).unwrap();
        let want = ((sp(z) * (-FOCAL_GAMMA * sp(-z)).exp()) * (1.0 - FOCAL_ALPHA) - focal).abs();
        assert!(want < 1e-12);
        let s = stable_sigmoid(&Tensor::new(&[-1000.0f64, 0.0, 1000.0], d).unwrap())
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert_eq!(s, vec![0.0, 0.5, 1.0]);
        assert!((softplus(&one).unwrap().to_vec1::<f64>().unwrap()[0] - sp(z)).abs() < 1e-12);
        // a wrong shape is named
        let bad = Loss::Detection { stride: 4 }
            .compute(&Tensor::zeros((2, 3), DType::F64, d).unwrap(), &targets)
            .unwrap_err();
        assert!(bad.to_string().contains("5 + classes"), "{bad}");
    }
}
