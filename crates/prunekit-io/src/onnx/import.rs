//! ONNX -> `Graph`.
//!
//! ONNX tensors carry the batch axis; prunekit's values are per sample. Every ONNX value is held
//! as a [`View`] of one of our values: its axes in ONNX order, each the batch axis, one of our
//! value's axes, or a unit axis our value does not have. Transpose, Squeeze, Unsqueeze,
//! Flatten of unit axes and the batch-second layout of ONNX's LSTM / GRU only change the view;
//! an op that needs its input as ONNX has it materialises the view (a Reshape for unit axes, a
//! Transpose for reordered axes). Shape computations (`Shape -> Gather -> Unsqueeze -> Concat ->
//! Reshape`, as torch.onnx writes them) are folded while importing, with the batch size kept as a
//! symbol. Initializers and `Constant` outputs are constants: weights of the op that reads them,
//! folded into a preceding Linear / Conv as its bias, or a `constant` node.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use prunekit_graph::graph::{init_params, valid_name};
use prunekit_graph::ops::{self as gops, Op};
use prunekit_graph::{Graph, InputKind, InputSpec, Node, Param, Shapes};

use super::proto::{
    attribute_type as at, data_type as dt, AttributeProto, DimValue, GraphProto, ModelProto,
    NodeProto, TensorProto, ValueInfoProto,
};
use crate::error::{IoError, Result, UnsupportedNode};

#[path = "import_attention.rs"]
mod attention;

/// The largest ONNX file read: 2 GiB, protobuf's own limit for one message.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// The opsets of the default domain the importer is written for.
pub const OPSETS: std::ops::RangeInclusive<i64> = 9..=18;

/// Every `op_type` of the default domain the importer maps.
pub const SUPPORTED: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Div",
    "Dropout",
    "Erf",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GRU",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "LSTM",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "Pow",
    "PRelu",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Upsample",
];

/// Reads and decodes an ONNX file (bounded by [`MAX_FILE_BYTES`]).
pub(crate) fn read_model(path: &Path) -> Result<ModelProto> {
    use prost::Message;
    let len = std::fs::metadata(path)
        .map_err(|e| IoError::io(path, e))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(IoError::file(
            path,
            format!("{len} bytes: larger than protobuf's 2 GiB limit (external data is not read)"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    ModelProto::decode(bytes.as_slice())
        .map_err(|e| IoError::file(path, format!("not a valid ONNX protobuf: {e}")))
}

/// Whether the file decodes as an ONNX model (an IR version and a graph).
pub fn looks_like_onnx(path: &Path, len: u64) -> Result<bool> {
    if len > MAX_FILE_BYTES {
        return Ok(false);
    }
    Ok(read_model(path).is_ok_and(|m| m.ir_version > 0 && m.graph.is_some()))
}

/// The unsupported nodes of a model (every one), without importing it. The nodes of an
/// attention or RMSNorm block as our exporter writes it are read as one node and never listed.
pub fn unsupported_nodes(m: &ModelProto) -> Vec<UnsupportedNode> {
    let blocks = m.graph.as_ref().map(attention::blocks).unwrap_or_default();
    unsupported_outside(m, &blocks)
}

fn unsupported_outside(m: &ModelProto, blocks: &[attention::Block]) -> Vec<UnsupportedNode> {
    let opset = default_opset(m);
    let Some(g) = &m.graph else {
        return Vec::new();
    };
    let in_block = |k: usize| {
        blocks
            .iter()
            .any(|b| (b.start..b.start + b.len).contains(&k))
    };
    g.node
        .iter()
        .enumerate()
        .filter(|(k, _)| !in_block(*k))
        .map(|(_, n)| n)
        .filter(|n| !is_default_domain(&n.domain) || !SUPPORTED.contains(&n.op_type.as_str()))
        .map(|n| UnsupportedNode {
            node: n.name.clone(),
            op_type: n.op_type.clone(),
            opset: if is_default_domain(&n.domain) {
                opset.to_string()
            } else {
                format!("{} {}", n.domain, domain_opset(m, &n.domain))
            },
        })
        .collect()
}

fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

fn default_opset(m: &ModelProto) -> i64 {
    m.opset_import
        .iter()
        .find(|o| is_default_domain(&o.domain))
        .map_or(0, |o| o.version)
}

fn domain_opset(m: &ModelProto, domain: &str) -> i64 {
    m.opset_import
        .iter()
        .find(|o| o.domain == domain)
        .map_or(0, |o| o.version)
}

/// Loads an ONNX file as a graph on `device`.
///
/// Every graph input's first axis is the batch axis (symbolic or fixed); the other axes must
/// be fixed. Errors (each names the file, and the node with its op type where there is one): a
/// file that is not ONNX or is truncated; an opset outside 9-18; every unsupported node at once
/// ([`IoError::Unsupported`]); an attribute or layout prunekit does not implement (asymmetric
/// padding, a bidirectional LSTM, ...); a dangling input or a cycle (a node reading a value no
/// earlier node produced); a tensor whose data is shorter than its shape.
pub fn load(path: &Path, device: &Device) -> Result<Graph> {
    let m = read_model(path)?;
    import_model(&m, path, device)
}

/// Imports a decoded model (see [`load`]); `path` names the file in errors.
pub fn import_model(m: &ModelProto, path: &Path, device: &Device) -> Result<Graph> {
    let opset = default_opset(m);
    if !OPSETS.contains(&opset) {
        return Err(IoError::file(
            path,
            format!(
                "default-domain opset {opset} is outside the supported {}..={}",
                OPSETS.start(),
                OPSETS.end()
            ),
        ));
    }
    if let Some(f) = m.functions.first() {
        return Err(IoError::file(
            path,
            format!(
                "the model defines local functions (`{}` in `{}`), which are not read; export with them inlined",
                f.name, f.domain
            ),
        ));
    }
    let g = m
        .graph
        .as_ref()
        .ok_or_else(|| IoError::file(path, "the model has no graph"))?;
    if !g.sparse_initializer.is_empty() {
        return Err(IoError::file(path, "sparse initializers are not read"));
    }
    let blocks = attention::blocks(g);
    let bad = unsupported_outside(m, &blocks);
    if !bad.is_empty() {
        return Err(IoError::Unsupported {
            path: path.to_path_buf(),
            nodes: bad,
        });
    }
    let mut imp = Importer::new(path, device, opset, g);
    imp.run(g, &blocks)?;
    let shared = shared_initializers(g, &imp.vals);
    let name = if g.name.is_empty() {
        path.file_stem()
            .map_or("onnx-model".into(), |s| s.to_string_lossy().to_string())
    } else {
        g.name.clone()
    };
    let mut meta = std::collections::BTreeMap::new();
    meta.insert(
        "source".to_string(),
        serde_json::json!({
            "format": "onnx",
            "producer": format!("{} {}", m.producer_name, m.producer_version).trim(),
            "opset": opset,
            "ir_version": m.ir_version,
        }),
    );
    let mut graph = Graph {
        name,
        inputs: imp.inputs,
        nodes: imp.nodes,
        outputs: imp.outputs,
        meta,
        carried: Default::default(),
    };
    tie_shared(&mut graph, &shared)?;
    graph
        .validate()
        .map_err(|e| IoError::file(path, format!("the imported graph is invalid: {e}")))?;
    Ok(graph)
}

/// The float initializers of rank 2 that feed several nodes (directly, or through a Transpose /
/// Identity of their own) and whose values no other initializer repeats: the candidates for
/// parameter sharing, as (dims, values).
fn shared_initializers(g: &GraphProto, vals: &HashMap<String, Val>) -> Vec<(Vec<usize>, Vec<f32>)> {
    // readers of each value, a Transpose / Identity of an initializer counted by its own readers
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *readers.entry(i.as_str()).or_insert(0) += 1;
        }
    }
    let mut reach: HashMap<&str, usize> = HashMap::new();
    for t in &g.initializer {
        reach.insert(
            t.name.as_str(),
            readers.get(t.name.as_str()).copied().unwrap_or(0),
        );
    }
    for n in &g.node {
        if matches!(n.op_type.as_str(), "Transpose" | "Identity") && n.input.len() == 1 {
            if let (Some(r), Some(o)) = (reach.get_mut(n.input[0].as_str()), n.output.first()) {
                *r = *r - 1 + readers.get(o.as_str()).copied().unwrap_or(0);
            }
        }
    }
    let float = |name: &str| match vals.get(name) {
        Some(Val::Const(Const::Float { dims, data })) if dims.len() == 2 => Some((dims, data)),
        _ => None,
    };
    let mut copies: HashMap<(Vec<usize>, Vec<u32>), usize> = HashMap::new();
    for t in &g.initializer {
        if let Some((dims, data)) = float(&t.name) {
            let key = (dims.clone(), data.iter().map(|x| x.to_bits()).collect());
            *copies.entry(key).or_insert(0) += 1;
        }
    }
    g.initializer
        .iter()
        .filter(|t| reach.get(t.name.as_str()).is_some_and(|&r| r >= 2))
        .filter_map(|t| float(&t.name))
        .filter(|(dims, data)| {
            let key = ((*dims).clone(), data.iter().map(|x| x.to_bits()).collect());
            copies.get(&key) == Some(&1)
        })
        .map(|(dims, data)| (dims.clone(), data.clone()))
        .collect()
}

/// Recovers parameter sharing: the weights (rank 2) that hold exactly the values of one shared
/// initializer in its layout (an embedding table [V, D] and a tied output layer's [out = V,
/// in = D]) become one tensor, owned by the first node in graph order and borrowed by the others
/// (`Node::shared`). A weight the tie would not fit (another role or shape) stays its own.
fn tie_shared(graph: &mut Graph, shared: &[(Vec<usize>, Vec<f32>)]) -> Result<()> {
    for (dims, data) in shared {
        let mut users: Vec<(String, String)> = Vec::new();
        for n in &graph.nodes {
            for (k, p) in &n.params {
                if p.role != gops::Role::Weight || p.tensor().dims() != dims.as_slice() {
                    continue;
                }
                let v = p.tensor().flatten_all()?.to_vec1::<f32>()?;
                if v.iter().zip(data).all(|(a, b)| a.to_bits() == b.to_bits()) {
                    users.push((n.name.clone(), k.clone()));
                }
            }
        }
        if let Some(((owner, owner_param), rest)) = users.split_first() {
            for (node, param) in rest {
                // an error leaves the node as it was: its own copy of the values
                let _ = graph.tie(node, param, owner, owner_param);
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// values

/// An integer of a shape computation: known, or the batch size.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sym {
    K(i64),
    Batch,
}

/// A constant: an initializer, a `Constant` node's value or a folded shape computation.
#[derive(Clone, Debug)]
enum Const {
    Float { dims: Vec<usize>, data: Vec<f32> },
    Int { dims: Vec<usize>, data: Vec<Sym> },
}

impl Const {
    fn dims(&self) -> &[usize] {
        match self {
            Const::Float { dims, .. } | Const::Int { dims, .. } => dims,
        }
    }
    fn floats(&self) -> Option<Vec<f32>> {
        match self {
            Const::Float { data, .. } => Some(data.clone()),
            Const::Int { data, .. } => data
                .iter()
                .map(|s| match s {
                    Sym::K(k) => Some(*k as f32),
                    Sym::Batch => None,
                })
                .collect(),
        }
    }
    fn ints(&self) -> Option<Vec<i64>> {
        match self {
            Const::Int { data, .. } => data
                .iter()
                .map(|s| match s {
                    Sym::K(k) => Some(*k),
                    Sym::Batch => None,
                })
                .collect(),
            Const::Float { data, .. } => Some(data.iter().map(|&x| x as i64).collect()),
        }
    }
    fn syms(&self) -> Vec<Sym> {
        match self {
            Const::Int { data, .. } => data.clone(),
            Const::Float { data, .. } => data.iter().map(|&x| Sym::K(x as i64)).collect(),
        }
    }
    fn len(&self) -> usize {
        self.dims().iter().product()
    }
}

/// One axis of an ONNX value as seen through our value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ax {
    Batch,
    /// axis i of our value (per sample)
    Dim(usize),
    /// an axis of extent 1 our value does not have
    Unit,
}

/// An ONNX value: our value `name` seen with `axes`; axes of our value of extent 1 may be missing.
#[derive(Clone, Debug)]
struct View {
    name: String,
    axes: Vec<Ax>,
}

#[derive(Clone, Debug)]
enum Val {
    Const(Const),
    View(View),
    /// a tensor filled with one value whose shape holds the batch size (`ConstantOfShape` of a
    /// computed shape: the zero initial state torch.onnx gives an LSTM); read only as an initial
    /// state
    BatchFill(f32),
}

fn canonical_axes(rank: usize) -> Vec<Ax> {
    std::iter::once(Ax::Batch)
        .chain((0..rank).map(Ax::Dim))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// attributes

fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}
fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}
fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map_or(default, |a| a.f)
}
fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}
fn attr_s(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name).map(|a| String::from_utf8_lossy(&a.s).to_string())
}

