//! The task: what a dataset's targets mean, the loss a model is trained with and the metrics it
//! is judged by, with the headline metric and its direction.
//!
//! Every pass (training, evaluation, calibration for data-driven criteria, layer ablation,
//! sensitivity, sweeps, distillation, recipes, the report) reads the task from the [`Dataset`]
//! it is given, so one model family and one code path serve classification, binary risk
//! scoring, regression, ranking and language modelling alike.
//!
//! [`Dataset`]: crate::Dataset

use prunekit_graph::loss::Loss;
use serde::Serialize;

/// What the model's output is judged as, and so which loss and metrics apply.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TaskKind {
    /// Multi-class classification: logits `[B, C]` against class ids `[B]`. Cross-entropy;
    /// metrics `accuracy` (headline) and `top5_accuracy` (when C > 5).
    Classification,
    /// Binary classification (class 1 is the positive one, e.g. a default or a spam mail):
    /// logits `[B, 2]`, the score is softmax class 1. Cross-entropy (optionally class-weighted);
    /// metrics `auc` (ROC AUC, headline), `f1`, `precision`, `recall` (at score 0.5), `ks`
    /// (Kolmogorov-Smirnov statistic), `accuracy`.
    Binary,
    /// Regression: outputs `[B, D]` against real targets `[B, D]`. Mean squared error; metrics
    /// `rmse` (headline, lower is better) and `mae`, in the target's units.
    Regression,
    /// Ranking with sampled candidates (the NCF paper's protocol): the samples come in lists of
    /// `list_len` consecutive samples, the first of each list the relevant item, the others
    /// sampled negatives. The model scores each sample as in [`TaskKind::Binary`] (softmax
    /// class 1 of logits `[B, 2]`, trained with cross-entropy on positive and negative pairs);
    /// metrics `hit_rate@10` (headline) and `ndcg@10` over each list.
    Ranking {
        /// Candidates per list (1 relevant + `list_len - 1` negatives; 100 in the NCF paper).
        list_len: usize,
    },
    /// Next-item prediction over a catalogue: logits `[B, C]` over C items against the next
    /// item's id `[B]`. Cross-entropy; metrics `hit_rate@10` (headline: the item is among the 10
    /// best-scored), `ndcg@10` and `accuracy`.
    NextItem,
    /// Language modelling: logits `[B, T, V]` against the token at each position `[B, T]`
    /// (positions holding [`IGNORE`] are left out). Token-level cross-entropy; metric
    /// `perplexity` (headline, lower is better).
    LanguageModel,
    /// Single-stage anchor-free object detection (YOLOX / CenterNet style): the model outputs a
    /// dense map `[B, 5 + classes, H / stride, W / stride]` for images `[B, C, H, W]`; per cell
    /// channel 0 is the objectness logit, 1-2 the box centre's offset in the cell (logits of a
    /// sigmoid), 3-4 the log of the box width and height in strides, 5.. the class logits.
    /// Targets are boxes ([`crate::Target::Boxes`], `[B, max_objects, 5]`). Loss: focal
    /// objectness over every cell, L1 box and cross-entropy class at each object's centre cell
    /// (see `prunekit_graph::loss::detection_loss`); metrics `map@0.5` (headline) and
    /// `map@0.5:0.95` after decoding with non-maximum suppression.
    Detection {
        /// object classes (the output has `5 + classes` channels)
        classes: usize,
        /// pixels per output cell (the model's total downsampling)
        stride: usize,
    },
}

/// A target id that no loss or metric counts (padding positions of token targets).
pub const IGNORE: u32 = u32::MAX;

/// Whether a larger value of a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Larger is better (accuracy, AUC, F1, hit rate, NDCG).
    Higher,
    /// Smaller is better (RMSE, MAE, perplexity, loss).
    Lower,
}

impl Direction {
    /// The direction of a metric by its standard name: `rmse`, `mae`, `perplexity`, `loss` and
    /// anything ending in `loss` are lower-is-better; every other metric higher-is-better.
    pub fn of(metric: &str) -> Direction {
        match metric {
            "rmse" | "mae" | "perplexity" | "loss" => Direction::Lower,
            m if m.ends_with("loss") => Direction::Lower,
            _ => Direction::Higher,
        }
    }

    /// `value` as a higher-is-better score (negated for lower-is-better metrics), so that
    /// passes that maximise (sensitivity, layer ablation, best-of comparisons) treat every
    /// metric alike.
    pub fn score(self, value: f64) -> f64 {
        match self {
            Direction::Higher => value,
            Direction::Lower => -value,
        }
    }
}

/// A dataset's task: its kind, its loss and (through the kind) its metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Task {
    /// What the targets mean.
    #[serde(flatten)]
    pub kind: TaskKind,
    /// Per-class weights of the cross-entropy (PyTorch's `weight`: the loss is
    /// `sum_i w[y_i] nll_i / sum_i w[y_i]`), e.g. inverse class frequencies for an imbalanced
    /// binary set; `None` weighs every sample alike. Only for class targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<Vec<f32>>,
    /// A headline other than the kind's own, one of its [`Task::metric_names`] (e.g. `f1` of
    /// the spam class for a spam filter, whose classes are imbalanced); set it with
    /// [`Task::with_headline`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headline_override: Option<&'static str>,
}

