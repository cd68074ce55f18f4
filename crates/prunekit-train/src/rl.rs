//! Reinforcement learning of graph policies (issue 14 §3): DQN (Mnih et al. 2015, "Human-level
//! control through deep reinforcement learning": experience replay, a target network copied every
//! C steps, epsilon-greedy exploration annealed linearly, the Huber loss on the TD error), with
//! the double-DQN target of van Hasselt et al. (2016) (the online network picks the next action,
//! the target network values it); DDPG (Lillicrap et al. 2016: a deterministic actor and a
//! critic, soft-updated target networks, Gaussian exploration noise) for continuous actions.
//!
//! Training updates every trainable parameter through the same optimizers as supervised training,
//! so masks stay fixed: an agent fine-tunes a pruned policy with the same algorithm that trained
//! it. The best policy by periodic evaluation is kept (the usual practice for DQN, whose return
//! oscillates during training).

use candle_core::{Device, Tensor};
use prunekit_data::env::{ActionSpace, Environment};
use prunekit_graph::{Executor, Graph, Mode};
use prunekit_measure::policy::{act, mean_return, PolicyReturn};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::optim::OptimizerKind;
use crate::{Result, TrainError};

/// A ring buffer of transitions `(s, a, r, s', terminated)`.
#[derive(Clone, Debug)]
pub struct ReplayBuffer {
    obs_dim: usize,
    act_dim: usize,
    capacity: usize,
    obs: Vec<f32>,
    actions: Vec<f32>,
    rewards: Vec<f32>,
    next: Vec<f32>,
    terminal: Vec<f32>,
    len: usize,
    pos: usize,
}

