//! Per-op time of a training step: each node's forward and backward, measured in isolation on the
//! inputs it sees in a real forward pass of the whole graph (captured by hooks).

use std::time::Instant;

use candle_core::{Tensor, Var};
use prunekit_graph::ops::{Ctx, ParamView};
use prunekit_graph::{Executor, Graph, Hooks, Mode};
use serde::Serialize;

use crate::Result;

/// Median forward and backward time of one node.
#[derive(Clone, Debug, Serialize)]
pub struct OpTime {
    pub node: String,
    pub op: String,
    pub forward_ms: f64,
    pub backward_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times every node of `g` on input `x` in training mode (`iters` timed runs after one warm-up).
/// Backward time is that of `sum(y * r)` through the node for a fixed random `r`, with gradients
/// for the node's float inputs and parameters, minus the time of the same `sum(y * r)` backward on a
/// leaf of the output's shape (the probe's own cost).
pub fn profile_training_step(g: &Graph, x: &Tensor, iters: usize) -> Result<Vec<OpTime>> {
    let g = g.try_clone()?; // running statistics change while profiling
    let mut hooks = Hooks::inputs_of(g.nodes.iter().map(|n| n.name.clone()));
    Executor::new(0).run(&g, std::slice::from_ref(x), Mode::TRAIN, Some(&mut hooks))?;
    let mut rng = prunekit_graph::graph::rng(0);
    let mut out = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let inputs = &hooks.inputs[&n.name];
        let vars: Vec<Option<Var>> = inputs
            .iter()
            .map(|t| {
                t.dtype()
                    .is_float()
                    .then(|| Var::from_tensor(&t.detach()))
                    .transpose()
            })
            .collect::<candle_core::Result<_>>()?;
        let xs: Vec<Tensor> = inputs
            .iter()
            .zip(&vars)
            .map(|(t, v)| {
                v.as_ref()
                    .map_or_else(|| t.clone(), |v| v.as_tensor().clone())
            })
            .collect();
        let view = ParamView::of(&g, n, true);
        let rules = n.op.rules();
        let mut ctx = Ctx::new(true, &mut rng);
        let probe = rules.forward(&xs, &view, &mut ctx)?;
        let r = Tensor::randn(0f32, 1.0, probe.shape(), probe.device())?.to_dtype(probe.dtype())?;
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        for i in 0..=iters.max(1) {
            let t0 = Instant::now();
            let y = rules.forward(&xs, &view, &mut ctx)?;
            let t1 = Instant::now();
            let loss = (y * &r)?.sum_all()?;
            let _ = loss.backward()?;
            let t2 = Instant::now();
            if i > 0 {
                fwd.push((t1 - t0).as_secs_f64() * 1e3);
                bwd.push((t2 - t1).as_secs_f64() * 1e3);
            }
        }
        let leaf = Var::from_tensor(&probe.detach())?;
        let mut base = Vec::new();
        for _ in 0..iters.max(1) {
            let t0 = Instant::now();
            let _ = (leaf.as_tensor() * &r)?.sum_all()?.backward()?;
            base.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        out.push(OpTime {
            node: n.name.clone(),
            op: n.op.type_name().to_string(),
            forward_ms: median(fwd),
            backward_ms: (median(bwd) - median(base)).max(0.0),
        });
    }
    Ok(out)
}
