//! GPT-2 decoders (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners")
//! from a Hugging Face directory: the graph of `GPT2LMHeadModel`, logits [T, vocab_size] per
//! sample.
//!
//! ```text
//! input_ids [T] -> wte + wpe (absolute positions) -> n_layer x (LayerNorm -> causal multi-head
//!   self-attention -> + residual -> LayerNorm -> c_proj(gelu(c_fc(x))) -> + residual)
//!   -> LayerNorm -> lm_head (tied to wte)
//! ```
//!
//! GPT-2 stores its projections as `Conv1D` modules: weights laid out [in, out] (the transpose of
//! a Linear's), and the query, key and value projections fused into one `attn.c_attn` of
//! [hidden, 3 x hidden]. The graph holds them as Linear-layout parameters; the key each one came
//! from records the layout ([`KeyLayout`]), so export writes the fused, transposed tensors
//! back. Node names are the modules' paths with `/` (`transformer/h/0/attn`).

use candle_core::{Device, Tensor};
use prunekit_graph::ops::{Add, Attention, Embedding, Linear, PositionalEmbedding};
use prunekit_graph::{Graph, InputKind};

use super::{field, pruned_heads, size, HfMeta, Net, Weights, P};
use crate::error::{IoError, Result};

/// The fields of a GPT-2 config.json that the graph uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    /// `n_embd`: the hidden size
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// `n_inner` (null: 4 x n_embd): the MLP width
    pub n_inner: usize,
    /// `n_positions`: the longest sequence
    pub n_positions: usize,
    pub layer_norm_epsilon: f64,
    /// `activation_function`: `gelu_new` / `gelu_pytorch_tanh` (tanh form), `gelu` (erf), `relu`
    pub activation: String,
    /// per layer, the query heads already pruned away (`pruned_heads`): their count
    pub pruned_heads: Vec<usize>,
}

impl Gpt2Config {
    /// Reads and checks a config.json.
    ///
    /// Errors: a missing or out-of-range size; an `activation_function` other than the GELU
    /// forms and ReLU; `scale_attn_weights: false` or `scale_attn_by_inverse_layer_idx: true`
    /// (other attention scales); `add_cross_attention`; n_embd not divisible by n_head.
    pub fn parse(c: &serde_json::Value) -> std::result::Result<Self, String> {
        let n_embd = size(c, "n_embd")?;
        let n_head = size(c, "n_head")?;
        let n_layer = size(c, "n_layer")?;
        let n_inner = match field::<u64>(c, "n_inner")? {
            Some(v) if v > 0 && v < (1 << 24) => v as usize,
            Some(v) => return Err(format!("n_inner = {v} is out of range")),
            None => 4 * n_embd,
        };
        let activation: String =
            field(c, "activation_function")?.unwrap_or_else(|| "gelu_new".into());
        if !matches!(
            activation.as_str(),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu" | "relu"
        ) {
            return Err(format!(
                "activation_function `{activation}` is not supported (gelu_new, gelu_pytorch_tanh, gelu, relu)"
            ));
        }
        if !field::<bool>(c, "scale_attn_weights")?.unwrap_or(true) {
            return Err("`scale_attn_weights: false` is not supported (the attention op scales by 1/sqrt(head_dim))".into());
        }
        if field::<bool>(c, "scale_attn_by_inverse_layer_idx")?.unwrap_or(false) {
            return Err("`scale_attn_by_inverse_layer_idx: true` is not supported".into());
        }
        if field::<bool>(c, "add_cross_attention")?.unwrap_or(false) {
            return Err("`add_cross_attention: true` is not supported".into());
        }
        if !n_embd.is_multiple_of(n_head) {
            return Err(format!(
                "n_embd {n_embd} is not divisible by n_head {n_head}"
            ));
        }
        Ok(Gpt2Config {
            vocab_size: size(c, "vocab_size")?,
            n_embd,
            n_layer,
            n_head,
            n_inner,
            n_positions: field::<u64>(c, "n_positions")?.unwrap_or(1024) as usize,
            layer_norm_epsilon: field(c, "layer_norm_epsilon")?.unwrap_or(1e-5),
            activation,
            pruned_heads: pruned_heads(c, n_layer, n_head)?,
        })
    }

    /// The per-head width, n_embd / n_head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// How a parameter sits in its file tensor: `KEY`, or `KEY#t` for a Conv1D weight stored
/// transposed ([in, out]), with `#part=i/n` when it is the `i`-th of `n` equal blocks of the
/// output axis (the query, key and value of `c_attn`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    /// the key in the file
    pub key: String,
    /// stored [in, out]
    pub transposed: bool,
    /// (block, blocks) of the output axis
    pub part: Option<(usize, usize)>,
}