/// A TensorProto as a constant. Errors: an element type not read, data shorter or longer than
/// the shape, external data, a shape beyond 2^31 elements.
fn tensor_const(t: &TensorProto) -> std::result::Result<Const, String> {
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(format!(
            "tensor `{}` keeps its data in an external file, which is not read",
            t.name
        ));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    let mut count: u64 = 1;
    for &d in &t.dims {
        let d =
            u64::try_from(d).map_err(|_| format!("tensor `{}` has dims {:?}", t.name, t.dims))?;
        count = count
            .checked_mul(d)
            .filter(|&c| c <= prunekit_graph::graph::MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| {
                format!(
                    "tensor `{}` declares dims {:?}: more than 2^31 elements",
                    t.name, t.dims
                )
            })?;
        dims.push(d as usize);
    }
    let n = count as usize;
    let raw = &t.raw_data;
    let short = |have: usize, width: usize| {
        format!(
            "tensor `{}` has shape {dims:?} ({n} values of {width} bytes) but holds {have} bytes",
            t.name
        )
    };
    let float = |data: Vec<f32>| Const::Float {
        dims: dims.clone(),
        data,
    };
    let int = |data: Vec<i64>| Const::Int {
        dims: dims.clone(),
        data: data.into_iter().map(Sym::K).collect(),
    };
    let typed_len = |len: usize| {
        if len != n {
            Err(format!(
                "tensor `{}` has shape {dims:?} ({n} values) but holds {len}",
                t.name
            ))
        } else {
            Ok(())
        }
    };
    macro_rules! raw_as {
        ($ty:ty, $w:expr) => {{
            if raw.len() != n * $w {
                return Err(short(raw.len(), $w));
            }
            raw.chunks_exact($w)
                .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunk width")))
                .collect::<Vec<$ty>>()
        }};
    }
    let has_raw = !raw.is_empty() || n == 0;
    Ok(match t.data_type {
        dt::FLOAT if has_raw => float(raw_as!(f32, 4)),
        dt::FLOAT => {
            typed_len(t.float_data.len())?;
            float(t.float_data.clone())
        }
        dt::DOUBLE if has_raw => float(raw_as!(f64, 8).into_iter().map(|x| x as f32).collect()),
        dt::DOUBLE => {
            typed_len(t.double_data.len())?;
            float(t.double_data.iter().map(|&x| x as f32).collect())
        }
        dt::INT64 if has_raw => int(raw_as!(i64, 8)),
        dt::INT64 => {
            typed_len(t.int64_data.len())?;
            int(t.int64_data.clone())
        }
        dt::INT32 if has_raw => int(raw_as!(i32, 4).into_iter().map(i64::from).collect()),
        dt::INT32 | dt::INT8 | dt::UINT8 | dt::BOOL if !has_raw => {
            typed_len(t.int32_data.len())?;
            int(t.int32_data.iter().map(|&x| i64::from(x)).collect())
        }
        dt::INT8 => int(raw_as!(i8, 1).into_iter().map(i64::from).collect()),
        dt::UINT8 | dt::BOOL => int(raw_as!(u8, 1).into_iter().map(i64::from).collect()),
        dt::UINT32 if has_raw => int(raw_as!(u32, 4).into_iter().map(i64::from).collect()),
        dt::UINT64 if has_raw => int(raw_as!(u64, 8).into_iter().map(|x| x as i64).collect()),
        dt::UINT64 => {
            typed_len(t.uint64_data.len())?;
            int(t.uint64_data.iter().map(|&x| x as i64).collect())
        }
        other => {
            return Err(format!(
                "tensor `{}` has element type {other} ({}), which is not read",
                t.name,
                dtype_name(other)
            ))
        }
    })
}

fn dtype_name(t: i32) -> &'static str {
    match t {
        dt::FLOAT16 => "float16",
        dt::BFLOAT16 => "bfloat16",
        8 => "string",
        14 | 15 => "complex",
        17..=20 => "float8",
        _ => "unknown",
    }
}

/// A tensor whose data lies in an external file (ONNX's external data: `location` relative to
/// the model's directory, `offset`, `length`) with that data read in. The location must stay
/// inside the model's directory; offset and length must lie inside the file and match the shape.
fn external_data(model: &Path, t: &TensorProto) -> std::result::Result<TensorProto, String> {
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.as_str())
    };
    let location = get("location")
        .ok_or_else(|| format!("tensor `{}` has external data without a location", t.name))?;
    let rel = Path::new(location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "tensor `{}`: external data location `{location}` leaves the model's directory",
            t.name
        ));
    }
    let file = model.parent().unwrap_or(Path::new(".")).join(rel);
    let len = std::fs::metadata(&file)
        .map_err(|e| format!("tensor `{}`: external data {}: {e}", t.name, file.display()))?
        .len();
    let num = |k: &str, default: u64| -> std::result::Result<u64, String> {
        get(k).map_or(Ok(default), |v| {
            v.parse::<u64>()
                .map_err(|_| format!("tensor `{}`: external data {k} `{v}`", t.name))
        })
    };
    let offset = num("offset", 0)?;
    let length = num("length", len.saturating_sub(offset))?;
    if offset.checked_add(length).is_none_or(|end| end > len) || length > MAX_FILE_BYTES {
        return Err(format!(
            "tensor `{}`: external data offset {offset} + length {length} lies beyond {} ({len} bytes)",
            t.name,
            file.display()
        ));
    }
    // the declared shape must fit the length before anything is read (checked again on decoding)
    let count = t.dims.iter().try_fold(1u64, |a, &d| {
        u64::try_from(d).ok().and_then(|d| a.checked_mul(d))
    });
    let width = match t.data_type {
        dt::FLOAT | dt::INT32 | dt::UINT32 => 4,
        dt::DOUBLE | dt::INT64 | dt::UINT64 => 8,
        dt::INT8 | dt::UINT8 | dt::BOOL => 1,
        other => {
            return Err(format!(
                "tensor `{}`: element type {other} in external data",
                t.name
            ))
        }
    };
    if count.and_then(|c| c.checked_mul(width)) != Some(length) {
        return Err(format!(
            "tensor `{}` has dims {:?} but its external data holds {length} bytes",
            t.name, t.dims
        ));
    }
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    f.seek(std::io::SeekFrom::Start(offset))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let mut raw = Vec::with_capacity(length as usize);
    f.take(length)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let mut inline = t.clone();
    inline.raw_data = raw;
    inline.external_data.clear();
    inline.data_location = 0;
    Ok(inline)
}

/// Resolves a possibly negative axis against `rank`.
fn norm_axis(axis: i64, rank: usize) -> std::result::Result<usize, String> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}

// ------------------------------------------------------------------------------------------------
// the importer

struct Importer<'a> {
    path: &'a Path,
    device: Device,
    opset: i64,
    vals: HashMap<String, Val>,
    shapes: Shapes,
    nodes: Vec<Node>,
    names: HashSet<String>,
    inputs: Vec<InputSpec>,
    outputs: Vec<String>,
    /// how many times each ONNX value is read (node inputs and graph outputs)
    uses: HashMap<String, usize>,
    rng: rand::rngs::StdRng,
}

type R<T> = std::result::Result<T, String>;

/// The largest integer attribute read (channels, kernel, hidden size, ...): 2^31, as the graph's.
const MAX_INT: u64 = prunekit_graph::graph::MAX_ATTRIBUTE;

/// A non-negative integer attribute within [`MAX_INT`].
fn bounded(v: i64, what: &str) -> R<usize> {
    if v < 0 || v as u64 > MAX_INT {
        return Err(format!("{what} = {v} is negative or larger than 2^31"));
    }
    Ok(v as usize)
}

/// Slice's starts, ends, axes and steps.
type SliceArgs = (Vec<i64>, Vec<i64>, Option<Vec<i64>>, Option<Vec<i64>>);

