//! The structured pruner does what was asked and says when it cannot: K steps end at the widths of
//! one step, every group pruned less than asked is listed with the reason, a grouped-query
//! attention's ratio applies to its query heads overall with the real head counts reported, and
//! removing every residual block is refused.

use candle_core::Tensor;
use prunekit_graph::{Graph, GraphBuilder, Op, Role, Value};
use prunekit_io::native as format;
use prunekit_prune::magnitude::Scope;
use prunekit_prune::{
    find_layers, prune_layers, prune_structured, random_inputs, verify, Limit, Norm,
    StructuredConfig, StructuredReport,
};
use rand::{Rng, SeedableRng};

const TOL: f64 = 1e-5;

fn build(
    name: &str,
    shape: &[usize],
    body: impl FnOnce(&mut GraphBuilder, &Value) -> prunekit_graph::Result<Value>,
) -> Graph {
    let mut b = GraphBuilder::new(name, 7);
    let x = b.input("x", shape);
    let y = body(&mut b, &x).unwrap();
    b.finish(&[&y]).unwrap()
}

/// x[6] -> linear(widths[0]) -> relu -> ... -> linear(2)
fn mlp(widths: &[usize]) -> Graph {
    build("mlp", &[6], |b, x| {
        let mut h = x.clone();
        for &w in widths {
            h = b.linear(&h, w)?;
            h = b.relu(&h)?;
        }
        b.linear(&h, 2)
    })
}

/// Out widths of every Linear and Conv2d, in graph order.
fn widths(g: &Graph) -> Vec<usize> {
    g.nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Linear(l) => Some(l.out_features),
            Op::Conv2d(c) => Some(c.out_channels),
            _ => None,
        })
        .collect()
}

fn pruned(g: &Graph, cfg: &StructuredConfig) -> (Graph, StructuredReport) {
    let mut p = g.clone();
    let r = prune_structured(&mut p, cfg, &Norm::L1).unwrap();
    (p, r)
}

fn verified(g: &Graph, p: &Graph, r: &StructuredReport) {
    let x = vec![random_inputs(g, 2, 1).unwrap()];
    let v = verify(g, p, &r.removed(), &x).unwrap();
    assert!(v.max_rel_error <= TOL, "{}: {}", g.name, v.max_rel_error);
}

fn cfg(ratio: f64, steps: usize) -> StructuredConfig {
    let mut c = StructuredConfig::new(ratio);
    c.steps = steps;
    c
}

#[test]
fn k_steps_end_at_the_one_step_widths() {
    // 16 channels at 0.75 over 6 steps: 4 stay (compounded floors kept 6)
    let g = mlp(&[16]);
    let (p, r) = pruned(&g, &cfg(0.75, 6));
    assert_eq!(widths(&p), vec![4, 2]);
    assert!(r.shortfalls.is_empty(), "{:?}", r.shortfalls);
    verified(&g, &p, &r);
    // digits-cnn at 0.5 in 3 steps: 8/16/32 (compounded floors kept 9/17/33)
    let cnn = prunekit_zoo::build("digits-cnn", 0).unwrap();
    let (p, r) = pruned(&cnn, &cfg(0.5, 3));
    assert_eq!(widths(&p), vec![8, 16, 32, 10]);
    verified(&cnn, &p, &r);
}

