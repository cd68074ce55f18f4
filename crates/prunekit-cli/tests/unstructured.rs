//! `prunekit prune` with unstructured and N:M masks, and the sparsity `info` reports: N:M leaves
//! non-divisible layers dense and says so (`--strict` refuses), the scope and criterion defaults
//! (lamp for global, row for wanda), and sparsity counted over weights only.

use std::path::{Path, PathBuf};

mod common;
use common::*;

fn zoo_model(dir: &Path, arch: &str) -> PathBuf {
    let m = dir.join(arch);
    ok(&["zoo", "create", arch, "-o", s(&m)]);
    m
}

#[test]
fn nm_on_the_readme_example_leaves_the_first_convolution_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let m = zoo_model(tmp.path(), "digits-cnn");
    let out = tmp.path().join("nm");
    // the README's command: succeeds, and the output names the layer left dense
    let text = ok(&["prune", s(&m), "-o", s(&out), "--nm", "2:4"]);
    assert!(
        text.contains("conv2d1.weight left dense") && text.contains("input size"),
        "{text}"
    );
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        s(&tmp.path().join("nm2")),
        "--nm",
        "2:4",
        "--json",
    ]);
    let d = &v["stages"][0]["detail"];
    let left = d["left_out"].as_array().unwrap();
    assert_eq!(left.len(), 1, "{d}");
    assert_eq!(left[0]["node"], "conv2d1");
    assert!((d["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-12, "{d}");
    for l in v["sparsity"].as_array().unwrap() {
        let (z, t) = (l["zeros"].as_u64().unwrap(), l["total"].as_u64().unwrap());
        if l["node"] == "conv2d1" {
            assert_eq!(z, 0, "{l}");
        } else {
            assert_eq!(2 * z, t, "{l}");
        }
    }
    // --strict makes it an error naming the layer
    let bad = tmp.path().join("bad");
    fails_with(
        &["prune", s(&m), "-o", s(&bad), "--nm", "2:4", "--strict"],
        &["conv2d1", "input size 1", "M = 4"],
    );
    assert!(!bad.exists());
}

#[test]
fn unstructured_defaults_follow_scope_and_criterion() {
    let tmp = tempfile::tempdir().unwrap();
    let m = zoo_model(tmp.path(), "digits-mlp");
    let out = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    // global without a criterion: lamp
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        &out("g"),
        "--unstructured",
        "0.5",
        "--scope",
        "global",
        "--json",
    ]);
    let d = &v["stages"][0]["detail"];
    assert_eq!(
        (d["criterion"].as_str(), d["scope"].as_str()),
        (Some("lamp"), Some("global"))
    );
    // an explicit scale-unsafe criterion globally gets a note
    let text = ok(&[
        "prune",
        s(&m),
        "-o",
        &out("l1"),
        "--unstructured",
        "0.5",
        "--scope",
        "global",
        "--criterion",
        "l1",
    ]);
    assert!(
        text.contains("note: criterion `l1` compares raw scores"),
        "{text}"
    );
    // wanda without a scope: rows
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        &out("w"),
        "--unstructured",
        "0.5",
        "--criterion",
        "wanda",
        "--calib",
        "digits",
        "--json",
    ]);
    let d = &v["stages"][0]["detail"];
    assert_eq!(
        (d["criterion"].as_str(), d["scope"].as_str()),
        (Some("wanda"), Some("row"))
    );
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        &out("r"),
        "--unstructured",
        "0.5",
        "--scope",
        "row",
        "--json",
    ]);
    assert_eq!(v["stages"][0]["detail"]["scope"], "row");
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            &out("bad"),
            "--structured",
            "0.5",
            "--scope",
            "row",
        ],
        &["--scope row", "--unstructured"],
    );
}

#[test]
fn info_sparsity_counts_weights_not_zero_biases() {
    let tmp = tempfile::tempdir().unwrap();
    // digits-cnn's BatchNorm biases start at zero: they are not sparsity
    let m = zoo_model(tmp.path(), "digits-cnn");
    let v = ok_json(&["info", s(&m), "--json"]);
    assert_eq!(v["sparsity"].as_f64(), Some(0.0), "{}", v["sparsity"]);
    assert!(v["nonzeros"].as_u64().unwrap() < v["params"].as_u64().unwrap());
    for l in v["layers"].as_array().unwrap() {
        assert_eq!(l["sparsity"].as_f64(), Some(0.0), "{l}");
    }
    let text = ok(&["info", s(&m)]);
    assert!(
        text.contains("sparsity: zeros among the weight matrices"),
        "{text}"
    );
    // after masking half the weights, info, eval and prune agree
    let p = tmp.path().join("half");
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        s(&p),
        "--unstructured",
        "0.5",
        "--json",
    ]);
    let info = ok_json(&["info", s(&p), "--json"]);
    let sparsity = info["sparsity"].as_f64().unwrap();
    assert!((sparsity - 0.5).abs() < 1e-3, "{sparsity}");
    assert_eq!(v["after"]["weight_sparsity"].as_f64(), Some(sparsity));
    let e = ok_json(&["eval", s(&p), "--data", "digits", "--json"]);
    assert_eq!(e["weight_sparsity"].as_f64(), Some(sparsity));
    assert_eq!(e["nonzeros"], info["nonzeros"]);
}
