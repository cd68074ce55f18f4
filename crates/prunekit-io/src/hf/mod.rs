//! Hugging Face model directories (`config.json` + safetensors weights + tokenizer files), in and
//! out, for the Transformer families prunekit's graph expresses exactly:
//!
//! | `model_type` | graph | notes |
//! | --- | --- | --- |
//! | `bert` | [`bert`]: embeddings (word + token type + absolute position) -> LayerNorm -> post-LN encoder layers | `BertModel`'s `last_hidden_state` [T, hidden]; sentence-transformers directories (no `bert.` prefix) too |
//! | `llama`, `mistral`, `qwen2` | [`llama`]: pre-RMSNorm decoder layers of causal grouped-query attention with RoPE and a SwiGLU MLP, final norm, `lm_head` | logits [T, vocab]; tied embeddings |
//!
//! Weights come from `model.safetensors`, a sharded `model.safetensors.index.json` or
//! `pytorch_model.bin` (through [`crate::pytorch`]); safetensors files are memory-mapped and each
//! tensor is converted to f32 once, when its node is built. A GGUF file ([`crate::gguf`]) becomes
//! the same Llama graph.
//!
//! The graph keeps what export needs in `meta["huggingface"]` ([`HfMeta`]): the family, the
//! original config.json, the Hugging Face key of every parameter and the tokenizer, so
//! [`save_dir`] writes a directory the family's loaders accept, with the pruned widths.
//!
//! Sequence length: graphs have fixed per-sample shapes, so a directory is read for one sequence
//! length T ([`HfOptions::seq_len`]; default: the tokenizer's fixed padding length, else
//! min(max_position_embeddings, 512)). [`set_sequence_length`] changes it later.

pub mod bert;
mod export;
pub mod gpt2;
pub mod llama;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use prunekit_graph::{Graph, InputKind, InputSpec, Node, Op, Param, Shapes};
use serde::{Deserialize, Serialize};

use crate::error::{one_line, IoError, Result};

pub use export::{
    check_loadable, layer_widths, loaders_note, save_dir, width_locked_nodes, LayerWidths,
};

/// The key of [`HfMeta`] in `Graph::meta`.
pub const META_KEY: &str = "huggingface";

/// Options for reading a directory or GGUF file.
#[derive(Clone, Debug, Default)]
pub struct HfOptions {
    /// tokens per sample T of the graph's inputs (None: the tokenizer's fixed padding length,
    /// else min(max_position_embeddings, 512))
    pub seq_len: Option<usize>,
}

/// What a graph read from a Hugging Face directory (or a GGUF file) keeps for export and for the
/// text commands: stored as JSON in `Graph::meta["huggingface"]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HfMeta {
    /// `bert`, `gpt2` or `llama` (Llama, Mistral and Qwen2 share the Llama graph)
    pub family: String,
    /// the original config.json (export rewrites its widths)
    pub config: serde_json::Value,
    /// the Hugging Face key of each parameter: `"node.param"` -> key
    pub keys: BTreeMap<String, String>,
    /// tokenizer.json's text, when the directory has one (or the GGUF metadata built one)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// other small files copied along on export (tokenizer_config.json, special_tokens_map.json,
    /// sentence-transformers' modules.json and 1_Pooling/config.json, ...): relative path -> text
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

impl HfMeta {
    /// The metadata of a graph read from a Hugging Face directory or a GGUF file, if it is one.
    ///
    /// Errors: `meta["huggingface"]` exists but does not parse.
    pub fn of(g: &Graph) -> std::result::Result<Option<HfMeta>, String> {
        match g.meta.get(META_KEY) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| format!("meta.{META_KEY} is malformed: {e}")),
        }
    }
}

/// The most bytes a config or tokenizer file may hold (the largest real tokenizer.json files
/// are about 20 MB).
const MAX_TEXT_FILE: u64 = 64 << 20;

pub(crate) fn read_text(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path)
        .map_err(|e| IoError::io(path, e))?
        .len();
    if len > MAX_TEXT_FILE {
        return Err(IoError::file(
            path,
            format!(
                "{len} bytes, more than the {MAX_TEXT_FILE} a config or tokenizer file may hold"
            ),
        ));
    }
    std::fs::read_to_string(path).map_err(|e| IoError::io(path, e))
}

/// Small files of a directory that export copies along, if present.
const COPIED_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

