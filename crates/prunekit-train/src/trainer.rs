//! The training loop, through the dataset's task: any number of inputs, the task's loss, and the
//! task's metrics on the test data after every epoch (`prunekit_measure::evaluate`).

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use prunekit_data::{Augment, Batches, Dataset, Task, TaskKind};
use prunekit_graph::{Executor, Graph, Mode};
use prunekit_measure::{check_task, evaluate, model_inputs, Evaluation};
use serde::Serialize;

use crate::loss::accuracy;
use crate::optim::OptimizerKind;
use crate::schedule::LrSchedule;
use crate::{Result, TrainError};

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// base learning rate
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub schedule: LrSchedule,
    pub augment: Augment,
    pub seed: u64,
    /// draw a progress bar on stderr
    pub progress: bool,
    /// label shown on the progress bar
    pub label: String,
}

impl TrainConfig {
    /// SGD with momentum 0.9, weight decay 5e-4 and a cosine schedule over all steps of `train`.
    pub fn sgd_cosine(epochs: usize, batch_size: usize, lr: f64, n_train: usize) -> Self {
        let steps = epochs * n_train.div_ceil(batch_size.max(1));
        Self {
            epochs,
            batch_size,
            lr,
            optimizer: OptimizerKind::sgd(0.9, 5e-4),
            schedule: LrSchedule::Cosine {
                total_steps: steps,
                min_factor: 0.0,
            },
            augment: Augment::default(),
            seed: 0,
            progress: true,
            label: "train".into(),
        }
    }
}

/// One epoch's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub lr: f64,
    /// mean task loss over the epoch's training batches (train mode)
    pub train_loss: f64,
    /// accuracy over the epoch's training batches, for single-label class tasks
    pub train_accuracy: Option<f64>,
    /// the task's loss and metrics on the test data after the epoch
    pub test: Option<Evaluation>,
    pub seconds: f64,
}

impl EpochLog {
    /// The test headline metric's name and value, when measured.
    pub fn test_headline(&self) -> Option<(&str, f64)> {
        let e = self.test.as_ref()?;
        Some((e.headline.as_str(), e.headline_value()?))
    }
}

fn progress_bar(show: bool, len: u64, label: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(label.to_string());
    pb
}

/// What a training step looks like to a [`StepHook`].
pub struct StepCx<'a> {
    /// optimizer steps taken before this one (0-based), and the epoch
    pub step: usize,
    pub epoch: usize,
    /// the batch's inputs, one per model input (`[B, ..]`)
    pub inputs: &'a [Tensor],
    /// the batch's targets (class ids `[B]`, values `[B, D]`, token ids `[B, T]`)
    pub target: &'a Tensor,
    /// the model's (train-mode) output for `inputs`
    pub output: &'a Tensor,
    /// the task loss of this batch (before any hook's extra term)
    pub task_loss: &'a Tensor,
    /// the task being trained
    pub task: &'a Task,
}

/// Code that runs inside the training loop: extra loss terms (distillation, sparsity penalties),
/// gradient observers (movement scores) and pruning on a schedule. Every method has a no-op default.
pub trait StepHook {
    /// A term added to the task loss before the backward pass.
    fn extra_loss(&mut self, _g: &Graph, _cx: &StepCx) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Sees the gradients before the optimizer step.
    fn after_backward(&mut self, _g: &Graph, _grads: &GradStore, _cx: &StepCx) -> Result<()> {
        Ok(())
    }
    /// Runs after the optimizer step (masks re-applied); may set new masks on `g`.
    fn after_step(&mut self, _g: &mut Graph, _cx: &StepCx) -> Result<()> {
        Ok(())
    }
}

/// Trains `g` in place; masks stay fixed.
pub fn fit(
    g: &mut Graph,
    train: &Dataset,
    test: Option<&Dataset>,
    cfg: &TrainConfig,
) -> Result<Vec<EpochLog>> {
    fit_with(g, train, test, cfg, &mut [])
}

