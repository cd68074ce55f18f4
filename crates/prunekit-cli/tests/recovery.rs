//! Accuracy that survives pruning, end to end: BatchNorm re-calibration after pruning (on by default
//! with --calib, off with --no-recalibrate), the group-sparse training stage, and the report rows.

use std::path::{Path, PathBuf};

mod common;
use common::*;

/// The digits CNN (two BatchNorms) trained for a few epochs.
fn trained_cnn(dir: &Path) -> PathBuf {
    let m = dir.join("cnn");
    ok_json(&[
        "train",
        "--arch",
        "digits-cnn",
        "--data",
        "digits",
        "--epochs",
        "4",
        "-o",
        s(&m),
        "--json",
    ]);
    m
}

fn recalibration(v: &serde_json::Value) -> Option<&serde_json::Value> {
    v["stages"]
        .as_array()?
        .iter()
        .find(|s| s["kind"] == "structured")
        .and_then(|s| s["detail"].get("recalibration"))
}

#[test]
fn recalibration_is_on_with_data_and_reports_both_accuracies() {
    let tmp = tempfile::tempdir().unwrap();
    let m = trained_cnn(tmp.path());
    let out = tmp.path().join("p");
    let report = tmp.path().join("report");
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        s(&out),
        "--structured",
        "0.5",
        "--calib",
        "digits",
        "--report",
        s(&report),
        "--json",
    ]);
    let r = recalibration(&v).expect("a structured stage with data re-calibrates");
    assert_eq!(uint(r, "/batch_norms"), 2);
    assert_eq!(uint(r, "/samples"), 256);
    for k in ["without", "with"] {
        let a = r[k].as_f64().unwrap_or_else(|| panic!("no {k} in {r}"));
        assert!((0.0..=1.0).contains(&a), "{k} = {a}");
    }
    // the saved model carries the re-estimated statistics: its running mean differs from the
    // one a run without re-calibration saves
    let plain = tmp.path().join("plain");
    let w = ok_json(&[
        "prune",
        s(&m),
        "-o",
        s(&plain),
        "--structured",
        "0.5",
        "--calib",
        "digits",
        "--no-recalibrate",
        "--json",
    ]);
    assert!(
        recalibration(&w).is_none(),
        "--no-recalibrate still re-calibrated: {w}"
    );
    let stats = |dir: &Path| {
        let g = prunekit_io::native::load(dir, &candle_core::Device::Cpu).unwrap();
        g.node("batch_norm1").unwrap().params["running_mean"]
            .tensor()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_ne!(stats(&out), stats(&plain));
    // and the report shows the accuracy right after pruning without and with it
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("without BatchNorm re-calibration")
            && md.contains("with BatchNorm re-calibration"),
        "{md}"
    );
    // the text output says it too
    let text = ok(&[
        "prune",
        s(&m),
        "-o",
        s(&tmp.path().join("t")),
        "--structured",
        "0.5",
        "--calib",
        "digits",
    ]);
    assert!(text.contains("without BatchNorm re-calibration"), "{text}");
}

#[test]
fn sparse_training_runs_before_pruning_and_needs_data() {
    let tmp = tempfile::tempdir().unwrap();
    let m = trained_cnn(tmp.path());
    let out = tmp.path().join("s");
    let v = ok_json(&[
        "prune",
        s(&m),
        "-o",
        s(&out),
        "--sparse-train",
        "1",
        "--sparse-lambda",
        "0.01",
        "--structured",
        "0.5",
        "--calib",
        "digits",
        "--json",
    ]);
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages[0]["kind"], "sparse-train");
    assert_eq!(stages[1]["kind"], "structured");
    assert!(uint(&stages[0]["detail"], "/units") > 0);
    assert!(stages[0]["detail"]["final_penalty"].as_f64().unwrap() > 0.0);
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            s(&tmp.path().join("x")),
            "--sparse-train",
            "1",
            "--structured",
            "0.5",
        ],
        &["group-sparse training", "--calib"],
    );
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            s(&tmp.path().join("y")),
            "--sparse-train",
            "1",
            "--calib",
            "digits",
        ],
        &["nothing to do"],
    );
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            s(&tmp.path().join("z")),
            "--sparse-train",
            "1",
            "--sparse-lambda=-1",
            "--structured",
            "0.5",
            "--calib",
            "digits",
        ],
        &["lambda"],
    );
}
