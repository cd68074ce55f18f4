//! Sequence ops: LSTM, GRU, multi-head attention (grouped-query, causal, rotary, padding mask) and the
//! learned positional embedding. Finite-difference gradient checks in f64, forward passes against
//! candle_nn's recurrent layers and a naive per-head attention written out here, the causal and
//! padding masks' independence properties, shape errors, MAC counts, slicing heads and channels
//! (`resize`) and the model format's round trip.

mod common;

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::rnn::{GRUConfig, LSTMConfig, RNN};
use common::*;
use prunekit_graph::ops::*;
use prunekit_graph::{Executor, Graph, GraphBuilder};

fn check_op(op: impl Into<Op>, in_shapes: &[&[usize]], inputs: &[Tensor]) -> Vec<String> {
    let g = f64_graph(single_op(op, in_shapes), 11);
    grad_check(&g, inputs, true)
}

fn expect_checked(checked: &[String], want: &[&str]) {
    let mut got: Vec<&str> = checked.iter().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = want.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "the set of checked gradients");
}

const RECURRENT_GRADS: [&str; 5] = [
    "op.weight_ih",
    "op.weight_hh",
    "op.bias_ih",
    "op.bias_hh",
    "input 0",
];

const ATTENTION_GRADS: [&str; 9] = [
    "op.q_weight",
    "op.k_weight",
    "op.v_weight",
    "op.o_weight",
    "op.q_bias",
    "op.k_bias",
    "op.v_bias",
    "op.o_bias",
    "input 0",
];

fn lstm(input: usize, hidden: usize, return_sequences: bool) -> Lstm {
    Lstm {
        input_size: input,
        hidden_size: hidden,
        return_sequences,
    }
}

fn gru(input: usize, hidden: usize, return_sequences: bool) -> Gru {
    Gru {
        input_size: input,
        hidden_size: hidden,
        return_sequences,
    }
}

/// embed 5 -> out 3, 4 query heads sharing 2 key/value heads of dim 2.
fn gqa(causal: bool, rope_theta: Option<f64>) -> Attention {
    Attention {
        embed_dim: 5,
        out_dim: 3,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 2,
        causal,
        rope_theta,
        bias: true,
    }
}

/// A padding mask [2, 4]: sample 0 pads its first position (a causal query 0 then sees no key),
/// sample 1 its last two.
fn padding_mask() -> Tensor {
    Tensor::new(
        &[[0.0f64, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]],
        &Device::Cpu,
    )
    .unwrap()
}

// ----------------------------------------------------------------------------------------------
// gradients

#[test]
fn lstm_gradients() {
    for rs in [true, false] {
        let c = check_op(lstm(3, 3, rs), &[&[4, 3]], &[randn(&[2, 4, 3], 1)]);
        expect_checked(&c, &RECURRENT_GRADS);
    }
}

#[test]
fn gru_gradients() {
    for rs in [true, false] {
        let c = check_op(gru(2, 3, rs), &[&[4, 2]], &[randn(&[2, 4, 2], 2)]);
        expect_checked(&c, &RECURRENT_GRADS);
    }
}

#[test]
fn attention_gradients() {
    for (causal, rope) in [
        (false, None),
        (true, None),
        (false, Some(10000.0)),
        (true, Some(10.0)),
    ] {
        let c = check_op(gqa(causal, rope), &[&[4, 5]], &[randn(&[2, 4, 5], 3)]);
        expect_checked(&c, &ATTENTION_GRADS);
    }
}

#[test]
fn attention_gradients_multi_head_and_multi_query_without_bias() {
    for kv in [4, 1] {
        let mut op = gqa(true, Some(100.0));
        op.num_kv_heads = kv;
        op.bias = false;
        let c = check_op(op, &[&[3, 5]], &[randn(&[2, 3, 5], 4)]);
        expect_checked(
            &c,
            &ATTENTION_GRADS[..4]
                .iter()
                .chain(&["input 0"])
                .copied()
                .collect::<Vec<_>>(),
        );
    }
}

#[test]
fn attention_gradients_with_padding_mask() {
    for causal in [false, true] {
        let c = check_op(
            gqa(causal, Some(10000.0)),
            &[&[4, 5], &[4]],
            &[randn(&[2, 4, 5], 5), padding_mask()],
        );
        let mut want = ATTENTION_GRADS.to_vec();
        want.push("input 1");
        expect_checked(&c, &want);
    }
}

#[test]
fn positional_embedding_gradients() {
    let op = PositionalEmbedding { max_len: 5, dim: 3 };
    let c = check_op(op, &[&[4, 3]], &[randn(&[2, 4, 3], 6)]);
    expect_checked(&c, &["op.weight", "input 0"]);
}

// ----------------------------------------------------------------------------------------------
// recurrent layers against candle_nn and a per-step reference

fn param(g: &Graph, name: &str) -> Tensor {
    g.node("op").unwrap().params[name].tensor().clone()
}

