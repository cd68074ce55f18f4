//! Parameter sharing (`Node::shared`): a tied embedding and output layer hold one tensor, which is
//! validated, counted, run, differentiated, masked, cloned and analysed once.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use prunekit_graph::channels::{analyse, Protection};
use prunekit_graph::{
    param_grads, Executor, Graph, GraphBuilder, Hooks, Mode, Param, ParamRef, Role,
};

const VOCAB: usize = 11;
const HIDDEN: usize = 6;
const T: usize = 4;

/// ids [T] -> embed [T, H] -> `blocks` x (x + linear(relu(linear(rms_norm(x))))) -> rms_norm ->
/// lm_head [T, V]; lm_head's weight is the embedding table when `tied`.
fn lm(tied: bool, blocks: usize, seed: u64) -> Graph {
    let mut b = GraphBuilder::new("lm", seed);
    let ids = b.ids_input("ids", &[T]);
    let mut x = b.named("embed").embedding(&ids, VOCAB, HIDDEN).unwrap();
    for _ in 0..blocks {
        let n = b.rms_norm(&x).unwrap();
        let h = b.linear(&n, 2 * HIDDEN).unwrap();
        let h = b.relu(&h).unwrap();
        let h = b.linear(&h, HIDDEN).unwrap();
        x = b.add(&x, &h).unwrap();
    }
    let n = b.rms_norm(&x).unwrap();
    b.named("lm_head");
    if tied {
        b.shared_param("weight", "embed", "weight");
    }
    let y = b.linear(&n, VOCAB).unwrap();
    b.finish(&[&y]).unwrap()
}

/// The same graph with the tie undone: lm_head owns a copy of the embedding table.
fn untie(g: &Graph) -> Graph {
    let mut u = g.try_clone().unwrap();
    let w = u.node("embed").unwrap().params["weight"]
        .tensor()
        .copy()
        .unwrap();
    let n = u.node_mut("lm_head").unwrap();
    assert!(n.shared.remove("weight").is_some());
    n.params.insert(
        "weight".into(),
        Param {
            value: Var::from_tensor(&w).unwrap(),
            mask: None,
            role: Role::Weight,
        },
    );
    u.validate().unwrap();
    u
}

fn run(g: &Graph, x: &Tensor) -> Tensor {
    Executor::new(0)
        .eval(g, std::slice::from_ref(x))
        .unwrap()
        .remove(0)
}

#[test]
fn the_tied_tensor_is_counted_once() {
    let tied = lm(true, 1, 1);
    let untied = lm(false, 1, 1);
    assert_eq!(
        untied.param_count() - tied.param_count(),
        VOCAB * HIDDEN,
        "the table is counted once"
    );
    let wc = (
        tied.weight_counts().unwrap(),
        untied.weight_counts().unwrap(),
    );
    assert_eq!(wc.1.weights - wc.0.weights, VOCAB * HIDDEN);
    assert!(tied
        .params()
        .all(|(n, k, _)| !(n.name == "lm_head" && k == "weight")));
    let head = tied.node("lm_head").unwrap();
    assert!(head.has_param("weight") && !head.params.contains_key("weight"));
    assert_eq!(
        head.shared["weight"],
        ParamRef {
            node: "embed".into(),
            param: "weight".into()
        }
    );
    assert_eq!(tied.borrowers_of("embed", "weight").len(), 1);
    // MACs count both uses; zeros of the shared weight are skipped in both
    assert_eq!(tied.macs().unwrap(), untied.macs().unwrap());
    let mut m = vec![1f32; VOCAB * HIDDEN];
    m[..VOCAB * HIDDEN / 2].fill(0.0);
    let m = Tensor::from_vec(m, (VOCAB, HIDDEN), &Device::Cpu).unwrap();
    let mut masked = tied.try_clone().unwrap();
    masked.set_mask("embed", "weight", m).unwrap();
    let head_macs = (T * HIDDEN * VOCAB) as f64;
    let per = masked.node_macs().unwrap();
    let last = per.last().unwrap();
    assert!((last.dense as f64 - last.effective - head_macs / 2.0).abs() < 1e-9);
}

