//! Blocks our exporter writes as several ONNX nodes, recognised and read back as one node of
//! ours: attention (so its heads stay prunable after a round trip) and RMSNorm (so its weight
//! stays a parameter and the channels it normalises stay prunable).
//!
//! RMSNorm: `Mul(x, x) -> P/square`, `ReduceMean(axes [-1], keepdims) -> P/mean`, `Add(P.eps)`,
//! `Sqrt`, `Div(x, .)`, `Mul(., P.weight) -> P`.
//!
//! Masked mean pooling (sentence-transformers): `Unsqueeze(mask, P.mask_axes = [-1]) -> P/mask`,
//! `Mul(x, P/mask) -> P/masked`, `ReduceSum(P/masked, P.token_axes = [1], keepdims 0) -> P/sum`,
//! `ReduceSum(P/mask, P.token_axes, keepdims 0) -> P/count`, `Max(P/count, P.eps) -> P/clamped`,
//! `Div(P/sum, P/clamped) -> P`. L2 normalisation: `ReduceL2(x, axes [-1], keepdims 1) -> P/norm`,
//! `Max(P/norm, P.eps) -> P/clamped`, `Div(x, P/clamped) -> P`. Their `dim` is read from x's width
//! when the node is added.
//!
//! A block starts at a MatMul of a value with an initializer `P.q_weight_t`. Its attributes are
//! read from the block's constants (heads and head size from `P.q.shape`, key/value heads from
//! `P.k_weight_t`, the output width from `P.o_weight_t`, biases from `P.q_bias`, causality from
//! `P.causal`, RoPE's base from the `P.rope_cos` / `P.rope_sin` tables, the key padding mask from
//! the Reshape of `P.key_mask.shape`); the exporter then writes the nodes and constants of that
//! attention ([`template`]) and the file must hold exactly those: the same nodes in the same
//! order with the same inputs, outputs and attributes, the same constant values, weights of the
//! same shapes, and no value inside the block read from outside it. Anything else is not
//! recognised, and the block's nodes are imported one by one (the ones prunekit has no op for are
//! then listed as unsupported).

use std::collections::HashMap;

use prunekit_graph::ops::{Attention, L2Normalize, MaskedMeanPool, Op, RmsNorm};

use super::super::export::attention::{template, Spec, WEIGHTS};
use super::super::proto::{GraphProto, NodeProto, TensorProto};
use super::{tensor_const, Const, Importer, R};

