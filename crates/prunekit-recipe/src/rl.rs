//! Recipes whose `[data]` names an environment (issue 14 §3): the model is a policy, trained and
//! fine-tuned by its agent (`[dqn]` and `kind = "dqn"` stages for a Q-network; `[ddpg]` and
//! `kind = "ddpg"` stages for an actor, whose `q-mlp` critic the run keeps between them and
//! never prunes) instead of on a dataset, and measured
//! by the return it earns: `mean_return` (the headline) and `return_std` over
//! [`EVAL_EPISODES`] episodes with fixed seeds. The pruning stages are the same as for any model
//! (structured, unstructured one-shot, N:M, threshold, layers by influence, restart), with the
//! data-free criteria.

use std::time::Instant;

use prunekit_data::env::{environment, ActionSpace, Environment};
use prunekit_graph::Graph;
use prunekit_measure::policy::{policy_summary, EVAL_EPISODES, MEAN_RETURN};
use prunekit_train::rl::{train_ddpg, train_dqn};
use prunekit_train::OptimizerKind;

use crate::recipe::{run_stage, Recipe, RecipeReport, RunCx, RunOutput, Stage, StageLog};
use crate::{RecipeError, Result};

/// The agents' optimizer: Adam (Mnih et al. used RMSProp for DQN; Adam is the common choice
/// since, and DDPG's), no weight decay.
fn dqn_optimizer() -> OptimizerKind {
    OptimizerKind::adamw(0.0)
}

/// Runs a recipe on an environment: the policy built (a zoo architecture takes the observation
/// size as its input and the number of discrete actions, or the action width, as its outputs),
/// trained by `[dqn]` or `[ddpg]`, measured, then every stage run and measured.
///
/// # Errors
/// An unknown environment; a stage that needs a dataset (fine-tuning on data, gradual or
/// iterative schedules, lottery tickets, data-driven criteria); training or measuring fails.
pub fn run_rl(recipe: &Recipe, log: &mut dyn FnMut(&str)) -> Result<RunOutput> {
    let mut env = environment(&recipe.data.name)?;
    let device = prunekit_graph::device::default_device();
    let mut spec = recipe.model.clone();
    spec.input = spec.input.or(Some(vec![env.observation_dim()]));
    // a Q-network's outputs are the discrete actions, an actor's the action vector
    let (ActionSpace::Discrete(n) | ActionSpace::Continuous(n)) = env.action_space();
    spec.classes = spec.classes.or(Some(n));
    let mut g = crate::recipe::build_model(&spec, None, recipe.seed, &device)?;
    g.meta
        .insert("environment".into(), serde_json::json!(env.name()));
    let dqn = |cfg: &prunekit_train::rl::DqnConfig| {
        let mut c = cfg.clone();
        c.seed = c.seed.wrapping_add(recipe.seed);
        c
    };
    if let Some(d) = &recipe.dqn {
        log(&format!(
            "training the policy with DQN for {} steps",
            d.steps
        ));
        let l = train_dqn(&mut g, env.as_mut(), &dqn(d), &dqn_optimizer())?;
        log(&format!(
            "DQN: {} episodes, {} updates, best evaluation {:.1} ({:.1} s)",
            l.episodes, l.updates, l.best.mean, l.seconds
        ));
    }
    let ddpg = |cfg: &prunekit_train::rl::DdpgConfig| {
        let mut c = cfg.clone();
        c.seed = c.seed.wrapping_add(recipe.seed);
        c
    };
    // DDPG's critic: Q of the observation and the action, kept between the training stages
    let mut critic = match env.action_space() {
        ActionSpace::Continuous(a) => Some(prunekit_zoo::build_with(
            "q-mlp",
            recipe.seed.wrapping_add(1),
            &prunekit_zoo::ZooOptions {
                input: Some(vec![env.observation_dim() + a]),
                classes: Some(1),
                vocab: None,
            },
        )?),
        ActionSpace::Discrete(_) => None,
    };
    let mut run_ddpg = |g: &mut Graph,
                        env: &mut dyn Environment,
                        d: &prunekit_train::rl::DdpgConfig|
     -> Result<prunekit_train::rl::RlLog> {
        let c = critic.as_mut().ok_or_else(|| {
            RecipeError::Invalid(format!(
                "DDPG needs continuous actions; `{}` takes discrete ones (use [dqn])",
                env.name()
            ))
        })?;
        Ok(train_ddpg(g, c, env, &ddpg(d), &dqn_optimizer())?)
    };
    if let Some(d) = &recipe.ddpg {
        log(&format!(
            "training the actor with DDPG for {} steps",
            d.steps
        ));
        let l = run_ddpg(&mut g, env.as_mut(), d)?;
        log(&format!(
            "DDPG: {} episodes, {} updates, best evaluation {:.1} ({:.1} s)",
            l.episodes, l.updates, l.best.mean, l.seconds
        ));
    }
    let (before, r) = policy_summary(&g, env.as_mut())?;
    log(&format!(
        "before: mean_return {:.2} (std {:.2}, {EVAL_EPISODES} episodes), {} params, {} MACs",
        r.mean, r.std, before.params, before.macs
    ));
    let cx = RunCx {
        split: None,
        seed: recipe.seed,
        progress: false,
        calib_batches: 0,
        calib_batch_size: 1,
        teacher: Some(g.try_clone()?),
        device: device.clone(),
        recalibrate: false,
    };
    let mut stages = Vec::new();
    for (i, s) in recipe.stages.iter().enumerate() {
        let t0 = Instant::now();
        let at = |e: String| RecipeError::Invalid(format!("stage {} ({}): {e}", i + 1, s.kind()));
        let detail = match s {
            Stage::Dqn(_) | Stage::Ddpg(_) => {
                let l = match s {
                    Stage::Dqn(d) => train_dqn(&mut g, env.as_mut(), &dqn(d), &dqn_optimizer())
                        .map_err(|e| at(e.to_string()))?,
                    Stage::Ddpg(d) => {
                        run_ddpg(&mut g, env.as_mut(), d).map_err(|e| at(e.to_string()))?
                    }
                    _ => unreachable!("matched above"),
                };
                serde_json::json!({ "steps": l.steps, "episodes": l.episodes,
                    "updates": l.updates, "evals": l.evals, "best": l.best })
            }
            Stage::Finetune(_) | Stage::Lottery(_) | Stage::SparseTrain(_) => {
                return Err(at(
                    "this stage trains on a dataset; a policy is fine-tuned by its agent (`kind = \"dqn\"`)".into(),
                ))
            }
            _ => {
                run_stage(&mut g, s, &cx)
                    .map_err(|e| at(e.to_string()))?
                    .detail
            }
        };
        let (summary, _) = policy_summary(&g, env.as_mut())?;
        stages.push(StageLog::measured(
            i + 1,
            s,
            detail,
            &g,
            MEAN_RETURN.into(),
            summary.metrics,
            t0,
            log,
        )?);
    }
    let (after, _) = policy_summary(&g, env.as_mut())?;
    let before_graph = cx
        .teacher
        .ok_or_else(|| RecipeError::Invalid("the policy before pruning was not kept".into()))?;
    Ok(RunOutput {
        before: before_graph,
        after: g,
        split: None,
        report: RecipeReport {
            description: recipe.description.clone(),
            dataset: recipe.data.name.clone(),
            before,
            after,
            stages,
        },
    })
}
