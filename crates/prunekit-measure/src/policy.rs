//! The return a policy earns in an environment (issue 14 §3): the metric of reinforcement
//! learning, measured as the mean and standard deviation of the undiscounted episode return over
//! fixed seeds, with the greedy (deterministic) policy.

use candle_core::{Device, Tensor};
use prunekit_data::env::{ActionSpace, Environment};
use prunekit_graph::{Executor, Graph};
use serde::{Deserialize, Serialize};

use crate::{MeasureError, Result};

/// Episodes of a policy's measured return (the protocol: 100 with fixed seeds).
pub const EVAL_EPISODES: usize = 100;

/// The name of a policy's headline metric.
pub const MEAN_RETURN: &str = "mean_return";

/// Everything [`crate::summarize`] measures of a policy graph (params, MACs, latency, file
/// size) with its return over [`EVAL_EPISODES`] episodes as the metrics `mean_return` (the
/// headline) and `return_std`.
///
/// # Errors
/// As [`mean_return`] and [`crate::summarize`].
pub fn policy_summary(
    g: &Graph,
    env: &mut dyn Environment,
) -> Result<(crate::Summary, PolicyReturn)> {
    let r = mean_return(g, env, EVAL_EPISODES)?;
    let mut s = crate::summarize(g, None)?;
    s.metrics.insert(MEAN_RETURN.into(), r.mean);
    s.metrics.insert("return_std".into(), r.std);
    s.headline = Some(MEAN_RETURN.into());
    Ok((s, r))
}

/// The seed of evaluation episode `i`: far from the seeds training uses (which count up from the
/// run's seed), so evaluation never replays a training start.
pub fn eval_seed(i: usize) -> u64 {
    1_000_000_007 + i as u64
}

/// Mean and spread of the return over evaluation episodes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyReturn {
    /// mean undiscounted return per episode
    pub mean: f64,
    /// population standard deviation of the returns
    pub std: f64,
    pub episodes: usize,
}

/// The action a policy graph takes for one observation: for a discrete space the index of the
/// largest output (a Q-network's greedy action), for a continuous one the outputs themselves (an
/// actor whose last op bounds them to [-1, 1]).
///
/// The graph maps `[B, obs_dim]` to `[B, n]` (discrete) or `[B, action_dim]` (continuous).
///
/// # Errors
/// The forward pass fails or the output width does not match the action space.
pub fn act(exec: &mut Executor, g: &Graph, space: ActionSpace, obs: &[f32]) -> Result<Vec<f32>> {
    let x = Tensor::from_vec(obs.to_vec(), (1, obs.len()), &Device::Cpu)?;
    let y: Vec<f32> = exec.eval(g, &[x])?[0].flatten_all()?.to_vec1()?;
    match space {
        ActionSpace::Discrete(n) if y.len() == n => {
            let best =
                y.iter().enumerate().fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                );
            Ok(vec![best.0 as f32])
        }
        ActionSpace::Continuous(d) if y.len() == d => Ok(y),
        _ => Err(MeasureError::Invalid(format!(
            "the policy `{}` has {} outputs; the environment takes {space:?}",
            g.name,
            y.len()
        ))),
    }
}

/// Runs `episodes` episodes (seeds [`eval_seed`]`(0..episodes)`) with the greedy policy `g` and
/// returns the mean and standard deviation of their undiscounted returns.
///
/// # Errors
/// `episodes` is 0; the policy does not fit the environment ([`act`]); a step fails.
pub fn mean_return(g: &Graph, env: &mut dyn Environment, episodes: usize) -> Result<PolicyReturn> {
    if episodes == 0 {
        return Err(MeasureError::Invalid(
            "evaluate at least one episode".into(),
        ));
    }
    let mut exec = Executor::new(0);
    let space = env.action_space();
    let mut returns = Vec::with_capacity(episodes);
    for i in 0..episodes {
        let mut obs = env.reset(eval_seed(i));
        let mut total = 0.0;
        loop {
            let a = act(&mut exec, g, space, &obs)?;
            let s = env.step(&a)?;
            total += s.reward;
            if s.done() {
                break;
            }
            obs = s.observation;
        }
        returns.push(total);
    }
    let n = returns.len() as f64;
    let mean = returns.iter().sum::<f64>() / n;
    let var = returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    Ok(PolicyReturn {
        mean,
        std: var.sqrt(),
        episodes,
    })
}
