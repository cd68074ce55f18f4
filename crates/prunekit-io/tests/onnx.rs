//! ONNX out and in: every zoo model (dense, structurally pruned, and masked) is written as ONNX,
//! read back and run: the outputs agree with the original's. When onnxruntime is installed
//! (scripts/setup-onnxruntime.sh, or $PRUNEKIT_ORT_PYTHON), every exported file is also run there
//! and must agree to 1e-4 relative. Bad files give errors naming the file and the node.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use prost::Message;
use prunekit_graph::{Executor, Graph, InputKind, Op};
use prunekit_io::onnx::proto::{self, ModelProto, NodeProto, TensorProto};
use prunekit_io::onnx::{import_model, to_model};
use prunekit_io::IoError;
use rand::{Rng, SeedableRng};

/// Architectures whose ops have no ONNX form in the exporter yet (the fused attention op).
const NOT_EXPORTED: &[&str] = &["bert-tiny", "llama-tiny", "llama-tiny-tied"];

fn inputs(g: &Graph, batch: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    g.inputs
        .iter()
        .map(|spec| {
            let mut dims = vec![batch];
            dims.extend_from_slice(&spec.shape);
            let n: usize = dims.iter().product();
            match spec.kind {
                InputKind::Float => {
                    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
                }
                InputKind::Ids => {
                    // ids below the smallest embedding table read from this input
                    let vocab = g
                        .nodes
                        .iter()
                        .filter(|n| n.inputs.first() == Some(&spec.name))
                        .filter_map(|n| match &n.op {
                            Op::Embedding(e) => Some(e.num_embeddings),
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

/// Random running statistics for every BatchNorm, so eval mode exercises them.
fn randomize_bn(g: &Graph, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for n in &g.nodes {
        if let Op::BatchNorm(b) = &n.op {
            let c = b.num_features;
            let mean: Vec<f32> = (0..c).map(|_| rng.random_range(-0.5f32..0.5)).collect();
            let var: Vec<f32> = (0..c).map(|_| rng.random_range(0.5f32..2.0)).collect();
            n.params["running_mean"]
                .value
                .set(&Tensor::new(mean, &Device::Cpu).unwrap())
                .unwrap();
            n.params["running_var"]
                .value
                .set(&Tensor::new(var, &Device::Cpu).unwrap())
                .unwrap();
        }
    }
}

fn rel_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    diff / scale.max(1e-12)
}

fn round_trip(g: &Graph) -> Graph {
    let bytes = to_model(g).unwrap().encode_to_vec();
    let m = ModelProto::decode(bytes.as_slice()).unwrap();
    import_model(&m, Path::new("mem.onnx"), &Device::Cpu).unwrap()
}

/// A graph with every op that decomposed exports bring (transpose, pad, resize, transposed
/// convolution, constants, sub / div, erf, sqrt, clip, hard sigmoid / swish, leaky ReLU, PReLU,
/// matmul of activations, reduce-mean, slice, gather), so each is exported and imported.
fn decomposed_ops() -> Graph {
    use serde_json::json;
    let mut b = prunekit_graph::GraphBuilder::new("decomposed", 9);
    let x = b.input("image", &[3, 8, 8]);
    let op = |v: serde_json::Value| -> Op { serde_json::from_value(v).unwrap() };
    let h = b.conv2d(&x, 4, 3, 1, 1).unwrap();
    let h = b
        .node(
            op(json!({"type": "pad", "pads": [0, 1, 1, 0, 1, 1], "mode": "reflect"})),
            &[&h],
        )
        .unwrap();
    let h = b
        .node(op(json!({"type": "leaky_relu", "alpha": 0.1})), &[&h])
        .unwrap();
    let h = b
        .node(op(json!({"type": "prelu", "num_parameters": 4})), &[&h])
        .unwrap();
    let h = b
        .node(
            op(
                json!({"type": "conv_transpose2d", "in_channels": 4, "out_channels": 3,
        "kernel": [3, 3], "stride": 2, "padding": 1, "output_padding": 1}),
            ),
            &[&h],
        )
        .unwrap();
    let h = b
        .node(
            op(json!({"type": "resize", "mode": "bilinear", "scale": [0.5, 0.5]})),
            &[&h],
        )
        .unwrap();
    let h = b
        .node(
            op(json!({"type": "resize", "mode": "nearest", "scale": [2.0, 2.0]})),
            &[&h],
        )
        .unwrap();
    let h = b.node(op(json!({"type": "hard_swish"})), &[&h]).unwrap();
    let h = b
        .node(op(json!({"type": "clip", "min": -1.0, "max": 3.0})), &[&h])
        .unwrap();
    let c = b
        .node(op(json!({"type": "constant", "shape": [3, 1, 1]})), &[])
        .unwrap();
    let h = b.node(op(json!({"type": "sub"})), &[&h, &c]).unwrap();
    let h = b
        .node(
            op(json!({"type": "hard_sigmoid", "alpha": 0.2, "beta": 0.5})),
            &[&h],
        )
        .unwrap();
    let h = b.node(op(json!({"type": "erf"})), &[&h]).unwrap();
    let s = b.node(op(json!({"type": "hard_sigmoid"})), &[&h]).unwrap();
    let s = b.node(op(json!({"type": "sqrt"})), &[&s]).unwrap();
    let s = b
        .node(op(json!({"type": "clip", "min": 0.5})), &[&s])
        .unwrap();
    let h = b.node(op(json!({"type": "div"})), &[&h, &s]).unwrap();
    let h = b
        .node(
            op(json!({"type": "slice", "axis": 2, "start": 0, "end": 20, "step": 2})),
            &[&h],
        )
        .unwrap();
    let h = b
        .node(
            op(json!({"type": "gather", "axis": 1, "indices": [0, 2, 4, 6]})),
            &[&h],
        )
        .unwrap();
    let t = b
        .node(op(json!({"type": "transpose", "perm": [0, 2, 1]})), &[&h])
        .unwrap();
    let m = b.node(op(json!({"type": "matmul"})), &[&h, &t]).unwrap();
    let r = b
        .node(
            op(json!({"type": "reduce_mean", "axes": [2], "keepdims": false})),
            &[&m],
        )
        .unwrap();
    let y = b.flatten(&r).unwrap();
    let y = b.linear(&y, 5).unwrap();
    b.finish(&[&y]).unwrap()
}

/// (what, graph) for every exportable zoo model: dense, structurally pruned, and 60% masked; and
/// the graph of [`decomposed_ops`].
fn cases() -> Vec<(String, Graph)> {
    let mut out = vec![("decomposed ops".to_string(), decomposed_ops())];
    for name in prunekit_zoo::names() {
        if NOT_EXPORTED.contains(&name) {
            continue;
        }
        let g = prunekit_zoo::build(name, 3).unwrap();
        randomize_bn(&g, 4);
        let mut pruned = g.clone();
        prunekit_prune::prune_structured(
            &mut pruned,
            &prunekit_prune::StructuredConfig::new(0.3),
            &prunekit_prune::Norm::L1,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut masked = g.clone();
        prunekit_prune::magnitude_prune(
            &mut masked,
            prunekit_prune::Target::Ratio(0.6),
            prunekit_prune::Scope::Layer,
        )
        .unwrap();
        out.push((format!("{name} dense"), g));
        out.push((format!("{name} pruned 0.3"), pruned));
        out.push((format!("{name} masked 0.6"), masked));
    }
    out
}

#[test]
fn every_zoo_model_round_trips_through_onnx() {
    for (what, g) in cases() {
        let back = round_trip(&g);
        assert_eq!(back.param_count(), g.param_count(), "{what}: params");
        assert_eq!(back.macs().unwrap(), g.macs().unwrap(), "{what}: MACs");
        let xs = inputs(&g, 3, 11);
        let ya = Executor::new(0).eval(&g, &xs).unwrap();
        let yb = Executor::new(0).eval(&back, &xs).unwrap();
        assert_eq!(ya.len(), yb.len(), "{what}: outputs");
        for (a, b) in ya.iter().zip(&yb) {
            let e = rel_error(b, a);
            assert!(e <= 1e-5, "{what}: relative error {e}");
        }
        if what == "decomposed ops" {
            continue;
        }
        // node names survive for the nodes that map one to one
        let names: std::collections::HashSet<&str> =
            back.nodes.iter().map(|n| n.name.as_str()).collect();
        for n in g.nodes.iter().filter(|n| !n.params.is_empty()) {
            assert!(
                names.contains(n.name.as_str()),
                "{what}: node {} lost its name",
                n.name
            );
        }
    }
}

#[test]
fn attention_export_is_a_clear_error() {
    let g = prunekit_zoo::build("bert-tiny", 0).unwrap();
    let e = to_model(&g).unwrap_err().to_string();
    assert!(e.contains("attention") && e.contains("no ONNX form"), "{e}");
}

// ------------------------------------------------------------------------------------------------
// onnxruntime

fn ort_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PRUNEKIT_ORT_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join(".venv-onnx/bin/python");
    p.exists().then_some(p)
}

#[test]
fn onnxruntime_agrees_with_prunekit_on_every_exported_model() {
    let Some(py) = ort_python() else {
        eprintln!("SKIPPED: onnxruntime not installed (run scripts/setup-onnxruntime.sh or set PRUNEKIT_ORT_PYTHON)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ort_check.py");
    let dir = tempfile::tempdir().unwrap();
    let mut worst = Vec::new();
    for (k, (what, g)) in cases().into_iter().enumerate() {
        let model = dir.path().join(format!("m{k}.onnx"));
        prunekit_io::save(&g, &model, None).unwrap();
        let xs = inputs(&g, 2, 21);
        let ys = Executor::new(0).eval(&g, &xs).unwrap();
        let mut args = vec![model.display().to_string(), "--inputs".into()];
        for (i, x) in xs.iter().enumerate() {
            let p = dir.path().join(format!("m{k}.x{i}.npy"));
            prunekit_io::npy::write(&p, x).unwrap();
            args.push(p.display().to_string());
        }
        args.push("--expect".into());
        for (i, y) in ys.iter().enumerate() {
            let p = dir.path().join(format!("m{k}.y{i}.npy"));
            prunekit_io::npy::write(&p, y).unwrap();
            args.push(p.display().to_string());
        }
        let out = std::process::Command::new(&py)
            .arg(&script)
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{what}: onnxruntime disagrees or fails: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let e = v["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["rel_error"].as_f64().unwrap())
            .fold(0.0, f64::max);
        worst.push(format!("{what}: {e:.2e}"));
    }
    eprintln!(
        "onnxruntime max relative error per model:\n  {}",
        worst.join("\n  ")
    );
}

// ------------------------------------------------------------------------------------------------
// bad files

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn small_model() -> ModelProto {
    let g = prunekit_zoo::build("digits-mlp", 0).unwrap();
    to_model(&g).unwrap()
}

fn load_err(p: &Path) -> String {
    prunekit_io::load(p, &Device::Cpu).unwrap_err().to_string()
}

#[test]
fn truncated_and_foreign_files_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = small_model().encode_to_vec();
    let p = write(dir.path(), "cut.onnx", &bytes[..bytes.len() / 2]);
    let e = load_err(&p);
    assert!(e.contains("cut.onnx"), "{e}");
    let p = write(
        dir.path(),
        "junk.onnx",
        b"\x00\x01\x02 definitely not a model",
    );
    let e = load_err(&p);
    assert!(
        e.contains("junk.onnx") && e.contains("unknown model format"),
        "{e}"
    );
    let p = write(dir.path(), "empty.onnx", b"");
    assert!(load_err(&p).contains("empty"));
}

#[test]
fn a_tensor_shorter_than_its_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = small_model();
    let g = m.graph.as_mut().unwrap();
    let t: &mut TensorProto = &mut g.initializer[0];
    let name = t.name.clone();
    t.raw_data.truncate(t.raw_data.len() - 4);
    let p = write(dir.path(), "short.onnx", &m.encode_to_vec());
    let e = load_err(&p);
    assert!(
        e.contains("short.onnx") && e.contains(&name) && e.contains("holds"),
        "{e}"
    );
    // a declared shape of 2^40 elements: refused before any allocation
    let mut m = small_model();
    m.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 20, 1 << 20];
    let p = write(dir.path(), "huge.onnx", &m.encode_to_vec());
    let e = load_err(&p);
    assert!(e.contains("2^31"), "{e}");
}

#[test]
fn dangling_inputs_cycles_and_unsupported_nodes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // a node reading a value nothing produces (also what a cycle looks like in node order)
    let mut m = small_model();
    let g = m.graph.as_mut().unwrap();
    let n: &mut NodeProto = &mut g.node[1];
    let node_name = n.name.clone();
    n.input[0] = "nowhere".into();
    let p = write(dir.path(), "dangling.onnx", &m.encode_to_vec());
    let e = load_err(&p);
    assert!(
        e.contains("dangling.onnx") && e.contains(&node_name) && e.contains("nowhere"),
        "{e}"
    );
    // two nodes feeding each other
    let mut m = small_model();
    let g = m.graph.as_mut().unwrap();
    let (a, b) = (g.node[0].output[0].clone(), g.node[1].output[0].clone());
    g.node[0].input[0] = b;
    let _ = a;
    let p = write(dir.path(), "cycle.onnx", &m.encode_to_vec());
    let e = load_err(&p);
    assert!(
        e.contains("cycle.onnx") && e.contains("no earlier node"),
        "{e}"
    );
    // every unsupported node is listed, not only the first
    let mut m = small_model();
    let g = m.graph.as_mut().unwrap();
    g.node[0].op_type = "Einsum".into();
    g.node[2].op_type = "NonMaxSuppression".into();
    g.node[3].domain = "com.microsoft".into();
    let p = write(dir.path(), "odd.onnx", &m.encode_to_vec());
    let e = prunekit_io::load(&p, &Device::Cpu).unwrap_err();
    match &e {
        IoError::Unsupported { nodes, .. } => assert_eq!(nodes.len(), 3, "{e}"),
        other => panic!("{other}"),
    }
    let e = e.to_string();
    assert!(
        e.contains("Einsum") && e.contains("NonMaxSuppression") && e.contains("com.microsoft"),
        "{e}"
    );
    assert!(
        e.contains(&m.graph.as_ref().unwrap().node[0].name) && e.contains("opset 17"),
        "{e}"
    );
}

#[test]
fn the_input_model_is_never_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let g = prunekit_zoo::build("digits-mlp", 0).unwrap();
    prunekit_io::save(&g, &p, None).unwrap();
    let before = std::fs::read(&p).unwrap();
    let e = prunekit_io::save(&g, &p, Some(&p)).unwrap_err().to_string();
    assert!(e.contains("refusing to overwrite"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
}

/// The attribute type constants are the ones of onnx.proto (spot check of the transcription).
#[test]
fn proto_constants_match_onnx_proto() {
    assert_eq!(proto::attribute_type::INTS, 7);
    assert_eq!(proto::attribute_type::STRINGS, 8);
    assert_eq!(proto::data_type::INT64, 7);
    assert_eq!(proto::data_type::BFLOAT16, 16);
}
