//! Pruning a graph with a shared parameter (an output layer tied to the embedding table): the
//! structured pruner removes the same columns of the one table for both users and the result
//! equals masking; unstructured and N:M masks are set once, on the owner, and read by both users.

use candle_core::{Tensor, Var};
use prunekit_graph::channels::analyse;
use prunekit_graph::{Executor, Graph, GraphBuilder, Op, Param, Role};
use prunekit_prune::{
    magnitude_prune, prune_nm, prune_structured, prune_unstructured, random_inputs, removal_error,
    removal_trials, verify, Calibration, Norm, Scope, StructuredConfig, Target, UnstructuredScope,
    Wanda,
};

const VOCAB: usize = 13;
const HIDDEN: usize = 8;
const T: usize = 5;

/// ids [T] -> embed -> 2 x (x + linear(relu(linear(rms_norm(x))))) -> rms_norm -> lm_head, whose
/// weight is the embedding table.
fn tied_lm(seed: u64) -> Graph {
    let mut b = GraphBuilder::new("tied-lm", seed);
    let ids = b.ids_input("ids", &[T]);
    let mut x = b.named("embed").embedding(&ids, VOCAB, HIDDEN).unwrap();
    for _ in 0..2 {
        let n = b.rms_norm(&x).unwrap();
        let h = b.linear(&n, 2 * HIDDEN).unwrap();
        let h = b.relu(&h).unwrap();
        let h = b.linear(&h, HIDDEN).unwrap();
        x = b.add(&x, &h).unwrap();
    }
    let n = b.rms_norm(&x).unwrap();
    let y = b
        .named("lm_head")
        .shared_param("weight", "embed", "weight")
        .linear(&n, VOCAB)
        .unwrap();
    let g = b.finish(&[&y]).unwrap();
    // norm scales away from one, so that masking a channel of them matters
    for (_, k, p) in g.params() {
        if k == "weight" && p.tensor().rank() == 1 {
            let t = (p.tensor() * 0.7).unwrap();
            p.value.set(&(t + 0.4).unwrap()).unwrap();
        }
    }
    g
}

/// The same graph with lm_head owning a copy of the table.
fn untied(g: &Graph) -> Graph {
    let mut u = g.try_clone().unwrap();
    let w = u.node("embed").unwrap().params["weight"]
        .tensor()
        .copy()
        .unwrap();
    let n = u.node_mut("lm_head").unwrap();
    n.shared.clear();
    n.params.insert(
        "weight".into(),
        Param {
            value: Var::from_tensor(&w).unwrap(),
            mask: None,
            role: Role::Weight,
        },
    );
    u
}

fn run(g: &Graph, xs: &[Tensor]) -> Vec<f32> {
    Executor::new(0).eval(g, xs).unwrap()[0]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn in_features(g: &Graph, node: &str) -> usize {
    match &g.node(node).unwrap().op {
        Op::Linear(l) => l.in_features,
        op => panic!("{op:?}"),
    }
}

#[test]
fn removing_hidden_channels_of_a_tied_model_equals_masking() {
    let g = tied_lm(1);
    let a = analyse(&g).unwrap();
    let stream = a.group("embed").expect("the hidden width is a group");
    assert_eq!(stream.units.len(), HIDDEN);
    assert!(stream.nodes.contains(&"embed".to_string()));
    let trials = removal_trials(&a, 4, 3);
    let mut touched_table = false;
    for (t, units) in trials.iter().enumerate() {
        let r = removal_error(&g, &a, units, t as u64).unwrap();
        assert!(!r.removed.is_empty(), "trial {t} removes something");
        assert!(
            r.max_rel_error <= 1e-5,
            "trial {t}: removal vs masking {}",
            r.max_rel_error
        );
        let width = r.pruned.node("embed").unwrap().params["weight"]
            .tensor()
            .dim(1)
            .unwrap();
        if width < HIDDEN {
            touched_table = true;
            // the borrower follows the one sliced table
            assert_eq!(in_features(&r.pruned, "lm_head"), width);
            r.pruned.validate().unwrap();
            assert_eq!(r.pruned.borrowers_of("embed", "weight").len(), 1);
        }
    }
    assert!(touched_table, "some trial prunes the hidden width");
}

#[test]
fn the_structured_pruner_slices_the_tied_table_once() {
    let g = tied_lm(2);
    let mut p = g.try_clone().unwrap();
    let report = prune_structured(&mut p, &StructuredConfig::new(0.5), &Norm::L1).unwrap();
    let width = p.node("embed").unwrap().params["weight"].tensor().dims()[1];
    assert!(width < HIDDEN, "the hidden width was pruned");
    assert_eq!(in_features(&p, "lm_head"), width);
    assert!(p.node("lm_head").unwrap().shared.contains_key("weight"));
    assert!(report
        .kept
        .keys()
        .all(|k| k.node != "lm_head" || k.param != "weight"));
    let inputs = vec![random_inputs(&g, 3, 4).unwrap()];
    let v = verify(&g, &p, &report.removed(), &inputs).unwrap();
    assert!(v.max_rel_error <= 1e-5, "{}", v.max_rel_error);
    // the table is counted once before and after
    assert_eq!(untied(&p).param_count() - p.param_count(), VOCAB * width);
}

#[test]
fn llama_tiny_tied_prunes_and_verifies() {
    let g = prunekit_zoo::build("llama-tiny-tied", 0).unwrap();
    let mut p = g.try_clone().unwrap();
    let report = prune_structured(&mut p, &StructuredConfig::new(0.5), &Norm::L2).unwrap();
    assert!(p.param_count() < g.param_count());
    let table = p.node("embedding1").unwrap().params["weight"]
        .tensor()
        .dims()
        .to_vec();
    assert_eq!(in_features(&p, "lm_head"), table[1]);
    let inputs = vec![random_inputs(&g, 2, 5).unwrap()];
    let v = verify(&g, &p, &report.removed(), &inputs).unwrap();
    assert!(v.max_rel_error <= 1e-5, "{}", v.max_rel_error);
}

#[test]
fn an_unstructured_mask_is_set_once_and_read_by_both_users() {
    let g = tied_lm(3);
    let mut m = g.try_clone().unwrap();
    let report = magnitude_prune(&mut m, Target::Ratio(0.5), Scope::Layer).unwrap();
    let names: Vec<(&str, &str)> = report
        .layers
        .iter()
        .map(|l| (l.node.as_str(), l.param.as_str()))
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == ("embed", "weight")).count(),
        1,
        "{names:?}"
    );
    assert!(!names.iter().any(|(n, _)| *n == "lm_head"), "{names:?}");
    let table = &m.node("embed").unwrap().params["weight"];
    let mask = table.mask.clone().expect("the owner holds the mask");
    let zeros = prunekit_graph::count_zeros(table.tensor()).unwrap();
    assert_eq!(zeros, VOCAB * HIDDEN / 2);
    // the reference: the untied model with the masked table in both places
    let mut u = untied(&g);
    u.set_mask("embed", "weight", mask.clone()).unwrap();
    u.set_mask("lm_head", "weight", mask).unwrap();
    for (n, k, p) in m.params() {
        if let Some(mk) = &p.mask {
            if n.name != "embed" {
                u.set_mask(&n.name, k, mk.clone()).unwrap();
            }
        }
    }
    let xs = random_inputs(&g, 2, 6).unwrap();
    assert_eq!(run(&m, &xs), run(&u, &xs));
    let wc = m.weight_counts().unwrap();
    assert_eq!(
        wc.weights,
        untied(&g).weight_counts().unwrap().weights - VOCAB * HIDDEN
    );
}