/// Reads a Hugging Face model directory into a graph.
///
/// Errors (each names the file and the field or tensor): no config.json, or one that does not
/// parse; a `model_type` other than `bert`, `gpt2`, `llama`, `mistral`, `qwen2`; a config field that
/// changes the computation in a way the graph does not express (named); no weights file; a
/// tensor the config implies that the weights lack, or of another shape; a tokenizer.json that
/// does not parse.
pub fn load_dir(dir: &Path, device: &Device, opts: &HfOptions) -> Result<Graph> {
    let config_path = dir.join("config.json");
    let text = read_text(&config_path)?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| IoError::file(&config_path, format!("does not parse: {e}")))?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| IoError::file(&config_path, "no `model_type` field"))?
        .to_string();
    let tokenizer = match dir.join("tokenizer.json") {
        p if p.is_file() => {
            let t = read_text(&p)?;
            check_tokenizer(&p, &t)?;
            Some(t)
        }
        _ => None,
    };
    let mut files = BTreeMap::new();
    for f in COPIED_FILES {
        let p = dir.join(f);
        if p.is_file() {
            files.insert(f.to_string(), read_text(&p)?);
        }
    }
    let weights = DirWeights::open(dir)?;
    let seq_len = opts
        .seq_len
        .or_else(|| tokenizer.as_deref().and_then(fixed_padding));
    let mut meta = HfMeta {
        family: String::new(),
        config: config.clone(),
        keys: BTreeMap::new(),
        tokenizer,
        files,
    };
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    let mut g = match model_type.as_str() {
        "bert" => {
            let c = bert::BertConfig::parse(&config).map_err(|m| IoError::file(&config_path, m))?;
            meta.family = "bert".into();
            bert::build(&name, &c, &weights, device, seq_len, &mut meta)?
        }
        "llama" | "mistral" | "qwen2" => {
            let c = llama::LlamaConfig::parse(&config, &model_type)
                .map_err(|m| IoError::file(&config_path, m))?;
            meta.family = "llama".into();
            llama::build(&name, &c, &weights, device, seq_len, &mut meta)?
        }
        "gpt2" => {
            let c = gpt2::Gpt2Config::parse(&config).map_err(|m| IoError::file(&config_path, m))?;
            meta.family = "gpt2".into();
            gpt2::build(&name, &c, &weights, device, seq_len, &mut meta)?
        }
        other => {
            return Err(IoError::file(
                &config_path,
                format!(
                    "model_type `{other}` is not read; prunekit reads bert, gpt2, llama, mistral and qwen2 directories (or export the model to ONNX)"
                ),
            ))
        }
    };
    weights.carry_unused(&mut g)?;
    Ok(g)
}

/// Checks that a tokenizer.json parses with the `tokenizers` crate.
pub(crate) fn check_tokenizer(path: &Path, text: &str) -> Result<()> {
    parse_tokenizer(text)
        .map(|_| ())
        .map_err(|e| IoError::file(path, format!("the tokenizer does not parse: {e}")))
}

/// Checks the merges of a BPE model before the `tokenizers` crate builds it: both parts and
/// their concatenation (`a` + `b` without the continuing-subword prefix) must be tokens of the
/// vocabulary. tokenizers 0.23's `BpeBuilder::build` copies each merge into a buffer as long as
/// the longest token and panics on a merge longer than that (or on a `b` shorter than the
/// prefix); a merge of known tokens cannot be.
pub(crate) fn check_merges<'m>(
    has: &dyn Fn(&str) -> bool,
    merges: impl IntoIterator<Item = (&'m str, &'m str)>,
    prefix: &str,
) -> std::result::Result<(), String> {
    for (i, (a, b)) in merges.into_iter().enumerate() {
        let Some(rest) = b
            .strip_prefix(prefix)
            .or(if prefix.is_empty() { Some(b) } else { None })
        else {
            return Err(format!("merge {i} (`{a} {b}`): `{b}` does not start with the continuing-subword prefix `{prefix}`"));
        };
        for t in [a, b] {
            if !has(t) {
                return Err(format!(
                    "merge {i} (`{a} {b}`): `{t}` is not in the vocabulary"
                ));
            }
        }
        if !has(&format!("{a}{rest}")) {
            return Err(format!(
                "merge {i} (`{a} {b}`): the merged token `{a}{rest}` is not in the vocabulary"
            ));
        }
    }
    Ok(())
}

