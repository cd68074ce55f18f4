//! Environments for reinforcement learning (issue 14 §3), written from their published equations
//! behind one [`Environment`] trait: seeded, deterministic, f32 observations.
//!
//! * [`CartPole`]: the cart-pole of Barto, Sutton and Anderson (1983) with the equations,
//!   constants, termination and 500-step limit of Gymnasium's `CartPole-v1` (Euler integration,
//!   20 ms steps, reward 1 per step).
//! * [`Pendulum`]: Gymnasium's `Pendulum-v1` (torque-limited swing-up, 200 steps of 50 ms,
//!   reward `-(theta^2 + 0.1 theta_dot^2 + 0.001 u^2)`).
//! * [`LaneKeeping`]: a car kept in its lane on a curved road, the kinematic bicycle model
//!   (Rajamani, *Vehicle Dynamics and Control*, 2nd ed., §2.2; Kong et al. 2015) in the road's
//!   Frenet frame.
//!
//! A step after the episode ended (terminated or truncated) is an error until [`Environment::reset`].

use rand::{Rng, SeedableRng};

use crate::error::{DataError, Result};

/// The actions an environment takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActionSpace {
    /// one of `n` actions, `0..n`
    Discrete(usize),
    /// a vector of `dim` values, each in `[-1, 1]` (scaled to the physical range inside)
    Continuous(usize),
}

/// What one step returned.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// the observation after the step
    pub observation: Vec<f32>,
    /// the reward of this step
    pub reward: f64,
    /// the episode ended by the task's rule (the pole fell, the car left the road): no future
    /// reward (the bootstrap target is the reward alone)
    pub terminated: bool,
    /// the episode was cut at the step limit (the state is not terminal)
    pub truncated: bool,
}

impl Step {
    /// Whether the episode is over (terminated or truncated).
    pub fn done(&self) -> bool {
        self.terminated || self.truncated
    }
}