impl ReplayBuffer {
    /// An empty buffer of `capacity` transitions.
    pub fn new(obs_dim: usize, act_dim: usize, capacity: usize) -> Self {
        Self {
            obs_dim,
            act_dim,
            capacity: capacity.max(1),
            obs: Vec::new(),
            actions: Vec::new(),
            rewards: Vec::new(),
            next: Vec::new(),
            terminal: Vec::new(),
            len: 0,
            pos: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores a transition, overwriting the oldest when full.
    pub fn push(&mut self, s: &[f32], a: &[f32], r: f64, s2: &[f32], terminal: bool) {
        let put = |v: &mut Vec<f32>, x: &[f32], pos: usize| {
            let w = x.len();
            if v.len() < (pos + 1) * w {
                v.extend_from_slice(x);
            } else {
                v[pos * w..(pos + 1) * w].copy_from_slice(x);
            }
        };
        put(&mut self.obs, s, self.pos);
        put(&mut self.actions, a, self.pos);
        put(&mut self.rewards, &[r as f32], self.pos);
        put(&mut self.next, s2, self.pos);
        put(
            &mut self.terminal,
            &[f32::from(u8::from(terminal))],
            self.pos,
        );
        self.pos = (self.pos + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
    }

    /// `n` transitions drawn uniformly with replacement: `(s [n, obs], a [n, act], r [n],
    /// s' [n, obs], terminal [n])` as flat vectors.
    #[allow(clippy::type_complexity)]
    pub fn sample(
        &self,
        n: usize,
        rng: &mut impl Rng,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let (od, ad) = (self.obs_dim, self.act_dim);
        let mut out = (
            Vec::with_capacity(n * od),
            Vec::with_capacity(n * ad),
            Vec::with_capacity(n),
            Vec::with_capacity(n * od),
            Vec::with_capacity(n),
        );
        for _ in 0..n {
            let i = rng.random_range(0..self.len);
            out.0.extend_from_slice(&self.obs[i * od..(i + 1) * od]);
            out.1.extend_from_slice(&self.actions[i * ad..(i + 1) * ad]);
            out.2.push(self.rewards[i]);
            out.3.extend_from_slice(&self.next[i * od..(i + 1) * od]);
            out.4.push(self.terminal[i]);
        }
        out
    }
}

/// The environment side of an agent's training loop: the current observation, the episodes
/// begun (episode k starts from seed `seed + k`), the transitions stored, the periodic
/// evaluations and the best networks they found.
struct Driver<'a> {
    env: &'a mut dyn Environment,
    obs: Vec<f32>,
    episode: u64,
    seed: u64,
    evals: Vec<(usize, f64)>,
    /// the best evaluation and copies of the networks at that moment (policy first)
    best: Option<(PolicyReturn, Vec<Graph>)>,
    t0: std::time::Instant,
}

impl<'a> Driver<'a> {
    fn new(env: &'a mut dyn Environment, seed: u64) -> Self {
        let obs = env.reset(seed);
        Self {
            env,
            obs,
            episode: 0,
            seed,
            evals: Vec::new(),
            best: None,
            t0: std::time::Instant::now(),
        }
    }

    fn next_episode(&mut self) {
        self.episode += 1;
        self.obs = self.env.reset(self.seed.wrapping_add(self.episode));
    }

    /// Takes action `a`, stores the transition in `buffer` and moves on (a new episode when this
    /// one ended).
    fn step(&mut self, a: &[f32], buffer: &mut ReplayBuffer) -> Result<()> {
        let s = self.env.step(a)?;
        buffer.push(&self.obs, a, s.reward, &s.observation, s.terminated);
        if s.done() {
            self.next_episode();
        } else {
            self.obs = s.observation;
        }
        Ok(())
    }

    /// Evaluates `nets[0]` (the policy) at training step `step` on `episodes` episodes, records
    /// it, keeps copies of `nets` when it is the best so far, and starts a fresh training episode
    /// (evaluation used the environment).
    fn evaluate(&mut self, nets: &[&Graph], step: usize, episodes: usize) -> Result<()> {
        let r = mean_return(nets[0], self.env, episodes)?;
        self.evals.push((step, r.mean));
        if self.best.as_ref().is_none_or(|(b, _)| r.mean > b.mean) {
            let copies = nets
                .iter()
                .map(|g| g.try_clone())
                .collect::<std::result::Result<_, _>>()?;
            self.best = Some((r, copies));
        }
        self.next_episode();
        Ok(())
    }

    /// The log of a run of `steps` steps and `updates` updates, and the best networks found.
    fn finish(self, steps: usize, updates: usize) -> Result<(RlLog, Vec<Graph>)> {
        let (best, nets) = self
            .best
            .ok_or_else(|| TrainError::Invalid("no evaluation ran".into()))?;
        let log = RlLog {
            steps,
            episodes: self.episode as usize,
            updates,
            evals: self.evals,
            best,
            seconds: self.t0.elapsed().as_secs_f64(),
        };
        Ok((log, nets))
    }
}

/// DQN's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DqnConfig {
    /// environment steps of training
    pub steps: usize,
    pub lr: f64,
    pub batch_size: usize,
    /// discount factor
    pub gamma: f64,
    /// replay capacity (transitions)
    pub buffer: usize,
    /// steps of random actions before the first update
    pub learning_starts: usize,
    /// one gradient step every this many environment steps
    pub train_every: usize,
    /// copy the online network to the target network every this many environment steps
    pub target_update: usize,
    /// epsilon anneals linearly from `eps_start` to `eps_end` over `eps_fraction` of the steps
    pub eps_start: f64,
    pub eps_end: f64,
    pub eps_fraction: f64,
    /// evaluate the greedy policy every this many steps (and at the end) on `eval_episodes`
    /// episodes, keeping the best
    pub eval_every: usize,
    pub eval_episodes: usize,
    pub seed: u64,
}

impl Default for DqnConfig {
    /// Settings that solve CartPole-v1 (close to RL Baselines3 Zoo's tuned DQN): 50,000 steps,
    /// Adam at 1e-3, batch 64, gamma 0.99, 50,000 transitions, 1,000 random steps, an update
    /// every step, the target copied every 500 steps, epsilon 1 -> 0.05 over 20% of the steps.
    fn default() -> Self {
        Self {
            steps: 50_000,
            lr: 1e-3,
            batch_size: 64,
            gamma: 0.99,
            buffer: 50_000,
            learning_starts: 1_000,
            train_every: 1,
            target_update: 500,
            eps_start: 1.0,
            eps_end: 0.05,
            eps_fraction: 0.2,
            eval_every: 5_000,
            eval_episodes: 10,
            seed: 0,
        }
    }
}

impl DqnConfig {
    /// Checks every setting is in range.
    ///
    /// # Errors
    /// [`TrainError::Invalid`] naming the settings and their ranges.
    pub fn check(&self) -> Result<()> {
        let ok = self.steps > 0
            && self.lr > 0.0
            && self.lr.is_finite()
            && self.batch_size > 0
            && (0.0..=1.0).contains(&self.gamma)
            && self.buffer > 0
            && self.train_every > 0
            && self.target_update > 0
            && (0.0..=1.0).contains(&self.eps_start)
            && (0.0..=1.0).contains(&self.eps_end)
            && (0.0..=1.0).contains(&self.eps_fraction)
            && self.eval_every > 0
            && self.eval_episodes > 0;
        if ok {
            Ok(())
        } else {
            Err(TrainError::Invalid(format!(
                "DQN settings out of range (positive steps, lr, batch_size, buffer, train_every, target_update, eval_every, eval_episodes; gamma and the epsilons in [0, 1]): {self:?}"
            )))
        }
    }

