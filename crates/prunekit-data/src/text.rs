//! Text in and out of Transformer models read from Hugging Face directories or GGUF files
//! (`prunekit_io::hf`): the tokenizer they carry, sentence embeddings as sentence-transformers
//! computes them, the sliding-window perplexity protocol, and autoregressive generation.

use candle_core::{DType, Device, IndexOp, Tensor};
use prunekit_graph::{Executor, Graph, InputKind};
use rand::Rng;

use crate::dataset::{Dataset, Feature, Target};
use crate::error::{DataError, Result};
use crate::task::{Task, TaskKind};

/// The graph metadata key holding the tokenizer.json (text) of a model trained here on text
/// ([`crate::Split::tokenizer`]).
pub const TOKENIZER_META: &str = "tokenizer";

/// The tokenizer a graph carries: the one of a model trained here on text
/// (`meta["tokenizer"]`, [`TOKENIZER_META`]), else the one of a model read from a Hugging Face
/// directory or GGUF file (`meta.huggingface.tokenizer`, a tokenizer.json).
///
/// # Errors
/// [`DataError::Tokenizer`] when the graph has none or it does not parse.
pub fn tokenizer(g: &Graph) -> Result<tokenizers::Tokenizer> {
    let err = |message: String| DataError::Tokenizer {
        context: format!("model `{}`", g.name),
        message,
    };
    if let Some(v) = g.meta.get(TOKENIZER_META) {
        let text = v
            .as_str()
            .ok_or_else(|| err(format!("meta.{TOKENIZER_META} is not a string")))?;
        return prunekit_io::hf::parse_tokenizer(text).map_err(err);
    }
    let meta = prunekit_io::hf::HfMeta::of(g)
        .map_err(err)?
        .ok_or_else(|| err("the model carries no tokenizer (train it on text data, or read it from a Hugging Face directory with tokenizer.json, or a GGUF file)".into()))?;
    let text = meta
        .tokenizer
        .ok_or_else(|| err("the model's directory had no tokenizer.json".into()))?;
    prunekit_io::hf::parse_tokenizer(&text).map_err(err)
}

/// Token ids of `text` (special tokens as the tokenizer's post-processor adds them).
///
/// # Errors
/// [`DataError::Tokenizer`] from the tokenizer.
pub fn encode(tok: &tokenizers::Tokenizer, text: &str, special: bool) -> Result<Vec<u32>> {
    tok.encode(text, special)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| DataError::Tokenizer {
            context: "encoding text".into(),
            message: e.to_string(),
        })
}

/// The inputs of an encoder graph (BERT: `input_ids`, `token_type_ids`, `attention_mask`, each
/// [T] per sample) for `texts`: each text tokenised with its special tokens ([CLS] ... [SEP]),
/// truncated to T and padded with id 0 / mask 0.0. Returns one [`Feature`] per graph input.
///
/// # Errors
/// The graph's inputs are not those three (by name); the tokenizer fails.
pub fn encoder_inputs(
    g: &Graph,
    tok: &tokenizers::Tokenizer,
    texts: &[&str],
) -> Result<Vec<Feature>> {
    let t = g
        .inputs
        .first()
        .and_then(|i| i.shape.first().copied())
        .ok_or_else(|| DataError::InvalidArgument("the model has no [T] input".into()))?;
    let mut ids = Vec::with_capacity(texts.len() * t);
    let mut mask = Vec::with_capacity(texts.len() * t);
    for text in texts {
        // the tokenizer may pad by itself (all-MiniLM-L6-v2's pads to 128): its attention mask
        // says which positions are real
        let e = tok.encode(*text, true).map_err(|e| DataError::Tokenizer {
            context: "encoding text".into(),
            message: e.to_string(),
        })?;
        let real = e.get_attention_mask().iter().take(t);
        let before = mask.len();
        mask.extend(real.map(|&m| m as f32));
        mask.resize(before + t, 0.0);
        let before = ids.len();
        ids.extend(e.get_ids().iter().take(t));
        ids.resize(before + t, 0);
    }
    let n = texts.len() * t;
    g.inputs
        .iter()
        .map(|i| match (i.name.as_str(), i.kind) {
            ("input_ids", InputKind::Ids) => Ok(Feature::ids("input_ids", vec![t], ids.clone())),
            ("token_type_ids", InputKind::Ids) => Ok(Feature::ids("token_type_ids", vec![t], vec![0; n])),
            ("attention_mask", InputKind::Float) => Ok(Feature::float("attention_mask", vec![t], mask.clone())),
            (name, _) => Err(DataError::InvalidArgument(format!(
                "input `{name}` of the model is not one of an encoder's (input_ids, token_type_ids, attention_mask)"
            ))),
        })
        .collect()
}

