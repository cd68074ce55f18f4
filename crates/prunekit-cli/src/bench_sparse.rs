//! `prunekit bench --sparse`: the sparse inference kernels against our dense kernels, side by side
//! in one run (issue 16 §3): per layer over a sweep of sparsities and 2:4 (with the crossover
//! sparsity of each layer and batch), PyTorch's CSR matmul (torch.sparse) on the same Linear
//! layers, and whole models at batch 1 (latency and the peak memory of a process that loads,
//! prunes and runs them, each in a fresh child process).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use prunekit_graph::{Executor, Graph, GraphBuilder, SparseOptions, SparsePlan};
use prunekit_prune::{magnitude_prune, Scope, Target};
use serde_json::json;

use crate::bench::{child_json, python_json, race};
use crate::table::render;
use prunekit_measure::metrics::memory_kb;

/// Unstructured sparsities of the per-layer sweep.
const SWEEP: [f64; 8] = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95];

/// A layer of the per-layer benchmark.
#[derive(Clone, Copy)]
enum Layer {
    /// Linear [out, in] on [batch, in]
    Linear(usize, usize),
    /// 3x3 convolution, stride 1, padding 1, no bias, channels -> channels on [batch, c, hw, hw]
    Conv3x3(usize, usize),
}

impl Layer {
    fn name(self) -> String {
        match self {
            Layer::Linear(o, i) => format!("linear {o}x{i}"),
            Layer::Conv3x3(c, hw) => format!("conv 3x3 {c}->{c} on {hw}x{hw}"),
        }
    }

    fn graph(self) -> Result<Graph> {
        let mut b = GraphBuilder::new("layer", 0);
        let y = match self {
            Layer::Linear(o, i) => {
                let x = b.input("x", &[i]);
                b.named("layer").linear(&x, o)?
            }
            Layer::Conv3x3(c, hw) => {
                let x = b.input("x", &[c, hw, hw]);
                b.named("layer").conv2d_no_bias(&x, c, 3, 1, 1)?
            }
        };
        Ok(b.finish(&[&y])?)
    }
}

/// How the layer is pruned.
#[derive(Clone, Copy)]
enum Pattern {
    /// this fraction of the weights, smallest magnitudes first
    Unstructured(f64),
    /// 2 of every 4 consecutive inputs kept, by magnitude
    TwoFour,
}

impl Pattern {
    fn name(self) -> String {
        match self {
            Pattern::Unstructured(s) => format!("{:.0}%", s * 100.0),
            Pattern::TwoFour => "2:4".into(),
        }
    }

    fn apply(self, g: &mut Graph) -> Result<()> {
        match self {
            Pattern::Unstructured(s) => {
                magnitude_prune(g, Target::Ratio(s), Scope::Layer)?;
            }
            Pattern::TwoFour => {
                let c = prunekit_prune::criterion_by_name("l1", g, None, 0)?;
                prunekit_prune::prune_nm(g, c.as_ref(), 2, 4, true)?;
            }
        }
        Ok(())
    }
}

/// Median ms of the dense kernel and of the fastest sparse layout on `g` at `batch` (every
/// candidate layer forced sparse: CSR or N:M, and for a Linear at batch 1 also the bitmask
/// layout), measured in alternation, with the winning layout's name.
fn dense_vs_sparse(g: &Graph, batch: usize, iters: usize) -> Result<(f64, f64, String)> {
    let plan = |bitmask: bool| {
        SparsePlan::build(
            g,
            SparseOptions {
                batch,
                min_sparsity: 0.0,
                calibrate: false,
                bitmask,
            },
        )
    };
    let mut plans = vec![plan(false)?];
    let linear = g
        .nodes
        .iter()
        .any(|n| matches!(n.op, prunekit_graph::Op::Linear(_)));
    if batch == 1 && linear && plans[0].decisions.iter().all(|d| d.format == "csr") {
        plans.push(plan(true)?);
    }
    let formats: Vec<String> = plans
        .iter()
        .map(|p| {
            p.decisions
                .first()
                .map(|d| d.format.clone())
                .unwrap_or_default()
        })
        .collect();
    let x = prunekit_measure::random_inputs(g, batch)?;
    let mut execs: Vec<Executor> = std::iter::once(Executor::new(0))
        .chain(
            plans
                .into_iter()
                .map(|p| Executor::new(0).with_sparse_plan(Arc::new(p))),
        )
        .collect();
    let mut runs: Vec<Box<dyn FnMut() -> Result<()> + '_>> = execs
        .iter_mut()
        .map(|e| {
            let x = &x;
            Box::new(move || {
                e.eval(g, x)?;
                Ok(())
            }) as Box<dyn FnMut() -> Result<()>>
        })
        .collect();
    let mut refs: Vec<&mut dyn FnMut() -> Result<()>> = runs
        .iter_mut()
        .map(|r| r.as_mut() as &mut dyn FnMut() -> Result<()>)
        .collect();
    let t = race(iters, &mut refs)?;
    let (best, &sparse) = t[1..]
        .iter()
        .enumerate()
        .min_by(|p, q| p.1.total_cmp(q.1))
        .context("no sparse layout")?;
    Ok((t[0], sparse, formats[best].clone()))
}

