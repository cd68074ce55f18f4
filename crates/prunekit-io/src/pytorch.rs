//! PyTorch state dicts: zip checkpoints (`torch.save` since 1.6, read with candle's pickle reader)
//! and safetensors files in; `.pt` and `.safetensors` out, with the pruned shapes.
//!
//! A state dict holds weights, not the architecture: [`load_state_dict`] fills a template graph
//! (a zoo architecture, or the graph of the same model's ONNX file) by name and shape. A tensor
//! `a.b.c.weight` belongs to parameter `weight` of node `a/b/c` (or `a.b.c`, or `a_b_c`);
//! `weight_ih_l0` / `weight_hh_l0` / `bias_*_l0` of `torch.nn.LSTM` / `GRU` layer 0 to the
//! recurrent node's `weight_ih` ...; BatchNorm's `num_batches_tracked` is read and ignored.
//! [`state_dict`] gives the same names back, so `model.load_state_dict(torch.load(path))` works
//! on a module built with the widths [`widths`] lists.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use prunekit_graph::{Graph, Node, Op};

use crate::error::{IoError, Result};
use crate::Format;

/// The error for a pre-1.6 pickle: what to do instead.
pub fn legacy_pickle_error(path: &Path) -> IoError {
    IoError::file(
        path,
        "a legacy (pre-1.6, not zip) torch.save pickle, which is not read: load it in PyTorch and save a state dict with torch.save(model.state_dict(), 'model.pt') (any PyTorch >= 1.6 writes zip), or export it with torch.onnx.export",
    )
}

/// The PyTorch name of parameter `param` of node `n`: the node's path with `/` as `.`, and
/// `_l0` after the recurrent weights (`torch.nn.LSTM` layer 0).
pub fn torch_key(n: &Node, param: &str) -> String {
    let module = n.name.replace('/', ".");
    let suffix = if matches!(n.op, Op::Lstm(_) | Op::Gru(_)) {
        "_l0"
    } else {
        ""
    };
    format!("{module}.{param}{suffix}")
}

/// The names under which a state dict may hold parameter `param` of node `n`.
fn candidate_keys(n: &Node, param: &str) -> Vec<String> {
    let mut keys = vec![torch_key(n, param)];
    let suffix = if matches!(n.op, Op::Lstm(_) | Op::Gru(_)) {
        "_l0"
    } else {
        ""
    };
    for module in [n.name.clone(), n.name.replace('/', "_")] {
        let k = format!("{module}.{param}{suffix}");
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// Reads every tensor of a state dict: a PyTorch zip checkpoint (a dict of tensors, or one under
/// `state_dict` / `model`) or a safetensors file. Tensors are converted to f32 (integer
/// tensors, such as `num_batches_tracked`, are kept as they are).
///
/// Errors (each names the file and, where there is one, the tensor): not a zip or safetensors
/// file; a legacy pickle or a whole pickled module; a tensor whose declared size exceeds its
/// stored data (checked before reading it); a non-contiguous tensor.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    match crate::detect(path)? {
        Format::Safetensors => read_safetensors(path),
        Format::PyTorch => read_pt(path),
        Format::LegacyPickle => Err(legacy_pickle_error(path)),
        f => Err(IoError::file(
            path,
            format!("a {} file, not a state dict", f.name()),
        )),
    }
}

fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    // the safetensors reader checks every header offset and shape against the file's length
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| IoError::file(path, format!("corrupt or truncated safetensors: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)
            .map_err(|e| IoError::file(path, format!("tensor `{name}`: {e}")))?;
        out.push((name, to_f32(t)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn to_f32(t: Tensor) -> Result<Tensor> {
    Ok(match t.dtype() {
        DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
        _ => t,
    })
}

fn read_pt(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |e: candle_core::Error| {
        IoError::file(path, format!("not a readable PyTorch checkpoint: {e}"))
    };
    // entry sizes of the zip, to bound every tensor before it is read
    let sizes: BTreeMap<String, u64> = {
        let f = std::fs::File::open(path).map_err(|e| IoError::io(path, e))?;
        let mut z = zip::ZipArchive::new(std::io::BufReader::new(f))
            .map_err(|e| IoError::file(path, format!("not a valid zip archive: {e}")))?;
        let mut m = BTreeMap::new();
        for i in 0..z.len() {
            let e = z
                .by_index_raw(i)
                .map_err(|e| IoError::file(path, format!("corrupt zip entry {i}: {e}")))?;
            let name = e
                .name()
                .map_err(|e| IoError::file(path, format!("corrupt zip entry name: {e}")))?
                .to_string();
            m.insert(name, e.size());
        }
        m
    };
    let Some(pkl) = sizes.keys().find(|k| k.ends_with("data.pkl")).cloned() else {
        return Err(IoError::file(
            path,
            "a zip archive without data.pkl: not a torch.save checkpoint",
        ));
    };
    // every length the pickle declares must fit in it before candle's reader allocates it
    let bytes = {
        use std::io::Read;
        let f = std::fs::File::open(path).map_err(|e| IoError::io(path, e))?;
        let mut z = zip::ZipArchive::new(std::io::BufReader::new(f))
            .map_err(|e| IoError::file(path, format!("not a valid zip archive: {e}")))?;
        let limit = std::fs::metadata(path)
            .map_or(0, |m| m.len())
            .min(MAX_PICKLE_BYTES);
        let entry = z
            .by_name(&pkl)
            .map_err(|e| IoError::file(path, format!("{pkl}: {e}")))?;
        let mut v = Vec::new();
        entry
            .take(limit + 1)
            .read_to_end(&mut v)
            .map_err(|e| IoError::file(path, format!("{pkl}: {e}")))?;
        if v.len() as u64 > limit {
            return Err(IoError::file(
                path,
                format!("{pkl} is larger than the file"),
            ));
        }
        v
    };
    scan_pickle(&bytes).map_err(|m| IoError::file(path, format!("{pkl}: {m}")))?;
    let mut pth = None;
    for key in [None, Some("state_dict"), Some("model")] {
        // candle's reader indexes the argument tuples of tensors without checking their length:
        // a malformed pickle panics inside it; that panic is contained here as an error
        let p = std::panic::catch_unwind(|| candle_core::pickle::PthTensors::new(path, key))
            .unwrap_or_else(|_| {
                CONTAINED_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(candle_core::Error::Msg(
                    "malformed tensor records in the pickle".into(),
                ))
            });
        match p {
            Ok(p) if !p.tensor_infos().is_empty() => {
                pth = Some(p);
                break;
            }
            Ok(_) => {}
            Err(e) if key.is_none() => return Err(bad(e)),
            Err(_) => {}
        }
    }
    let pth = pth.ok_or_else(|| {
        IoError::file(
            path,
            "holds no tensors at its top level or under `state_dict` / `model` (a whole pickled module?): save model.state_dict() instead, or export to ONNX",
        )
    })?;
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let info = &pth.tensor_infos()[name];
        let need = info.layout.shape().elem_count() as u64 * info.dtype.size_in_bytes() as u64
            + (info.layout.start_offset() * info.dtype.size_in_bytes()) as u64;
        let have = sizes.get(&info.path).copied().unwrap_or(0);
        if need > have
            || info.layout.shape().elem_count() as u64 > prunekit_graph::graph::MAX_TENSOR_ELEMENTS
        {
            return Err(IoError::file(
                path,
                format!(
                    "tensor `{name}` declares shape {:?} ({need} bytes) but its storage `{}` holds {have} bytes",
                    info.layout.dims(),
                    info.path
                ),
            ));
        }
        let t = pth
            .get(name)
            .map_err(|e| IoError::file(path, format!("tensor `{name}`: {e}")))?
            .ok_or_else(|| IoError::file(path, format!("tensor `{name}` vanished")))?;
        out.push((name.clone(), to_f32(t)?));
    }
    Ok(out)
}

/// The most bytes a checkpoint's data.pkl may hold (it describes tensors, it does not hold them).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Panics of candle's pickle reader contained by [`read_state_dict`] (malformed tensor records),
/// counted so the fuzz harness reports them apart from panics of our own code.
pub static CONTAINED_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Walks a pickle's opcodes (protocols 0-5) and checks that every argument, and every length a
/// string or bytes opcode declares, lies inside the pickle, before any reader allocates it.
/// Errors: an unknown opcode, an argument past the end, a missing STOP.
pub fn scan_pickle(b: &[u8]) -> std::result::Result<(), String> {
    let mut i = 0usize;
    let need = |i: usize, n: u64, what: &str| -> std::result::Result<usize, String> {
        let end = (i as u64).checked_add(n).filter(|&e| e <= b.len() as u64);
        end.map(|e| e as usize).ok_or_else(|| {
            format!(
                "{what} at byte {i} declares {n} bytes; the pickle has {} in all",
                b.len()
            )
        })
    };
    let le = |at: usize, w: usize| -> u64 {
        let mut v = [0u8; 8];
        v[..w].copy_from_slice(&b[at..at + w]);
        u64::from_le_bytes(v)
    };
    while i < b.len() {
        let op = b[i];
        i += 1;
        i = match op {
            b'.' => return Ok(()),
            // no argument
            b'(' | b')' | b'0' | b'1' | b'2' | b'N' | b'R' | b'Q' | b'a' | b'b' | b'd' | b'e'
            | b'l' | b's' | b't' | b'u' | b']' | b'}' | 0x81 | 0x85 | 0x86 | 0x87 | 0x88 | 0x89
            | 0x90 | 0x91 | 0x92 | 0x93 | 0x94 | 0x97 | 0x98 => i,
            // fixed-width arguments
            b'K' | b'h' | b'q' | 0x80 | 0x82 => need(i, 1, "argument")?,
            b'M' | 0x83 => need(i, 2, "argument")?,
            b'J' | b'j' | b'r' | 0x84 => need(i, 4, "argument")?,
            b'G' => need(i, 8, "argument")?,
            0x95 => need(i, 8, "frame")?,
            // one-byte length
            b'U' | b'C' | 0x8c | 0x8a => {
                let e = need(i, 1, "length")?;
                need(e, le(i, 1), "string")?
            }
            // four-byte length
            b'T' | b'B' | b'X' | 0x8b => {
                let e = need(i, 4, "length")?;
                need(e, le(i, 4), "string")?
            }
            // eight-byte length
            0x8d | 0x8e | 0x96 => {
                let e = need(i, 8, "length")?;
                need(e, le(i, 8), "string")?
            }
            // newline-terminated arguments (GLOBAL and INST take two lines)
            b'c' | b'i' => line(b, line(b, i)?)?,
            b'I' | b'L' | b'S' | b'V' | b'F' | b'g' | b'p' | b'P' => line(b, i)?,
            other => {
                return Err(format!(
                    "unknown pickle opcode 0x{other:02x} at byte {}",
                    i - 1
                ))
            }
        };
    }
    Err("the pickle ends without STOP".into())
}

/// The position after the newline that ends the line starting at `i`.
fn line(b: &[u8], i: usize) -> std::result::Result<usize, String> {
    b.get(i..)
        .and_then(|rest| rest.iter().position(|&c| c == b'\n'))
        .map(|p| i + p + 1)
        .ok_or_else(|| format!("a text argument at byte {i} has no end of line"))
}

/// Fills the parameters of `template` from the state dict at `path` by name and shape
/// (see the module docs for the names). The result carries `meta.source`.
///
/// Errors: the file's own (see [`read_state_dict`]); one listing every tensor that matched no
/// parameter and every parameter left without a tensor; a tensor whose shape differs from its
/// parameter's (both shapes named).
pub fn load_state_dict(path: &Path, mut template: Graph) -> Result<Graph> {
    let tensors = read_state_dict(path)?;
    let mut by_name: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    // DataParallel / DistributedDataParallel prefix every key with `module.`
    if !by_name.is_empty() && by_name.keys().all(|k| k.starts_with("module.")) {
        by_name = by_name
            .into_iter()
            .map(|(k, v)| (k["module.".len()..].to_string(), v))
            .collect();
    }
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    let device = template.device();
    for n in &mut template.nodes {
        let keys: Vec<(String, Vec<String>)> = n
            .params
            .keys()
            .map(|k| (k.clone(), candidate_keys(n, k)))
            .collect();
        for (param, cands) in keys {
            let Some(key) = cands.iter().find(|c| by_name.contains_key(*c)) else {
                missing.push(format!("{} ({})", cands[0], n.op.type_name()));
                continue;
            };
            let t = &by_name[key];
            let p = n.params.get_mut(&param).expect("listed above");
            if t.dims() != p.tensor().dims() {
                wrong.push(format!(
                    "`{key}` has shape {:?}, node `{}` ({}) needs {:?}",
                    t.dims(),
                    n.name,
                    n.op.type_name(),
                    p.tensor().dims()
                ));
                used.insert(key.clone());
                continue;
            }
            let v = t.to_dtype(p.tensor().dtype())?.to_device(&device)?;
            p.value = Var::from_tensor(&v)?;
            p.mask = None;
            used.insert(key.clone());
        }
    }
    // a borrowed parameter (`Node::shared`): PyTorch's state dict of tied modules holds the
    // tensor under both keys; the borrower's key may also be absent (Hugging Face's safetensors
    // files of tied models drop it). When present it must hold the owner's values.
    for n in &template.nodes {
        for (param, r) in &n.shared {
            let cands = candidate_keys(n, param);
            let Some(key) = cands.iter().find(|c| by_name.contains_key(*c)) else {
                continue;
            };
            used.insert(key.clone());
            let Some(owner) = template.param_of(n, param) else {
                continue;
            };
            let t = &by_name[key];
            let same = t.dims() == owner.tensor().dims()
                && t.to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .zip(
                        owner
                            .tensor()
                            .to_dtype(DType::F32)?
                            .flatten_all()?
                            .to_vec1::<f32>()?,
                    )
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            if !same {
                wrong.push(format!(
                    "`{key}` (node `{}`, {}) differs from {r}, which the architecture ties it to",
                    n.name,
                    n.op.type_name()
                ));
            }
        }
    }
    let unmatched: Vec<String> = by_name
        .keys()
        .filter(|k| !used.contains(*k) && !k.ends_with("num_batches_tracked"))
        .cloned()
        .collect();
    if !missing.is_empty() || !unmatched.is_empty() || !wrong.is_empty() {
        let mut parts = Vec::new();
        if !wrong.is_empty() {
            parts.push(format!(
                "{} shape mismatch(es): {}",
                wrong.len(),
                wrong.join("; ")
            ));
        }
        if !unmatched.is_empty() {
            parts.push(format!(
                "{} tensor(s) match no parameter of `{}`: {}",
                unmatched.len(),
                template.name,
                unmatched.join(", ")
            ));
        }
        if !missing.is_empty() {
            parts.push(format!(
                "{} parameter(s) have no tensor: {}",
                missing.len(),
                missing.join(", ")
            ));
        }
        return Err(IoError::file(
            path,
            format!(
                "does not fit architecture `{}`: {}",
                template.name,
                parts.join(". ")
            ),
        ));
    }
    template.meta.insert(
        "source".into(),
        serde_json::json!({"format": "pytorch-state-dict", "file": path.display().to_string()}),
    );
    template.validate()?;
    Ok(template)
}

/// The state dict of `g` with PyTorch's names ([`torch_key`]): every parameter and buffer (a
/// masked weight with its zeros), plus `num_batches_tracked` (int64, 0) for each BatchNorm so
/// `load_state_dict(strict=True)` accepts it. Sorted by name. A shared parameter
/// (`Node::shared`) is listed under its owner's key and under every borrower's, as PyTorch's
/// `state_dict()` of tied modules lists it (see [`aliases`]).
pub fn state_dict(g: &Graph) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for n in &g.nodes {
        for (k, p) in &n.params {
            out.push((torch_key(n, k), p.tensor().to_dtype(DType::F32)?));
        }
        for k in n.shared.keys() {
            let p = g.param_of(n, k).ok_or_else(|| {
                IoError::Graph(prunekit_graph::GraphError::param(
                    &n.name,
                    k,
                    "is borrowed from a node that does not own it",
                ))
            })?;
            out.push((torch_key(n, k), p.tensor().to_dtype(DType::F32)?));
        }
        if matches!(n.op, Op::BatchNorm(_)) {
            out.push((
                format!("{}.num_batches_tracked", n.name.replace('/', ".")),
                Tensor::zeros((), DType::I64, &Device::Cpu)?,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The state-dict keys of borrowed parameters, each with its owner's key ([`torch_key`] of the
/// borrowing node and of the owner): the entries of [`state_dict`] that hold the same tensor.
pub fn aliases(g: &Graph) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for n in &g.nodes {
        for (k, r) in &n.shared {
            if let Ok(owner) = g.node(&r.node) {
                out.insert(torch_key(n, k), torch_key(owner, &r.param));
            }
        }
    }
    out
}

/// What a user needs to rebuild the (pruned) module: the inputs (per-sample shapes), every
/// node in order with its op and widths and the values it reads, and the outputs:
/// `{"model", "inputs": [{"name", "shape", "kind"}], "nodes": [{"name": "conv1", "module":
/// "conv1", "op": {"type": "conv2d", "in_channels": 3, "out_channels": 11, ...}, "inputs":
/// ["image"]}], "outputs": [...]}`. `module` is the PyTorch module path of the node's
/// parameters ([`torch_key`]). `scripts/torch_rebuild.py` builds a `torch.nn.Module` from it.
pub fn widths(g: &Graph) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = g
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n.name,
                "module": n.name.replace('/', "."),
                "op": serde_json::to_value(&n.op).unwrap_or_default(),
                "inputs": n.inputs,
            })
        })
        .collect();
    serde_json::json!({
        "model": g.name,
        "inputs": g.inputs,
        "nodes": nodes,
        "outputs": g.outputs,
    })
}

/// The path of the widths file written next to a state dict: `OUT.widths.json`.
pub fn widths_path(out: &Path) -> std::path::PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".widths.json");
    s.into()
}

