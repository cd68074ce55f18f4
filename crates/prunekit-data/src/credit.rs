//! The two credit-risk tables of the R package `modeldata` (`credit_data`, `lending_club`) as
//! binary-classification datasets, and the tabular preprocessing they go through.
//!
//! Each CSV is read with the `csv` crate against an explicit [`TableSchema`] (numeric columns,
//! categorical columns, the target and its positive class). The rows are split stratified by
//! class (seeded, [`TableConfig::test_fraction`] to the test side), then a
//! [`TabularPreprocessing`] is fitted on the **training split only** and applied to both:
//!
//! * numeric columns: missing cells (empty or `NA`) are imputed with the training median; a
//!   column that had missing cells in training also gets a 0/1 missing-indicator column; every
//!   numeric output (values and indicators) is then standardised with the training mean and
//!   population standard deviation (scikit-learn's `SimpleImputer(strategy="median",
//!   add_indicator=True)` followed by `StandardScaler`);
//! * categorical columns: one-hot over the categories seen in training plus one slot for a
//!   missing or unseen value (0/1, not standardised).
//!
//! The result is one float input `"features"` of shape `[F]` per sample, targets
//! `Target::Class { num_classes: 2 }` with the positive class ("bad": the default, the risk
//! event) as class 1, and the task [`TaskKind::Binary`] (ROC AUC headline), optionally with
//! balanced class weights (see [`balanced_class_weights`]).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Feature, Split, Target};
use crate::digits::stratified_split;
use crate::error::{DataError, Result};
use crate::task::{Task, TaskKind};

/// The largest CSV file read (bytes), checked before reading.
pub const MAX_TABLE_BYTES: u64 = 256 << 20;
/// The most categories one categorical column may have in the training split (its one-hot
/// width is this plus one).
pub const MAX_CATEGORIES: usize = 1000;
/// The most feature values (`samples x F`) a table may expand to, checked before allocating.
pub const MAX_FEATURE_VALUES: usize = 1 << 28;
/// The default fraction of each class sent to the test split.
pub const TABLE_TEST_FRACTION: f64 = 0.2;
/// Cell texts that mean "missing" (after trimming white space), besides the empty cell.
pub const MISSING_MARKERS: &[&str] = &["", "NA"];

/// The layout of a CSV table: which columns are read, as what, and which is the target.
///
/// Columns of the file that the schema does not name are ignored; every named one must be in
/// the header. Column names and cell values are compared after trimming white space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSchema {
    /// Prefix of the dataset names (`"credit"` gives `"credit/train"`, `"credit/test"`).
    pub name: &'static str,
    /// The file name inside the data directory.
    pub file: &'static str,
    /// The target column.
    pub target: &'static str,
    /// The target value of the positive class (class 1: the risk event).
    pub positive: &'static str,
    /// The target value of the negative class (class 0).
    pub negative: &'static str,
    /// Numeric columns, in output order.
    pub numeric: &'static [&'static str],
    /// Categorical columns, in output order (after the numeric ones).
    pub categorical: &'static [&'static str],
}

/// `credit_data.csv`: 4,454 loan applications (good 3,200 / bad 1,254), 9 numeric columns
/// (Income, Assets and Debt have missing cells) and 4 categorical ones.
pub const CREDIT_DATA_SCHEMA: TableSchema = TableSchema {
    name: "credit",
    file: "credit_data.csv",
    target: "Status",
    positive: "bad",
    negative: "good",
    numeric: &[
        "Seniority",
        "Time",
        "Age",
        "Expenses",
        "Income",
        "Assets",
        "Debt",
        "Amount",
        "Price",
    ],
    categorical: &["Home", "Marital", "Records", "Job"],
};

/// `lending_club.csv`: 9,857 loans (good 9,340 / bad 517), 17 numeric columns and 5
/// categorical ones (term, sub-grade, state, verification status, employment length).
pub const LENDING_CLUB_SCHEMA: TableSchema = TableSchema {
    name: "lending-club",
    file: "lending_club.csv",
    target: "Class",
    positive: "bad",
    negative: "good",
    numeric: &[
        "funded_amnt",
        "int_rate",
        "annual_inc",
        "delinq_2yrs",
        "inq_last_6mths",
        "revol_util",
        "acc_now_delinq",
        "open_il_6m",
        "open_il_12m",
        "open_il_24m",
        "total_bal_il",
        "all_util",
        "inq_fi",
        "inq_last_12m",
        "delinq_amnt",
        "num_il_tl",
        "total_il_high_credit_limit",
    ],
    categorical: &[
        "term",
        "sub_grade",
        "addr_state",
        "verification_status",
        "emp_length",
    ],
};

/// One of the two credit-risk tables in `shared/data/credit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditFile {
    /// `credit_data.csv` (dataset `"credit"`).
    CreditData,
    /// `lending_club.csv` (dataset `"lending-club"`, 5% positive).
    LendingClub,
}

impl CreditFile {
    /// The file's schema.
    pub fn schema(self) -> &'static TableSchema {
        match self {
            CreditFile::CreditData => &CREDIT_DATA_SCHEMA,
            CreditFile::LendingClub => &LENDING_CLUB_SCHEMA,
        }
    }

    /// The file's default configuration: a 20% stratified test split; balanced class weights
    /// on for the imbalanced `lending_club`, off for `credit_data`.
    pub fn default_config(self) -> TableConfig {
        TableConfig {
            test_fraction: TABLE_TEST_FRACTION,
            class_weights: self == CreditFile::LendingClub,
        }
    }
}

