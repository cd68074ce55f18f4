//! The ops of sentence-transformers' pooling head (`Pooling(mean_tokens)` -> `Normalize`):
//! `masked_mean_pool` and `l2_normalize`. Shape rules and their errors, MACs, forward values
//! against hand computations (a fully padded sample and a zero vector give zeros, not NaN),
//! finite-difference gradients, the channel rule as the analysis sees it, JSON round trips.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use prunekit_graph::channels::analyse;
use prunekit_graph::ops::*;
use prunekit_graph::{Executor, GraphBuilder, Mode, Value};

fn infer(op: impl Into<Op>, ins: &[&[usize]]) -> Result<Vec<usize>, String> {
    op.into().rules().infer(ins)
}

fn shape_macs(op: impl Into<Op>, ins: &[&[usize]]) -> (Vec<usize>, u64) {
    let op = op.into();
    let out = op.rules().infer(ins).unwrap();
    let macs = op.rules().macs(ins, &out);
    (out, macs)
}

fn flat64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn assert_values(y: &Tensor, want: &[f64], tol: f64) {
    let got = flat64(y);
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol,
            "index {i}: {a} vs {b}\n{got:?}\n{want:?}"
        );
    }
}

fn eval_op(op: impl Into<Op>, in_shapes: &[&[usize]], xs: &[Tensor]) -> Tensor {
    let mut g = single_op(op, in_shapes);
    g.to_dtype(DType::F64).unwrap();
    Executor::new(0).eval(&g, xs).unwrap().remove(0)
}