fn run(g: &Graph, inputs: &[Tensor]) -> Tensor {
    Executor::new(0).eval(g, inputs).unwrap().remove(0)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// candle_nn's variable names for layer 0.
fn torch_names(g: &Graph) -> HashMap<String, Tensor> {
    ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        .iter()
        .map(|n| (format!("{n}_l0"), param(g, n)))
        .collect()
}

#[test]
fn lstm_matches_candle_nn() {
    let (t, i, h) = (5, 3, 4);
    let x = randn(&[2, t, i], 20);
    let seq = f64_graph(single_op(lstm(i, h, true), &[&[t, i]]), 21);
    let vb = candle_nn::VarBuilder::from_tensors(torch_names(&seq), DType::F64, &Device::Cpu);
    let reference = candle_nn::lstm(i, h, LSTMConfig::default(), vb).unwrap();
    let states = reference.seq(&x).unwrap();
    let want = reference.states_to_tensor(&states).unwrap();
    let got = run(&seq, std::slice::from_ref(&x));
    assert_eq!(got.dims(), &[2, t, h]);
    assert!(max_abs_diff(&got, &want) < 1e-12);

    // the same weights without return_sequences: the last step's h
    let mut last = seq.clone();
    last.node_mut("op").unwrap().op = lstm(i, h, false).into();
    last.validate().unwrap();
    let got = run(&last, &[x]);
    assert_eq!(got.dims(), &[2, h]);
    assert!(max_abs_diff(&got, &states[t - 1].h) < 1e-12);
}

#[test]
fn gru_matches_candle_nn() {
    let (t, i, h) = (5, 3, 4);
    let x = randn(&[2, t, i], 22);
    let seq = f64_graph(single_op(gru(i, h, true), &[&[t, i]]), 23);
    let vb = candle_nn::VarBuilder::from_tensors(torch_names(&seq), DType::F64, &Device::Cpu);
    let reference = candle_nn::gru(i, h, GRUConfig::default(), vb).unwrap();
    let states = reference.seq(&x).unwrap();
    // not `states_to_tensor`: candle_nn's GRU concatenates the states into [B, T * H] there
    // (its LSTM stacks them into [B, T, H])
    let hs: Vec<Tensor> = states.iter().map(|s| s.h.clone()).collect();
    let want = Tensor::stack(&hs, 1).unwrap();
    let got = run(&seq, std::slice::from_ref(&x));
    assert_eq!(got.dims(), &[2, t, h]);
    assert!(max_abs_diff(&got, &want) < 1e-12);

    let mut last = seq.clone();
    last.node_mut("op").unwrap().op = gru(i, h, false).into();
    let got = run(&last, &[x]);
    assert_eq!(got.dims(), &[2, h]);
    assert!(max_abs_diff(&got, &states[t - 1].h) < 1e-12);
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// W v + b for row-major W.
fn affine(w: &[Vec<f64>], b: &[f64], v: &[f64]) -> Vec<f64> {
    w.iter()
        .zip(b)
        .map(|(row, bi)| row.iter().zip(v).map(|(a, x)| a * x).sum::<f64>() + bi)
        .collect()
}

fn mat(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap()
}

fn vec1(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

/// The written-out equations of PyTorch's GRU, one sample, one step at a time.
#[test]
fn gru_matches_the_written_out_equations() {
    let (t, i, h) = (4, 2, 3);
    let x = randn(&[1, t, i], 24);
    let g = f64_graph(single_op(gru(i, h, true), &[&[t, i]]), 25);
    let (w_ih, w_hh) = (mat(&param(&g, "weight_ih")), mat(&param(&g, "weight_hh")));
    let (b_ih, b_hh) = (vec1(&param(&g, "bias_ih")), vec1(&param(&g, "bias_hh")));
    let xs = x.get(0).unwrap().to_vec2::<f64>().unwrap();
    let mut state = vec![0.0; h];
    let mut want = Vec::new();
    for xt in &xs {
        let gi = affine(&w_ih, &b_ih, xt);
        let gh = affine(&w_hh, &b_hh, &state);
        state = (0..h)
            .map(|j| {
                let r = sigmoid(gi[j] + gh[j]);
                let z = sigmoid(gi[h + j] + gh[h + j]);
                let n = (gi[2 * h + j] + r * gh[2 * h + j]).tanh();
                (1.0 - z) * n + z * state[j]
            })
            .collect();
        want.push(state.clone());
    }
    let got = run(&g, &[x]).get(0).unwrap().to_vec2::<f64>().unwrap();
    for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
        assert!((a - b).abs() < 1e-12, "{got:?} vs {want:?}");
    }
}

// ----------------------------------------------------------------------------------------------
// attention against a naive per-head reference

/// One sample of attention, written out: per-head slices, kv head h / group, rotate_half rotary
/// embedding, masked keys skipped, softmax weights scaled by the mask value.
fn naive_attention(
    op: &Attention,
    g: &Graph,
    x: &[Vec<f64>],
    mask: Option<&[f64]>,
) -> Vec<Vec<f64>> {
    let get = |n: &str| {
        g.node("op")
            .unwrap()
            .params
            .get(n)
            .map(|p| p.tensor().clone())
    };
    let bias = |n: &str, len: usize| get(n).map_or(vec![0.0; len], |t| vec1(&t));
    let (nh, nkv, hd) = (op.num_heads, op.num_kv_heads, op.head_dim);
    let group = nh / nkv;
    let wq = mat(&get("q_weight").unwrap());
    let wk = mat(&get("k_weight").unwrap());
    let wv = mat(&get("v_weight").unwrap());
    let wo = mat(&get("o_weight").unwrap());
    let (bq, bk, bv) = (
        bias("q_bias", nh * hd),
        bias("k_bias", nkv * hd),
        bias("v_bias", nkv * hd),
    );
    let bo = bias("o_bias", op.out_dim);
    let rope = |u: &[f64], pos: usize| -> Vec<f64> {
        let Some(theta) = op.rope_theta else {
            return u.to_vec();
        };
        let half = hd / 2;
        (0..hd)
            .map(|i| {
                let angle = pos as f64 * theta.powf(-2.0 * (i % half) as f64 / hd as f64);
                let rotated = if i < half { -u[i + half] } else { u[i - half] };
                u[i] * angle.cos() + rotated * angle.sin()
            })
            .collect()
    };
    let steps = x.len();
    let q: Vec<Vec<f64>> = x.iter().map(|xt| affine(&wq, &bq, xt)).collect();
    let k: Vec<Vec<f64>> = x.iter().map(|xt| affine(&wk, &bk, xt)).collect();
    let v: Vec<Vec<f64>> = x.iter().map(|xt| affine(&wv, &bv, xt)).collect();
    let mut out = Vec::new();
    for (t, qt) in q.iter().enumerate() {
        let mut concat = Vec::new();
        for h in 0..nh {
            let kv = h / group;
            let qh = rope(&qt[h * hd..(h + 1) * hd], t);
            let keys: Vec<usize> = (0..steps)
                .filter(|&j| !op.causal || j <= t)
                .filter(|&j| mask.is_none_or(|m| m[j] > 0.5))
                .collect();
            let scores: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    let kh = rope(&k[j][kv * hd..(kv + 1) * hd], j);
                    qh.iter().zip(&kh).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = keys
                .iter()
                .zip(&scores)
                .map(|(&j, s)| (s - max).exp() * mask.map_or(1.0, |m| m[j]))
                .collect();
            let total: f64 = weights.iter().sum();
            for d in 0..hd {
                let mut acc = 0.0;
                for (&j, w) in keys.iter().zip(&weights) {
                    acc += w / total * v[j][kv * hd + d];
                }
                concat.push(acc);
            }
        }
        out.push(affine(&wo, &bo, &concat));
    }
    out
}

fn attention_graph(op: &Attention, steps: usize, masked: bool, seed: u64) -> Graph {
    let x_shape = [steps, op.embed_dim];
    let m_shape = [steps];
    let shapes: Vec<&[usize]> = if masked {
        vec![&x_shape, &m_shape]
    } else {
        vec![&x_shape]
    };
    f64_graph(single_op(op.clone(), &shapes), seed)
}

fn assert_matches_naive(op: &Attention, steps: usize, mask: Option<&Tensor>, seed: u64) {
    let g = attention_graph(op, steps, mask.is_some(), seed);
    let batch = mask.map_or(3, |m| m.dim(0).unwrap());
    let x = randn(&[batch, steps, op.embed_dim], seed + 1);
    let mut inputs = vec![x.clone()];
    inputs.extend(mask.cloned());
    let got = run(&g, &inputs);
    assert_eq!(got.dims(), &[batch, steps, op.out_dim]);
    for b in 0..batch {
        let xb = x.get(b).unwrap().to_vec2::<f64>().unwrap();
        let mb = mask.map(|m| vec1(&m.get(b).unwrap()));
        let want = naive_attention(op, &g, &xb, mb.as_deref());
        let gb = got.get(b).unwrap().to_vec2::<f64>().unwrap();
        for (t, (row, want_row)) in gb.iter().zip(&want).enumerate() {
            for (a, w) in row.iter().zip(want_row) {
                assert!(
                    (a - w).abs() < 1e-12,
                    "{op:?}, sample {b}, step {t}: {row:?} vs {want_row:?}"
                );
            }
        }
    }
}

#[test]
fn attention_matches_naive_reference() {
    let mut seed = 30;
    for kv in [4, 2, 1] {
        for causal in [false, true] {
            for rope in [None, Some(10000.0), Some(3.0)] {
                let mut op = gqa(causal, rope);
                op.num_kv_heads = kv;
                op.head_dim = 4;
                assert_matches_naive(&op, 5, None, seed);
                seed += 2;
            }
        }
    }
    // without biases, out_dim > embed_dim
    let mut op = gqa(true, Some(500.0));
    op.bias = false;
    op.out_dim = 7;
    assert_matches_naive(&op, 4, None, seed);
}

#[test]
fn attention_with_padding_mask_matches_naive_reference() {
    let mask = padding_mask();
    for causal in [false, true] {
        for kv in [2, 1] {
            let mut op = gqa(causal, Some(10000.0));
            op.num_kv_heads = kv;
            assert_matches_naive(&op, 4, Some(&mask), 50 + kv as u64);
        }
    }
    // soft mask values weight the attended keys
    let soft = Tensor::new(&[[0.75f64, 1.0, 0.2, 2.0]], &Device::Cpu).unwrap();
    assert_matches_naive(&gqa(false, None), 4, Some(&soft), 60);
}

#[test]
fn fully_masked_queries_output_the_bias() {
    // causal and the first position padded: query 0 may attend to nothing
    let op = gqa(true, None);
    let g = attention_graph(&op, 4, true, 61);
    let y = run(&g, &[randn(&[2, 4, 5], 62), padding_mask()]);
    let o_bias = vec1(&param(&g, "o_bias"));
    let row = vec1(&y.get(0).unwrap().get(0).unwrap());
    assert_eq!(row, o_bias);
    assert!(flat_finite(&y));
}

fn flat_finite(t: &Tensor) -> bool {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite())
}

#[test]
fn an_all_ones_mask_is_no_mask() {
    for causal in [false, true] {
        let op = gqa(causal, Some(10000.0));
        let plain = attention_graph(&op, 4, false, 63);
        let masked = attention_graph(&op, 4, true, 63);
        let x = randn(&[2, 4, 5], 64);
        let ones = Tensor::ones((2, 4), DType::F64, &Device::Cpu).unwrap();
        let a = run(&plain, std::slice::from_ref(&x));
        let b = run(&masked, &[x, ones]);
        assert!(max_abs_diff(&a, &b) < 1e-14);
    }
}

/// x with the positions `from..` of every sample replaced by other values.
fn perturb_from(x: &Tensor, from: usize, seed: u64) -> Tensor {
    let (b, t, e) = x.dims3().unwrap();
    let head = x.narrow(1, 0, from).unwrap();
    let tail = randn(&[b, t - from, e], seed);
    Tensor::cat(&[&head, &tail], 1).unwrap()
}

#[test]
fn causal_outputs_do_not_see_the_future() {
    for rope in [None, Some(10000.0)] {
        let op = gqa(true, rope);
        let g = attention_graph(&op, 5, false, 70);
        let x = randn(&[2, 5, 5], 71);
        let y = run(&g, std::slice::from_ref(&x));
        for t in 0..4 {
            let y2 = run(&g, &[perturb_from(&x, t + 1, 72 + t as u64)]);
            let past = max_abs_diff(
                &y.narrow(1, 0, t + 1).unwrap(),
                &y2.narrow(1, 0, t + 1).unwrap(),
            );
            assert!(past < 1e-14, "step {t}: past outputs changed by {past}");
            let future = max_abs_diff(
                &y.narrow(1, t + 1, 4 - t).unwrap(),
                &y2.narrow(1, t + 1, 4 - t).unwrap(),
            );
            assert!(future > 1e-6, "step {t}: future outputs did not change");
        }
    }
    // without the causal mask the past does see the future
    let g = attention_graph(&gqa(false, None), 5, false, 70);
    let x = randn(&[2, 5, 5], 71);
    let y = run(&g, std::slice::from_ref(&x));
    let y2 = run(&g, &[perturb_from(&x, 4, 80)]);
    assert!(max_abs_diff(&y.narrow(1, 0, 4).unwrap(), &y2.narrow(1, 0, 4).unwrap()) > 1e-6);
}

#[test]
fn padded_keys_do_not_influence_other_positions() {
    // sample 0 pads positions 1 and 3
    let mask = Tensor::new(&[[1.0f64, 0.0, 1.0, 0.0, 1.0]], &Device::Cpu).unwrap();
    for causal in [false, true] {
        let op = gqa(causal, Some(10000.0));
        let g = attention_graph(&op, 5, true, 90);
        let x = randn(&[1, 5, 5], 91);
        let y = run(&g, &[x.clone(), mask.clone()]);
        // change the padded positions' inputs
        let noise = randn(&[1, 5, 5], 92);
        let pad = (1.0 - &mask).unwrap().unsqueeze(2).unwrap();
        let x2 = (&x + noise.broadcast_mul(&pad).unwrap()).unwrap();
        let y2 = run(&g, &[x2, mask.clone()]);
        for t in [0, 2, 4] {
            let d = max_abs_diff(&y.narrow(1, t, 1).unwrap(), &y2.narrow(1, t, 1).unwrap());
            assert!(d < 1e-14, "position {t} changed by {d}");
        }
        // a padded position's own output does change (its query changed; position 3 attends to
        // more than one key also when causal)
        assert!(max_abs_diff(&y.narrow(1, 3, 1).unwrap(), &y2.narrow(1, 3, 1).unwrap()) > 1e-6);
    }
}

// ----------------------------------------------------------------------------------------------
// shapes, errors and MACs

fn infer(op: impl Into<Op>, ins: &[&[usize]]) -> Result<Vec<usize>, String> {
    op.into().rules().infer(ins)
}

fn shape_macs(op: impl Into<Op>, ins: &[&[usize]]) -> (Vec<usize>, u64) {
    let op = op.into();
    let out = op.rules().infer(ins).unwrap();
    let macs = op.rules().macs(ins, &out);
    (out, macs)
}

fn assert_err(r: Result<Vec<usize>, String>, parts: &[&str]) {
    let e = r.expect_err("an error");
    for p in parts {
        assert!(e.contains(p), "error `{e}` does not mention `{p}`");
    }
}

#[test]
fn shapes_and_macs() {
    // T * 4H * (I + H)
    assert_eq!(
        shape_macs(lstm(3, 5, true), &[&[7, 3]]),
        (vec![7, 5], 7 * 20 * 8)
    );
    assert_eq!(
        shape_macs(lstm(3, 5, false), &[&[7, 3]]),
        (vec![5], 7 * 20 * 8)
    );
    // T * 3H * (I + H)
    assert_eq!(
        shape_macs(gru(3, 5, true), &[&[7, 3]]),
        (vec![7, 5], 7 * 15 * 8)
    );
    assert_eq!(
        shape_macs(gru(3, 5, false), &[&[7, 3]]),
        (vec![5], 7 * 15 * 8)
    );
    // q: T*E*nh*hd, k and v: T*E*nkv*hd each, o: T*nh*hd*out, scores and values: 2*nh*T*T*hd
    let (t, e, out, nh, nkv, hd) = (6u64, 5, 3, 4, 2, 2);
    let want = t * e * nh * hd + 2 * t * e * nkv * hd + t * nh * hd * out + 2 * nh * t * t * hd;
    assert_eq!(shape_macs(gqa(true, None), &[&[6, 5]]), (vec![6, 3], want));
    assert_eq!(
        shape_macs(gqa(false, None), &[&[6, 5], &[6]]),
        (vec![6, 3], want)
    );
    let pe = PositionalEmbedding { max_len: 8, dim: 4 };
    assert_eq!(shape_macs(pe, &[&[8, 4]]), (vec![8, 4], 0));
}

#[test]
fn shape_errors() {
    assert_err(
        infer(lstm(3, 5, true), &[&[7, 4]]),
        &["[7, 4]", "input_size = 3"],
    );
    assert_err(infer(lstm(3, 5, true), &[&[3]]), &["input_size = 3"]);
    assert_err(infer(lstm(3, 0, true), &[&[7, 3]]), &["hidden_size"]);
    assert_err(infer(gru(3, 5, true), &[&[0, 3]]), &["no time steps"]);
    assert_err(infer(gru(3, 5, true), &[&[7, 3], &[7, 3]]), &["1 input"]);

    let mut op = gqa(false, None);
    op.num_kv_heads = 3;
    assert_err(
        infer(op, &[&[4, 5]]),
        &["num_kv_heads = 3", "num_heads = 4"],
    );
    let mut op = gqa(false, None);
    op.num_heads = 0;
    assert_err(infer(op, &[&[4, 5]]), &["num_heads must be positive"]);
    let mut op = gqa(false, None);
    op.num_kv_heads = 0;
    assert_err(infer(op, &[&[4, 5]]), &["num_kv_heads must be positive"]);
    let mut op = gqa(false, Some(10000.0));
    op.head_dim = 3;
    assert_err(infer(op.clone(), &[&[4, 5]]), &["even head_dim", "3"]);
    op.rope_theta = None;
    assert_eq!(infer(op, &[&[4, 5]]), Ok(vec![4, 3]));
    assert_err(infer(gqa(false, Some(0.0)), &[&[4, 5]]), &["rope_theta"]);
    let mut op = gqa(false, None);
    op.head_dim = 0;
    assert_err(infer(op, &[&[4, 5]]), &["head_dim must be positive"]);
    assert_err(
        infer(gqa(false, None), &[&[4, 6]]),
        &["[4, 6]", "embed_dim = 5"],
    );
    assert_err(
        infer(gqa(false, None), &[&[4, 5], &[3]]),
        &["mask", "[3]", "T = 4"],
    );
    assert_err(infer(gqa(false, None), &[]), &["got 0"]);
    assert_err(infer(gqa(false, None), &[&[4, 5], &[4], &[4]]), &["got 3"]);

    let pe = PositionalEmbedding { max_len: 4, dim: 3 };
    assert_err(
        infer(pe.clone(), &[&[5, 3]]),
        &["5 positions", "max_len = 4"],
    );
    assert_err(infer(pe.clone(), &[&[4, 2]]), &["dim = 3"]);
    assert_eq!(infer(pe, &[&[2, 3]]), Ok(vec![2, 3]));
}

#[test]
fn positional_embedding_adds_the_first_rows() {
    let op = PositionalEmbedding { max_len: 6, dim: 3 };
    let g = f64_graph(single_op(op.clone(), &[&[4, 3]]), 100);
    let x = randn(&[2, 4, 3], 101);
    let want = x
        .broadcast_add(&param(&g, "weight").narrow(0, 0, 4).unwrap())
        .unwrap();
    assert_eq!(bits(&run(&g, std::slice::from_ref(&x))), bits(&want));

    // longer than max_len: the forward pass refuses too (not only infer)
    let long = randn(&[1, 7, 3], 102);
    let node = g.node("op").unwrap();
    let view = ParamView::of(&g, node, false);
    let mut rng = rng(0);
    let mut ctx = Ctx::new(false, &mut rng);
    let e = op
        .forward(&[long], &view, &mut ctx)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("7 positions") && e.contains("max_len = 6"),
        "{e}"
    );
}

