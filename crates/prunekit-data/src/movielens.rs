//! MovieLens ratings (GroupLens; the 100,004-rating cut of ml-latest-small in
//! `shared/data/movielens/ratings.csv`, see its SOURCE.md) as three datasets:
//!
//! * [`movielens_ratings`]: rating regression over (user, item) pairs, a per-user held-out split
//!   (and [`movielens_ratings_files`] for separate train and test files);
//! * [`movielens_ranking`]: implicit-feedback ranking with the protocol of He et al. 2017,
//!   "Neural Collaborative Filtering", section 4.1 (leave-latest-out, 99 sampled negatives);
//! * [`movielens_sequences`]: next-item prediction from each user's time-ordered history
//!   (GRU4Rec style, Hidasi et al. 2016, "Session-based Recommendations with Recurrent Neural
//!   Networks").
//!
//! The file is a CSV with a header naming at least the columns `movieId`, `userId`, `rating`
//! (0.5 to 5 stars) and `timestamp` (seconds since 1970); other columns (`title`, `year`,
//! `genres`) are ignored. Titles are quoted and may hold commas (the `csv` crate reads them).
//!
//! Users and movies are mapped to dense ids `0..U` and `0..I` in ascending order of their
//! original `userId` / `movieId`, over the whole file (train and test alike, so the ids and the
//! embedding sizes do not depend on the seed or the split); [`MovieLens::users`] and
//! [`MovieLens::movies`] give the original id of each dense id.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use rand::seq::{index, SliceRandom};
use rand::Rng;
use serde::Deserialize;

use crate::dataset::{Dataset, Feature, Split, Target};
use crate::error::{DataError, Result};
use crate::task::{Task, TaskKind};

/// The ratings file in a MovieLens directory.
pub const MOVIELENS_FILE: &str = "ratings.csv";
/// The fraction of each user's ratings [`crate::load`] holds out for `"movielens"`.
pub const MOVIELENS_TEST_FRACTION: f64 = 0.1;
/// Sampled negatives per training positive [`crate::load`] uses for `"movielens-rank"` (the NCF
/// paper's 4).
pub const MOVIELENS_NEGATIVES: usize = 4;
/// Candidates per test list [`crate::load`] uses for `"movielens-rank"`: the held-out item and 99
/// sampled negatives (the NCF paper's protocol).
pub const MOVIELENS_LIST_LEN: usize = 100;
/// History length [`crate::load`] uses for `"movielens-seq"`.
pub const MOVIELENS_HISTORY: usize = 20;
/// The most ratings a file may hold (a bound before anything grows with the file).
pub const MOVIELENS_MAX_RATINGS: usize = 30_000_000;
/// The most values one input of a built dataset may hold (samples times values per sample).
pub const MOVIELENS_MAX_VALUES: usize = 200_000_000;

/// The columns a ratings file must have (in any order; others are ignored).
const COLUMNS: [&str; 4] = ["movieId", "userId", "rating", "timestamp"];
/// The header of the shared file, for messages.
const HEADER: &str = "movieId,title,year,genres,userId,rating,timestamp";
/// The valid rating range, in stars.
const RATING_RANGE: std::ops::RangeInclusive<f32> = 0.5..=5.0;

/// One line of the file, by column name.
#[derive(Debug, Deserialize)]
struct Row {
    #[serde(rename = "movieId")]
    movie: u32,
    #[serde(rename = "userId")]
    user: u32,
    rating: f32,
    timestamp: i64,
}

/// A rating as read, with the original ids and its line in the file.
#[derive(Clone, Copy, Debug)]
struct RawRating {
    user: u32,
    movie: u32,
    rating: f32,
    timestamp: i64,
    line: u64,
}

/// A MovieLens ratings file in memory, with dense ids.
///
/// Rating `k` (in file order) is `rating[k]` stars given by dense user `user[k]` to dense item
/// `item[k]` at `timestamp[k]` (seconds since 1970).
#[derive(Clone, Debug, PartialEq)]
pub struct MovieLens {
    /// The file read.
    pub path: PathBuf,
    /// The original `userId` of each dense user id, ascending.
    pub users: Vec<u32>,
    /// The original `movieId` of each dense item id, ascending.
    pub movies: Vec<u32>,
    /// Dense user id of each rating.
    pub user: Vec<u32>,
    /// Dense item id of each rating.
    pub item: Vec<u32>,
    /// The rating, 0.5 to 5 stars.
    pub rating: Vec<f32>,
    /// Seconds since 1970.
    pub timestamp: Vec<i64>,
}

impl MovieLens {
    /// Number of ratings.
    pub fn len(&self) -> usize {
        self.rating.len()
    }

    /// Whether there are no ratings (never true for a file that [`read_movielens`] accepted).
    pub fn is_empty(&self) -> bool {
        self.rating.is_empty()
    }

    /// Number of users `U` (dense ids `0..U`).
    pub fn num_users(&self) -> usize {
        self.users.len()
    }