#[test]
fn validate_checks_every_borrowed_parameter() {
    let g = lm(true, 1, 2);
    let try_tie = |node: &str, param: &str, owner: &str, owner_param: &str| {
        let mut h = g.try_clone().unwrap();
        let e = h
            .tie(node, param, owner, owner_param)
            .unwrap_err()
            .to_string();
        // on error the graph is unchanged
        assert_eq!(h.param_count(), g.param_count());
        h.validate().unwrap();
        e
    };
    let e = try_tie("lm_head", "bias", "nope", "weight");
    assert!(e.contains("lm_head") && e.contains("nope"), "{e}");
    let e = try_tie("linear1", "weight", "embed", "bias");
    assert!(
        e.contains("linear1") && e.contains("embed") && e.contains("no parameter `bias`"),
        "{e}"
    );
    // embed.weight is [11, 6], linear1.weight [12, 6]
    let e = try_tie("linear1", "weight", "embed", "weight");
    assert!(
        e.contains("linear1") && e.contains("[11, 6]") && e.contains("[12, 6]"),
        "{e}"
    );
    // chains: borrowing what lm_head borrows
    let mut chain = lm(false, 0, 2);
    chain.tie("lm_head", "weight", "embed", "weight").unwrap();
    let e = {
        let mut b = GraphBuilder::new("chain", 0);
        let ids = b.ids_input("ids", &[T]);
        let h = b.named("embed").embedding(&ids, VOCAB, HIDDEN).unwrap();
        let a = b
            .named("a")
            .shared_param("weight", "embed", "weight")
            .linear(&h, VOCAB)
            .unwrap();
        let _ = a;
        let e = b
            .named("c")
            .shared_param("weight", "a", "weight")
            .linear(&h, VOCAB)
            .unwrap_err()
            .to_string();
        e
    };
    assert!(
        e.contains("`c`") && e.contains("`a`") && e.contains("no chains"),
        "{e}"
    );
    // self-borrowing, an undeclared name, a role mismatch (an RMSNorm weight [6] as a bias [6])
    let e = try_tie("lm_head", "bias", "lm_head", "weight");
    assert!(e.contains("itself"), "{e}");
    let e = try_tie("lm_head", "scale", "embed", "weight");
    assert!(e.contains("not a parameter of a linear op"), "{e}");
    let e = try_tie("linear2", "bias", "rms_norm1", "weight");
    assert!(e.contains("Weight") && e.contains("Bias"), "{e}");
    // owned and borrowed at once
    let mut both = g.try_clone().unwrap();
    let w = both.node("embed").unwrap().params["weight"]
        .tensor()
        .copy()
        .unwrap();
    both.node_mut("lm_head").unwrap().params.insert(
        "weight".into(),
        Param {
            value: Var::from_tensor(&w).unwrap(),
            mask: None,
            role: Role::Weight,
        },
    );
    let e = both.validate().unwrap_err().to_string();
    assert!(e.contains("both owned and borrowed"), "{e}");
    // a removed owner
    let mut gone = g.try_clone().unwrap();
    gone.node_mut("lm_head").unwrap().shared.insert(
        "weight".into(),
        ParamRef {
            node: "missing".into(),
            param: "weight".into(),
        },
    );
    let e = gone.validate().unwrap_err().to_string();
    assert!(e.contains("lm_head") && e.contains("missing"), "{e}");
}

#[test]
fn the_borrower_runs_with_the_owners_tensor() {
    let g = lm(true, 1, 3);
    let u = untie(&g);
    let x = ids(&[2, T], VOCAB as u32, 4);
    assert_eq!(bits(&run(&g, &x)), bits(&run(&u, &x)));
    // changing the owner changes the borrower's use of it
    let w = &g.node("embed").unwrap().params["weight"].value;
    let before = run(&g, &x);
    w.set(&(w.as_tensor() * 2.0).unwrap()).unwrap();
    assert_ne!(bits(&before), bits(&run(&g, &x)));
}