/// Sentence embeddings [texts, hidden] of an encoder graph whose output is the last hidden state
/// [B, T, hidden]: mean pooling over the attention mask (sum of the kept tokens' vectors over
/// their count, at least 1e-9) then L2 normalisation (norm at least 1e-12), as
/// sentence-transformers' `Pooling(mean_tokens)` and `Normalize` modules compute them
/// (all-MiniLM-L6-v2's pipeline). Runs `batch` texts at a time.
///
/// # Errors
/// As [`encoder_inputs`]; the graph's forward pass.
pub fn sentence_embeddings(
    g: &Graph,
    tok: &tokenizers::Tokenizer,
    texts: &[&str],
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    let mut exec = Executor::new(0);
    let dev = Device::Cpu;
    for chunk in texts.chunks(batch.max(1)) {
        let feats = encoder_inputs(g, tok, chunk)?;
        let inputs = feature_tensors(&feats, chunk.len(), &dev)?;
        let y = exec.eval(g, &inputs)?;
        let h = y
            .into_iter()
            .next()
            .ok_or_else(|| DataError::InvalidArgument("the model has no output".into()))?;
        if h.rank() == 2 {
            // the graph pools and normalises itself (a sentence-transformers directory)
            out.extend(h.to_dtype(DType::F32)?.to_vec2::<f32>()?);
            continue;
        }
        let mask_idx = g
            .inputs
            .iter()
            .position(|i| i.name == "attention_mask")
            .unwrap_or(0);
        let m = inputs[mask_idx].to_dtype(DType::F32)?.unsqueeze(2)?; // [B, T, 1]
        let sum = h.broadcast_mul(&m)?.sum(1)?; // [B, D]
        let count = m.sum(1)?.clamp(1e-9, f64::MAX)?; // [B, 1]
        let mean = sum.broadcast_div(&count)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let e = mean.broadcast_div(&norm)?;
        out.extend(e.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// The lines of a plain-text file with at least `min_words` words (trimmed), up to `limit` of
/// them (for unlabelled text: the lines of a play).
///
/// # Errors
/// [`DataError::Io`] when the file cannot be read.
pub fn text_lines(path: &std::path::Path, min_words: usize, limit: usize) -> Result<Vec<String>> {
    let raw = std::fs::read(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(String::from_utf8_lossy(&raw)
        .lines()
        .map(str::trim)
        .filter(|l| l.split_whitespace().count() >= min_words)
        .take(limit)
        .map(str::to_string)
        .collect())
}

/// A regression dataset that distils `teacher` into a student of the same inputs: the encoder
/// inputs of `texts` ([`encoder_inputs`]) and, as targets, the teacher's outputs on them (one
/// vector per sample: the teacher's per-sample output must be [D], e.g. a sentence embedding).
/// Training a student on it with the task's MSE is feature distillation of the final output
/// (no labels needed).
///
/// # Errors
/// As [`encoder_inputs`]; the teacher's output is not one vector per sample.
pub fn distillation_dataset(
    name: &str,
    teacher: &Graph,
    tok: &tokenizers::Tokenizer,
    texts: &[&str],
    batch: usize,
) -> Result<Dataset> {
    let feats = encoder_inputs(teacher, tok, texts)?;
    let mut exec = Executor::new(0);
    let dev = Device::Cpu;
    let mut values = Vec::new();
    let mut dim = 0;
    for chunk in texts.chunks(batch.max(1)) {
        let f = encoder_inputs(teacher, tok, chunk)?;
        let y = exec.eval(teacher, &feature_tensors(&f, chunk.len(), &dev)?)?;
        let y = y
            .into_iter()
            .next()
            .ok_or_else(|| DataError::InvalidArgument("the teacher has no output".into()))?;
        if y.rank() != 2 {
            return Err(DataError::InvalidArgument(format!(
                "the teacher's output {:?} is not one vector per sample (a sentence-transformers directory pools to one)",
                y.dims()
            )));
        }
        dim = y.dim(1)?;
        values.extend(y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Dataset::with_task(
        name.to_string(),
        feats,
        Target::Regression { values, dim },
        Task::new(TaskKind::Regression),
    )
}

/// Batched tensors of features holding `n` samples each (batch axis first).
fn feature_tensors(feats: &[Feature], n: usize, dev: &Device) -> Result<Vec<Tensor>> {
    feats
        .iter()
        .map(|f| {
            let mut shape = vec![n];
            shape.extend(&f.shape);
            Ok(match &f.values {
                crate::dataset::Values::F32(v) => Tensor::from_slice(v, shape, dev)?,
                crate::dataset::Values::U32(v) => Tensor::from_slice(v, shape, dev)?,
            })
        })
        .collect()
}

/// The cosine of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na * nb)) as f32
    }
}

/// A language-modelling dataset of a token stream by the sliding-window protocol of the Hugging
/// Face perplexity guide: windows of `context` tokens starting every `stride` tokens; in each,
/// the targets are the next tokens, and only positions not scored by an earlier window count (the
/// others are [`IGNORE`](crate::IGNORE)), so every token after the first is predicted exactly
/// once, with up to `context - stride` tokens of context. A window's first token is never a
/// target, so each window starts at most at the last token the one before it scored: with
/// `stride == context` the windows overlap by one token (the guide's loop would skip the first
/// token of every window there). The last window is padded with id 0 (ignored). `exp` of the mean negative log-likelihood over the scored tokens is the perplexity.
///
/// # Errors
/// [`DataError::InvalidArgument`] for fewer than 2 tokens, `context` < 2, `stride` of 0 or above
/// `context`, or an id not below `vocab`.
pub fn lm_windows(
    name: &str,
    ids: &[u32],
    context: usize,
    stride: usize,
    vocab: usize,
) -> Result<Dataset> {
    if ids.len() < 2 || context < 2 || stride == 0 || stride > context {
        return Err(DataError::InvalidArgument(format!(
            "perplexity windows need at least 2 tokens (got {}), a context of at least 2 (got {context}) and a stride in 1..=context (got {stride})",
            ids.len()
        )));
    }
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(DataError::InvalidArgument(format!(
            "token id {bad} is not below the vocabulary size {vocab}"
        )));
    }
    let mut x = Vec::new();
    let mut y = Vec::new();
    // scored[j]: whether the prediction of token j (from position j-1) is already counted
    let mut next_unscored = 1; // the first token is never predicted
    let mut start = 0;
    loop {
        let end = (start + context).min(ids.len());
        for p in 0..context {
            let pos = start + p;
            x.push(if pos < ids.len() { ids[pos] } else { 0 });
            let target = pos + 1;
            if target < ids.len() && target < end && target >= next_unscored {
                y.push(ids[target]);
            } else {
                y.push(crate::IGNORE);
            }
        }
        next_unscored = next_unscored.max(end);
        if end >= ids.len() {
            break;
        }
        // token `end` is predicted from position `end - 1`, which the next window must hold
        start = (start + stride).min(end - 1);
    }
    Dataset::with_task(
        name.to_string(),
        vec![Feature::ids("input_ids", vec![context], x)],
        Target::Tokens {
            ids: y,
            len: context,
            vocab,
        },
        Task::new(TaskKind::LanguageModel),
    )
}

/// How [`generate`] picks each token.
#[derive(Clone, Debug)]
pub struct Sampling {
    /// 0 = greedy (argmax); otherwise logits are divided by it before the softmax
    pub temperature: f64,
    /// sample among the k most likely tokens only (None: all)
    pub top_k: Option<usize>,
    /// seed of the sampling generator
    pub seed: u64,
    /// stop at this token (the model's end-of-sequence id)
    pub eos: Option<u32>,
}

/// Continues `prompt` (token ids) by up to `tokens` new ids with a causal language model graph
/// whose input is `input_ids` [T] and output logits [T, vocab]. Each step runs the last (at most)
/// T tokens, padded on the right (which a causal model never reads), and the logits at the last
/// real position give the next token: a sequence longer than T slides, so the model never sees
/// more context than its T. Returns the new ids (fewer when `s.eos` comes).
///
/// # Errors
/// An empty prompt; the graph has no `[T]` input; its forward pass.
pub fn generate(g: &Graph, prompt: &[u32], tokens: usize, s: &Sampling) -> Result<Vec<u32>> {
    let t = g
        .inputs
        .first()
        .and_then(|i| i.shape.first().copied())
        .filter(|&t| t > 0)
        .ok_or_else(|| DataError::InvalidArgument("the model has no [T] input".into()))?;
    if prompt.is_empty() {
        return Err(DataError::InvalidArgument(
            "the prompt has no tokens".into(),
        ));
    }
    let mut rng = crate::rng(s.seed);
    let mut seq = prompt.to_vec();
    let mut exec = Executor::new(0);
    let mut out = Vec::new();
    for _ in 0..tokens {
        let window = &seq[seq.len().saturating_sub(t)..];
        let last = window.len() - 1;
        let mut ids = window.to_vec();
        ids.resize(t, 0);
        let x = Tensor::from_vec(ids, (1, t), &Device::Cpu)?;
        let y = exec.eval(g, &[x])?;
        let logits = y[0].i((0, last))?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let next = pick(&logits, s, &mut rng);
        out.push(next);
        seq.push(next);
        if Some(next) == s.eos {
            break;
        }
    }
    Ok(out)
}

fn pick(logits: &[f64], s: &Sampling, rng: &mut impl Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            )
            .0 as u32
    };
    if s.temperature <= 0.0 {
        return argmax();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(s.top_k.unwrap_or(logits.len()).max(1));
    let top = logits[idx[0]];
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i] - top) / s.temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (k, &wi) in w.iter().enumerate() {
        r -= wi;
        if r <= 0.0 {
            return idx[k] as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_score_every_token_once() {
        let ids: Vec<u32> = (0..23).collect();
        for (context, stride) in [(8, 8), (8, 4), (8, 1), (5, 3), (30, 7)] {
            let d = lm_windows("t", &ids, context, stride, 100).unwrap();
            let Target::Tokens { ids: y, .. } = &d.target else {
                panic!()
            };
            let mut scored: Vec<u32> = y.iter().copied().filter(|&v| v != crate::IGNORE).collect();
            scored.sort();
            assert_eq!(
                scored,
                (1..23).collect::<Vec<_>>(),
                "context {context} stride {stride}"
            );
        }
    }

    #[test]
    fn windows_refuse_bad_arguments() {
        assert!(lm_windows("t", &[1], 8, 4, 10).is_err());
        assert!(lm_windows("t", &[1, 2, 3], 8, 0, 10).is_err());
        assert!(lm_windows("t", &[1, 2, 3], 8, 9, 10).is_err());
        assert!(lm_windows("t", &[1, 2, 30], 8, 4, 10).is_err());
    }

    #[test]
    fn greedy_and_top1_pick_the_argmax() {
        let l = [0.1, 2.0, -1.0, 1.9];
        let mut r = crate::rng(0);
        let greedy = Sampling {
            temperature: 0.0,
            top_k: None,
            seed: 0,
            eos: None,
        };
        assert_eq!(pick(&l, &greedy, &mut r), 1);
        let top1 = Sampling {
            temperature: 1.0,
            top_k: Some(1),
            seed: 0,
            eos: None,
        };
        assert_eq!(pick(&l, &top1, &mut r), 1);
    }
}
