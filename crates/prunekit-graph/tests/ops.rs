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
    assert_eq!(Op::all_type_names().len(), 28);
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
