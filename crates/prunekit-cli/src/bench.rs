//! `prunekit bench`: the graph runtime against the same network written directly with candle-nn
//! modules (Conv2d, BatchNorm, Linear, candle's max-pool, candle-nn's cross-entropy and SGD), with
//! the same weights, in one run. Measurements alternate between the two so drift hits both equally.

use std::time::Instant;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Module, ModuleT, Tensor, Var};
use candle_nn::Optimizer as _;
use prunekit_graph::{Executor, Graph, Mode, Op};
use prunekit_measure::metrics::memory_kb;
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

/// Medians (ms) of several contenders, measured in alternation after two warm-up runs each. The run
/// count is `iters`, lowered for slow cases so each contender gets about 8 s (never below 5).
pub(crate) fn race(iters: usize, fs: &mut [&mut dyn FnMut() -> Result<()>]) -> Result<Vec<f64>> {
    let mut slowest = 0f64;
    for f in fs.iter_mut() {
        f()?;
        slowest = slowest.max(time(*f)?);
    }
    let runs = iters.min((8000.0 / slowest.max(1e-3)) as usize).max(5);
    let mut times = vec![Vec::with_capacity(runs); fs.len()];
    for _ in 0..runs {
        for (f, t) in fs.iter_mut().zip(times.iter_mut()) {
            t.push(time(*f)?);
        }
    }
    Ok(times.into_iter().map(median).collect())
}

fn input_batch(g: &Graph, batch: usize) -> Result<(Tensor, Tensor)> {
    let spec = g.inputs.first().context("the model has no input")?;
    let mut dims = vec![batch];
    dims.extend_from_slice(&spec.shape);
    let x = match spec.kind {
        prunekit_graph::InputKind::Float => Tensor::randn(0f32, 1.0, dims, &g.device())?,
        // token ids 0 and 1 exist in every vocabulary; the time does not depend on their values
        prunekit_graph::InputKind::Ids => {
            let n: usize = dims.iter().product();
            Tensor::from_vec((0..n as u32).map(|i| i % 2).collect(), dims, &g.device())?
        }
    };
    // labels 0 and 1 exist for every classifier of the zoo
    let y = Tensor::from_vec(
        (0..batch as u32).map(|i| i % 2).collect::<Vec<_>>(),
        batch,
        &g.device(),
    )?;
    Ok((x, y))
}

/// A training step of the graph runtime: forward, cross-entropy, backward, plain SGD.
fn graph_step(
    exec: &mut Executor,
    g: &Graph,
    opt: &mut dyn prunekit_train::Optimizer,
    x: &Tensor,
    y: &Tensor,
) -> Result<()> {
    let logits = exec
        .run(g, std::slice::from_ref(x), Mode::TRAIN, None)?
        .remove(0);
    let grads = prunekit_train::cross_entropy(&logits, y)?.backward()?;
    opt.step(g, &grads)?;
    Ok(())
}

/// Runs `f` with the custom kernels switched on or off.
fn with_kernels<T>(on: bool, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = prunekit_graph::kernels::enabled();
    prunekit_graph::kernels::set_enabled(on);
    let out = f();
    prunekit_graph::kernels::set_enabled(before);
    out
}

/// The Python with PyTorch for the comparison columns: `torch`, else .venv-torch/bin/python when
/// it exists (scripts/setup-torch.sh makes it).
pub(crate) fn torch_python(torch: Option<PathBuf>) -> Option<PathBuf> {
    torch.or_else(|| Some(PathBuf::from(".venv-torch/bin/python")).filter(|p| p.exists()))
}

/// Milliseconds keyed by (model, measure, batch).
type TorchTimes = HashMap<(String, String, usize), f64>;

/// Runs scripts/SCRIPT with `python`, this process's thread count (`--threads N`) and `args`, and
/// parses the one JSON object it prints; an error quotes the last line of its stderr.
pub(crate) fn python_json(python: &Path, script: &str, args: &[&str]) -> Result<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(script);
    let out = std::process::Command::new(python)
        .arg(&path)
        .args(["--threads", &prunekit_measure::threads().to_string()])
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            path.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{script} printed no JSON"))
}

/// PyTorch timings from scripts/bench_torch.py, keyed by (model, measure, batch).
fn torch_times(python: &Path, iters: usize) -> Result<(String, TorchTimes)> {
    let v = python_json(
        python,
        "bench_torch.py",
        &["--iters", &iters.min(30).to_string()],
    )?;
    let mut map = HashMap::new();
    for r in v["results"].as_array().cloned().unwrap_or_default() {
        let key = (
            r["model"].as_str().unwrap_or("").to_string(),
            r["measure"].as_str().unwrap_or("").to_string(),
            r["batch"].as_u64().unwrap_or(0) as usize,
        );
        map.insert(key, r["ms"].as_f64().unwrap_or(f64::NAN));
    }
    Ok((v["torch"].as_str().unwrap_or("?").to_string(), map))
}

