//! The subcommands. Each loads its inputs with errors that name the file, does its job through the
//! library crates, and prints a table or (with --json) one JSON object on stdout.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use prunekit_data::{Augment, Split};
use prunekit_graph::Graph;
use prunekit_measure::{summarize, Summary};
use prunekit_prune::{magnitude_prune, prune_structured, Norm, Scope, StructuredConfig, Target};
use prunekit_train::{fit, LrSchedule, OptimizerKind, TrainConfig};
use serde_json::json;

use crate::table::{human, render};
use crate::{Command, DataArgs, OptimizerArg, ScheduleArg, TrainArgs};

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Demo { save, json, seed } => demo(save.as_deref(), json, seed),
        Command::Info {
            model,
            seq_len,
            latency_batch,
            json,
        } => info(&model, seq_len, latency_batch, json),
        Command::Export {
            model,
            output,
            seq_len,
            hf,
        } => export(&model, &output, seq_len, &hf),
        Command::Embed(args) => crate::text_cmd::embed(&args),
        Command::Generate(args) => crate::text_cmd::generate(&args),
        Command::Predict {
            model,
            inputs,
            output,
        } => predict(&model, &inputs, &output),
        Command::Train {
            model,
            output,
            data,
            train,
            json,
        } => {
            let mut g = match (model, arch()) {
                (Some(m), _) => load_model(&m)?,
                (None, Some(a)) => prunekit_zoo::build(a, train.seed)?,
                (None, None) => bail!("pass --model MODEL or --arch NAME"),
            };
            let (split, name) = load_data(&data, &g, train.seed)?;
            g.meta.insert("dataset".into(), json!(name));
            train_cmd(g, &output, split, &train, json, "train")
        }
        Command::Finetune {
            model,
            output,
            data,
            distill,
            train,
            json,
        } => {
            let mut g = load_model(&model)?;
            check_output(&model, &output)?;
            // a distillation at a shorter --seq-len trains the student at that length; it is
            // saved at its own length again
            let own_len = g.inputs.first().and_then(|i| match i.shape.as_slice() {
                [t] => Some(*t),
                _ => None,
            });
            let (split, name) = if distill.texts.is_empty() {
                load_data(&data, &g, train.seed)?
            } else {
                crate::text_cmd::distillation_split(&mut g, &distill)?
            };
            // `dataset` names what `eval` loads again; a distillation's lines are not one
            let key = if distill.texts.is_empty() {
                "dataset"
            } else {
                "distillation"
            };
            g.meta.insert(key.into(), json!(name));
            let restore = distill.seq_len.and(own_len);
            train_cmd_then(g, &output, split, &train, json, "finetune", restore)
        }
        Command::Prune(args) => crate::prune_cmd::prune(&args),
        Command::Run(args) => crate::run_cmd::run(&args),
        Command::Sensitivity(args) => crate::analysis_cmd::sensitivity(&args),
        Command::Sweep(args) => crate::analysis_cmd::sweep_cmd(&args),
        Command::Eval {
            model,
            text: Some(text),
            context,
            stride,
            max_tokens,
            latency_batch,
            json,
            ..
        } => crate::text_cmd::perplexity(&crate::text_cmd::PerplexityArgs {
            model: &model,
            text: &text,
            context,
            stride,
            max_tokens,
            latency_batch,
            json,
        }),
        Command::Eval {
            model,
            data,
            latency_batch,
            json,
            ..
        } => eval_cmd(&model, &data, latency_batch, json),
        Command::Bench {
            memory_of: Some(spec),
            stock,
            ..
        } => crate::bench::memory_child(&spec, stock),
        Command::Bench {
            sparse_memory_of: Some(spec),
            ..
        } => crate::bench_sparse::memory_child(&spec),
        Command::Bench {
            iters,
            sparse: true,
            torch,
            json,
            ..
        } => crate::bench_sparse::run(iters, crate::bench::torch_python(torch).as_deref(), json),
        Command::Bench {
            iters,
            profile,
            torch,
            json,
            ..
        } => crate::bench::run(iters, profile, torch, json),
        Command::Zoo { command } => crate::zoo_cmd::run(command),
        Command::Report(args) => crate::report_cmd::report(&args),
        Command::Compare(args) => crate::report_cmd::compare(&args),
    }
}