#[test]
fn builder_methods() {
    let mut b = GraphBuilder::new("seq", 1);
    let t = b.ids_input("tokens", &[6]);
    let pad = b.input("pad", &[6]);
    let e = b.embedding(&t, 20, 8).unwrap();
    let e = b.positional_embedding(&e, 16).unwrap();
    let a = b.attention(&e, 4, 2, 2, true, Some(10000.0)).unwrap();
    let m = b.attention_masked(&a, &pad, 2, 2, 4, false, None).unwrap();
    let l = b.lstm(&m, 5, true).unwrap();
    let r = b.gru(&l, 3, false).unwrap();
    assert_eq!(a.shape, vec![6, 8]);
    assert_eq!(m.shape, vec![6, 8]);
    assert_eq!(l.shape, vec![6, 5]);
    assert_eq!(r.shape, vec![3]);
    let g = b.finish(&[&r]).unwrap();
    match &g.node(&a.name).unwrap().op {
        Op::Attention(op) => {
            assert_eq!(
                (
                    op.embed_dim,
                    op.out_dim,
                    op.num_heads,
                    op.num_kv_heads,
                    op.head_dim
                ),
                (8, 8, 4, 2, 2)
            );
            assert!(op.causal && op.bias);
            assert_eq!(op.rope_theta, Some(10000.0));
        }
        other => panic!("{other:?}"),
    }
    // the builder's errors name the node
    let mut b = GraphBuilder::new("bad", 1);
    let x = b.input("x", &[4, 6]);
    let e = b
        .named("att")
        .attention(&x, 4, 3, 2, false, None)
        .unwrap_err();
    assert!(e.to_string().contains("att"), "{e}");
    assert!(e.to_string().contains("does not divide"), "{e}");
    let x = b.input("y", &[9, 6]);
    let e = b.positional_embedding(&x, 8).unwrap_err();
    assert!(e.to_string().contains("max_len = 8"), "{e}");
}

