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
    #[arg(long = "text", required = true)]
    pub texts: Vec<String>,
    /// print {"embeddings": [[...], ...], "cosine": [[...]]} instead of the table
    #[arg(long)]
    pub json: bool,
}

/// `prunekit generate`
#[derive(Args)]
pub struct GenerateArgs {
    /// a causal language model (a Llama-family Hugging Face directory or GGUF file, or a model
    /// pruned from one)
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// new tokens to generate
    #[arg(long, default_value_t = 32)]
    pub tokens: usize,
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
    pub json: bool,
}

pub fn embed(a: &EmbedArgs) -> Result<()> {
    let g = crate::commands::load_model_seq(&a.model, None)?;
    let tok = text::tokenizer(&g)?;
    let texts: Vec<&str> = a.texts.iter().map(String::as_str).collect();
    let e = text::sentence_embeddings(&g, &tok, &texts, 16)
        .with_context(|| format!("embedding with {}", a.model.display()))?;
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
        for (i, t) in a.texts.iter().enumerate() {
            let row: Vec<String> = cos[i].iter().map(|c| format!("{c:+.4}")).collect();
            println!("[{i}] {}  cosine: {}", t, row.join(" "));
        }
    }
    Ok(())
}

pub fn generate(a: &GenerateArgs) -> Result<()> {
    let probe = crate::commands::load_model_seq(&a.model, Some(8))?;
    let tok = text::tokenizer(&probe)?;
    let prompt = text::encode(&tok, &a.prompt, false)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let t = prompt.len() + a.tokens.max(1);
    let mut g = probe;
    prunekit_io::hf::set_sequence_length(&mut g, t)
        .with_context(|| format!("{}: sequence length {t}", a.model.display()))?;
    let eos = prunekit_io::hf::HfMeta::of(&g)
        .ok()
        .flatten()
        .and_then(|m| m.config.get("eos_token_id").and_then(|v| v.as_u64()))
        .map(|v| v as u32);
    let s = text::Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
        eos,
    };
    let ids = text::generate(&g, &prompt, a.tokens, &s)?;
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
    }
    Ok(())
}
