//! Sweeps: one model pruned at a list of levels (each from the original, optionally fine-tuned),
//! every result measured: the metric-vs-size and latency-vs-MACs curves.

use prunekit_data::Split;
use prunekit_graph::Graph;
use prunekit_measure::{latency, summarize};
use serde::Serialize;

use crate::recipe::{run_stage, RunCx, Stage, StructuredStage, TrainSpec, UnstructuredStage};
use crate::Result;

/// What a level means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SweepKind {
    /// the structured ratio of every group
    Structured,
    /// the unstructured sparsity
    Unstructured,
}

/// One level's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    pub level: f64,
    /// the task's metrics on the test data by name (`accuracy`, `auc`, `rmse`, ...)
    #[serde(flatten)]
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// the task's headline metric
    pub headline: Option<String>,
    pub params: usize,
    pub nonzeros: usize,
    pub macs: u64,
    pub effective_macs: u64,
    pub latency_ms: f64,
    pub latency_batch_ms: Option<f64>,
}

/// Prunes `g` (a copy per level) at every level with `criterion`, fine-tunes when `finetune` is
/// given, and measures. BatchNorm statistics are re-calibrated after pruning (on the calibration
/// batches of `split`'s training set) as everywhere data is given.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    g: &Graph,
    split: &Split,
    kind: SweepKind,
    levels: &[f64],
    criterion: &str,
    finetune: Option<&TrainSpec>,
    latency_batch: Option<usize>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<SweepPoint>> {
    let cx = RunCx {
        split: Some(split),
        seed: 0,
        progress: false,
        calib_batches: 4,
        calib_batch_size: 64,
        teacher: Some(g.try_clone()?),
        device: g.device(),
        recalibrate: true,
    };
    let mut out = Vec::with_capacity(levels.len() + 1);
    let measure = |h: &Graph, level: f64| -> Result<SweepPoint> {
        let s = summarize(h, Some(&split.test))?;
        let s = &s;
        Ok(SweepPoint {
            level,
            metrics: s.metrics.clone(),
            headline: s.headline.clone(),
            params: s.params,
            nonzeros: s.nonzeros,
            macs: s.macs,
            effective_macs: s.effective_macs,
            latency_ms: s.latency_ms,
            latency_batch_ms: latency_batch
                .map(|b| latency(h, b, 5, 30).map(|l| l.median_ms))
                .transpose()?,
        })
    };
    out.push(measure(g, 0.0)?);
    for &level in levels {
        let mut h = g.try_clone()?;
        let stage = match kind {
            SweepKind::Structured => Stage::Structured(StructuredStage::new(level, criterion)),
            SweepKind::Unstructured => Stage::Unstructured(UnstructuredStage {
                target: level,
                criterion: Some(criterion.into()),
                ..UnstructuredStage::default()
            }),
        };
        run_stage(&mut h, &stage, &cx)?;
        if let Some(t) = finetune {
            run_stage(&mut h, &Stage::Finetune(t.clone()), &cx)?;
        }
        out.push(measure(&h, level)?);
        progress(&format!("level {level}"));
    }
    Ok(out)
}
