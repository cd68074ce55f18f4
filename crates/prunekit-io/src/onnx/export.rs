//! `Graph` -> ONNX, opset 17, IR version 8: every op as the ONNX operators that compute it, the
//! pruned widths as they are. Each of our values keeps its name (our node names are valid ONNX
//! names); parameters are initializers named `node.param`; helper values are `node/what`. Every
//! input and output gets a symbolic batch axis `N`. Masked weights are written with their zeros
//! (ONNX has no masks).

use std::path::Path;

use candle_core::{DType, Tensor};
use prost::Message;
use prunekit_graph::ops::{self as gops, Op};
use prunekit_graph::{Graph, InputKind, Node, Shapes};

use super::proto::{
    attribute_type as at, data_type as dt, AttributeProto, DimValue, Dimension, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto,
};
use crate::error::{IoError, Result};

#[path = "export_attention.rs"]
pub(super) mod attention;

/// The opset the exporter writes.
pub const OPSET: i64 = 17;
/// The IR version it writes (ONNX 1.13+, read by onnxruntime >= 1.14).
pub const IR_VERSION: i64 = 8;

/// Writes `g` as an ONNX file at `path` (atomically).
///
/// Errors: an op with no ONNX form here (named in the message), a LayerNorm /
/// RMSNorm whose weight is masked (its statistics skip masked channels; remove them physically
/// first), the file cannot be written.
pub fn save(g: &Graph, path: &Path) -> Result<()> {
    let m = to_model(g).map_err(|e| match e {
        IoError::File { msg, .. } => IoError::file(path, msg),
        e => e,
    })?;
    crate::native::atomic_write(path, &m.encode_to_vec())?;
    Ok(())
}

/// The ONNX model of `g` (see [`save`]).
pub fn to_model(g: &Graph) -> Result<ModelProto> {
    let shapes = g.validate()?;
    let mut e = Exporter::default();
    for n in &g.nodes {
        // a node borrowing a parameter (`Node::shared`) is written with the owner's tensor: its
        // initializer `owner.param` is written once and read by both ONNX nodes
        let resolved;
        let n = if n.shared.is_empty() {
            n
        } else {
            resolved = with_borrowed(g, n)?;
            &resolved
        };
        let start = e.nodes.len();
        e.node(n, &shapes).map_err(|msg| IoError::Node {
            path: Default::default(),
            node: n.name.clone(),
            op_type: n.op.type_name().to_string(),
            msg,
        })?;
        // the ONNX node that reads our node's parameters (or its first) carries its name, so the
        // importer names it back; the others are named by their outputs
        let prefix = format!("{}.", n.name);
        let emitted = &mut e.nodes[start..];
        let principal = emitted
            .iter()
            .position(|o| o.input.iter().any(|i| i.starts_with(&prefix)))
            .unwrap_or(0);
        for (k, o) in emitted.iter_mut().enumerate() {
            o.name = if k == principal {
                n.name.clone()
            } else if o.output[0] == n.name {
                format!("{}/output", n.name)
            } else {
                o.output[0].clone()
            };
        }
    }
    let input = g
        .inputs
        .iter()
        .map(|i| {
            value_info(
                &i.name,
                if i.kind == InputKind::Ids {
                    dt::INT64
                } else {
                    dt::FLOAT
                },
                &i.shape,
            )
        })
        .collect();
    let output = g
        .outputs
        .iter()
        .map(|o| value_info(o, dt::FLOAT, &shapes[o]))
        .collect();
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "prunekit".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            node: e.nodes,
            name: g.name.clone(),
            initializer: e.inits,
            input,
            output,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A view of `n` holding its borrowed parameters too (the owners' variables, not copies); its
/// `shared` map still says which are borrowed.
fn with_borrowed(g: &Graph, n: &Node) -> Result<Node> {
    let mut params = std::collections::BTreeMap::new();
    for (k, p) in &n.params {
        params.insert(k.clone(), share(p));
    }
    for (k, r) in &n.shared {
        let p = g.param_of(n, k).ok_or_else(|| {
            IoError::Graph(prunekit_graph::GraphError::param(
                &n.name,
                k,
                format!("is borrowed from {r}, which does not exist"),
            ))
        })?;
        params.insert(k.clone(), share(p));
    }
    let mut v = Node::new(n.name.clone(), n.op.clone(), n.inputs.clone(), params);
    v.shared = n.shared.clone();
    Ok(v)
}

fn share(p: &prunekit_graph::Param) -> prunekit_graph::Param {
    prunekit_graph::Param {
        value: p.value.clone(),
        mask: p.mask.clone(),
        role: p.role,
    }
}

fn value_info(name: &str, elem: i32, shape: &[usize]) -> ValueInfoProto {
    let mut dim = vec![Dimension {
        value: Some(DimValue::DimParam("N".into())),
        denotation: String::new(),
    }];
    dim.extend(shape.iter().map(|&d| Dimension {
        value: Some(DimValue::DimValue(d as i64)),
        denotation: String::new(),
    }));
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim }),
            }),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

