//! Our model format: a directory holding `model.json` (structure, schema-versioned) and
//! `model.safetensors` (parameters `node.param`, running statistics, and masked parameters in the
//! smallest of the layouts of [`crate::sparse`]: a bitmask or indices plus the kept values, N:M
//! positions plus the kept values, or, in format 1, the dense tensor plus a U8 mask
//! `node.param.mask`). Saving then loading is bit-exact (a masked element is +0.0). Every file is
//! written to a temporary name and renamed.
//!
//! Versions: 2 adds the compressed layouts, named in the safetensors header metadata; 1 (dense
//! tensors and U8 masks only) is still read, and written for a model without compressed
//! parameters (an unmasked one), which a prunekit of version 1 then reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use prunekit_graph::error::{GraphError, Result};
use prunekit_graph::graph::{Graph, InputSpec, Node, Param, ParamRef};
use prunekit_graph::ops::Op;

use crate::sparse::{self, Stored, META_PREFIX};

pub const FORMAT_NAME: &str = "prunekit-model";
/// The newest version this prunekit reads and writes: 2, compressed masked parameters
/// ([`crate::sparse`]).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this prunekit reads: 1, dense parameters and U8 masks (also written for a
/// model without compressed parameters, see [`save`]).
pub const OLDEST_VERSION: u32 = 1;
pub const STRUCTURE_FILE: &str = "model.json";
/// The key prefix of a carried tensor ([`Graph::carried`]) in model.safetensors (`:` is in no
/// node name, so no parameter key collides with it). Version 2 reads them.
pub const CARRIED_PREFIX: &str = "carried:";
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
    /// parameters borrowed from other nodes (`Node::shared`); their tensors are stored once,
    /// under the owner's name
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    shared: BTreeMap<String, ParamRef>,
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

/// Saves a graph into `dir` (created if needed): masked parameters in their smallest layout
/// ([`crate::sparse`]). model.json says version 2 when a layout of version 2 is used, else 1 (so
/// an unmasked model stays readable by a prunekit that reads version 1 only).
///
/// Errors: the graph is invalid; a file cannot be written.
pub fn save(g: &Graph, dir: &Path) -> Result<()> {
    g.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| GraphError::io(dir, e))?;
    // unmasked parameters dense; masked ones in their smallest layout (`crate::sparse`), whose
    // metadata entries go in the header
    let mut tensors: Vec<(String, Stored)> = Vec::new();
    let mut meta: HashMap<String, String> = HashMap::new();
    for (n, k, p) in g.params() {
        let key = format!("{}.{k}", n.name);
        match &p.mask {
            None => tensors.push((key, Stored::Tensor(p.tensor().clone()))),
            Some(m) => {
                let e = sparse::encode(&key, p.tensor(), m)?;
                tensors.extend(e.tensors);
                meta.extend(e.meta);
            }
        }
    }
    for (k, t) in &g.carried {
        tensors.push((format!("{CARRIED_PREFIX}{k}"), Stored::Tensor(t.clone())));
    }
    let file = ModelFile {
        format: FORMAT_NAME.into(),
        version: if meta.is_empty() && g.carried.is_empty() {
            OLDEST_VERSION
        } else {
            FORMAT_VERSION
        },
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
                shared: n.shared.clone(),
            })
            .collect(),
        meta: g.meta.clone(),
    };
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| GraphError::file(dir.join(STRUCTURE_FILE), e.to_string()))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = safetensors::tensor::serialize(tensors, (!meta.is_empty()).then_some(meta))
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
    if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&file.version) {
        return Err(GraphError::file(
            &json_path,
            format!(
                "schema version {} is not supported (this prunekit reads versions {OLDEST_VERSION} to {FORMAT_VERSION})",
                file.version
            ),
        ));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(|e| GraphError::io(&weights_path, e))?;
    // the safetensors reader checks every header offset and shape against the file's real length
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| GraphError::file(&weights_path, format!("corrupt or truncated: {e}")))?;
    let mut unused: BTreeSet<String> = st.names().into_iter().map(String::from).collect();
    // the compressed layouts named in the header (`crate::sparse`)
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| GraphError::file(&weights_path, format!("corrupt or truncated: {e}")))?;
    let layouts: BTreeMap<String, String> = header
        .metadata()
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(META_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut unused_layouts: BTreeSet<&str> = layouts.keys().map(String::as_str).collect();
    let mut nodes = Vec::with_capacity(file.nodes.len());
    for nf in file.nodes {
        // bound what model.json declares before comparing tensors with it
        prunekit_graph::graph::check_declared_sizes(&nf.name, &nf.op)
            .map_err(|e| GraphError::file(&json_path, e.to_string()))?;
        let mut params = BTreeMap::new();
        for d in nf.op.rules().params() {
            if nf.shared.contains_key(d.name) {
                continue; // the owner's tensor; checked against this op by `validate` below
            }
            let key = format!("{}.{}", nf.name, d.name);
            let layout_key = format!("{META_PREFIX}{key}");
            let (t, mask) = if let Some(json) = layouts.get(&layout_key) {
                unused_layouts.remove(layout_key.as_str());
                let (t, m) = sparse::decode(
                    &st,
                    &key,
                    json,
                    &d.shape,
                    nf.op.type_name(),
                    &weights_path,
                    device,
                    &mut unused,
                )?;
                (t, Some(m))
            } else {
                if !unused.remove(&key) {
                    return Err(GraphError::file(
                        &weights_path,
                        format!(
                            "missing tensor `{key}` (node `{}`, {} op)",
                            nf.name,
                            nf.op.type_name()
                        ),
                    ));
                }
                let t = load_tensor(&st, &key, &d.shape, &weights_path, device, || {
                    format!("model.json's {} op needs", nf.op.type_name())
                })?;
                let mask_key = format!("{key}.mask");
                if unused.remove(&mask_key) {
                    let m = load_tensor(&st, &mask_key, &d.shape, &weights_path, device, || {
                        "its parameter has".to_string()
                    })?;
                    let m = check_mask(&m, &mask_key, &weights_path)?;
                    // re-establish the invariant: every masked value is +0.0 (a format-1 file may
                    // hold -0.0, or any value, there)
                    (
                        m.where_cond(&t, &t.zeros_like()?)?,
                        Some(m.to_dtype(t.dtype())?),
                    )
                } else {
                    (t, None)
                }
            };
            params.insert(
                d.name.to_string(),
                Param {
                    value: Var::from_tensor(&t)?,
                    mask,
                    role: d.role,
                },
            );
        }
        let mut node = Node::new(nf.name, nf.op, nf.inputs, params);
        node.shared = nf.shared;
        nodes.push(node);
    }
    if let Some(extra) = unused_layouts.first() {
        return Err(GraphError::file(
            &weights_path,
            format!("metadata `{extra}` describes no parameter of model.json"),
        ));
    }
    // tensors carried along (no node's parameter; the file's reader bounded their sizes)
    let mut carried = BTreeMap::new();
    for key in unused.iter().filter(|k| k.starts_with(CARRIED_PREFIX)) {
        let err = |e: String| GraphError::file(&weights_path, format!("tensor `{key}`: {e}"));
        let view = st.tensor(key).map_err(|e| err(e.to_string()))?;
        let t =
            candle_core::safetensors::Load::load(&view, device).map_err(|e| err(e.to_string()))?;
        carried.insert(key[CARRIED_PREFIX.len()..].to_string(), t);
    }
    if let Some(extra) = unused.iter().find(|k| !k.starts_with(CARRIED_PREFIX)) {
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
        carried,
    };
    g.validate()
        .map_err(|e| GraphError::file(&json_path, e.to_string()))?;
    Ok(g)
}

