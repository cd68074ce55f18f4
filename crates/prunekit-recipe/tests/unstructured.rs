//! Unstructured pruning end to end (here, beside the trainer: prunekit-prune does not depend on it): Wanda scores every weight matrix of transformers and recurrent
//! models (attention output projections and recurrent weights included, from the inputs the ops
//! report), global pruning survives a function-preserving rescaling of the layers, and no row or
//! layer is ever emptied.

use candle_core::{DType, Device, Tensor};
use prunekit_graph::{Executor, Graph, GraphBuilder};
use prunekit_prune::{
    criterion_by_name, default_unstructured_criterion, default_unstructured_scope,
    prunable_weights, prune_unstructured, random_inputs, Calibration, Criterion, Target,
    UnstructuredScope, Wanda,
};
use prunekit_train::{evaluate, fit, TrainConfig};

fn vec_of(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn set(g: &Graph, node: &str, param: &str, values: &[f64]) {
    let p = &g.node(node).unwrap().params[param];
    let t = Tensor::from_vec(values.to_vec(), p.tensor().dims(), &Device::Cpu)
        .unwrap()
        .to_dtype(p.tensor().dtype())
        .unwrap();
    p.value.set(&t).unwrap();
}

/// One calibration batch of random inputs, with class labels matching the model's output.
fn random_calib(g: &Graph, batch: usize, seed: u64) -> Calibration {
    let x = random_inputs(g, batch, seed).unwrap().remove(0);
    let out = Executor::new(0)
        .eval(g, std::slice::from_ref(&x))
        .unwrap()
        .remove(0);
    let classes = *out.dims().last().unwrap() as u32;
    let label_dims = &out.dims()[..out.rank() - 1];
    let n: usize = label_dims.iter().product();
    let y: Vec<u32> = (0..n as u32).map(|i| i % classes).collect();
    Calibration::new(vec![(
        x,
        Tensor::from_vec(y, label_dims, &Device::Cpu).unwrap(),
    )])
    .unwrap()
}

#[test]
fn wanda_prunes_every_weight_matrix_half_per_row() {
    for name in [
        "llama-tiny",
        "bert-tiny",
        "lstm-classifier",
        "gru-classifier",
    ] {
        let g = prunekit_zoo::build(name, 0).unwrap();
        let calib = random_calib(&g, 3, 1);
        let wanda = criterion_by_name("wanda", &g, Some(&calib), 0).unwrap();
        let scope = default_unstructured_scope("wanda");
        assert_eq!(scope, UnstructuredScope::Row);
        let mut m = g.clone();
        let r = prune_unstructured(&mut m, wanda.as_ref(), Target::Ratio(0.5), scope)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // every weight matrix is scored; only embedding tables (lookups) are left out, and said so
        for (node, param) in prunable_weights(&g) {
            let op = g.node(&node).unwrap().op.type_name();
            let table = matches!(op, "embedding" | "positional_embedding");
            let scored = r.iter().any(|l| l.node == node && l.param == param);
            let left = r
                .left_out
                .iter()
                .any(|l| l.node == node && l.param == param);
            assert_eq!(scored, !table, "{name}: {node}.{param} ({op})");
            assert_eq!(left, table, "{name}: {node}.{param} ({op})");
        }
        assert!(r
            .iter()
            .any(|l| l.param == "o_weight" || l.param == "weight_hh"));
        // every scored weight is 50% sparse in every row, and the ratio is over them
        for l in r.iter() {
            let w = vec_of(m.node(&l.node).unwrap().params[&l.param].tensor());
            let rows = m.node(&l.node).unwrap().params[&l.param]
                .tensor()
                .dim(0)
                .unwrap();
            for (i, row) in w.chunks(w.len() / rows).enumerate() {
                let zeros = row.iter().filter(|v| **v == 0.0).count();
                assert_eq!(
                    zeros,
                    row.len() / 2,
                    "{name} {}.{} row {i}",
                    l.node,
                    l.param
                );
            }
        }
        assert!((r.sparsity() - 0.5).abs() < 1e-12, "{name}");
        assert_eq!(r.notes().len(), r.left_out.len(), "{name}");
    }
}

/// The per-element Wanda importance of `param` of `node`.
fn wanda_of(g: &Graph, calib: &Calibration, node: &str, param: &str) -> Vec<f64> {
    let w = Wanda::new(g, calib).unwrap();
    vec_of(&w.importance(g, node, param).unwrap().unwrap())
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{a:?} vs {b:?}");
    }
}

