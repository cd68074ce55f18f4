//! Writing a graph read from a Hugging Face directory (or GGUF file) back as a directory the
//! family's loaders accept: `model.safetensors` under the original keys, `config.json` with the
//! pruned widths, the tokenizer and the small files copied along.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{DType, Tensor};
use prunekit_graph::{Graph, Op};

use super::gpt2::KeyLayout;
use super::{HfMeta, META_KEY};
use crate::error::{IoError, Result};

/// The layer index in a key (`encoder.layer.3.` / `model.layers.3.`) and where it sits.
fn layer_of(key: &str) -> Option<(usize, std::ops::Range<usize>)> {
    for pat in ["encoder.layer.", "model.layers.", "transformer.h.", "h."] {
        // GPT2Model's keys start with `h.` (no prefix): only there, not inside a word
        let found = if pat == "h." {
            key.starts_with(pat).then_some(0)
        } else {
            key.find(pat)
        };
        if let Some(at) = found {
            let start = at + pat.len();
            let len = key[start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .count();
            if len > 0 {
                return key[start..start + len]
                    .parse()
                    .ok()
                    .map(|i| (i, start..start + len));
            }
        }
    }
    None
}

/// The file keys of the parameters `g` holds (without a GPT-2 layout tag), skipping the
/// unkeyed zero biases.
fn held_keys(g: &Graph, meta: &HfMeta) -> BTreeSet<String> {
    g.nodes
        .iter()
        .flat_map(|n| n.params.keys().map(move |p| format!("{}.{p}", n.name)))
        .filter_map(|id| meta.keys.get(&id))
        .filter(|k| !k.is_empty())
        .map(|k| k.split('#').next().unwrap_or(k).to_string())
        .collect()
}

/// Per layer index, the keys of that layer with the index left out (`encoder.layer.*.output...`).
fn layer_keys<'a>(keys: impl Iterator<Item = &'a str>) -> BTreeMap<usize, BTreeSet<String>> {
    let mut out: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for k in keys {
        let k = k.split('#').next().unwrap_or(k);
        if let Some((i, r)) = layer_of(k) {
            out.entry(i)
                .or_default()
                .insert(format!("{}*{}", &k[..r.start], &k[r.end..]));
        }
    }
    out
}

/// The original indices of the layers whose keys the graph still holds, in order.
///
/// Errors: a layer that keeps only part of its tensors (a sub-block removed, e.g. a post-norm
/// BERT layer's feed-forward block alone): the family's loaders build whole layers from
/// config.json and would fill the missing tensors with random values.
fn meta_layers(g: &Graph, meta: &HfMeta) -> std::result::Result<BTreeSet<usize>, String> {
    let full = layer_keys(meta.keys.values().map(String::as_str));
    let held_keys = held_keys(g, meta);
    let held = layer_keys(held_keys.iter().map(String::as_str));
    for (i, keys) in &held {
        if let Some(all) = full.get(i) {
            let missing: Vec<&String> = all.difference(keys).collect();
            if !missing.is_empty() {
                let shown: Vec<String> = missing
                    .iter()
                    .take(3)
                    .map(|k| k.replacen('*', &i.to_string(), 1))
                    .collect();
                return Err(format!(
                    "layer {i} keeps only part of its tensors ({} missing, e.g. {}): the family's loaders build whole layers, so remove whole layers (attention and feed-forward together) or export as ONNX / our format",
                    missing.len(),
                    shown.join(", ")
                ));
            }
        }
    }
    Ok(held.into_keys().collect())
}

