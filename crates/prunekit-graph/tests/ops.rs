//! Op rules and the runtime: shape inference and MAC counts against hand-computed values, shape
//! errors naming their node, forward passes against candle and naive references, batch norm and
//! dropout semantics, hooks, masks and the graph's counts; proptests over conv and pool geometries.

mod common;

use std::collections::HashSet;

use candle_core::{DType, Device, Tensor, D};
use common::*;
use proptest::prelude::*;
use prunekit_graph::ops::pool::Pool2dAttrs;
use prunekit_graph::ops::*;
use prunekit_graph::{Executor, Graph, GraphBuilder, GraphError, Hooks, Mode, Value};

fn infer(op: impl Into<Op>, ins: &[&[usize]]) -> Result<Vec<usize>, String> {
    op.into().rules().infer(ins)
}

/// Output shape and MACs of an op on the given inputs.
fn shape_macs(op: impl Into<Op>, ins: &[&[usize]]) -> (Vec<usize>, u64) {
    let op = op.into();
    let out = op.rules().infer(ins).unwrap();
    let macs = op.rules().macs(ins, &out);
    (out, macs)
}

fn pool(k: usize, s: usize, p: usize) -> Pool2dAttrs {
    Pool2dAttrs {
        kernel: [k, k],
        stride: Some([s, s]),
        padding: [p, p],
    }
}

/// [N, C, H, W] as nested vectors of f64.
fn to_vec4(t: &Tensor) -> Vec<Vec<Vec<Vec<f64>>>> {
    let t = t.to_dtype(DType::F64).unwrap();
    (0..t.dim(0).unwrap())
        .map(|i| t.get(i).unwrap().to_vec3::<f64>().unwrap())
        .collect()
}

fn flat64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn assert_all_close(a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.dims(), b.dims());
    for (i, (x, y)) in flat64(a).iter().zip(flat64(b)).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "index {i}: {x} vs {y}"
        );
    }
}

fn eval1(g: &Graph, x: &Tensor) -> Tensor {
    Executor::new(0)
        .eval(g, std::slice::from_ref(x))
        .unwrap()
        .remove(0)
}

// ----------------------------------------------------------------------------------------------
// shape rules and MACs

#[test]
fn conv2d_shapes_and_macs() {
    // 3 -> 16, 3x3, pad 1 on 32x32
    assert_eq!(
        shape_macs(conv(3, 16, 3, 1, 1, 1, 1), &[&[3, 32, 32]]),
        (vec![16, 32, 32], 16 * 32 * 32 * 3 * 9)
    );
    assert_eq!(16 * 32 * 32 * 3 * 9, 442_368);
    // stride 2, pad 1: 32 -> 16
    assert_eq!(
        shape_macs(conv(3, 16, 3, 2, 1, 1, 1), &[&[3, 32, 32]]),
        (vec![16, 16, 16], 16 * 16 * 16 * 27)
    );
    // no padding: 32 -> 30
    assert_eq!(
        shape_macs(conv(3, 8, 3, 1, 0, 1, 1), &[&[3, 32, 32]]),
        (vec![8, 30, 30], 8 * 30 * 30 * 27)
    );
    // dilation 2: span 5, 10 -> 6
    assert_eq!(
        shape_macs(conv(2, 4, 3, 1, 0, 2, 1), &[&[2, 10, 10]]),
        (vec![4, 6, 6], 4 * 36 * 2 * 9)
    );
    // groups 2: each output sees in/groups = 2 channels
    assert_eq!(
        shape_macs(conv(4, 8, 3, 1, 1, 1, 2), &[&[4, 6, 6]]),
        (vec![8, 6, 6], 8 * 36 * 2 * 9)
    );
    // depthwise
    assert_eq!(
        shape_macs(conv(8, 8, 3, 1, 1, 1, 8), &[&[8, 8, 8]]),
        (vec![8, 8, 8], 8 * 64 * 9)
    );
    // 1x1 stride 2 on odd input: (7 - 1) / 2 + 1 = 4
    assert_eq!(
        shape_macs(conv(6, 12, 1, 2, 0, 1, 1), &[&[6, 7, 7]]),
        (vec![12, 4, 4], 12 * 16 * 6)
    );
    // ResNet stem: 7x7 stride 2 pad 3 on 224 -> 112
    assert_eq!(
        shape_macs(conv(3, 64, 7, 2, 3, 1, 1), &[&[3, 224, 224]]),
        (vec![64, 112, 112], 118_013_952)
    );
    // rectangular kernel, stride 2: (7 - 3) / 2 + 1 = 3, (5 - 1) / 2 + 1 = 3
    let mut c = conv(3, 5, 1, 2, 0, 1, 1);
    c.kernel = [3, 1];
    assert_eq!(shape_macs(c, &[&[3, 7, 5]]), (vec![5, 3, 3], 5 * 9 * 3 * 3));
}

#[test]
fn linear_shapes_and_macs() {
    assert_eq!(
        shape_macs(Linear::new(2048, 10), &[&[2048]]),
        (vec![10], 20_480)
    );
    // over the last axis of a sequence
    assert_eq!(
        shape_macs(Linear::new(64, 32), &[&[7, 64]]),
        (vec![7, 32], 7 * 32 * 64)
    );
    let mut l = Linear::new(5, 3);
    l.bias = false;
    assert_eq!(shape_macs(l.clone(), &[&[5]]), (vec![3], 15));
    assert_eq!(l.params().len(), 1);
}

#[test]
fn norm_embedding_activation_shapes() {
    assert_eq!(
        shape_macs(BatchNorm::new(16), &[&[16, 8, 8]]),
        (vec![16, 8, 8], 0)
    );
    assert_eq!(shape_macs(BatchNorm::new(16), &[&[16]]), (vec![16], 0));
    assert_eq!(
        shape_macs(LayerNorm::new(32), &[&[10, 32]]),
        (vec![10, 32], 0)
    );
    let e = Embedding {
        num_embeddings: 100,
        embedding_dim: 16,
    };
    assert_eq!(shape_macs(e.clone(), &[&[12]]), (vec![12, 16], 0));
    assert_eq!(shape_macs(e, &[&[2, 3]]), (vec![2, 3, 16], 0));
    for op in [
        Op::from(Relu {}),
        Gelu::default().into(),
        Silu {}.into(),
        Tanh {}.into(),
        Sigmoid {}.into(),
        Softmax::default().into(),
        Softmax { axis: 0 }.into(),
        Dropout { p: 0.5 }.into(),
    ] {
        assert_eq!(
            shape_macs(op.clone(), &[&[4, 5, 6]]),
            (vec![4, 5, 6], 0),
            "{op:?}"
        );
    }
}

#[test]
fn elementwise_and_shape_op_shapes() {
    assert_eq!(infer(Add {}, &[&[3, 4], &[3, 4]]).unwrap(), vec![3, 4]);
    assert_eq!(infer(Add {}, &[&[3, 4], &[1, 4]]).unwrap(), vec![3, 4]);
    assert_eq!(
        infer(Add {}, &[&[3, 1, 5], &[4, 1]]).unwrap(),
        vec![3, 4, 5]
    );
    assert_eq!(
        infer(Mul {}, &[&[8, 4, 4], &[8, 1, 1]]).unwrap(),
        vec![8, 4, 4]
    );
    assert_eq!(
        infer(Mul {}, &[&[2, 3], &[2, 3], &[1, 3]]).unwrap(),
        vec![2, 3]
    );
    assert_eq!(
        infer(Concat { axis: 0 }, &[&[2, 3, 3], &[5, 3, 3]]).unwrap(),
        vec![7, 3, 3]
    );
    assert_eq!(
        infer(Concat { axis: -1 }, &[&[3, 2], &[3, 4], &[3, 1]]).unwrap(),
        vec![3, 7]
    );
    assert_eq!(infer(Flatten {}, &[&[4, 2, 3]]).unwrap(), vec![24]);
    assert_eq!(
        infer(Reshape { shape: vec![6, 4] }, &[&[4, 2, 3]]).unwrap(),
        vec![6, 4]
    );
    assert_eq!(shape_macs(Flatten {}, &[&[4, 2, 3]]).1, 0);
}

#[test]
fn pool_shapes() {
    assert_eq!(
        shape_macs(MaxPool2d(pool(3, 2, 1)), &[&[16, 32, 32]]),
        (vec![16, 16, 16], 0)
    );
    assert_eq!(
        infer(MaxPool2d(pool(3, 2, 1)), &[&[4, 7, 7]]).unwrap(),
        vec![4, 4, 4]
    );
    assert_eq!(
        infer(MaxPool2d(pool(2, 2, 0)), &[&[4, 7, 7]]).unwrap(),
        vec![4, 3, 3]
    );
    assert_eq!(
        infer(AvgPool2d(pool(3, 2, 1)), &[&[4, 8, 8]]).unwrap(),
        vec![4, 4, 4]
    );
    assert_eq!(
        infer(AvgPool2d(pool(2, 2, 0)), &[&[4, 8, 6]]).unwrap(),
        vec![4, 4, 3]
    );
    // stride defaults to the kernel
    let p = Pool2dAttrs {
        kernel: [3, 3],
        stride: None,
        padding: [0, 0],
    };
    assert_eq!(p.stride(), [3, 3]);
    assert_eq!(infer(MaxPool2d(p), &[&[2, 9, 10]]).unwrap(), vec![2, 3, 3]);
    assert_eq!(shape_macs(GlobalAvgPool {}, &[&[16, 7, 7]]), (vec![16], 0));
}

