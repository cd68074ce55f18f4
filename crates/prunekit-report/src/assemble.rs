//! Assembling a report from models and data: every measurement a report shows, taken here so a
//! library user gets the same report as `prunekit report` (which only adds the peak memory it
//! measures in a fresh child process per model).

use prunekit_data::{Dataset, Direction, Split, Values};
use prunekit_graph::Graph;
use prunekit_measure::metrics::{
    classification_metrics, layer_stats, train_test_gap, InferenceMemory,
};
use prunekit_measure::{evaluate, latency, summarize};

use crate::model::{
    metric_unit, Comparison, ComparisonRow, DatasetInfo, ModelReport, Report, Robustness,
    RobustnessPoint,
};
use crate::Result;

/// The training split is thinned to this many samples for the train/test gap.
pub const MAX_TRAIN_SAMPLES: usize = 10_000;

/// Standard deviations of the Gaussian noise added to float inputs (in the inputs' standardised
/// units) for the robustness probe.
pub const NOISE_LEVELS: [f64; 3] = [0.1, 0.3, 0.5];

/// Probabilities of token dropout (each id replaced by id 0, the padding / first id) for the
/// robustness probe of models whose inputs are all ids.
pub const DROPOUT_LEVELS: [f64; 3] = [0.05, 0.1, 0.2];

/// One model to report on.
pub struct ModelToReport<'a> {
    /// The model.
    pub graph: &'a Graph,
    /// The name shown in the report.
    pub name: String,
    /// Where it was loaded from, if anywhere.
    pub path: Option<String>,
    /// Its peak inference memory, measured by the caller (in a fresh process, where it matters).
    pub memory: Option<InferenceMemory>,
}

/// The task's headline metric on `test` with its inputs perturbed: Gaussian noise of each of
/// [`NOISE_LEVELS`] added to every float input, or, when every input is an id input, token
/// dropout at each of [`DROPOUT_LEVELS`]. Seeded (the same perturbed data for every model).
///
/// # Errors
/// As [`prunekit_measure::evaluate`].
pub fn robustness(g: &Graph, test: &Dataset) -> Result<Robustness> {
    let floats = test
        .inputs
        .iter()
        .any(|f| matches!(f.values, Values::F32(_)));
    let (perturbation, levels) = if floats {
        ("gaussian noise (std)", NOISE_LEVELS)
    } else {
        ("token dropout (probability)", DROPOUT_LEVELS)
    };
    let mut points = Vec::new();
    for (i, &level) in levels.iter().enumerate() {
        let noisy = if floats {
            test.perturbed(level as f32, 0.0, 0, 0x0015e + i as u64)
        } else {
            test.perturbed(0.0, level, 0, 0x0015e + i as u64)
        };
        let e = evaluate(g, &noisy, 256)?;
        points.push(RobustnessPoint {
            level,
            metric: e.headline_value(),
        });
    }
    Ok(Robustness {
        perturbation: perturbation.into(),
        metric: test.task.headline().into(),
        points,
    })
}

/// Everything measured of one model on `split`: the task's metrics, counts, MACs, latency (batch
/// 1, and `latency_batch` when above 1), file size, layers, the train/test gap, the robustness
/// probe and, for class tasks, the confusion counts.
///
/// # Errors
/// A model that does not fit the data ([`prunekit_measure::check_task`]) or a failed measurement.
pub fn model_report(m: &ModelToReport, split: &Split, latency_batch: usize) -> Result<ModelReport> {
    let g = m.graph;
    let summary = summarize(g, Some(&split.test))?;
    let gap = if split.train.is_empty() {
        None
    } else {
        Some(train_test_gap(
            g,
            &split.train,
            &split.test,
            Some(MAX_TRAIN_SAMPLES),
        )?)
    };
    let batched = if latency_batch > 1 {
        Some(latency(g, latency_batch, 5, 30)?)
    } else {
        None
    };
    Ok(ModelReport {
        name: m.name.clone(),
        path: m.path.clone(),
        summary,
        layers: layer_stats(g)?,
        gap,
        classification: classification_metrics(g, &split.test, &[5])?,
        latency_batch: batched,
        memory: m.memory,
        robustness: Some(robustness(g, &split.test)?),
    })
}

/// A report of one model, or of a before/after pair (the first is "before") with their
/// comparison, measured on `split` (named `dataset`). `progress` hears one line per model.
///
/// # Errors
/// As [`model_report`].
pub fn build_report(
    models: &[ModelToReport],
    split: &Split,
    dataset: &str,
    latency_batch: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Report> {
    let mut reports = Vec::with_capacity(models.len());
    for m in models {
        progress(&format!("measuring {} on {dataset} ...", m.name));
        prunekit_measure::check_task(m.graph, &split.test)?;
        reports.push(model_report(m, split, latency_batch)?);
    }
    let comparison = match reports.as_slice() {
        [b, a] => Some(Comparison::new(b, a)),
        _ => None,
    };
    let title = match models {
        [b, a] => format!("Pruning report: {} → {}", b.name, a.name),
        [m] => format!("Model report: {}", m.name),
        _ => "Model report".into(),
    };
    Ok(Report {
        title,
        dataset: Some(DatasetInfo {
            name: dataset.to_string(),
            train_samples: split.train.len(),
            test_samples: split.test.len(),
            sample_shape: split.test.sample_shape().to_vec(),
            classes: split.test.num_classes().unwrap_or(0),
            task: Some(split.test.task.kind_name().into()),
            headline: Some(split.test.task.headline().into()),
        }),
        models: reports,
        comparison,
        sensitivity: None,
        sweeps: Vec::new(),
    })
}

/// Adds to the comparison, for every stage (`{"kind", "detail"}` as the prune command and recipes
/// log them) that re-calibrated BatchNorm, the headline metric right after that stage without and
/// with the re-calibration (against the model before pruning).
pub fn add_recalibration_rows(r: &mut Report, stages: &[serde_json::Value]) {
    let Some(c) = r.comparison.as_mut() else {
        return;
    };
    for st in stages {
        let rc = &st["detail"]["recalibration"];
        let kind = st["kind"].as_str().unwrap_or("pruning");
        let metric = rc["metric"].as_str().unwrap_or("accuracy");
        let before = c
            .rows
            .iter()
            .find(|row| row.measure == metric)
            .and_then(|row| row.before);
        for what in ["without", "with"] {
            if let Some(v) = rc[what].as_f64() {
                c.rows.push(ComparisonRow::new(
                    format!("{metric} right after {kind} pruning, {what} BatchNorm re-calibration"),
                    metric_unit(metric),
                    before,
                    Some(v),
                    Direction::of(metric) == Direction::Higher,
                ));
            }
        }
    }
}
