//! Which layers of a pruned model run on the sparse kernels ([`crate::kernels::sparse`]) in
//! inference, chosen per layer by measuring both kernels on this machine (issue 16 §2).
//!
//! A [`SparsePlan`] is built once for a model and a batch size, after training (it holds a copy of
//! every chosen weight in its sparse form; a weight changed afterwards is not seen). For each
//! Linear and Conv2d (groups = 1) whose f32 weight has at least `min_sparsity` zeros (its mask's,
//! or its values' without a mask), the layer is run on a random input of its own shape at the
//! plan's batch, alternately with the dense and the sparse kernel, and the sparse kernel is kept
//! only when its median time is lower: a model is never slower because of them, and the crossover
//! is this machine's. [`crate::Executor::with_sparse_plan`] then uses the chosen kernels in passes
//! without gradients.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::error::Result;
use crate::graph::Graph;
use crate::kernels::sparse::{RowIndex, SparseMatrix};
use crate::ops::{Ctx, Op, ParamView};

/// How a [`SparsePlan`] is built.
#[derive(Clone, Copy, Debug)]
pub struct SparseOptions {
    /// the batch the layers are timed at (samples per forward pass)
    pub batch: usize,
    /// layers whose weight has fewer zeros than this fraction stay dense without being timed
    pub min_sparsity: f64,
    /// time both kernels per layer (`false`: take the sparse kernel for every layer above
    /// `min_sparsity`, as the tests do)
    pub calibrate: bool,
    /// with `calibrate` off: hold Linear weights that are not N:M in the bitmask layout instead
    /// of CSR (the benchmark times both)
    pub bitmask: bool,
}

impl Default for SparseOptions {
    fn default() -> Self {
        Self {
            batch: 1,
            min_sparsity: 0.5,
            calibrate: true,
            bitmask: false,
        }
    }
}

/// What the plan measured and chose for one layer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SparseDecision {
    pub node: String,
    /// `linear` or `conv2d`
    pub op: &'static str,
    /// fraction of the weight's elements pruned
    pub sparsity: f64,
    /// `csr`, `bitmask` or `N:M` ([`SparseMatrix::format`])
    pub format: String,
    /// median forward time of the layer with the dense kernel (ms, at the plan's batch; 0 when not
    /// timed)
    pub dense_ms: f64,
    /// the same with the sparse kernel
    pub sparse_ms: f64,
    /// whether the plan uses the sparse kernel for this layer
    pub sparse: bool,
}

/// The layers of one model that run sparse, with what was measured for every candidate.
#[derive(Debug, Default)]
pub struct SparsePlan {
    layers: HashMap<String, SparseMatrix>,
    pub decisions: Vec<SparseDecision>,
    /// the batch the layers were timed at
    pub batch: usize,
}