impl<'a> Importer<'a> {
    fn new(path: &'a Path, device: &Device, opset: i64, g: &GraphProto) -> Self {
        let mut uses = HashMap::new();
        for n in &g.node {
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                *uses.entry(i.clone()).or_insert(0) += 1;
            }
        }
        for o in &g.output {
            *uses.entry(o.name.clone()).or_insert(0) += 1;
        }
        Self {
            path,
            device: device.clone(),
            opset,
            vals: HashMap::new(),
            shapes: HashMap::new(),
            nodes: Vec::new(),
            names: HashSet::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            uses,
            rng: prunekit_graph::graph::rng(0),
        }
    }

    fn file_err(&self, msg: impl Into<String>) -> IoError {
        IoError::file(self.path, msg)
    }

    fn run(&mut self, g: &GraphProto, blocks: &[attention::Block]) -> Result<()> {
        for t in &g.initializer {
            let c = if t.data_location == 1 || !t.external_data.is_empty() {
                let inline = external_data(self.path, t).map_err(|m| self.file_err(m))?;
                tensor_const(&inline)
            } else {
                tensor_const(t)
            }
            .map_err(|m| self.file_err(m))?;
            self.vals.insert(t.name.clone(), Val::Const(c));
        }
        for vi in &g.input {
            if self.vals.contains_key(&vi.name) {
                continue; // an initializer listed as an input (IR < 4)
            }
            self.add_input(vi)?;
        }
        let mut k = 0;
        while k < g.node.len() {
            if let Some(b) = blocks.iter().find(|b| b.start == k) {
                self.block(b).map_err(|msg| IoError::Node {
                    path: self.path.to_path_buf(),
                    node: b.name.clone(),
                    op_type: format!("{} (our exporter's nodes)", b.op.type_name()),
                    msg,
                })?;
                k += b.len;
                continue;
            }
            let n = &g.node[k];
            self.node(n).map_err(|msg| IoError::Node {
                path: self.path.to_path_buf(),
                node: n.name.clone(),
                op_type: n.op_type.clone(),
                msg,
            })?;
            k += 1;
        }
        for o in &g.output {
            let name = match self.vals.get(&o.name) {
                None => {
                    return Err(
                        self.file_err(format!("graph output `{}` is produced by no node", o.name))
                    )
                }
                Some(Val::Const(_) | Val::BatchFill(_)) => {
                    return Err(self.file_err(format!(
                        "graph output `{}` is a constant; prunekit's outputs are computed values",
                        o.name
                    )))
                }
                Some(Val::View(_)) => self
                    .materialize(&o.name)
                    .map_err(|m| self.file_err(format!("graph output `{}`: {m}", o.name)))?,
            };
            self.outputs.push(name);
        }
        Ok(())
    }

    fn add_input(&mut self, vi: &ValueInfoProto) -> Result<()> {
        let tt = vi
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .ok_or_else(|| self.file_err(format!("graph input `{}` is not a tensor", vi.name)))?;
        let kind = match tt.elem_type {
            dt::FLOAT | dt::DOUBLE => InputKind::Float,
            dt::INT64 | dt::INT32 | dt::UINT32 | dt::UINT64 => InputKind::Ids,
            other => {
                return Err(self.file_err(format!(
                    "graph input `{}` has element type {other} ({}); prunekit takes float or integer-id inputs",
                    vi.name,
                    dtype_name(other)
                )))
            }
        };
        let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
        if dims.is_empty() {
            return Err(self.file_err(format!(
                "graph input `{}` has no shape (or rank 0); prunekit needs [batch, ...] with fixed sizes after the batch axis",
                vi.name
            )));
        }
        let mut shape = Vec::new();
        for (i, d) in dims.iter().enumerate().skip(1) {
            match &d.value {
                Some(DimValue::DimValue(v)) if *v > 0 => shape.push(*v as usize),
                other => {
                    return Err(self.file_err(format!(
                        "graph input `{}`: axis {i} is {} ; every axis after the batch axis must have a fixed size",
                        vi.name,
                        match other {
                            Some(DimValue::DimParam(p)) => format!("symbolic (`{p}`)"),
                            Some(DimValue::DimValue(v)) => format!("{v}"),
                            None => "unknown".into(),
                        }
                    )))
                }
            }
        }
        let name = self.fresh(&vi.name);
        self.shapes.insert(name.clone(), shape.clone());
        self.vals.insert(
            vi.name.clone(),
            Val::View(View {
                name: name.clone(),
                axes: canonical_axes(shape.len()),
            }),
        );
        self.inputs.push(InputSpec { name, shape, kind });
        Ok(())
    }

    /// A unique valid name derived from an ONNX name (`/layer1/0/conv1/Conv` -> `layer1/0/conv1/Conv`,
    /// dots and other characters -> `_`).
    fn fresh(&mut self, base: &str) -> String {
        let mut s: String = base
            .trim_start_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        while s.contains("//") {
            s = s.replace("//", "/");
        }
        let s = s.trim_end_matches('/').to_string();
        let s = if s.is_empty() || !valid_name(&s) {
            "node".to_string()
        } else {
            s
        };
        let mut name = s.clone();
        let mut k = 1;
        while self.names.contains(&name) || !valid_name(&name) {
            name = format!("{s}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Adds a node of ours; `params` override the op's default-initialised parameters (their
    /// shapes must match the op's declaration). Returns the node's name (= its output value).
    fn add(
        &mut self,
        base: &str,
        op: Op,
        inputs: Vec<String>,
        params: Vec<(&str, Tensor)>,
    ) -> R<String> {
        let name = self.fresh(base);
        let ins: Vec<&[usize]> = inputs
            .iter()
            .map(|i| self.shapes.get(i).map(Vec::as_slice).ok_or(i))
            .collect::<std::result::Result<_, _>>()
            .map_err(|i| format!("value `{i}` is not defined"))?;
        let shape = op
            .rules()
            .infer(&ins)
            .map_err(|m| format!("as prunekit's {} op: {m}", op.type_name()))?;
        let decls = op.rules().params();
        let mut ps = init_params(&decls, DType::F32, &self.device, &mut self.rng)
            .map_err(|e| e.to_string())?;
        for (k, t) in params {
            let d = decls.iter().find(|d| d.name == k).ok_or_else(|| {
                format!("prunekit's {} op has no parameter `{k}`", op.type_name())
            })?;
            if t.dims() != d.shape.as_slice() {
                return Err(format!(
                    "parameter `{k}` has shape {:?}, prunekit's {} op needs {:?}",
                    t.dims(),
                    op.type_name(),
                    d.shape
                ));
            }
            let t = t.to_device(&self.device).map_err(|e| e.to_string())?;
            ps.insert(
                k.to_string(),
                Param {
                    value: Var::from_tensor(&t).map_err(|e| e.to_string())?,
                    mask: None,
                    role: d.role,
                },
            );
        }
        self.nodes.push(Node::new(name.clone(), op, inputs, ps));
        self.shapes.insert(name.clone(), shape);
        Ok(name)
    }

    /// An op of the graph crate built from its JSON form (ops the importer names by tag).
    fn op_json(v: serde_json::Value) -> R<Op> {
        let tag = v["type"].as_str().unwrap_or("?").to_string();
        serde_json::from_value(v).map_err(|e| format!("prunekit's `{tag}` op: {e}"))
    }

    fn tensor(&self, dims: &[usize], data: Vec<f32>) -> R<Tensor> {
        Tensor::from_vec(data, dims, &self.device).map_err(|e| e.to_string())
    }

    /// The value of an ONNX name (a filled constant of batch shape is an error here: only an
    /// initial state may be one, see [`Importer::get_raw`]).
    fn get(&self, name: &str) -> R<&Val> {
        match self.get_raw(name)? {
            Val::BatchFill(_) => Err(format!(
                "input `{name}` is a filled tensor whose shape holds the batch size; prunekit reads such a tensor only as a zero initial state of an LSTM / GRU"
            )),
            v => Ok(v),
        }
    }

    fn get_raw(&self, name: &str) -> R<&Val> {
        self.vals.get(name).ok_or_else(|| {
            format!("input `{name}` is produced by no earlier node (a dangling input or a cycle)")
        })
    }

    fn konst(&self, name: &str) -> R<Const> {
        match self.get(name)? {
            Val::Const(c) => Ok(c.clone()),
            Val::View(_) | Val::BatchFill(_) => Err(format!(
                "input `{name}` must be a constant (an initializer or a folded shape computation)"
            )),
        }
    }

    fn opt_const(&self, n: &NodeProto, i: usize) -> R<Option<Const>> {
        match n.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => self.konst(s).map(Some),
        }
    }

    fn view(&self, name: &str) -> R<Option<View>> {
        Ok(match self.get(name)? {
            Val::View(v) => Some(v.clone()),
            Val::Const(_) | Val::BatchFill(_) => None,
        })
    }

    /// The ONNX shape of a view: None for the batch axis.
    fn view_shape(&self, v: &View) -> Vec<Option<usize>> {
        let s = &self.shapes[&v.name];
        v.axes
            .iter()
            .map(|a| match a {
                Ax::Batch => None,
                Ax::Dim(i) => Some(s[*i]),
                Ax::Unit => Some(1),
            })
            .collect()
    }

    /// Our value that a view shows with only unit axes added or removed (batch first, our axes
    /// in order, every axis of extent > 1 present), if there is one.
    fn squeezed(&self, v: &View) -> Option<String> {
        if v.axes.first() != Some(&Ax::Batch) {
            return None;
        }
        let s = &self.shapes[&v.name];
        let dims: Vec<usize> = v
            .axes
            .iter()
            .filter_map(|a| if let Ax::Dim(i) = a { Some(*i) } else { None })
            .collect();
        if dims.windows(2).any(|w| w[0] >= w[1]) || v.axes[1..].contains(&Ax::Batch) {
            return None;
        }
        let all_big_present = (0..s.len()).all(|i| s[i] == 1 || dims.contains(&i));
        all_big_present.then(|| v.name.clone())
    }

    /// Our value holding the ONNX value exactly (batch first, then the ONNX axes), emitting a
    /// Transpose and / or Reshape when the view needs them.
    fn materialize(&mut self, onnx: &str) -> R<String> {
        let v = match self.get(onnx)? {
            Val::View(v) => v.clone(),
            Val::BatchFill(_) => return Err(format!("`{onnx}` is a filled tensor of batch shape")),
            Val::Const(c) => {
                let c = c.clone();
                return self.constant_node(onnx, &c, None);
            }
        };
        let rank = self.shapes[&v.name].len();
        if v.axes == canonical_axes(rank) {
            return Ok(v.name);
        }
        if v.axes.first() != Some(&Ax::Batch) {
            let at = v.axes.iter().position(|a| *a == Ax::Batch);
            return Err(format!(
                "value `{onnx}` has the batch axis at position {at:?}; prunekit keeps it first"
            ));
        }
        let target: Vec<usize> = self.view_shape(&v)[1..]
            .iter()
            .map(|d| d.unwrap_or(1))
            .collect();
        let mut src = v.name.clone();
        if self.squeezed(&v).is_none() {
            // reorder our axes into the view's order first
            let order: Vec<usize> = v
                .axes
                .iter()
                .filter_map(|a| if let Ax::Dim(i) = a { Some(*i) } else { None })
                .collect();
            let s = self.shapes[&v.name].clone();
            let mut perm = order.clone();
            for i in 0..s.len() {
                if !perm.contains(&i) {
                    perm.push(i); // hidden unit axes go last
                }
            }
            let op = Self::op_json(serde_json::json!({"type": "transpose", "perm": perm}))?;
            src = self.add(&format!("{onnx}/transpose"), op, vec![src], vec![])?;
        }
        if self.shapes[&src] != target {
            src = self.add(
                &format!("{onnx}/reshape"),
                Op::from(gops::Reshape {
                    shape: target.clone(),
                }),
                vec![src],
                vec![],
            )?;
        }
        self.vals.insert(
            onnx.to_string(),
            Val::View(View {
                name: src.clone(),
                axes: canonical_axes(target.len()),
            }),
        );
        Ok(src)
    }

    /// A `constant` node for a float constant read as a value. `like`: the ONNX rank of the
    /// value it is combined with, so a leading batch axis of extent 1 is dropped.
    fn constant_node(&mut self, onnx: &str, c: &Const, like: Option<usize>) -> R<String> {
        let data = c.floats().ok_or_else(|| {
            format!("constant `{onnx}` holds the batch size; it cannot be a tensor")
        })?;
        let mut dims = c.dims().to_vec();
        if like.is_some_and(|r| r == dims.len()) && !dims.is_empty() {
            if dims[0] != 1 {
                return Err(format!(
                    "constant `{onnx}` of shape {dims:?} varies along the batch axis"
                ));
            }
            dims.remove(0);
        }
        let t = self.tensor(&dims, data)?;
        let op = Self::op_json(serde_json::json!({"type": "constant", "shape": dims}))?;
        self.add(onnx, op, vec![], vec![("value", t)])
    }

    fn set(&mut self, onnx: &str, name: String) {
        let rank = self.shapes[&name].len();
        self.vals.insert(
            onnx.to_string(),
            Val::View(View {
                name,
                axes: canonical_axes(rank),
            }),
        );
    }

    fn set_const(&mut self, onnx: &str, c: Const) {
        self.vals.insert(onnx.to_string(), Val::Const(c));
    }

    fn input(&mut self, n: &NodeProto, i: usize) -> R<String> {
        let name = n
            .input
            .get(i)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("input {i} is missing"))?
            .clone();
        self.materialize(&name)
    }

    fn out(n: &NodeProto, i: usize) -> Option<&str> {
        n.output
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The node's name: a weight initializer `a.b.weight` names it `a/b` (PyTorch's module
    /// path); otherwise the ONNX node name, or its first output.
    fn base_name(n: &NodeProto, weight: Option<usize>) -> String {
        if let Some(w) = weight.and_then(|i| n.input.get(i)) {
            if let Some(stem) = w.strip_suffix(".weight") {
                return stem.replace('.', "/");
            }
        }
        if !n.name.is_empty() {
            // torch.onnx names nodes `/module/path/OpType` (or `OpType_3`): the module path
            let name = n
                .name
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '_');
            match name.rsplit_once('/') {
                Some((path, last)) if last == n.op_type && !path.trim_matches('/').is_empty() => {
                    path.to_string()
                }
                _ => n.name.clone(),
            }
        } else {
            n.output.first().cloned().unwrap_or_default()
        }
    }

    fn per_sample_axis(axis: i64, onnx_rank: usize) -> R<isize> {
        let a = norm_axis(axis, onnx_rank)?;
        if a == 0 {
            return Err("the op acts along the batch axis, which prunekit keeps apart".into());
        }
        Ok(a as isize - 1)
    }

    fn onnx_rank(&self, name: &str) -> R<usize> {
        Ok(match self.get(name)? {
            Val::View(v) => v.axes.len(),
            Val::Const(c) => c.dims().len(),
            Val::BatchFill(_) => 0,
        })
    }

    fn node(&mut self, n: &NodeProto) -> R<()> {
        let need = required_inputs(&n.op_type, self.opset);
        if let Some(i) = (0..need).find(|&i| n.input.get(i).is_none_or(|s| s.is_empty())) {
            return Err(format!(
                "has {} input(s); {} needs at least {need} (input {i} is missing)",
                n.input.len(),
                n.op_type
            ));
        }
        if Self::out(n, 0).is_none() {
            return Err("has no output".into());
        }
        let out0 = Self::out(n, 0).unwrap_or_default().to_string();
        // a filled tensor of batch shape stays one through ops that only move or pick its values
        if let Some(Val::BatchFill(v)) = n.input.first().and_then(|i| self.vals.get(i)) {
            if matches!(
                n.op_type.as_str(),
                "Slice"
                    | "Squeeze"
                    | "Unsqueeze"
                    | "Transpose"
                    | "Reshape"
                    | "Expand"
                    | "Cast"
                    | "Identity"
                    | "Gather"
                    | "Split"
            ) {
                let v = *v;
                for o in n.output.iter().filter(|o| !o.is_empty()) {
                    self.vals.insert(o.clone(), Val::BatchFill(v));
                }
                return Ok(());
            }
        }
        // a node whose inputs are all constants is folded when it computes on shapes
        let all_const = !n.input.is_empty()
            && n.input
                .iter()
                .filter(|i| !i.is_empty())
                .all(|i| matches!(self.vals.get(i), Some(Val::Const(_))));
        match n.op_type.as_str() {
            "Constant" => {
                let c = constant_attr(n)?;
                self.set_const(&out0, c);
            }
            "Identity" | "Dropout" => {
                if n.op_type == "Dropout"
                    && Self::out(n, 1).is_some_and(|m| self.uses.contains_key(m))
                {
                    return Err("its mask output is read; prunekit's Dropout has none".into());
                }
                let v = self.get(&n.input[0])?.clone();
                self.vals.insert(out0, v);
            }
            "Shape" => {
                let v = self.view(&n.input[0])?;
                let shape: Vec<Sym> = match v {
                    Some(v) => self
                        .view_shape(&v)
                        .into_iter()
                        .map(|d| d.map_or(Sym::Batch, |d| Sym::K(d as i64)))
                        .collect(),
                    None => {
                        let c = self.konst(&n.input[0])?;
                        c.dims().iter().map(|&d| Sym::K(d as i64)).collect()
                    }
                };
                let r = shape.len() as i64;
                let clamp = |x: i64| (if x < 0 { x + r } else { x }).clamp(0, r) as usize;
                let start = clamp(attr_i(n, "start", 0));
                let end = clamp(attr_i(n, "end", r));
                let data: Vec<Sym> = shape[start..end.max(start)].to_vec();
                self.set_const(
                    &out0,
                    Const::Int {
                        dims: vec![data.len()],
                        data,
                    },
                );
            }
            "ConstantOfShape" => {
                let value = attr(n, "value").and_then(|a| a.t.as_ref());
                let Some(shape) = self.konst(&n.input[0])?.ints() else {
                    let fill = value
                        .map(tensor_const)
                        .transpose()?
                        .and_then(|c| c.floats())
                        .and_then(|v| v.first().copied())
                        .unwrap_or(0.0);
                    self.vals.insert(out0, Val::BatchFill(fill));
                    return Ok(());
                };
                let dims: Vec<usize> = shape
                    .iter()
                    .map(|&d| bounded(d.max(0), "shape"))
                    .collect::<R<_>>()?;
                let count = dims
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .unwrap_or(usize::MAX);
                if count as u64 > prunekit_graph::graph::MAX_TENSOR_ELEMENTS {
                    return Err(format!("shape {dims:?} is too large"));
                }
                let c = match value.map(tensor_const).transpose()? {
                    Some(Const::Int { data, .. }) => Const::Int {
                        dims,
                        data: vec![data.first().copied().unwrap_or(Sym::K(0)); count],
                    },
                    Some(Const::Float { data, .. }) => Const::Float {
                        dims,
                        data: vec![data.first().copied().unwrap_or(0.0); count],
                    },
                    None => Const::Float {
                        dims,
                        data: vec![0.0; count],
                    },
                };
                self.set_const(&out0, c);
            }
            "Expand" => {
                // a constant filled with one value, expanded (torch.export's zero initial states)
                let c = self.konst(&n.input[0]).map_err(|_| {
                    "Expand of a computed value is not supported (only of a constant)".to_string()
                })?;
                let v = c.floats().ok_or("Expand of the batch size")?;
                let first = v.first().copied().unwrap_or(0.0);
                if v.iter().any(|&x| x != first) {
                    return Err("Expand of a constant that is not one repeated value".into());
                }
                let shape = self.konst(&n.input[1])?;
                match shape.ints() {
                    Some(dims) => {
                        let dims: Vec<usize> = dims
                            .iter()
                            .map(|&d| bounded(d.max(1), "shape"))
                            .collect::<R<_>>()?;
                        let count = dims
                            .iter()
                            .try_fold(1usize, |a, &d| a.checked_mul(d))
                            .filter(|&c| c as u64 <= prunekit_graph::graph::MAX_TENSOR_ELEMENTS)
                            .ok_or("Expand to too many elements")?;
                        self.set_const(
                            &out0,
                            Const::Float {
                                dims,
                                data: vec![first; count],
                            },
                        );
                    }
                    None => {
                        self.vals.insert(out0, Val::BatchFill(first));
                    }
                }
            }
            "Cast" => match self.get(&n.input[0])?.clone() {
                Val::Const(c) => {
                    let to = attr_i(n, "to", dt::FLOAT as i64) as i32;
                    let c = match (to, c) {
                        (dt::FLOAT | dt::DOUBLE, c @ Const::Float { .. }) => c,
                        (dt::FLOAT | dt::DOUBLE, c) => Const::Float {
                            dims: c.dims().to_vec(),
                            data: c.floats().ok_or("a cast of the batch size to float")?,
                        },
                        (_, c) => Const::Int {
                            dims: c.dims().to_vec(),
                            data: c.syms(),
                        },
                    };
                    self.set_const(&out0, c);
                }
                v @ (Val::View(_) | Val::BatchFill(_)) => {
                    let to = attr_i(n, "to", dt::FLOAT as i64) as i32;
                    if !matches!(to, dt::FLOAT | dt::DOUBLE | dt::INT64 | dt::INT32) {
                        return Err(format!("a cast to element type {to} of a computed value"));
                    }
                    self.vals.insert(out0, v); // prunekit computes in f32 throughout
                }
            },
            "Unsqueeze" | "Squeeze" => {
                let axes = if self.opset >= 13 {
                    self.opt_const(n, 1)?.map(|c| c.ints().unwrap_or_default())
                } else {
                    attr_ints(n, "axes")
                };
                self.squeeze(n, axes, &out0)?;
            }
            "Transpose" => {
                let v = self.get_raw(&n.input[0])?.clone();
                let rank = self.onnx_rank(&n.input[0])?;
                let perm: Vec<usize> = match attr_ints(n, "perm") {
                    Some(p) => p.iter().map(|&a| norm_axis(a, rank)).collect::<R<_>>()?,
                    None => (0..rank).rev().collect(),
                };
                let mut seen = perm.clone();
                seen.sort_unstable();
                if seen != (0..rank).collect::<Vec<_>>() {
                    return Err(format!("perm {perm:?} is not a permutation of 0..{rank}"));
                }
                match v {
                    f @ Val::BatchFill(_) => {
                        self.vals.insert(out0, f);
                    }
                    Val::View(v) => {
                        let axes = perm.iter().map(|&p| v.axes[p]).collect();
                        self.vals
                            .insert(out0, Val::View(View { name: v.name, axes }));
                    }
                    Val::Const(c) => {
                        let c = transpose_const(&c, &perm)?;
                        self.set_const(&out0, c);
                    }
                }
            }
            "Gather" if all_const => {
                let data = self.konst(&n.input[0])?;
                let idx = self.konst(&n.input[1])?;
                let c = gather_const(&data, &idx, attr_i(n, "axis", 0))?;
                self.set_const(&out0, c);
            }
            "Concat" if all_const => {
                let parts: Vec<Const> = n.input.iter().map(|i| self.konst(i)).collect::<R<_>>()?;
                let c = concat_const(&parts, attr_i(n, "axis", 0))?;
                self.set_const(&out0, c);
            }
            "Slice" if all_const => {
                let data = self.konst(&n.input[0])?;
                let (starts, ends, axes, steps) = self.slice_args(n)?;
                let c = slice_const(&data, &starts, &ends, &axes, &steps)?;
                self.set_const(&out0, c);
            }
            "Add" | "Sub" | "Mul" | "Div" if all_const => {
                let a = self.konst(&n.input[0])?;
                let b = self.konst(&n.input[1])?;
                self.set_const(&out0, arith_const(&n.op_type, &a, &b)?);
            }
            "Reshape" if all_const => {
                let data = self.konst(&n.input[0])?;
                let shape = self
                    .konst(&n.input[1])?
                    .ints()
                    .ok_or("symbolic reshape of a constant")?;
                let dims = reshape_dims(data.dims(), &shape)?;
                let c = match data {
                    Const::Float { data, .. } => Const::Float { dims, data },
                    Const::Int { data, .. } => Const::Int { dims, data },
                };
                self.set_const(&out0, c);
            }
            _ => self.compute(n, &out0)?,
        }
        Ok(())
    }

    fn slice_args(&self, n: &NodeProto) -> R<SliceArgs> {
        if self.opset >= 10 {
            let ints = |i: usize| -> R<Option<Vec<i64>>> {
                Ok(self
                    .opt_const(n, i)?
                    .map(|c| c.ints().ok_or("a slice bound holding the batch size"))
                    .transpose()?)
            };
            Ok((
                ints(1)?.ok_or("Slice without starts")?,
                ints(2)?.ok_or("Slice without ends")?,
                ints(3)?,
                ints(4)?,
            ))
        } else {
            Ok((
                attr_ints(n, "starts").unwrap_or_default(),
                attr_ints(n, "ends").unwrap_or_default(),
                attr_ints(n, "axes"),
                None,
            ))
        }
    }

    fn squeeze(&mut self, n: &NodeProto, axes: Option<Vec<i64>>, out: &str) -> R<()> {
        let unsqueeze = n.op_type == "Unsqueeze";
        match self.get_raw(&n.input[0])?.clone() {
            f @ Val::BatchFill(_) => {
                self.vals.insert(out.to_string(), f);
            }
            Val::Const(c) => {
                let mut dims = c.dims().to_vec();
                if unsqueeze {
                    let axes = axes.ok_or("Unsqueeze without axes")?;
                    let r = dims.len() + axes.len();
                    let mut ax: Vec<usize> =
                        axes.iter().map(|&a| norm_axis(a, r)).collect::<R<_>>()?;
                    ax.sort_unstable();
                    for a in ax {
                        dims.insert(a, 1);
                    }
                } else {
                    let r = dims.len();
                    let ax: Vec<usize> = match axes {
                        Some(a) => a.iter().map(|&a| norm_axis(a, r)).collect::<R<_>>()?,
                        None => (0..r).filter(|&i| dims[i] == 1).collect(),
                    };
                    dims = dims
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !ax.contains(i))
                        .map(|(_, &d)| d)
                        .collect();
                }
                let c = match c {
                    Const::Float { data, .. } => Const::Float { dims, data },
                    Const::Int { data, .. } => Const::Int { dims, data },
                };
                self.set_const(out, c);
            }
            Val::View(v) => {
                let mut axes_v = v.axes.clone();
                if unsqueeze {
                    let axes = axes.ok_or("Unsqueeze without axes")?;
                    let r = axes_v.len() + axes.len();
                    let mut ax: Vec<usize> =
                        axes.iter().map(|&a| norm_axis(a, r)).collect::<R<_>>()?;
                    ax.sort_unstable();
                    for a in ax {
                        axes_v.insert(a, Ax::Unit);
                    }
                } else {
                    let shape = self.view_shape(&v);
                    let r = axes_v.len();
                    let ax: Vec<usize> = match axes {
                        Some(a) => a.iter().map(|&a| norm_axis(a, r)).collect::<R<_>>()?,
                        None => (0..r).filter(|&i| shape[i] == Some(1)).collect(),
                    };
                    for &a in &ax {
                        if shape[a] != Some(1) {
                            return Err(format!(
                                "cannot squeeze axis {a} of extent {}",
                                shape[a].map_or("batch".into(), |d| d.to_string())
                            ));
                        }
                    }
                    axes_v = axes_v
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| !ax.contains(i))
                        .map(|(_, a)| a)
                        .collect();
                }
                self.vals.insert(
                    out.to_string(),
                    Val::View(View {
                        name: v.name,
                        axes: axes_v,
                    }),
                );
            }
        }
        Ok(())
    }

    /// Nodes that compute on values.
    fn compute(&mut self, n: &NodeProto, out0: &str) -> R<()> {
        let op_type = n.op_type.as_str();
        let base = Self::base_name(n, Some(1));
        let simple = |tag: &str| serde_json::json!({ "type": tag });
        match op_type {
            "Relu" | "Sigmoid" | "Tanh" | "Erf" | "Sqrt" | "HardSwish" => {
                let x = self.input(n, 0)?;
                let tag = match op_type {
                    "Relu" => "relu",
                    "Sigmoid" => "sigmoid",
                    "Tanh" => "tanh",
                    "Erf" => "erf",
                    "Sqrt" => "sqrt",
                    _ => "hard_swish",
                };
                let op = Self::op_json(simple(tag))?;
                let y = self.add(&base, op, vec![x], vec![])?;
                self.set(out0, y);
            }
            "Gelu" => {
                let x = self.input(n, 0)?;
                let approximate = attr_s(n, "approximate").unwrap_or_else(|| "none".into());
                let op =
                    Self::op_json(serde_json::json!({"type": "gelu", "approximate": approximate}))?;
                let y = self.add(&base, op, vec![x], vec![])?;
                self.set(out0, y);
            }
            "LeakyRelu" => {
                let x = self.input(n, 0)?;
                let op = Self::op_json(
                    serde_json::json!({"type": "leaky_relu", "alpha": attr_f(n, "alpha", 0.01)}),
                )?;
                let y = self.add(&base, op, vec![x], vec![])?;
                self.set(out0, y);
            }
            "HardSigmoid" => {
                let x = self.input(n, 0)?;
                let op = Self::op_json(serde_json::json!({
                    "type": "hard_sigmoid",
                    "alpha": attr_f(n, "alpha", 0.2),
                    "beta": attr_f(n, "beta", 0.5),
                }))?;
                let y = self.add(&base, op, vec![x], vec![])?;
                self.set(out0, y);
            }
            "Clip" => {
                let x = self.input(n, 0)?;
                let (lo, hi) = if self.opset >= 11 {
                    let f = |c: Option<Const>| {
                        c.and_then(|c| c.floats()).and_then(|v| v.first().copied())
                    };
                    (f(self.opt_const(n, 1)?), f(self.opt_const(n, 2)?))
                } else {
                    (attr(n, "min").map(|a| a.f), attr(n, "max").map(|a| a.f))
                };
                let y = if lo == Some(0.0) && hi.is_none() {
                    self.add(&base, Op::from(gops::Relu {}), vec![x], vec![])?
                } else {
                    let op =
                        Self::op_json(serde_json::json!({"type": "clip", "min": lo, "max": hi}))?;
                    self.add(&base, op, vec![x], vec![])?
                };
                self.set(out0, y);
            }
            "PRelu" => {
                let x = self.input(n, 0)?;
                let slope = self.konst(&n.input[1])?;
                let data = slope.floats().ok_or("PRelu slope")?;
                let t = self.tensor(&[data.len()], data.clone())?;
                let op = Self::op_json(
                    serde_json::json!({"type": "prelu", "num_parameters": data.len()}),
                )?;
                let y = self.add(&base, op, vec![x], vec![("weight", t)])?;
                self.set(out0, y);
            }
            "Softmax" => {
                let rank = self.onnx_rank(&n.input[0])?;
                let default = if self.opset >= 13 { -1 } else { 1 };
                let mut a = norm_axis(attr_i(n, "axis", default), rank)?;
                if self.opset < 13 && a != rank - 1 {
                    // before opset 13 Softmax runs over the axes from `axis` on, flattened: that
                    // is one axis when every other of them has extent 1 ([N, C, 1, 1])
                    let v = self.view(&n.input[0])?.ok_or("Softmax of a constant")?;
                    let shape = self.view_shape(&v);
                    let big: Vec<usize> = (a..rank).filter(|&i| shape[i] != Some(1)).collect();
                    match big.as_slice() {
                        [one] => a = *one,
                        [] => a = rank - 1,
                        _ => {
                            return Err(format!(
                                "Softmax before opset 13 over the flattened axes {a}.. of {shape:?} is not supported"
                            ))
                        }
                    }
                }
                let x = self.input(n, 0)?;
                let axis = Self::per_sample_axis(a as i64, rank)?;
                let y = self.add(&base, Op::from(gops::Softmax { axis }), vec![x], vec![])?;
                self.set(out0, y);
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" => self.binary(n, out0)?,
            "Sum" if n.input.len() == 1 => {
                let v = self.get(&n.input[0])?.clone();
                self.vals.insert(out0.to_string(), v);
            }
            "Sum" => {
                let rank = n
                    .input
                    .iter()
                    .map(|i| self.onnx_rank(i))
                    .collect::<R<Vec<_>>>()?
                    .into_iter()
                    .max()
                    .unwrap_or(0);
                let mut xs = Vec::new();
                for i in &n.input {
                    xs.push(match self.get(i)?.clone() {
                        Val::Const(c) => self.constant_node(i, &c, Some(rank))?,
                        _ => self.materialize(i)?,
                    });
                }
                let y = self.add(&base, Op::from(gops::Add {}), xs, vec![])?;
                self.set(out0, y);
            }
            "Conv" => self.conv(n, out0)?,
            "ConvTranspose" => self.conv_transpose(n, out0)?,
            "BatchNormalization" => self.batch_norm(n, out0)?,
            "LayerNormalization" => {
                let rank = self.onnx_rank(&n.input[0])?;
                let a = norm_axis(attr_i(n, "axis", -1), rank)?;
                if a != rank - 1 {
                    return Err(format!(
                        "normalises from axis {a}; only the last axis is supported"
                    ));
                }
                let x = self.input(n, 0)?;
                let width = *self.shapes[&x].last().ok_or("a rank-1 input")?;
                let scale = self.konst(&n.input[1])?.floats().ok_or("scale")?;
                let bias = match self.opt_const(n, 2)? {
                    Some(b) => b.floats().ok_or("bias")?,
                    None => vec![0.0; width],
                };
                let op = gops::LayerNorm {
                    normalized_shape: width,
                    eps: f64::from(attr_f(n, "epsilon", 1e-5)),
                    affine: true,
                };
                let w = self.tensor(&[width], scale)?;
                let b = self.tensor(&[width], bias)?;
                let y = self.add(
                    &base,
                    Op::from(op),
                    vec![x],
                    vec![("weight", w), ("bias", b)],
                )?;
                self.set(out0, y);
            }
            "MaxPool" | "AveragePool" => self.pool(n, out0)?,
            "GlobalAveragePool" => {
                let x = self.input(n, 0)?;
                let rank = self.shapes[&x].len();
                let y = self.add(&base, Op::from(gops::GlobalAvgPool {}), vec![x], vec![])?;
                let mut axes = vec![Ax::Batch, Ax::Dim(0)];
                axes.extend(std::iter::repeat_n(Ax::Unit, rank - 1));
                self.vals
                    .insert(out0.to_string(), Val::View(View { name: y, axes }));
            }
            "Flatten" => {
                let rank = self.onnx_rank(&n.input[0])?;
                let a = norm_axis(attr_i(n, "axis", 1), rank.max(1))?;
                if a != 1 {
                    return Err(format!(
                        "flattens from axis {a}; prunekit supports axis 1 (all but the batch)"
                    ));
                }
                let v = self.view(&n.input[0])?.ok_or("Flatten of a constant")?;
                let src = match self.squeezed(&v) {
                    Some(s) => s,
                    None => self.materialize(&n.input[0])?,
                };
                let y = if self.shapes[&src].len() == 1 {
                    src
                } else {
                    self.add(&base, Op::from(gops::Flatten {}), vec![src], vec![])?
                };
                self.set(out0, y);
            }
            "Reshape" => self.reshape(n, out0)?,
            "Concat" => {
                let rank = self.onnx_rank(&n.input[0])?;
                let axis = Self::per_sample_axis(attr_i(n, "axis", 0), rank)?;
                let mut xs = Vec::new();
                for i in &n.input {
                    xs.push(match self.get(i)?.clone() {
                        Val::Const(c) => self.constant_node(i, &c, Some(rank))?,
                        Val::View(_) | Val::BatchFill(_) => self.materialize(i)?,
                    });
                }
                let y = self.add(&base, Op::from(gops::Concat { axis }), xs, vec![])?;
                self.set(out0, y);
            }
            "Slice" => {
                let rank = self.onnx_rank(&n.input[0])?;
                let (starts, ends, axes, steps) = self.slice_args(n)?;
                let x = self.input(n, 0)?;
                let shape = self.shapes[&x].clone();
                let axes: Vec<i64> = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
                let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
                let mut y = x;
                if axes.len() != starts.len() || steps.len() != starts.len() {
                    return Err(format!(
                        "starts {starts:?}, axes {axes:?} and steps {steps:?} differ in length"
                    ));
                }
                for k in 0..starts.len() {
                    let a = norm_axis(axes[k], rank)?;
                    let pa = Self::per_sample_axis(a as i64, rank)?;
                    let dim = shape[a - 1] as i64;
                    let (s, e, st) = (
                        starts[k],
                        ends.get(k).copied().unwrap_or(i64::MAX),
                        steps[k],
                    );
                    if st == 1 {
                        let clamp = |x: i64| (if x < 0 { x + dim } else { x }).clamp(0, dim);
                        let (s, e) = (clamp(s), clamp(e));
                        if s == 0 && e == dim {
                            continue;
                        }
                        let op = gops::Narrow {
                            axis: pa,
                            start: s as usize,
                            len: (e - s).max(0) as usize,
                        };
                        y = self.add(&base, Op::from(op), vec![y], vec![])?;
                    } else {
                        let op = Self::op_json(serde_json::json!({
                            "type": "slice", "axis": pa, "start": s, "end": e, "step": st
                        }))?;
                        y = self.add(&base, op, vec![y], vec![])?;
                    }
                }
                self.set(out0, y);
            }
            "Split" => {
                let rank = self.onnx_rank(&n.input[0])?;
                let a = norm_axis(attr_i(n, "axis", 0), rank)?;
                let pa = Self::per_sample_axis(a as i64, rank)?;
                let x = self.input(n, 0)?;
                let dim = self.shapes[&x][a - 1];
                let outs = n.output.len();
                let sizes: Vec<usize> = match if self.opset >= 13 {
                    self.opt_const(n, 1)?.and_then(|c| c.ints())
                } else {
                    attr_ints(n, "split")
                } {
                    Some(s) => s
                        .iter()
                        .map(|&v| bounded(v.max(0), "split"))
                        .collect::<R<_>>()?,
                    None => {
                        let each = dim.div_ceil(outs.max(1));
                        (0..outs)
                            .map(|i| each.min(dim.saturating_sub(i * each)))
                            .collect()
                    }
                };
                if sizes.iter().sum::<usize>() != dim || sizes.len() != outs {
                    return Err(format!("split sizes {sizes:?} do not cover axis {a} of extent {dim} in {outs} outputs"));
                }
                let mut start = 0;
                for (k, &len) in sizes.iter().enumerate() {
                    let op = gops::Narrow {
                        axis: pa,
                        start,
                        len,
                    };
                    let y = self.add(
                        &format!("{base}/{k}"),
                        Op::from(op),
                        vec![x.clone()],
                        vec![],
                    )?;
                    if let Some(o) = Self::out(n, k) {
                        let o = o.to_string();
                        self.set(&o, y);
                    }
                    start += len;
                }
            }
            "Gather" => {
                let axis = attr_i(n, "axis", 0);
                match (
                    self.get(&n.input[0])?.clone(),
                    self.get(&n.input[1])?.clone(),
                ) {
                    (Val::Const(table), Val::View(_)) => {
                        if axis != 0 || table.dims().len() != 2 {
                            return Err("a gather from a constant is read as an embedding lookup: a [num, dim] table along axis 0".into());
                        }
                        let ids = self.input(n, 1)?;
                        let (num, dim) = (table.dims()[0], table.dims()[1]);
                        let t =
                            self.tensor(&[num, dim], table.floats().ok_or("embedding table")?)?;
                        let op = gops::Embedding {
                            num_embeddings: num,
                            embedding_dim: dim,
                        };
                        let base = Self::base_name(n, Some(0));
                        let y = self.add(&base, Op::from(op), vec![ids], vec![("weight", t)])?;
                        self.set(out0, y);
                    }
                    (Val::View(_), Val::Const(idx)) => {
                        let rank = self.onnx_rank(&n.input[0])?;
                        let a = Self::per_sample_axis(axis, rank)?;
                        let indices = idx.ints().ok_or("gather indices holding the batch size")?;
                        let scalar = idx.dims().is_empty();
                        if idx.dims().len() > 1 {
                            return Err("gather with multi-dimensional indices".into());
                        }
                        let x = self.input(n, 0)?;
                        let ax = a as usize;
                        let extent = self.shapes[&x][ax] as i64;
                        let wrapped: Vec<i64> = indices
                            .iter()
                            .map(|&i| if i < 0 { i + extent } else { i })
                            .collect();
                        let contiguous = !wrapped.is_empty()
                            && wrapped.windows(2).all(|w| w[1] == w[0] + 1)
                            && wrapped[0] >= 0
                            && *wrapped.last().unwrap_or(&0) < extent;
                        if contiguous {
                            // a run of indices is a narrow (and a scalar one drops the axis)
                            let op = gops::Narrow {
                                axis: a,
                                start: wrapped[0] as usize,
                                len: wrapped.len(),
                            };
                            let y = self.add(&base, Op::from(op), vec![x], vec![])?;
                            let rank_y = self.shapes[&y].len();
                            let mut axes = canonical_axes(rank_y);
                            if scalar {
                                axes.remove(ax + 1);
                            }
                            self.vals
                                .insert(out0.to_string(), Val::View(View { name: y, axes }));
                            return Ok(());
                        }
                        let op = Self::op_json(serde_json::json!({
                            "type": "gather", "axis": a, "indices": indices, "scalar": scalar
                        }))?;
                        let y = self.add(&base, op, vec![x], vec![])?;
                        self.set(out0, y);
                    }
                    _ => return Err("a gather of computed values by computed indices".into()),
                }
            }
            "Gemm" => self.gemm(n, out0)?,
            "MatMul" => self.matmul(n, out0)?,
            "LSTM" | "GRU" => self.recurrent(n)?,
            "Pad" => {
                let rank = self.onnx_rank(&n.input[0])?;
                let pads = if self.opset >= 11 {
                    self.opt_const(n, 1)?
                        .and_then(|c| c.ints())
                        .ok_or("Pad without constant pads")?
                } else {
                    attr_ints(n, "pads").unwrap_or_default()
                };
                if pads.len() != 2 * rank || pads.iter().any(|&p| p < 0) {
                    return Err(format!(
                        "pads {pads:?} are not 2 x rank {rank} non-negative values"
                    ));
                }
                if pads[0] != 0 || pads[rank] != 0 {
                    return Err("pads the batch axis".into());
                }
                let value = if self.opset >= 11 {
                    self.opt_const(n, 2)?
                        .and_then(|c| c.floats())
                        .and_then(|v| v.first().copied())
                        .unwrap_or(0.0)
                } else {
                    attr_f(n, "value", 0.0)
                };
                let mode = attr_s(n, "mode").unwrap_or_else(|| "constant".into());
                let per: Vec<i64> = pads[1..rank]
                    .iter()
                    .chain(&pads[rank + 1..])
                    .copied()
                    .collect();
                let x = self.input(n, 0)?;
                let op = Self::op_json(
                    serde_json::json!({"type": "pad", "pads": per, "mode": mode, "value": value}),
                )?;
                let y = self.add(&base, op, vec![x], vec![])?;
                self.set(out0, y);
            }
            "ReduceMean" => {
                let rank = self.onnx_rank(&n.input[0])?;
                let axes = if self.opset >= 18 {
                    self.opt_const(n, 1)?.and_then(|c| c.ints())
                } else {
                    attr_ints(n, "axes")
                }
                .ok_or("ReduceMean over every axis (the batch included)")?;
                let per: Vec<isize> = axes
                    .iter()
                    .map(|&a| Self::per_sample_axis(a, rank))
                    .collect::<R<_>>()?;
                let keepdims = attr_i(n, "keepdims", 1) != 0;
                // the mean over every axis after the channels is a global average pool
                let mut sorted: Vec<usize> =
                    axes.iter().map(|&a| norm_axis(a, rank)).collect::<R<_>>()?;
                sorted.sort_unstable();
                if rank >= 3 && sorted == (2..rank).collect::<Vec<_>>() {
                    let x = self.input(n, 0)?;
                    let y = self.add(&base, Op::from(gops::GlobalAvgPool {}), vec![x], vec![])?;
                    let mut axes = vec![Ax::Batch, Ax::Dim(0)];
                    if keepdims {
                        axes.extend(std::iter::repeat_n(Ax::Unit, rank - 2));
                    }
                    self.vals
                        .insert(out0.to_string(), Val::View(View { name: y, axes }));
                    return Ok(());
                }
                let x = self.input(n, 0)?;
                let op = Self::op_json(serde_json::json!({
                    "type": "reduce_mean", "axes": per, "keepdims": keepdims
                }))?;
                let y = self.add(&base, op, vec![x], vec![])?;
                self.set(out0, y);
            }
            "Resize" | "Upsample" => {
                let rank = self.onnx_rank(&n.input[0])?;
                if rank != 4 {
                    return Err("resizes a rank-4 [N, C, H, W] input only".into());
                }
                let x = self.input(n, 0)?;
                let s = self.shapes[&x].clone();
                let scales: Vec<f32> = if op_type == "Upsample" {
                    self.opt_const(n, 1)?
                        .and_then(|c| c.floats())
                        .ok_or("Upsample without scales")?
                } else {
                    match self
                        .opt_const(n, 2)?
                        .and_then(|c| c.floats())
                        .filter(|v| !v.is_empty())
                    {
                        Some(v) => v,
                        None => {
                            let sizes = self
                                .opt_const(n, 3)?
                                .and_then(|c| c.ints())
                                .ok_or("Resize without scales or sizes")?;
                            if sizes.len() != 4 {
                                return Err(format!("sizes {sizes:?}"));
                            }
                            vec![
                                1.0,
                                1.0,
                                sizes[2] as f32 / s[1] as f32,
                                sizes[3] as f32 / s[2] as f32,
                            ]
                        }
                    }
                };
                if scales.len() != 4 || scales[0] != 1.0 || scales[1] != 1.0 {
                    return Err(format!(
                        "scales {scales:?}: only the spatial axes may be resized"
                    ));
                }
                let mode = attr_s(n, "mode").unwrap_or_else(|| "nearest".into());
                let ctm = attr_s(n, "coordinate_transformation_mode")
                    .unwrap_or_else(|| "half_pixel".into());
                let mode = match mode.as_str() {
                    "nearest" => {
                        let nm = attr_s(n, "nearest_mode")
                            .unwrap_or_else(|| "round_prefer_floor".into());
                        if op_type == "Resize" && (ctm != "asymmetric" || nm != "floor") {
                            return Err(format!("nearest with coordinate_transformation_mode `{ctm}` and nearest_mode `{nm}` (prunekit implements asymmetric + floor, PyTorch's `nearest`)"));
                        }
                        "nearest"
                    }
                    "linear" | "bilinear" => {
                        if op_type == "Resize"
                            && !(ctm == "half_pixel" || ctm == "pytorch_half_pixel")
                        {
                            return Err(format!("linear with coordinate_transformation_mode `{ctm}` (prunekit implements half_pixel, PyTorch's align_corners=False)"));
                        }
                        "bilinear"
                    }
                    m => return Err(format!("mode `{m}`")),
                };
                let op = Self::op_json(serde_json::json!({
                    "type": "resize", "mode": mode, "scale": [scales[2], scales[3]]
                }))?;
                let y = self.add(&base, op, vec![x], vec![])?;
                self.set(out0, y);
            }
            other => return Err(format!("{other} is not mapped (opset {})", self.opset)),
        }
        Ok(())
    }

    /// Add / Sub / Mul / Div / Pow of two values, or of a value and a constant.
    fn binary(&mut self, n: &NodeProto, out0: &str) -> R<()> {
        let op_type = n.op_type.as_str();
        let base = Self::base_name(n, None);
        let (a, b) = (n.input[0].clone(), n.input[1].clone());
        if op_type == "Pow" {
            let e = self.konst(&b)?.floats().ok_or("exponent")?;
            if e.as_slice() != [2.0] {
                return Err(format!("exponent {e:?}: only x^2 is supported"));
            }
            let x = self.input(n, 0)?;
            let y = self.add(&base, Op::from(gops::Mul {}), vec![x.clone(), x], vec![])?;
            self.set(out0, y);
            return Ok(());
        }
        let (va, vb) = (self.get(&a)?.clone(), self.get(&b)?.clone());
        // a learned positional embedding as our exporter writes it: x [N, T, D] + `P.weight` [T, D]
        if let (true, Val::View(v), Val::Const(Const::Float { dims, data })) =
            (op_type == "Add" && b.ends_with(".weight"), &va, &vb)
        {
            if let &[t, d] = dims.as_slice() {
                if self.view_shape(v) == [None, Some(t), Some(d)] {
                    let x = self.input(n, 0)?;
                    let w = self.tensor(&[t, d], data.clone())?;
                    let op = Op::from(gops::PositionalEmbedding { max_len: t, dim: d });
                    let y = self.add(
                        &Self::base_name(n, Some(1)),
                        op,
                        vec![x],
                        vec![("weight", w)],
                    )?;
                    self.set(out0, y);
                    return Ok(());
                }
            }
        }
        // a bias after a bias-free Linear / Conv: folded into it
        if op_type == "Add" {
            for (v, c) in [(&va, &vb), (&vb, &va)] {
                if let (Val::View(_), Val::Const(c)) = (v, c) {
                    let other = if matches!(va, Val::View(_)) { &a } else { &b };
                    if self.fold_bias(other, c)? {
                        let v = self.get(other)?.clone();
                        self.vals.insert(out0.to_string(), v);
                        return Ok(());
                    }
                }
            }
        }
        let rank = self.onnx_rank(&a)?.max(self.onnx_rank(&b)?);
        let mut xs = Vec::new();
        for (name, v) in [(&a, &va), (&b, &vb)] {
            xs.push(match v {
                Val::Const(c) => self.constant_node(name, c, Some(rank))?,
                Val::View(_) | Val::BatchFill(_) => self.materialize(name)?,
            });
        }
        let op = match op_type {
            "Add" => Op::from(gops::Add {}),
            "Mul" => Op::from(gops::Mul {}),
            "Sub" => Self::op_json(serde_json::json!({"type": "sub"}))?,
            _ => Self::op_json(serde_json::json!({"type": "div"}))?,
        };
        let y = self.add(&base, op, xs, vec![])?;
        self.set(out0, y);
        Ok(())
    }

    /// Folds constant `c` into the bias of the bias-free Linear / Conv that produces `value`
    /// when `value` is read only here and `c` broadcasts along its channels alone.
    fn fold_bias(&mut self, value: &str, c: &Const) -> R<bool> {
        let Some(v) = self.view(value)? else {
            return Ok(false);
        };
        if self.uses.get(value).copied().unwrap_or(0) != 1 {
            return Ok(false);
        }
        let Some(name) = self.squeezed(&v) else {
            return Ok(false);
        };
        let Some(idx) = self.nodes.iter().position(|nd| nd.name == name) else {
            return Ok(false);
        };
        let Some(data) = c.floats() else {
            return Ok(false);
        };
        let dims = c.dims().to_vec();
        let onnx_rank = v.axes.len();
        let big: Vec<usize> = dims.iter().copied().filter(|&d| d != 1).collect();
        let node = &self.nodes[idx];
        let (width, channel_from_right) = match &node.op {
            Op::Linear(l) if !l.bias => (l.out_features, 1),
            Op::Conv2d(c) if !c.bias => (c.out_channels, onnx_rank - 1),
            Op::Conv1d(c) if !c.bias => (c.out_channels, onnx_rank - 1),
            _ => return Ok(false),
        };
        // the constant's only non-unit axis must be the channel axis, counted from the right
        let ok = dims.len() <= onnx_rank
            && (big.is_empty() && width == 1
                || big == [width]
                    && dims.len() >= channel_from_right
                    && dims[dims.len() - channel_from_right] == width);
        if !ok || data.len() != width {
            return Ok(false);
        }
        let t = self.tensor(&[width], data)?;
        let node = &mut self.nodes[idx];
        match &mut node.op {
            Op::Linear(l) => l.bias = true,
            Op::Conv2d(c) => c.bias = true,
            Op::Conv1d(c) => c.bias = true,
            _ => unreachable!(),
        }
        let role = node
            .op
            .rules()
            .params()
            .iter()
            .find(|d| d.name == "bias")
            .map(|d| d.role)
            .ok_or("no bias parameter")?;
        node.params.insert(
            "bias".into(),
            Param {
                value: Var::from_tensor(&t).map_err(|e| e.to_string())?,
                mask: None,
                role,
            },
        );
        Ok(true)
    }

    fn conv(&mut self, n: &NodeProto, out0: &str) -> R<()> {
        let w = self.konst(&n.input[1])?;
        let wd = w.dims().to_vec();
        let spatial = wd.len().checked_sub(2).ok_or("weight of rank < 3")?;
        if !(1..=2).contains(&spatial) {
            return Err(format!(
                "{spatial}-D convolutions are not supported (1-D and 2-D are)"
            ));
        }
        let x = self.input(n, 0)?;
        let xs = self.shapes[&x].clone();
        let group = bounded(attr_i(n, "group", 1).max(1), "group")?;
        let kernel: Vec<usize> = attr_ints(n, "kernel_shape")
            .map(|k| {
                k.iter()
                    .map(|&v| bounded(v, "kernel_shape"))
                    .collect::<R<_>>()
            })
            .transpose()?
            .unwrap_or_else(|| wd[2..].to_vec());
        if kernel.len() != spatial || kernel[..] != wd[2..] {
            return Err(format!(
                "kernel_shape {kernel:?} does not match the weight's {:?}",
                &wd[2..]
            ));
        }
        let strides = attr_ints(n, "strides").unwrap_or_else(|| vec![1; spatial]);
        let dil = attr_ints(n, "dilations").unwrap_or_else(|| vec![1; spatial]);
        let pads = conv_pads(n, spatial, &xs[1..], &kernel, &strides, &dil)?;
        let uniform = |v: &[i64], what: &str| -> R<usize> {
            if v.is_empty() || v.iter().any(|&x| x != v[0]) || v[0] < 0 || v[0] as u64 > MAX_INT {
                return Err(format!("{what} {v:?} differ per axis; prunekit's convolutions take one value for every axis"));
            }
            Ok(v[0] as usize)
        };
        let stride = uniform(&strides, "strides")?;
        let dilation = uniform(&dil, "dilations")?;
        let padding = uniform(&pads, "pads")?;
        let bias = self.opt_const(n, 2)?;
        let (out_c, in_c) = (wd[0], wd[1].checked_mul(group).ok_or("group is too large")?);
        let base = Self::base_name(n, Some(1));
        let wt = self.tensor(&wd, w.floats().ok_or("weight")?)?;
        let mut params = vec![("weight", wt)];
        if let Some(b) = &bias {
            params.push(("bias", self.tensor(&[out_c], b.floats().ok_or("bias")?)?));
        }
        let op = if spatial == 2 {
            Op::from(gops::Conv2d {
                in_channels: in_c,
                out_channels: out_c,
                kernel: [kernel[0], kernel[1]],
                stride,
                padding,
                dilation,
                groups: group,
                bias: bias.is_some(),
            })
        } else {
            Op::from(gops::Conv1d {
                in_channels: in_c,
                out_channels: out_c,
                kernel: kernel[0],
                stride,
                padding,
                dilation,
                groups: group,
                bias: bias.is_some(),
            })
        };
        let y = self.add(&base, op, vec![x], params)?;
        self.set(out0, y);
        Ok(())
    }

    fn conv_transpose(&mut self, n: &NodeProto, out0: &str) -> R<()> {
        let w = self.konst(&n.input[1])?;
        let wd = w.dims().to_vec();
        if wd.len() != 4 {
            return Err("only 2-D transposed convolutions are supported".into());
        }
        let x = self.input(n, 0)?;
        let group = bounded(attr_i(n, "group", 1).max(1), "group")?;
        let one = |name: &str, default: i64| -> R<usize> {
            let v = attr_ints(n, name).unwrap_or_else(|| vec![default; 2]);
            if v.is_empty() || v.iter().any(|&x| x != v[0]) || v[0] < 0 || v[0] as u64 > MAX_INT {
                return Err(format!("{name} {v:?} differ per axis"));
            }
            Ok(v[0] as usize)
        };
        if attr_ints(n, "output_shape").is_some() {
            return Err("output_shape is not read; give pads and output_padding".into());
        }
        let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 4]);
        if pads.len() != 4 || pads.iter().any(|&p| p != pads[0] || p < 0) {
            return Err(format!("pads {pads:?} differ per side"));
        }
        let bias = self.opt_const(n, 2)?;
        let out_c = wd[1].checked_mul(group).ok_or("group is too large")?;
        let base = Self::base_name(n, Some(1));
        let wt = self.tensor(&wd, w.floats().ok_or("weight")?)?;
        let mut params = vec![("weight", wt)];
        if let Some(b) = &bias {
            params.push(("bias", self.tensor(&[out_c], b.floats().ok_or("bias")?)?));
        }
        let op = Self::op_json(serde_json::json!({
            "type": "conv_transpose2d",
            "in_channels": wd[0],
            "out_channels": out_c,
            "kernel": [wd[2], wd[3]],
            "stride": one("strides", 1)?,
            "padding": pads[0],
            "output_padding": one("output_padding", 0)?,
            "dilation": one("dilations", 1)?,
            "groups": group,
            "bias": bias.is_some(),
        }))?;
        let y = self.add(&base, op, vec![x], params)?;
        self.set(out0, y);
        Ok(())
    }

    fn batch_norm(&mut self, n: &NodeProto, out0: &str) -> R<()> {
        if attr_i(n, "training_mode", 0) != 0 {
            return Err("training_mode = 1 is not read (export the model in eval mode)".into());
        }
        if (1..n.output.len()).any(|i| Self::out(n, i).is_some_and(|o| self.uses.contains_key(o))) {
            return Err("its running-statistics outputs are read".into());
        }
        let x = self.input(n, 0)?;
        let c = self.shapes[&x].first().copied().ok_or("a rank-1 input")?;
        let mut params = Vec::new();
        for (i, k) in [
            (1, "weight"),
            (2, "bias"),
            (3, "running_mean"),
            (4, "running_var"),
        ] {
            let v = self.konst(&n.input[i])?.floats().ok_or(k)?;
            if v.len() != c {
                return Err(format!("{k} holds {} values for {c} channels", v.len()));
            }
            params.push((k, self.tensor(&[c], v)?));
        }
        let op = gops::BatchNorm {
            num_features: c,
            eps: f64::from(attr_f(n, "epsilon", 1e-5)),
            // ONNX: running = momentum * running + (1 - momentum) * batch; PyTorch the reverse
            momentum: 1.0 - f64::from(attr_f(n, "momentum", 0.9)),
            affine: true,
        };
        let base = Self::base_name(n, Some(1));
        let y = self.add(&base, Op::from(op), vec![x], params)?;
        self.set(out0, y);
        Ok(())
    }

    fn pool(&mut self, n: &NodeProto, out0: &str) -> R<()> {
        if attr_i(n, "ceil_mode", 0) != 0 {
            return Err("ceil_mode = 1 is not supported".into());
        }
        if attr_ints(n, "dilations").is_some_and(|d| d.iter().any(|&x| x != 1)) {
            return Err("dilated pooling is not supported".into());
        }
        if Self::out(n, 1).is_some_and(|o| self.uses.contains_key(o)) {
            return Err("its indices output is read".into());
        }
        let x = self.input(n, 0)?;
        let xs = self.shapes[&x].clone();
        if xs.len() != 3 {
            return Err(format!("pools a [C, H, W] input, got {xs:?}"));
        }
        let k = attr_ints(n, "kernel_shape").ok_or("no kernel_shape")?;
        let s = attr_ints(n, "strides").unwrap_or_else(|| vec![1, 1]);
        if k.len() != 2 || s.len() != 2 {
            return Err(format!("kernel_shape {k:?} / strides {s:?} are not 2-D"));
        }
        let kernel = [
            bounded(k[0], "kernel_shape")?,
            bounded(k[1], "kernel_shape")?,
        ];
        let stride = [bounded(s[0], "strides")?, bounded(s[1], "strides")?];
        let pads = conv_pads(n, 2, &xs[1..], &kernel, &s, &[1, 1])?;
        let avg = n.op_type == "AveragePool";
        if avg && pads.iter().any(|&p| p != 0) && attr_i(n, "count_include_pad", 0) == 0 {
            return Err("average pooling with padding that excludes the pads from the count (count_include_pad = 0); prunekit counts them, as PyTorch's default".into());
        }
        let attrs = gops::pool::Pool2dAttrs {
            kernel,
            stride: Some(stride),
            padding: [pads[0] as usize, pads[1] as usize],
        };
        let op = if avg {
            Op::from(gops::AvgPool2d(attrs))
        } else {
            Op::from(gops::MaxPool2d(attrs))
        };
        let y = self.add(&Self::base_name(n, None), op, vec![x], vec![])?;
        self.set(out0, y);
        Ok(())
    }

    fn reshape(&mut self, n: &NodeProto, out0: &str) -> R<()> {
        let v = self.view(&n.input[0])?.ok_or("Reshape of a constant")?;
        let shape = self.konst(&n.input[1])?.syms();
        // allowzero = 1 makes a 0 an empty axis instead of a copy; without a 0 it changes nothing
        if attr_i(n, "allowzero", 0) != 0 && shape.contains(&Sym::K(0)) {
            return Err(
                "allowzero = 1 with a 0 in the shape (an empty axis) is not supported".into(),
            );
        }
        let in_shape = self.view_shape(&v);
        let per_sample: usize = in_shape.iter().flatten().product();
        if let Some(axes) = unit_reshape(&v, &in_shape, &shape, per_sample) {
            // only unit axes come or go: a new view of the same value, wherever the batch axis is
            self.vals
                .insert(out0.to_string(), Val::View(View { name: v.name, axes }));
            return Ok(());
        }
        // resolve 0 (copy) first
        let mut target: Vec<Sym> = shape
            .iter()
            .enumerate()
            .map(|(i, &s)| match s {
                Sym::K(0) => in_shape
                    .get(i)
                    .map(|d| d.map_or(Sym::Batch, |d| Sym::K(d as i64)))
                    .unwrap_or(Sym::K(0)),
                s => s,
            })
            .collect();
        let batch_at: Vec<usize> = target
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == Sym::Batch)
            .map(|(i, _)| i)
            .collect();
        let minus: Vec<usize> = target
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == Sym::K(-1))
            .map(|(i, _)| i)
            .collect();
        match (batch_at.as_slice(), minus.as_slice()) {
            ([0], []) => {}
            ([0], [m]) => {
                let known: usize = target[1..]
                    .iter()
                    .filter_map(|s| if let Sym::K(k) = s { (*k > 0).then_some(*k as usize) } else { None })
                    .product();
                if known == 0 || !per_sample.is_multiple_of(known) {
                    return Err(format!("cannot reshape {per_sample} values per sample to {shape:?}"));
                }
                target[*m] = Sym::K((per_sample / known) as i64);
            }
            ([], [0]) => target[0] = Sym::Batch,
            // a model exported with a fixed batch of 1 reshapes to [1, ...]: that 1 is the batch
            ([], []) if target.first() == Some(&Sym::K(1))
                && target[1..]
                    .iter()
                    .map(|s| if let Sym::K(k) = s { *k as usize } else { 0 })
                    .product::<usize>()
                    == per_sample =>
            {
                target[0] = Sym::Batch
            }
            _ => {
                return Err(format!(
                    "target shape {shape:?} does not keep the batch axis first (prunekit's values are per sample)"
                ))
            }
        }
        let dims: Vec<usize> = target[1..]
            .iter()
            .map(|s| match s {
                Sym::K(k) if *k > 0 => Ok(*k as usize),
                s => Err(format!("target shape {shape:?}: axis {s:?}")),
            })
            .collect::<R<_>>()?;
        if dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(per_sample) {
            return Err(format!(
                "cannot reshape {per_sample} values per sample to {dims:?}"
            ));
        }
        let src = match self.squeezed(&v) {
            Some(s) => s,
            None => self.materialize(&n.input[0])?,
        };
        let y = if self.shapes[&src] == dims {
            src
        } else {
            self.add(
                &Self::base_name(n, None),
                Op::from(gops::Reshape { shape: dims }),
                vec![src],
                vec![],
            )?
        };
        self.set(out0, y);
        Ok(())
    }

    fn gemm(&mut self, n: &NodeProto, out0: &str) -> R<()> {
        if attr_i(n, "transA", 0) != 0 {
            return Err("transA = 1 is not supported".into());
        }
        let x = self.input(n, 0)?;
        let b = self.konst(&n.input[1])?;
        let (alpha, beta) = (attr_f(n, "alpha", 1.0), attr_f(n, "beta", 1.0));
        let bd = b.dims().to_vec();
        if bd.len() != 2 {
            return Err(format!("B of shape {bd:?} is not a matrix"));
        }
        let mut w = b.floats().ok_or("B")?;
        let (out, inp) = if attr_i(n, "transB", 0) != 0 {
            (bd[0], bd[1])
        } else {
            w = transpose2(&w, bd[0], bd[1]);
            (bd[1], bd[0])
        };
        if alpha != 1.0 {
            w.iter_mut().for_each(|x| *x *= alpha);
        }
        let mut params = vec![("weight", self.tensor(&[out, inp], w)?)];
        let c = self.opt_const(n, 2)?;
        if let Some(c) = &c {
            let v = c.floats().ok_or("C")?;
            let v = match v.len() {
                1 => vec![v[0]; out],
                l if l == out => v,
                l => return Err(format!("C holds {l} values for {out} outputs")),
            };
            params.push((
                "bias",
                self.tensor(&[out], v.iter().map(|x| x * beta).collect())?,
            ));
        }
        let op = gops::Linear {
            in_features: inp,
            out_features: out,
            bias: c.is_some(),
        };
        let y = self.add(&Self::base_name(n, Some(1)), Op::from(op), vec![x], params)?;
        self.set(out0, y);
        Ok(())
    }

    fn matmul(&mut self, n: &NodeProto, out0: &str) -> R<()> {
        match (self.get(&n.input[0])?.clone(), self.get(&n.input[1])?.clone()) {
            (Val::View(_), Val::Const(b)) if b.dims().len() == 2 => {
                let (k, m) = (b.dims()[0], b.dims()[1]);
                let x = self.input(n, 0)?;
                let w = transpose2(&b.floats().ok_or("B")?, k, m);
                let op = gops::Linear {
                    in_features: k,
                    out_features: m,
                    bias: false,
                };
                let t = self.tensor(&[m, k], w)?;
                let y = self.add(&Self::base_name(n, Some(1)), Op::from(op), vec![x], vec![("weight", t)])?;
                self.set(out0, y);
            }
            (Val::View(_), Val::View(_)) => {
                let a = self.input(n, 0)?;
                let b = self.input(n, 1)?;
                let op = Self::op_json(serde_json::json!({"type": "matmul"}))?;
                let y = self.add(&Self::base_name(n, None), op, vec![a, b], vec![])?;
                self.set(out0, y);
            }
            _ => return Err("a matrix product with a constant first factor (or a constant of rank other than 2)".into()),
        }
        Ok(())
    }

    /// ONNX LSTM / GRU, one forward direction, to ours (PyTorch's gate order).
    fn recurrent(&mut self, n: &NodeProto) -> R<()> {
        let lstm = n.op_type == "LSTM";
        let dir = attr_s(n, "direction").unwrap_or_else(|| "forward".into());
        if dir != "forward" {
            return Err(format!("direction `{dir}`: only forward is supported"));
        }
        if attr(n, "clip").is_some() {
            return Err("cell clipping is not supported".into());
        }
        if attr_i(n, "input_forget", 0) != 0 {
            return Err("input_forget = 1 is not supported".into());
        }
        if let Some(acts) = attr(n, "activations") {
            let acts: Vec<String> = acts
                .strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).to_string())
                .collect();
            let default: &[&str] = if lstm {
                &["Sigmoid", "Tanh", "Tanh"]
            } else {
                &["Sigmoid", "Tanh"]
            };
            if acts != default {
                return Err(format!(
                    "activations {acts:?}: only the defaults {default:?} are supported"
                ));
            }
        }
        if !lstm && attr_i(n, "linear_before_reset", 0) == 0 {
            return Err("linear_before_reset = 0 (the original GRU form) is not supported; PyTorch's GRU is linear_before_reset = 1".into());
        }
        for (i, what) in [
            (4, "sequence_lens"),
            (5, "initial_h"),
            (6, "initial_c"),
            (7, "P (peepholes)"),
        ] {
            if i == 6 && !lstm {
                continue;
            }
            if let Some(name) = n.input.get(i).filter(|s| !s.is_empty()) {
                let zero = match self.get_raw(name)? {
                    Val::Const(c) => c.floats().is_some_and(|v| v.iter().all(|&x| x == 0.0)),
                    Val::View(_) => false,
                    Val::BatchFill(v) => *v == 0.0,
                };
                if !zero || i == 4 || i == 7 {
                    return Err(format!(
                        "input {what} is not supported (zero initial states only)"
                    ));
                }
            }
        }
        let layout = attr_i(n, "layout", 0);
        let v = self.view(&n.input[0])?.ok_or("X is a constant")?;
        let s = self.shapes[&v.name].clone();
        // X must be [T, N, I] (layout 0) or [N, T, I] (layout 1) of our [T, I]
        let want: Vec<Ax> = if layout == 0 {
            vec![Ax::Dim(0), Ax::Batch, Ax::Dim(1)]
        } else {
            vec![Ax::Batch, Ax::Dim(0), Ax::Dim(1)]
        };
        let x = if s.len() == 2 && v.axes == want {
            v.name.clone()
        } else if layout == 1 {
            self.materialize(&n.input[0])?
        } else {
            return Err(format!(
                "X is not a batch-second view [T, N, I] of a sequence (axes {:?})",
                v.axes
            ));
        };
        let gates = if lstm { 4 } else { 3 };
        let hidden = bounded(attr_i(n, "hidden_size", 0), "hidden_size")?;
        let rows = gates * hidden;
        let w = self.konst(&n.input[1])?;
        let r = self.konst(&n.input[2])?;
        let input = *self.shapes[&x].last().ok_or("X")?;
        if hidden == 0 || w.dims() != [1, rows, input] || r.dims() != [1, rows, hidden] {
            return Err(format!(
                "W {:?} / R {:?} do not fit hidden_size {hidden} and input size {input}",
                w.dims(),
                r.dims()
            ));
        }
        let order: &[usize] = if lstm {
            &super::LSTM_FROM_ONNX
        } else {
            &super::GRU_SWAP
        };
        let reorder = |v: &[f32], per: usize| super::reorder_blocks(v, order, per);
        let wih = reorder(&w.floats().ok_or("W")?, hidden * input);
        let whh = reorder(&r.floats().ok_or("R")?, hidden * hidden);
        let (bih, bhh) = match self.opt_const(n, 3)? {
            Some(b) => {
                let b = b.floats().ok_or("B")?;
                if b.len() != 2 * rows {
                    return Err(format!("B holds {} values, expected {}", b.len(), 2 * rows));
                }
                (reorder(&b[..rows], hidden), reorder(&b[rows..], hidden))
            }
            None => (vec![0.0; rows], vec![0.0; rows]),
        };
        let used = |i: usize| {
            Self::out(n, i)
                .filter(|o| self.uses.contains_key(*o))
                .map(str::to_string)
        };
        let (y_out, h_out) = (used(0), used(1));
        if lstm && used(2).is_some() {
            return Err(
                "its cell-state output Y_c is read; prunekit's LSTM returns hidden states".into(),
            );
        }
        let params = vec![
            ("weight_ih", self.tensor(&[rows, input], wih)?),
            ("weight_hh", self.tensor(&[rows, hidden], whh)?),
            ("bias_ih", self.tensor(&[rows], bih)?),
            ("bias_hh", self.tensor(&[rows], bhh)?),
        ];
        let seq = y_out.is_some();
        let op = if lstm {
            Op::from(gops::Lstm {
                input_size: input,
                hidden_size: hidden,
                return_sequences: seq,
            })
        } else {
            Op::from(gops::Gru {
                input_size: input,
                hidden_size: hidden,
                return_sequences: seq,
            })
        };
        let y = self.add(&Self::base_name(n, Some(1)), op, vec![x], params)?;
        let t = self.shapes[&y][0];
        if let Some(o) = y_out {
            // Y: [T, num_directions, N, H] (layout 0) or [N, T, num_directions, H]
            let axes = if layout == 0 {
                vec![Ax::Dim(0), Ax::Unit, Ax::Batch, Ax::Dim(1)]
            } else {
                vec![Ax::Batch, Ax::Dim(0), Ax::Unit, Ax::Dim(1)]
            };
            self.vals.insert(
                o,
                Val::View(View {
                    name: y.clone(),
                    axes,
                }),
            );
        }
        if let Some(o) = h_out {
            // Y_h: [num_directions, N, H] (layout 0) or [N, num_directions, H]
            let (name, axes) = if seq {
                let last = self.add(
                    &format!("{y}/last"),
                    Op::from(gops::Narrow {
                        axis: 0,
                        start: t - 1,
                        len: 1,
                    }),
                    vec![y.clone()],
                    vec![],
                )?;
                let axes = if layout == 0 {
                    vec![Ax::Dim(0), Ax::Batch, Ax::Dim(1)]
                } else {
                    vec![Ax::Batch, Ax::Dim(0), Ax::Dim(1)]
                };
                (last, axes)
            } else {
                let axes = if layout == 0 {
                    vec![Ax::Unit, Ax::Batch, Ax::Dim(0)]
                } else {
                    vec![Ax::Batch, Ax::Unit, Ax::Dim(0)]
                };
                (y.clone(), axes)
            };
            self.vals.insert(o, Val::View(View { name, axes }));
        }
        Ok(())
    }
}

