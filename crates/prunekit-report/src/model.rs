//! The report's data: every number a renderer shows is a field here, so report.json holds them all.

use prunekit_measure::metrics::{Classification, InferenceMemory, LayerStats, TrainTestGap};
use prunekit_measure::{Direction, Latency, Summary};
use serde::{Deserialize, Serialize};

/// A whole report: one model, or a before/after pair with its comparison, plus the curves other
/// passes produce (sensitivity per layer, sparsity sweeps) when they are there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub title: String,
    /// the data the models were measured on
    pub dataset: Option<DatasetInfo>,
    /// one or two models; with two, the first is "before" and the second "after"
    pub models: Vec<ModelReport>,
    #[serde(default)]
    pub comparison: Option<Comparison>,
    #[serde(default)]
    pub sensitivity: Option<Sensitivity>,
    #[serde(default)]
    pub sweeps: Vec<Sweep>,
}

/// The dataset the models were measured on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    pub train_samples: usize,
    pub test_samples: usize,
    pub sample_shape: Vec<usize>,
    pub classes: usize,
    /// the task's kind (`classification`, `binary`, `regression`, `ranking`, ...)
    #[serde(default)]
    pub task: Option<String>,
    /// the task's headline metric
    #[serde(default)]
    pub headline: Option<String>,
}

/// The headline metric with the test inputs perturbed: a measured generalisation probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Robustness {
    /// what was done to the inputs and what the level means (`gaussian noise (std)`,
    /// `token dropout (probability)`)
    pub perturbation: String,
    /// the metric measured (the task's headline)
    pub metric: String,
    pub points: Vec<RobustnessPoint>,
}

/// One perturbation level and the metric there (`None` when undefined).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobustnessPoint {
    pub level: f64,
    pub metric: Option<f64>,
}

/// One model and everything measured of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    pub name: String,
    /// where the model was loaded from
    pub path: Option<String>,
    /// test accuracy and loss, counts, MACs, batch-1 latency, file size
    pub summary: Summary,
    /// every node with parameters
    pub layers: Vec<LayerStats>,
    #[serde(default)]
    pub gap: Option<TrainTestGap>,
    #[serde(default)]
    pub classification: Option<Classification>,
    /// latency at a larger batch
    #[serde(default)]
    pub latency_batch: Option<Latency>,
    /// peak resident memory of one inference
    #[serde(default)]
    pub memory: Option<InferenceMemory>,
    /// the headline metric under perturbed inputs
    #[serde(default)]
    pub robustness: Option<Robustness>,
    /// text the model generated (language models that carry a tokenizer), the same prompts
    /// and seeds for every model of the report
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<TextSample>,
    /// the first test images of a detection task with their true and predicted boxes, the same
    /// images for every model of the report
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detections: Vec<DetectionPicture>,
}

/// One test image of a detection task, its objects and what the model found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectionPicture {
    /// index of the image in the test split
    pub image: usize,
    /// width and height in pixels
    pub width: usize,
    pub height: usize,
    /// the image (its first channel, min-max scaled to grey) as a base64 PNG
    pub png_base64: String,
    /// the true objects (score `None`)
    pub truth: Vec<PictureBox>,
    /// the detections scoring at least the picture's threshold, after non-maximum suppression
    pub predicted: Vec<PictureBox>,
}

/// A box drawn on a [`DetectionPicture`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PictureBox {
    pub class: usize,
    /// `[x1, y1, x2, y2]` in pixels
    pub bbox: [f32; 4],
    /// the detection's score (objectness x class probability); `None` for a true object
    pub score: Option<f32>,
}

/// One generated text: the prompt and its continuation, and how it was sampled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextSample {
    pub prompt: String,
    /// the generated continuation (without the prompt)
    pub text: String,
    /// e.g. `48 tokens, temperature 0.8, top-k 40, seed 1`
    pub sampling: String,
}

/// How a value is shown: a fraction as a percentage (and its change in points), a count with
/// thousands separators, milliseconds, bytes, KiB, or a plain number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Fraction,
    Count,
    Milliseconds,
    Bytes,
    Kib,
    Plain,
}

/// "batch B", or "batch B × T tokens" for a sequence model of `T` tokens per sample.
pub fn batch_label(batch: usize, seq_len: Option<usize>) -> String {
    match seq_len {
        Some(t) => format!("batch {batch} × {t} tokens"),
        None => format!("batch {batch}"),
    }
}