static ARCH: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Records the global `--arch` (called once by `main`).
pub(crate) fn set_arch(arch: Option<String>) {
    let _ = ARCH.set(arch);
}

/// The global `--arch`, if given.
pub(crate) fn arch() -> Option<&'static str> {
    ARCH.get().and_then(|a| a.as_deref())
}

/// Loads a model in any format `prunekit_io` reads; a state dict is loaded into the `--arch`
/// architecture (a zoo name, or a model file whose architecture is used).
pub(crate) fn load_model(path: &Path) -> Result<Graph> {
    load_model_seq(path, None)
}

/// [`load_model`] with the sequence length T a Hugging Face directory or GGUF file is read for
/// (their default otherwise); a model of another format whose inputs are [T] is set to it.
pub(crate) fn load_model_seq(path: &Path, seq_len: Option<usize>) -> Result<Graph> {
    let device = prunekit_graph::device::default_device();
    let ctx = || format!("cannot load model {}", path.display());
    let format = prunekit_io::detect(path).with_context(ctx)?;
    let opts = prunekit_io::hf::HfOptions { seq_len };
    if !matches!(
        format,
        prunekit_io::Format::PyTorch | prunekit_io::Format::Safetensors
    ) {
        let mut g = prunekit_io::load_with(path, &device, &opts).with_context(ctx)?;
        if let (Some(t), prunekit_io::Format::Native | prunekit_io::Format::Onnx) =
            (seq_len, format)
        {
            if g.meta.contains_key(prunekit_io::hf::META_KEY) {
                prunekit_io::hf::set_sequence_length(&mut g, t).with_context(ctx)?;
            }
        }
        return Ok(g);
    }
    let Some(a) = arch() else {
        bail!(
            "{}: a {} state dict holds weights but no architecture; give it with --arch NAME (a built-in architecture, `prunekit zoo list`) or --arch FILE (e.g. the same model's .onnx)",
            path.display(),
            format.name()
        );
    };
    let template = if Path::new(a).exists() {
        prunekit_io::load(Path::new(a), &device)
            .with_context(|| format!("cannot load the architecture --arch {a}"))?
    } else {
        prunekit_zoo::build(a, 0).with_context(|| format!("--arch {a}"))?
    };
    prunekit_io::pytorch::load_state_dict(path, template).with_context(ctx)
}

/// ", N layers on sparse kernels" when the timed runs used any (empty otherwise).
fn sparse_note(l: &prunekit_measure::Latency) -> String {
    match l.sparse_layers {
        0 => String::new(),
        1 => ", 1 layer on sparse kernels".into(),
        n => format!(", {n} layers on sparse kernels"),
    }
}

/// `prunekit export`: any readable model to the format OUT's extension names.
fn export(
    model: &Path,
    output: &Path,
    seq_len: Option<usize>,
    hf: &crate::HfOutArgs,
) -> Result<()> {
    let g = load_model_seq(model, seq_len)?;
    check_output(model, output)?;
    if hf.format.is_some() {
        save_hf(&g, output, hf, Some(model))?;
        println!("wrote {} (Hugging Face directory)", output.display());
        return Ok(());
    }
    let f = save_model(&g, output, Some(model))?;
    println!("wrote {} ({} format)", output.display(), f.name());
    if matches!(
        f,
        prunekit_io::Format::PyTorch | prunekit_io::Format::Safetensors
    ) {
        println!(
            "widths to rebuild the module: {}",
            prunekit_io::pytorch::widths_path(output).display()
        );
    }
    Ok(())
}

