//! `prunekit bench`: the graph runtime against the same network written directly with candle-nn
//! modules (Conv2d, BatchNorm, Linear, candle's max-pool, candle-nn's cross-entropy and SGD), with
//! the same weights, in one run. Measurements alternate between the two so drift hits both equally.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Module, ModuleT, Tensor, Var};
use candle_nn::Optimizer as _;
use prunekit_graph::{Executor, Graph, Mode, Op};
use serde_json::json;

use crate::table::render;

/// The same layers as candle-nn modules.
enum Layer {
    Conv(candle_nn::Conv2d),
    Bn(candle_nn::BatchNorm),
    Relu,
    MaxPool(usize),
    Flatten,
    Linear(candle_nn::Linear),
}

struct Direct {
    layers: Vec<Layer>,
    vars: Vec<Var>,
}

impl Direct {
    /// Mirrors a sequential graph of conv / batch-norm / relu / max-pool / flatten / linear nodes.
    fn from_graph(g: &Graph) -> Result<Self> {
        let mut vars = Vec::new();
        let mut var = |g: &Graph, n: &str, p: &str| -> Result<Tensor> {
            let v = Var::from_tensor(&g.node(n)?.params[p].tensor().copy()?)?;
            let t = v.as_tensor().clone();
            vars.push(v);
            Ok(t)
        };
        let mut layers = Vec::new();
        for n in &g.nodes {
            layers.push(match &n.op {
                Op::Conv2d(c) => Layer::Conv(candle_nn::Conv2d::new(
                    var(g, &n.name, "weight")?,
                    if c.bias {
                        Some(var(g, &n.name, "bias")?)
                    } else {
                        None
                    },
                    candle_nn::Conv2dConfig {
                        padding: c.padding,
                        stride: c.stride,
                        dilation: c.dilation,
                        groups: c.groups,
                        cudnn_fwd_algo: None,
                    },
                )),
                Op::BatchNorm(b) => Layer::Bn(candle_nn::BatchNorm::new(
                    b.num_features,
                    n.params["running_mean"].tensor().copy()?,
                    n.params["running_var"].tensor().copy()?,
                    var(g, &n.name, "weight")?,
                    var(g, &n.name, "bias")?,
                    b.eps,
                )?),
                Op::Relu(_) => Layer::Relu,
                Op::MaxPool2d(p)
                    if p.0.stride() == p.0.kernel
                        && p.0.kernel[0] == p.0.kernel[1]
                        && p.0.padding == [0, 0] =>
                {
                    Layer::MaxPool(p.0.kernel[0])
                }
                Op::Flatten(_) => Layer::Flatten,
                Op::Linear(l) => Layer::Linear(candle_nn::Linear::new(
                    var(g, &n.name, "weight")?,
                    if l.bias {
                        Some(var(g, &n.name, "bias")?)
                    } else {
                        None
                    },
                )),
                other => bail!("bench: no candle-nn mirror for a {} op", other.type_name()),
            });
        }
        Ok(Self { layers, vars })
    }

    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = match l {
                Layer::Conv(c) => c.forward(&h)?,
                Layer::Bn(b) => b.forward_t(&h, train)?,
                Layer::Relu => h.relu()?,
                Layer::MaxPool(k) => h.max_pool2d(*k)?,
                Layer::Flatten => h.flatten_from(1)?,
                Layer::Linear(l) => l.forward(&h)?,
            };
        }
        Ok(h)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    let t0 = Instant::now();
    f()?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

/// (graph ms, candle-nn ms) medians for `a` and `b`, alternating.
fn race(
    iters: usize,
    a: &mut dyn FnMut() -> Result<()>,
    b: &mut dyn FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    for _ in 0..3 {
        a()?;
        b()?;
    }
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(1) {
        ta.push(time(a)?);
        tb.push(time(b)?);
    }
    Ok((median(ta), median(tb)))
}