impl Task {
    /// A task of `kind` with an unweighted loss.
    pub fn new(kind: TaskKind) -> Self {
        Self {
            kind,
            class_weights: None,
            headline_override: None,
        }
    }

    /// The task with `metric` as its headline.
    ///
    /// # Errors
    /// The metric's name when the task does not report it, with the names it does.
    pub fn with_headline(mut self, metric: &str) -> std::result::Result<Self, String> {
        let names = self.metric_names(Some(usize::MAX));
        match names.iter().find(|n| **n == metric) {
            Some(n) => {
                self.headline_override = Some(n);
                Ok(self)
            }
            None => Err(format!(
                "a {} task reports {}, not `{metric}`",
                self.kind_name(),
                names.join(", ")
            )),
        }
    }

    /// Multi-class classification (the default task of the image datasets).
    pub fn classification() -> Self {
        Self::new(TaskKind::Classification)
    }

    /// The loss the model is trained with (and that gradient criteria differentiate).
    pub fn loss(&self) -> Loss {
        match self.kind {
            TaskKind::Regression => Loss::Mse,
            TaskKind::LanguageModel => Loss::TokenCrossEntropy { ignore: IGNORE },
            TaskKind::Detection { stride, .. } => Loss::Detection { stride },
            _ => Loss::CrossEntropy {
                class_weights: self.class_weights.clone(),
            },
        }
    }

    /// The metric reported first and used to compare models: `accuracy`, `auc`, `rmse`,
    /// `hit_rate@10`, `perplexity` or `map@0.5`.
    pub fn headline(&self) -> &'static str {
        if let Some(h) = self.headline_override {
            return h;
        }
        match self.kind {
            TaskKind::Classification => "accuracy",
            TaskKind::Binary => "auc",
            TaskKind::Regression => "rmse",
            TaskKind::Ranking { .. } | TaskKind::NextItem => "hit_rate@10",
            TaskKind::LanguageModel => "perplexity",
            TaskKind::Detection { .. } => "map@0.5",
        }
    }

    /// The direction of the headline metric.
    pub fn direction(&self) -> Direction {
        Direction::of(self.headline())
    }

    /// Every metric the task reports, headline first (standard names; `top5_accuracy` only
    /// with more than 5 classes, which the caller passes as `classes`).
    pub fn metric_names(&self, classes: Option<usize>) -> Vec<&'static str> {
        match self.kind {
            TaskKind::Classification => {
                let mut v = vec!["accuracy"];
                if classes.is_some_and(|c| c > 5) {
                    v.push("top5_accuracy");
                }
                v
            }
            TaskKind::Binary => vec!["auc", "f1", "precision", "recall", "ks", "accuracy"],
            TaskKind::Regression => vec!["rmse", "mae"],
            TaskKind::Ranking { .. } => vec!["hit_rate@10", "ndcg@10"],
            TaskKind::NextItem => vec!["hit_rate@10", "ndcg@10", "accuracy"],
            TaskKind::LanguageModel => vec!["perplexity"],
            TaskKind::Detection { .. } => vec!["map@0.5", "map@0.5:0.95"],
        }
    }

    /// Short name of the kind, e.g. `"binary"`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            TaskKind::Classification => "classification",
            TaskKind::Binary => "binary",
            TaskKind::Regression => "regression",
            TaskKind::Ranking { .. } => "ranking",
            TaskKind::NextItem => "next-item",
            TaskKind::LanguageModel => "language-model",
            TaskKind::Detection { .. } => "detection",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headlines_and_directions() {
        assert_eq!(Task::classification().headline(), "accuracy");
        assert_eq!(Task::new(TaskKind::Binary).headline(), "auc");
        let r = Task::new(TaskKind::Regression);
        assert_eq!((r.headline(), r.direction()), ("rmse", Direction::Lower));
        assert_eq!(Direction::Lower.score(0.9), -0.9);
        assert_eq!(Direction::of("hit_rate@10"), Direction::Higher);
        assert_eq!(Direction::of("val_loss"), Direction::Lower);
        assert_eq!(
            Task::classification().metric_names(Some(10)),
            vec!["accuracy", "top5_accuracy"]
        );
        assert_eq!(
            Task::classification().metric_names(Some(2)),
            vec!["accuracy"]
        );
        let spam = Task::new(TaskKind::Binary)
            .with_headline("f1")
            .expect("binary reports f1");
        assert_eq!(
            (spam.headline(), spam.direction()),
            ("f1", Direction::Higher)
        );
        let err = Task::new(TaskKind::Regression)
            .with_headline("auc")
            .unwrap_err();
        assert!(err.contains("rmse, mae") && err.contains("`auc`"), "{err}");
        assert!(matches!(
            Task::new(TaskKind::LanguageModel).loss(),
            Loss::TokenCrossEntropy { ignore: IGNORE }
        ));
    }
}