/// One recognised block: nodes `start..start + len` of the graph, read as one node of ours.
pub(super) struct Block {
    pub start: usize,
    pub len: usize,
    /// `P`, the node's name and the block's output value
    pub name: String,
    pub op: Op,
    /// the ONNX values the block reads (attention: the sequence and the key padding mask)
    pub inputs: Vec<String>,
    /// our parameters (name, shape, values), weights transposed back
    pub params: Vec<(&'static str, Vec<usize>, Vec<f32>)>,
}

/// Every attention and RMSNorm block of `g` that is exactly what our exporter writes.
pub(super) fn blocks(g: &GraphProto) -> Vec<Block> {
    let inits: HashMap<&str, &TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &g.node {
        for i in &n.input {
            *uses.entry(i.as_str()).or_insert(0) += 1;
        }
    }
    for o in &g.output {
        *uses.entry(o.name.as_str()).or_insert(0) += 1;
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < g.node.len() {
        let found = recognise(g, &inits, &uses, i)
            .or_else(|| rms_norm(g, &inits, &uses, i))
            .or_else(|| masked_mean_pool(g, &inits, &uses, i))
            .or_else(|| l2_normalize(g, &inits, &uses, i));
        match found {
            Some(b) => {
                i += b.len;
                out.push(b);
            }
            None => i += 1,
        }
    }
    out
}

fn floats(inits: &HashMap<&str, &TensorProto>, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
    let c = tensor_const(inits.get(name)?).ok()?;
    Some((c.dims().to_vec(), c.floats()?))
}

fn ints(inits: &HashMap<&str, &TensorProto>, name: &str) -> Option<Vec<i64>> {
    tensor_const(inits.get(name)?).ok()?.ints()
}

/// RoPE's base from the cos / sin tables [T, hd]: position 1 of the lowest frequency,
/// theta^(-2 (hd/2 - 1) / hd), the most precise one; an integer within 1e-4 relative is taken
/// as that integer. With hd = 2 or T = 1 the tables do not depend on it (10000 is taken).
fn rope_theta(steps: usize, hd: usize, cos: &[f32], sin: &[f32]) -> f64 {
    let half = hd / 2;
    if half < 2 || steps < 2 {
        return 10000.0;
    }
    let i = half - 1;
    let angle = f64::from(sin[hd + i]).atan2(f64::from(cos[hd + i]));
    let theta = angle.powf(-(hd as f64) / (2.0 * i as f64));
    if (theta - theta.round()).abs() <= 1e-4 * theta {
        theta.round()
    } else {
        theta
    }
}

fn same_node(a: &NodeProto, b: &NodeProto) -> bool {
    a.op_type == b.op_type
        && a.domain.is_empty()
        && b.domain.is_empty()
        && a.input == b.input
        && a.output == b.output
        && a.attribute == b.attribute
}

fn same_constant(want: &TensorProto, have: &TensorProto, tolerance: f32) -> bool {
    if want.dims != have.dims || want.data_type != have.data_type {
        return false;
    }
    match (tensor_const(want), tensor_const(have)) {
        (Ok(Const::Float { data: a, .. }), Ok(Const::Float { data: b, .. })) => {
            a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= tolerance)
        }
        (Ok(Const::Int { data: a, .. }), Ok(Const::Int { data: b, .. })) => a == b,
        _ => false,
    }
}

fn recognise(
    g: &GraphProto,
    inits: &HashMap<&str, &TensorProto>,
    uses: &HashMap<&str, usize>,
    start: usize,
) -> Option<Block> {
    let first = &g.node[start];
    if first.op_type != "MatMul" || first.input.len() != 2 {
        return None;
    }
    let name = first.input[1].strip_suffix(".q_weight_t")?;
    let c = |w: &str| format!("{name}.{w}");
    let dims = |w: &str| inits.get(c(w).as_str()).map(|t| t.dims.clone());
    let &[_, steps, heads, head_dim] = ints(inits, &c("q.shape"))?.as_slice() else {
        return None;
    };
    let positive = |v: i64| usize::try_from(v).ok().filter(|&v| v > 0);
    let (steps, num_heads, head_dim) = (positive(steps)?, positive(heads)?, positive(head_dim)?);
    let &[embed_dim, _] = dims("q_weight_t")?.as_slice() else {
        return None;
    };
    let &[_, kv_rows] = dims("k_weight_t")?.as_slice() else {
        return None;
    };
    let &[_, out_dim] = dims("o_weight_t")?.as_slice() else {
        return None;
    };
    let (embed_dim, kv_rows, out_dim) =
        (positive(embed_dim)?, positive(kv_rows)?, positive(out_dim)?);
    if !kv_rows.is_multiple_of(head_dim) {
        return None;
    }
    // sizes a crafted file could make overflow or allocate beyond what it holds: every product
    // the template forms stays within 2^31, and the causal tables (T x T) must be in the file
    let limit = prunekit_graph::graph::MAX_TENSOR_ELEMENTS as usize;
    let fits = |a: usize, b: usize| a.checked_mul(b).is_some_and(|p| p <= limit);
    if !(fits(num_heads, head_dim) && fits(steps, head_dim) && fits(steps, steps)) {
        return None;
    }
    let q_rows = num_heads * head_dim;
    if !(fits(embed_dim, q_rows.max(kv_rows)) && fits(out_dim, q_rows)) {
        return None;
    }
    let causal = inits.contains_key(c("causal").as_str());
    if causal && floats(inits, &c("causal"))?.0 != [steps, steps] {
        return None;
    }
    let rope_theta = match (floats(inits, &c("rope_cos")), floats(inits, &c("rope_sin"))) {
        (Some((cd, cos)), Some((_, sin))) if cd == [steps, head_dim] && sin.len() == cos.len() => {
            Some(rope_theta(steps, head_dim, &cos, &sin))
        }
        _ => None,
    };
    let op = Attention {
        embed_dim,
        out_dim,
        num_heads,
        num_kv_heads: kv_rows / head_dim,
        head_dim,
        causal,
        rope_theta,
        bias: inits.contains_key(c("q_bias").as_str()),
    };
    // the key padding mask: what the block's Reshape by `P.key_mask.shape` reads
    let mask_shape = c("key_mask.shape");
    let mask = if inits.contains_key(mask_shape.as_str()) {
        let reader = g.node[start..]
            .iter()
            .take(200)
            .find(|n| n.op_type == "Reshape" && n.input.get(1) == Some(&mask_shape))?;
        Some(reader.input.first()?.clone())
    } else {
        None
    };
    let x = first.input[0].clone();
    let x_shape = [steps, embed_dim];
    let mask_dims = [steps];
    let mut shapes: Vec<&[usize]> = vec![&x_shape];
    if mask.is_some() {
        shapes.push(&mask_dims);
    }
    Op::from(op.clone()).rules().infer(&shapes).ok()?;
    let (nodes, constants) = template(&Spec {
        name,
        op: &op,
        x: &x,
        mask: mask.as_deref(),
        steps,
    })
    .ok()?;
    let len = nodes.len();
    let file = g.node.get(start..start + len)?;
    if !nodes.iter().zip(file).all(|(a, b)| same_node(a, b)) {
        return None;
    }
    if !closed(file, uses, name) {
        return None;
    }
    let mut params = Vec::new();
    for t in &constants {
        let have = inits.get(t.name.as_str())?;
        let weight = t
            .name
            .strip_prefix(name)
            .and_then(|s| s.strip_prefix('.'))
            .and_then(|s| WEIGHTS.iter().find(|w| w.0 == s));
        match weight {
            Some(&(_, param, transposed)) => {
                let (d, data) = floats(inits, &t.name)?;
                if have.dims != t.dims {
                    return None;
                }
                params.push(if transposed {
                    let &[rows, cols] = d.as_slice() else {
                        return None;
                    };
                    let mut back = vec![0.0; data.len()];
                    for r in 0..rows {
                        for k in 0..cols {
                            back[k * rows + r] = data[r * cols + k];
                        }
                    }
                    (param, vec![cols, rows], back)
                } else {
                    (param, d, data)
                });
            }
            None => {
                let tolerance = if t.name.ends_with(".rope_cos") || t.name.ends_with(".rope_sin") {
                    1e-5
                } else {
                    0.0
                };
                if !same_constant(t, have, tolerance) {
                    return None;
                }
            }
        }
    }
    Some(Block {
        start,
        len,
        name: name.to_string(),
        op: Op::from(op),
        inputs: std::iter::once(x).chain(mask).collect(),
        params,
    })
}

/// Whether the block `file` ends in value `name` and nothing outside it reads its other values.
fn closed(file: &[NodeProto], uses: &HashMap<&str, usize>, name: &str) -> bool {
    let mut inside: HashMap<&str, usize> = HashMap::new();
    for n in file {
        for i in &n.input {
            *inside.entry(i.as_str()).or_insert(0) += 1;
        }
    }
    let read = |m: &HashMap<&str, usize>, o: &str| m.get(o).copied().unwrap_or(0);
    file.last().is_some_and(|n| n.output == [name])
        && file
            .iter()
            .flat_map(|n| &n.output)
            .all(|o| o == name || read(uses, o) == read(&inside, o))
}

/// An RMSNorm as the exporter writes it (see the module docs), starting at node `start`.
fn rms_norm(
    g: &GraphProto,
    inits: &HashMap<&str, &TensorProto>,
    uses: &HashMap<&str, usize>,
    start: usize,
) -> Option<Block> {
    let file = g.node.get(start..start + 6)?;
    let sq = &file[0];
    let name = sq.output.first()?.strip_suffix("/square")?;
    let x = sq.input.first()?;
    let v = |w: &str| format!("{name}/{w}");
    let (eps, weight) = (format!("{name}.eps"), format!("{name}.weight"));
    let (square, mean, plus, rms, normalised) = (
        v("square"),
        v("mean"),
        v("plus_eps"),
        v("rms"),
        v("normalised"),
    );
    let expected: [(&str, [&str; 2], &str); 6] = [
        ("Mul", [x, x], &square),
        ("ReduceMean", [&square, ""], &mean),
        ("Add", [&mean, &eps], &plus),
        ("Sqrt", [&plus, ""], &rms),
        ("Div", [x, &rms], &normalised),
        ("Mul", [&normalised, &weight], name),
    ];
    for (n, (op_type, inputs, output)) in file.iter().zip(&expected) {
        let inputs: Vec<&str> = inputs.iter().copied().filter(|i| !i.is_empty()).collect();
        if n.op_type != *op_type
            || !n.domain.is_empty()
            || n.input != inputs
            || n.output != [*output]
        {
            return None;
        }
    }
    let reduce = &file[1];
    let attr = |k: &str| reduce.attribute.iter().find(|a| a.name == k);
    if reduce.attribute.len() != 2
        || attr("axes").map(|a| a.ints.as_slice()) != Some(&[-1])
        || attr("keepdims").map(|a| a.i) != Some(1)
        || file
            .iter()
            .enumerate()
            .any(|(k, n)| k != 1 && !n.attribute.is_empty())
        || !closed(file, uses, name)
    {
        return None;
    }
    let (ed, e) = floats(inits, &eps)?;
    let (wd, w) = floats(inits, &weight)?;
    let (&[], &[dim], &[eps]) = (ed.as_slice(), wd.as_slice(), e.as_slice()) else {
        return None;
    };
    // the shortest decimal that gives the f32 back (1e-6 stays 1e-6, not 9.99999997e-7)
    let eps: f64 = format!("{eps}").parse().ok()?;
    Some(Block {
        start,
        len: 6,
        name: name.to_string(),
        op: Op::from(RmsNorm { dim, eps }),
        inputs: vec![x.clone()],
        params: vec![("weight", wd, w)],
    })
}

/// One node a block must hold: (op type, inputs, output, attributes as (name, ints): INTS, or
/// INT as a one-element list).
type Expected<'a> = (&'a str, Vec<&'a str>, &'a str, Vec<(&'a str, Vec<i64>)>);

/// Whether `file` is exactly the nodes `expected` lists: (op type, inputs, output, attributes as
/// (name, ints) for INTS or (name, [i]) for INT), in order, in the default domain.
fn matches_nodes(file: &[NodeProto], expected: &[Expected]) -> bool {
    use super::super::proto::attribute_type as at;
    file.len() == expected.len()
        && file
            .iter()
            .zip(expected)
            .all(|(n, (op_type, inputs, output, attrs))| {
                n.op_type == *op_type
                    && n.domain.is_empty()
                    && n.input
                        .iter()
                        .map(String::as_str)
                        .eq(inputs.iter().copied())
                    && n.output == [*output]
                    && n.attribute.len() == attrs.len()
                    && attrs.iter().all(|(k, v)| {
                        n.attribute.iter().any(|a| {
                            a.name == *k
                                && match a.r#type {
                                    at::INT => v.as_slice() == [a.i],
                                    at::INTS => a.ints == *v,
                                    _ => false,
                                }
                        })
                    })
            })
}

/// A scalar float initializer as the f64 whose shortest decimal gives the f32 back (1e-9 stays
/// 1e-9).
fn scalar_eps(inits: &HashMap<&str, &TensorProto>, name: &str) -> Option<f64> {
    let (d, v) = floats(inits, name)?;
    let (&[], &[eps]) = (d.as_slice(), v.as_slice()) else {
        return None;
    };
    format!("{eps}").parse().ok()
}

/// A masked mean pooling as the exporter writes it (see the module docs), starting at `start`.
fn masked_mean_pool(
    g: &GraphProto,
    inits: &HashMap<&str, &TensorProto>,
    uses: &HashMap<&str, usize>,
    start: usize,
) -> Option<Block> {
    let file = g.node.get(start..start + 6)?;
    let name = file[0].output.first()?.strip_suffix("/mask")?;
    let mask = file[0].input.first()?;
    let x = file[1].input.first()?;
    let v = |w: &str| format!("{name}/{w}");
    let c = |w: &str| format!("{name}.{w}");
    let (m, masked, sum, count, clamped) =
        (v("mask"), v("masked"), v("sum"), v("count"), v("clamped"));
    let (mask_axes, token_axes, eps) = (c("mask_axes"), c("token_axes"), c("eps"));
    let keep0 = || vec![("keepdims", vec![0])];
    let expected = [
        (
            "Unsqueeze",
            vec![mask.as_str(), &mask_axes],
            m.as_str(),
            vec![],
        ),
        ("Mul", vec![x.as_str(), &m], &masked, vec![]),
        ("ReduceSum", vec![&masked, &token_axes], &sum, keep0()),
        ("ReduceSum", vec![&m, &token_axes], &count, keep0()),
        ("Max", vec![&count, &eps], &clamped, vec![]),
        ("Div", vec![&sum, &clamped], name, vec![]),
    ];
    if !matches_nodes(file, &expected)
        || ints(inits, &mask_axes)? != [-1]
        || ints(inits, &token_axes)? != [1]
        || !closed(file, uses, name)
    {
        return None;
    }
    let eps = scalar_eps(inits, &eps)?;
    Some(Block {
        start,
        len: 6,
        name: name.to_string(),
        // `dim` follows x's width (set when the node is added)
        op: Op::from(MaskedMeanPool { dim: 0, eps }),
        inputs: vec![x.clone(), mask.clone()],
        params: vec![],
    })
}

/// An L2 normalisation as the exporter writes it (see the module docs), starting at `start`.
fn l2_normalize(
    g: &GraphProto,
    inits: &HashMap<&str, &TensorProto>,
    uses: &HashMap<&str, usize>,
    start: usize,
) -> Option<Block> {
    let file = g.node.get(start..start + 3)?;
    let name = file[0].output.first()?.strip_suffix("/norm")?;
    let x = file[0].input.first()?;
    let (norm, clamped, eps) = (
        format!("{name}/norm"),
        format!("{name}/clamped"),
        format!("{name}.eps"),
    );
    let expected = [
        (
            "ReduceL2",
            vec![x.as_str()],
            norm.as_str(),
            vec![("axes", vec![-1]), ("keepdims", vec![1])],
        ),
        ("Max", vec![norm.as_str(), &eps], &clamped, vec![]),
        ("Div", vec![x.as_str(), &clamped], name, vec![]),
    ];
    if !matches_nodes(file, &expected) || !closed(file, uses, name) {
        return None;
    }
    let eps = scalar_eps(inits, &eps)?;
    Some(Block {
        start,
        len: 3,
        name: name.to_string(),
        op: Op::from(L2Normalize { dim: 0, eps }),
        inputs: vec![x.clone()],
        params: vec![],
    })
}

impl Importer<'_> {
    /// Adds a recognised block as one node of ours.
    pub(super) fn block(&mut self, b: &Block) -> R<()> {
        let mut inputs = Vec::new();
        for i in &b.inputs {
            inputs.push(self.materialize(i)?);
        }
        let mut params = Vec::new();
        for (k, dims, data) in &b.params {
            params.push((*k, self.tensor(dims, data.clone())?));
        }
        let mut op = b.op.clone();
        // ops without a weight take their width from x
        let width = inputs
            .first()
            .and_then(|x| self.shapes.get(x))
            .and_then(|s| s.last().copied());
        match (&mut op, width) {
            (Op::MaskedMeanPool(p), Some(d)) => p.dim = d,
            (Op::L2Normalize(l), Some(d)) => l.dim = d,
            _ => {}
        }
        let name = self.add(&b.name, op, inputs, params)?;
        self.set(&b.name, name);
        Ok(())
    }
}