/// How a metric is shown: shares (accuracy, F1, precision, recall, hit rate, NDCG, mAP) as
/// percentages, the others (AUC and KS as statisticians write them, RMSE, MAE, perplexity,
/// loss, an RL policy's mean return and its spread) as plain numbers.
pub fn metric_unit(name: &str) -> Unit {
    let shares = [
        "accuracy",
        "top5_accuracy",
        "f1",
        "precision",
        "recall",
        "hit_rate",
        "ndcg",
        "map@",
    ];
    if shares.iter().any(|p| name.starts_with(p)) {
        Unit::Fraction
    } else {
        Unit::Plain
    }
}

/// One measure before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    pub measure: String,
    pub unit: Unit,
    pub before: Option<f64>,
    pub after: Option<f64>,
    /// after / before, when both are there and before > 0
    pub ratio: Option<f64>,
    /// after - before
    pub change: Option<f64>,
    pub higher_is_better: bool,
}

impl ComparisonRow {
    /// A row; `ratio` and `change` are derived from `before` and `after`.
    pub fn new(
        measure: impl Into<String>,
        unit: Unit,
        before: Option<f64>,
        after: Option<f64>,
        higher_is_better: bool,
    ) -> Self {
        let (ratio, change) = match (before, after) {
            (Some(b), Some(a)) => ((b > 0.0).then(|| a / b), Some(a - b)),
            _ => (None, None),
        };
        Self {
            measure: measure.into(),
            unit,
            before,
            after,
            ratio,
            change,
            higher_is_better,
        }
    }

    /// Whether the change is an improvement (`Some(true)`), a regression (`Some(false)`), or
    /// neither / unknown (`None`; changes under 0.05 points for fractions and under 0.5 % of the
    /// value otherwise count as none).
    pub fn verdict(&self) -> Option<bool> {
        let (b, c) = (self.before?, self.change?);
        let negligible = match self.unit {
            Unit::Fraction => 0.0005,
            _ => 0.005 * b.abs(),
        };
        if c == 0.0 || c.abs() < negligible {
            return None;
        }
        Some((c > 0.0) == self.higher_is_better)
    }
}

/// One layer's width, parameters and sparsity before and after (layers matched by node name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerComparison {
    pub node: String,
    pub op: String,
    pub before_width: Option<usize>,
    pub after_width: Option<usize>,
    pub before_params: Option<usize>,
    pub after_params: Option<usize>,
    pub before_sparsity: Option<f64>,
    pub after_sparsity: Option<f64>,
}

/// Before/after rows with ratios, and the layers side by side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub before: String,
    pub after: String,
    pub rows: Vec<ComparisonRow>,
    pub layers: Vec<LayerComparison>,
}

