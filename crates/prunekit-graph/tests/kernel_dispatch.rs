//! Every dispatch branch of the CPU kernels (crates/prunekit-graph/src/kernels/), each at sizes that
//! take it, against candle's own ops (forward, input gradient, weight / parameter gradients) in f64
//! and f32, and against central finite differences in f64.
//!
//! The branches and the cases that take them (the predicates are restated in `conv_branches` and
//! each test asserts that every branch is taken by at least one of its cases):
//!
//! conv2d (`kernels/conv.rs`; thread split decided by n >= threads, run here in a 2-thread pool):
//! | branch | condition | cases |
//! | --- | --- | --- |
//! | forward pointwise GEMM | 1x1, stride 1, pad 0 | `1x1`, `1x1 n=1` |
//! | forward shifted GEMMs | stride 1, not pointwise | `3x3 s1 8x8`, `3x3 s1 16x16`, `1x1 pad 1`, `dilation 2`, `3x1 kernel`, `groups 2` |
//! | forward im2col | stride > 1 | `3x3 s2`, `3x3 s2 n=1`, `1x1 s2`, `odd remainders s2` |
//! | input grad: none | input does not track a gradient | `input without grad` |
//! | input grad: transposed forward | stride 1, square kernel, pad <= dil*(k-1), not pointwise | `3x3 s1 8x8`, `3x3 s1 16x16`, `dilation 2` |
//! | input grad: pointwise GEMM | pointwise | `1x1`, `1x1 n=1` |
//! | input grad: GEMM + col2im | otherwise (stride > 1, non-square kernel, pad > dil*(k-1), 1x1 with padding) | `3x3 s2`, `1x1 s2`, `3x1 kernel`, `pad 3 > span`, `1x1 pad 1` |
//! | weight grad: shifted GEMMs | stride 1, not pointwise, oh*ow >= 256 | `3x3 s1 16x16`, `3x3 s1 16x16 n=1`, `1x1 pad 1`, `dilation 2`, `3x1 kernel`, `groups 2` |
//! | weight grad: pointwise GEMM | pointwise | `1x1`, `1x1 n=1` |
//! | weight grad: im2col | stride > 1, or stride 1 with oh*ow < 256 | `3x3 s1 8x8`, `3x3 s1 15x17` (255 pixels, one below the threshold), `3x3 s2` |
//! | per-sample split | n >= threads | `1x1`, `3x3 s1 16x16`, `3x3 s2`, ... |
//! | split inside the GEMM | n < threads | `1x1 n=1`, `3x3 s1 16x16 n=1`, `3x3 s2 n=1` |
//! | groups (GEMM per group) | 1 < groups < channels | `groups 2`, `groups 2 s2` |
//! | depthwise kernel | groups == channels > 1 | `conv2d_depthwise_branches` |
//! | candle fallback | kernels off (or another device / dtype) | `fallback_to_candle` (with the explicit padding when height and width leave different remainders under the stride) |
//!
//! depthwise (`kernels/depthwise.rs`): stride 1 (contiguous phase copy) and stride 2 (strided copy
//! into 4 phase planes), dilation, channel multiplier 1 and 2, padding 0 and > 0, output rows
//! shorter and longer than the 64-output chunk, input without a gradient, kernel without a
//! gradient (frozen). The vector width (AVX-512 / AVX2 / plain) is chosen from the CPU at run time,
//! over the same Rust loops: the tests run whichever this CPU takes.
//!
//! batch norm (`kernels/batch_norm.rs`): training forward and backward, ReLU fused or not, on
//! [N, C], [N, C, L] and [N, C, H, W].
//!
//! channel kernels (`kernels/channel.rs`): affine, bias and per-channel sum below and above
//! PAR_MIN = 2^15 elements (one thread / planes in parallel), the affine's input without a gradient.
//!
//! ReLU (`kernels/activation.rs`): backward below and above CHUNK = 2^16 elements.
//!
//! recurrent (`kernels/recurrent.rs`): GRU and LSTM over batches below, at and above the 16-sample
//! block (one block, a partial last block), one step and several, against the composed candle
//! loop (`ops::recurrent::{gru_steps, lstm_steps}`, the path on other devices and dtypes).