    fn epsilon(&self, step: usize) -> f64 {
        let span = (self.eps_fraction * self.steps as f64).max(1.0);
        let t = (step as f64 / span).min(1.0);
        self.eps_start + t * (self.eps_end - self.eps_start)
    }
}

/// What an agent's training did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RlLog {
    pub steps: usize,
    pub episodes: usize,
    pub updates: usize,
    /// (environment step, mean evaluation return) of every periodic evaluation
    pub evals: Vec<(usize, f64)>,
    /// the evaluation of the policy kept (the best)
    pub best: PolicyReturn,
    pub seconds: f64,
}

/// The Huber loss (delta 1) of `d`, averaged: `0.5 min(|d|, 1)^2 + (|d| - min(|d|, 1))`.
fn huber(d: &Tensor) -> candle_core::Result<Tensor> {
    let abs = d.abs()?;
    let quad = abs.minimum(1.0)?;
    let lin = (&abs - &quad)?;
    ((quad.sqr()? * 0.5)? + lin)?.mean_all()
}

/// Trains the Q-network `q` (`[B, obs_dim]` -> `[B, actions]`, one Q-value per action) on a
/// discrete-action environment with DQN; `q` ends as the best policy found by the periodic
/// evaluations. Masks stay fixed.
///
/// # Errors
/// Settings out of range; a continuous action space; a network whose output is not one value
/// per action; a non-finite loss; the forward pass.
pub fn train_dqn(
    q: &mut Graph,
    env: &mut dyn Environment,
    cfg: &DqnConfig,
    optimizer: &OptimizerKind,
) -> Result<RlLog> {
    cfg.check()?;
    let n_actions = match env.action_space() {
        ActionSpace::Discrete(n) => n,
        ActionSpace::Continuous(_) => {
            return Err(TrainError::Invalid(format!(
                "DQN needs discrete actions; `{}` takes continuous ones (use DDPG)",
                env.name()
            )))
        }
    };
    let od = env.observation_dim();
    q.apply_masks()?;
    let mut opt = optimizer.build(cfg.lr);
    let mut target = q.try_clone()?;
    let mut exec = Executor::new(cfg.seed);
    let mut target_exec = Executor::new(cfg.seed);
    let mut rng = prunekit_graph::graph::rng(cfg.seed ^ 0xd9);
    let mut buffer = ReplayBuffer::new(od, 1, cfg.buffer);
    let space = env.action_space();
    let mut run = Driver::new(env, cfg.seed);
    let mut updates = 0usize;
    for step in 1..=cfg.steps {
        let a = if step <= cfg.learning_starts || rng.random::<f64>() < cfg.epsilon(step) {
            vec![rng.random_range(0..n_actions) as f32]
        } else {
            act(&mut exec, q, space, &run.obs)?
        };
        run.step(&a, &mut buffer)?;
        if step > cfg.learning_starts && step % cfg.train_every == 0 {
            let (bs, ba, br, bs2, bt) = buffer.sample(cfg.batch_size, &mut rng);
            let n = cfg.batch_size;
            let dev = Device::Cpu;
            let s2 = Tensor::from_vec(bs2, (n, od), &dev)?;
            // double DQN: the online network picks a', the target network values it
            let pick = exec
                .eval(q, std::slice::from_ref(&s2))?
                .remove(0)
                .argmax(1)?;
            let next = target_exec.eval(&target, &[s2])?.remove(0);
            let next_v: Vec<f32> = next
                .gather(&pick.unsqueeze(1)?, 1)?
                .flatten_all()?
                .to_vec1()?;
            let y: Vec<f32> = (0..n)
                .map(|i| br[i] + (cfg.gamma as f32) * (1.0 - bt[i]) * next_v[i])
                .collect();
            let x = Tensor::from_vec(bs, (n, od), &dev)?;
            let out = exec.run(q, &[x], Mode::TRAIN, None)?.remove(0);
            let idx: Vec<u32> = ba.iter().map(|&v| v as u32).collect();
            let q_sa = out
                .gather(&Tensor::from_vec(idx, (n, 1), &dev)?, 1)?
                .flatten_all()?;
            let loss = huber(&(q_sa - Tensor::from_vec(y, n, &dev)?)?)?;
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "the DQN loss became {l} at step {step}: lower the learning rate"
                )));
            }
            let grads = loss.backward()?;
            opt.step(q, &grads)?;
            updates += 1;
        }
        if step % cfg.target_update == 0 {
            target = q.try_clone()?;
        }
        if step % cfg.eval_every == 0 || step == cfg.steps {
            run.evaluate(&[q], step, cfg.eval_episodes)?;
        }
    }
    let (log, mut nets) = run.finish(cfg.steps, updates)?;
    *q = nets.remove(0);
    Ok(log)
}

