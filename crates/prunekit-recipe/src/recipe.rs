//! TOML recipes: a model, a dataset, optional dense training, then stages (structured, layers,
//! unstructured with a schedule, N:M, fine-tune with optional distillation, lottery ticket), each
//! measured. `prunekit run RECIPE.toml` and `prunekit prune`'s flags both build this model.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use prunekit_data::{Augment, Dataset, Split};
use prunekit_graph::Graph;
use prunekit_measure::{summarize, Summary};
use prunekit_prune::{
    block_influence, find_layers, magnitude::Scope, prune_layers, prune_structured, LeftOut,
    StructuredConfig, Target, UnstructuredReport,
};
use prunekit_train::rl::{DdpgConfig, DqnConfig};
use prunekit_train::{
    evaluate, fit_with, DistillConfig, Distillation, LrSchedule, OptimizerKind, StepHook,
    TrainConfig,
};
use serde::{Deserialize, Serialize};

use crate::criteria::{
    make_criterion, make_criterion_excluding, prune_nm, prune_unstructured, Calibration,
    UnstructuredScope,
};
use crate::fields::{Fields, Problem};
use crate::schedule::{iterative_sparsity, GradualPruning, MovementPruning, RewindPoint, Snapshot};
use crate::{RecipeError, Result};
use prunekit_graph::channels::SliceKey;

fn default_seed() -> u64 {
    0
}

/// A whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub model: ModelSpec,
    pub data: DataSpec,
    /// changes to the dataset's own task (headline metric, class weights)
    #[serde(default)]
    pub task: Option<TaskSpec>,
    /// train the model before pruning (e.g. a zoo architecture from scratch)
    #[serde(default)]
    pub train: Option<TrainSpec>,
    /// train the model before pruning as a DQN Q-network, when `[data]` names an environment
    /// ([`prunekit_data::env::ENVIRONMENTS`])
    #[serde(default)]
    pub dqn: Option<DqnConfig>,
    /// train the model before pruning as a DDPG actor (with a `q-mlp` critic the run keeps for
    /// the `ddpg` fine-tuning stages), when `[data]` names an environment with continuous actions
    #[serde(default)]
    pub ddpg: Option<DdpgConfig>,
    #[serde(default, rename = "stage")]
    pub stages: Vec<Stage>,
}

/// `[task]`: what a recipe changes in the task its dataset comes with.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// the headline metric, one the task reports (e.g. `f1` for a binary task)
    #[serde(default)]
    pub headline: Option<String>,
    /// `"balanced"`: weigh the cross-entropy by n / (C n_c) from the training labels
    /// (scikit-learn's "balanced"); `"none"`: unweighted
    #[serde(default)]
    pub class_weights: Option<String>,
}

impl TaskSpec {
    /// Applies the changes to both sides of `split`.
    ///
    /// # Errors
    /// A headline the task does not report, or class weights other than `balanced` / `none` or
    /// for a task without class targets; the message names `[task]` and the field.
    pub fn apply(&self, split: &mut Split) -> Result<()> {
        if let Some(h) = &self.headline {
            for d in [&mut split.train, &mut split.test] {
                d.task = d
                    .task
                    .clone()
                    .with_headline(h)
                    .map_err(|e| RecipeError::Invalid(format!("[task] headline: {e}")))?;
            }
        }
        let weights = match self.class_weights.as_deref() {
            None => return Ok(()),
            Some("none") => None,
            Some("balanced") => {
                let counts = split.train.class_counts();
                let n: usize = counts.iter().sum();
                if counts.is_empty() || counts.contains(&0) {
                    return Err(RecipeError::Invalid(format!(
                        "[task] class_weights = \"balanced\" needs training samples of every class \
                         (counts {counts:?})"
                    )));
                }
                let c = counts.len() as f32;
                Some(counts.iter().map(|&k| n as f32 / (c * k as f32)).collect())
            }
            Some(other) => {
                return Err(RecipeError::Invalid(format!(
                    "[task] class_weights = {other:?}: expected \"balanced\" or \"none\""
                )))
            }
        };
        for d in [&mut split.train, &mut split.test] {
            d.task.class_weights = weights.clone();
        }
        Ok(())
    }
}

/// The model: a built-in architecture or a model directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub input: Option<Vec<usize>>,
    #[serde(default)]
    pub classes: Option<usize>,
    /// the embedded vocabularies of a zoo model (`ZooOptions::vocab`)
    #[serde(default)]
    pub vocab: Option<Vec<usize>>,
}

fn default_calib_batches() -> usize {
    4
}
fn default_calib_batch() -> usize {
    64
}

/// The dataset, with an optional cap on the training samples (a seeded subset) and the
/// calibration batches data-driven criteria use.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub name: String,
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub train_limit: Option<usize>,
    /// evaluate on a seeded subset of this many test samples (faster sweeps)
    #[serde(default)]
    pub test_limit: Option<usize>,
    #[serde(default = "default_calib_batches")]
    pub calib_batches: usize,
    #[serde(default = "default_calib_batch")]
    pub calib_batch_size: usize,
    /// re-estimate the BatchNorm running statistics on the calibration batches after every
    /// pruning stage (on by default; [`prunekit_train::recalibrate_batch_norm`])
    #[serde(default = "default_true")]
    pub recalibrate: bool,
}

fn default_true() -> bool {
    true
}

fn d_batch() -> usize {
    64
}
fn d_momentum() -> f64 {
    0.9
}
fn d_wd() -> f64 {
    5e-4
}
fn d_opt() -> String {
    "sgd".into()
}
fn d_sched() -> String {
    "cosine".into()
}

/// Training (or fine-tuning) settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub epochs: usize,
    pub lr: f64,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// "sgd" or "adamw"
    #[serde(default = "d_opt")]
    pub optimizer: String,
    #[serde(default = "d_momentum")]
    pub momentum: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// "cosine", "constant" or "step" (x0.1 every third of the run)
    #[serde(default = "d_sched")]
    pub schedule: String,
    #[serde(default)]
    pub crop_padding: usize,
    #[serde(default)]
    pub hflip: bool,
    /// distil from the model as it was before this recipe's first pruning stage
    #[serde(default)]
    pub distill: Option<DistillConfig>,
}

impl Default for TrainSpec {
    /// One epoch of SGD (momentum 0.9, weight decay 5e-4, cosine) at lr 0.01, batch 64.
    fn default() -> Self {
        Self {
            epochs: 1,
            lr: 0.01,
            batch_size: d_batch(),
            optimizer: d_opt(),
            momentum: d_momentum(),
            weight_decay: d_wd(),
            schedule: d_sched(),
            crop_padding: 0,
            hflip: false,
            distill: None,
        }
    }
}

