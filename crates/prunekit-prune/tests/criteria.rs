//! Importance criteria: the formulas against hand or finite-difference computations, their use in
//! unstructured, row-wise, N:M and structured pruning (structured results verified against
//! masking), groups a criterion cannot score, and the error cases. The training hooks (movement,
//! bn-scale) are tested beside the trainer (crates/prunekit-train/tests/criterion_hooks.rs).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use prunekit_data::Dataset;
use prunekit_graph::analyse;
use prunekit_graph::channels::SliceKey;
use prunekit_graph::loss::cross_entropy;
use prunekit_graph::ops::Linear;
use prunekit_graph::{Executor, Graph, GraphBuilder, Hooks, Mode};
use prunekit_prune::{
    criterion_by_name, prunable_weights, prune_nm, prune_structured, prune_unstructured,
    random_inputs, unit_scores, verify, Aggregate, BnScale, Calibration, Criterion, Fisher, Fpgm,
    Lamp, Movement, Norm, Normalize, RandomScores, Scope, Snip, StructuredConfig, Target, Taylor,
    UnstructuredScope, Wanda, CRITERIA, DATA_CRITERIA,
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

/// The eval-mode mean cross-entropy of one batch.
fn batch_loss(g: &Graph, x: &Tensor, y: &Tensor) -> f64 {
    let logits = Executor::new(0)
        .eval(g, std::slice::from_ref(x))
        .unwrap()
        .remove(0);
    cross_entropy(&logits, y)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

#[test]
fn taylor_matches_finite_differences_per_batch() {
    let g = tiny_mlp_f64();
    let calib = f64_batches(2, 6, 4, 3);
    let taylor = Taylor::new(&g, &calib).unwrap();
    // the mean over batches of the squared per-batch sums; a unit is scored as a whole
    assert_eq!(taylor.reduce_terms(&[3.0, -1.0]), 5.0);
    assert!(taylor.whole_unit());
    for node in ["linear1", "linear2"] {
        let imp = vec_of(&taylor.importance(&g, node, "weight").unwrap().unwrap());
        let rows = taylor.slice_terms(&g, node, "weight", 0).unwrap().unwrap();
        let w = vec_of(&weight(&g, node, "weight"));
        let cols = weight(&g, node, "weight").dims()[1];
        // w_i * dL_b / dw_i by central differences, per batch b
        let h = 1e-5;
        let wg: Vec<Vec<f64>> = calib
            .batches
            .iter()
            .map(|b| {
                let (x, y) = (&b.inputs[0], &b.target);
                (0..w.len())
                    .map(|i| {
                        let at = |d: f64| {
                            let mut v = w.clone();
                            v[i] += d;
                            set(&g, node, "weight", v);
                            batch_loss(&g, x, y)
                        };
                        let fd = (at(h) - at(-h)) / (2.0 * h);
                        set(&g, node, "weight", w.clone());
                        w[i] * fd
                    })
                    .collect()
            })
            .collect();
        for i in 0..w.len() {
            let want = (wg[0][i].powi(2) + wg[1][i].powi(2)) / 2.0;
            assert!(
                close(imp[i], want, 1e-8),
                "{node}[{i}]: taylor {} vs mean of (w fd_b)^2 {want}",
                imp[i]
            );
        }
        assert_eq!(rows.len(), 2, "one term per batch");
        for (b, sums) in rows.iter().enumerate() {
            for (o, s) in sums.iter().enumerate() {
                let want: f64 = wg[b][o * cols..(o + 1) * cols].iter().sum();
                assert!(
                    close(*s, want, 1e-8),
                    "{node} batch {b} row {o}: {s} vs {want}"
                );
            }
        }
        // biases are not scored
        assert!(taylor.importance(&g, node, "bias").unwrap().is_none());
    }
}

/// Bias-free x[2] -> linear1 (2 -> 2) -> linear2 (2 -> 2) in f64 with these weights: one
/// prunable group (linear1's outputs: the rows of W1 and the columns of W2). At x = (1, 1) the
/// hidden values are (1, 1) and the logits are equal, so the samples (x, 0) and (x, 1) have
/// exactly opposite gradients.
const W1: [[f64; 2]; 2] = [[0.6, 0.4], [0.3, 0.7]];
const W2: [[f64; 2]; 2] = [[2.0, -1.0], [-0.5, 1.5]];

fn two_linear() -> Graph {
    let mut b = GraphBuilder::new("two", 0);
    let x = b.input("x", &[2]);
    let lin = Linear {
        in_features: 2,
        out_features: 2,
        bias: false,
    };
    let h = b.node(lin.clone(), &[&x]).unwrap();
    let y = b.node(lin, &[&h]).unwrap();
    let mut g = b.finish(&[&y]).unwrap();
    g.to_dtype(DType::F64).unwrap();
    set(
        &g,
        "linear1",
        "weight",
        W1.iter().flatten().copied().collect(),
    );
    set(
        &g,
        "linear2",
        "weight",
        W2.iter().flatten().copied().collect(),
    );
    g
}

/// Hand gradients of one sample's cross-entropy on [`two_linear`]: (dL/dW1, dL/dW2), with
/// h = W1 x, z = W2 h, dz = softmax(z) - e_y, dL/dW2 = dz h^T, dL/dW1 = (W2^T dz) x^T.
type Grad2 = ([[f64; 2]; 2], [[f64; 2]; 2]);
fn two_linear_grads(x: [f64; 2], y: usize) -> Grad2 {
    let h: Vec<f64> = (0..2).map(|o| W1[o][0] * x[0] + W1[o][1] * x[1]).collect();
    let z: Vec<f64> = (0..2).map(|k| W2[k][0] * h[0] + W2[k][1] * h[1]).collect();
    let m = z[0].max(z[1]);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let dz: Vec<f64> = (0..2)
        .map(|k| e[k] / (e[0] + e[1]) - if k == y { 1.0 } else { 0.0 })
        .collect();
    let (mut g1, mut g2) = ([[0.0; 2]; 2], [[0.0; 2]; 2]);
    for o in 0..2 {
        let dh = W2[0][o] * dz[0] + W2[1][o] * dz[1];
        for i in 0..2 {
            g1[o][i] = dh * x[i];
            g2[o][i] = dz[o] * h[i];
        }
    }
    (g1, g2)
}

/// The mean of some samples' gradients.
fn mean_grad(gs: &[Grad2]) -> Grad2 {
    let n = gs.len() as f64;
    let mut m = ([[0.0; 2]; 2], [[0.0; 2]; 2]);
    for (a, b) in gs {
        for r in 0..2 {
            for c in 0..2 {
                m.0[r][c] += a[r][c] / n;
                m.1[r][c] += b[r][c] / n;
            }
        }
    }
    m
}

/// Calibration batches of (x, label) samples.
fn calib_of(batches: &[&[([f64; 2], u32)]]) -> Calibration {
    let dev = Device::Cpu;
    Calibration::new(
        batches
            .iter()
            .map(|b| {
                let xs: Vec<f64> = b.iter().flat_map(|s| s.0).collect();
                let ys: Vec<u32> = b.iter().map(|s| s.1).collect();
                (
                    Tensor::from_vec(xs, (b.len(), 2), &dev).unwrap(),
                    Tensor::new(ys, &dev).unwrap(),
                )
            })
            .collect(),
    )
    .unwrap()
}

/// sum over hidden unit o's weights (row o of W1, column o of W2) of f(w, g).
fn over_unit(o: usize, g: &Grad2, f: impl Fn(f64, f64) -> f64) -> f64 {
    (0..2)
        .map(|i| f(W1[o][i], g.0[o][i]) + f(W2[i][o], g.1[i][o]))
        .sum()
}

/// The analysis of [`two_linear`] and the hidden channel of each of its units.
fn two_linear_units(g: &Graph) -> (prunekit_graph::ChannelAnalysis, Vec<(usize, usize)>) {
    let a = analyse(g).unwrap();
    assert_eq!(a.groups.len(), 1);
    let key = SliceKey {
        node: "linear1".into(),
        param: "weight".into(),
        axis: 0,
    };
    let units = a.groups[0]
        .units
        .iter()
        .map(|&u| (u, a.units[u].slices[&key][0]))
        .collect();
    (a, units)
}

#[test]
fn taylor_averages_the_squared_group_sums_of_batches_of_opposite_sign() {
    let g = two_linear();
    let x = [1.0, 1.0];
    // two batches whose gradients are exactly opposite: the summed w g (the old score) is zero
    let calib = calib_of(&[&[(x, 0)], &[(x, 1)]]);
    let (ga, gb) = (two_linear_grads(x, 0), two_linear_grads(x, 1));
    let taylor = Taylor::new(&g, &calib).unwrap();
    let (a, units) = two_linear_units(&g);
    let scores = unit_scores(&g, &a, &taylor, Aggregate::Sum, Normalize::None).unwrap();
    for (u, o) in units {
        let (ta, tb) = (
            over_unit(o, &ga, |w, g| w * g),
            over_unit(o, &gb, |w, g| w * g),
        );
        assert!((ta + tb).abs() < 1e-12 && ta.abs() > 0.05, "{ta} {tb}");
        // (1/B) sum_b (sum over the unit of w g_b)^2: the unit's slices add before squaring
        let want = (ta * ta + tb * tb) / 2.0;
        let got = scores[u].unwrap();
        assert!(close(got, want, 1e-9), "unit {o}: {got} vs {want}");
        let (row, col) = (
            (0..2).map(|i| W1[o][i] * ga.0[o][i]).sum::<f64>(),
            (0..2).map(|i| W2[i][o] * ga.1[i][o]).sum::<f64>(),
        );
        assert!(
            (row * row + col * col - want).abs() > 1e-3,
            "the per-slice squares must differ from the group's square here"
        );
    }
    // unstructured: per weight (1/B) sum_b (w g_b)^2 = (w g_a)^2, positive though sum_b g_b = 0
    let imp1 = vec_of(&taylor.importance(&g, "linear1", "weight").unwrap().unwrap());
    let imp2 = vec_of(&taylor.importance(&g, "linear2", "weight").unwrap().unwrap());
    for k in 0..4 {
        let (r, c) = (k / 2, k % 2);
        assert!(close(imp1[k], (W1[r][c] * ga.0[r][c]).powi(2), 1e-9));
        assert!(close(imp2[k], (W2[r][c] * ga.1[r][c]).powi(2), 1e-9));
        assert!(imp1[k] > 0.0 && imp2[k] > 0.0);
    }
}

#[test]
fn fisher_uses_per_sample_gradients() {
    let g = two_linear();
    let x = [1.0, 1.0];
    // one batch of two samples with opposite gradients: its mean gradient is zero
    let calib = calib_of(&[&[(x, 0), (x, 1)]]);
    let (ga, gb) = (two_linear_grads(x, 0), two_linear_grads(x, 1));
    let mean = mean_grad(&[ga, gb]);
    assert!(mean
        .0
        .iter()
        .chain(&mean.1)
        .flatten()
        .all(|v| v.abs() < 1e-12));
    let fisher = Fisher::new(&g, &calib).unwrap();
    // 0.5 w^2 (1/N) sum_i g_i^2
    let f = |w: f64, a: f64, b: f64| 0.5 * w * w * (a * a + b * b) / 2.0;
    let imp1 = vec_of(&fisher.importance(&g, "linear1", "weight").unwrap().unwrap());
    let imp2 = vec_of(&fisher.importance(&g, "linear2", "weight").unwrap().unwrap());
    for k in 0..4 {
        let (r, c) = (k / 2, k % 2);
        let (w1, w2) = (
            f(W1[r][c], ga.0[r][c], gb.0[r][c]),
            f(W2[r][c], ga.1[r][c], gb.1[r][c]),
        );
        assert!(w1 > 1e-4 && w2 > 1e-4);
        assert!(close(imp1[k], w1, 1e-12), "W1[{k}] {} vs {w1}", imp1[k]);
        assert!(close(imp2[k], w2, 1e-12), "W2[{k}] {} vs {w2}", imp2[k]);
    }
    // a unit's score is the sum of its elements' Fisher, whatever the aggregate
    let (a, units) = two_linear_units(&g);
    for aggregate in [Aggregate::Sum, Aggregate::Mean, Aggregate::Max] {
        let scores = unit_scores(&g, &a, &fisher, aggregate, Normalize::None).unwrap();
        for &(u, o) in &units {
            let want = over_unit(o, &ga, |w, g| 0.5 * w * w * g * g);
            assert!(
                close(scores[u].unwrap(), want, 1e-12),
                "{aggregate:?} unit {o}"
            );
        }
    }
}

#[test]
fn snip_uses_every_calibration_batch() {
    let g = two_linear();
    let samples = [([1.0, 2.0], 0u32), ([-1.0, 0.5], 1), ([0.5, -0.3], 1)];
    // batches of 1 and 2 samples: the gradient of the mean loss over all three
    let calib = calib_of(&[&samples[..1], &samples[1..]]);
    let grads: Vec<Grad2> = samples
        .iter()
        .map(|(x, y)| two_linear_grads(*x, *y as usize))
        .collect();
    let snip_of = |calib: &Calibration, gr: &Grad2| {
        let s = Snip::new(&g, calib).unwrap();
        let got: Vec<f64> = ["linear1", "linear2"]
            .iter()
            .flat_map(|n| vec_of(&s.importance(&g, n, "weight").unwrap().unwrap()))
            .collect();
        let raw: Vec<f64> = (0..8)
            .map(|k| {
                let (m, r, c) = (k / 4, (k % 4) / 2, k % 2);
                if m == 0 {
                    (W1[r][c] * gr.0[r][c]).abs()
                } else {
                    (W2[r][c] * gr.1[r][c]).abs()
                }
            })
            .collect();
        let total: f64 = raw.iter().sum();
        for (k, (a, b)) in got.iter().zip(&raw).enumerate() {
            assert!(
                close(*a, b / total, 1e-12),
                "snip[{k}] {a} vs {}",
                b / total
            );
        }
        assert!((got.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        got
    };
    let all = snip_of(&calib, &mean_grad(&grads));
    let first = snip_of(&calib_of(&[&samples[..1]]), &grads[0]);
    assert!(
        all.iter().zip(&first).any(|(a, b)| (a - b).abs() > 1e-3),
        "the second batch must change the scores"
    );
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
        .slice_terms(&g, "linear1", "weight", 1)
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
    for b in &calib.batches {
        let x = &b.inputs[0];
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

#[test]
fn bn_scale_leaves_groups_without_batchnorm_out_of_the_ranking() {
    // digits-cnn: conv2d1 (16) and conv2d2 (32) feed BatchNorms, linear1 (64) does not
    let g = prunekit_zoo::build("digits-cnn", 0).unwrap();
    let bn = BnScale::new(0.0).unwrap();
    for scope in [Scope::Layer, Scope::Global] {
        let mut pruned = g.clone();
        let mut cfg = StructuredConfig::new(0.5);
        cfg.scope = scope;
        let r = prune_structured(&mut pruned, &cfg, &bn).unwrap();
        assert_eq!(r.unscored.len(), 1, "{scope:?}: {:?}", r.unscored);
        let u = &r.unscored[0];
        assert_eq!(
            (u.group.as_str(), u.label.as_str()),
            ("linear1", "channels")
        );
        assert_eq!(
            u.reason,
            "criterion `bn-scale` scores BatchNorm scales and no BatchNorm follows this group"
        );
        let width = |name: &str| {
            let gp = r.groups.iter().find(|gp| gp.group == name).unwrap();
            (gp.before, gp.after)
        };
        assert_eq!(width("linear1"), (64, 64), "{scope:?}");
        // the ratio applies to the scored units: 24 of the 48 conv channels (layer: 8 + 16)
        let removed: usize = ["conv2d1", "conv2d2"]
            .iter()
            .map(|n| width(n).0 - width(n).1)
            .sum();
        assert_eq!(removed, 24, "{scope:?}");
        check_verified(&g, &pruned, &r);
    }
    // an MLP without BatchNorm: no group can be scored, an error naming the criterion
    let mut mlp = prunekit_zoo::build("digits-mlp", 0).unwrap();
    let before = mlp.param_count();
    let msg = prune_structured(&mut mlp, &StructuredConfig::new(0.5), &bn)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("criterion `bn-scale` can score none of the model's 2 prunable groups")
            && msg.contains("linear1, linear2")
            && msg.contains("no BatchNorm follows"),
        "{msg}"
    );
    assert_eq!(mlp.param_count(), before);
}

/// x [5, 3] -> LSTM 8 (last step) -> linear 6 -> ReLU -> linear 2.
fn lstm_then_linear() -> Graph {
    let mut b = GraphBuilder::new("lstm-mlp", 3);
    let x = b.input("x", &[5, 3]);
    let h = b.lstm(&x, 8, false).unwrap();
    let h = b.linear(&h, 6).unwrap();
    let h = b.relu(&h).unwrap();
    let y = b.linear(&h, 2).unwrap();
    b.finish(&[&y]).unwrap()
}

#[test]
fn fpgm_leaves_recurrent_units_out_of_the_ranking() {
    // every group of lstm-classifier is LSTM units: an error, and the model is untouched
    let mut g = prunekit_zoo::build("lstm-classifier", 0).unwrap();
    let before = g.param_count();
    let msg = prune_structured(&mut g, &StructuredConfig::new(0.5), &Fpgm)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("criterion `fpgm` can score none")
            && msg.contains("lstm1/units, lstm2/units")
            && msg.contains("not filters"),
        "{msg}"
    );
    assert_eq!(g.param_count(), before);
    // beside a Linear: the Linear's filters are ranked, every LSTM unit stays (in both scopes)
    let g = lstm_then_linear();
    for scope in [Scope::Layer, Scope::Global] {
        let mut pruned = g.clone();
        let mut cfg = StructuredConfig::new(0.5);
        cfg.scope = scope;
        let r = prune_structured(&mut pruned, &cfg, &Fpgm).unwrap();
        let widths: Vec<(String, usize, usize)> = r
            .groups
            .iter()
            .map(|gp| (gp.group.clone(), gp.before, gp.after))
            .collect();
        assert_eq!(
            widths,
            vec![("lstm1".to_string(), 8, 8), ("linear1".to_string(), 6, 3)],
            "{scope:?}"
        );
        assert_eq!(r.unscored.len(), 1);
        assert_eq!(r.unscored[0].group, "lstm1/units");
        assert!(r.unscored[0].reason.contains("`fpgm`"));
        check_verified(&g, &pruned, &r);
    }
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
    assert_eq!(
        vec_of(&a.batches[1].inputs[0]),
        vec_of(&b.batches[1].inputs[0])
    );
    assert_ne!(
        vec_of(&a.batches[0].inputs[0]),
        vec_of(&c.batches[0].inputs[0])
    );
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