/// How many leading inputs an op type requires (ONNX's operator specs).
fn required_inputs(op_type: &str, opset: i64) -> usize {
    match op_type {
        "Constant" => 0,
        "BatchNormalization" => 5,
        "LSTM" | "GRU" => 3,
        "Slice" if opset >= 10 => 3,
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "MatMul" | "Gather" | "PRelu" | "Reshape"
        | "Conv" | "ConvTranspose" | "Gemm" | "LayerNormalization" | "Upsample" => 2,
        _ => 1,
    }
}

/// The axes of a reshape of view `v` (ONNX shape `in_shape`, None for the batch) to `shape` when
/// it only adds or removes axes of extent 1 (every other axis, the batch included, keeps its
/// extent and order); None otherwise. `0` copies an input axis; one `-1` stands for the batch
/// axis or the one extent that makes the counts agree.
fn unit_reshape(
    v: &View,
    in_shape: &[Option<usize>],
    shape: &[Sym],
    per_sample: usize,
) -> Option<Vec<Ax>> {
    let resolved: Vec<Sym> = shape
        .iter()
        .enumerate()
        .map(|(i, &s)| match s {
            Sym::K(0) => in_shape
                .get(i)
                .map(|d| d.map_or(Sym::Batch, |d| Sym::K(d as i64))),
            s => Some(s),
        })
        .collect::<Option<_>>()?;
    let known: usize = resolved
        .iter()
        .filter_map(|s| {
            if let Sym::K(k) = s {
                (*k > 0).then_some(*k as usize)
            } else {
                None
            }
        })
        .product();
    let has_batch = resolved.contains(&Sym::Batch);
    let minus = resolved.iter().filter(|s| **s == Sym::K(-1)).count();
    let target: Vec<Sym> = match (has_batch, minus) {
        (true, 0) => resolved,
        // the -1 is the batch axis when the known extents already hold every per-sample value
        (false, 1) if known == per_sample => resolved
            .into_iter()
            .map(|s| if s == Sym::K(-1) { Sym::Batch } else { s })
            .collect(),
        _ => return None,
    };
    // the non-unit axes of both sides must agree in order
    let big_in: Vec<(Ax, Option<usize>)> = v
        .axes
        .iter()
        .zip(in_shape)
        .filter(|(_, d)| **d != Some(1))
        .map(|(a, d)| (*a, *d))
        .collect();
    let big_out: Vec<Option<usize>> = target
        .iter()
        .filter(|s| **s != Sym::K(1))
        .map(|s| match s {
            Sym::K(k) => Some(*k as usize),
            Sym::Batch => None,
        })
        .collect();
    if big_in.len() != big_out.len() || big_in.iter().zip(&big_out).any(|((_, a), b)| a != b) {
        return None;
    }
    let mut it = big_in.into_iter();
    target
        .iter()
        .map(|s| match s {
            Sym::K(1) => Some(Ax::Unit),
            _ => it.next().map(|(a, _)| a),
        })
        .collect()
}

