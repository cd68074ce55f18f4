//! `prunekit prune`: whole layers, structured units and unstructured masks, in that order, with an
//! optional check of the structured rewrite against the masked original.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use prunekit_graph::Graph;
use prunekit_prune::{random_inputs, verify};
use prunekit_recipe::recipe::{
    DataSpec, LayersStage, ModelSpec, NmStage, SparseTrainStage, StructuredStage, ThresholdStage,
    TrainSpec, UnstructuredStage,
};
use prunekit_recipe::{run_stage, Recipe, RunCx, Stage};
use serde_json::json;

use crate::commands::{check_output, load_data_named, load_model, save_model};
use crate::table::human;
use crate::ScopeArg;

#[derive(Args, Clone)]
pub struct PruneArgs {
    pub model: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
    /// fraction of the units (channels, heads, hidden units, conv groups) of every prunable
    /// group to remove, in [0, 1)
    #[arg(long)]
    pub structured: Option<f64>,
    /// importance criterion for every pruning step (l1, l2, random, lamp, fpgm, bn-scale, and the
    /// data-driven ones, which need --calib; an unknown name lists the known ones). Default: l1,
    /// except lamp for --unstructured with --scope global (raw magnitudes are not comparable
    /// across layers)
    #[arg(long)]
    pub criterion: Option<String>,
    /// keep structured widths a multiple of N
    #[arg(long, default_value_t = 1)]
    pub round_to: usize,
    /// every group loses at least this fraction of its units
    #[arg(long, default_value_t = 0.0)]
    pub min_ratio: f64,
    /// and at most this fraction (one unit always stays)
    #[arg(long, default_value_t = 1.0)]
    pub max_ratio: f64,
    /// reach the structured ratio in N rounds, re-scoring between them
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// never prune the output channels of this node, nor mask its weights (repeatable)
    #[arg(long = "protect", value_name = "NODE")]
    pub protect: Vec<String>,
    /// remove the N residual blocks / transformer layers with the lowest block influence
    /// (1 - cosine similarity of their input and output on random inputs)
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// check the structured rewrite: the pruned model against the original with the removed
    /// slices masked, on random inputs
    #[arg(long)]
    pub verify: bool,
    /// fraction of the weights to mask by magnitude, in [0, 1)
    #[arg(long, conflicts_with = "threshold")]
    pub unstructured: Option<f64>,
    /// mask every weight with |w| below T
    #[arg(long, conflicts_with = "nm")]
    pub threshold: Option<f64>,
    /// N:M sparsity along the input dimension, e.g. 2:4; weights whose input size M does not
    /// divide are left dense and listed
    #[arg(long, value_name = "N:M", conflicts_with = "unstructured")]
    pub nm: Option<String>,
    /// with --nm: a weight whose input size M does not divide is an error instead
    #[arg(long, requires = "nm")]
    pub strict: bool,
    /// data for calibration batches (data-driven criteria, layer scores) and for the training of
    /// iterative / gradual schedules: `digits`, `fashion-mnist` or an idx directory
    #[arg(long, value_name = "DATA")]
    pub calib: Option<String>,
    /// how --unstructured is reached: one-shot, iterative (rounds of prune + fine-tune) or gradual
    /// (cubic ramp while training); the last two train on --calib data
    #[arg(long, default_value = "one-shot")]
    pub schedule: String,
    /// iterative: number of rounds
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// iterative / gradual: training epochs (per round for iterative)
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// iterative / gradual / --sparse-train: learning rate
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// iterative / gradual / --sparse-train: batch size
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// rank within each layer, over all layers (structured units and unstructured weights), or
    /// within each output row (unstructured only). Default: row for --criterion wanda with
    /// --unstructured, layer otherwise
    #[arg(long, value_enum)]
    pub scope: Option<ScopeArg>,
    /// do not re-estimate the BatchNorm running statistics on the --calib data after pruning
    /// (re-calibration is on by default whenever --calib is given)
    #[arg(long)]
    pub no_recalibrate: bool,
    /// before pruning, train EPOCHS epochs on --calib data with the DepGraph group-sparsity
    /// penalty, which pushes the least important coupled groups to zero
    #[arg(long, value_name = "EPOCHS")]
    pub sparse_train: Option<usize>,
    /// final weight of the group-sparsity penalty (it grows linearly from 0 over the training)
    #[arg(long, default_value_t = 1e-3, requires = "sparse_train")]
    pub sparse_lambda: f64,
    /// the least important unit of a group is penalised ALPHA times the most important
    #[arg(long, default_value_t = 4.0, requires = "sparse_train")]
    pub sparse_alpha: f64,
    /// also write a before/after report (report.md, report.html, report.json) into DIR
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub hf: crate::HfOutArgs,
    #[arg(long)]
    pub json: bool,
}

