//! Datasets for prunekit.
//!
//! * [`digits`]: the UCI 8x8 digits set compiled into smartcore (always available).
//! * [`fashion_mnist`]: Fashion-MNIST from idx files, by default those of the
//!   Debian package `dataset-fashion-mnist` in [`FASHION_MNIST_DIR`]
//!   (install it with `scripts/install-data.sh`).
//! * [`credit_data`], [`lending_club`]: the credit-risk tables of `shared/data/credit` (CSV,
//!   binary target, tabular preprocessing fitted on the training split).
//! * [`spam_assassin`]: the SpamAssassin mail corpus as byte-level BPE token ids, fetched into a
//!   cache outside the repository by `scripts/fetch-spam.sh`.
//! * [`load`]: any of them by name (see [`DATASETS`]).
//!
//! Datasets live in memory as [`Dataset`]s of f32 samples; [`Batches`] yields
//! seeded shuffled mini-batches of indices, [`Dataset::batch`] turns them into
//! candle tensors, optionally through an [`Augment`]ation. Nothing here
//! touches the network.

#![warn(missing_docs)]

mod augment;
mod batches;
pub mod canvas;
mod credit;
mod dataset;
mod digits;
pub mod env;
mod error;
mod fashion;
mod fsdd;
mod idx;
mod movielens;
mod shakespeare;
mod spam;
mod task;
pub mod text;

use std::path::Path;

pub use augment::Augment;
pub use batches::Batches;
pub use credit::{
    balanced_class_weights, credit_data, credit_table, lending_club, load_table, CategoricalColumn,
    CreditFile, NumericColumn, Scaler, TableConfig, TableRow, TableSchema, TabularPreprocessing,
    CREDIT_DATA_SCHEMA, LENDING_CLUB_SCHEMA, MAX_CATEGORIES, MAX_FEATURE_VALUES, MAX_TABLE_BYTES,
    MISSING_MARKERS, TABLE_TEST_FRACTION,
};
pub use dataset::{Batch, Dataset, Feature, Normalization, Split, Target, Values, BOX_ROW};
pub use digits::{digits, DIGITS_CLASSES, DIGITS_SHAPE, DIGITS_TEST_FRACTION};
pub use error::{DataError, Result};
pub use fashion::{
    fashion_canvases, fashion_detection, fashion_mnist, FASHION_DETECT_STRIDE, FASHION_DETECT_TEST,
    FASHION_DETECT_TRAIN, FASHION_MNIST_CLASSES, FASHION_MNIST_CLASS_NAMES, FASHION_MNIST_DIR,
};
pub use fsdd::{
    featurize, fsdd, read_wav, AudioFeatures, FeatureStats, Featurizer, FSDD_CLASSES,
    FSDD_FILE_PATTERN, FSDD_INPUT, FSDD_TEST_INDEX_BELOW, MAX_WAV_BYTES,
};
pub use idx::{encode_idx, read_idx};
pub use movielens::{
    movielens_ranking, movielens_ratings, movielens_ratings_files, movielens_sequences,
    read_movielens, MovieLens, MOVIELENS_FILE, MOVIELENS_HISTORY, MOVIELENS_LIST_LEN,
    MOVIELENS_MAX_RATINGS, MOVIELENS_MAX_VALUES, MOVIELENS_NEGATIVES, MOVIELENS_TEST_FRACTION,
};
pub use shakespeare::{
    shakespeare, shakespeare_cache_dir, train_text_tokenizer, ShakespeareConfig, ShakespeareData,
    MAX_WORKS, MAX_WORK_BYTES, SHAKESPEARE_EOS, SHAKESPEARE_TEST_PLAYS,
};
pub use spam::{
    dedup_mails, encode_mails, mail_text, read_spam_corpus, spam_assassin, spam_cache_dir,
    spam_task, train_tokenizer, Mail, SpamConfig, SpamData, SpamStats, Tokenizer, CHARS_PER_TOKEN,
    MAX_MAILS, MAX_MAIL_BYTES, SPAM_CLS_ID, SPAM_GROUPS, SPAM_INPUT, SPAM_MAILS, SPAM_PAD_ID,
    SPAM_SPECIAL_TOKENS, SPAM_UNK_ID,
};
pub use task::{Direction, Task, TaskKind, IGNORE};

