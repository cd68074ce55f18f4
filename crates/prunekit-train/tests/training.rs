//! The training loop learns, optimizers follow their update rules, and masks stay exactly zero.

use candle_core::{DType, Device, Tensor};
use prunekit_data::Dataset;
use prunekit_graph::{Executor, Graph, GraphBuilder, Mode};
use prunekit_train::{cross_entropy, evaluate, fit, LrSchedule, OptimizerKind, TrainConfig};

/// Three noisy clusters in 4-D (seeded): learnable, synthetic, instant.
fn blobs(n: usize, seed: u64) -> Dataset {
    use rand::Rng;
    let mut rng = prunekit_graph::graph::rng(seed);
    let noise: Vec<f32> = (0..n * 4).map(|_| rng.random_range(-0.6..0.6)).collect();
    let mut x = Vec::with_capacity(n * 4);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = (i % 3) as u32;
        for d in 0..4 {
            let centre = if d as u32 == c { 2.0 } else { 0.0 };
            x.push(centre + noise[i * 4 + d]);
        }
        y.push(c);
    }
    Dataset::new("blobs", x, y, vec![4], 3).unwrap()
}

fn mlp(seed: u64) -> Graph {
    let mut b = GraphBuilder::new("mlp", seed);
    let x = b.input("x", &[4]);
    let h = b.linear(&x, 16).unwrap();
    let h = b.batch_norm(&h).unwrap();
    let h = b.relu(&h).unwrap();
    let y = b.linear(&h, 3).unwrap();
    b.finish(&[&y]).unwrap()
}

fn cfg(opt: OptimizerKind, lr: f64) -> TrainConfig {
    let mut c = TrainConfig::sgd_cosine(5, 16, lr, 300);
    c.optimizer = opt;
    c.progress = false;
    c
}

#[test]
fn sgd_and_adamw_learn_the_blobs() {
    let data = blobs(300, 1);
    for (opt, lr) in [
        (OptimizerKind::sgd(0.9, 5e-4), 0.05),
        (OptimizerKind::adamw(1e-2), 0.01),
    ] {
        let mut g = mlp(2);
        let before = evaluate(&g, &data, 64).unwrap();
        let logs = fit(&mut g, &data, Some(&data), &cfg(opt.clone(), lr)).unwrap();
        let after = evaluate(&g, &data, 64).unwrap();
        assert_eq!(logs.len(), 5);
        assert!(
            after.loss < before.loss * 0.5,
            "{opt:?}: loss {} -> {}",
            before.loss,
            after.loss
        );
        assert!(
            after.accuracy().unwrap() > 0.95,
            "{opt:?}: accuracy {}",
            after.accuracy().unwrap()
        );
    }
}

#[test]
fn masked_weights_stay_exactly_zero() {
    let data = blobs(120, 3);
    for opt in [OptimizerKind::sgd(0.9, 1e-3), OptimizerKind::adamw(1e-2)] {
        let mut g = mlp(4);
        let w = g.node("linear1").unwrap().params["weight"].tensor().clone();
        let mask = w
            .abs()
            .unwrap()
            .ge(0.2)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        g.set_mask("linear1", "weight", mask.clone()).unwrap();
        fit(&mut g, &data, None, &cfg(opt, 0.05)).unwrap();
        let w = g.node("linear1").unwrap().params["weight"].tensor().clone();
        let leaked = (w * (1.0 - &mask).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(leaked, 0.0, "a masked weight moved");
        let kept_moved = g.node("linear1").unwrap().params["weight"]
            .tensor()
            .ne(0.0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(kept_moved > 0.0);
    }
}

#[test]
fn sgd_momentum_follows_pytorch_rule() {
    // one parameter vector, loss = sum(w * c): the gradient is c at every step
    let g = {
        let mut b = GraphBuilder::new("lin", 0);
        let x = b.input("x", &[2]);
        let y = b
            .node(
                prunekit_graph::ops::Linear {
                    in_features: 2,
                    out_features: 1,
                    bias: false,
                },
                &[&x],
            )
            .unwrap();
        b.finish(&[&y]).unwrap()
    };
    let w0 = g.node("linear1").unwrap().params["weight"]
        .tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (lr, mom, wd) = (0.1f64, 0.9f64, 0.01f64);
    let mut opt = OptimizerKind::sgd(mom, wd).build(lr);
    let x = Tensor::new(&[[1.0f32, 2.0]], &Device::Cpu).unwrap();
    let mut w: Vec<f64> = w0.iter().map(|&v| v as f64).collect();
    let mut buf = [0f64; 2];
    for step in 0..3 {
        let out = Executor::new(0)
            .run(&g, std::slice::from_ref(&x), Mode::TRAIN, None)
            .unwrap()
            .remove(0);
        let grads = out.sum_all().unwrap().backward().unwrap();
        opt.step(&g, &grads).unwrap();
        for i in 0..2 {
            let d = [1.0, 2.0][i] + wd * w[i];
            buf[i] = if step == 0 { d } else { mom * buf[i] + d };
            w[i] -= lr * buf[i];
        }
    }
    let got = g.node("linear1").unwrap().params["weight"]
        .tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (a, b) in got.iter().zip(&w) {
        assert!((*a as f64 - b).abs() < 1e-5, "{got:?} vs {w:?}");
    }
}

#[test]
fn lr_schedule_reaches_the_optimizer_and_bad_config_is_an_error() {
    let data = blobs(64, 5);
    let mut g = mlp(6);
    let mut c = cfg(OptimizerKind::sgd(0.0, 0.0), 0.1);
    c.schedule = LrSchedule::Step {
        step_size: 4,
        gamma: 0.5,
    };
    let logs = fit(&mut g, &data, None, &c).unwrap();
    assert!(logs.last().unwrap().lr < 0.1);
    c.batch_size = 0;
    assert!(fit(&mut g, &data, None, &c).is_err());
    let wrong = Dataset::new("wrong", vec![0.0; 10], vec![0, 1], vec![5], 2).unwrap();
    let err = fit(
        &mut g,
        &wrong,
        None,
        &cfg(OptimizerKind::sgd(0.0, 0.0), 0.1),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("shape"), "{err}");
    // the loss is finite on the data
    let b = data.batch(&[0, 1, 2], &Device::Cpu).unwrap();
    let (x, y) = (b.inputs[0].clone(), b.target);
    let out = Executor::new(0).eval(&g, &[x]).unwrap().remove(0);
    assert!(cross_entropy(&out, &y)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .is_finite());
}
