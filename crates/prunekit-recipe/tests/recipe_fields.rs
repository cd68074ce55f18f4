//! Every numeric field of a recipe is checked when the recipe is loaded: a value that would divide
//! by zero, loop forever, do nothing or mean nothing (`prune_every = 0`, `lr = -1`, a ratio of 1.5)
//! is an error naming the file, the line, the table and the field, never a panic later in the run.

use std::path::Path;

use prunekit_recipe::Recipe;

fn parse(text: &str) -> Result<Recipe, String> {
    Recipe::from_toml(text, Path::new("bad.toml")).map_err(|e| e.to_string())
}

/// A recipe whose stage 2 is `stage`; its lines are numbered from 1, the stage's first key is on
/// line 10.
fn with_stage(stage: &str) -> String {
    format!(
        "[model]\n\
         arch = \"digits-mlp\"\n\
         [data]\n\
         name = \"digits\"\n\
         \n\
         [[stage]]\n\
         kind = \"structured\"\n\
         ratio = 0.5\n\
         [[stage]]\n\
         {stage}"
    )
}

/// Parses `text`, expects an error and checks it names the file, `line` and every one of `parts`.
fn rejects(text: &str, line: usize, parts: &[&str]) {
    let err = match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    };
    let at = format!("bad.toml, line {line}:");
    assert!(err.starts_with(&at), "`{err}` does not start with `{at}`");
    for p in parts {
        assert!(err.contains(p), "`{err}` does not mention `{p}`");
    }
}

const TRAIN: &str = "train = { epochs = 1, lr = 0.1 }\n";

#[test]
fn prune_every_zero_is_an_error_with_its_line() {
    let text = with_stage(&format!(
        "kind = \"unstructured\"\ntarget = 0.5\nschedule = \"gradual\"\n{TRAIN}prune_every = 0\n"
    ));
    rejects(
        &text,
        14,
        &["stage 2 (unstructured)", "`prune_every` = 0", "at least 1"],
    );
}

#[test]
fn counts_must_be_at_least_one() {
    let cases = [
        ("kind = \"structured\"\nratio = 0.5\nsteps = 0\n", 12, "`steps` = 0"),
        ("kind = \"structured\"\nratio = 0.5\nround_to = 0\n", 12, "`round_to` = 0"),
        ("kind = \"layers\"\ncount = 0\n", 11, "`count` = 0"),
        (
            "kind = \"unstructured\"\ntarget = 0.5\nschedule = \"iterative\"\nrounds = 0\ntrain = { epochs = 1, lr = 0.1 }\n",
            13,
            "`rounds` = 0",
        ),
        (
            "kind = \"lottery\"\ntarget = 0.5\nrounds = 0\ntrain = { epochs = 1, lr = 0.1 }\n",
            12,
            "`rounds` = 0",
        ),
        ("kind = \"finetune\"\nepochs = 0\nlr = 0.1\n", 11, "`epochs` = 0"),
        ("kind = \"finetune\"\nepochs = 1\nlr = 0.1\nbatch_size = 0\n", 13, "`batch_size` = 0"),
        // a nested training table names its field with the table
        (
            "kind = \"lottery\"\ntarget = 0.5\ntrain = { epochs = 0, lr = 0.1 }\n",
            12,
            "`train.epochs` = 0",
        ),
    ];
    for (stage, line, field) in cases {
        rejects(&with_stage(stage), line, &["stage 2", field, "at least 1"]);
    }
}

