//! Our model format: a directory holding `model.json` (structure, schema-versioned) and
//! `model.safetensors` (parameters `node.param`, masks `node.param.mask`, running statistics).
//! Saving then loading is bit-exact. Every file is written to a temporary name and renamed.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{GraphError, Result};
use crate::graph::{Graph, InputSpec, Node, Param};
use crate::ops::Op;

pub const FORMAT_NAME: &str = "prunekit-model";
pub const FORMAT_VERSION: u32 = 1;
pub const STRUCTURE_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    format: String,
    version: u32,
    name: String,
    inputs: Vec<InputSpec>,
    outputs: Vec<String>,
    nodes: Vec<NodeFile>,
    #[serde(default)]
    meta: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    name: String,
    op: Op,
    #[serde(default)]
    inputs: Vec<String>,
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| GraphError::file(path, "not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        GraphError::io(path, e)
    })
}

/// The model directory of a path that names either the directory or its model.json.
pub fn model_dir(path: &Path) -> PathBuf {
    if path.file_name().is_some_and(|f| f == STRUCTURE_FILE) {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    } else {
        path.to_path_buf()
    }
}

/// Whether two paths name the same model directory (either may name its model.json).
pub fn same_model(a: &Path, b: &Path) -> bool {
    match (model_dir(a).canonicalize(), model_dir(b).canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Saves a graph into `dir` (created if needed). Refuses to write over `protect` (the input model).
pub fn save_protected(g: &Graph, dir: &Path, protect: Option<&Path>) -> Result<()> {
    if let Some(p) = protect {
        if same_model(p, dir) {
            return Err(GraphError::file(
                dir,
                "refusing to overwrite the input model; choose another output directory",
            ));
        }
    }
    save(g, dir)
}

/// Saves a graph into `dir` (created if needed).
pub fn save(g: &Graph, dir: &Path) -> Result<()> {
    g.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| GraphError::io(dir, e))?;
    let file = ModelFile {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        name: g.name.clone(),
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
        nodes: g
            .nodes
            .iter()
            .map(|n| NodeFile {
                name: n.name.clone(),
                op: n.op.clone(),
                inputs: n.inputs.clone(),
            })
            .collect(),
        meta: g.meta.clone(),
    };
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| GraphError::file(dir.join(STRUCTURE_FILE), e.to_string()))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (n, k, p) in g.params() {
        tensors.insert(format!("{}.{k}", n.name), p.tensor().clone());
        if let Some(m) = &p.mask {
            // masks hold 0/1: stored as u8, a quarter of the bytes of the weights
            tensors.insert(
                format!("{}.{k}.mask", n.name),
                m.to_dtype(candle_core::DType::U8)?,
            );
        }
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = safetensors::tensor::serialize(
        tensors
            .iter()
            .map(|(k, v)| (k.clone(), v))
            .collect::<Vec<_>>(),
        None,
    )
    .map_err(|e| GraphError::file(&weights_path, e.to_string()))?;
    atomic_write(&weights_path, &bytes)?;
    atomic_write(&dir.join(STRUCTURE_FILE), &json)
}

/// Loads a model directory (or a path to its model.json) onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<Graph> {
    let dir = model_dir(path);
    if !dir.exists() {
        return Err(GraphError::file(&dir, "no such model directory"));
    }
    let json_path = dir.join(STRUCTURE_FILE);
    let text = std::fs::read_to_string(&json_path).map_err(|e| GraphError::io(&json_path, e))?;
    let file: ModelFile =
        serde_json::from_str(&text).map_err(|e| GraphError::file(&json_path, e.to_string()))?;
    if file.format != FORMAT_NAME {
        return Err(GraphError::file(
            &json_path,
            format!("format is `{}`, expected `{FORMAT_NAME}`", file.format),
        ));
    }
    if file.version != FORMAT_VERSION {
        return Err(GraphError::file(
            &json_path,
            format!(
                "schema version {} is not supported (this prunekit reads version {FORMAT_VERSION})",
                file.version
            ),
        ));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(|e| GraphError::io(&weights_path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| GraphError::file(&weights_path, format!("corrupt or truncated: {e}")))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, device)
            .map_err(|e| GraphError::file(&weights_path, format!("tensor `{name}`: {e}")))?;
        tensors.insert(name, t);
    }
    let mut nodes = Vec::with_capacity(file.nodes.len());
    for nf in file.nodes {
        let mut params = BTreeMap::new();
        for d in nf.op.rules().params() {
            let key = format!("{}.{}", nf.name, d.name);
            let t = tensors.remove(&key).ok_or_else(|| {
                GraphError::file(
                    &weights_path,
                    format!(
                        "missing tensor `{key}` (node `{}`, {} op)",
                        nf.name,
                        nf.op.type_name()
                    ),
                )
            })?;
            if t.dims() != d.shape.as_slice() {
                return Err(GraphError::file(
                    &weights_path,
                    format!(
                        "tensor `{key}` has shape {:?}, model.json's {} op needs {:?}",
                        t.dims(),
                        nf.op.type_name(),
                        d.shape
                    ),
                ));
            }
            let mask = tensors
                .remove(&format!("{key}.mask"))
                .map(|m| m.to_dtype(t.dtype()))
                .transpose()?;
            if let Some(m) = &mask {
                if m.dims() != t.dims() {
                    return Err(GraphError::file(
                        &weights_path,
                        format!(
                            "mask `{key}.mask` has shape {:?}, its parameter {:?}",
                            m.dims(),
                            t.dims()
                        ),
                    ));
                }
            }
            params.insert(
                d.name.to_string(),
                Param {
                    value: Var::from_tensor(&t)?,
                    mask,
                    role: d.role,
                },
            );
        }
        nodes.push(Node {
            name: nf.name,
            op: nf.op,
            inputs: nf.inputs,
            params,
        });
    }
    if let Some(extra) = tensors.keys().min() {
        return Err(GraphError::file(
            &weights_path,
            format!("tensor `{extra}` belongs to no parameter of model.json"),
        ));
    }
    let g = Graph {
        name: file.name,
        inputs: file.inputs,
        nodes,
        outputs: file.outputs,
        meta: file.meta,
    };
    g.validate()
        .map_err(|e| GraphError::file(&json_path, e.to_string()))?;
    Ok(g)
}

/// Total size in bytes of a saved model directory's files.
pub fn model_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for f in [STRUCTURE_FILE, WEIGHTS_FILE] {
        let p = dir.join(f);
        total += std::fs::metadata(&p)
            .map_err(|e| GraphError::io(&p, e))?
            .len();
    }
    Ok(total)
}