fn counts(g: &Graph) -> Result<serde_json::Value> {
    Ok(json!({
        "params": g.param_count(),
        "nonzeros": g.nonzero_count()?,
        "weight_sparsity": g.weight_counts()?.sparsity(),
        "macs": g.macs()?,
        "effective_macs": g.effective_macs()?,
    }))
}

/// The recipe stages the flags describe, in the order they run.
pub fn stages(a: &PruneArgs) -> Result<Vec<Stage>> {
    let scope = a.scope.map(|s| match s {
        ScopeArg::Layer => "layer",
        ScopeArg::Global => "global",
        ScopeArg::Row => "row",
    });
    let criterion = a.criterion.clone().unwrap_or_else(|| "l1".into());
    let mut stages = Vec::new();
    if let Some(epochs) = a.sparse_train {
        stages.push(Stage::SparseTrain(SparseTrainStage {
            lambda: a.sparse_lambda,
            alpha: a.sparse_alpha,
            train: TrainSpec {
                epochs,
                lr: a.lr,
                batch_size: a.batch_size,
                ..TrainSpec::default()
            },
        }));
    }
    if let Some(count) = a.layers {
        stages.push(Stage::Layers(LayersStage {
            count,
            score: "influence".into(),
        }));
    }
    if let Some(ratio) = a.structured {
        if scope == Some("row") {
            bail!("--scope row applies to --unstructured only (structured units are ranked per layer or globally)");
        }
        stages.push(Stage::Structured(StructuredStage {
            ratio,
            criterion: criterion.clone(),
            scope: scope.unwrap_or("layer").into(),
            round_to: a.round_to,
            min_ratio: a.min_ratio,
            max_ratio: a.max_ratio,
            steps: a.steps,
            protect: a.protect.clone(),
            ..StructuredStage::new(ratio, &criterion)
        }));
    }
    if let Some(nm) = &a.nm {
        let parsed = nm
            .split_once(':')
            .and_then(|(n, m)| Some((n.trim().parse().ok()?, m.trim().parse().ok()?)));
        let Some((n, m)) = parsed else {
            bail!("--nm `{nm}` is not of the form N:M (e.g. 2:4)");
        };
        stages.push(Stage::Nm(NmStage {
            n,
            m,
            criterion: criterion.clone(),
            exclude: a.protect.clone(),
            strict: a.strict,
        }));
    }
    if let Some(target) = a.unstructured {
        let train = (a.schedule != "one-shot").then(|| TrainSpec {
            epochs: a.epochs,
            lr: a.lr,
            batch_size: a.batch_size,
            ..TrainSpec::default()
        });
        stages.push(Stage::Unstructured(UnstructuredStage {
            target,
            criterion: a.criterion.clone(),
            scope: scope.map(Into::into),
            schedule: a.schedule.clone(),
            rounds: a.rounds,
            train,
            exclude: a.protect.clone(),
            ..UnstructuredStage::default()
        }));
    } else if let Some(value) = a.threshold {
        stages.push(Stage::Threshold(ThresholdStage { value }));
    }
    if stages.iter().all(|s| matches!(s, Stage::SparseTrain(_))) {
        bail!("nothing to do: pass --structured RATIO, --layers N, --unstructured RATIO, --nm N:M or --threshold T");
    }
    Ok(stages)
}

/// The "will it load" check before any pruning, for `--format hf`: the model must carry what the
/// export needs, and (without `--allow-nonuniform`) no stage may give layers widths of their own
/// (the global ranking does), which one config.json cannot state. The widths themselves are
/// checked again after pruning, before anything is written.
fn will_it_load(g: &Graph, stages: &[Stage], a: &PruneArgs) -> Result<()> {
    if !g.meta.contains_key(prunekit_io::hf::META_KEY) {
        bail!(
            "--format hf: {} was not read from a Hugging Face directory or GGUF file, so there are no Hugging Face key names or config to write; leave out --format hf (our format, or .onnx)",
            a.model.display()
        );
    }
    if let Err(why) = prunekit_io::hf::check_loadable(g) {
        if !a.hf.allow_nonuniform {
            bail!("--format hf: the model's widths already cannot be written for the family's loaders: {why}");
        }
    }
    if a.hf.allow_nonuniform {
        return Ok(());
    }
    for st in stages {
        if let Stage::Structured(s) = st {
            if s.scope == "global" {
                bail!(
                    "--format hf with --scope global: the global ranking gives every layer its own number of heads and FFN channels, but the family's config.json holds one value for all layers; use --scope layer (every layer loses the same share: --structured {} keeps the widths uniform), or pass --allow-nonuniform (the directory is then readable by prunekit only)",
                    s.ratio
                );
            }
        }
    }
    Ok(())
}

