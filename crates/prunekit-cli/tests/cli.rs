//! End-to-end tests of the `prunekit` binary: the commands chain on model directories, `--json` prints
//! what it promises, and bad input is a one-line error with a non-zero exit, never a panic.

use std::path::{Path, PathBuf};

mod common;
use common::*;

/// A small trained model (one epoch of the digits MLP).
fn trained_model(dir: &Path) -> PathBuf {
    let m = dir.join("mlp");
    let v = ok_json(&[
        "train",
        "--arch",
        "digits-mlp",
        "--data",
        "digits",
        "--epochs",
        "5",
        "-o",
        s(&m),
        "--json",
    ]);
    assert_eq!(v["epochs"].as_array().map(|a| a.len()), Some(5));
    m
}

#[test]
fn train_info_prune_finetune_eval_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let m = trained_model(tmp.path());
    let info = ok_json(&["info", s(&m), "--json"]);
    assert_eq!(
        info["params"],
        64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    );
    assert_eq!(info["layers"].as_array().unwrap().len(), 6);

    let p = tmp.path().join("pruned");
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        s(&p),
        "--structured",
        "0.5",
        "--unstructured",
        "0.5",
        "--json",
    ]);
    let (b, a) = (
        v["before"]["params"].as_u64().unwrap(),
        v["after"]["params"].as_u64().unwrap(),
    );
    assert!(
        a < b / 2,
        "structured 0.5 removes at least half the params: {b} -> {a}"
    );
    assert!(v["after"]["nonzeros"].as_u64().unwrap() < a);
    let info = ok_json(&["info", s(&p), "--json"]);
    assert_eq!(
        info["params"].as_u64(),
        Some(a),
        "the saved model has the pruned widths"
    );

    let f = tmp.path().join("finetuned");
    ok_json(&["finetune", s(&p), "-o", s(&f), "--epochs", "3", "--json"]);
    let e = ok_json(&["eval", s(&f), "--json"]);
    assert_eq!(
        e["dataset"], "digits",
        "the dataset is remembered in the model"
    );
    assert!(e["accuracy"].as_f64().unwrap() > 0.5);
    assert_eq!(
        uint(&e, "/nonzeros"),
        uint(&v, "/after/nonzeros"),
        "fine-tuning keeps the masks"
    );
}

#[test]
fn bad_input_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let m = trained_model(tmp.path());
    fails_with(&["info", "/no/such/model"], &["/no/such/model"]);
    fails_with(
        &["prune", s(&m), "-o", s(&m), "--structured", "0.5"],
        &["overwrite"],
    );
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            s(&tmp.path().join("x")),
            "--structured",
            "1.5",
        ],
        &["1.5"],
    );
    fails_with(
        &["eval", s(&m), "--data", "/no/such/data"],
        &["/no/such/data", "does not exist"],
    );
    fails_with(
        &[
            "train",
            "--arch",
            "resnet-9000",
            "--data",
            "digits",
            "-o",
            s(&tmp.path().join("y")),
        ],
        &["resnet-9000"],
    );

    // corrupt files, each in a copy of the model
    let copy = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["model.json", "model.safetensors"] {
            std::fs::copy(m.join(f), d.join(f)).unwrap();
        }
        d
    };
    let d = copy("truncated");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&["info", s(&d)], &["model.safetensors"]);

    let d = copy("badjson");
    std::fs::write(d.join("model.json"), "{ not json").unwrap();
    fails_with(&["info", s(&d)], &["model.json"]);

    let d = copy("unknownop");
    let text = std::fs::read_to_string(d.join("model.json"))
        .unwrap()
        .replacen("\"relu\"", "\"frobnicate\"", 1);
    std::fs::write(d.join("model.json"), text).unwrap();
    fails_with(&["info", s(&d)], &["model.json", "frobnicate"]);

    let d = copy("misfit");
    let text = std::fs::read_to_string(d.join("model.json"))
        .unwrap()
        .replacen("\"in_features\": 128", "\"in_features\": 127", 1);
    std::fs::write(d.join("model.json"), text).unwrap();
    fails_with(&["info", s(&d)], &["linear2"]);

    let d = copy("nosafetensors");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    fails_with(&["eval", s(&d)], &["model.safetensors"]);
    // the input model was never touched
    assert!(m.join("model.json").exists() && m.join("model.safetensors").exists());
}