/// `prunekit predict`: the model's outputs on .npy inputs, as .npy.
fn predict(model: &Path, inputs: &[std::path::PathBuf], output: &Path) -> Result<()> {
    // a Transformer is read for the sequence length of its first array ([batch, T] ids)
    let seq_len = match inputs.first() {
        Some(p) => {
            let t = prunekit_io::npy::read(p, &candle_core::Device::Cpu)?;
            (t.rank() == 2).then(|| t.dims()[1])
        }
        None => None,
    };
    let g = load_model_seq(model, seq_len)?;
    if inputs.len() != g.inputs.len() {
        bail!(
            "{} takes {} input(s), got {} --input (one .npy per input, in the order `prunekit info` lists them)",
            model.display(),
            g.inputs.len(),
            inputs.len()
        );
    }
    let device = g.device();
    let mut xs = Vec::new();
    for (p, spec) in inputs.iter().zip(&g.inputs) {
        let t = prunekit_io::npy::read(p, &device)?;
        if t.dims().get(1..) != Some(spec.shape.as_slice()) {
            bail!(
                "{}: shape {:?} does not fit input `{}` [batch, {}]",
                p.display(),
                t.dims(),
                spec.name,
                spec.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let t = match spec.kind {
            prunekit_graph::InputKind::Ids => t.to_dtype(candle_core::DType::U32)?,
            prunekit_graph::InputKind::Float => t.to_dtype(g.dtype())?,
        };
        xs.push(t);
    }
    let ys = prunekit_graph::Executor::new(0)
        .eval(&g, &xs)
        .with_context(|| format!("running {}", model.display()))?;
    for (k, y) in ys.iter().enumerate() {
        let p = if k == 0 {
            output.to_path_buf()
        } else {
            let mut s = output.as_os_str().to_owned();
            s.push(format!(".{k}.npy"));
            s.into()
        };
        prunekit_io::npy::write(&p, y)?;
        println!("wrote {} {:?}", p.display(), y.dims());
    }
    Ok(())
}

pub(crate) fn check_output(input: &Path, output: &Path) -> Result<()> {
    if prunekit_io::same_file(input, output) {
        bail!(
            "{}: refusing to overwrite the input model; choose another output directory",
            output.display()
        );
    }
    Ok(())
}

/// Saves in the format `output`'s extension names (`.onnx`, `.safetensors`, `.pt`; else our
/// directory); refuses to write over `input`.
pub(crate) fn save_model(
    g: &Graph,
    output: &Path,
    input: Option<&Path>,
) -> Result<prunekit_io::Format> {
    let f = prunekit_io::save(g, output, input)
        .with_context(|| format!("cannot save model to {}", output.display()))?;
    let masked = g.params().filter(|(_, _, p)| p.mask.is_some()).count();
    if masked > 0 && f != prunekit_io::Format::Native {
        eprintln!(
            "note: {masked} masked weight(s) written dense with their zeros: {} readers take dense \
             tensors only (ONNX runtimes do not read sparse initialisers); our format (-o DIR) \
             stores them compressed",
            f.name()
        );
    }
    if !g.carried.is_empty() && f != prunekit_io::Format::Native {
        let names: Vec<&str> = g.carried.keys().map(String::as_str).take(3).collect();
        eprintln!(
            "note: {} tensor(s) of the source directory that the graph does not compute with ({}{}) are not in the {} file; `--format hf` and our format (-o DIR) keep them",
            g.carried.len(),
            names.join(", "),
            if g.carried.len() > 3 { ", ..." } else { "" },
            f.name()
        );
    }
    Ok(f)
}

/// Writes a Hugging Face directory ([`prunekit_io::hf::save_dir`]).
pub(crate) fn save_hf(
    g: &Graph,
    output: &Path,
    hf: &crate::HfOutArgs,
    input: Option<&Path>,
) -> Result<()> {
    let dtype = match hf.dtype.as_str() {
        "f16" => candle_core::DType::F16,
        "bf16" => candle_core::DType::BF16,
        _ => candle_core::DType::F32,
    };
    prunekit_io::hf::save_dir(g, output, dtype, hf.allow_nonuniform, input).with_context(|| {
        format!(
            "cannot write the Hugging Face directory {}",
            output.display()
        )
    })?;
    if let Err(why) = prunekit_io::hf::check_loadable(g) {
        eprintln!(
            "note: {} is readable by prunekit only (--allow-nonuniform): {why}",
            output.display()
        );
    } else if let Some(note) = prunekit_io::hf::loaders_note(g) {
        eprintln!("note: {}: {note}", output.display());
    }
    Ok(())
}

/// Resolves `--data` (or the dataset recorded in the model) to a train/test split.
pub(crate) fn load_data(arg: &DataArgs, g: &Graph, seed: u64) -> Result<(Split, String)> {
    let recorded = g
        .meta
        .get("dataset")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let Some(name) = arg.data.clone().or(recorded) else {
        bail!(
            "no dataset: pass --data {} or a directory of Fashion-MNIST-style idx files",
            prunekit_data::DATASETS.join("|")
        );
    };
    load_data_named(&name, seed)
}

/// A dataset by name (`digits`, `fashion-mnist`) or a directory of idx files.
pub(crate) fn load_data_named(name: &str, seed: u64) -> Result<(Split, String)> {
    let name = name.to_string();
    if prunekit_data::DATASETS.contains(&name.as_str()) {
        let (split, _) = prunekit_data::load(&name, None, seed)
            .with_context(|| format!("cannot load dataset `{name}`"))?;
        return Ok((split, name));
    }
    let dir = Path::new(&name);
    if !dir.exists() {
        bail!(
            "data path `{name}` does not exist (known datasets: {})",
            prunekit_data::DATASETS.join(", ")
        );
    }
    let (split, _) = prunekit_data::fashion_mnist(Some(dir))
        .with_context(|| format!("cannot load data from {}", dir.display()))?;
    Ok((split, "fashion-mnist".into()))
}

fn train_config(a: &TrainArgs, n_train: usize, progress: bool, label: &str) -> Result<TrainConfig> {
    if a.batch_size == 0 || a.epochs == 0 {
        bail!("--epochs and --batch-size must be positive");
    }
    if a.lr.is_nan() || a.lr <= 0.0 {
        bail!("--lr must be positive, got {}", a.lr);
    }
    let steps = a.epochs * n_train.div_ceil(a.batch_size);
    Ok(TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        optimizer: match a.optimizer {
            OptimizerArg::Sgd => OptimizerKind::sgd(a.momentum, a.weight_decay),
            OptimizerArg::Adamw => OptimizerKind::adamw(a.weight_decay),
        },
        schedule: match a.schedule {
            ScheduleArg::Cosine => LrSchedule::Cosine {
                total_steps: steps,
                min_factor: 0.0,
            },
            ScheduleArg::Step => LrSchedule::Step {
                step_size: (steps / 3).max(1),
                gamma: 0.1,
            },
            ScheduleArg::Constant => LrSchedule::Constant,
        },
        augment: Augment {
            crop_padding: a.crop_padding,
            hflip: a.hflip,
        },
        seed: a.seed,
        progress,
        label: label.to_string(),
    })
}

fn train_cmd(
    g: Graph,
    output: &Path,
    split: Split,
    a: &TrainArgs,
    json: bool,
    label: &str,
) -> Result<()> {
    train_cmd_then(g, output, split, a, json, label, None)
}

/// [`train_cmd`], then (for a Transformer trained at a shorter length) the sequence length
/// `restore_seq` set back before saving.
fn train_cmd_then(
    g: Graph,
    output: &Path,
    split: Split,
    a: &TrainArgs,
    json: bool,
    label: &str,
    restore_seq: Option<usize>,
) -> Result<()> {
    let mut g = g;
    let cfg = train_config(a, split.train.len(), !json, label)?;
    let t0 = Instant::now();
    let logs = fit(&mut g, &split.train, Some(&split.test), &cfg)?;
    let seconds = t0.elapsed().as_secs_f64();
    if let Some(t) = restore_seq {
        prunekit_io::hf::set_sequence_length(&mut g, t)
            .with_context(|| format!("setting the sequence length back to {t}"))?;
    }
    save_model(&g, output, None)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "epochs": logs, "seconds": seconds, "output": output })
            )?
        );
    } else {
        let rows: Vec<Vec<String>> = logs
            .iter()
            .map(|l| {
                vec![
                    l.epoch.to_string(),
                    format!("{:.4}", l.lr),
                    format!("{:.4}", l.train_loss),
                    l.train_accuracy
                        .map_or("-".into(), |v| format!("{:.2}%", 100.0 * v)),
                    l.test
                        .as_ref()
                        .map_or("-".into(), |e| format!("{:.4}", e.loss)),
                    l.test_headline()
                        .map_or("-".into(), |(n, v)| metric_value(n, v)),
                    format!("{:.1}s", l.seconds),
                ]
            })
            .collect();
        let headline = format!("test {}", split.test.task.headline());
        println!(
            "{}",
            render(
                &[
                    "epoch",
                    "lr",
                    "train loss",
                    "train acc",
                    "test loss",
                    headline.as_str(),
                    "time"
                ],
                &rows
            )
        );
        println!("saved {} ({:.1}s)", output.display(), seconds);
    }
    Ok(())
}

