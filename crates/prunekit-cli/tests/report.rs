//! End-to-end tests of `prunekit report` and `prunekit compare`: the three files carry the measured
//! numbers, the HTML stands alone, and bad input (models with different inputs, an output directory
//! that cannot be written, a dataset that does not fit) is a one-line error.

use std::path::{Path, PathBuf};

mod common;
use common::*;
use prunekit_report::fmt::{int, ms, pct};

/// A digits CNN (untrained: the numbers need not be good, only measured) and a pruned copy.
fn models(dir: &Path) -> (PathBuf, PathBuf) {
    let dense = dir.join("dense");
    let pruned = dir.join("pruned");
    ok(&["zoo", "create", "digits-cnn", "-o", s(&dense)]);
    ok_json(&[
        "prune",
        s(&dense),
        "-o",
        s(&pruned),
        "--structured",
        "0.5",
        "--unstructured",
        "0.5",
        "--json",
    ]);
    (dense, pruned)
}

#[test]
fn before_after_report_carries_the_measured_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let (dense, pruned) = models(tmp.path());
    let out = tmp.path().join("out/report");
    let printed = ok_json(&[
        "report",
        s(&dense),
        s(&pruned),
        "--data",
        "digits",
        "-o",
        s(&out),
        "--latency-batch",
        "8",
        "--json",
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(printed, json, "--json prints what report.json holds");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(html.contains("<svg") && html.contains("<style>"));
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "only the three report files: {names:?}");

    assert_eq!(json["dataset"]["name"], "digits");
    let models = json["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for m in models {
        let sm = &m["summary"];
        let u = |k: &str| sm[k].as_u64().unwrap();
        let mut want = vec![
            pct(sm["accuracy"].as_f64().unwrap()),
            format!("{:.4}", sm["loss"].as_f64().unwrap()),
            int(u("params")),
            int(u("nonzeros")),
            int(u("macs")),
            int(u("effective_macs")),
            ms(sm["latency"]["median_ms"].as_f64().unwrap()),
            ms(sm["latency"]["p90_ms"].as_f64().unwrap()),
            int(u("file_bytes")),
            ms(m["latency_batch"]["median_ms"].as_f64().unwrap()),
            pct(m["gap"]["train"]["metrics"]["accuracy"].as_f64().unwrap()),
        ];
        assert_eq!(m["latency_batch"]["batch"], 8);
        assert_eq!(
            uint(sm, "/latency/threads"),
            uint(m, "/latency_batch/threads")
        );
        if let Some(mem) = m["memory"].as_object() {
            want.push(int(mem["delta_kb"].as_u64().unwrap()));
            want.push(int(mem["peak_kb"].as_u64().unwrap()));
        }
        for l in m["layers"].as_array().unwrap() {
            want.push(int(l["params"].as_u64().unwrap()));
            want.push(pct(l["sparsity"].as_f64().unwrap()));
            want.push(int(l["macs"].as_u64().unwrap()));
        }
        for w in &want {
            assert!(md.contains(w.as_str()), "report.md lacks {w}");
            assert!(html.contains(w.as_str()), "report.html lacks {w}");
        }
    }
    // the comparison: pruned has fewer params, and the ratio is after / before
    let rows = json["comparison"]["rows"].as_array().unwrap();
    let params = rows.iter().find(|r| r["measure"] == "params").unwrap();
    let (b, a) = (
        params["before"].as_f64().unwrap(),
        params["after"].as_f64().unwrap(),
    );
    assert!(a < b);
    assert!((params["ratio"].as_f64().unwrap() - a / b).abs() < 1e-12);
    assert!(html.contains(&format!("{:.2}×", a / b)));
    // the pruned model's first conv lost half its channels
    let layers = json["comparison"]["layers"].as_array().unwrap();
    assert_eq!(layers[0]["before_width"], 16);
    assert_eq!(layers[0]["after_width"], 8);
}

#[test]
fn one_model_report_and_compare_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (dense, pruned) = models(tmp.path());
    let out = tmp.path().join("one");
    let text = ok(&[
        "report",
        s(&dense),
        "--data",
        "digits",
        "-o",
        s(&out),
        "--latency-batch",
        "1",
    ]);
    assert!(text.contains("report.html"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["models"].as_array().unwrap().len(), 1);
    assert!(json["comparison"].is_null());
    assert!(json["models"][0]["latency_batch"].is_null());

    let table = ok(&["compare", s(&dense), s(&pruned), "--data", "digits"]);
    for needle in [
        "params",
        "MACs",
        "latency, batch 1",
        "after/before",
        "dense",
        "pruned",
    ] {
        assert!(
            table.contains(needle),
            "compare table lacks {needle}: {table}"
        );
    }
    let v = ok_json(&[
        "compare",
        s(&dense),
        s(&pruned),
        "--data",
        "digits",
        "--json",
    ]);
    assert_eq!(v["comparison"]["before"], "dense");
    assert_eq!(v["comparison"]["after"], "pruned");
}

#[test]
fn bad_input_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (dense, _) = models(tmp.path());
    let wide = tmp.path().join("wide");
    ok(&[
        "zoo",
        "create",
        "digits-cnn",
        "-o",
        s(&wide),
        "--input",
        "1,28,28",
    ]);
    let out = tmp.path().join("out");
    // models whose inputs differ: both shapes named
    fails_with(
        &["compare", s(&dense), s(&wide), "--data", "digits"],
        &["different inputs", "[1, 8, 8]", "[1, 28, 28]"],
    );
    fails_with(
        &[
            "report",
            s(&dense),
            s(&wide),
            "--data",
            "digits",
            "-o",
            s(&out),
        ],
        &["different inputs", "[1, 8, 8]", "[1, 28, 28]"],
    );
    // a model that does not fit the data
    fails_with(
        &["report", s(&wide), "--data", "digits", "-o", s(&out)],
        &["[1, 28, 28]", "[1, 8, 8]"],
    );
    // an output "directory" that is a file, or lies under one: nothing written
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    fails_with(
        &["report", s(&dense), "--data", "digits", "-o", s(&file)],
        &["not a directory"],
    );
    fails_with(
        &[
            "report",
            s(&dense),
            "--data",
            "digits",
            "-o",
            s(&file.join("sub")),
        ],
        &["not a directory"],
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    // an empty data directory, a missing model, a zero batch
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails_with(
        &["report", s(&dense), "--data", s(&empty), "-o", s(&out)],
        &["cannot load data"],
    );
    fails_with(
        &[
            "compare",
            s(&dense),
            s(&tmp.path().join("nope")),
            "--data",
            "digits",
        ],
        &["nope"],
    );
    fails_with(
        &[
            "report",
            s(&dense),
            "--data",
            "digits",
            "-o",
            s(&out),
            "--latency-batch",
            "0",
        ],
        &["--latency-batch"],
    );
    assert!(!out.exists(), "no report directory after failures");
}