#[test]
fn demo_json_has_before_and_after() {
    let tmp = tempfile::tempdir().unwrap();
    let v = ok_json(&["demo", "--json", "--save", s(tmp.path())]);
    for side in ["before", "after"] {
        for key in ["accuracy", "params", "nonzeros", "macs", "latency_ms"] {
            assert!(v[side][key].is_number(), "{side}.{key} missing in {v}");
        }
    }
    let (b, a) = (&v["before"], &v["after"]);
    assert!(
        b["accuracy"].as_f64().unwrap() > 0.9,
        "the dense CNN learns digits: {b}"
    );
    assert!(
        a["accuracy"].as_f64().unwrap() > 0.85,
        "the pruned CNN recovers: {a}"
    );
    assert!(a["macs"].as_u64().unwrap() * 3 < b["macs"].as_u64().unwrap());
    assert!(a["nonzeros"].as_u64().unwrap() * 5 < b["nonzeros"].as_u64().unwrap());
    assert!(tmp.path().join("pruned/model.json").exists());
}

#[test]
fn structured_prune_verifies_against_masking_and_rejects_bad_options() {
    let tmp = tempfile::tempdir().unwrap();
    let m = trained_model(tmp.path());
    let out = tmp.path().join("p");
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        s(&out),
        "--structured",
        "0.5",
        "--criterion",
        "l2",
        "--round-to",
        "8",
        "--verify",
        "--json",
    ]);
    let err = v["verify"]["max_rel_error"].as_f64().unwrap();
    assert!(err <= 1e-5, "{v}");
    assert!(uint(&v, "/after/params") < uint(&v, "/before/params"));
    assert!(uint(&v, "/after/macs") < uint(&v, "/before/macs"));
    let widths: Vec<u64> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["after"].as_u64().unwrap())
        .collect();
    assert!(
        !widths.is_empty() && widths.iter().all(|w| w % 8 == 0),
        "{widths:?}"
    );
    // a protected layer keeps its width
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        s(&tmp.path().join("q")),
        "--structured",
        "0.5",
        "--protect",
        "linear1",
        "--json",
    ]);
    let g0 = &v["groups"][0];
    assert_eq!(uint(g0, "/before"), uint(g0, "/after"), "{v}");
    let bad = s(&tmp.path().join("bad")).to_string();
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            &bad,
            "--structured",
            "0.5",
            "--protect",
            "nope",
        ],
        &["nope"],
    );
    fails_with(&["prune", s(&m), "-o", &bad, "--verify"], &["--structured"]);
    fails_with(
        &["prune", s(&m), "-o", &bad, "--layers", "1"],
        &["cannot remove 1 layers"],
    );
    assert!(!tmp.path().join("bad").exists(), "nothing half-written");
}

#[test]
fn layers_and_channels_of_a_zoo_resnet() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("r20");
    ok_json(&[
        "zoo",
        "create",
        "resnet20",
        "-o",
        s(&m),
        "--input",
        "1,16,16",
        "--json",
    ]);
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        s(&tmp.path().join("p")),
        "--layers",
        "2",
        "--structured",
        "0.3",
        "--scope",
        "global",
        "--verify",
        "--json",
    ]);
    assert_eq!(v["layers"]["removed"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["layers"]["scores"].as_array().unwrap().len(), 7, "{v}");
    assert!(
        v["verify"]["max_rel_error"].as_f64().unwrap() <= 1e-5,
        "{v}"
    );
    let (b, a) = (&v["before"]["macs"], &v["after"]["macs"]);
    assert!(a.as_u64().unwrap() < b.as_u64().unwrap() / 2, "{v}");
}

