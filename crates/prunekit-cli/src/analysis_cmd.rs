//! `prunekit sensitivity` (each layer pruned alone; a per-layer proposal for a global target) and
//! `prunekit sweep` (one model at several pruning levels: accuracy vs size, latency vs MACs).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use prunekit_data::Split;
use prunekit_prune::{analyse_sensitivity, criterion_by_name, propose, Calibration, Granularity};
use prunekit_recipe::recipe::TrainSpec;
use prunekit_recipe::sweep::{sweep, SweepKind};
use serde_json::json;

use crate::commands::{load_data, load_model};
use crate::report_cmd::{report_graphs, write};
use crate::table::{human, render};
use crate::DataArgs;

fn levels(s: &str, what: &str) -> Result<Vec<f64>> {
    let v: Result<Vec<f64>, _> = s.split(',').map(|x| x.trim().parse::<f64>()).collect();
    match v {
        Ok(v) if !v.is_empty() && v.iter().all(|r| (0.0..1.0).contains(r)) => Ok(v),
        _ => bail!("{what} `{s}` must be a comma-separated list of ratios in [0, 1)"),
    }
}

fn limited(mut split: Split, test_limit: Option<usize>) -> Result<Split> {
    if let Some(n) = test_limit {
        if n == 0 {
            bail!("--test-limit must be positive");
        }
        let idx: Vec<usize> = (0..split.test.len().min(n)).collect();
        split.test = split.test.subset(&idx);
    }
    Ok(split)
}

