//! ONNX out and in: every zoo model (dense, structurally pruned, and masked) and the attention
//! variants (key padding mask, causal, GQA / MQA, RoPE, without biases) are written as ONNX, read
//! back and run: the outputs agree with the original's, attention nodes come back as attention
//! nodes. When onnxruntime is installed (scripts/setup-onnxruntime.sh, or $PRUNEKIT_ORT_PYTHON),
//! every exported file is also run there and must agree to 1e-4 relative. Bad files give errors
//! naming the file and the node.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use prost::Message;
use prunekit_graph::{Executor, Graph, InputKind, Op};
use prunekit_io::onnx::proto::{self, ModelProto, NodeProto, TensorProto};
use prunekit_io::onnx::{import_model, to_model};
use prunekit_io::IoError;
use rand::{Rng, SeedableRng};

/// Whether input `name` is read as an attention's key padding mask or a masked mean pool's
/// token mask.
fn is_key_mask(g: &Graph, name: &str) -> bool {
    g.nodes.iter().any(|n| {
        matches!(n.op, Op::Attention(_) | Op::MaskedMeanPool(_))
            && n.inputs.get(1).map(String::as_str) == Some(name)
    })
}

/// Random inputs; key padding masks are random 0 / 1 with the first key kept (so every query,
/// causal or not, keeps at least one key).
fn inputs(g: &Graph, batch: usize, seed: u64) -> Vec<Tensor> {
    inputs_with(g, batch, seed, false)
}