// ----------------------------------------------------------------------------------------------
// slicing parameters: resize re-derives the attributes

fn attention_of(g: &Graph, name: &str) -> Attention {
    match &g.node(name).unwrap().op {
        Op::Attention(a) => a.clone(),
        other => panic!("{other:?}"),
    }
}

fn zero_rows_or_cols(g: &Graph, node: &str, param: &str, axis: usize, idx: &[usize]) {
    let p = &g.node(node).unwrap().params[param];
    let dims = p.tensor().dims().to_vec();
    let mut keep = vec![1.0f64; dims[axis]];
    for &i in idx {
        keep[i] = 0.0;
    }
    let mut shape = vec![1usize; dims.len()];
    shape[axis] = dims[axis];
    let m = Tensor::from_vec(keep, shape, &Device::Cpu).unwrap();
    p.value.set(&p.tensor().broadcast_mul(&m).unwrap()).unwrap();
}

/// in [T, 4] -> linear (6) -> attention (6 -> 6, 4 heads, 2 kv heads of dim 2) -> linear (3).
fn attention_block() -> Graph {
    let mut b = GraphBuilder::new("block", 3);
    let x = b.input("x", &[5, 4]);
    let h = b.named("up").linear(&x, 6).unwrap();
    let a = b
        .named("att")
        .attention(&h, 4, 2, 2, true, Some(10000.0))
        .unwrap();
    let y = b.named("down").linear(&a, 3).unwrap();
    let mut g = b.finish(&[&y]).unwrap();
    g.to_dtype(DType::F64).unwrap();
    randomize_params(&g, 110);
    g
}