#[derive(Args, Clone)]
pub struct SensitivityArgs {
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// prune channel groups (structured) or single weights (unstructured)
    #[arg(long, default_value = "structured")]
    pub granularity: String,
    /// ratios each layer is pruned to, alone
    #[arg(long, default_value = "0.25,0.5,0.75")]
    pub ratios: String,
    #[arg(long, default_value = "l1")]
    pub criterion: String,
    /// propose per-layer ratios that save this fraction of the MACs (structured) or weights
    /// (unstructured) with the least predicted accuracy drop
    #[arg(long)]
    pub target: Option<f64>,
    /// evaluate on the first N test samples
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// write the analysis and proposal as JSON (a structured recipe stage reads it: `proposal = FILE`)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// also write a before/after report (report.md, report.html, report.json) into DIR
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn sensitivity(a: &SensitivityArgs) -> Result<()> {
    let g = load_model(&a.model)?;
    crate::report_cmd::check_report_dir(a.report.as_deref())?;
    let (split, name) = load_data(&a.data, &g, 0)?;
    let split = limited(split, a.test_limit)?;
    let granularity = match a.granularity.as_str() {
        "structured" => Granularity::Structured,
        "unstructured" => Granularity::Unstructured,
        other => bail!("--granularity `{other}` is not one of structured, unstructured"),
    };
    let ratios = levels(&a.ratios, "--ratios")?;
    let calib = Calibration::from_dataset(&split.train, 4, 64, 0, &g.device())?;
    let crit = criterion_by_name(&a.criterion, &g, Some(&calib), 0)?;
    let mut metric = |h: &prunekit_graph::Graph| -> prunekit_prune::Result<f64> {
        // the headline metric, negated when lower is better (sensitivity maximises)
        prunekit_train::evaluate(h, &split.test, 256)
            .map(|e| {
                e.headline_value()
                    .map_or(f64::NAN, |v| e.direction().score(v))
            })
            .map_err(|e| prunekit_prune::PruneError::Invalid(e.to_string()))
    };
    let quiet = a.json;
    let s = analyse_sensitivity(
        &g,
        granularity,
        crit.as_ref(),
        &ratios,
        &mut metric,
        &mut |l| {
            if !quiet {
                eprintln!("measured {l}");
            }
        },
    )?;
    let proposal = a.target.map(|t| propose(&s, t)).transpose()?;
    // the curves hold the headline metric, negated when lower is better
    let headline = match split.test.task.direction() {
        prunekit_data::Direction::Higher => split.test.task.headline().to_string(),
        prunekit_data::Direction::Lower => format!("-{}", split.test.task.headline()),
    };
    if let Some(dir) = &a.report {
        let mut r = report_graphs(&[&g], &[model_name(&a.model)], &split, &name, 32, !a.json)?;
        r.title = format!("Sensitivity report: {}", model_name(&a.model));
        r.sensitivity = Some(prunekit_report::Sensitivity {
            metric: headline.clone(),
            unit: prunekit_report::model::metric_unit(&headline),
            curves: s
                .curves
                .iter()
                .map(|c| prunekit_report::SensitivityCurve {
                    layer: c.layer.clone(),
                    points: c
                        .points
                        .iter()
                        .map(|p| prunekit_report::SensitivityPoint {
                            ratio: p.ratio,
                            drop: p.drop,
                        })
                        .collect(),
                })
                .collect(),
        });
        write(dir, &r, a.json)?;
    }
    let v = json!({ "model": a.model, "dataset": name, "test_samples": split.test.len(),
        "sensitivity": s, "proposal": proposal });
    if let Some(out) = &a.output {
        std::fs::write(out, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "base accuracy {:.2}% on {} test samples; accuracy drop (points) with each layer pruned alone:",
        100.0 * s.base_metric,
        split.test.len()
    );
    let mut header = vec!["layer".to_string()];
    header.extend(ratios.iter().map(|r| format!("{r}")));
    let rows: Vec<Vec<String>> = s
        .curves
        .iter()
        .map(|c| {
            let mut r = vec![c.layer.clone()];
            r.extend(c.points.iter().map(|p| format!("{:+.2}", 100.0 * p.drop)));
            r
        })
        .collect();
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    println!("{}", render(&h, &rows));
    if let Some(p) = proposal {
        println!(
            "proposal for {:.0}% saving (predicted {:.1}%, predicted drop {:.2} points):",
            100.0 * p.target_saving,
            100.0 * p.predicted_saving,
            100.0 * p.predicted_drop
        );
        for (layer, r) in &p.ratios {
            println!("  {layer} = {r}");
        }
    }
    Ok(())
}

#[derive(Args, Clone)]
pub struct SweepArgs {
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// structured ratios, e.g. 0.1,0.2,0.3,0.4
    #[arg(
        long,
        conflicts_with = "unstructured",
        required_unless_present = "unstructured"
    )]
    pub structured: Option<String>,
    /// unstructured sparsities, e.g. 0.5,0.8,0.9
    #[arg(long)]
    pub unstructured: Option<String>,
    #[arg(long, default_value = "l1")]
    pub criterion: String,
    /// fine-tune every pruned model for this many epochs (0: no fine-tuning)
    #[arg(long, default_value_t = 0)]
    pub finetune_epochs: usize,
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// also time inference at this batch size
    #[arg(long)]
    pub latency_batch: Option<usize>,
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// also write a before/after report (report.md, report.html, report.json) into DIR
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn sweep_cmd(a: &SweepArgs) -> Result<()> {
    let g = load_model(&a.model)?;
    crate::report_cmd::check_report_dir(a.report.as_deref())?;
    let (split, name) = load_data(&a.data, &g, 0)?;
    let split = limited(split, a.test_limit)?;
    let (kind, lv) = match (&a.structured, &a.unstructured) {
        (Some(s), _) => (SweepKind::Structured, levels(s, "--structured")?),
        (_, Some(u)) => (SweepKind::Unstructured, levels(u, "--unstructured")?),
        _ => bail!("pass --structured LEVELS or --unstructured LEVELS"),
    };
    let ft = (a.finetune_epochs > 0).then(|| TrainSpec {
        epochs: a.finetune_epochs,
        lr: a.lr,
        batch_size: a.batch_size,
        ..TrainSpec::default()
    });
    let quiet = a.json;
    let points = sweep(
        &g,
        &split,
        kind,
        &lv,
        &a.criterion,
        ft.as_ref(),
        a.latency_batch,
        &mut |m| {
            if !quiet {
                eprintln!("{m}");
            }
        },
    )?;
    let headline = split.test.task.headline().to_string();
    if let Some(dir) = &a.report {
        let mut r = report_graphs(&[&g], &[model_name(&a.model)], &split, &name, 32, !a.json)?;
        r.title = format!("Sweep report: {}", model_name(&a.model));
        let base = &points[0];
        r.sweeps.push(prunekit_report::Sweep {
            label: format!(
                "{} {} pruning{}",
                a.criterion,
                if kind == SweepKind::Structured {
                    "structured"
                } else {
                    "unstructured"
                },
                if a.finetune_epochs > 0 {
                    format!(", {} epoch(s) of fine-tuning", a.finetune_epochs)
                } else {
                    String::new()
                }
            ),
            metric: headline.clone(),
            unit: prunekit_report::model::metric_unit(&headline),
            points: points
                .iter()
                .map(|p| prunekit_report::SweepPoint {
                    sparsity: 1.0 - p.nonzeros as f64 / base.nonzeros.max(1) as f64,
                    mac_fraction: p.effective_macs as f64 / base.macs.max(1) as f64,
                    metric: p.metrics.get(&headline).copied().unwrap_or(f64::NAN),
                    macs: Some(p.effective_macs),
                    latency_ms: Some(p.latency_ms),
                })
                .collect(),
        });
        write(dir, &r, a.json)?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "model": a.model, "dataset": name,
                "kind": kind, "criterion": a.criterion, "finetune_epochs": a.finetune_epochs,
                "points": points }))?
        );
        return Ok(());
    }
    let base = &points[0];
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                format!("{}", p.level),
                p.metrics
                    .get(&headline)
                    .map_or("-".into(), |&x| crate::commands::metric_value(&headline, x)),
                human(p.params as f64),
                human(p.nonzeros as f64),
                format!(
                    "{} ({:.2}x)",
                    human(p.macs as f64),
                    p.macs as f64 / base.macs as f64
                ),
                format!(
                    "{:.3} ms ({:.2}x)",
                    p.latency_ms,
                    p.latency_ms / base.latency_ms
                ),
                p.latency_batch_ms
                    .map_or("-".into(), |l| format!("{l:.2} ms")),
            ]
        })
        .collect();
    println!(
        "{}",
        render(
            &[
                "level",
                "accuracy",
                "params",
                "nonzeros",
                "MACs",
                "latency b1",
                "latency batch"
            ],
            &rows
        )
    );
    Ok(())
}

fn model_name(p: &std::path::Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
}