#[test]
fn wanda_o_weight_by_hand() {
    // one position, one head: softmax over a single key is 1, so the head output is v
    let mut b = GraphBuilder::new("att", 0);
    let x = b.input("x", &[1, 2]);
    let y = b.attention(&x, 1, 1, 2, false, None).unwrap();
    let g = b.finish(&[&y]).unwrap();
    let n = "attention1";
    set(&g, n, "v_weight", &[1.0, 2.0, -1.0, 0.5]);
    set(&g, n, "v_bias", &[0.5, -1.0]);
    set(&g, n, "o_weight", &[1.0, -2.0, 3.0, 0.25]);
    let xs = [[1.0f32, 2.0], [-1.0, 3.0]];
    let calib = Calibration::new(vec![(
        Tensor::new(&[[xs[0]], [xs[1]]], &Device::Cpu).unwrap(),
        Tensor::new(&[[0u32], [1]], &Device::Cpu).unwrap(),
    )])
    .unwrap();
    // v_b = W_v x_b + b_v: sample 0 -> (5.5, 0.0), sample 1 -> (5.5, 1.5)
    let v = |x: [f32; 2]| {
        let x = [x[0] as f64, x[1] as f64];
        [x[0] + 2.0 * x[1] + 0.5, -x[0] + 0.5 * x[1] - 1.0]
    };
    let (v0, v1) = (v(xs[0]), v(xs[1]));
    let norm = [
        (v0[0] * v0[0] + v1[0] * v1[0]).sqrt(),
        (v0[1] * v0[1] + v1[1] * v1[1]).sqrt(),
    ];
    let o = [1.0, -2.0, 3.0, 0.25];
    let want: Vec<f64> = (0..4).map(|i| o[i] * norm[i % 2]).map(f64::abs).collect();
    close(&wanda_of(&g, &calib, n, "o_weight"), &want);
    // q/k/v see the layer input: ||x_j|| = sqrt(1 + 1), sqrt(4 + 9)
    let xn = [2f64.sqrt(), 13f64.sqrt()];
    let want: Vec<f64> = [1.0, 2.0, -1.0, 0.5]
        .iter()
        .enumerate()
        .map(|(i, w): (usize, &f64)| (w * xn[i % 2]).abs())
        .collect();
    close(&wanda_of(&g, &calib, n, "v_weight"), &want);
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn wanda_weight_hh_by_hand() {
    // two steps, one input feature, one hidden unit: weight_hh multiplies h_1 only (h_0 = 0)
    let xs = [[0.5f32, -1.0], [2.0, 0.3]];
    let calib = Calibration::new(vec![(
        Tensor::new(
            &[[[xs[0][0]], [xs[0][1]]], [[xs[1][0]], [xs[1][1]]]],
            &Device::Cpu,
        )
        .unwrap(),
        Tensor::new(&[0u32, 0], &Device::Cpu).unwrap(),
    )])
    .unwrap();
    let x_norm = xs
        .iter()
        .flatten()
        .map(|&v| (v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    for gru in [false, true] {
        let mut b = GraphBuilder::new("rnn", 0);
        let x = b.input("x", &[2, 1]);
        let y = if gru {
            b.gru(&x, 1, false).unwrap()
        } else {
            b.lstm(&x, 1, false).unwrap()
        };
        let g = b.finish(&[&y]).unwrap();
        let n = if gru { "gru1" } else { "lstm1" };
        let gates = if gru { 3 } else { 4 };
        let w_ih = [0.8, -0.6, 1.2, 0.4][..gates].to_vec();
        let w_hh = [0.3, -0.7, 0.9, -1.1][..gates].to_vec();
        let b_ih = [0.1, 0.2, -0.3, 0.05][..gates].to_vec();
        let b_hh = [-0.2, 0.1, 0.25, 0.0][..gates].to_vec();
        set(&g, n, "weight_ih", &w_ih);
        set(&g, n, "weight_hh", &w_hh);
        set(&g, n, "bias_ih", &b_ih);
        set(&g, n, "bias_hh", &b_hh);
        // h_1 of each sample, from the first step's equations with h_0 = 0
        let h1 = |x: f64| {
            let a = |k: usize| x * w_ih[k] + b_ih[k];
            if gru {
                let r = sigmoid(a(0) + b_hh[0]);
                let z = sigmoid(a(1) + b_hh[1]);
                let nn = (a(2) + r * b_hh[2]).tanh();
                (1.0 - z) * nn
            } else {
                let gate = |k: usize| a(k) + b_hh[k];
                let c = sigmoid(gate(0)) * gate(2).tanh();
                sigmoid(gate(3)) * c.tanh()
            }
        };
        let h_norm = (h1(xs[0][0] as f64).powi(2) + h1(xs[1][0] as f64).powi(2)).sqrt();
        let want: Vec<f64> = w_hh.iter().map(|w| (w * h_norm).abs()).collect();
        close(&wanda_of(&g, &calib, n, "weight_hh"), &want);
        let want: Vec<f64> = w_ih.iter().map(|w| (w * x_norm).abs()).collect();
        close(&wanda_of(&g, &calib, n, "weight_ih"), &want);
    }
}

/// digits-mlp trained for a few epochs, with its test split.
fn trained_mlp() -> (Graph, prunekit_data::Dataset) {
    let (split, _) = prunekit_data::digits(0, 0.2).unwrap();
    let mut g = prunekit_zoo::build("digits-mlp", 0).unwrap();
    let mut cfg = TrainConfig::sgd_cosine(4, 32, 0.05, split.train.len());
    cfg.progress = false;
    fit(&mut g, &split.train, None, &cfg).unwrap();
    (g, split.test)
}

/// The same function with the first layer x100 (weight and bias) and the second x0.01 (weight):
/// ReLU(100 z) = 100 ReLU(z), which the second layer scales back.
fn rescaled(g: &Graph) -> Graph {
    let h = g.clone();
    let scale = |node: &str, param: &str, a: f64| {
        let p = &h.node(node).unwrap().params[param];
        p.value.set(&p.tensor().affine(a, 0.0).unwrap()).unwrap();
    };
    scale("linear1", "weight", 100.0);
    scale("linear1", "bias", 100.0);
    scale("linear2", "weight", 0.01);
    h
}

fn outputs(g: &Graph, x: &Tensor) -> Vec<f64> {
    vec_of(&Executor::new(0).eval(g, std::slice::from_ref(x)).unwrap()[0])
}

#[test]
fn global_default_survives_a_function_preserving_rescale() {
    let (g, test) = trained_mlp();
    let big = rescaled(&g);
    let x = random_inputs(&g, 8, 5).unwrap().remove(0);
    let (a, b) = (outputs(&g, &x), outputs(&big, &x));
    let scale = a.iter().map(|v| v.abs()).fold(0.0, f64::max);
    assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-3 * scale));
    let dense = evaluate(&g, &test, 256).unwrap().accuracy().unwrap();

    // the default criterion of global scope is scale-aware: both models get the same masks
    let name = default_unstructured_criterion(UnstructuredScope::Global);
    let prune = |m: &Graph| {
        let mut m = m.clone();
        let c = criterion_by_name(name, &m, None, 0).unwrap();
        let r = prune_unstructured(
            &mut m,
            c.as_ref(),
            Target::Ratio(0.5),
            UnstructuredScope::Global,
        )
        .unwrap();
        assert!((r.sparsity() - 0.5).abs() < 1e-4);
        m
    };
    let (pa, pb) = (prune(&g), prune(&big));
    for (n, k) in prunable_weights(&g) {
        let mask = |m: &Graph| vec_of(m.node(&n).unwrap().params[&k].mask.as_ref().unwrap());
        assert!(
            mask(&pa) == mask(&pb),
            "{n}.{k}: the rescaled model got other masks"
        );
        let zeros = mask(&pb).iter().filter(|v| **v == 0.0).count();
        assert!(zeros < mask(&pb).len(), "{n}.{k} emptied");
    }
    let (acc_a, acc_b) = (
        evaluate(&pa, &test, 256).unwrap().accuracy().unwrap(),
        evaluate(&pb, &test, 256).unwrap().accuracy().unwrap(),
    );
    assert!((acc_a - acc_b).abs() < 1e-9, "{acc_a} vs {acc_b}");
    assert!(acc_b > dense - 0.05, "dense {dense}, pruned {acc_b}");

    // raw magnitudes across layers would take every weight of the x0.01 layer: no row is emptied
    let mut m = big.clone();
    let l1 = criterion_by_name("l1", &m, None, 0).unwrap();
    let r = prune_unstructured(
        &mut m,
        l1.as_ref(),
        Target::Ratio(0.5),
        UnstructuredScope::Global,
    )
    .unwrap();
    assert!(r.rows_kept >= 64, "{}", r.rows_kept);
    assert!(r.notes().iter().any(|n| n.contains("no row or layer")));
    for (n, k) in prunable_weights(&m) {
        let t = m.node(&n).unwrap().params[&k].tensor().clone();
        let rows = t.dim(0).unwrap();
        let live = prunekit_graph::live_rows(&t).unwrap();
        assert_eq!(live, rows, "{n}.{k}: a row lost every weight");
    }
}