/// Writes `g` as a Hugging Face directory `dir` of its family, in `dtype` (F32, F16 or BF16).
/// Layers removed by depth pruning are renumbered 0..n.
///
/// Checks that the family's loaders can read the widths: every layer must have the same
/// intermediate width (both families) and, for Llama-family models, the same query and
/// key/value head counts; BERT stores fewer heads per layer in `pruned_heads`. With
/// `allow_nonuniform` the check is skipped (per-layer widths can then be read back by prunekit
/// only; the error says so).
///
/// Errors: `g` has no `meta.huggingface` (it was not read from such a directory); a parameter
/// without a key (a node added after import) or an unkeyed zero bias that became nonzero;
/// non-uniform widths; a file cannot be written; `dir` is `protect`.
pub fn save_dir(
    g: &Graph,
    dir: &Path,
    dtype: DType,
    allow_nonuniform: bool,
    protect: Option<&Path>,
) -> Result<()> {
    if let Some(p) = protect {
        if crate::same_file(p, dir) {
            return Err(IoError::file(dir, "refusing to write over the input model"));
        }
    }
    g.validate()?;
    let meta = HfMeta::of(g)
        .map_err(|m| IoError::file(dir, m))?
        .ok_or_else(|| {
            IoError::file(
                dir,
                format!("the model was not read from a Hugging Face directory or GGUF file (no meta.{META_KEY}); export it as ONNX or as our format"),
            )
        })?;
    // layer renumbering: the layers that remain, in order
    let layers = meta_layers(g, &meta).map_err(|m| IoError::file(dir, m))?;
    let renumber: BTreeMap<usize, usize> = layers
        .iter()
        .enumerate()
        .map(|(new, &old)| (old, new))
        .collect();
    let rename = |key: &str| -> String {
        match layer_of(key) {
            Some((i, r)) => format!("{}{}{}", &key[..r.start], renumber[&i], &key[r.end..]),
            None => key.to_string(),
        }
    };
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    // GPT-2's Conv1D tensors: the parameters recorded under one file key, reassembled below
    let mut parts: BTreeMap<String, Vec<(KeyLayout, Tensor)>> = BTreeMap::new();
    for n in &g.nodes {
        for (pname, p) in &n.params {
            let id = format!("{}.{pname}", n.name);
            let key = meta.keys.get(&id).ok_or_else(|| {
                IoError::file(
                    dir,
                    format!(
                        "parameter `{id}` has no Hugging Face key (a node added after import?)"
                    ),
                )
            })?;
            if key.is_empty() {
                let nz = prunekit_graph::count_nonzeros(p.tensor())?;
                if nz > 0 {
                    return Err(IoError::file(
                        dir,
                        format!("parameter `{id}` is not in the family's files and must stay zero, but {nz} of its values are not"),
                    ));
                }
                continue;
            }
            if key.contains('#') {
                let mut layout = KeyLayout::parse(key);
                layout.key = rename(&layout.key);
                parts
                    .entry(layout.key.clone())
                    .or_default()
                    .push((layout, p.tensor().clone()));
                continue;
            }
            let key = rename(key);
            if tensors.contains_key(&key) {
                continue; // a tied weight, written once
            }
            tensors.insert(key, p.tensor().to_dtype(dtype)?.contiguous()?);
        }
    }
    for (key, ps) in parts {
        let t = super::gpt2::assemble(&key, ps).map_err(|m| IoError::file(dir, m))?;
        tensors.insert(key, t.to_dtype(dtype)?.contiguous()?);
    }
    let config = config_with_widths(g, &meta, layers.len(), allow_nonuniform)
        .map_err(|m| IoError::file(dir, m))?;
    // the tensors no node computes with, written back: those of removed layers dropped, the
    // others renumbered; floats in the export's dtype, others (ids, masks) as they were
    for (key, t) in &g.carried {
        if layer_of(key).is_some_and(|(i, _)| !renumber.contains_key(&i)) {
            continue;
        }
        check_carried_width(key, t, &meta.config, &config).map_err(|m| IoError::file(dir, m))?;
        let t = if t.dtype().is_float() {
            t.to_dtype(dtype)?
        } else {
            t.clone()
        };
        tensors.insert(rename(key), t.contiguous()?);
    }
    std::fs::create_dir_all(dir).map_err(|e| IoError::io(dir, e))?;
    let st_meta: std::collections::HashMap<String, String> =
        [("format".to_string(), "pt".to_string())].into();
    let bytes = safetensors::tensor::serialize(tensors.iter().collect::<Vec<_>>(), Some(st_meta))
        .map_err(|e| IoError::file(dir, e.to_string()))?;
    crate::native::atomic_write(&dir.join("model.safetensors"), &bytes)?;
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| IoError::file(dir, e.to_string()))?;
    crate::native::atomic_write(&dir.join("config.json"), text.as_bytes())?;
    if let Some(t) = &meta.tokenizer {
        crate::native::atomic_write(&dir.join("tokenizer.json"), t.as_bytes())?;
    }
    for (rel, text) in &meta.files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| IoError::io(parent, e))?;
        }
        crate::native::atomic_write(&p, text.as_bytes())?;
    }
    Ok(())
}

