//! BERT (Devlin et al. 2019) from a Hugging Face `bert` directory: the graph of `BertModel`
//! without its pooler, whose output is `last_hidden_state` [T, hidden_size] per sample.
//!
//! ```text
//! input_ids [T], token_type_ids [T] -> word + token type embeddings, + absolute positions
//!   -> LayerNorm -> num_hidden_layers x (self-attention over attention_mask [T] -> + residual ->
//!   LayerNorm -> Linear intermediate_size -> GELU -> Linear hidden_size -> + residual -> LayerNorm)
//! ```
//!
//! Node names are the modules' paths with `/` (`encoder/layer/0/attention` holds query, key,
//! value and `attention.output.dense`). Keys are read with or without the `bert.` prefix
//! (sentence-transformers directories have none).

use candle_core::Device;
use prunekit_graph::ops::{
    Add, Attention, Embedding, L2Normalize, Linear, MaskedMeanPool, PositionalEmbedding,
};
use prunekit_graph::{Graph, InputKind};

use super::{field, size, HfMeta, Net, Weights};
use crate::error::Result;

/// The fields of a BERT config.json that the graph uses.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    /// the GELU form: `gelu` (exact, erf) or `gelu_new` / `gelu_pytorch_tanh` (tanh)
    pub hidden_act: String,
    /// per layer, the query heads already pruned away (`pruned_heads`): their count
    pub pruned_heads: Vec<usize>,
}

impl BertConfig {
    /// Reads and checks a config.json.
    ///
    /// Errors: a missing or out-of-range size; `hidden_act` other than the GELU forms and ReLU;
    /// `position_embedding_type` other than `absolute`; a decoder (`is_decoder`,
    /// `add_cross_attention`); hidden_size not divisible by num_attention_heads.
    pub fn parse(c: &serde_json::Value) -> std::result::Result<Self, String> {
        let cfg = BertConfig {
            vocab_size: size(c, "vocab_size")?,
            hidden_size: size(c, "hidden_size")?,
            num_hidden_layers: size(c, "num_hidden_layers")?,
            num_attention_heads: size(c, "num_attention_heads")?,
            intermediate_size: size(c, "intermediate_size")?,
            max_position_embeddings: size(c, "max_position_embeddings")?,
            type_vocab_size: field::<u64>(c, "type_vocab_size")?.unwrap_or(2) as usize,
            layer_norm_eps: field(c, "layer_norm_eps")?.unwrap_or(1e-12),
            hidden_act: field(c, "hidden_act")?.unwrap_or_else(|| "gelu".to_string()),
            pruned_heads: Vec::new(),
        };
        if !matches!(
            cfg.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu"
        ) {
            return Err(format!(
                "hidden_act `{}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)",
                cfg.hidden_act
            ));
        }
        if let Some(p) = field::<String>(c, "position_embedding_type")? {
            if p != "absolute" {
                return Err(format!(
                    "position_embedding_type `{p}` is not supported (only `absolute`)"
                ));
            }
        }
        for flag in ["is_decoder", "add_cross_attention"] {
            if field::<bool>(c, flag)?.unwrap_or(false) {
                return Err(format!("`{flag}: true` (a BERT decoder) is not supported"));
            }
        }
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            ));
        }
        let mut cfg = cfg;
        cfg.pruned_heads = super::pruned_heads(c, cfg.num_hidden_layers, cfg.num_attention_heads)?;
        Ok(cfg)
    }

    /// The per-head width, hidden_size / num_attention_heads.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Builds the graph of a BERT directory for sequences of `seq_len` tokens (default: min(512,
