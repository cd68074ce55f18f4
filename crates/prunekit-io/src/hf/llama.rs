//! Llama-family decoders (Llama, Mistral, Qwen2; Touvron et al. 2023) from a Hugging Face
//! directory or a GGUF file: the graph of `LlamaForCausalLM`, logits [T, vocab_size] per sample.
//!
//! ```text
//! input_ids [T] -> embed_tokens -> num_hidden_layers x (RMSNorm -> causal grouped-query
//!   self-attention with RoPE -> + residual -> RMSNorm -> down(silu(gate(x)) * up(x)) -> + residual)
//!   -> RMSNorm -> lm_head (tied to embed_tokens when tie_word_embeddings)
//! ```
//!
//! Node names are the modules' paths with `/` (`model/layers/0/self_attn` holds q_proj, k_proj,
//! v_proj and o_proj). RoPE is the `rotate_half` form of the Hugging Face code (the attention op's
//! convention); GGUF files, whose q / k rows llama.cpp permutes for its interleaved form, are
//! converted back by [`crate::gguf`].

use candle_core::{Device, Tensor};
use prunekit_graph::ops::{Add, Attention, Embedding, Linear, Mul, RmsNorm, Silu};
use prunekit_graph::{Graph, InputKind};

use super::{field, size, HfMeta, Net, Weights, P};
use crate::error::{IoError, Result};

/// The fields of a Llama-family config.json that the graph uses.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// biases on q, k, v (Qwen2 always; Llama with `attention_bias`) and on o_proj (Llama with
    /// `attention_bias` only)
    pub qkv_bias: bool,
    pub o_bias: bool,
    /// Mistral's sliding-window attention span, if any (exact for sequences up to it)
    pub sliding_window: Option<usize>,
}

