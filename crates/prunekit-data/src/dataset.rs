//! The in-memory dataset, train/test split and normalisation.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;

use crate::augment::Augment;
use crate::error::{DataError, Result};
use crate::task::{Task, TaskKind};

/// The values of one input (or target) over every sample, concatenated, row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// Real values (images, audio features, standardised table columns).
    F32(Vec<f32>),
    /// Integer ids (tokens, users, items, categories), for an `Ids` graph input.
    U32(Vec<u32>),
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::U32(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn gather(&self, idx: &[usize], n: usize) -> Values {
        fn pick<T: Copy>(v: &[T], idx: &[usize], n: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(idx.len() * n);
            for &i in idx {
                out.extend_from_slice(&v[i * n..(i + 1) * n]);
            }
            out
        }
        match self {
            Values::F32(v) => Values::F32(pick(v, idx, n)),
            Values::U32(v) => Values::U32(pick(v, idx, n)),
        }
    }

    fn tensor(self, shape: Vec<usize>, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Values::F32(v) => Tensor::from_vec(v, shape, device)?,
            Values::U32(v) => Tensor::from_vec(v, shape, device)?,
        })
    }
}

/// One named input of a dataset: per-sample `shape` (no batch axis) and the values of every
/// sample. The name matches the model input it feeds (inputs are fed in order).
#[derive(Clone, Debug, PartialEq)]
pub struct Feature {
    /// The input's name, e.g. `"image"`, `"user"`, `"tokens"`.
    pub name: String,
    /// Shape of one sample, e.g. `[1, 28, 28]` or `[]` for one id.
    pub shape: Vec<usize>,
    /// The values, `len() * shape.product()` of them.
    pub values: Values,
}

impl Feature {
    /// A float input.
    pub fn float(name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) -> Self {
        Self {
            name: name.into(),
            shape,
            values: Values::F32(values),
        }
    }

    /// An id input.
    pub fn ids(name: impl Into<String>, shape: Vec<usize>, values: Vec<u32>) -> Self {
        Self {
            name: name.into(),
            shape,
            values: Values::U32(values),
        }
    }

