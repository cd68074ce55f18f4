//! `prunekit zoo`: list the built-in architectures, and create one as a model directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use prunekit_zoo::ZooOptions;
use serde_json::json;

use crate::table::human;

#[derive(Subcommand)]
pub enum ZooCommand {
    /// One built-in architecture per line: its name, two spaces, a description.
    List,
    /// Build a built-in architecture with seeded weights and save it as a model directory.
    Create {
        /// architecture (see `prunekit zoo list`)
        name: String,
        /// output model directory (new, empty, or an existing model)
        #[arg(short, long)]
        output: PathBuf,
        /// per-sample input shape, comma-separated: C,H,W for the image models (1,28,28),
        /// T,F for the recurrent classifiers, T for the token models; default: the model's own
        #[arg(long, value_name = "DIMS")]
        input: Option<String>,
        /// number of output classes (llama-tiny: the vocabulary size); default: the model's own
        #[arg(long)]
        classes: Option<usize>,
        /// seed of the initial weights
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// print one JSON object instead of a line of text
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ZooCommand) -> Result<()> {
    match cmd {
        ZooCommand::List => {
            for (name, description) in prunekit_zoo::MODELS {
                println!("{name}  {description}");
            }
            Ok(())
        }
        ZooCommand::Create {
            name,
            output,
            input,
            classes,
            seed,
            json,
        } => create(&name, &output, input.as_deref(), classes, seed, json),
    }
}

/// Parses `--input 1,28,28` into a shape.
fn parse_shape(text: &str) -> Result<Vec<usize>> {
    let dims: Option<Vec<usize>> = text
        .split(',')
        .map(|d| d.trim().parse::<usize>().ok())
        .collect();
    match dims {
        Some(d) if !d.is_empty() => Ok(d),
        _ => bail!("--input `{text}`: expected comma-separated sizes such as 1,28,28"),
    }
}

/// Refuses to write a model into an existing file, or into a non-empty directory that holds no
/// model (overwriting an existing model directory is fine, as for the other commands' outputs).
fn check_writable(output: &Path) -> Result<()> {
    if !output.exists() {
        return Ok(());
    }
    if !output.is_dir() {
        bail!(
            "{}: exists and is not a directory; choose another output directory",
            output.display()
        );
    }
    let is_model = output.join("model.json").is_file();
    let empty = std::fs::read_dir(output)
        .with_context(|| format!("cannot read {}", output.display()))?
        .next()
        .is_none();
    if !is_model && !empty {
        bail!(
            "{}: refusing to overwrite a directory that is not a model; choose a new or empty \
             output directory",
            output.display()
        );
    }
    Ok(())
}

fn create(
    name: &str,
    output: &Path,
    input: Option<&str>,
    classes: Option<usize>,
    seed: u64,
    json: bool,
) -> Result<()> {
    let opts = ZooOptions {
        input: input.map(parse_shape).transpose()?,
        classes,
        vocab: None,
    };
    let g = prunekit_zoo::build_with(name, seed, &opts)?;
    check_writable(output)?;
    prunekit_io::native::save_protected(&g, output, None)
        .with_context(|| format!("cannot save model to {}", output.display()))?;
    let shapes = g.validate()?;
    let (params, macs) = (g.param_count(), g.macs()?);
    if json {
        let outputs: Vec<_> = g
            .outputs
            .iter()
            .map(|o| json!({ "name": o, "shape": shapes[o] }))
            .collect();
        let out = json!({
            "architecture": name, "output": output, "seed": seed, "inputs": g.inputs,
            "outputs": outputs, "params": params, "macs": macs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let ins: Vec<String> = g
            .inputs
            .iter()
            .map(|i| format!("{} {:?}", i.name, i.shape))
            .collect();
        let outs: Vec<String> = g
            .outputs
            .iter()
            .map(|o| format!("{o} {:?}", shapes[o]))
            .collect();
        println!(
            "created {name} (seed {seed}) in {}: {} -> {}; {} params, {} MACs per sample",
            output.display(),
            ins.join(", "),
            outs.join(", "),
            human(params as f64),
            human(macs as f64)
        );
    }
    Ok(())
}
