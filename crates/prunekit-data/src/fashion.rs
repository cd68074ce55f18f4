//! Fashion-MNIST, read from the idx-ubyte(-gzip) files of the Debian package
//! `dataset-fashion-mnist` (or any directory holding the same files).

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Normalization, Split};
use crate::error::{DataError, Result};
use crate::idx::read_idx;

/// Where the Debian package `dataset-fashion-mnist` installs its files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Number of Fashion-MNIST classes.
pub const FASHION_MNIST_CLASSES: usize = 10;
/// Names of the Fashion-MNIST classes, by label.
pub const FASHION_MNIST_CLASS_NAMES: [&str; FASHION_MNIST_CLASSES] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Base names (without `.gz`) of the four files: train images, train labels,
/// test images, test labels.
const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Finds `base.gz` or, failing that, uncompressed `base` in `dir`.
fn locate(dir: &Path, base: &str) -> Result<PathBuf> {
    [format!("{base}.gz"), base.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::MissingFile {
            dir: dir.to_path_buf(),
            name: base.to_string(),
        })
}

/// Raw images and labels of one side of the split.
struct RawPart {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    height: usize,
    width: usize,
}

fn read_part(dir: &Path, images_base: &str, labels_base: &str) -> Result<RawPart> {
    let images_path = locate(dir, images_base)?;
    let labels_path = locate(dir, labels_base)?;
    let (idims, pixels) = read_idx(&images_path)?;
    let (ldims, labels) = read_idx(&labels_path)?;
    if idims.len() != 3 {
        return Err(DataError::BadShape {
            path: images_path,
            expected: "3 dimensions [n, height, width]".into(),
            found: idims,
        });
    }
    if ldims.len() != 1 {
        return Err(DataError::BadShape {
            path: labels_path,
            expected: "1 dimension [n]".into(),
            found: ldims,
        });
    }
    if idims[0] != ldims[0] {
        return Err(DataError::CountMismatch {
            images_path,
            images: idims[0],
            labels_path,
            labels: ldims[0],
        });
    }
    if idims[0] == 0 {
        return Err(DataError::EmptyDataset {
            name: images_path.display().to_string(),
        });
    }
    if let Some(&bad) = labels
        .iter()
        .find(|&&l| usize::from(l) >= FASHION_MNIST_CLASSES)
    {
        return Err(DataError::BadLabel {
            source_name: labels_path.display().to_string(),
            label: f64::from(bad),
            num_classes: FASHION_MNIST_CLASSES,
        });
    }
    Ok(RawPart {
        pixels,
        labels,
        height: idims[1],
        width: idims[2],
    })
}

/// The raw training and test parts from `dir` (default [`FASHION_MNIST_DIR`]), of the same
/// image size.
fn raw_parts(dir: Option<&Path>) -> Result<(RawPart, RawPart)> {
    let dir = dir.unwrap_or_else(|| Path::new(FASHION_MNIST_DIR));
    if !dir.is_dir() {
        return Err(DataError::NoSuchDirectory {
            path: dir.to_path_buf(),
        });
    }
    let train = read_part(dir, FILES[0], FILES[1])?;
    let test = read_part(dir, FILES[2], FILES[3])?;
    if (test.height, test.width) != (train.height, train.width) {
        return Err(DataError::BadShape {
            path: locate(dir, FILES[2])?,
            expected: format!(
                "images of {}x{} like the training set",
                train.height, train.width
            ),
            found: vec![test.labels.len(), test.height, test.width],
        });
    }
    Ok((train, test))
}

/// Detection canvases ([`crate::canvas::make_canvases`]) of real Fashion-MNIST items: `n_train`
/// from the training images and `n_test` from the test images (so no item of a test canvas was
/// seen in training), from `dir` (default [`FASHION_MNIST_DIR`]), seeded.
///
/// # Errors
/// As [`fashion_mnist`] for the files; [`crate::canvas::make_canvases`] for the options.
pub fn fashion_canvases(
    dir: Option<&Path>,
    n_train: usize,
    n_test: usize,
    cfg: &crate::canvas::CanvasConfig,
    seed: u64,
) -> Result<(Vec<crate::canvas::Canvas>, Vec<crate::canvas::Canvas>)> {
    let (train, test) = raw_parts(dir)?;
    let make = |p: &RawPart, n, seed| {
        crate::canvas::make_canvases(&p.pixels, &p.labels, (p.height, p.width), n, cfg, seed)
    };
    Ok((
        make(&train, n_train, seed)?,
        make(&test, n_test, seed ^ 0x7e57)?,
    ))
}