#[test]
fn k_steps_equal_one_step_over_sizes_ratios_steps_and_rounding() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut cases = 0;
    for &(a, b) in &[(16, 10), (7, 33), (64, 5), (3, 24)] {
        let g = mlp(&[a, b]);
        for &ratio in &[0.1, 0.3, 0.5, 0.75, 0.9] {
            for &round_to in &[1usize, 4] {
                let steps = rng.random_range(2..=7);
                let mut one = cfg(ratio, 1);
                one.round_to = round_to;
                let mut many = one.clone();
                many.steps = steps;
                let (p1, _) = pruned(&g, &one);
                let (pk, rk) = pruned(&g, &many);
                let case = format!("{a}/{b} at {ratio}, round_to {round_to}, {steps} steps");
                assert_eq!(widths(&pk), widths(&p1), "{case}");
                assert!(
                    widths(&p1) != widths(&g) || ratio * (a.max(b) as f64) < 4.0,
                    "{case}"
                );
                if cases % 5 == 0 {
                    verified(&g, &pk, &rk);
                }
                cases += 1;
            }
        }
    }
    // per-group ratios, min / max ratio and the global scope reach the same widths in K steps
    let g = mlp(&[16, 12, 9]);
    let mut one = cfg(0.5, 1);
    one.group_ratios.insert("linear2".into(), 0.8);
    one.max_ratio = 0.7;
    one.min_ratio = 0.2;
    let mut many = one.clone();
    many.steps = 4;
    let (p1, _) = pruned(&g, &one);
    let (pk, rk) = pruned(&g, &many);
    assert_eq!(widths(&p1), vec![8, 4, 5, 2], "linear2 capped at 0.7 of 12");
    assert_eq!(widths(&pk), widths(&p1));
    verified(&g, &pk, &rk);
    let mut one = cfg(0.6, 1);
    one.scope = Scope::Global;
    let mut many = one.clone();
    many.steps = 3;
    let (p1, r1) = pruned(&g, &one);
    let (pk, rk) = pruned(&g, &many);
    assert_eq!(r1.removed_units(), 22, "0.6 of 37 units");
    assert_eq!(widths(&pk), widths(&p1));
    assert_eq!(rk.removed_units(), 22);
    verified(&g, &pk, &rk);
}

/// Sets `node.param` to `f(index)` element-wise.
fn set_weights(g: &Graph, node: &str, param: &str, f: impl Fn(&[usize]) -> f32) {
    let p = &g.node(node).unwrap().params[param];
    let t = p.tensor();
    let dims = t.dims().to_vec();
    let n = t.elem_count();
    let v: Vec<f32> = (0..n)
        .map(|mut i| {
            let mut idx = vec![0; dims.len()];
            for a in (0..dims.len()).rev() {
                idx[a] = i % dims[a];
                i /= dims[a];
            }
            f(&idx)
        })
        .collect();
    let v = Tensor::from_vec(v, t.shape(), t.device()).unwrap();
    p.value.set(&v).unwrap();
}

fn shortfall<'a>(r: &'a StructuredReport, group: &str) -> &'a prunekit_prune::Shortfall {
    r.shortfalls
        .iter()
        .find(|s| s.group == group)
        .unwrap_or_else(|| panic!("no shortfall for `{group}`: {:?}", r.shortfalls))
}

#[test]
fn every_group_pruned_less_than_asked_is_named_with_the_reason() {
    let g = mlp(&[16, 10]);
    // max_ratio and round_to
    let mut c = cfg(0.75, 1);
    c.max_ratio = 0.5;
    c.round_to = 4;
    let (_, r) = pruned(&g, &c);
    let s = shortfall(&r, "linear1");
    assert_eq!((s.asked, s.removed), (12, 8), "{s}");
    assert_eq!(s.limits, vec![Limit::MaxRatio]);
    assert!(s.reason.contains("max_ratio 0.5"), "{s}");
    let s = shortfall(&r, "linear2");
    assert_eq!(
        (s.asked, s.removed),
        (7, 2),
        "10: 5 by max_ratio, then 8 kept: {s}"
    );
    assert_eq!(s.limits, vec![Limit::MaxRatio, Limit::RoundTo]);
    assert!(s.reason.contains("round_to 4 keeps 8"), "{s}");
    // protected nodes
    let mut c = cfg(0.5, 1);
    c.protected = vec!["linear1".into()];
    let (p, r) = pruned(&g, &c);
    assert_eq!(widths(&p), vec![16, 5, 2]);
    let s = shortfall(&r, "linear1");
    assert_eq!(
        (s.asked, s.removed, s.limits.clone()),
        (8, 0, vec![Limit::Protected])
    );
    assert!(s.reason.contains("`linear1`"), "{s}");
    assert_eq!(r.shortfalls.len(), 1, "{:?}", r.shortfalls);
    // the same in the global scope
    c.scope = Scope::Global;
    let (_, r) = pruned(&g, &c);
    assert_eq!(shortfall(&r, "linear1").limits, vec![Limit::Protected]);
    // a request met in full lists nothing
    let (_, r) = pruned(&g, &cfg(0.5, 1));
    assert!(r.shortfalls.is_empty() && r.warning.is_none(), "{r:?}");
}