/// A seeded, deterministic environment: the same seed gives the same episode for the same actions.
pub trait Environment {
    /// The environment's name (`cartpole`, `pendulum`, `lane-keeping`).
    fn name(&self) -> &'static str;
    /// Length of the observation vector.
    fn observation_dim(&self) -> usize;
    /// The actions it takes.
    fn action_space(&self) -> ActionSpace;
    /// Steps after which an episode is truncated.
    fn max_steps(&self) -> usize;
    /// Starts an episode from a state drawn with `seed`; returns the first observation.
    fn reset(&mut self, seed: u64) -> Vec<f32>;
    /// Applies `action` (for a discrete space, `action[0]` is the index; continuous values are
    /// clipped to `[-1, 1]`).
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`] for a step before the first reset or after the episode
    /// ended, an action of the wrong length, a discrete index out of range or a non-finite value.
    fn step(&mut self, action: &[f32]) -> Result<Step>;
}

/// The environments by name: `cartpole`, `pendulum`, `lane-keeping`.
pub const ENVIRONMENTS: &[&str] = &["cartpole", "pendulum", "lane-keeping"];

/// An environment by name ([`ENVIRONMENTS`]).
///
/// # Errors
/// An unknown name lists the known ones.
pub fn environment(name: &str) -> Result<Box<dyn Environment>> {
    Ok(match name {
        "cartpole" => Box::new(CartPole::default()),
        "pendulum" => Box::new(Pendulum::default()),
        "lane-keeping" => Box::new(LaneKeeping::default()),
        other => {
            return Err(DataError::InvalidArgument(format!(
                "unknown environment `{other}`; known: {}",
                ENVIRONMENTS.join(", ")
            )))
        }
    })
}

/// Step bookkeeping shared by the environments: the step count and whether the episode is open.
#[derive(Clone, Debug, Default)]
struct Episode {
    steps: usize,
    open: bool,
}

impl Episode {
    fn start(&mut self) {
        self.steps = 0;
        self.open = true;
    }

    /// Checks that a step may be taken and that `action` fits `space`; returns the action's
    /// values clipped to [-1, 1] (continuous) or its index (discrete, as a one-element vec).
    fn check(&self, env: &str, space: ActionSpace, action: &[f32]) -> Result<Vec<f32>> {
        if !self.open {
            return Err(DataError::InvalidArgument(format!(
                "{env}: step after the episode ended (or before the first reset); call reset"
            )));
        }
        let bad = |m: String| Err(DataError::InvalidArgument(format!("{env}: {m}")));
        match space {
            ActionSpace::Discrete(n) => match action {
                [a] if a.is_finite() && *a >= 0.0 && (*a as usize) < n && a.fract() == 0.0 => {
                    Ok(vec![*a])
                }
                _ => bad(format!(
                    "the action must be one index in 0..{n}, got {action:?}"
                )),
            },
            ActionSpace::Continuous(d) => {
                if action.len() != d || action.iter().any(|v| !v.is_finite()) {
                    return bad(format!(
                        "the action must be {d} finite values in [-1, 1], got {action:?}"
                    ));
                }
                Ok(action.iter().map(|v| v.clamp(-1.0, 1.0)).collect())
            }
        }
    }

    /// Counts the step and closes the episode when it terminated or reached `max`; returns
    /// whether it was truncated.
    fn finish(&mut self, terminated: bool, max: usize) -> bool {
        self.steps += 1;
        let truncated = !terminated && self.steps >= max;
        if terminated || truncated {
            self.open = false;
        }
        truncated
    }
}

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Gymnasium's `CartPole-v1`: state `[x, x_dot, theta, theta_dot]`, actions push left (0) or
/// right (1) with 10 N; the equations of motion of Barto et al. (1983) (Florian's 2007
/// correction not applied, as in Gymnasium), Euler steps of 20 ms; terminated when
/// `|theta| > 12 degrees` or `|x| > 2.4`; reward 1 for every step, including the last; 500 steps.
#[derive(Clone, Debug, Default)]
pub struct CartPole {
    state: [f64; 4],
    episode: Episode,
}

impl CartPole {
    const GRAVITY: f64 = 9.8;
    const MASS_CART: f64 = 1.0;
    const MASS_POLE: f64 = 0.1;
    /// half the pole's length
    const LENGTH: f64 = 0.5;
    const FORCE: f64 = 10.0;
    const TAU: f64 = 0.02;
    const THETA_LIMIT: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
    const X_LIMIT: f64 = 2.4;

    fn obs(&self) -> Vec<f32> {
        self.state.iter().map(|&v| v as f32).collect()
    }
}

impl Environment for CartPole {
    fn name(&self) -> &'static str {
        "cartpole"
    }
    fn observation_dim(&self) -> usize {
        4
    }
    fn action_space(&self) -> ActionSpace {
        ActionSpace::Discrete(2)
    }
    fn max_steps(&self) -> usize {
        500
    }
    fn reset(&mut self, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        self.state = std::array::from_fn(|_| r.random_range(-0.05..0.05));
        self.episode.start();
        self.obs()
    }
    fn step(&mut self, action: &[f32]) -> Result<Step> {
        let a = self
            .episode
            .check("cartpole", self.action_space(), action)?;
        let [x, x_dot, theta, theta_dot] = self.state;
        let force = if a[0] == 1.0 {
            Self::FORCE
        } else {
            -Self::FORCE
        };
        let (cos, sin) = (theta.cos(), theta.sin());
        let total = Self::MASS_CART + Self::MASS_POLE;
        let pml = Self::MASS_POLE * Self::LENGTH;
        let temp = (force + pml * theta_dot * theta_dot * sin) / total;
        let theta_acc = (Self::GRAVITY * sin - cos * temp)
            / (Self::LENGTH * (4.0 / 3.0 - Self::MASS_POLE * cos * cos / total));
        let x_acc = temp - pml * theta_acc * cos / total;
        self.state = [
            x + Self::TAU * x_dot,
            x_dot + Self::TAU * x_acc,
            theta + Self::TAU * theta_dot,
            theta_dot + Self::TAU * theta_acc,
        ];
        let terminated =
            self.state[0].abs() > Self::X_LIMIT || self.state[2].abs() > Self::THETA_LIMIT;
        let truncated = self.episode.finish(terminated, self.max_steps());
        Ok(Step {
            observation: self.obs(),
            reward: 1.0,
            terminated,
            truncated,
        })
    }
}

/// Gymnasium's `Pendulum-v1`: a pendulum of mass 1 and length 1 under gravity 10, torque
/// `u = 2 a` (a in [-1, 1]); `theta_dot += (3 g / (2 l) sin(theta) + 3 / (m l^2) u) dt`, clipped
/// to ±8, then `theta += theta_dot dt` (dt 50 ms); observation `[cos theta, sin theta,
/// theta_dot]`; reward `-(norm(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2)` (0 upright, about -16.3
/// at worst); never terminates, 200 steps. Starts at theta in U(-pi, pi), theta_dot in U(-1, 1).
#[derive(Clone, Debug, Default)]
pub struct Pendulum {
    theta: f64,
    theta_dot: f64,
    episode: Episode,
}

impl Pendulum {
    const MAX_SPEED: f64 = 8.0;
    const MAX_TORQUE: f64 = 2.0;
    const DT: f64 = 0.05;
    const G: f64 = 10.0;

    fn obs(&self) -> Vec<f32> {
        vec![
            self.theta.cos() as f32,
            self.theta.sin() as f32,
            self.theta_dot as f32,
        ]
    }
}

/// `theta` wrapped into [-pi, pi).
fn wrap_angle(theta: f64) -> f64 {
    use std::f64::consts::PI;
    (theta + PI).rem_euclid(2.0 * PI) - PI
}

impl Environment for Pendulum {
    fn name(&self) -> &'static str {
        "pendulum"
    }
    fn observation_dim(&self) -> usize {
        3
    }
    fn action_space(&self) -> ActionSpace {
        ActionSpace::Continuous(1)
    }
    fn max_steps(&self) -> usize {
        200
    }
    fn reset(&mut self, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        self.theta = r.random_range(-std::f64::consts::PI..std::f64::consts::PI);
        self.theta_dot = r.random_range(-1.0..1.0);
        self.episode.start();
        self.obs()
    }
    fn step(&mut self, action: &[f32]) -> Result<Step> {
        let a = self
            .episode
            .check("pendulum", self.action_space(), action)?;
        let u = f64::from(a[0]) * Self::MAX_TORQUE;
        let th = wrap_angle(self.theta);
        let reward = -(th * th + 0.1 * self.theta_dot * self.theta_dot + 0.001 * u * u);
        let acc = 3.0 * Self::G / 2.0 * self.theta.sin() + 3.0 * u;
        self.theta_dot = (self.theta_dot + acc * Self::DT).clamp(-Self::MAX_SPEED, Self::MAX_SPEED);
        self.theta += self.theta_dot * Self::DT;
        let truncated = self.episode.finish(false, self.max_steps());
        Ok(Step {
            observation: self.obs(),
            reward,
            terminated: false,
            truncated,
        })
    }
}

/// Lane keeping on a curved road with the kinematic bicycle model in the road's Frenet frame.
///
/// The car (wheelbase `l_f + l_r` = 1.2 + 1.6 m, reference point at the centre of mass) drives
/// at a constant 15 m/s; the action is the front steering angle `delta = 0.4 a` rad. With slip
/// angle `beta = atan(l_r / (l_f + l_r) tan delta)`, arc length s, lateral offset `e_y` and
/// heading error `e_psi` relative to a road of curvature `kappa(s)`:
///
/// ```text
/// s'     = v cos(e_psi + beta) / (1 - kappa e_y)
/// e_y'   = v sin(e_psi + beta)
/// e_psi' = v / l_r sin(beta) - kappa s'
/// ```
///
/// integrated with Euler steps of 50 ms. The road's curvature is a seeded sum of three sinusoids
/// of arc length (amplitudes up to 1/60 m^-1 in total: radii down to 60 m). Observation
/// `[e_y / 1.75, e_psi, delta / 0.4, 50 kappa(s), 50 kappa(s + 15), 50 kappa(s + 30)]` (the
/// curvature ahead, as a driver sees it). Reward per step: the progress along the road in units
/// of the distance at full speed (1 when driving straight down the lane) minus `0.5 (e_y /
/// 1.75)^2` (offset) minus `2 (delta - delta_prev)^2 / 0.4^2` (steering jerk); leaving the lane
/// (`|e_y| > 1.75` m, half of a 3.5 m lane) terminates with a reward of -10. 400 steps (20 s,
/// about 300 m).
#[derive(Clone, Debug)]
pub struct LaneKeeping {
    s: f64,
    e_y: f64,
    e_psi: f64,
    delta: f64,
    /// per sinusoid: amplitude (1/m), wavenumber (rad/m), phase
    road: [(f64, f64, f64); 3],
    episode: Episode,
}

impl Default for LaneKeeping {
    fn default() -> Self {
        Self {
            s: 0.0,
            e_y: 0.0,
            e_psi: 0.0,
            delta: 0.0,
            road: [(0.0, 0.0, 0.0); 3],
            episode: Episode::default(),
        }
    }
}

impl LaneKeeping {
    const SPEED: f64 = 15.0;
    const L_F: f64 = 1.2;
    const L_R: f64 = 1.6;
    const MAX_STEER: f64 = 0.4;
    const HALF_LANE: f64 = 1.75;
    const DT: f64 = 0.05;
    const OFF_ROAD_REWARD: f64 = -10.0;