#[test]
fn op_json_defaults() {
    let c: Op = serde_json::from_str(
        r#"{"type": "conv2d", "in_channels": 3, "out_channels": 8, "kernel": [3, 3]}"#,
    )
    .unwrap();
    assert_eq!(c, Op::Conv2d(Conv2d::new(3, 8, 3)));
    let p: Op = serde_json::from_str(r#"{"type": "max_pool2d", "kernel": [2, 2]}"#).unwrap();
    assert_eq!(infer(p, &[&[1, 8, 8]]).unwrap(), vec![1, 4, 4]);
    let g: Op = serde_json::from_str(r#"{"type": "gelu"}"#).unwrap();
    assert_eq!(g, Op::Gelu(Gelu::default()));
    let s: Op = serde_json::from_str(r#"{"type": "softmax"}"#).unwrap();
    assert_eq!(s, Op::Softmax(Softmax { axis: -1 }));
    assert_eq!(Op::all_type_names().len(), 48);
    // every op survives a JSON round trip with its type tag
    for op in [
        Op::from(Linear::new(3, 4)),
        conv(4, 4, 3, 2, 1, 2, 2).into(),
        MaxPool2d(pool(3, 2, 1)).into(),
    ] {
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(v["type"], op.type_name());
        assert_eq!(serde_json::from_value::<Op>(v).unwrap(), op);
    }
}

// ----------------------------------------------------------------------------------------------
// shape errors name their node

fn shape_error(in_shapes: &[&[usize]], op: impl Into<Op>) -> (String, String, String) {
    let mut b = GraphBuilder::new("bad", 0);
    let ins: Vec<Value> = in_shapes
        .iter()
        .enumerate()
        .map(|(i, s)| b.input(&format!("x{i}"), s))
        .collect();
    let refs: Vec<&Value> = ins.iter().collect();
    let e = b
        .named("culprit")
        .node(op, &refs)
        .expect_err("the shapes should not fit");
    assert!(
        e.to_string().contains("culprit"),
        "`{e}` does not name the node"
    );
    match e {
        GraphError::Shape { node, op, msg } => (node, op, msg),
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn shape_errors_name_the_node() {
    let cases: Vec<(Vec<Vec<usize>>, Op, &str, &str)> = vec![
        (
            vec![vec![4]],
            Linear::new(5, 3).into(),
            "linear",
            "in_features = 5",
        ),
        (
            vec![vec![4, 8, 8]],
            Conv2d::new(3, 8, 3).into(),
            "conv2d",
            "4 channels",
        ),
        (
            vec![vec![3, 2, 2]],
            Conv2d::new(3, 8, 3).into(),
            "conv2d",
            "does not fit",
        ),
        (
            vec![vec![3, 8]],
            Conv2d::new(3, 8, 3).into(),
            "conv2d",
            "[channels, height, width]",
        ),
        (
            vec![vec![3, 8, 8]],
            conv(3, 8, 3, 1, 1, 1, 2).into(),
            "conv2d",
            "groups",
        ),
        (
            vec![vec![3, 8, 8]],
            conv(3, 8, 3, 0, 1, 1, 1).into(),
            "conv2d",
            "positive",
        ),
        (
            vec![vec![4, 8, 8]],
            BatchNorm::new(3).into(),
            "batch_norm",
            "num_features = 3",
        ),
        (
            vec![vec![4, 6]],
            LayerNorm::new(5).into(),
            "layer_norm",
            "normalized_shape = 5",
        ),
        (
            vec![vec![3, 8, 8]],
            MaxPool2d(pool(2, 2, 2)).into(),
            "max_pool2d",
            "padding",
        ),
        (
            vec![vec![3, 2, 2]],
            AvgPool2d(pool(3, 3, 0)).into(),
            "avg_pool2d",
            "does not fit",
        ),
        (
            vec![vec![3, 8]],
            MaxPool2d(pool(2, 2, 0)).into(),
            "max_pool2d",
            "[channels, height, width]",
        ),
        (
            vec![vec![3, 8, 8]],
            MaxPool2d(pool(2, 0, 0)).into(),
            "max_pool2d",
            "positive",
        ),
        (
            vec![vec![3, 4], vec![3, 5]],
            Add {}.into(),
            "add",
            "broadcast",
        ),
        (vec![vec![3, 4]], Add {}.into(), "add", "at least 2"),
        (
            vec![vec![2, 4], vec![4, 2]],
            Mul {}.into(),
            "mul",
            "broadcast",
        ),
        (
            vec![vec![2, 3], vec![3, 3]],
            Concat { axis: 1 }.into(),
            "concat",
            "differ",
        ),
        (
            vec![vec![2, 3], vec![2, 3]],
            Concat { axis: 2 }.into(),
            "concat",
            "out of range",
        ),
        (
            vec![vec![2, 3]],
            Reshape { shape: vec![7] }.into(),
            "reshape",
            "element counts",
        ),
        (vec![vec![4]], Dropout { p: 1.0 }.into(), "dropout", "p = 1"),
        (
            vec![vec![4]],
            Dropout { p: -0.1 }.into(),
            "dropout",
            "outside",
        ),
        (
            vec![vec![4, 5]],
            Softmax { axis: 2 }.into(),
            "softmax",
            "out of range",
        ),
        (
            vec![vec![4, 5]],
            Softmax { axis: -3 }.into(),
            "softmax",
            "out of range",
        ),
        (
            vec![vec![16]],
            GlobalAvgPool {}.into(),
            "global_avg_pool",
            "[channels, spatial..]",
        ),
        (
            vec![vec![4], vec![4]],
            Relu {}.into(),
            "relu",
            "expects 1 input",
        ),
    ];
    for (ins, op, type_name, msg_part) in cases {
        let ins: Vec<&[usize]> = ins.iter().map(Vec::as_slice).collect();
        let (node, op_name, msg) = shape_error(&ins, op.clone());
        assert_eq!(node, "culprit", "{op:?}");
        assert_eq!(op_name, type_name, "{op:?}");
        assert!(
            msg.contains(msg_part),
            "{op:?}: `{msg}` does not mention `{msg_part}`"
        );
    }
}

#[test]
fn auto_named_nodes_are_named_in_errors() {
    let mut b = GraphBuilder::new("bad", 0);
    let x = b.input("x", &[4]);
    let _ = b.linear(&x, 3).unwrap();
    let e = b.node(Linear::new(9, 2), &[&x]).unwrap_err();
    assert!(
        matches!(&e, GraphError::Shape { node, .. } if node == "linear2"),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("node `linear2` (linear)"), "{e}");
}

#[test]
fn validate_names_the_node_after_an_edit() {
    let mut b = GraphBuilder::new("g", 0);
    let x = b.input("x", &[6]);
    let h = b.named("hidden").linear(&x, 4).unwrap();
    let y = b.named("head").linear(&h, 2).unwrap();
    let mut g = b.finish(&[&y]).unwrap();
    if let Op::Linear(l) = &mut g.node_mut("head").unwrap().op {
        l.in_features = 5;
    }
    let e = g.validate().unwrap_err();
    assert!(
        matches!(&e, GraphError::Shape { node, op, .. } if node == "head" && op == "linear"),
        "{e:?}"
    );
    // the params no longer fit the attributes either: put the shape back and break a parameter
    if let Op::Linear(l) = &mut g.node_mut("head").unwrap().op {
        l.in_features = 4;
    }
    g.select("head", "weight", 1, &[0, 1, 2]).unwrap(); // resize re-derives in_features = 3
    let e = g.validate().unwrap_err();
    assert!(
        matches!(&e, GraphError::Shape { node, .. } if node == "head"),
        "{e:?}"
    );
}

#[test]
fn runtime_input_errors() {
    let mut b = GraphBuilder::new("g", 0);
    let x = b.input("pixels", &[3, 4, 4]);
    let y = b.relu(&x).unwrap();
    let g = b.finish(&[&y]).unwrap();
    let mut ex = Executor::new(0);
    let e = ex.eval(&g, &[randn_f32(&[2, 3, 4, 5], 0)]).unwrap_err();
    assert!(
        matches!(&e, GraphError::Input { name, .. } if name == "pixels"),
        "{e:?}"
    );
    let e = ex.eval(&g, &[]).unwrap_err();
    assert!(e.to_string().contains("pixels"), "{e}");
    let e = ex.eval(&g, &[ids(&[2, 3, 4, 4], 5, 0)]).unwrap_err();
    assert!(
        matches!(&e, GraphError::Input { name, .. } if name == "pixels"),
        "{e:?}"
    );

    // an id out of range is an error of the embedding node, not a panic
    let mut b = GraphBuilder::new("g", 0);
    let t = b.ids_input("tokens", &[3]);
    let y = b.named("emb").embedding(&t, 5, 2).unwrap();
    let g = b.finish(&[&y]).unwrap();
    let e = Executor::new(0)
        .eval(&g, &[Tensor::new(&[[0u32, 4, 5]], &Device::Cpu).unwrap()])
        .unwrap_err();
    assert!(
        matches!(&e, GraphError::Forward { node, .. } if node == "emb"),
        "{e:?}"
    );
}

// ----------------------------------------------------------------------------------------------
// forward passes

/// Naive NCHW pooling: max ignores padding, average counts padding as zeros.
fn naive_pool(x: &Tensor, k: [usize; 2], s: [usize; 2], p: [usize; 2], max: bool) -> Tensor {
    let xs = to_vec4(x);
    let (n, c, h, w) = x.dims4().unwrap();
    let oh = (h + 2 * p[0] - k[0]) / s[0] + 1;
    let ow = (w + 2 * p[1] - k[1]) / s[1] + 1;
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in xs.iter().flatten() {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f64::NEG_INFINITY;
                let mut sum = 0.0;
                for ky in 0..k[0] {
                    for kx in 0..k[1] {
                        let iy = (oy * s[0] + ky) as isize - p[0] as isize;
                        let ix = (ox * s[1] + kx) as isize - p[1] as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            let v = plane[iy as usize][ix as usize];
                            m = m.max(v);
                            sum += v;
                        }
                    }
                }
                out.push(if max { m } else { sum / (k[0] * k[1]) as f64 });
            }
        }
    }
    Tensor::from_vec(out, (n, c, oh, ow), &Device::Cpu).unwrap()
}

#[test]
fn pools_match_candle_when_kernel_equals_stride() {
    for (k, hw) in [(2, 8), (4, 8), (2, 7), (4, 10)] {
        let x = randn_f32(&[2, 3, hw, hw], k as u64);
        let gm = single_op(MaxPool2d(pool(k, k, 0)), &[&[3, hw, hw]]);
        let ga = single_op(AvgPool2d(pool(k, k, 0)), &[&[3, hw, hw]]);
        let ours_max = eval1(&gm, &x);
        let ours_avg = eval1(&ga, &x);
        let candle_max = x.max_pool2d_with_stride(k, k).unwrap();
        let candle_avg = x.avg_pool2d_with_stride(k, k).unwrap();
        assert_eq!(ours_max.dims(), candle_max.dims());
        assert_eq!(
            bits(&ours_max),
            bits(&candle_max),
            "max pool k = stride = {k} on {hw}x{hw}"
        );
        // k * k is a power of two: dividing and multiplying by the reciprocal agree exactly
        assert_eq!(
            bits(&ours_avg),
            bits(&candle_avg),
            "avg pool k = stride = {k} on {hw}x{hw}"
        );
    }
    // kernel 3: candle multiplies by 1/9, we divide by 9; equal up to rounding
    let x = randn_f32(&[2, 3, 9, 9], 3);
    let ours = eval1(&single_op(MaxPool2d(pool(3, 3, 0)), &[&[3, 9, 9]]), &x);
    assert_eq!(bits(&ours), bits(&x.max_pool2d_with_stride(3, 3).unwrap()));
    let ours = eval1(&single_op(AvgPool2d(pool(3, 3, 0)), &[&[3, 9, 9]]), &x);
    assert_all_close(&ours, &x.avg_pool2d_with_stride(3, 3).unwrap(), 1e-6);
}

#[test]
fn pools_match_a_naive_reference_k3_s2_p1() {
    for hw in [7, 8] {
        let x = randn(&[2, 3, hw, hw], hw as u64);
        let gm = single_op(MaxPool2d(pool(3, 2, 1)), &[&[3, hw, hw]]);
        let ga = single_op(AvgPool2d(pool(3, 2, 1)), &[&[3, hw, hw]]);
        let (mut gm, mut ga) = (gm, ga);
        gm.to_dtype(DType::F64).unwrap();
        ga.to_dtype(DType::F64).unwrap();
        let want_max = naive_pool(&x, [3, 3], [2, 2], [1, 1], true);
        let want_avg = naive_pool(&x, [3, 3], [2, 2], [1, 1], false);
        assert_eq!(
            bits(&eval1(&gm, &x)),
            bits(&want_max),
            "max pool on {hw}x{hw}"
        );
        assert_all_close(&eval1(&ga, &x), &want_avg, 1e-12);
        // and in f32
        let x32 = x.to_dtype(DType::F32).unwrap();
        let gm32 = single_op(MaxPool2d(pool(3, 2, 1)), &[&[3, hw, hw]]);
        assert_all_close(&eval1(&gm32, &x32), &want_max, 1e-6);
    }
    // all-negative input: the zero padding must not win the max
    let x = uniform(&[1, 2, 5, 5], -2.0, -1.0, 9);
    let mut gm = single_op(MaxPool2d(pool(3, 2, 1)), &[&[2, 5, 5]]);
    gm.to_dtype(DType::F64).unwrap();
    let y = eval1(&gm, &x);
    assert!(flat64(&y).iter().all(|&v| v < -1.0 + 1e-12));
    assert_eq!(
        bits(&y),
        bits(&naive_pool(&x, [3, 3], [2, 2], [1, 1], true))
    );
}

#[test]
fn global_avg_pool_is_the_spatial_mean() {
    let x = randn_f32(&[2, 3, 4, 5], 1);
    let y = eval1(&single_op(GlobalAvgPool {}, &[&[3, 4, 5]]), &x);
    let want = x.mean(D::Minus1).unwrap().mean(D::Minus1).unwrap();
    assert_all_close(&y, &want, 1e-6);
}

/// Sets a node's parameter to a tensor.
fn set(g: &Graph, node: &str, param: &str, t: &Tensor) {
    g.node(node).unwrap().params[param].value.set(t).unwrap();
}

fn get(g: &Graph, node: &str, param: &str) -> Tensor {
    g.node(node).unwrap().params[param].tensor().clone()
}

#[test]
fn batch_norm_eval_matches_the_formula() {
    for shape in [vec![3usize, 4, 4], vec![3]] {
        let mut g = single_op(BatchNorm::new(3), &[&shape]);
        g.to_dtype(DType::F64).unwrap();
        let (rm, rv, w, b) = (
            randn(&[3], 1),
            uniform(&[3], 0.5, 2.0, 2),
            randn(&[3], 3),
            randn(&[3], 4),
        );
        set(&g, "op", "running_mean", &rm);
        set(&g, "op", "running_var", &rv);
        set(&g, "op", "weight", &w);
        set(&g, "op", "bias", &b);
        let mut dims = vec![2usize];
        dims.extend(&shape);
        let x = randn(&dims, 5);
        let y = eval1(&g, &x);
        let bshape: Vec<usize> = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| if i == 1 { d } else { 1 })
            .collect();
        let r = |t: &Tensor| t.reshape(bshape.as_slice()).unwrap();
        let want = x
            .broadcast_sub(&r(&rm))
            .unwrap()
            .broadcast_div(&r(&(rv.clone() + 1e-5).unwrap().sqrt().unwrap()))
            .unwrap()
            .broadcast_mul(&r(&w))
            .unwrap()
            .broadcast_add(&r(&b))
            .unwrap();
        assert_all_close(&y, &want, 1e-12);
        // eval mode does not touch the running statistics
        assert_eq!(bits(&get(&g, "op", "running_mean")), bits(&rm));
    }
    // without affine parameters
    let mut bn = BatchNorm::new(2);
    bn.affine = false;
    let mut g = single_op(bn, &[&[2, 3]]);
    g.to_dtype(DType::F64).unwrap();
    set(
        &g,
        "op",
        "running_mean",
        &Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap(),
    );
    set(
        &g,
        "op",
        "running_var",
        &Tensor::new(&[4.0f64 - 1e-5, 0.25 - 1e-5], &Device::Cpu).unwrap(),
    );
    let x = Tensor::new(&[[[3.0f64, 1.0, 5.0], [-2.0, -1.5, 0.0]]], &Device::Cpu).unwrap();
    let want = Tensor::new(&[[[1.0f64, 0.0, 2.0], [0.0, 1.0, 4.0]]], &Device::Cpu).unwrap();
    assert_all_close(&eval1(&g, &x), &want, 1e-9);
}

#[test]
fn batch_norm_train_uses_batch_statistics_and_updates_running_stats() {
    let mut g = single_op(BatchNorm::new(3), &[&[3, 2, 2]]);
    g.to_dtype(DType::F64).unwrap();
    let rm0 = randn(&[3], 1);
    let rv0 = uniform(&[3], 0.5, 2.0, 2);
    set(&g, "op", "running_mean", &rm0);
    set(&g, "op", "running_var", &rv0);
    let x = randn(&[4, 3, 2, 2], 3).affine(3.0, 1.0).unwrap();
    let y = Executor::new(0)
        .run(&g, std::slice::from_ref(&x), Mode::TRAIN, None)
        .unwrap()
        .remove(0);
    // per channel: mean 0, biased variance 1 / (1 + eps / var)
    let xc = x.transpose(0, 1).unwrap().flatten_from(1).unwrap(); // [C, N*H*W]
    let yc = y.transpose(0, 1).unwrap().flatten_from(1).unwrap();
    let n = xc.dim(1).unwrap() as f64;
    let mean = xc.mean(1).unwrap();
    let var = xc
        .broadcast_sub(&mean.unsqueeze(1).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .mean(1)
        .unwrap();
    let ymean = yc.mean(1).unwrap();
    let yvar = yc.sqr().unwrap().mean(1).unwrap();
    for (i, (&m, (&v, &yv))) in flat64(&ymean)
        .iter()
        .zip(flat64(&var).iter().zip(&flat64(&yvar)))
        .enumerate()
    {
        assert!(m.abs() < 1e-12, "channel {i}: mean {m}");
        assert!((yv - v / (v + 1e-5)).abs() < 1e-12, "channel {i}: var {yv}");
    }
    // PyTorch's update with momentum 0.1 and the unbiased variance
    let want_rm = rm0
        .affine(0.9, 0.0)
        .unwrap()
        .add(&mean.affine(0.1, 0.0).unwrap())
        .unwrap();
    let want_rv = rv0
        .affine(0.9, 0.0)
        .unwrap()
        .add(&var.affine(0.1 * n / (n - 1.0), 0.0).unwrap())
        .unwrap();
    assert_all_close(&get(&g, "op", "running_mean"), &want_rm, 1e-12);
    assert_all_close(&get(&g, "op", "running_var"), &want_rv, 1e-12);

    // one value per channel cannot be normalised with batch statistics: an error, not NaNs
    let mut g1 = single_op(BatchNorm::new(3), &[&[3]]);
    g1.to_dtype(DType::F64).unwrap();
    let e = Executor::new(0)
        .run(&g1, &[randn(&[1, 3], 4)], Mode::TRAIN, None)
        .unwrap_err();
    assert!(
        matches!(&e, GraphError::Forward { node, .. } if node == "op"),
        "{e:?}"
    );
}

#[test]
fn layer_norm_matches_the_formula() {
    let mut g = single_op(LayerNorm::new(5), &[&[3, 5]]);
    g.to_dtype(DType::F64).unwrap();
    let (w, b) = (randn(&[5], 1), randn(&[5], 2));
    set(&g, "op", "weight", &w);
    set(&g, "op", "bias", &b);
    let x = randn(&[2, 3, 5], 3);
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let want = xc
        .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&w)
        .unwrap()
        .broadcast_add(&b)
        .unwrap();
    assert_all_close(&eval1(&g, &x), &want, 1e-12);
}

#[test]
fn dropout_train_zeroes_about_half_and_scales_by_two() {
    let g = single_op(Dropout { p: 0.5 }, &[&[1000]]);
    let x = Tensor::ones((8, 1000), DType::F32, &Device::Cpu).unwrap();
    let run = |seed: u64, mode: Mode| {
        Executor::new(seed)
            .run(&g, std::slice::from_ref(&x), mode, None)
            .unwrap()
            .remove(0)
    };
    let y = flat64(&run(1, Mode::TRAIN));
    let zeros = y.iter().filter(|&&v| v == 0.0).count();
    assert!(
        y.iter().all(|&v| v == 0.0 || v == 2.0),
        "kept values are scaled by exactly 2"
    );
    let frac = zeros as f64 / y.len() as f64;
    assert!((0.47..=0.53).contains(&frac), "zeroed fraction {frac}");
    // seeded: the same seed gives the same mask, another seed another one; one executor draws
    // a fresh mask on every pass
    assert_eq!(flat64(&run(1, Mode::TRAIN)), y);
    assert_ne!(flat64(&run(2, Mode::TRAIN)), y);
    let mut ex = Executor::new(1);
    let a = ex
        .run(&g, std::slice::from_ref(&x), Mode::TRAIN, None)
        .unwrap()
        .remove(0);
    let b = ex
        .run(&g, std::slice::from_ref(&x), Mode::TRAIN, None)
        .unwrap()
        .remove(0);
    assert_ne!(flat64(&a), flat64(&b));
    // eval mode (with or without gradients) is the identity
    assert_eq!(bits(&run(1, Mode::EVAL)), bits(&x));
    assert_eq!(bits(&run(1, Mode::EVAL_GRAD)), bits(&x));
    // p = 0 in training is the identity too
    let g0 = single_op(Dropout { p: 0.0 }, &[&[1000]]);
    assert_eq!(
        bits(
            &Executor::new(0)
                .run(&g0, std::slice::from_ref(&x), Mode::TRAIN, None)
                .unwrap()[0]
        ),
        bits(&x)
    );
}

#[test]
fn dropout_scale_is_exact_in_f64() {
    let g = single_op(Dropout { p: 0.3 }, &[&[200]]);
    let x = Tensor::ones((4, 200), DType::F64, &Device::Cpu).unwrap();
    let y = Executor::new(3)
        .run(&g, &[x], Mode::TRAIN, None)
        .unwrap()
        .remove(0);
    let want = 1.0 / 0.7;
    for v in flat64(&y) {
        assert!(
            v == 0.0 || v == want,
            "kept value {v:.17} instead of {want:.17}"
        );
    }
}

/// Per-sample shapes [2, 4] and [4] broadcast (the shape rule says [2, 4]); the forward must add
/// each sample's vector to each of that sample's rows.
#[test]
fn lower_rank_broadcasting_aligns_per_sample_axes() {
    for (batch, op) in [
        (2, Op::from(Add {})),
        (3, Add {}.into()),
        (2, Mul {}.into()),
        (3, Mul {}.into()),
    ] {
        let mul = matches!(op, Op::Mul(_));
        let g = single_op(op, &[&[2, 4], &[4]]);
        let a = randn_f32(&[batch, 2, 4], 1);
        let b = randn_f32(&[batch, 4], 2);
        let y = match Executor::new(0).eval(&g, &[a.clone(), b.clone()]) {
            Ok(mut y) => y.remove(0),
            Err(e) => panic!("batch {batch}, mul = {mul}: {e}"),
        };
        let b = b.unsqueeze(1).unwrap();
        let want = if mul {
            a.broadcast_mul(&b)
        } else {
            a.broadcast_add(&b)
        }
        .unwrap();
        assert_all_close(&y, &want, 1e-6);
    }
}

#[test]
fn softmax_and_concat_forward() {
    let x = randn_f32(&[2, 3, 4], 1);
    let y = eval1(&single_op(Softmax { axis: 0 }, &[&[3, 4]]), &x);
    let sums = y.sum(1).unwrap();
    assert_all_close(
        &sums,
        &Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap(),
        1e-6,
    );
    let want = candle_nn::ops::softmax(&x, 1).unwrap();
    assert_all_close(&y, &want, 1e-6);

    let g = single_op(Concat { axis: 0 }, &[&[2, 3], &[1, 3]]);
    let (a, b) = (randn_f32(&[2, 2, 3], 2), randn_f32(&[2, 1, 3], 3));
    let y = Executor::new(0)
        .eval(&g, &[a.clone(), b.clone()])
        .unwrap()
        .remove(0);
    assert_eq!(bits(&y), bits(&Tensor::cat(&[&a, &b], 1).unwrap()));
}

// ----------------------------------------------------------------------------------------------
// hooks

fn hooked_net() -> Graph {
    let mut b = GraphBuilder::new("hooked", 1);
    let x = b.input("x", &[2, 6, 6]);
    let c = b.named("conv").conv2d(&x, 3, 3, 1, 1).unwrap();
    let r = b.named("act").relu(&c).unwrap();
    let s = b.named("skip").conv2d(&x, 3, 1, 1, 0).unwrap();
    let a = b.named("sum").add(&r, &s).unwrap();
    let p = b.named("pool").global_avg_pool(&a).unwrap();
    let y = b.named("head").linear(&p, 4).unwrap();
    b.finish(&[&y]).unwrap()
}

#[test]
fn hooks_capture_requested_inputs_and_outputs() {
    let g = hooked_net();
    let x = randn_f32(&[2, 2, 6, 6], 1);
    let mut hooks = Hooks::outputs_of(["conv", "act", "head"]);
    hooks.capture_inputs = ["sum", "head"].into_iter().map(String::from).collect();
    let y = Executor::new(0)
        .run(&g, std::slice::from_ref(&x), Mode::EVAL, Some(&mut hooks))
        .unwrap()
        .remove(0);

    let got: HashSet<&str> = hooks.outputs.keys().map(String::as_str).collect();
    assert_eq!(got, HashSet::from(["conv", "act", "head"]));
    let got: HashSet<&str> = hooks.inputs.keys().map(String::as_str).collect();
    assert_eq!(got, HashSet::from(["sum", "head"]));

    assert_eq!(hooks.outputs["conv"].dims(), &[2, 3, 6, 6]);
    assert_eq!(
        bits(&hooks.outputs["act"]),
        bits(&hooks.outputs["conv"].relu().unwrap())
    );
    assert_eq!(bits(&hooks.outputs["head"]), bits(&y));
    // the inputs of `sum` are the relu output and the skip conv, in order
    let sum_in = &hooks.inputs["sum"];
    assert_eq!(sum_in.len(), 2);
    assert_eq!(bits(&sum_in[0]), bits(&hooks.outputs["act"]));
    let skip = eval_node_output(&g, &x, "skip");
    assert_eq!(bits(&sum_in[1]), bits(&skip));
    // the input of the head is the pooled sum
    let pooled = (&sum_in[0] + &sum_in[1])
        .unwrap()
        .mean(D::Minus1)
        .unwrap()
        .mean(D::Minus1)
        .unwrap();
    assert_eq!(hooks.inputs["head"].len(), 1);
    assert_all_close(&hooks.inputs["head"][0], &pooled, 1e-6);

    // the hooks do not change the result
    assert_eq!(bits(&eval1(&g, &x)), bits(&y));
}

fn eval_node_output(g: &Graph, x: &Tensor, node: &str) -> Tensor {
    let mut h = Hooks::outputs_of([node]);
    Executor::new(0)
        .run(g, std::slice::from_ref(x), Mode::EVAL, Some(&mut h))
        .unwrap();
    h.outputs.remove(node).unwrap()
}

/// Nodes in `capture_grads` give their activation gradients through `Hooks::output_grad`.
#[test]
fn hooked_outputs_give_activation_gradients() {
    let mut g = hooked_net();
    g.to_dtype(DType::F64).unwrap();
    let x = randn(&[2, 2, 6, 6], 2);
    let mut hooks = Hooks::grads_of(["pool"]);
    let y = Executor::new(0)
        .run(&g, &[x], Mode::EVAL_GRAD, Some(&mut hooks))
        .unwrap()
        .remove(0);
    let w = randn(&[2, 4], 3);
    let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    // d loss / d pooled = w @ W_head
    let head_w = get(&g, "head", "weight");
    let want = w.matmul(&head_w).unwrap();
    let got = hooks
        .output_grad("pool", &grads)
        .expect("gradient of the captured activation");
    assert_all_close(&got, &want, 1e-12);
}

// ----------------------------------------------------------------------------------------------
// masks and counts

/// conv(3->4, 3x3, pad 1) on 3x8x8, bn, relu, max pool 2, flatten, linear(64->10).
fn counted_net() -> Graph {
    let mut b = GraphBuilder::new("counted", 0);
    let x = b.input("x", &[3, 8, 8]);
    let x = b.named("conv").conv2d(&x, 4, 3, 1, 1).unwrap();
    let x = b.named("bn").batch_norm(&x).unwrap();
    let x = b.relu(&x).unwrap();
    let x = b.max_pool2d(&x, 2, 2).unwrap();
    let x = b.flatten(&x).unwrap();
    let y = b.named("fc").linear(&x, 10).unwrap();
    b.finish(&[&y]).unwrap()
}

#[test]
fn counts_on_a_small_model() {
    let mut g = counted_net();
    // conv 4*3*9 + 4, bn 4 + 4 (running stats are buffers), linear 64*10 + 10
    assert_eq!(g.param_count(), 108 + 4 + 8 + 640 + 10);
    assert_eq!(g.param_count(), 770);
    // the bn bias starts at zero
    assert_eq!(g.nonzero_count().unwrap(), 766);
    // conv 4*8*8*27, linear 640
    assert_eq!(g.macs().unwrap(), 6912 + 640);
    assert_eq!(g.effective_macs().unwrap(), 7552);

    // prune conv output channels 0 and 1 (half of the conv weight)
    let mut m = vec![1f32; 108];
    m[..54].iter_mut().for_each(|v| *v = 0.0);
    g.set_mask(
        "conv",
        "weight",
        Tensor::from_vec(m, (4, 3, 3, 3), &Device::Cpu).unwrap(),
    )
    .unwrap();
    assert_eq!(
        g.param_count(),
        770,
        "masks do not change the parameter count"
    );
    assert_eq!(g.nonzero_count().unwrap(), 766 - 54);
    assert_eq!(
        g.macs().unwrap(),
        7552,
        "masks do not change the dense MACs"
    );
    assert_eq!(g.effective_macs().unwrap(), 6912 / 2 + 640);

    // and half the rows of the linear layer
    let mut m = vec![1f32; 640];
    m[..320].iter_mut().for_each(|v| *v = 0.0);
    g.set_mask(
        "fc",
        "weight",
        Tensor::from_vec(m, (10, 64), &Device::Cpu).unwrap(),
    )
    .unwrap();
    assert_eq!(g.nonzero_count().unwrap(), 766 - 54 - 320);
    assert_eq!(g.effective_macs().unwrap(), 3456 + 320);
}

#[test]
fn counts_on_a_sequence_model() {
    let mut b = GraphBuilder::new("seq", 0);
    let t = b.ids_input("tokens", &[7]);
    let e = b.embedding(&t, 50, 16).unwrap();
    let h = b.layer_norm(&e).unwrap();
    let h = b.linear(&h, 32).unwrap();
    let h = b.gelu(&h).unwrap();
    let y = b.linear(&h, 16).unwrap();
    let g = b.finish(&[&y]).unwrap();
    assert_eq!(g.param_count(), 800 + 32 + (16 * 32 + 32) + (32 * 16 + 16));
    // the embedding is a lookup: no MACs; each linear runs once per token
    assert_eq!(g.macs().unwrap(), 7 * 16 * 32 + 7 * 32 * 16);
}

#[test]
fn set_mask_zeroes_and_apply_masks_rezeroes() {
    let mut g = counted_net();
    let mask = uniform(&[10, 64], 0.0, 1.0, 1).ge(0.3).unwrap(); // u8 0/1, converted to the param's dtype
    g.set_mask("fc", "weight", mask.clone()).unwrap();
    let p = &g.node("fc").unwrap().params["weight"];
    let m = p.mask.as_ref().unwrap();
    assert_eq!(m.dtype(), DType::F32);
    let zeros = |t: &Tensor| flat64(t).iter().filter(|&&v| v == 0.0).count();
    let masked = zeros(m);
    assert!(masked > 100 && masked < 300);
    let before = flat64(p.tensor());
    for (v, k) in before.iter().zip(flat64(m)) {
        if k == 0.0 {
            assert_eq!(*v, 0.0);
        } else {
            assert_ne!(*v, 0.0);
        }
    }
    // an optimizer step writes into masked positions; apply_masks puts the zeros back and leaves
    // the rest alone
    let bumped = (p.tensor() + 1.0).unwrap();
    p.value.set(&bumped).unwrap();
    assert_eq!(zeros(p.tensor()), 0);
    g.apply_masks().unwrap();
    let p = &g.node("fc").unwrap().params["weight"];
    assert_eq!(bits(p.tensor()), bits(&(bumped * m).unwrap()));
    assert_eq!(zeros(p.tensor()), masked);
    // the forward sees the masked weights
    let x = randn_f32(&[2, 3, 8, 8], 2);
    let y = eval1(&g, &x);
    assert!(flat64(&y).iter().all(|v| v.is_finite()));

    // bad masks are errors naming the node and parameter
    let e = g
        .set_mask(
            "fc",
            "weight",
            Tensor::ones((64, 10), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(&e, GraphError::Param { node, param, .. } if node == "fc" && param == "weight"),
        "{e:?}"
    );
    let e = g
        .set_mask(
            "fc",
            "gamma",
            Tensor::ones(10, DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(&e, GraphError::Param { param, .. } if param == "gamma"),
        "{e:?}"
    );
    let e = g
        .set_mask(
            "nope",
            "weight",
            Tensor::ones(10, DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(&e, GraphError::UnknownNode(n) if n == "nope"),
        "{e:?}"
    );
}

#[test]
fn clones_are_deep() {
    let mut g = counted_net();
    g.set_mask(
        "conv",
        "weight",
        Tensor::zeros((4, 3, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let c = g.clone();
    set(
        &g,
        "fc",
        "bias",
        &Tensor::ones(10, DType::F32, &Device::Cpu).unwrap(),
    );
    assert_ne!(bits(&get(&c, "fc", "bias")), bits(&get(&g, "fc", "bias")));
    assert_eq!(c.nonzero_count().unwrap(), 766 - 108);
}

// ----------------------------------------------------------------------------------------------
// proptests: the shape rule agrees with the forward pass

fn conv_geometry() -> impl Strategy<Value = (Conv2d, usize, usize)> {
    (
        1usize..=4,
        1usize..=3,
        1usize..=4,
        1usize..=4,
        1usize..=3,
        0usize..=2,
        1usize..=3,
        1usize..=10,
        1usize..=10,
        0usize..3,
    )
        .prop_map(
            |(cin, cout_per_group, kh, kw, stride, padding, dilation, h, w, g)| {
                // groups: 1, or a divisor of cin
                let groups = [1, cin, if cin % 2 == 0 { 2 } else { 1 }][g];
                let mut c = Conv2d::new(cin, cout_per_group * groups, 1);
                c.kernel = [kh, kw];
                c.stride = stride;
                c.padding = padding;
                c.dilation = dilation;
                c.groups = groups;
                (c, h, w)
            },
        )
}

fn pool_geometry() -> impl Strategy<Value = (Pool2dAttrs, usize, usize)> {
    (
        1usize..=4,
        1usize..=4,
        prop::option::of((1usize..=3, 1usize..=3)),
        0usize..=2,
        0usize..=2,
        1usize..=9,
        1usize..=9,
    )
        .prop_map(|(kh, kw, stride, ph, pw, h, w)| {
            let attrs = Pool2dAttrs {
                kernel: [kh, kw],
                stride: stride.map(|(a, b)| [a, b]),
                padding: [ph.min(kh / 2), pw.min(kw / 2)],
            };
            (attrs, h, w)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn conv_shape_rule_matches_forward((c, h, w) in conv_geometry()) {
        let cin = c.in_channels;
        let span = |k: usize| c.dilation * (k - 1) + 1;
        let fits = h + 2 * c.padding >= span(c.kernel[0]) && w + 2 * c.padding >= span(c.kernel[1]);
        match infer(c.clone(), &[&[cin, h, w]]) {
            Err(msg) => prop_assert!(!fits, "rejected a fitting geometry: {msg}"),
            Ok(out) => {
                prop_assert!(fits);
                let ho = (h + 2 * c.padding - span(c.kernel[0])) / c.stride + 1;
                let wo = (w + 2 * c.padding - span(c.kernel[1])) / c.stride + 1;
                prop_assert_eq!(&out, &vec![c.out_channels, ho, wo]);
                let macs = c.macs(&[&[cin, h, w]], &out);
                prop_assert_eq!(macs, (c.out_channels * ho * wo * (cin / c.groups) * c.kernel[0] * c.kernel[1]) as u64);
                let g = single_op(c.clone(), &[&[cin, h, w]]);
                let y = eval1(&g, &randn_f32(&[2, cin, h, w], 1));
                let mut want = vec![2];
                want.extend(&out);
                prop_assert_eq!(y.dims(), want.as_slice());
            }
        }
    }

    #[test]
    fn pool_shape_rule_matches_forward((attrs, h, w) in pool_geometry()) {
        let fits = h + 2 * attrs.padding[0] >= attrs.kernel[0] && w + 2 * attrs.padding[1] >= attrs.kernel[1];
        match infer(MaxPool2d(attrs.clone()), &[&[2, h, w]]) {
            Err(msg) => prop_assert!(!fits, "rejected a fitting geometry: {msg}"),
            Ok(out) => {
                prop_assert!(fits);
                prop_assert_eq!(&infer(AvgPool2d(attrs.clone()), &[&[2, h, w]]).unwrap(), &out);
                let x = randn(&[2, 2, h, w], 2);
                let s = attrs.stride();
                for max in [true, false] {
                    let op: Op = if max { MaxPool2d(attrs.clone()).into() } else { AvgPool2d(attrs.clone()).into() };
                    let mut g = single_op(op, &[&[2, h, w]]);
                    g.to_dtype(DType::F64).unwrap();
                    let y = eval1(&g, &x);
                    let mut want = vec![2];
                    want.extend(&out);
                    prop_assert_eq!(y.dims(), want.as_slice());
                    let reference = naive_pool(&x, attrs.kernel, s, attrs.padding, max);
                    for (a, b) in flat64(&y).iter().zip(flat64(&reference)) {
                        prop_assert!(a.is_finite() && (a - b).abs() <= 1e-12, "max = {}: {} vs {}", max, a, b);
                    }
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------
// the ops for decomposed exports: shapes, MACs, errors, forward values

fn one_d(v: &[f64]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

/// A one-op f64 graph run in eval mode on the given inputs.
fn eval_op(op: impl Into<Op>, in_shapes: &[&[usize]], xs: &[Tensor]) -> Tensor {
    let mut g = single_op(op, in_shapes);
    g.to_dtype(DType::F64).unwrap();
    Executor::new(0).eval(&g, xs).unwrap().remove(0)
}

fn assert_values(y: &Tensor, want: &[f64], tol: f64) {
    let got = flat64(y);
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol,
            "index {i}: {a} vs {b}\n{got:?}\n{want:?}"
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_t(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
    dilation: usize,
    groups: usize,
) -> ConvTranspose2d {
    let mut c = ConvTranspose2d::new(cin, cout, k);
    c.stride = stride;
    c.padding = padding;
    c.output_padding = output_padding;
    c.dilation = dilation;
    c.groups = groups;
    c
}

fn slice(axis: isize, start: i64, end: i64, step: i64) -> Slice {
    Slice {
        axis,
        start,
        end,
        step,
    }
}

fn gather(axis: isize, indices: &[i64], scalar: bool) -> Gather {
    Gather {
        axis,
        indices: indices.to_vec(),
        scalar,
    }
}

fn pad(pads: &[usize], mode: PadMode, value: f64) -> Pad {
    Pad {
        pads: pads.to_vec(),
        mode,
        value,
    }
}

fn reduce_mean(axes: &[isize], keepdims: bool) -> ReduceMean {
    ReduceMean {
        axes: axes.to_vec(),
        keepdims,
    }
}

#[test]
fn transpose_slice_gather_pad_shapes() {
    let t = |perm: &[usize]| Transpose {
        perm: perm.to_vec(),
    };
    assert_eq!(shape_macs(t(&[1, 0]), &[&[8, 5]]), (vec![5, 8], 0));
    assert_eq!(infer(t(&[2, 0, 1]), &[&[2, 3, 4]]).unwrap(), vec![4, 2, 3]);
    assert_eq!(infer(t(&[0]), &[&[7]]).unwrap(), vec![7]);

    assert_eq!(infer(slice(0, 2, 6, 1), &[&[8, 6]]).unwrap(), vec![4, 6]);
    // end past the axis is clamped: 1, 3, 5, 7
    assert_eq!(infer(slice(0, 1, 100, 2), &[&[8, 6]]).unwrap(), vec![4, 6]);
    // negative bounds count from the end: -3..-1 of 6 is 3..5
    assert_eq!(infer(slice(-1, -3, -1, 1), &[&[8, 6]]).unwrap(), vec![8, 2]);
    // a start before the axis is clamped to 0
    assert_eq!(infer(slice(1, -100, 4, 3), &[&[8, 6]]).unwrap(), vec![8, 2]);
    assert_eq!(shape_macs(slice(0, 0, 1, 1), &[&[8]]), (vec![1], 0));

    assert_eq!(
        infer(gather(1, &[0, -1, 2], false), &[&[5, 6]]).unwrap(),
        vec![5, 3]
    );
    assert_eq!(
        infer(gather(1, &[4, 4, 4, 4, 4, 4, 4], false), &[&[5, 6]]).unwrap(),
        vec![5, 7]
    );
    assert_eq!(infer(gather(0, &[-5], true), &[&[5, 6]]).unwrap(), vec![6]);
    assert_eq!(infer(gather(-1, &[2], true), &[&[5, 6]]).unwrap(), vec![5]);
    assert_eq!(
        infer(gather(0, &[0], true), &[&[5]]).unwrap(),
        Vec::<usize>::new()
    );

    assert_eq!(
        shape_macs(
            pad(&[0, 1, 2, 0, 1, 2], PadMode::Constant, 0.0),
            &[&[3, 4, 4]]
        ),
        (vec![3, 6, 8], 0)
    );
    assert_eq!(
        infer(pad(&[0, 3, 0, 3], PadMode::Reflect, 0.0), &[&[3, 4]]).unwrap(),
        vec![3, 10]
    );
    assert_eq!(
        infer(pad(&[5, 5], PadMode::Edge, 0.0), &[&[1]]).unwrap(),
        vec![11]
    );
}

#[test]
fn conv_transpose2d_shapes_macs_and_params() {
    // (5 - 1) * 2 - 2 + 1 * 2 + 1 + 1 = 10
    let c = conv_t(4, 6, 3, 2, 1, 1, 1, 1);
    assert_eq!(
        shape_macs(c.clone(), &[&[4, 5, 5]]),
        (vec![6, 10, 10], 4 * 6 * 9 * 25)
    );
    let decl = c.params();
    assert_eq!(decl[0].shape, vec![4, 6, 3, 3]);
    assert_eq!(decl[0].role, Role::Weight);
    assert_eq!(decl[0].init, Init::FanInUniform { fan_in: 6 * 9 });
    assert_eq!(decl[1].shape, vec![6]);
    // stride 1: 5 + 2 = 7; groups 2: weight [4, 3, 3, 3], MACs in * out / groups * k * k * H * W
    let c = conv_t(4, 6, 3, 1, 0, 0, 1, 2);
    assert_eq!(
        shape_macs(c.clone(), &[&[4, 5, 5]]),
        (vec![6, 7, 7], 4 * 3 * 9 * 25)
    );
    assert_eq!(c.params()[0].shape, vec![4, 3, 3, 3]);
    // dilation 2: (5 - 1) + 2 * 2 + 1 = 9
    assert_eq!(
        infer(conv_t(2, 3, 3, 1, 0, 0, 2, 1), &[&[2, 5, 5]]).unwrap(),
        vec![3, 9, 9]
    );
    // the classic 2x upsampler: k 4, s 2, p 1 doubles; rectangular kernel
    assert_eq!(
        infer(conv_t(2, 3, 4, 2, 1, 0, 1, 1), &[&[2, 7, 9]]).unwrap(),
        vec![3, 14, 18]
    );
    let mut r = conv_t(2, 3, 1, 2, 0, 0, 1, 1);
    r.kernel = [3, 1];
    assert_eq!(
        shape_macs(r, &[&[2, 4, 4]]),
        (vec![3, 9, 7], 2 * 3 * 3 * 16)
    );
    let mut nb = ConvTranspose2d::new(2, 3, 2);
    nb.bias = false;
    assert_eq!(nb.params().len(), 1);
}

#[test]
fn resize_matmul_reduce_and_arithmetic_shapes() {
    let r = |mode, s: [f64; 2]| Resize { mode, scale: s };
    assert_eq!(
        shape_macs(r(ResizeMode::Nearest, [2.0, 2.0]), &[&[3, 4, 5]]),
        (vec![3, 8, 10], 0)
    );
    assert_eq!(
        infer(r(ResizeMode::Bilinear, [1.5, 1.5]), &[&[3, 4, 5]]).unwrap(),
        vec![3, 6, 7]
    );
    assert_eq!(
        infer(r(ResizeMode::Nearest, [0.5, 3.0]), &[&[3, 4, 5]]).unwrap(),
        vec![3, 2, 15]
    );

    let mm = |a: &[usize], b: &[usize]| shape_macs(MatMul {}, &[a, b]);
    assert_eq!(mm(&[3, 4], &[4, 5]), (vec![3, 5], 60));
    assert_eq!(mm(&[2, 3, 4], &[4, 5]), (vec![2, 3, 5], 120));
    assert_eq!(mm(&[4], &[4, 5]), (vec![5], 20));
    assert_eq!(mm(&[3, 4], &[4]), (vec![3], 12));
    assert_eq!(mm(&[4], &[4]), (vec![], 4));
    assert_eq!(mm(&[4], &[2, 4, 5]), (vec![2, 5], 40));
    assert_eq!(
        mm(&[2, 1, 3, 4], &[5, 4, 2]),
        (vec![2, 5, 3, 2], 2 * 5 * 3 * 4 * 2)
    );

    assert_eq!(
        infer(reduce_mean(&[1, 2], true), &[&[3, 4, 5]]).unwrap(),
        vec![3, 1, 1]
    );
    assert_eq!(
        infer(reduce_mean(&[-1, 1], false), &[&[3, 4, 5]]).unwrap(),
        vec![3]
    );
    assert_eq!(
        infer(reduce_mean(&[], true), &[&[3, 4, 5]]).unwrap(),
        vec![1, 1, 1]
    );
    assert_eq!(
        infer(reduce_mean(&[], false), &[&[3, 4, 5]]).unwrap(),
        Vec::<usize>::new()
    );
    assert_eq!(
        shape_macs(reduce_mean(&[0], false), &[&[3, 4]]),
        (vec![4], 0)
    );

    for op in [Op::from(Sub {}), Div {}.into()] {
        assert_eq!(infer(op.clone(), &[&[3, 4], &[4]]).unwrap(), vec![3, 4]);
        assert_eq!(
            infer(op.clone(), &[&[8, 1, 5], &[1, 4, 1]]).unwrap(),
            vec![8, 4, 5]
        );
        assert_eq!(infer(op.clone(), &[&[3], &[]]).unwrap(), vec![3]);
        assert_eq!(shape_macs(op, &[&[3], &[3]]).1, 0);
    }
    for op in [
        Op::from(Clip::relu6()),
        Clip::default().into(),
        HardSigmoid::default().into(),
        HardSwish {}.into(),
        LeakyRelu::default().into(),
        PRelu { num_parameters: 4 }.into(),
        PRelu { num_parameters: 1 }.into(),
        Erf {}.into(),
        Sqrt {}.into(),
    ] {
        assert_eq!(
            shape_macs(op.clone(), &[&[4, 5, 6]]),
            (vec![4, 5, 6], 0),
            "{op:?}"
        );
    }
    let prelu = PRelu { num_parameters: 4 }.params();
    assert_eq!(prelu.len(), 1);
    assert_eq!(
        (prelu[0].name, prelu[0].shape.clone(), prelu[0].role),
        ("weight", vec![4], Role::Bias)
    );
    assert_eq!(prelu[0].init, Init::Constant { value: 0.25 });

    let c = Constant { shape: vec![3, 1] };
    assert_eq!(shape_macs(c.clone(), &[]), (vec![3, 1], 0));
    let decl = c.params();
    assert_eq!(
        (decl[0].name, decl[0].shape.clone(), decl[0].role),
        ("value", vec![3, 1], Role::Buffer)
    );
    assert_eq!(
        infer(Constant { shape: vec![] }, &[]).unwrap(),
        Vec::<usize>::new()
    );
}

#[test]
fn new_op_errors_name_the_problem() {
    let t = |perm: &[usize]| -> Op {
        Transpose {
            perm: perm.to_vec(),
        }
        .into()
    };
    let cases: Vec<(Vec<Vec<usize>>, Op, &str, &str)> = vec![
        (
            vec![vec![2, 3]],
            t(&[0, 0]),
            "transpose",
            "not a permutation",
        ),
        (vec![vec![2, 3]], t(&[0]), "transpose", "not a permutation"),
        (
            vec![vec![2, 3]],
            t(&[0, 2]),
            "transpose",
            "not a permutation",
        ),
        (
            vec![vec![3, 5, 5]],
            conv_t(4, 6, 3, 1, 0, 0, 1, 1).into(),
            "conv_transpose2d",
            "3 channels",
        ),
        (
            vec![vec![4, 5]],
            conv_t(4, 6, 3, 1, 0, 0, 1, 1).into(),
            "conv_transpose2d",
            "[channels, height, width]",
        ),
        (
            vec![vec![4, 5, 5]],
            conv_t(4, 6, 3, 1, 0, 0, 1, 4).into(),
            "conv_transpose2d",
            "groups",
        ),
        (
            vec![vec![4, 5, 5]],
            conv_t(4, 6, 3, 2, 0, 2, 1, 1).into(),
            "conv_transpose2d",
            "output_padding = 2",
        ),
        (
            vec![vec![4, 5, 5]],
            conv_t(4, 6, 3, 0, 0, 0, 1, 1).into(),
            "conv_transpose2d",
            "positive",
        ),
        (
            vec![vec![4, 1, 1]],
            conv_t(4, 6, 1, 1, 1, 0, 1, 1).into(),
            "conv_transpose2d",
            "leaves no output",
        ),
        (
            vec![vec![3, 4, 4]],
            Resize::new(ResizeMode::Nearest, 0.0).into(),
            "resize",
            "positive",
        ),
        (
            vec![vec![3, 4, 4]],
            Resize::new(ResizeMode::Bilinear, 0.2).into(),
            "resize",
            "leaves no output",
        ),
        (
            vec![vec![3, 4]],
            Resize::new(ResizeMode::Bilinear, 2.0).into(),
            "resize",
            "[channels, height, width]",
        ),
        (
            vec![vec![3, 4], vec![5, 6]],
            MatMul {}.into(),
            "matmul",
            "K = 4 by K = 5",
        ),
        (
            vec![vec![2, 3, 4], vec![3, 4, 5]],
            MatMul {}.into(),
            "matmul",
            "do not broadcast",
        ),
        (
            vec![vec![3, 4]],
            MatMul {}.into(),
            "matmul",
            "expects 2 input",
        ),
        (
            vec![vec![8]],
            slice(0, 0, 4, 0).into(),
            "slice",
            "step must be at least 1",
        ),
        (
            vec![vec![8]],
            slice(0, 6, 2, -1).into(),
            "slice",
            "negative steps are refused",
        ),
        (vec![vec![8]], slice(0, 5, 5, 1).into(), "slice", "empty"),
        (vec![vec![8]], slice(0, 9, 12, 1).into(), "slice", "empty"),
        (
            vec![vec![8]],
            slice(1, 0, 2, 1).into(),
            "slice",
            "out of range",
        ),
        (
            vec![vec![5, 6]],
            gather(1, &[0, 6], false).into(),
            "gather",
            "index 6 is out of range",
        ),
        (
            vec![vec![5, 6]],
            gather(0, &[-6], false).into(),
            "gather",
            "index -6 is out of range",
        ),
        (
            vec![vec![5, 6]],
            gather(0, &[0, 1], true).into(),
            "gather",
            "exactly one index",
        ),
        (
            vec![vec![5, 6]],
            gather(0, &[], false).into(),
            "gather",
            "empty",
        ),
        (
            vec![vec![3, 4, 4]],
            pad(&[0, 1, 1, 0], PadMode::Constant, 0.0).into(),
            "pad",
            "pads has 4 entries, a rank-3 input [3, 4, 4] needs 6",
        ),
        (
            vec![vec![3, 4]],
            pad(&[0, 4, 0, 0], PadMode::Reflect, 0.0).into(),
            "pad",
            "below the axis length 4",
        ),
        (
            vec![vec![3, 4]],
            pad(&[0, 1, 0, 0], PadMode::Constant, f64::INFINITY).into(),
            "pad",
            "finite",
        ),
        (
            vec![vec![3]],
            Clip {
                min: Some(1.0),
                max: Some(0.0),
            }
            .into(),
            "clip",
            "min = 1 is above max = 0",
        ),
        (
            vec![vec![3]],
            HardSigmoid {
                alpha: f64::NAN,
                beta: 0.5,
            }
            .into(),
            "hard_sigmoid",
            "finite",
        ),
        (
            vec![vec![3, 4]],
            PRelu { num_parameters: 4 }.into(),
            "prelu",
            "num_parameters = 4",
        ),
        (
            vec![vec![3, 4]],
            PRelu { num_parameters: 0 }.into(),
            "prelu",
            "at least 1",
        ),
        (vec![vec![3], vec![4]], Sub {}.into(), "sub", "broadcast"),
        (
            vec![vec![3], vec![3], vec![3]],
            Div {}.into(),
            "div",
            "expects 2 inputs",
        ),
        (
            vec![vec![3], vec![3]],
            Erf {}.into(),
            "erf",
            "expects 1 input",
        ),
        (
            vec![vec![3, 4]],
            reduce_mean(&[1, -1], true).into(),
            "reduce_mean",
            "twice",
        ),
        (
            vec![vec![3, 4]],
            reduce_mean(&[2], true).into(),
            "reduce_mean",
            "out of range",
        ),
        (
            vec![vec![3]],
            Constant { shape: vec![3] }.into(),
            "constant",
            "expects 0 input(s), got 1",
        ),
    ];
    for (ins, op, type_name, msg_part) in cases {
        let ins: Vec<&[usize]> = ins.iter().map(Vec::as_slice).collect();
        let (node, op_name, msg) = shape_error(&ins, op.clone());
        assert_eq!(node, "culprit", "{op:?}");
        assert_eq!(op_name, type_name, "{op:?}");
        assert!(
            msg.contains(msg_part),
            "{op:?}: `{msg}` does not mention `{msg_part}`"
        );
    }
    // a constant with a zero dimension
    let e = infer(Constant { shape: vec![2, 0] }, &[]).unwrap_err();
    assert!(e.contains("at least 1"), "{e}");
}

#[test]
fn new_ops_json_round_trip_with_defaults() {
    let ops = [
        Op::from(Transpose { perm: vec![1, 0] }),
        conv_t(4, 6, 3, 2, 1, 1, 2, 2).into(),
        Resize::new(ResizeMode::Bilinear, 2.0).into(),
        MatMul {}.into(),
        slice(-1, -3, 7, 2).into(),
        gather(0, &[1, -1], false).into(),
        pad(&[0, 1, 2, 3], PadMode::Reflect, 0.0).into(),
        Clip::relu6().into(),
        Clip {
            min: None,
            max: Some(1.0),
        }
        .into(),
        HardSigmoid::pytorch().into(),
        HardSwish {}.into(),
        LeakyRelu { alpha: 0.2 }.into(),
        PRelu { num_parameters: 3 }.into(),
        Sub {}.into(),
        Div {}.into(),
        Erf {}.into(),
        Sqrt {}.into(),
        reduce_mean(&[-1], false).into(),
        Constant { shape: vec![2, 3] }.into(),
    ];
    for op in ops {
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(v["type"], op.type_name());
        assert_eq!(serde_json::from_value::<Op>(v).unwrap(), op);
        assert!(Op::all_type_names().contains(&op.type_name()));
    }
    let parse = |s: &str| serde_json::from_str::<Op>(s).unwrap();
    assert_eq!(
        parse(
            r#"{"type": "conv_transpose2d", "in_channels": 2, "out_channels": 3, "kernel": [2, 2]}"#
        ),
        Op::from(ConvTranspose2d::new(2, 3, 2))
    );
    assert_eq!(
        parse(r#"{"type": "hard_sigmoid"}"#),
        Op::from(HardSigmoid {
            alpha: 0.2,
            beta: 0.5
        })
    );
    assert_eq!(
        parse(r#"{"type": "leaky_relu"}"#),
        Op::from(LeakyRelu { alpha: 0.01 })
    );
    assert_eq!(
        parse(r#"{"type": "clip", "min": 0}"#),
        Op::from(Clip {
            min: Some(0.0),
            max: None
        })
    );
    assert_eq!(
        parse(r#"{"type": "pad", "pads": [1, 1]}"#),
        Op::from(pad(&[1, 1], PadMode::Constant, 0.0))
    );
    assert_eq!(
        parse(r#"{"type": "slice", "axis": 0, "start": 1, "end": 3}"#),
        Op::from(slice(0, 1, 3, 1))
    );
    assert_eq!(
        parse(r#"{"type": "gather", "axis": 0, "indices": [2]}"#),
        Op::from(gather(0, &[2], false))
    );
    assert_eq!(
        parse(r#"{"type": "reduce_mean", "axes": [1]}"#),
        Op::from(reduce_mean(&[1], true))
    );
    assert_eq!(
        parse(r#"{"type": "resize", "scale": [2.0, 3.0]}"#),
        Op::from(Resize {
            mode: ResizeMode::Nearest,
            scale: [2.0, 3.0]
        })
    );
    for bad in [
        r#"{"type": "pad", "pads": [1, 1], "mode": "wrap"}"#,
        r#"{"type": "resize", "scale": [2.0, 2.0], "mode": "cubic"}"#,
        r#"{"type": "transpose", "perm": [1, 0], "axes": [0]}"#,
    ] {
        assert!(serde_json::from_str::<Op>(bad).is_err(), "{bad}");
    }
}

/// Naive transposed convolution: every input value scatters through its group's kernels.
#[allow(clippy::needless_range_loop)]
fn naive_conv_transpose(x: &Tensor, w: &Tensor, b: Option<&Tensor>, c: &ConvTranspose2d) -> Tensor {
    let x = to_vec4(x);
    let wv = to_vec4(w);
    let (n, cin, h, wd) = (x.len(), x[0].len(), x[0][0].len(), x[0][0][0].len());
    let [kh, kw] = c.kernel;
    let ho = c.out_len(h, kh).unwrap();
    let wo = c.out_len(wd, kw).unwrap();
    let (cin_g, cout_g) = (cin / c.groups, c.out_channels / c.groups);
    let bias = b.map(|b| b.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap());
    let mut y = vec![0f64; n * c.out_channels * ho * wo];
    for s in 0..n {
        for ci in 0..cin {
            let g = ci / cin_g;
            for j in 0..cout_g {
                let co = g * cout_g + j;
                for iy in 0..h {
                    for ix in 0..wd {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let oy =
                                    (iy * c.stride + ky * c.dilation) as i64 - c.padding as i64;
                                let ox =
                                    (ix * c.stride + kx * c.dilation) as i64 - c.padding as i64;
                                if oy < 0 || ox < 0 || oy >= ho as i64 || ox >= wo as i64 {
                                    continue;
                                }
                                y[((s * c.out_channels + co) * ho + oy as usize) * wo
                                    + ox as usize] += x[s][ci][iy][ix] * wv[ci][j][ky][kx];
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(bias) = bias {
        for (i, v) in y.iter_mut().enumerate() {
            *v += bias[(i / (ho * wo)) % c.out_channels];
        }
    }
    Tensor::from_vec(y, (n, c.out_channels, ho, wo), &Device::Cpu).unwrap()
}

#[test]
fn conv_transpose2d_matches_a_naive_reference() {
    let mut rect = conv_t(2, 4, 2, 2, 0, 1, 1, 1);
    rect.kernel = [3, 2];
    let mut nb = conv_t(3, 2, 3, 1, 1, 0, 1, 1);
    nb.bias = false;
    for (c, h, w) in [
        (conv_t(2, 3, 3, 1, 0, 0, 1, 1), 4, 5),
        (conv_t(2, 3, 3, 2, 1, 1, 1, 1), 4, 4),
        (conv_t(3, 2, 4, 2, 1, 0, 1, 1), 3, 5),
        (conv_t(2, 3, 3, 2, 2, 1, 2, 1), 5, 4),
        (conv_t(4, 6, 3, 2, 1, 1, 1, 2), 4, 3),
        (conv_t(4, 4, 3, 1, 1, 0, 1, 4), 5, 5),
        (rect, 3, 4),
        (nb, 4, 4),
    ] {
        let mut g = single_op(c.clone(), &[&[c.in_channels, h, w]]);
        g.to_dtype(DType::F64).unwrap();
        randomize_params(&g, 3);
        let x = randn(&[2, c.in_channels, h, w], 4);
        let y = eval1(&g, &x);
        let node = g.node("op").unwrap();
        let want = naive_conv_transpose(
            &x,
            node.params["weight"].tensor(),
            node.params.get("bias").map(|p| p.tensor()),
            &c,
        );
        let out = c.infer(&[&[c.in_channels, h, w]]).unwrap();
        assert_eq!(&y.dims()[1..], out.as_slice(), "{c:?}");
        assert_all_close(&y, &want, 1e-10);
    }
}

#[test]
fn resize_matches_pytorch_values() {
    let x = Tensor::new(&[[[[1f64, 2.0], [3.0, 4.0]]]], &Device::Cpu).unwrap();
    // F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    let y = eval_op(
        Resize::new(ResizeMode::Bilinear, 2.0),
        &[&[1, 2, 2]],
        std::slice::from_ref(&x),
    );
    assert_eq!(y.dims(), &[1, 1, 4, 4]);
    assert_values(
        &y,
        &[
            1.0, 1.25, 1.75, 2.0, //
            1.5, 1.75, 2.25, 2.5, //
            2.5, 2.75, 3.25, 3.5, //
            3.0, 3.25, 3.75, 4.0,
        ],
        1e-12,
    );
    // F.interpolate(x, scale_factor=2, mode="nearest")
    let y = eval_op(Resize::new(ResizeMode::Nearest, 2.0), &[&[1, 2, 2]], &[x]);
    assert_values(
        &y,
        &[
            1.0, 1.0, 2.0, 2.0, //
            1.0, 1.0, 2.0, 2.0, //
            3.0, 3.0, 4.0, 4.0, //
            3.0, 3.0, 4.0, 4.0,
        ],
        0.0,
    );
    // nearest with scales 1.5 (rows 0, 0, 1, 2 of 3) and 0.5 (columns 0, 2 of 4)
    let x = Tensor::arange(0f64, 12.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 3, 4))
        .unwrap();
    let op = Resize {
        mode: ResizeMode::Nearest,
        scale: [1.5, 0.5],
    };
    let y = eval_op(op, &[&[1, 3, 4]], std::slice::from_ref(&x));
    assert_eq!(y.dims(), &[1, 1, 4, 2]);
    assert_values(&y, &[0.0, 2.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0], 0.0);
    // bilinear downsampling by 0.5 of a length-4 row: s = (o + 0.5) * 2 - 0.5 = 0.5, 2.5
    let op = Resize {
        mode: ResizeMode::Bilinear,
        scale: [1.0, 0.5],
    };
    let y = eval_op(op, &[&[1, 3, 4]], std::slice::from_ref(&x));
    assert_eq!(y.dims(), &[1, 1, 3, 2]);
    assert_values(&y, &[0.5, 2.5, 4.5, 6.5, 8.5, 10.5], 1e-12);
    // bilinear 1.5 on the rows: r = 2/3, s = max(0, (o + 0.5) r - 0.5) = 0, 0.5, 7/6, 11/6 -> clamp
    let op = Resize {
        mode: ResizeMode::Bilinear,
        scale: [1.5, 1.0],
    };
    let y = eval_op(op, &[&[1, 3, 4]], &[x]);
    let rows: Vec<f64> = flat64(&y).chunks(4).map(|r| r[0]).collect();
    let s = |o: f64| ((o + 0.5) / 1.5 - 0.5f64).max(0.0);
    let lerp = |s: f64| {
        let i0 = s.floor();
        let i1 = (i0 + 1.0).min(2.0);
        4.0 * (i0 * (1.0 - (s - i0)) + i1 * (s - i0))
    };
    let want: Vec<f64> = (0..4).map(|o| lerp(s(o as f64))).collect();
    assert_values(
        &Tensor::new(rows.as_slice(), &Device::Cpu).unwrap(),
        &want,
        1e-12,
    );
}

#[test]
fn activation_values() {
    let x = one_d(&[-4.0, -1.0, 0.0, 1.0, 4.0]).unsqueeze(0).unwrap();
    let run = |op: Op| eval_op(op, &[&[5]], std::slice::from_ref(&x));
    assert_values(
        &run(HardSigmoid::default().into()),
        &[0.0, 0.3, 0.5, 0.7, 1.0],
        1e-12,
    );
    assert_values(
        &run(HardSigmoid::pytorch().into()),
        &[0.0, 1.0 / 3.0, 0.5, 2.0 / 3.0, 1.0],
        1e-12,
    );
    // x * relu6(x + 3) / 6
    assert_values(
        &run(HardSwish {}.into()),
        &[0.0, -1.0 / 3.0, 0.0, 2.0 / 3.0, 4.0],
        1e-12,
    );
    assert_values(&run(Clip::relu6().into()), &[0.0, 0.0, 0.0, 1.0, 4.0], 0.0);
    assert_values(
        &run(Clip {
            min: None,
            max: Some(0.5),
        }
        .into()),
        &[-4.0, -1.0, 0.0, 0.5, 0.5],
        0.0,
    );
    assert_values(
        &run(Clip::default().into()),
        &[-4.0, -1.0, 0.0, 1.0, 4.0],
        0.0,
    );
    assert_values(
        &run(LeakyRelu::default().into()),
        &[-0.04, -0.01, 0.0, 1.0, 4.0],
        1e-12,
    );
    assert_values(
        &run(LeakyRelu { alpha: 2.0 }.into()),
        &[-8.0, -2.0, 0.0, 1.0, 4.0],
        1e-12,
    );
    // erf(1) = 0.8427007929497149, erf(4) = 0.9999999845827421
    assert_values(
        &run(Erf {}.into()),
        &[
            -0.9999999845827421,
            -0.8427007929497149,
            0.0,
            0.8427007929497149,
            0.9999999845827421,
        ],
        1e-12,
    );
    let sq = eval_op(
        Sqrt {},
        &[&[3]],
        &[Tensor::new(&[[0f64, 2.25, 9.0]], &Device::Cpu).unwrap()],
    );
    assert_values(&sq, &[0.0, 1.5, 3.0], 1e-12);

    // PReLU: one slope per channel of [C, L], or one shared slope
    let mut g = single_op(PRelu { num_parameters: 2 }, &[&[2, 3]]);
    g.to_dtype(DType::F64).unwrap();
    set(&g, "op", "weight", &one_d(&[0.5, -2.0]));
    let x = Tensor::new(&[[[-1f64, 2.0, -3.0], [-1.0, 0.0, 4.0]]], &Device::Cpu).unwrap();
    assert_values(&eval1(&g, &x), &[-0.5, 2.0, -1.5, 2.0, 0.0, 4.0], 1e-12);
    let mut g = single_op(PRelu { num_parameters: 1 }, &[&[2, 3]]);
    g.to_dtype(DType::F64).unwrap();
    assert_values(&eval1(&g, &x), &[-0.25, 2.0, -0.75, -0.25, 0.0, 4.0], 1e-12);
}

#[test]
fn shape_op_values() {
    let x = Tensor::arange(0f64, 24.0, &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 4))
        .unwrap();
    // transpose [3, 4] -> [4, 3]
    let y = eval_op(
        Transpose { perm: vec![1, 0] },
        &[&[3, 4]],
        std::slice::from_ref(&x),
    );
    assert_eq!(y.dims(), &[2, 4, 3]);
    assert!(y.is_contiguous());
    assert_eq!(
        flat64(&y),
        flat64(&x.transpose(1, 2).unwrap().contiguous().unwrap())
    );
    // slice the last axis 1..4 step 2: columns 1, 3
    let y = eval_op(slice(-1, 1, 4, 2), &[&[3, 4]], std::slice::from_ref(&x));
    assert_eq!(y.dims(), &[2, 3, 2]);
    assert_values(&y.get(0).unwrap(), &[1.0, 3.0, 5.0, 7.0, 9.0, 11.0], 0.0);
    // slice rows -2.. (to the end)
    let y = eval_op(slice(0, -2, 100, 1), &[&[3, 4]], std::slice::from_ref(&x));
    assert_values(
        &y.get(1).unwrap(),
        &[16.0, 17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0],
        0.0,
    );
    // gather columns 3, -4, 3
    let y = eval_op(
        gather(1, &[3, -4, 3], false),
        &[&[3, 4]],
        std::slice::from_ref(&x),
    );
    assert_eq!(y.dims(), &[2, 3, 3]);
    assert_values(
        &y.get(0).unwrap(),
        &[3.0, 0.0, 3.0, 7.0, 4.0, 7.0, 11.0, 8.0, 11.0],
        0.0,
    );
    // scalar gather of row -1 removes the axis
    let y = eval_op(gather(0, &[-1], true), &[&[3, 4]], std::slice::from_ref(&x));
    assert_eq!(y.dims(), &[2, 4]);
    assert_values(&y, &[8.0, 9.0, 10.0, 11.0, 20.0, 21.0, 22.0, 23.0], 0.0);

    // pads on a [3] row: reflect, edge, constant
    let r = Tensor::new(&[[1f64, 2.0, 3.0]], &Device::Cpu).unwrap();
    let p = |mode, value| eval_op(pad(&[2, 2], mode, value), &[&[3]], std::slice::from_ref(&r));
    assert_values(
        &p(PadMode::Reflect, 0.0),
        &[3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0],
        0.0,
    );
    assert_values(
        &p(PadMode::Edge, 0.0),
        &[1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0],
        0.0,
    );
    assert_values(
        &p(PadMode::Constant, 9.0),
        &[9.0, 9.0, 1.0, 2.0, 3.0, 9.0, 9.0],
        0.0,
    );
    assert_values(
        &p(PadMode::Constant, 0.0),
        &[0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0],
        0.0,
    );
    // [2, 3]: one row on top (reflect), one column at the end
    let m = Tensor::new(&[[[1f64, 2.0, 3.0], [4.0, 5.0, 6.0]]], &Device::Cpu).unwrap();
    let y = eval_op(
        pad(&[1, 0, 0, 1], PadMode::Reflect, 0.0),
        &[&[2, 3]],
        std::slice::from_ref(&m),
    );
    assert_eq!(y.dims(), &[1, 3, 4]);
    assert_values(
        &y,
        &[4.0, 5.0, 6.0, 5.0, 1.0, 2.0, 3.0, 2.0, 4.0, 5.0, 6.0, 5.0],
        0.0,
    );
    let y = eval_op(
        pad(&[0, 1, 1, 0], PadMode::Constant, -1.0),
        &[&[2, 3]],
        &[m],
    );
    assert_eq!(y.dims(), &[1, 3, 4]);
    assert_values(
        &y,
        &[
            -1.0, 1.0, 2.0, 3.0, -1.0, 4.0, 5.0, 6.0, -1.0, -1.0, -1.0, -1.0,
        ],
        0.0,
    );
}

#[test]
fn matmul_reduce_and_arithmetic_values() {
    let a = randn(&[2, 3, 4], 1);
    let b = randn(&[2, 4, 5], 2);
    let y = eval_op(MatMul {}, &[&[3, 4], &[4, 5]], &[a.clone(), b.clone()]);
    assert_all_close(&y, &a.matmul(&b).unwrap(), 1e-12);
    // rank-1 operands: a row vector times a matrix, a matrix times a column, a dot product
    let v = randn(&[2, 4], 3);
    let y = eval_op(MatMul {}, &[&[4], &[4, 5]], &[v.clone(), b.clone()]);
    assert_eq!(y.dims(), &[2, 5]);
    assert_all_close(
        &y,
        &v.unsqueeze(1)
            .unwrap()
            .matmul(&b)
            .unwrap()
            .squeeze(1)
            .unwrap(),
        1e-12,
    );
    let y = eval_op(MatMul {}, &[&[3, 4], &[4]], &[a.clone(), v.clone()]);
    assert_eq!(y.dims(), &[2, 3]);
    assert_all_close(
        &y,
        &a.matmul(&v.unsqueeze(2).unwrap())
            .unwrap()
            .squeeze(2)
            .unwrap(),
        1e-12,
    );
    let y = eval_op(MatMul {}, &[&[4], &[4]], &[v.clone(), v.clone()]);
    assert_eq!(y.dims(), &[2]);
    assert_all_close(&y, &v.sqr().unwrap().sum(1).unwrap(), 1e-12);
    // broadcast leading axes: [2, 1, 3, 4] x [5, 4, 2] -> [2, 5, 3, 2]
    let a4 = randn(&[2, 2, 1, 3, 4], 4);
    let b3 = randn(&[2, 5, 4, 2], 5);
    let y = eval_op(
        MatMul {},
        &[&[2, 1, 3, 4], &[5, 4, 2]],
        &[a4.clone(), b3.clone()],
    );
    assert_eq!(y.dims(), &[2, 2, 5, 3, 2]);
    for s in 0..2 {
        for i in 0..2 {
            for j in 0..5 {
                let want = a4
                    .get(s)
                    .unwrap()
                    .get(i)
                    .unwrap()
                    .get(0)
                    .unwrap()
                    .matmul(&b3.get(s).unwrap().get(j).unwrap())
                    .unwrap();
                let got = y.get(s).unwrap().get(i).unwrap().get(j).unwrap();
                assert_all_close(&got, &want, 1e-12);
            }
        }
    }

    let x = Tensor::arange(0f64, 24.0, &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 4))
        .unwrap();
    let y = eval_op(
        reduce_mean(&[-1], false),
        &[&[3, 4]],
        std::slice::from_ref(&x),
    );
    assert_values(&y, &[1.5, 5.5, 9.5, 13.5, 17.5, 21.5], 1e-12);
    let y = eval_op(
        reduce_mean(&[0], true),
        &[&[3, 4]],
        std::slice::from_ref(&x),
    );
    assert_eq!(y.dims(), &[2, 1, 4]);
    assert_values(&y, &[4.0, 5.0, 6.0, 7.0, 16.0, 17.0, 18.0, 19.0], 1e-12);
    let y = eval_op(
        reduce_mean(&[], false),
        &[&[3, 4]],
        std::slice::from_ref(&x),
    );
    assert_eq!(y.dims(), &[2]);
    assert_values(&y, &[5.5, 17.5], 1e-12);

    let r = Tensor::new(&[[1f64, 2.0, 4.0, 8.0], [2.0, 2.0, 2.0, 2.0]], &Device::Cpu).unwrap();
    let y = eval_op(Sub {}, &[&[3, 4], &[4]], &[x.clone(), r.clone()]);
    assert_values(
        &y.get(0).unwrap().get(2).unwrap(),
        &[7.0, 7.0, 6.0, 3.0],
        1e-12,
    );
    assert_values(
        &y.get(1).unwrap().get(0).unwrap(),
        &[10.0, 11.0, 12.0, 13.0],
        1e-12,
    );
    let y = eval_op(Div {}, &[&[4], &[3, 4]], &[r, x.affine(1.0, 1.0).unwrap()]);
    assert_values(
        &y.get(0).unwrap().get(0).unwrap(),
        &[1.0, 1.0, 4.0 / 3.0, 2.0],
        1e-12,
    );
}

/// A Constant reads no input, its value is a buffer (no parameter count, saved with the model),
/// and its batch of one broadcasts against any batch in Add, Mul, Sub, Div and MatMul.
#[test]
fn constants_broadcast_against_the_batch() {
    for (op, f) in [
        (
            Op::from(Add {}),
            (|a: f64, c: f64| a + c) as fn(f64, f64) -> f64,
        ),
        (Mul {}.into(), |a, c| a * c),
        (Sub {}.into(), |a, c| a - c),
        (Div {}.into(), |a, c| a / c),
    ] {
        let mut b = GraphBuilder::new("consts", 0);
        let x = b.input("x", &[2, 3]);
        let c = b.named("c").node(Constant { shape: vec![3] }, &[]).unwrap();
        let y = b.node(op.clone(), &[&x, &c]).unwrap();
        let mut g = b.finish(&[&y]).unwrap();
        g.validate().unwrap();
        g.to_dtype(DType::F64).unwrap();
        assert_eq!(g.param_count(), 0);
        let cv = [0.5, -2.0, 4.0];
        set(&g, "c", "value", &one_d(&cv));
        let xv = randn(&[4, 2, 3], 1);
        let y = eval1(&g, &xv);
        assert_eq!(y.dims(), &[4, 2, 3], "{op:?}");
        let want: Vec<f64> = flat64(&xv)
            .iter()
            .enumerate()
            .map(|(i, &a)| f(a, cv[i % 3]))
            .collect();
        assert_values(&y, &want, 1e-12);
    }
    // the constant first, and as a matrix operand: x [B, 2, 3] times C [3, 2]
    let mut b = GraphBuilder::new("const_matmul", 0);
    let x = b.input("x", &[2, 3]);
    let c = b
        .named("c")
        .node(Constant { shape: vec![3, 2] }, &[])
        .unwrap();
    let y = b.node(MatMul {}, &[&x, &c]).unwrap();
    let z = b.node(Add {}, &[&c, &c]).unwrap();
    let mut g = b.finish(&[&y, &z]).unwrap();
    g.to_dtype(DType::F64).unwrap();
    let cm = randn(&[3, 2], 2);
    set(&g, "c", "value", &cm);
    let xv = randn(&[5, 2, 3], 3);
    let ys = Executor::new(0)
        .eval(&g, std::slice::from_ref(&xv))
        .unwrap();
    assert_all_close(&ys[0], &xv.broadcast_matmul(&cm).unwrap(), 1e-12);
    // a graph output computed from constants alone keeps the batch of one
    assert_eq!(ys[1].dims(), &[1, 3, 2]);
    assert_all_close(&ys[1], &(&cm + &cm).unwrap().unsqueeze(0).unwrap(), 0.0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The transposed convolution's shape rule agrees with its forward pass and a naive loop.
    #[test]
    fn conv_transpose_shape_rule_matches_forward(
        cin_g in 1usize..=3, cout_g in 1usize..=3, groups in 1usize..=2, k in 1usize..=3,
        stride in 1usize..=3, padding in 0usize..=2, op in 0usize..=2, dilation in 1usize..=2,
        h in 1usize..=5, w in 1usize..=5,
    ) {
        let c = conv_t(cin_g * groups, cout_g * groups, k, stride, padding,
            op.min(stride.max(dilation) - 1), dilation, groups);
        let shape = [c.in_channels, h, w];
        match infer(c.clone(), &[&shape]) {
            Err(msg) => prop_assert!(msg.contains("leaves no output"), "{}", msg),
            Ok(out) => {
                let mut g = single_op(c.clone(), &[&shape]);
                g.to_dtype(DType::F64).unwrap();
                randomize_params(&g, 5);
                let x = randn(&[2, c.in_channels, h, w], 6);
                let y = eval1(&g, &x);
                prop_assert_eq!(&y.dims()[1..], out.as_slice());
                let node = g.node("op").unwrap();
                let want = naive_conv_transpose(&x, node.params["weight"].tensor(),
                    Some(node.params["bias"].tensor()), &c);
                for (a, b) in flat64(&y).iter().zip(flat64(&want)) {
                    prop_assert!((a - b).abs() <= 1e-10, "{} vs {}", a, b);
                }
            }
        }
    }
}

/// Ops that index along an axis accept the strided view a Slice (or Narrow) leaves behind.
#[test]
fn indexing_ops_read_non_contiguous_inputs() {
    let mut b = GraphBuilder::new("views", 0);
    let x = b.input("x", &[3, 4, 4]);
    let s = b.node(slice(1, 1, 3, 1), &[&x]).unwrap(); // [3, 2, 4], a view
    let ops: Vec<Op> = vec![
        gather(2, &[3, 0], false).into(),
        slice(2, 0, 4, 2).into(),
        pad(&[0, 1, 1, 0, 1, 1], PadMode::Reflect, 0.0).into(),
        pad(&[0, 1, 1, 0, 1, 1], PadMode::Edge, 0.0).into(),
        Resize::new(ResizeMode::Nearest, 2.0).into(),
        Resize::new(ResizeMode::Bilinear, 2.0).into(),
        Transpose {
            perm: vec![2, 0, 1],
        }
        .into(),
    ];
    let outs: Vec<Value> = ops
        .iter()
        .map(|op| b.node(op.clone(), &[&s]).unwrap())
        .collect();
    let refs: Vec<&Value> = outs.iter().collect();
    let g = b.finish(&refs).unwrap();
    let xv = randn_f32(&[2, 3, 4, 4], 1);
    let ys = Executor::new(0)
        .eval(&g, std::slice::from_ref(&xv))
        .unwrap();
    // the same ops on a contiguous copy of the slice
    let sv = xv.narrow(2, 1, 2).unwrap().contiguous().unwrap();
    for (op, y) in ops.into_iter().zip(ys) {
        let want = eval1(&single_op(op.clone(), &[&[3, 2, 4]]), &sv);
        assert_eq!(bits(&y), bits(&want), "{op:?}");
    }
}