#[test]
fn removing_a_kv_group_and_channels_resizes_attention() {
    let mut g = attention_block();
    // make kv group 1 (query heads 2 and 3), embedding channel 3 and output channel 2 dead, so
    // slicing them away must not change the output
    zero_rows_or_cols(&g, "att", "o_weight", 1, &[4, 5, 6, 7]);
    zero_rows_or_cols(&g, "up", "weight", 0, &[3]);
    zero_rows_or_cols(&g, "up", "bias", 0, &[3]);
    zero_rows_or_cols(&g, "down", "weight", 1, &[2]);
    let x = randn(&[2, 5, 4], 111);
    let before = run(&g, std::slice::from_ref(&x));

    let q_keep = [0u32, 1, 2, 3];
    let kv_keep = [0u32, 1];
    for p in ["q_weight", "q_bias"] {
        g.select("att", p, 0, &q_keep).unwrap();
    }
    for p in ["k_weight", "k_bias", "v_weight", "v_bias"] {
        g.select("att", p, 0, &kv_keep).unwrap();
    }
    g.select("att", "o_weight", 1, &q_keep).unwrap();
    let embed_keep = [0u32, 1, 2, 4, 5];
    for p in ["weight", "bias"] {
        g.select("up", p, 0, &embed_keep).unwrap();
    }
    for p in ["q_weight", "k_weight", "v_weight"] {
        g.select("att", p, 1, &embed_keep).unwrap();
    }
    let out_keep = [0u32, 1, 3, 4, 5];
    for p in ["o_weight", "o_bias"] {
        g.select("att", p, 0, &out_keep).unwrap();
    }
    g.select("down", "weight", 1, &out_keep).unwrap();

    let shapes = g.validate().unwrap();
    assert_eq!(shapes["att"], vec![5, 5]);
    let a = attention_of(&g, "att");
    assert_eq!(
        (
            a.embed_dim,
            a.out_dim,
            a.num_heads,
            a.num_kv_heads,
            a.head_dim
        ),
        (5, 5, 2, 1, 2)
    );
    assert!(a.causal);
    assert_eq!(a.rope_theta, Some(10000.0));
    let after = run(&g, &[x]);
    assert!(max_abs_diff(&before, &after) < 1e-12);
}

