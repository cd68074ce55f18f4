//! Importance criteria: the formulas against hand or finite-difference computations, their use in
//! unstructured, row-wise, N:M and structured pruning (structured results verified against
//! masking), the training hooks (movement, bn-scale) and the error cases.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use prunekit_data::Dataset;
use prunekit_graph::channels::SliceKey;
use prunekit_graph::ops::Linear;
use prunekit_graph::{Executor, Graph, GraphBuilder, Hooks, Mode};
use prunekit_prune::{
    criterion_by_name, prunable_weights, prune_nm, prune_structured, prune_unstructured,
    random_inputs, verify, BnScale, Calibration, Criterion, Fisher, Fpgm, Lamp, Movement, Norm,
    RandomScores, Snip, StructuredConfig, Target, Taylor, UnstructuredScope, Wanda, CRITERIA,
    DATA_CRITERIA,
};
use prunekit_train::{
    cross_entropy, fit_with, LrSchedule, OptimizerKind, StepCx, StepHook, TrainConfig,
};
use rand::{Rng, SeedableRng};

const TOL: f64 = 1e-5;

fn vec_of(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn weight(g: &Graph, node: &str, param: &str) -> Tensor {
    g.node(node).unwrap().params[param].tensor().clone()
}

fn set(g: &Graph, node: &str, param: &str, values: Vec<f64>) {
    let p = &g.node(node).unwrap().params[param];
    let t = Tensor::from_vec(values, p.tensor().dims(), &Device::Cpu)
        .unwrap()
        .to_dtype(p.tensor().dtype())
        .unwrap();
    p.value.set(&t).unwrap();
}

fn normal(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random_range(1e-9..1.0), rng.random());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

/// A small real dataset: the digits training split.
fn digits_train() -> Dataset {
    prunekit_data::digits(0, 0.2).unwrap().0.train
}

fn digits_calib(batches: usize, size: usize) -> Calibration {
    Calibration::from_dataset(&digits_train(), batches, size, 0, &Device::Cpu).unwrap()
}

fn tiny_mlp_f64() -> Graph {
    let mut b = GraphBuilder::new("tiny", 1);
    let x = b.input("x", &[4]);
    let h = b.linear(&x, 5).unwrap();
    let h = b.tanh(&h).unwrap();
    let y = b.linear(&h, 3).unwrap();
    let mut g = b.finish(&[&y]).unwrap();
    g.to_dtype(DType::F64).unwrap();
    g
}

fn f64_batches(batches: usize, size: usize, features: usize, classes: u32) -> Calibration {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let out = (0..batches)
        .map(|_| {
            let x = Tensor::from_vec(
                normal(&mut rng, size * features),
                (size, features),
                &Device::Cpu,
            )
            .unwrap();
            let y: Vec<u32> = (0..size).map(|_| rng.random_range(0..classes)).collect();
            (x, Tensor::new(y, &Device::Cpu).unwrap())
        })
        .collect();
    Calibration::new(out).unwrap()
}

/// Sum over the calibration batches of the eval-mode cross-entropy.
fn total_loss(g: &Graph, calib: &Calibration) -> f64 {
    let mut exec = Executor::new(0);
    calib
        .batches
        .iter()
        .map(|(x, y)| {
            let logits = exec.eval(g, std::slice::from_ref(x)).unwrap().remove(0);
            cross_entropy(&logits, y)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .sum()
}

#[test]
fn taylor_is_w_times_the_finite_difference_gradient() {
    let g = tiny_mlp_f64();
    let calib = f64_batches(2, 6, 4, 3);
    let taylor = Taylor::new(&g, &calib).unwrap();
    assert_eq!(taylor.reduce(-2.5), 2.5);
    for node in ["linear1", "linear2"] {
        let imp = vec_of(&taylor.importance(&g, node, "weight").unwrap().unwrap());
        let w = vec_of(&weight(&g, node, "weight"));
        let h = 1e-5;
        for i in 0..w.len() {
            let mut plus = w.clone();
            plus[i] += h;
            set(&g, node, "weight", plus);
            let lp = total_loss(&g, &calib);
            let mut minus = w.clone();
            minus[i] -= h;
            set(&g, node, "weight", minus);
            let lm = total_loss(&g, &calib);
            set(&g, node, "weight", w.clone());
            let want = w[i] * (lp - lm) / (2.0 * h);
            assert!(
                (imp[i] - want).abs() <= 1e-8 * want.abs().max(1.0),
                "{node}[{i}]: taylor {} vs w * fd {want}",
                imp[i]
            );
        }
        // biases are not scored
        assert!(taylor.importance(&g, node, "bias").unwrap().is_none());
    }
}

/// dL/dW of mean cross-entropy for a bias-free linear layer on one sample: (softmax(Wx) - e_y) x^T.
fn linear_ce_grad(w: &[[f64; 2]; 2], x: [f64; 2], y: usize) -> [[f64; 2]; 2] {
    let z: Vec<f64> = (0..2).map(|o| w[o][0] * x[0] + w[o][1] * x[1]).collect();
    let m = z[0].max(z[1]);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s = e[0] + e[1];
    let mut g = [[0.0; 2]; 2];
    for o in 0..2 {
        let d = e[o] / s - if o == y { 1.0 } else { 0.0 };
        for i in 0..2 {
            g[o][i] = d * x[i];
        }
    }
    g
}

#[test]
fn fisher_and_snip_match_hand_computation() {
    let mut b = GraphBuilder::new("lin", 0);
    let x = b.input("x", &[2]);
    let y = b
        .node(
            Linear {
                in_features: 2,
                out_features: 2,
                bias: false,
            },
            &[&x],
        )
        .unwrap();
    let mut g = b.finish(&[&y]).unwrap();
    g.to_dtype(DType::F64).unwrap();
    let w = [[0.5, -1.0], [2.0, 0.25]];
    set(
        &g,
        "linear1",
        "weight",
        w.iter().flatten().copied().collect(),
    );
    let samples = [([1.0, 2.0], 0usize), ([-1.0, 0.5], 1usize)];
    let calib = Calibration::new(
        samples
            .iter()
            .map(|(x, y)| {
                (
                    Tensor::new(&[*x], &Device::Cpu).unwrap(),
                    Tensor::new(&[*y as u32], &Device::Cpu).unwrap(),
                )
            })
            .collect(),
    )
    .unwrap();
    let grads: Vec<[[f64; 2]; 2]> = samples
        .iter()
        .map(|(x, y)| linear_ce_grad(&w, *x, *y))
        .collect();

    let fisher = vec_of(
        &Fisher::new(&g, &calib)
            .unwrap()
            .importance(&g, "linear1", "weight")
            .unwrap()
            .unwrap(),
    );
    let snip = vec_of(
        &Snip::new(&g, &calib)
            .unwrap()
            .importance(&g, "linear1", "weight")
            .unwrap()
            .unwrap(),
    );
    let total: f64 = (0..4)
        .map(|k| (w[k / 2][k % 2] * grads[0][k / 2][k % 2]).abs())
        .sum();
    for k in 0..4 {
        let (o, i) = (k / 2, k % 2);
        let mean_sq = (grads[0][o][i].powi(2) + grads[1][o][i].powi(2)) / 2.0;
        let want_f = 0.5 * w[o][i] * w[o][i] * mean_sq;
        assert!(
            (fisher[k] - want_f).abs() < 1e-12,
            "fisher[{k}] {} vs {want_f}",
            fisher[k]
        );
        let want_s = (w[o][i] * grads[0][o][i]).abs() / total;
        assert!(
            (snip[k] - want_s).abs() < 1e-12,
            "snip[{k}] {} vs {want_s}",
            snip[k]
        );
    }
    assert!((snip.iter().sum::<f64>() - 1.0).abs() < 1e-12);
}

#[test]
fn snip_sums_to_one_over_the_model() {
    let g = prunekit_zoo::build("digits-cnn", 0).unwrap();
    let snip = Snip::new(&g, &digits_calib(1, 16)).unwrap();
    let total: f64 = g
        .params()
        .filter_map(|(n, k, _)| snip.importance(&g, &n.name, k).unwrap())
        .map(|t| vec_of(&t).iter().sum::<f64>())
        .sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
}

#[test]
fn lamp_matches_the_formula_on_a_layer() {
    let g = tiny_mlp_f64();
    let w = vec_of(&weight(&g, "linear1", "weight"));
    let s = vec_of(&Lamp.importance(&g, "linear1", "weight").unwrap().unwrap());
    for u in 0..w.len() {
        // every v at or after u in ascending order of w^2 (ties by position)
        let after = |v: usize| {
            let (a, b) = (w[v] * w[v], w[u] * w[u]);
            a > b || (a == b && v >= u)
        };
        let tail: f64 = (0..w.len())
            .filter(|&v| after(v))
            .map(|v| w[v] * w[v])
            .sum();
        let want = w[u] * w[u] / tail;
        assert!((s[u] - want).abs() < 1e-14, "{u}: {} vs {want}", s[u]);
    }
}

#[test]
fn fpgm_ranks_a_duplicated_filter_lowest() {
    let mut b = GraphBuilder::new("conv", 2);
    let x = b.input("x", &[3, 6, 6]);
    let h = b.conv2d(&x, 6, 3, 1, 1).unwrap();
    let h = b.relu(&h).unwrap();
    let h = b.global_avg_pool(&h).unwrap();
    let y = b.linear(&h, 2).unwrap();
    let g = b.finish(&[&y]).unwrap();
    // filters 0..3 spread out; 4 and 5 both sit at their mean (the geometric centre)
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let row = 27;
    let mut w = normal(&mut rng, 4 * row);
    let centre: Vec<f64> = (0..row)
        .map(|i| (0..4).map(|f| w[f * row + i]).sum::<f64>() / 4.0)
        .collect();
    w.extend_from_slice(&centre);
    w.extend_from_slice(&centre);
    set(&g, "conv2d1", "weight", w);
    let scores = Fpgm::filter_scores(&g, "conv2d1", "weight")
        .unwrap()
        .unwrap();
    let min_other = scores[..4].iter().copied().fold(f64::MAX, f64::min);
    assert!(scores[4] < min_other && scores[5] < min_other, "{scores:?}");
    // the spread importance sums back to each filter's score
    let imp = Fpgm.importance(&g, "conv2d1", "weight").unwrap().unwrap();
    let sums = imp.reshape((6, ())).unwrap().sum(1).unwrap();
    for (a, b) in vec_of(&sums).iter().zip(&scores) {
        assert!((a - b).abs() < 1e-9);
    }
    // bias, the next layer's input columns: not filters of their own
    assert!(Fpgm.importance(&g, "conv2d1", "bias").unwrap().is_none());
    assert!(Fpgm
        .slice_importance(&g, "linear1", "weight", 1)
        .unwrap()
        .is_none());
    let mut pruned = g.clone();
    let mut cfg = StructuredConfig::new(0.2);
    cfg.normalize = prunekit_prune::Normalize::None;
    let report = prune_structured(&mut pruned, &cfg, &Fpgm).unwrap();
    let removed = report.removed();
    let key = SliceKey {
        node: "conv2d1".into(),
        param: "weight".into(),
        axis: 0,
    };
    let gone: Vec<usize> = removed[&key].iter().copied().collect();
    assert!(gone == vec![4] || gone == vec![5], "{gone:?}");
    check_verified(&g, &pruned, &report);
}

#[test]
fn wanda_keeps_the_largest_w_times_input_norm_per_row() {
    let mut b = GraphBuilder::new("wanda", 4);
    let x = b.input("x", &[4]);
    let h = b.linear(&x, 4).unwrap();
    let h = b.relu(&h).unwrap();
    let y = b.linear(&h, 2).unwrap();
    let g = b.finish(&[&y]).unwrap();
    // feature 0 is large, so its small weights matter more than the large ones of the others
    set(
        &g,
        "linear1",
        "weight",
        vec![
            0.1, 1.0, 0.9, 0.8, //
            -0.2, 0.5, -0.7, 0.6, //
            0.05, -0.3, 0.2, 0.4, //
            0.3, 0.1, 0.9, -1.0,
        ],
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let batches: Vec<(Tensor, Tensor)> = (0..2)
        .map(|_| {
            let mut v = normal(&mut rng, 8 * 4);
            for r in 0..8 {
                v[r * 4] *= 100.0;
            }
            let x = Tensor::from_vec(v, (8, 4), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            (x, Tensor::zeros(8, DType::U32, &Device::Cpu).unwrap())
        })
        .collect();
    let calib = Calibration::new(batches).unwrap();
    // expected: per layer, |W| * ||X_j|| from the inputs each layer sees (unpruned model)
    let mut exec = Executor::new(0);
    let mut sumsq: HashMap<&str, Vec<f64>> = HashMap::new();
    for (x, _) in &calib.batches {
        let mut hooks = Hooks::outputs_of(["relu1"]);
        exec.run(&g, std::slice::from_ref(x), Mode::EVAL, Some(&mut hooks))
            .unwrap();
        for (layer, t, f) in [
            ("linear1", x.clone(), 4usize),
            ("linear2", hooks.outputs["relu1"].clone(), 4),
        ] {
            let v = vec_of(&t);
            let acc = sumsq.entry(layer).or_insert_with(|| vec![0.0; f]);
            for (i, x) in v.iter().enumerate() {
                acc[i % f] += x * x;
            }
        }
    }
    let expect = |g: &Graph, layer: &str| -> Vec<f64> {
        let w = vec_of(&weight(g, layer, "weight"));
        let f = sumsq[layer].len();
        w.iter()
            .enumerate()
            .map(|(i, w)| w.abs() * sumsq[layer][i % f].sqrt())
            .collect()
    };
    let want = [
        ("linear1", expect(&g, "linear1")),
        ("linear2", expect(&g, "linear2")),
    ];
    let wanda = Wanda::new(&g, &calib).unwrap();
    for (layer, want) in &want {
        let got = vec_of(&wanda.importance(&g, layer, "weight").unwrap().unwrap());
        for (a, b) in got.iter().zip(want) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{layer}: {a} vs {b}"
            );
        }
    }
    let mut by_wanda = g.clone();
    prune_unstructured(
        &mut by_wanda,
        &wanda,
        Target::Ratio(0.5),
        UnstructuredScope::Row,
    )
    .unwrap();
    let mut by_magnitude = g.clone();
    prune_unstructured(
        &mut by_magnitude,
        &Norm::L1,
        Target::Ratio(0.5),
        UnstructuredScope::Row,
    )
    .unwrap();
    for (layer, want) in &want {
        let f = sumsq[*layer].len();
        let kept: Vec<bool> = vec_of(&weight(&by_wanda, layer, "weight"))
            .iter()
            .map(|v| *v != 0.0)
            .collect();
        for (r, row) in want.chunks(f).enumerate() {
            let mut order: Vec<usize> = (0..f).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            for (rank, &i) in order.iter().enumerate() {
                assert_eq!(
                    kept[r * f + i],
                    rank < f / 2,
                    "{layer} row {r}: {row:?} {kept:?}"
                );
            }
        }
    }
    // the first row: magnitude keeps 1.0 and 0.9, Wanda keeps 0.1 (x100 input) and 1.0
    let wr = vec_of(&weight(&by_wanda, "linear1", "weight"));
    let mr = vec_of(&weight(&by_magnitude, "linear1", "weight"));
    assert_eq!(&wr[..4], &[0.1f32 as f64, 1.0, 0.0, 0.0]);
    assert_eq!(&mr[..4], &[0.0, 1.0, 0.9f32 as f64, 0.0]);
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
    assert!(r.iter().all(|l| l.zeros == l.total / 2));
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

#[test]
fn bn_scale_drives_structured_pruning() {
    let g = prunekit_zoo::build("digits-cnn", 0).unwrap();
    // distinct |gamma| with mixed signs: channel c gets +-(1 + ((7c) mod 16)) / 10
    let gammas: Vec<f64> = (0..16)
        .map(|c| {
            let m = (1 + (7 * c) % 16) as f64 / 10.0;
            if c % 3 == 0 {
                -m
            } else {
                m
            }
        })
        .collect();
    set(&g, "batch_norm1", "weight", gammas.clone());
    let bn = BnScale::new(0.0).unwrap();
    assert!(bn.importance(&g, "conv2d1", "weight").unwrap().is_none());
    assert!(bn.importance(&g, "batch_norm1", "bias").unwrap().is_none());
    let mut pruned = g.clone();
    let report = prune_structured(&mut pruned, &StructuredConfig::new(0.5), &bn).unwrap();
    let mut order: Vec<usize> = (0..16).collect();
    order.sort_by(|&a, &b| gammas[a].abs().total_cmp(&gammas[b].abs()));
    let mut want: Vec<usize> = order[..8].to_vec();
    want.sort();
    let key = SliceKey {
        node: "conv2d1".into(),
        param: "weight".into(),
        axis: 0,
    };
    let gone: Vec<usize> = report.removed()[&key].iter().copied().collect();
    assert_eq!(gone, want);
    check_verified(&g, &pruned, &report);
    // unstructured: BatchNorm scales are not prunable weights
    let msg = prune_unstructured(
        &mut g.clone(),
        &bn,
        Target::Ratio(0.5),
        UnstructuredScope::Layer,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("bn-scale") && msg.contains("none of the prunable weights"),
        "{msg}"
    );
}

fn check_verified(g: &Graph, pruned: &Graph, report: &prunekit_prune::StructuredReport) {
    pruned.validate().unwrap();
    let inputs = vec![
        random_inputs(g, 3, 1).unwrap(),
        random_inputs(g, 2, 2).unwrap(),
    ];
    let v = verify(g, pruned, &report.removed(), &inputs).unwrap();
    assert!(
        v.max_rel_error <= TOL,
        "{}: relative error {}",
        report.criterion,
        v.max_rel_error
    );
}

#[test]
fn every_criterion_prunes_structured_and_unstructured() {
    let g = prunekit_zoo::build("digits-cnn", 0).unwrap();
    let calib = digits_calib(2, 16);
    for name in CRITERIA {
        let crit = criterion_by_name(name, &g, Some(&calib), 0).unwrap();
        assert_eq!(crit.name(), *name);
        let mut pruned = g.clone();
        let report = prune_structured(&mut pruned, &StructuredConfig::new(0.5), crit.as_ref())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.criterion, *name);
        assert!(
            pruned.param_count() < g.param_count(),
            "{name} removed nothing"
        );
        check_verified(&g, &pruned, &report);

        let mut masked = g.clone();
        let r = prune_unstructured(
            &mut masked,
            crit.as_ref(),
            Target::Ratio(0.5),
            UnstructuredScope::Layer,
        );
        if *name == "bn-scale" {
            assert!(r.is_err());
            continue;
        }
        let r = r.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.len(), prunable_weights(&g).len(), "{name}");
        for l in &r {
            assert_eq!(
                l.zeros,
                (l.total as f64 * 0.5).round() as usize,
                "{name} {}",
                l.node
            );
        }
    }
}

#[test]
fn data_criteria_follow_the_model_through_steps() {
    // two rounds: scores are recomputed on the pruned model between them
    let g = prunekit_zoo::build("digits-cnn", 0).unwrap();
    let calib = digits_calib(2, 16);
    for name in ["taylor", "fisher", "snip", "wanda"] {
        let crit = criterion_by_name(name, &g, Some(&calib), 0).unwrap();
        let mut pruned = g.clone();
        let mut cfg = StructuredConfig::new(0.5);
        cfg.steps = 2;
        let report = prune_structured(&mut pruned, &cfg, crit.as_ref())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check_verified(&g, &pruned, &report);
        // and after structured removal, importance has the new shapes
        let w = weight(&pruned, "conv2d2", "weight");
        let imp = crit
            .importance(&pruned, "conv2d2", "weight")
            .unwrap()
            .unwrap();
        assert_eq!(imp.dims(), w.dims(), "{name}");
    }
    // movement scores from before a structural change are refused, not misapplied
    let movement = Movement::from_calibration(&g, &calib).unwrap();
    let mut pruned = g.clone();
    let mut cfg = StructuredConfig::new(0.5);
    cfg.steps = 2;
    let msg = prune_structured(&mut pruned, &cfg, &movement)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("movement") && msg.contains("shape"), "{msg}");
}

#[test]
fn taylor_scores_follow_masks() {
    // after masking, prepare recomputes: masked weights score 0
    let mut g = prunekit_zoo::build("digits-mlp", 0).unwrap();
    let taylor = Taylor::new(&g, &digits_calib(2, 16)).unwrap();
    prune_unstructured(
        &mut g,
        &taylor,
        Target::Ratio(0.5),
        UnstructuredScope::Global,
    )
    .unwrap();
    taylor.prepare(&g).unwrap();
    for (n, k) in prunable_weights(&g) {
        let imp = vec_of(&taylor.importance(&g, &n, &k).unwrap().unwrap());
        let w = vec_of(&weight(&g, &n, &k));
        assert!(imp.iter().zip(&w).all(|(i, w)| *w != 0.0 || *i == 0.0));
    }
    // a second round keeps the old masks and reaches the new ratio
    let r = prune_unstructured(
        &mut g,
        &taylor,
        Target::Ratio(0.75),
        UnstructuredScope::Global,
    )
    .unwrap();
    let (zeros, total) = r
        .iter()
        .fold((0, 0), |(z, t), l| (z + l.zeros, t + l.total));
    assert_eq!(zeros, (total as f64 * 0.75).round() as usize);
}

#[test]
fn data_criteria_on_other_architectures() {
    // grouped convolutions (mobilenet), attention and token-level logits (llama-tiny), recurrent
    // input projections (lstm-classifier)
    for name in ["mobilenet", "llama-tiny", "lstm-classifier"] {
        let g = prunekit_zoo::build(name, 0).unwrap();
        let x = random_inputs(&g, 2, 3).unwrap().remove(0);
        let out = Executor::new(0)
            .eval(&g, std::slice::from_ref(&x))
            .unwrap()
            .remove(0);
        let classes = *out.dims().last().unwrap() as u32;
        let label_dims = &out.dims()[..out.rank() - 1];
        let n: usize = label_dims.iter().product();
        let y: Vec<u32> = (0..n as u32).map(|i| i % classes).collect();
        let y = Tensor::from_vec(y, label_dims, &Device::Cpu).unwrap();
        let calib = Calibration::new(vec![(x, y)]).unwrap();
        for crit in ["taylor", "wanda"] {
            let c = criterion_by_name(crit, &g, Some(&calib), 0).unwrap();
            let mut m = g.clone();
            let r = prune_unstructured(
                &mut m,
                c.as_ref(),
                Target::Ratio(0.5),
                UnstructuredScope::Row,
            )
            .unwrap_or_else(|e| panic!("{name} {crit}: {e}"));
            assert!(!r.is_empty());
        }
    }
}

#[test]
fn nm_gives_exactly_n_nonzeros_per_group() {
    let calib = digits_calib(1, 16);
    for (n, m, crit) in [(2usize, 4usize, "l1"), (4, 8, "taylor"), (1, 4, "random")] {
        let mut g = prunekit_zoo::build("digits-mlp", 0).unwrap();
        let c = criterion_by_name(crit, &g, Some(&calib), 0).unwrap();
        let before: HashMap<String, Vec<f64>> = prunable_weights(&g)
            .into_iter()
            .map(|(node, k)| (node.clone(), vec_of(&weight(&g, &node, &k))))
            .collect();
        prune_nm(&mut g, c.as_ref(), n, m, false).unwrap();
        for (node, k) in prunable_weights(&g) {
            let w = weight(&g, &node, &k);
            let (rows, cols) = w.dims2().unwrap();
            let v = vec_of(&w);
            for r in 0..rows {
                for start in (0..cols).step_by(m) {
                    let group = &v[r * cols + start..r * cols + start + m];
                    let nz = group.iter().filter(|x| **x != 0.0).count();
                    assert_eq!(nz, n, "{crit} {n}:{m} {node} row {r} at {start}");
                }
            }
            if crit == "l1" {
                // kept ones are the largest |w| of their group
                let b = &before[&node];
                for start in (0..v.len()).step_by(m) {
                    let min_kept = (start..start + m)
                        .filter(|&i| v[i] != 0.0)
                        .map(|i| b[i].abs())
                        .fold(f64::MAX, f64::min);
                    let max_gone = (start..start + m)
                        .filter(|&i| v[i] == 0.0)
                        .map(|i| b[i].abs())
                        .fold(0.0, f64::max);
                    assert!(max_gone <= min_kept);
                }
            }
        }
    }
    // convolution kernels: groups run along the input channels at every kernel position; a
    // first convolution over 1 channel stays dense (listed), or is an error when strict
    let mut g = prunekit_zoo::build("digits-cnn", 0).unwrap();
    let msg = prune_nm(&mut g.clone(), &Norm::L1, 2, 4, true)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("conv2d1") && msg.contains("input size 1") && msg.contains("M = 4"),
        "{msg}"
    );
    let r = prune_nm(&mut g, &Norm::L1, 2, 4, false).unwrap();
    assert_eq!(r.left_out.len(), 1);
    assert_eq!(
        (r.left_out[0].node.as_str(), r.left_out[0].param.as_str()),
        ("conv2d1", "weight")
    );
    assert!(g.node("conv2d1").unwrap().params["weight"].mask.is_none());
    assert_eq!(r.len(), prunable_weights(&g).len() - 1);
    assert!(r.iter().all(|l| 2 * l.zeros == l.total));
}