    /// Number of movies `I` (dense ids `0..I`).
    pub fn num_items(&self) -> usize {
        self.movies.len()
    }

    /// The indices of each user's ratings, in file order, by dense user id.
    fn by_user(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.num_users()];
        for (k, &u) in self.user.iter().enumerate() {
            out[u as usize].push(k);
        }
        out
    }

    /// The indices of each user's ratings in time order (timestamp, then movieId: equal
    /// timestamps are ordered by ascending movieId, so the largest movieId is the latest).
    fn histories(&self) -> Vec<Vec<usize>> {
        let mut out = self.by_user();
        for h in &mut out {
            h.sort_by_key(|&k| (self.timestamp[k], self.item[k]));
        }
        out
    }
}

fn bad(path: &Path, line: u64, problem: impl Into<String>) -> DataError {
    DataError::BadRecord {
        path: path.to_path_buf(),
        line,
        problem: problem.into(),
    }
}

/// A csv error as a one-line error naming the file and the line.
fn csv_error(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map_or(0, |p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(source) => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => bad(
            path,
            line,
            format!("{len} fields where the header has {expected_len}"),
        ),
        csv::ErrorKind::Utf8 { err, .. } => bad(
            path,
            line,
            format!("field {} is not valid UTF-8", err.field() + 1),
        ),
        other => bad(path, line, format!("{other:?}")),
    }
}

/// Reads the ratings of one file with their original ids, checking the header and every cell.
fn read_raw(path: &Path) -> Result<Vec<RawRating>> {
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(BufReader::new(file));
    let headers = rdr.headers().map_err(|e| csv_error(path, e))?.clone();
    if headers.is_empty() || (headers.len() == 1 && headers[0].trim().is_empty()) {
        return Err(bad(
            path,
            1,
            format!("the file is empty (expected the header {HEADER} and ratings)"),
        ));
    }
    let column = |name: &str| headers.iter().position(|h| h == name);
    for c in COLUMNS {
        if column(c).is_none() {
            return Err(bad(
                path,
                1,
                format!(
                    "missing column `{c}` (the header is `{}`; expected {HEADER})",
                    headers.iter().collect::<Vec<_>>().join(",")
                ),
            ));
        }
    }
    let rating_col = column("rating").unwrap_or(0);
    let mut out = Vec::new();
    let mut rec = csv::StringRecord::new();
    while rdr.read_record(&mut rec).map_err(|e| csv_error(path, e))? {
        let line = rec.position().map_or(0, |p| p.line());
        if out.len() >= MOVIELENS_MAX_RATINGS {
            return Err(bad(
                path,
                line,
                format!("more than {MOVIELENS_MAX_RATINGS} ratings"),
            ));
        }
        let row: Row = rec.deserialize(Some(&headers)).map_err(|e| {
            let problem = match e.kind() {
                csv::ErrorKind::Deserialize { err, .. } => match err.field() {
                    Some(f) => {
                        let f = f as usize;
                        format!(
                            "column `{}`: cannot read `{}` ({})",
                            headers.get(f).unwrap_or("?"),
                            rec.get(f).unwrap_or(""),
                            err.kind()
                        )
                    }
                    None => err.kind().to_string(),
                },
                other => format!("{other:?}"),
            };
            bad(path, line, problem)
        })?;
        if !RATING_RANGE.contains(&row.rating) {
            return Err(bad(
                path,
                line,
                format!(
                    "column `rating`: {} is outside {}-{} stars",
                    rec.get(rating_col).unwrap_or("?"),
                    RATING_RANGE.start(),
                    RATING_RANGE.end()
                ),
            ));
        }
        out.push(RawRating {
            user: row.user,
            movie: row.movie,
            rating: row.rating,
            timestamp: row.timestamp,
            line,
        });
    }
    if out.is_empty() {
        return Err(bad(path, 2, "no ratings after the header"));
    }
    Ok(out)
}

