//! BatchNorm re-calibration: after pruning, the running statistics of every BatchNorm describe the
//! activations of the model *before* pruning. Re-estimating them from a few hundred samples of
//! calibration data recovers much of the accuracy lost right after pruning, with no training.
//!
//! The estimate is the one of PyTorch's `torch.optim.swa_utils.update_bn` (BatchNorm with
//! `momentum=None`): the running mean and (unbiased) variance become the cumulative average of the
//! per-batch statistics over the calibration batches. It is computed by running the batches in
//! training mode with the momentum of batch k (1-based) set to 1/k, so that after K batches every
//! batch weighs 1/K and the old statistics weigh nothing. Dropout is switched off meanwhile (its
//! noise would bias the statistics), no gradient is taken and no weight changes.

use candle_core::Tensor;
use prunekit_graph::{Executor, Graph, Mode, Op};
use serde::Serialize;

use crate::{Result, TrainError};

/// What a re-calibration did.
#[derive(Clone, Debug, Serialize)]
pub struct Recalibration {
    /// the BatchNorm nodes whose running statistics were re-estimated
    pub nodes: Vec<String>,
    /// calibration batches and samples run through the model
    pub batches: usize,
    pub samples: usize,
}

/// Whether `g` has a BatchNorm whose running statistics re-calibration would re-estimate.
pub fn has_batch_norm(g: &Graph) -> bool {
    g.nodes.iter().any(|n| matches!(n.op, Op::BatchNorm(_)))
}

/// Re-estimates the running mean and variance of every BatchNorm of `g` from `batches` (each one
/// batch of the model's inputs, in graph-input order, with the batch axis first: e.g. one
/// `[B, C, H, W]` tensor for an image model), as a cumulative average of the per-batch
/// statistics. Weights, masks and every other op are unchanged; the BatchNorm momenta and Dropout
/// rates are restored afterwards, also on error.
///
/// Errors: no batch; a batch that does not fit the model's inputs; a batch of one sample per
/// BatchNorm channel (training-mode statistics need at least two values per channel). A model
/// without BatchNorm is left as it is (an empty `nodes` list).
pub fn recalibrate_batch_norm(g: &mut Graph, batches: &[Vec<Tensor>]) -> Result<Recalibration> {
    let nodes: Vec<String> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::BatchNorm(_)))
        .map(|n| n.name.clone())
        .collect();
    let samples = batches
        .iter()
        .map(|b| {
            b.first()
                .and_then(|x| x.dims().first().copied())
                .unwrap_or(0)
        })
        .sum();
    if nodes.is_empty() {
        return Ok(Recalibration {
            nodes,
            batches: 0,
            samples: 0,
        });
    }
    if batches.is_empty() {
        return Err(TrainError::Invalid(
            "BatchNorm re-calibration needs at least one batch of calibration data".into(),
        ));
    }
    // the settings to restore: every BatchNorm's momentum and every Dropout's rate
    let saved: Vec<(usize, f64)> = g
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match &n.op {
            Op::BatchNorm(b) => Some((i, b.momentum)),
            Op::Dropout(d) => Some((i, d.p)),
            _ => None,
        })
        .collect();
    let set = |g: &mut Graph, momentum: Option<f64>| {
        for &(i, old) in &saved {
            match &mut g.nodes[i].op {
                Op::BatchNorm(b) => b.momentum = momentum.unwrap_or(old),
                Op::Dropout(d) => d.p = if momentum.is_some() { 0.0 } else { old },
                _ => {}
            }
        }
    };
    let mut exec = Executor::new(0);
    let mut run = |g: &mut Graph| -> Result<()> {
        for (k, inputs) in batches.iter().enumerate() {
            set(g, Some(1.0 / (k + 1) as f64));
            exec.run(
                g,
                inputs,
                Mode {
                    train: true,
                    grad: false,
                },
                None,
            )
            .map_err(|e| {
                TrainError::Invalid(format!(
                    "BatchNorm re-calibration, batch {} of {}: {e}",
                    k + 1,
                    batches.len()
                ))
            })?;
        }
        Ok(())
    };
    let outcome = run(g);
    set(g, None);
    outcome?;
    Ok(Recalibration {
        nodes,
        batches: batches.len(),
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use prunekit_graph::GraphBuilder;

    fn bn_model() -> Graph {
        let mut b = GraphBuilder::new("bn", 1);
        let x = b.input("x", &[3]);
        let h = b.linear(&x, 4).unwrap();
        let h = b.batch_norm(&h).unwrap();
        let h = b.dropout(&h, 0.5).unwrap();
        let y = b.linear(&h, 2).unwrap();
        b.finish(&[&y]).unwrap()
    }

    fn buffer(g: &Graph, name: &str) -> Vec<f32> {
        g.node("batch_norm1").unwrap().params[name]
            .tensor()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn statistics_are_the_cumulative_average_of_the_batches() {
        let mut g = bn_model();
        let dev = Device::Cpu;
        let batches: Vec<Vec<Tensor>> = (0..3)
            .map(|s| {
                vec![Tensor::randn(s as f32, 1.0 + s as f32, (8, 3), &dev)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()]
            })
            .collect();
        // the reference: each batch's linear output, its mean and unbiased variance, averaged
        let w = g.node("linear1").unwrap().params["weight"].tensor().clone();
        let bias = g.node("linear1").unwrap().params["bias"].tensor().clone();
        let (mut mean, mut var) = (vec![0f64; 4], vec![0f64; 4]);
        for b in &batches {
            let h = b[0]
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap();
            let h = h.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
            for c in 0..4 {
                let col: Vec<f64> = h.iter().map(|r| r[c]).collect();
                let m = col.iter().sum::<f64>() / 8.0;
                let v = col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 7.0;
                mean[c] += m / 3.0;
                var[c] += v / 3.0;
            }
        }
        let r = recalibrate_batch_norm(&mut g, &batches).unwrap();
        assert_eq!((r.nodes.len(), r.batches, r.samples), (1, 3, 24));
        for (got, want) in buffer(&g, "running_mean").iter().zip(&mean) {
            assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
        }
        for (got, want) in buffer(&g, "running_var").iter().zip(&var) {
            assert!(
                (*got as f64 - want).abs() < 1e-3 * want.max(1.0),
                "{got} vs {want}"
            );
        }
        // momentum and dropout restored
        match (&g.nodes[1].op, &g.nodes[2].op) {
            (Op::BatchNorm(b), Op::Dropout(d)) => assert_eq!((b.momentum, d.p), (0.1, 0.5)),
            other => panic!("unexpected ops {other:?}"),
        }
    }

    #[test]
    fn errors_and_models_without_batch_norm() {
        let mut g = bn_model();
        assert!(recalibrate_batch_norm(&mut g, &[]).is_err());
        let one = vec![vec![
            Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap()
        ]];
        let msg = recalibrate_batch_norm(&mut g, &one)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("batch 1 of 1"), "{msg}");
        // settings restored after the error
        assert!(matches!(&g.nodes[1].op, Op::BatchNorm(b) if b.momentum == 0.1));
        let mut b = GraphBuilder::new("mlp", 1);
        let x = b.input("x", &[3]);
        let y = b.linear(&x, 2).unwrap();
        let mut plain = b.finish(&[&y]).unwrap();
        let r = recalibrate_batch_norm(&mut plain, &[]).unwrap();
        assert!(r.nodes.is_empty());
    }
}
