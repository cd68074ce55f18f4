//! `prunekit report` (Markdown + HTML + JSON report of one model, or a before/after pair) and
//! `prunekit compare` (two models side by side on the same data).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use prunekit_data::Split;
use prunekit_graph::Graph;
use prunekit_measure::metrics::{inference_memory, InferenceMemory};
use prunekit_report::{
    build_report, row_cells, summary_cells, write_report, ModelToReport, Report,
};

use crate::commands::{load_data, load_model};
use crate::table::render;
use crate::DataArgs;

#[derive(Args)]
pub struct ReportArgs {
    /// the model; with MODEL2, the model before pruning
    pub model: PathBuf,
    /// the model after pruning: the report compares MODEL (before) with MODEL2 (after)
    pub model2: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// directory to write report.md, report.html and report.json into (created if missing)
    #[arg(
        short,
        long,
        value_name = "DIR",
        required_unless_present = "memory_child"
    )]
    pub output: Option<PathBuf>,
    /// also time inference (and measure peak memory) at this batch size; 1 times batch 1 only
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub latency_batch: usize,
    /// also print the report as one JSON object
    #[arg(long)]
    pub json: bool,
    /// internal: print the peak memory of one cold inference of MODEL at batch N as JSON and exit
    /// (the report runs this in a fresh child process per model)
    #[arg(long, hide = true, value_name = "N")]
    pub memory_child: Option<usize>,
}