pub fn run(iters: usize, profile: bool, json_out: bool) -> Result<()> {
    let batch = 32;
    let lr = 0.01;
    let mut rows = Vec::new();
    let mut results = Vec::new();
    let mut profiles = Vec::new();
    for arch in ["digits-cnn", "reference-cnn"] {
        let g = prunekit_zoo::build(arch, 0)?;
        let direct = Direct::from_graph(&g)?;
        let mut dims = vec![batch];
        dims.extend_from_slice(&g.inputs[0].shape);
        let x = Tensor::randn(0f32, 1.0, dims, &g.device())?;
        let y = Tensor::from_vec(
            (0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(),
            batch,
            &g.device(),
        )?;
        let mut exec = Executor::new(0);

        let (fg, fd) = race(
            iters,
            &mut || {
                exec.eval(&g, std::slice::from_ref(&x))?;
                Ok(())
            },
            &mut || {
                direct.forward(&x, false)?;
                Ok(())
            },
        )?;
        let mut exec = Executor::new(0);
        let mut opt = prunekit_train::OptimizerKind::sgd(0.0, 0.0).build(lr);
        let mut sgd = candle_nn::SGD::new(direct.vars.clone(), lr)?;
        let (tg, td) = race(
            iters,
            &mut || {
                let logits = exec
                    .run(&g, std::slice::from_ref(&x), Mode::TRAIN, None)?
                    .remove(0);
                let grads = prunekit_train::cross_entropy(&logits, &y)?.backward()?;
                opt.step(&g, &grads)?;
                Ok(())
            },
            &mut || {
                let logits = direct.forward(&x, true)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                sgd.backward_step(&loss)?;
                Ok(())
            },
        )?;
        if profile {
            let ops = prunekit_measure::profile::profile_training_step(&g, &x, iters)?;
            profiles.push(json!({ "model": arch, "batch": batch, "ops": ops }));
        }
        for (what, a, b) in [("forward (eval)", fg, fd), ("training step", tg, td)] {
            rows.push(vec![
                arch.to_string(),
                what.to_string(),
                format!("{a:.3}"),
                format!("{b:.3}"),
                format!("{:.3}x", a / b),
            ]);
            results.push(json!({ "model": arch, "measure": what, "batch": batch, "graph_ms": a, "candle_nn_ms": b, "ratio": a / b }));
        }
    }
    let threads = prunekit_measure::threads();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "batch": batch, "iters": iters, "threads": threads, "results": results, "profiles": profiles })
            )?
        );
    } else {
        println!("batch {batch}, median of {iters} runs after 3 warm-up runs each, {threads} threads, alternating");
        println!(
            "{}",
            render(
                &[
                    "model",
                    "measure",
                    "graph ms",
                    "candle-nn ms",
                    "graph / candle-nn"
                ],
                &rows
            )
        );
        for p in &profiles {
            print_profile(p, iters);
        }
    }
    Ok(())
}

/// Prints one model's per-op profile with each op's share of the step.
fn print_profile(p: &serde_json::Value, iters: usize) {
    let ops = p["ops"].as_array().cloned().unwrap_or_default();
    let num = |o: &serde_json::Value, k: &str| o[k].as_f64().unwrap_or(0.0);
    let total: f64 = ops
        .iter()
        .map(|o| num(o, "forward_ms") + num(o, "backward_ms"))
        .sum();
    println!(
        "\nper-op training-step profile: {} (batch {}, median of {iters}; total {total:.3} ms)",
        p["model"].as_str().unwrap_or(""),
        p["batch"]
    );
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|o| {
            let (f, b) = (num(o, "forward_ms"), num(o, "backward_ms"));
            vec![
                o["node"].as_str().unwrap_or("").to_string(),
                o["op"].as_str().unwrap_or("").to_string(),
                format!("{f:.3}"),
                format!("{b:.3}"),
                format!("{:.1}%", 100.0 * (f + b) / total.max(1e-12)),
            ]
        })
        .collect();
    println!(
        "{}",
        render(&["node", "op", "forward ms", "backward ms", "share"], &rows)
    );
}