#[test]
fn n_m_masks_the_tied_table_once() {
    let mut g = tied_lm(4);
    let report = prune_nm(&mut g, &Norm::L1, 2, 4, false).unwrap();
    assert!(!report.layers.iter().any(|l| l.node == "lm_head"));
    let w = g.node("embed").unwrap().params["weight"]
        .tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (i, block) in w.chunks(4).enumerate() {
        let live = block.iter().filter(|v| **v != 0.0).count();
        assert!(live <= 2, "block {i} keeps {live} of 4");
    }
    // lm_head reads the 2:4 table: the same logits as the untied copy of it
    let xs = random_inputs(&g, 2, 7).unwrap();
    assert_eq!(run(&g, &xs), run(&untied(&g), &xs));
}

#[test]
fn wanda_scores_a_tied_weight_as_its_owner() {
    // the owner is an embedding table, which Wanda does not score: the tied weight stays dense
    let mut g = tied_lm(5);
    let x = random_inputs(&g, 2, 8).unwrap().remove(0);
    let y = Tensor::zeros((2, T), candle_core::DType::U32, &candle_core::Device::Cpu).unwrap();
    let calib = Calibration::new(vec![(x, y)]).unwrap();
    let wanda = Wanda::new(&g, &calib).unwrap();
    let report =
        prune_unstructured(&mut g, &wanda, Target::Ratio(0.5), UnstructuredScope::Row).unwrap();
    assert!(report
        .left_out
        .iter()
        .any(|l| l.node == "embed" && l.param == "weight"));
    assert!(!report.layers.iter().any(|l| l.node == "lm_head"));
    assert!(g.node("embed").unwrap().params["weight"].mask.is_none());
    assert!(report
        .layers
        .iter()
        .any(|l| l.node == "linear1" && l.zeros > 0));
}

#[test]
fn a_block_lending_a_parameter_outside_is_not_a_removable_layer() {
    // block 1's linear owns a weight that block 2's linear borrows (ALBERT-style sharing)
    let mut b = GraphBuilder::new("shared-blocks", 6);
    let ids = b.ids_input("ids", &[T]);
    let x = b.named("embed").embedding(&ids, VOCAB, HIDDEN).unwrap();
    let n = b.rms_norm(&x).unwrap();
    let h = b.named("a").linear(&n, HIDDEN).unwrap();
    let x = b.add(&x, &h).unwrap();
    let n = b.rms_norm(&x).unwrap();
    let h = b
        .named("b")
        .shared_param("weight", "a", "weight")
        .linear(&n, HIDDEN)
        .unwrap();
    let x = b.add(&x, &h).unwrap();
    let y = b.named("head").linear(&x, VOCAB).unwrap();
    let g = b.finish(&[&y]).unwrap();
    let blocks = prunekit_prune::find_blocks(&g).unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert!(blocks[0].nodes.contains(&"b".to_string()));
    // the borrowing block goes; the owner stays
    let layers = prunekit_prune::find_layers(&g).unwrap();
    let mut p = g.try_clone().unwrap();
    prunekit_prune::remove_layers(&mut p, &[&layers[0]]).unwrap();
    assert!(p.node("a").is_ok() && p.node("b").is_err());
    p.validate().unwrap();
}
