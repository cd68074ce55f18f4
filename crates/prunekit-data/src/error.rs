//! Error type of the data crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading or batching a dataset.
///
/// Variants that concern a file name the file, so the message alone tells
/// the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The dataset directory does not exist (or is not a directory).
    #[error(
        "{}: no such directory (install the Debian package dataset-fashion-mnist with scripts/install-data.sh or pass --data DIR)",
        .path.display()
    )]
    NoSuchDirectory {
        /// The directory that was looked for.
        path: PathBuf,
    },

    /// A required file of a dataset is missing from its directory.
    #[error("{}: missing {name}.gz (or uncompressed {name})", .dir.display())]
    MissingFile {
        /// The dataset directory.
        dir: PathBuf,
        /// The base name of the file, without `.gz`.
        name: String,
    },

    /// An I/O error while reading a file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The gzip stream of a file is corrupt.
    #[error("{}: corrupt gzip data ({source})", .path.display())]
    BadGzip {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file ends before the header or the data it announces.
    #[error("{}: truncated idx file", .path.display())]
    Truncated {
        /// The file being read.
        path: PathBuf,
    },

    /// The file does not start with an idx magic number (`00 00 tt nn`).
    #[error("{}: bad magic number {magic:02x?} (not an idx file)", .path.display())]
    BadMagic {
        /// The file being read.
        path: PathBuf,
        /// The first (up to) four bytes of the (decompressed) file.
        magic: Vec<u8>,
    },

    /// The idx element type is not unsigned byte (0x08).
    #[error(
        "{}: unsupported idx element type 0x{code:02x} (only unsigned byte, 0x08, is supported)",
        .path.display()
    )]
    UnsupportedIdxType {
        /// The file being read.
        path: PathBuf,
        /// The element type code from the magic number.
        code: u8,
    },

    /// The file holds more bytes than its header announces.
    #[error("{}: at least {extra} unexpected trailing bytes after the idx data", .path.display())]
    TrailingData {
        /// The file being read.
        path: PathBuf,
        /// How many bytes follow the announced data (for a gzip stream, which is never inflated
        /// past the first extra byte: 1, meaning at least one).
        extra: usize,
    },

    /// The header declares more data than an idx file may hold.
    #[error(
        "{}: the header declares dimensions {dims:?}, more than the limit of {limit} bytes",
        .path.display()
    )]
    TooLarge {
        /// The file being read.
        path: PathBuf,
        /// The dimensions of the header.
        dims: Vec<usize>,
        /// The most data bytes allowed ([`crate::idx::MAX_IDX_BYTES`]).
        limit: u64,
    },

    /// An idx file has the wrong number of dimensions for its role.
    #[error("{}: expected {expected}, found dimensions {found:?}", .path.display())]
    BadShape {
        /// The file being read.
        path: PathBuf,
        /// What was expected, in words.
        expected: String,
        /// The dimensions found in the file.
        found: Vec<usize>,
    },

    /// Image and label files disagree on the number of samples.
    #[error(
        "label/image count mismatch: {} has {images} images but {} has {labels} labels",
        .images_path.display(),
        .labels_path.display()
    )]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// Number of images in it.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// Number of labels in it.
        labels: usize,
    },

    /// A label is outside `0..num_classes`.
    #[error("{source_name}: label {label} out of range (expected 0..{num_classes})")]
    BadLabel {
        /// The file or dataset holding the label.
        source_name: String,
        /// The offending label value.
        label: f64,
        /// Number of classes of the dataset.
        num_classes: usize,
    },

    /// Inconsistent buffers given to [`crate::Dataset::new`].
    #[error("dataset {name}: {problem}")]
    Inconsistent {
        /// Name of the dataset.
        name: String,
        /// What is wrong.
        problem: String,
    },

    /// A dataset name that is not one of [`crate::DATASETS`].
    #[error("unknown dataset {name:?} (known datasets: {known})")]
    UnknownDataset {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },

    /// A dataset (or one side of a split) has no samples.
    #[error("dataset {name} is empty")]
    EmptyDataset {
        /// Name of the dataset (or split).
        name: String,
    },

    /// A sample index beyond the end of the dataset.
    #[error("dataset {name}: sample index {index} out of range (dataset has {len} samples)")]
    IndexOutOfRange {
        /// Name of the dataset.
        name: String,
        /// The offending index.
        index: usize,
        /// Number of samples in the dataset.
        len: usize,
    },

    /// An argument outside its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A WAV file that cannot be used: empty, truncated, not a WAV, without samples, ...
    #[error("{}: {problem}", .path.display())]
    BadWav {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        problem: String,
    },

    /// A WAV file of another sample rate than the features expect (refused, not resampled).
    #[error(
        "{}: sample rate {found} Hz, expected {expected} Hz (resample it first, e.g. `sox IN -r {expected} OUT`)",
        .path.display()
    )]
    WrongSampleRate {
        /// The file.
        path: PathBuf,
        /// Its sample rate, in Hz.
        found: u32,
        /// The sample rate expected, in Hz.
        expected: u32,
    },

    /// A file whose name does not follow the dataset's naming pattern.
    #[error("{}: file name does not match {pattern}", .path.display())]
    BadFileName {
        /// The file.
        path: PathBuf,
        /// The expected pattern, e.g. `{digit}_{speaker}_{index}.wav`.
        pattern: String,
    },

    /// A folder without any file of the kind a dataset is made of.
    #[error("{}: no {what}", .dir.display())]
    NoFiles {
        /// The folder.
        dir: PathBuf,
        /// What was looked for, in words.
        what: String,
    },

    /// A shared data set (`shared/data/<name>`) that is not where [`crate::shared_data_dir`]
    /// looks.
    #[error(
        "shared data set {name} not found: {looked} (set PRUNEKIT_SHARED_DATA to the folder holding {name}/, or pass the data folder)"
    )]
    SharedDataNotFound {
        /// The data set's folder name, e.g. `fsdd`.
        name: String,
        /// Where it was looked for, in words.
        looked: String,
    },

    /// A column the table's schema requires is not in the CSV header.
    #[error("{}: missing column `{column}` (the header has: {header})", .path.display())]
    MissingColumn {
        /// The CSV file.
        path: PathBuf,
        /// The missing column.
        column: String,
        /// The header's column names, comma-separated.
        header: String,
    },

    /// A cell that cannot be read as its column's type (a non-numeric cell in a numeric
    /// column, an unknown or missing target value).
    #[error("{}:{line}: column `{column}`: {problem}", .path.display())]
    BadCell {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line of the record in the file (the header is line 1).
        line: u64,
        /// The column's name.
        column: String,
        /// What is wrong, with the offending value.
        problem: String,
    },

    /// A CSV file that is not well-formed (a record with the wrong number of fields, e.g. a
    /// truncated last line, or invalid UTF-8).
    #[error("{}:{line}: malformed CSV: {problem}", .path.display())]
    MalformedCsv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line where the problem was found (0 when unknown).
        line: u64,
        /// What is wrong.
        problem: String,
    },

    /// A table that is well-formed but unusable: a duplicate column, too large, a column with
    /// more categories than allowed, a class with no training samples.
    #[error("{}: {problem}", .path.display())]
    BadTable {
        /// The CSV file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },

    /// A bad line of a table (CSV) file: a missing column, a cell that does not parse, a value
    /// out of range, an id the training file does not know.
    #[error("{}: line {line}: {problem}", .path.display())]
    BadRecord {
        /// The file being read.
        path: PathBuf,
        /// The 1-based line (1 is the header).
        line: u64,
        /// What is wrong, naming the column and the value.
        problem: String,
    },

    /// A dataset's files are not where they were looked for.
    #[error("{}: no {what} found ({fix})", .path.display())]
    NoCorpus {
        /// The folder looked in.
        path: PathBuf,
        /// What was looked for, in words.
        what: String,
        /// How to get it.
        fix: String,
    },

    /// A data file that is corrupt, truncated or inconsistent (the problem says which).
    #[error("{}: {problem}", .path.display())]
    BadFile {
        /// The file (or folder).
        path: PathBuf,
        /// What is wrong, in words.
        problem: String,
    },

    /// An error from the `tokenizers` crate.
    #[error("tokenizer: {context}: {message}")]
    Tokenizer {
        /// What was being done.
        context: String,
        /// The tokenizer's message.
        message: String,
    },

    /// An error of a model's forward pass (text embeddings, generation).
    #[error(transparent)]
    Graph(#[from] prunekit_graph::GraphError),

    /// An error from candle while building tensors.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result type of the data crate.
pub type Result<T> = std::result::Result<T, DataError>;