#[test]
fn nm_on_convolution_kernels() {
    let mut b = GraphBuilder::new("convs", 0);
    let x = b.input("x", &[8, 5, 5]);
    let h = b.conv2d(&x, 8, 3, 1, 1).unwrap();
    let h = b.relu(&h).unwrap();
    let h = b.flatten(&h).unwrap();
    let y = b.linear(&h, 4).unwrap();
    let mut g = b.finish(&[&y]).unwrap();
    prune_nm(&mut g, &Norm::L1, 2, 4, false).unwrap();
    let w = vec_of(&weight(&g, "conv2d1", "weight")); // [8, 8, 3, 3]
    for o in 0..8 {
        for start in [0, 4] {
            for pos in 0..9 {
                let nz = (start..start + 4)
                    .filter(|&i| w[(o * 8 + i) * 9 + pos] != 0.0)
                    .count();
                assert_eq!(nz, 2);
            }
        }
    }
}

#[test]
fn random_is_reproducible_by_seed() {
    let g = prunekit_zoo::build("digits-cnn", 0).unwrap();
    let masks = |seed: u64| {
        let mut m = g.clone();
        prune_unstructured(
            &mut m,
            &RandomScores::new(seed),
            Target::Ratio(0.5),
            UnstructuredScope::Global,
        )
        .unwrap();
        vec_of(&weight(&m, "linear1", "weight"))
    };
    assert_eq!(masks(3), masks(3));
    assert_ne!(masks(3), masks(4));
    let structured = |seed: u64| {
        let mut m = g.clone();
        let r = prune_structured(
            &mut m,
            &StructuredConfig::new(0.5),
            &RandomScores::new(seed),
        )
        .unwrap();
        r.removed()
    };
    assert_eq!(structured(3), structured(3));
    assert_ne!(structured(3), structured(4));
}