    /// Values per sample (the product of `shape`).
    pub fn sample_len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The targets of every sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A class id per sample, each below `num_classes` (classification, binary, ranking
    /// pairs, next item).
    Class {
        /// One id per sample.
        labels: Vec<u32>,
        /// Number of classes.
        num_classes: usize,
    },
    /// A real vector of `dim` values per sample (regression).
    Regression {
        /// `len() * dim` values, row-major.
        values: Vec<f32>,
        /// Values per sample.
        dim: usize,
    },
    /// A token id per position, `len` positions per sample, each below `vocab` or
    /// [`IGNORE`](crate::IGNORE) (language modelling).
    Tokens {
        /// `len() * len` ids, row-major.
        ids: Vec<u32>,
        /// Positions per sample.
        len: usize,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The objects of each image (detection): `max_objects` rows of `[class, x1, y1, x2, y2]`
    /// per sample, boxes in input pixels (x2, y2 exclusive), the class an id below
    /// `num_classes`; unused rows have class -1 (and zero boxes).
    Boxes {
        /// `len() * max_objects * 5` values, row-major.
        values: Vec<f32>,
        /// Object rows per sample.
        max_objects: usize,
        /// Number of object classes.
        num_classes: usize,
    },
}

/// Values per object row of [`Target::Boxes`]: `[class, x1, y1, x2, y2]`.
pub const BOX_ROW: usize = 5;

impl Target {
    /// Number of samples the targets describe.
    pub fn samples(&self) -> usize {
        match self {
            Target::Class { labels, .. } => labels.len(),
            Target::Regression { values, dim } => values.len() / (*dim).max(1),
            Target::Tokens { ids, len, .. } => ids.len() / (*len).max(1),
            Target::Boxes {
                values,
                max_objects,
                ..
            } => values.len() / (max_objects * BOX_ROW).max(1),
        }
    }

    fn per_sample(&self) -> usize {
        match self {
            Target::Class { .. } => 1,
            Target::Regression { dim, .. } => *dim,
            Target::Tokens { len, .. } => *len,
            Target::Boxes { max_objects, .. } => max_objects * BOX_ROW,
        }
    }

    fn value_count(&self) -> usize {
        match self {
            Target::Class { labels, .. } => labels.len(),
            Target::Regression { values, .. } | Target::Boxes { values, .. } => values.len(),
            Target::Tokens { ids, .. } => ids.len(),
        }
    }

    fn subset(&self, idx: &[usize]) -> Target {
        match self {
            Target::Class {
                labels,
                num_classes,
            } => Target::Class {
                labels: idx.iter().map(|&i| labels[i]).collect(),
                num_classes: *num_classes,
            },
            Target::Regression { values, dim } => Target::Regression {
                values: gather_f32(values, idx, *dim),
                dim: *dim,
            },
            Target::Boxes {
                values,
                max_objects,
                num_classes,
            } => Target::Boxes {
                values: gather_f32(values, idx, max_objects * BOX_ROW),
                max_objects: *max_objects,
                num_classes: *num_classes,
            },
            Target::Tokens { ids, len, vocab } => Target::Tokens {
                ids: match Values::U32(ids.clone()).gather(idx, *len) {
                    Values::U32(v) => v,
                    Values::F32(_) => unreachable!("gather keeps the variant"),
                },
                len: *len,
                vocab: *vocab,
            },
        }
    }

    /// The targets of `idx` as a tensor: class ids `[n]` u32, values `[n, dim]` f32, token ids
    /// `[n, len]` u32.
    fn tensor(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        Ok(match self.subset(idx) {
            Target::Class { labels, .. } => Tensor::from_vec(labels, idx.len(), device)?,
            Target::Regression { values, dim } => {
                Tensor::from_vec(values, (idx.len(), dim), device)?
            }
            Target::Tokens { ids, len, .. } => Tensor::from_vec(ids, (idx.len(), len), device)?,
            Target::Boxes {
                values,
                max_objects,
                ..
            } => Tensor::from_vec(values, (idx.len(), max_objects, BOX_ROW), device)?,
        })
    }
}

/// The `per`-value rows `idx` of `values`.
fn gather_f32(values: &[f32], idx: &[usize], per: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * per);
    for &i in idx {
        out.extend_from_slice(&values[i * per..(i + 1) * per]);
    }
    out
}

/// One mini-batch: the model's inputs in order (`[B, ..shape]` each) and the targets.
#[derive(Clone, Debug)]
pub struct Batch {
    /// One tensor per [`Feature`], f32 or u32, batch axis first.
    pub inputs: Vec<Tensor>,
    /// Class ids `[B]` (u32), regression values `[B, D]` (f32), token ids `[B, T]` (u32) or
    /// object rows `[B, max_objects, 5]` (f32, [`Target::Boxes`]).
    pub target: Tensor,
}

/// An in-memory dataset: named inputs, their targets and the task that gives them meaning.
///
/// Sample `i` of input `f` occupies `f.values[i * f.sample_len() .. (i + 1) * f.sample_len()]`.
/// The task (loss, metrics, headline) travels with the data, so every pass that is given a
/// dataset trains and measures the model the task's way.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Name of the dataset, e.g. `"digits/train"`.
    pub name: String,
    /// The inputs, in the order the model takes them (at least one).
    pub inputs: Vec<Feature>,
    /// The targets.
    pub target: Target,
    /// The task: loss, metrics and headline metric.
    pub task: Task,
}

impl Dataset {
    /// A classification dataset with one float input: `x` holds `y.len()` samples of
    /// `sample_shape`, each label is below `num_classes`. The input is named `"input"`.
    ///
    /// # Errors
    /// [`DataError::Inconsistent`] when `x` does not hold `y.len()` samples, or
    /// [`DataError::BadLabel`] for a label `>= num_classes`.
    pub fn new(
        name: impl Into<String>,
        x: Vec<f32>,
        y: Vec<u32>,
        sample_shape: Vec<usize>,
        num_classes: usize,
    ) -> Result<Self> {
        Self::with_task(
            name,
            vec![Feature::float("input", sample_shape, x)],
            Target::Class {
                labels: y,
                num_classes,
            },
            Task::classification(),
        )
    }

