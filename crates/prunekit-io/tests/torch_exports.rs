//! PyTorch both ways, for every zoo architecture without attention: prunekit writes the model as a
//! `.pt` state dict with its widths; PyTorch rebuilds the module from the widths
//! (`scripts/torch_rebuild.py`), loads the state dict strictly, checks its outputs against
//! prunekit's, and exports it with torch.onnx (the TorchScript exporter at opset 17 and the dynamo
//! exporter at opset 18, with its external data file); prunekit imports what PyTorch wrote and must
//! give the same outputs. Needs PyTorch in `.venv-torch` (scripts/setup-torch.sh, plus
//! `onnxscript` for the dynamo exporter) or `$PRUNEKIT_TORCH_PYTHON`; skips with a message without.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use prunekit_graph::{Executor, Graph, InputKind, Op};
use rand::{Rng, SeedableRng};

const NOT_EXPORTED: &[&str] = &["bert-tiny", "llama-tiny", "llama-tiny-tied", "llama-small"];

fn torch_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PRUNEKIT_TORCH_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-torch/bin/python");
    p.exists().then_some(p)
}

fn inputs(g: &Graph, seed: u64) -> Vec<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    g.inputs
        .iter()
        .map(|spec| {
            let mut dims = vec![2];
            dims.extend_from_slice(&spec.shape);
            let n: usize = dims.iter().product();
            match spec.kind {
                InputKind::Float => {
                    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
                }
                InputKind::Ids => {
                    let vocab = g
                        .nodes
                        .iter()
                        .filter_map(|n| match &n.op {
                            Op::Embedding(e) if n.inputs[0] == spec.name => Some(e.num_embeddings),
                            _ => None,
                        })
                        .min()
                        .unwrap_or(2) as u32;
                    let v: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab)).collect();
                    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
                }
            }
        })
        .collect()
}

fn rel_error(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let d = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f64>().unwrap() / s.to_scalar::<f64>().unwrap().max(1e-12)
}

#[test]
fn pytorch_loads_our_state_dicts_and_we_load_its_onnx_exports() {
    let Some(py) = torch_python() else {
        eprintln!("SKIPPED: PyTorch not installed (run scripts/setup-torch.sh or set PRUNEKIT_TORCH_PYTHON)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/torch_rebuild.py");
    let imports = |module: &str| {
        std::process::Command::new(&py)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    // torch.onnx.export needs the onnx package (since PyTorch 2.9 for the TorchScript exporter
    // too), the dynamo exporter onnxscript as well
    let torchscript = imports("onnx");
    let dynamo = torchscript && imports("onnxscript");
    if !torchscript {
        eprintln!("note: the onnx package is missing next to PyTorch (scripts/setup-torch.sh installs it): the ONNX exports are not checked");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut table = Vec::new();
    for name in prunekit_zoo::names() {
        if NOT_EXPORTED.contains(&name) {
            continue;
        }
        let g = prunekit_zoo::build(name, 5).unwrap();
        let pt = dir.path().join(format!("{name}.pt"));
        prunekit_io::save(&g, &pt, None).unwrap();
        let xs = inputs(&g, 6);
        let ys = Executor::new(0).eval(&g, &xs).unwrap();
        let mut check = Vec::new();
        for (i, x) in xs.iter().enumerate() {
            let p = dir.path().join(format!("{name}.x{i}.npy"));
            prunekit_io::npy::write(&p, x).unwrap();
            check.push(p.display().to_string());
        }
        let expect = dir.path().join(format!("{name}.y.npy"));
        prunekit_io::npy::write(&expect, &ys[0]).unwrap();
        let mut row = vec![name.to_string()];
        for (exporter, flag) in [("torchscript", None), ("dynamo", Some("--dynamo"))] {
            if flag.is_some() && !dynamo {
                row.push("dynamo: onnxscript missing".into());
                continue;
            }
            if !torchscript {
                row.push(format!("{exporter}: onnx missing"));
                continue;
            }
            let onnx = dir.path().join(format!("{name}-{exporter}.onnx"));
            let mut cmd = std::process::Command::new(&py);
            cmd.arg(&script)
                .arg(&pt)
                .arg("--onnx")
                .arg(&onnx)
                .arg("--check")
                .args(&check)
                .arg("--expect")
                .arg(&expect);
            if let Some(f) = flag {
                cmd.arg(f);
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{name} ({exporter}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value =
                serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                    .unwrap();
            let torch_err = report["rel_error"].as_f64().unwrap();
            assert!(
                torch_err <= 1e-5,
                "{name}: PyTorch's module disagrees with prunekit: {torch_err}"
            );
            let back = prunekit_io::load(&onnx, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{name} ({exporter}): {e}"));
            let yb = Executor::new(0).eval(&back, &xs).unwrap();
            let e = rel_error(&yb[0], &ys[0]);
            assert!(e <= 1e-5, "{name} ({exporter}): relative error {e}");
            row.push(format!("{exporter}: torch {torch_err:.1e}, import {e:.1e}"));
        }
        table.push(row.join(" | "));
    }
    eprintln!("{}", table.join("\n"));
}