/// Explicit symmetric-or-not pads of a Conv / pool as [begin.., end..], from `pads` or `auto_pad`.
fn conv_pads(
    n: &NodeProto,
    spatial: usize,
    input: &[usize],
    kernel: &[usize],
    strides: &[i64],
    dil: &[i64],
) -> R<Vec<i64>> {
    let auto = attr_s(n, "auto_pad").unwrap_or_else(|| "NOTSET".into());
    let pads = match auto.as_str() {
        "NOTSET" => attr_ints(n, "pads").unwrap_or_else(|| vec![0; 2 * spatial]),
        "VALID" => vec![0; 2 * spatial],
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut b = Vec::new();
            let mut e = Vec::new();
            for (i, &k) in kernel.iter().enumerate().take(spatial) {
                let (x, k, s, d) = (
                    *input.get(i).ok_or("input rank")? as i64,
                    k as i64,
                    strides.get(i).copied().unwrap_or(1).max(1),
                    dil.get(i).copied().unwrap_or(1),
                );
                let out = (x + s - 1) / s;
                let total = ((out - 1) * s + (k - 1) * d + 1 - x).max(0);
                let small = total / 2;
                if auto == "SAME_UPPER" {
                    b.push(small);
                    e.push(total - small);
                } else {
                    b.push(total - small);
                    e.push(small);
                }
            }
            b.extend(e);
            b
        }
        other => return Err(format!("auto_pad `{other}`")),
    };
    if pads.len() != 2 * spatial {
        return Err(format!("pads {pads:?} are not 2 x {spatial} values"));
    }
    let (b, e) = pads.split_at(spatial);
    if b != e {
        return Err(format!(
            "asymmetric pads {pads:?} (begin {b:?}, end {e:?}); prunekit's convolutions and pools pad both sides equally"
        ));
    }
    Ok(b.to_vec())
}

