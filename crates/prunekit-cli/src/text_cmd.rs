//! Text commands for Transformers read from Hugging Face directories or GGUF files: `embed`,
//! `generate`, and `eval --text` (perplexity).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use prunekit_data::text;

/// `prunekit embed`
#[derive(Args)]
pub struct EmbedArgs {
    /// an encoder (a sentence-transformers / BERT Hugging Face directory, or a model pruned from one)
    pub model: PathBuf,
    /// a text to embed; repeat for several
    #[arg(long = "text", required_unless_present = "text_file")]
    pub texts: Vec<String>,
    /// also embed the lines (of at least 4 words, up to 1,000) of this file
    #[arg(long)]
    pub text_file: Option<PathBuf>,
    /// compare with this model's embeddings of the same texts: mean and min cosine
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// print {"embeddings": [[...], ...], "cosine": [[...]]} (or, with --against, the comparison)
    #[arg(long)]
    pub json: bool,
}

/// `prunekit finetune --teacher DENSE --text FILE...`: distillation on unlabelled text.
#[derive(Args, Clone, Default)]
pub struct TextDistillArgs {
    /// the model whose outputs the student learns (e.g. the dense encoder before pruning)
    #[arg(long, requires = "texts")]
    pub teacher: Option<PathBuf>,
    /// a plain-text file whose lines (of at least 4 words) are the unlabelled training texts;
    /// repeat for several
    #[arg(long = "text", requires = "teacher")]
    pub texts: Vec<PathBuf>,
    /// the held-out lines measured after every epoch (default: the last 10% of the training lines)
    #[arg(long, requires = "teacher")]
    pub test_text: Option<PathBuf>,
    /// at most this many training lines (the held-out file: at most 1,000)
    #[arg(long, default_value_t = 2000)]
    pub max_lines: usize,
    /// tokens per text for the distillation (student and teacher; longer texts are cut): short
    /// lines train several times faster at 32 than at a tokenizer's 128
    #[arg(long, requires = "teacher")]
    pub seq_len: Option<usize>,
}