impl Comparison {
    /// Compares every measure both models have.
    pub fn new(before: &ModelReport, after: &ModelReport) -> Self {
        let (b, a) = (&before.summary, &after.summary);
        // every metric of the task, the headline first, then the loss
        let mut names: Vec<&String> = b.metrics.keys().collect();
        if let Some(h) = &b.headline {
            names.sort_by_key(|n| *n != h);
        }
        let mut rows: Vec<ComparisonRow> = names
            .into_iter()
            .map(|n| {
                ComparisonRow::new(
                    n.as_str(),
                    metric_unit(n),
                    b.metrics.get(n).copied(),
                    a.metrics.get(n).copied(),
                    Direction::of(n) == Direction::Higher,
                )
            })
            .collect();
        rows.push(ComparisonRow::new(
            "loss",
            Unit::Plain,
            b.loss,
            a.loss,
            false,
        ));
        if let (Some(rb), Some(ra)) = (&before.robustness, &after.robustness) {
            for (pb, pa) in rb.points.iter().zip(&ra.points) {
                rows.push(ComparisonRow::new(
                    format!("{} under {} {}", rb.metric, rb.perturbation, pb.level),
                    metric_unit(&rb.metric),
                    pb.metric,
                    pa.metric,
                    Direction::of(&rb.metric) == Direction::Higher,
                ));
            }
        }
        if let (Some(gb), Some(ga)) = (&before.gap, &after.gap) {
            let h = &gb.headline;
            rows.push(ComparisonRow::new(
                format!("train {h}"),
                metric_unit(h),
                gb.train.metrics.get(h).copied(),
                ga.train.metrics.get(h).copied(),
                Direction::of(h) == Direction::Higher,
            ));
            rows.push(ComparisonRow::new(
                format!("train - test {h}"),
                metric_unit(h),
                gb.headline_gap,
                ga.headline_gap,
                false,
            ));
        }
        let count = |name: &str, x: f64, y: f64| {
            ComparisonRow::new(name, Unit::Count, Some(x), Some(y), false)
        };
        rows.push(count("params", b.params as f64, a.params as f64));
        rows.push(count("nonzeros", b.nonzeros as f64, a.nonzeros as f64));
        rows.push(count("MACs", b.macs as f64, a.macs as f64));
        rows.push(count(
            "MACs (zeros skipped)",
            b.effective_macs as f64,
            a.effective_macs as f64,
        ));
        if let (Some(t), Some(pb), Some(pa)) = (b.seq_len, b.macs_per_token, a.macs_per_token) {
            rows.push(ComparisonRow::new(
                format!("MACs per token (sequence length {t})"),
                Unit::Count,
                Some(pb),
                Some(pa),
                false,
            ));
        }
        let label = |batch: usize| batch_label(batch, b.seq_len);
        rows.push(ComparisonRow::new(
            format!("latency, {} (median)", label(b.latency.batch)),
            Unit::Milliseconds,
            Some(b.latency.median_ms),
            Some(a.latency.median_ms),
            false,
        ));
        if let (Some(lb), Some(la)) = (&before.latency_batch, &after.latency_batch) {
            if lb.batch == la.batch {
                rows.push(ComparisonRow::new(
                    format!("latency, {} (median)", label(lb.batch)),
                    Unit::Milliseconds,
                    Some(lb.median_ms),
                    Some(la.median_ms),
                    false,
                ));
            }
        }
        rows.push(ComparisonRow::new(
            "file size",
            Unit::Bytes,
            Some(b.file_bytes as f64),
            Some(a.file_bytes as f64),
            false,
        ));
        if let (Some(mb), Some(ma)) = (&before.memory, &after.memory) {
            if mb.batch == ma.batch {
                rows.push(ComparisonRow::new(
                    format!("peak resident memory, {}", label(mb.batch)),
                    Unit::Kib,
                    Some(mb.peak_kb as f64),
                    Some(ma.peak_kb as f64),
                    false,
                ));
            }
        }
        let mut layers: Vec<LayerComparison> = before
            .layers
            .iter()
            .map(|l| {
                let m = after.layers.iter().find(|x| x.node == l.node);
                LayerComparison {
                    node: l.node.clone(),
                    op: l.op.clone(),
                    before_width: l.live_width,
                    after_width: m.and_then(|m| m.live_width),
                    before_params: Some(l.params),
                    after_params: m.map(|m| m.params),
                    before_sparsity: Some(l.sparsity),
                    after_sparsity: m.map(|m| m.sparsity),
                }
            })
            .collect();
        for l in &after.layers {
            if !before.layers.iter().any(|x| x.node == l.node) {
                layers.push(LayerComparison {
                    node: l.node.clone(),
                    op: l.op.clone(),
                    before_width: None,
                    after_width: l.live_width,
                    before_params: None,
                    after_params: Some(l.params),
                    before_sparsity: None,
                    after_sparsity: Some(l.sparsity),
                });
            }
        }
        Self {
            before: before.name.clone(),
            after: after.name.clone(),
            rows,
            layers,
        }
    }

    /// The row named `measure`.
    pub fn row(&self, measure: &str) -> Option<&ComparisonRow> {
        self.rows.iter().find(|r| r.measure == measure)
    }
}

/// Per-layer sensitivity: how much the metric drops when one layer alone is pruned at each ratio.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sensitivity {
    /// the metric whose drop is measured, e.g. "accuracy"
    pub metric: String,
    /// how the drop is shown (a fraction's drop is shown in percentage points)
    pub unit: Unit,
    pub curves: Vec<SensitivityCurve>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SensitivityCurve {
    pub layer: String,
    pub points: Vec<SensitivityPoint>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SensitivityPoint {
    /// fraction of the layer pruned
    pub ratio: f64,
    /// metric before minus metric after (positive = worse)
    pub drop: f64,
}

/// A sweep over pruning amounts: one curve of metric, MACs and latency against sparsity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// what varies along the sweep, e.g. "global magnitude"
    pub label: String,
    /// e.g. "accuracy"
    pub metric: String,
    pub unit: Unit,
    pub points: Vec<SweepPoint>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// fraction of parameters that are zero or removed
    pub sparsity: f64,
    /// MACs relative to the dense model
    pub mac_fraction: f64,
    pub metric: f64,
    #[serde(default)]
    pub macs: Option<u64>,
    #[serde(default)]
    pub latency_ms: Option<f64>,
}