/// Pixels per output cell of the Fashion-MNIST detection task (the detector's downsampling).
pub const FASHION_DETECT_STRIDE: usize = 4;
/// Training canvases of the `fashion-detect` dataset.
pub const FASHION_DETECT_TRAIN: usize = 12_000;
/// Test canvases of the `fashion-detect` dataset.
pub const FASHION_DETECT_TEST: usize = 1000;

/// The Fashion-MNIST detection task (issue 14 §2): `n_train` / `n_test` canvases of
/// [`fashion_canvases`] (items of the official training / test images), each `[1, size, size]`
/// standardised with the training canvases' mean and std (returned), boxes and classes exact,
/// task [`crate::TaskKind::Detection`] with `stride` pixels per output cell.
///
/// # Errors
/// As [`fashion_canvases`]; [`DataError::InvalidArgument`] for a stride of 0 or one that does
/// not divide the canvas side.
pub fn fashion_detection(
    dir: Option<&Path>,
    n_train: usize,
    n_test: usize,
    cfg: &crate::canvas::CanvasConfig,
    stride: usize,
    seed: u64,
) -> Result<(Split, Normalization)> {
    crate::canvas::check_stride(cfg, stride)?;
    let (train, test) = fashion_canvases(dir, n_train, n_test, cfg, seed)?;
    let (mut sum, mut sq, mut n) = (0f64, 0f64, 0f64);
    for v in train.iter().flat_map(|c| &c.pixels) {
        let v = f64::from(*v);
        sum += v;
        sq += v * v;
        n += 1.0;
    }
    let mean = sum / n.max(1.0);
    let norm = Normalization::from_moments(mean, sq / n.max(1.0) - mean * mean);
    let make = |name, canvases: &[crate::canvas::Canvas]| {
        crate::canvas::canvas_dataset(name, canvases, cfg, FASHION_MNIST_CLASSES, stride, &norm)
    };
    Ok((
        Split::new(
            make("fashion-detect/train", &train)?,
            make("fashion-detect/test", &test)?,
        ),
        norm,
    ))
}

/// Mean and std of `pixel / 255` over `pixels`, computed exactly from a histogram.
fn pixel_normalization(pixels: &[u8]) -> Normalization {
    let mut hist = [0u64; 256];
    for &p in pixels {
        hist[usize::from(p)] += 1;
    }
    let n = pixels.len() as f64;
    if n == 0.0 {
        return Normalization::default();
    }
    let value = |p: usize| p as f64 / 255.0;
    let mean = hist
        .iter()
        .enumerate()
        .map(|(p, &c)| c as f64 * value(p))
        .sum::<f64>()
        / n;
    let var = hist
        .iter()
        .enumerate()
        .map(|(p, &c)| c as f64 * (value(p) - mean).powi(2))
        .sum::<f64>()
        / n;
    Normalization::from_moments(mean, var)
}

fn to_dataset(name: &str, part: RawPart, lut: &[f32; 256]) -> Result<Dataset> {
    let x: Vec<f32> = part.pixels.iter().map(|&p| lut[usize::from(p)]).collect();
    let y: Vec<u32> = part.labels.iter().map(|&l| u32::from(l)).collect();
    Dataset::new(
        name,
        x,
        y,
        vec![1, part.height, part.width],
        FASHION_MNIST_CLASSES,
    )
}

