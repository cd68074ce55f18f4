//! The attention op as standard opset-17 operators (no contrib ops), computing exactly what
//! `prunekit_graph::ops::Attention` computes, in the same order:
//!
//! ```text
//! q = MatMul(x, P.q_weight_t) [+ P.q_bias] -> Reshape [N, T, nh, hd] -> Transpose [N, nh, T, hd]
//! k, v likewise with nkv heads
//! RoPE (rope_theta): q cos + rotate_half(q) sin, rotate_half = Concat(Neg(Slice x2), Slice x1);
//!                    cos / sin tables [T, hd] are initializers for the graph's fixed T
//! q = q * 1/sqrt(hd)
//! GQA (nkv < nh):    q Reshape [N, nkv, group*T, hd], so the query heads of one key/value head
//!                    meet it in one MatMul (no repetition of k / v), scores back to [N, nh, T, T]
//! scores = MatMul(q, Transpose(k))
//! no mask:           Softmax(axis -1)
//! causal / padding:  keep = causal [T, T] * Cast(Greater(mask, 0.5)); weight = keep * mask
//!                    s = scores + (keep - 1) * 1e9; e = Exp(s - ReduceMax(s)) * weight
//!                    probs = e / (ReduceSum(e) + 1e-30)   (a fully masked row gives zeros)
//! y = MatMul(probs, v) -> Transpose / Reshape [N, T, nh*hd] -> MatMul(P.o_weight_t) [+ P.o_bias]
//! ```
//!
//! Every value is named `P/what` (P the attention node's name), every constant `P.what`, the
//! weights `P.q_weight_t`, `P.k_weight_t`, `P.v_weight_t`, `P.o_weight_t` (transposed) and the
//! biases `P.q_bias`, ... . The importer recognises exactly this pattern ([`template`]) and
//! rebuilds the attention node from it.

use prunekit_graph::ops::Attention;
use prunekit_graph::Node;

use super::super::proto::{data_type as dt, NodeProto, TensorProto};
use super::{a_i, a_ints, floats, Exporter, R};

/// The score added to masked keys (our op's `MASKED_SCORE` is -1e9).
const MASKED_SCORE: f32 = -1e9;
/// The softmax denominator floor (our op's `DENOMINATOR_FLOOR`).
const DENOMINATOR_FLOOR: f32 = 1e-30;

/// The weight initializers of an attention node: (ONNX suffix, our parameter, transposed).
pub(in crate::onnx) const WEIGHTS: &[(&str, &str, bool)] = &[
    ("q_weight_t", "q_weight", true),
    ("k_weight_t", "k_weight", true),
    ("v_weight_t", "v_weight", true),
    ("o_weight_t", "o_weight", true),
    ("q_bias", "q_bias", false),
    ("k_bias", "k_bias", false),
    ("v_bias", "v_bias", false),
    ("o_bias", "o_bias", false),
];

/// What the nodes of one attention depend on besides its weights' values.
pub(in crate::onnx) struct Spec<'a> {
    /// The attention node's name (the prefix of every value and constant).
    pub name: &'a str,
    pub op: &'a Attention,
    /// The sequence [N, T, embed_dim].
    pub x: &'a str,
    /// The key padding mask [N, T], if the node reads one.
    pub mask: Option<&'a str>,
    /// T, fixed by the graph.
    pub steps: usize,
}

/// Writes attention node `n` (input shape [T, E] per sample) into `e`.
pub(super) fn write(e: &mut Exporter, n: &Node, op: &Attention, steps: usize) -> R<()> {
    let spec = Spec {
        name: &n.name,
        op,
        x: n.inputs.first().map(String::as_str).unwrap_or_default(),
        mask: n.inputs.get(1).map(String::as_str),
        steps,
    };
    let mut weight = |param: &str, transposed: bool| -> R<(Vec<usize>, Vec<f32>)> {
        let p = n
            .params
            .get(param)
            .ok_or_else(|| format!("missing parameter `{param}`"))?;
        let t = p.tensor();
        if transposed {
            let t = t.t().map_err(|e| e.to_string())?;
            Ok((t.dims().to_vec(), floats(&t)?))
        } else {
            Ok((t.dims().to_vec(), floats(t)?))
        }
    };
    emit(e, &spec, &mut weight)
}

