//! Third-party ONNX files: the "light" ONNX model-zoo networks that the `onnx` package (PyPI,
//! Apache-2.0) ships in `onnx/backend/test/data/light` (ResNet-50, SqueezeNet, VGG-19, ShuffleNet,
//! DenseNet-121, Inception v1/v2, AlexNet, ZFNet-512 at opset 9, written by the ONNX project with
//! their weights replaced by generated constants, which scripts/onnx_randomize_weights.py turns into
//! seeded random initializers so the comparison means something). Each is imported, run on a random input and
//! compared with onnxruntime; it is also pruned structurally with --verify and written back as
//! ONNX, which onnxruntime must run. The networks whose ops prunekit does not implement must fail
//! with an error naming every such node. Needs scripts/setup-onnxruntime.sh (installs onnx too);
//! skips with a message without it.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use prunekit_graph::Executor;

fn ort_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PRUNEKIT_ORT_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-onnx/bin/python");
    p.exists().then_some(p)
}

fn light_dir(py: &Path) -> Option<PathBuf> {
    let out = std::process::Command::new(py)
        .args([
            "-c",
            "import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), 'backend/test/data/light'))",
        ])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_dir().then_some(p)
}

/// (file stem, what it must do: Ok = import and agree, Err(substring) = the expected error)
const MODELS: &[(&str, Result<(), &str>)] = &[
    ("light_resnet50", Ok(())),
    ("light_squeezenet", Ok(())),
    ("light_bvlc_alexnet", Err("LRN")),
    ("light_zfnet512", Err("LRN")),
    ("light_inception_v1", Err("LRN")),
    ("light_shufflenet", Err("count_include_pad = 0")),
    ("light_inception_v2", Err("asymmetric pads")),
];

/// onnxruntime's outputs against `y`; `checker`: also run onnx.checker (our own exports; the
/// model zoo's originals predate the IR rules it checks)
fn ort_check(py: &Path, model: &Path, x: &Path, y: &Path, checker: bool) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ort_check.py");
    let mut cmd = std::process::Command::new(py);
    cmd.arg(script).arg(model);
    if !checker {
        cmd.arg("--no-checker");
    }
    let out = cmd
        .arg("--inputs")
        .arg(x)
        .arg("--expect")
        .arg(y)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}: onnxruntime disagrees: {text} {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap()
}

#[test]
fn model_zoo_networks_import_prune_and_agree_with_onnxruntime() {
    let Some(py) = ort_python() else {
        eprintln!("SKIPPED: onnxruntime not installed (run scripts/setup-onnxruntime.sh)");
        return;
    };
    let Some(dir) = light_dir(&py) else {
        eprintln!("SKIPPED: the onnx package's light models are not installed (run scripts/setup-onnxruntime.sh)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    let randomize =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/onnx_randomize_weights.py");
    // VGG-19 (20 GMACs a forward pass) only on request: PRUNEKIT_ONNX_ZOO_ALL=1
    let mut models = MODELS.to_vec();
    if std::env::var_os("PRUNEKIT_ONNX_ZOO_ALL").is_some() {
        models.push(("light_vgg19", Ok(())));
        models.push(("light_densenet121", Ok(())));
    }
    for (stem, want) in &models {
        // the light files generate every weight as one constant: give them random values first
        let path = tmp.path().join(format!("{stem}.onnx"));
        let status = std::process::Command::new(&py)
            .arg(&randomize)
            .arg(dir.join(format!("{stem}.onnx")))
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "{stem}: randomising its weights failed");
        let got = prunekit_io::load(&path, &Device::Cpu);
        match (want, got) {
            (Err(what), Err(e)) => {
                let e = e.to_string();
                assert!(e.contains(what), "{stem}: {e}");
                lines.push(format!("{stem}: refused as expected ({what})"));
            }
            (Err(what), Ok(_)) => panic!("{stem}: expected an error about {what}"),
            (Ok(()), Err(e)) => panic!("{stem}: {e}"),
            (Ok(()), Ok(g)) => {
                let mut dims = vec![1];
                dims.extend_from_slice(&g.inputs[0].shape);
                let x = Tensor::randn(0f32, 1.0, dims, &Device::Cpu).unwrap();
                let y = Executor::new(0).eval(&g, std::slice::from_ref(&x)).unwrap();
                let xp = tmp.path().join(format!("{stem}.x.npy"));
                let yp = tmp.path().join(format!("{stem}.y.npy"));
                prunekit_io::npy::write(&xp, &x).unwrap();
                prunekit_io::npy::write(&yp, &y[0]).unwrap();
                let dense = ort_check(&py, &path, &xp, &yp, false);
                // prune, check the rewrite against masking, write it, and run the file in onnxruntime
                let mut pruned = g.try_clone().unwrap();
                let report = prunekit_prune::prune_structured(
                    &mut pruned,
                    &prunekit_prune::StructuredConfig::new(0.3),
                    &prunekit_prune::Norm::L1,
                )
                .unwrap();
                let check =
                    prunekit_prune::verify(&g, &pruned, &report.removed(), &[vec![x.clone()]])
                        .unwrap();
                assert!(check.max_rel_error < 1e-4, "{stem}: {check:?}");
                let out = tmp.path().join(format!("{stem}-pruned.onnx"));
                prunekit_io::save(&pruned, &out, Some(&path)).unwrap();
                let yq = Executor::new(0).eval(&pruned, &[x]).unwrap();
                prunekit_io::npy::write(&yp, &yq[0]).unwrap();
                let small = ort_check(&py, &out, &xp, &yp, true);
                lines.push(format!(
                    "{stem}: {:.2}M params, {:.2} GMACs; onnxruntime rel. error {:.1e}; pruned 0.3 to {:.2}M params, {:.2} GMACs, verify {:.1e}, onnxruntime {:.1e}",
                    g.param_count() as f64 / 1e6,
                    g.macs().unwrap() as f64 / 1e9,
                    dense["outputs"][0]["rel_error"].as_f64().unwrap(),
                    pruned.param_count() as f64 / 1e6,
                    pruned.macs().unwrap() as f64 / 1e9,
                    check.max_rel_error,
                    small["outputs"][0]["rel_error"].as_f64().unwrap(),
                ));
            }
        }
    }
    eprintln!("{}", lines.join("\n"));
}
