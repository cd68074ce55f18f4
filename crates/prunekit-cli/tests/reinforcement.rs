//! Issue 14 §3 through the CLI: recipes whose `[data]` names an environment train a policy with
//! its agent, prune it, fine-tune it with the same agent and report `mean_return`; the misuses
//! are one-line errors.

mod common;
use common::{fails_with, ok_json, s, uint};

fn recipe(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn dqn_and_ddpg_recipes_train_prune_and_fine_tune() {
    let root = tempfile::tempdir().unwrap();
    let dqn = recipe(
        root.path(),
        "cartpole.toml",
        r#"
[model]
arch = "q-mlp"
[data]
name = "cartpole"
[dqn]
steps = 1500
learning_starts = 200
target_update = 100
eval_every = 500
eval_episodes = 2
[[stage]]
kind = "structured"
ratio = 0.5
[[stage]]
kind = "dqn"
steps = 400
learning_starts = 100
eval_every = 200
eval_episodes = 2
[[stage]]
kind = "restart"
[[stage]]
kind = "unstructured"
target = 0.8
"#,
    );
    let policy = root.path().join("policy");
    let v = ok_json(&["run", s(&dqn), "-o", s(&policy), "--json"]);
    // the saved policy remembers its environment: `eval` measures the same return again
    let e = ok_json(&["eval", s(&policy), "--json"]);
    assert_eq!(e["environment"], "cartpole");
    assert_eq!(e["episodes"], 100);
    assert_eq!(e["mean_return"], v["after"]["mean_return"]);
    assert_eq!(e["headline"], "mean_return");
    for side in ["before", "after"] {
        let r = v[side]["mean_return"].as_f64().unwrap();
        assert!((1.0..=500.0).contains(&r), "{side}: {r}");
        assert!(v[side]["return_std"].as_f64().unwrap() >= 0.0);
    }
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 4);
    assert_eq!(stages[1]["kind"], "dqn");
    assert_eq!(uint(&v, "/stages/1/detail/updates"), 300);
    assert!(uint(&v, "/stages/0/macs") < uint(&v, "/before/macs"));
    assert_eq!(uint(&v, "/stages/2/nonzeros"), uint(&v, "/before/nonzeros"));
    assert!(uint(&v, "/after/nonzeros") * 4 < uint(&v, "/before/nonzeros"));

    let ddpg = recipe(
        root.path(),
        "pendulum.toml",
        r#"
[model]
arch = "actor-mlp"
[data]
name = "pendulum"
[ddpg]
steps = 400
learning_starts = 200
batch_size = 32
eval_every = 400
eval_episodes = 1
[[stage]]
kind = "structured"
ratio = 0.5
[[stage]]
kind = "ddpg"
steps = 300
learning_starts = 100
batch_size = 32
eval_every = 300
eval_episodes = 1
"#,
    );
    let v = ok_json(&["run", s(&ddpg), "--json"]);
    assert!(v["after"]["mean_return"].as_f64().unwrap() < 0.0);
    assert_eq!(uint(&v, "/stages/1/detail/updates"), 200);
}

#[test]
fn misuses_are_one_line_errors() {
    let root = tempfile::tempdir().unwrap();
    let bad = |name: &str, text: &str, needles: &[&str]| {
        let p = recipe(root.path(), name, text);
        fails_with(&["run", s(&p), "--json"], needles);
    };
    bad(
        "dqn-on-data.toml",
        "[model]\narch = \"mlp\"\n[data]\nname = \"digits\"\n[dqn]\nsteps = 10\n",
        &["[dqn]", "digits", "cartpole"],
    );
    bad(
        "finetune-on-env.toml",
        "[model]\narch = \"q-mlp\"\n[data]\nname = \"cartpole\"\n[[stage]]\nkind = \"finetune\"\nepochs = 1\nlr = 0.01\n",
        &["stage 1", "dataset", "dqn"],
    );
    bad(
        "dqn-on-pendulum.toml",
        "[model]\narch = \"q-mlp\"\n[data]\nname = \"pendulum\"\n[dqn]\nsteps = 10\n",
        &["discrete", "DDPG"],
    );
    bad(
        "ddpg-on-cartpole.toml",
        "[model]\narch = \"actor-mlp\"\n[data]\nname = \"cartpole\"\n[ddpg]\nsteps = 10\n",
        &["continuous", "dqn"],
    );
    bad(
        "bad-gamma.toml",
        "[model]\narch = \"q-mlp\"\n[data]\nname = \"cartpole\"\n[[stage]]\nkind = \"dqn\"\ngamma = 2.0\n",
        &["gamma"],
    );
    let p = recipe(
        root.path(),
        "report.toml",
        "[model]\narch = \"q-mlp\"\n[data]\nname = \"cartpole\"\n",
    );
    let dir = root.path().join("rep");
    fails_with(
        &["run", s(&p), "--report", s(&dir)],
        &["--report", "environment"],
    );
}