/// The nodes and initializers the exporter writes for `spec`, with the weight initializers
/// holding no data (their shapes only): what the importer compares a file against.
pub(in crate::onnx) fn template(spec: &Spec) -> R<(Vec<NodeProto>, Vec<TensorProto>)> {
    let op = spec.op;
    let (q, kv) = (op.num_heads * op.head_dim, op.num_kv_heads * op.head_dim);
    let mut shape = |param: &str, transposed: bool| -> R<(Vec<usize>, Vec<f32>)> {
        let dims = match param {
            "q_weight" => vec![q, op.embed_dim],
            "k_weight" | "v_weight" => vec![kv, op.embed_dim],
            "o_weight" => vec![op.out_dim, q],
            "q_bias" => vec![q],
            "k_bias" | "v_bias" => vec![kv],
            "o_bias" => vec![op.out_dim],
            other => return Err(format!("no parameter `{other}`")),
        };
        let dims = if transposed {
            dims.into_iter().rev().collect()
        } else {
            dims
        };
        Ok((dims, Vec::new()))
    };
    let mut e = Exporter::default();
    emit(&mut e, spec, &mut shape)?;
    Ok((e.nodes, e.inits))
}

/// cos and sin tables [T, head_dim] of the rotary embedding, as our op builds them (f64, then
/// rounded to f32).
fn rope_tables(steps: usize, head_dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = (head_dim / 2).max(1);
    let mut cos = Vec::with_capacity(steps * head_dim);
    let mut sin = Vec::with_capacity(steps * head_dim);
    for pos in 0..steps {
        for i in 0..head_dim {
            let inv_freq = theta.powf(-2.0 * (i % half) as f64 / head_dim as f64);
            let angle = pos as f64 * inv_freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

type WeightFn<'w> = dyn FnMut(&str, bool) -> R<(Vec<usize>, Vec<f32>)> + 'w;

/// The projection `which` (q, k or v) of `s.x`, split into `n` heads: [N, n, T, hd].
fn heads(e: &mut Exporter, s: &Spec, weight: &mut WeightFn, which: &str, n: i64) -> R<String> {
    let a = s.op;
    let nm = |w: &str| format!("{}/{which}_{w}", s.name);
    let (dims, data) = weight(&format!("{which}_weight"), true)?;
    let w = e.init(&format!("{}.{which}_weight_t", s.name), &dims, data);
    let proj = nm("proj");
    e.op("MatMul", &[s.x, &w], &proj, vec![]);
    let proj = if a.bias {
        let (dims, data) = weight(&format!("{which}_bias"), false)?;
        let b = e.init(&format!("{}.{which}_bias", s.name), &dims, data);
        let biased = nm("biased");
        e.op("Add", &[&proj, &b], &biased, vec![]);
        biased
    } else {
        proj
    };
    let shape = e.ints(
        &format!("{}.{which}.shape", s.name),
        &[0, s.steps as i64, n, a.head_dim as i64],
    );
    let split = nm("split");
    e.op("Reshape", &[&proj, &shape], &split, vec![]);
    let out = nm("heads");
    e.op(
        "Transpose",
        &[&split],
        &out,
        vec![a_ints("perm", &[0, 2, 1, 3])],
    );
    Ok(out)
}

fn emit(e: &mut Exporter, s: &Spec, weight: &mut WeightFn) -> R<()> {
    let a = s.op;
    let p = s.name;
    let nm = |w: &str| format!("{p}/{w}");
    let cn = |w: &str| format!("{p}.{w}");
    let (t, nh, nkv, hd) = (
        s.steps as i64,
        a.num_heads as i64,
        a.num_kv_heads as i64,
        a.head_dim as i64,
    );
    if a.num_kv_heads == 0 || !a.num_heads.is_multiple_of(a.num_kv_heads) {
        return Err(format!(
            "num_kv_heads = {} does not divide num_heads = {}",
            a.num_kv_heads, a.num_heads
        ));
    }
    let group = nh / nkv;
    let mut qh = heads(e, s, weight, "q", nh)?;
    let mut kh = heads(e, s, weight, "k", nkv)?;
    let vh = heads(e, s, weight, "v", nkv)?;
    if let Some(theta) = a.rope_theta {
        if !a.head_dim.is_multiple_of(2) {
            return Err(format!(
                "rotary position embedding needs an even head_dim, got {}",
                a.head_dim
            ));
        }
        let half = hd / 2;
        let (cos, sin) = rope_tables(s.steps, a.head_dim, theta);
        let cos = e.init(&cn("rope_cos"), &[s.steps, a.head_dim], cos);
        let sin = e.init(&cn("rope_sin"), &[s.steps, a.head_dim], sin);
        let lo_start = e.ints(&cn("rope.lo_starts"), &[0]);
        let lo_end = e.ints(&cn("rope.lo_ends"), &[half]);
        let hi_end = e.ints(&cn("rope.hi_ends"), &[hd]);
        let axes = e.ints(&cn("rope.axes"), &[3]);
        let rope = |e: &mut Exporter, x: &str, which: &str| -> String {
            let w = |what: &str| nm(&format!("{which}_{what}"));
            let (x1, x2, neg, rot) = (w("x1"), w("x2"), w("neg_x2"), w("rotated"));
            e.op("Slice", &[x, &lo_start, &lo_end, &axes], &x1, vec![]);
            e.op("Slice", &[x, &lo_end, &hi_end, &axes], &x2, vec![]);
            e.op("Neg", &[&x2], &neg, vec![]);
            e.op("Concat", &[&neg, &x1], &rot, vec![a_i("axis", 3)]);
            let (c, sn, out) = (w("cos"), w("sin"), w("rope"));
            e.op("Mul", &[x, &cos], &c, vec![]);
            e.op("Mul", &[&rot, &sin], &sn, vec![]);
            e.op("Add", &[&c, &sn], &out, vec![]);
            out
        };
        qh = rope(e, &qh, "q");
        kh = rope(e, &kh, "k");
    }
    let scale = e.scalar(&cn("scale"), (1.0 / (a.head_dim as f64).sqrt()) as f32);
    let mut q = nm("q_scaled");
    e.op("Mul", &[&qh, &scale], &q, vec![]);
    if group > 1 {
        let shape = e.ints(&cn("q_groups.shape"), &[0, nkv, group * t, hd]);
        let grouped = nm("q_grouped");
        e.op("Reshape", &[&q, &shape], &grouped, vec![]);
        q = grouped;
    }
    let kt = nm("k_t");
    e.op(
        "Transpose",
        &[&kh],
        &kt,
        vec![a_ints("perm", &[0, 1, 3, 2])],
    );
    let scores = if group > 1 {
        let g = nm("scores_grouped");
        e.op("MatMul", &[&q, &kt], &g, vec![]);
        let shape = e.ints(&cn("scores.shape"), &[0, nh, t, t]);
        let out = nm("scores");
        e.op("Reshape", &[&g, &shape], &out, vec![]);
        out
    } else {
        let out = nm("scores");
        e.op("MatMul", &[&q, &kt], &out, vec![]);
        out
    };
    let probs = nm("probs");
    if !a.causal && s.mask.is_none() {
        e.op("Softmax", &[&scores], &probs, vec![a_i("axis", -1)]);
    } else {
        let steps = s.steps;
        let tri = |allowed: f32, masked: f32| -> Vec<f32> {
            (0..steps * steps)
                .map(|i| {
                    if i % steps <= i / steps {
                        allowed
                    } else {
                        masked
                    }
                })
                .collect()
        };
        let (masked, weight) = if let Some(m) = s.mask {
            let shape = e.ints(&cn("key_mask.shape"), &[0, 1, 1, t]);
            let km = nm("key_mask");
            e.op("Reshape", &[m, &shape], &km, vec![]);
            let half = e.scalar(&cn("keep_threshold"), 0.5);
            let above = nm("key_above_threshold");
            e.op("Greater", &[&km, &half], &above, vec![]);
            let mut keep = nm("key_keep");
            e.op("Cast", &[&above], &keep, vec![a_i("to", dt::FLOAT as i64)]);
            if a.causal {
                let causal = e.init(&cn("causal"), &[steps, steps], tri(1.0, 0.0));
                let allowed = nm("allowed");
                e.op("Mul", &[&causal, &keep], &allowed, vec![]);
                keep = allowed;
            }
            let weight = nm("weight");
            e.op("Mul", &[&keep, &km], &weight, vec![]);
            let one = e.scalar(&cn("one"), 1.0);
            let off = nm("allowed_minus_one");
            e.op("Sub", &[&keep, &one], &off, vec![]);
            let big = e.scalar(&cn("masked_score"), -MASKED_SCORE);
            let bias = nm("score_bias");
            e.op("Mul", &[&off, &big], &bias, vec![]);
            let masked = nm("masked_scores");
            e.op("Add", &[&scores, &bias], &masked, vec![]);
            (masked, weight)
        } else {
            let bias = e.init(&cn("causal_bias"), &[steps, steps], tri(0.0, MASKED_SCORE));
            let weight = e.init(&cn("causal"), &[steps, steps], tri(1.0, 0.0));
            let masked = nm("masked_scores");
            e.op("Add", &[&scores, &bias], &masked, vec![]);
            (masked, weight)
        };
        let max = nm("score_max");
        e.op(
            "ReduceMax",
            &[&masked],
            &max,
            vec![a_ints("axes", &[-1]), a_i("keepdims", 1)],
        );
        let shifted = nm("shifted");
        e.op("Sub", &[&masked, &max], &shifted, vec![]);
        let exp = nm("exp");
        e.op("Exp", &[&shifted], &exp, vec![]);
        let weighted = nm("weighted");
        e.op("Mul", &[&exp, &weight], &weighted, vec![]);
        let axes = e.ints(&cn("sum.axes"), &[-1]);
        let sum = nm("sum");
        e.op(
            "ReduceSum",
            &[&weighted, &axes],
            &sum,
            vec![a_i("keepdims", 1)],
        );
        let floor = e.scalar(&cn("denominator_floor"), DENOMINATOR_FLOOR);
        let denominator = nm("denominator");
        e.op("Add", &[&sum, &floor], &denominator, vec![]);
        e.op("Div", &[&weighted, &denominator], &probs, vec![]);
    }
    let context_heads = if group > 1 {
        let shape = e.ints(&cn("probs_groups.shape"), &[0, nkv, group * t, t]);
        let grouped = nm("probs_grouped");
        e.op("Reshape", &[&probs, &shape], &grouped, vec![]);
        let ctx = nm("context_grouped");
        e.op("MatMul", &[&grouped, &vh], &ctx, vec![]);
        let shape = e.ints(&cn("context_heads.shape"), &[0, nh, t, hd]);
        let out = nm("context_heads");
        e.op("Reshape", &[&ctx, &shape], &out, vec![]);
        out
    } else {
        let out = nm("context_heads");
        e.op("MatMul", &[&probs, &vh], &out, vec![]);
        out
    };
    let ct = nm("context_t");
    e.op(
        "Transpose",
        &[&context_heads],
        &ct,
        vec![a_ints("perm", &[0, 2, 1, 3])],
    );
    let shape = e.ints(&cn("context.shape"), &[0, t, nh * hd]);
    let context = nm("context");
    e.op("Reshape", &[&ct, &shape], &context, vec![]);
    let (dims, data) = weight("o_weight", true)?;
    let o = e.init(&cn("o_weight_t"), &dims, data);
    if a.bias {
        let proj = nm("o_proj");
        e.op("MatMul", &[&context, &o], &proj, vec![]);
        let (dims, data) = weight("o_bias", false)?;
        let b = e.init(&cn("o_bias"), &dims, data);
        e.op("Add", &[&proj, &b], p, vec![]);
    } else {
        e.op("MatMul", &[&context, &o], p, vec![]);
    }
    Ok(())
}