#[test]
fn the_gradient_of_a_tied_weight_is_the_sum_of_both_uses() {
    let mut g = lm(true, 1, 5);
    g.to_dtype(DType::F64).unwrap();
    randomize_params(&g, 5);
    let u = untie(&g);
    let x = ids(&[3, T], VOCAB as u32, 6);
    let r = randn(&[3, T, VOCAB], 7);
    let grads_of = |g: &Graph| {
        let y = Executor::new(0)
            .run(g, std::slice::from_ref(&x), Mode::EVAL_GRAD, None)
            .unwrap()
            .remove(0);
        let gs = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        param_grads(g, &gs)
    };
    let (gt, gu) = (grads_of(&g), grads_of(&u));
    let key = |n: &str| (n.to_string(), "weight".to_string());
    assert!(
        !gt.contains_key(&key("lm_head")),
        "one variable, one gradient"
    );
    let sum = (&gu[&key("embed")] + &gu[&key("lm_head")]).unwrap();
    let diff = max_abs(&(&gt[&key("embed")] - &sum).unwrap());
    assert!(diff < 1e-12 * max_abs(&sum).max(1.0), "difference {diff}");
    // both parts are nonzero, so the sum is a real check
    assert!(max_abs(&gu[&key("embed")]) > 0.0 && max_abs(&gu[&key("lm_head")]) > 0.0);
}

#[test]
fn tied_gradients_agree_with_finite_differences() {
    let g = f64_graph(lm(true, 1, 8), 8);
    let x = ids(&[2, T], VOCAB as u32, 9);
    let checked = grad_check(&g, &[x], false);
    assert!(checked.contains(&"embed.weight".to_string()), "{checked:?}");
    assert!(!checked.contains(&"lm_head.weight".to_string()));
}

#[test]
fn weight_input_hooks_report_under_the_borrowing_node() {
    let g = lm(true, 0, 10);
    let x = ids(&[2, T], VOCAB as u32, 11);
    let key = ("lm_head".to_string(), "weight".to_string());
    let mut hooks = Hooks::weight_inputs_of([key.clone()]);
    hooks.capture_inputs.insert("lm_head".into());
    Executor::new(0)
        .run(&g, std::slice::from_ref(&x), Mode::EVAL, Some(&mut hooks))
        .unwrap();
    let got = &hooks.weight_inputs[&key];
    assert_eq!(got.len(), 1);
    assert_eq!(bits(&got[0]), bits(&hooks.inputs["lm_head"][0]));
}

#[test]
fn a_mask_is_set_once_on_the_owner_and_read_by_both_users() {
    let g = lm(true, 1, 12);
    let mut masked = g.try_clone().unwrap();
    let mut m = vec![1f32; VOCAB * HIDDEN];
    for (i, v) in m.iter_mut().enumerate() {
        if i % 3 == 0 {
            *v = 0.0;
        }
    }
    let m = Tensor::from_vec(m, (VOCAB, HIDDEN), &Device::Cpu).unwrap();
    // set through the borrower: it lands on the owner
    masked.set_mask("lm_head", "weight", m.clone()).unwrap();
    let owner = &masked.node("embed").unwrap().params["weight"];
    assert!(owner.mask.is_some());
    assert_eq!(count_zeros(owner.tensor()), VOCAB * HIDDEN / 3);
    // the reference: an untied copy with both tables masked the same
    let mut u = untie(&g);
    u.set_mask("embed", "weight", m.clone()).unwrap();
    u.set_mask("lm_head", "weight", m).unwrap();
    let x = ids(&[2, T], VOCAB as u32, 13);
    assert_eq!(bits(&run(&masked, &x)), bits(&run(&u, &x)));
    assert_eq!(
        masked.weight_counts().unwrap().zeros,
        VOCAB * HIDDEN / 3,
        "the zeros are counted once"
    );
}

fn count_zeros(t: &Tensor) -> usize {
    prunekit_graph::count_zeros(t).unwrap()
}

#[test]
fn a_clone_keeps_the_sharing_and_copies_the_owner() {
    let g = lm(true, 1, 14);
    let c = g.try_clone().unwrap();
    assert_eq!(
        c.node("lm_head").unwrap().shared,
        g.node("lm_head").unwrap().shared
    );
    let x = ids(&[2, T], VOCAB as u32, 15);
    let before = run(&g, &x);
    let w = &c.node("embed").unwrap().params["weight"].value;
    w.set(&w.as_tensor().zeros_like().unwrap()).unwrap();
    assert_eq!(
        bits(&before),
        bits(&run(&g, &x)),
        "the original is untouched"
    );
    // the clone's lm_head reads the clone's (zeroed) table: its logits are its bias
    let y = run(&c, &x);
    let bias = c.node("lm_head").unwrap().params["bias"].tensor().clone();
    let want = bias.broadcast_as(y.shape()).unwrap();
    assert_eq!(bits(&y), bits(&want.contiguous().unwrap()));
}