/// Loads tensor `key` of the weights file after checking its shape against `want` (the shape
/// model.json declares, already bounded), so a mismatched tensor is never converted.
/// `needs` words the expectation for the error.
fn load_tensor(
    st: &safetensors::SafeTensors,
    key: &str,
    want: &[usize],
    path: &Path,
    device: &Device,
    needs: impl FnOnce() -> String,
) -> Result<Tensor> {
    let view = st
        .tensor(key)
        .map_err(|e| GraphError::file(path, format!("tensor `{key}`: {e}")))?;
    if view.shape() != want {
        return Err(GraphError::file(
            path,
            format!(
                "tensor `{key}` has shape {:?}, {} {want:?}",
                view.shape(),
                needs()
            ),
        ));
    }
    candle_core::safetensors::Load::load(&view, device)
        .map_err(|e| GraphError::file(path, format!("tensor `{key}`: {e}")))
}

/// A mask read from a file as u8 0/1 (any stored type is accepted if its values are exactly 0 or
/// 1). Errors name the mask `node.param.mask`, how many values are neither, and the first of them.
fn check_mask(m: &Tensor, key: &str, path: &Path) -> Result<Tensor> {
    let v = m.to_dtype(DType::F64)?; // exact for every stored integer and float type
    let bad = v.ne(0.0)?.mul(&v.ne(1.0)?)?;
    let count = bad.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?;
    if count > 0 {
        let values = v.flatten_all()?.to_vec1::<f64>()?;
        let first = values
            .iter()
            .find(|&&x| x != 0.0 && x != 1.0)
            .copied()
            .unwrap_or(f64::NAN);
        return Err(GraphError::file(
            path,
            format!(
                "mask `{key}` holds {count} values that are neither 0 nor 1 (e.g. {first}); a mask keeps (1) or prunes (0) each weight"
            ),
        ));
    }
    Ok(v.ne(0.0)?)
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