/// A summary as JSON: the task's metrics by name (`accuracy`, `auc`, `rmse`, ...), `headline`,
/// `loss`, params, nonzeros, MACs, latency and file size.
pub(crate) fn summary_json(s: &Summary) -> serde_json::Value {
    json!(s)
}

/// A metric's value as a person reads it: shares in percent, others to four decimals.
pub(crate) fn metric_value(name: &str, v: f64) -> String {
    if prunekit_report::model::metric_unit(name) == prunekit_report::model::Unit::Fraction {
        format!("{:.2}%", 100.0 * v)
    } else {
        format!("{v:.4}")
    }
}

/// One row per metric of the task (headline first): before, after, and the change (points for
/// shares, the difference otherwise).
pub(crate) fn metric_rows(b: &Summary, a: &Summary) -> Vec<Vec<String>> {
    let mut names: Vec<&String> = a.metrics.keys().collect();
    if let Some(h) = &a.headline {
        names.sort_by_key(|n| *n != h);
    }
    names
        .into_iter()
        .map(|n| {
            let (x, y) = (b.metrics.get(n).copied(), a.metrics.get(n).copied());
            let cell = |v: Option<f64>| v.map_or("-".into(), |v| metric_value(n, v));
            let fraction =
                prunekit_report::model::metric_unit(n) == prunekit_report::model::Unit::Fraction;
            vec![
                n.clone(),
                cell(x),
                cell(y),
                match (x, y) {
                    (Some(x), Some(y)) if fraction => format!("{:+.2} pt", 100.0 * (y - x)),
                    (Some(x), Some(y)) => format!("{:+.4}", y - x),
                    _ => "-".into(),
                },
            ]
        })
        .collect()
}