impl LlamaConfig {
    /// Reads and checks a config.json of `model_type`.
    ///
    /// Errors: a missing or out-of-range size; `hidden_act` other than `silu`; a `rope_scaling`
    /// other than the default (named); `mlp_bias`; num_key_value_heads not dividing
    /// num_attention_heads.
    pub fn parse(c: &serde_json::Value, model_type: &str) -> std::result::Result<Self, String> {
        let heads = size(c, "num_attention_heads")?;
        let hidden = size(c, "hidden_size")?;
        let kv = match field::<u64>(c, "num_key_value_heads")? {
            Some(v) if v > 0 && v <= heads as u64 => v as usize,
            Some(v) => return Err(format!("num_key_value_heads = {v} is out of range")),
            None => heads,
        };
        let head_dim = match field::<u64>(c, "head_dim")? {
            Some(v) if v > 0 && v < (1 << 16) => v as usize,
            Some(v) => return Err(format!("head_dim = {v} is out of range")),
            None if hidden.is_multiple_of(heads) => hidden / heads,
            None => {
                return Err(format!(
                    "hidden_size {hidden} is not divisible by num_attention_heads {heads} and no head_dim is given"
                ))
            }
        };
        let act: String = field(c, "hidden_act")?.unwrap_or_else(|| "silu".into());
        if act != "silu" {
            return Err(format!("hidden_act `{act}` is not supported (only silu)"));
        }
        if let Some(s) = c.get("rope_scaling").filter(|s| !s.is_null()) {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("?");
            if kind != "default" {
                return Err(format!(
                    "rope_scaling of type `{kind}` is not supported (only unscaled RoPE)"
                ));
            }
        }
        if field::<bool>(c, "mlp_bias")?.unwrap_or(false) {
            return Err("`mlp_bias: true` is not supported".into());
        }
        if !heads.is_multiple_of(kv) {
            return Err(format!(
                "num_key_value_heads {kv} does not divide num_attention_heads {heads}"
            ));
        }
        let attention_bias = field::<bool>(c, "attention_bias")?.unwrap_or(false);
        let sliding_window =
            if model_type == "qwen2" && !field::<bool>(c, "use_sliding_window")?.unwrap_or(false) {
                None
            } else {
                field::<u64>(c, "sliding_window")?.map(|v| v as usize)
            };
        let rope_theta: f64 = field(c, "rope_theta")?.unwrap_or(10000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(format!(
                "rope_theta = {rope_theta} is not a positive number"
            ));
        }
        Ok(LlamaConfig {
            model_type: model_type.to_string(),
            vocab_size: size(c, "vocab_size")?,
            hidden_size: hidden,
            intermediate_size: size(c, "intermediate_size")?,
            num_hidden_layers: size(c, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            max_position_embeddings: field::<u64>(c, "max_position_embeddings")?.unwrap_or(2048)
                as usize,
            rms_norm_eps: field(c, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            tie_word_embeddings: field(c, "tie_word_embeddings")?.unwrap_or(false),
            qkv_bias: model_type == "qwen2" || attention_bias,
            o_bias: attention_bias,
            sliding_window,
        })
    }

    /// The config.json of this config (a Hugging Face `LlamaForCausalLM` config, used for GGUF
    /// imports, which have none).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.o_bias,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        })
    }
}

/// Builds the graph for sequences of `seq_len` tokens (default: min(512, max_position_embeddings)).
pub(crate) fn build(
    name: &str,
    c: &LlamaConfig,
    w: &dyn Weights,
    device: &Device,
    seq_len: Option<usize>,
    meta: &mut HfMeta,
) -> Result<Graph> {
    let t = seq_len.unwrap_or(c.max_position_embeddings.min(512));
    if t == 0 || t > (1 << 20) {
        return Err(IoError::file(
            w.path(),
            format!("sequence length {t} is out of range"),
        ));
    }
    if let Some(win) = c.sliding_window.filter(|&win| t > win) {
        return Err(IoError::file(
            w.path(),
            format!("sequence length {t} exceeds the sliding window {win}, which the graph does not express"),
        ));
    }
    let h = c.hidden_size;
    let mut n = Net::new(w.path(), device);
    let ids = n.input("input_ids", &[t], InputKind::Ids);
    let embed_key = "model.embed_tokens.weight";
    let mut x = n.node(
        "model/embed_tokens",
        Embedding {
            num_embeddings: c.vocab_size,
            embedding_dim: h,
        },
        &[&ids],
        vec![n.p(w, "weight", embed_key)?],
    )?;
    for i in 0..c.num_hidden_layers {
        let node = format!("model/layers/{i}");
        let key = format!("model.layers.{i}");
        let y = rms_norm(
            &mut n,
            w,
            &format!("{node}/input_layernorm"),
            &format!("{key}.input_layernorm.weight"),
            &x,
            c,
        )?;
        let q = n.p(w, "q_weight", &format!("{key}.self_attn.q_proj.weight"))?;
        let k = n.p(w, "k_weight", &format!("{key}.self_attn.k_proj.weight"))?;
        let hd = c.head_dim;
        let heads = q.tensor.dims().first().copied().unwrap_or(0) / hd;
        let kv = k.tensor.dims().first().copied().unwrap_or(0) / hd;
        let mut op = Attention::new(h, heads.max(1), hd);
        op.num_kv_heads = kv.max(1);
        op.causal = true;
        op.rope_theta = Some(c.rope_theta);
        op.bias = c.qkv_bias || c.o_bias;
        let mut ps = vec![
            q,
            k,
            n.p(w, "v_weight", &format!("{key}.self_attn.v_proj.weight"))?,
            n.p(w, "o_weight", &format!("{key}.self_attn.o_proj.weight"))?,
        ];
        if op.bias {
            for (p, m, has) in [
                ("q_bias", "q_proj", c.qkv_bias),
                ("k_bias", "k_proj", c.qkv_bias),
                ("v_bias", "v_proj", c.qkv_bias),
                ("o_bias", "o_proj", c.o_bias),
            ] {
                let rows = if p == "o_bias" {
                    h
                } else if p == "q_bias" {
                    heads * hd
                } else {
                    kv * hd
                };
                ps.push(if has {
                    n.p(w, p, &format!("{key}.self_attn.{m}.bias"))?
                } else {
                    // not in the file: a zero bias, written nowhere on export (it must stay zero)
                    P {
                        name: p,
                        key: String::new(),
                        tensor: Tensor::zeros(rows, candle_core::DType::F32, &Device::Cpu)?,
                    }
                });
            }
        }
        let a = n.node(&format!("{node}/self_attn"), op, &[&y], ps)?;
        x = n.node(&format!("{node}/self_attn/add"), Add {}, &[&x, &a], vec![])?;
        let y = rms_norm(
            &mut n,
            w,
            &format!("{node}/post_attention_layernorm"),
            &format!("{key}.post_attention_layernorm.weight"),
            &x,
            c,
        )?;
        let gate = linear(
            &mut n,
            w,
            &format!("{node}/mlp/gate_proj"),
            &format!("{key}.mlp.gate_proj.weight"),
            &y,
            h,
        )?;
        let act = n.node(&format!("{node}/mlp/act_fn"), Silu {}, &[&gate], vec![])?;
        let up = linear(
            &mut n,
            w,
            &format!("{node}/mlp/up_proj"),
            &format!("{key}.mlp.up_proj.weight"),
            &y,
            h,
        )?;
        let m = n.node(&format!("{node}/mlp/mul"), Mul {}, &[&act, &up], vec![])?;
        let inner = n.shapes[&m][1];
        let down = linear(
            &mut n,
            w,
            &format!("{node}/mlp/down_proj"),
            &format!("{key}.mlp.down_proj.weight"),
            &m,
            inner,
        )?;
        x = n.node(&format!("{node}/mlp/add"), Add {}, &[&x, &down], vec![])?;
    }
    let y = rms_norm(&mut n, w, "model/norm", "model.norm.weight", &x, c)?;
    let head_key = if w.has("lm_head.weight") && !c.tie_word_embeddings {
        "lm_head.weight"
    } else {
        embed_key
    };
    let logits = linear(&mut n, w, "lm_head", head_key, &y, h)?;
    let mut g = n.finish(name, &[&logits], meta.clone())?;
    if head_key == embed_key {
        // tied embeddings: lm_head borrows the table, so it is pruned once and saved once
        g.tie("lm_head", "weight", "model/embed_tokens", "weight")?;
    }
    Ok(g)
}

fn rms_norm(
    n: &mut Net,
    w: &dyn Weights,
    node: &str,
    key: &str,
    x: &str,
    c: &LlamaConfig,
) -> Result<String> {
    let mut op = RmsNorm::new(c.hidden_size);
    op.eps = c.rms_norm_eps;
    let p = n.p(w, "weight", key)?;
    n.node(node, op, &[x], vec![p])
}

/// A Linear node without bias whose output width is read from the weight's first axis.
fn linear(
    n: &mut Net,
    w: &dyn Weights,
    node: &str,
    key: &str,
    x: &str,
    inp: usize,
) -> Result<String> {
    let weight = n.p(w, "weight", key)?;
    let out = weight.tensor.dims().first().copied().unwrap_or(0);
    let mut op = Linear::new(inp, out);
    op.bias = false;
    n.node(node, op, &[x], vec![weight])
}