/// A carried tensor ([`Graph::carried`], e.g. BERT's pooler) is not pruned with the model: when
/// pruning changed the hidden width (`hidden_size`, GPT-2's `n_embd`), one with an axis of the
/// original width no longer fits the exported model, and export refuses rather than write a
/// directory whose loaders fail or compute something else.
fn check_carried_width(
    key: &str,
    t: &Tensor,
    before: &serde_json::Value,
    after: &serde_json::Value,
) -> std::result::Result<(), String> {
    for field in ["hidden_size", "n_embd"] {
        let (Some(b), Some(a)) = (
            before.get(field).and_then(|v| v.as_u64()),
            after.get(field).and_then(|v| v.as_u64()),
        ) else {
            continue;
        };
        if a != b && t.dims().iter().any(|&d| d as u64 == b) {
            return Err(format!(
                "`{key}` {:?} is not computed by prunekit's graph (it is carried along unchanged) and has the original {field} {b}, which pruning changed to {a}: prune without the hidden width, or export to ONNX / our format",
                t.dims()
            ));
        }
    }
    Ok(())
}

/// The "will it load" check: whether the family's Hugging Face loaders (transformers'
/// `BertModel`, `LlamaForCausalLM`, ...) can read `g`'s widths from one config.json: every layer
/// the same intermediate width and (Llama family) the same query and key/value head counts, the
/// query heads a multiple of the key/value heads, and (BERT) a head width that is
/// `hidden_size / num_attention_heads`.
///
/// Errors: the reason, in one line, naming the field and the per-layer values; also when `g`
/// was not read from a Hugging Face directory or GGUF file.
pub fn check_loadable(g: &Graph) -> std::result::Result<(), String> {
    let meta = HfMeta::of(g)?.ok_or_else(|| {
        format!("the model was not read from a Hugging Face directory or GGUF file (no meta.{META_KEY})")
    })?;
    let layers = meta_layers(g, &meta)?;
    config_with_widths(g, &meta, layers.len(), false).map(|_| ())
}

/// Nodes whose output width the family's config.json cannot change: for BERT and GPT-2, whose
/// loaders derive the head width as hidden size / head count, the word embedding (its channel
/// space is the hidden size). Structured pruning for a loadable directory protects them.
/// Empty for the Llama family (its config states `head_dim`) and for graphs without HF meta.
pub fn width_locked_nodes(g: &Graph) -> Vec<String> {
    let Ok(Some(meta)) = HfMeta::of(g) else {
        return Vec::new();
    };
    if !matches!(meta.family.as_str(), "bert" | "gpt2") {
        return Vec::new();
    }
    g.nodes
        .iter()
        .filter(|n| {
            matches!(n.op, Op::Embedding(_))
                && (n.name.ends_with("word_embeddings") || n.name.ends_with("wte"))
        })
        .map(|n| n.name.clone())
        .collect()
}

/// Which loaders read the directory [`save_dir`] writes for `g`, when not every loader does:
/// a BERT or GPT-2 model with heads removed is written with `pruned_heads`, which transformers
/// 4.x applies at load (`PreTrainedModel.prune_heads`) but transformers 5 no longer reads (it
/// refuses the narrower tensors). `None` when the stock loaders of every version read it.
pub fn loaders_note(g: &Graph) -> Option<String> {
    let meta = HfMeta::of(g).ok()??;
    let heads_key = match meta.family.as_str() {
        "bert" => "num_attention_heads",
        "gpt2" => "n_head",
        _ => return None,
    };
    let orig = meta.config.get(heads_key)?.as_u64()? as usize;
    let w = layer_widths(g);
    let pruned: Vec<String> = w
        .heads
        .iter()
        .enumerate()
        .filter(|(_, &h)| h < orig)
        .map(|(i, h)| format!("{i}: {h}"))
        .collect();
    (!pruned.is_empty()).then(|| {
        format!(
            "heads were removed (layer: heads left of {orig}: {}), written as config.json's `pruned_heads`: transformers 4.x (and sentence-transformers on it) and prunekit read the directory; transformers 5 dropped head pruning and refuses its narrower attention tensors",
            pruned.join(", ")
        )
    })
}