/// How a table is split and weighted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TableConfig {
    /// Fraction of each class sent to the test split (strictly between 0 and 1).
    pub test_fraction: f64,
    /// Whether the task carries balanced class weights ([`balanced_class_weights`] of the
    /// training labels) for its cross-entropy.
    pub class_weights: bool,
}

impl Default for TableConfig {
    /// 20% test, no class weights.
    fn default() -> Self {
        Self {
            test_fraction: TABLE_TEST_FRACTION,
            class_weights: false,
        }
    }
}

/// Mean and population standard deviation of one output column on the training split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Training mean.
    pub mean: f64,
    /// Training population standard deviation (1 when the column is constant).
    pub std: f64,
}

impl Scaler {
    /// Mean and population standard deviation of `values` (two passes in f64); an empty or
    /// constant column gets std 1 so that applying it is safe.
    pub fn fit(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self {
                mean: 0.0,
                std: 1.0,
            };
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let std = var.sqrt();
        Self {
            mean,
            std: if std > 1e-12 && std.is_finite() {
                std
            } else {
                1.0
            },
        }
    }

    /// `(v - mean) / std`.
    pub fn apply(&self, v: f64) -> f64 {
        (v - self.mean) / self.std
    }
}

/// The fitted preprocessing of one numeric column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericColumn {
    /// The column's name.
    pub name: String,
    /// The training median of the observed (non-missing) values, imputed for missing cells
    /// (0 when the column is entirely missing in training); for an even count the mean of the
    /// two middle values.
    pub median: f64,
    /// Standardisation of the imputed values.
    pub scale: Scaler,
    /// Standardisation of the 0/1 missing indicator (1 = missing), present when the column
    /// had missing cells in the training split; the indicator is then an output column right
    /// after the value.
    pub indicator: Option<Scaler>,
}

/// The fitted preprocessing of one categorical column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoricalColumn {
    /// The column's name.
    pub name: String,
    /// The categories seen in the training split, sorted; category `k` is one-hot slot `k`,
    /// and slot `categories.len()` takes a missing or unseen value.
    pub categories: Vec<String>,
}

impl CategoricalColumn {
    /// The one-hot slot of `value` (`None` = missing): its category's index, or
    /// `categories.len()` for a missing or unseen value.
    pub fn slot(&self, value: Option<&str>) -> usize {
        value
            .and_then(|v| self.categories.binary_search_by(|c| c.as_str().cmp(v)).ok())
            .unwrap_or(self.categories.len())
    }

    /// The one-hot width: the training categories plus the missing/unseen slot.
    pub fn width(&self) -> usize {
        self.categories.len() + 1
    }
}

/// One raw row of a table, in its schema's column order: the numeric cells (`None` =
/// missing) and the categorical cells (`None` = missing).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableRow {
    /// One value per numeric column of the schema.
    pub numeric: Vec<Option<f64>>,
    /// One value per categorical column of the schema.
    pub categorical: Vec<Option<String>>,
}

/// The preprocessing fitted on a table's training split: turns a raw row into the `[F]`
/// feature vector the model takes.
///
/// Output layout (see [`TabularPreprocessing::feature_names`]): for each numeric column its
/// standardised value, followed by its standardised missing indicator when it has one; then
/// for each categorical column its one-hot block (training categories in sorted order, then
/// the missing/unseen slot).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TabularPreprocessing {
    /// The numeric columns, in schema order.
    pub numeric: Vec<NumericColumn>,
    /// The categorical columns, in schema order.
    pub categorical: Vec<CategoricalColumn>,
    /// The name of every output feature (F of them): `col`, `col (missing)`, `col=category`,
    /// `col=(missing or unseen)`.
    pub feature_names: Vec<String>,
}

impl TabularPreprocessing {
    /// Number of output features F.
    pub fn num_features(&self) -> usize {
        self.feature_names.len()
    }