#[test]
fn criteria_nm_and_schedules_from_the_prune_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let m = trained_model(tmp.path());
    let out = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    // 2:4 by magnitude: exactly half of every prunable weight
    let v = ok_json(&["prune", s(&m), "-o", &out("nm"), "--nm", "2:4", "--json"]);
    for l in v["sparsity"].as_array().unwrap() {
        assert_eq!(
            2 * l["zeros"].as_u64().unwrap(),
            l["total"].as_u64().unwrap(),
            "{l}"
        );
    }
    // a data-driven criterion with calibration data, structured, verified
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        &out("taylor"),
        "--structured",
        "0.5",
        "--criterion",
        "taylor",
        "--calib",
        "digits",
        "--verify",
        "--json",
    ]);
    assert!(
        v["verify"]["max_rel_error"].as_f64().unwrap() <= 1e-5,
        "{v}"
    );
    // gradual unstructured to 70% while training on the calibration data
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        &out("gradual"),
        "--unstructured",
        "0.7",
        "--schedule",
        "gradual",
        "--calib",
        "digits",
        "--epochs",
        "1",
        "--json",
    ]);
    let (z, t) = v["sparsity"]
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |(z, t), l| {
            (
                z + l["zeros"].as_u64().unwrap(),
                t + l["total"].as_u64().unwrap(),
            )
        });
    assert!((z as f64 / t as f64 - 0.7).abs() < 0.01, "{v}");
    let bad = out("bad");
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            &bad,
            "--structured",
            "0.5",
            "--criterion",
            "magic",
        ],
        &["magic", "taylor", "wanda"],
    );
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            &bad,
            "--unstructured",
            "0.5",
            "--criterion",
            "taylor",
        ],
        &["taylor", "data"],
    );
    fails_with(&["prune", s(&m), "-o", &bad, "--nm", "5:6"], &["64", "6"]);
    fails_with(&["prune", s(&m), "-o", &bad, "--nm", "two:four"], &["N:M"]);
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            &bad,
            "--unstructured",
            "0.5",
            "--schedule",
            "gradual",
        ],
        &["data"],
    );
    assert!(!tmp.path().join("bad").exists());
}

#[test]
fn sensitivity_proposal_feeds_a_recipe_and_sweep_measures_levels() {
    let tmp = tempfile::tempdir().unwrap();
    let m = trained_model(tmp.path());
    let prop = tmp.path().join("proposal.json");
    let v = ok_json(&[
        "sensitivity",
        s(&m),
        "--data",
        "digits",
        "--ratios",
        "0.25,0.5",
        "--target",
        "0.3",
        "-o",
        s(&prop),
        "--json",
    ]);
    assert_eq!(
        v["sensitivity"]["curves"].as_array().unwrap().len(),
        2,
        "{v}"
    );
    assert!(
        v["proposal"]["predicted_saving"].as_f64().unwrap() >= 0.3,
        "{v}"
    );
    let recipe = tmp.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "[model]\npath = \"{}\"\n[data]\nname = \"digits\"\n[[stage]]\nkind = \"structured\"\nratio = 0.0\nproposal = \"{}\"\n",
            s(&m),
            s(&prop)
        ),
    )
    .unwrap();
    let r = ok_json(&["run", s(&recipe), "--json"]);
    let saved = 1.0 - r["after"]["macs"].as_f64().unwrap() / r["before"]["macs"].as_f64().unwrap();
    assert!(saved >= 0.3 - 1e-9, "{r}");
    let v = ok_json(&[
        "sweep",
        s(&m),
        "--data",
        "digits",
        "--unstructured",
        "0.5,0.9",
        "--json",
    ]);
    let pts = v["points"].as_array().unwrap();
    assert_eq!(pts.len(), 3, "{v}");
    assert!(uint(&pts[2], "/nonzeros") < uint(&pts[1], "/nonzeros"));
    fails_with(
        &[
            "sweep",
            s(&m),
            "--data",
            "digits",
            "--structured",
            "0.5,1.2",
        ],
        &["1.2"],
    );
    fails_with(
        &[
            "sensitivity",
            s(&m),
            "--data",
            "digits",
            "--granularity",
            "blocks",
        ],
        &["blocks"],
    );
}

