//! `prunekit run RECIPE.toml`: a multi-stage run described in TOML (see examples/recipes/).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use prunekit_recipe::Recipe;
use serde_json::json;

use crate::commands::{before_after_table, save_model, summary_json};

#[derive(Args, Clone)]
pub struct RunArgs {
    /// the recipe (TOML)
    pub recipe: PathBuf,
    /// write the final model here
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// also write a before/after report (report.md, report.html, report.json) into DIR
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &RunArgs) -> Result<()> {
    let recipe = Recipe::load(&a.recipe)?;
    let quiet = a.json;
    let mut log = |m: &str| {
        if !quiet {
            eprintln!("{m}");
        }
    };
    crate::report_cmd::check_report_dir(a.report.as_deref())?;
    if a.report.is_some() && prunekit_data::env::ENVIRONMENTS.contains(&recipe.data.name.as_str()) {
        anyhow::bail!(
            "--report: the report measures models on a dataset; `{}` is an environment (its returns are in --json and the stage log)",
            recipe.data.name
        );
    }
    let done = prunekit_recipe::recipe::run_full(&recipe, !quiet, &mut log)
        .with_context(|| format!("recipe {}", a.recipe.display()))?;
    let (g, report) = (&done.after, &done.report);
    if let (Some(dir), Some(split)) = (&a.report, &done.split) {
        let mut r = crate::report_cmd::report_graphs(
            &[&done.before, &done.after],
            &["before".into(), "after".into()],
            split,
            &report.dataset,
            32,
            !quiet,
        )?;
        let stages: Vec<serde_json::Value> = report
            .stages
            .iter()
            .map(|s| serde_json::json!({ "kind": s.kind, "detail": s.detail }))
            .collect();
        prunekit_report::add_recalibration_rows(&mut r, &stages);
        crate::report_cmd::write(dir, &r, quiet)?;
    }
    if let Some(out) = &a.output {
        save_model(g, out, recipe.model.path.as_deref())?;
    }
    if a.json {
        let v = json!({
            "recipe": a.recipe,
            "description": report.description,
            "dataset": report.dataset,
            "before": summary_json(&report.before),
            "after": summary_json(&report.after),
            "stages": report.stages,
            "output": a.output,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let Some(d) = &report.description {
            println!("{d}");
        }
        for s in &report.stages {
            let m = s.metrics.get(&s.headline).copied();
            println!(
                "stage {} {:<12} {} {:>8}  nonzeros {:>9}  MACs {:>11}  {:6.1} s",
                s.stage,
                s.kind,
                s.headline,
                m.map_or("-".into(), |v| crate::commands::metric_value(
                    &s.headline,
                    v
                )),
                s.nonzeros,
                s.macs,
                s.seconds
            );
            println!("        {}", s.detail);
        }
        println!("{}", before_after_table(&report.before, &report.after));
    }
    Ok(())
}