/// Child-process half of the memory measurement: builds MODEL, then runs 3 training steps at BATCH
/// and prints {"baseline_kb", "peak_kb", "delta_kb"} (peak resident set minus the resident set
/// before the first step).
pub fn memory_child(spec: &str, stock: bool) -> Result<()> {
    let (model, batch) = spec
        .split_once(':')
        .and_then(|(m, b)| b.parse::<usize>().ok().map(|b| (m, b)))
        .with_context(|| format!("--memory-of expects MODEL:BATCH, got `{spec}`"))?;
    prunekit_graph::kernels::set_enabled(!stock);
    let g = prunekit_zoo::build(model, 0)?;
    let (x, y) = input_batch(&g, batch)?;
    let mut exec = Executor::new(0);
    let mut opt = prunekit_train::OptimizerKind::sgd(0.0, 0.0).build(0.01);
    let (baseline, _) =
        memory_kb().context("memory is only measured on Linux (/proc/self/status)")?;
    for _ in 0..3 {
        graph_step(&mut exec, &g, opt.as_mut(), &x, &y)?;
    }
    let (_, peak) = memory_kb().context("cannot read /proc/self/status")?;
    let delta = peak.saturating_sub(baseline);
    println!(
        "{}",
        json!({ "model": model, "batch": batch, "stock": stock, "baseline_kb": baseline, "peak_kb": peak, "delta_kb": delta })
    );
    Ok(())
}

/// Runs the memory measurement of `spec` in a child process of this binary.
fn memory_of_child(spec: &str, stock: bool) -> Result<serde_json::Value> {
    let mut args = vec!["bench", "--memory-of", spec];
    if stock {
        args.push("--stock");
    }
    child_json(&args)
}