#[test]
fn report_flag_on_prune_run_sensitivity_and_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let m = trained_model(tmp.path());
    let rep = |n: &str| tmp.path().join(n);
    let read = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("report.json")).unwrap()).unwrap()
    };
    ok_json(&[
        "prune",
        s(&m),
        "-o",
        s(&rep("p")),
        "--structured",
        "0.5",
        "--report",
        s(&rep("rp")),
        "--json",
    ]);
    let r = read(&rep("rp"));
    assert_eq!(r["models"].as_array().unwrap().len(), 2);
    assert!(r["comparison"].is_object());
    assert!(std::fs::read_to_string(rep("rp").join("report.html"))
        .unwrap()
        .contains("<svg"));
    ok_json(&[
        "sensitivity",
        s(&m),
        "--ratios",
        "0.5",
        "--report",
        s(&rep("rs")),
        "--json",
    ]);
    assert_eq!(
        read(&rep("rs"))["sensitivity"]["curves"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    ok_json(&[
        "sweep",
        s(&m),
        "--unstructured",
        "0.5",
        "--report",
        s(&rep("rw")),
        "--json",
    ]);
    assert_eq!(
        read(&rep("rw"))["sweeps"][0]["points"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let recipe = tmp.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "[model]\npath = \"{}\"\n[data]\nname = \"digits\"\n[[stage]]\nkind = \"unstructured\"\ntarget = 0.5\n",
            s(&m)
        ),
    )
    .unwrap();
    ok_json(&["run", s(&recipe), "--report", s(&rep("rr")), "--json"]);
    let r = read(&rep("rr"));
    let after = &r["models"][1]["summary"];
    assert!(uint(after, "/nonzeros") < uint(&r, "/models/0/summary/nonzeros"));
    // an unwritable report directory fails before any work
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            s(&rep("p2")),
            "--structured",
            "0.5",
            "--report",
            s(&file.join("r")),
        ],
        &["not a directory"],
    );
    assert!(!rep("p2").exists());
}

#[test]
fn groups_a_criterion_cannot_score_are_kept_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let cnn = tmp.path().join("cnn");
    ok(&["zoo", "create", "digits-cnn", "-o", s(&cnn)]);
    let (p, q) = (tmp.path().join("p"), tmp.path().join("q"));
    let args = ["--structured", "0.5", "--criterion", "bn-scale"];
    let text = ok(&[&["prune", s(&cnn), "-o", s(&p)], &args[..]].concat());
    assert!(
        text.contains(
            "linear1 (channels): not scored, kept whole: criterion `bn-scale` scores BatchNorm \
             scales and no BatchNorm follows this group"
        ),
        "{text}"
    );
    let v = ok_json(&[&["prune", s(&cnn), "-o", s(&q), "--json"], &args[..]].concat());
    let unscored = v["stages"][0]["detail"]["unscored"].as_array().unwrap();
    assert_eq!(unscored.len(), 1, "{v}");
    assert_eq!(unscored[0]["group"], "linear1");
    let linear = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|gp| gp["group"] == "linear1")
        .unwrap();
    assert_eq!(linear["before"], linear["after"]);
    // nothing the criterion can score: an error naming it
    let lstm = tmp.path().join("lstm");
    ok(&["zoo", "create", "lstm-classifier", "-o", s(&lstm)]);
    fails_with(
        &[
            "prune",
            s(&lstm),
            "-o",
            s(&tmp.path().join("r")),
            "--structured",
            "0.5",
            "--criterion",
            "fpgm",
        ],
        &["`fpgm`", "lstm1/units", "lstm2/units"],
    );
}