fn transpose2(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

/// A Constant node's value: `value` (a tensor) or `value_float(s)` / `value_int(s)`.
fn constant_attr(n: &NodeProto) -> R<Const> {
    let a = n.attribute.first().ok_or("a Constant without a value")?;
    Ok(match (a.name.as_str(), a.r#type) {
        ("value", _) => tensor_const(a.t.as_ref().ok_or("`value` holds no tensor")?)?,
        ("value_float", _) => Const::Float {
            dims: vec![],
            data: vec![a.f],
        },
        ("value_floats", _) => Const::Float {
            dims: vec![a.floats.len()],
            data: a.floats.clone(),
        },
        ("value_int", _) => Const::Int {
            dims: vec![],
            data: vec![Sym::K(a.i)],
        },
        ("value_ints", _) => Const::Int {
            dims: vec![a.ints.len()],
            data: a.ints.iter().map(|&i| Sym::K(i)).collect(),
        },
        (name, t) if t == at::STRING || t == at::STRINGS => {
            return Err(format!("string constant `{name}`"))
        }
        (name, _) => return Err(format!("Constant attribute `{name}` is not read")),
    })
}

fn strides_of(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Applies `f(old flat index)` over the new dims to build a constant of the same kind.
fn remap(c: &Const, dims: Vec<usize>, f: impl Fn(&[usize]) -> usize) -> Const {
    let n: usize = dims.iter().product();
    let st = strides_of(&dims);
    let idx = |flat: usize| -> Vec<usize> {
        st.iter()
            .zip(&dims)
            .map(|(s, d)| (flat / s) % d.max(&1))
            .collect()
    };
    match c {
        Const::Float { data, .. } => Const::Float {
            data: (0..n).map(|i| data[f(&idx(i))]).collect(),
            dims,
        },
        Const::Int { data, .. } => Const::Int {
            data: (0..n).map(|i| data[f(&idx(i))]).collect(),
            dims,
        },
    }
}

fn transpose_const(c: &Const, perm: &[usize]) -> R<Const> {
    let old = c.dims().to_vec();
    let ost = strides_of(&old);
    let dims: Vec<usize> = perm.iter().map(|&p| old[p]).collect();
    Ok(remap(c, dims, |ix| {
        ix.iter().zip(perm).map(|(i, &p)| i * ost[p]).sum()
    }))
}

fn gather_const(data: &Const, idx: &Const, axis: i64) -> R<Const> {
    let dims = data.dims().to_vec();
    let a = norm_axis(axis, dims.len().max(1))?;
    if dims.is_empty() {
        return Err("gather from a scalar".into());
    }
    let ids: Vec<usize> = idx
        .ints()
        .ok_or("gather indices holding the batch size")?
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + dims[a] as i64 } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| j < dims[a])
                .ok_or(format!("index {i} out of range for extent {}", dims[a]))
        })
        .collect::<R<_>>()?;
    let mut out = dims[..a].to_vec();
    out.extend_from_slice(idx.dims());
    out.extend_from_slice(&dims[a + 1..]);
    let ost = strides_of(&dims);
    let idims = idx.dims().len();
    Ok(remap(data, out, |ix| {
        let flat_idx: usize = {
            let ist = strides_of(idx.dims());
            ix[a..a + idims].iter().zip(&ist).map(|(i, s)| i * s).sum()
        };
        let mut o = 0;
        for (k, &i) in ix[..a].iter().enumerate() {
            o += i * ost[k];
        }
        o += ids[flat_idx] * ost[a];
        for (k, &i) in ix[a + idims..].iter().enumerate() {
            o += i * ost[a + 1 + k];
        }
        o
    }))
}