impl KeyLayout {
    /// Parses a recorded key (`model.x.weight`, `h.0.attn.c_attn.weight#t#part=1/3`).
    pub fn parse(s: &str) -> Self {
        let mut it = s.split('#');
        let key = it.next().unwrap_or("").to_string();
        let mut out = KeyLayout {
            key,
            transposed: false,
            part: None,
        };
        for tag in it {
            if tag == "t" {
                out.transposed = true;
            } else if let Some(p) = tag.strip_prefix("part=") {
                out.part = p
                    .split_once('/')
                    .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)));
            }
        }
        out
    }

    /// The recorded form [`KeyLayout::parse`] reads.
    pub fn to_key(&self) -> String {
        let mut s = self.key.clone();
        if self.transposed {
            s.push_str("#t");
        }
        if let Some((i, n)) = self.part {
            s.push_str(&format!("#part={i}/{n}"));
        }
        s
    }
}

/// Loads a Conv1D tensor as a Linear-layout parameter: transposed when 2-D, and the `part`-th
/// of `parts` blocks of the output axis.
fn conv1d(
    w: &dyn Weights,
    name: &'static str,
    key: &str,
    part: Option<(usize, usize)>,
) -> Result<P> {
    let err = |m: String| IoError::file(w.path(), format!("tensor `{key}`: {m}"));
    let t = w.get(key).map_err(|m| IoError::file(w.path(), m))?;
    let transposed = t.rank() == 2;
    let t = if transposed {
        t.t()
            .and_then(|t| t.contiguous())
            .map_err(|e| err(e.to_string()))?
    } else {
        t
    };
    let t = match part {
        Some((i, n)) => {
            let rows = t.dims().first().copied().unwrap_or(0);
            if !rows.is_multiple_of(n) {
                return Err(err(format!(
                    "{rows} outputs do not split into {n} equal parts (query, key, value)"
                )));
            }
            let r = rows / n;
            t.narrow(0, i * r, r)
                .and_then(|t| t.contiguous())
                .map_err(|e| err(e.to_string()))?
        }
        None => t,
    };
    Ok(P {
        name,
        key: KeyLayout {
            key: key.to_string(),
            transposed,
            part,
        }
        .to_key(),
        tensor: t,
    })
}

