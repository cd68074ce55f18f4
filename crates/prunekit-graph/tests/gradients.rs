//! Gradient checks: for every op, the autodiff gradients (candle's backward and our custom kernels)
//! of `loss = sum(output * R)` with respect to every trainable parameter and every float input
//! agree with central finite differences in f64.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use prunekit_graph::ops::activation::GeluApprox;
use prunekit_graph::ops::pool::Pool2dAttrs;
use prunekit_graph::ops::*;
use prunekit_graph::{param_grads, Executor, Graph, GraphBuilder, Mode};

/// Builds a one-op graph, converts it to f64 with random parameters and checks its gradients.
fn check_op(
    op: impl Into<Op>,
    in_shapes: &[&[usize]],
    inputs: &[Tensor],
    train: bool,
) -> Vec<String> {
    let g = f64_graph(single_op(op, in_shapes), 11);
    grad_check(&g, inputs, train)
}

fn expect_checked(checked: &[String], want: &[&str]) {
    let mut got: Vec<&str> = checked.iter().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = want.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "the set of checked gradients");
}

// ----------------------------------------------------------------------------------------------
// linear and convolutions

#[test]
fn linear() {
    let c = check_op(Linear::new(5, 4), &[&[5]], &[randn(&[3, 5], 1)], true);
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn linear_on_sequences() {
    // [T, in] per sample: the batched matmul path
    let c = check_op(
        Linear::new(4, 3),
        &[&[2, 4]],
        &[randn(&[2, 2, 4], 2)],
        false,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn linear_without_bias() {
    let mut l = Linear::new(4, 3);
    l.bias = false;
    let c = check_op(l, &[&[4]], &[randn(&[2, 4], 3)], true);
    expect_checked(&c, &["op.weight", "input 0"]);
}

#[test]
fn conv2d_plain() {
    let c = check_op(
        conv(2, 3, 3, 1, 0, 1, 1),
        &[&[2, 5, 5]],
        &[randn(&[2, 2, 5, 5], 4)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn conv2d_padding() {
    let c = check_op(
        conv(2, 3, 3, 1, 1, 1, 1),
        &[&[2, 5, 5]],
        &[randn(&[2, 2, 5, 5], 5)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn conv2d_stride2_padding1_odd_input() {
    let c = check_op(
        conv(2, 3, 3, 2, 1, 1, 1),
        &[&[2, 7, 7]],
        &[randn(&[2, 2, 7, 7], 6)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn conv2d_stride2_even_input() {
    // (6 + 2 - 3) / 2 + 1 = 3 outputs, the last input row and column are not fully covered
    let c = check_op(
        conv(2, 3, 3, 2, 1, 1, 1),
        &[&[2, 6, 6]],
        &[randn(&[2, 2, 6, 6], 7)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn conv2d_stride2_no_padding() {
    let c = check_op(
        conv(2, 2, 2, 2, 0, 1, 1),
        &[&[2, 6, 6]],
        &[randn(&[2, 2, 6, 6], 8)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn conv2d_dilation2() {
    let c = check_op(
        conv(2, 3, 3, 1, 1, 2, 1),
        &[&[2, 6, 6]],
        &[randn(&[2, 2, 6, 6], 9)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn conv2d_groups2() {
    let c = check_op(
        conv(4, 6, 3, 1, 1, 1, 2),
        &[&[4, 5, 5]],
        &[randn(&[2, 4, 5, 5], 10)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn conv2d_depthwise() {
    let c = check_op(
        conv(3, 3, 3, 1, 1, 1, 3),
        &[&[3, 4, 4]],
        &[randn(&[2, 3, 4, 4], 11)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn conv2d_everything_at_once() {
    let c = check_op(
        conv(4, 4, 3, 2, 2, 2, 2),
        &[&[4, 7, 7]],
        &[randn(&[2, 4, 7, 7], 12)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn conv2d_without_bias() {
    let mut cv = conv(2, 3, 3, 1, 1, 1, 1);
    cv.bias = false;
    let c = check_op(cv, &[&[2, 4, 4]], &[randn(&[2, 2, 4, 4], 13)], true);
    expect_checked(&c, &["op.weight", "input 0"]);
}

#[test]
fn conv2d_rectangular_kernel() {
    let mut cv = conv(2, 2, 1, 1, 1, 1, 1);
    cv.kernel = [3, 2];
    let c = check_op(cv, &[&[2, 5, 4]], &[randn(&[2, 2, 5, 4], 14)], true);
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

/// Non-square input with stride 2 where height and width need different `out_padding` in the
/// transposed convolution of the input gradient.
#[test]
fn conv2d_stride2_non_square_input() {
    let c = check_op(
        conv(2, 2, 3, 2, 1, 1, 1),
        &[&[2, 7, 8]],
        &[randn(&[2, 2, 7, 8], 15)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

// ----------------------------------------------------------------------------------------------
// normalisations

#[test]
fn batch_norm_train_chw() {
    let c = check_op(
        BatchNorm::new(3),
        &[&[3, 3, 3]],
        &[randn(&[2, 3, 3, 3], 20)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn batch_norm_eval_chw() {
    let c = check_op(
        BatchNorm::new(3),
        &[&[3, 3, 3]],
        &[randn(&[2, 3, 3, 3], 21)],
        false,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn batch_norm_train_c() {
    let c = check_op(BatchNorm::new(4), &[&[4]], &[randn(&[5, 4], 22)], true);
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn batch_norm_eval_c() {
    let c = check_op(BatchNorm::new(4), &[&[4]], &[randn(&[5, 4], 23)], false);
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn batch_norm_train_c_l() {
    // BatchNorm1d on [C, L]
    let c = check_op(
        BatchNorm::new(3),
        &[&[3, 4]],
        &[randn(&[2, 3, 4], 24)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn batch_norm_without_affine() {
    let mut bn = BatchNorm::new(3);
    bn.affine = false;
    let c = check_op(bn.clone(), &[&[3, 2, 2]], &[randn(&[3, 3, 2, 2], 25)], true);
    expect_checked(&c, &["input 0"]);
    let c = check_op(bn, &[&[3, 2, 2]], &[randn(&[3, 3, 2, 2], 26)], false);
    expect_checked(&c, &["input 0"]);
}

#[test]
fn layer_norm() {
    let c = check_op(
        LayerNorm::new(5),
        &[&[3, 5]],
        &[randn(&[2, 3, 5], 27)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn layer_norm_flat_input() {
    let c = check_op(LayerNorm::new(6), &[&[6]], &[randn(&[3, 6], 28)], false);
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

// ----------------------------------------------------------------------------------------------
// embedding

#[test]
fn embedding_weight() {
    let mut b = GraphBuilder::new("emb", 0);
    let x = b.ids_input("tokens", &[5]);
    let y = b.embedding(&x, 6, 3).unwrap();
    let g = f64_graph(b.finish(&[&y]).unwrap(), 30);
    // repeated ids accumulate into one row; id 5 is never used and its row gets zero gradient
    let tokens = Tensor::new(
        &[[0u32, 2, 2, 4, 1], [3, 0, 2, 1, 1]],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let c = grad_check(&g, &[tokens], true);
    expect_checked(&c, &["embedding1.weight"]);
}

// ----------------------------------------------------------------------------------------------
// activations

#[test]
fn relu() {
    let c = check_op(Relu {}, &[&[3, 4]], &[away_from_zero(&[2, 3, 4], 40)], true);
    expect_checked(&c, &["input 0"]);
}

#[test]
fn gelu_erf() {
    let c = check_op(
        Gelu {
            approximate: GeluApprox::None,
        },
        &[&[12]],
        &[(randn(&[2, 12], 41) * 2.0).unwrap()],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn gelu_tanh() {
    let c = check_op(
        Gelu {
            approximate: GeluApprox::Tanh,
        },
        &[&[12]],
        &[(randn(&[2, 12], 42) * 2.0).unwrap()],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn silu() {
    let c = check_op(
        Silu {},
        &[&[12]],
        &[(randn(&[2, 12], 43) * 2.0).unwrap()],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn tanh() {
    let c = check_op(Tanh {}, &[&[12]], &[randn(&[2, 12], 44)], true);
    expect_checked(&c, &["input 0"]);
}

#[test]
fn sigmoid() {
    let c = check_op(
        Sigmoid {},
        &[&[12]],
        &[(randn(&[2, 12], 45) * 2.0).unwrap()],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn softmax_last_axis() {
    let c = check_op(
        Softmax::default(),
        &[&[3, 5]],
        &[randn(&[2, 3, 5], 46)],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn softmax_first_axis() {
    let c = check_op(
        Softmax { axis: 0 },
        &[&[3, 5]],
        &[randn(&[2, 3, 5], 47)],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn dropout_train_p0() {
    let c = check_op(
        Dropout { p: 0.0 },
        &[&[3, 4]],
        &[randn(&[2, 3, 4], 48)],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn dropout_eval() {
    let c = check_op(
        Dropout { p: 0.5 },
        &[&[3, 4]],
        &[randn(&[2, 3, 4], 49)],
        false,
    );
    expect_checked(&c, &["input 0"]);
}

// ----------------------------------------------------------------------------------------------
// multi-input and shape ops

#[test]
fn add() {
    let c = check_op(
        Add {},
        &[&[3, 4], &[3, 4]],
        &[randn(&[2, 3, 4], 50), randn(&[2, 3, 4], 51)],
        true,
    );
    expect_checked(&c, &["input 0", "input 1"]);
}

#[test]
fn add_broadcasting_same_rank() {
    let c = check_op(
        Add {},
        &[&[3, 4], &[1, 4], &[3, 1]],
        &[
            randn(&[2, 3, 4], 52),
            randn(&[2, 1, 4], 53),
            randn(&[2, 3, 1], 54),
        ],
        true,
    );
    expect_checked(&c, &["input 0", "input 1", "input 2"]);
}

/// Per-sample shapes of different rank ([3, 4] + [4]): shape inference accepts them (numpy rules
/// on per-sample shapes), but the forward broadcasts the batched tensors [B, 3, 4] and [B, 4], so
/// the batch axis of the lower-rank input is aligned with a per-sample axis.
#[test]
fn add_broadcasting_lower_rank() {
    let c = check_op(
        Add {},
        &[&[3, 4], &[4], &[3, 1]],
        &[
            randn(&[2, 3, 4], 52),
            randn(&[2, 4], 53),
            randn(&[2, 3, 1], 54),
        ],
        true,
    );
    expect_checked(&c, &["input 0", "input 1", "input 2"]);
}

#[test]
fn mul() {
    let c = check_op(
        Mul {},
        &[&[3, 4], &[3, 4]],
        &[randn(&[2, 3, 4], 55), randn(&[2, 3, 4], 56)],
        true,
    );
    expect_checked(&c, &["input 0", "input 1"]);
}

#[test]
fn mul_broadcasting() {
    // [C, H, W] * [C, 1, 1]: a channel gate
    let c = check_op(
        Mul {},
        &[&[3, 2, 4], &[3, 1, 1]],
        &[randn(&[2, 3, 2, 4], 57), randn(&[2, 3, 1, 1], 58)],
        true,
    );
    expect_checked(&c, &["input 0", "input 1"]);
    // and the other way round, broadcasting the first input
    let c = check_op(
        Mul {},
        &[&[1, 2, 1], &[3, 2, 4]],
        &[randn(&[2, 1, 2, 1], 59), randn(&[2, 3, 2, 4], 60)],
        true,
    );
    expect_checked(&c, &["input 0", "input 1"]);
}

#[test]
fn mul_broadcasting_lower_rank() {
    let c = check_op(
        Mul {},
        &[&[3, 5, 4], &[4]],
        &[randn(&[2, 3, 5, 4], 61), randn(&[2, 4], 62)],
        true,
    );
    expect_checked(&c, &["input 0", "input 1"]);
}

#[test]
fn concat_channels() {
    let c = check_op(
        Concat { axis: 0 },
        &[&[2, 3, 3], &[1, 3, 3]],
        &[randn(&[2, 2, 3, 3], 61), randn(&[2, 1, 3, 3], 62)],
        true,
    );
    expect_checked(&c, &["input 0", "input 1"]);
}

#[test]
fn concat_last_axis() {
    let c = check_op(
        Concat { axis: -1 },
        &[&[3, 2], &[3, 4]],
        &[randn(&[2, 3, 2], 63), randn(&[2, 3, 4], 64)],
        true,
    );
    expect_checked(&c, &["input 0", "input 1"]);
}

#[test]
fn flatten() {
    let c = check_op(Flatten {}, &[&[2, 3, 4]], &[randn(&[2, 2, 3, 4], 65)], true);
    expect_checked(&c, &["input 0"]);
}

#[test]
fn reshape() {
    let c = check_op(
        Reshape { shape: vec![6, 4] },
        &[&[2, 3, 4]],
        &[randn(&[2, 2, 3, 4], 66)],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

// ----------------------------------------------------------------------------------------------
// pooling (our custom kernels)

fn pool(k: usize, s: usize, p: usize) -> Pool2dAttrs {
    Pool2dAttrs {
        kernel: [k, k],
        stride: Some([s, s]),
        padding: [p, p],
    }
}

#[test]
fn max_pool_k3_s2_p1() {
    let c = check_op(
        MaxPool2d(pool(3, 2, 1)),
        &[&[2, 7, 7]],
        &[randn(&[2, 2, 7, 7], 70)],
        true,
    );
    expect_checked(&c, &["input 0"]);
    let c = check_op(
        MaxPool2d(pool(3, 2, 1)),
        &[&[2, 6, 6]],
        &[randn(&[2, 2, 6, 6], 71)],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn max_pool_k3_s2_p1_all_negative() {
    // padded positions must never win, even when every real value is negative
    let x = (uniform(&[2, 2, 5, 5], 1.0, 2.0, 72).neg()).unwrap();
    let c = check_op(MaxPool2d(pool(3, 2, 1)), &[&[2, 5, 5]], &[x], true);
    expect_checked(&c, &["input 0"]);
}

#[test]
fn max_pool_k2_s2() {
    let c = check_op(
        MaxPool2d(pool(2, 2, 0)),
        &[&[2, 6, 6]],
        &[randn(&[2, 2, 6, 6], 73)],
        true,
    );
    expect_checked(&c, &["input 0"]);
    // odd size: the last row and column are dropped and get no gradient
    let c = check_op(
        MaxPool2d(pool(2, 2, 0)),
        &[&[2, 5, 5]],
        &[randn(&[2, 2, 5, 5], 74)],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn max_pool_overlapping_stride1() {
    let c = check_op(
        MaxPool2d(pool(3, 1, 1)),
        &[&[1, 5, 5]],
        &[randn(&[2, 1, 5, 5], 75)],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn avg_pool_k3_s2_p1() {
    let c = check_op(
        AvgPool2d(pool(3, 2, 1)),
        &[&[2, 7, 7]],
        &[randn(&[2, 2, 7, 7], 76)],
        true,
    );
    expect_checked(&c, &["input 0"]);
    let c = check_op(
        AvgPool2d(pool(3, 2, 1)),
        &[&[2, 6, 6]],
        &[randn(&[2, 2, 6, 6], 77)],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn avg_pool_k2_s2() {
    let c = check_op(
        AvgPool2d(pool(2, 2, 0)),
        &[&[2, 5, 5]],
        &[randn(&[2, 2, 5, 5], 78)],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn pool_rectangular() {
    let attrs = Pool2dAttrs {
        kernel: [3, 2],
        stride: Some([2, 1]),
        padding: [1, 0],
    };
    let c = check_op(
        MaxPool2d(attrs.clone()),
        &[&[2, 6, 5]],
        &[randn(&[2, 2, 6, 5], 79)],
        true,
    );
    expect_checked(&c, &["input 0"]);
    let c = check_op(
        AvgPool2d(attrs),
        &[&[2, 6, 5]],
        &[randn(&[2, 2, 6, 5], 80)],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

#[test]
fn pool_non_contiguous_input() {
    // the graph input is a transposed view: the kernels must work on a contiguous copy
    for max in [true, false] {
        let attrs = pool(3, 2, 1);
        let op: Op = if max {
            MaxPool2d(attrs).into()
        } else {
            AvgPool2d(attrs).into()
        };
        let g = f64_graph(single_op(op, &[&[3, 6, 5]]), 0);
        let x = randn(&[2, 3, 5, 6], 81).transpose(2, 3).unwrap();
        assert!(!x.is_contiguous());
        let c = grad_check(&g, &[x], true);
        expect_checked(&c, &["input 0"]);
    }
}

#[test]
fn global_avg_pool() {
    let c = check_op(
        GlobalAvgPool {},
        &[&[3, 4, 5]],
        &[randn(&[2, 3, 4, 5], 82)],
        true,
    );
    expect_checked(&c, &["input 0"]);
}

// ----------------------------------------------------------------------------------------------
// small networks: the whole chain, and every trainable parameter gets a nonzero gradient

fn small_cnn() -> Graph {
    let mut b = GraphBuilder::new("cnn", 3);
    let x = b.input("image", &[3, 8, 8]);
    let x = b.conv2d(&x, 4, 3, 1, 1).unwrap();
    let x = b.batch_norm(&x).unwrap();
    let x = b.relu(&x).unwrap();
    let x = b.node(MaxPool2d(pool(3, 2, 1)), &[&x]).unwrap();
    let x = b.conv2d(&x, 6, 3, 1, 1).unwrap();
    let x = b.batch_norm(&x).unwrap();
    let x = b.relu(&x).unwrap();
    let x = b.avg_pool2d(&x, 2, 2).unwrap();
    let x = b.flatten(&x).unwrap();
    let y = b.linear(&x, 5).unwrap();
    b.finish(&[&y]).unwrap()
}

fn small_transformer() -> Graph {
    let mut b = GraphBuilder::new("mlp", 4);
    let t = b.ids_input("tokens", &[6]);
    let e = b.embedding(&t, 10, 8).unwrap(); // [6, 8]
    let h = b.layer_norm(&e).unwrap();
    let h = b.linear(&h, 16).unwrap();
    let h = b.gelu(&h).unwrap();
    let h = b.dropout(&h, 0.1).unwrap();
    let h = b.linear(&h, 8).unwrap();
    let h = b.add(&e, &h).unwrap(); // residual
    let h2 = b.layer_norm(&h).unwrap();
    let gate = b.linear(&h2, 8).unwrap();
    let gate = b.sigmoid(&gate).unwrap();
    let h2 = b.mul(&h2, &gate).unwrap();
    let att = b.softmax(&h2).unwrap();
    let h3 = b.silu(&att).unwrap();
    let h3 = b.tanh(&h3).unwrap();
    let f = b.flatten(&h3).unwrap(); // [48]
    let y = b.linear(&f, 3).unwrap();
    b.finish(&[&y]).unwrap()
}

fn assert_all_params_get_gradients(g: &Graph, inputs: &[Tensor]) {
    let outs = Executor::new(1).run(g, inputs, Mode::TRAIN, None).unwrap();
    let w = randn(outs[0].dims(), 99).to_dtype(outs[0].dtype()).unwrap();
    let grads = (&outs[0] * w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let pg = param_grads(g, &grads);
    let mut n = 0;
    for (node, k, p) in g.trainable() {
        let key = (node.name.clone(), k.clone());
        let gr = pg
            .get(&key)
            .unwrap_or_else(|| panic!("{}.{k}: no gradient", node.name));
        assert_eq!(gr.dims(), p.tensor().dims());
        let s = gr
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            s > 0.0 && s.is_finite(),
            "{}.{k}: gradient sum |g| = {s}",
            node.name
        );
        n += 1;
    }
    assert_eq!(
        pg.len(),
        n,
        "param_grads returns exactly the trainable parameters"
    );
    // running statistics are buffers: never in param_grads
    assert!(pg.keys().all(|(_, k)| !k.starts_with("running_")));
}

#[test]
fn small_cnn_every_param_gets_a_gradient() {
    let g = small_cnn();
    assert_eq!(g.trainable().count(), 10);
    assert_all_params_get_gradients(&g, &[randn_f32(&[4, 3, 8, 8], 100)]);
}

#[test]
fn small_transformer_every_param_gets_a_gradient() {
    let g = small_transformer();
    assert_eq!(g.trainable().count(), 13);
    assert_all_params_get_gradients(&g, &[ids(&[3, 6], 10, 101)]);
}

#[test]
fn small_cnn_gradients_match_finite_differences() {
    let mut g = small_cnn();
    // keep the finite-difference run short: fewer channels through select would also do; the
    // network is already tiny, check it in eval mode and in train mode
    g.to_dtype(DType::F64).unwrap();
    randomize_params(&g, 102);
    let x = randn(&[2, 3, 8, 8], 103);
    let c = grad_check(&g, std::slice::from_ref(&x), false);
    assert_eq!(c.len(), 11);
    let c = grad_check(&g, &[x], true);
    assert_eq!(c.len(), 11);
}

#[test]
fn small_transformer_gradients_match_finite_differences() {
    let mut g = small_transformer();
    // dropout p = 0.1 is random in train mode: check in eval mode
    g.to_dtype(DType::F64).unwrap();
    randomize_params(&g, 104);
    let c = grad_check(&g, &[ids(&[2, 6], 10, 105)], false);
    assert_eq!(c.len(), 13);
}

#[test]
fn one_value_read_twice_by_one_node() {
    // x * x and x + x: both uses of the value accumulate into its gradient
    let mut b = GraphBuilder::new("square", 0);
    let x = b.input("x", &[5]);
    let sq = b.mul(&x, &x).unwrap();
    let y = b.add(&sq, &sq).unwrap();
    let g = f64_graph(b.finish(&[&y]).unwrap(), 0);
    let c = grad_check(&g, &[randn(&[3, 5], 110)], true);
    expect_checked(&c, &["input 0"]);
}

#[test]
fn residual_fan_out_and_two_outputs() {
    // x feeds a conv branch and a 1x1 skip; the sum is both an output and pooled into a head
    let mut b = GraphBuilder::new("residual", 2);
    let x = b.input("x", &[2, 5, 5]);
    let c = b.conv2d(&x, 3, 3, 1, 1).unwrap();
    let c = b.tanh(&c).unwrap();
    let s = b.conv2d(&x, 3, 1, 1, 0).unwrap();
    let sum = b.add(&c, &s).unwrap();
    let p = b.global_avg_pool(&sum).unwrap();
    let y = b.linear(&p, 2).unwrap();
    let g = f64_graph(b.finish(&[&y, &sum]).unwrap(), 111);
    let c = grad_check(&g, &[randn(&[2, 2, 5, 5], 112)], true);
    assert_eq!(c.len(), 7);
}

// ----------------------------------------------------------------------------------------------
// ops added for dependency-aware pruning

#[test]
fn conv1d_plain_strided_and_grouped() {
    let mut c = Conv1d::new(3, 4, 3);
    c.padding = 1;
    let got = check_op(c.clone(), &[&[3, 7]], &[randn(&[2, 3, 7], 91)], true);
    expect_checked(&got, &["op.weight", "op.bias", "input 0"]);
    c.stride = 2;
    c.dilation = 2;
    let got = check_op(c, &[&[3, 9]], &[randn(&[2, 3, 9], 92)], true);
    expect_checked(&got, &["op.weight", "op.bias", "input 0"]);
    let mut dw = Conv1d::new(4, 8, 3);
    dw.groups = 4;
    dw.padding = 2;
    let got = check_op(dw, &[&[4, 5]], &[randn(&[2, 4, 5], 93)], true);
    expect_checked(&got, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn group_norm() {
    let c = check_op(
        GroupNorm::new(2, 4),
        &[&[4, 3, 2]],
        &[randn(&[2, 4, 3, 2], 94)],
        true,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
    let c = check_op(
        GroupNorm::new(3, 6),
        &[&[6, 5]],
        &[randn(&[2, 6, 5], 95)],
        false,
    );
    expect_checked(&c, &["op.weight", "op.bias", "input 0"]);
}

#[test]
fn rms_norm() {
    let c = check_op(RmsNorm::new(5), &[&[3, 5]], &[randn(&[2, 3, 5], 96)], true);
    expect_checked(&c, &["op.weight", "input 0"]);
}

#[test]
fn narrow_on_channels_and_last_axis() {
    let n = Narrow {
        axis: 0,
        start: 1,
        len: 2,
    };
    let c = check_op(n, &[&[4, 3, 3]], &[randn(&[2, 4, 3, 3], 97)], true);
    expect_checked(&c, &["input 0"]);
    let n = Narrow {
        axis: -1,
        start: 2,
        len: 3,
    };
    let c = check_op(n, &[&[2, 6]], &[randn(&[2, 2, 6], 98)], true);
    expect_checked(&c, &["input 0"]);
}

/// A masked normalisation weight makes the statistics skip the masked channels, so its gradients
/// must still match finite differences.
#[test]
fn masked_norm_statistics() {
    for op in [Op::from(LayerNorm::new(5)), Op::from(RmsNorm::new(5))] {
        let mut g = f64_graph(single_op(op, &[&[3, 5]]), 99);
        let m = Tensor::new(&[1f64, 0., 1., 1., 0.], &candle_core::Device::Cpu).unwrap();
        g.set_mask("op", "weight", m).unwrap();
        let c = grad_check(&g, &[randn(&[2, 3, 5], 100)], true);
        assert!(c.contains(&"input 0".to_string()), "{c:?}");
    }
}

// ----------------------------------------------------------------------------------------------
// the ops for decomposed exports

/// Uniform values in [lo, hi) moved at least `gap` away from every kink (finite differences
/// across a kink disagree with either one-sided derivative).
fn avoiding(shape: &[usize], lo: f64, hi: f64, kinks: &[f64], seed: u64) -> Tensor {
    let gap = 0.05;
    let v: Vec<f64> = uniform(shape, lo, hi, seed)
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .into_iter()
        .map(|x| match kinks.iter().find(|&&k| (x - k).abs() < gap) {
            Some(&k) => k + if x < k { -gap } else { gap },
            None => x,
        })
        .collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()
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

#[test]
fn conv_transpose2d_geometries() {
    let mut rect = conv_t(2, 3, 2, 2, 0, 1, 1, 1);
    rect.kernel = [3, 2];
    let mut nb = conv_t(2, 2, 3, 2, 1, 1, 1, 1);
    nb.bias = false;
    for (i, (c, h, w)) in [
        (conv_t(2, 3, 3, 1, 0, 0, 1, 1), 3, 4),
        (conv_t(2, 3, 3, 2, 1, 1, 1, 1), 3, 3),
        (conv_t(2, 2, 4, 2, 1, 0, 1, 1), 3, 2),
        (conv_t(2, 2, 3, 2, 2, 1, 2, 1), 4, 3),
        (conv_t(4, 2, 3, 2, 1, 1, 1, 2), 3, 3),
        (conv_t(3, 3, 3, 1, 1, 0, 1, 3), 3, 3),
        (rect, 3, 3),
        (nb, 3, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let x = randn(&[2, c.in_channels, h, w], 200 + i as u64);
        let want: &[&str] = if c.bias {
            &["op.weight", "op.bias", "input 0"]
        } else {
            &["op.weight", "input 0"]
        };
        let checked = check_op(c.clone(), &[&[c.in_channels, h, w]], &[x], true);
        expect_checked(&checked, want);
    }
}

#[test]
fn resize_nearest_and_bilinear() {
    for (i, (mode, scale)) in [
        (ResizeMode::Nearest, [2.0, 2.0]),
        (ResizeMode::Nearest, [1.5, 0.5]),
        (ResizeMode::Bilinear, [2.0, 2.0]),
        (ResizeMode::Bilinear, [1.5, 3.0]),
        (ResizeMode::Bilinear, [0.5, 1.0]),
    ]
    .into_iter()
    .enumerate()
    {
        let c = check_op(
            Resize { mode, scale },
            &[&[2, 4, 3]],
            &[randn(&[2, 2, 4, 3], 210 + i as u64)],
            true,
        );
        expect_checked(&c, &["input 0"]);
    }
}

#[test]
fn matmul_shapes() {
    let cases: [(&[usize], &[usize]); 6] = [
        (&[3, 4], &[4, 2]),
        (&[2, 3, 4], &[2, 4, 2]),
        (&[2, 1, 3, 4], &[3, 4, 2]),
        (&[4], &[4, 3]),
        (&[3, 4], &[4]),
        (&[4], &[4]),
    ];
    for (i, (a, b)) in cases.into_iter().enumerate() {
        let mut sa = vec![2];
        sa.extend_from_slice(a);
        let mut sb = vec![2];
        sb.extend_from_slice(b);
        let c = check_op(
            MatMul {},
            &[a, b],
            &[randn(&sa, 220 + i as u64), randn(&sb, 230 + i as u64)],
            true,
        );
        expect_checked(&c, &["input 0", "input 1"]);
    }
}

#[test]
fn transpose_slice_gather() {
    let c = check_op(
        Transpose {
            perm: vec![2, 0, 1],
        },
        &[&[2, 3, 4]],
        &[randn(&[2, 2, 3, 4], 240)],
        true,
    );
    expect_checked(&c, &["input 0"]);
    for (i, s) in [(0, 1, 3, 1), (-1, -4, 100, 2), (1, 0, 3, 3)]
        .into_iter()
        .enumerate()
    {
        let (axis, start, end, step) = s;
        let op = Slice {
            axis,
            start,
            end,
            step,
        };
        let c = check_op(op, &[&[3, 5]], &[randn(&[2, 3, 5], 241 + i as u64)], true);
        expect_checked(&c, &["input 0"]);
    }
    for (i, (axis, indices, scalar)) in [
        (1, vec![4, 0, -1, 4], false),
        (0, vec![-2], true),
        (-1, vec![2], true),
    ]
    .into_iter()
    .enumerate()
    {
        let op = Gather {
            axis,
            indices,
            scalar,
        };
        let c = check_op(op, &[&[3, 5]], &[randn(&[2, 3, 5], 245 + i as u64)], true);
        expect_checked(&c, &["input 0"]);
    }
}

#[test]
fn pad_every_mode() {
    for (i, (mode, value)) in [
        (PadMode::Constant, 0.0),
        (PadMode::Constant, 1.5),
        (PadMode::Reflect, 0.0),
        (PadMode::Edge, 0.0),
    ]
    .into_iter()
    .enumerate()
    {
        let op = Pad {
            pads: vec![0, 2, 1, 0, 1, 2],
            mode,
            value,
        };
        let c = check_op(
            op,
            &[&[2, 3, 4]],
            &[randn(&[2, 2, 3, 4], 250 + i as u64)],
            true,
        );
        expect_checked(&c, &["input 0"]);
    }
}

#[test]
fn clip_hard_sigmoid_hard_swish_leaky_relu() {
    let shape = [2, 3, 4];
    let cases: Vec<(Op, Tensor)> = vec![
        (
            Clip {
                min: Some(-0.5),
                max: Some(0.7),
            }
            .into(),
            avoiding(&shape, -1.5, 1.5, &[-0.5, 0.7], 260),
        ),
        (
            Clip::relu6().into(),
            avoiding(&shape, -2.0, 8.0, &[0.0, 6.0], 261),
        ),
        (
            Clip {
                min: None,
                max: Some(0.0),
            }
            .into(),
            avoiding(&shape, -1.0, 1.0, &[0.0], 262),
        ),
        (
            HardSigmoid::default().into(),
            avoiding(&shape, -4.0, 4.0, &[-2.5, 2.5], 263),
        ),
        (
            HardSigmoid::pytorch().into(),
            avoiding(&shape, -4.5, 4.5, &[-3.0, 3.0], 264),
        ),
        (
            HardSwish {}.into(),
            avoiding(&shape, -4.5, 4.5, &[-3.0, 3.0], 265),
        ),
        (LeakyRelu::default().into(), away_from_zero(&shape, 266)),
        (LeakyRelu { alpha: 1.7 }.into(), away_from_zero(&shape, 267)),
    ];
    for (op, x) in cases {
        let c = check_op(op, &[&[3, 4]], &[x], true);
        expect_checked(&c, &["input 0"]);
    }
}

#[test]
fn prelu_per_channel_and_shared() {
    let c = check_op(
        PRelu { num_parameters: 3 },
        &[&[3, 2, 2]],
        &[away_from_zero(&[2, 3, 2, 2], 270)],
        true,
    );
    expect_checked(&c, &["op.weight", "input 0"]);
    let c = check_op(
        PRelu { num_parameters: 1 },
        &[&[3, 4]],
        &[away_from_zero(&[2, 3, 4], 271)],
        true,
    );
    expect_checked(&c, &["op.weight", "input 0"]);
}

#[test]
fn sub_div_erf_sqrt_reduce_mean() {
    let c = check_op(
        Sub {},
        &[&[3, 4], &[4]],
        &[randn(&[2, 3, 4], 280), randn(&[2, 4], 281)],
        true,
    );
    expect_checked(&c, &["input 0", "input 1"]);
    // divisors away from zero
    let c = check_op(
        Div {},
        &[&[3, 4], &[3, 1]],
        &[randn(&[2, 3, 4], 282), uniform(&[2, 3, 1], 0.5, 2.0, 283)],
        true,
    );
    expect_checked(&c, &["input 0", "input 1"]);
    let c = check_op(Erf {}, &[&[3, 4]], &[randn(&[2, 3, 4], 284)], true);
    expect_checked(&c, &["input 0"]);
    let c = check_op(
        Sqrt {},
        &[&[3, 4]],
        &[uniform(&[2, 3, 4], 0.2, 3.0, 285)],
        true,
    );
    expect_checked(&c, &["input 0"]);
    for (i, (axes, keepdims)) in [(vec![0], true), (vec![-1, 1], false), (vec![], false)]
        .into_iter()
        .enumerate()
    {
        let c = check_op(
            ReduceMean { axes, keepdims },
            &[&[2, 3, 4]],
            &[randn(&[2, 2, 3, 4], 286 + i as u64)],
            true,
        );
        expect_checked(&c, &["input 0"]);
    }
}

/// A Constant's value is a buffer: no gradient is asked of it, and gradients flow through the
/// ops that read it to the other input.
#[test]
fn constant_operands() {
    let mut b = GraphBuilder::new("consts", 0);
    let x = b.input("x", &[3, 4]);
    let c = b.named("c").node(Constant { shape: vec![4] }, &[]).unwrap();
    let s = b.node(Sub {}, &[&x, &c]).unwrap();
    let w = b
        .named("w")
        .node(Constant { shape: vec![4, 2] }, &[])
        .unwrap();
    let y = b.node(MatMul {}, &[&s, &w]).unwrap();
    let g = f64_graph(b.finish(&[&y]).unwrap(), 290);
    let checked = grad_check(&g, &[randn(&[2, 3, 4], 291)], true);
    expect_checked(&checked, &["input 0"]);
}