fn concat_const(parts: &[Const], axis: i64) -> R<Const> {
    let first = parts.first().ok_or("Concat of nothing")?;
    let rank = first.dims().len();
    if rank == 0 {
        return Err("Concat of scalars".into());
    }
    let a = norm_axis(axis, rank)?;
    for p in parts {
        let d = p.dims();
        if d.len() != rank || (0..rank).any(|i| i != a && d[i] != first.dims()[i]) {
            return Err(format!(
                "Concat of shapes {:?} and {d:?} along axis {a}",
                first.dims()
            ));
        }
    }
    let mut dims = first.dims().to_vec();
    dims[a] = parts
        .iter()
        .map(|p| p.dims().get(a).copied().unwrap_or(0))
        .sum();
    let outer: usize = dims[..a].iter().product();
    let is_float = parts.iter().any(|p| matches!(p, Const::Float { .. }));
    let mut fl = Vec::new();
    let mut sy = Vec::new();
    for o in 0..outer {
        for p in parts {
            let inner: usize = p.dims()[a..].iter().product();
            if is_float {
                let v = p.floats().ok_or("concat of the batch size with floats")?;
                fl.extend_from_slice(&v[o * inner..(o + 1) * inner]);
            } else {
                let v = p.syms();
                sy.extend_from_slice(&v[o * inner..(o + 1) * inner]);
            }
        }
    }
    Ok(if is_float {
        Const::Float { dims, data: fl }
    } else {
        Const::Int { dims, data: sy }
    })
}

