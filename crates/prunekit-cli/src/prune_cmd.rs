//! `prunekit prune`: whole layers, structured units and unstructured masks, in that order, with an
//! optional check of the structured rewrite against the masked original.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use prunekit_graph::Graph;
use prunekit_prune::{
    block_influence, find_layers, magnitude_prune, prune_layers, prune_structured, random_inputs,
    verify, Norm, Scope, StructuredConfig, Target,
};
use serde_json::json;

use crate::commands::{check_output, load_model, save_model};
use crate::table::human;
use crate::{Criterion, ScopeArg};

#[derive(Args, Clone)]
pub struct PruneArgs {
    pub model: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
    /// fraction of the units (channels, heads, hidden units, conv groups) of every prunable
    /// group to remove, in [0, 1)
    #[arg(long)]
    pub structured: Option<f64>,
    /// unit importance for --structured
    #[arg(long, value_enum, default_value_t = Criterion::L1)]
    pub criterion: Criterion,
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
    /// never prune the output channels of this node (repeatable)
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
    #[arg(long)]
    pub threshold: Option<f64>,
    /// rank within each layer, or over all layers (structured units and unstructured weights)
    #[arg(long, value_enum, default_value_t = ScopeArg::Layer)]
    pub scope: ScopeArg,
    #[arg(long)]
    pub json: bool,
}

fn counts(g: &Graph) -> Result<serde_json::Value> {
    Ok(json!({
        "params": g.param_count(),
        "nonzeros": g.nonzero_count()?,
        "macs": g.macs()?,
        "effective_macs": g.effective_macs()?,
    }))
}

pub fn prune(a: &PruneArgs) -> Result<()> {
    if a.structured.is_none()
        && a.unstructured.is_none()
        && a.threshold.is_none()
        && a.layers.is_none()
    {
        bail!("nothing to do: pass --structured RATIO, --layers N, --unstructured RATIO or --threshold T");
    }
    if a.verify && a.structured.is_none() {
        bail!("--verify checks a structured rewrite: pass --structured RATIO too");
    }
    let mut g = load_model(&a.model)?;
    check_output(&a.model, &a.output)?;
    let scope = match a.scope {
        ScopeArg::Layer => Scope::Layer,
        ScopeArg::Global => Scope::Global,
    };
    let before = counts(&g)?;
    let mut out = json!({ "before": before });

    let mut seconds = serde_json::Map::new();
    let mut clock = Instant::now();
    let mut lap = |what: &str, seconds: &mut serde_json::Map<String, serde_json::Value>| {
        seconds.insert(what.into(), json!(clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };
    if let Some(n) = a.layers {
        let layers = find_layers(&g)?;
        let x = random_inputs(&g, 8, 0)?;
        let scores = block_influence(&g, &layers, &x)?;
        let r = prune_layers(&mut g, &layers, &scores, n)?;
        out["layers"] = json!(r);
        lap("layers", &mut seconds);
    }
    if let Some(ratio) = a.structured {
        let original = g.try_clone()?;
        let criterion = match a.criterion {
            Criterion::L1 => Norm::L1,
            Criterion::L2 => Norm::L2,
        };
        let mut cfg = StructuredConfig::new(ratio);
        cfg.scope = scope;
        cfg.round_to = a.round_to;
        cfg.min_ratio = a.min_ratio;
        cfg.max_ratio = a.max_ratio;
        cfg.steps = a.steps;
        cfg.protected = a.protect.clone();
        let report = prune_structured(&mut g, &cfg, &criterion)?;
        out["groups"] = json!(report.groups);
        lap("structured", &mut seconds);
        if a.verify {
            let inputs = (0..2)
                .map(|s| random_inputs(&original, 4, 100 + s))
                .collect::<prunekit_prune::Result<Vec<_>>>()?;
            out["verify"] = json!(verify(&original, &g, &report.removed(), &inputs)?);
            lap("verify", &mut seconds);
        }
    }
    if let Some(r) = a.unstructured {
        out["sparsity"] = json!(magnitude_prune(&mut g, Target::Ratio(r), scope)?);
    } else if let Some(t) = a.threshold {
        out["sparsity"] = json!(magnitude_prune(&mut g, Target::Threshold(t), scope)?);
    }
    out["after"] = counts(&g)?;
    out["seconds"] = json!(seconds);
    save_model(&g, &a.output, Some(&a.model))?;
    out["output"] = json!(a.output);
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
    if let Some(layers) = out["sparsity"].as_array() {
        for l in layers {
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