#[test]
fn keep_nonempty_names_the_parameter_it_would_empty() {
    // linear1's channels 0..2 feed linear2 alone: removing both would empty linear2's input
    let g = build("split", &[6], |b, x| {
        let h = b.linear(x, 8)?;
        let parts = b.split(&h, -1, &[2, 6])?;
        let l = b.linear(&parts[0], 4)?;
        let r = b.linear(&parts[1], 4)?;
        b.concat(&[&l, &r], -1)
    });
    // the two channels of the narrow part score lowest
    set_weights(
        &g,
        "linear1",
        "weight",
        |i| if i[0] < 2 { 0.01 } else { 1.0 },
    );
    for s in 1..3 {
        let (p, r) = pruned(&g, &cfg(0.75, s));
        let s = shortfall(&r, "linear1");
        assert_eq!((s.asked, s.removed), (6, 5), "{s}");
        assert_eq!(s.limits, vec![Limit::KeepNonempty], "{s}");
        assert!(s.reason.contains("`linear2`.weight axis 1"), "{s}");
        verified(&g, &p, &r);
    }
}

#[test]
fn channels_coupled_to_graph_inputs_outputs_and_opaque_ops_are_listed() {
    // linear2's channels go through a softmax over channels; linear3's are added to the input
    let g = build("coupled", &[6], |b, x| {
        let h = b.linear(x, 12)?;
        let h = b.relu(&h)?;
        let h = b.linear(&h, 8)?;
        let h = b.softmax(&h)?;
        let h = b.linear(&h, 6)?;
        let h = b.add(&h, x)?;
        b.linear(&h, 2)
    });
    let (p, r) = pruned(&g, &cfg(0.5, 1));
    assert_eq!(widths(&p), vec![6, 8, 6, 2]);
    let s = shortfall(&r, "linear2");
    assert_eq!((s.asked, s.removed), (4, 0));
    assert_eq!(s.limits, vec![Limit::Coupled]);
    assert!(s.reason.contains("`softmax1` (softmax)"), "{s}");
    let s = shortfall(&r, "linear3");
    assert!(s.reason.contains("graph input `x`"), "{s}");
    // the classifier's own outputs are not a shortfall
    assert!(
        r.shortfalls.iter().all(|s| s.group != "linear4"),
        "{:?}",
        r.shortfalls
    );
    assert_eq!(r.shortfalls.len(), 2, "{:?}", r.shortfalls);
}

#[test]
fn a_run_that_removes_nothing_says_why_and_one_that_cannot_is_an_error() {
    let g = mlp(&[16, 10]);
    let (p, r) = pruned(&g, &cfg(0.05, 1));
    assert_eq!(widths(&p), widths(&g));
    let w = r.warning.expect("a warning");
    assert!(w.contains("less than one unit") && w.contains("16"), "{w}");
    let mut c = cfg(0.5, 1);
    c.round_to = 16;
    let (_, r) = pruned(&g, &c);
    let w = r.warning.expect("a warning");
    assert!(
        w.contains("removed nothing") && w.contains("round_to 16"),
        "{w}"
    );
    // ratio 0 asks for nothing: no warning
    assert!(pruned(&g, &cfg(0.0, 1)).1.warning.is_none());
    // every unit protected: nothing can ever be removed
    let mut c = cfg(0.5, 1);
    c.protected = vec!["linear1".into(), "linear2".into()];
    let err = prune_structured(&mut g.clone(), &c, &Norm::L1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nothing can be removed") && err.contains("`linear2`"),
        "{err}"
    );
}

/// (num_heads, num_kv_heads) of every attention node.
fn heads(g: &Graph) -> Vec<(usize, usize)> {
    g.nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Attention(a) => Some((a.num_heads, a.num_kv_heads)),
            _ => None,
        })
        .collect()
}