#[test]
fn bad_inputs_are_errors() {
    let g = prunekit_zoo::build("digits-cnn", 0).unwrap();
    let msg = criterion_by_name("hessian", &g, None, 0)
        .err()
        .unwrap()
        .to_string();
    for known in CRITERIA {
        assert!(msg.contains(known), "{msg}");
    }
    for name in DATA_CRITERIA {
        let msg = criterion_by_name(name, &g, None, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains(&format!("`{name}`")) && msg.contains("needs calibration data"),
            "{msg}"
        );
    }
    let train = digits_train();
    let dev = Device::Cpu;
    assert!(Calibration::from_dataset(&train, 0, 8, 0, &dev).is_err());
    assert!(Calibration::from_dataset(&train, 2, 0, 0, &dev).is_err());
    let msg = Calibration::from_dataset(&train, 1000, 1000, 0, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("1000000") && msg.contains(&train.len().to_string()),
        "{msg}"
    );
    assert!(Calibration::new(Vec::new()).is_err());
    let x = Tensor::zeros((4, 1, 8, 8), DType::F32, &dev).unwrap();
    assert!(Calibration::new(vec![(
        x.clone(),
        Tensor::zeros(3, DType::U32, &dev).unwrap()
    )])
    .is_err());
    // labels outside the model's classes
    let bad = Calibration::new(vec![(
        x.clone(),
        Tensor::new(&[0u32, 1, 2, 10], &dev).unwrap(),
    )])
    .unwrap();
    let msg = Taylor::new(&g, &bad).unwrap_err().to_string();
    assert!(
        msg.contains("label 10") && msg.contains("10 outputs"),
        "{msg}"
    );
    // inputs of the wrong shape
    let wrong = Calibration::new(vec![(
        Tensor::zeros((4, 1, 6, 6), DType::F32, &dev).unwrap(),
        Tensor::zeros(4, DType::U32, &dev).unwrap(),
    )])
    .unwrap();
    assert!(Wanda::new(&g, &wrong).is_err());
    // batches are the same ones for a seed and differ across seeds
    let a = Calibration::from_dataset(&train, 2, 4, 1, &dev).unwrap();
    let b = Calibration::from_dataset(&train, 2, 4, 1, &dev).unwrap();
    let c = Calibration::from_dataset(&train, 2, 4, 2, &dev).unwrap();
    assert_eq!(vec_of(&a.batches[1].0), vec_of(&b.batches[1].0));
    assert_ne!(vec_of(&a.batches[0].0), vec_of(&c.batches[0].0));
    assert_eq!(a.samples(), 8);
    // targets
    let mut m = g.clone();
    assert!(prune_unstructured(
        &mut m,
        &Norm::L1,
        Target::Ratio(1.0),
        UnstructuredScope::Row
    )
    .is_err());
    assert!(prune_unstructured(
        &mut m,
        &Norm::L1,
        Target::Threshold(f64::NAN),
        UnstructuredScope::Layer
    )
    .is_err());
    assert!(BnScale::new(-0.1).is_err());
    // movement without steps
    let msg = prune_unstructured(
        &mut m,
        &Movement::new(),
        Target::Ratio(0.5),
        UnstructuredScope::Layer,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("movement") && msg.contains("fit_with"),
        "{msg}"
    );
}