impl DataSpec {
    /// A dataset by name with the default calibration settings.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            dir: None,
            train_limit: None,
            test_limit: None,
            calib_batches: default_calib_batches(),
            calib_batch_size: default_calib_batch(),
            recalibrate: true,
        }
    }
}

impl Default for UnstructuredStage {
    fn default() -> Self {
        Self {
            target: 0.5,
            criterion: None,
            scope: None,
            schedule: d_schedule(),
            rounds: 1,
            train: None,
            prune_every: None,
            start_step: 0,
            end_fraction: d_end_fraction(),
            exclude: Vec::new(),
        }
    }
}

fn d_criterion() -> String {
    "l1".into()
}
fn d_scope() -> String {
    "layer".into()
}
fn d_one() -> usize {
    1
}
fn d_max_ratio() -> f64 {
    1.0
}
fn d_schedule() -> String {
    "one-shot".into()
}
fn d_end_fraction() -> f64 {
    0.75
}
fn d_influence() -> String {
    "influence".into()
}

/// One step of the recipe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Stage {
    /// remove units (channels, heads, hidden units) by a criterion
    Structured(StructuredStage),
    /// remove whole residual blocks / transformer layers
    Layers(LayersStage),
    /// mask weights: one-shot, iterative rounds, or gradual during training
    Unstructured(UnstructuredStage),
    /// N:M sparsity along the input dimension
    Nm(NmStage),
    /// static magnitude threshold: mask every prunable weight with |w| below `value`
    Threshold(ThresholdStage),
    /// recover: train with the masks held (optionally distilling the dense model)
    Finetune(TrainSpec),
    /// lottery ticket: iterative magnitude pruning with rewinding
    Lottery(LotteryStage),
    /// group-sparse regularised training (DepGraph's sparse learning) before structured pruning
    SparseTrain(SparseTrainStage),
    /// go back to the dense model (the model after `[train]`, before the first stage): the stages
    /// after it prune the same trained model another way, so one recipe compares methods
    /// (e.g. Wanda without fine-tuning, then heads and FFN channels with fine-tuning)
    Restart,
    /// train (fine-tune) the policy with DQN in the recipe's environment; masks stay fixed
    Dqn(DqnConfig),
    /// train (fine-tune) the actor with DDPG and the run's critic; masks stay fixed
    Ddpg(DdpgConfig),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StructuredStage {
    pub ratio: f64,
    #[serde(default = "d_criterion")]
    pub criterion: String,
    /// "layer" or "global"
    #[serde(default = "d_scope")]
    pub scope: String,
    #[serde(default = "d_one")]
    pub round_to: usize,
    #[serde(default)]
    pub min_ratio: f64,
    #[serde(default = "d_max_ratio")]
    pub max_ratio: f64,
    #[serde(default = "d_one")]
    pub steps: usize,
    #[serde(default)]
    pub protect: Vec<String>,
    /// per-group ratios (group keys as `prunekit sensitivity` prints them) replacing `ratio`
    #[serde(default)]
    pub ratios: BTreeMap<String, f64>,
    /// a proposal written by `prunekit sensitivity --json -o FILE` (its `ratios` are used)
    #[serde(default)]
    pub proposal: Option<PathBuf>,
}

