//! Issue 14 §2 through the CLI: a recipe on the `fashion-detect` canvases prints the detection
//! metrics by their standard names, and `--report` draws the detection pictures. Needs
//! Fashion-MNIST (Debian package `dataset-fashion-mnist`); skips with a message without it.

mod common;
use common::ok_json;

#[test]
fn a_detection_recipe_reports_map_by_name_with_pictures() {
    let dir = std::path::Path::new(prunekit_data::FASHION_MNIST_DIR);
    if !dir.join("t10k-labels-idx1-ubyte.gz").is_file()
        && !dir.join("t10k-labels-idx1-ubyte").is_file()
    {
        eprintln!(
            "skipped: Fashion-MNIST is not installed in {} (apt-get install dataset-fashion-mnist)",
            dir.display()
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let recipe = root.path().join("detect.toml");
    std::fs::write(
        &recipe,
        r#"
[model]
arch = "yolo-tiny"
[data]
name = "fashion-detect"
train_limit = 256
test_limit = 64
calib_batches = 2
calib_batch_size = 16
[train]
epochs = 1
lr = 0.002
batch_size = 32
optimizer = "adamw"
[[stage]]
kind = "structured"
ratio = 0.32
[[stage]]
kind = "finetune"
epochs = 1
lr = 0.001
batch_size = 32
optimizer = "adamw"
"#,
    )
    .unwrap();
    let report = root.path().join("report");
    let r = recipe.to_str().unwrap();
    let out = ok_json(&["run", r, "--json", "--report", report.to_str().unwrap()]);
    for side in ["before", "after"] {
        let m = &out[side];
        assert_eq!(m["headline"], "map@0.5", "{m}");
        for k in [
            "map@0.5",
            "map@0.5:0.95",
            "params",
            "macs",
            "latency_ms",
            "file_bytes",
        ] {
            assert!(m[k].is_number(), "{side}.{k} in {m}");
        }
    }
    let (b, a) = (
        out["before"]["macs"].as_u64().unwrap(),
        out["after"]["macs"].as_u64().unwrap(),
    );
    assert!(a * 2 <= b + b / 50, "2x fewer MACs: {b} -> {a}");
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert_eq!(
        html.matches("<svg class=\"det\"").count(),
        8,
        "4 pictures before and after"
    );
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("### Detections of"), "{md}");
}