/// A seeded rng (the one constructor of the crate's randomness).
pub(crate) fn rng(seed: u64) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// The folder fetched corpora are cached in: `$PRUNEKIT_CACHE`, else `$HOME/.cache/prunekit`;
/// `None` when neither variable is set. The folder need not exist.
pub(crate) fn cache_root() -> Option<std::path::PathBuf> {
    match std::env::var_os("PRUNEKIT_CACHE") {
        Some(c) if !c.is_empty() => Some(std::path::PathBuf::from(c)),
        _ => Some(
            std::path::PathBuf::from(std::env::var_os("HOME")?)
                .join(".cache")
                .join("prunekit"),
        ),
    }
}

/// The environment variable naming the folder that holds the shared data sets (`fsdd/`,
/// `credit/`, `movielens/`, ...), when they are not in `shared/data` of the working directory or a
/// folder above it.
pub const SHARED_DATA_ENV: &str = "PRUNEKIT_SHARED_DATA";

/// Where the shared data set `name` (a folder such as `"fsdd"`) lives: `$PRUNEKIT_SHARED_DATA/name`
/// when the variable is set, otherwise `shared/data/name` in the working directory or the first
/// folder above it that has one (a checkout sits beside `../shared`). `None` when none exists; the
/// loaders then say where they looked.
pub fn shared_data_dir(name: &str) -> Option<std::path::PathBuf> {
    if let Some(root) = std::env::var_os(SHARED_DATA_ENV) {
        let p = Path::new(&root).join(name);
        return p.is_dir().then_some(p);
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|a| a.join("shared").join("data").join(name))
        .find(|p| p.is_dir())
}

/// Where the shared data set `name` was looked for, in words (for the error when it is absent).
pub(crate) fn looked_for(name: &str) -> String {
    match std::env::var_os(SHARED_DATA_ENV) {
        Some(root) => format!(
            "{}={} has no folder {name}",
            SHARED_DATA_ENV,
            Path::new(&root).display()
        ),
        None => format!(
            "no shared/data/{name} in {} or any folder above it, and {} is not set",
            std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "the working directory".into()),
            SHARED_DATA_ENV
        ),
    }
}

/// `dir`, or the shared data set `name` ([`shared_data_dir`]).
///
/// # Errors
/// [`DataError::SharedDataNotFound`], saying where it looked, when `dir` is `None` and the
/// shared folder is absent.
pub(crate) fn data_dir(dir: Option<&Path>, name: &str) -> Result<std::path::PathBuf> {
    match dir {
        Some(d) => Ok(d.to_path_buf()),
        None => shared_data_dir(name).ok_or_else(|| DataError::SharedDataNotFound {
            name: name.into(),
            looked: looked_for(name),
        }),
    }
}

/// Names accepted by [`load`].
pub const DATASETS: &[&str] = &[
    "digits",
    "fashion-mnist",
    "fashion-detect",
    "fsdd",
    "credit",
    "lending-club",
    "movielens",
    "movielens-rank",
    "movielens-seq",
    "spam",
    "shakespeare",
];