#[test]
fn the_analysis_slices_the_shared_tensor_as_the_owners() {
    let g = lm(true, 1, 16);
    let a = analyse(&g).unwrap();
    for u in &a.units {
        assert!(
            u.slices
                .keys()
                .all(|k| k.node != "lm_head" || k.param != "weight"),
            "a borrowed parameter is sliced through its owner: {:?}",
            u.slices.keys().collect::<Vec<_>>()
        );
    }
    // the hidden width: one group over the embedding's channels and lm_head's inputs
    let stream = a.group("embed").expect("the residual stream is a group");
    assert_eq!(stream.units.len(), HIDDEN);
    let unit = &a.units[stream.units[0]];
    let axes: Vec<(String, String, usize)> = unit
        .slices
        .keys()
        .map(|k| (k.node.clone(), k.param.clone(), k.axis))
        .collect();
    assert!(
        axes.contains(&("embed".into(), "weight".into(), 1)),
        "{axes:?}"
    );
    // removing hidden channels slices the table once; lm_head follows with the new shape
    let mut pruned = g.try_clone().unwrap();
    let remove: Vec<usize> = stream.units.iter().copied().step_by(2).collect();
    a.remove(&mut pruned, &remove).unwrap();
    let kept = HIDDEN - remove.len();
    let table = pruned.node("embed").unwrap().params["weight"]
        .tensor()
        .dims()
        .to_vec();
    assert_eq!(table, vec![VOCAB, kept]);
    match &pruned.node("lm_head").unwrap().op {
        prunekit_graph::Op::Linear(l) => assert_eq!((l.out_features, l.in_features), (VOCAB, kept)),
        op => panic!("{op:?}"),
    }
    assert_eq!(pruned.borrowers_of("embed", "weight").len(), 1);
    // ... and computes what masking computes
    let mut masked = g.try_clone().unwrap();
    a.mask(&mut masked, &remove).unwrap();
    let x = ids(&[3, T], VOCAB as u32, 17);
    let (p, m) = (run(&pruned, &x), run(&masked, &x));
    let err = max_abs(&(&p - &m).unwrap()) / max_abs(&m);
    assert!(err < 1e-5, "removal vs masking: {err}");
}

#[test]
fn users_that_need_different_slices_are_protected() {
    // lm_head's outputs are not a graph output here: its rows would be prunable channels, but
    // the embedding does not index its table's rows by channels (they are token ids)
    let mut b = GraphBuilder::new("lm", 18);
    let ids_in = b.ids_input("ids", &[T]);
    let x = b.named("embed").embedding(&ids_in, VOCAB, HIDDEN).unwrap();
    let y = b
        .named("lm_head")
        .shared_param("weight", "embed", "weight")
        .linear(&x, VOCAB)
        .unwrap();
    let y = b.relu(&y).unwrap();
    let z = b.linear(&y, 3).unwrap();
    let g = b.finish(&[&z]).unwrap();
    let a = analyse(&g).unwrap();
    assert!(
        a.group("lm_head").is_none(),
        "lm_head's rows are not removable"
    );
    for u in &a.units {
        assert!(u.slices.keys().all(|k| !(k.node == "embed" && k.axis == 0)));
    }
    let space = a
        .protected_spaces
        .iter()
        .find(|s| s.node == "lm_head")
        .expect("lm_head's channels are listed as protected");
    assert_eq!(space.protected, VOCAB);
    assert!(space.reasons.contains(&Protection::Op {
        node: "embed".into(),
        op: "embedding".into()
    }));
    assert!(
        a.blocked_by.iter().any(|b| b.contains("embed")),
        "{:?}",
        a.blocked_by
    );
    // the hidden width stays prunable
    assert_eq!(a.group("embed").map(|gr| gr.units.len()), Some(HIDDEN));
}