fn write_widths(g: &Graph, out: &Path) -> Result<()> {
    let json =
        serde_json::to_vec_pretty(&widths(g)).map_err(|e| IoError::file(out, e.to_string()))?;
    crate::native::atomic_write(&widths_path(out), &json)?;
    Ok(())
}

/// Writes the state dict of `g` as safetensors (the widths also in its metadata under
/// `prunekit.widths`) and `OUT.widths.json`. safetensors cannot alias tensors (every tensor owns
/// a disjoint byte range), so a shared parameter is written under both keys, twice.
///
/// Errors: the file cannot be written.
pub fn save_safetensors(g: &Graph, path: &Path) -> Result<()> {
    g.validate()?;
    let sd = state_dict(g)?;
    let meta: std::collections::HashMap<String, String> =
        [("prunekit.widths".to_string(), widths(g).to_string())].into();
    let bytes = safetensors::tensor::serialize(
        sd.iter().map(|(k, v)| (k.clone(), v)).collect::<Vec<_>>(),
        Some(meta),
    )
    .map_err(|e| IoError::file(path, e.to_string()))?;
    crate::native::atomic_write(path, &bytes)?;
    write_widths(g, path)
}

/// Writes the state dict of `g` as a PyTorch zip checkpoint that `torch.load(path,
/// weights_only=True)` reads (an `OrderedDict` of tensors rebuilt by
/// `torch._utils._rebuild_tensor_v2`, one storage per tensor, stored uncompressed), and
/// `OUT.widths.json`. A shared parameter is stored once: its keys ([`aliases`]) are two tensors
/// on one storage, as `torch.save` writes tied modules (`torch.load` gives them one storage).
///
/// Errors: the file cannot be written.
pub fn save_pt(g: &Graph, path: &Path) -> Result<()> {
    g.validate()?;
    let sd = state_dict(g)?;
    let stem = path
        .file_stem()
        .map(|s| {
            s.to_string_lossy()
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "archive".into());
    // one storage per owned tensor; a borrower's key points at its owner's storage
    let alias = aliases(g);
    let mut storage_of: Vec<usize> = Vec::with_capacity(sd.len());
    let mut storages: Vec<usize> = Vec::new(); // entry index of each storage
    let index: BTreeMap<&str, usize> = sd
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_str(), i))
        .collect();
    for (i, (k, _)) in sd.iter().enumerate() {
        if alias.contains_key(k) {
            storage_of.push(usize::MAX);
        } else {
            storage_of.push(storages.len());
            storages.push(i);
        }
    }
    for (i, (k, _)) in sd.iter().enumerate() {
        if let Some(owner) = alias.get(k) {
            let o = index.get(owner.as_str()).copied().ok_or_else(|| {
                IoError::file(
                    path,
                    format!("`{k}` is tied to `{owner}`, which is not written"),
                )
            })?;
            storage_of[i] = storage_of[o];
        }
    }
    let mut pickle = Pickle::default();
    pickle.state_dict(&sd, &storage_of)?;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64);
        let io = |e: zip::result::ZipError| IoError::file(path, format!("zip: {e}"));
        z.start_file(format!("{stem}/data.pkl"), opts).map_err(io)?;
        z.write_all(&pickle.bytes)
            .map_err(|e| IoError::io(path, e))?;
        z.start_file(format!("{stem}/byteorder"), opts)
            .map_err(io)?;
        z.write_all(b"little").map_err(|e| IoError::io(path, e))?;
        for (s, &i) in storages.iter().enumerate() {
            z.start_file(format!("{stem}/data/{s}"), opts).map_err(io)?;
            z.write_all(&tensor_bytes(&sd[i].1)?)
                .map_err(|e| IoError::io(path, e))?;
        }
        z.start_file(format!("{stem}/version"), opts).map_err(io)?;
        z.write_all(b"3\n").map_err(|e| IoError::io(path, e))?;
        z.finish().map_err(io)?;
    }
    crate::native::atomic_write(path, buf.get_ref())?;
    write_widths(g, path)
}

fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::I64 => t
            .to_vec1::<i64>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        _ => t
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    })
}

/// A pickle (protocol 2) writer for exactly what a state dict needs.
#[derive(Default)]
struct Pickle {
    bytes: Vec<u8>,
}

impl Pickle {
    const MARK: u8 = b'(';
    const TUPLE: u8 = b't';
    const EMPTY_TUPLE: u8 = b')';
    const REDUCE: u8 = b'R';
    const SETITEMS: u8 = b'u';
    const BINPERSID: u8 = b'Q';
    const NEWFALSE: u8 = 0x89;
    const STOP: u8 = b'.';

    fn global(&mut self, module: &str, name: &str) {
        self.bytes.push(b'c');
        self.bytes.extend_from_slice(module.as_bytes());
        self.bytes.push(b'\n');
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(b'\n');
    }
    fn string(&mut self, s: &str) {
        self.bytes.push(b'X'); // BINUNICODE
        self.bytes
            .extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: i64) {
        if let Ok(v) = i32::try_from(v) {
            self.bytes.push(b'J'); // BININT
            self.bytes.extend_from_slice(&v.to_le_bytes());
        } else {
            self.bytes.push(0x8a); // LONG1, 8 bytes little-endian two's complement
            self.bytes.push(8);
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn tuple(&mut self, v: &[usize]) {
        if v.is_empty() {
            self.bytes.push(Self::EMPTY_TUPLE);
            return;
        }
        self.bytes.push(Self::MARK);
        for &x in v {
            self.int(x as i64);
        }
        self.bytes.push(Self::TUPLE);
    }
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.bytes.push(Self::EMPTY_TUPLE);
        self.bytes.push(Self::REDUCE);
    }

    /// `storage[i]`: the storage (zip entry `data/{n}`) entry `i` of `sd` is a view of.
    fn state_dict(&mut self, sd: &[(String, Tensor)], storage: &[usize]) -> Result<()> {
        self.bytes.extend_from_slice(&[0x80, 2]); // PROTO 2
        self.ordered_dict();
        self.bytes.push(Self::MARK);
        for (i, (name, t)) in sd.iter().enumerate() {
            self.string(name);
            self.global("torch._utils", "_rebuild_tensor_v2");
            self.bytes.push(Self::MARK);
            // the storage, by persistent id ('storage', class, key, location, numel)
            self.bytes.push(Self::MARK);
            self.string("storage");
            let class = if t.dtype() == DType::I64 {
                "LongStorage"
            } else {
                "FloatStorage"
            };
            self.global("torch", class);
            self.string(&storage[i].to_string());
            self.string("cpu");
            self.int(t.elem_count() as i64);
            self.bytes.push(Self::TUPLE);
            self.bytes.push(Self::BINPERSID);
            self.int(0); // storage offset
            let dims = t.dims();
            self.tuple(dims);
            let mut strides = vec![1usize; dims.len()];
            for k in (0..dims.len().saturating_sub(1)).rev() {
                strides[k] = strides[k + 1] * dims[k + 1];
            }
            self.tuple(&strides);
            self.bytes.push(Self::NEWFALSE); // requires_grad
            self.ordered_dict(); // backward hooks
            self.bytes.push(Self::TUPLE);
            self.bytes.push(Self::REDUCE);
        }
        self.bytes.push(Self::SETITEMS);
        self.bytes.push(Self::STOP);
        Ok(())
    }
}
