//! End-to-end tests of `prunekit zoo`: the list matches the zoo, created models load in the other
//! commands, and bad options are one-line errors with a non-zero exit.

mod common;
use common::*;

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
            vocab: None,
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
    assert_eq!(uint(&info, "/params"), uint(&again, "/params"));
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