/// Runs this binary with `args` in a child process (a fresh address space for a memory
/// measurement) and parses the one JSON object it prints.
pub(crate) fn child_json(args: &[&str]) -> Result<serde_json::Value> {
    let exe = std::env::current_exe().context("cannot find the prunekit binary")?;
    let out = std::process::Command::new(exe)
        .args(args)
        .output()
        .context("cannot run the memory child process")?;
    if !out.status.success() {
        bail!(
            "memory measurement failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Peak-memory delta (KiB) of PyTorch training steps from scripts/bench_torch.py --memory.
fn torch_memory(python: &Path, spec: &str) -> Result<u64> {
    let v = python_json(python, "bench_torch.py", &["--memory", spec])?;
    v["delta_kb"]
        .as_u64()
        .context("bench_torch.py --memory: no delta_kb")
}

pub fn run(iters: usize, profile: bool, torch: Option<PathBuf>, json_out: bool) -> Result<()> {
    let threads = prunekit_measure::threads();
    let lr = 0.01;

    // 1. graph runtime overhead: the graph on candle's own ops vs the same network in candle-nn
    let batch = 32;
    let mut overhead_rows = Vec::new();
    let mut overhead = Vec::new();
    let mut profiles = Vec::new();
    for arch in ["digits-cnn", "reference-cnn"] {
        let g = prunekit_zoo::build(arch, 0)?;
        let direct = Direct::from_graph(&g)?;
        let (x, y) = input_batch(&g, batch)?;
        let mut exec = Executor::new(0);
        let fwd = with_kernels(false, || {
            race(
                iters,
                &mut [
                    &mut || {
                        Executor::new(0).eval(&g, std::slice::from_ref(&x))?;
                        Ok(())
                    },
                    &mut || {
                        direct.forward(&x, false)?;
                        Ok(())
                    },
                ],
            )
        })?;
        let mut opt = prunekit_train::OptimizerKind::sgd(0.0, 0.0).build(lr);
        let mut sgd = candle_nn::SGD::new(direct.vars.clone(), lr)?;
        let train = with_kernels(false, || {
            race(
                iters,
                &mut [
                    &mut || graph_step(&mut exec, &g, opt.as_mut(), &x, &y),
                    &mut || {
                        let logits = direct.forward(&x, true)?;
                        sgd.backward_step(&candle_nn::loss::cross_entropy(&logits, &y)?)?;
                        Ok(())
                    },
                ],
            )
        })?;
        if profile {
            let ops = prunekit_measure::profile::profile_training_step(&g, &x, iters)?;
            profiles.push(json!({ "model": arch, "batch": batch, "ops": ops }));
        }
        for (what, t) in [("forward (eval)", &fwd), ("training step", &train)] {
            overhead_rows.push(vec![
                arch.to_string(),
                what.to_string(),
                format!("{:.3}", t[0]),
                format!("{:.3}", t[1]),
                format!("{:.3}x", t[0] / t[1]),
            ]);
            overhead.push(json!({ "model": arch, "measure": what, "batch": batch, "graph_ms": t[0], "candle_nn_ms": t[1], "ratio": t[0] / t[1] }));
        }
    }

    // 2. kernels: ours vs stock candle ops vs PyTorch
    let torch_python = torch_python(torch);
    let torch = match &torch_python {
        Some(p) => Some(torch_times(p, iters)?),
        None => None,
    };
    let mut speed_rows = Vec::new();
    let mut speed = Vec::new();
    // the recurrent models' "stock candle" column is the composed per-step loop
    for arch in ["reference-cnn", "resnet20", "lstm-classifier", "gru-text"] {
        let g = prunekit_zoo::build(arch, 0)?;
        let cases: Vec<(&str, usize)> =
            vec![("train", 32), ("train", 128), ("infer", 1), ("infer", 64)];
        for (measure, b) in cases {
            let (x, y) = input_batch(&g, b)?;
            let mut e1 = Executor::new(0);
            let mut e2 = Executor::new(0);
            let mut o1 = prunekit_train::OptimizerKind::sgd(0.0, 0.0).build(lr);
            let mut o2 = prunekit_train::OptimizerKind::sgd(0.0, 0.0).build(lr);
            let t = if measure == "train" {
                race(
                    iters,
                    &mut [
                        &mut || with_kernels(true, || graph_step(&mut e1, &g, o1.as_mut(), &x, &y)),
                        &mut || {
                            with_kernels(false, || graph_step(&mut e2, &g, o2.as_mut(), &x, &y))
                        },
                    ],
                )?
            } else {
                race(
                    iters,
                    &mut [
                        &mut || {
                            with_kernels(true, || {
                                Ok(e1.eval(&g, std::slice::from_ref(&x)).map(drop)?)
                            })
                        },
                        &mut || {
                            with_kernels(false, || {
                                Ok(e2.eval(&g, std::slice::from_ref(&x)).map(drop)?)
                            })
                        },
                    ],
                )?
            };
            let pt = torch
                .as_ref()
                .and_then(|(_, m)| m.get(&(arch.to_string(), measure.to_string(), b)).copied());
            let label = if measure == "train" {
                "training step"
            } else {
                "inference"
            };
            speed_rows.push(vec![
                arch.to_string(),
                label.to_string(),
                b.to_string(),
                format!("{:.3}", t[0]),
                format!("{:.3}", t[1]),
                pt.map_or("-".into(), |v| format!("{v:.3}")),
                format!("{:.2}x", t[1] / t[0]),
                pt.map_or("-".into(), |v| format!("{:.2}x", t[0] / v)),
            ]);
            speed.push(json!({ "model": arch, "measure": measure, "batch": b, "prunekit_ms": t[0], "stock_candle_ms": t[1], "pytorch_ms": pt }));
        }
    }

    // 3. peak memory of training steps, each in a fresh process
    let mem_spec = "resnet20:128";
    let ours = memory_of_child(mem_spec, false)?;
    let stock = memory_of_child(mem_spec, true)?;
    let torch_mem = match &torch_python {
        Some(p) => Some(torch_memory(p, mem_spec)?),
        None => None,
    };
    let mib = |v: &serde_json::Value| v["delta_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0;
    let memory = json!({ "spec": mem_spec, "prunekit_kb": ours["delta_kb"], "stock_candle_kb": stock["delta_kb"], "pytorch_kb": torch_mem });

    if json_out {
        let out = json!({
            "threads": threads, "iters": iters, "graph_overhead": overhead, "kernels": speed, "memory": memory,
            "pytorch": torch.as_ref().map(|(v, _)| v.clone()), "profiles": profiles,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{threads} threads; medians of up to {iters} alternating runs after warm-up\n");
    println!(
        "graph runtime vs the same network in candle-nn (both on candle's own ops), batch {batch}"
    );
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
            &overhead_rows
        )
    );
    match &torch {
        Some((v, _)) => println!("\nprunekit kernels vs stock candle ops vs PyTorch {v} (same thread count)"),
        None => println!("\nprunekit kernels vs stock candle ops (PyTorch not found: scripts/setup-torch.sh, or --torch PYTHON)"),
    }
    println!(
        "{}",
        render(
            &[
                "model",
                "measure",
                "batch",
                "prunekit ms",
                "stock candle ms",
                "PyTorch ms",
                "speed-up vs candle",
                "prunekit / PyTorch"
            ],
            &speed_rows
        )
    );
    println!("\npeak memory of 3 training steps, {mem_spec}: resident-set high-water mark minus the resident set before the first step, a fresh process each");
    let rows = vec![vec![
        format!("{:.1} MiB", mib(&ours)),
        format!("{:.1} MiB", mib(&stock)),
        torch_mem.map_or("-".into(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0)),
    ]];
    println!(
        "{}",
        render(&["prunekit", "stock candle", "PyTorch"], &rows)
    );
    for p in &profiles {
        print_profile(p, iters);
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
