//! The in-memory dataset, train/test split and normalisation.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;

use crate::augment::Augment;
use crate::error::{DataError, Result};

/// An in-memory labelled dataset of f32 samples.
///
/// Sample `i` occupies `x[i * sample_len() .. (i + 1) * sample_len()]`
/// (row-major in `sample_shape`) and has label `y[i] < num_classes`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Name of the dataset, e.g. `"digits/train"`.
    pub name: String,
    /// Samples, concatenated, row-major.
    pub x: Vec<f32>,
    /// Class labels, one per sample.
    pub y: Vec<u32>,
    /// Shape of one sample, e.g. `[1, 28, 28]`.
    pub sample_shape: Vec<usize>,
    /// Number of classes; every label is below it.
    pub num_classes: usize,
}

impl Dataset {
    /// Builds a dataset, checking that `x` holds `y.len()` samples of
    /// `sample_shape` and that every label is below `num_classes`.
    pub fn new(
        name: impl Into<String>,
        x: Vec<f32>,
        y: Vec<u32>,
        sample_shape: Vec<usize>,
        num_classes: usize,
    ) -> Result<Self> {
        let name = name.into();
        let sample_len: usize = sample_shape.iter().product();
        let expected = sample_len.checked_mul(y.len());
        if expected != Some(x.len()) {
            return Err(DataError::Inconsistent {
                name,
                problem: format!(
                    "{} values for {} samples of shape {:?}",
                    x.len(),
                    y.len(),
                    sample_shape
                ),
            });
        }
        if let Some(&bad) = y.iter().find(|&&l| l as usize >= num_classes) {
            return Err(DataError::BadLabel {
                source_name: name,
                label: f64::from(bad),
                num_classes,
            });
        }
        Ok(Self {
            name,
            x,
            y,
            sample_shape,
            num_classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether the dataset has no samples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Number of values in one sample (the product of `sample_shape`).
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// The values of sample `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn sample(&self, i: usize) -> &[f32] {
        let n = self.sample_len();
        &self.x[i * n..(i + 1) * n]
    }

    /// A new dataset holding the samples at `idx`, in that order (repeats allowed).
    ///
    /// # Panics
    /// If an index is `>= self.len()`.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let n = self.sample_len();
        let mut x = Vec::with_capacity(idx.len() * n);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            x.extend_from_slice(self.sample(i));
            y.push(self.y[i]);
        }
        Dataset {
            name: self.name.clone(),
            x,
            y,
            sample_shape: self.sample_shape.clone(),
            num_classes: self.num_classes,
        }
    }

    fn check_indices(&self, idx: &[usize]) -> Result<()> {
        match idx.iter().find(|&&i| i >= self.len()) {
            Some(&index) => Err(DataError::IndexOutOfRange {
                name: self.name.clone(),
                index,
                len: self.len(),
            }),
            None => Ok(()),
        }
    }

    fn to_tensors(&self, x: Vec<f32>, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let mut shape = Vec::with_capacity(self.sample_shape.len() + 1);
        shape.push(idx.len());
        shape.extend_from_slice(&self.sample_shape);
        let y: Vec<u32> = idx.iter().map(|&i| self.y[i]).collect();
        let xt = Tensor::from_vec(x, shape, device)?;
        let yt = Tensor::from_vec(y, idx.len(), device)?;
        Ok((xt, yt))
    }

    /// The samples at `idx` as tensors: x `[n, ..sample_shape]` f32 and y `[n]` u32.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        self.check_indices(idx)?;
        let mut x = Vec::with_capacity(idx.len() * self.sample_len());
        for &i in idx {
            x.extend_from_slice(self.sample(i));
        }
        self.to_tensors(x, idx, device)
    }

    /// Like [`Dataset::batch`], applying `aug` to each sample (in `idx` order)
    /// with randomness drawn from `rng`.
    pub fn batch_augmented(
        &self,
        idx: &[usize],
        aug: &Augment,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        if aug.is_identity() {
            return self.batch(idx, device);
        }
        self.check_indices(idx)?;
        let n = self.sample_len();
        let mut x = Vec::with_capacity(idx.len() * n);
        for &i in idx {
            let start = x.len();
            x.extend_from_slice(self.sample(i));
            aug.apply(&mut x[start..start + n], &self.sample_shape, rng);
        }
        self.to_tensors(x, idx, device)
    }

    /// Number of samples of each class (length `num_classes`).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.num_classes];
        for &l in &self.y {
            let l = l as usize;
            if l >= counts.len() {
                counts.resize(l + 1, 0);
            }
            counts[l] += 1;
        }
        counts
    }

    /// Applies `x = (x - mean) / std` to every value in place.
    pub fn normalize(&mut self, norm: &Normalization) {
        norm.apply(&mut self.x);
    }
}

/// A train/test split of one dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// The training samples.
    pub train: Dataset,
    /// The held-out test samples.
    pub test: Dataset,
}

/// Per-channel-free normalisation: `x = (x - mean) / std`, with `mean` and
/// `std` computed on the train set and applied to both train and test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// Mean of the (raw) training values.
    pub mean: f32,
    /// Population standard deviation of the (raw) training values (1 if they are constant).
    pub std: f32,
}