#[derive(Args)]
pub struct CompareArgs {
    /// the first model (before)
    pub a: PathBuf,
    /// the second model (after)
    pub b: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// also time inference at this batch size; 1 times batch 1 only
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub latency_batch: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn report(a: &ReportArgs) -> Result<()> {
    if let Some(batch) = a.memory_child {
        let g = load_model(&a.model)?;
        let m = inference_memory(&g, batch)?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    let Some(output) = a.output.as_deref() else {
        bail!("pass -o DIR");
    };
    check_output_dir(output)?;
    let mut paths = vec![a.model.as_path()];
    paths.extend(a.model2.as_deref());
    let r = build(&paths, &a.data, a.latency_batch, !a.json)?;
    let files = write_report(output, &r)
        .with_context(|| format!("cannot write the report to {}", output.display()))?;
    if a.json {
        println!("{}", prunekit_report::to_json(&r)?);
    } else {
        print_tables(&r);
        println!(
            "wrote {}, {} and {}",
            files.html.display(),
            files.markdown.display(),
            files.json.display()
        );
    }
    Ok(())
}

pub fn compare(a: &CompareArgs) -> Result<()> {
    let r = build(&[&a.a, &a.b], &a.data, a.latency_batch, !a.json)?;
    if a.json {
        println!("{}", prunekit_report::to_json(&r)?);
    } else {
        print_tables(&r);
    }
    Ok(())
}

/// Fails early (before minutes of measuring) when the output directory cannot be created: the
/// nearest existing ancestor must be a directory.
fn check_output_dir(dir: &Path) -> Result<()> {
    if let Some(existing) = dir.ancestors().find(|p| p.exists()) {
        if !existing.is_dir() {
            bail!(
                "cannot write the report to {}: {} is not a directory",
                dir.display(),
                existing.display()
            );
        }
    }
    Ok(())
}

fn display_names(paths: &[&Path]) -> Vec<String> {
    let short: Vec<String> = paths
        .iter()
        .map(|p| {
            p.file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
        })
        .collect();
    let distinct = short.len() < 2 || short[0] != short[1];
    if distinct {
        short
    } else {
        paths.iter().map(|p| p.display().to_string()).collect()
    }
}

fn input_shapes(g: &Graph) -> String {
    g.inputs
        .iter()
        .map(|i| format!("{} {:?}", i.name, i.shape))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads the models and the data, checks they fit together, measures everything.
fn build(paths: &[&Path], data: &DataArgs, latency_batch: usize, progress: bool) -> Result<Report> {
    if latency_batch == 0 {
        bail!("--latency-batch must be at least 1");
    }
    let graphs = paths
        .iter()
        .map(|p| load_model(p))
        .collect::<Result<Vec<Graph>>>()?;
    let names = display_names(paths);
    if let [a, b] = graphs.as_slice() {
        let same = a.inputs.len() == b.inputs.len()
            && a.inputs
                .iter()
                .zip(&b.inputs)
                .all(|(x, y)| x.shape == y.shape && x.kind == y.kind);
        if !same {
            bail!(
                "the models take different inputs: {} takes {} but {} takes {}",
                paths[0].display(),
                input_shapes(a),
                paths[1].display(),
                input_shapes(b)
            );
        }
        let recorded = |g: &Graph| {
            g.meta
                .get("dataset")
                .and_then(|v| v.as_str())
                .map(String::from)
        };
        if data.data.is_none() {
            if let (Some(x), Some(y)) = (recorded(a), recorded(b)) {
                if x != y {
                    bail!(
                        "the models were trained on different datasets ({} on `{x}`, {} on `{y}`); pass --data",
                        paths[0].display(),
                        paths[1].display()
                    );
                }
            }
        }
    }
    let (split, dataset) = load_data(data, &graphs[0], 0)?;
    let refs: Vec<&Graph> = graphs.iter().collect();
    measured(
        &refs,
        paths,
        &names,
        &split,
        &dataset,
        latency_batch,
        progress,
    )
}

/// A report of models already in memory (another command's before/after): each is saved to a
/// temporary directory so its peak memory can be measured in a fresh process like the others.
pub(crate) fn report_graphs(
    graphs: &[&Graph],
    names: &[String],
    split: &Split,
    dataset: &str,
    latency_batch: usize,
    progress: bool,
) -> Result<Report> {
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut paths = Vec::new();
    for (i, g) in graphs.iter().enumerate() {
        let p = tmp.path().join(format!("model{i}"));
        prunekit_io::native::save(g, &p)?;
        paths.push(p);
    }
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let mut r = measured(
        graphs,
        &refs,
        names,
        split,
        dataset,
        latency_batch,
        progress,
    )?;
    for m in &mut r.models {
        m.path = None;
    }
    Ok(r)
}

/// Writes a report built elsewhere (and says where).
pub(crate) fn write(dir: &Path, r: &Report, quiet: bool) -> Result<()> {
    let files = write_report(dir, r)
        .with_context(|| format!("cannot write the report to {}", dir.display()))?;
    if !quiet {
        eprintln!("report: {}", files.html.display());
    }
    Ok(())
}

/// Fails before any work when the report directory cannot be created.
pub(crate) fn check_report_dir(dir: Option<&Path>) -> Result<()> {
    dir.map_or(Ok(()), check_output_dir)
}

/// The report of `graphs` (loaded from `paths`, shown as `names`) on `split`: the report library
/// measures everything but the peak memory, which this binary measures in a fresh child process
/// per model.
fn measured(
    graphs: &[&Graph],
    paths: &[&Path],
    names: &[String],
    split: &Split,
    dataset: &str,
    latency_batch: usize,
    progress: bool,
) -> Result<Report> {
    if latency_batch == 0 {
        bail!("--latency-batch must be at least 1");
    }
    check_split(split, dataset)?;
    for (g, p) in graphs.iter().zip(paths) {
        prunekit_measure::check_task(g, &split.test)
            .with_context(|| format!("{} does not fit the data", p.display()))?;
    }
    let memories = peak_memory(paths, latency_batch, progress);
    let models: Vec<ModelToReport> = graphs
        .iter()
        .zip(paths)
        .zip(names)
        .zip(memories)
        .map(|(((g, p), name), memory)| ModelToReport {
            graph: g,
            name: name.clone(),
            path: Some(p.display().to_string()),
            memory,
        })
        .collect();
    Ok(build_report(
        &models,
        split,
        dataset,
        latency_batch,
        &mut |line| {
            if progress {
                eprintln!("{line}");
            }
        },
    )?)
}

/// Peak inference memory of each model, each in a fresh child process of this binary (as `prunekit
/// bench` measures training memory): in one process, buffers the allocator keeps from earlier runs
/// (in every worker thread's heap) are reused unseen by the resident-set high-water mark, so the
/// order of measurement would change the numbers. `None` where the child cannot measure.
fn peak_memory(paths: &[&Path], batch: usize, progress: bool) -> Vec<Option<InferenceMemory>> {
    paths
        .iter()
        .map(|p| match memory_child(p, batch) {
            Ok(m) => m,
            Err(e) => {
                if progress {
                    eprintln!(
                        "warning: peak memory of {} not measured: {e:#}",
                        p.display()
                    );
                }
                None
            }
        })
        .collect()
}

fn memory_child(model: &Path, batch: usize) -> Result<Option<InferenceMemory>> {
    let exe = std::env::current_exe().context("cannot find the prunekit binary")?;
    let out = std::process::Command::new(exe)
        .arg("report")
        .arg(model)
        .args(["--memory-child", &batch.to_string()])
        .output()
        .context("cannot run the memory child process")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn check_split(split: &Split, name: &str) -> Result<()> {
    if split.test.is_empty() {
        bail!("the dataset `{name}` has no test samples");
    }
    if split.train.input_shapes() != split.test.input_shapes() {
        bail!(
            "the dataset `{name}` is inconsistent: training inputs of shapes {:?}, test inputs of shapes {:?}",
            split.train.input_shapes(),
            split.test.input_shapes()
        );
    }
    Ok(())
}

fn print_tables(r: &Report) {
    if let Some(c) = &r.comparison {
        let rows: Vec<Vec<String>> = c.rows.iter().map(|row| row_cells(row).to_vec()).collect();
        println!(
            "{}",
            render(&["", &c.before, &c.after, "after/before", "change"], &rows)
        );
        return;
    }
    for m in &r.models {
        let rows: Vec<Vec<String>> = summary_cells(m)
            .into_iter()
            .map(|(k, v)| vec![k, v])
            .collect();
        println!("{}", render(&[&m.name, "value"], &rows));
    }
}