fn slice_const(
    data: &Const,
    starts: &[i64],
    ends: &[i64],
    axes: &Option<Vec<i64>>,
    steps: &Option<Vec<i64>>,
) -> R<Const> {
    let dims = data.dims().to_vec();
    let axes: Vec<i64> = axes
        .clone()
        .unwrap_or_else(|| (0..starts.len() as i64).collect());
    if axes.len() != starts.len() {
        return Err(format!(
            "starts {starts:?} and axes {axes:?} differ in length"
        ));
    }
    let mut ranges: Vec<(i64, i64, i64)> = dims.iter().map(|&d| (0, d as i64, 1)).collect();
    for k in 0..starts.len() {
        let a = norm_axis(axes[k], dims.len())?;
        let d = dims[a] as i64;
        let step = steps.as_ref().and_then(|s| s.get(k).copied()).unwrap_or(1);
        if step <= 0 {
            return Err("slices with a non-positive step are not supported".into());
        }
        let clamp = |x: i64| (if x < 0 { x + d } else { x }).clamp(0, d);
        ranges[a] = (clamp(starts[k]), clamp(*ends.get(k).unwrap_or(&d)), step);
    }
    let out: Vec<usize> = ranges
        .iter()
        .map(|&(s, e, st)| {
            if e > s {
                ((e - s - 1) / st + 1) as usize
            } else {
                0
            }
        })
        .collect();
    let ost = strides_of(&dims);
    Ok(remap(data, out, |ix| {
        ix.iter()
            .zip(&ranges)
            .zip(&ost)
            .map(|((&i, &(s, _, st)), &o)| (s as usize + i * st as usize) * o)
            .sum()
    }))
}

fn arith_const(op: &str, a: &Const, b: &Const) -> R<Const> {
    let (ad, bd) = (a.dims(), b.dims());
    if a.len() != b.len() && a.len() != 1 && b.len() != 1 {
        return Err(format!("constant {op} of shapes {ad:?} and {bd:?}"));
    }
    let dims = if a.len() >= b.len() {
        ad.to_vec()
    } else {
        bd.to_vec()
    };
    let n = a.len().max(b.len());
    if a.len() == 0 || b.len() == 0 {
        let dims = if a.len() == 0 {
            ad.to_vec()
        } else {
            bd.to_vec()
        };
        return Ok(match (a, b) {
            (Const::Int { .. }, Const::Int { .. }) => Const::Int { dims, data: vec![] },
            _ => Const::Float { dims, data: vec![] },
        });
    }
    if matches!(a, Const::Float { .. }) || matches!(b, Const::Float { .. }) {
        let (x, y) = (
            a.floats().ok_or("batch size")?,
            b.floats().ok_or("batch size")?,
        );
        let data = (0..n)
            .map(|i| {
                let (p, q) = (x[i % x.len()], y[i % y.len()]);
                match op {
                    "Add" => p + q,
                    "Sub" => p - q,
                    "Mul" => p * q,
                    _ => p / q,
                }
            })
            .collect();
        return Ok(Const::Float { dims, data });
    }
    let (x, y) = (a.syms(), b.syms());
    let data = (0..n)
        .map(|i| match (x[i % x.len()], y[i % y.len()]) {
            (Sym::K(p), Sym::K(q)) => Ok(Sym::K(match op {
                "Add" => p + q,
                "Sub" => p - q,
                "Mul" => p * q,
                _ if q == 0 => return Err("integer division by zero".to_string()),
                _ => p.div_euclid(q),
            })),
            (Sym::Batch, Sym::K(1)) if op == "Mul" || op == "Div" => Ok(Sym::Batch),
            (Sym::K(1), Sym::Batch) if op == "Mul" => Ok(Sym::Batch),
            _ => Err(format!("{op} with the batch size")),
        })
        .collect::<R<_>>()?;
    Ok(Const::Int { dims, data })
}

fn reshape_dims(old: &[usize], shape: &[i64]) -> R<Vec<usize>> {
    let n: usize = old.iter().product();
    let mut dims: Vec<i64> = shape
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            if s == 0 {
                old.get(i).map_or(0, |&d| d as i64)
            } else {
                s
            }
        })
        .collect();
    let known: i64 = dims.iter().filter(|&&d| d != -1).product();
    if let Some(m) = dims.iter().position(|&d| d == -1) {
        if known <= 0 || n as i64 % known != 0 {
            return Err(format!("cannot reshape {old:?} to {shape:?}"));
        }
        dims[m] = n as i64 / known;
    }
    if dims.iter().any(|&d| d < 0) || dims.iter().product::<i64>() != n as i64 {
        return Err(format!("cannot reshape {old:?} to {shape:?}"));
    }
    Ok(dims.into_iter().map(|d| d as usize).collect())
}
