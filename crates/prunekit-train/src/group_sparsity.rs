//! Group-sparse regularised training before structured pruning: DepGraph's sparse learning (Fang et
//! al. 2023, "DepGraph: Towards Any Structural Pruning", Sec. 3.3, eq. 6).
//!
//! Every prunable unit k (a channel, head or hidden unit with every parameter slice coupled to it by
//! the dependency analysis, [`prunekit_graph::channels`]) has the group importance
//! `I_k = sum over its slices of ||w[k]||_2^2` (all coupled weights and biases: a conv's filter, its
//! BatchNorm scale and shift, the next layer's input column, ...). The penalty added to the loss is
//!
//! `R = lambda(t) * sum over groups g, units k in g of gamma_k * I_k`,
//! `gamma_k = alpha ^ ((I_max(g) - I_k) / (I_max(g) - I_min(g)))`
//!
//! with `gamma` computed from the current weights and held constant within a step (as
//! Torch-Pruning's `GroupNormPruner.regularize`, whose default `alpha` is 4): the least important units
//! of each group are pushed to zero hardest, so that pruning them afterwards loses little. `lambda(t)`
//! grows linearly from 0 to `lambda` over `ramp_steps` optimizer steps and then stays (the
//! "growing regularisation" of Wang et al. 2021, which DepGraph's sparse learning also uses).

use candle_core::{DType, Tensor};
use prunekit_graph::channels::{analyse, SliceKey};
use prunekit_graph::{Graph, Role};

use crate::trainer::{StepCx, StepHook};
use crate::{Result, TrainError};

/// One parameter axis the units index, with the unit each index belongs to.
#[derive(Clone, Debug)]
struct Slice {
    key: SliceKey,
    /// one-hot [units, len] (f32) mapping the per-index squared norms to their unit
    assign: Tensor,
}

/// The DepGraph group-sparsity penalty as a training hook (see the module docs).
#[derive(Clone, Debug)]
pub struct GroupSparsity {
    lambda: f64,
    alpha: f64,
    ramp_steps: usize,
    slices: Vec<Slice>,
    /// per unit: its group's index
    unit_group: Vec<usize>,
    groups: usize,
    last_penalty: f64,
}

