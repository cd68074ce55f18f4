//! Helpers shared by the integration tests: seeded random tensors, one-op graphs, parameter
//! randomisation and a finite-difference gradient checker.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use prunekit_graph::ops::Conv2d;
use prunekit_graph::{param_grads, Executor, Graph, GraphBuilder, Mode, Op, Role, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Standard-normal f64 values.
pub fn normal_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = r.random_range(f64::EPSILON..1.0);
            let u2: f64 = r.random();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect()
}

/// A standard-normal f64 tensor.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(normal_vec(n, seed), shape, &Device::Cpu).unwrap()
}

/// A standard-normal f32 tensor.
pub fn randn_f32(shape: &[usize], seed: u64) -> Tensor {
    randn(shape, seed).to_dtype(DType::F32).unwrap()
}

/// Uniform f64 values in [lo, hi).
pub fn uniform(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor {
    let mut r = rng(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| r.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// f64 values with |x| in [0.1, 1.1) and a random sign: nothing near zero (for ReLU).
pub fn away_from_zero(shape: &[usize], seed: u64) -> Tensor {
    let mut r = rng(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            let m = r.random_range(0.1..1.1);
            if r.random::<bool>() {
                m
            } else {
                -m
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// u32 ids in [0, n).
pub fn ids(shape: &[usize], n: u32, seed: u64) -> Tensor {
    let mut r = rng(seed);
    let len: usize = shape.iter().product();
    let v: Vec<u32> = (0..len).map(|_| r.random_range(0..n)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A graph of one op reading float inputs of the given per-sample shapes (named x0, x1, ..); the
/// op node is named `op`.
pub fn single_op(op: impl Into<Op>, in_shapes: &[&[usize]]) -> Graph {
    let mut b = GraphBuilder::new("single", 7);
    let ins: Vec<Value> = in_shapes
        .iter()
        .enumerate()
        .map(|(i, s)| b.input(&format!("x{i}"), s))
        .collect();
    let refs: Vec<&Value> = ins.iter().collect();
    let y = b.named("op").node(op, &refs).unwrap();
    b.finish(&[&y]).unwrap()
}

/// Replaces every parameter with random values (so weights of one, biases of zero and fresh running
/// statistics do not hide mistakes): running variances in [0.5, 2), everything else normal * 0.5.
pub fn randomize_params(g: &Graph, seed: u64) {
    for (i, (_, name, p)) in g.params().enumerate() {
        let dims = p.tensor().dims().to_vec();
        let s = seed.wrapping_mul(1000).wrapping_add(i as u64);
        let t = if p.role == Role::Buffer && name == "running_var" {
            uniform(&dims, 0.5, 2.0, s)
        } else {
            (randn(&dims, s) * 0.5).unwrap()
        };
        p.value
            .set(&t.to_dtype(p.tensor().dtype()).unwrap())
            .unwrap();
    }
}

/// Wraps the inputs marked in `grad` into `Var`s (so that a backward pass reaches them): the vars
/// (None where unmarked) and the inputs to run on (the var's tensor, or the input itself).
pub fn track(inputs: &[Tensor], grad: &[bool]) -> (Vec<Option<Var>>, Vec<Tensor>) {
    let vars: Vec<Option<Var>> = inputs
        .iter()
        .zip(grad)
        .map(|(t, &g)| g.then(|| Var::from_tensor(t).unwrap()))
        .collect();
    let tensors = inputs
        .iter()
        .zip(&vars)
        .map(|(t, v)| {
            v.as_ref()
                .map_or_else(|| t.clone(), |v| v.as_tensor().clone())
        })
        .collect();
    (vars, tensors)
}

/// The largest absolute value of a tensor of any float dtype, as f64.
pub fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Finite-difference settings.
pub const EPS: f64 = 1e-6;
pub const RTOL: f64 = 1e-4;
pub const ATOL: f64 = 1e-6;

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn with_elem(t: &Tensor, i: usize, delta: f64) -> Tensor {
    let mut v = flat(t);
    v[i] += delta;
    Tensor::from_vec(v, t.dims(), t.device()).unwrap()
}

/// loss = sum over outputs of sum(output * weight).
fn loss(outs: &[Tensor], weights: &[Tensor]) -> Tensor {
    let mut total: Option<Tensor> = None;
    for (o, w) in outs.iter().zip(weights) {
        let l = (o * w).unwrap().sum_all().unwrap();
        total = Some(match total {
            None => l,
            Some(t) => (t + l).unwrap(),
        });
    }
    total.expect("the graph has outputs")
}

fn loss_value(g: &Graph, inputs: &[Tensor], weights: &[Tensor], train: bool) -> f64 {
    let outs = Executor::new(0)
        .run(g, inputs, Mode { train, grad: false }, None)
        .unwrap();
    loss(&outs, weights).to_scalar::<f64>().unwrap()
}

fn assert_close(what: &str, analytic: &[f64], numeric: &[f64]) {
    assert_eq!(
        analytic.len(),
        numeric.len(),
        "{what}: gradient sizes differ"
    );
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let err = (a - n).abs();
        let tol = ATOL + RTOL * a.abs().max(n.abs());
        let within = err <= tol; // false for NaN
        if !within {
            let ratio = if err.is_nan() {
                f64::INFINITY
            } else {
                err / tol
            };
            match worst {
                Some((_, r)) if r >= ratio => {}
                _ => worst = Some((i, ratio)),
            }
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: analytic and numeric gradients differ at flat index {i}: analytic {} vs numeric {}\n\
             analytic: {analytic:?}\nnumeric:  {numeric:?}",
            analytic[i], numeric[i]
        );
    }
    let max = analytic.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(
        max > 0.0,
        "{what}: the gradient is identically zero, the check proves nothing"
    );
}

/// Checks the autodiff gradients of `loss = sum(output * fixed random tensor)` with respect to
/// every trainable parameter of `g` and every float input against central finite differences.
/// `g` must be f64; float inputs must be f64 (they are wrapped into `Var`s), id inputs are left
/// alone. Returns the names of the checked gradients.
pub fn grad_check(g: &Graph, inputs: &[Tensor], train: bool) -> Vec<String> {
    assert!(
        g.params().all(|(_, _, p)| p.tensor().dtype() == DType::F64),
        "convert the graph with to_dtype(F64) first"
    );
    let float: Vec<bool> = inputs.iter().map(|t| t.dtype().is_float()).collect();
    let (vars, tracked) = track(inputs, &float);

    let outs = Executor::new(0)
        .run(g, &tracked, Mode { train, grad: true }, None)
        .unwrap();
    let weights: Vec<Tensor> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| randn(o.dims(), 9_000 + i as u64))
        .collect();
    let grads = loss(&outs, &weights).backward().unwrap();
    let pgrads = param_grads(g, &grads);

    let mut checked = Vec::new();
    // parameters
    let trainable: Vec<(String, String, Var)> = g
        .trainable()
        .map(|(n, k, p)| (n.name.clone(), k.clone(), p.value.clone()))
        .collect();
    for (node, param, var) in trainable {
        let what = format!("d loss / d {node}.{param}");
        let analytic = pgrads
            .get(&(node.clone(), param.clone()))
            .unwrap_or_else(|| panic!("{what}: no gradient reached the parameter"));
        assert_eq!(
            analytic.dims(),
            var.as_tensor().dims(),
            "{what}: gradient shape"
        );
        let original = var.as_tensor().copy().unwrap();
        let mut numeric = Vec::with_capacity(original.elem_count());
        for i in 0..original.elem_count() {
            var.set(&with_elem(&original, i, EPS)).unwrap();
            let lp = loss_value(g, inputs, &weights, train);
            var.set(&with_elem(&original, i, -EPS)).unwrap();
            let lm = loss_value(g, inputs, &weights, train);
            numeric.push((lp - lm) / (2.0 * EPS));
        }
        var.set(&original).unwrap();
        assert_close(&what, &flat(analytic), &numeric);
        checked.push(format!("{node}.{param}"));
    }
    // inputs
    for (j, v) in vars.iter().enumerate() {
        let Some(v) = v else { continue };
        let what = format!("d loss / d input {j}");
        let analytic = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{what}: no gradient reached the input"));
        assert_eq!(analytic.dims(), inputs[j].dims(), "{what}: gradient shape");
        let mut numeric = Vec::with_capacity(inputs[j].elem_count());
        for i in 0..inputs[j].elem_count() {
            let mut xs = inputs.to_vec();
            xs[j] = with_elem(&inputs[j], i, EPS);
            let lp = loss_value(g, &xs, &weights, train);
            xs[j] = with_elem(&inputs[j], i, -EPS);
            let lm = loss_value(g, &xs, &weights, train);
            numeric.push((lp - lm) / (2.0 * EPS));
        }
        assert_close(&what, &flat(analytic), &numeric);
        checked.push(format!("input {j}"));
    }
    checked
}

/// Converts a graph to f64 and randomises its parameters.
pub fn f64_graph(mut g: Graph, seed: u64) -> Graph {
    g.to_dtype(DType::F64).unwrap();
    randomize_params(&g, seed);
    g
}

/// Flattened f32 bit patterns of a tensor of any float dtype (f64 goes through its own bits).
pub fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| v.to_bits() as u64)
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()
            .unwrap()
            .into_iter()
            .map(f64::to_bits)
            .collect(),
        DType::U32 => t
            .to_vec1::<u32>()
            .unwrap()
            .into_iter()
            .map(u64::from)
            .collect(),
        other => panic!("bits: unsupported dtype {other:?}"),
    }
}

/// A conv2d op with every geometry attribute set.
pub fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
) -> Conv2d {
    let mut c = Conv2d::new(cin, cout, k);
    c.stride = stride;
    c.padding = padding;
    c.dilation = dilation;
    c.groups = groups;
    c
}

/// A sequence model with every sequence op: embedding, positional embedding, attention (RoPE, GQA,
/// masked, plain), LSTM and GRU; three outputs. Inputs: 6 token ids and a [6] padding mask.
pub fn sequence_model() -> Graph {
    use prunekit_graph::ops::Attention;
    let mut b = GraphBuilder::new("tiny-seq", 8);
    let t = b.ids_input("tokens", &[6]);
    let pad = b.input("pad", &[6]);
    let e = b.embedding(&t, 20, 8).unwrap();
    let e = b.positional_embedding(&e, 12).unwrap();
    let a = b.attention(&e, 4, 2, 2, true, Some(10000.0)).unwrap();
    let a = b.attention_masked(&a, &pad, 2, 1, 4, false, None).unwrap();
    let mut plain = Attention::new(8, 2, 3);
    plain.out_dim = 5;
    plain.bias = false;
    let a = b.node(plain, &[&a]).unwrap();
    let l = b.lstm(&a, 5, true).unwrap();
    let r = b.gru(&l, 3, false).unwrap();
    let r2 = b.lstm(&l, 2, false).unwrap();
    b.finish(&[&r, &r2, &l]).unwrap()
}