impl StructuredStage {
    /// `ratio` per group by `criterion`, every other setting at its default.
    pub fn new(ratio: f64, criterion: &str) -> Self {
        Self {
            ratio,
            criterion: criterion.into(),
            scope: d_scope(),
            round_to: 1,
            min_ratio: 0.0,
            max_ratio: 1.0,
            steps: 1,
            protect: Vec::new(),
            ratios: BTreeMap::new(),
            proposal: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayersStage {
    pub count: usize,
    /// "influence" (block influence on calibration inputs) or "ablation" (calibration loss
    /// without the layer)
    #[serde(default = "d_influence")]
    pub score: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnstructuredStage {
    /// final sparsity of the prunable weights the criterion scores, in [0, 1)
    pub target: f64,
    /// default: `lamp` with scope "global" (scale-aware), `l1` otherwise
    #[serde(default)]
    pub criterion: Option<String>,
    /// "layer", "global" or "row"; default: "row" for `wanda`, "layer" otherwise
    #[serde(default)]
    pub scope: Option<String>,
    /// "one-shot", "iterative" or "gradual"
    #[serde(default = "d_schedule")]
    pub schedule: String,
    /// iterative: rounds of prune then fine-tune
    #[serde(default = "d_one")]
    pub rounds: usize,
    /// iterative: the fine-tune of every round; gradual: the training during which sparsity ramps
    #[serde(default)]
    pub train: Option<TrainSpec>,
    /// gradual: prune every this many steps (default: a tenth of an epoch)
    #[serde(default)]
    pub prune_every: Option<usize>,
    /// gradual: first pruning step
    #[serde(default)]
    pub start_step: usize,
    /// gradual: the ramp ends at this fraction of the training steps
    #[serde(default = "d_end_fraction")]
    pub end_fraction: f64,
    /// nodes whose weights stay dense
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NmStage {
    pub n: usize,
    pub m: usize,
    #[serde(default = "d_criterion")]
    pub criterion: String,
    /// nodes whose weights stay dense
    #[serde(default)]
    pub exclude: Vec<String>,
    /// a weight whose input size M does not divide is an error instead of being left dense
    #[serde(default)]
    pub strict: bool,
}

impl UnstructuredStage {
    /// The scope name: as written, else `row` for `wanda` and `layer` otherwise.
    pub fn scope_name(&self) -> String {
        match (&self.scope, &self.criterion) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => prunekit_prune::default_unstructured_scope(c).name().into(),
            (None, None) => "layer".into(),
        }
    }

    /// The criterion name: as written, else the default for the scope (`lamp` for global).
    pub fn criterion_name(&self) -> Result<String> {
        Ok(match &self.criterion {
            Some(c) => c.clone(),
            None => prunekit_prune::default_unstructured_criterion(
                unstructured_scope(&self.scope_name()).map_err(RecipeError::Invalid)?,
            )
            .into(),
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdStage {
    pub value: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LotteryStage {
    /// final sparsity, reached over `rounds` rounds of global magnitude pruning
    pub target: f64,
    #[serde(default = "d_one")]
    pub rounds: usize,
    /// training of the dense model and of every round
    pub train: TrainSpec,
    /// rewind to the weights after this many steps of the dense training (0: the initialisation)
    #[serde(default)]
    pub rewind_step: usize,
    /// re-initialise the kept weights randomly instead of rewinding (the control experiment)
    #[serde(default)]
    pub reinit: bool,
}

fn d_sparse_alpha() -> f64 {
    4.0
}

/// Training with the DepGraph group-sparsity penalty ([`prunekit_train::GroupSparsity`]): the
/// penalty weight grows linearly from 0 to `lambda` over the whole training, and the least
/// important units of every coupled group are pushed to zero hardest (`alpha`), so that a
/// following structured stage removes units that are already near zero.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseTrainStage {
    /// final penalty weight (per unit of squared group norm), >= 0
    pub lambda: f64,
    /// the least important unit of a group is penalised `alpha` times the most important, >= 1
    #[serde(default = "d_sparse_alpha")]
    pub alpha: f64,
    pub train: TrainSpec,
}

/// One stage's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct StageLog {
    pub stage: usize,
    pub kind: String,
    pub detail: serde_json::Value,
    /// the task's metrics on the test data after the stage, by name (`accuracy`, `auc`, ...)
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
    /// the task's headline metric
    pub headline: String,
    pub params: usize,
    pub nonzeros: usize,
    pub macs: u64,
    pub seconds: f64,
}

impl StageLog {
    /// The log of stage number `stage` (from 1) that left `g` with `metrics` (headline
    /// `headline`), begun at `t0`; the one-line summary goes to `log`.
    ///
    /// # Errors
    /// Counting the graph's nonzeros or MACs fails.
    #[allow(clippy::too_many_arguments)]
    pub fn measured(
        stage: usize,
        s: &Stage,
        detail: serde_json::Value,
        g: &Graph,
        headline: String,
        metrics: BTreeMap<String, f64>,
        t0: Instant,
        log: &mut dyn FnMut(&str),
    ) -> Result<StageLog> {
        let l = StageLog {
            stage,
            kind: s.kind().into(),
            detail,
            params: g.param_count(),
            nonzeros: g.nonzero_count()?,
            macs: g.macs()?,
            seconds: t0.elapsed().as_secs_f64(),
            metrics,
            headline,
        };
        log(&format!(
            "stage {stage} ({}): {}, {} nonzeros, {} MACs, {:.1} s",
            l.kind,
            metric_text(
                l.metrics
                    .get(&l.headline)
                    .map(|&v| (l.headline.as_str(), v))
            ),
            l.nonzeros,
            l.macs,
            l.seconds
        ));
        Ok(l)
    }
}

/// The whole run's outcome: the model before the first pruning stage, after the last, and every stage.
#[derive(Clone, Debug, Serialize)]
pub struct RecipeReport {
    pub description: Option<String>,
    pub dataset: String,
    pub before: Summary,
    pub after: Summary,
    pub stages: Vec<StageLog>,
}

/// The largest `crop_padding` a recipe may ask for: a padding wider than any image only costs
/// memory ((H + 2p) x (W + 2p) per sample).
pub const MAX_CROP_PADDING: usize = 256;

impl Recipe {
    /// Parses a recipe; errors name the file, the line and the offending key (for a value out of
    /// range as for a typo).
    pub fn from_toml(text: &str, origin: &Path) -> Result<Recipe> {
        let r: Recipe = toml::from_str(text).map_err(|e| {
            RecipeError::Invalid(format!(
                "{}: {}",
                origin.display(),
                e.to_string().trim().replace('\n', " ")
            ))
        })?;
        if let Err(p) = r.problems() {
            let line = p
                .line_in(text)
                .map_or_else(String::new, |l| format!(", line {l}"));
            return Err(RecipeError::Invalid(format!(
                "{}{line}: {}",
                origin.display(),
                p.message()
            )));
        }
        Ok(r)
    }

    pub fn load(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RecipeError::Invalid(format!("cannot read recipe {}: {e}", path.display()))
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks what serde cannot: every numeric field in its range (counts that divide or repeat at
    /// least 1, ratios in [0, 1), learning rates and temperatures positive and finite, ...) and
    /// known names. The error names the table and the field; [`Recipe::from_toml`] adds its line.
    pub fn check(&self) -> Result<()> {
        self.problems()
            .map_err(|p| RecipeError::Invalid(p.message()))
    }

    /// The first problem of [`Recipe::check`], with the field's keys (for its line).
    pub fn problems(&self) -> std::result::Result<(), Problem> {
        let model = Fields::table("[model]", "model");
        if self.model.arch.is_some() == self.model.path.is_some() {
            return Err(model.problem(None, "needs exactly one of `arch` or `path`"));
        }
        for &d in self.model.input.iter().flatten() {
            model.at_least("input", d, 1)?;
        }
        model.at_least_opt("classes", self.model.classes, 1)?;
        let data = Fields::table("[data]", "data");
        data.at_least_opt("train_limit", self.data.train_limit, 1)?;
        data.at_least_opt("test_limit", self.data.test_limit, 1)?;
        data.at_least("calib_batches", self.data.calib_batches, 1)?;
        data.at_least("calib_batch_size", self.data.calib_batch_size, 1)?;
        if let Some(t) = &self.train {
            check_train(t, &Fields::table("[train]", "train"))?;
        }
        for (i, s) in self.stages.iter().enumerate() {
            let at = Fields::element(format!("stage {} ({})", i + 1, s.kind()), "stage", i);
            match s {
                Stage::Structured(st) => {
                    at.in_range("ratio", st.ratio, 0.0, 1.0, false)?;
                    scope_of(&st.scope).map_err(|m| at.problem(Some("scope"), m))?;
                    at.at_least("round_to", st.round_to, 1)?;
                    at.in_range("min_ratio", st.min_ratio, 0.0, 1.0, true)?;
                    at.in_range("max_ratio", st.max_ratio, 0.0, 1.0, true)?;
                    if st.min_ratio > st.max_ratio {
                        return Err(at.problem(
                            Some("min_ratio"),
                            format!(
                                "`min_ratio` = {} exceeds `max_ratio` = {}",
                                st.min_ratio, st.max_ratio
                            ),
                        ));
                    }
                    at.at_least("steps", st.steps, 1)?;
                    let ratios = at.sub("ratios");
                    for (group, &r) in &st.ratios {
                        ratios.in_range(group, r, 0.0, 1.0, false)?;
                    }
                }
                Stage::Layers(l) => {
                    at.at_least("count", l.count, 1)?;
                    at.one_of("score", &l.score, &["influence", "ablation"])?;
                }
                Stage::Unstructured(u) => {
                    at.in_range("target", u.target, 0.0, 1.0, false)?;
                    unstructured_scope(&u.scope_name())
                        .map_err(|m| at.problem(Some("scope"), m))?;
                    at.one_of(
                        "schedule",
                        &u.schedule,
                        &["one-shot", "iterative", "gradual"],
                    )?;
                    if u.schedule != "one-shot" && u.train.is_none() {
                        return Err(at.problem(
                            None,
                            format!("the {} schedule needs a `train` table", u.schedule),
                        ));
                    }
                    if let Some(t) = &u.train {
                        check_train(t, &at.sub("train"))?;
                    }
                    at.at_least("rounds", u.rounds, 1)?;
                    at.at_least_opt("prune_every", u.prune_every, 1)?;
                    at.fraction("end_fraction", u.end_fraction)?;
                }
                Stage::Nm(nm) => {
                    if nm.n == 0 || nm.n >= nm.m {
                        return Err(
                            at.problem(Some("n"), format!("need 0 < n < m, got {}:{}", nm.n, nm.m))
                        );
                    }
                }
                Stage::SparseTrain(st) => {
                    at.non_negative("lambda", st.lambda)?;
                    if !(st.alpha.is_finite() && st.alpha >= 1.0) {
                        return Err(at.problem(
                            Some("alpha"),
                            format!("`alpha` = {} must be a finite number >= 1", st.alpha),
                        ));
                    }
                    check_train(&st.train, &at.sub("train"))?;
                }
                Stage::Finetune(t) => check_train(t, &at)?,
                Stage::Restart => {}
                Stage::Dqn(d) => d.check().map_err(|e| at.problem(None, e.to_string()))?,
                Stage::Ddpg(d) => d.check().map_err(|e| at.problem(None, e.to_string()))?,
                Stage::Threshold(t) => at.non_negative("value", t.value)?,
                Stage::Lottery(l) => {
                    at.in_range("target", l.target, 0.0, 1.0, false)?;
                    at.at_least("rounds", l.rounds, 1)?;
                    check_train(&l.train, &at.sub("train"))?;
                }
            }
        }
        Ok(())
    }
}

/// The fields of a training table (`[train]`, a stage's `train`, a `finetune` stage).
fn check_train(t: &TrainSpec, at: &Fields) -> std::result::Result<(), Problem> {
    at.at_least("epochs", t.epochs, 1)?;
    at.positive("lr", t.lr)?;
    at.at_least("batch_size", t.batch_size, 1)?;
    at.one_of("optimizer", &t.optimizer, &["sgd", "adamw"])?;
    at.in_range("momentum", t.momentum, 0.0, 1.0, false)?;
    at.non_negative("weight_decay", t.weight_decay)?;
    at.one_of("schedule", &t.schedule, &["cosine", "constant", "step"])?;
    at.at_most("crop_padding", t.crop_padding, MAX_CROP_PADDING)?;
    if let Some(d) = &t.distill {
        d.check()
            .map_err(|e| at.problem(Some("distill"), e.to_string()))?;
    }
    Ok(())
}

impl Stage {
    pub fn kind(&self) -> &'static str {
        match self {
            Stage::Structured(_) => "structured",
            Stage::Layers(_) => "layers",
            Stage::Unstructured(_) => "unstructured",
            Stage::Nm(_) => "nm",
            Stage::Threshold(_) => "threshold",
            Stage::Finetune(_) => "finetune",
            Stage::Lottery(_) => "lottery",
            Stage::SparseTrain(_) => "sparse-train",
            Stage::Restart => "restart",
            Stage::Dqn(_) => "dqn",
            Stage::Ddpg(_) => "ddpg",
        }
    }

    /// Whether the stage prunes without training afterwards (so the BatchNorm statistics describe
    /// the model before it, and re-calibration applies).
    pub fn prunes_without_training(&self) -> bool {
        match self {
            Stage::Structured(_) | Stage::Layers(_) | Stage::Nm(_) | Stage::Threshold(_) => true,
            Stage::Unstructured(u) => u.schedule == "one-shot",
            Stage::Finetune(_)
            | Stage::Lottery(_)
            | Stage::SparseTrain(_)
            | Stage::Restart
            | Stage::Dqn(_)
            | Stage::Ddpg(_) => false,
        }
    }
}

fn scope_of(s: &str) -> std::result::Result<Scope, String> {
    match s {
        "layer" => Ok(Scope::Layer),
        "global" => Ok(Scope::Global),
        other => Err(format!("scope `{other}` is not one of layer, global")),
    }
}

fn unstructured_scope(s: &str) -> std::result::Result<UnstructuredScope, String> {
    match s {
        "layer" => Ok(UnstructuredScope::Layer),
        "global" => Ok(UnstructuredScope::Global),
        "row" => Ok(UnstructuredScope::Row),
        other => Err(format!("scope `{other}` is not one of layer, global, row")),
    }
}

/// The training configuration of a spec over `n_train` samples.
pub fn train_config(
    t: &TrainSpec,
    n_train: usize,
    seed: u64,
    label: &str,
    progress: bool,
) -> TrainConfig {
    let steps = t.epochs * n_train.div_ceil(t.batch_size.max(1));
    TrainConfig {
        epochs: t.epochs,
        batch_size: t.batch_size,
        lr: t.lr,
        optimizer: match t.optimizer.as_str() {
            "adamw" => OptimizerKind::adamw(t.weight_decay),
            _ => OptimizerKind::sgd(t.momentum, t.weight_decay),
        },
        schedule: match t.schedule.as_str() {
            "constant" => LrSchedule::Constant,
            "step" => LrSchedule::Step {
                step_size: (steps / 3).max(1),
                gamma: 0.1,
            },
            _ => LrSchedule::Cosine {
                total_steps: steps,
                min_factor: 0.0,
            },
        },
        augment: Augment {
            crop_padding: t.crop_padding,
            hflip: t.hflip,
        },
        seed,
        progress,
        label: label.into(),
    }
}

/// Everything a stage needs besides the model.
pub struct RunCx<'a> {
    /// training and calibration data (`prunekit prune` runs data-free stages without it)
    pub split: Option<&'a Split>,
    pub seed: u64,
    pub progress: bool,
    pub calib_batches: usize,
    pub calib_batch_size: usize,
    /// the model before the first pruning stage (the distillation teacher)
    pub teacher: Option<Graph>,
    pub device: Device,
    /// re-calibrate BatchNorm statistics after pruning stages when there is data
    pub recalibrate: bool,
}

fn train_with(
    g: &mut Graph,
    t: &TrainSpec,
    cx: &RunCx,
    label: &str,
    extra: &mut [&mut dyn StepHook],
) -> Result<()> {
    let split = cx.data("training")?;
    let cfg = train_config(t, split.train.len(), cx.seed, label, cx.progress);
    let mut distill = match (&t.distill, &cx.teacher) {
        (Some(d), Some(teacher)) => Some(Distillation::new(teacher.try_clone()?, *d)?),
        (Some(_), None) => {
            return Err(RecipeError::Invalid(
                "distillation needs a teacher: it is the model before the first pruning stage"
                    .into(),
            ))
        }
        _ => None,
    };
    let mut hooks: Vec<&mut dyn StepHook> = Vec::new();
    if let Some(d) = distill.as_mut() {
        hooks.push(d);
    }
    for h in extra.iter_mut() {
        hooks.push(&mut **h);
    }
    fit_with(g, &split.train, None, &cfg, &mut hooks)?;
    Ok(())
}

impl<'a> RunCx<'a> {
    /// The data, or an error saying what needed it.
    pub fn data(&self, what: &str) -> Result<&'a Split> {
        self.split
            .ok_or_else(|| RecipeError::Invalid(format!("{what} needs data (pass --calib DATA)")))
    }

    /// Calibration batches for `criterion`: only data-driven criteria get (and need) them.
    fn calibration_for(&self, criterion: &str) -> Result<Option<Calibration>> {
        if prunekit_prune::DATA_CRITERIA.contains(&criterion) {
            self.calibration()
        } else {
            Ok(None)
        }
    }

    /// Calibration batches, when there is data.
    fn calibration(&self) -> Result<Option<Calibration>> {
        self.split
            .map(|s| {
                crate::criteria::calibration(
                    &s.train,
                    self.calib_batches,
                    self.calib_batch_size,
                    self.seed,
                    &self.device,
                )
            })
            .transpose()
    }

    /// The headline metric on the test data (when there is data and it is defined).
    fn test_metric(&self, g: &Graph) -> Result<Option<f64>> {
        Ok(self
            .split
            .map(|s| evaluate(g, &s.test, 256))
            .transpose()?
            .and_then(|e| e.headline_value()))
    }

    /// The name of the headline metric of the data (`accuracy` without data).
    fn headline(&self) -> &'static str {
        self.split.map_or("accuracy", |s| s.test.task.headline())
    }
}

/// What a stage did: a JSON description, for structured stages the removed original indices
/// (to verify the rewrite against masking), and lines for the user.
pub struct StageOutcome {
    pub detail: serde_json::Value,
    pub removed: Option<BTreeMap<SliceKey, BTreeSet<usize>>>,
    /// one line per group pruned less than asked, naming the group and the reason
    pub shortfalls: Vec<String>,
    /// set when the stage asked for something and did nothing: why
    pub warning: Option<String>,
}

/// Runs one stage on `g`; returns what it did.
pub fn run_stage(g: &mut Graph, stage: &Stage, cx: &RunCx) -> Result<StageOutcome> {
    use serde_json::json;
    let mut removed = None;
    let (mut shortfalls, mut warning) = (Vec::new(), None);
    let detail = match stage {
        Stage::Structured(s) => {
            let calib = cx.calibration_for(&s.criterion)?;
            let crit = make_criterion(&s.criterion, g, calib.as_ref(), cx.seed)?;
            let mut cfg = StructuredConfig::new(s.ratio);
            cfg.scope = scope_of(&s.scope).map_err(RecipeError::Invalid)?;
            cfg.round_to = s.round_to;
            cfg.min_ratio = s.min_ratio;
            cfg.max_ratio = s.max_ratio;
            cfg.steps = s.steps;
            cfg.protected = s.protect.clone();
            cfg.group_ratios = s.ratios.clone();
            if let Some(p) = &s.proposal {
                cfg.group_ratios.extend(read_proposal(p)?);
            }
            let r = prune_structured(g, &cfg, crit.as_ref())?;
            removed = Some(r.removed());
            shortfalls = r.shortfalls.iter().map(|s| s.to_string()).collect();
            warning = r.warning.clone();
            // every field of the report (groups, shortfalls, attention head counts, ...)
            let mut detail = json!(r);
            detail["criterion"] = json!(s.criterion);
            detail
        }
        Stage::Layers(l) => {
            let layers = find_layers(g)?;
            let calib = cx.calibration()?;
            let scores = if l.score == "ablation" {
                let c = calib.ok_or_else(|| {
                    RecipeError::Invalid(
                        "layer ablation scores need data (pass --calib DATA)".into(),
                    )
                })?;
                let loss = |h: &Graph| -> prunekit_prune::Result<f64> {
                    let mut exec = prunekit_graph::Executor::new(0);
                    let mut total = 0.0;
                    for b in &c.batches {
                        let out = exec.eval(h, &b.inputs)?.remove(0);
                        total += c
                            .loss
                            .compute(&out, &b.target)?
                            .to_dtype(candle_core::DType::F64)?
                            .to_scalar::<f64>()?;
                    }
                    Ok(total / c.batches.len().max(1) as f64)
                };
                prunekit_prune::ablation_scores(g, &layers, &loss)?
            } else {
                // block influence needs inputs only: random ones when there is no data
                let x = match calib.as_ref().and_then(|c| c.batches.first()) {
                    Some(b) => b.inputs.clone(),
                    None => prunekit_prune::random_inputs(g, 8, cx.seed)?,
                };
                block_influence(g, &layers, &x)?
            };
            let r = prune_layers(g, &layers, &scores, l.count)?;
            json!(r)
        }
        Stage::Unstructured(u) => {
            let scope_name = u.scope_name();
            let scope = unstructured_scope(&scope_name).map_err(RecipeError::Invalid)?;
            let criterion = u.criterion_name()?;
            let c = cx.calibration_for(&criterion)?;
            let prune_to = |g: &mut Graph, s: f64| -> Result<UnstructuredReport> {
                let crit =
                    make_criterion_excluding(&criterion, g, c.as_ref(), cx.seed, &u.exclude)?;
                Ok(prune_unstructured(
                    g,
                    crit.as_ref(),
                    Target::Ratio(s),
                    scope,
                )?)
            };
            let mut detail = match u.schedule.as_str() {
                "one-shot" => {
                    let r = prune_to(g, u.target)?;
                    let mut d = json!({ "criterion": criterion, "scope": scope_name,
                        "schedule": "one-shot", "target": u.target });
                    pass_detail(&mut d, &r, &u.exclude);
                    d
                }
                "iterative" => {
                    let t = u.train.as_ref().ok_or_else(|| {
                        RecipeError::Invalid("iterative pruning needs `train`".into())
                    })?;
                    let mut rounds = Vec::new();
                    let mut last = UnstructuredReport::default();
                    for k in 1..=u.rounds {
                        let s = iterative_sparsity(u.target, k, u.rounds);
                        last = prune_to(g, s)?;
                        train_with(g, t, cx, &format!("round {k}"), &mut [])?;
                        rounds.push(json!({ "round": k, "sparsity": s,
                            cx.headline(): cx.test_metric(g)? }));
                    }
                    let mut d = json!({ "criterion": criterion, "scope": scope_name,
                        "schedule": "iterative", "rounds": rounds });
                    pass_detail(&mut d, &last, &u.exclude);
                    d
                }
                _ => {
                    let t = u.train.as_ref().ok_or_else(|| {
                        RecipeError::Invalid("gradual pruning needs `train`".into())
                    })?;
                    let per_epoch = cx.data("gradual pruning")?.train.len() / t.batch_size.max(1);
                    let total = t.epochs * per_epoch.max(1);
                    let dt = u.prune_every.unwrap_or((per_epoch / 10).max(1));
                    let end = ((total as f64) * u.end_fraction) as usize;
                    let n = end.saturating_sub(u.start_step) / dt;
                    let s_i = crate::criteria::sparsity_of(g)?;
                    let c2 = c.clone();
                    let crit_name = criterion.clone();
                    let exclude = u.exclude.clone();
                    let seed = cx.seed;
                    let events = if criterion == "movement" {
                        // the real movement criterion: scores accumulated from this training
                        let mut hook = MovementPruning {
                            movement: prunekit_prune::Movement::new(),
                            s_i,
                            s_f: u.target,
                            t0: u.start_step,
                            n: n.max(1),
                            dt,
                            scope,
                            exclude: u.exclude.clone(),
                            events: Vec::new(),
                        };
                        train_with(g, t, cx, "movement", &mut [&mut hook])?;
                        hook.events
                    } else {
                        let mut hook = GradualPruning::new(
                            s_i,
                            u.target,
                            u.start_step,
                            n.max(1),
                            dt,
                            Box::new(move |g: &mut Graph, s: f64| {
                                let crit = make_criterion_excluding(
                                    &crit_name,
                                    g,
                                    c2.as_ref(),
                                    seed,
                                    &exclude,
                                )
                                .map_err(|e| prunekit_train::TrainError::Invalid(e.to_string()))?;
                                prune_unstructured(g, crit.as_ref(), Target::Ratio(s), scope)
                                    .map_err(|e| {
                                        prunekit_train::TrainError::Invalid(e.to_string())
                                    })?;
                                Ok(())
                            }),
                        );
                        train_with(g, t, cx, "gradual", &mut [&mut hook])?;
                        hook.events
                    };
                    // the ramp must end exactly at the target
                    let last = if events.last().map(|e| e.1) != Some(u.target) {
                        Some(prune_to(g, u.target)?)
                    } else {
                        None
                    };
                    let mut d = json!({ "criterion": criterion, "scope": scope_name,
                        "schedule": "gradual", "events": events.len(), "every": dt,
                        "first": events.first(), "last": events.last() });
                    if let Some(r) = &last {
                        pass_detail(&mut d, r, &u.exclude);
                    }
                    d
                }
            };
            if scope == UnstructuredScope::Global
                && !prunekit_prune::SCALE_SAFE_CRITERIA.contains(&criterion.as_str())
            {
                push_note(
                    &mut detail,
                    format!(
                        "criterion `{criterion}` compares raw scores across layers: layers of a \
                         smaller scale lose more weights (scale-aware for global scope: {})",
                        prunekit_prune::SCALE_SAFE_CRITERIA.join(", ")
                    ),
                );
            }
            detail
        }
        Stage::Threshold(t) => {
            let r = prunekit_prune::magnitude_prune(g, Target::Threshold(t.value), Scope::Layer)?;
            let mut d = json!({ "threshold": t.value });
            pass_detail(&mut d, &r, &[]);
            d
        }
        Stage::Nm(nm) => {
            let calib = cx.calibration_for(&nm.criterion)?;
            let crit =
                make_criterion_excluding(&nm.criterion, g, calib.as_ref(), cx.seed, &nm.exclude)?;
            let r = prune_nm(g, crit.as_ref(), nm.n, nm.m, nm.strict)?;
            let mut d = json!({ "pattern": format!("{}:{}", nm.n, nm.m),
                "criterion": nm.criterion, "strict": nm.strict });
            pass_detail(&mut d, &r, &nm.exclude);
            d
        }
        Stage::Finetune(t) => {
            train_with(g, t, cx, "finetune", &mut [])?;
            json!({ "epochs": t.epochs, "distill": t.distill })
        }
        Stage::Lottery(l) => lottery(g, l, cx)?,
        Stage::Restart => {
            let dense = cx.teacher.as_ref().ok_or_else(|| {
                RecipeError::Invalid("`restart` needs the dense model, which was not kept".into())
            })?;
            *g = dense.try_clone()?;
            json!({ "restart": "the dense model" })
        }
        Stage::Dqn(_) | Stage::Ddpg(_) => {
            return Err(RecipeError::Invalid(format!(
                "a `{}` stage trains in an environment: it runs in a recipe whose [data] names one ({})",
                stage.kind(),
                prunekit_data::env::ENVIRONMENTS.join(", ")
            )))
        }
        Stage::SparseTrain(st) => {
            let split = cx.data("group-sparse training")?;
            let steps = st.train.epochs * split.train.len().div_ceil(st.train.batch_size.max(1));
            let mut hook = prunekit_train::GroupSparsity::new(g, st.lambda, st.alpha, steps)?;
            train_with(g, &st.train, cx, "sparse", &mut [&mut hook])?;
            json!({ "lambda": st.lambda, "alpha": st.alpha, "epochs": st.train.epochs,
                "units": hook.units(), "final_penalty": hook.last_penalty() })
        }
    };
    let mut detail = detail;
    if stage.prunes_without_training() {
        if let Some(r) = recalibrate(g, cx)? {
            detail["recalibration"] = r;
        }
    }
    Ok(StageOutcome {
        detail,
        removed,
        shortfalls,
        warning,
    })
}

/// Re-estimates the BatchNorm statistics of a just-pruned model on the calibration batches, when
/// re-calibration is on, there is data and the model has BatchNorm; returns what it did with the
/// test headline metric before and after (right after pruning, without and with it).
fn recalibrate(g: &mut Graph, cx: &RunCx) -> Result<Option<serde_json::Value>> {
    if !cx.recalibrate || !prunekit_train::has_batch_norm(g) {
        return Ok(None);
    }
    let Some(split) = cx.split else {
        return Ok(None);
    };
    // the calibration batches, or as many samples as a small training set has (at least 2 per
    // batch: training-mode statistics need two values per channel)
    let n = split.train.len();
    let size = cx.calib_batch_size.min(n);
    if size < 2 {
        return Ok(None);
    }
    let count = cx.calib_batches.min(n / size).max(1);
    let calib = crate::criteria::calibration(&split.train, count, size, cx.seed, &cx.device)?;
    let before = cx.test_metric(g)?;
    let batches: Vec<Vec<candle_core::Tensor>> =
        calib.batches.iter().map(|b| b.inputs.clone()).collect();
    let r = prunekit_train::recalibrate_batch_norm(g, &batches)?;
    let after = cx.test_metric(g)?;
    Ok(Some(serde_json::json!({
        "batch_norms": r.nodes.len(),
        "batches": r.batches,
        "samples": r.samples,
        "metric": cx.headline(),
        "without": before,
        "with": after,
    })))
}

/// Adds what an unstructured / N:M pass reports to a stage detail: `sparsity` (over the scored
/// weights), `scored_weights`, `left_out` (weights left dense, with the reason; `excluded` nodes
/// say so), `rows_kept`, and one `notes` line for each of them.
fn pass_detail(d: &mut serde_json::Value, r: &UnstructuredReport, excluded: &[String]) {
    let (_, total) = r.counts();
    let left_out: Vec<LeftOut> = r
        .left_out
        .iter()
        .map(|l| LeftOut {
            reason: if excluded.contains(&l.node) {
                "excluded".into()
            } else {
                l.reason.clone()
            },
            ..l.clone()
        })
        .collect();
    let shown = UnstructuredReport {
        layers: Vec::new(),
        left_out: left_out.clone(),
        rows_kept: r.rows_kept,
    };
    d["sparsity"] = serde_json::json!(r.sparsity());
    d["scored_weights"] = serde_json::json!(total);
    d["left_out"] = serde_json::json!(left_out);
    d["rows_kept"] = serde_json::json!(r.rows_kept);
    if !r.left_out.is_empty() {
        push_note(
            d,
            format!(
                "the ratio is over the {total} weights scored; {} weight tensor(s) left dense",
                r.left_out.len()
            ),
        );
    }
    for n in shown.notes() {
        push_note(d, n);
    }
}

/// Appends a line to a stage detail's `notes` (what `prunekit prune` and `prunekit run` print).
fn push_note(d: &mut serde_json::Value, note: String) {
    match d.get_mut("notes").and_then(|n| n.as_array_mut()) {
        Some(a) => a.push(serde_json::Value::String(note)),
        None => d["notes"] = serde_json::json!([note]),
    }
}

/// Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).
fn lottery(g: &mut Graph, l: &LotteryStage, cx: &RunCx) -> Result<serde_json::Value> {
    use serde_json::json;
    let init = Snapshot::take(g)?;
    let mut rewind = RewindPoint {
        at: l.rewind_step,
        snapshot: None,
    };
    train_with(g, &l.train, cx, "dense", &mut [&mut rewind])?;
    let dense = cx.test_metric(g)?;
    let point = if l.rewind_step == 0 {
        init
    } else {
        rewind.snapshot.ok_or_else(|| {
            RecipeError::Invalid(format!(
                "rewind_step {} is beyond the dense training",
                l.rewind_step
            ))
        })?
    };
    let mut rounds = Vec::new();
    for k in 1..=l.rounds {
        let s = iterative_sparsity(l.target, k, l.rounds);
        prunekit_prune::magnitude_prune(g, Target::Ratio(s), Scope::Global)?;
        if l.reinit {
            let fresh = crate::criteria::reinit_like(g, cx.seed + 1000 + k as u64)?;
            Snapshot::take(&fresh)?.restore(g)?;
        } else {
            point.restore(g)?;
        }
        train_with(g, &l.train, cx, &format!("ticket {k}"), &mut [])?;
        rounds.push(json!({ "round": k, "sparsity": s,
            cx.headline(): cx.test_metric(g)? }));
    }
    Ok(
        json!({ "metric": cx.headline(), "dense": dense, "rewind_step": l.rewind_step,
        "reinit": l.reinit, "rounds": rounds }),
    )
}

/// The model a recipe starts from: loaded from `path`, or the zoo architecture `arch` built with
/// the recipe's `input`, `classes` and `vocab`, each taken from `data` when the recipe leaves it
/// out (the first input's per-sample shape; the classes of class targets, the width of
/// regression targets; per id input, its largest id + 1 over both splits). A zoo model trained
/// on text carries the data's tokenizer (`meta["tokenizer"]`, [`prunekit_data::Split::tokenizer`]).
///
/// # Errors
/// Neither `arch` nor `path`, a model that cannot be read, or an architecture that does not build
/// for those sizes.
pub fn build_model(
    spec: &ModelSpec,
    data: Option<&Split>,
    seed: u64,
    device: &Device,
) -> Result<Graph> {
    if let Some(p) = &spec.path {
        return Ok(prunekit_io::load(p, device)?);
    }
    let arch = spec
        .arch
        .as_deref()
        .ok_or_else(|| RecipeError::Invalid("[model] needs `arch` or `path`".into()))?;
    let from_data = |f: &dyn Fn(&Split) -> Option<Vec<usize>>| data.and_then(f);
    let opts = prunekit_zoo::ZooOptions {
        input: spec
            .input
            .clone()
            .or_else(|| from_data(&|s| Some(s.train.sample_shape().to_vec()))),
        classes: spec.classes.or_else(|| {
            data.and_then(|s| match &s.train.target {
                prunekit_data::Target::Regression { dim, .. } => Some(*dim),
                _ => s.train.num_classes(),
            })
        }),
        vocab: spec.vocab.clone().or_else(|| {
            from_data(&|s| {
                let v: Vec<usize> = s
                    .train
                    .inputs
                    .iter()
                    .zip(&s.test.inputs)
                    .filter_map(|(a, b)| match (&a.values, &b.values) {
                        (prunekit_data::Values::U32(x), prunekit_data::Values::U32(y)) => Some(
                            x.iter()
                                .chain(y)
                                .copied()
                                .max()
                                .map_or(1, |m| m as usize + 1),
                        ),
                        _ => None,
                    })
                    .collect();
                (!v.is_empty()).then_some(v)
            })
        }),
    };
    let mut g = prunekit_zoo::build_with(arch, seed, &opts)?;
    if let Some(tok) = data.and_then(|s| s.tokenizer.as_ref()) {
        g.meta.insert(
            prunekit_data::text::TOKENIZER_META.into(),
            serde_json::Value::String(tok.clone()),
        );
    }
    Ok(g)
}

/// Loads the recipe's dataset (with the optional training cap).
pub fn load_split(d: &DataSpec, seed: u64) -> Result<Split> {
    let (mut split, _) = prunekit_data::load(&d.name, d.dir.as_deref(), seed)?;
    for (limit, set, what) in [
        (d.train_limit, &mut split.train, "train_limit"),
        (d.test_limit, &mut split.test, "test_limit"),
    ] {
        if let Some(n) = limit {
            if n == 0 {
                return Err(RecipeError::Invalid(format!(
                    "data.{what} must be positive"
                )));
            }
            *set = subset(set, n, seed);
        }
    }
    Ok(split)
}

/// A seeded subset of about `n` samples (whole candidate lists for ranking data).
fn subset(data: &Dataset, n: usize, seed: u64) -> Dataset {
    use rand::seq::SliceRandom;
    let unit = data.subset_unit();
    let mut idx: Vec<usize> = (0..data.len() / unit).collect();
    idx.shuffle(&mut prunekit_graph::graph::rng(seed ^ 0x11));
    idx.truncate(n.div_ceil(unit).min(data.len() / unit));
    idx.sort_unstable();
    data.subset_lists(&idx)
}

/// `accuracy 91.20%`, `auc 0.8312`, `rmse 0.9001`: a metric as a person reads it (shares in
/// percent, others to four decimals); `no metric` when there is none.
pub fn metric_text(m: Option<(&str, f64)>) -> String {
    match m {
        Some((name, v)) if name.contains("accuracy") || name.starts_with("hit_rate") => {
            format!("{name} {:.2}%", 100.0 * v)
        }
        Some((name, v)) => format!("{name} {v:.4}"),
        None => "no metric".into(),
    }
}

/// Runs a recipe: model, data, optional training, every stage measured.
pub fn run(
    recipe: &Recipe,
    progress: bool,
    log: &mut dyn FnMut(&str),
) -> Result<(Graph, RecipeReport)> {
    let out = run_full(recipe, progress, log)?;
    Ok((out.after, out.report))
}

/// Everything a run leaves: the model before the first stage and after the last, the data, and
/// the report.
pub struct RunOutput {
    pub before: Graph,
    pub after: Graph,
    /// the data (`None` for a reinforcement-learning recipe, whose data are its environment)
    pub split: Option<Split>,
    pub report: RecipeReport,
}

/// [`run`], keeping the model before pruning and the data (for a before/after report).
pub fn run_full(recipe: &Recipe, progress: bool, log: &mut dyn FnMut(&str)) -> Result<RunOutput> {
    recipe.check()?;
    if prunekit_data::env::ENVIRONMENTS.contains(&recipe.data.name.as_str()) {
        return crate::rl::run_rl(recipe, log);
    }
    if recipe.dqn.is_some() || recipe.ddpg.is_some() {
        return Err(RecipeError::Invalid(format!(
            "[dqn] and [ddpg] train in an environment, but [data] names the dataset `{}` (environments: {})",
            recipe.data.name,
            prunekit_data::env::ENVIRONMENTS.join(", ")
        )));
    }
    let device = prunekit_graph::device::default_device();
    let mut split = load_split(&recipe.data, recipe.seed)?;
    if let Some(t) = &recipe.task {
        t.apply(&mut split)?;
    }
    let mut g = build_model(&recipe.model, Some(&split), recipe.seed, &device)?;
    g.meta
        .insert("dataset".into(), serde_json::json!(recipe.data.name));
    let mut cx = RunCx {
        split: Some(&split),
        seed: recipe.seed,
        progress,
        calib_batches: recipe.data.calib_batches,
        calib_batch_size: recipe.data.calib_batch_size,
        teacher: None,
        device: device.clone(),
        recalibrate: recipe.data.recalibrate,
    };
    if let Some(t) = &recipe.train {
        log(&format!("training the dense model for {} epochs", t.epochs));
        train_with(&mut g, t, &cx, "train", &mut [])?;
    }
    let before = summarize(&g, Some(&split.test))?;
    log(&format!(
        "before: {}, {} params, {} MACs",
        metric_text(before.headline_metric()),
        before.params,
        before.macs
    ));
    cx.teacher = Some(g.try_clone()?);
    let mut stages = Vec::new();
    for (i, s) in recipe.stages.iter().enumerate() {
        let t0 = Instant::now();
        let done = run_stage(&mut g, s, &cx)
            .map_err(|e| RecipeError::Invalid(format!("stage {} ({}): {e}", i + 1, s.kind())))?;
        for line in &done.shortfalls {
            log(&format!(
                "stage {} ({}): shortfall: {line}",
                i + 1,
                s.kind()
            ));
        }
        if let Some(w) = &done.warning {
            log(&format!("stage {} ({}): warning: {w}", i + 1, s.kind()));
        }
        let e = evaluate(&g, &split.test, 256)?;
        stages.push(StageLog::measured(
            i + 1,
            s,
            done.detail,
            &g,
            e.headline.clone(),
            e.metrics,
            t0,
            log,
        )?);
    }
    let after = summarize(&g, Some(&split.test))?;
    let report = RecipeReport {
        description: recipe.description.clone(),
        dataset: recipe.data.name.clone(),
        before,
        after,
        stages,
    };
    let before_graph = cx
        .teacher
        .take()
        .ok_or_else(|| RecipeError::Invalid("the model before pruning was not kept".into()))?;
    Ok(RunOutput {
        before: before_graph,
        after: g,
        split: Some(split),
        report,
    })
}

/// The per-layer ratios of a proposal file (`prunekit sensitivity -o FILE`).
pub fn read_proposal(path: &Path) -> Result<BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        RecipeError::Invalid(format!("cannot read proposal {}: {e}", path.display()))
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        RecipeError::Invalid(format!("proposal {} is not JSON: {e}", path.display()))
    })?;
    let ratios = v
        .get("proposal")
        .and_then(|p| p.get("ratios"))
        .or_else(|| v.get("ratios"))
        .ok_or_else(|| {
            RecipeError::Invalid(format!("proposal {} has no `ratios`", path.display()))
        })?;
    serde_json::from_value(ratios.clone()).map_err(|e| {
        RecipeError::Invalid(format!(
            "proposal {}: `ratios` is not a map of numbers: {e}",
            path.display()
        ))
    })
}