/// Builds the graph for sequences of `seq_len` tokens (default: min(512, n_positions)).
pub(crate) fn build(
    name: &str,
    c: &Gpt2Config,
    w: &dyn Weights,
    device: &Device,
    seq_len: Option<usize>,
    meta: &mut HfMeta,
) -> Result<Graph> {
    let t = super::sequence_length(w, seq_len, c.n_positions, "n_positions")?;
    // GPT2LMHeadModel saves `transformer.`-prefixed keys, GPT2Model none
    let pre = super::key_prefix(w, "transformer.", "wte.weight");
    let k = |s: &str| format!("{pre}{s}");
    let (h, hd) = (c.n_embd, c.head_dim());
    let mut n = Net::new(w.path(), device);
    let ids = n.input("input_ids", &[t], InputKind::Ids);
    let wte_key = k("wte.weight");
    let x = n.node(
        "transformer/wte",
        Embedding {
            num_embeddings: c.vocab_size,
            embedding_dim: h,
        },
        &[&ids],
        vec![n.p(w, "weight", &wte_key)?],
    )?;
    let mut x = n.node(
        "transformer/wpe",
        PositionalEmbedding {
            max_len: c.n_positions,
            dim: h,
        },
        &[&x],
        vec![n.p(w, "weight", &k("wpe.weight"))?],
    )?;
    for i in 0..c.n_layer {
        let node = format!("transformer/h/{i}");
        let key = k(&format!("h.{i}"));
        let y = layer_norm(
            &mut n,
            w,
            &format!("{node}/ln_1"),
            &format!("{key}.ln_1"),
            &x,
            c,
        )?;
        let heads = c.n_head - c.pruned_heads[i];
        let mut att = Attention::new(h, heads, hd);
        att.causal = true;
        let qkv_w = format!("{key}.attn.c_attn.weight");
        let qkv_b = format!("{key}.attn.c_attn.bias");
        let mut ps = Vec::new();
        for (j, (pw, pb)) in [
            ("q_weight", "q_bias"),
            ("k_weight", "k_bias"),
            ("v_weight", "v_bias"),
        ]
        .into_iter()
        .enumerate()
        {
            ps.push(conv1d(w, pw, &qkv_w, Some((j, 3)))?);
            ps.push(conv1d(w, pb, &qkv_b, Some((j, 3)))?);
        }
        ps.push(conv1d(
            w,
            "o_weight",
            &format!("{key}.attn.c_proj.weight"),
            None,
        )?);
        ps.push(conv1d(
            w,
            "o_bias",
            &format!("{key}.attn.c_proj.bias"),
            None,
        )?);
        let a = n.node(&format!("{node}/attn"), att, &[&y], ps)?;
        x = n.node(&format!("{node}/attn/add"), Add {}, &[&x, &a], vec![])?;
        let y = layer_norm(
            &mut n,
            w,
            &format!("{node}/ln_2"),
            &format!("{key}.ln_2"),
            &x,
            c,
        )?;
        let fc = conv1d_linear(
            &mut n,
            w,
            &format!("{node}/mlp/c_fc"),
            &format!("{key}.mlp.c_fc"),
            &y,
            h,
        )?;
        let act = super::activation(&mut n, &format!("{node}/mlp/act"), &c.activation, &fc)?;
        let inner = n.shapes[&act][1];
        let proj = conv1d_linear(
            &mut n,
            w,
            &format!("{node}/mlp/c_proj"),
            &format!("{key}.mlp.c_proj"),
            &act,
            inner,
        )?;
        x = n.node(&format!("{node}/mlp/add"), Add {}, &[&x, &proj], vec![])?;
    }
    let y = layer_norm(&mut n, w, "transformer/ln_f", &k("ln_f"), &x, c)?;
    // GPT2LMHeadModel ties lm_head to wte (saved without `lm_head.weight`, or with a copy)
    let weight = n.p(w, "weight", &wte_key)?;
    let mut op = Linear::new(h, c.vocab_size);
    op.bias = false;
    let logits = n.node("lm_head", op, &[&y], vec![weight])?;
    let mut g = n.finish(name, &[&logits], meta.clone())?;
    g.tie("lm_head", "weight", "transformer/wte", "weight")?;
    Ok(g)
}

fn layer_norm(
    n: &mut Net,
    w: &dyn Weights,
    node: &str,
    key: &str,
    x: &str,
    c: &Gpt2Config,
) -> Result<String> {
    super::layer_norm(n, w, node, key, x, (c.n_embd, c.layer_norm_epsilon))
}

/// A Conv1D module as a Linear node (weight transposed), output width from the weight.
fn conv1d_linear(
    n: &mut Net,
    w: &dyn Weights,
    node: &str,
    key: &str,
    x: &str,
    inp: usize,
) -> Result<String> {
    let weight = conv1d(w, "weight", &format!("{key}.weight"), None)?;
    let out = weight.tensor.dims().first().copied().unwrap_or(0);
    let bias = conv1d(w, "bias", &format!("{key}.bias"), None)?;
    n.node(node, Linear::new(inp, out), &[x], vec![weight, bias])
}

/// Reassembles the file tensors of [`KeyLayout`]-recorded parameters: parts concatenated along
/// the output axis in block order, then transposed back to [in, out]. `parts`: (layout, tensor in
/// Linear layout) of every parameter recorded under one file key.
///
/// Errors: a block missing or given twice.
pub(crate) fn assemble(
    key: &str,
    mut parts: Vec<(KeyLayout, Tensor)>,
) -> std::result::Result<Tensor, String> {
    parts.sort_by_key(|(l, _)| l.part.map(|p| p.0).unwrap_or(0));
    let n = parts[0].0.part.map(|p| p.1).unwrap_or(1);
    let blocks: Vec<usize> = parts
        .iter()
        .map(|(l, _)| l.part.map(|p| p.0).unwrap_or(0))
        .collect();
    if blocks != (0..n).collect::<Vec<_>>() {
        return Err(format!(
            "`{key}`: the graph holds blocks {blocks:?} of its {n} parts"
        ));
    }
    let transposed = parts[0].0.transposed;
    let ts: Vec<Tensor> = parts.into_iter().map(|(_, t)| t).collect();
    let t = Tensor::cat(&ts, 0).map_err(|e| format!("`{key}`: {e}"))?;
    if transposed {
        t.t()
            .and_then(|t| t.contiguous())
            .map_err(|e| format!("`{key}`: {e}"))
    } else {
        Ok(t)
    }
}