/// The widths of each layer of a graph of the family, read off its ops.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerWidths {
    /// query heads per layer
    pub heads: Vec<usize>,
    /// key/value heads per layer
    pub kv_heads: Vec<usize>,
    /// head width (the same in every layer)
    pub head_dim: Vec<usize>,
    /// FFN (intermediate) width per layer
    pub intermediate: Vec<usize>,
    /// the hidden size (embedding width)
    pub hidden: usize,
}

/// Per-layer widths of `g`, in layer order: attention nodes give heads, the first Linear after
/// each attention gives the FFN width.
pub fn layer_widths(g: &Graph) -> LayerWidths {
    let mut w = LayerWidths::default();
    let mut want_ffn = false;
    for n in &g.nodes {
        match &n.op {
            Op::Embedding(e)
                if w.hidden == 0
                    && (n.name.ends_with("word_embeddings")
                        || n.name.ends_with("embed_tokens")
                        || n.name.ends_with("wte")) =>
            {
                w.hidden = e.embedding_dim
            }
            Op::Attention(a) => {
                w.heads.push(a.num_heads);
                w.kv_heads.push(a.num_kv_heads);
                w.head_dim.push(a.head_dim);
                want_ffn = true;
            }
            Op::Linear(l) if want_ffn => {
                w.intermediate.push(l.out_features);
                want_ffn = false;
            }
            _ => {}
        }
    }
    w
}

fn uniform(name: &str, v: &[usize], allow: bool) -> std::result::Result<usize, String> {
    let first = v.first().copied().unwrap_or(0);
    if v.iter().any(|&x| x != first) && !allow {
        return Err(format!(
            "{name} differs between layers ({v:?}); the family's Hugging Face loaders need one value for every layer: prune every layer by the same ratio (uniform), or pass --allow-nonuniform (the directory is then readable by prunekit only)"
        ));
    }
    Ok(first)
}

fn config_with_widths(
    g: &Graph,
    meta: &HfMeta,
    layers: usize,
    allow: bool,
) -> std::result::Result<serde_json::Value, String> {
    let w = layer_widths(g);
    let mut c = meta.config.clone();
    let obj = c
        .as_object_mut()
        .ok_or("the stored config is not an object")?;
    // GPT-2's config names its sizes n_layer / n_embd / n_inner / n_head
    let gpt2 = meta.family == "gpt2";
    let name = |hf: &'static str, gpt: &'static str| if gpt2 { gpt } else { hf };
    obj.insert(name("num_hidden_layers", "n_layer").into(), layers.into());
    obj.insert(name("hidden_size", "n_embd").into(), w.hidden.into());
    let inter = name("intermediate_size", "n_inner");
    obj.insert(inter.into(), uniform(inter, &w.intermediate, allow)?.into());
    match meta.family.as_str() {
        "bert" | "gpt2" => {
            let heads_key = name("num_attention_heads", "n_head");
            let orig = obj.get(heads_key).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
            let hd = uniform("head width", &w.head_dim, false)?;
            if hd * orig != w.hidden {
                return Err(format!(
                    "the family derives the head width from the hidden size / {heads_key}; the pruned hidden size {} with head width {hd} and {orig} heads does not fit",
                    w.hidden
                ));
            }
            // BertModel / GPT2Model prune `pruned_heads` from each layer at load
            // (PreTrainedModel.prune_heads): any that many indices
            let mut pruned = serde_json::Map::new();
            for (i, &h) in w.heads.iter().enumerate() {
                if h < orig {
                    pruned.insert(i.to_string(), (h..orig).collect::<Vec<_>>().into());
                }
            }
            obj.insert("pruned_heads".into(), pruned.into());
        }
        _ => {
            let heads = uniform("num_attention_heads", &w.heads, allow)?;
            let kv = uniform("num_key_value_heads", &w.kv_heads, allow)?;
            if let Some((h, k)) = w
                .heads
                .iter()
                .zip(&w.kv_heads)
                .find(|(h, k)| **k == 0 || *h % *k != 0)
            {
                return Err(format!(
                    "a layer has {h} query heads for {k} key/value heads; grouped-query attention needs the query heads to be a multiple of the key/value heads"
                ));
            }
            obj.insert("num_attention_heads".into(), heads.into());
            obj.insert("num_key_value_heads".into(), kv.into());
            obj.insert(
                "head_dim".into(),
                uniform("head width", &w.head_dim, false)?.into(),
            );
        }
    }
    Ok(c)
}