    /// The road's curvature at arc length `s` (1/m).
    pub fn curvature(&self, s: f64) -> f64 {
        self.road
            .iter()
            .map(|&(a, k, p)| a * (k * s + p).sin())
            .sum()
    }

    fn obs(&self) -> Vec<f32> {
        [
            self.e_y / Self::HALF_LANE,
            self.e_psi,
            self.delta / Self::MAX_STEER,
            50.0 * self.curvature(self.s),
            50.0 * self.curvature(self.s + 15.0),
            50.0 * self.curvature(self.s + 30.0),
        ]
        .iter()
        .map(|&v| v as f32)
        .collect()
    }
}

impl Environment for LaneKeeping {
    fn name(&self) -> &'static str {
        "lane-keeping"
    }
    fn observation_dim(&self) -> usize {
        6
    }
    fn action_space(&self) -> ActionSpace {
        ActionSpace::Continuous(1)
    }
    fn max_steps(&self) -> usize {
        400
    }
    fn reset(&mut self, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        let total = 1.0 / 60.0;
        let w: [f64; 3] = std::array::from_fn(|_| r.random_range(0.2..1.0));
        let sum: f64 = w.iter().sum();
        self.road = std::array::from_fn(|i| {
            (
                total * w[i] / sum,
                2.0 * std::f64::consts::PI / r.random_range(80.0..400.0),
                r.random_range(0.0..2.0 * std::f64::consts::PI),
            )
        });
        self.s = 0.0;
        self.e_y = r.random_range(-0.5..0.5);
        self.e_psi = r.random_range(-0.05..0.05);
        self.delta = 0.0;
        self.episode.start();
        self.obs()
    }
    fn step(&mut self, action: &[f32]) -> Result<Step> {
        let a = self
            .episode
            .check("lane-keeping", self.action_space(), action)?;
        let delta = f64::from(a[0]) * Self::MAX_STEER;
        let jerk = (delta - self.delta) / Self::MAX_STEER;
        let beta = (Self::L_R / (Self::L_F + Self::L_R) * delta.tan()).atan();
        let kappa = self.curvature(self.s);
        let v = Self::SPEED;
        let s_dot = v * (self.e_psi + beta).cos() / (1.0 - kappa * self.e_y);
        let e_y_dot = v * (self.e_psi + beta).sin();
        let e_psi_dot = v / Self::L_R * beta.sin() - kappa * s_dot;
        self.s += s_dot * Self::DT;
        self.e_y += e_y_dot * Self::DT;
        self.e_psi = wrap_angle(self.e_psi + e_psi_dot * Self::DT);
        self.delta = delta;
        let terminated = self.e_y.abs() > Self::HALF_LANE;
        let offset = self.e_y / Self::HALF_LANE;
        let reward = if terminated {
            Self::OFF_ROAD_REWARD
        } else {
            s_dot * Self::DT / (v * Self::DT) - 0.5 * offset * offset - 2.0 * jerk * jerk
        };
        let truncated = self.episode.finish(terminated, self.max_steps());
        Ok(Step {
            observation: self.obs(),
            reward,
            terminated,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(
        env: &mut dyn Environment,
        seed: u64,
        policy: impl Fn(&[f32]) -> Vec<f32>,
    ) -> (f64, usize) {
        let mut obs = env.reset(seed);
        let (mut ret, mut n) = (0.0, 0);
        loop {
            let s = env.step(&policy(&obs)).unwrap();
            ret += s.reward;
            n += 1;
            if s.done() {
                return (ret, n);
            }
            obs = s.observation;
        }
    }

    #[test]
    fn cartpole_matches_the_published_equations_for_one_step() {
        let mut env = CartPole::default();
        env.reset(0);
        env.state = [0.0, 0.0, 0.1, 0.0];
        let s = env.step(&[1.0]).unwrap();
        // by hand: temp = (10 + 0) / 1.1 = 9.0909; theta_acc = (9.8 sin 0.1 - cos 0.1 * 9.0909)
        // / (0.5 (4/3 - 0.1 cos^2 0.1 / 1.1)); x_acc = temp - 0.05 theta_acc cos 0.1 / 1.1
        let (c, sn) = (0.1f64.cos(), 0.1f64.sin());
        let temp = 10.0 / 1.1;
        let th_acc = (9.8 * sn - c * temp) / (0.5 * (4.0 / 3.0 - 0.1 * c * c / 1.1));
        let x_acc = temp - 0.05 * th_acc * c / 1.1;
        let want = [0.0, 0.02 * x_acc, 0.1, 0.02 * th_acc];
        for (g, w) in s.observation.iter().zip(want) {
            assert!(
                (f64::from(*g) - w).abs() < 1e-6,
                "{:?} vs {want:?}",
                s.observation
            );
        }
        assert_eq!(s.reward, 1.0);
        assert!(!s.done());
    }

    #[test]
    fn cartpole_falls_without_control_and_the_limit_truncates() {
        let mut env = CartPole::default();
        let (ret, n) = rollout(&mut env, 1, |_| vec![0.0]);
        assert!(
            n < 60 && ret == n as f64,
            "always pushing left ends early: {n}"
        );
        // a hand-written controller (push toward the pole's lean) balances to the 500-step limit
        let (ret, n) = rollout(&mut env, 2, |o| {
            vec![if o[2] + 0.5 * o[3] + 0.01 * o[0] + 0.1 * o[1] > 0.0 {
                1.0
            } else {
                0.0
            }]
        });
        assert_eq!((ret, n), (500.0, 500));
    }

    #[test]
    fn same_seed_same_episode_and_bad_steps_are_errors() {
        for name in ENVIRONMENTS {
            let mut a = environment(name).unwrap();
            let mut b = environment(name).unwrap();
            let dim = match a.action_space() {
                ActionSpace::Discrete(_) => 1,
                ActionSpace::Continuous(d) => d,
            };
            assert!(
                a.step(&vec![0.0; dim]).is_err(),
                "{name}: step before reset"
            );
            assert_eq!(a.reset(7), b.reset(7), "{name}");
            assert_ne!(a.reset(7), a.reset(8), "{name}: seeds differ");
            a.reset(7);
            let (ra, na) = rollout(a.as_mut(), 9, |_| vec![0.0; dim]);
            let (rb, nb) = rollout(b.as_mut(), 9, |_| vec![0.0; dim]);
            assert_eq!((ra, na), (rb, nb), "{name}: deterministic");
            assert!(na <= a.max_steps());
            let err = a.step(&vec![0.0; dim]).unwrap_err().to_string();
            assert!(err.contains("after the episode ended"), "{name}: {err}");
            a.reset(1);
            assert!(a.step(&vec![0.0; dim + 1]).is_err(), "{name}: wrong length");
            assert!(a.step(&vec![f32::NAN; dim]).is_err(), "{name}: NaN");
        }
        let mut c = CartPole::default();
        c.reset(0);
        assert!(c.step(&[2.0]).is_err() && c.step(&[0.5]).is_err() && c.step(&[-1.0]).is_err());
        let unknown = environment("mountain-car").err().map(|e| e.to_string());
        assert!(unknown.is_some_and(|e| e.contains("cartpole")));
    }

    #[test]
    fn pendulum_reward_and_dynamics() {
        let mut env = Pendulum::default();
        env.reset(0);
        env.theta = 0.0;
        env.theta_dot = 0.0;
        // upright and still, no torque: reward 0 and it stays (sin 0 = 0)
        let s = env.step(&[0.0]).unwrap();
        assert_eq!(s.reward, 0.0);
        assert_eq!(s.observation, vec![1.0, 0.0, 0.0]);
        // hanging down (theta = pi) with full torque: reward -(pi^2 + 0.001 * 4)
        env.theta = std::f64::consts::PI;
        let s = env.step(&[1.0]).unwrap();
        let want = -(std::f64::consts::PI.powi(2) + 0.004);
        assert!((s.reward - want).abs() < 1e-9, "{}", s.reward);
        // never terminates; truncated at 200
        let (_, n) = rollout(&mut env, 3, |_| vec![1.0]);
        assert_eq!(n, 200);
        assert!((wrap_angle(3.0 * std::f64::consts::PI) + std::f64::consts::PI).abs() < 1e-9);
    }

    #[test]
    fn lane_keeping_straight_road_and_leaving_the_lane() {
        let mut env = LaneKeeping::default();
        env.reset(0);
        env.road = [(0.0, 0.0, 0.0); 3];
        env.e_y = 0.0;
        env.e_psi = 0.0;
        // straight down a straight lane: reward 1 per step, no offset
        let s = env.step(&[0.0]).unwrap();
        assert!((s.reward - 1.0).abs() < 1e-9, "{}", s.reward);
        assert_eq!(s.observation[0], 0.0);
        // full steering drives off the lane within a couple of seconds, ending with -10
        let (_, n) = rollout(&mut env, 4, |_| vec![1.0]);
        assert!(n < 60, "{n}");
        let mut env = LaneKeeping::default();
        env.reset(4);
        let mut last = None;
        for _ in 0..400 {
            let s = env.step(&[1.0]).unwrap();
            if s.done() {
                last = Some(s);
                break;
            }
        }
        let last = last.unwrap();
        assert!(last.terminated && last.reward == -10.0);
        // a proportional controller on offset, heading and curvature ahead keeps the lane
        let (ret, n) = rollout(&mut env, 5, |o| {
            vec![(-0.6 * o[0] - 1.5 * o[1] + 0.25 * o[4]).clamp(-1.0, 1.0)]
        });
        assert_eq!(n, 400, "the controller stays on the road");
        assert!(ret > 300.0, "{ret}");
    }
}