    /// The features `[F]` of one raw row.
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`] when the row does not have one cell per numeric and per
    /// categorical column, or a numeric cell is not finite.
    pub fn transform(&self, row: &TableRow) -> Result<Vec<f32>> {
        if row.numeric.len() != self.numeric.len()
            || row.categorical.len() != self.categorical.len()
        {
            return Err(DataError::InvalidArgument(format!(
                "a table row needs {} numeric and {} categorical cells, got {} and {}",
                self.numeric.len(),
                self.categorical.len(),
                row.numeric.len(),
                row.categorical.len()
            )));
        }
        if let Some((c, v)) = self
            .numeric
            .iter()
            .zip(&row.numeric)
            .find(|(_, v)| v.is_some_and(|v| !v.is_finite()))
        {
            return Err(DataError::InvalidArgument(format!(
                "column `{}`: {v:?} is not a finite number",
                c.name
            )));
        }
        let mut out = Vec::with_capacity(self.num_features());
        let cats: Vec<Option<&str>> = row.categorical.iter().map(|c| c.as_deref()).collect();
        self.push_features(&row.numeric, &cats, &mut out);
        Ok(out)
    }

    /// Appends the features of one row (cells already checked) to `out`.
    fn push_features(
        &self,
        numeric: &[Option<f64>],
        categorical: &[Option<&str>],
        out: &mut Vec<f32>,
    ) {
        for (col, v) in self.numeric.iter().zip(numeric) {
            out.push(col.scale.apply(v.unwrap_or(col.median)) as f32);
            if let Some(ind) = &col.indicator {
                out.push(ind.apply(if v.is_none() { 1.0 } else { 0.0 }) as f32);
            }
        }
        for (col, v) in self.categorical.iter().zip(categorical) {
            let start = out.len();
            out.resize(start + col.width(), 0.0);
            out[start + col.slot(*v)] = 1.0;
        }
    }

    /// Fits the preprocessing on the rows `train` of `table`.
    ///
    /// # Errors
    /// [`DataError::BadTable`] when a categorical column has more than [`MAX_CATEGORIES`]
    /// categories in training.
    fn fit(table: &RawTable, train: &[usize]) -> Result<Self> {
        let mut numeric = Vec::with_capacity(table.numeric.len());
        let mut names = Vec::new();
        for (name, cells) in table.schema.numeric.iter().zip(&table.numeric) {
            let mut observed: Vec<f64> = train.iter().filter_map(|&i| cells[i]).collect();
            let missing = observed.len() < train.len();
            let median = median(&mut observed);
            let imputed: Vec<f64> = train.iter().map(|&i| cells[i].unwrap_or(median)).collect();
            let indicator = missing.then(|| {
                let ind: Vec<f64> = train
                    .iter()
                    .map(|&i| if cells[i].is_none() { 1.0 } else { 0.0 })
                    .collect();
                Scaler::fit(&ind)
            });
            names.push(name.to_string());
            if indicator.is_some() {
                names.push(format!("{name} (missing)"));
            }
            numeric.push(NumericColumn {
                name: name.to_string(),
                median,
                scale: Scaler::fit(&imputed),
                indicator,
            });
        }
        let mut categorical = Vec::with_capacity(table.categorical.len());
        for (name, cells) in table.schema.categorical.iter().zip(&table.categorical) {
            let seen: BTreeSet<&str> = train.iter().filter_map(|&i| cells[i].as_deref()).collect();
            if seen.len() > MAX_CATEGORIES {
                return Err(DataError::BadTable {
                    path: table.path.clone(),
                    problem: format!(
                        "column `{name}` has {} categories in the training split (at most {MAX_CATEGORIES})",
                        seen.len()
                    ),
                });
            }
            let categories: Vec<String> = seen.into_iter().map(str::to_string).collect();
            names.extend(categories.iter().map(|c| format!("{name}={c}")));
            names.push(format!("{name}=(missing or unseen)"));
            categorical.push(CategoricalColumn {
                name: name.to_string(),
                categories,
            });
        }
        Ok(Self {
            numeric,
            categorical,
            feature_names: names,
        })
    }

    /// The features `[rows.len(), F]` (row-major) of the rows `rows` of `table`.
    fn transform_rows(&self, table: &RawTable, rows: &[usize]) -> Result<Vec<f32>> {
        let f = self.num_features();
        if !matches!(rows.len().checked_mul(f), Some(n) if n <= MAX_FEATURE_VALUES) {
            return Err(DataError::BadTable {
                path: table.path.clone(),
                problem: format!(
                    "{} rows x {f} features exceed the limit of {MAX_FEATURE_VALUES} values",
                    rows.len()
                ),
            });
        }
        let mut out = Vec::with_capacity(rows.len() * f);
        let mut num = Vec::with_capacity(self.numeric.len());
        let mut cat = Vec::with_capacity(self.categorical.len());
        for &i in rows {
            num.clear();
            num.extend(table.numeric.iter().map(|c| c[i]));
            cat.clear();
            cat.extend(table.categorical.iter().map(|c| c[i].as_deref()));
            self.push_features(&num, &cat, &mut out);
        }
        Ok(out)
    }
}

/// The median of `values` (sorted in place): the middle value, or the mean of the two middle
/// values for an even count; 0 when empty.
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Balanced class weights of binary labels: `w_c = n / (2 n_c)` (inverse class frequency,
/// scikit-learn's `class_weight="balanced"`, after King & Zeng 2001), so that the weights
/// average to 1 over the samples and each class carries half of the total weight. Returns
/// `None` when a class has no sample (or a label is above 1).
pub fn balanced_class_weights(labels: &[u32]) -> Option<Vec<f32>> {
    let mut counts = [0usize; 2];
    for &l in labels {
        *counts.get_mut(l as usize)? += 1;
    }
    if counts.contains(&0) {
        return None;
    }
    let n = labels.len() as f64;
    Some(
        counts
            .iter()
            .map(|&c| (n / (2.0 * c as f64)) as f32)
            .collect(),
    )
}

/// A table as read: column-major cells of the schema's columns and the 0/1 labels.
#[derive(Debug)]
struct RawTable {
    path: PathBuf,
    schema: TableSchema,
    /// One vector of cells per numeric column (`None` = missing).
    numeric: Vec<Vec<Option<f64>>>,
    /// One vector of cells per categorical column (`None` = missing).
    categorical: Vec<Vec<Option<String>>>,
    /// 1 for the positive class, 0 for the negative one.
    labels: Vec<u32>,
}

fn is_missing(cell: &str) -> bool {
    MISSING_MARKERS.contains(&cell)
}

fn csv_error(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map_or(0, |p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(source) => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => DataError::MalformedCsv {
            path: path.to_path_buf(),
            line,
            problem: format!(
                "{len} fields where the header has {expected_len} (a truncated or broken line)"
            ),
        },
        csv::ErrorKind::Utf8 { err, .. } => DataError::MalformedCsv {
            path: path.to_path_buf(),
            line,
            problem: format!("invalid UTF-8 ({err})"),
        },
        other => DataError::MalformedCsv {
            path: path.to_path_buf(),
            line,
            problem: format!("{other:?}"),
        },
    }
}

/// Reads `path` against `schema`: checks the header, parses every cell of the named columns.
fn read_table(path: &Path, schema: &TableSchema) -> Result<RawTable> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > MAX_TABLE_BYTES {
        return Err(DataError::BadTable {
            path: path.to_path_buf(),
            problem: format!("{size} bytes, more than the limit of {MAX_TABLE_BYTES}"),
        });
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(file);
    let header = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (j, h) in header.iter().enumerate() {
        if index.insert(h, j).is_some() {
            return Err(DataError::BadTable {
                path: path.to_path_buf(),
                problem: format!("column `{h}` appears twice in the header"),
            });
        }
    }
    let column = |name: &str| {
        index
            .get(name)
            .copied()
            .ok_or_else(|| DataError::MissingColumn {
                path: path.to_path_buf(),
                column: name.to_string(),
                header: header.iter().collect::<Vec<_>>().join(", "),
            })
    };
    let target = column(schema.target)?;
    let numeric_idx = schema
        .numeric
        .iter()
        .map(|c| column(c))
        .collect::<Result<Vec<_>>>()?;
    let categorical_idx = schema
        .categorical
        .iter()
        .map(|c| column(c))
        .collect::<Result<Vec<_>>>()?;

    let mut table = RawTable {
        path: path.to_path_buf(),
        schema: *schema,
        numeric: vec![Vec::new(); numeric_idx.len()],
        categorical: vec![Vec::new(); categorical_idx.len()],
        labels: Vec::new(),
    };
    let mut record = csv::StringRecord::new();
    while reader
        .read_record(&mut record)
        .map_err(|e| csv_error(path, e))?
    {
        let line = record.position().map_or(0, |p| p.line());
        let bad = |column: &str, problem: String| DataError::BadCell {
            path: path.to_path_buf(),
            line,
            column: column.to_string(),
            problem,
        };
        // Fields are present: the reader rejects records of another length than the header.
        let cell = |j: usize| record.get(j).unwrap_or("");
        let label = match cell(target) {
            v if v == schema.positive => 1,
            v if v == schema.negative => 0,
            v if is_missing(v) => {
                return Err(bad(schema.target, "missing target value".into()));
            }
            v => {
                return Err(bad(
                    schema.target,
                    format!(
                        "unknown target value {v:?} (expected {:?} or {:?})",
                        schema.positive, schema.negative
                    ),
                ))
            }
        };
        table.labels.push(label);
        for ((name, &j), col) in schema
            .numeric
            .iter()
            .zip(&numeric_idx)
            .zip(&mut table.numeric)
        {
            let v = cell(j);
            col.push(if is_missing(v) {
                None
            } else {
                match v.parse::<f64>() {
                    Ok(x) if x.is_finite() => Some(x),
                    Ok(_) => return Err(bad(name, format!("{v:?} is not a finite number"))),
                    Err(_) => return Err(bad(name, format!("{v:?} is not a number"))),
                }
            });
        }
        for (&j, col) in categorical_idx.iter().zip(&mut table.categorical) {
            let v = cell(j);
            col.push((!is_missing(v)).then(|| v.to_string()));
        }
    }
    Ok(table)
}

/// Loads the CSV table `path` as a stratified train/test split of preprocessed features.
///
/// Steps: read against `schema` (header checked, cells parsed; empty and `NA` cells are
/// missing), stratified split by class (seeded with `seed`; each class sends
/// `round(count * test_fraction)` rows to the test side), fit a [`TabularPreprocessing`] on the
/// training rows only and apply it to both sides. Each side is a dataset named
/// `"{schema.name}/train"` / `"{schema.name}/test"` with one float input `"features"` of shape
/// `[F]`, targets `Target::Class { num_classes: 2 }` (1 = `schema.positive`) and the task
/// `TaskKind::Binary`, with [`balanced_class_weights`] of the training labels when
/// `config.class_weights`.
///
/// # Errors
/// [`DataError::Io`] when the file cannot be read; [`DataError::MissingColumn`] for a column of
/// the schema that is not in the header; [`DataError::BadCell`] for a non-numeric cell in a
/// numeric column or a missing or unknown target value (naming the file, 1-based line and
/// column); [`DataError::MalformedCsv`] for a record with the wrong number of fields or invalid
/// UTF-8; [`DataError::BadTable`] for a duplicate column, a file over [`MAX_TABLE_BYTES`], too
/// many categories or a class without training rows; [`DataError::InvalidArgument`] for a test
/// fraction outside (0, 1); [`DataError::EmptyDataset`] when a side of the split is empty.
pub fn load_table(
    path: &Path,
    schema: &TableSchema,
    seed: u64,
    config: &TableConfig,
) -> Result<(Split, TabularPreprocessing)> {
    let f = config.test_fraction;
    if !(f > 0.0 && f < 1.0) {
        return Err(DataError::InvalidArgument(format!(
            "{}: test fraction must be in (0, 1), got {f}",
            schema.name
        )));
    }
    let table = read_table(path, schema)?;
    let (train_idx, test_idx) = stratified_split(&table.labels, 2, f, seed);
    for (side, idx) in [("train", &train_idx), ("test", &test_idx)] {
        if idx.is_empty() {
            return Err(DataError::EmptyDataset {
                name: format!("{}/{side} ({})", schema.name, path.display()),
            });
        }
    }
    let train_labels: Vec<u32> = train_idx.iter().map(|&i| table.labels[i]).collect();
    let weights = balanced_class_weights(&train_labels).ok_or_else(|| DataError::BadTable {
        path: path.to_path_buf(),
        problem: format!(
            "the training split needs rows of both classes ({:?} and {:?})",
            schema.negative, schema.positive
        ),
    })?;
    let prep = TabularPreprocessing::fit(&table, &train_idx)?;
    let task = Task {
        class_weights: config.class_weights.then_some(weights),
        ..Task::new(TaskKind::Binary)
    };
    let side = |side: &str, idx: &[usize]| -> Result<Dataset> {
        Dataset::with_task(
            format!("{}/{side}", schema.name),
            vec![Feature::float(
                "features",
                vec![prep.num_features()],
                prep.transform_rows(&table, idx)?,
            )],
            Target::Class {
                labels: idx.iter().map(|&i| table.labels[i]).collect(),
                num_classes: 2,
            },
            task.clone(),
        )
    };
    let split = Split::new(side("train", &train_idx)?, side("test", &test_idx)?);
    Ok((split, prep))
}

/// Loads one of the credit-risk tables from `dir` (default: [`crate::shared_data_dir`]`("credit")`)
/// with `config`; see [`load_table`] for the steps, the output and the errors.
///
/// # Errors
/// [`DataError::SharedDataNotFound`] when `dir` is `None` and no `shared/data/credit` is found; otherwise as
/// [`load_table`].
pub fn credit_table(
    file: CreditFile,
    dir: Option<&Path>,
    seed: u64,
    config: &TableConfig,
) -> Result<(Split, TabularPreprocessing)> {
    let dir = crate::data_dir(dir, "credit")?;
    let schema = file.schema();
    load_table(&dir.join(schema.file), schema, seed, config)
}

/// `credit_data.csv` (dataset `"credit"`): 4,454 rows, 20% stratified test split seeded with
/// `seed`, no class weights; features `[F]` with F = 33 on the shipped file (9 numeric, 3
/// missing indicators, 21 one-hot). See [`credit_table`] and [`load_table`].
///
/// # Errors
/// As [`credit_table`].
pub fn credit_data(dir: Option<&Path>, seed: u64) -> Result<(Split, TabularPreprocessing)> {
    let file = CreditFile::CreditData;
    credit_table(file, dir, seed, &file.default_config())
}

/// `lending_club.csv` (dataset `"lending-club"`): 9,857 rows (5% bad), 20% stratified test
/// split seeded with `seed`, balanced class weights on; features `[F]` (17 numeric and the
/// one-hot blocks of 5 categorical columns). See [`credit_table`] and [`load_table`].
///
/// # Errors
/// As [`credit_table`].
pub fn lending_club(dir: Option<&Path>, seed: u64) -> Result<(Split, TabularPreprocessing)> {
    let file = CreditFile::LendingClub;
    credit_table(file, dir, seed, &file.default_config())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TableSchema = TableSchema {
        name: "t",
        file: "t.csv",
        target: "y",
        positive: "bad",
        negative: "good",
        numeric: &["x", "z"],
        categorical: &["c"],
    };

    const HAND: &str = "y,x,c,z\n\
                        good,1,a,10\n\
                        bad,,b,20\n\
                        good,3,a,NA\n\
                        bad,5,,40\n\
                        good,100,zz,50\n";

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write csv");
        p
    }

    fn load_text(text: &str) -> Result<(Split, TabularPreprocessing)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(&dir, "t.csv", text);
        load_table(&p, &T, 0, &TableConfig::default())
    }

    /// A well-formed table of `n` rows, every third one bad.
    fn table_text(n: usize) -> String {
        let mut s = String::from("y,x,c,z,ignored\n");
        for i in 0..n {
            let y = if i % 3 == 0 { "bad" } else { "good" };
            let x = if i % 7 == 0 {
                String::new()
            } else {
                format!("{}", i * i)
            };
            let c = ["red", "green", "blue"][i % 3];
            s.push_str(&format!("{y},{x},{c},{},whatever\n", i as f64 * 0.5 - 3.0));
        }
        s
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-5 * (1.0 + b.abs())
    }

    #[test]
    fn a_missing_column_names_the_file_and_the_column() {
        let err = load_text("y,x,c\ngood,1,a\nbad,2,b\n").expect_err("no z");
        let msg = err.to_string();
        assert!(matches!(err, DataError::MissingColumn { .. }), "{err:?}");
        assert!(msg.contains("t.csv") && msg.contains("`z`"), "{msg}");
        // the target column too
        let err = load_text("x,c,z\n1,a,2\n").expect_err("no y");
        assert!(err.to_string().contains("missing column `y`"), "{err}");
        // an empty file has no header at all
        let err = load_text("").expect_err("empty");
        assert!(matches!(err, DataError::MissingColumn { .. }), "{err:?}");
    }

    #[test]
    fn a_non_numeric_cell_names_file_line_and_column() {
        let err = load_text("y,x,c,z\ngood,1,a,2\nbad,2,b,3\ngood,3,a,abc\n").expect_err("abc");
        let msg = err.to_string();
        assert!(
            matches!(&err, DataError::BadCell { line: 4, column, .. } if column == "z"),
            "{err:?}"
        );
        assert!(
            msg.contains("t.csv:4:") && msg.contains("`z`") && msg.contains("\"abc\""),
            "{msg}"
        );
        // the line is the editor's line, even after a quoted cell spanning two lines
        let err = load_text("y,x,c,z\ngood,1,\"two\nlines\",2\nbad,1e,b,3\n").expect_err("1e");
        assert!(matches!(err, DataError::BadCell { line: 4, .. }), "{err:?}");
        // infinities are not numbers of a table either
        let err = load_text("y,x,c,z\ngood,inf,a,2\n").expect_err("inf");
        assert!(err.to_string().contains("not a finite number"), "{err}");
    }

    #[test]
    fn an_unknown_or_missing_target_value_is_an_error() {
        let err = load_text("y,x,c,z\ngood,1,a,2\nmaybe,2,b,3\n").expect_err("maybe");
        let msg = err.to_string();
        assert!(matches!(err, DataError::BadCell { line: 3, .. }), "{err:?}");
        assert!(
            msg.contains("t.csv:3:") && msg.contains("`y`") && msg.contains("\"maybe\""),
            "{msg}"
        );
        let err = load_text("y,x,c,z\ngood,1,a,2\n,2,b,3\n").expect_err("empty target");
        assert!(
            err.to_string()
                .contains("t.csv:3: column `y`: missing target value"),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_line_is_a_malformed_csv() {
        let err = load_text("y,x,c,z\ngood,1,a,2\nbad,2").expect_err("truncated");
        let msg = err.to_string();
        assert!(
            matches!(err, DataError::MalformedCsv { line: 3, .. }),
            "{err:?}"
        );
        assert!(
            msg.contains("t.csv:3:") && msg.contains("2 fields"),
            "{msg}"
        );
    }

    #[test]
    fn other_bad_tables() {
        let err = load_text("y,x,c,z,x\ngood,1,a,2,3\n").expect_err("duplicate");
        assert!(err.to_string().contains("`x` appears twice"), "{err}");
        let err = load_text("y,x,c,z\n").expect_err("no rows");
        assert!(matches!(err, DataError::EmptyDataset { .. }), "{err:?}");
        let err = load_text("y,x,c,z\ngood,1,a,2\n").expect_err("one row");
        assert!(matches!(err, DataError::EmptyDataset { .. }), "{err:?}");
        let mut one_class = String::from("y,x,c,z\n");
        for i in 0..10 {
            one_class.push_str(&format!("good,{i},a,1\n"));
        }
        let err = load_text(&one_class).expect_err("one class");
        assert!(err.to_string().contains("both classes"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load_table(&dir.path().join("none.csv"), &T, 0, &TableConfig::default())
            .expect_err("no file");
        assert!(
            matches!(err, DataError::Io { .. }) && err.to_string().contains("none.csv"),
            "{err}"
        );
        let p = write(&dir, "t.csv", &table_text(20));
        for f in [0.0, 1.0, f64::NAN] {
            let cfg = TableConfig {
                test_fraction: f,
                class_weights: false,
            };
            assert!(matches!(
                load_table(&p, &T, 0, &cfg),
                Err(DataError::InvalidArgument(_))
            ));
        }
        let err = credit_table(
            CreditFile::CreditData,
            Some(dir.path()),
            0,
            &TableConfig::default(),
        )
        .expect_err("no credit_data.csv");
        assert!(err.to_string().contains("credit_data.csv"), "{err}");
        let err = crate::load("lending-club", Some(dir.path()), 0).expect_err("by name");
        assert!(err.to_string().contains("lending_club.csv"), "{err}");
    }

    #[test]
    fn imputation_indicators_standardisation_and_one_hot_by_hand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(&dir, "t.csv", HAND);
        let table = read_table(&p, &T).expect("read");
        assert_eq!(table.labels, vec![0, 1, 0, 1, 0]);
        assert_eq!(
            table.numeric[0],
            vec![Some(1.0), None, Some(3.0), Some(5.0), Some(100.0)]
        );
        assert_eq!(table.numeric[1][2], None, "NA is missing");
        assert_eq!(table.categorical[0][3], None, "an empty cell is missing");

        // fitted on rows 0..4 only: row 4 (x = 100, c = zz) is the "test" row
        let prep = TabularPreprocessing::fit(&table, &[0, 1, 2, 3]).expect("fit");
        assert_eq!(
            prep.feature_names,
            [
                "x",
                "x (missing)",
                "z",
                "z (missing)",
                "c=a",
                "c=b",
                "c=(missing or unseen)"
            ]
        );
        let x = &prep.numeric[0];
        // observed 1, 3, 5 -> median 3; imputed 1, 3, 3, 5 -> mean 3, variance 2
        assert_eq!(x.median, 3.0);
        assert!(
            close(x.scale.mean, 3.0) && close(x.scale.std, 2f64.sqrt()),
            "{x:?}"
        );
        // indicator 0, 1, 0, 0 -> mean 1/4, std sqrt(3/16)
        let ind = x.indicator.expect("x had a missing cell in training");
        assert!(
            close(ind.mean, 0.25) && close(ind.std, (3.0f64 / 16.0).sqrt()),
            "{ind:?}"
        );
        let z = &prep.numeric[1];
        // observed 10, 20, 40 -> median 20; imputed 10, 20, 20, 40 -> mean 22.5, variance 118.75
        assert_eq!(z.median, 20.0);
        assert!(
            close(z.scale.mean, 22.5) && close(z.scale.std, 118.75f64.sqrt()),
            "{z:?}"
        );
        assert_eq!(prep.categorical[0].categories, ["a", "b"]);

        let rows = prep.transform_rows(&table, &[1, 4]).expect("transform");
        let s3 = (3.0f64 / 16.0).sqrt();
        let want_1 = [
            0.0,               // x missing -> median 3 -> 0
            (1.0 - 0.25) / s3, // missing
            (20.0 - 22.5) / 118.75f64.sqrt(),
            (0.0 - 0.25) / s3,
            0.0,
            1.0, // c = b
            0.0,
        ];
        let want_4 = [
            (100.0 - 3.0) / 2f64.sqrt(),
            (0.0 - 0.25) / s3,
            (50.0 - 22.5) / 118.75f64.sqrt(),
            (0.0 - 0.25) / s3,
            0.0,
            0.0,
            1.0, // zz was never seen in training: the unseen slot
        ];
        for (got, want) in rows.iter().zip(want_1.iter().chain(&want_4)) {
            assert!(close(f64::from(*got), *want), "{rows:?}");
        }
        // the public row transform agrees
        let row = TableRow {
            numeric: vec![Some(100.0), Some(50.0)],
            categorical: vec![Some("zz".into())],
        };
        assert_eq!(prep.transform(&row).expect("row"), rows[7..]);
        assert!(prep.transform(&TableRow::default()).is_err());
        let inf = TableRow {
            numeric: vec![Some(f64::INFINITY), None],
            categorical: vec![None],
        };
        assert!(prep.transform(&inf).is_err());
    }

    #[test]
    fn the_fit_sees_the_training_rows_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = read_table(&write(&dir, "t.csv", HAND), &T).expect("read");
        // train rows 0, 3, 4: x is never missing there, so no indicator; c has a, zz
        let prep = TabularPreprocessing::fit(&table, &[0, 3, 4]).expect("fit");
        let x = &prep.numeric[0];
        assert_eq!((x.median, x.indicator), (5.0, None));
        assert_eq!(prep.categorical[0].categories, ["a", "zz"]);
        // neither x nor z is missing in those rows: x, z and the 3 one-hot slots
        assert_eq!(prep.num_features(), 1 + 1 + 3);
        assert_eq!(prep.numeric[1].indicator, None);
        // row 1 (test): x missing -> the training median 5; c = b only in test -> unseen slot
        let row = prep.transform_rows(&table, &[1]).expect("transform");
        assert!(close(f64::from(row[0]), x.scale.apply(5.0)), "{row:?}");
        assert_eq!(row[2..], [0.0, 0.0, 1.0]);
        assert_eq!(prep.categorical[0].slot(Some("b")), 2);
        assert_eq!(prep.categorical[0].slot(None), 2);
        assert_eq!(prep.categorical[0].slot(Some("zz")), 1);
    }

    #[test]
    fn load_table_gives_standardised_binary_datasets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(&dir, "t.csv", &table_text(60));
        let cfg = TableConfig {
            test_fraction: 0.25,
            class_weights: true,
        };
        let (split, prep) = load_table(&p, &T, 7, &cfg).expect("load");
        assert_eq!(
            (split.train.name.as_str(), split.test.name.as_str()),
            ("t/train", "t/test")
        );
        assert_eq!((split.train.len(), split.test.len()), (45, 15));
        // 20 bad, 40 good: 5 and 10 of them in the test split
        assert_eq!(split.test.class_counts(), vec![10, 5]);
        let f = prep.num_features();
        assert_eq!(f, 2 + 1 + 4, "x, x (missing), z, c=blue/green/red/other");
        assert_eq!(split.train.input_shapes(), vec![vec![f]]);
        assert_eq!(split.train.inputs[0].name, "features");
        assert_eq!(split.train.task.kind, TaskKind::Binary);
        // balanced weights on the training labels: 30 good, 15 bad of 45
        let w = split.train.task.class_weights.clone().expect("weights");
        assert!(
            close(f64::from(w[0]), 45.0 / 60.0) && close(f64::from(w[1]), 45.0 / 30.0),
            "{w:?}"
        );
        assert_eq!(split.test.task, split.train.task);
        // every standardised training column has mean 0 and std 1; one-hot columns are 0/1
        let v = split.train.float_values().expect("floats");
        for j in 0..3 {
            let col: Vec<f64> = v.iter().skip(j).step_by(f).map(|&x| f64::from(x)).collect();
            let s = Scaler::fit(&col);
            assert!(
                s.mean.abs() < 1e-5 && (s.std - 1.0).abs() < 1e-5,
                "column {j}: {s:?}"
            );
        }
        assert!(v.iter().skip(3).step_by(f).all(|&x| x == 0.0 || x == 1.0));
        for row in v.chunks(f) {
            assert_eq!(row[3..].iter().sum::<f32>(), 1.0, "one hot slot per row");
        }
        // deterministic per seed, different across seeds; weights off by default
        let (again, _) = load_table(&p, &T, 7, &cfg).expect("load");
        assert_eq!(again, split);
        let (other, _) = load_table(&p, &T, 8, &TableConfig::default()).expect("load");
        assert_ne!(other.train.labels(), split.train.labels());
        assert_eq!(other.train.task.class_weights, None);
    }

    #[test]
    fn balanced_weights_average_to_one_over_the_samples() {
        let w = balanced_class_weights(&[0, 0, 0, 1]).expect("both classes");
        assert!(
            close(f64::from(w[0]), 4.0 / 6.0) && close(f64::from(w[1]), 2.0),
            "{w:?}"
        );
        let mean = (3.0 * w[0] + w[1]) / 4.0;
        assert!((mean - 1.0).abs() < 1e-6);
        assert_eq!(balanced_class_weights(&[0, 0]), None);
        assert_eq!(balanced_class_weights(&[0, 2]), None);
        assert!(CreditFile::LendingClub.default_config().class_weights);
        assert!(!CreditFile::CreditData.default_config().class_weights);
    }

    /// ROC AUC of `scores` against 0/1 `labels` by the rank-sum (Mann-Whitney U) formula,
    /// ties sharing their average rank.
    fn auc(scores: &[f32], labels: &[u32]) -> f64 {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let mut ranks = vec![0.0; scores.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
                j += 1;
            }
            let r = (i + j) as f64 / 2.0 + 1.0;
            for &k in &order[i..=j] {
                ranks[k] = r;
            }
            i = j + 1;
        }
        let n1 = labels.iter().filter(|&&l| l == 1).count() as f64;
        let n0 = labels.len() as f64 - n1;
        let r1: f64 = ranks
            .iter()
            .zip(labels)
            .filter(|(_, &l)| l == 1)
            .map(|(r, _)| r)
            .sum();
        (r1 - n1 * (n1 + 1.0) / 2.0) / (n0 * n1)
    }

    #[test]
    fn auc_by_ranks() {
        assert_eq!(auc(&[0.1, 0.2, 0.3, 0.4], &[0, 0, 1, 1]), 1.0);
        assert_eq!(auc(&[0.4, 0.3, 0.2, 0.1], &[0, 0, 1, 1]), 0.0);
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &[0, 1, 0, 1]), 0.5);
        assert_eq!(auc(&[0.1, 0.3, 0.2, 0.4], &[0, 0, 1, 1]), 0.75);
    }

    /// The real tables (skipped when `shared/data/credit` is absent): counts, F, finite
    /// features, and the sanity AUC of the best single standardised column on the test split.
    #[test]
    fn real_credit_tables() {
        let Some(dir) = crate::shared_data_dir("credit") else {
            eprintln!(
                "skipping real_credit_tables: no shared/data/credit (set PRUNEKIT_SHARED_DATA)"
            );
            return;
        };
        let cases = [
            (CreditFile::CreditData, 4454, [3200, 1254], "credit"),
            (CreditFile::LendingClub, 9857, [9340, 517], "lending-club"),
        ];
        for (file, rows, counts, name) in cases {
            let cfg = file.default_config();
            let (split, prep) = credit_table(file, Some(&dir), 0, &cfg).expect("load");
            assert_eq!(split.train.len() + split.test.len(), rows, "{name}");
            let tr = split.train.class_counts();
            let te = split.test.class_counts();
            assert_eq!([tr[0] + te[0], tr[1] + te[1]], counts, "{name}");
            for c in 0..2 {
                let want = (counts[c] as f64 * 0.2).round() as usize;
                assert_eq!(te[c], want, "{name}: class {c} in test");
            }
            assert_eq!(split.train.name, format!("{name}/train"));
            let f = prep.num_features();
            assert_eq!(split.test.input_shapes(), vec![vec![f]]);
            for d in [&split.train, &split.test] {
                assert!(d
                    .float_values()
                    .expect("floats")
                    .iter()
                    .all(|v| v.is_finite()));
            }
            assert_eq!(split.train.task.class_weights.is_some(), cfg.class_weights);
            let x = split.test.float_values().expect("floats");
            let y = split.test.labels().expect("labels");
            let (best, best_auc) = (0..f)
                .map(|j| {
                    let col: Vec<f32> = x.iter().skip(j).step_by(f).copied().collect();
                    let a = auc(&col, y);
                    (j, a.max(1.0 - a))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("features");
            eprintln!(
                "{name}: F = {f}, train {} ({:?}), test {} ({:?}), weights {:?}, best single \
                 column on test: {} AUC {best_auc:.3}",
                split.train.len(),
                tr,
                split.test.len(),
                te,
                split.train.task.class_weights,
                prep.feature_names[best]
            );
            assert!(best_auc > 0.6, "{name}: no informative column ({best_auc})");
            match file {
                CreditFile::CreditData => {
                    assert_eq!(f, 33);
                    let missing: Vec<&str> = prep
                        .numeric
                        .iter()
                        .filter(|c| c.indicator.is_some())
                        .map(|c| c.name.as_str())
                        .collect();
                    assert_eq!(missing, ["Income", "Assets", "Debt"]);
                }
                CreditFile::LendingClub => {
                    // 17 numeric + term 3 + sub_grade 36 + state 51 + verification 4 + emp 13
                    assert_eq!(f, 124);
                    assert!(prep.numeric.iter().all(|c| c.indicator.is_none()));
                    assert_eq!(
                        prep.categorical[1].categories.len(),
                        35,
                        "sub grades A1..G5"
                    );
                }
            }
        }
    }
}