/// Sorted distinct values.
fn distinct(v: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut v: Vec<u32> = v.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Dense id of `raw` among the sorted `ids`.
fn dense(ids: &[u32], raw: u32) -> Option<u32> {
    ids.binary_search(&raw).ok().map(|i| i as u32)
}

/// Maps `raw` onto the dense ids of `users` and `movies`; an id they do not hold is an error
/// naming the rating's line and `known_from` (the file the ids come from).
fn densify(
    path: &Path,
    raw: &[RawRating],
    users: Vec<u32>,
    movies: Vec<u32>,
    known_from: &Path,
) -> Result<MovieLens> {
    let n = raw.len();
    let mut out = MovieLens {
        path: path.to_path_buf(),
        user: Vec::with_capacity(n),
        item: Vec::with_capacity(n),
        rating: Vec::with_capacity(n),
        timestamp: Vec::with_capacity(n),
        users,
        movies,
    };
    for r in raw {
        let unknown = |what: &str, id: u32| {
            bad(
                path,
                r.line,
                format!(
                    "{what} {id} is not in the training file {}",
                    known_from.display()
                ),
            )
        };
        let u = dense(&out.users, r.user).ok_or_else(|| unknown("user", r.user))?;
        let i = dense(&out.movies, r.movie).ok_or_else(|| unknown("movie", r.movie))?;
        out.user.push(u);
        out.item.push(i);
        out.rating.push(r.rating);
        out.timestamp.push(r.timestamp);
    }
    Ok(out)
}

/// Reads a MovieLens ratings CSV, with users and movies mapped to dense ids in ascending order of
/// their original ids (see [`MovieLens`]).
///
/// # Errors
/// One-line errors naming the file and the line: [`DataError::Io`] when the file cannot be read,
/// [`DataError::BadRecord`] for an empty file, a missing column (`movieId`, `userId`, `rating`,
/// `timestamp`), a line with another number of fields than the header, an id or timestamp that
/// is not an integer, a rating that is not a number or lies outside 0.5-5, no ratings at all, or
/// more than [`MOVIELENS_MAX_RATINGS`].
pub fn read_movielens(path: &Path) -> Result<MovieLens> {
    let raw = read_raw(path)?;
    let users = distinct(raw.iter().map(|r| r.user));
    let movies = distinct(raw.iter().map(|r| r.movie));
    densify(path, &raw, users, movies, path)
}

/// The ratings file of `dir`, default `shared_data_dir("movielens")`.
fn ratings_path(dir: Option<&Path>) -> Result<PathBuf> {
    let dir = crate::data_dir(dir, "movielens")?;
    if !dir.is_dir() {
        return Err(DataError::NoSuchDirectory { path: dir });
    }
    Ok(dir.join(MOVIELENS_FILE))
}

fn check_values(name: &str, samples: usize, per_sample: usize) -> Result<()> {
    match samples.checked_mul(per_sample) {
        Some(v) if v <= MOVIELENS_MAX_VALUES => Ok(()),
        _ => Err(DataError::InvalidArgument(format!(
            "{name}: {samples} samples of {per_sample} values exceed the limit of \
             {MOVIELENS_MAX_VALUES} values"
        ))),
    }
}

/// Samples of (user, item) id pairs: the inputs `"user"` and `"item"`, one id each (per-sample
/// shape `[]`).
fn pair_inputs(user: Vec<u32>, item: Vec<u32>) -> Vec<Feature> {
    vec![
        Feature::ids("user", vec![], user),
        Feature::ids("item", vec![], item),
    ]
}

/// A rating-regression dataset of the ratings at `idx` of `data`.
fn rating_set(name: &str, data: &MovieLens, idx: &[usize]) -> Result<Dataset> {
    Dataset::with_task(
        name,
        pair_inputs(
            idx.iter().map(|&k| data.user[k]).collect(),
            idx.iter().map(|&k| data.item[k]).collect(),
        ),
        Target::Regression {
            values: idx.iter().map(|&k| data.rating[k]).collect(),
            dim: 1,
        },
        Task::new(TaskKind::Regression),
    )
}

/// MovieLens rating regression with a per-user held-out split.
///
/// Reads `dir/ratings.csv` (`dir` default `shared_data_dir("movielens")`; see the module docs for
/// the dense ids, which span the whole file). Each user's ratings are shuffled with `seed` and
/// `round(n * test_fraction)` of them, at least 1 and at most `n - 1`, go to the test set; a user
/// with a single rating keeps it in the training set. Both sets keep file order.
///
/// Samples: inputs `"user"` and `"item"`, one dense id each (per-sample shape `[]`, so an
/// embedding gives `[D]`); target `Target::Regression { dim: 1 }`, the rating in stars (0.5 to
/// 5, not normalised); task [`TaskKind::Regression`] (MSE; RMSE and MAE in stars). Names
/// `movielens/train` and `movielens/test`. On the shared file (100,004 ratings of 671 users on
/// 9,066 movies, every user with at least 20) `test_fraction` 0.1 holds out 10,031 ratings
/// (89,973 left to train on), whatever the seed.
///
/// # Errors
/// [`DataError::InvalidArgument`] unless `0 < test_fraction < 1`;
/// [`DataError::SharedDataNotFound`] / [`DataError::NoSuchDirectory`] when the directory is missing;
/// the errors of [`read_movielens`].
pub fn movielens_ratings(dir: Option<&Path>, seed: u64, test_fraction: f64) -> Result<Split> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(DataError::InvalidArgument(format!(
            "movielens: test fraction must be in (0, 1), got {test_fraction}"
        )));
    }
    let data = read_movielens(&ratings_path(dir)?)?;
    let mut rng = crate::rng(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for mut ks in data.by_user() {
        let n = ks.len();
        let held = if n >= 2 {
            ((n as f64 * test_fraction).round() as usize).clamp(1, n - 1)
        } else {
            0
        };
        ks.shuffle(&mut rng);
        test.extend_from_slice(&ks[..held]);
        train.extend_from_slice(&ks[held..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok(Split::new(
        rating_set("movielens/train", &data, &train)?,
        rating_set("movielens/test", &data, &test)?,
    ))
}

/// MovieLens rating regression from separate training and test files (the columns of
/// [`read_movielens`]). The dense ids come from the training file alone (ascending original
/// ids), so every user and movie of the test file must appear in the training file. Samples,
/// targets and task as in [`movielens_ratings`]; both sets keep file order.
///
/// # Errors
/// The errors of [`read_movielens`] for either file, and [`DataError::BadRecord`] naming the
/// test file, the line and the id for a user or movie that the training file does not have.
pub fn movielens_ratings_files(train: &Path, test: &Path) -> Result<Split> {
    let raw_train = read_raw(train)?;
    let raw_test = read_raw(test)?;
    let users = distinct(raw_train.iter().map(|r| r.user));
    let movies = distinct(raw_train.iter().map(|r| r.movie));
    let test_data = densify(test, &raw_test, users.clone(), movies.clone(), train)?;
    let train_data = densify(train, &raw_train, users, movies, train)?;
    let all = |d: &MovieLens| (0..d.len()).collect::<Vec<_>>();
    Ok(Split::new(
        rating_set("movielens/train", &train_data, &all(&train_data))?,
        rating_set("movielens/test", &test_data, &all(&test_data))?,
    ))
}

/// MovieLens as implicit-feedback ranking, with the evaluation protocol of He et al. 2017,
/// "Neural Collaborative Filtering", section 4.1.
///
/// Every rating is an interaction (a user's repeated ratings of one movie count once, at the
/// latest). Each user's latest interaction (by timestamp; equal timestamps are ordered by
/// movieId, the largest latest) is held out. The test set holds one list of `list_len`
/// consecutive samples per user, in dense user order: the held-out item first (label 1), then
/// `list_len - 1` distinct items the user never interacted with, sampled uniformly with `seed`
/// (label 0). The training set holds every other interaction (label 1), in time order, each
/// followed by `negatives` items the user never interacted with (label 0), drawn uniformly with
/// replacement. Negatives avoid every interaction of the user, the held-out one included.
///
/// The paper re-samples the training negatives every epoch; here they are sampled once, with
/// `seed`, so that the dataset is a fixed, reproducible set (train for more epochs over other
/// seeds to approach the paper's schedule).
///
/// Samples: inputs `"user"` and `"item"` (one dense id each, per-sample shape `[]`), target
/// `Target::Class { num_classes: 2 }` (1 = interacted). Task: [`TaskKind::Binary`] for the
/// training set (`movielens-rank/train`), [`TaskKind::Ranking`] `{ list_len }` for the test set
/// (`movielens-rank/test`; hit rate and NDCG at 10 of the held-out item among its list). On the
/// shared file: 99,333 training positives (496,665 samples with 4 negatives) and 671 lists.
///
/// # Errors
/// [`DataError::InvalidArgument`] for `list_len < 2` or a dataset past
/// [`MOVIELENS_MAX_VALUES`]; [`DataError::Inconsistent`] naming the user when a user has fewer
/// than `list_len - 1` items left to sample; the errors of [`read_movielens`] and of the
/// directory lookup (as [`movielens_ratings`]).
pub fn movielens_ranking(
    dir: Option<&Path>,
    seed: u64,
    negatives: usize,
    list_len: usize,
) -> Result<Split> {
    if list_len < 2 {
        return Err(DataError::InvalidArgument(format!(
            "movielens-rank: a ranking list needs at least 2 candidates, got {list_len}"
        )));
    }
    let data = read_movielens(&ratings_path(dir)?)?;
    let items = data.num_items();
    check_values("movielens-rank/test", data.num_users(), list_len)?;
    check_values(
        "movielens-rank/train",
        data.len(),
        negatives.saturating_add(1),
    )?;
    let mut rng = crate::rng(seed);
    let (mut tr_u, mut tr_i, mut tr_y) = (Vec::new(), Vec::new(), Vec::new());
    let (mut te_u, mut te_i, mut te_y) = (Vec::new(), Vec::new(), Vec::new());
    let mut seen = vec![false; items];
    for (u, hist) in data.histories().into_iter().enumerate() {
        // one interaction per item, at its latest time, in time order
        let mut inter: Vec<u32> = Vec::with_capacity(hist.len());
        for &k in hist.iter().rev() {
            let i = data.item[k];
            if !seen[i as usize] {
                seen[i as usize] = true;
                inter.push(i);
            }
        }
        inter.reverse();
        let unseen: Vec<u32> = (0..items as u32).filter(|&i| !seen[i as usize]).collect();
        for &i in &inter {
            seen[i as usize] = false;
        }
        let Some((&latest, earlier)) = inter.split_last() else {
            continue;
        };
        if unseen.len() < list_len - 1 {
            return Err(DataError::Inconsistent {
                name: "movielens-rank".into(),
                problem: format!(
                    "user {} interacted with {} of {items} movies: fewer than {} left to sample \
                     as negatives",
                    data.users[u],
                    inter.len(),
                    list_len - 1
                ),
            });
        }
        let u = u as u32;
        te_u.extend(std::iter::repeat_n(u, list_len));
        te_i.push(latest);
        te_y.push(1);
        for j in index::sample(&mut rng, unseen.len(), list_len - 1) {
            te_i.push(unseen[j]);
            te_y.push(0);
        }
        for &i in earlier {
            tr_u.push(u);
            tr_i.push(i);
            tr_y.push(1);
            for _ in 0..negatives {
                tr_u.push(u);
                tr_i.push(unseen[rng.random_range(0..unseen.len())]);
                tr_y.push(0);
            }
        }
    }
    let class = |labels| Target::Class {
        labels,
        num_classes: 2,
    };
    Ok(Split::new(
        Dataset::with_task(
            "movielens-rank/train",
            pair_inputs(tr_u, tr_i),
            class(tr_y),
            Task::new(TaskKind::Binary),
        )?,
        Dataset::with_task(
            "movielens-rank/test",
            pair_inputs(te_u, te_i),
            class(te_y),
            Task::new(TaskKind::Ranking { list_len }),
        )?,
    ))
}

/// MovieLens as next-item prediction over the whole catalogue (GRU4Rec style: Hidasi et al.
/// 2016, "Session-based Recommendations with Recurrent Neural Networks", with a user's whole
/// history as the session).
///
/// Each user's items in time order (timestamp, then movieId). The test set holds one sample per
/// user (`movielens-seq/test`, dense user order): the last item is the target and the `len`
/// items before it the input. The training set (`movielens-seq/train`) holds, for every user
/// and every earlier position `p` from 1 (the second item) to `n - 2`, the item at `p` as the
/// target and the up to `len` items before it as the input. Inputs shorter than `len` are
/// left-padded with the PAD id `I` (the number of movies), so an embedding of the history needs
/// `I + 1` rows. Users with fewer than 3 interactions are left out (they give no training
/// sample with a history besides a test sample); the shared file has none (every user has at
/// least 20). `seed` is unused: the split is deterministic (the parameter keeps the signature of
/// the other loaders).
///
/// Samples: input `"history"`, ids of per-sample shape `[len]` (oldest first, the most recent
/// last); target `Target::Class { num_classes: I }`, the next item's dense id; task
/// [`TaskKind::NextItem`] (hit rate and NDCG at 10 over the catalogue). On the shared file:
/// 98,662 training samples and 671 test samples.
///
/// # Errors
/// [`DataError::InvalidArgument`] for `len == 0` or a dataset past [`MOVIELENS_MAX_VALUES`];
/// [`DataError::EmptyDataset`] when no user has 3 interactions; the errors of [`read_movielens`]
/// and of the directory lookup (as [`movielens_ratings`]).
pub fn movielens_sequences(dir: Option<&Path>, seed: u64, len: usize) -> Result<Split> {
    let _ = seed;
    if len == 0 {
        return Err(DataError::InvalidArgument(
            "movielens-seq: the history length must be at least 1".into(),
        ));
    }
    let data = read_movielens(&ratings_path(dir)?)?;
    check_values("movielens-seq/train", data.len(), len)?;
    let items = data.num_items();
    let pad = items as u32;
    let (mut tr_x, mut tr_y, mut te_x, mut te_y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let window = |seq: &[u32], p: usize, out: &mut Vec<u32>| {
        let from = p.saturating_sub(len);
        out.extend(std::iter::repeat_n(pad, len - (p - from)));
        out.extend_from_slice(&seq[from..p]);
    };
    for hist in data.histories() {
        if hist.len() < 3 {
            continue;
        }
        let seq: Vec<u32> = hist.iter().map(|&k| data.item[k]).collect();
        let last = seq.len() - 1;
        for p in 1..last {
            window(&seq, p, &mut tr_x);
            tr_y.push(seq[p]);
        }
        window(&seq, last, &mut te_x);
        te_y.push(seq[last]);
    }
    if te_y.is_empty() {
        return Err(DataError::EmptyDataset {
            name: "movielens-seq (no user has 3 interactions)".into(),
        });
    }
    let set = |name: &str, x, y| {
        Dataset::with_task(
            name,
            vec![Feature::ids("history", vec![len], x)],
            Target::Class {
                labels: y,
                num_classes: items,
            },
            Task::new(TaskKind::NextItem),
        )
    };
    Ok(Split::new(
        set("movielens-seq/train", tr_x, tr_y)?,
        set("movielens-seq/test", te_x, te_y)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Values;
    use std::collections::HashSet;
    use std::io::Write;

    /// A directory holding `ratings.csv` with `body` after the shared file's header.
    fn dir_with(body: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), MOVIELENS_FILE, &format!("{HEADER}\n{body}"));
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        let mut f = File::create(&p).expect("create");
        f.write_all(text.as_bytes()).expect("write");
        p
    }

    /// Synthetic ratings: user u (10, 20, 30) rates `n_u` movies at increasing times; titles with
    /// commas and quotes like the real file.
    fn synthetic() -> String {
        let mut s = String::new();
        for (u, n) in [(10u32, 6u32), (20, 4), (30, 2)] {
            for j in 0..n {
                let movie = 100 + (u + 7 * j) % 40;
                let rating = 0.5 + f32::from((j % 10) as u8) * 0.5;
                s.push_str(&format!(
                    "{movie},\"Movie, The ({j})\",1999,Drama|Comedy,{u},{rating:.1},{}\n",
                    1000 + 10 * j
                ));
            }
        }
        s
    }

    fn ids(d: &Dataset, k: usize) -> &[u32] {
        match &d.inputs[k].values {
            Values::U32(v) => v,
            Values::F32(_) => panic!("not ids"),
        }
    }

    #[test]
    fn reads_dense_ids_in_ascending_original_order() {
        let dir = dir_with(synthetic().as_str());
        let m = read_movielens(&dir.path().join(MOVIELENS_FILE)).expect("read");
        assert_eq!(m.len(), 12);
        assert_eq!(m.users, vec![10, 20, 30]);
        assert!(m.movies.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(m.user[0], 0);
        assert_eq!(m.movies[m.item[0] as usize], 110);
        assert_eq!(m.rating[1], 1.0);
        assert_eq!(m.timestamp[1], 1010);
    }

    #[test]
    fn ratings_split_is_per_user_and_seeded() {
        let dir = dir_with(synthetic().as_str());
        let s = movielens_ratings(Some(dir.path()), 1, 0.25).expect("split");
        assert_eq!(s.train.len() + s.test.len(), 12);
        // round(6 * .25) = 2 (rounded half up), round(4 * .25) = 1, round(2 * .25) = 1 (at least 1)
        let test_users = ids(&s.test, 0);
        let count = |u| test_users.iter().filter(|&&x| x == u).count();
        assert_eq!((count(0), count(1), count(2)), (2, 1, 1));
        assert_eq!(s.test.task.kind, TaskKind::Regression);
        assert_eq!(s.train.inputs[0].shape, Vec::<usize>::new());
        assert_eq!(
            (
                s.train.inputs[0].name.as_str(),
                s.train.inputs[1].name.as_str()
            ),
            ("user", "item")
        );
        assert!(matches!(s.train.target, Target::Regression { dim: 1, .. }));
        let again = movielens_ratings(Some(dir.path()), 1, 0.25).expect("split");
        assert_eq!(s, again);
        assert!(matches!(
            movielens_ratings(Some(dir.path()), 1, 1.0),
            Err(DataError::InvalidArgument(_))
        ));
    }

    #[test]
    fn ranking_follows_the_ncf_protocol() {
        let dir = dir_with(synthetic().as_str());
        let m = read_movielens(&dir.path().join(MOVIELENS_FILE)).expect("read");
        let s = movielens_ranking(Some(dir.path()), 3, 2, 5).expect("ranking");
        assert_eq!(s.test.len(), 3 * 5);
        assert_eq!(s.test.task.kind, TaskKind::Ranking { list_len: 5 });
        assert_eq!(s.train.task.kind, TaskKind::Binary);
        // 12 interactions, 3 held out, 9 positives with 2 negatives each
        assert_eq!(s.train.len(), 9 * 3);
        let labels = s.test.labels().expect("labels");
        let (tu, ti) = (ids(&s.test, 0), ids(&s.test, 1));
        for (u, list) in labels.chunks(5).enumerate() {
            assert_eq!(list, &[1, 0, 0, 0, 0]);
            let rated: HashSet<u32> = (0..m.len())
                .filter(|&k| m.user[k] == u as u32)
                .map(|k| m.item[k])
                .collect();
            // the held-out item is the user's latest
            let latest = (0..m.len())
                .filter(|&k| m.user[k] == u as u32)
                .max_by_key(|&k| (m.timestamp[k], m.item[k]))
                .map(|k| m.item[k]);
            assert_eq!(Some(ti[u * 5]), latest);
            let negs: HashSet<u32> = ti[u * 5 + 1..u * 5 + 5].iter().copied().collect();
            assert_eq!(negs.len(), 4, "distinct negatives");
            assert!(negs.is_disjoint(&rated));
            assert!(tu[u * 5..u * 5 + 5].iter().all(|&x| x == u as u32));
        }
        // training negatives are never interacted items; positives never the held-out item
        let (ru, ri) = (ids(&s.train, 0), ids(&s.train, 1));
        for (k, &y) in s.train.labels().expect("labels").iter().enumerate() {
            let rated = (0..m.len()).any(|j| m.user[j] == ru[k] && m.item[j] == ri[k]);
            assert_eq!(rated, y == 1, "sample {k}");
            assert!(y == 0 || ri[k] != ti[ru[k] as usize * 5]);
        }
        // too long a list for the 12-movie catalogue names the user
        let e = movielens_ranking(Some(dir.path()), 3, 2, 40).expect_err("too long");
        assert!(e.to_string().contains("user 10"), "{e}");
    }

    #[test]
    fn ties_are_broken_by_movie_id() {
        let dir =
            dir_with("5,a,1,x,1,3.0,100\n9,b,1,x,1,3.0,200\n7,c,1,x,1,3.0,200\n3,d,1,x,1,3.0,50\n");
        let s = movielens_sequences(Some(dir.path()), 0, 3).expect("seq");
        // time order: 3 (t50), 5 (t100), 7 and 9 (t200, by movieId); dense ids 3->0 5->1 7->2 9->3
        assert_eq!(s.test.labels(), Some(&[3][..]));
        assert_eq!(ids(&s.test, 0), &[0, 1, 2]);
        let r = movielens_ranking(Some(dir.path()), 0, 0, 2);
        // a user who rated 4 of 4 movies has nothing to sample
        assert!(matches!(r, Err(DataError::Inconsistent { .. })), "{r:?}");
    }

    #[test]
    fn sequences_are_left_padded_histories() {
        let dir = dir_with(synthetic().as_str());
        let m = read_movielens(&dir.path().join(MOVIELENS_FILE)).expect("read");
        let pad = m.num_items() as u32;
        let s = movielens_sequences(Some(dir.path()), 0, 3).expect("seq");
        // user 30 (2 ratings) is left out; users 10 and 20 give 4 and 2 training samples
        assert_eq!(s.test.len(), 2);
        assert_eq!(s.train.len(), 4 + 2);
        assert_eq!(s.train.inputs[0].name, "history");
        assert_eq!(s.train.inputs[0].shape, vec![3]);
        assert_eq!(s.train.num_classes(), Some(m.num_items()));
        assert_eq!(s.train.task.kind, TaskKind::NextItem);
        let seq: Vec<u32> = (0..6).map(|k| m.item[k]).collect(); // user 10, file = time order
        let x = ids(&s.train, 0);
        assert_eq!(&x[..3], &[pad, pad, seq[0]]);
        assert_eq!(&x[3..6], &[pad, seq[0], seq[1]]);
        assert_eq!(&x[9..12], &[seq[1], seq[2], seq[3]]);
        assert_eq!(&s.train.labels().expect("labels")[..4], &seq[1..5]);
        assert_eq!(&ids(&s.test, 0)[..3], &seq[2..5]);
        assert_eq!(s.test.labels().expect("labels")[0], seq[5]);
    }

    fn message(body_or_full: &str, full: bool) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = if full {
            body_or_full.to_string()
        } else {
            format!("{HEADER}\n{body_or_full}")
        };
        write(dir.path(), MOVIELENS_FILE, &text);
        movielens_ratings(Some(dir.path()), 0, 0.1)
            .expect_err("bad input")
            .to_string()
    }

    #[test]
    fn bad_input_is_one_line_naming_the_file_line_and_problem() {
        let cases: &[(&str, bool, &[&str])] = &[
            (
                "movieId,title,year,genres,userId,timestamp\n1,a,1,x,1,5\n",
                true,
                &["line 1", "missing column `rating`"],
            ),
            (
                "1,\"A, film\",1999,x,1,four,5\n",
                false,
                &["line 2", "column `rating`", "`four`"],
            ),
            (
                "1,a,1999,x,1,4.0,5\n2,b,1999,x,1,7.5,5\n",
                false,
                &["line 3", "column `rating`", "7.5", "0.5-5"],
            ),
            ("1,a,1999,x,1,0.0,5\n", false, &["line 2", "outside"]),
            (
                "1,a,1999,x,-3,4.0,5\n",
                false,
                &["line 2", "column `userId`", "`-3`"],
            ),
            ("1,a,1999,x,1,4.0\n", false, &["line 2", "6 fields", "7"]),
            ("", true, &["line 1", "empty"]),
            ("", false, &["no ratings"]),
        ];
        for (text, full, want) in cases {
            let m = message(text, *full);
            assert!(!m.contains('\n'), "one line: {m}");
            assert!(m.contains(MOVIELENS_FILE), "names the file: {m}");
            for w in *want {
                assert!(m.contains(w), "{m} lacks {w}");
            }
        }
        let e = movielens_ratings(Some(Path::new("/nonexistent/movielens")), 0, 0.1)
            .expect_err("missing dir");
        assert!(matches!(e, DataError::NoSuchDirectory { .. }), "{e:?}");
    }

    #[test]
    fn separate_files_reject_an_unknown_test_user_or_movie() {
        let dir = tempfile::tempdir().expect("tempdir");
        let train = write(
            dir.path(),
            "train.csv",
            &format!("{HEADER}\n1,a,1,x,7,4.0,5\n2,b,1,x,8,3.0,6\n"),
        );
        let ok = write(
            dir.path(),
            "ok.csv",
            &format!("{HEADER}\n2,b,1,x,7,2.5,9\n"),
        );
        let s = movielens_ratings_files(&train, &ok).expect("split");
        assert_eq!((s.train.len(), s.test.len()), (2, 1));
        assert_eq!(
            (ids(&s.test, 0), ids(&s.test, 1)),
            (&[0u32][..], &[1u32][..])
        );

        let user = write(
            dir.path(),
            "user.csv",
            &format!("{HEADER}\n1,a,1,x,7,4.0,5\n1,a,1,x,999,4.0,5\n"),
        );
        let m = movielens_ratings_files(&train, &user)
            .expect_err("unknown user")
            .to_string();
        assert!(
            m.contains("user.csv") && m.contains("line 3") && m.contains("user 999"),
            "{m}"
        );
        assert!(m.contains("train.csv") && !m.contains('\n'), "{m}");
        let movie = write(
            dir.path(),
            "movie.csv",
            &format!("{HEADER}\n42,z,1,x,8,4.0,5\n"),
        );
        let m = movielens_ratings_files(&train, &movie)
            .expect_err("unknown movie")
            .to_string();
        assert!(m.contains("line 2") && m.contains("movie 42"), "{m}");
    }

    #[test]
    fn load_dispatches_the_three_names() {
        let dir = dir_with(synthetic().as_str());
        let (r, norm) = crate::load("movielens", Some(dir.path()), 0).expect("ratings");
        assert_eq!(
            (r.train.len() + r.test.len(), norm),
            (12, Default::default())
        );
        // 99 negatives per list do not fit the 12-movie catalogue
        let e = crate::load("movielens-rank", Some(dir.path()), 0).expect_err("12 movies");
        assert!(e.to_string().contains("fewer than 99"), "{e}");
        let (q, _) = crate::load("movielens-seq", Some(dir.path()), 0).expect("seq");
        assert_eq!(q.test.inputs[0].shape, vec![MOVIELENS_HISTORY]);
    }

    /// The shared file's counts, and the shapes of the three datasets (skips without the data).
    #[test]
    fn real_movielens_counts() {
        let Some(dir) = crate::shared_data_dir("movielens") else {
            eprintln!("skipping real_movielens_counts: shared/data/movielens not found");
            return;
        };
        let m = read_movielens(&dir.join(MOVIELENS_FILE)).expect("read");
        assert_eq!(
            (m.len(), m.num_users(), m.num_items()),
            (100_004, 671, 9_066)
        );

        let s = movielens_ratings(Some(&dir), 0, MOVIELENS_TEST_FRACTION).expect("ratings");
        assert_eq!((s.train.len(), s.test.len()), (89_973, 10_031));
        let test_users: HashSet<u32> = ids(&s.test, 0).iter().copied().collect();
        assert_eq!(test_users.len(), 671, "every user has a test rating");
        eprintln!(
            "movielens: {} train, {} test ratings",
            s.train.len(),
            s.test.len()
        );

        let r = movielens_ranking(Some(&dir), 0, MOVIELENS_NEGATIVES, MOVIELENS_LIST_LEN)
            .expect("ranking");
        assert_eq!(r.test.len(), 671 * 100);
        assert_eq!(r.train.len(), (100_004 - 671) * 5);
        let rated: HashSet<(u32, u32)> = (0..m.len()).map(|k| (m.user[k], m.item[k])).collect();
        let (tu, ti) = (ids(&r.test, 0), ids(&r.test, 1));
        for (k, &y) in r.test.labels().expect("labels").iter().enumerate() {
            assert_eq!(y == 1, k % 100 == 0, "sample {k}");
            assert_eq!(rated.contains(&(tu[k], ti[k])), y == 1, "sample {k}");
        }
        let (ru, ri) = (ids(&r.train, 0), ids(&r.train, 1));
        for (k, &y) in r.train.labels().expect("labels").iter().enumerate() {
            assert_eq!(rated.contains(&(ru[k], ri[k])), y == 1, "sample {k}");
        }

        let q = movielens_sequences(Some(&dir), 0, MOVIELENS_HISTORY).expect("sequences");
        assert_eq!(q.test.len(), 671);
        assert_eq!(q.train.len(), 100_004 - 2 * 671);
        assert_eq!(q.train.inputs[0].shape, vec![MOVIELENS_HISTORY]);
        assert_eq!(q.test.num_classes(), Some(9_066));
        assert!(ids(&q.train, 0).iter().all(|&i| i <= 9_066));
    }
}