    /// A dataset of any inputs, targets and task, checked: at least one input, every input and
    /// the targets hold the same number of samples, every class id below `num_classes`, every
    /// token id below `vocab` or [`IGNORE`](crate::IGNORE), class weights (if any) one per class
    /// and finite and positive.
    ///
    /// # Errors
    /// [`DataError::Inconsistent`] naming the input or the problem, [`DataError::BadLabel`] for a
    /// label out of range.
    pub fn with_task(
        name: impl Into<String>,
        inputs: Vec<Feature>,
        target: Target,
        task: Task,
    ) -> Result<Self> {
        let name = name.into();
        let bad = |problem: String| DataError::Inconsistent {
            name: name.clone(),
            problem,
        };
        if inputs.is_empty() {
            return Err(bad("a dataset needs at least one input".into()));
        }
        let per = target.per_sample();
        let n = target.samples();
        if per == 0 {
            return Err(bad("targets of zero width".into()));
        }
        let tlen = target.value_count();
        if tlen != n * per {
            return Err(bad(format!(
                "{tlen} target values are not a whole number of samples of {per}"
            )));
        }
        for f in &inputs {
            if f.sample_len().checked_mul(n) != Some(f.values.len()) {
                return Err(bad(format!(
                    "input `{}` has {} values for {n} samples of shape {:?}",
                    f.name,
                    f.values.len(),
                    f.shape
                )));
            }
        }
        match &target {
            Target::Class {
                labels,
                num_classes,
            } => {
                if let Some(&l) = labels.iter().find(|&&l| l as usize >= *num_classes) {
                    return Err(DataError::BadLabel {
                        source_name: name,
                        label: f64::from(l),
                        num_classes: *num_classes,
                    });
                }
                if let Some(w) = &task.class_weights {
                    if w.len() != *num_classes || w.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                        return Err(bad(format!(
                            "class weights {w:?}: need {num_classes} finite positive weights"
                        )));
                    }
                }
            }
            Target::Tokens { ids, vocab, .. } => {
                if let Some(&l) = ids
                    .iter()
                    .find(|&&l| l != crate::IGNORE && l as usize >= *vocab)
                {
                    return Err(DataError::BadLabel {
                        source_name: name,
                        label: f64::from(l),
                        num_classes: *vocab,
                    });
                }
            }
            Target::Regression { values, .. } => {
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(bad("a regression target is not finite".into()));
                }
            }
            Target::Boxes {
                values,
                num_classes,
                ..
            } => {
                for row in values.chunks_exact(BOX_ROW) {
                    let class = row[0];
                    if class < 0.0 {
                        continue;
                    }
                    if class.fract() != 0.0 || class as usize >= *num_classes {
                        return Err(DataError::BadLabel {
                            source_name: name,
                            label: f64::from(class),
                            num_classes: *num_classes,
                        });
                    }
                    let b = &row[1..];
                    if b.iter().any(|v| !v.is_finite()) || b[2] < b[0] || b[3] < b[1] {
                        return Err(bad(format!(
                            "box {b:?} is not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2"
                        )));
                    }
                }
            }
        }
        if let TaskKind::Detection { classes, stride } = task.kind {
            let ok =
                matches!(&target, Target::Boxes { num_classes, .. } if *num_classes == classes);
            if !ok || stride == 0 {
                return Err(bad(format!(
                    "a detection task of {classes} classes and stride {stride} needs box targets \
                     of as many classes and a positive stride"
                )));
            }
        }
        if let TaskKind::Ranking { list_len } = task.kind {
            if list_len < 2 || !n.is_multiple_of(list_len) {
                return Err(bad(format!(
                    "ranking lists of {list_len} candidates do not divide {n} samples"
                )));
            }
        }
        Ok(Self {
            name,
            inputs,
            target,
            task,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.target.samples()
    }

    /// Whether the dataset has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per-sample shape of every input, in order.
    pub fn input_shapes(&self) -> Vec<Vec<usize>> {
        self.inputs.iter().map(|f| f.shape.clone()).collect()
    }

    /// The per-sample shape of the first input (the image or sequence of single-input models).
    pub fn sample_shape(&self) -> &[usize] {
        &self.inputs[0].shape
    }

    /// The class ids, for class targets.
    pub fn labels(&self) -> Option<&[u32]> {
        match &self.target {
            Target::Class { labels, .. } => Some(labels),
            _ => None,
        }
    }

    /// The number of classes (class and box targets) or the vocabulary (token targets).
    pub fn num_classes(&self) -> Option<usize> {
        match &self.target {
            Target::Class { num_classes, .. } | Target::Boxes { num_classes, .. } => {
                Some(*num_classes)
            }
            Target::Tokens { vocab, .. } => Some(*vocab),
            Target::Regression { .. } => None,
        }
    }

    /// The values of the first input, when it is a float input.
    pub fn float_values(&self) -> Option<&[f32]> {
        match &self.inputs[0].values {
            Values::F32(v) => Some(v),
            Values::U32(_) => None,
        }
    }

    /// A new dataset holding the samples at `idx`, in that order (repeats allowed). The task
    /// is kept, except that a ranking subset that cuts lists apart would be invalid: subset
    /// ranking data by whole lists ([`Dataset::subset_lists`]).
    ///
    /// # Panics
    /// If an index is `>= self.len()`.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        Dataset {
            name: self.name.clone(),
            inputs: self
                .inputs
                .iter()
                .map(|f| Feature {
                    name: f.name.clone(),
                    shape: f.shape.clone(),
                    values: f.values.gather(idx, f.sample_len()),
                })
                .collect(),
            target: self.target.subset(idx),
            task: self.task.clone(),
        }
    }

    /// Samples per unit of subsetting: a whole candidate list for ranking data (its
    /// `list_len`), one sample otherwise.
    pub fn subset_unit(&self) -> usize {
        match self.task.kind {
            TaskKind::Ranking { list_len } => list_len,
            _ => 1,
        }
    }

    /// The samples of the given lists (ranking) or samples (other tasks), `units` indexing
    /// `0..len() / subset_unit()`.
    ///
    /// # Panics
    /// If a unit index is out of range.
    pub fn subset_lists(&self, units: &[usize]) -> Dataset {
        let k = self.subset_unit();
        let idx: Vec<usize> = units.iter().flat_map(|&u| u * k..(u + 1) * k).collect();
        self.subset(&idx)
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

    /// The samples at `idx` as a [`Batch`].
    ///
    /// # Errors
    /// [`DataError::IndexOutOfRange`] for an index past the end.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<Batch> {
        self.batch_augmented(idx, &Augment::default(), &mut crate::rng(0), device)
    }

    /// Like [`Dataset::batch`], applying `aug` to each sample of the first input when it is a
    /// float input (images), with randomness drawn from `rng` in `idx` order.
    ///
    /// # Errors
    /// As [`Dataset::batch`]; [`DataError::InvalidArgument`] for an augmentation of box targets
    /// (it would move the objects, not their boxes).
    pub fn batch_augmented(
        &self,
        idx: &[usize],
        aug: &Augment,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Batch> {
        self.check_indices(idx)?;
        if matches!(self.target, Target::Boxes { .. }) && !aug.is_identity() {
            return Err(DataError::InvalidArgument(format!(
                "`{}`: crops and flips would move the objects away from their boxes; detection \
                 data are trained without augmentation",
                self.name
            )));
        }
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for (k, f) in self.inputs.iter().enumerate() {
            let n = f.sample_len();
            let mut values = f.values.gather(idx, n);
            if k == 0 && !aug.is_identity() {
                if let Values::F32(x) = &mut values {
                    for s in x.chunks_exact_mut(n.max(1)) {
                        aug.apply(s, &f.shape, rng);
                    }
                }
            }
            let mut shape = Vec::with_capacity(f.shape.len() + 1);
            shape.push(idx.len());
            shape.extend_from_slice(&f.shape);
            inputs.push(values.tensor(shape, device)?);
        }
        Ok(Batch {
            inputs,
            target: self.target.tensor(idx, device)?,
        })
    }

    /// Number of samples of each class (length `num_classes`); empty for other targets.
    pub fn class_counts(&self) -> Vec<usize> {
        let Target::Class {
            labels,
            num_classes,
        } = &self.target
        else {
            return Vec::new();
        };
        let mut counts = vec![0usize; *num_classes];
        for &l in labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Applies `x = (x - mean) / std` to every value of the first input (a float input) in
    /// place; id inputs are left as they are.
    pub fn normalize(&mut self, norm: &Normalization) {
        if let Values::F32(x) = &mut self.inputs[0].values {
            norm.apply(x);
        }
    }

    /// A copy whose float inputs carry added Gaussian noise of standard deviation `std` (in
    /// the inputs' own, usually standardised, units) and whose id inputs have each id replaced
    /// by `unk` with probability `drop` (token dropout), seeded: the robustness probes of the
    /// report. Targets are unchanged.
    pub fn perturbed(&self, std: f32, drop: f64, unk: u32, seed: u64) -> Dataset {
        use rand::Rng;
        let mut rng = crate::rng(seed);
        let mut out = self.clone();
        for f in &mut out.inputs {
            match &mut f.values {
                Values::F32(x) if std > 0.0 => {
                    for v in x.iter_mut() {
                        // Box-Muller
                        let u1: f32 = rng.random_range(f32::EPSILON..1.0);
                        let u2: f32 = rng.random();
                        let z = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
                        *v += std * z;
                    }
                }
                Values::U32(ids) if drop > 0.0 => {
                    for v in ids.iter_mut() {
                        if rng.random_bool(drop.min(1.0)) {
                            *v = unk;
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// A train/test split of one dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// The training samples.
    pub train: Dataset,
    /// The held-out test samples.
    pub test: Dataset,
    /// The Hugging Face tokenizer.json (text) the token inputs were encoded with, when the data
    /// are text: a model trained on them carries it (`Graph::meta["tokenizer"]`), so `prunekit
    /// generate` and `embed` can encode prompts and decode outputs.
    pub tokenizer: Option<String>,
}

impl Split {
    /// A split of data that are not text (no tokenizer).
    pub fn new(train: Dataset, test: Dataset) -> Self {
        Self {
            train,
            test,
            tokenizer: None,
        }
    }
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
        assert_eq!(
            (d.len(), d.inputs[0].sample_len(), d.is_empty()),
            (4, 4, false)
        );
        assert_eq!(d.class_counts(), vec![1, 2, 1]);
        let s = d.subset(&[3, 0, 3]);
        assert_eq!(s.labels(), Some(&[1, 0, 1][..]));
        assert_eq!(
            &s.float_values().expect("float")[..8],
            &[30.0, 31.0, 32.0, 33.0, 0.0, 1.0, 2.0, 3.0]
        );
        assert_eq!(s.sample_shape(), &[1, 2, 2]);
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
        let b = d.batch(&[2, 1], &dev).expect("batch");
        let (x, y) = (b.inputs[0].clone(), b.target);
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

        let b = d.batch(&[], &dev).expect("empty batch");
        let (x, y) = (b.inputs[0].clone(), b.target);
        assert_eq!(x.dims(), &[0, 1, 2, 2]);
        assert_eq!(y.dims(), &[0]);
    }

    #[test]
    fn batch_augmented_identity_matches_batch() {
        let d = toy();
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(1);
        let a = d
            .batch_augmented(&[0, 3], &Augment::default(), &mut rng, &dev)
            .expect("batch");
        let (xa, ya) = (a.inputs[0].clone(), a.target);
        let b = d.batch(&[0, 3], &dev).expect("batch");
        let (xb, yb) = (b.inputs[0].clone(), b.target);
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
        let xa = d
            .batch_augmented(&[1], &aug, &mut rng, &dev)
            .expect("batch")
            .inputs
            .remove(0);
        let mut v = f(xa);
        v.sort_by(f32::total_cmp);
        assert_eq!(v, vec![10.0, 11.0, 12.0, 13.0]);
    }

    #[test]
    fn multi_input_regression_and_ranking_datasets() {
        let dev = Device::Cpu;
        let d = Dataset::with_task(
            "ratings",
            vec![
                Feature::ids("user", vec![], vec![0, 1, 2]),
                Feature::ids("item", vec![], vec![5, 6, 7]),
            ],
            Target::Regression {
                values: vec![4.0, 3.5, 1.0],
                dim: 1,
            },
            Task::new(TaskKind::Regression),
        )
        .expect("valid");
        let b = d.batch(&[2, 0], &dev).expect("batch");
        assert_eq!(b.inputs.len(), 2);
        assert_eq!(b.inputs[1].to_vec1::<u32>().expect("ids"), vec![7, 5]);
        assert_eq!(b.target.dims(), &[2, 1]);
        assert!(d.labels().is_none() && d.class_counts().is_empty());
        // a user input short of one sample is named
        let err = Dataset::with_task(
            "bad",
            vec![Feature::ids("user", vec![], vec![0, 1])],
            Target::Regression {
                values: vec![1.0; 3],
                dim: 1,
            },
            Task::new(TaskKind::Regression),
        )
        .expect_err("short input");
        assert!(err.to_string().contains("`user`"), "{err}");
        // ranking lists must tile the samples, and subsets keep whole lists
        let r = |n: usize| {
            Dataset::with_task(
                "rank",
                vec![Feature::ids("item", vec![], (0..n as u32).collect())],
                Target::Class {
                    labels: vec![0; n],
                    num_classes: 2,
                },
                Task::new(TaskKind::Ranking { list_len: 3 }),
            )
        };
        assert!(r(7).is_err());
        let s = r(9).expect("3 lists").subset_lists(&[2]);
        assert_eq!(s.inputs[0].values, Values::U32(vec![6, 7, 8]));
        // perturbation: noise changes floats, dropout changes ids, seeded
        let t = toy();
        let p = t.perturbed(0.5, 0.0, 0, 3);
        assert_ne!(p.inputs, t.inputs);
        assert_eq!(p, t.perturbed(0.5, 0.0, 0, 3));
        let q = d.perturbed(0.0, 1.0, 99, 1);
        assert_eq!(q.inputs[0].values, Values::U32(vec![99; 3]));
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