/// Non-trivial biases and norm weights, so every removed slice shows in the outputs.
fn randomise(g: &Graph) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for (_, _, p) in g.params() {
        let t = p.tensor();
        if p.role == Role::Weight && t.rank() >= 2 {
            continue;
        }
        let v: Vec<f32> = (0..t.elem_count())
            .map(|_| rng.random_range(0.5..1.5))
            .collect();
        p.value
            .set(&Tensor::from_vec(v, t.shape(), t.device()).unwrap())
            .unwrap();
    }
}

#[test]
fn grouped_query_attention_ratio_applies_to_the_query_heads_overall() {
    let g = prunekit_zoo::build("llama-tiny", 0).unwrap();
    randomise(&g);
    assert_eq!(heads(&g), vec![(8, 2), (8, 2)]);
    // ratio -> (query heads, KV heads) kept
    for (ratio, steps, want) in [
        (0.5, 1, (4, 2)),
        (0.5, 2, (4, 2)),
        (0.25, 1, (6, 2)),
        (0.75, 1, (2, 1)),
        (0.875, 1, (1, 1)),
    ] {
        let (p, r) = pruned(&g, &cfg(ratio, steps));
        let case = format!("ratio {ratio}, {steps} steps");
        assert_eq!(heads(&p), vec![want, want], "{case}");
        // the report's counts are the saved model's, also after a save and load
        let dir = std::env::temp_dir().join(format!("prunekit-gqa-{}", std::process::id()));
        format::save(&p, &dir).unwrap();
        let back = format::load(&dir, &candle_core::Device::Cpu).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(heads(&back), heads(&p), "{case}");
        let reported: Vec<(usize, usize)> = r
            .attention
            .iter()
            .map(|h| (h.heads_after, h.kv_heads_after))
            .collect();
        assert_eq!(reported, heads(&back), "{case}");
        assert!(r
            .attention
            .iter()
            .all(|h| (h.heads_before, h.kv_heads_before) == (8, 2)));
        // the groups' counts agree: KV groups and query heads per group
        for gr in &r.groups {
            let (h, kv) = want;
            match gr.label.as_str() {
                "kv_groups" => assert_eq!(gr.after, kv, "{case}: {gr:?}"),
                "query_heads" => assert_eq!(gr.after, h / kv, "{case}: {gr:?}"),
                _ => {}
            }
        }
        assert!(
            r.shortfalls.is_empty() || ratio == 0.25,
            "{case}: {:?}",
            r.shortfalls
        );
        verified(&g, &p, &r);
    }
    // 0.25 of 8 heads asks for 2: 8 (= 2 x 4) and 6 (= 2 x 3) are reachable; 6 is nearest
    let (_, r) = pruned(&g, &cfg(0.25, 1));
    assert!(r.shortfalls.is_empty(), "{:?}", r.shortfalls);
    // a per-group ratio for one space applies to that space alone
    let mut c = cfg(0.0, 1);
    c.group_ratios.insert("attention1/query_heads".into(), 0.5);
    let (p, _) = pruned(&g, &c);
    assert_eq!(heads(&p), vec![(4, 2), (8, 2)]);
}

#[test]
fn removing_every_residual_block_is_refused() {
    // y = x + f(x) twice: without both blocks the model is the identity with no parameters
    let g = build("blocks", &[8], |b, x| {
        let mut h = x.clone();
        for _ in 0..2 {
            let r = b.linear(&h, 8)?;
            let r = b.relu(&r)?;
            h = b.add(&h, &r)?;
        }
        Ok(h)
    });
    let layers = find_layers(&g).unwrap();
    assert_eq!(layers.len(), 2);
    let scores = vec![0.0; 2];
    let err = prune_layers(&mut g.clone(), &layers, &scores, 2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2 removable layers") && err.contains("at most 1"),
        "{err}"
    );
    let mut one = g.clone();
    prune_layers(&mut one, &layers, &scores, 1).unwrap();
    assert!(one.param_count() > 0);
    // 0 removes nothing
    let mut none = g.clone();
    assert!(prune_layers(&mut none, &layers, &scores, 0)
        .unwrap()
        .removed
        .is_empty());
}