/// max_position_embeddings)).
pub(crate) fn build(
    name: &str,
    c: &BertConfig,
    w: &dyn Weights,
    device: &Device,
    seq_len: Option<usize>,
    meta: &mut HfMeta,
) -> Result<Graph> {
    let t = super::sequence_length(
        w,
        seq_len,
        c.max_position_embeddings,
        "max_position_embeddings",
    )?;
    let pre = super::key_prefix(w, "bert.", "embeddings.word_embeddings.weight");
    let (h, hd) = (c.hidden_size, c.head_dim());
    let mut n = Net::new(w.path(), device);
    let ids = n.input("input_ids", &[t], InputKind::Ids);
    let types = n.input("token_type_ids", &[t], InputKind::Ids);
    let mask = n.input("attention_mask", &[t], InputKind::Float);
    let k = |s: &str| format!("{pre}{s}");
    let emb = |num, dim| Embedding {
        num_embeddings: num,
        embedding_dim: dim,
    };
    let word = n.node(
        "embeddings/word_embeddings",
        emb(c.vocab_size, h),
        &[&ids],
        vec![n.p(w, "weight", &k("embeddings.word_embeddings.weight"))?],
    )?;
    let tt = n.node(
        "embeddings/token_type_embeddings",
        emb(c.type_vocab_size, h),
        &[&types],
        vec![n.p(w, "weight", &k("embeddings.token_type_embeddings.weight"))?],
    )?;
    let x = n.node("embeddings/add", Add {}, &[&word, &tt], vec![])?;
    let x = n.node(
        "embeddings/position_embeddings",
        PositionalEmbedding {
            max_len: c.max_position_embeddings,
            dim: h,
        },
        &[&x],
        vec![n.p(w, "weight", &k("embeddings.position_embeddings.weight"))?],
    )?;
    let mut x = layer_norm(
        &mut n,
        w,
        "embeddings/LayerNorm",
        &k("embeddings.LayerNorm"),
        &x,
        h,
        c,
    )?;
    for i in 0..c.num_hidden_layers {
        let node = format!("encoder/layer/{i}");
        let key = k(&format!("encoder.layer.{i}"));
        let heads = c.num_attention_heads - c.pruned_heads[i];
        let mut att = Attention::new(h, heads, hd);
        att.out_dim = h;
        let mut ps = Vec::new();
        for (pw, pb, m) in [
            ("q_weight", "q_bias", "query"),
            ("k_weight", "k_bias", "key"),
            ("v_weight", "v_bias", "value"),
        ] {
            ps.push(n.p(w, pw, &format!("{key}.attention.self.{m}.weight"))?);
            ps.push(n.p(w, pb, &format!("{key}.attention.self.{m}.bias"))?);
        }
        ps.push(n.p(
            w,
            "o_weight",
            &format!("{key}.attention.output.dense.weight"),
        )?);
        ps.push(n.p(w, "o_bias", &format!("{key}.attention.output.dense.bias"))?);
        let a = n.node(&format!("{node}/attention"), att, &[&x, &mask], ps)?;
        let r = n.node(&format!("{node}/attention/add"), Add {}, &[&x, &a], vec![])?;
        let y = layer_norm(
            &mut n,
            w,
            &format!("{node}/attention/output/LayerNorm"),
            &format!("{key}.attention.output.LayerNorm"),
            &r,
            h,
            c,
        )?;
        let inter = linear(
            &mut n,
            w,
            &format!("{node}/intermediate/dense"),
            &format!("{key}.intermediate.dense"),
            &y,
            h,
        )?;
        let act = super::activation(
            &mut n,
            &format!("{node}/intermediate/act"),
            &c.hidden_act,
            &inter,
        )?;
        let inner = n.shapes[&act][1];
        let out = linear(
            &mut n,
            w,
            &format!("{node}/output/dense"),
            &format!("{key}.output.dense"),
            &act,
            inner,
        )?;
        let r = n.node(&format!("{node}/output/add"), Add {}, &[&y, &out], vec![])?;
        x = layer_norm(
            &mut n,
            w,
            &format!("{node}/output/LayerNorm"),
            &format!("{key}.output.LayerNorm"),
            &r,
            h,
            c,
        )?;
    }
    // a sentence-transformers directory: its Pooling (mean over the attention mask) and Normalize
    // modules, so the graph's output is the sentence embedding [hidden]
    let out = match sentence_pooling(meta) {
        Some(normalize) => {
            let pooled = n.node(
                "pooling",
                MaskedMeanPool { dim: h, eps: 1e-9 },
                &[&x, &mask],
                vec![],
            )?;
            if normalize {
                n.node(
                    "normalize",
                    L2Normalize { dim: h, eps: 1e-12 },
                    &[&pooled],
                    vec![],
                )?
            } else {
                pooled
            }
        }
        None => x,
    };
    n.finish(name, &[&out], meta.clone())
}

/// Whether the directory is a sentence-transformers model that mean-pools its tokens
/// (`modules.json` with a Pooling module whose config has `pooling_mode_mean_tokens`), and if so
/// whether a Normalize module follows. Other pooling modes (CLS, max) keep the last hidden state
/// as the output.
fn sentence_pooling(meta: &HfMeta) -> Option<bool> {
    let modules: serde_json::Value = serde_json::from_str(meta.files.get("modules.json")?).ok()?;
    let modules = modules.as_array()?;
    let ty = |m: &serde_json::Value| m["type"].as_str().unwrap_or("").to_string();
    let pooling = modules.iter().find(|m| ty(m).ends_with("models.Pooling"))?;
    let path = pooling["path"].as_str().unwrap_or("1_Pooling");
    let cfg: serde_json::Value =
        serde_json::from_str(meta.files.get(&format!("{path}/config.json"))?).ok()?;
    let only_mean = cfg["pooling_mode_mean_tokens"] == true
        && ["cls_token", "max_tokens", "mean_sqrt_len_tokens"]
            .iter()
            .all(|m| cfg[format!("pooling_mode_{m}")] != true);
    only_mean.then(|| modules.iter().any(|m| ty(m).ends_with("models.Normalize")))
}

fn layer_norm(
    n: &mut Net,
    w: &dyn Weights,
    node: &str,
    key: &str,
    x: &str,
    h: usize,
    c: &BertConfig,
) -> Result<String> {
    super::layer_norm(n, w, node, key, x, (h, c.layer_norm_eps))
}

/// A Linear node whose output width is read from its weight's first axis.
fn linear(
    n: &mut Net,
    w: &dyn Weights,
    node: &str,
    key: &str,
    x: &str,
    inp: usize,
) -> Result<String> {
    let weight = n.p(w, "weight", &format!("{key}.weight"))?;
    let out = weight.tensor.dims().first().copied().unwrap_or(0);
    let bias = n.p(w, "bias", &format!("{key}.bias"))?;
    n.node(node, Linear::new(inp, out), &[x], vec![weight, bias])
}