impl Default for Normalization {
    /// The identity normalisation (mean 0, std 1).
    fn default() -> Self {
        Self {
            mean: 0.0,
            std: 1.0,
        }
    }
}

impl Normalization {
    /// Mean and population standard deviation of `values` (accumulated in f64).
    /// A constant or empty input gives std 1 so that applying it is safe.
    pub fn compute(values: &[f32]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| {
                let d = f64::from(v) - mean;
                d * d
            })
            .sum::<f64>()
            / n;
        Self::from_moments(mean, var)
    }

    pub(crate) fn from_moments(mean: f64, var: f64) -> Self {
        let std = var.max(0.0).sqrt();
        let std = if std.is_finite() && std > 1e-12 {
            std
        } else {
            1.0
        };
        Self {
            mean: mean as f32,
            std: std as f32,
        }
    }

    /// Applies `v = (v - mean) / std` to every value in place.
    pub fn apply(&self, values: &mut [f32]) {
        let inv = 1.0 / self.std;
        for v in values {
            *v = (*v - self.mean) * inv;
        }
    }

    /// Undoes [`Normalization::apply`] on a single value.
    pub fn invert(&self, value: f32) -> f32 {
        value * self.std + self.mean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn toy() -> Dataset {
        // 4 samples of shape [1, 2, 2]; sample i holds i*10 + 0..4.
        let x: Vec<f32> = (0..4)
            .flat_map(|i| (0..4).map(move |j| (i * 10 + j) as f32))
            .collect();
        Dataset::new("toy", x, vec![0, 1, 2, 1], vec![1, 2, 2], 3).expect("valid toy dataset")
    }

    #[test]
    fn basics_and_subset() {
        let d = toy();
        assert_eq!((d.len(), d.sample_len(), d.is_empty()), (4, 4, false));
        assert_eq!(d.class_counts(), vec![1, 2, 1]);
        let s = d.subset(&[3, 0, 3]);
        assert_eq!(s.y, vec![1, 0, 1]);
        assert_eq!(s.sample(0), &[30.0, 31.0, 32.0, 33.0]);
        assert_eq!(s.sample(1), &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(s.sample_shape, vec![1, 2, 2]);
    }

    #[test]
    fn new_validates() {
        assert!(matches!(
            Dataset::new("bad", vec![0.0; 5], vec![0, 0], vec![2], 1),
            Err(DataError::Inconsistent { .. })
        ));
        assert!(matches!(
            Dataset::new("bad", vec![0.0; 4], vec![0, 3], vec![2], 2),
            Err(DataError::BadLabel { .. })
        ));
    }

    #[test]
    fn batch_tensors() {
        let d = toy();
        let dev = Device::Cpu;
        let (x, y) = d.batch(&[2, 1], &dev).expect("batch");
        assert_eq!(x.dims(), &[2, 1, 2, 2]);
        assert_eq!(y.dims(), &[2]);
        assert_eq!(y.dtype(), candle_core::DType::U32);
        assert_eq!(y.to_vec1::<u32>().expect("y"), vec![2, 1]);
        let flat = x.flatten_all().expect("flat").to_vec1::<f32>().expect("x");
        assert_eq!(flat, vec![20.0, 21.0, 22.0, 23.0, 10.0, 11.0, 12.0, 13.0]);

        let err = d.batch(&[0, 4], &dev).expect_err("out of range");
        assert!(
            matches!(err, DataError::IndexOutOfRange { index: 4, .. }),
            "{err:?}"
        );

        let (x, y) = d.batch(&[], &dev).expect("empty batch");
        assert_eq!(x.dims(), &[0, 1, 2, 2]);
        assert_eq!(y.dims(), &[0]);
    }

    #[test]
    fn batch_augmented_identity_matches_batch() {
        let d = toy();
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(1);
        let (xa, ya) = d
            .batch_augmented(&[0, 3], &Augment::default(), &mut rng, &dev)
            .expect("batch");
        let (xb, yb) = d.batch(&[0, 3], &dev).expect("batch");
        let f = |t: Tensor| {
            t.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("vec")
        };
        assert_eq!(f(xa), f(xb));
        assert_eq!(
            ya.to_vec1::<u32>().expect("y"),
            yb.to_vec1::<u32>().expect("y")
        );

        // A flip-only augmentation permutes values within each sample.
        let aug = Augment {
            crop_padding: 0,
            hflip: true,
        };
        let (xa, _) = d
            .batch_augmented(&[1], &aug, &mut rng, &dev)
            .expect("batch");
        let mut v = f(xa);
        v.sort_by(f32::total_cmp);
        assert_eq!(v, vec![10.0, 11.0, 12.0, 13.0]);
    }

    #[test]
    fn normalization() {
        let n = Normalization::compute(&[1.0, 3.0]);
        assert_eq!((n.mean, n.std), (2.0, 1.0));
        let mut v = vec![1.0, 3.0, 5.0];
        n.apply(&mut v);
        assert_eq!(v, vec![-1.0, 1.0, 3.0]);
        assert_eq!(n.invert(3.0), 5.0);
        let c = Normalization::compute(&[4.0, 4.0]);
        assert_eq!((c.mean, c.std), (4.0, 1.0));
        assert_eq!(Normalization::compute(&[]), Normalization::default());
    }
}