/// The train / test split of a text distillation: the teacher's outputs on the lines.
pub fn distillation_split(
    student: &mut prunekit_graph::Graph,
    a: &TextDistillArgs,
) -> Result<(prunekit_data::Split, String)> {
    let Some(teacher) = &a.teacher else {
        bail!("--text needs --teacher MODEL");
    };
    if let Some(t) = a.seq_len {
        prunekit_io::hf::set_sequence_length(student, t).context("--seq-len")?;
    }
    let t = crate::commands::load_model_seq(
        teacher,
        student
            .inputs
            .first()
            .and_then(|i| i.shape.first().copied()),
    )?;
    let tok = text::tokenizer(&t)?;
    let mut lines = Vec::new();
    // the same share of lines from every file, so several plays (or corpora) mix
    let per_file = a.max_lines.div_ceil(a.texts.len().max(1));
    for f in &a.texts {
        lines.extend(text::text_lines(f, 4, per_file)?);
    }
    let test_lines = match &a.test_text {
        Some(f) => text::text_lines(f, 4, 1000)?,
        None => lines.split_off(lines.len() - lines.len() / 10),
    };
    if lines.is_empty() || test_lines.is_empty() {
        bail!("the --text files hold no lines of at least 4 words");
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let test_refs: Vec<&str> = test_lines.iter().map(String::as_str).collect();
    let train = text::distillation_dataset("text/train", &t, &tok, &refs, 32)?;
    let test = text::distillation_dataset("text/test", &t, &tok, &test_refs, 32)?;
    let name = format!(
        "distillation of {} on {} lines",
        teacher.display(),
        lines.len()
    );
    Ok((prunekit_data::Split::new(train, test), name))
}

/// `prunekit generate`
#[derive(Args)]
pub struct GenerateArgs {
    /// a causal language model (a Llama-family Hugging Face directory or GGUF file, or a model
    /// pruned from one)
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// new tokens to generate (at least 1)
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub tokens: u64,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

/// `prunekit eval MODEL --text FILE`
pub struct PerplexityArgs<'a> {
    pub model: &'a Path,
    pub text: &'a Path,
    pub context: usize,
    pub stride: Option<usize>,
    pub max_tokens: Option<usize>,
    /// also measure latency and peak memory at this batch of `context`-token windows
    pub latency_batch: Option<usize>,
    pub json: bool,
}

pub fn embed(a: &EmbedArgs) -> Result<()> {
    let g = crate::commands::load_model_seq(&a.model, None)?;
    let tok = text::tokenizer(&g)?;
    let mut all = a.texts.clone();
    if let Some(f) = &a.text_file {
        all.extend(text::text_lines(f, 4, 1000)?);
    }
    let texts: Vec<&str> = all.iter().map(String::as_str).collect();
    let e = text::sentence_embeddings(&g, &tok, &texts, 16)
        .with_context(|| format!("embedding with {}", a.model.display()))?;
    if let Some(other) = &a.against {
        let g2 = crate::commands::load_model_seq(other, None)?;
        let t0 = std::time::Instant::now();
        let e2 = text::sentence_embeddings(&g2, &tok, &texts, 16)
            .with_context(|| format!("embedding with {}", other.display()))?;
        let secs = t0.elapsed().as_secs_f64();
        let cos: Vec<f32> = e.iter().zip(&e2).map(|(x, y)| text::cosine(x, y)).collect();
        let mean = cos.iter().map(|&c| c as f64).sum::<f64>() / cos.len().max(1) as f64;
        let min = cos.iter().copied().fold(f32::INFINITY, f32::min);
        if a.json {
            println!(
                "{}",
                json!({"texts": cos.len(), "mean_cosine": mean, "min_cosine": min})
            );
        } else {
            println!(
                "{} texts: mean cosine {mean:.4}, min {min:.4} between {} and {} ({secs:.1} s for the second)",
                cos.len(),
                a.model.display(),
                other.display()
            );
        }
        return Ok(());
    }
    let cos: Vec<Vec<f32>> = e
        .iter()
        .map(|x| e.iter().map(|y| text::cosine(x, y)).collect())
        .collect();
    if a.json {
        println!("{}", json!({"embeddings": e, "cosine": cos}));
    } else {
        println!(
            "{} embeddings of {} values",
            e.len(),
            e.first().map_or(0, Vec::len)
        );
        for (i, t) in all.iter().enumerate() {
            let row: Vec<String> = cos[i].iter().map(|c| format!("{c:+.4}")).collect();
            println!("[{i}] {}  cosine: {}", t, row.join(" "));
        }
    }
    Ok(())
}

pub fn generate(a: &GenerateArgs) -> Result<()> {
    let mut g = crate::commands::load_model_seq(&a.model, Some(8))?;
    let tok = text::tokenizer(&g)?;
    let prompt = text::encode(&tok, &a.prompt, false)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let tokens = a.tokens as usize;
    let hf = prunekit_io::hf::HfMeta::of(&g).ok().flatten();
    // a Hugging Face model runs at the length of prompt and continuation (its position range is
    // its config's); a model trained here keeps the context it was trained at and slides
    if hf.is_some() {
        let t = prompt.len() + tokens;
        prunekit_io::hf::set_sequence_length(&mut g, t)
            .with_context(|| format!("{}: sequence length {t}", a.model.display()))?;
    }
    let eos = hf
        .and_then(|m| m.config.get("eos_token_id").and_then(|v| v.as_u64()))
        .map(|v| v as u32)
        .or_else(|| tok.token_to_id(prunekit_data::SHAKESPEARE_EOS));
    let s = text::Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
        eos,
    };
    let ids = text::generate(&g, &prompt, tokens, &s)?;
    let out = tok
        .decode(&ids, true)
        .map_err(|e| anyhow::anyhow!("decoding the generated ids: {e}"))?;
    if a.json {
        println!("{}", json!({"prompt": a.prompt, "ids": ids, "text": out}));
    } else {
        println!("{}{}", a.prompt, out);
    }
    Ok(())
}

pub fn perplexity(a: &PerplexityArgs) -> Result<()> {
    let g = crate::commands::load_model_seq(a.model, Some(a.context))?;
    // params, MACs per token at the context, latency at batch 1 and at the batch, peak memory:
    // measured before the evaluation (whose buffers the allocator would reuse unseen)
    let measures = prunekit_measure::model_measures(&g, a.latency_batch, 3.0)?;
    let tok = text::tokenizer(&g)?;
    let raw =
        std::fs::read_to_string(a.text).with_context(|| format!("reading {}", a.text.display()))?;
    let mut ids = text::encode(&tok, &raw, false)?;
    if let Some(m) = a.max_tokens {
        ids.truncate(m);
    }
    let vocab = g
        .nodes
        .last()
        .and_then(|n| n.params.get("weight"))
        .map(|p| p.tensor().dims()[0])
        .unwrap_or(0);
    let stride = a.stride.unwrap_or(a.context);
    let data = text::lm_windows("text", &ids, a.context, stride, vocab)?;
    let start = std::time::Instant::now();
    let e = prunekit_measure::evaluate(&g, &data, 4)?;
    let secs = start.elapsed().as_secs_f64();
    let ppl = e.metrics.get("perplexity").copied().unwrap_or(f64::NAN);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "perplexity": ppl,
                "mean_nll": e.loss,
                "tokens": ids.len(),
                "context": a.context,
                "stride": stride,
                "windows": data.len(),
                "seconds": secs,
                "measures": measures,
            }))?
        );
    } else {
        println!(
            "perplexity {ppl:.4} over {} tokens of {} (context {}, stride {stride}, {} windows, {secs:.1} s)",
            ids.len(),
            a.text.display(),
            a.context,
            data.len()
        );
        println!(
            "{}",
            crate::table::render(&["", "value"], &crate::commands::measure_rows(&measures))
        );
    }
    Ok(())
}
