//! GGUF files (llama.cpp's format) of Llama-family decoders, in: candle's GGUF reader, every
//! tensor dequantised to f32 (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants
//! Q2_K..Q8_K: what candle's `GgmlDType` knows), the metadata mapped to the Llama graph of
//! [`crate::hf::llama`] and its Hugging Face keys, and the tokenizer rebuilt from the metadata
//! (`tokenizer.ggml.model = gpt2`: byte-level BPE from `tokenizer.ggml.tokens` / `merges`) as a
//! `tokenizers` tokenizer.json, so a GGUF import exports as a Hugging Face Llama directory.
//!
//! llama.cpp's converter permutes the rows of q_proj and k_proj (and their biases) for its
//! interleaved RoPE (`convert_hf_to_gguf.py`, `LlamaModel.permute`): per head, rows
//! `[2, head_dim/2]` become `[head_dim/2, 2]`. [`unpermute`] undoes it, giving the Hugging Face
//! `rotate_half` layout the attention op uses.
//!
//! Bounds: candle's reader checks every string, array and count against the file's size; each
//! tensor's element count is checked here against the graph's limits and its bytes against the
//! file before it is read.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use prunekit_graph::Graph;

use crate::error::{one_line, IoError, Result};
use crate::hf::llama::LlamaConfig;
use crate::hf::{HfMeta, HfOptions, Weights};

/// Reads a GGUF file of a Llama-family model into the graph of [`crate::hf::llama`].
///
/// Errors (each names the file and the field or tensor): not a GGUF file or a truncated header;
/// an architecture other than `llama` / `mistral` / `qwen2`; a missing metadata field; RoPE
/// scaling; an unknown quantisation type or a tensor whose data runs past the end of the file; a
/// tokenizer other than byte-level BPE (`gpt2`).
pub fn load(path: &Path, device: &Device, opts: &HfOptions) -> Result<Graph> {
    let mut f = File::open(path).map_err(|e| IoError::io(path, e))?;
    let content = Content::read(&mut f)
        .map_err(|e| IoError::file(path, format!("not a readable GGUF file: {}", one_line(e))))?;
    let md = &content.metadata;
    let arch = md_str(md, "general.architecture").map_err(|m| IoError::file(path, m))?;
    if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
        return Err(IoError::file(
            path,
            format!("general.architecture `{arch}` is not read (llama, mistral, qwen2)"),
        ));
    }
    let config = config(&content, &arch).map_err(|m| IoError::file(path, m))?;
    let tokenizer = tokenizer_json(md).map_err(|m| IoError::file(path, m))?;
    let mut cfg_json = config.to_json();
    for (k, id) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
    ] {
        if let Some(v) = md.get(id).and_then(|v| v.to_u32().ok()) {
            cfg_json[k] = v.into();
        }
    }
    let mut files = BTreeMap::new();
    if let Some(eos) = cfg_json.get("eos_token_id") {
        let gen =
            serde_json::json!({"bos_token_id": cfg_json.get("bos_token_id"), "eos_token_id": eos});
        files.insert("generation_config.json".to_string(), gen.to_string());
    }
    let mut meta = HfMeta {
        family: "llama".into(),
        config: cfg_json,
        keys: BTreeMap::new(),
        tokenizer: Some(tokenizer),
        files,
    };
    let weights = GgufWeights {
        path: path.to_path_buf(),
        file: RefCell::new(f),
        content,
        heads: config.num_attention_heads,
        kv_heads: config.num_key_value_heads,
    };
    let name = path
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    crate::hf::llama::build(&name, &config, &weights, device, opts.seq_len, &mut meta)
}

fn md_str(md: &HashMap<String, Value>, key: &str) -> std::result::Result<String, String> {
    match md.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("metadata `{key}` is not a string")),
        None => Err(format!("metadata `{key}` is missing")),
    }
}

fn md_u64(md: &HashMap<String, Value>, key: &str) -> std::result::Result<Option<u64>, String> {
    md.get(key)
        .map(|v| {
            v.to_u64()
                .map_err(|e| format!("metadata `{key}`: {}", one_line(e)))
        })
        .transpose()
}