/// Fashion-MNIST from the idx-ubyte files in `dir` (default [`FASHION_MNIST_DIR`]).
///
/// Reads `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each gzipped
/// (`.gz`, preferred) or uncompressed. Samples are `[1, 28, 28]` with values
/// `pixel / 255`, then normalised with the train mean/std (returned);
/// 60,000 train and 10,000 test samples in 10 classes.
pub fn fashion_mnist(dir: Option<&Path>) -> Result<(Split, Normalization)> {
    let (train, test) = raw_parts(dir)?;
    let norm = pixel_normalization(&train.pixels);
    let inv = 1.0 / norm.std;
    let mut lut = [0.0f32; 256];
    for (p, v) in lut.iter_mut().enumerate() {
        *v = (p as f32 / 255.0 - norm.mean) * inv;
    }
    let train = to_dataset("fashion-mnist/train", train, &lut)?;
    let test = to_dataset("fashion-mnist/test", test, &lut)?;
    Ok((Split::new(train, test), norm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::encode_idx;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn write_gz(path: &Path, bytes: &[u8]) {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).expect("gzip");
        std::fs::write(path, enc.finish().expect("gzip")).expect("write");
    }

    /// A miniature Fashion-MNIST: 6 train / 3 test images of 2x3; train gzipped, test raw.
    fn write_fake(dir: &Path) {
        let train_px: Vec<u8> = (0..36).map(|v| (v * 7) as u8).collect();
        write_gz(
            &dir.join("train-images-idx3-ubyte.gz"),
            &encode_idx(&[6, 2, 3], &train_px),
        );
        write_gz(
            &dir.join("train-labels-idx1-ubyte.gz"),
            &encode_idx(&[6], &[0, 1, 2, 9, 9, 3]),
        );
        std::fs::write(
            dir.join("t10k-images-idx3-ubyte"),
            encode_idx(&[3, 2, 3], &[255; 18]),
        )
        .expect("write");
        std::fs::write(
            dir.join("t10k-labels-idx1-ubyte"),
            encode_idx(&[3], &[4, 5, 6]),
        )
        .expect("write");
    }

    #[test]
    fn loads_a_miniature_copy_gz_and_raw() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fake(dir.path());
        let (split, norm) = fashion_mnist(Some(dir.path())).expect("load");
        assert_eq!((split.train.len(), split.test.len()), (6, 3));
        assert_eq!(split.train.sample_shape(), &[1, 2, 3]);
        assert_eq!(split.test.labels().unwrap(), &[4, 5, 6]);
        assert_eq!(split.train.class_counts()[9], 2);
        let raw: Vec<f32> = (0..36).map(|v| (v * 7) as f32 / 255.0).collect();
        let want = Normalization::compute(&raw);
        assert!((norm.mean - want.mean).abs() < 1e-6 && (norm.std - want.std).abs() < 1e-6);
        assert!((norm.invert(split.test.float_values().unwrap()[0]) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn clear_errors() {
        let missing = Path::new("/nonexistent/prunekit-fashion");
        let err = fashion_mnist(Some(missing)).expect_err("missing dir");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/prunekit-fashion: no such directory")
                && msg.contains("dataset-fashion-mnist")
                && msg.contains("scripts/install-data.sh"),
            "{msg}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        write_fake(dir.path());
        std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).expect("rm");
        let err = fashion_mnist(Some(dir.path())).expect_err("missing file");
        assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
        assert!(err.to_string().contains("t10k-labels-idx1-ubyte"));

        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte"),
            encode_idx(&[2], &[4, 5]),
        )
        .expect("write");
        let err = fashion_mnist(Some(dir.path())).expect_err("count mismatch");
        assert!(matches!(err, DataError::CountMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("label/image count mismatch"));

        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte"),
            encode_idx(&[3], &[4, 5, 10]),
        )
        .expect("write");
        let err = fashion_mnist(Some(dir.path())).expect_err("bad label");
        assert!(matches!(err, DataError::BadLabel { .. }), "{err:?}");
    }

    #[test]
    fn real_fashion_mnist_if_installed() {
        let dir = Path::new(FASHION_MNIST_DIR);
        if !dir.is_dir() {
            println!(
                "skipping: {FASHION_MNIST_DIR} is absent (install it with scripts/install-data.sh)"
            );
            return;
        }
        let start = std::time::Instant::now();
        let (split, norm) = fashion_mnist(None).expect("load Fashion-MNIST");
        println!("loaded Fashion-MNIST in {:?} ({norm:?})", start.elapsed());
        assert_eq!(split.train.len(), 60_000);
        assert_eq!(split.test.len(), 10_000);
        assert_eq!(split.train.sample_shape(), &[1, 28, 28]);
        assert_eq!(split.train.num_classes(), Some(10));
        assert_eq!(split.train.class_counts(), vec![6_000; 10]);
        assert_eq!(split.test.class_counts(), vec![1_000; 10]);
        assert!(norm.mean > 0.2 && norm.mean < 0.4, "{norm:?}");
        let n = split.train.float_values().unwrap().len() as f64;
        let mean = split
            .train
            .float_values()
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 1e-3, "normalised train mean {mean}");
    }

    #[test]
    fn canvases_of_real_items() {
        if !Path::new(FASHION_MNIST_DIR).is_dir() {
            eprintln!("skipped: Fashion-MNIST is not installed (scripts/install-data.sh)");
            return;
        }
        let cfg = crate::canvas::CanvasConfig::default();
        let (train, test) = fashion_canvases(None, 50, 20, &cfg, 1).unwrap();
        assert_eq!((train.len(), test.len()), (50, 20));
        let objects: usize = train.iter().map(|c| c.objects.len()).sum();
        assert!(objects > 50 && objects <= 200, "{objects}");
        assert!(train
            .iter()
            .flat_map(|c| &c.objects)
            .all(|o| o.class < 10 && o.bbox[2] <= 96.0 && o.bbox[3] <= 96.0));
        // the same seed, the same canvases
        let (again, _) = fashion_canvases(None, 50, 0, &cfg, 1).unwrap();
        assert_eq!(again, train);
    }

    #[test]
    fn detection_canvases_of_a_miniature_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_fake(dir.path());
        let cfg = crate::canvas::CanvasConfig {
            size: 16,
            max_objects: 2,
            min_side: 4,
            max_side: 8,
            ..Default::default()
        };
        let (split, norm) = fashion_detection(Some(dir.path()), 5, 3, &cfg, 4, 1).expect("load");
        assert_eq!((split.train.len(), split.test.len()), (5, 3));
        assert_eq!(split.train.sample_shape(), &[1, 16, 16]);
        assert_eq!(
            split.train.task.kind,
            crate::TaskKind::Detection {
                classes: 10,
                stride: 4
            }
        );
        let crate::Target::Boxes {
            values,
            max_objects,
            ..
        } = &split.test.target
        else {
            panic!("box targets");
        };
        assert_eq!((*max_objects, values.len()), (2, 3 * 2 * crate::BOX_ROW));
        // every test object is a test image's label (4, 5 or 6); padding rows are class -1
        assert!(values[0] >= 4.0 && values[0] <= 6.0, "{values:?}");
        for row in values.chunks_exact(crate::BOX_ROW) {
            assert!(row[0] == -1.0 || (4.0..=6.0).contains(&row[0]), "{row:?}");
        }
        // standardised with the training canvases' moments
        let x = split.train.float_values().expect("floats");
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 1e-4 && norm.std > 0.0, "{mean}");
        let b = split
            .test
            .batch(&[0, 2], &candle_core::Device::Cpu)
            .expect("batch");
        assert_eq!(b.target.dims(), &[2, 2, 5]);
        // the same seed gives the same data; a stride that does not divide the side is refused
        let (again, _) = fashion_detection(Some(dir.path()), 5, 3, &cfg, 4, 1).expect("load");
        assert_eq!(again, split);
        assert!(fashion_detection(Some(dir.path()), 5, 3, &cfg, 5, 1).is_err());
        let aug = crate::Augment {
            hflip: true,
            ..Default::default()
        };
        let err = split
            .train
            .batch_augmented(&[0], &aug, &mut crate::rng(0), &candle_core::Device::Cpu)
            .expect_err("flips move objects");
        assert!(err.to_string().contains("boxes"), "{err}");
    }
}