fn a_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: at::INT,
        i,
        ..Default::default()
    }
}
fn a_f(name: &str, f: f64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: at::FLOAT,
        f: f as f32,
        ..Default::default()
    }
}
fn a_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: at::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}
fn a_s(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: at::STRING,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn floats(t: &Tensor) -> std::result::Result<Vec<f32>, String> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())
}

type R<T> = std::result::Result<T, String>;

#[derive(Default)]
struct Exporter {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// initializers written by `param`, so a shared parameter is written once
    params_written: std::collections::HashSet<String>,
}

impl Exporter {
    fn init(&mut self, name: &str, dims: &[usize], data: Vec<f32>) -> String {
        let raw = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: dt::FLOAT,
            name: name.into(),
            raw_data: raw,
            ..Default::default()
        });
        name.into()
    }
    fn ints(&mut self, name: &str, data: &[i64]) -> String {
        self.inits.push(TensorProto {
            dims: vec![data.len() as i64],
            data_type: dt::INT64,
            name: name.into(),
            int64_data: data.to_vec(),
            ..Default::default()
        });
        name.into()
    }
    fn scalar(&mut self, name: &str, v: f32) -> String {
        self.init(name, &[], vec![v])
    }
    /// A parameter as an initializer `node.param`, optionally reshaped / transposed by `f`.
    /// A borrowed parameter is its owner's initializer `owner.param`, written once.
    fn param(&mut self, n: &Node, k: &str) -> R<String> {
        let p = n
            .params
            .get(k)
            .ok_or_else(|| format!("missing parameter `{k}`"))?;
        let name = match n.shared.get(k) {
            Some(r) => format!("{}.{}", r.node, r.param),
            None => format!("{}.{k}", n.name),
        };
        if !self.params_written.insert(name.clone()) {
            return Ok(name);
        }
        let t = p.tensor();
        Ok(self.init(&name, t.dims(), floats(t)?))
    }
    fn op(&mut self, op_type: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: output.to_string(),
            op_type: op_type.into(),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Inputs of an elementwise op brought to one rank: a lower-rank input gets unit axes after
    /// the batch axis (prunekit aligns per-sample axes from the right with the batch axis apart;
    /// ONNX aligns whole shapes from the right).
    fn aligned(&mut self, n: &Node, shapes: &Shapes) -> Vec<String> {
        let rank = n.inputs.iter().map(|i| shapes[i].len()).max().unwrap_or(0);
        let mut out = Vec::new();
        for (k, i) in n.inputs.iter().enumerate() {
            let r = shapes[i].len();
            if r == rank {
                out.push(i.clone());
            } else {
                let axes: Vec<i64> = (1..=(rank - r) as i64).collect();
                let a = self.ints(&format!("{}/unsqueeze{k}.axes", n.name), &axes);
                let y = format!("{}/unsqueeze{k}", n.name);
                self.op("Unsqueeze", &[i, &a], &y, vec![]);
                out.push(y);
            }
        }
        out
    }

    fn fold_binary(&mut self, op_type: &str, xs: &[String], out: &str) {
        let mut acc = xs[0].clone();
        for (k, x) in xs[1..].iter().enumerate() {
            let y = if k + 2 == xs.len() {
                out.to_string()
            } else {
                format!("{out}/{k}")
            };
            self.op(op_type, &[&acc, x], &y, vec![]);
            acc = y;
        }
    }

    fn unmasked_norm(n: &Node) -> R<()> {
        if let Some(m) = n.params.get("weight").and_then(|p| p.mask.as_ref()) {
            let zeros = prunekit_graph::count_zeros(m).map_err(|e| e.to_string())?;
            if zeros > 0 {
                return Err(format!(
                    "its weight masks {zeros} channels, whose statistics ONNX's normalisation would count; remove them physically first (structured pruning with removal)"
                ));
            }
        }
        Ok(())
    }

    fn node(&mut self, n: &Node, shapes: &Shapes) -> R<()> {
        let y = n.name.as_str();
        let x = n.inputs.first().map(String::as_str).unwrap_or_default();
        let xs = n
            .inputs
            .first()
            .map(|i| shapes[i].clone())
            .unwrap_or_default();
        let nm = |s: &str| format!("{y}/{s}");
        match &n.op {
            Op::Linear(l) => {
                let w = n.params["weight"].tensor();
                if xs.len() == 1 {
                    let wn = self.param(n, "weight")?;
                    let mut ins = vec![x.to_string(), wn];
                    if l.bias {
                        ins.push(self.param(n, "bias")?);
                    }
                    let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                    self.op("Gemm", &ins, y, vec![a_i("transB", 1)]);
                } else {
                    let wn = if n.shared.contains_key("weight") {
                        // the shared initializer, transposed in the graph (not a second copy)
                        let w = self.param(n, "weight")?;
                        // named as the untied copy is, so the MatMul carries our node's name
                        let wt = format!("{y}.weight_t");
                        self.op("Transpose", &[&w], &wt, vec![a_ints("perm", &[1, 0])]);
                        wt
                    } else {
                        let wt = w.t().map_err(|e| e.to_string())?;
                        self.init(&format!("{y}.weight_t"), wt.dims(), floats(&wt)?)
                    };
                    if l.bias {
                        let mm = nm("matmul");
                        self.op("MatMul", &[x, &wn], &mm, vec![]);
                        let b = self.param(n, "bias")?;
                        self.op("Add", &[&mm, &b], y, vec![]);
                    } else {
                        self.op("MatMul", &[x, &wn], y, vec![]);
                    }
                }
            }
            Op::Conv2d(c) => self.conv(
                n, x, y, &c.kernel, c.stride, c.padding, c.dilation, c.groups, c.bias,
            )?,
            Op::Conv1d(c) => self.conv(
                n,
                x,
                y,
                &[c.kernel],
                c.stride,
                c.padding,
                c.dilation,
                c.groups,
                c.bias,
            )?,
            Op::BatchNorm(b) => {
                let c = b.num_features;
                let (w, bias) = if b.affine {
                    (self.param(n, "weight")?, self.param(n, "bias")?)
                } else {
                    (
                        self.init(&format!("{y}.weight"), &[c], vec![1.0; c]),
                        self.init(&format!("{y}.bias"), &[c], vec![0.0; c]),
                    )
                };
                let mean = self.param(n, "running_mean")?;
                let var = self.param(n, "running_var")?;
                self.op(
                    "BatchNormalization",
                    &[x, &w, &bias, &mean, &var],
                    y,
                    vec![a_f("epsilon", b.eps), a_f("momentum", 1.0 - b.momentum)],
                );
            }
            Op::LayerNorm(l) => {
                Self::unmasked_norm(n)?;
                let c = l.normalized_shape;
                let (w, b) = if l.affine {
                    (self.param(n, "weight")?, self.param(n, "bias")?)
                } else {
                    (
                        self.init(&format!("{y}.weight"), &[c], vec![1.0; c]),
                        self.init(&format!("{y}.bias"), &[c], vec![0.0; c]),
                    )
                };
                self.op(
                    "LayerNormalization",
                    &[x, &w, &b],
                    y,
                    vec![a_i("axis", -1), a_f("epsilon", l.eps)],
                );
            }
            Op::RmsNorm(r) => {
                Self::unmasked_norm(n)?;
                // x / sqrt(mean(x^2, last axis) + eps) * weight
                let sq = nm("square");
                self.op("Mul", &[x, x], &sq, vec![]);
                let mean = nm("mean");
                self.op(
                    "ReduceMean",
                    &[&sq],
                    &mean,
                    vec![a_ints("axes", &[-1]), a_i("keepdims", 1)],
                );
                let eps = self.scalar(&format!("{y}.eps"), r.eps as f32);
                let plus = nm("plus_eps");
                self.op("Add", &[&mean, &eps], &plus, vec![]);
                let root = nm("rms");
                self.op("Sqrt", &[&plus], &root, vec![]);
                let normed = nm("normalised");
                self.op("Div", &[x, &root], &normed, vec![]);
                let w = self.param(n, "weight")?;
                self.op("Mul", &[&normed, &w], y, vec![]);
            }
            Op::GroupNorm(gn) => {
                // [N, C, ..] -> [N, G, C/G * ..] -> InstanceNormalization -> back, then the affine
                let gcount = gn.num_groups;
                let shape_g = self.ints(&format!("{y}/groups.shape"), &[0, gcount as i64, -1]);
                let grouped = nm("grouped");
                self.op("Reshape", &[x, &shape_g], &grouped, vec![]);
                let ones = self.init(&format!("{y}.group_scale"), &[gcount], vec![1.0; gcount]);
                let zeros = self.init(&format!("{y}.group_bias"), &[gcount], vec![0.0; gcount]);
                let normed = nm("instance_norm");
                self.op(
                    "InstanceNormalization",
                    &[&grouped, &ones, &zeros],
                    &normed,
                    vec![a_f("epsilon", gn.eps)],
                );
                let back: Vec<i64> = std::iter::once(0)
                    .chain(xs.iter().map(|&d| d as i64))
                    .collect();
                let shape_b = self.ints(&format!("{y}/back.shape"), &back);
                let restored = if gn.affine {
                    nm("restored")
                } else {
                    y.to_string()
                };
                self.op("Reshape", &[&normed, &shape_b], &restored, vec![]);
                if gn.affine {
                    let bshape: Vec<usize> = std::iter::once(gn.num_channels)
                        .chain(std::iter::repeat_n(1, xs.len() - 1))
                        .collect();
                    let w = floats(n.params["weight"].tensor())?;
                    let b = floats(n.params["bias"].tensor())?;
                    let wn = self.init(&format!("{y}.weight"), &bshape, w);
                    let bn = self.init(&format!("{y}.bias"), &bshape, b);
                    let scaled = nm("scaled");
                    self.op("Mul", &[&restored, &wn], &scaled, vec![]);
                    self.op("Add", &[&scaled, &bn], y, vec![]);
                }
            }
            Op::Embedding(_) => {
                let w = self.param(n, "weight")?;
                self.op("Gather", &[&w, x], y, vec![a_i("axis", 0)]);
            }
            Op::PositionalEmbedding(p) => {
                let t = xs[0];
                let w = floats(n.params["weight"].tensor())?;
                let w = self.init(&format!("{y}.weight"), &[t, p.dim], w[..t * p.dim].to_vec());
                self.op("Add", &[x, &w], y, vec![]);
            }
            Op::Relu(_) => self.op("Relu", &[x], y, vec![]),
            Op::Tanh(_) => self.op("Tanh", &[x], y, vec![]),
            Op::Sigmoid(_) => self.op("Sigmoid", &[x], y, vec![]),
            Op::Silu(_) => {
                let s = nm("sigmoid");
                self.op("Sigmoid", &[x], &s, vec![]);
                self.op("Mul", &[x, &s], y, vec![]);
            }
            Op::Gelu(g) => match g.approximate {
                gops::activation::GeluApprox::None => {
                    // 0.5 x (1 + erf(x / sqrt 2))
                    let r2 = self.scalar(&format!("{y}.sqrt2"), std::f32::consts::SQRT_2);
                    let d = nm("scaled");
                    self.op("Div", &[x, &r2], &d, vec![]);
                    let e = nm("erf");
                    self.op("Erf", &[&d], &e, vec![]);
                    let one = self.scalar(&format!("{y}.one"), 1.0);
                    let p = nm("one_plus");
                    self.op("Add", &[&e, &one], &p, vec![]);
                    let m = nm("times_x");
                    self.op("Mul", &[x, &p], &m, vec![]);
                    let half = self.scalar(&format!("{y}.half"), 0.5);
                    self.op("Mul", &[&m, &half], y, vec![]);
                }
                gops::activation::GeluApprox::Tanh => {
                    // 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
                    let x2 = nm("x2");
                    self.op("Mul", &[x, x], &x2, vec![]);
                    let x3 = nm("x3");
                    self.op("Mul", &[&x2, x], &x3, vec![]);
                    let c = self.scalar(&format!("{y}.c"), 0.044715);
                    let cx3 = nm("cx3");
                    self.op("Mul", &[&x3, &c], &cx3, vec![]);
                    let inner = nm("inner");
                    self.op("Add", &[x, &cx3], &inner, vec![]);
                    let k = self.scalar(&format!("{y}.k"), (2.0f32 / std::f32::consts::PI).sqrt());
                    let ki = nm("k_inner");
                    self.op("Mul", &[&inner, &k], &ki, vec![]);
                    let t = nm("tanh");
                    self.op("Tanh", &[&ki], &t, vec![]);
                    let one = self.scalar(&format!("{y}.one"), 1.0);
                    let p = nm("one_plus");
                    self.op("Add", &[&t, &one], &p, vec![]);
                    let m = nm("times_x");
                    self.op("Mul", &[x, &p], &m, vec![]);
                    let half = self.scalar(&format!("{y}.half"), 0.5);
                    self.op("Mul", &[&m, &half], y, vec![]);
                }
            },
            Op::Softmax(s) => {
                let axis = if s.axis < 0 {
                    s.axis as i64
                } else {
                    s.axis as i64 + 1
                };
                self.op("Softmax", &[x], y, vec![a_i("axis", axis)]);
            }
            Op::Dropout(_) => self.op("Identity", &[x], y, vec![]),
            Op::Add(_) | Op::Mul(_) => {
                let ins = self.aligned(n, shapes);
                let t = if matches!(n.op, Op::Add(_)) {
                    "Add"
                } else {
                    "Mul"
                };
                self.fold_binary(t, &ins, y);
            }
            Op::Concat(c) => {
                let rank = xs.len() as isize;
                let a = if c.axis < 0 { c.axis + rank } else { c.axis };
                let ins: Vec<&str> = n.inputs.iter().map(String::as_str).collect();
                self.op("Concat", &ins, y, vec![a_i("axis", a as i64 + 1)]);
            }
            Op::Flatten(_) => self.op("Flatten", &[x], y, vec![a_i("axis", 1)]),
            Op::Reshape(r) => {
                let target: Vec<i64> = std::iter::once(0)
                    .chain(r.shape.iter().map(|&d| d as i64))
                    .collect();
                let s = self.ints(&format!("{y}.shape"), &target);
                self.op("Reshape", &[x, &s], y, vec![]);
            }
            Op::Narrow(nr) => {
                let rank = xs.len() as isize;
                let a = if nr.axis < 0 { nr.axis + rank } else { nr.axis } as i64 + 1;
                let s = self.ints(&format!("{y}.starts"), &[nr.start as i64]);
                let e = self.ints(&format!("{y}.ends"), &[(nr.start + nr.len) as i64]);
                let ax = self.ints(&format!("{y}.axes"), &[a]);
                self.op("Slice", &[x, &s, &e, &ax], y, vec![]);
            }
            Op::MaxPool2d(gops::MaxPool2d(p)) | Op::AvgPool2d(gops::AvgPool2d(p)) => {
                let st = p.stride();
                let mut attrs = vec![
                    a_ints("kernel_shape", &[p.kernel[0] as i64, p.kernel[1] as i64]),
                    a_ints("strides", &[st[0] as i64, st[1] as i64]),
                    a_ints(
                        "pads",
                        &[
                            p.padding[0] as i64,
                            p.padding[1] as i64,
                            p.padding[0] as i64,
                            p.padding[1] as i64,
                        ],
                    ),
                ];
                let t = if matches!(n.op, Op::MaxPool2d(_)) {
                    "MaxPool"
                } else {
                    attrs.push(a_i("count_include_pad", 1));
                    "AveragePool"
                };
                self.op(t, &[x], y, attrs);
            }
            Op::GlobalAvgPool(_) => {
                let p = nm("pooled");
                self.op("GlobalAveragePool", &[x], &p, vec![]);
                self.op("Flatten", &[&p], y, vec![a_i("axis", 1)]);
            }
            Op::Lstm(l) => {
                self.recurrent(n, x, y, 4, l.input_size, l.hidden_size, l.return_sequences)?
            }
            Op::Gru(g) => {
                self.recurrent(n, x, y, 3, g.input_size, g.hidden_size, g.return_sequences)?
            }
            Op::Transpose(t) => {
                let perm: Vec<i64> = std::iter::once(0)
                    .chain(t.perm.iter().map(|&p| p as i64 + 1))
                    .collect();
                self.op("Transpose", &[x], y, vec![a_ints("perm", &perm)]);
            }
            Op::Constant(c) => {
                // our constants carry a batch axis of 1, which ONNX broadcasting supplies
                let v = floats(n.params["value"].tensor())?;
                let dims: Vec<usize> = std::iter::once(1).chain(c.shape.iter().copied()).collect();
                let w = self.init(&format!("{y}.value"), &dims, v);
                self.op("Identity", &[&w], y, vec![]);
            }
            Op::Sub(_) | Op::Div(_) => {
                let ins = self.aligned(n, shapes);
                let t = if matches!(n.op, Op::Sub(_)) {
                    "Sub"
                } else {
                    "Div"
                };
                self.fold_binary(t, &ins, y);
            }
            Op::Erf(_) => self.op("Erf", &[x], y, vec![]),
            Op::Sqrt(_) => self.op("Sqrt", &[x], y, vec![]),
            Op::HardSwish(_) => self.op("HardSwish", &[x], y, vec![]),
            Op::HardSigmoid(h) => self.op(
                "HardSigmoid",
                &[x],
                y,
                vec![a_f("alpha", h.alpha), a_f("beta", h.beta)],
            ),
            Op::LeakyRelu(l) => self.op("LeakyRelu", &[x], y, vec![a_f("alpha", l.alpha)]),
            Op::Clip(c) => {
                let lo = self.scalar(&format!("{y}.min"), c.min.unwrap_or(f64::MIN) as f32);
                let hi = self.scalar(&format!("{y}.max"), c.max.unwrap_or(f64::MAX) as f32);
                self.op("Clip", &[x, &lo, &hi], y, vec![]);
            }
            Op::PRelu(p) => {
                // slope [C, 1, ..] broadcasts over the per-sample axes after the channels
                let v = floats(n.params["weight"].tensor())?;
                let dims: Vec<usize> = std::iter::once(p.num_parameters)
                    .chain(std::iter::repeat_n(1, xs.len().saturating_sub(1)))
                    .collect();
                let w = self.init(&format!("{y}.weight"), &dims, v);
                self.op("PRelu", &[x, &w], y, vec![]);
            }
            Op::MatMul(_) => {
                let ins: Vec<&str> = n.inputs.iter().map(String::as_str).collect();
                self.op("MatMul", &ins, y, vec![]);
            }
            Op::ReduceMean(r) => {
                let rank = xs.len() as isize;
                let axes: Vec<i64> = r
                    .axes
                    .iter()
                    .map(|&a| (if a < 0 { a + rank } else { a }) as i64 + 1)
                    .collect();
                self.op(
                    "ReduceMean",
                    &[x],
                    y,
                    vec![
                        a_ints("axes", &axes),
                        a_i("keepdims", i64::from(r.keepdims)),
                    ],
                );
            }
            Op::Slice(sl) => {
                let rank = xs.len() as isize;
                let a = if sl.axis < 0 { sl.axis + rank } else { sl.axis } as i64 + 1;
                let s = self.ints(&format!("{y}.starts"), &[sl.start]);
                let e = self.ints(&format!("{y}.ends"), &[sl.end]);
                let ax = self.ints(&format!("{y}.axes"), &[a]);
                let st = self.ints(&format!("{y}.steps"), &[sl.step]);
                self.op("Slice", &[x, &s, &e, &ax, &st], y, vec![]);
            }
            Op::Gather(gt) => {
                let rank = xs.len() as isize;
                let a = if gt.axis < 0 { gt.axis + rank } else { gt.axis } as i64 + 1;
                let name = format!("{y}.indices");
                if gt.scalar {
                    self.inits.push(TensorProto {
                        dims: vec![],
                        data_type: dt::INT64,
                        name: name.clone(),
                        int64_data: gt.indices.clone(),
                        ..Default::default()
                    });
                } else {
                    self.ints(&name, &gt.indices);
                }
                self.op("Gather", &[x, &name], y, vec![a_i("axis", a)]);
            }
            Op::ConvTranspose2d(c) => {
                let w = self.param(n, "weight")?;
                let mut ins = vec![x.to_string(), w];
                if c.bias {
                    ins.push(self.param(n, "bias")?);
                }
                let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                let (st, p, op, d) = (
                    c.stride as i64,
                    c.padding as i64,
                    c.output_padding as i64,
                    c.dilation as i64,
                );
                self.op(
                    "ConvTranspose",
                    &ins,
                    y,
                    vec![
                        a_ints("kernel_shape", &[c.kernel[0] as i64, c.kernel[1] as i64]),
                        a_ints("strides", &[st, st]),
                        a_ints("pads", &[p, p, p, p]),
                        a_ints("output_padding", &[op, op]),
                        a_ints("dilations", &[d, d]),
                        a_i("group", c.groups as i64),
                    ],
                );
            }
            Op::Resize(r) => {
                let scales = self.init(
                    &format!("{y}.scales"),
                    &[4],
                    vec![1.0, 1.0, r.scale[0] as f32, r.scale[1] as f32],
                );
                let attrs = match r.mode {
                    gops::resample::ResizeMode::Nearest => vec![
                        a_s("mode", "nearest"),
                        a_s("coordinate_transformation_mode", "asymmetric"),
                        a_s("nearest_mode", "floor"),
                    ],
                    gops::resample::ResizeMode::Bilinear => vec![
                        a_s("mode", "linear"),
                        a_s("coordinate_transformation_mode", "half_pixel"),
                    ],
                };
                self.op("Resize", &[x, "", &scales], y, attrs);
            }
            Op::MaskedMeanPool(p) => {
                // x [N, T, D], mask [N, T]: sum_t m x / max(sum_t m, eps) (sentence-transformers)
                let mask = n.inputs.get(1).map(String::as_str).unwrap_or_default();
                let last = self.ints(&format!("{y}.mask_axes"), &[-1]);
                let tokens = self.ints(&format!("{y}.token_axes"), &[1]);
                let eps = self.scalar(&format!("{y}.eps"), p.eps as f32);
                let m = nm("mask");
                self.op("Unsqueeze", &[mask, &last], &m, vec![]);
                let masked = nm("masked");
                self.op("Mul", &[x, &m], &masked, vec![]);
                let sum = nm("sum");
                self.op(
                    "ReduceSum",
                    &[&masked, &tokens],
                    &sum,
                    vec![a_i("keepdims", 0)],
                );
                let count = nm("count");
                self.op(
                    "ReduceSum",
                    &[&m, &tokens],
                    &count,
                    vec![a_i("keepdims", 0)],
                );
                let clamped = nm("clamped");
                self.op("Max", &[&count, &eps], &clamped, vec![]);
                self.op("Div", &[&sum, &clamped], y, vec![]);
            }
            Op::L2Normalize(l) => {
                // x / max(||x||_2 over the last axis, eps) (torch.nn.functional.normalize)
                let norm = nm("norm");
                self.op(
                    "ReduceL2",
                    &[x],
                    &norm,
                    vec![a_ints("axes", &[-1]), a_i("keepdims", 1)],
                );
                let eps = self.scalar(&format!("{y}.eps"), l.eps as f32);
                let clamped = nm("clamped");
                self.op("Max", &[&norm, &eps], &clamped, vec![]);
                self.op("Div", &[x, &clamped], y, vec![]);
            }
            Op::Attention(a) => attention::write(self, n, a, xs.first().copied().unwrap_or(0))?,
            Op::Pad(pd) => {
                // ours: begins then ends of the per-sample axes; ONNX's include the batch axis
                let r = xs.len();
                let mut pads = vec![0i64];
                pads.extend(pd.pads[..r].iter().map(|&p| p as i64));
                pads.push(0);
                pads.extend(pd.pads[r..].iter().map(|&p| p as i64));
                let pn = self.ints(&format!("{y}.pads"), &pads);
                let v = self.scalar(&format!("{y}.value"), pd.value as f32);
                let mode = serde_json::to_value(pd.mode)
                    .ok()
                    .and_then(|m| m.as_str().map(str::to_string))
                    .unwrap_or_else(|| "constant".into());
                self.op("Pad", &[x, &pn, &v], y, vec![a_s("mode", &mode)]);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        n: &Node,
        x: &str,
        y: &str,
        kernel: &[usize],
        stride: usize,
        padding: usize,
        dilation: usize,
        groups: usize,
        bias: bool,
    ) -> R<()> {
        let k = kernel.len();
        let w = self.param(n, "weight")?;
        let mut ins = vec![x.to_string(), w];
        if bias {
            ins.push(self.param(n, "bias")?);
        }
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        self.op(
            "Conv",
            &ins,
            y,
            vec![
                a_ints(
                    "kernel_shape",
                    &kernel.iter().map(|&v| v as i64).collect::<Vec<_>>(),
                ),
                a_ints("strides", &vec![stride as i64; k]),
                a_ints("pads", &vec![padding as i64; 2 * k]),
                a_ints("dilations", &vec![dilation as i64; k]),
                a_i("group", groups as i64),
            ],
        );
        Ok(())
    }

    /// Our [B, T, I] recurrent layer as ONNX's [T, B, I] LSTM / GRU with its gate order.
    #[allow(clippy::too_many_arguments)]
    fn recurrent(
        &mut self,
        n: &Node,
        x: &str,
        y: &str,
        gates: usize,
        input: usize,
        hidden: usize,
        seq: bool,
    ) -> R<()> {
        let nm = |s: &str| format!("{y}/{s}");
        let xt = nm("time_major");
        self.op("Transpose", &[x], &xt, vec![a_ints("perm", &[1, 0, 2])]);
        let order: &[usize] = if gates == 4 {
            &super::LSTM_TO_ONNX
        } else {
            &super::GRU_SWAP
        };
        let reorder = |v: &[f32], per: usize| super::reorder_blocks(v, order, per);
        let rows = gates * hidden;
        let get = |k: &str| floats(n.params[k].tensor());
        let w = self.init(
            &format!("{y}.W"),
            &[1, rows, input],
            reorder(&get("weight_ih")?, hidden * input),
        );
        let r = self.init(
            &format!("{y}.R"),
            &[1, rows, hidden],
            reorder(&get("weight_hh")?, hidden * hidden),
        );
        let mut b = reorder(&get("bias_ih")?, hidden);
        b.extend(reorder(&get("bias_hh")?, hidden));
        let b = self.init(&format!("{y}.B"), &[1, 2 * rows], b);
        let (yseq, ylast) = (nm("Y"), nm("Y_h"));
        let mut attrs = vec![a_i("hidden_size", hidden as i64)];
        if gates == 3 {
            attrs.push(a_i("linear_before_reset", 1));
        }
        self.nodes.push(NodeProto {
            input: vec![xt, w, r, b],
            output: vec![yseq.clone(), ylast.clone()],
            name: y.to_string(),
            op_type: if gates == 4 { "LSTM" } else { "GRU" }.into(),
            attribute: attrs,
            ..Default::default()
        });
        if seq {
            let a = self.ints(&format!("{y}/squeeze.axes"), &[1]);
            let sq = nm("squeezed");
            self.op("Squeeze", &[&yseq, &a], &sq, vec![]);
            self.op("Transpose", &[&sq], y, vec![a_ints("perm", &[1, 0, 2])]);
        } else {
            let a = self.ints(&format!("{y}/squeeze.axes"), &[0]);
            self.op("Squeeze", &[&ylast, &a], y, vec![]);
        }
        Ok(())
    }
}

/// Attribute-free helper used by tests: the op types of a model's nodes in order.
pub fn op_types(m: &ModelProto) -> Vec<String> {
    m.graph
        .as_ref()
        .map(|g| g.node.iter().map(|n| n.op_type.clone()).collect())
        .unwrap_or_default()
}