#[test]
fn ratios_rates_and_temperatures_in_range() {
    let cases = [
        ("kind = \"structured\"\nratio = 1.5\n", 11, "`ratio` = 1.5"),
        ("kind = \"structured\"\nratio = 0.5\nmax_ratio = 2.0\n", 12, "`max_ratio` = 2"),
        (
            "kind = \"structured\"\nratio = 0.5\nmin_ratio = 0.8\nmax_ratio = 0.6\n",
            12,
            "`min_ratio` = 0.8 exceeds `max_ratio` = 0.6",
        ),
        (
            "kind = \"structured\"\nratio = 0.5\nratios = { conv1 = -0.5 }\n",
            12,
            "`ratios.conv1` = -0.5",
        ),
        ("kind = \"unstructured\"\ntarget = 1.0\n", 11, "`target` = 1"),
        (
            "kind = \"unstructured\"\ntarget = 0.5\nend_fraction = 0.0\n",
            12,
            "`end_fraction` = 0",
        ),
        ("kind = \"finetune\"\nepochs = 1\nlr = -0.1\n", 12, "`lr` = -0.1"),
        ("kind = \"finetune\"\nepochs = 1\nlr = nan\n", 12, "`lr` = NaN"),
        ("kind = \"finetune\"\nepochs = 1\nlr = inf\n", 12, "`lr` = inf"),
        (
            "kind = \"finetune\"\nepochs = 1\nlr = 0.1\nmomentum = 1.5\n",
            13,
            "`momentum` = 1.5",
        ),
        (
            "kind = \"finetune\"\nepochs = 1\nlr = 0.1\nweight_decay = -1e-4\n",
            13,
            "`weight_decay` = -0.0001",
        ),
        (
            "kind = \"finetune\"\nepochs = 1\nlr = 0.1\ncrop_padding = 100000\n",
            13,
            "`crop_padding` = 100000",
        ),
        (
            "kind = \"finetune\"\nepochs = 1\nlr = 0.1\ndistill = { temperature = 0.0, alpha = 0.5 }\n",
            13,
            "temperature",
        ),
        (
            "kind = \"finetune\"\nepochs = 1\nlr = 0.1\n[stage.distill]\ntemperature = 2.0\nalpha = 1.5\n",
            13,
            "alpha",
        ),
        ("kind = \"threshold\"\nvalue = -1.0\n", 11, "`value` = -1"),
        ("kind = \"nm\"\nn = 0\nm = 4\n", 11, "0 < n < m"),
    ];
    for (stage, line, part) in cases {
        rejects(&with_stage(stage), line, &["stage 2", part]);
    }
}

#[test]
fn top_level_tables_are_checked_too() {
    let base = "[model]\narch = \"digits-mlp\"\n[data]\nname = \"digits\"\n";
    rejects(
        &format!("{base}calib_batches = 0\n"),
        5,
        &["[data]", "`calib_batches` = 0"],
    );
    rejects(
        &format!("{base}train_limit = 0\n"),
        5,
        &["[data]", "`train_limit` = 0"],
    );
    rejects(
        &format!("{base}[train]\nepochs = 3\nlr = 0.0\n"),
        7,
        &["[train]", "`lr` = 0", "positive"],
    );
    rejects(
        "[model]\narch = \"digits-cnn\"\nclasses = 0\n[data]\nname = \"digits\"\n",
        3,
        &["[model]", "`classes` = 0"],
    );
    rejects(
        "[model]\narch = \"digits-cnn\"\ninput = [1, 0, 8]\n[data]\nname = \"digits\"\n",
        3,
        &["[model]", "`input` = 0"],
    );
    // a field left at its default has no line of its own: the line of its table
    rejects(
        &with_stage("kind = \"unstructured\"\ntarget = 0.5\nschedule = \"gradual\"\n"),
        9,
        &["needs a `train` table"],
    );
}

#[test]
fn recipes_built_in_code_are_checked_without_a_line() {
    let mut r = parse(&with_stage("kind = \"layers\"\ncount = 1\n")).expect("a valid recipe");
    r.check().expect("valid");
    if let prunekit_recipe::Stage::Layers(l) = &mut r.stages[1] {
        l.count = 0;
    }
    let err = r.check().expect_err("count 0").to_string();
    assert_eq!(err, "stage 2 (layers): `count` = 0 must be at least 1");
}