/// DDPG's settings (Lillicrap et al. 2016, "Continuous control with deep reinforcement
/// learning"), with Gaussian exploration noise (as TD3 and most implementations since use, in
/// place of the paper's Ornstein-Uhlenbeck process).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DdpgConfig {
    /// environment steps of training
    pub steps: usize,
    pub actor_lr: f64,
    pub critic_lr: f64,
    pub batch_size: usize,
    /// discount factor
    pub gamma: f64,
    /// soft target update: `target <- tau * online + (1 - tau) * target` after every update
    pub tau: f64,
    /// replay capacity (transitions)
    pub buffer: usize,
    /// steps of uniformly random actions before the first update
    pub learning_starts: usize,
    /// standard deviation of the Gaussian noise added to the actor's actions (in [-1, 1] units)
    pub noise: f64,
    /// evaluate the deterministic policy every this many steps (and at the end) on
    /// `eval_episodes` episodes, keeping the best
    pub eval_every: usize,
    pub eval_episodes: usize,
    pub seed: u64,
}

impl Default for DdpgConfig {
    /// 20,000 steps, Adam at 1e-3 for both networks, batch 128, gamma 0.99, tau 0.005, 100,000
    /// transitions, 1,000 random steps, noise 0.1.
    fn default() -> Self {
        Self {
            steps: 20_000,
            actor_lr: 1e-3,
            critic_lr: 1e-3,
            batch_size: 128,
            gamma: 0.99,
            tau: 0.005,
            buffer: 100_000,
            learning_starts: 1_000,
            noise: 0.1,
            eval_every: 5_000,
            eval_episodes: 5,
            seed: 0,
        }
    }
}