/// Parses a tokenizer.json with the `tokenizers` crate, after checking a BPE model's merges
/// ([`check_merges`]); a panic inside the crate on some other malformed input is contained as an
/// error (counted in [`crate::pytorch::CONTAINED_PANICS`]).
///
/// Errors: the JSON does not describe a tokenizer (the crate's message).
pub fn parse_tokenizer(text: &str) -> std::result::Result<tokenizers::Tokenizer, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let model = &v["model"];
    if model["type"] == "BPE" {
        if let (Some(vocab), Some(merges)) =
            (model["vocab"].as_object(), model["merges"].as_array())
        {
            let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
            let pairs: Vec<(&str, &str)> = merges
                .iter()
                .map(|m| match m {
                    serde_json::Value::String(s) => {
                        s.split_once(' ').ok_or("a merge is not two tokens")
                    }
                    serde_json::Value::Array(p) if p.len() == 2 => {
                        match (p[0].as_str(), p[1].as_str()) {
                            (Some(a), Some(b)) => Ok((a, b)),
                            _ => Err("a merge is not two strings"),
                        }
                    }
                    _ => Err("a merge is not two tokens"),
                })
                .collect::<std::result::Result<_, _>>()?;
            check_merges(&|t| vocab.contains_key(t), pairs, prefix)?;
        }
    }
    std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>())
        .unwrap_or_else(|_| {
            crate::pytorch::CONTAINED_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err("malformed tokenizer (the tokenizers crate panicked on it)".into())
        })
        .map_err(|e| e.to_string())
}

/// The fixed padding length of a tokenizer.json (`"padding": {"strategy": {"Fixed": N}}`).
fn fixed_padding(text: &str) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("padding")?
        .get("strategy")?
        .get("Fixed")?
        .as_u64()
        .map(|n| n as usize)
}

/// Changes the sequence length T of every `[T]` input of a graph read from a Hugging Face
/// directory or GGUF file and re-checks every shape (T must stay within the learned position
/// table of a BERT model).
///
/// Errors: the graph's shape rules refuse T (the message names the node).
pub fn set_sequence_length(g: &mut Graph, t: usize) -> Result<()> {
    for i in &mut g.inputs {
        if i.shape.len() == 1 {
            i.shape = vec![t];
        }
    }
    g.validate()?;
    Ok(())
}

/// Tensors by Hugging Face key, converted to f32 on request.
pub(crate) trait Weights {
    /// Where the weights come from, for error messages.
    fn path(&self) -> &Path;
    fn has(&self, key: &str) -> bool;
    /// The tensor under `key` as f32. Errors name the key.
    fn get(&self, key: &str) -> std::result::Result<Tensor, String>;
}

/// The weights of a directory: memory-mapped safetensors (one file or an index of shards) or a
/// PyTorch `pytorch_model.bin` read whole.
enum DirWeights {
    Mapped {
        path: PathBuf,
        st: candle_core::safetensors::MmapedSafetensors,
        keys: std::collections::HashSet<String>,
    },
    Loaded {
        path: PathBuf,
        tensors: HashMap<String, Tensor>,
    },
}

impl DirWeights {
    fn open(dir: &Path) -> Result<DirWeights> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let bin = dir.join("pytorch_model.bin");
        if single.is_file() || index.is_file() {
            let (path, files) = if single.is_file() {
                (single.clone(), vec![single])
            } else {
                (index.clone(), shards(dir, &index)?)
            };
            // SAFETY: the files are mapped read-only; like every memory-mapped reader (safetensors,
            // candle) we rely on nobody truncating them while the model is being read. The
            // safetensors header is checked against each file's length before any tensor is read.
            let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
                .map_err(|e| {
                    IoError::file(
                        &path,
                        format!("corrupt or truncated safetensors: {}", one_line(e)),
                    )
                })?;
            let keys = st.tensors().into_iter().map(|(k, _)| k).collect();
            return Ok(DirWeights::Mapped { path, st, keys });
        }
        if bin.is_file() {
            let tensors = crate::pytorch::read_state_dict(&bin)?.into_iter().collect();
            return Ok(DirWeights::Loaded { path: bin, tensors });
        }
        Err(IoError::file(
            dir,
            "no weights: neither model.safetensors, model.safetensors.index.json nor pytorch_model.bin",
        ))
    }
}

