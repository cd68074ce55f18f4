//! The UCI optical-recognition digits set (1,797 8x8 images), compiled into smartcore.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::dataset::{Dataset, Normalization, Split};
use crate::error::{DataError, Result};

/// Number of classes of the digits set.
pub const DIGITS_CLASSES: usize = 10;
/// Shape of one digits sample.
pub const DIGITS_SHAPE: [usize; 3] = [1, 8, 8];
/// The test fraction [`crate::load`] uses for the digits set.
pub const DIGITS_TEST_FRACTION: f64 = 0.2;

/// The UCI digits set (1,797 8x8 images, values 0..16) compiled into smartcore.
///
/// Samples are shaped `[1, 8, 8]`. The train/test split is deterministic for
/// `seed` and stratified: each class puts `round(count * test_fraction)` of
/// its samples in the test set. Both sides are then normalised with the
/// train mean/std, which is returned. `test_fraction` must lie strictly
/// between 0 and 1, and leave both sides non-empty.
pub fn digits(seed: u64, test_fraction: f64) -> Result<(Split, Normalization)> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(DataError::InvalidArgument(format!(
            "digits: test fraction must be in (0, 1), got {test_fraction}"
        )));
    }
    let raw = smartcore::dataset::digits::load_dataset();
    let sample_len: usize = DIGITS_SHAPE.iter().product();
    if raw.num_features != sample_len || raw.data.len() != raw.num_samples * sample_len {
        return Err(DataError::Inconsistent {
            name: "digits".into(),
            problem: format!(
                "smartcore digits has {} samples x {} features ({} values)",
                raw.num_samples,
                raw.num_features,
                raw.data.len()
            ),
        });
    }
    if raw.target.len() != raw.num_samples {
        return Err(DataError::Inconsistent {
            name: "digits".into(),
            problem: format!(
                "{} targets for {} samples",
                raw.target.len(),
                raw.num_samples
            ),
        });
    }
    let labels = raw
        .target
        .iter()
        .map(|&t| {
            let ok = t >= 0.0 && t.fract() == 0.0 && (t as usize) < DIGITS_CLASSES;
            if ok {
                Ok(t as u32)
            } else {
                Err(DataError::BadLabel {
                    source_name: "digits".into(),
                    label: f64::from(t),
                    num_classes: DIGITS_CLASSES,
                })
            }
        })
        .collect::<Result<Vec<u32>>>()?;

    let (train_idx, test_idx) = stratified_split(&labels, DIGITS_CLASSES, test_fraction, seed);
    if train_idx.is_empty() || test_idx.is_empty() {
        return Err(DataError::EmptyDataset {
            name: format!(
                "digits/{} (test fraction {test_fraction})",
                if train_idx.is_empty() {
                    "train"
                } else {
                    "test"
                }
            ),
        });
    }

    let all = Dataset::new(
        "digits",
        raw.data,
        labels,
        DIGITS_SHAPE.to_vec(),
        DIGITS_CLASSES,
    )?;
    let mut train = all.subset(&train_idx);
    let mut test = all.subset(&test_idx);
    train.name = "digits/train".into();
    test.name = "digits/test".into();
    let norm = Normalization::compute(train.float_values().unwrap_or(&[]));
    train.normalize(&norm);
    test.normalize(&norm);
    Ok((Split::new(train, test), norm))
}

/// Splits sample indices by class: each class sends `round(count * test_fraction)`
/// randomly chosen samples to the test side. Both sides are shuffled.
pub(crate) fn stratified_split(
    labels: &[u32],
    num_classes: usize,
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        if let Some(c) = by_class.get_mut(l as usize) {
            c.push(i);
        }
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for mut members in by_class {
        members.shuffle(&mut rng);
        let n_test = ((members.len() as f64) * test_fraction).round() as usize;
        let n_test = n_test.min(members.len());
        test.extend_from_slice(&members[..n_test]);
        train.extend_from_slice(&members[n_test..]);
    }
    train.shuffle(&mut rng);
    test.shuffle(&mut rng);
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_and_stratification() {
        let f = 0.25;
        let (split, _) = digits(1, f).expect("digits");
        assert_eq!(split.train.len() + split.test.len(), 1797);
        assert_eq!(split.train.sample_shape(), &[1, 8, 8]);
        assert_eq!(split.train.num_classes(), Some(10));
        assert_eq!(
            split.train.float_values().unwrap().len(),
            split.train.len() * 64
        );
        assert_eq!(
            split.test.float_values().unwrap().len(),
            split.test.len() * 64
        );
        let tr = split.train.class_counts();
        let te = split.test.class_counts();
        for c in 0..10 {
            let total = tr[c] + te[c];
            assert!(total > 150, "class {c} has {total} samples");
            let want = total as f64 * f;
            assert!(
                (te[c] as f64 - want).abs() <= 1.0,
                "class {c}: {} test of {total}, want ~{want}",
                te[c]
            );
        }
    }

    #[test]
    fn deterministic_per_seed() {
        let (a, na) = digits(5, 0.2).expect("digits");
        let (b, nb) = digits(5, 0.2).expect("digits");
        assert_eq!(a, b);
        assert_eq!(na, nb);
        let (c, _) = digits(6, 0.2).expect("digits");
        assert_eq!(a.train.len(), c.train.len());
        assert_ne!(a.train.labels().unwrap(), c.train.labels().unwrap());
        assert_ne!(
            a.test.float_values().unwrap(),
            c.test.float_values().unwrap()
        );
    }

    #[test]
    fn normalised_with_train_statistics() {
        let (split, norm) = digits(0, 0.2).expect("digits");
        // Raw values are 0..16.
        assert!(norm.mean > 1.0 && norm.mean < 16.0, "{norm:?}");
        assert!(norm.std > 1.0 && norm.std < 16.0, "{norm:?}");
        let n = split.train.float_values().unwrap().len() as f64;
        let mean = split
            .train
            .float_values()
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / n;
        let var = split
            .train
            .float_values()
            .unwrap()
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 1e-4, "train mean {mean}");
        assert!((var.sqrt() - 1.0).abs() < 1e-4, "train std {}", var.sqrt());
        // Test values are raw values mapped through the same normalisation.
        for &v in split.test.float_values().unwrap() {
            let raw = norm.invert(v);
            assert!((raw - raw.round()).abs() < 1e-3 && (-0.01..=16.01).contains(&raw));
        }
    }

    #[test]
    fn bad_fraction_is_an_error() {
        for f in [0.0, 1.0, -0.5, f64::NAN] {
            assert!(matches!(digits(0, f), Err(DataError::InvalidArgument(_))));
        }
        // A tiny fraction rounds to an empty test set.
        assert!(matches!(
            digits(0, 0.001),
            Err(DataError::EmptyDataset { .. })
        ));
    }

    #[test]
    fn stratified_split_small() {
        let labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1];
        let (tr, te) = stratified_split(&labels, 2, 0.5, 3);
        assert_eq!(tr.len() + te.len(), 10);
        assert_eq!(te.iter().filter(|&&i| labels[i] == 0).count(), 2);
        assert_eq!(te.iter().filter(|&&i| labels[i] == 1).count(), 3);
        let mut all: Vec<usize> = tr.iter().chain(&te).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
}