#[test]
fn removing_one_query_head_per_group_resizes_attention() {
    let mut g = attention_block();
    // heads 1 and 3 go, one from each kv group: 2 heads on 2 kv heads remain
    let q_keep = [0u32, 1, 4, 5];
    for p in ["q_weight", "q_bias"] {
        g.select("att", p, 0, &q_keep).unwrap();
    }
    g.select("att", "o_weight", 1, &q_keep).unwrap();
    g.validate().unwrap();
    let a = attention_of(&g, "att");
    assert_eq!((a.num_heads, a.num_kv_heads), (2, 2));
    // a half-sliced state is reported, not a panic
    g.select("att", "k_weight", 0, &[0, 1]).unwrap();
    let e = g.validate().unwrap_err().to_string();
    assert!(e.contains("k_bias") || e.contains("v_weight"), "{e}");
}

#[test]
fn slicing_recurrent_hidden_units_resizes() {
    for gates in [4usize, 3] {
        let mut b = GraphBuilder::new("rnn", 4);
        let x = b.input("x", &[4, 3]);
        let h = if gates == 4 {
            b.named("rnn").lstm(&x, 5, true).unwrap()
        } else {
            b.named("rnn").gru(&x, 5, true).unwrap()
        };
        let y = b.named("head").linear(&h, 2).unwrap();
        let mut g = b.finish(&[&y]).unwrap();
        // hidden unit 2 goes: one row per gate, and its column of weight_hh
        let keep: Vec<u32> = (0..gates as u32)
            .flat_map(|k| [0u32, 1, 3, 4].map(|j| k * 5 + j))
            .collect();
        for p in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] {
            g.select("rnn", p, 0, &keep).unwrap();
        }
        g.select("rnn", "weight_hh", 1, &[0, 1, 3, 4]).unwrap();
        g.select("head", "weight", 1, &[0, 1, 3, 4]).unwrap();
        // input feature 1 goes
        g.select("rnn", "weight_ih", 1, &[0, 2]).unwrap();
        g.inputs[0].shape = vec![4, 2];
        let shapes = g.validate().unwrap();
        assert_eq!(shapes["rnn"], vec![4, 4]);
        let (i, h) = match &g.node("rnn").unwrap().op {
            Op::Lstm(l) => (l.input_size, l.hidden_size),
            Op::Gru(l) => (l.input_size, l.hidden_size),
            other => panic!("{other:?}"),
        };
        assert_eq!((i, h), (2, 4));
        run(&g, &[randn_f32(&[2, 4, 2], 5)]);
    }
}

