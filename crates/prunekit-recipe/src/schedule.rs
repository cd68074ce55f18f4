//! Pruning schedules over training: gradual cubic sparsity (Zhu & Gupta 2017) as a training hook,
//! iterative prune / fine-tune rounds, and the lottery ticket's rewind point.

use std::collections::BTreeMap;

use candle_core::Tensor;
use prunekit_graph::Graph;
use prunekit_train::{StepCx, StepHook};

/// Zhu & Gupta: s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3 for t in [t0, t0 + n dt].
pub fn cubic_sparsity(s_i: f64, s_f: f64, t: usize, t0: usize, n: usize, dt: usize) -> f64 {
    if t <= t0 {
        return s_i;
    }
    let span = (n * dt).max(1) as f64;
    let frac = (((t - t0) as f64) / span).min(1.0);
    s_f + (s_i - s_f) * (1.0 - frac).powi(3)
}

/// Sparsity of round `k` (1-based) of `rounds` that reaches `target` by removing the same fraction
/// of the remaining weights every round: 1 - (1 - target)^(k / rounds).
pub fn iterative_sparsity(target: f64, k: usize, rounds: usize) -> f64 {
    1.0 - (1.0 - target).powf(k as f64 / rounds.max(1) as f64)
}

/// Prunes to a sparsity at a training step; the recipe supplies the criterion and scope.
pub type PruneFn<'a> = dyn FnMut(&mut Graph, f64) -> prunekit_train::Result<()> + 'a;

/// The gradual schedule as a training hook: every `dt` steps from `t0`, for `n` events, prune to
/// the cubic sparsity of that step (masks; the optimizer keeps them).
pub struct GradualPruning<'a> {
    pub s_i: f64,
    pub s_f: f64,
    pub t0: usize,
    pub n: usize,
    pub dt: usize,
    prune: Box<PruneFn<'a>>,
    /// (step, sparsity) of every pruning event
    pub events: Vec<(usize, f64)>,
}

impl<'a> GradualPruning<'a> {
    pub fn new(
        s_i: f64,
        s_f: f64,
        t0: usize,
        n: usize,
        dt: usize,
        prune: Box<PruneFn<'a>>,
    ) -> Self {
        Self {
            s_i,
            s_f,
            t0,
            n,
            dt: dt.max(1),
            prune,
            events: Vec::new(),
        }
    }
}

impl StepHook for GradualPruning<'_> {
    fn after_step(&mut self, g: &mut Graph, cx: &StepCx) -> prunekit_train::Result<()> {
        let t = cx.step + 1;
        if t < self.t0 || t > self.t0 + self.n * self.dt || !(t - self.t0).is_multiple_of(self.dt) {
            return Ok(());
        }
        let s = cubic_sparsity(self.s_i, self.s_f, t, self.t0, self.n, self.dt);
        (self.prune)(g, s)?;
        self.events.push((t, s));
        Ok(())
    }
}

/// Copies of every parameter (weights and buffers), to rewind to.
#[derive(Clone, Debug, Default)]
pub struct Snapshot(pub BTreeMap<(String, String), Tensor>);

impl Snapshot {
    pub fn take(g: &Graph) -> candle_core::Result<Self> {
        let mut m = BTreeMap::new();
        for (n, k, p) in g.params() {
            m.insert((n.name.clone(), k.clone()), p.tensor().copy()?);
        }
        Ok(Self(m))
    }

    /// Sets every parameter back to the snapshot, keeping `g`'s masks (masked values stay zero).
    pub fn restore(&self, g: &Graph) -> prunekit_train::Result<()> {
        for (n, k, p) in g.params() {
            let Some(t) = self.0.get(&(n.name.clone(), k.clone())) else {
                return Err(prunekit_train::TrainError::Invalid(format!(
                    "cannot rewind `{}.{k}`: it is not in the snapshot",
                    n.name
                )));
            };
            if t.dims() != p.tensor().dims() {
                return Err(prunekit_train::TrainError::Invalid(format!(
                    "cannot rewind `{}.{k}`: its shape changed from {:?} to {:?}",
                    n.name,
                    t.dims(),
                    p.tensor().dims()
                )));
            }
            let v = match &p.mask {
                Some(m) => (t * m)?,
                None => t.clone(),
            };
            p.value.set(&v)?;
        }
        Ok(())
    }
}

/// A training hook that takes a snapshot after step `at` (the lottery ticket's rewind point;
/// `at = 0` is the initialisation, taken before training by the caller).
pub struct RewindPoint {
    pub at: usize,
    pub snapshot: Option<Snapshot>,
}

impl StepHook for RewindPoint {
    fn after_step(&mut self, g: &mut Graph, cx: &StepCx) -> prunekit_train::Result<()> {
        if cx.step + 1 == self.at && self.snapshot.is_none() {
            self.snapshot = Some(Snapshot::take(g)?);
        }
        Ok(())
    }
}

/// Movement pruning (Sanh et al. 2020) on the gradual schedule: the scores are accumulated from
/// the same training (-w * g after every backward pass) and every pruning event masks the weights
/// that moved most towards zero so far. Dynamic pruning driven by gradients during training.
pub struct MovementPruning {
    pub movement: prunekit_prune::Movement,
    pub s_i: f64,
    pub s_f: f64,
    pub t0: usize,
    pub n: usize,
    pub dt: usize,
    pub scope: prunekit_prune::UnstructuredScope,
    pub exclude: Vec<String>,
    /// (step, sparsity) of every pruning event
    pub events: Vec<(usize, f64)>,
}

impl StepHook for MovementPruning {
    fn after_backward(
        &mut self,
        g: &Graph,
        grads: &candle_core::backprop::GradStore,
        cx: &StepCx,
    ) -> prunekit_train::Result<()> {
        self.movement.after_backward(g, grads, cx)
    }

    fn after_step(&mut self, g: &mut Graph, cx: &StepCx) -> prunekit_train::Result<()> {
        let t = cx.step + 1;
        let dt = self.dt.max(1);
        if t < self.t0 || t > self.t0 + self.n * dt || !(t - self.t0).is_multiple_of(dt) {
            return Ok(());
        }
        let s = cubic_sparsity(self.s_i, self.s_f, t, self.t0, self.n, dt);
        let crit = prunekit_prune::Excluding::new(g, &self.movement, self.exclude.clone())?;
        prunekit_prune::prune_unstructured(g, &crit, prunekit_prune::Target::Ratio(s), self.scope)?;
        self.events.push((t, s));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_schedule_starts_ends_and_front_loads() {
        let s = |t| cubic_sparsity(0.0, 0.9, t, 10, 10, 5);
        assert_eq!(s(0), 0.0);
        assert_eq!(s(10), 0.0);
        assert!((s(60) - 0.9).abs() < 1e-12);
        assert!((s(100) - 0.9).abs() < 1e-12);
        // half-way the cubic has done 7/8 of the work
        assert!((s(35) - 0.9 * 7.0 / 8.0).abs() < 1e-12);
        let mut last = 0.0;
        for t in (10..=60).step_by(5) {
            assert!(s(t) >= last);
            last = s(t);
        }
    }

    #[test]
    fn iterative_rounds_remove_a_constant_fraction() {
        assert!((iterative_sparsity(0.8, 3, 3) - 0.8).abs() < 1e-12);
        let k1 = iterative_sparsity(0.8, 1, 3);
        let k2 = iterative_sparsity(0.8, 2, 3);
        assert!(((1.0 - k2) / (1.0 - k1) - (1.0 - k1)).abs() < 1e-12);
    }
}
