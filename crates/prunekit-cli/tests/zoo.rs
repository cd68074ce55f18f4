//! End-to-end tests of `prunekit zoo`: the list matches the zoo, created models load in the other
//! commands, and bad options are one-line errors with a non-zero exit.

use std::path::Path;
use std::process::{Command, Output};

fn prunekit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prunekit"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = prunekit(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = ok(args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {out}"))
}

/// Asserts a clean failure: non-zero exit, no panic, one line of error mentioning every `needles`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let out = prunekit(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: expected a one-line error, got: {err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "{args:?}: error `{err}` does not mention `{n}`"
        );
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn list_names_every_model_of_the_zoo() {
    let out = ok(&["zoo", "list"]);
    let lines: Vec<&str> = out.lines().collect();
    let first: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(first, prunekit_zoo::names());
    for (line, (name, description)) in lines.iter().zip(prunekit_zoo::MODELS) {
        assert_eq!(*line, format!("{name}  {description}"));
    }
}

#[test]
fn create_then_info() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("r20");
    let out = ok(&[
        "zoo",
        "create",
        "resnet20",
        "-o",
        s(&m),
        "--input",
        "1,28,28",
    ]);
    assert!(
        out.contains("resnet20") && out.contains("params") && out.contains("MACs"),
        "{out}"
    );
    let info = ok_json(&["info", s(&m), "--json"]);
    assert_eq!(info["inputs"][0]["shape"], serde_json::json!([1, 28, 28]));
    let g = prunekit_zoo::build_with(
        "resnet20",
        0,
        &prunekit_zoo::ZooOptions {
            input: Some(vec![1, 28, 28]),
            classes: None,
        },
    )
    .unwrap();
    assert_eq!(info["params"].as_u64(), Some(g.param_count() as u64));
    assert_eq!(info["macs"].as_u64(), Some(g.macs().unwrap()));
    // the text form of info works too
    assert!(ok(&["info", s(&m)]).contains("classifier"));

    // --json, --classes and --seed; a token model; an existing model may be overwritten
    let t = tmp.path().join("llama");
    let v = ok_json(&[
        "zoo",
        "create",
        "llama-tiny",
        "-o",
        s(&t),
        "--input",
        "16",
        "--classes",
        "100",
        "--seed",
        "3",
        "--json",
    ]);
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([16, 100]));
    assert_eq!(v["inputs"][0]["kind"], "ids");
    assert!(v["params"].as_u64().unwrap() > 0 && v["macs"].as_u64().unwrap() > 0);
    let again = ok_json(&["zoo", "create", "llama-tiny", "-o", s(&t), "--json"]);
    assert_eq!(again["outputs"][0]["shape"], serde_json::json!([32, 1000]));
    let info = ok_json(&["info", s(&t), "--json"]);
    assert_eq!(info["params"], again["params"]);
}

#[test]
fn bad_options_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let o = s(&out);
    fails_with(
        &["zoo", "create", "resnet20", "-o", o, "--input", "28,28"],
        &["resnet20", "[C, H, W]"],
    );
    fails_with(
        &["zoo", "create", "resnet20", "-o", o, "--input", "1,x,28"],
        &["1,x,28"],
    );
    fails_with(
        &["zoo", "create", "resnet20", "-o", o, "--input", "1,0,28"],
        &["resnet20", "positive"],
    );
    fails_with(
        &["zoo", "create", "fashion-cnn", "-o", o, "--input", "1,2,2"],
        &["fashion-cnn", "[1, 2, 2]"],
    );
    fails_with(
        &["zoo", "create", "bert-tiny", "-o", o, "--classes", "0"],
        &["bert-tiny", "classes"],
    );
    fails_with(
        &["zoo", "create", "resnet-9000", "-o", o],
        &["resnet-9000", "llama-tiny"],
    );
    assert!(!out.exists(), "nothing is written on a bad option");

    // a directory that holds something else is not overwritten
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep me").unwrap();
    fails_with(
        &["zoo", "create", "digits-mlp", "-o", s(&other)],
        &["not a model"],
    );
    assert!(!other.join("model.json").exists());
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "keep me"
    );
}