fn ratio(before: f64, after: f64) -> String {
    if before > 0.0 {
        format!("{:.2}x", after / before)
    } else {
        "-".into()
    }
}

/// A row of counts: before, after, after/before.
fn count_row(label: &str, before: f64, after: f64) -> Vec<String> {
    vec![
        label.into(),
        human(before),
        human(after),
        ratio(before, after),
    ]
}

/// The before/after table: one row per measure, with the ratio after/before.
pub(crate) fn before_after_table(b: &Summary, a: &Summary) -> String {
    let mut rows = metric_rows(b, a);
    rows.extend([
        count_row("params", b.params as f64, a.params as f64),
        count_row("nonzeros", b.nonzeros as f64, a.nonzeros as f64),
        count_row("MACs", b.macs as f64, a.macs as f64),
        count_row(
            "MACs (zeros skipped)",
            b.effective_macs as f64,
            a.effective_macs as f64,
        ),
        vec![
            "latency (batch 1)".into(),
            format!("{:.3} ms", b.latency_ms),
            format!("{:.3} ms", a.latency_ms),
            ratio(b.latency_ms, a.latency_ms),
        ],
        vec![
            "file size".into(),
            format!("{:.1} KB", b.file_bytes as f64 / 1024.0),
            format!("{:.1} KB", a.file_bytes as f64 / 1024.0),
            ratio(b.file_bytes as f64, a.file_bytes as f64),
        ],
    ]);
    render(&["", "before", "after", "after/before"], &rows)
}