#[test]
fn slicing_positional_embedding_resizes() {
    let mut b = GraphBuilder::new("pe", 4);
    let x = b.input("x", &[3, 4]);
    let p = b.named("pe").positional_embedding(&x, 6).unwrap();
    let mut g = b.finish(&[&p]).unwrap();
    g.select("pe", "weight", 1, &[0, 2, 3]).unwrap();
    g.select("pe", "weight", 0, &[0, 1, 2, 3]).unwrap();
    g.inputs[0].shape = vec![3, 3];
    g.validate().unwrap();
    assert_eq!(
        g.node("pe").unwrap().op,
        Op::from(PositionalEmbedding { max_len: 4, dim: 3 })
    );
}

#[test]
fn op_json_defaults_and_tags() {
    let a: Op = serde_json::from_str(
        r#"{"type": "attention", "embed_dim": 8, "out_dim": 8, "num_heads": 2, "num_kv_heads": 2, "head_dim": 4}"#,
    )
    .unwrap();
    assert_eq!(a, Op::from(Attention::new(8, 2, 4)));
    let l: Op =
        serde_json::from_str(r#"{"type": "lstm", "input_size": 3, "hidden_size": 4}"#).unwrap();
    assert_eq!(l, Op::from(lstm(3, 4, true)));
    let r: Op = serde_json::from_str(
        r#"{"type": "gru", "input_size": 3, "hidden_size": 4, "return_sequences": false}"#,
    )
    .unwrap();
    assert_eq!(r, Op::from(gru(3, 4, false)));
    let bad = serde_json::from_str::<Op>(
        r#"{"type": "positional_embedding", "max_len": 3, "dim": 2, "scale": 1.0}"#,
    );
    assert!(bad.unwrap_err().to_string().contains("scale"));
    for op in [
        Op::from(lstm(3, 4, false)),
        gru(2, 5, true).into(),
        gqa(true, Some(500000.0)).into(),
        gqa(false, None).into(),
        PositionalEmbedding { max_len: 9, dim: 2 }.into(),
    ] {
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(v["type"], op.type_name());
        assert_eq!(serde_json::from_value::<Op>(v).unwrap(), op);
    }
    for tag in ["lstm", "gru", "attention", "positional_embedding"] {
        assert!(Op::all_type_names().contains(&tag));
    }
}

#[test]
fn parameter_declarations() {
    let names = |op: Op| -> BTreeMap<&'static str, (Vec<usize>, Role)> {
        op.rules()
            .params()
            .into_iter()
            .map(|d| (d.name, (d.shape, d.role)))
            .collect()
    };
    let l = names(lstm(3, 5, true).into());
    assert_eq!(l["weight_ih"], (vec![20, 3], Role::Weight));
    assert_eq!(l["weight_hh"], (vec![20, 5], Role::Weight));
    assert_eq!(l["bias_ih"], (vec![20], Role::Bias));
    assert_eq!(l["bias_hh"], (vec![20], Role::Bias));
    let r = names(gru(3, 5, true).into());
    assert_eq!(r["weight_ih"], (vec![15, 3], Role::Weight));
    assert_eq!(r["weight_hh"], (vec![15, 5], Role::Weight));
    let a = names(gqa(false, None).into());
    assert_eq!(a.len(), 8);
    assert_eq!(a["q_weight"], (vec![8, 5], Role::Weight));
    assert_eq!(a["k_weight"], (vec![4, 5], Role::Weight));
    assert_eq!(a["v_weight"], (vec![4, 5], Role::Weight));
    assert_eq!(a["o_weight"], (vec![3, 8], Role::Weight));
    assert_eq!(a["q_bias"], (vec![8], Role::Bias));
    assert_eq!(a["k_bias"], (vec![4], Role::Bias));
    assert_eq!(a["o_bias"], (vec![3], Role::Bias));
    let mut nb = gqa(false, None);
    nb.bias = false;
    assert_eq!(names(nb.into()).len(), 4);
    let init = PositionalEmbedding { max_len: 4, dim: 2 }.params()[0].init;
    assert_eq!(init, Init::Normal { std: 0.02 });
    assert_eq!(
        lstm(3, 5, true).params()[0].init,
        Init::FanInUniform { fan_in: 5 }
    );
}

/// f32 forward passes work too (the runtime's default dtype) and agree with f64.
#[test]
fn f32_forward_agrees_with_f64() {
    let g = sequence_model();
    randomize_params(&g, 130);
    let mut g64 = g.clone();
    g64.to_dtype(DType::F64).unwrap();
    let mask = Tensor::new(
        &[
            [0.0f32, 1.0, 1.0, 1.0, 1.0, 0.0],
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let tokens = ids(&[2, 6], 20, 131);
    let y32 = Executor::new(0)
        .eval(&g, &[tokens.clone(), mask.clone()])
        .unwrap();
    let y64 = Executor::new(0)
        .eval(&g64, &[tokens, mask.to_dtype(DType::F64).unwrap()])
        .unwrap();
    for (a, b) in y32.iter().zip(&y64) {
        assert_eq!(a.dtype(), DType::F32);
        assert!(max_abs_diff(&a.to_dtype(DType::F64).unwrap(), b) < 1e-4);
    }
}