/// The lowest sparsity of the sweep from which the sparse kernel is faster at every higher one.
fn crossover(speedups: &[(f64, f64)]) -> Option<f64> {
    let mut best = None;
    for &(s, x) in speedups.iter().rev() {
        if x > 1.0 {
            best = Some(s);
        } else {
            break;
        }
    }
    best
}

/// PyTorch timings of torch.sparse CSR x dense on the Linear cases, keyed by (out, in, batch,
/// sparsity percent): `(version, [(key, ms)])`.
type TorchSparse = (String, Vec<((usize, usize, usize, u32), f64)>);

fn torch_sparse(python: &Path, iters: usize) -> Result<TorchSparse> {
    let v = python_json(
        python,
        "bench_torch_sparse.py",
        &["--iters", &iters.to_string()],
    )?;
    let rows = v["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let u = |k: &str| r[k].as_u64().unwrap_or(0) as usize;
            (
                (u("out"), u("in"), u("batch"), u("sparsity_pct") as u32),
                r["csr_ms"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    Ok((v["torch"].as_str().unwrap_or("?").to_string(), rows))
}

/// A zoo model pruned to `sparsity` by magnitude, layer by layer.
fn pruned_model(arch: &str, sparsity: f64) -> Result<Graph> {
    let mut g = prunekit_zoo::build(arch, 0)?;
    magnitude_prune(&mut g, Target::Ratio(sparsity), Scope::Layer)?;
    Ok(g)
}

/// End-to-end models: (zoo architecture, what it stands for).
const MODELS: [(&str, &str); 2] = [
    ("mlp", "credit-risk MLP (16 features)"),
    ("resnet20", "ResNet-20 (3x32x32)"),
];

/// Child-process half of the end-to-end memory measurement: builds ARCH pruned 90%, then (with
/// `sparse`) its timed sparse plan at batch 1, runs one batch-1 inference and prints
/// {"peak_kb", "weights_kb", "plan_kb", "sparse_layers"}: the process's peak resident set.
pub fn memory_child(spec: &str) -> Result<()> {
    let (arch, kind) = spec
        .split_once(':')
        .with_context(|| format!("--sparse-memory-of expects ARCH:dense|sparse, got `{spec}`"))?;
    let sparse = match kind {
        "dense" => false,
        "sparse" => true,
        _ => bail!("--sparse-memory-of expects ARCH:dense|sparse, got `{spec}`"),
    };
    let g = pruned_model(arch, 0.9)?;
    let mut exec = if sparse {
        Executor::for_inference(&g, 1)?
    } else {
        Executor::new(0)
    };
    let plan_kb = exec.sparse_plan().map_or(0, |p| p.bytes() / 1024);
    let layers = exec.sparse_plan().map_or(0, |p| p.len());
    let x = prunekit_measure::random_inputs(&g, 1)?;
    exec.eval(&g, &x)?;
    let (_, peak) = memory_kb().context("memory is only measured on Linux (/proc/self/status)")?;
    let weights_kb = g
        .params()
        .map(|(_, _, p)| p.tensor().elem_count() * 4)
        .sum::<usize>()
        / 1024;
    println!(
        "{}",
        json!({ "model": arch, "sparse": sparse, "peak_kb": peak, "weights_kb": weights_kb, "plan_kb": plan_kb, "sparse_layers": layers })
    );
    Ok(())
}

fn memory_of_child(spec: &str) -> Result<serde_json::Value> {
    child_json(&["bench", "--sparse-memory-of", spec])
}

/// Runs the sparse benchmark and prints its tables (or one JSON object).
pub fn run(iters: usize, torch: Option<&Path>, json_out: bool) -> Result<()> {
    let threads = prunekit_measure::threads();
    let cases = [
        (Layer::Linear(512, 512), [1, 32]),
        (Layer::Linear(2048, 2048), [1, 32]),
        (Layer::Conv3x3(64, 8), [1, 64]),
    ];
    let mut layer_rows = Vec::new();
    let mut layer_json = Vec::new();
    let mut ours = Vec::new();
    for (layer, batches) in cases {
        for batch in batches {
            let mut cells = vec![layer.name(), batch.to_string()];
            let mut speedups = Vec::new();
            let mut dense_ms = Vec::new();
            let patterns = SWEEP
                .iter()
                .map(|&s| Pattern::Unstructured(s))
                .chain([Pattern::TwoFour]);
            for p in patterns {
                let mut g = layer.graph()?;
                p.apply(&mut g)?;
                let (d, s, format) = dense_vs_sparse(&g, batch, iters)?;
                dense_ms.push(d);
                let mark = if format == "bitmask" { " b" } else { "" };
                cells.push(format!("{:.2}x{mark}", d / s));
                if let Pattern::Unstructured(sp) = p {
                    speedups.push((sp, d / s));
                    if let Layer::Linear(o, i) = layer {
                        ours.push(((o, i, batch, (sp * 100.0).round() as u32), s));
                    }
                }
                layer_json.push(json!({ "layer": layer.name(), "batch": batch, "pattern": p.name(), "format": format, "dense_ms": d, "sparse_ms": s, "speedup": d / s }));
            }
            let dense = dense_ms.iter().sum::<f64>() / dense_ms.len() as f64;
            cells.insert(2, format!("{dense:.3}"));
            let cross = crossover(&speedups);
            cells.push(cross.map_or("none".into(), |c| format!("{:.0}%", c * 100.0)));
            layer_rows.push(cells);
        }
    }

    // PyTorch's CSR x dense on the Linear cases at 70% and 90%
    let torch = match torch {
        Some(py) => Some(torch_sparse(py, iters)?),
        None => None,
    };
    let mut torch_rows = Vec::new();
    let mut torch_json = Vec::new();
    if let Some((version, rows)) = &torch {
        for (key, t) in rows {
            if let Some((_, s)) = ours.iter().find(|(k, _)| k == key) {
                let (o, i, b, pct) = *key;
                torch_rows.push(vec![
                    format!("linear {o}x{i}"),
                    b.to_string(),
                    format!("{pct}%"),
                    format!("{s:.4}"),
                    format!("{t:.4}"),
                    format!("{:.2}x", t / s),
                ]);
                torch_json.push(json!({ "layer": format!("linear {o}x{i}"), "batch": b, "sparsity_pct": pct, "prunekit_ms": s, "torch_sparse_ms": t, "torch_over_prunekit": t / s, "torch": version }));
            }
        }
    }

    // whole models at batch 1, 90% unstructured (magnitude, per layer)
    let mut model_rows = Vec::new();
    let mut model_json = Vec::new();
    for (arch, what) in MODELS {
        let g = pruned_model(arch, 0.9)?;
        let x = prunekit_measure::random_inputs(&g, 1)?;
        let mut dense = Executor::new(0);
        let mut sparse = Executor::for_inference(&g, 1)?;
        let plan = sparse.sparse_plan();
        let chosen = plan.map_or(0, SparsePlan::len);
        let candidates = plan.map_or(0, |p| p.decisions.len());
        let t = race(
            iters.max(100),
            &mut [
                &mut || {
                    dense.eval(&g, &x)?;
                    Ok(())
                },
                &mut || {
                    sparse.eval(&g, &x)?;
                    Ok(())
                },
            ],
        )?;
        let md = memory_of_child(&format!("{arch}:dense"))?;
        let ms = memory_of_child(&format!("{arch}:sparse"))?;
        let kb = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        model_rows.push(vec![
            what.to_string(),
            format!("{chosen} of {candidates}"),
            format!("{:.4}", t[0]),
            format!("{:.4}", t[1]),
            format!("{:.2}x", t[0] / t[1]),
            format!("{} / {}", kb(&md, "peak_kb"), kb(&ms, "peak_kb")),
            format!("{} / {}", kb(&md, "weights_kb"), kb(&ms, "plan_kb")),
        ]);
        model_json.push(json!({ "model": arch, "sparse_layers": chosen, "candidate_layers": candidates, "dense_ms": t[0], "sparse_ms": t[1], "speedup": t[0] / t[1], "memory_dense": md, "memory_sparse": ms }));
    }

    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "threads": threads,
                "layers": layer_json,
                "torch_sparse": torch_json,
                "models": model_json,
            }))?
        );
        return Ok(());
    }
    println!("sparse kernels against our dense kernels ({threads} threads, median of alternating runs; speed-up = dense / sparse, the faster of CSR and (b) the AVX-512 bitmask layout for a batch-1 Linear)\n");
    let mut head: Vec<String> = ["layer", "batch", "dense ms"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    head.extend(SWEEP.iter().map(|s| format!("{:.0}%", s * 100.0)));
    head.push("2:4".into());
    head.push("crossover".into());
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    println!("{}", render(&head, &layer_rows));
    if let Some((version, _)) = &torch {
        println!("\nagainst PyTorch {version} torch.sparse CSR x dense (same shapes and sparsity, random masks)\n");
        println!(
            "{}",
            render(
                &[
                    "layer",
                    "batch",
                    "sparsity",
                    "prunekit ms",
                    "torch.sparse ms",
                    "torch / prunekit"
                ],
                &torch_rows
            )
        );
    }
    println!("\nwhole models at batch 1, 90% unstructured (per-layer magnitude), sparse kernels chosen per layer by timing\n");
    println!(
        "{}",
        render(
            &[
                "model",
                "sparse layers",
                "dense ms",
                "sparse ms",
                "speed-up",
                "peak RSS KiB dense / sparse",
                "dense weights / sparse copies KiB"
            ],
            &model_rows
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossover_is_where_sparse_stays_faster() {
        assert_eq!(
            crossover(&[(0.3, 0.5), (0.5, 1.2), (0.7, 0.9), (0.9, 2.0), (0.95, 3.0)]),
            Some(0.9)
        );
        assert_eq!(crossover(&[(0.3, 1.1), (0.9, 2.0)]), Some(0.3));
        assert_eq!(crossover(&[(0.3, 0.5), (0.9, 0.8)]), None);
    }

    #[test]
    fn a_pruned_layer_runs_sparse_with_the_dense_outputs() {
        for (layer, p) in [
            (Layer::Linear(16, 32), Pattern::Unstructured(0.9)),
            (Layer::Conv3x3(8, 5), Pattern::TwoFour),
        ] {
            let mut g = layer.graph().unwrap();
            p.apply(&mut g).unwrap();
            let (d, s, format) = dense_vs_sparse(&g, 2, 5).unwrap();
            assert!(d > 0.0 && s > 0.0);
            let want = if matches!(p, Pattern::TwoFour) {
                "2:4"
            } else {
                "csr"
            };
            assert_eq!(format, want);
            let plan = SparsePlan::build(
                &g,
                SparseOptions {
                    batch: 2,
                    min_sparsity: 0.0,
                    calibrate: false,
                    bitmask: false,
                },
            )
            .unwrap();
            let x = prunekit_measure::random_inputs(&g, 2).unwrap();
            let a = Executor::new(0).eval(&g, &x).unwrap().remove(0);
            let b = Executor::new(0)
                .with_sparse_plan(Arc::new(plan))
                .eval(&g, &x)
                .unwrap()
                .remove(0);
            let diff: f32 = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-4);
        }
    }
}