/// The shard files an index names, each inside `dir`.
fn shards(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let v: serde_json::Value = serde_json::from_str(&read_text(index)?)
        .map_err(|e| IoError::file(index, format!("does not parse: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| IoError::file(index, "no `weight_map` object"))?;
    let mut files: Vec<String> = Vec::new();
    for (key, f) in map {
        let f = f.as_str().ok_or_else(|| {
            IoError::file(index, format!("weight_map[`{key}`] is not a file name"))
        })?;
        if f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(IoError::file(
                index,
                format!("weight_map[`{key}`] = `{f}` is not a file of the model's directory"),
            ));
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    files.sort();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

impl DirWeights {
    /// Every key of the weights.
    fn names(&self) -> Vec<String> {
        match self {
            DirWeights::Mapped { keys, .. } => keys.iter().cloned().collect(),
            DirWeights::Loaded { tensors, .. } => tensors.keys().cloned().collect(),
        }
    }

    /// The tensor under `key` in its own dtype.
    fn get_raw(&self, key: &str) -> std::result::Result<Tensor, String> {
        match self {
            DirWeights::Mapped { st, .. } => st
                .load(key, &Device::Cpu)
                .map_err(|e| format!("tensor `{key}`: {}", one_line(e))),
            DirWeights::Loaded { tensors, .. } => tensors
                .get(key)
                .cloned()
                .ok_or_else(|| format!("tensor `{key}` is missing")),
        }
    }

    /// The tensors of the weights that no parameter of `g` was read from (BERT's pooler,
    /// buffers such as `position_ids`), in their own dtype, into [`Graph::carried`].
    fn carry_unused(&self, g: &mut Graph) -> Result<()> {
        let meta = HfMeta::of(g)
            .map_err(|m| IoError::file(self.path(), m))?
            .unwrap_or_default();
        let used: std::collections::HashSet<String> = meta
            .keys
            .values()
            .map(|k| gpt2::KeyLayout::parse(k).key)
            .collect();
        for name in self.names() {
            if !used.contains(&name) {
                let t = self
                    .get_raw(&name)
                    .map_err(|m| IoError::file(self.path(), m))?;
                g.carried.insert(name, t);
            }
        }
        Ok(())
    }
}

impl Weights for DirWeights {
    fn path(&self) -> &Path {
        match self {
            DirWeights::Mapped { path, .. } | DirWeights::Loaded { path, .. } => path,
        }
    }
    fn has(&self, key: &str) -> bool {
        match self {
            DirWeights::Mapped { keys, .. } => keys.contains(key),
            DirWeights::Loaded { tensors, .. } => tensors.contains_key(key),
        }
    }
    fn get(&self, key: &str) -> std::result::Result<Tensor, String> {
        let t = match self {
            DirWeights::Mapped { st, keys, .. } => {
                if !keys.contains(key) {
                    return Err(format!("tensor `{key}` is missing"));
                }
                st.load(key, &Device::Cpu)
                    .map_err(|e| format!("tensor `{key}`: {}", one_line(e)))?
            }
            DirWeights::Loaded { tensors, .. } => tensors
                .get(key)
                .cloned()
                .ok_or_else(|| format!("tensor `{key}` is missing"))?,
        };
        t.to_dtype(DType::F32)
            .map_err(|e| format!("tensor `{key}`: {}", one_line(e)))
    }
}

/// A parameter of a node being built: its name in the op, its tensor and the key it had in the
/// file (kept for export).
pub(crate) struct P {
    pub name: &'static str,
    pub key: String,
    pub tensor: Tensor,
}

/// Builds a graph node by node from tensors of a file (no random initialisation): every declared
/// parameter of each op must be given, with its declared shape.
pub(crate) struct Net<'a> {
    pub path: &'a Path,
    pub device: Device,
    pub inputs: Vec<InputSpec>,
    pub nodes: Vec<Node>,
    pub shapes: Shapes,
    pub keys: BTreeMap<String, String>,
}

impl<'a> Net<'a> {
    pub fn new(path: &'a Path, device: &Device) -> Self {
        Net {
            path,
            device: device.clone(),
            inputs: Vec::new(),
            nodes: Vec::new(),
            shapes: Shapes::new(),
            keys: BTreeMap::new(),
        }
    }

    pub fn input(&mut self, name: &str, shape: &[usize], kind: InputKind) -> String {
        self.inputs.push(InputSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
            kind,
        });
        self.shapes.insert(name.to_string(), shape.to_vec());
        name.to_string()
    }

    /// Loads `key` from `w` as a parameter named `name`.
    pub fn p(&self, w: &dyn Weights, name: &'static str, key: &str) -> Result<P> {
        let tensor = w.get(key).map_err(|m| IoError::file(w.path(), m))?;
        Ok(P {
            name,
            key: key.to_string(),
            tensor,
        })
    }

    /// Adds node `name` computing `op` of `inputs` with exactly the parameters `params`.
    pub fn node(
        &mut self,
        name: &str,
        op: impl Into<Op>,
        inputs: &[&str],
        params: Vec<P>,
    ) -> Result<String> {
        let op = op.into();
        let err = |msg: String| IoError::Node {
            path: self.path.to_path_buf(),
            node: name.to_string(),
            op_type: op.type_name().to_string(),
            msg,
        };
        let ins: Vec<&[usize]> = inputs
            .iter()
            .map(|i| {
                self.shapes
                    .get(*i)
                    .map(Vec::as_slice)
                    .ok_or_else(|| err(format!("input `{i}` is not defined")))
            })
            .collect::<Result<_>>()?;
        let shape = op.rules().infer(&ins).map_err(err)?;
        let decls = op.rules().params();
        let mut ps = BTreeMap::new();
        for d in &decls {
            let Some(p) = params.iter().find(|p| p.name == d.name) else {
                return Err(err(format!("no tensor for parameter `{}`", d.name)));
            };
            if p.tensor.dims() != d.shape.as_slice() {
                return Err(err(format!(
                    "tensor `{}` has shape {:?}, the config implies {:?}",
                    p.key,
                    p.tensor.dims(),
                    d.shape
                )));
            }
            let t = p
                .tensor
                .to_device(&self.device)
                .map_err(|e| err(e.to_string()))?;
            ps.insert(
                d.name.to_string(),
                Param {
                    value: Var::from_tensor(&t).map_err(|e| err(e.to_string()))?,
                    mask: None,
                    role: d.role,
                },
            );
            self.keys
                .insert(format!("{name}.{}", d.name), p.key.clone());
        }
        if let Some(p) = params
            .iter()
            .find(|p| !decls.iter().any(|d| d.name == p.name))
        {
            return Err(err(format!("the op has no parameter `{}`", p.name)));
        }
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            params: ps,
            shared: Default::default(),
        });
        self.shapes.insert(name.to_string(), shape);
        Ok(name.to_string())
    }

    /// The finished, validated graph with `meta["huggingface"]`.
    pub fn finish(self, name: &str, outputs: &[&str], mut meta: HfMeta) -> Result<Graph> {
        meta.keys = self.keys;
        let mut g = Graph {
            name: name.to_string(),
            inputs: self.inputs,
            nodes: self.nodes,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            meta: BTreeMap::new(),
            carried: BTreeMap::new(),
        };
        g.meta.insert(
            META_KEY.to_string(),
            serde_json::to_value(&meta).map_err(|e| IoError::file(self.path, e.to_string()))?,
        );
        g.validate()?;
        Ok(g)
    }
}

/// Per layer, how many query heads a config's `pruned_heads` (`{"layer": [head, ...]}`, as
/// transformers' `PreTrainedModel.prune_heads` reads it at load) removes; zeros without one.
///
/// Errors: a key that is not a layer index below `layers`, or a layer losing all `heads`.
pub(crate) fn pruned_heads(
    c: &serde_json::Value,
    layers: usize,
    heads: usize,
) -> std::result::Result<Vec<usize>, String> {
    let mut out = vec![0; layers];
    if let Some(p) = c.get("pruned_heads").and_then(|p| p.as_object()) {
        for (layer, hs) in p {
            let i: usize = layer
                .parse()
                .map_err(|_| format!("pruned_heads key `{layer}` is not a layer index"))?;
            let n = hs.as_array().map(Vec::len).unwrap_or(0);
            if i >= layers || n >= heads {
                return Err(format!("pruned_heads[{layer}] is out of range"));
            }
            out[i] = n;
        }
    }
    Ok(out)
}

/// The feed-forward activation a BERT / GPT-2 config names (`hidden_act` / `activation_function`,
/// checked by the config parsers): `relu`, `gelu` (erf form), else the tanh-approximated GELU
/// (`gelu_new`, `gelu_pytorch_tanh`).
pub(crate) fn activation(n: &mut Net, node: &str, name: &str, x: &str) -> Result<String> {
    use prunekit_graph::ops::{activation::GeluApprox, Gelu, Relu};
    match name {
        "relu" => n.node(node, Relu {}, &[x], vec![]),
        "gelu" => n.node(node, Gelu::default(), &[x], vec![]),
        _ => n.node(
            node,
            Gelu {
                approximate: GeluApprox::Tanh,
            },
            &[x],
            vec![],
        ),
    }
}

/// A LayerNorm node of `width` channels from the file tensors `KEY.weight` and `KEY.bias`.
pub(crate) fn layer_norm(
    n: &mut Net,
    w: &dyn Weights,
    node: &str,
    key: &str,
    x: &str,
    (width, eps): (usize, f64),
) -> Result<String> {
    let mut op = prunekit_graph::ops::LayerNorm::new(width);
    op.eps = eps;
    let ps = vec![
        n.p(w, "weight", &format!("{key}.weight"))?,
        n.p(w, "bias", &format!("{key}.bias"))?,
    ];
    n.node(node, op, &[x], ps)
}

/// The sequence length T a graph is built for: `seq_len`, else min(512, `max`), where `max` is
/// the family's longest sequence, read from config field `field` (absolute positions).
///
/// Errors: T = 0 or T > `max`, naming the field.
pub(crate) fn sequence_length(
    w: &dyn Weights,
    seq_len: Option<usize>,
    max: usize,
    field: &str,
) -> Result<usize> {
    let t = seq_len.unwrap_or(max.min(512));
    if t == 0 || t > max {
        return Err(IoError::file(
            w.path(),
            format!("sequence length {t} is outside 1..={max} ({field})"),
        ));
    }
    Ok(t)
}

/// `prefix` when the weights hold `prefix` + `probe` (a head model's keys, e.g. `bert.` or
/// `transformer.`), else "" (the base model's keys).
pub(crate) fn key_prefix(w: &dyn Weights, prefix: &'static str, probe: &str) -> &'static str {
    if w.has(&format!("{prefix}{probe}")) {
        prefix
    } else {
        ""
    }
}

/// Reads an optional field of a config, with a type check.
pub(crate) fn field<T: serde::de::DeserializeOwned>(
    c: &serde_json::Value,
    key: &str,
) -> std::result::Result<Option<T>, String> {
    match c.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| format!("field `{key}` = {v}: {e}")),
    }
}

