//! The training hooks of the pruning criteria that follow training (they live here, beside the
//! trainer; the criteria in `prunekit_prune` know nothing of it): movement accumulates -w g over
//! `fit_with` steps, and the BatchNorm-scale penalty shrinks the scales.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use prunekit_data::Dataset;
use prunekit_graph::Graph;
use prunekit_prune::{
    prunable_weights, prune_unstructured, BnScale, Criterion, Movement, Target, UnstructuredScope,
};
use prunekit_train::{fit_with, LrSchedule, OptimizerKind, StepCx, StepHook, TrainConfig};

fn vec_of(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// A small real dataset: the digits training split.
fn digits_train() -> Dataset {
    prunekit_data::digits(0, 0.2).unwrap().0.train
}

/// Records -w_t (w_t - w_{t+1}) / lr per weight over plain-SGD steps (the gradient recovered from
/// the update).
struct Recorder {
    lr: f64,
    before: HashMap<(String, String), Tensor>,
    sum: HashMap<(String, String), Vec<f64>>,
}

impl StepHook for Recorder {
    fn after_backward(
        &mut self,
        g: &Graph,
        _grads: &candle_core::backprop::GradStore,
        _cx: &StepCx,
    ) -> prunekit_train::Result<()> {
        for (n, k) in prunable_weights(g) {
            let t = g.node(&n)?.params[&k].tensor().copy()?;
            self.before.insert((n, k), t);
        }
        Ok(())
    }
    fn after_step(&mut self, g: &mut Graph, _cx: &StepCx) -> prunekit_train::Result<()> {
        for (key, before) in &self.before {
            let w0 = vec_of(before);
            let w1 = vec_of(g.node(&key.0)?.params[&key.1].tensor());
            let acc = self
                .sum
                .entry(key.clone())
                .or_insert_with(|| vec![0.0; w0.len()]);
            for i in 0..w0.len() {
                acc[i] += -w0[i] * (w0[i] - w1[i]) / self.lr;
            }
        }
        Ok(())
    }
}

fn plain_sgd(epochs: usize, batch: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: batch,
        lr,
        optimizer: OptimizerKind::sgd(0.0, 0.0),
        schedule: LrSchedule::Constant,
        augment: Default::default(),
        seed: 0,
        progress: false,
        label: "test".into(),
    }
}

#[test]
fn movement_accumulates_minus_w_g_over_fit_with_steps() {
    let train = digits_train();
    let train = train.subset(&(0..128).collect::<Vec<_>>());
    let mut g = prunekit_zoo::build("digits-mlp", 0).unwrap();
    let lr = 0.1;
    let mut movement = Movement::new();
    let mut rec = Recorder {
        lr,
        before: HashMap::new(),
        sum: HashMap::new(),
    };
    fit_with(
        &mut g,
        &train,
        None,
        &plain_sgd(1, 32, lr),
        &mut [&mut movement, &mut rec],
    )
    .unwrap();
    assert_eq!(movement.steps(), 4);
    for (key, want) in &rec.sum {
        let got = vec_of(&movement.importance(&g, &key.0, &key.1).unwrap().unwrap());
        let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum();
        let den: f64 = want.iter().map(|b| b * b).sum();
        assert!(den > 0.0);
        assert!(
            (num / den).sqrt() < 1e-3,
            "{key:?}: rel. error {}",
            (num / den).sqrt()
        );
    }
    // scores prune like any criterion
    let r = prune_unstructured(
        &mut g,
        &movement,
        Target::Ratio(0.5),
        UnstructuredScope::Layer,
    )
    .unwrap();
    assert!(!r.is_empty() && r.iter().all(|l| l.zeros == l.total / 2));
}

fn gamma_sum(g: &Graph) -> f64 {
    g.nodes
        .iter()
        .filter(|n| matches!(n.op, prunekit_graph::Op::BatchNorm(_)))
        .map(|n| {
            vec_of(n.params["weight"].tensor())
                .iter()
                .map(|v| v.abs())
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn bn_scale_penalty_shrinks_the_scales() {
    let train = digits_train();
    let train = train.subset(&(0..256).collect::<Vec<_>>());
    let run = |lambda: f64| {
        let mut g = prunekit_zoo::build("digits-cnn", 0).unwrap();
        let mut hook = BnScale::new(lambda).unwrap();
        let mut cfg = plain_sgd(1, 32, 0.05);
        cfg.optimizer = OptimizerKind::sgd(0.9, 0.0);
        fit_with(&mut g, &train, None, &cfg, &mut [&mut hook]).unwrap();
        g
    };
    let g = prunekit_zoo::build("digits-cnn", 0).unwrap();
    let penalty = BnScale::new(0.5)
        .unwrap()
        .penalty(&g)
        .unwrap()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    assert!((penalty - 0.5 * gamma_sum(&g)).abs() < 1e-4, "{penalty}");
    assert!(BnScale::new(0.0).unwrap().penalty(&g).unwrap().is_none());
    let (plain, sparse) = (gamma_sum(&run(0.0)), gamma_sum(&run(0.1)));
    assert!(
        sparse < plain - 1.0,
        "sum |gamma| with lambda 0.1: {sparse}, with 0: {plain}"
    );
}
