//! The model format: save then load is bit-exact (parameters, masks, running statistics, structure,
//! outputs), sliced (non-uniform) graphs and masks survive, and every kind of bad input gives an
//! error naming the file and the problem instead of a panic.

#[path = "../../prunekit-graph/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use prunekit_graph::ops::Conv2d;
use prunekit_graph::{Executor, Graph, GraphBuilder, GraphError, InputKind, Mode};
use prunekit_io::native::{
    self as format, load, model_size, save, save_protected, STRUCTURE_FILE, WEIGHTS_FILE,
};

fn cnn() -> Graph {
    let mut b = GraphBuilder::new("tiny-cnn", 5);
    b.meta("task", serde_json::json!("classification"));
    b.meta(
        "normalize",
        serde_json::json!({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}),
    );
    let x = b.input("image", &[3, 8, 8]);
    let x = b.named("conv1").conv2d(&x, 8, 3, 1, 1).unwrap();
    let x = b.batch_norm(&x).unwrap();
    let x = b.relu(&x).unwrap();
    let x = b.max_pool2d(&x, 2, 2).unwrap();
    let x = b.named("conv2").conv2d_no_bias(&x, 6, 3, 1, 1).unwrap();
    let x = b.batch_norm(&x).unwrap();
    let x = b.relu(&x).unwrap();
    let x = b.global_avg_pool(&x).unwrap();
    let y = b.linear(&x, 5).unwrap();
    b.finish(&[&y]).unwrap()
}

fn transformer() -> Graph {
    let mut b = GraphBuilder::new("tiny-lm", 6);
    let t = b.ids_input("tokens", &[4]);
    let e = b.embedding(&t, 12, 6).unwrap();
    let h = b.layer_norm(&e).unwrap();
    let h = b.linear(&h, 10).unwrap();
    let h = b.gelu(&h).unwrap();
    let h = b.dropout(&h, 0.1).unwrap();
    let h = b.linear(&h, 6).unwrap();
    let h = b.add(&e, &h).unwrap();
    let h = b.softmax(&h).unwrap();
    let f = b.flatten(&h).unwrap();
    let y = b.named("head").linear(&f, 3).unwrap();
    b.finish(&[&y, &h]).unwrap()
}

/// Updates the running statistics (one training forward) so they are not the initial 0 / 1.
fn train_once(g: &Graph) {
    Executor::new(0)
        .run(g, &[randn_f32(&[4, 3, 8, 8], 1)], Mode::TRAIN, None)
        .unwrap();
}

fn random_mask(shape: &[usize], seed: u64) -> Tensor {
    let u = uniform(shape, 0.0, 1.0, seed);
    u.ge(0.5).unwrap().to_dtype(DType::F32).unwrap()
}

/// Every structural field, every parameter (role, dtype, bits) and every mask (bits) is equal.
fn assert_same_graph(a: &Graph, b: &Graph) {
    assert_eq!(a.name, b.name);
    assert_eq!(a.inputs, b.inputs);
    assert_eq!(a.outputs, b.outputs);
    assert_eq!(a.meta, b.meta);
    assert_eq!(a.nodes.len(), b.nodes.len());
    for (na, nb) in a.nodes.iter().zip(&b.nodes) {
        assert_eq!(na.name, nb.name);
        assert_eq!(na.op, nb.op, "node {}", na.name);
        assert_eq!(na.inputs, nb.inputs, "node {}", na.name);
        assert_eq!(
            na.params.keys().collect::<Vec<_>>(),
            nb.params.keys().collect::<Vec<_>>(),
            "node {}",
            na.name
        );
        for (k, pa) in &na.params {
            let pb = &nb.params[k];
            let what = format!("{}.{k}", na.name);
            assert_eq!(pa.role, pb.role, "{what}");
            assert_eq!(pa.tensor().dtype(), pb.tensor().dtype(), "{what}");
            assert_eq!(pa.tensor().dims(), pb.tensor().dims(), "{what}");
            assert_eq!(
                bits(pa.tensor()),
                bits(pb.tensor()),
                "{what}: values differ"
            );
            match (&pa.mask, &pb.mask) {
                (None, None) => {}
                (Some(ma), Some(mb)) => {
                    assert_eq!(ma.dtype(), mb.dtype(), "{what} mask");
                    assert_eq!(ma.dims(), mb.dims(), "{what} mask");
                    assert_eq!(bits(ma), bits(mb), "{what}: masks differ");
                }
                (ma, mb) => panic!("{what}: mask present {} vs {}", ma.is_some(), mb.is_some()),
            }
        }
    }
}