impl DdpgConfig {
    /// Checks every setting is in range.
    ///
    /// # Errors
    /// [`TrainError::Invalid`] naming the settings and their ranges.
    pub fn check(&self) -> Result<()> {
        let pos = |v: f64| v > 0.0 && v.is_finite();
        let ok = self.steps > 0
            && pos(self.actor_lr)
            && pos(self.critic_lr)
            && self.batch_size > 0
            && (0.0..=1.0).contains(&self.gamma)
            && self.tau > 0.0
            && self.tau <= 1.0
            && self.buffer > 0
            && self.noise >= 0.0
            && self.noise.is_finite()
            && self.eval_every > 0
            && self.eval_episodes > 0;
        if ok {
            Ok(())
        } else {
            Err(TrainError::Invalid(format!(
                "DDPG settings out of range (positive steps, learning rates, batch_size, buffer, eval_every, eval_episodes; gamma in [0, 1], tau in (0, 1], noise >= 0): {self:?}"
            )))
        }
    }
}

/// A standard normal draw (Box-Muller).
fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `target <- tau * online + (1 - tau) * target`, parameter by parameter (the graphs have the
/// same structure: the target is a copy of the online network).
fn soft_update(target: &Graph, online: &Graph, tau: f64) -> Result<()> {
    for (t, o) in target.nodes.iter().zip(&online.nodes) {
        for (name, tp) in &t.params {
            let op = o.params.get(name).ok_or_else(|| {
                TrainError::Invalid(format!("target network lacks {}.{name}", o.name))
            })?;
            let mixed = ((op.tensor() * tau)? + (tp.tensor() * (1.0 - tau))?)?;
            tp.value.set(&mixed)?;
        }
    }
    Ok(())
}

/// Trains an actor `[B, obs_dim] -> [B, action_dim]` (bounded to [-1, 1], e.g. by a final tanh)
/// and a critic `[B, obs_dim + action_dim] -> [B, 1]` (Q of the observation and action
/// concatenated) with DDPG on a continuous-action environment: the critic regresses
/// `r + gamma (1 - terminal) Q'(s', mu'(s'))` (MSE), the actor ascends `Q(s, mu(s))`, both
/// targets follow by soft updates. `actor` ends as the best policy found by the periodic
/// evaluations (with the critic of that moment). Masks of both stay fixed.
///
/// # Errors
/// Settings out of range; a discrete action space; networks whose widths do not fit; a
/// non-finite loss; the forward pass.
pub fn train_ddpg(
    actor: &mut Graph,
    critic: &mut Graph,
    env: &mut dyn Environment,
    cfg: &DdpgConfig,
    optimizer: &OptimizerKind,
) -> Result<RlLog> {
    cfg.check()?;
    let ad = match env.action_space() {
        ActionSpace::Continuous(d) => d,
        ActionSpace::Discrete(_) => {
            return Err(TrainError::Invalid(format!(
                "DDPG needs continuous actions; `{}` takes discrete ones (use DQN)",
                env.name()
            )))
        }
    };
    let od = env.observation_dim();
    actor.apply_masks()?;
    critic.apply_masks()?;
    let mut actor_opt = optimizer.build(cfg.actor_lr);
    let mut critic_opt = optimizer.build(cfg.critic_lr);
    let actor_target = actor.try_clone()?;
    let critic_target = critic.try_clone()?;
    let mut exec = Executor::new(cfg.seed);
    let mut rng = prunekit_graph::graph::rng(cfg.seed ^ 0xdd);
    let mut buffer = ReplayBuffer::new(od, ad, cfg.buffer);
    let space = env.action_space();
    let mut run = Driver::new(env, cfg.seed);
    let mut updates = 0usize;
    let dev = Device::Cpu;
    let n = cfg.batch_size;
    for step in 1..=cfg.steps {
        let a: Vec<f32> = if step <= cfg.learning_starts {
            (0..ad).map(|_| rng.random_range(-1.0..=1.0)).collect()
        } else {
            act(&mut exec, actor, space, &run.obs)?
                .into_iter()
                .map(|v| (v + (cfg.noise * gaussian(&mut rng)) as f32).clamp(-1.0, 1.0))
                .collect()
        };
        run.step(&a, &mut buffer)?;
        if step > cfg.learning_starts {
            let (bs, ba, br, bs2, bt) = buffer.sample(n, &mut rng);
            let s1 = Tensor::from_vec(bs, (n, od), &dev)?;
            let a1 = Tensor::from_vec(ba, (n, ad), &dev)?;
            let s2 = Tensor::from_vec(bs2, (n, od), &dev)?;
            // critic: regress the bootstrapped target of the target networks
            let a2 = exec
                .eval(&actor_target, std::slice::from_ref(&s2))?
                .remove(0);
            let q2: Vec<f32> = exec
                .eval(&critic_target, &[Tensor::cat(&[&s2, &a2], 1)?])?
                .remove(0)
                .flatten_all()?
                .to_vec1()?;
            let y: Vec<f32> = (0..n)
                .map(|i| br[i] + (cfg.gamma as f32) * (1.0 - bt[i]) * q2[i])
                .collect();
            let q = exec
                .run(critic, &[Tensor::cat(&[&s1, &a1], 1)?], Mode::TRAIN, None)?
                .remove(0)
                .flatten_all()?;
            let critic_loss = (q - Tensor::from_vec(y, n, &dev)?)?.sqr()?.mean_all()?;
            let l = critic_loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "the DDPG critic loss became {l} at step {step}: lower the learning rates"
                )));
            }
            critic_opt.step(critic, &critic_loss.backward()?)?;
            // actor: ascend Q(s, mu(s)); only the actor's parameters are stepped
            let mu = exec
                .run(actor, std::slice::from_ref(&s1), Mode::TRAIN, None)?
                .remove(0);
            let q_mu = exec
                .run(critic, &[Tensor::cat(&[&s1, &mu], 1)?], Mode::TRAIN, None)?
                .remove(0);
            let actor_loss = q_mu.mean_all()?.neg()?;
            actor_opt.step(actor, &actor_loss.backward()?)?;
            soft_update(&actor_target, actor, cfg.tau)?;
            soft_update(&critic_target, critic, cfg.tau)?;
            updates += 1;
        }
        if step % cfg.eval_every == 0 || step == cfg.steps {
            run.evaluate(&[actor, critic], step, cfg.eval_episodes)?;
        }
    }
    let (log, mut nets) = run.finish(cfg.steps, updates)?;
    *critic = nets.remove(1);
    *actor = nets.remove(0);
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prunekit_data::env::Step;

    /// One step per episode from a constant observation. Discrete: action 1 pays 1, action 0
    /// pays 0 (the Q-values must become 0 and 1). Continuous: reward -(a - 0.5)^2 (best 0.5).
    struct Bandit {
        continuous: bool,
        open: bool,
    }

    impl Bandit {
        fn new(continuous: bool) -> Self {
            Self {
                continuous,
                open: false,
            }
        }
    }

    impl Environment for Bandit {
        fn name(&self) -> &'static str {
            "bandit"
        }
        fn observation_dim(&self) -> usize {
            2
        }
        fn action_space(&self) -> ActionSpace {
            if self.continuous {
                ActionSpace::Continuous(1)
            } else {
                ActionSpace::Discrete(2)
            }
        }
        fn max_steps(&self) -> usize {
            1
        }
        fn reset(&mut self, _seed: u64) -> Vec<f32> {
            self.open = true;
            vec![1.0, -1.0]
        }
        fn step(&mut self, action: &[f32]) -> prunekit_data::Result<Step> {
            assert!(self.open, "stepped after the end");
            self.open = false;
            let a = f64::from(action[0]);
            Ok(Step {
                observation: vec![0.0, 0.0],
                reward: if self.continuous {
                    -(a - 0.5) * (a - 0.5)
                } else {
                    a
                },
                terminated: true,
                truncated: false,
            })
        }
    }

    #[test]
    fn dqn_learns_the_q_values_of_a_bandit_and_keeps_masks() {
        let mut q = zoo("q-mlp", 2, 2, 0);
        // mask half of the first layer: it must stay exactly zero through training
        let w = q.nodes[0].params["weight"].tensor().clone();
        let mask = Tensor::from_vec(
            (0..w.elem_count())
                .map(|i| (i % 2) as f32)
                .collect::<Vec<_>>(),
            w.dims(),
            &Device::Cpu,
        )
        .unwrap();
        q.nodes[0].params.get_mut("weight").unwrap().mask = Some(mask.clone());
        let cfg = DqnConfig {
            steps: 800,
            lr: 3e-3,
            batch_size: 16,
            learning_starts: 50,
            target_update: 50,
            eval_every: 200,
            eval_episodes: 3,
            ..DqnConfig::default()
        };
        let log = train_dqn(
            &mut q,
            &mut Bandit::new(false),
            &cfg,
            &OptimizerKind::adamw(0.0),
        )
        .unwrap();
        assert_eq!(log.best.mean, 1.0, "{log:?}");
        assert_eq!(log.updates, 750);
        let x = Tensor::from_vec(vec![1f32, -1.0], (1, 2), &Device::Cpu).unwrap();
        let v: Vec<f32> = Executor::new(0).eval(&q, &[x]).unwrap()[0]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(v[0].abs() < 0.15 && (v[1] - 1.0).abs() < 0.15, "{v:?}");
        let w: Vec<f32> = q.nodes[0].params["weight"]
            .tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            w.iter().step_by(2).all(|&x| x == 0.0),
            "masked weights moved"
        );
    }

    #[test]
    fn dqn_refuses_continuous_actions_and_bad_settings() {
        let mut q = zoo("q-mlp", 2, 2, 0);
        let mut env = prunekit_data::env::Pendulum::default();
        let e = train_dqn(
            &mut q,
            &mut env,
            &DqnConfig::default(),
            &OptimizerKind::adamw(0.0),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("discrete") && e.contains("DDPG"), "{e}");
        let bad = DqnConfig {
            gamma: 1.5,
            ..DqnConfig::default()
        };
        assert!(train_dqn(
            &mut q,
            &mut Bandit::new(false),
            &bad,
            &OptimizerKind::adamw(0.0)
        )
        .is_err());
    }

    fn zoo(name: &str, input: usize, out: usize, seed: u64) -> Graph {
        prunekit_zoo::build_with(
            name,
            seed,
            &prunekit_zoo::ZooOptions {
                input: Some(vec![input]),
                classes: Some(out),
                vocab: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn ddpg_finds_the_best_action_of_a_continuous_bandit() {
        let mut actor = zoo("actor-mlp", 2, 1, 0);
        let mut critic = zoo("q-mlp", 3, 1, 1);
        let cfg = DdpgConfig {
            steps: 1500,
            batch_size: 32,
            learning_starts: 100,
            actor_lr: 1e-3,
            critic_lr: 3e-3,
            tau: 0.05,
            noise: 0.3,
            eval_every: 500,
            eval_episodes: 1,
            ..DdpgConfig::default()
        };
        let mut env = Bandit::new(true);
        let log = train_ddpg(
            &mut actor,
            &mut critic,
            &mut env,
            &cfg,
            &OptimizerKind::adamw(0.0),
        )
        .unwrap();
        assert_eq!(log.updates, 1400);
        // the best action 0.5 earns 0; the policy gets within 0.1 of it
        assert!(log.best.mean > -0.01, "{log:?}");
        let e = train_dqn(
            &mut actor,
            &mut env,
            &DqnConfig::default(),
            &OptimizerKind::adamw(0.0),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("discrete"), "{e}");
        let mut bandit = Bandit::new(false);
        let e = train_ddpg(
            &mut actor,
            &mut critic,
            &mut bandit,
            &cfg,
            &OptimizerKind::adamw(0.0),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("continuous") && e.contains("DQN"), "{e}");
    }

    #[test]
    fn replay_buffer_wraps_around() {
        let mut b = ReplayBuffer::new(1, 1, 3);
        for i in 0..5 {
            b.push(&[i as f32], &[0.0], i as f64, &[i as f32 + 1.0], false);
        }
        assert_eq!(b.len(), 3);
        let mut r = prunekit_graph::graph::rng(0);
        let (s, _, rew, s2, _) = b.sample(50, &mut r);
        assert!(s.iter().all(|&v| (2.0..=4.0).contains(&v)), "{s:?}");
        assert!(s.iter().zip(&s2).all(|(a, b)| b - a == 1.0));
        assert!(s.iter().zip(&rew).all(|(a, r)| a == r));
    }
}