mod common;

use std::sync::Mutex;

use candle_core::{DType, Tensor};
use common::{max_abs, randn, track, uniform};
use prunekit_graph::kernels::{self, activation, batch_norm, channel, conv};

/// The kernels' on/off switch is process-wide: every test here holds this lock so that one test
/// turning the kernels off never makes another compare candle with itself.
static SWITCH: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SWITCH.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` in a pool of 2 threads, so that n = 1 takes the split inside the GEMM and n >= 2 the
/// split over samples on any machine.
fn two_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a thread pool")
        .install(f)
}

const THREADS: usize = 2;

/// Asserts |a - b| <= tol * max(1, |b|) elementwise at the worst element.
fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let diff =
        max_abs(&(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap());
    let scale = max_abs(b).max(1.0);
    assert!(
        diff <= tol * scale,
        "{what}: max difference {diff:e} (scale {scale:e}, tolerance {tol:e})"
    );
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    (a * b)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// An op with its inputs (all f64 or all f32) and, per input, whether it tracks a gradient.
type Op<'a> = &'a dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>;

/// The output and the gradients of sum(op(inputs) * r) (None for inputs that do not track one).
fn forward_backward(
    op: Op,
    inputs: &[Tensor],
    grad: &[bool],
    r_seed: u64,
) -> (Tensor, Vec<Option<Tensor>>) {
    let (vars, ins) = track(inputs, grad);
    let y = op(&ins).unwrap();
    let r = randn(y.dims(), r_seed).to_dtype(y.dtype()).unwrap();
    let store = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = vars
        .iter()
        .map(|v| v.as_ref().and_then(|v| store.get(v.as_tensor()).cloned()))
        .collect();
    (y, grads)
}

/// Finite-difference step and relative tolerance.
#[derive(Clone, Copy)]
struct Fd {
    eps: f64,
    tol: f64,
}

/// For ops linear in each input (convolution, affine): the difference quotient is exact but for
/// rounding, at any step.
const LINEAR: Fd = Fd {
    eps: 1e-3,
    tol: 1e-9,
};
/// For smooth nonlinear ops (batch norm): truncation error of order eps^2.
const SMOOTH: Fd = Fd {
    eps: 1e-6,
    tol: 1e-6,
};
/// For ReLU on inputs at least 0.1 from its kink: linear within the step.
const KINKED: Fd = Fd {
    eps: 1e-4,
    tol: 1e-9,
};

/// Central finite differences in f64 along two random directions per differentiable input:
/// (L(t + e d) - L(t - e d)) / 2e against <grad, d>, L = sum(op(inputs) * r). A wrong term anywhere in
/// a gradient moves the directional derivative.
fn check_finite_differences(
    op: Op,
    inputs: &[Tensor],
    grad: &[bool],
    grads: &[Option<Tensor>],
    r_seed: u64,
    fd: Fd,
    what: &str,
) {
    let Fd { eps, tol } = fd;
    let y = op(inputs).unwrap();
    let r = randn(y.dims(), r_seed);
    let loss = |ins: &[Tensor]| dot(&op(ins).unwrap(), &r);
    for (i, g) in grads.iter().enumerate() {
        if !grad[i] {
            assert!(
                g.is_none(),
                "{what}: input {i} does not track a gradient but got one"
            );
            continue;
        }
        let g = g
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no gradient for input {i}"));
        for k in 0..2u64 {
            let d = randn(inputs[i].dims(), 9000 + 17 * r_seed + 3 * i as u64 + k);
            let shifted = |sign: f64| {
                let mut ins = inputs.to_vec();
                ins[i] = (&inputs[i] + (&d * (sign * eps)).unwrap()).unwrap();
                loss(&ins)
            };
            let fd = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps);
            let an = dot(g, &d);
            assert!(
                (fd - an).abs() <= tol * an.abs().max(1.0),
                "{what}: input {i}, direction {k}: finite difference {fd} vs gradient {an}"
            );
        }
    }
}

/// Ours against the reference in f64 and f32 (forward and every gradient), and ours against finite
/// differences in f64. `inputs` are f64.
fn check_against(
    ours: Op,
    reference: Op,
    inputs: &[Tensor],
    grad: &[bool],
    seed: u64,
    fd: Fd,
    what: &str,
) {
    let (y, g) = forward_backward(ours, inputs, grad, seed);
    let (ry, rg) = forward_backward(reference, inputs, grad, seed);
    assert_close(&y, &ry, 1e-11, &format!("{what}: f64 forward"));
    for (i, (a, b)) in g.iter().zip(&rg).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                assert_close(a, b, 1e-10, &format!("{what}: f64 gradient of input {i}"))
            }
            (None, None) => {}
            _ => panic!("{what}: gradient of input {i} present in one and not the other"),
        }
    }
    check_finite_differences(ours, inputs, grad, &g, seed, fd, what);
    let f32s: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F32).unwrap())
        .collect();
    let (y, g) = forward_backward(ours, &f32s, grad, seed);
    let (ry, rg) = forward_backward(reference, &f32s, grad, seed);
    assert_eq!(y.dtype(), DType::F32, "{what}: f32 stays f32");
    assert_close(&y, &ry, 1e-4, &format!("{what}: f32 forward"));
    for (i, (a, b)) in g.iter().zip(&rg).enumerate() {
        if let (Some(a), Some(b)) = (a, b) {
            assert_close(a, b, 1e-4, &format!("{what}: f32 gradient of input {i}"));
        }
    }
}

// ------------------------------------------------------------------------------------------------
// conv2d

#[derive(Clone, Copy, Debug)]
struct ConvCase {
    name: &'static str,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    groups: usize,
    /// whether the input tracks a gradient (a model input does not)
    x_grad: bool,
}

const fn case(
    name: &'static str,
    (n, c, h, w): (usize, usize, usize, usize),
    (o, kh, kw): (usize, usize, usize),
    (stride, pad, dil, groups): (usize, usize, usize, usize),
) -> ConvCase {
    ConvCase {
        name,
        n,
        c,
        h,
        w,
        o,
        kh,
        kw,
        stride,
        pad,
        dil,
        groups,
        x_grad: true,
    }
}

const CONV_CASES: &[ConvCase] = &[
    case("1x1", (3, 8, 6, 5), (5, 1, 1), (1, 0, 1, 1)),
    case("1x1 n=1", (1, 8, 6, 5), (5, 1, 1), (1, 0, 1, 1)),
    case("3x3 s1 8x8", (3, 3, 8, 8), (4, 3, 3), (1, 1, 1, 1)),
    case("3x3 s1 15x17", (2, 3, 15, 17), (4, 3, 3), (1, 1, 1, 1)),
    case("3x3 s1 16x16", (3, 3, 16, 16), (4, 3, 3), (1, 1, 1, 1)),
    case("3x3 s1 16x16 n=1", (1, 3, 16, 16), (4, 3, 3), (1, 1, 1, 1)),
    case("3x3 s2", (3, 3, 9, 9), (4, 3, 3), (2, 1, 1, 1)),
    case("3x3 s2 n=1", (1, 3, 17, 17), (4, 3, 3), (2, 1, 1, 1)),
    case("1x1 s2", (2, 4, 7, 7), (3, 1, 1), (2, 0, 1, 1)),
    case("1x1 pad 1", (2, 3, 16, 16), (4, 1, 1), (1, 1, 1, 1)),
    case("dilation 2", (2, 3, 16, 16), (4, 3, 3), (1, 2, 2, 1)),
    case("pad 3 > span", (2, 3, 8, 8), (4, 3, 3), (1, 3, 1, 1)),
    case("3x1 kernel", (2, 3, 16, 16), (4, 3, 1), (1, 1, 1, 1)),
    case("groups 2", (3, 4, 16, 16), (6, 3, 3), (1, 1, 1, 2)),
    case("groups 2 s2", (3, 4, 9, 9), (6, 3, 3), (2, 1, 1, 2)),
    // height and width leave different remainders under the stride: candle's own backward is
    // wrong there, so the reference is the fallback's explicit padding (itself checked below)
    case("odd remainders s2", (2, 3, 10, 9), (4, 3, 3), (2, 1, 1, 1)),
    ConvCase {
        x_grad: false,
        ..case(
            "input without grad",
            (3, 3, 16, 16),
            (4, 3, 3),
            (1, 1, 1, 1),
        )
    },
];

/// The branches of `kernels::conv` a case takes, restated from its dispatch (see the table above).
fn conv_branches(k: &ConvCase) -> Vec<&'static str> {
    let span = |len: usize| k.dil * (len - 1);
    let oh = (k.h + 2 * k.pad - span(k.kh) - 1) / k.stride + 1;
    let ow = (k.w + 2 * k.pad - span(k.kw) - 1) / k.stride + 1;
    let pointwise = k.kh == 1 && k.kw == 1 && k.stride == 1 && k.pad == 0;
    let shifted = k.stride == 1 && !pointwise;
    let mut b = vec![if pointwise {
        "forward pointwise"
    } else if shifted {
        "forward shifted"
    } else {
        "forward im2col"
    }];
    b.push(if !k.x_grad {
        "input grad none"
    } else if k.stride == 1 && k.kh == k.kw && k.pad <= span(k.kh) && !pointwise {
        "input grad transposed forward"
    } else if pointwise {
        "input grad pointwise"
    } else {
        "input grad col2im"
    });
    b.push(if shifted && oh * ow >= 256 {
        "weight grad shifted"
    } else if pointwise {
        "weight grad pointwise"
    } else {
        "weight grad im2col"
    });
    b.push(if k.n >= THREADS {
        "per sample"
    } else {
        "inside gemm"
    });
    if k.groups > 1 && k.groups < k.c {
        b.push("groups");
    }
    b
}

const CONV_BRANCHES: &[&str] = &[
    "forward pointwise",
    "forward shifted",
    "forward im2col",
    "input grad none",
    "input grad transposed forward",
    "input grad pointwise",
    "input grad col2im",
    "weight grad shifted",
    "weight grad pointwise",
    "weight grad im2col",
    "per sample",
    "inside gemm",
    "groups",
];

/// Whether height and width leave the same remainder under the stride (candle's backward is right).
fn same_slack(k: &ConvCase) -> bool {
    let slack = |len: usize, kk: usize| (len + 2 * k.pad - k.dil * (kk - 1) - 1) % k.stride;
    slack(k.h, k.kh) == slack(k.w, k.kw)
}

/// candle's conv2d directly, or with the kernels off (the fallback with its padding fix) where
/// candle's own backward is wrong.
fn candle_reference(k: ConvCase) -> impl Fn(&[Tensor]) -> candle_core::Result<Tensor> {
    move |t: &[Tensor]| {
        if same_slack(&k) {
            t[0].conv2d(&t[1], k.pad, k.stride, k.dil, k.groups)
        } else {
            kernels::set_enabled(false);
            let y = conv::conv2d(&t[0], &t[1], k.stride, k.pad, k.dil, k.groups);
            kernels::set_enabled(true);
            y
        }
    }
}

fn conv_inputs(k: &ConvCase, seed: u64) -> Vec<Tensor> {
    vec![
        uniform(&[k.n, k.c, k.h, k.w], -1.0, 1.0, seed),
        uniform(&[k.o, k.c / k.groups, k.kh, k.kw], -1.0, 1.0, seed + 1),
    ]
}

#[test]
fn conv2d_every_gemm_branch_matches_candle_and_finite_differences() {
    let _guard = serial();
    let mut taken: Vec<&str> = Vec::new();
    two_threads(|| {
        for (i, k) in CONV_CASES.iter().enumerate() {
            taken.extend(conv_branches(k));
            let ours =
                move |t: &[Tensor]| conv::conv2d(&t[0], &t[1], k.stride, k.pad, k.dil, k.groups);
            let reference = candle_reference(*k);
            let inputs = conv_inputs(k, 10 * i as u64);
            check_against(
                &ours,
                &reference,
                &inputs,
                &[k.x_grad, true],
                500 + i as u64,
                LINEAR,
                k.name,
            );
        }
    });
    for b in CONV_BRANCHES {
        assert!(taken.contains(b), "no case takes the branch `{b}`");
    }
}

/// With the kernels off (or on a device / dtype they do not cover) conv2d is candle's, with the
/// explicit padding where height and width leave different remainders under the stride: checked
/// against finite differences, and the kernels against it.
#[test]
fn fallback_to_candle() {
    let _guard = serial();
    for (i, k) in [
        case(
            "fallback, same remainders",
            (2, 3, 9, 9),
            (4, 3, 3),
            (2, 1, 1, 1),
        ),
        case(
            "fallback, different remainders",
            (2, 3, 10, 9),
            (4, 3, 3),
            (2, 1, 1, 1),
        ),
        case("fallback, stride 3", (1, 2, 11, 9), (3, 3, 2), (3, 1, 1, 1)),
    ]
    .iter()
    .enumerate()
    {
        let inputs = conv_inputs(k, 700 + 10 * i as u64);
        let off = move |t: &[Tensor]| {
            kernels::set_enabled(false);
            let y = conv::conv2d(&t[0], &t[1], k.stride, k.pad, k.dil, k.groups);
            kernels::set_enabled(true);
            y
        };
        let (y, g) = forward_backward(&off, &inputs, &[true, true], 800 + i as u64);
        let direct = inputs[0]
            .conv2d(&inputs[1], k.pad, k.stride, k.dil, k.groups)
            .unwrap();
        assert_close(&y, &direct, 1e-12, &format!("{}: forward", k.name));
        check_finite_differences(
            &off,
            &inputs,
            &[true, true],
            &g,
            800 + i as u64,
            LINEAR,
            k.name,
        );
        let ours = move |t: &[Tensor]| conv::conv2d(&t[0], &t[1], k.stride, k.pad, k.dil, k.groups);
        check_against(
            &ours,
            &off,
            &inputs,
            &[true, true],
            800 + i as u64,
            LINEAR,
            k.name,
        );
    }
    assert!(kernels::enabled());
}

#[test]
fn conv2d_depthwise_branches() {
    let _guard = serial();
    // (name, n, c, h, w, multiplier, k, stride, pad, dil, x tracks, w tracks)
    let cases = [
        ("dw s1 m1 16x16", 2, 4, 16, 16, 1, 3, 1, 1, 1, true, true),
        ("dw s1 m2", 2, 3, 9, 7, 2, 3, 1, 1, 1, true, true),
        ("dw s2 m1", 3, 4, 9, 9, 1, 3, 2, 1, 1, true, true),
        ("dw s2 m2 pad 0", 2, 3, 12, 11, 2, 3, 2, 0, 1, true, true),
        ("dw dilation 2", 2, 3, 13, 13, 1, 3, 1, 2, 2, true, true),
        (
            "dw 5x5 rows over 64",
            1,
            2,
            6,
            80,
            2,
            5,
            1,
            2,
            1,
            true,
            true,
        ),
        (
            "dw input without grad",
            2,
            4,
            16,
            16,
            1,
            3,
            1,
            1,
            1,
            false,
            true,
        ),
        ("dw frozen kernel", 2, 4, 8, 8, 2, 3, 2, 1, 1, true, false),
    ];
    two_threads(|| {
        for (i, &(name, n, c, h, w, m, kk, s, p, d, xg, wg)) in cases.iter().enumerate() {
            let k = ConvCase {
                x_grad: xg,
                ..case(name, (n, c, h, w), (m * c, kk, kk), (s, p, d, c))
            };
            let inputs = conv_inputs(&k, 300 + 10 * i as u64);
            let ours = move |t: &[Tensor]| conv::conv2d(&t[0], &t[1], s, p, d, c);
            let reference = candle_reference(k);
            check_against(
                &ours,
                &reference,
                &inputs,
                &[xg, wg],
                900 + i as u64,
                LINEAR,
                name,
            );
        }
    });
}

// ------------------------------------------------------------------------------------------------
// batch norm, channel kernels, ReLU

const EPS: f64 = 1e-5;

/// Training-mode batch norm composed from candle ops: statistics over every axis but the channels.
fn batch_norm_reference(relu: bool) -> impl Fn(&[Tensor]) -> candle_core::Result<Tensor> {
    move |t: &[Tensor]| {
        let (x, gamma, beta) = (&t[0], &t[1], &t[2]);
        let mut shape = vec![1usize; x.rank()];
        shape[1] = x.dim(1)?;
        let axes: Vec<usize> = (0..x.rank()).filter(|&a| a != 1).collect();
        let mean = x.mean_keepdim(axes.clone())?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(axes)?;
        let y = centered
            .broadcast_div(&(var + EPS)?.sqrt()?)?
            .broadcast_mul(&gamma.reshape(shape.as_slice())?)?
            .broadcast_add(&beta.reshape(shape.as_slice())?)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

#[test]
fn batch_norm_training_with_and_without_fused_relu() {
    let _guard = serial();
    for (i, shape) in [vec![16, 5], vec![4, 3, 20], vec![3, 4, 6, 5]]
        .iter()
        .enumerate()
    {
        let c = shape[1];
        for relu in [false, true] {
            let what = format!("batch norm {shape:?}, relu {relu}");
            let inputs = vec![
                (uniform(shape, -2.0, 2.0, 40 + i as u64) + 0.7).unwrap(),
                uniform(&[c], 0.5, 1.5, 50 + i as u64),
                uniform(&[c], -0.5, 0.5, 60 + i as u64),
            ];
            let ours = move |t: &[Tensor]| {
                batch_norm::train(&t[0], &t[1], &t[2], EPS, relu).map(|(y, _, _)| y)
            };
            let reference = batch_norm_reference(relu);
            check_against(
                &ours,
                &reference,
                &inputs,
                &[true, true, true],
                70 + i as u64,
                SMOOTH,
                &what,
            );
        }
    }
}

#[test]
fn channel_kernels_below_and_above_the_parallel_threshold() {
    let _guard = serial();
    // 2^15 elements is the threshold: 4 x 8 x 30 = 960 below, 4 x 8 x 32 x 33 = 33792 above
    for (i, shape) in [vec![4, 8, 30], vec![4, 8, 32, 33], vec![6, 3]]
        .iter()
        .enumerate()
    {
        let c = shape[1];
        let mut bshape = vec![1usize; shape.len()];
        bshape[1] = c;
        let x = uniform(shape, -1.0, 1.0, 80 + i as u64);
        let (scale, shift) = (uniform(&[c], 0.5, 1.5, 81), uniform(&[c], -1.0, 1.0, 82));
        for x_grad in [true, false] {
            let what = format!("channel affine {shape:?}, input grad {x_grad}");
            let bs = bshape.clone();
            let reference = move |t: &[Tensor]| {
                t[0].broadcast_mul(&t[1].reshape(bs.as_slice())?)?
                    .broadcast_add(&t[2].reshape(bs.as_slice())?)
            };
            let ours = |t: &[Tensor]| channel::channel_affine(&t[0], &t[1], &t[2]);
            let inputs = [x.clone(), scale.clone(), shift.clone()];
            check_against(
                &ours,
                &reference,
                &inputs,
                &[x_grad, true, true],
                90 + i as u64,
                LINEAR,
                &what,
            );
        }
        let bs = bshape.clone();
        let reference = move |t: &[Tensor]| t[0].broadcast_add(&t[1].reshape(bs.as_slice())?);
        let ours = |t: &[Tensor]| channel::channel_bias(&t[0], &t[1]);
        let what = format!("channel bias {shape:?}");
        check_against(
            &ours,
            &reference,
            &[x.clone(), shift.clone()],
            &[true, true],
            95 + i as u64,
            LINEAR,
            &what,
        );
        let axes: Vec<usize> = (0..shape.len()).filter(|&a| a != 1).collect();
        for dtype in [DType::F64, DType::F32] {
            let x = x.to_dtype(dtype).unwrap();
            let sum = channel::channel_sum(&x).unwrap();
            assert_close(
                &sum,
                &x.sum(axes.clone()).unwrap(),
                1e-5,
                &format!("channel sum {shape:?} {dtype:?}"),
            );
        }
    }
}

#[test]
fn relu_below_and_above_the_chunk() {
    let _guard = serial();
    // the backward runs on one thread up to 2^16 elements, in chunks in parallel above
    for (i, n) in [1000usize, 70_000].into_iter().enumerate() {
        let x = common::away_from_zero(&[n / 10, 10], 100 + i as u64);
        let ours = |t: &[Tensor]| activation::relu(&t[0]);
        let reference = |t: &[Tensor]| t[0].relu();
        check_against(
            &ours,
            &reference,
            &[x],
            &[true],
            110 + i as u64,
            KINKED,
            &format!("relu, {n} elements"),
        );
    }
}

/// The kernels really are in use in this file (not candle's ops through a stale switch), and a
/// non-float dtype falls back cleanly.
#[test]
fn the_kernels_are_on_and_other_dtypes_fall_back() {
    let _guard = serial();
    assert!(kernels::enabled());
    let x = uniform(&[1, 2, 4, 4], -1.0, 1.0, 1);
    assert!(kernels::supported(&x));
    let h = x.to_dtype(DType::F16).unwrap();
    assert!(!kernels::supported(&h));
    let w = uniform(&[2, 2, 3, 3], -1.0, 1.0, 2)
        .to_dtype(DType::F16)
        .unwrap();
    let y = conv::conv2d(&h, &w, 1, 1, 1, 1).unwrap();
    assert_eq!(y.dtype(), DType::F16);
    let reference = h.conv2d(&w, 1, 1, 1, 1).unwrap();
    assert_close(&y, &reference, 0.0, "f16 conv2d is candle's");
}

#[test]
fn recurrent_kernels_match_the_composed_ops_and_finite_differences() {
    use prunekit_graph::kernels::recurrent;
    use prunekit_graph::ops::recurrent::{gru_steps, lstm_steps};
    let _guard = serial();
    two_threads(|| {
        for (k, &(batch, steps, hidden)) in [(3usize, 1usize, 4usize), (16, 5, 3), (37, 6, 5)]
            .iter()
            .enumerate()
        {
            let seed = 200 + 10 * k as u64;
            let gru_in = [
                uniform(&[batch, steps, 3 * hidden], -2.0, 2.0, seed),
                uniform(&[3 * hidden, hidden], -0.8, 0.8, seed + 1),
                uniform(&[3 * hidden], -0.5, 0.5, seed + 2),
            ];
            let ours = |t: &[Tensor]| recurrent::gru(&t[0], &t[1], &t[2]);
            let reference =
                |t: &[Tensor]| Tensor::stack(&gru_steps(&t[0], &t[1], &t[2], |_| ())?, 1);
            // over one step the composed loop never reads W_hh (h0 = 0): compare without it
            let grad = [true, steps > 1, true];
            check_against(
                &ours,
                &reference,
                &gru_in,
                &grad,
                seed,
                SMOOTH,
                &format!("gru B={batch} T={steps} H={hidden}"),
            );
            let lstm_in = [
                uniform(&[batch, steps, 4 * hidden], -2.0, 2.0, seed + 3),
                uniform(&[4 * hidden, hidden], -0.8, 0.8, seed + 4),
            ];
            let ours = |t: &[Tensor]| recurrent::lstm(&t[0], &t[1]);
            let reference = |t: &[Tensor]| Tensor::stack(&lstm_steps(&t[0], &t[1], |_| ())?, 1);
            check_against(
                &ours,
                &reference,
                &lstm_in,
                &[true, steps > 1],
                seed + 5,
                SMOOTH,
                &format!("lstm B={batch} T={steps} H={hidden}"),
            );
        }
    });
}