impl SparsePlan {
    /// Chooses the kernel of every candidate layer of `g` (see the module docs).
    ///
    /// # Errors
    /// A graph that does not validate, or a forward error while timing a layer.
    pub fn build(g: &Graph, opts: SparseOptions) -> Result<Self> {
        let shapes = g.validate()?;
        let mut plan = SparsePlan {
            batch: opts.batch.max(1),
            ..Default::default()
        };
        for n in &g.nodes {
            let (op, rest) = match &n.op {
                Op::Linear(_) => ("linear", 1),
                Op::Conv2d(c) if c.groups == 1 => ("conv2d", c.kernel[0] * c.kernel[1]),
                _ => continue,
            };
            let Some(p) = g.param_of(n, "weight") else {
                continue;
            };
            let w = p.tensor();
            if w.dtype() != DType::F32 || !w.device().is_cpu() {
                continue;
            }
            let dims = w.dims();
            let rows = dims[0];
            let cols = w.elem_count() / rows.max(1);
            // the sparsity first (a u8 pass), so dense layers are never copied out
            let zeros = crate::graph::count_zeros(p.mask.as_ref().unwrap_or(w))?;
            let sparsity = zeros as f64 / w.elem_count().max(1) as f64;
            if sparsity < opts.min_sparsity || rows == 0 {
                continue;
            }
            let values = w.flatten_all()?.to_vec1::<f32>()?;
            let keep = p
                .mask
                .as_ref()
                .map(|m| m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
                .transpose()?;
            let mut a = SparseMatrix::from_dense(&values, keep.as_deref(), rows, cols, rest);
            if !opts.calibrate
                && opts.bitmask
                && op == "linear"
                && matches!(a.index(), RowIndex::Csr { .. })
            {
                a = a.to_bitmask();
            }
            let mut d = SparseDecision {
                node: n.name.clone(),
                op,
                sparsity,
                format: a.format(),
                dense_ms: 0.0,
                sparse_ms: 0.0,
                sparse: true,
            };
            if opts.calibrate {
                let mut dims = vec![plan.batch];
                dims.extend(&shapes[&n.inputs[0]]);
                let x = Tensor::randn(0f32, 1.0, dims, w.device())?;
                let view = ParamView::of(g, n, false);
                // a batch-1 Linear also tries the bitmask layout (AVX-512 expand-loads)
                let bitmask = (op == "linear"
                    && plan.batch == 1
                    && matches!(a.index(), RowIndex::Csr { .. }))
                .then(|| a.to_bitmask());
                let mut layouts = vec![&a];
                layouts.extend(bitmask.as_ref());
                let t = race(&n.op, &x, &view, &layouts)?;
                let (best, &sparse) = t[1..]
                    .iter()
                    .enumerate()
                    .min_by(|p, q| p.1.total_cmp(q.1))
                    .expect("at least one layout");
                d.dense_ms = t[0];
                d.sparse_ms = sparse;
                d.sparse = sparse < t[0];
                if best == 1 {
                    if let Some(b) = bitmask {
                        a = b;
                        d.format = a.format();
                    }
                }
            }
            if d.sparse {
                plan.layers.insert(n.name.clone(), a);
            }
            plan.decisions.push(d);
        }
        Ok(plan)
    }

    /// The sparse weight of node `name`, when the plan runs it sparse.
    pub fn get(&self, name: &str) -> Option<&SparseMatrix> {
        self.layers.get(name)
    }

    /// Layers that run sparse.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Bytes the sparse weights hold (values and indices), on top of the model's dense tensors.
    pub fn bytes(&self) -> usize {
        self.layers.values().map(SparseMatrix::bytes).sum()
    }
}

/// Median forward times (ms) of one layer with its dense kernel and with each sparse layout (in
/// that order), measured in alternation: 2 warm-up runs each, then rounds until about 20 ms have
/// passed (at least 5, at most 50 rounds).
fn race(op: &Op, x: &Tensor, view: &ParamView, layouts: &[&SparseMatrix]) -> Result<Vec<f64>> {
    let mut rng = crate::graph::rng(0);
    let mut run = |sparse: Option<&SparseMatrix>| -> Result<f64> {
        let mut ctx = Ctx::new(false, &mut rng);
        ctx.sparse = sparse;
        let t0 = Instant::now();
        op.rules()
            .forward(std::slice::from_ref(x), view, &mut ctx)
            .map_err(|e| crate::GraphError::Invalid(format!("timing a layer: {e}")))?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    };
    let contenders: Vec<Option<&SparseMatrix>> = std::iter::once(None)
        .chain(layouts.iter().map(|&a| Some(a)))
        .collect();
    for _ in 0..2 {
        for &c in &contenders {
            run(c)?;
        }
    }
    let mut times = vec![Vec::new(); contenders.len()];
    let start = Instant::now();
    while times[0].len() < 5 || (times[0].len() < 50 && start.elapsed().as_secs_f64() < 0.02) {
        for (&c, t) in contenders.iter().zip(times.iter_mut()) {
            t.push(run(c)?);
        }
    }
    Ok(times.into_iter().map(median).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