impl GroupSparsity {
    /// Analyses `g` once (the structure must not change while the hook is in use) and prepares the
    /// penalty for every prunable unit. `lambda` >= 0 is the final penalty weight (per unit of
    /// squared norm), `alpha` >= 1 the spread between the least and most important unit of a
    /// group (1 = plain group lasso on squared norms), `ramp_steps` the steps over which lambda
    /// grows from 0 (0 = full strength at once).
    ///
    /// Errors: lambda or alpha out of range or not finite; a model with no prunable unit.
    pub fn new(g: &Graph, lambda: f64, alpha: f64, ramp_steps: usize) -> Result<Self> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(TrainError::Invalid(format!(
                "group sparsity: lambda {lambda} must be a finite number >= 0"
            )));
        }
        if !(alpha.is_finite() && alpha >= 1.0) {
            return Err(TrainError::Invalid(format!(
                "group sparsity: alpha {alpha} must be a finite number >= 1"
            )));
        }
        let a = analyse(g)?;
        if a.units.is_empty() {
            return Err(TrainError::Invalid(
                "group sparsity: the model has no prunable units (channels, heads, hidden units)"
                    .into(),
            ));
        }
        let n_units = a.units.len();
        let mut per_key: std::collections::BTreeMap<SliceKey, Vec<(usize, usize)>> =
            Default::default();
        for (ui, u) in a.units.iter().enumerate() {
            for (k, idx) in &u.slices {
                let role = g.node(&k.node)?.params.get(&k.param).map(|p| p.role);
                if !matches!(role, Some(Role::Weight | Role::Bias)) {
                    continue;
                }
                per_key
                    .entry(k.clone())
                    .or_default()
                    .extend(idx.iter().map(|&i| (ui, i)));
            }
        }
        let device = g.device();
        let mut slices = Vec::with_capacity(per_key.len());
        for (key, pairs) in per_key {
            let len = g.node(&key.node)?.params[&key.param]
                .tensor()
                .dim(key.axis)?;
            let mut m = vec![0f32; n_units * len];
            for (u, i) in pairs {
                m[u * len + i] = 1.0;
            }
            let assign = Tensor::from_vec(m, (n_units, len), &device)?;
            slices.push(Slice { key, assign });
        }
        Ok(Self {
            lambda,
            alpha,
            ramp_steps,
            slices,
            unit_group: a.units.iter().map(|u| u.group).collect(),
            groups: a.groups.len(),
            last_penalty: 0.0,
        })
    }

    /// The penalty weight at optimizer step `step` (0-based).
    pub fn lambda_at(&self, step: usize) -> f64 {
        if self.ramp_steps == 0 {
            self.lambda
        } else {
            self.lambda * ((step + 1) as f64 / self.ramp_steps as f64).min(1.0)
        }
    }

    /// Units the penalty covers.
    pub fn units(&self) -> usize {
        self.unit_group.len()
    }

    /// The penalty of the last step (0 before the first).
    pub fn last_penalty(&self) -> f64 {
        self.last_penalty
    }

    /// Per unit, its group importance `I_k` (sum of squared norms of its slices) as a [units]
    /// tensor, differentiable in the parameters of `g`.
    pub fn importance(&self, g: &Graph) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for s in &self.slices {
            let t = g.node(&s.key.node)?.params[&s.key.param].tensor();
            let len = t.dim(s.key.axis)?;
            let sq = t
                .to_dtype(DType::F32)?
                .transpose(0, s.key.axis)?
                .contiguous()?
                .reshape((len, ()))?
                .sqr()?
                .sum(1)?;
            let part = s.assign.matmul(&sq.unsqueeze(1)?)?.squeeze(1)?;
            total = Some(match total {
                Some(acc) => (acc + part)?,
                None => part,
            });
        }
        total.ok_or_else(|| TrainError::Invalid("group sparsity: no parameter slices".into()))
    }

    /// `gamma_k` per unit from the detached importance (see the module docs).
    fn gammas(&self, imp: &[f32]) -> Vec<f32> {
        let mut lo = vec![f32::INFINITY; self.groups];
        let mut hi = vec![f32::NEG_INFINITY; self.groups];
        for (&v, &gr) in imp.iter().zip(&self.unit_group) {
            lo[gr] = lo[gr].min(v);
            hi[gr] = hi[gr].max(v);
        }
        imp.iter()
            .zip(&self.unit_group)
            .map(|(&v, &gr)| {
                let span = hi[gr] - lo[gr];
                if span > 0.0 {
                    (self.alpha as f32).powf((hi[gr] - v) / span)
                } else {
                    1.0
                }
            })
            .collect()
    }

    /// The penalty `lambda(step) * sum gamma_k I_k` (a scalar in the model's dtype).
    pub fn penalty(&self, g: &Graph, step: usize) -> Result<Tensor> {
        let imp = self.importance(g)?;
        let gam = self.gammas(&imp.detach().to_vec1::<f32>()?);
        let gam = Tensor::from_vec(gam, imp.dims(), imp.device())?;
        let lam = self.lambda_at(step);
        Ok((imp * gam)?
            .sum_all()?
            .affine(lam, 0.0)?
            .to_dtype(g.dtype())?)
    }
}