fn demo(save: Option<&Path>, json: bool, seed: u64) -> Result<()> {
    let t0 = Instant::now();
    let log = |msg: &str| {
        if !json {
            eprintln!("{msg}");
        }
    };
    let (split, _) = prunekit_data::digits(seed, 0.2)?;
    let mut dense = prunekit_zoo::build("digits-cnn", seed)?;
    dense.meta.insert("dataset".into(), json!("digits"));
    log(&format!(
        "digits: {} train / {} test images of 8x8; model digits-cnn ({} params)",
        split.train.len(),
        split.test.len(),
        human(dense.param_count() as f64)
    ));
    let mut cfg = TrainConfig::sgd_cosine(15, 32, 0.05, split.train.len());
    cfg.seed = seed;
    cfg.progress = !json;
    fit(&mut dense, &split.train, None, &cfg)?;
    let before = summarize(&dense, Some(&split.test))?;

    let mut pruned = dense.clone();
    let report = prune_structured(&mut pruned, &StructuredConfig::new(0.5), &Norm::L1)?;
    for gp in &report.groups {
        log(&format!(
            "structured: {} {} -> {} {} (L1 norm)",
            gp.group, gp.before, gp.after, gp.label
        ));
    }
    magnitude_prune(&mut pruned, Target::Ratio(0.5), Scope::Layer)?;
    log("unstructured: 50% of the remaining weights of every layer masked by magnitude");
    let just_pruned = prunekit_train::evaluate(&pruned, &split.test, 256)?;
    log(&format!(
        "accuracy right after pruning: {:.2}%",
        100.0 * just_pruned.accuracy().unwrap_or(0.0)
    ));
    let mut ft = TrainConfig::sgd_cosine(8, 32, 0.02, split.train.len());
    ft.seed = seed;
    ft.progress = !json;
    ft.label = "finetune".into();
    fit(&mut pruned, &split.train, None, &ft)?;
    let after = summarize(&pruned, Some(&split.test))?;
    if let Some(dir) = save {
        save_model(&dense, &dir.join("dense"), None)?;
        save_model(&pruned, &dir.join("pruned"), None)?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    if json {
        let out = json!({
            "before": summary_json(&before),
            "after": summary_json(&after),
            "after_pruning_before_finetune": { "accuracy": just_pruned.accuracy() },
            "groups": report.groups,
            "wall_seconds": seconds,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", before_after_table(&before, &after));
        if let Some(dir) = save {
            println!(
                "saved {} and {}",
                dir.join("dense").display(),
                dir.join("pruned").display()
            );
        }
        println!(
            "demo finished in {seconds:.1}s ({} threads)",
            prunekit_measure::threads()
        );
    }
    Ok(())
}

/// What every sparsity figure counts (printed by `info`).
const SPARSITY_COUNTS: &str = "zeros among the weight matrices and kernels (rank >= 2); biases \
    and norm scales are not counted (params and nonzeros count every trainable value)";

fn info(path: &Path, seq_len: Option<usize>, batch: Option<usize>, json: bool) -> Result<()> {
    let g = load_model_seq(path, seq_len)?;
    // measured first, before other work leaves buffers the allocator reuses unseen
    let measured = batch
        .map(|b| prunekit_measure::model_measures(&g, Some(b), 3.0))
        .transpose()?;
    let shapes = g.validate()?;
    let node_macs = g.node_macs()?;
    let mut layers = Vec::new();
    for (n, m) in g.nodes.iter().zip(&node_macs) {
        let params: usize = n
            .params
            .values()
            .filter(|p| p.role.trainable())
            .map(|p| p.tensor().elem_count())
            .sum();
        let w = prunekit_graph::WeightCounts::of(n.params.values())?;
        layers.push(json!({
            "name": n.name, "op": n.op.type_name(), "inputs": n.inputs, "shape": shapes[&n.name],
            "params": params, "weights": w.weights, "zeros": w.zeros, "macs": m.dense,
            "sparsity": w.sparsity(),
        }));
    }
    let params = g.param_count();
    let nonzeros = g.nonzero_count()?;
    let weights = g.weight_counts()?;
    let macs = g.macs()?;
    let seq = prunekit_measure::sequence_length(&g).map(|(_, t)| t);
    let per_token = prunekit_measure::macs_per_token(&g)?;
    if json {
        let out = json!({
            "name": g.name, "inputs": g.inputs, "outputs": g.outputs, "layers": layers,
            "params": params, "nonzeros": nonzeros, "macs": macs, "effective_macs": g.effective_macs()?,
            "weights": weights.weights, "weight_zeros": weights.zeros,
            "sparsity": weights.sparsity(), "sparsity_counts": SPARSITY_COUNTS, "meta": g.meta,
            "seq_len": seq, "macs_per_token": per_token, "measured": measured,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("model {} ({})", g.name, path.display());
    println!("sparsity: {SPARSITY_COUNTS}");
    for i in &g.inputs {
        println!("input {}: {:?} ({:?})", i.name, i.shape, i.kind);
    }
    let rows: Vec<Vec<String>> = layers
        .iter()
        .map(|l| {
            vec![
                l["name"].as_str().unwrap_or("").to_string(),
                l["op"].as_str().unwrap_or("").to_string(),
                l["shape"].to_string(),
                human(l["params"].as_f64().unwrap_or(0.0)),
                human(l["macs"].as_f64().unwrap_or(0.0)),
                format!("{:.1}%", 100.0 * l["sparsity"].as_f64().unwrap_or(0.0)),
            ]
        })
        .collect();
    println!(
        "{}",
        render(
            &["node", "op", "output", "params", "MACs", "sparsity"],
            &rows
        )
    );
    println!(
        "total: {} params, {} nonzero; {} weights, {:.1}% zero; {} MACs per sample; outputs: {}",
        human(params as f64),
        human(nonzeros as f64),
        human(weights.weights as f64),
        100.0 * weights.sparsity(),
        human(macs as f64),
        g.outputs.join(", ")
    );
    if let Some(m) = &measured {
        println!("{}", render(&["", "value"], &measure_rows(m)));
    } else if let (Some((name, t)), Some(per)) = (prunekit_measure::sequence_length(&g), per_token)
    {
        println!(
            "{} MACs per token at {t} tokens per sample (input `{name}`)",
            human(per)
        );
    }
    Ok(())
}

/// Rows of [`prunekit_measure::ModelMeasures`] as `info` and `eval --text` print them.
pub(crate) fn measure_rows(m: &prunekit_measure::ModelMeasures) -> Vec<Vec<String>> {
    let b = |batch: usize| prunekit_report::model::batch_label(batch, m.seq_len);
    let mut rows = vec![
        vec!["params".into(), human(m.params as f64)],
        vec!["MACs per sample".into(), human(m.macs as f64)],
    ];
    if let (Some(t), Some(per)) = (m.seq_len, m.macs_per_token) {
        rows.push(vec![
            format!("MACs per token (sequence length {t})"),
            human(per),
        ]);
    }
    for l in std::iter::once(&m.latency).chain(m.latency_batch.as_ref()) {
        rows.push(vec![
            format!("latency, {}", b(l.batch)),
            format!(
                "{:.3} ms (p90 {:.3}, {} runs, {} threads{})",
                l.median_ms,
                l.p90_ms,
                l.runs,
                l.threads,
                sparse_note(l)
            ),
        ]);
    }
    if let Some(mem) = &m.memory {
        rows.push(vec![
            format!("peak resident memory, {}", b(mem.batch)),
            format!(
                "{:.1} MiB (the inference added {:.1} MiB{})",
                mem.peak_kb as f64 / 1024.0,
                mem.delta_kb as f64 / 1024.0,
                if mem.hwm_reset { "" } else { "; a lower bound" }
            ),
        ]);
    }
    rows
}

fn eval_cmd(model: &Path, data: &DataArgs, latency_batch: Option<usize>, json: bool) -> Result<()> {
    let g = load_model(model)?;
    if latency_batch == Some(0) {
        bail!("--latency-batch must be at least 1");
    }
    // measured first, before the evaluation leaves buffers the allocator reuses unseen
    let memory = prunekit_measure::inference_memory(&g, latency_batch.unwrap_or(1))?;
    // a policy is measured in its environment (`--data cartpole`, or the one an RL recipe
    // recorded): its mean return over 100 fixed-seed episodes
    let env = data
        .data
        .clone()
        .filter(|d| prunekit_data::env::ENVIRONMENTS.contains(&d.as_str()))
        .or_else(|| {
            g.meta
                .get("environment")
                .and_then(|v| v.as_str())
                .filter(|_| data.data.is_none())
                .map(str::to_string)
        });
    // without a dataset (none given, none recorded in the model) everything that needs none
    let recorded = g.meta.get("dataset").and_then(|v| v.as_str()).is_some();
    let loaded = if env.is_some() || (data.data.is_none() && !recorded) {
        None
    } else {
        Some(load_data(data, &g, 0)?)
    };
    let s = match &env {
        Some(name) => {
            let mut e = prunekit_data::env::environment(name)?;
            prunekit_measure::policy::policy_summary(&g, e.as_mut())
                .with_context(|| format!("measuring the policy in `{name}`"))?
                .0
        }
        None => summarize(&g, loaded.as_ref().map(|(split, _)| &split.test))?,
    };
    let batched = match latency_batch {
        Some(n) => Some(prunekit_measure::latency(&g, n, 5, 30)?),
        None => None,
    };
    let label = |b: usize| prunekit_report::model::batch_label(b, s.seq_len);
    if json {
        let mut v = summary_json(&s);
        v["dataset"] = json!(loaded.as_ref().map(|(_, name)| name));
        v["samples"] = json!(loaded.as_ref().map(|(split, _)| split.test.len()));
        if let Some(name) = &env {
            v["environment"] = json!(name);
            v["episodes"] = json!(prunekit_measure::policy::EVAL_EPISODES);
        }
        v["latency_batch"] = json!(batched);
        v["memory"] = json!(memory);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let rows = vec![vec![
            "dataset".into(),
            match (&loaded, &env) {
                (Some((split, name)), _) => {
                    format!("{name} (test, {} samples)", split.test.len())
                }
                (None, Some(name)) => format!(
                    "environment {name} ({} episodes, fixed seeds)",
                    prunekit_measure::policy::EVAL_EPISODES
                ),
                (None, None) => "none (pass --data for the task's metrics)".into(),
            },
        ]];
        let mut names: Vec<&String> = s.metrics.keys().collect();
        if let Some(h) = &s.headline {
            names.sort_by_key(|n| *n != h);
        }
        let mut rows = [
            rows,
            names
                .into_iter()
                .map(|n| vec![n.clone(), metric_value(n, s.metrics[n])])
                .collect(),
        ]
        .concat();
        rows.extend([
            vec![
                "loss".into(),
                s.loss.map_or("-".into(), |l| format!("{l:.4}")),
            ],
            vec!["params".into(), human(s.params as f64)],
            vec!["nonzeros".into(), human(s.nonzeros as f64)],
            vec![
                "weight sparsity".into(),
                format!("{:.1}%", 100.0 * s.weight_sparsity),
            ],
            vec!["MACs".into(), human(s.macs as f64)],
            vec![
                "MACs (zeros skipped)".into(),
                human(s.effective_macs as f64),
            ],
            vec![
                format!("latency ({})", label(1)),
                format!(
                    "{:.3} ms (p90 {:.3}{})",
                    s.latency.median_ms,
                    s.latency.p90_ms,
                    sparse_note(&s.latency)
                ),
            ],
            vec![
                "file size".into(),
                format!("{:.1} KB", s.file_bytes as f64 / 1024.0),
            ],
        ]);
        if let Some(l) = batched {
            rows.push(vec![
                format!("latency ({})", label(l.batch)),
                format!(
                    "{:.3} ms (p90 {:.3}, {} runs{})",
                    l.median_ms,
                    l.p90_ms,
                    l.runs,
                    sparse_note(&l)
                ),
            ]);
        }
        if let (Some(t), Some(per)) = (s.seq_len, s.macs_per_token) {
            rows.push(vec![
                format!("MACs per token (sequence length {t})"),
                human(per),
            ]);
        }
        if let Some(m) = memory {
            rows.push(vec![
                format!("peak resident memory ({})", label(m.batch)),
                format!("{:.1} MiB", m.peak_kb as f64 / 1024.0),
            ]);
        }
        println!("{}", render(&["", "value"], &rows));
    }
    Ok(())
}