/// For `--format hf`: the structured stages keep the widths the family's config cannot change
/// ([`prunekit_io::hf::width_locked_nodes`], e.g. GPT-2's hidden size), with a note.
fn protect_locked_widths(g: &Graph, stages: &mut [Stage], quiet: bool) {
    let locked = prunekit_io::hf::width_locked_nodes(g);
    for st in stages {
        if let Stage::Structured(s) = st {
            for n in &locked {
                if !s.protect.contains(n) {
                    if !quiet {
                        eprintln!("note: --format hf: `{n}` keeps its width (the family's loaders derive the head width from the hidden size)");
                    }
                    s.protect.push(n.clone());
                }
            }
        }
    }
}

pub fn prune(a: &PruneArgs) -> Result<()> {
    let mut stages = stages(a)?;
    if a.verify && a.structured.is_none() {
        bail!("--verify checks a structured rewrite: pass --structured RATIO too");
    }
    // the same checks a recipe gets
    Recipe {
        description: None,
        seed: 0,
        model: ModelSpec {
            path: Some(a.model.clone()),
            ..ModelSpec::default()
        },
        data: DataSpec::named("none"),
        task: None,
        train: None,
        dqn: None,
        ddpg: None,
        stages: stages.clone(),
    }
    .check()?;
    let mut g = load_model(&a.model)?;
    check_output(&a.model, &a.output)?;
    if a.hf.format.is_some() {
        will_it_load(&g, &stages, a)?;
        protect_locked_widths(&g, &mut stages, a.json);
    }
    crate::report_cmd::check_report_dir(a.report.as_deref())?;
    let original = a.report.as_ref().map(|_| g.try_clone()).transpose()?;
    let split = match &a.calib {
        Some(d) => Some(load_data_named(d, 0)?.0),
        None => None,
    };
    let cx = RunCx {
        split: split.as_ref(),
        seed: 0,
        progress: !a.json,
        calib_batches: 4,
        calib_batch_size: 64,
        teacher: None,
        device: prunekit_graph::device::default_device(),
        recalibrate: !a.no_recalibrate,
    };
    let mut out = json!({ "before": counts(&g)? });
    let mut seconds = serde_json::Map::new();
    let mut stage_log = Vec::new();
    let (mut shortfalls, mut warnings) = (Vec::new(), Vec::new());
    for stage in &stages {
        let original = match stage {
            Stage::Structured(_) if a.verify => Some(g.try_clone()?),
            _ => None,
        };
        let t0 = Instant::now();
        let done =
            run_stage(&mut g, stage, &cx).with_context(|| format!("{} pruning", stage.kind()))?;
        seconds.insert(stage.kind().into(), json!(t0.elapsed().as_secs_f64()));
        match stage {
            Stage::Structured(_) => {
                for k in ["groups", "shortfalls", "attention", "warning", "unscored"] {
                    out[k] = done.detail[k].clone();
                }
            }
            Stage::Layers(_) => out["layers"] = done.detail.clone(),
            _ => {}
        }
        shortfalls.extend(done.shortfalls.iter().cloned());
        warnings.extend(done.warning.iter().cloned());
        stage_log.push(json!({ "kind": stage.kind(), "detail": done.detail }));
        if let (Some(original), Some(removed)) = (original, done.removed) {
            let t0 = Instant::now();
            let inputs = (0..2)
                .map(|s| random_inputs(&original, 4, 100 + s))
                .collect::<prunekit_prune::Result<Vec<_>>>()?;
            out["verify"] = json!(verify(&original, &g, &removed, &inputs)?);
            seconds.insert("verify".into(), json!(t0.elapsed().as_secs_f64()));
        }
    }
    out["stages"] = json!(stage_log);
    out["sparsity"] = json!(prunekit_prune::layer_sparsity(&g)?);
    out["after"] = counts(&g)?;
    out["seconds"] = json!(seconds);
    if a.hf.format.is_some() {
        crate::commands::save_hf(&g, &a.output, &a.hf, Some(&a.model))?;
    } else {
        save_model(&g, &a.output, Some(&a.model))?;
    }
    out["output"] = json!(a.output);
    if let (Some(dir), Some(before)) = (&a.report, &original) {
        let data = crate::DataArgs {
            data: a.calib.clone(),
        };
        let (split, name) = crate::commands::load_data(&data, before, 0)
            .context("the report measures accuracy: pass --calib DATA or use a model that records its dataset")?;
        let mut r = crate::report_cmd::report_graphs(
            &[before, &g],
            &["before".into(), "after".into()],
            &split,
            &name,
            32,
            !a.json,
        )?;
        prunekit_report::add_recalibration_rows(&mut r, &stage_log);
        crate::report_cmd::write(dir, &r, a.json)?;
        out["report"] = json!(dir);
    }
    // a run that did nothing says so, also with --json (on stderr)
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(l) = out.get("layers") {
        println!("removed layers: {}", l["removed"]);
    }
    if let Some(groups) = out["groups"].as_array() {
        for gp in groups {
            if gp["before"] != gp["after"] {
                println!(
                    "{} ({}): {} -> {}",
                    gp["group"].as_str().unwrap_or("?"),
                    gp["label"].as_str().unwrap_or("?"),
                    gp["before"],
                    gp["after"]
                );
            }
        }
    }
    if let Some(unscored) = out["unscored"].as_array() {
        for u in unscored {
            println!(
                "{} ({}): not scored, kept whole: {}",
                u["group"].as_str().unwrap_or("?"),
                u["label"].as_str().unwrap_or("?"),
                u["reason"].as_str().unwrap_or("?")
            );
        }
    }
    if let Some(heads) = out["attention"].as_array() {
        for h in heads {
            println!(
                "{} (attention): query heads {} -> {}, key/value heads {} -> {}",
                h["node"].as_str().unwrap_or("?"),
                h["heads_before"],
                h["heads_after"],
                h["kv_heads_before"],
                h["kv_heads_after"]
            );
        }
    }
    for line in &shortfalls {
        println!("shortfall: {line}");
    }
    if let Some(layers) = out["sparsity"].as_array() {
        for l in layers
            .iter()
            .filter(|l| l["zeros"].as_u64().unwrap_or(0) > 0)
        {
            let (z, t) = (
                l["zeros"].as_f64().unwrap_or(0.0),
                l["total"].as_f64().unwrap_or(1.0),
            );
            println!(
                "{}.{}: {:.1}% zero",
                l["node"].as_str().unwrap_or("?"),
                l["param"].as_str().unwrap_or("?"),
                100.0 * z / t.max(1.0)
            );
        }
    }
    for st in out["stages"].as_array().into_iter().flatten() {
        let r = &st["detail"]["recalibration"];
        if let (Some(without), Some(with)) = (r["without"].as_f64(), r["with"].as_f64()) {
            let metric = r["metric"].as_str().unwrap_or("accuracy");
            println!(
                "{}: {metric} right after pruning {} without BatchNorm re-calibration, {} with ({} batch norms, {} samples)",
                st["kind"].as_str().unwrap_or("?"),
                crate::commands::metric_value(metric, without),
                crate::commands::metric_value(metric, with),
                r["batch_norms"],
                r["samples"]
            );
        }
    }
    for st in &stage_log {
        let d = &st["detail"];
        if let Some(n) = d["scored_weights"].as_f64() {
            println!(
                "{}: {:.1}% of the {} weights scored by {}{} are zero",
                st["kind"].as_str().unwrap_or("?"),
                100.0 * d["sparsity"].as_f64().unwrap_or(0.0),
                human(n),
                d["criterion"].as_str().unwrap_or("?"),
                d["scope"]
                    .as_str()
                    .map_or(String::new(), |s| format!(" ({s} scope)"))
            );
        }
        for note in d["notes"].as_array().into_iter().flatten() {
            println!("note: {}", note.as_str().unwrap_or("?"));
        }
    }
    if let Some(v) = out.get("verify") {
        println!(
            "verify: max relative error {:.2e} against the masked original",
            v["max_rel_error"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let f = |v: &serde_json::Value, k: &str| human(v[k].as_f64().unwrap_or(0.0));
    println!(
        "params {} -> {}, nonzeros {} -> {}, MACs {} -> {}; saved {}",
        f(&out["before"], "params"),
        f(&out["after"], "params"),
        f(&out["before"], "nonzeros"),
        f(&out["after"], "nonzeros"),
        f(&out["before"], "macs"),
        f(&out["after"], "macs"),
        a.output.display()
    );
    Ok(())
}
