//! Inference on the sparse kernels (issue 16 §2): a pruned model run with a `SparsePlan` gives the
//! outputs of the dense run, for every layer kind the plan can choose (Linear on [B, F] and on
//! [B, T, F], convolutions with stride 1 and 2, 1x1, unstructured and 2:4 masks), and leaves the
//! rest dense (grouped convolutions, layers below the sparsity threshold, passes with gradients).

use std::sync::Arc;

use candle_core::{Device, Tensor};
use prunekit_graph::{Executor, Graph, GraphBuilder, Mode, SparseOptions, SparsePlan};
use rand::Rng;

/// A random 0/1 mask of `shape` keeping about `keep` of the elements.
fn mask(shape: &[usize], keep: f64, seed: u64) -> Tensor {
    let mut r = prunekit_graph::graph::rng(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| r.random_bool(keep) as u8 as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape")
}

/// A 2:4 mask along axis 1 (groups of 4 consecutive inputs at each kernel position).
fn mask_2_4(shape: &[usize]) -> Tensor {
    let rest: usize = shape[2..].iter().product();
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let c = (i / rest) % shape[1];
            ((c + i / (rest * shape[1])) % 4 < 2) as u8 as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape")
}

fn conv_net() -> Graph {
    let mut b = GraphBuilder::new("sparse-cnn", 1);
    let x = b.input("x", &[3, 12, 12]);
    let h = b.named("c1").conv2d(&x, 16, 3, 1, 1).unwrap();
    let h = b.relu(&h).unwrap();
    let h = b.named("c2").conv2d(&h, 16, 3, 2, 1).unwrap();
    let h = b.named("pw").conv2d(&h, 8, 1, 1, 0).unwrap();
    let h = b
        .named("grouped")
        .conv2d_with(&h, 8, 3, 1, 1, 2, true)
        .unwrap();
    let h = b.flatten(&h).unwrap();
    let h = b.named("fc1").linear(&h, 64).unwrap();
    let h = b.relu(&h).unwrap();
    let y = b.named("fc2").linear(&h, 10).unwrap();
    b.finish(&[&y]).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn a_pruned_cnn_runs_sparse_with_the_dense_outputs() {
    let mut g = conv_net();
    for (node, keep) in [
        ("c1", 0.3),
        ("c2", 0.1),
        ("grouped", 0.2),
        ("fc1", 0.05),
        ("fc2", 0.8),
    ] {
        let shape = g.node(node).unwrap().params["weight"]
            .tensor()
            .dims()
            .to_vec();
        g.set_mask(node, "weight", mask(&shape, keep, 3)).unwrap();
    }
    let shape = g.node("pw").unwrap().params["weight"]
        .tensor()
        .dims()
        .to_vec();
    g.set_mask("pw", "weight", mask_2_4(&shape)).unwrap();
    let plan = SparsePlan::build(
        &g,
        SparseOptions {
            batch: 4,
            min_sparsity: 0.5,
            calibrate: false,
            bitmask: false,
        },
    )
    .unwrap();
    // fc2 keeps 80% (below the threshold); the grouped convolution has no sparse kernel
    let mut chosen: Vec<&str> = plan.decisions.iter().map(|d| d.node.as_str()).collect();
    chosen.sort();
    assert_eq!(chosen, ["c1", "c2", "fc1", "pw"]);
    assert_eq!(plan.len(), 4);
    let pw = plan.decisions.iter().find(|d| d.node == "pw").unwrap();
    assert_eq!(pw.format, "2:4");
    assert!((pw.sparsity - 0.5).abs() < 1e-9);
    let plan = Arc::new(plan);
    for batch in [1, 3, 8] {
        let x = Tensor::randn(0f32, 1.0, (batch, 3, 12, 12), &Device::Cpu).unwrap();
        let dense = Executor::new(0).eval(&g, std::slice::from_ref(&x)).unwrap();
        let mut exec = Executor::new(0).with_sparse_plan(plan.clone());
        let sparse = exec.eval(&g, std::slice::from_ref(&x)).unwrap();
        assert!(max_diff(&dense[0], &sparse[0]) < 1e-4, "batch {batch}");
        // a pass with gradients ignores the plan and still tracks the weights
        let y = exec
            .run(&g, std::slice::from_ref(&x), Mode::EVAL_GRAD, None)
            .unwrap()
            .remove(0);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let w = g.node("fc1").unwrap().params["weight"].tensor();
        assert!(grads.get(w).is_some());
    }
}

#[test]
fn a_sequence_linear_runs_sparse_and_timing_decides() {
    let mut b = GraphBuilder::new("seq", 2);
    let x = b.input("x", &[7, 48]);
    let h = b.named("proj").linear(&x, 96).unwrap();
    let y = b.named("out").linear(&h, 48).unwrap();
    let mut g = b.finish(&[&y]).unwrap();
    g.set_mask("proj", "weight", mask(&[96, 48], 0.1, 4))
        .unwrap();
    // an unmasked weight with zeros in its values is a candidate too
    let w = g.node("out").unwrap().params["weight"].tensor().clone();
    let zeroed = (&w * mask(&[48, 96], 0.2, 5)).unwrap();
    g.node("out").unwrap().params["weight"]
        .value
        .set(&zeroed)
        .unwrap();
    let plan = SparsePlan::build(&g, SparseOptions::default()).unwrap();
    assert_eq!(plan.decisions.len(), 2);
    for d in &plan.decisions {
        assert!(d.dense_ms > 0.0 && d.sparse_ms > 0.0, "{d:?}");
        assert_eq!(d.sparse, d.sparse_ms < d.dense_ms);
        assert!(d.sparsity > 0.7);
    }
    let x = Tensor::randn(0f32, 1.0, (5, 7, 48), &Device::Cpu).unwrap();
    let dense = Executor::new(0).eval(&g, std::slice::from_ref(&x)).unwrap();
    let forced = SparsePlan::build(
        &g,
        SparseOptions {
            calibrate: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(forced.len(), 2);
    let sparse = Executor::new(0)
        .with_sparse_plan(Arc::new(forced))
        .eval(&g, std::slice::from_ref(&x))
        .unwrap();
    assert!(max_diff(&dense[0], &sparse[0]) < 1e-4);
    // the bitmask layout, at batch 1 (its AVX-512 kernel where the CPU has one) and 5
    let bitmask = Arc::new(
        SparsePlan::build(
            &g,
            SparseOptions {
                calibrate: false,
                bitmask: true,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    assert!(bitmask.decisions.iter().all(|d| d.format == "bitmask"));
    for batch in [1, 5] {
        let x = Tensor::randn(0f32, 1.0, (batch, 7, 48), &Device::Cpu).unwrap();
        let dense = Executor::new(0).eval(&g, std::slice::from_ref(&x)).unwrap();
        let sparse = Executor::new(0)
            .with_sparse_plan(bitmask.clone())
            .eval(&g, std::slice::from_ref(&x))
            .unwrap();
        assert!(max_diff(&dense[0], &sparse[0]) < 1e-4);
    }
    // f64 models have no sparse kernel: the plan is empty
    g.to_dtype(candle_core::DType::F64).unwrap();
    assert!(SparsePlan::build(&g, SparseOptions::default())
        .unwrap()
        .decisions
        .is_empty());
}