fn md_f64(md: &HashMap<String, Value>, key: &str) -> std::result::Result<Option<f64>, String> {
    md.get(key)
        .map(|v| match v {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            _ => Err(format!("metadata `{key}` is not a float")),
        })
        .transpose()
}

/// The Llama config of a GGUF file's metadata, as the Hugging Face config.json fields.
fn config(c: &Content, arch: &str) -> std::result::Result<LlamaConfig, String> {
    let md = &c.metadata;
    let need = |k: &str| -> std::result::Result<u64, String> {
        md_u64(md, &format!("{arch}.{k}"))?
            .ok_or_else(|| format!("metadata `{arch}.{k}` is missing"))
    };
    if let Ok(s) = md_str(md, &format!("{arch}.rope.scaling.type")) {
        if s != "none" {
            return Err(format!(
                "`{arch}.rope.scaling.type` = `{s}` is not supported (only unscaled RoPE)"
            ));
        }
    }
    let embd = c
        .tensor_infos
        .get("token_embd.weight")
        .ok_or("tensor `token_embd.weight` is missing")?;
    let vocab = embd.shape.dims().first().copied().unwrap_or(0);
    let heads = need("attention.head_count")? as usize;
    let hidden = need("embedding_length")? as usize;
    let mut hf = serde_json::json!({
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": md_u64(md, &format!("{arch}.attention.head_count_kv"))?.unwrap_or(heads as u64),
        "max_position_embeddings": md_u64(md, &format!("{arch}.context_length"))?.unwrap_or(2048),
        "rms_norm_eps": md_f64(md, &format!("{arch}.attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        "rope_theta": md_f64(md, &format!("{arch}.rope.freq_base"))?.unwrap_or(10000.0),
        "tie_word_embeddings": !c.tensor_infos.contains_key("output.weight"),
        "attention_bias": c.tensor_infos.contains_key("blk.0.attn_output.bias"),
    });
    if let Some(k) = md_u64(md, &format!("{arch}.attention.key_length"))? {
        hf["head_dim"] = k.into();
    }
    if let Some(w) = md_u64(md, &format!("{arch}.attention.sliding_window"))? {
        hf["sliding_window"] = w.into();
    }
    LlamaConfig::parse(&hf, arch)
}

/// Undoes llama.cpp's RoPE row permutation of a q / k weight [heads * head_dim, C] (or bias
/// [heads * head_dim]): per head, rows ordered [head_dim/2, 2] go back to [2, head_dim/2].
pub fn unpermute(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    if heads == 0 || !rows.is_multiple_of(heads * 2) {
        candle_core::bail!("{rows} rows do not split into {heads} heads of an even width");
    }
    let half = rows / heads / 2;
    let rest: usize = dims[1..].iter().product();
    t.reshape((heads, half, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

struct GgufWeights {
    path: PathBuf,
    file: RefCell<File>,
    content: Content,
    heads: usize,
    kv_heads: usize,
}

impl GgufWeights {
    /// The GGUF tensor name of a Hugging Face key, and the head count of its RoPE permutation.
    fn gguf_name(&self, key: &str) -> Option<(String, Option<usize>)> {
        let fixed = match key {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(f) = fixed {
            return Some((f.to_string(), None));
        }
        let rest = key.strip_prefix("model.layers.")?;
        let (layer, module) = rest.split_once('.')?;
        let (module, kind) = module.rsplit_once('.')?;
        let (name, perm) = match module {
            "input_layernorm" => ("attn_norm", None),
            "post_attention_layernorm" => ("ffn_norm", None),
            "self_attn.q_proj" => ("attn_q", Some(self.heads)),
            "self_attn.k_proj" => ("attn_k", Some(self.kv_heads)),
            "self_attn.v_proj" => ("attn_v", None),
            "self_attn.o_proj" => ("attn_output", None),
            "mlp.gate_proj" => ("ffn_gate", None),
            "mlp.up_proj" => ("ffn_up", None),
            "mlp.down_proj" => ("ffn_down", None),
            _ => return None,
        };
        Some((format!("blk.{layer}.{name}.{kind}"), perm))
    }
}

impl Weights for GgufWeights {
    fn path(&self) -> &Path {
        &self.path
    }
    fn has(&self, key: &str) -> bool {
        self.gguf_name(key)
            .is_some_and(|(n, _)| self.content.tensor_infos.contains_key(&n))
    }
    fn get(&self, key: &str) -> std::result::Result<Tensor, String> {
        let (name, perm) = self
            .gguf_name(key)
            .ok_or_else(|| format!("no GGUF tensor corresponds to `{key}`"))?;
        let info = self
            .content
            .tensor_infos
            .get(&name)
            .ok_or_else(|| format!("tensor `{name}` is missing"))?;
        let mut elems: u64 = 1;
        for &d in info.shape.dims() {
            elems = elems
                .checked_mul(d as u64)
                .filter(|&e| e <= prunekit_graph::graph::MAX_TENSOR_ELEMENTS)
                .ok_or_else(|| format!("tensor `{name}` declares more than 2^31 elements"))?;
        }
        let q = self
            .content
            .tensor(&mut *self.file.borrow_mut(), &name, &Device::Cpu)
            .map_err(|e| format!("tensor `{name}`: {}", one_line(e)))?;
        let t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| format!("tensor `{name}` ({:?}): {}", info.ggml_dtype, one_line(e)))?;
        match perm {
            Some(h) => unpermute(&t, h).map_err(|e| format!("tensor `{name}`: {}", one_line(e))),
            None => Ok(t),
        }
    }
}

/// The tokenizer.json text of a GGUF file's byte-level BPE tokenizer (`tokenizer.ggml.model =
/// gpt2`): vocabulary by id, merges in rank order, control tokens (`token_type` 3) as special
/// tokens, the GPT-2 byte-level pre-tokenizer (digits split one by one first for the `smollm`
/// and `qwen2` pre-tokenizers, as their Hugging Face tokenizers do) and decoder.
fn tokenizer_json(md: &HashMap<String, Value>) -> std::result::Result<String, String> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};
    let model = md_str(md, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(format!(
            "tokenizer.ggml.model `{model}` is not read (only byte-level BPE, `gpt2`)"
        ));
    }
    let strings = |key: &str| -> std::result::Result<Vec<String>, String> {
        match md.get(key) {
            Some(Value::Array(vs)) => vs
                .iter()
                .map(|v| {
                    v.to_string()
                        .cloned()
                        .map_err(|e| format!("metadata `{key}`: {}", one_line(e)))
                })
                .collect(),
            Some(_) => Err(format!("metadata `{key}` is not an array")),
            None => Err(format!("metadata `{key}` is missing")),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
        Some(Value::Array(vs)) => vs
            .iter()
            .map(|v| v.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        _ => vec![1; tokens.len()],
    };
    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), i as u32);
    }
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merge `{m}` is not two tokens"))
        })
        .collect::<std::result::Result<_, _>>()?;
    crate::hf::check_merges(
        &|t| vocab.contains_key(t),
        merges.iter().map(|(a, b)| (a.as_str(), b.as_str())),
        "",
    )?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("the BPE tokenizer does not build: {e}"))?;
    let mut tk = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre = md_str(md, "tokenizer.ggml.pre").unwrap_or_default();
    let pre_tok: PreTokenizerWrapper = if matches!(pre.as_str(), "smollm" | "qwen2") {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    tk.with_pre_tokenizer(Some(pre_tok));
    tk.with_decoder(Some(ByteLevel::default()));
    tk.with_post_processor(Some(ByteLevel::new(false, false, true)));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tk.add_special_tokens(special)
        .map_err(|e| format!("the special tokens do not register: {e}"))?;
    tk.to_string(false)
        .map_err(|e| format!("the tokenizer does not serialise: {e}"))
}
