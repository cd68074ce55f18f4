//! Recipes: every example parses, mistakes are errors that name the key and the line, and each
//! schedule does what it says on a small real run (digits).

use std::path::{Path, PathBuf};

use prunekit_recipe::criteria::sparsity_of;
use prunekit_recipe::{run, Recipe};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/recipes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

fn parse(text: &str) -> Result<Recipe, String> {
    Recipe::from_toml(text, Path::new("test.toml")).map_err(|e| e.to_string())
}

#[test]
fn every_example_parses() {
    let ex = examples();
    assert!(ex.len() >= 5, "{ex:?}");
    for p in ex {
        Recipe::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

const BASE: &str = r#"
[model]
arch = "digits-mlp"
[data]
name = "digits"
"#;

#[test]
fn mistakes_name_the_key_and_where() {
    let err = parse(&format!(
        "{BASE}[[stage]]\nkind = \"structured\"\nratoi = 0.5\n"
    ))
    .unwrap_err();
    assert!(
        err.contains("ratoi") && err.contains("test.toml") && err.contains("line"),
        "{err}"
    );
    let err = parse(&format!("{BASE}[[stage]]\nkind = \"prune-everything\"\n")).unwrap_err();
    assert!(err.contains("prune-everything"), "{err}");
    let err = parse(&format!(
        "{BASE}[[stage]]\nkind = \"structured\"\nratio = 1.5\n"
    ))
    .unwrap_err();
    assert!(
        err.contains("stage 1 (structured)") && err.contains("1.5"),
        "{err}"
    );
    let err = parse(&format!(
        "{BASE}[[stage]]\nkind = \"unstructured\"\ntarget = 0.5\nschedule = \"gradual\"\n"
    ))
    .unwrap_err();
    assert!(err.contains("needs a `train` table"), "{err}");
    let err = parse(&format!("{BASE}[[stage]]\nkind = \"nm\"\nn = 4\nm = 2\n")).unwrap_err();
    assert!(err.contains("0 < n < m"), "{err}");
    let err =
        parse("[model]\narch = \"x\"\npath = \"y\"\n[data]\nname = \"digits\"\n").unwrap_err();
    assert!(err.contains("exactly one of"), "{err}");
    let err = parse(&format!(
        "{BASE}[[stage]]\nkind = \"finetune\"\nepochs = 1\nlr = 0.1\ndistill = {{ temperature = 0.0, alpha = 0.5 }}\n"
    ))
    .unwrap_err();
    assert!(err.contains("temperature"), "{err}");
}

fn run_text(text: &str) -> (prunekit_graph::Graph, prunekit_recipe::RecipeReport) {
    let r = parse(text).unwrap();
    run(&r, false, &mut |_| {}).unwrap()
}

#[test]
fn gradual_schedule_reaches_the_target_on_the_cubic_ramp() {
    let (g, rep) = run_text(&format!(
        "{BASE}[train]\nepochs = 3\nlr = 0.05\nbatch_size = 32\n\
         [[stage]]\nkind = \"unstructured\"\ntarget = 0.75\nschedule = \"gradual\"\nprune_every = 5\n\
         [stage.train]\nepochs = 2\nlr = 0.02\nbatch_size = 32\ndistill = {{ temperature = 4.0, alpha = 0.5 }}\n"
    ));
    let s = sparsity_of(&g).unwrap();
    assert!((s - 0.75).abs() < 0.01, "sparsity {s}");
    let d = &rep.stages[0].detail;
    assert!(d["events"].as_u64().unwrap() >= 5, "{d}");
    // the first event prunes least, the ramp is increasing
    let first = d["first"][1].as_f64().unwrap();
    assert!(first > 0.0 && first < 0.75, "{d}");
    assert!(
        rep.after.accuracy().unwrap() > 0.8,
        "{:?}",
        rep.after.accuracy()
    );
}

#[test]
fn iterative_rounds_and_lottery_rewinding() {
    let (g, rep) = run_text(&format!(
        "{BASE}[train]\nepochs = 3\nlr = 0.05\nbatch_size = 32\n\
         [[stage]]\nkind = \"unstructured\"\ntarget = 0.875\nscope = \"global\"\nschedule = \"iterative\"\nrounds = 3\n\
         [stage.train]\nepochs = 1\nlr = 0.02\nbatch_size = 32\n"
    ));
    // global scope without a criterion: LAMP (scale-aware)
    assert_eq!(rep.stages[0].detail["criterion"], "lamp");
    assert_eq!(rep.stages[0].detail["scope"], "global");
    let rounds = rep.stages[0].detail["rounds"].as_array().unwrap().clone();
    let s: Vec<f64> = rounds
        .iter()
        .map(|r| r["sparsity"].as_f64().unwrap())
        .collect();
    assert!(
        (s[0] - 0.5).abs() < 1e-9 && (s[1] - 0.75).abs() < 1e-9,
        "{s:?}"
    );
    assert!((sparsity_of(&g).unwrap() - 0.875).abs() < 0.01);

    let lottery = |reinit: bool| {
        run_text(&format!(
            "{BASE}[[stage]]\nkind = \"lottery\"\ntarget = 0.75\nrounds = 2\nrewind_step = 10\nreinit = {reinit}\n\
             [stage.train]\nepochs = 3\nlr = 0.05\nbatch_size = 32\n"
        ))
    };
    let (g1, r1) = lottery(false);
    let (g2, r2) = lottery(true);
    assert!((sparsity_of(&g1).unwrap() - 0.75).abs() < 0.01);
    assert!((sparsity_of(&g2).unwrap() - 0.75).abs() < 0.01);
    // same masks, different weights: the two runs end differently
    assert_ne!(r1.after.accuracy(), r2.after.accuracy());
    assert!(r1.stages[0].detail["dense"].as_f64().unwrap() > 0.8);
}

#[test]
fn structured_layers_and_finetune_stages() {
    let (g, rep) = run_text(
        "[model]\narch = \"digits-cnn\"\n[data]\nname = \"digits\"\ntrain_limit = 600\n\
         [train]\nepochs = 3\nlr = 0.05\nbatch_size = 32\n\
         [[stage]]\nkind = \"structured\"\nratio = 0.5\ncriterion = \"l2\"\n\
         [[stage]]\nkind = \"finetune\"\nepochs = 1\nlr = 0.02\nbatch_size = 32\n",
    );
    assert!(g.param_count() < rep.before.params);
    assert_eq!(rep.stages.len(), 2);
    assert_eq!(rep.stages[1].params, g.param_count());
}

#[test]
fn nm_leaves_non_divisible_layers_dense_and_strict_refuses() {
    let base = "[model]\narch = \"digits-cnn\"\n[data]\nname = \"digits\"\ntrain_limit = 200\n";
    // strict: the 1-channel first convolution is an error naming it
    let r = parse(&format!(
        "{base}[[stage]]\nkind = \"nm\"\nn = 2\nm = 4\nstrict = true\n"
    ))
    .unwrap();
    let err = run(&r, false, &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("conv2d1") && err.contains("input size 1"),
        "{err}"
    );
    // by default it is left dense and listed; excluding it says so too
    for (extra, reason) in [
        ("", "divisible by M = 4"),
        ("exclude = [\"conv2d1\"]\n", "excluded"),
    ] {
        let (g, rep) = run_text(&format!(
            "{base}[[stage]]\nkind = \"nm\"\nn = 2\nm = 4\n{extra}"
        ));
        for l in prunekit_prune::layer_sparsity(&g).unwrap() {
            let want = if l.node == "conv2d1" { 0 } else { l.total / 2 };
            assert_eq!(l.zeros, want, "{l:?}");
        }
        let d = &rep.stages[0].detail;
        assert_eq!(d["left_out"][0]["node"], "conv2d1", "{d}");
        let why = d["left_out"][0]["reason"].as_str().unwrap();
        assert!(why.contains(reason), "{why}");
        let notes: Vec<&str> = d["notes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n.as_str())
            .collect();
        assert!(
            notes
                .iter()
                .any(|n| n.contains("conv2d1.weight left dense")),
            "{notes:?}"
        );
    }
    let r = parse(&format!(
        "{base}[[stage]]\nkind = \"nm\"\nn = 2\nm = 4\nexclude = [\"nope\"]\n"
    ))
    .unwrap();
    let err = run(&r, false, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("`nope`"), "{err}");
}

#[test]
fn gradual_movement_pruning_uses_scores_from_the_same_training() {
    let (g, rep) = run_text(&format!(
        "{BASE}[train]\nepochs = 3\nlr = 0.05\nbatch_size = 32\n\
         [[stage]]\nkind = \"unstructured\"\ntarget = 0.7\ncriterion = \"movement\"\nschedule = \"gradual\"\nprune_every = 5\n\
         [stage.train]\nepochs = 2\nlr = 0.02\nbatch_size = 32\n"
    ));
    let s = sparsity_of(&g).unwrap();
    assert!((s - 0.7).abs() < 0.01, "sparsity {s}");
    assert!(rep.stages[0].detail["events"].as_u64().unwrap() >= 5);
    assert!(
        rep.after.accuracy().unwrap() > 0.5,
        "{:?}",
        rep.after.accuracy()
    );
}

#[test]
fn domain_recipes_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/domains");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            Recipe::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 11, "{n} domain recipes");
}

#[test]
fn task_table_sets_the_headline_and_class_weights() {
    let base = "[model]\narch = \"digits-mlp\"\n\n[data]\nname = \"digits\"\n\n";
    let r = parse(&format!(
        "{base}[task]\nheadline = \"top5_accuracy\"\nclass_weights = \"balanced\"\n\n\
         [train]\nepochs = 1\nlr = 0.05\nbatch_size = 32\n"
    ))
    .unwrap();
    let (_, rep) = run(&r, false, &mut |_| {}).unwrap();
    assert_eq!(rep.after.headline.as_deref(), Some("top5_accuracy"));
    assert!(rep.after.metrics.contains_key("accuracy"));
    // a metric the task does not report is an error naming [task] and the metric
    let bad = parse(&format!("{base}[task]\nheadline = \"rmse\"\n")).unwrap();
    let e = run(&bad, false, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("[task] headline") && e.contains("`rmse`"), "{e}");
    let bad = parse(&format!("{base}[task]\nclass_weights = \"inverse\"\n")).unwrap();
    let e = run(&bad, false, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("class_weights") && e.contains("balanced"), "{e}");
}