impl StepHook for GroupSparsity {
    fn extra_loss(&mut self, g: &Graph, cx: &StepCx) -> Result<Option<Tensor>> {
        if self.lambda == 0.0 {
            return Ok(None);
        }
        let p = self.penalty(g, cx.step)?;
        self.last_penalty = p.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok(Some(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prunekit_graph::GraphBuilder;

    fn mlp() -> Graph {
        let mut b = GraphBuilder::new("mlp", 5);
        let x = b.input("x", &[3]);
        let h = b.linear(&x, 4).unwrap();
        let h = b.relu(&h).unwrap();
        let y = b.linear(&h, 2).unwrap();
        b.finish(&[&y]).unwrap()
    }

    #[test]
    fn importance_is_the_summed_squared_norm_of_each_unit() {
        let g = mlp();
        let gs = GroupSparsity::new(&g, 1.0, 4.0, 0).unwrap();
        assert_eq!(gs.units(), 4);
        let imp = gs.importance(&g).unwrap().to_vec1::<f32>().unwrap();
        let p = |n: &str, k: &str| {
            g.node(n).unwrap().params[k]
                .tensor()
                .to_dtype(DType::F64)
                .unwrap()
        };
        let w1 = p("linear1", "weight").to_vec2::<f64>().unwrap();
        let b1 = p("linear1", "bias").to_vec1::<f64>().unwrap();
        let w2 = p("linear2", "weight").to_vec2::<f64>().unwrap();
        for k in 0..4 {
            let want = w1[k].iter().map(|v| v * v).sum::<f64>()
                + b1[k] * b1[k]
                + w2.iter().map(|r| r[k] * r[k]).sum::<f64>();
            assert!(
                (imp[k] as f64 - want).abs() < 1e-5,
                "{k}: {} vs {want}",
                imp[k]
            );
        }
    }

    #[test]
    fn penalty_gradient_matches_finite_differences() {
        let g = mlp();
        let gs = GroupSparsity::new(&g, 0.5, 4.0, 10).unwrap();
        assert!((gs.lambda_at(4) - 0.25).abs() < 1e-12);
        assert_eq!(gs.lambda_at(100), 0.5);
        let pen = gs.penalty(&g, 9).unwrap();
        let grads = pen.backward().unwrap();
        let var = &g.node("linear1").unwrap().params["weight"].value;
        let gr = grads
            .get(var.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // gamma is held constant within a step: central differences of lambda * sum gamma_k I_k(w)
        // with gamma fixed at the current weights
        let imp = gs.importance(&g).unwrap().to_vec1::<f32>().unwrap();
        let gam = gs.gammas(&imp);
        let w0 = var
            .as_tensor()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let fixed = |w: &[Vec<f64>]| -> f64 {
            let flat: Vec<f32> = w.iter().flatten().map(|&v| v as f32).collect();
            var.set(&Tensor::from_vec(flat, (4, 3), &g.device()).unwrap())
                .unwrap();
            let i = gs.importance(&g).unwrap().to_vec1::<f32>().unwrap();
            gs.lambda_at(9) * i.iter().zip(&gam).map(|(a, b)| (a * b) as f64).sum::<f64>()
        };
        let h = 1e-2;
        for k in 0..4 {
            for j in 0..3 {
                let (mut up, mut down) = (w0.clone(), w0.clone());
                up[k][j] += h;
                down[k][j] -= h;
                let fd = (fixed(&up) - fixed(&down)) / (2.0 * h);
                assert!(
                    (gr[k][j] as f64 - fd).abs() < 1e-3 * fd.abs().max(1.0),
                    "{k},{j}: {} vs {fd}",
                    gr[k][j]
                );
            }
        }
        fixed(&w0);
        // the least important unit gets gamma = alpha, the most important 1
        let (imin, imax) = (0..4).fold((0, 0), |(a, b), k| {
            (
                if imp[k] < imp[a] { k } else { a },
                if imp[k] > imp[b] { k } else { b },
            )
        });
        assert!((gam[imin] - 4.0).abs() < 1e-6 && (gam[imax] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn bad_settings_are_errors() {
        let g = mlp();
        assert!(GroupSparsity::new(&g, -1.0, 4.0, 0).is_err());
        assert!(GroupSparsity::new(&g, 1.0, 0.5, 0).is_err());
        assert!(GroupSparsity::new(&g, f64::NAN, 4.0, 0).is_err());
    }
}