#[test]
fn structured_prune_reports_shortfalls_head_counts_and_refuses_removing_every_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let out = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let cnn = out("cnn");
    ok_json(&["zoo", "create", "digits-cnn", "-o", &cnn, "--json"]);
    let after = |v: &serde_json::Value| -> Vec<u64> {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["after"].as_u64().unwrap())
            .collect()
    };
    // three steps end at the widths of one
    let v = ok_json(&[
        "prune",
        &cnn,
        "-o",
        &out("steps"),
        "--structured",
        "0.5",
        "--steps",
        "3",
        "--verify",
        "--json",
    ]);
    assert_eq!(after(&v), vec![8, 16, 32], "{v}");
    assert!(v["verify"]["max_rel_error"].as_f64().unwrap() <= 1e-5);
    // one line per group pruned less than asked, naming the group and the reason
    let short_args = |o: &str, json: bool| -> Vec<String> {
        let mut v: Vec<String> = [
            "prune",
            &cnn,
            "-o",
            o,
            "--structured",
            "0.5",
            "--protect",
            "conv2d1",
            "--round-to",
            "12",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if json {
            v.push("--json".into());
        }
        v
    };
    let args = short_args(&out("short"), false);
    let text = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        text.contains("shortfall: conv2d1: removed 0 of the 8 units asked")
            && text.contains("`conv2d1`"),
        "{text}"
    );
    assert!(
        text.contains("shortfall: conv2d2: removed 8 of the 16 units asked")
            && text.contains("round_to 12 keeps 24"),
        "{text}"
    );
    let args = short_args(&out("short2"), true);
    let v = ok_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let short = v["shortfalls"].as_array().unwrap();
    assert_eq!(short.len(), 3, "{v}");
    assert_eq!(short[0]["limits"][0], "protected", "{v}");
    // a run that removes nothing succeeds but says so on stderr
    let r = prunekit(&["prune", &cnn, "-o", &out("none"), "--structured", "0.01"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(
        err.contains("warning: structured pruning removed nothing")
            && err.contains("less than one unit")
            && err.contains("`linear1`, has 64"),
        "{err}"
    );
    // one that can remove nothing at all fails
    let bad = out("bad");
    fails_with(
        &[
            "prune",
            &cnn,
            "-o",
            &bad,
            "--structured",
            "0.5",
            "--protect",
            "conv2d1",
            "--protect",
            "conv2d2",
            "--protect",
            "linear1",
        ],
        &["nothing can be removed", "`linear1`"],
    );
    // grouped-query attention: half of the query heads go, and the report says what was saved
    let llama = out("llama");
    ok_json(&["zoo", "create", "llama-tiny", "-o", &llama, "--json"]);
    let v = ok_json(&[
        "prune",
        &llama,
        "-o",
        &out("llama-half"),
        "--structured",
        "0.5",
        "--json",
    ]);
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("llama-half").join("model.json")).unwrap(),
    )
    .unwrap();
    let attention: Vec<(u64, u64)> = saved["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["op"]["type"] == "attention")
        .map(|n| {
            let op = &n["op"];
            (
                op["num_heads"].as_u64().unwrap(),
                op["num_kv_heads"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(attention, vec![(4, 2), (4, 2)]);
    let reported: Vec<(u64, u64)> = v["attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["heads_after"].as_u64().unwrap(),
                h["kv_heads_after"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(reported, attention, "{v}");
    // --layers N must leave one removable layer: resnet20 has 7
    let r20 = out("r20");
    ok_json(&[
        "zoo", "create", "resnet20", "-o", &r20, "--input", "1,16,16", "--json",
    ]);
    fails_with(
        &["prune", &r20, "-o", &bad, "--layers", "7"],
        &["cannot remove 7 layers", "7 removable layers", "at most 6"],
    );
    assert!(!tmp.path().join("bad").exists(), "nothing half-written");
}

/// `eval` without a dataset (none given, none recorded): the measures that need none, no refusal.
#[test]
fn eval_without_a_dataset_reports_what_needs_none() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("mlp");
    ok_json(&["zoo", "create", "mlp", "-o", s(&m), "--json"]);
    let e = ok_json(&["eval", s(&m), "--latency-batch", "4", "--json"]);
    assert!(e["dataset"].is_null(), "{e}");
    assert!(
        e["headline"].is_null() && e.get("accuracy").is_none(),
        "{e}"
    );
    for k in ["params", "nonzeros", "macs", "file_bytes"] {
        assert!(e[k].as_u64().unwrap() > 0, "{k}: {e}");
    }
    assert!(e["latency"]["median_ms"].as_f64().unwrap() > 0.0, "{e}");
    assert_eq!(e["latency_batch"]["batch"], 4, "{e}");
    let out = ok(&["eval", s(&m)]);
    assert!(out.contains("none (pass --data"), "{out}");
}