/// A required field of a config.
pub(crate) fn required<T: serde::de::DeserializeOwned>(
    c: &serde_json::Value,
    key: &str,
) -> std::result::Result<T, String> {
    field(c, key)?.ok_or_else(|| format!("no `{key}` field"))
}

/// A positive size field, bounded so that a hostile config cannot ask for absurd tensors.
pub(crate) fn size(c: &serde_json::Value, key: &str) -> std::result::Result<usize, String> {
    let v: u64 = required(c, key)?;
    if v == 0 || v > (1 << 24) {
        return Err(format!("field `{key}` = {v} is out of range (1 to 2^24)"));
    }
    Ok(v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BPE tokenizer.json with these vocabulary tokens and merges.
    fn bpe(vocab: &[&str], merges: &[&str]) -> String {
        let v: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i.into()))
            .collect();
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "vocab": v, "merges": merges}
        })
        .to_string()
    }

    #[test]
    fn a_merge_longer_than_every_token_is_an_error_not_a_panic() {
        // tokenizers 0.23 panics building this (found by the GGUF fuzz target, seed 23)
        let e = parse_tokenizer(&bpe(&["a", "b", "c", "ab", "bc"], &["a b", "ab c"])).unwrap_err();
        assert!(e.contains("`abc` is not in the vocabulary"), "{e}");
        let e = parse_tokenizer(&bpe(&["a", "b"], &["a x"])).unwrap_err();
        assert!(e.contains("`x`"), "{e}");
        parse_tokenizer(&bpe(&["a", "b", "c", "ab", "abc"], &["a b", "ab c"])).unwrap();
    }
}