/// Loads a dataset by name, each with its task (see [`DATASETS`]):
///
/// * `"digits"`: split with `seed` and [`DIGITS_TEST_FRACTION`]; `dir` is ignored.
/// * `"fashion-mnist"`: from `dir`, default [`FASHION_MNIST_DIR`]; the official split.
/// * `"fashion-detect"`: object detection on [`FASHION_DETECT_TRAIN`] / [`FASHION_DETECT_TEST`]
///   96x96 canvases of 1 to 4 Fashion-MNIST items ([`fashion_detection`] with
///   [`canvas::CanvasConfig::default`], stride [`FASHION_DETECT_STRIDE`]), seeded; train
///   canvases use the official training images only, test canvases the test images.
/// * `"fsdd"`: the Free Spoken Digit Dataset as `[64, 20]` MFCC sequences of
///   [`AudioFeatures::default`], from `dir`, default [`shared_data_dir`]`("fsdd")`; the
///   conventional split (`seed` is ignored); call [`fsdd`] for the fitted [`FeatureStats`].
/// * `"credit"`, `"lending-club"`: the credit-risk tables ([`credit_data`], [`lending_club`]),
///   from `dir`, default `shared/data/credit`, split with `seed`, standardised by the fitted
///   [`TabularPreprocessing`].
/// * `"movielens"`, `"movielens-rank"`, `"movielens-seq"`: rating regression
///   ([`movielens_ratings`]), the NCF ranking protocol ([`movielens_ranking`]) and next-item
///   histories ([`movielens_sequences`]), from `dir`, default `shared/data/movielens`, seeded.
/// * `"spam"`: the SpamAssassin corpus ([`spam_assassin`] with [`SpamConfig::default`] but
///   left padding, so that a recurrent model's last step reads the mail), from `dir`, default
///   [`spam_cache_dir`], split with `seed`; F1 of the spam class is the headline; the trained
///   tokenizer.json is in [`Split::tokenizer`].
/// * `"shakespeare"`: the complete works as a language-modelling task ([`shakespeare`] with
///   [`ShakespeareConfig::default`]: byte-level BPE of 2,048 tokens, windows of 128, *Macbeth*
///   and *Twelfth Night* held out and scored with stride 64), from `dir`, default
///   [`shakespeare_cache_dir`]; `seed` is ignored (the split is by play).
///
/// The datasets that come normalised by their loader return the identity [`Normalization`].
///
/// # Errors
/// An unknown name lists the known ones; each loader's errors name the file and the problem.
pub fn load(name: &str, dir: Option<&Path>, seed: u64) -> Result<(Split, Normalization)> {
    match name {
        "digits" => digits(seed, DIGITS_TEST_FRACTION),
        "fashion-mnist" => fashion_mnist(dir),
        "fashion-detect" => fashion_detection(
            dir,
            FASHION_DETECT_TRAIN,
            FASHION_DETECT_TEST,
            &canvas::CanvasConfig::default(),
            FASHION_DETECT_STRIDE,
            seed,
        ),
        // already normalised per feature (the stats are returned by `fsdd` itself)
        "fsdd" => fsdd(dir, &AudioFeatures::default()).map(|(s, _)| (s, Normalization::default())),
        "credit" => credit_data(dir, seed).map(|(split, _)| (split, Normalization::default())),
        "lending-club" => {
            lending_club(dir, seed).map(|(split, _)| (split, Normalization::default()))
        }
        // MovieLens (from `dir`, default `shared_data_dir("movielens")`): rating regression,
        // NCF ranking and next-item sequences, seeded; ids need no normalisation
        "movielens" => movielens_ratings(dir, seed, MOVIELENS_TEST_FRACTION)
            .map(|s| (s, Normalization::default())),
        "movielens-rank" => movielens_ranking(dir, seed, MOVIELENS_NEGATIVES, MOVIELENS_LIST_LEN)
            .map(|s| (s, Normalization::default())),
        "movielens-seq" => {
            movielens_sequences(dir, seed, MOVIELENS_HISTORY).map(|s| (s, Normalization::default()))
        }
        // left-padded: a recurrent model's last step reads the mail, not padding
        "spam" => spam_assassin(
            dir,
            seed,
            &SpamConfig {
                pad_left: true,
                ..SpamConfig::default()
            },
        )
        .map(|d| (d.split, Normalization::default())),
        "shakespeare" => shakespeare(dir, &ShakespeareConfig::default())
            .map(|d| (d.split, Normalization::default())),
        _ => Err(DataError::UnknownDataset {
            name: name.to_string(),
            known: DATASETS.join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_by_name() {
        let (split, norm) = load("digits", None, 3).expect("digits");
        let (direct, dnorm) = digits(3, DIGITS_TEST_FRACTION).expect("digits");
        assert_eq!(split, direct);
        assert_eq!(norm, dnorm);

        let err = load("cifar-10", None, 0).expect_err("unknown");
        let msg = err.to_string();
        assert!(
            msg.contains("cifar-10") && msg.contains("digits") && msg.contains("fashion-mnist"),
            "{msg}"
        );

        let err =
            load("fashion-mnist", Some(Path::new("/nonexistent/fm")), 0).expect_err("missing dir");
        assert!(matches!(err, DataError::NoSuchDirectory { .. }), "{err:?}");
    }
}
