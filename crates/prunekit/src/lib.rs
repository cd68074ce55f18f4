//! # prunekit
//!
//! Prune a trained network end to end, in Rust: load a file (ONNX, a PyTorch state dict, our
//! format), find what must be pruned together, prune it (structured channels / heads / hidden
//! units, unstructured, N:M) by a criterion with calibration data, check the rewrite against
//! masking, measure it, and write a smaller file other tools load.
//!
//! ```
//! use std::path::Path;
//! use prunekit::prelude::*;
//!
//! # fn main() -> anyhow::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! # let onnx = dir.path().join("resnet20.onnx");
//! # prunekit::io::save(&prunekit::zoo::build("resnet20", 0)?, &onnx, None)?;
//! let device = Device::Cpu;
//! // any file prunekit reads: the format comes from the content (ONNX here)
//! let mut model = prunekit::io::load(&onnx, &device)?;
//! let original = model.try_clone()?;
//!
//! // structured: 30% of every coupled channel group, by L1 norm (BatchNorm and the
//! // next layer's slices follow; residual streams are pruned as one)
//! let report = prune_structured(&mut model, &StructuredConfig::new(0.3), &Norm::L1)?;
//!
//! // the rewrite equals masking the removed slices of the original (relative error)
//! let inputs = vec![prunekit::prune::random_inputs(&original, 4, 0)?];
//! let check = verify(&original, &model, &report.removed(), &inputs)?;
//! assert!(check.max_rel_error < 1e-4);
//!
//! // measure: params, MACs per sample (dense and with zeros skipped), file size
//! let before = summarize(&original, None)?;
//! let after = summarize(&model, None)?;
//! assert!(after.macs * 3 < before.macs * 2);
//!
//! // write it back as ONNX (or .pt / .safetensors / our directory, by the extension)
//! prunekit::io::save(&model, &dir.path().join("resnet20-pruned.onnx"), Some(&onnx))?;
//! # Ok(())
//! # }
//! ```
//!
//! Unstructured and N:M masks by a data-driven criterion, with calibration batches from a
//! dataset (the built-in digits here):
//!
//! ```
//! use prunekit::prelude::*;
//!
//! # fn main() -> anyhow::Result<()> {
//! let device = Device::Cpu;
//! let (split, _) = prunekit::data::load("digits", None, 0)?;
//! let mut model = prunekit::zoo::build("digits-cnn", 0)?;
//! let calib = Calibration::from_dataset(&split.train, 2, 32, 0, &device)?;
//!
//! // Wanda (|W| x ||X||, per output row) at 50%, then 2:4 on what is left, by magnitude
//! let wanda = criterion_by_name("wanda", &model, Some(&calib), 0)?;
//! prune_unstructured(&mut model, wanda.as_ref(), Target::Ratio(0.5), UnstructuredScope::Row)?;
//! prune_nm(&mut model, &Norm::L1, 2, 4, false)?;
//! let s = summarize(&model, Some(&split.test))?;
//! assert!(s.weight_sparsity >= 0.5);
//! # Ok(())
//! # }
//! ```
//!
//! The crates behind it, one job each: [`graph`] (the model graph, ops, runtime), [`io`] (files
//! in and out), [`data`] (tasks and datasets), [`prune`] (criteria and pruners), [`train`]
//! (recovery: fine-tuning, distillation), [`measure`] (the task's metrics, params, MACs,
//! latency, size), [`zoo`] (built-in architectures), [`recipe`] (multi-stage TOML recipes),
//! [`report`] (the report).

pub use candle_core;
pub use prunekit_data as data;
pub use prunekit_graph as graph;
pub use prunekit_io as io;
pub use prunekit_measure as measure;
pub use prunekit_prune as prune;
pub use prunekit_recipe as recipe;
pub use prunekit_report as report;
pub use prunekit_train as train;
pub use prunekit_zoo as zoo;

/// The names most programs use.
pub mod prelude {
    pub use candle_core::{DType, Device, Tensor};
    pub use prunekit_graph::{Graph, GraphBuilder};
    pub use prunekit_io::{load, save, Format};
    pub use prunekit_measure::{summarize, Summary};
    pub use prunekit_prune::{
        criterion_by_name, magnitude_prune, prune_nm, prune_structured, prune_unstructured, verify,
        Calibration, Norm, Scope, StructuredConfig, Target, UnstructuredScope,
    };
}