/// [`fit`] with hooks called at every step, in order.
pub fn fit_with(
    g: &mut Graph,
    train: &Dataset,
    test: Option<&Dataset>,
    cfg: &TrainConfig,
    hooks: &mut [&mut dyn StepHook],
) -> Result<Vec<EpochLog>> {
    check_task(g, train)?;
    if let Some(t) = test {
        check_task(g, t)?;
    }
    if cfg.batch_size == 0 {
        return Err(TrainError::Invalid("batch size must be positive".into()));
    }
    g.apply_masks()?;
    let device = g.device();
    let loss_fn = train.task.loss();
    let class_task = matches!(
        train.task.kind,
        TaskKind::Classification | TaskKind::Binary | TaskKind::NextItem
    );
    let mut opt = cfg.optimizer.build(cfg.lr);
    let mut exec = Executor::new(cfg.seed);
    let mut rng = prunekit_graph::graph::rng(cfg.seed ^ 0x5eed);
    // drop the last partial batch (a batch of one breaks training-mode BatchNorm) unless it is the only one
    let batches = Batches::new(
        train.len(),
        cfg.batch_size,
        true,
        train.len() > cfg.batch_size,
        cfg.seed,
    );
    let pb = progress_bar(
        cfg.progress,
        (cfg.epochs * batches.num_batches()) as u64,
        &cfg.label,
    );
    let mut logs = Vec::new();
    let mut step = 0usize;
    for epoch in 0..cfg.epochs {
        let t0 = Instant::now();
        let (mut loss_sum, mut hits, mut seen) = (0f64, 0usize, 0usize);
        for idx in batches.epoch(epoch) {
            opt.set_lr(cfg.schedule.lr_at(cfg.lr, step));
            let b = train.batch_augmented(&idx, &cfg.augment, &mut rng, &device)?;
            let x = model_inputs(g, b.inputs)?;
            let y = b.target;
            let output = exec.run(g, &x, Mode::TRAIN, None)?.remove(0);
            let task = loss_fn
                .compute(&output, &y)
                .map_err(|e| TrainError::Invalid(format!("training on `{}`: {e}", train.name)))?;
            let cx = StepCx {
                step,
                epoch,
                inputs: &x,
                target: &y,
                output: &output,
                task_loss: &task,
                task: &train.task,
            };
            let mut loss = task.clone();
            for h in hooks.iter_mut() {
                if let Some(extra) = h.extra_loss(g, &cx)? {
                    loss = (loss + extra)?;
                }
            }
            let grads = loss.backward()?;
            for h in hooks.iter_mut() {
                h.after_backward(g, &grads, &cx)?;
            }
            opt.step(g, &grads)?;
            for h in hooks.iter_mut() {
                h.after_step(g, &cx)?;
            }
            let l = task.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "the loss became {l} at epoch {epoch}, step {step}: lower the learning rate"
                )));
            }
            loss_sum += l * idx.len() as f64;
            if class_task {
                hits += accuracy(&output, &y)?;
            }
            seen += idx.len();
            step += 1;
            pb.inc(1);
            pb.set_message(format!(
                "epoch {} loss {:.4}",
                epoch + 1,
                loss_sum / seen as f64
            ));
        }
        let eval = test.map(|t| evaluate(g, t, 256)).transpose()?;
        let log = EpochLog {
            epoch: epoch + 1,
            lr: opt.lr(),
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: class_task.then(|| hits as f64 / seen.max(1) as f64),
            test: eval,
            seconds: t0.elapsed().as_secs_f64(),
        };
        // the bar is not drawn into a log file: a line per epoch there instead
        if cfg.progress && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let test = log
                .test_headline()
                .map(|(n, v)| format!(", test {n} {v:.4}"))
                .unwrap_or_default();
            eprintln!(
                "{}: epoch {}/{}: train loss {:.4}{test} ({:.1} s)",
                cfg.label, log.epoch, cfg.epochs, log.train_loss, log.seconds
            );
        }
        logs.push(log);
    }
    pb.finish_and_clear();
    Ok(logs)
}