fn assert_same_outputs(a: &Graph, b: &Graph, inputs: &[Tensor]) {
    let ya = Executor::new(0).eval(a, inputs).unwrap();
    let yb = Executor::new(0).eval(b, inputs).unwrap();
    assert_eq!(ya.len(), yb.len());
    for (ta, tb) in ya.iter().zip(&yb) {
        assert_eq!(ta.dims(), tb.dims());
        assert_eq!(bits(ta), bits(tb), "eval outputs differ");
    }
}

fn roundtrip(g: &Graph) -> (tempfile::TempDir, Graph) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    save(g, &dir).unwrap();
    let back = load(&dir, &Device::Cpu).unwrap();
    (tmp, back)
}

// ----------------------------------------------------------------------------------------------
// round trips

#[test]
fn cnn_roundtrip_is_bit_exact() {
    let mut g = cnn();
    train_once(&g);
    randomize_params(&g, 3);
    g.set_mask("conv1", "weight", random_mask(&[8, 3, 3, 3], 4))
        .unwrap();
    let (tmp, back) = roundtrip(&g);
    assert_same_graph(&g, &back);
    assert_same_outputs(&g, &back, &[randn_f32(&[3, 3, 8, 8], 5)]);

    // only the two files are left behind (no temporary files)
    let mut names: Vec<String> = std::fs::read_dir(tmp.path().join("model"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![STRUCTURE_FILE.to_string(), WEIGHTS_FILE.to_string()]
    );
    let size = model_size(&tmp.path().join("model")).unwrap();
    let on_disk: u64 = names
        .iter()
        .map(|n| {
            std::fs::metadata(tmp.path().join("model").join(n))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(size, on_disk);
}

#[test]
fn transformer_roundtrip_is_bit_exact() {
    let g = transformer();
    randomize_params(&g, 7);
    let (_tmp, back) = roundtrip(&g);
    assert_same_graph(&g, &back);
    assert_eq!(back.inputs[0].kind, InputKind::Ids);
    assert_eq!(back.outputs.len(), 2);
    assert_same_outputs(&g, &back, &[ids(&[2, 4], 12, 8)]);
}

/// A graph holding every op for decomposed exports (so each is saved and loaded: attributes,
/// parameters, the constants' buffers).
fn decomposed_export() -> Graph {
    use prunekit_graph::ops::*;
    let mut b = GraphBuilder::new("decomposed", 12);
    let x = b.input("image", &[3, 6, 6]);
    let h = b.conv2d(&x, 4, 3, 1, 1).unwrap();
    let h = b.node(PRelu { num_parameters: 4 }, &[&h]).unwrap();
    let mut ct = ConvTranspose2d::new(4, 4, 3);
    ct.stride = 2;
    ct.padding = 1;
    ct.output_padding = 1;
    ct.groups = 2;
    let h = b.node(ct, &[&h]).unwrap(); // [4, 12, 12]
    let h = b
        .node(
            Resize {
                mode: ResizeMode::Bilinear,
                scale: [0.5, 0.5],
            },
            &[&h],
        )
        .unwrap(); // [4, 6, 6]
    let h = b
        .node(Resize::new(ResizeMode::Nearest, 1.0), &[&h])
        .unwrap();
    let h = b
        .node(
            Pad {
                pads: vec![0, 1, 1, 0, 1, 1],
                mode: PadMode::Reflect,
                value: 0.0,
            },
            &[&h],
        )
        .unwrap(); // [4, 8, 8]
    let h = b
        .node(
            Slice {
                axis: 1,
                start: 0,
                end: -2,
                step: 1,
            },
            &[&h],
        )
        .unwrap(); // [4, 6, 8]
    let h = b
        .node(
            Gather {
                axis: 2,
                indices: vec![0, 2, 4, 6, -1, -1],
                scalar: false,
            },
            &[&h],
        )
        .unwrap(); // [4, 6, 6]
    let h = b.node(Clip::relu6(), &[&h]).unwrap();
    let h = b.node(HardSigmoid::pytorch(), &[&h]).unwrap();
    let h = b.node(HardSwish {}, &[&h]).unwrap();
    let h = b.node(LeakyRelu { alpha: 0.2 }, &[&h]).unwrap();
    let c = b
        .named("shift")
        .node(Constant { shape: vec![6] }, &[])
        .unwrap();
    let h = b.node(Sub {}, &[&h, &c]).unwrap();
    let h = b.node(Erf {}, &[&h]).unwrap();
    let two = b
        .named("two")
        .node(Constant { shape: vec![] }, &[])
        .unwrap();
    let h = b.node(Div {}, &[&h, &two]).unwrap();
    let m = b
        .node(
            ReduceMean {
                axes: vec![1, 2],
                keepdims: true,
            },
            &[&h],
        )
        .unwrap();
    let m = b.node(Sqrt {}, &[&m]).unwrap(); // [4, 1, 1]
    let h = b.node(Mul {}, &[&h, &m]).unwrap();
    let t = b
        .node(
            Transpose {
                perm: vec![1, 2, 0],
            },
            &[&h],
        )
        .unwrap(); // [6, 6, 4]
    let w = b
        .named("proj")
        .node(Constant { shape: vec![4, 3] }, &[])
        .unwrap();
    let y = b.node(MatMul {}, &[&t, &w]).unwrap(); // [6, 6, 3]
    let y = b.flatten(&y).unwrap();
    let y = b.linear(&y, 5).unwrap();
    b.finish(&[&y]).unwrap()
}

#[test]
fn every_op_of_decomposed_exports_roundtrips() {
    let g = decomposed_export();
    randomize_params(&g, 13);
    // sqrt needs a non-negative mean: make the subtracted constant and the divisor tame
    let set = |node: &str, v: Tensor| {
        g.node(node).unwrap().params["value"].value.set(&v).unwrap();
    };
    set("two", Tensor::new(2f32, &Device::Cpu).unwrap());
    set(
        "shift",
        Tensor::new(&[-2f32, -2.0, -2.0, -2.0, -2.0, -2.0], &Device::Cpu).unwrap(),
    );
    let types: std::collections::BTreeSet<&str> =
        g.nodes.iter().map(|n| n.op.type_name()).collect();
    for t in [
        "transpose",
        "conv_transpose2d",
        "resize",
        "matmul",
        "slice",
        "gather",
        "pad",
        "clip",
        "hard_sigmoid",
        "hard_swish",
        "leaky_relu",
        "prelu",
        "sub",
        "div",
        "erf",
        "sqrt",
        "reduce_mean",
        "constant",
    ] {
        assert!(types.contains(t), "the graph has no `{t}`");
    }
    let (_tmp, back) = roundtrip(&g);
    assert_same_graph(&g, &back);
    let x = randn_f32(&[2, 3, 6, 6], 14);
    let y = Executor::new(0)
        .eval(&back, std::slice::from_ref(&x))
        .unwrap();
    assert!(max_abs(&y[0]).is_finite());
    assert_same_outputs(&g, &back, &[x]);
    // the constants are buffers: saved, but not parameters
    let consts: usize = [6usize, 1, 12].iter().sum();
    let all: usize = g.params().map(|(_, _, p)| p.tensor().elem_count()).sum();
    assert_eq!(all - g.param_count(), consts);
}

#[test]
fn f64_roundtrip_is_bit_exact() {
    let mut g = cnn();
    g.to_dtype(DType::F64).unwrap();
    randomize_params(&g, 9);
    g.set_mask("linear1", "weight", random_mask(&[5, 6], 10))
        .unwrap();
    let (_tmp, back) = roundtrip(&g);
    assert_eq!(back.dtype(), DType::F64);
    assert_same_graph(&g, &back);
    assert_same_outputs(&g, &back, &[randn(&[2, 3, 8, 8], 11)]);
}

#[test]
fn load_accepts_the_model_json_path() {
    let g = cnn();
    let tmp = tempfile::tempdir().unwrap();
    save(&g, tmp.path()).unwrap();
    let back = load(&tmp.path().join(STRUCTURE_FILE), &Device::Cpu).unwrap();
    assert_same_graph(&g, &back);
}

/// `load("model.json")` from inside the model directory: `Path::parent` of a bare file name is
/// `Some("")`, not `None`, so the directory becomes "" and "".exists() is false.
#[test]
fn load_accepts_a_bare_model_json_in_the_current_dir() {
    let g = cnn();
    let tmp = tempfile::tempdir().unwrap();
    save(&g, tmp.path()).unwrap();
    let old = std::env::current_dir().unwrap();
    std::env::set_current_dir(tmp.path()).unwrap();
    let r = load(Path::new(STRUCTURE_FILE), &Device::Cpu);
    std::env::set_current_dir(old).unwrap();
    assert_same_graph(&g, &r.unwrap());
}

#[test]
fn saving_twice_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let g1 = cnn();
    save(&g1, tmp.path()).unwrap();
    let g2 = transformer();
    save(&g2, tmp.path()).unwrap();
    let back = load(tmp.path(), &Device::Cpu).unwrap();
    assert_same_graph(&g2, &back);
}

#[test]
fn sliced_graph_with_non_uniform_widths_roundtrips() {
    let mut g = cnn();
    train_once(&g);
    // conv1: 8 -> 5 output channels, with the coupled batch norm and conv2's input
    let keep1 = [0u32, 2, 3, 5, 7];
    g.set_mask("conv2", "weight", random_mask(&[6, 8, 3, 3], 12))
        .unwrap();
    for p in ["weight", "bias"] {
        g.select("conv1", p, 0, &keep1).unwrap();
    }
    for p in ["weight", "bias", "running_mean", "running_var"] {
        g.select("batch_norm1", p, 0, &keep1).unwrap();
    }
    g.select("conv2", "weight", 1, &keep1).unwrap();
    // conv2: 6 -> 3 output channels (no bias), its batch norm and the linear layer's input
    let keep2 = [1u32, 4, 5];
    g.select("conv2", "weight", 0, &keep2).unwrap();
    for p in ["weight", "bias", "running_mean", "running_var"] {
        g.select("batch_norm2", p, 0, &keep2).unwrap();
    }
    g.select("linear1", "weight", 1, &keep2).unwrap();

    let shapes = g.validate().unwrap();
    assert_eq!(shapes["conv1"], vec![5, 8, 8]);
    assert_eq!(shapes["conv2"], vec![3, 4, 4]);
    assert_eq!(shapes["linear1"], vec![5]);
    let conv2 = match &g.node("conv2").unwrap().op {
        prunekit_graph::Op::Conv2d(c) => c.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!((conv2.in_channels, conv2.out_channels), (5, 3));
    assert_eq!(
        g.node("conv2").unwrap().params["weight"]
            .mask
            .as_ref()
            .unwrap()
            .dims(),
        &[3, 5, 3, 3]
    );

    let (tmp, back) = roundtrip(&g);
    assert_same_graph(&g, &back);
    assert_same_outputs(&g, &back, &[randn_f32(&[2, 3, 8, 8], 13)]);
    let json = std::fs::read_to_string(tmp.path().join("model").join(STRUCTURE_FILE)).unwrap();
    assert!(json.contains("\"out_channels\": 5"), "{json}");
    assert!(json.contains("\"num_features\": 3"), "{json}");
}

#[test]
fn odd_widths_built_directly_roundtrip() {
    let mut b = GraphBuilder::new("odd", 1);
    let x = b.input("x", &[3, 7, 5]);
    let mut c = Conv2d::new(3, 7, 3);
    c.kernel = [3, 1];
    c.stride = 2;
    let x = b.node(c, &[&x]).unwrap();
    let x = b.batch_norm(&x).unwrap();
    let x = b.conv2d(&x, 5, 1, 1, 0).unwrap();
    let x = b.flatten(&x).unwrap();
    let y = b.linear(&x, 11).unwrap();
    let g = b.finish(&[&y]).unwrap();
    let (_tmp, back) = roundtrip(&g);
    assert_same_graph(&g, &back);
    assert_same_outputs(&g, &back, &[randn_f32(&[2, 3, 7, 5], 14)]);
}

#[test]
fn masks_survive_and_keep_working() {
    let mut g = cnn();
    let m1 = random_mask(&[8, 3, 3, 3], 15);
    let m2 = random_mask(&[5, 6], 16);
    g.set_mask("conv1", "weight", m1.clone()).unwrap();
    g.set_mask("linear1", "weight", m2.clone()).unwrap();
    let (_tmp, back) = roundtrip(&g);
    for (node, m) in [("conv1", &m1), ("linear1", &m2)] {
        let p = &back.node(node).unwrap().params["weight"];
        assert_eq!(bits(p.mask.as_ref().unwrap()), bits(m));
        // masked values are exactly zero after loading
        let masked = (p.tensor() * (1.0 - m).unwrap()).unwrap();
        assert_eq!(
            masked
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        // and stay zero after a change and apply_masks
        p.value
            .set(&Tensor::ones(p.tensor().dims(), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        back.apply_masks().unwrap();
        assert_eq!(bits(p.tensor()), bits(m));
    }
    // parameters without a mask still have none
    assert!(back.node("conv2").unwrap().params["weight"].mask.is_none());
}

// ----------------------------------------------------------------------------------------------
// bad input: errors, not panics, naming the file and the problem

fn saved_cnn() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    save(&cnn(), &dir).unwrap();
    (tmp, dir)
}

/// Loads and expects an error; a panic fails with a clear message.
fn load_err(path: &Path) -> GraphError {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(path, &Device::Cpu)));
    match r {
        Err(_) => panic!("load panicked instead of returning an error"),
        Ok(Ok(_)) => panic!("load succeeded on bad input"),
        Ok(Err(e)) => e,
    }
}

fn assert_mentions(e: &GraphError, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` does not mention `{p}`");
    }
}

fn edit_json(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join(STRUCTURE_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn node_json<'a>(v: &'a mut serde_json::Value, name: &str) -> &'a mut serde_json::Value {
    v["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name}"))
}

fn rewrite_weights(dir: &Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let p = dir.join(WEIGHTS_FILE);
    let mut t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, &p).unwrap();
}

#[test]
fn missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("no-such-model");
    let e = load_err(&dir);
    assert!(matches!(e, GraphError::File { .. }), "{e:?}");
    assert_mentions(&e, &["no-such-model", "no such model directory"]);
}

#[test]
fn missing_model_json() {
    let (_tmp, dir) = saved_cnn();
    std::fs::remove_file(dir.join(STRUCTURE_FILE)).unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, GraphError::Io { .. }), "{e:?}");
    assert_mentions(&e, &[STRUCTURE_FILE]);
}

#[test]
fn missing_weights_file() {
    let (_tmp, dir) = saved_cnn();
    std::fs::remove_file(dir.join(WEIGHTS_FILE)).unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, GraphError::Io { .. }), "{e:?}");
    assert_mentions(&e, &[WEIGHTS_FILE]);
}

#[test]
fn truncated_weights_file() {
    let (_tmp, dir) = saved_cnn();
    let p = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&p).unwrap();
    for len in [bytes.len() / 2, bytes.len() - 1, 12, 4, 0] {
        std::fs::write(&p, &bytes[..len]).unwrap();
        let e = load_err(&dir);
        assert!(matches!(e, GraphError::File { .. }), "{len} bytes: {e:?}");
        assert_mentions(&e, &[WEIGHTS_FILE, "corrupt or truncated"]);
    }
}

#[test]
fn corrupt_json() {
    let (_tmp, dir) = saved_cnn();
    let p = dir.join(STRUCTURE_FILE);
    let text = std::fs::read_to_string(&p).unwrap();
    for bad in ["{ not json", &text[..text.len() / 2], "", "[]"] {
        std::fs::write(&p, bad).unwrap();
        let e = load_err(&dir);
        assert!(matches!(e, GraphError::File { .. }), "{e:?}");
        assert_mentions(&e, &[STRUCTURE_FILE]);
    }
}

#[test]
fn unknown_op_type() {
    let (_tmp, dir) = saved_cnn();
    edit_json(&dir, |v| {
        node_json(v, "relu1")["op"]["type"] = "fancy_relu".into()
    });
    let e = load_err(&dir);
    assert_mentions(&e, &[STRUCTURE_FILE, "unknown variant", "fancy_relu"]);
}

#[test]
fn zero_size_input_dimension() {
    let (_tmp, dir) = saved_cnn();
    edit_json(&dir, |v| {
        v["inputs"][0]["shape"] = serde_json::json!([3, 0, 8])
    });
    let e = load_err(&dir);
    assert_mentions(&e, &["[3, 0, 8]", "at least 1"]);
}

#[test]
fn unknown_attribute() {
    let (_tmp, dir) = saved_cnn();
    edit_json(&dir, |v| {
        node_json(v, "conv1")["op"]["kernal"] = serde_json::json!([3, 3])
    });
    let e = load_err(&dir);
    assert_mentions(&e, &[STRUCTURE_FILE, "kernal"]);
}

#[test]
fn attributes_that_do_not_fit_the_weights() {
    let (_tmp, dir) = saved_cnn();
    edit_json(&dir, |v| {
        node_json(v, "linear1")["op"]["in_features"] = 7.into()
    });
    let e = load_err(&dir);
    assert_mentions(&e, &["linear1.weight", "[5, 6]", "[5, 7]"]);
    assert!(
        e.to_string().contains(STRUCTURE_FILE) || e.to_string().contains(WEIGHTS_FILE),
        "{e}"
    );
}

#[test]
fn shapes_that_do_not_fit_each_other() {
    // the weights match every op's attributes, but the input no longer fits conv1
    let (_tmp, dir) = saved_cnn();
    edit_json(&dir, |v| {
        v["inputs"][0]["shape"] = serde_json::json!([4, 8, 8])
    });
    let e = load_err(&dir);
    assert!(matches!(e, GraphError::File { .. }), "{e:?}");
    assert_mentions(&e, &[STRUCTURE_FILE, "conv1", "4 channels"]);

    // a node reading a value that is not defined before it
    let (_tmp, dir) = saved_cnn();
    edit_json(&dir, |v| {
        node_json(v, "relu1")["inputs"] = serde_json::json!(["nowhere"])
    });
    let e = load_err(&dir);
    assert_mentions(&e, &[STRUCTURE_FILE, "relu1", "nowhere"]);

    // an output that does not exist
    let (_tmp, dir) = saved_cnn();
    edit_json(&dir, |v| v["outputs"] = serde_json::json!(["logits"]));
    let e = load_err(&dir);
    assert_mentions(&e, &[STRUCTURE_FILE, "logits"]);
}

#[test]
fn wrong_format_version() {
    for v in [0, 3] {
        let (_tmp, dir) = saved_cnn();
        edit_json(&dir, |j| j["version"] = v.into());
        let e = load_err(&dir);
        assert!(matches!(e, GraphError::File { .. }), "{e:?}");
        assert_mentions(
            &e,
            &[
                STRUCTURE_FILE,
                &format!("version {v}"),
                "not supported",
                "versions 1 to 2",
            ],
        );
    }
    assert_eq!(format::FORMAT_VERSION, 2);
    assert_eq!(format::OLDEST_VERSION, 1);
}

/// A directory written by format 1 (prunekit before issue 16: dense weights, a U8 mask
/// `linear1.weight.mask`, -0.0 where negative weights were masked) still loads: the mask as
/// stored, kept values bit for bit, masked values +0.0; saved again it is version 2 with a
/// bitmask instead of the U8 mask, and loads the same.
#[test]
fn a_format_1_directory_with_masks_still_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/native-v1-masked");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(STRUCTURE_FILE)).unwrap()).unwrap();
    assert_eq!(json["version"], 1);
    let file = candle_core::safetensors::load(dir.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    let stored = file["linear1.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let stored_mask = file["linear1.weight.mask"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    assert!(
        stored
            .iter()
            .zip(&stored_mask)
            .any(|(v, &m)| m == 0 && v.to_bits() == (-0.0f32).to_bits()),
        "the fixture holds -0.0 under its mask"
    );
    let g = load(&dir, &Device::Cpu).unwrap();
    let p = &g.node("linear1").unwrap().params["weight"];
    let mask = p
        .mask
        .as_ref()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let value = p.tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for i in 0..value.len() {
        assert_eq!(mask[i], stored_mask[i] as f32, "mask element {i}");
        let want = if stored_mask[i] == 0 {
            0
        } else {
            stored[i].to_bits()
        };
        assert_eq!(value[i].to_bits(), want, "value element {i}");
    }
    assert!(g.node("linear2").unwrap().params["weight"].mask.is_none());
    Executor::new(0).eval(&g, &[randn_f32(&[2, 8], 1)]).unwrap();

    let (tmp, back) = roundtrip(&g);
    assert_same_graph(&g, &back);
    let resaved = tmp.path().join("model");
    let bytes = std::fs::read(resaved.join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort_unstable();
    assert_eq!(
        names,
        vec![
            "linear1.bias",
            "linear1.weight.bitmask",
            "linear1.weight.values",
            "linear2.bias",
            "linear2.weight"
        ]
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(resaved.join(STRUCTURE_FILE)).unwrap())
            .unwrap();
    assert_eq!(json["version"], 2);
}

#[test]
fn wrong_format_name() {
    let (_tmp, dir) = saved_cnn();
    edit_json(&dir, |v| v["format"] = "onnx".into());
    let e = load_err(&dir);
    assert_mentions(&e, &[STRUCTURE_FILE, "onnx", format::FORMAT_NAME]);
}

#[test]
fn extra_tensor_in_weights() {
    let (_tmp, dir) = saved_cnn();
    rewrite_weights(&dir, |t| {
        t.insert(
            "ghost.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&dir);
    assert!(matches!(e, GraphError::File { .. }), "{e:?}");
    assert_mentions(
        &e,
        &[WEIGHTS_FILE, "ghost.weight", "belongs to no parameter"],
    );
}

#[test]
fn missing_tensor_in_weights() {
    let (_tmp, dir) = saved_cnn();
    rewrite_weights(&dir, |t| {
        t.remove("batch_norm2.running_var").unwrap();
    });
    let e = load_err(&dir);
    assert_mentions(&e, &[WEIGHTS_FILE, "batch_norm2.running_var", "missing"]);
}

#[test]
fn tensor_of_the_wrong_shape() {
    let (_tmp, dir) = saved_cnn();
    rewrite_weights(&dir, |t| {
        t.insert(
            "conv1.bias".into(),
            Tensor::zeros(9, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&dir);
    assert_mentions(&e, &[WEIGHTS_FILE, "conv1.bias", "[9]", "[8]"]);
}

#[test]
fn mask_of_the_wrong_shape() {
    let (_tmp, dir) = saved_cnn();
    rewrite_weights(&dir, |t| {
        t.insert(
            "conv1.weight.mask".into(),
            Tensor::ones((8, 3, 3), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&dir);
    assert_mentions(&e, &[WEIGHTS_FILE, "conv1.weight.mask", "[8, 3, 3]"]);
}

#[test]
fn save_protected_refuses_the_input_dir() {
    let (tmp, dir) = saved_cnn();
    let before_json = std::fs::read(dir.join(STRUCTURE_FILE)).unwrap();
    let before_weights = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let other = transformer();
    // the same directory, spelled three ways
    let spellings = [
        dir.clone(),
        dir.join("."),
        tmp.path().join("model/../model"),
    ];
    for out in &spellings {
        let r = save_protected(&other, out, Some(&dir));
        let e = r.expect_err("save_protected wrote over its input");
        assert!(matches!(e, GraphError::File { .. }), "{e:?}");
        assert_mentions(&e, &["model", "refusing to overwrite"]);
    }
    assert_eq!(
        std::fs::read(dir.join(STRUCTURE_FILE)).unwrap(),
        before_json
    );
    assert_eq!(
        std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(),
        before_weights
    );

    // another directory is fine, and so is no protection
    let out = tmp.path().join("pruned");
    save_protected(&other, &out, Some(&dir)).unwrap();
    assert_same_graph(&other, &load(&out, &Device::Cpu).unwrap());
    save_protected(&other, &out, None).unwrap();
}

/// `load` accepts a model directory or its model.json, so the input model may be named either way.
#[test]
fn save_protected_refuses_the_input_given_as_its_model_json() {
    let (_tmp, dir) = saved_cnn();
    let before = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let r = save_protected(&transformer(), &dir, Some(&dir.join(STRUCTURE_FILE)));
    assert!(r.is_err(), "save_protected wrote over its input");
    assert_eq!(std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(), before);
}

#[test]
fn save_rejects_an_invalid_graph_and_writes_nothing() {
    let mut g = cnn();
    g.outputs = vec!["nowhere".into()];
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let e = save(&g, &dir).unwrap_err();
    assert!(matches!(e, GraphError::UnknownOutput(_)), "{e:?}");
    assert!(!dir.exists());
}

// ----------------------------------------------------------------------------------------------
// sizes declared by a file are bounded before anything is allocated from them

/// A model directory holding only `json` as model.json and an empty weights file.
fn model_from_json(json: serde_json::Value) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(STRUCTURE_FILE), json.to_string()).unwrap();
    candle_core::safetensors::save(&HashMap::<String, Tensor>::new(), dir.join(WEIGHTS_FILE))
        .unwrap();
    (tmp, dir)
}

/// model.json of a graph with the given inputs, outputs and nodes.
fn model_json(
    inputs: serde_json::Value,
    outputs: &[&str],
    nodes: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "format": format::FORMAT_NAME, "version": 1, "name": "declared",
        "inputs": inputs, "outputs": outputs, "nodes": nodes,
    })
}

#[test]
fn a_tiny_model_json_declaring_a_huge_input_is_refused_by_load() {
    let relu = serde_json::json!([{ "name": "relu", "op": { "type": "relu" }, "inputs": ["x"] }]);
    for shape in [vec![65536u64, 65536], vec![1 << 32, 1 << 32, 1 << 32]] {
        let (_tmp, dir) = model_from_json(model_json(
            serde_json::json!([{ "name": "x", "shape": shape }]),
            &["relu"],
            relu.clone(),
        ));
        assert!(std::fs::metadata(dir.join(STRUCTURE_FILE)).unwrap().len() < 1024);
        let e = load_err(&dir);
        assert_mentions(&e, &[STRUCTURE_FILE, "input `x`", "limit of 2^31"]);
    }
    // the same bound holds for a graph built in memory
    let mut b = GraphBuilder::new("huge", 0);
    let x = b.input("x", &[65536, 65536]);
    let y = b.relu(&x).unwrap();
    let e = b.finish(&[&y]).expect_err("a 2^32-element input");
    assert_mentions(&e, &["input `x`", "4294967296 elements"]);
    // just under the limit is accepted (nothing is allocated for a declared input)
    let (_tmp, dir) = model_from_json(model_json(
        serde_json::json!([{ "name": "x", "shape": [32768, 65536] }]),
        &["relu"],
        relu,
    ));
    load(&dir, &Device::Cpu).expect("2^31 elements are within the limit");
}

#[test]
fn huge_attributes_parameters_and_inferred_values_are_refused() {
    // an attribute far beyond any width: refused before its parameter is looked up
    let (_tmp, dir) = saved_cnn();
    edit_json(&dir, |v| {
        node_json(v, "linear1")["op"]["in_features"] = (1u64 << 40).into()
    });
    let e = load_err(&dir);
    assert_mentions(&e, &[STRUCTURE_FILE, "linear1", "in_features", "limit"]);

    // attributes within bounds whose parameter is too large
    let (_tmp, dir) = saved_cnn();
    edit_json(&dir, |v| {
        node_json(v, "linear1")["op"]["in_features"] = (1u64 << 30).into();
        node_json(v, "linear1")["op"]["out_features"] = (1u64 << 30).into();
    });
    let e = load_err(&dir);
    assert_mentions(&e, &[STRUCTURE_FILE, "linear1", "weight", "limit of 2^31"]);

    // a value too large after shape inference: padding that blows the plane up
    let (_tmp, dir) = saved_cnn();
    edit_json(&dir, |v| {
        node_json(v, "conv1")["op"]["padding"] = (1u64 << 20).into()
    });
    let e = load_err(&dir);
    assert_mentions(&e, &[STRUCTURE_FILE, "conv1", "output", "limit of 2^31"]);

    // many values each within the limit, together beyond the budget
    let inputs: Vec<serde_json::Value> = (0..9)
        .map(|i| serde_json::json!({ "name": format!("x{i}"), "shape": [1u64 << 31] }))
        .collect();
    let (_tmp, dir) = model_from_json(model_json(
        serde_json::json!(inputs),
        &["x0"],
        serde_json::json!([]),
    ));
    let e = load_err(&dir);
    assert_mentions(&e, &[STRUCTURE_FILE, "limit of 2^34"]);
}

// ----------------------------------------------------------------------------------------------
// masks read from a file hold 0 and 1 only, and the values they prune are zero

#[test]
fn a_mask_that_is_not_zero_or_one_is_an_error_naming_it() {
    let bad_masks = [
        (
            "0.5",
            Tensor::full(0.5f32, (8, 3, 3, 3), &Device::Cpu).unwrap(),
        ),
        ("2", Tensor::full(2u8, (8, 3, 3, 3), &Device::Cpu).unwrap()),
        (
            "NaN",
            Tensor::full(f32::NAN, (8, 3, 3, 3), &Device::Cpu).unwrap(),
        ),
    ];
    for (value, mask) in bad_masks {
        let (_tmp, dir) = saved_cnn();
        rewrite_weights(&dir, |t| {
            t.insert("conv1.weight.mask".into(), mask);
        });
        let e = load_err(&dir);
        assert_mentions(
            &e,
            &[WEIGHTS_FILE, "conv1.weight.mask", "neither 0 nor 1", value],
        );
    }
}

#[test]
fn a_mask_over_nonzero_values_zeroes_them_at_load() {
    let (_tmp, dir) = saved_cnn();
    let mask = random_mask(&[8, 3, 3, 3], 21);
    let dense = randn_f32(&[8, 3, 3, 3], 22);
    rewrite_weights(&dir, |t| {
        // nonzero everywhere, also where the mask prunes
        t.insert("conv1.weight".into(), dense.clone());
        t.insert(
            "conv1.weight.mask".into(),
            mask.to_dtype(DType::U8).unwrap(),
        );
    });
    let g = load(&dir, &Device::Cpu).unwrap();
    let p = &g.node("conv1").unwrap().params["weight"];
    assert_eq!(bits(p.mask.as_ref().unwrap()), bits(&mask));
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (loaded, dense, keep) = (flat(p.tensor()), flat(&dense), flat(&mask));
    for i in 0..loaded.len() {
        let want = if keep[i] == 0.0 { 0.0 } else { dense[i] };
        assert_eq!(
            loaded[i], want,
            "element {i}: pruned values are 0, kept ones unchanged"
        );
    }
    let pruned = mask.eq(0f32).unwrap().to_dtype(DType::F32).unwrap();
    assert!(pruned.sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
}

// the sequence ops (embedding, attention, LSTM, GRU) survive the format

#[test]
fn sequence_model_roundtrip_is_bit_exact() {
    let g = sequence_model();
    randomize_params(&g, 120);
    let tmp = tempfile::tempdir().unwrap();
    save(&g, tmp.path()).unwrap();
    let back = load(tmp.path(), &Device::Cpu).unwrap();
    assert_same_graph(&g, &back);
    let mask = Tensor::new(
        &[
            [1.0f32, 1.0, 1.0, 1.0, 0.0, 0.0],
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let inputs = [ids(&[2, 6], 20, 121), mask];
    let ya = Executor::new(0).eval(&g, &inputs).unwrap();
    let yb = Executor::new(0).eval(&back, &inputs).unwrap();
    assert_eq!(ya.len(), 3);
    for (a, b) in ya.iter().zip(&yb) {
        assert_eq!(bits(a), bits(b));
    }
    let json = std::fs::read_to_string(tmp.path().join(STRUCTURE_FILE)).unwrap();
    for tag in ["lstm", "gru", "attention", "positional_embedding"] {
        assert!(json.contains(&format!("\"type\": \"{tag}\"")), "{json}");
    }
}