/// [`inputs`], with `fully_masked` every key of the first sample masked (rows of zero attention).
fn inputs_with(g: &Graph, batch: usize, seed: u64, fully_masked: bool) -> Vec<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    g.inputs
        .iter()
        .map(|spec| {
            let mut dims = vec![batch];
            dims.extend_from_slice(&spec.shape);
            let n: usize = dims.iter().product();
            match spec.kind {
                InputKind::Float if is_key_mask(g, &spec.name) => {
                    let t = spec.shape[0];
                    let v: Vec<f32> = (0..n)
                        .map(|i| {
                            let (b, key) = (i / t, i % t);
                            if fully_masked && b == 0 {
                                0.0
                            } else if key == 0 || rng.random_bool(0.6) {
                                1.0
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
                }
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

/// sentence-transformers' head (all-MiniLM-L6-v2: BertModel -> Pooling(mean_tokens) ->
/// Normalize) on a small encoder: token ids and a token mask [8] -> embedding -> LayerNorm ->
/// dense + GELU -> masked mean pool -> dense -> L2 normalisation; a second output normalises
/// every token's embedding before a dense layer.
fn sentence_head() -> Graph {
    let mut b = prunekit_graph::GraphBuilder::new("sentence-head", 8);
    let ids = b.ids_input("ids", &[8]);
    let mask = b.input("mask", &[8]);
    let h = b.embedding(&ids, 50, 16).unwrap();
    let h = b.layer_norm(&h).unwrap();
    let f = b.linear(&h, 24).unwrap();
    let f = b.gelu(&f).unwrap();
    let p = b.named("pooling").masked_mean_pool(&f, &mask).unwrap();
    let d = b.linear(&p, 12).unwrap();
    let y = b.named("normalize").l2_normalize(&d).unwrap();
    let t = b.named("token_norm").l2_normalize(&h).unwrap();
    let t = b.linear(&t, 4).unwrap();
    b.finish(&[&y, &t]).unwrap()
}

/// Attention in every form the op has, each between prunable layers: (name, graph).
fn attention_variants() -> Vec<(String, Graph)> {
    use serde_json::json;
    let mut out = Vec::new();
    // bert-tiny's encoder layer with a key padding mask: embedding + positional + LayerNorm,
    // attention 4 x 16 (not causal, biases), residual, LayerNorm, token classifier
    {
        let mut b = prunekit_graph::GraphBuilder::new("bert-tiny-masked", 5);
        let ids = b.ids_input("ids", &[16]);
        let mask = b.input("mask", &[16]);
        let h = b.embedding(&ids, 1000, 64).unwrap();
        let h = b.positional_embedding(&h, 16).unwrap();
        let h = b.layer_norm(&h).unwrap();
        let a = b
            .attention_masked(&h, &mask, 4, 4, 16, false, None)
            .unwrap();
        let r = b.add(&h, &a).unwrap();
        let h = b.layer_norm(&r).unwrap();
        let f = b.linear(&h, 32).unwrap();
        let f = b.gelu(&f).unwrap();
        let y = b.named("classifier").linear(&f, 2).unwrap();
        out.push(("bert-tiny + key mask".to_string(), b.finish(&[&y]).unwrap()));
    }
    let plain = |name: &str, masked: bool, v: serde_json::Value| -> (String, Graph) {
        let mut b = prunekit_graph::GraphBuilder::new(name, 6);
        let x = b.input("x", &[12, 32]);
        let mask = masked.then(|| b.input("mask", &[12]));
        let h = b.linear(&x, 32).unwrap();
        let op: Op = serde_json::from_value(v).unwrap();
        let ins: Vec<&prunekit_graph::Value> = std::iter::once(&h).chain(mask.as_ref()).collect();
        let a = b.node(op, &ins).unwrap();
        let y = b.linear(&a, 10).unwrap();
        (name.to_string(), b.finish(&[&y]).unwrap())
    };
    let base = |heads: usize, kv: usize, causal: bool, rope: Option<f64>, bias: bool| {
        let mut v = json!({"type": "attention", "embed_dim": 32, "out_dim": 24,
            "num_heads": heads, "num_kv_heads": kv, "head_dim": 8, "causal": causal,
            "bias": bias});
        if let Some(t) = rope {
            v["rope_theta"] = json!(t);
        }
        v
    };
    out.push(plain(
        "causal GQA 4/2 + RoPE + key mask, no bias",
        true,
        base(4, 2, true, Some(500.0), false),
    ));
    out.push(plain(
        "MQA 4/1 + RoPE + key mask",
        true,
        base(4, 1, false, Some(10000.0), true),
    ));
    out.push(plain(
        "causal MHA 4/4, no RoPE, no mask",
        false,
        base(4, 4, true, None, true),
    ));
    out.push(plain(
        "MHA 4/4, no mask, no bias",
        false,
        base(4, 4, false, None, false),
    ));
    out
}

/// (what, graph) for every zoo model and attention variant: dense, structurally pruned, and
/// 60% masked (llama-tiny also pruned 0.6, which removes a key/value group); and the graph of
/// [`decomposed_ops`].
fn cases() -> Vec<(String, Graph)> {
    let mut out = vec![("decomposed ops".to_string(), decomposed_ops())];
    out.push(("sentence head".to_string(), sentence_head()));
    let mut models: Vec<(String, Graph)> = prunekit_zoo::names()
        .into_iter()
        .map(|name| (name.to_string(), prunekit_zoo::build(name, 3).unwrap()))
        .collect();
    models.extend(attention_variants());
    for (name, g) in models {
        randomize_bn(&g, 4);
        let ratios: &[f64] = if name == "llama-tiny" {
            &[0.3, 0.6]
        } else {
            &[0.3]
        };
        let mut masked = g.clone();
        prunekit_prune::magnitude_prune(
            &mut masked,
            prunekit_prune::Target::Ratio(0.6),
            prunekit_prune::Scope::Layer,
        )
        .unwrap();
        let mut pruned_cases = Vec::new();
        for &ratio in ratios {
            let mut pruned = g.clone();
            prunekit_prune::prune_structured(
                &mut pruned,
                &prunekit_prune::StructuredConfig::new(ratio),
                &prunekit_prune::Norm::L1,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            pruned_cases.push((format!("{name} pruned {ratio}{}", heads(&pruned)), pruned));
        }
        out.push((format!("{name} dense{}", heads(&g)), g));
        out.extend(pruned_cases);
        out.push((format!("{name} masked 0.6"), masked));
    }
    out
}

/// " (heads nh/nkv, ...)" for a graph with attention, else "".
fn heads(g: &Graph) -> String {
    let h: Vec<String> = g
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Attention(a) => Some(format!("{}/{}", a.num_heads, a.num_kv_heads)),
            _ => None,
        })
        .collect();
    if h.is_empty() {
        String::new()
    } else {
        format!(" (heads {})", h.join(", "))
    }
}

/// The input sets a graph is checked on: random; with a key padding mask also one whose first
/// sample masks every key.
fn input_sets(g: &Graph, batch: usize, seed: u64) -> Vec<(&'static str, Vec<Tensor>)> {
    let mut sets = vec![("", inputs(g, batch, seed))];
    if g.inputs.iter().any(|i| is_key_mask(g, &i.name)) {
        sets.push((", fully masked row", inputs_with(g, batch, seed, true)));
    }
    sets
}

#[test]
fn every_zoo_model_round_trips_through_onnx() {
    let mut worst = Vec::new();
    for (what, g) in cases() {
        let back = round_trip(&g);
        assert_eq!(back.param_count(), g.param_count(), "{what}: params");
        assert_eq!(back.macs().unwrap(), g.macs().unwrap(), "{what}: MACs");
        for (set, xs) in input_sets(&g, 3, 11) {
            let ya = Executor::new(0).eval(&g, &xs).unwrap();
            let yb = Executor::new(0).eval(&back, &xs).unwrap();
            assert_eq!(ya.len(), yb.len(), "{what}{set}: outputs");
            for (a, b) in ya.iter().zip(&yb) {
                let e = rel_error(b, a);
                assert!(e <= 1e-5, "{what}{set}: relative error {e}");
                if g.nodes.iter().any(|n| matches!(n.op, Op::Attention(_))) {
                    worst.push(format!("{what}{set}: {e:.2e}"));
                }
            }
        }
        // attention comes back as attention, heads and all (so it stays prunable)
        let ops = |g: &Graph| -> Vec<Op> {
            g.nodes
                .iter()
                .filter(|n| matches!(n.op, Op::Attention(_)))
                .map(|n| n.op.clone())
                .collect()
        };
        assert_eq!(ops(&back), ops(&g), "{what}: attention nodes");
        if what.contains("dense (heads") {
            // and its heads prune as the original's do
            let prune = |g: &Graph| {
                let mut g = g.clone();
                prunekit_prune::prune_structured(
                    &mut g,
                    &prunekit_prune::StructuredConfig::new(0.3),
                    &prunekit_prune::Norm::L1,
                )
                .unwrap();
                heads(&g)
            };
            assert_eq!(prune(&back), prune(&g), "{what}: pruned after import");
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
    eprintln!(
        "round trip max relative error per attention model:\n  {}",
        worst.join("\n  ")
    );
}

#[test]
fn attention_is_written_as_standard_onnx_ops_named_after_the_node() {
    let g = prunekit_zoo::build("llama-tiny", 0).unwrap();
    let m = to_model(&g).unwrap();
    let graph = m.graph.as_ref().unwrap();
    assert!(graph.node.iter().all(|n| n.domain.is_empty()));
    let standard = [
        "MatMul",
        "Add",
        "Reshape",
        "Transpose",
        "Slice",
        "Neg",
        "Concat",
        "Mul",
        "ReduceMax",
        "Sub",
        "Exp",
        "ReduceSum",
        "Div",
    ];
    for a in g.nodes.iter().filter(|n| matches!(n.op, Op::Attention(_))) {
        let prefix = format!("{}/", a.name);
        let block: Vec<&NodeProto> = graph
            .node
            .iter()
            .filter(|n| n.name == a.name || n.name.starts_with(&prefix))
            .collect();
        assert!(block.len() > 30, "{}: {} nodes", a.name, block.len());
        for n in block {
            assert!(
                standard.contains(&n.op_type.as_str()),
                "{}: {}",
                n.name,
                n.op_type
            );
        }
    }
}

#[test]
fn an_attention_block_that_is_not_ours_is_refused_naming_its_nodes() {
    // a changed scale is no longer the pattern the exporter writes: the block's nodes that
    // have no meaning of their own in prunekit are listed
    let g = prunekit_zoo::build("llama-tiny", 0).unwrap();
    let a = g
        .nodes
        .iter()
        .find(|n| matches!(n.op, Op::Attention(_)))
        .unwrap();
    let mut m = to_model(&g).unwrap();
    let scale = format!("{}.scale", a.name);
    let t = m
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.name == scale)
        .unwrap();
    t.raw_data = 0.5f32.to_le_bytes().to_vec();
    let e = import_model(&m, Path::new("odd.onnx"), &Device::Cpu).unwrap_err();
    assert!(matches!(e, IoError::Unsupported { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("ReduceMax") && e.contains("Neg") && e.contains(&a.name),
        "{e}"
    );
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
        for (set, xs) in input_sets(&g, 2, 21) {
            let what = format!("{what}{set}");
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
            assert_ne!(
                v["checker"], "skipped",
                "{what}: the onnx package is missing next to onnxruntime"
            );
            let e = v["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["rel_error"].as_f64().unwrap())
                .fold(0.0, f64::max);
            worst.push(format!("{what}: {e:.2e}"));
        }
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

// ------------------------------------------------------------------------------------------------
// sentence-transformers' pooling head

/// The dense head and a structurally pruned one (the hidden width pruned through the pool).
fn sentence_cases() -> Vec<(String, Graph)> {
    let g = sentence_head();
    let mut pruned = g.clone();
    prunekit_prune::prune_structured(
        &mut pruned,
        &prunekit_prune::StructuredConfig::new(0.5),
        &prunekit_prune::Norm::L1,
    )
    .unwrap();
    assert!(pruned.param_count() < g.param_count());
    vec![("dense".into(), g), ("pruned 0.5".into(), pruned)]
}

#[test]
fn masked_mean_pool_and_l2_normalize_round_trip_through_onnx_as_their_ops() {
    for (what, g) in sentence_cases() {
        let m = to_model(&g).unwrap();
        let types = prunekit_io::onnx::export::op_types(&m);
        for t in ["Unsqueeze", "ReduceSum", "Max", "ReduceL2", "Div"] {
            assert!(types.iter().any(|x| x == t), "{what}: {types:?}");
        }
        // the blocks' ONNX nodes carry the prunekit node's name
        let names: Vec<&str> = m
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        for n in [
            "pooling",
            "pooling/sum",
            "pooling/output",
            "normalize",
            "normalize/norm",
        ] {
            assert!(names.contains(&n), "{what}: {names:?}");
        }
        let back = round_trip(&g);
        // the two ops come back as themselves, named as before (GELU comes back decomposed,
        // as it always has)
        let ops = |g: &Graph| -> Vec<(String, Op)> {
            g.nodes
                .iter()
                .filter(|n| matches!(n.op, Op::MaskedMeanPool(_) | Op::L2Normalize(_)))
                .map(|n| (n.name.clone(), n.op.clone()))
                .collect()
        };
        assert_eq!(ops(&back).len(), 3, "{what}");
        assert_eq!(ops(&back), ops(&g), "{what}: ops");
        assert_eq!(back.param_count(), g.param_count());
        for (set, xs) in input_sets(&g, 3, 5) {
            let ya = Executor::new(0).eval(&g, &xs).unwrap();
            let yb = Executor::new(0).eval(&back, &xs).unwrap();
            for (a, b) in ya.iter().zip(&yb) {
                let e = rel_error(b, a);
                assert!(e <= 1e-6, "{what}{set}: relative error {e}");
            }
            if !set.is_empty() {
                // the fully padded first sample pools to zeros (its embedding is the dense
                // layer's bias, normalised), never NaN
                let first: Vec<f32> = yb[0].get(0).unwrap().to_vec1().unwrap();
                assert!(first.iter().all(|v| v.is_finite()), "{what}: {first:?}");
            }
        }
        // ...and stays prunable after the round trip
        let mut again = back.clone();
        let r = prunekit_prune::prune_structured(
            &mut again,
            &prunekit_prune::StructuredConfig::new(0.25),
            &prunekit_prune::Norm::L1,
        )
        .unwrap();
        assert!(again.param_count() < back.param_count(), "{what}: {r:?}");
    }
    assert_eq!(
        input_sets(&sentence_head(), 2, 1).len(),
        2,
        "the fully padded set is checked"
    );
}

#[test]
fn a_pooling_block_that_differs_imports_node_by_node_naming_its_nodes() {
    let g = sentence_head();
    // ReduceSum keeping the token axis is not our pattern: ReduceSum / Max have no op of ours
    let mut m = to_model(&g).unwrap();
    let graph = m.graph.as_mut().unwrap();
    let n = graph
        .node
        .iter_mut()
        .find(|n| n.name == "pooling/sum")
        .unwrap();
    n.attribute[0].i = 1;
    let e = import_model(&m, Path::new("odd.onnx"), &Device::Cpu).unwrap_err();
    assert!(matches!(e, IoError::Unsupported { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("ReduceSum") && e.contains("pooling/sum") && e.contains("Max"),
        "{e}"
    );
    assert!(
        !e.contains("ReduceL2"),
        "the normalisations are still ours: {e}"
    );
    // a norm over another axis is not ours either
    let mut m = to_model(&g).unwrap();
    let graph = m.graph.as_mut().unwrap();
    let n = graph
        .node
        .iter_mut()
        .find(|n| n.name == "normalize/norm")
        .unwrap();
    n.attribute
        .iter_mut()
        .find(|a| a.name == "axes")
        .unwrap()
        .ints = vec![0];
    let e = import_model(&m, Path::new("odd.onnx"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ReduceL2") && e.contains("normalize/norm"),
        "{e}"
    );
    assert!(!e.contains("pooling"), "{e}");
    // an edited eps is read as that eps
    let mut m = to_model(&g).unwrap();
    let graph = m.graph.as_mut().unwrap();
    let t = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == "pooling.eps")
        .unwrap();
    t.raw_data = 1e-3f32.to_le_bytes().to_vec();
    let back = import_model(&m, Path::new("eps.onnx"), &Device::Cpu).unwrap();
    let op = &back.nodes.iter().find(|n| n.name == "pooling").unwrap().op;
    assert_eq!(
        op,
        &Op::from(prunekit_graph::ops::MaskedMeanPool { dim: 24, eps: 1e-3 })
    );
}

#[test]
fn onnxruntime_agrees_on_masked_mean_pool_and_l2_normalize() {
    let Some(py) = ort_python() else {
        eprintln!("SKIPPED: onnxruntime not installed (run scripts/setup-onnxruntime.sh or set PRUNEKIT_ORT_PYTHON)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ort_check.py");
    let dir = tempfile::tempdir().unwrap();
    for (k, (what, g)) in sentence_cases().into_iter().enumerate() {
        let model = dir.path().join(format!("s{k}.onnx"));
        prunekit_io::save(&g, &model, None).unwrap();
        for (set, xs) in input_sets(&g, 3, 31) {
            let ys = Executor::new(0).eval(&g, &xs).unwrap();
            let mut args = vec![model.display().to_string(), "--inputs".into()];
            for (i, x) in xs.iter().enumerate() {
                let p = dir.path().join(format!("s{k}.x{i}.npy"));
                prunekit_io::npy::write(&p, x).unwrap();
                args.push(p.display().to_string());
            }
            args.push("--expect".into());
            for (i, y) in ys.iter().enumerate() {
                let p = dir.path().join(format!("s{k}.y{i}.npy"));
                prunekit_io::npy::write(&p, y).unwrap();
                args.push(p.display().to_string());
            }
            args.extend(["--tol".to_string(), "1e-5".to_string()]);
            let out = std::process::Command::new(&py)
                .arg(&script)
                .args(&args)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                out.status.success(),
                "{what}{set}: onnxruntime disagrees or fails: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
            assert_eq!(v["checker"], "passed", "{what}{set}: {text}");
            let errs: Vec<String> = v["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| format!("{:.2e}", o["rel_error"].as_f64().unwrap()))
                .collect();
            eprintln!(
                "sentence head {what}{set}: onnxruntime relative errors {}",
                errs.join(", ")
            );
        }
    }
}