fn t2(v: &[&[f64]]) -> Tensor {
    Tensor::new(
        v.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn shapes_macs_and_defaults() {
    assert_eq!(
        shape_macs(MaskedMeanPool::new(8), &[&[5, 8], &[5]]),
        (vec![8], 5 * 8)
    );
    assert_eq!(shape_macs(L2Normalize::new(8), &[&[8]]), (vec![8], 2 * 8));
    assert_eq!(
        shape_macs(L2Normalize::new(4), &[&[3, 4]]),
        (vec![3, 4], 2 * 12)
    );
    assert!(MaskedMeanPool::new(3).params().is_empty());
    assert!(L2Normalize::new(3).params().is_empty());
    assert_eq!(MaskedMeanPool::new(3).eps, 1e-9);
    assert_eq!(L2Normalize::new(3).eps, 1e-12);

    let parse = |s: &str| serde_json::from_str::<Op>(s).unwrap();
    assert_eq!(
        parse(r#"{"type": "masked_mean_pool", "dim": 6}"#),
        Op::from(MaskedMeanPool::new(6))
    );
    assert_eq!(
        parse(r#"{"type": "l2_normalize", "dim": 6}"#),
        Op::from(L2Normalize::new(6))
    );
    for op in [
        Op::from(MaskedMeanPool { dim: 4, eps: 1e-6 }),
        L2Normalize { dim: 4, eps: 1e-8 }.into(),
    ] {
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(v["type"], op.type_name());
        assert_eq!(serde_json::from_value::<Op>(v).unwrap(), op);
        assert!(Op::all_type_names().contains(&op.type_name()));
    }
    for bad in [
        r#"{"type": "masked_mean_pool", "dim": 4, "axis": 1}"#,
        r#"{"type": "l2_normalize", "dim": 4, "p": 2}"#,
        r#"{"type": "l2_normalize"}"#,
    ] {
        assert!(serde_json::from_str::<Op>(bad).is_err(), "{bad}");
    }
}

#[test]
fn shape_errors_name_the_problem_and_the_node() {
    let cases: Vec<(Vec<Vec<usize>>, Op, &str)> = vec![
        (
            vec![vec![5, 8], vec![4]],
            MaskedMeanPool::new(8).into(),
            "4 tokens",
        ),
        (
            vec![vec![8], vec![8]],
            MaskedMeanPool::new(8).into(),
            "[tokens, dim]",
        ),
        (
            vec![vec![2, 5, 8], vec![5]],
            MaskedMeanPool::new(8).into(),
            "[tokens, dim]",
        ),
        (
            vec![vec![5, 8], vec![5, 1]],
            MaskedMeanPool::new(8).into(),
            "mask as [tokens]",
        ),
        (
            vec![vec![5, 8], vec![5]],
            MaskedMeanPool::new(6).into(),
            "dim = 6",
        ),
        (
            vec![vec![5, 8]],
            MaskedMeanPool::new(8).into(),
            "expects 2 input(s)",
        ),
        (
            vec![vec![5, 8], vec![5]],
            MaskedMeanPool { dim: 8, eps: 0.0 }.into(),
            "eps",
        ),
        (vec![vec![5, 8]], L2Normalize::new(5).into(), "dim = 5"),
        (vec![vec![]], L2Normalize::new(5).into(), "dim = 5"),
        (
            vec![vec![5], vec![5]],
            L2Normalize::new(5).into(),
            "expects 1 input(s)",
        ),
        (
            vec![vec![5]],
            L2Normalize {
                dim: 5,
                eps: f64::NAN,
            }
            .into(),
            "eps",
        ),
    ];
    for (ins, op, part) in cases {
        let refs: Vec<&[usize]> = ins.iter().map(Vec::as_slice).collect();
        let msg = infer(op.clone(), &refs).unwrap_err();
        assert!(msg.contains(part), "{op:?}: `{msg}` lacks `{part}`");
        // through the builder the error names the node
        let mut b = GraphBuilder::new("bad", 0);
        let vals: Vec<Value> = ins
            .iter()
            .enumerate()
            .map(|(i, s)| b.input(&format!("x{i}"), s))
            .collect();
        let vrefs: Vec<&Value> = vals.iter().collect();
        let e = b.named("culprit").node(op.clone(), &vrefs).unwrap_err();
        assert!(e.to_string().contains("culprit"), "{e}");
    }
}

#[test]
fn masked_mean_pool_matches_a_hand_computation() {
    // batch 3, T 3, D 2: sample 0 two real tokens, sample 1 all real, sample 2 fully padded
    let x = Tensor::new(
        &[
            [[1.0f64, 2.0], [3.0, -4.0], [100.0, 100.0]],
            [[1.0, 1.0], [2.0, 2.0], [6.0, -3.0]],
            [[5.0, 6.0], [7.0, 8.0], [9.0, 1.0]],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let m = t2(&[&[1.0, 1.0, 0.0], &[1.0, 1.0, 1.0], &[0.0, 0.0, 0.0]]);
    let y = eval_op(MaskedMeanPool::new(2), &[&[3, 2], &[3]], &[x.clone(), m]);
    assert_eq!(y.dims(), &[3, 2]);
    assert_values(&y, &[2.0, -1.0, 3.0, 0.0, 0.0, 0.0], 1e-12);
    // a soft mask weights the tokens: (0.5 * x0 + 0.25 * x1) / 0.75
    let m = t2(&[&[0.5, 0.25, 0.0], &[0.0, 0.0, 2.0], &[1e-12, 0.0, 0.0]]);
    let y = eval_op(MaskedMeanPool::new(2), &[&[3, 2], &[3]], &[x, m]);
    let w0 = [(0.5 + 0.75) / 0.75, (1.0 - 1.0) / 0.75];
    // below eps the count is clamped: 1e-12 * x0 / 1e-9
    assert_values(&y, &[w0[0], w0[1], 6.0, -3.0, 5e-3, 6e-3], 1e-12);
    // builder, f32, the batch axis first
    let mut b = GraphBuilder::new("pool", 0);
    let xv = b.input("x", &[4, 3]);
    let mv = b.input("mask", &[4]);
    let y = b.masked_mean_pool(&xv, &mv).unwrap();
    assert_eq!(y.shape, vec![3]);
    let g = b.finish(&[&y]).unwrap();
    let xs = randn_f32(&[2, 4, 3], 1);
    let ms = Tensor::new(&[[1f32, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    let y = Executor::new(0)
        .eval(&g, &[xs.clone(), ms])
        .unwrap()
        .remove(0);
    let want: Vec<f64> = {
        let v = flat64(&xs);
        (0..3)
            .map(|d| (v[d] + v[6 + d]) / 2.0)
            .chain([0.0; 3])
            .collect()
    };
    assert_values(&y, &want, 1e-6);
    assert!(flat64(&y).iter().all(|v| v.is_finite()));
}

#[test]
fn l2_normalize_matches_a_hand_computation() {
    let x = t2(&[&[3.0, 4.0], &[0.0, 0.0], &[-1e-13, 0.0]]);
    let y = eval_op(L2Normalize::new(2), &[&[2]], std::slice::from_ref(&x));
    // a zero vector stays zero; below eps the norm is clamped: x / 1e-12
    assert_values(&y, &[0.6, 0.8, 0.0, 0.0, -0.1, 0.0], 1e-9);
    // over the last axis of [T, D]
    let x = Tensor::new(&[[[1.0f64, 0.0, 0.0], [2.0, 2.0, 1.0]]], &Device::Cpu).unwrap();
    let y = eval_op(L2Normalize::new(3), &[&[2, 3]], &[x]);
    assert_values(&y, &[1.0, 0.0, 0.0, 2.0 / 3.0, 2.0 / 3.0, 1.0 / 3.0], 1e-12);
    let mut b = GraphBuilder::new("norm", 0);
    let xv = b.input("x", &[5]);
    let y = b.l2_normalize(&xv).unwrap();
    assert_eq!(y.shape, vec![5]);
    let g = b.finish(&[&y]).unwrap();
    let xs = randn_f32(&[3, 5], 2);
    let y = Executor::new(0).eval(&g, &[xs]).unwrap().remove(0);
    for row in y.to_vec2::<f32>().unwrap() {
        let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-6, "{n}");
    }
}

#[test]
fn gradients_match_finite_differences() {
    // x and the mask both get gradients; every sample keeps a real token (the clamp is a kink)
    let x = randn(&[3, 4, 5], 3);
    let m = t2(&[
        &[1.0, 1.0, 0.0, 0.0],
        &[1.0, 0.0, 1.0, 1.0],
        &[0.3, 0.0, 0.0, 0.9],
    ]);
    let g = f64_graph(single_op(MaskedMeanPool::new(5), &[&[4, 5], &[4]]), 1);
    let mut c = grad_check(&g, &[x, m], false);
    c.sort();
    assert_eq!(c, ["input 0", "input 1"]);
    let g = f64_graph(single_op(L2Normalize::new(5), &[&[4, 5]]), 1);
    assert_eq!(grad_check(&g, &[randn(&[2, 4, 5], 4)], false), ["input 0"]);
    let g = f64_graph(single_op(L2Normalize::new(6), &[&[6]]), 1);
    assert_eq!(grad_check(&g, &[randn(&[3, 6], 5)], false), ["input 0"]);
}

/// A fully padded sample and a zero vector have finite (zero) gradients, not NaN.
#[test]
fn gradients_at_a_padded_sample_and_a_zero_vector_are_finite() {
    let mut b = GraphBuilder::new("head", 0);
    let x = b.input("x", &[3, 4]);
    let m = b.input("mask", &[3]);
    let p = b.masked_mean_pool(&x, &m).unwrap();
    let y = b.l2_normalize(&p).unwrap();
    let mut g = b.finish(&[&y]).unwrap();
    g.to_dtype(DType::F64).unwrap();
    let xs = randn(&[2, 3, 4], 6);
    let ms = t2(&[&[1.0, 0.0, 1.0], &[0.0, 0.0, 0.0]]);
    let (vars, tracked) = track(&[xs, ms], &[true, true]);
    let out = Executor::new(0)
        .run(
            &g,
            &tracked,
            Mode {
                train: false,
                grad: true,
            },
            None,
        )
        .unwrap()
        .remove(0);
    assert_values(&out.get(1).unwrap(), &[0.0; 4], 0.0);
    let w = randn(out.dims(), 7);
    let grads = (out * w).unwrap().sum_all().unwrap().backward().unwrap();
    for v in vars.iter().flatten() {
        let gr = flat64(grads.get(v.as_tensor()).unwrap());
        assert!(gr.iter().all(|v| v.is_finite()), "{gr:?}");
    }
    let gx = grads.get(vars[0].as_ref().unwrap().as_tensor()).unwrap();
    assert_values(&gx.get(1).unwrap(), &[0.0; 12], 0.0);
    assert!(max_abs(&gx.get(0).unwrap()) > 0.0);
}

/// The channel rule: x's hidden axis passes through the pool and the normalisation into one
/// group with the layer that produces it; the mask is protected.
#[test]
fn channels_pass_through_and_the_mask_is_protected() {
    let mut b = GraphBuilder::new("sentence", 0);
    let ids = b.ids_input("ids", &[6]);
    let mask = b.input("mask", &[6]);
    let e = b.embedding(&ids, 20, 8).unwrap();
    let h = b.named("dense").linear(&e, 10).unwrap();
    let p = b.masked_mean_pool(&h, &mask).unwrap();
    let n = b.l2_normalize(&p).unwrap();
    let y = b.named("head").linear(&n, 3).unwrap();
    let g = b.finish(&[&y]).unwrap();
    let a = analyse(&g).unwrap();
    let sizes: Vec<(String, usize)> = a
        .groups
        .iter()
        .map(|gr| (gr.name.clone(), gr.units.len()))
        .collect();
    assert!(
        sizes.iter().any(|(n, u)| n.contains("dense") && *u == 10),
        "{sizes:?}"
    );
    assert!(
        sizes.iter().any(|(_, u)| *u == 8),
        "the embedding width: {sizes:?}"
    );
    assert!(a.blocked_by.is_empty(), "{:?}", a.blocked_by);

    // pooling over the channel axis: x's channels on its token axis are protected
    let mut b = GraphBuilder::new("tokens-as-channels", 0);
    let x = b.input("x", &[4, 6]);
    let mask = b.input("mask", &[6]);
    let h = b.linear(&x, 6).unwrap(); // [4, 6], channels on the last axis
    let t = b.node(Transpose { perm: vec![1, 0] }, &[&h]).unwrap(); // [6, 4], channels on axis 0
    let p = b.masked_mean_pool(&t, &mask).unwrap();
    let y = b.linear(&p, 2).unwrap();
    let g = b.finish(&[&y]).unwrap();
    let a = analyse(&g).unwrap();
    assert!(
        a.blocked_by.iter().any(|s| s.contains("masked_mean_pool")),
        "{:?}",
        a.blocked_by
    );
}
