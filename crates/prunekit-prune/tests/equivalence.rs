//! Every structured rewrite is checked against masking: for every op (placed between prunable
//! layers) and random graphs, removing units physically gives the outputs of the unpruned model
//! with those units' slices masked (relative error <= 1e-5, eval mode, random inputs). The units
//! removed cover every kind of unit of every group deterministically (`removal_trials`), then
//! random subsets; every trial must remove something.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::Tensor;
use prunekit_graph::channels::{analyse, ChannelAnalysis};
use prunekit_graph::{Graph, GraphBuilder, Role, Value};
use prunekit_io::native as format;
use prunekit_prune::{
    prune_structured, random_inputs, random_removal_error, removal_error, removal_trials, Norm,
    StructuredConfig,
};
use rand::{Rng, SeedableRng};

const TOL: f64 = 1e-5;

/// Gives biases, norm weights and running statistics non-trivial values so every slice matters.
fn randomise(g: &Graph, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (_, k, p) in g.params() {
        let t = p.tensor();
        if p.role == Role::Weight && t.rank() >= 2 {
            continue;
        }
        let n = t.elem_count();
        let (lo, hi) = if k == "running_var" || p.role == Role::Weight {
            (0.5, 1.5)
        } else {
            (-0.5, 0.5)
        };
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
        let v = Tensor::from_vec(v, t.shape(), t.device())
            .unwrap()
            .to_dtype(t.dtype())
            .unwrap();
        p.value.set(&v).unwrap();
    }
}

/// Removal equals masking on every trial of [`removal_trials`]: every kind of unit of every group
/// alone, every second unit of each group, one unit of every group at once, then `random` random
/// subsets. Every trial must remove something, and every group must change the output of the
/// unmasked model in some trial (so the comparison can fail: a single unit may be dead behind a
/// ReLU); returns the largest error.
fn check(g: &Graph, random: usize) -> f64 {
    randomise(g, 1);
    let a = analyse(g).unwrap();
    let trials = removal_trials(&a, random, 7);
    assert!(!trials.is_empty(), "{}: no prunable groups", g.name);
    let x = vec![random_inputs(g, 3, 11).unwrap()];
    let mut worst = 0f64;
    let mut unobserved: BTreeSet<usize> =
        trials.iter().flatten().map(|&u| a.units[u].group).collect();
    for (t, units) in trials.iter().enumerate() {
        let what = describe(&a, units);
        let r = removal_error(g, &a, units, t as u64)
            .unwrap_or_else(|e| panic!("{} trial {t} ({what}): {e}", g.name));
        r.pruned.validate().unwrap();
        assert!(
            !r.removed.is_empty() && r.pruned.param_count() < g.param_count(),
            "{} trial {t} ({what}) removed nothing",
            g.name
        );
        assert!(
            r.max_rel_error <= TOL,
            "{} trial {t} ({what}): relative error {}",
            g.name,
            r.max_rel_error
        );
        let v = prunekit_prune::verify(g, &r.pruned, &Default::default(), &x).unwrap();
        if v.max_rel_error > 1e-4 {
            for &u in &r.removed {
                unobserved.remove(&a.units[u].group);
            }
        }
        worst = worst.max(r.max_rel_error);
    }
    let unobserved: Vec<String> = unobserved.iter().map(|&gr| a.groups[gr].key()).collect();
    assert!(
        unobserved.is_empty(),
        "{}: removing units of {unobserved:?} never changed the output",
        g.name
    );
    worst
}

/// "group key: unit ids" for each group a trial removes from, for failure messages.
fn describe(a: &ChannelAnalysis, units: &[usize]) -> String {
    let mut by_group: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for &u in units {
        by_group
            .entry(a.groups[a.units[u].group].key())
            .or_default()
            .push(u);
    }
    by_group
        .iter()
        .map(|(k, us)| format!("{k}: {us:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn group_labels(g: &Graph) -> Vec<(String, String, usize)> {
    analyse(g)
        .unwrap()
        .groups
        .iter()
        .map(|gr| (gr.name.clone(), gr.label.clone(), gr.units.len()))
        .collect()
}

/// input -> [before] -> op -> [after] -> output, where `body` builds the middle.
fn sandwich(
    name: &str,
    shape: &[usize],
    body: impl FnOnce(&mut GraphBuilder, &Value) -> prunekit_graph::Result<Value>,
) -> Graph {
    let mut b = GraphBuilder::new(name, 3);
    let x = b.input("x", shape);
    let y = body(&mut b, &x).unwrap();
    b.finish(&[&y]).unwrap()
}

fn image(
    name: &str,
    f: impl FnOnce(&mut GraphBuilder, &Value) -> prunekit_graph::Result<Value>,
) -> Graph {
    sandwich(name, &[3, 8, 8], |b, x| {
        let h = b.conv2d(x, 8, 3, 1, 1)?;
        let h = f(b, &h)?;
        let h = b.conv2d(&h, 4, 3, 1, 1)?;
        let h = b.flatten(&h)?;
        b.linear(&h, 3)
    })
}

fn sequence(
    name: &str,
    f: impl FnOnce(&mut GraphBuilder, &Value) -> prunekit_graph::Result<Value>,
) -> Graph {
    sandwich(name, &[5, 6], |b, x| {
        let h = b.linear(x, 16)?;
        let h = f(b, &h)?;
        b.linear(&h, 3)
    })
}

#[test]
fn convolutions_norms_pools_and_activations() {
    let graphs = vec![
        image("conv_bn_relu_pool", |b, h| {
            let h = b.batch_norm(h)?;
            let h = b.relu(&h)?;
            b.max_pool2d(&h, 2, 2)
        }),
        image("avg_pool_gelu_dropout", |b, h| {
            let h = b.gelu(h)?;
            let h = b.dropout(&h, 0.2)?;
            b.avg_pool2d(&h, 2, 2)
        }),
        image("group_norm", |b, h| {
            let h = b.group_norm(h, 4)?;
            b.silu(&h)
        }),
        image("grouped_conv", |b, h| {
            let h = b.conv2d_grouped(h, 8, 3, 1, 1, 4)?;
            b.tanh(&h)
        }),
        image("depthwise_multiplier_2", |b, h| {
            let h = b.conv2d_grouped(h, 16, 3, 2, 1, 8)?;
            let h = b.batch_norm(&h)?;
            b.sigmoid(&h)
        }),
        image("reshape_keeps_channels", |b, h| {
            let h = b.reshape(h, &[8, 64])?;
            b.reshape(&h, &[8, 8, 8])
        }),
        sandwich("global_pool", &[3, 8, 8], |b, x| {
            let h = b.conv2d(x, 8, 3, 1, 1)?;
            let h = b.global_avg_pool(&h)?;
            let h = b.linear(&h, 6)?;
            b.linear(&h, 2)
        }),
        sandwich("reshape_flattens", &[3, 6, 6], |b, x| {
            let h = b.conv2d(x, 5, 3, 1, 1)?;
            let h = b.reshape(&h, &[180])?;
            b.linear(&h, 2)
        }),
        sandwich("conv1d", &[3, 12], |b, x| {
            let h = b.conv1d(x, 8, 3, 1, 1)?;
            let h = b.batch_norm(&h)?;
            let h = b.relu(&h)?;
            let h = b.conv1d(&h, 6, 3, 2, 0)?;
            let h = b.flatten(&h)?;
            b.linear(&h, 2)
        }),
    ];
    for g in &graphs {
        let err = check(g, 4);
        eprintln!("{}: max relative error {err:.2e}", g.name);
    }
}

#[test]
fn residual_concat_split_and_gating() {
    let graphs = vec![
        image("residual_add", |b, h| {
            let r = b.conv2d(h, 8, 3, 1, 1)?;
            let r = b.batch_norm(&r)?;
            let y = b.add(&r, h)?;
            b.relu(&y)
        }),
        image("concat_channels", |b, h| {
            let a = b.conv2d(h, 5, 3, 1, 1)?;
            let c = b.conv2d(h, 3, 1, 1, 0)?;
            b.concat(&[&a, &c, h], 0)
        }),
        image("split_channels", |b, h| {
            let parts = b.split(h, 0, &[3, 5])?;
            let a = b.conv2d(&parts[0], 4, 3, 1, 1)?;
            b.concat(&[&a, &parts[1]], 0)
        }),
        image("squeeze_excite_gating", |b, h| {
            let s = b.global_avg_pool(h)?;
            let s = b.linear(&s, 4)?;
            let s = b.relu(&s)?;
            let s = b.linear(&s, 8)?;
            let s = b.sigmoid(&s)?;
            let s = b.reshape(&s, &[8, 1, 1])?;
            b.mul(h, &s)
        }),
        sequence("swiglu", |b, h| {
            let gate = b.linear(h, 12)?;
            let gate = b.silu(&gate)?;
            let up = b.linear(h, 12)?;
            let m = b.mul(&gate, &up)?;
            let d = b.linear(&m, 16)?;
            b.add(h, &d)
        }),
    ];
    for g in &graphs {
        let err = check(g, 4);
        eprintln!("{}: max relative error {err:.2e}", g.name);
    }
}

#[test]
fn sequence_ops_norms_attention_and_recurrent() {
    let graphs = vec![
        sequence("layer_norm", |b, h| b.layer_norm(h)),
        sequence("rms_norm_softmax_other_axis", |b, h| {
            let h = b.rms_norm(h)?;
            b.node(prunekit_graph::ops::Softmax { axis: 0 }, &[&h])
        }),
        sequence("attention_mha", |b, h| {
            let a = b.attention(h, 4, 4, 4, false, None)?;
            let y = b.add(h, &a)?;
            b.layer_norm(&y)
        }),
        sequence("attention_gqa_rope_causal", |b, h| {
            let h = b.rms_norm(h)?;
            b.attention(&h, 6, 2, 4, true, Some(10000.0))
        }),
        sequence("lstm", |b, h| {
            let h = b.lstm(h, 7, true)?;
            b.lstm(&h, 5, false)
        }),
        sequence("gru", |b, h| {
            let h = b.gru(h, 7, true)?;
            b.gru(&h, 5, true)
        }),
        {
            let mut b = GraphBuilder::new("embeddings", 3);
            let ids = b.ids_input("tokens", &[6]);
            let e = b.embedding(&ids, 20, 12).unwrap();
            let e = b.positional_embedding(&e, 8).unwrap();
            let e = b.layer_norm(&e).unwrap();
            let y = b.linear(&e, 3).unwrap();
            b.finish(&[&y]).unwrap()
        },
    ];
    for g in &graphs {
        let err = check(g, 4);
        eprintln!("{}: max relative error {err:.2e}", g.name);
    }
}

/// The units of the group created by `node` (its output channels), or 0 when they are protected.
fn group_size(g: &Graph, node: &str) -> usize {
    analyse(g)
        .unwrap()
        .group(node)
        .map_or(0, |gr| gr.units.len())
}

/// Whether every unit of the group `key` slices `param` of `node` along `axis` (is coupled to it).
fn slices(g: &Graph, key: &str, node: &str, param: &str, axis: usize) -> bool {
    let a = analyse(g).unwrap();
    let group = a
        .group(key)
        .unwrap_or_else(|| panic!("{}: `{key}` has no prunable group", g.name));
    group.units.iter().all(|&u| {
        a.units[u]
            .slices
            .keys()
            .any(|k| k.node == node && k.param == param && k.axis == axis)
    })
}

/// A size-1 channel axis (or a missing one) is broadcast: it is not indexed by the other input's
/// channels, so it neither couples them nor protects them (spatial attention, scalar gates).
#[test]
fn broadcast_along_the_channel_axis_neither_couples_nor_protects_channels() {
    let spatial_attention = |name: &str, map_first: bool| {
        image(name, move |b, h| {
            let s = b.conv2d(h, 1, 3, 1, 1)?;
            let s = b.sigmoid(&s)?;
            if map_first {
                b.mul(&s, h)
            } else {
                b.mul(h, &s)
            }
        })
    };
    let graphs = vec![
        // x * sigmoid(conv(x) -> [1, H, W]), either order
        spatial_attention("spatial_attention", false),
        spatial_attention("spatial_attention_map_first", true),
        // a per-sample scalar gate [1] (lower rank: it lands on the width axis, extent 1)
        image("scalar_gate", |b, h| {
            let p = b.global_avg_pool(h)?;
            let s = b.linear(&p, 1)?;
            let s = b.sigmoid(&s)?;
            b.mul(h, &s)
        }),
        // a [H, W] map that lacks the channel axis (and carries no channels: the reshape of a
        // 1-channel map is opaque)
        image("map_without_channel_axis", |b, h| {
            let s = b.conv2d(h, 1, 1, 1, 0)?;
            let s = b.reshape(&s, &[8, 8])?;
            let s = b.tanh(&s)?;
            b.add(h, &s)
        }),
        // gated MLP: h * sigmoid(linear(h) -> 1), per sample and per token
        sandwich("gated_mlp", &[6], |b, x| {
            let h = b.linear(x, 16)?;
            let gate = b.linear(&h, 1)?;
            let gate = b.sigmoid(&gate)?;
            let h = b.mul(&h, &gate)?;
            b.linear(&h, 3)
        }),
        sequence("gated_tokens", |b, h| {
            let gate = b.linear(h, 1)?;
            let gate = b.sigmoid(&gate)?;
            b.mul(&gate, h)
        }),
    ];
    for g in &graphs {
        // the C channels of the feature map are prunable, and still coupled to the consumer
        let (producer, consumer) = match g.name.as_str() {
            "gated_mlp" | "gated_tokens" => ("linear1", "linear3"),
            "scalar_gate" => ("conv2d1", "conv2d2"),
            _ => ("conv2d1", "conv2d3"),
        };
        let a = analyse(g).unwrap();
        assert!(a.blocked_by.is_empty(), "{}: {:?}", g.name, a.blocked_by);
        assert!(
            group_size(g, producer) >= 8,
            "{}: the channels of `{producer}` are not prunable",
            g.name
        );
        assert!(slices(g, producer, consumer, "weight", 1), "{}", g.name);
        let err = check(g, 4);
        eprintln!("{}: max relative error {err:.2e}", g.name);
    }
    // the broadcast side's own single channel is never a unit
    let g = spatial_attention("spatial_attention", false);
    assert_eq!(group_size(&g, "conv2d2"), 0);
    // the C channels really are pruned
    let mut p = g.clone();
    let report = prune_structured(&mut p, &StructuredConfig::new(0.5), &Norm::L1).unwrap();
    let gr = report
        .groups
        .iter()
        .find(|gr| gr.group == "conv2d1")
        .unwrap();
    assert_eq!((gr.before, gr.after), (8, 4));
}

/// Concat along the channel axis keeps the channels of the inputs that carry them there, beside
/// an input that carries none (the output of an op without a rule) or carries them on another
/// axis (a Linear over the width): those positions are simply never removed.
#[test]
fn concat_keeps_channels_beside_inputs_that_carry_none() {
    let g = image("concat_beside_fixed_positions", |b, h| {
        let a = b.conv2d(h, 5, 3, 1, 1)?;
        let n = b.conv2d(h, 3, 1, 1, 0)?;
        let n = b.node(prunekit_graph::ops::Softmax { axis: 0 }, &[&n])?;
        let w = b.linear(h, 8)?;
        b.concat(&[&a, &n, &w], 0)
    });
    assert_eq!(group_size(&g, "conv2d2"), 5);
    assert!(slices(&g, "conv2d2", "conv2d4", "weight", 1));
    assert_eq!(group_size(&g, "conv2d3"), 0, "softmax over its channels");
    assert_eq!(group_size(&g, "linear1"), 0, "its channels index the width");
    let err = check(&g, 4);
    eprintln!("{}: max relative error {err:.2e}", g.name);
}

/// A lower-rank input is aligned from the right (`[T, 16] + [16]`, a bias-like broadcast): its
/// channels are unified with the trailing axis; a rank-1 `[8]` added to `[8, 8, 8]` lands on the
/// width, not on the channels.
#[test]
fn lower_rank_channel_inputs_broadcast_from_the_right() {
    let conditioned = |name: &str, tokens: usize, vector_first: bool| {
        let mut b = GraphBuilder::new(name, 3);
        let x = b.input("x", &[tokens, 6]);
        let c = b.input("c", &[4]);
        let h = b.linear(&x, 16).unwrap();
        let v = b.linear(&c, 16).unwrap();
        let y = if vector_first {
            b.add(&v, &h).unwrap()
        } else {
            b.add(&h, &v).unwrap()
        };
        let y = b.relu(&y).unwrap();
        let y = b.linear(&y, 3).unwrap();
        b.finish(&[&y]).unwrap()
    };
    for g in [
        conditioned("bias_like_add", 5, false),
        conditioned("bias_like_add_vector_first", 5, true),
        conditioned("bias_like_add_square", 16, false),
    ] {
        // one group of 16 units, each a row of both linears and a column of the head
        assert_eq!(group_size(&g, "linear1"), 16, "{}", g.name);
        assert!(slices(&g, "linear1", "linear2", "weight", 0), "{}", g.name);
        assert!(slices(&g, "linear1", "linear3", "weight", 1), "{}", g.name);
        let err = check(&g, 4);
        eprintln!("{}: max relative error {err:.2e}", g.name);
    }
    // [8, 8, 8] + [8]: the vector broadcasts over channels and rows, indexing the width
    let g = image("vector_on_the_width", |b, h| {
        let p = b.global_avg_pool(h)?;
        let v = b.linear(&p, 8)?;
        b.add(h, &v)
    });
    assert_eq!(group_size(&g, "conv2d1"), 8);
    assert!(slices(&g, "conv2d1", "conv2d2", "weight", 1));
    assert!(!slices(&g, "conv2d1", "linear1", "weight", 0));
    assert_eq!(group_size(&g, "linear1"), 0, "its channels index the width");
    check(&g, 4);
}

/// An op applied along an axis that is not the channel axis (a Linear over the width of an
/// image, a convolution or recurrence whose channels are the time steps, attention over the
/// channels as tokens) must protect the channels: they are positions of its input, not features.
#[test]
fn ops_along_a_non_channel_axis_protect_the_channels() {
    let graphs = vec![
        // [8, 8, 8] -> Linear over W -> [8, 8, 6] -> Linear over W -> [8, 8, 5]
        (
            image("linear_over_width", |b, h| {
                let w = b.linear(h, 6)?;
                let w = b.relu(&w)?;
                b.linear(&w, 8)
            }),
            "conv2d1",
            "linear1",
        ),
        // [T, 16] read by a Conv1d as 5 channels of length 16
        (
            sequence("conv1d_over_tokens", |b, h| {
                let c = b.conv1d(h, 4, 3, 1, 1)?;
                let c = b.relu(&c)?;
                b.conv1d(&c, 5, 3, 1, 1)
            }),
            "linear1",
            "conv1d1",
        ),
        // a Conv1d's [8, 12] read as 8 time steps of 12 features
        (
            sandwich("lstm_over_channels", &[3, 12], |b, x| {
                let h = b.conv1d(x, 8, 3, 1, 1)?;
                let h = b.lstm(&h, 5, true)?;
                b.linear(&h, 2)
            }),
            "conv1d1",
            "lstm1/units",
        ),
        (
            sandwich("attention_over_channels", &[3, 12], |b, x| {
                let h = b.conv1d(x, 8, 3, 1, 1)?;
                let h = b.attention(&h, 3, 3, 4, false, None)?;
                b.linear(&h, 2)
            }),
            "conv1d1",
            "attention1/heads",
        ),
    ];
    for (g, protected, prunable) in &graphs {
        assert_eq!(group_size(g, protected), 0, "{}: `{protected}`", g.name);
        assert!(group_size(g, prunable) >= 3, "{}: `{prunable}`", g.name);
        let err = check(g, 4);
        eprintln!("{}: max relative error {err:.2e}", g.name);
    }
}

/// The trials cover GQA's two kinds of unit deterministically: a query-head slot alone (one query
/// head in every KV group), a KV group alone (its k/v rows and all its query heads), and both at
/// once.
#[test]
fn removal_trials_cover_query_heads_and_kv_groups() {
    let g = sequence("gqa", |b, h| b.attention(h, 6, 2, 4, false, None));
    let a = analyse(&g).unwrap();
    let kv = &a.group("attention1/kv_groups").unwrap().units;
    let slots = &a.group("attention1/query_heads").unwrap().units;
    let trials = removal_trials(&a, 0, 0);
    assert!(trials.iter().all(|t| !t.is_empty()));
    let alone = |units: &[usize]| trials.iter().any(|t| t.len() == 1 && units.contains(&t[0]));
    assert!(alone(kv) && alone(slots), "{trials:?}");
    assert!(
        trials
            .iter()
            .any(|t| t.iter().any(|u| kv.contains(u)) && t.iter().any(|u| slots.contains(u))),
        "{trials:?}"
    );
    check(&g, 0);
}

#[test]
fn the_analysis_finds_the_expected_units() {
    // residual: the stream's channels are one group spanning both convs
    let g = image("residual_add", |b, h| {
        let r = b.conv2d(h, 8, 3, 1, 1)?;
        b.add(&r, h)
    });
    let a = analyse(&g).unwrap();
    let stream = a.group("conv2d1").unwrap();
    assert_eq!(stream.units.len(), 8);
    assert!(stream.nodes.contains(&"conv2d2".to_string()), "{stream:?}");
    // GQA: kv groups, query heads within a group, the output channels, and the input linear's channels
    let g = sequence("gqa", |b, h| b.attention(h, 6, 2, 4, false, None));
    let labels: Vec<(String, usize)> = group_labels(&g)
        .into_iter()
        .map(|(_, l, n)| (l, n))
        .collect();
    assert!(labels.contains(&("kv_groups".into(), 2)), "{labels:?}");
    assert!(labels.contains(&("query_heads".into(), 3)), "{labels:?}");
    // a depthwise conv's group unifies its input channel with its outputs
    let g = image("dw", |b, h| b.conv2d_grouped(h, 16, 3, 1, 1, 8));
    let a = analyse(&g).unwrap();
    let u = &a.units[a.group("conv2d1").unwrap().units[0]];
    let touched: Vec<&str> = u.slices.keys().map(|k| k.node.as_str()).collect();
    assert!(
        touched.contains(&"conv2d1") && touched.contains(&"conv2d2"),
        "{touched:?}"
    );
    // LSTM units own 4 rows of each weight and one column of W_hh
    let g = sequence("lstm", |b, h| b.lstm(h, 7, false));
    let a = analyse(&g).unwrap();
    let gr = a.groups.iter().find(|gr| gr.label == "units").unwrap();
    let u = &a.units[gr.units[0]];
    let rows = u
        .slices
        .iter()
        .find(|(k, _)| k.param == "weight_hh" && k.axis == 0)
        .unwrap()
        .1;
    assert_eq!(rows, &vec![0, 7, 14, 21]);
}

#[test]
fn protected_inputs_outputs_and_opaque_ops() {
    // softmax over the channel axis protects the channels feeding it
    let g = sequence("softmax_channels", |b, h| b.softmax(h));
    let names: Vec<String> = group_labels(&g).into_iter().map(|(n, _, _)| n).collect();
    assert!(!names.contains(&"linear1".to_string()), "{names:?}");
    // the output layer's channels are never a group
    let g = sequence("plain", |b, h| b.relu(h));
    let names: Vec<String> = group_labels(&g).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, vec!["linear1".to_string()]);
}

#[test]
fn ratio_zero_is_a_bit_exact_identity_and_pruned_models_round_trip() {
    let g = image("residual_add", |b, h| {
        let r = b.conv2d(h, 8, 3, 1, 1)?;
        let r = b.batch_norm(&r)?;
        b.add(&r, h)
    });
    randomise(&g, 2);
    let x = random_inputs(&g, 2, 9).unwrap();
    let run = |g: &Graph| -> Vec<f32> {
        prunekit_graph::Executor::new(0).eval(g, &x).unwrap()[0]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut same = g.clone();
    prune_structured(&mut same, &StructuredConfig::new(0.0), &Norm::L1).unwrap();
    assert_eq!(run(&g), run(&same));
    assert_eq!(g.param_count(), same.param_count());

    let mut half = g.clone();
    prune_structured(&mut half, &StructuredConfig::new(0.5), &Norm::L2).unwrap();
    assert!(half.param_count() < g.param_count());
    let dir = std::env::temp_dir().join(format!("prunekit-eq-{}", std::process::id()));
    format::save(&half, &dir).unwrap();
    let back = format::load(&dir, &candle_core::Device::Cpu).unwrap();
    assert_eq!(run(&half), run(&back));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_is_a_clear_error() {
    let g = image("plain", |b, h| b.relu(h));
    let a = analyse(&g).unwrap();
    let all: Vec<usize> = a.groups[0].units.clone();
    let err = a.remove(&mut g.clone(), &all).unwrap_err().to_string();
    assert!(
        err.contains("zero width") && err.contains("conv2d1"),
        "{err}"
    );
    let err = a.remove(&mut g.clone(), &[999]).unwrap_err().to_string();
    assert!(err.contains("unit 999"), "{err}");
    for r in [1.0, -0.1, f64::NAN] {
        let err = prune_structured(&mut g.clone(), &StructuredConfig::new(r), &Norm::L1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside [0, 1)"), "{err}");
    }
    let mut cfg = StructuredConfig::new(0.5);
    cfg.protected = vec!["nope".into()];
    let err = prune_structured(&mut g.clone(), &cfg, &Norm::L1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`nope`"), "{err}");
    // a model whose only hidden channels feed an op that cannot pass them
    let g = sequence("softmax_channels", |b, h| b.softmax(h));
    let err = prune_structured(&mut g.clone(), &StructuredConfig::new(0.5), &Norm::L1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`softmax1` (softmax)"), "{err}");
    // a model without prunable groups
    let g = sandwich("single", &[4], |b, x| b.linear(x, 2));
    let err = prune_structured(&mut g.clone(), &StructuredConfig::new(0.5), &Norm::L1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no prunable"), "{err}");
}

#[test]
fn pruner_options() {
    let g = sandwich("mlp", &[6], |b, x| {
        let h = b.linear(x, 16)?;
        let h = b.relu(&h)?;
        let h = b.linear(&h, 10)?;
        let h = b.relu(&h)?;
        b.linear(&h, 2)
    });
    let widths = |g: &Graph| -> Vec<usize> {
        g.nodes
            .iter()
            .filter_map(|n| match &n.op {
                prunekit_graph::Op::Linear(l) => Some(l.out_features),
                _ => None,
            })
            .collect()
    };
    let mut p = g.clone();
    let mut cfg = StructuredConfig::new(0.5);
    cfg.round_to = 4;
    prune_structured(&mut p, &cfg, &Norm::L1).unwrap();
    assert_eq!(
        widths(&p),
        vec![8, 8, 2],
        "16 -> 8, 10 -> 5 rounded up to 8"
    );
    // protected nodes keep their width
    let mut p = g.clone();
    let mut cfg = StructuredConfig::new(0.5);
    cfg.protected = vec!["linear2".into()];
    prune_structured(&mut p, &cfg, &Norm::L1).unwrap();
    assert_eq!(widths(&p), vec![8, 10, 2]);
    // iterative steps reach the same overall ratio
    let mut p = g.clone();
    let mut cfg = StructuredConfig::new(0.75);
    cfg.steps = 2;
    prune_structured(&mut p, &cfg, &Norm::L2).unwrap();
    assert_eq!(widths(&p), vec![4, 3, 2]);
    // global ranking with a cap per layer
    let mut p = g.clone();
    let mut cfg = StructuredConfig::new(0.5);
    cfg.scope = prunekit_prune::magnitude::Scope::Global;
    cfg.max_ratio = 0.6;
    let report = prune_structured(&mut p, &cfg, &Norm::L1).unwrap();
    let removed: usize = report.groups.iter().map(|gr| gr.before - gr.after).sum();
    assert_eq!(removed, 13, "half of the 26 units overall");
    for gr in &report.groups {
        assert!(gr.before - gr.after <= (0.6 * gr.before as f64) as usize);
    }
    // min ratio forces pruning in every layer
    let mut p = g.clone();
    let mut cfg = StructuredConfig::new(0.0);
    cfg.min_ratio = 0.25;
    prune_structured(&mut p, &cfg, &Norm::L1).unwrap();
    assert_eq!(widths(&p), vec![12, 7, 2]);
}

#[test]
fn iterative_pruning_verifies_against_the_original() {
    let g = image("residual_concat", |b, h| {
        let r = b.conv2d(h, 8, 3, 1, 1)?;
        let r = b.batch_norm(&r)?;
        let y = b.add(&r, h)?;
        let c = b.conv2d(&y, 4, 1, 1, 0)?;
        b.concat(&[&y, &c], 0)
    });
    randomise(&g, 5);
    let mut p = g.clone();
    let mut cfg = StructuredConfig::new(0.6);
    cfg.steps = 3;
    let report = prune_structured(&mut p, &cfg, &Norm::L1).unwrap();
    let inputs = vec![random_inputs(&g, 2, 1).unwrap()];
    let v = prunekit_prune::verify(&g, &p, &report.removed(), &inputs).unwrap();
    assert!(v.max_rel_error <= TOL, "{}", v.max_rel_error);
}

mod random_graphs {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest, ProptestConfig};

    /// A random small CNN: a chain of blocks drawn from conv/BN/act, residual, concat, grouped
    /// conv, split and pooling, then a flatten and a linear head.
    fn random_cnn(seed: u64, blocks: usize) -> Graph {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut b = GraphBuilder::new("random", seed);
        let x = b.input("x", &[2, 6, 6]);
        let mut h = b.conv2d(&x, 4 + rng.random_range(0..5), 3, 1, 1).unwrap();
        for _ in 0..blocks {
            let c = h.shape[0];
            h = match rng.random_range(0..6) {
                0 => {
                    let y = b.conv2d(&h, rng.random_range(2..9), 3, 1, 1).unwrap();
                    let y = b.batch_norm(&y).unwrap();
                    b.relu(&y).unwrap()
                }
                1 => {
                    let y = b.conv2d(&h, c, 3, 1, 1).unwrap();
                    b.add(&y, &h).unwrap()
                }
                2 => {
                    let y = b.conv2d(&h, rng.random_range(1..5), 1, 1, 0).unwrap();
                    b.concat(&[&h, &y], 0).unwrap()
                }
                3 => b
                    .conv2d_grouped(&h, c * rng.random_range(1..3), 3, 1, 1, c)
                    .unwrap(),
                4 if c >= 2 => {
                    let k = rng.random_range(1..c);
                    let parts = b.split(&h, 0, &[k, c - k]).unwrap();
                    let y = b
                        .conv2d(&parts[1], rng.random_range(1..5), 3, 1, 1)
                        .unwrap();
                    b.concat(&[&y, &parts[0]], 0).unwrap()
                }
                _ => {
                    let y = b.gelu(&h).unwrap();
                    b.group_norm(&y, 1).unwrap()
                }
            };
        }
        let h = b.conv2d(&h, 3, 3, 2, 1).unwrap();
        let h = b.flatten(&h).unwrap();
        let y = b.linear(&h, 2).unwrap();
        b.finish(&[&y]).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
        #[test]
        fn removal_equals_masking(seed in 0u64..1_000_000, blocks in 1usize..6) {
            let g = random_cnn(seed, blocks);
            randomise(&g, seed);
            let r = random_removal_error(&g, seed).unwrap();
            prop_assert!(!r.removed.is_empty(), "the trial removed nothing");
            prop_assert!(r.max_rel_error <= TOL, "relative error {}", r.max_rel_error);
            let pruned = r.pruned;
            // params counted from the declarations equal the tensors actually held
            let declared: usize = pruned.nodes.iter()
                .flat_map(|n| n.op.rules().params())
                .filter(|d| d.role.trainable())
                .map(|d| d.shape.iter().product::<usize>())
                .sum();
            prop_assert_eq!(declared, pruned.param_count());
        }
    }
}

mod whole_layers {
    use super::*;
    use prunekit_prune::{
        ablation_scores, block_influence, find_layers, prune_layers, rel_error, remove_layers,
    };

    fn resnet_like() -> Graph {
        let mut b = GraphBuilder::new("res", 4);
        let x = b.input("x", &[3, 8, 8]);
        let mut h = b.conv2d(&x, 8, 3, 1, 1).unwrap();
        for _ in 0..3 {
            let r = b.conv2d(&h, 8, 3, 1, 1).unwrap();
            let r = b.batch_norm(&r).unwrap();
            let r = b.relu(&r).unwrap();
            let r = b.conv2d(&r, 8, 3, 1, 1).unwrap();
            let r = b.batch_norm(&r).unwrap();
            let y = b.add(&r, &h).unwrap();
            h = b.relu(&y).unwrap();
        }
        // a projection block is not removable (the shape changes)
        let r = b.conv2d(&h, 4, 3, 2, 1).unwrap();
        let s = b.conv2d(&h, 4, 1, 2, 0).unwrap();
        let h = b.add(&r, &s).unwrap();
        let h = b.global_avg_pool(&h).unwrap();
        let y = b.linear(&h, 2).unwrap();
        b.finish(&[&y]).unwrap()
    }

    fn pre_ln_transformer() -> Graph {
        let mut b = GraphBuilder::new("tf", 5);
        let ids = b.ids_input("tokens", &[6]);
        let mut h = b.embedding(&ids, 30, 16).unwrap();
        for _ in 0..2 {
            let n = b.rms_norm(&h).unwrap();
            let a = b.attention(&n, 4, 2, 4, true, Some(10000.0)).unwrap();
            h = b.add(&h, &a).unwrap();
            let n = b.rms_norm(&h).unwrap();
            let f = b.linear(&n, 24).unwrap();
            let f = b.gelu(&f).unwrap();
            let f = b.linear(&f, 16).unwrap();
            h = b.add(&h, &f).unwrap();
        }
        let h = b.rms_norm(&h).unwrap();
        let y = b.linear(&h, 30).unwrap();
        b.finish(&[&y]).unwrap()
    }

    /// BERT's layout: post-norm layers (norm(x + f(x))) and attention that reads a padding mask.
    fn post_ln_encoder() -> Graph {
        let mut b = GraphBuilder::new("enc", 6);
        let ids = b.ids_input("tokens", &[6]);
        let mask = b.input("attention_mask", &[6]);
        let h = b.embedding(&ids, 30, 16).unwrap();
        let mut h = b.layer_norm(&h).unwrap();
        for _ in 0..3 {
            let a = b.attention_masked(&h, &mask, 4, 4, 4, false, None).unwrap();
            let x = b.add(&h, &a).unwrap();
            h = b.layer_norm(&x).unwrap();
            let f = b.linear(&h, 24).unwrap();
            let f = b.gelu(&f).unwrap();
            let f = b.linear(&f, 16).unwrap();
            let x = b.add(&h, &f).unwrap();
            h = b.layer_norm(&x).unwrap();
        }
        let y = b.linear(&h, 3).unwrap();
        b.finish(&[&y]).unwrap()
    }

    #[test]
    fn post_norm_layers_with_a_padding_mask_are_whole_layers_and_leave_y_equal_x() {
        let g = post_ln_encoder();
        randomise(&g, 4);
        let layers = find_layers(&g).unwrap();
        assert_eq!(layers.len(), 3, "{layers:?}");
        for l in &layers {
            assert_eq!(l.blocks.len(), 2, "attention and feed-forward: {l:?}");
            // each block ends with its norm, and its Add is inside
            for b in &l.blocks {
                assert!(b.output.starts_with("layer_norm"), "{b:?}");
                assert!(b.nodes.iter().any(|n| n.starts_with("add")), "{b:?}");
            }
        }
        // removing the middle layer: the third layer reads the first layer's output (y = x)
        let mut cut = g.clone();
        remove_layers(&mut cut, &[&layers[1]]).unwrap();
        assert_eq!(cut.nodes.len(), g.nodes.len() - 8);
        assert_eq!(layers[2].input(), layers[1].output());
        let third_attn = cut.node(&layers[2].blocks[0].nodes[0]).unwrap();
        assert_eq!(
            third_attn.inputs[0],
            layers[0].output(),
            "{:?}",
            third_attn.inputs
        );
        let x = random_inputs(&g, 2, 5).unwrap();
        let y = prunekit_graph::Executor::new(0).eval(&cut, &x).unwrap();
        assert_eq!(y[0].dims(), &[2, 6, 3]);
        // removing every layer leaves tokens -> embedding -> norm -> head, y = x at every layer
        let mut all = g.clone();
        remove_layers(&mut all, &layers.iter().collect::<Vec<_>>()).unwrap();
        let names: Vec<&String> = all.nodes.iter().map(|n| &n.name).collect();
        assert_eq!(all.nodes.len(), 3, "{names:?}");
    }

    fn zero_param(g: &Graph, node: &str, param: &str) {
        let p = &g.node(node).unwrap().params[param];
        p.value.set(&p.tensor().zeros_like().unwrap()).unwrap();
    }

    #[test]
    fn residual_blocks_are_found_and_removing_a_zero_branch_changes_nothing() {
        let g = resnet_like();
        randomise(&g, 3);
        let layers = find_layers(&g).unwrap();
        assert_eq!(layers.len(), 3, "{layers:?}");
        // zero the branch's last BatchNorm: the block computes relu(x), as does the graph without it
        let last_bn = layers[1].blocks[0]
            .nodes
            .iter()
            .rev()
            .find(|n| n.starts_with("batch_norm"))
            .unwrap()
            .clone();
        zero_param(&g, &last_bn, "weight");
        zero_param(&g, &last_bn, "bias");
        let mut cut = g.clone();
        remove_layers(&mut cut, &[&layers[1]]).unwrap();
        assert_eq!(cut.nodes.len(), g.nodes.len() - 6);
        let x = random_inputs(&g, 2, 3).unwrap();
        let run = |g: &Graph| prunekit_graph::Executor::new(0).eval(g, &x).unwrap()[0].clone();
        let err = rel_error(&run(&g), &run(&cut)).unwrap();
        assert!(err <= TOL, "{err}");
        // its influence is the smallest, so it is the one removed first
        let scores = block_influence(&g, &layers, &x).unwrap();
        let mut pruned = g.clone();
        let r = prune_layers(&mut pruned, &layers, &scores, 1).unwrap();
        assert_eq!(r.removed, vec!["layer1".to_string()], "{scores:?}");
        // ablation: the loss (here the output change) without each layer
        let reference = run(&g);
        let ab = ablation_scores(&g, &layers, &|h: &Graph| rel_error(&reference, &run(h))).unwrap();
        assert!(ab[1] <= TOL && ab[0] > 1e-3 && ab[2] > 1e-3, "{ab:?}");
        let err = prune_layers(&mut g.clone(), &layers, &scores, 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 removable layers"), "{err}");
    }

    #[test]
    fn transformer_layers_pair_attention_with_the_feed_forward_block() {
        let g = pre_ln_transformer();
        let layers = find_layers(&g).unwrap();
        assert_eq!(layers.len(), 2);
        assert!(layers.iter().all(|l| l.blocks.len() == 2));
        let mut cut = g.clone();
        remove_layers(&mut cut, &[&layers[0]]).unwrap();
        cut.validate().unwrap();
        assert!(cut.param_count() < g.param_count());
        // removing every layer leaves embedding -> norm -> head
        let mut all = g.clone();
        remove_layers(&mut all, &layers.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(all.nodes.len(), 3);
        let x = random_inputs(&g, 2, 1).unwrap();
        assert_eq!(
            prunekit_graph::Executor::new(0).eval(&all, &x).unwrap()[0].dims(),
            &[2, 6, 30]
        );
    }
}

/// Every zoo model: the removal trials equal masking (on a small input: 8 x 8 images, 8 tokens,
/// so the channel structure is the model's and the test stays fast), pruning at 0.5 shrinks
/// params and MACs, and the pruned model saves and reloads with the same outputs.
#[test]
fn every_zoo_model() {
    for name in prunekit_zoo::names() {
        let g = prunekit_zoo::build(name, 0).unwrap();
        let shape = &g.inputs[0].shape;
        let input = match shape.as_slice() {
            [c, _, _] => vec![*c, 8, 8],
            [t] => vec![(*t).min(8)],
            other => other.to_vec(),
        };
        let options = prunekit_zoo::ZooOptions {
            input: Some(input),
            classes: None,
            vocab: None,
        };
        let small = prunekit_zoo::build_with(name, 0, &options).unwrap();
        let err = check(&small, 2);
        // ratio 0 is a bit-exact identity
        let mut same = g.clone();
        prune_structured(&mut same, &StructuredConfig::new(0.0), &Norm::L1).unwrap();
        let x = random_inputs(&g, 2, 4).unwrap();
        let mut exec = prunekit_graph::Executor::new(0);
        assert_eq!(
            exec.eval(&g, &x).unwrap()[0]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            exec.eval(&same, &x).unwrap()[0]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            "{name}: ratio 0"
        );
        let mut p = g.clone();
        prune_structured(&mut p, &StructuredConfig::new(0.5), &Norm::L1).unwrap();
        assert!(p.param_count() < g.param_count(), "{name}");
        assert!(p.macs().unwrap() < g.macs().unwrap(), "{name}");
        counts_match_tensors(&p);
        let dir = std::env::temp_dir().join(format!("prunekit-zoo-{}-{name}", std::process::id()));
        format::save(&p, &dir).unwrap();
        let back = format::load(&dir, &candle_core::Device::Cpu).unwrap();
        let x = random_inputs(&p, 2, 4).unwrap();
        let mut exec = prunekit_graph::Executor::new(0);
        let (a, b) = (exec.eval(&p, &x).unwrap(), exec.eval(&back, &x).unwrap());
        assert_eq!(
            a[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{name}: reload"
        );
        std::fs::remove_dir_all(&dir).ok();
        eprintln!("{name}: max relative error {err:.2e}");
    }
}

/// Params counted from the op declarations (less borrowed ones) equal the tensors held, and the MACs of every Linear /
/// Conv node equal numel(output) x the weight's elements per output channel.
fn counts_match_tensors(g: &Graph) {
    let shapes = g.validate().unwrap();
    let declared: usize = g
        .nodes
        .iter()
        .flat_map(|n| {
            // a borrowed parameter (`Node::shared`) is counted with its owner
            n.op.rules()
                .params()
                .into_iter()
                .filter(|d| !n.shared.contains_key(d.name))
        })
        .filter(|d| d.role.trainable())
        .map(|d| d.shape.iter().product::<usize>())
        .sum();
    assert_eq!(declared, g.param_count(), "{}", g.name);
    for n in &g.nodes {
        if !matches!(
            n.op,
            prunekit_graph::Op::Linear(_)
                | prunekit_graph::Op::Conv2d(_)
                | prunekit_graph::Op::Conv1d(_)
        ) {
            continue;
        }
        let ins: Vec<&[usize]> = n.inputs.iter().map(|i| shapes[i].as_slice()).collect();
        let out = &shapes[&n.name];
        let w = g.param_of(n, "weight").unwrap().tensor().dims().to_vec();
        let from_tensor =
            out.iter().product::<usize>() as u64 * w[1..].iter().product::<usize>() as u64;
        assert_eq!(n.op.rules().macs(&ins, out), from_tensor, "{}", n.name);
    }
}

// ----------------------------------------------------------------------------------------------
// the ops for decomposed exports

fn conv_t(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
    groups: usize,
) -> prunekit_graph::ops::ConvTranspose2d {
    let mut c = prunekit_graph::ops::ConvTranspose2d::new(cin, cout, k);
    c.stride = stride;
    c.padding = padding;
    c.output_padding = output_padding;
    c.groups = groups;
    c
}

/// A prunable layer's channels flow through every new op that passes them: removal equals
/// masking, and the ops' attributes (PReLU's slopes, a transposed convolution's widths and
/// groups, a channel slice's range) follow the removal.
#[test]
fn ops_of_decomposed_exports_pass_channels() {
    use prunekit_graph::ops::*;
    let graphs = vec![
        sandwich("conv1d_transpose_linear", &[3, 12], |b, x| {
            let h = b.conv1d(x, 8, 3, 1, 1)?;
            let h = b.node(Transpose { perm: vec![1, 0] }, &[&h])?;
            let h = b.linear(&h, 5)?;
            let h = b.flatten(&h)?;
            b.linear(&h, 2)
        }),
        sandwich("conv1d_transpose_lstm", &[3, 12], |b, x| {
            let h = b.conv1d(x, 8, 3, 1, 1)?;
            let h = b.node(Transpose { perm: vec![1, 0] }, &[&h])?;
            let h = b.lstm(&h, 5, false)?;
            b.linear(&h, 2)
        }),
        image("prelu", |b, h| b.node(PRelu { num_parameters: 8 }, &[h])),
        image("activations", |b, h| {
            let h = b.node(PRelu { num_parameters: 1 }, &[h])?;
            let h = b.node(Clip::relu6(), &[&h])?;
            let h = b.node(HardSwish {}, &[&h])?;
            let h = b.node(HardSigmoid::default(), &[&h])?;
            let h = b.node(LeakyRelu { alpha: 0.1 }, &[&h])?;
            let h = b.node(Sqrt {}, &[&h])?;
            b.node(Erf {}, &[&h])
        }),
        image("conv_transpose2d", |b, h| {
            let h = b.node(conv_t(8, 6, 3, 2, 1, 1, 1), &[h])?;
            b.relu(&h)
        }),
        image("conv_transpose2d_grouped", |b, h| {
            b.node(conv_t(8, 12, 4, 2, 1, 0, 4), &[h])
        }),
        image("conv_transpose2d_depthwise", |b, h| {
            let h = b.node(conv_t(8, 8, 3, 1, 1, 0, 8), &[h])?;
            b.batch_norm(&h)
        }),
        image("resize_nearest", |b, h| {
            b.node(Resize::new(ResizeMode::Nearest, 2.0), &[h])
        }),
        image("resize_bilinear", |b, h| {
            let r = Resize {
                mode: ResizeMode::Bilinear,
                scale: [1.5, 0.5],
            };
            b.node(r, &[h])
        }),
        image("pad_spatial", |b, h| {
            let p = |mode, value| Pad {
                pads: vec![0, 1, 2, 0, 2, 1],
                mode,
                value,
            };
            let h = b.node(p(PadMode::Reflect, 0.0), &[h])?;
            let h = b.node(p(PadMode::Edge, 0.0), &[&h])?;
            b.node(p(PadMode::Constant, 0.5), &[&h])
        }),
        image("slice_and_gather_spatial", |b, h| {
            let s = Slice {
                axis: 1,
                start: 1,
                end: 100,
                step: 2,
            };
            let h = b.node(s, &[h])?;
            let g = Gather {
                axis: -1,
                indices: vec![0, 7, -3, 3],
                scalar: false,
            };
            b.node(g, &[&h])
        }),
        image("slice_channels", |b, h| {
            let s = Slice {
                axis: 0,
                start: 2,
                end: -1,
                step: 1,
            };
            b.node(s, &[h])
        }),
        sandwich("gather_scalar_spatial", &[3, 8, 8], |b, x| {
            let h = b.conv2d(x, 8, 3, 1, 1)?;
            let g = Gather {
                axis: 1,
                indices: vec![-2],
                scalar: true,
            };
            let h = b.node(g, &[&h])?;
            let h = b.conv1d(&h, 4, 3, 1, 1)?;
            let h = b.flatten(&h)?;
            b.linear(&h, 2)
        }),
        image("reduce_mean_width", |b, h| {
            let r = ReduceMean {
                axes: vec![-1],
                keepdims: true,
            };
            b.node(r, &[h])
        }),
        sandwich("reduce_mean_spatial_no_keepdims", &[3, 8, 8], |b, x| {
            let h = b.conv2d(x, 8, 3, 1, 1)?;
            let r = ReduceMean {
                axes: vec![1, 2],
                keepdims: false,
            };
            let h = b.node(r, &[&h])?;
            b.linear(&h, 2)
        }),
        image("sub_and_div_by_a_constant", |b, h| {
            let r = b.conv2d(h, 8, 1, 1, 0)?;
            let d = b.node(Sub {}, &[h, &r])?;
            let c = b.node(
                Constant {
                    shape: vec![1, 8, 8],
                },
                &[],
            )?;
            let c = b.node(Add {}, &[&c, &c])?;
            b.node(Div {}, &[&d, &c])
        }),
    ];
    for g in &graphs {
        let err = check(g, 4);
        eprintln!("{}: max relative error {err:.2e}", g.name);
    }
    // the removals re-derive the attributes
    let g = graphs
        .iter()
        .find(|g| g.name == "conv_transpose2d_grouped")
        .unwrap();
    let a = analyse(g).unwrap();
    let group = a.group("conv2d1").unwrap();
    assert_eq!(
        group.units.len(),
        4,
        "one unit per group of the transposed conv"
    );
    let mut pruned = g.clone();
    a.remove(&mut pruned, &[group.units[1]]).unwrap();
    match &pruned.node("conv_transpose2d1").unwrap().op {
        prunekit_graph::Op::ConvTranspose2d(c) => {
            assert_eq!((c.in_channels, c.out_channels, c.groups), (6, 9, 3))
        }
        other => panic!("{other:?}"),
    }
}

/// New ops that cannot follow the channels they read protect them: a matmul of two activations,
/// a gather / strided slice / pad / mean along the channel axis, a divisor indexed by the
/// channels, a per-channel constant.
#[test]
fn new_ops_that_cannot_follow_channels_protect_them() {
    use prunekit_graph::ops::*;
    let graphs = vec![
        (
            sequence("matmul_scores", |b, h| {
                let t = b.node(Transpose { perm: vec![1, 0] }, &[h])?;
                let s = b.node(MatMul {}, &[h, &t])?;
                let s = b.linear(&s, 6)?;
                b.relu(&s)
            }),
            "linear1",
            "linear2",
        ),
        (
            image("gather_channels", |b, h| {
                let g = Gather {
                    axis: 0,
                    indices: vec![0, 2, 4],
                    scalar: false,
                };
                b.node(g, &[h])
            }),
            "conv2d1",
            "conv2d2",
        ),
        (
            image("strided_slice_of_channels", |b, h| {
                let s = Slice {
                    axis: 0,
                    start: 0,
                    end: 8,
                    step: 2,
                };
                b.node(s, &[h])
            }),
            "conv2d1",
            "conv2d2",
        ),
        (
            image("pad_channels", |b, h| {
                let p = Pad {
                    pads: vec![1, 0, 0, 0, 0, 0],
                    mode: PadMode::Constant,
                    value: 0.0,
                };
                b.node(p, &[h])
            }),
            "conv2d1",
            "conv2d2",
        ),
        (
            image("mean_over_channels", |b, h| {
                let r = ReduceMean {
                    axes: vec![0],
                    keepdims: true,
                };
                b.node(r, &[h])
            }),
            "conv2d1",
            "conv2d2",
        ),
        (
            image("divisor_with_channels", |b, h| {
                let r = b.conv2d(h, 8, 1, 1, 0)?;
                let r = b.sigmoid(&r)?;
                b.node(Div {}, &[h, &r])
            }),
            "conv2d2",
            "conv2d3",
        ),
        (
            image("per_channel_constant", |b, h| {
                let c = b.node(
                    Constant {
                        shape: vec![8, 1, 1],
                    },
                    &[],
                )?;
                b.node(Mul {}, &[h, &c])
            }),
            "conv2d1",
            "conv2d2",
        ),
    ];
    for (g, protected, prunable) in &graphs {
        assert_eq!(group_size(g, protected), 0, "{}: `{protected}`", g.name);
        assert!(group_size(g, prunable) >= 3, "{}: `{prunable}`", g.name);
        let err = check(g, 4);
        eprintln!("{}: max relative error {err:.2e}", g.name);
    }
}

/// sentence-transformers' head: tokens -> embedding -> dense [T, D] -> masked_mean_pool (with a
/// token mask) -> dense -> l2_normalize (-> dense). Removal equals masking on every trial (the
/// mask soft, through a sigmoid, so random inputs keep its sum away from the clamp), and on 0 / 1
/// masks with a fully padded sample; a pruned model round trips through our format.
#[test]
fn sentence_pooling_and_normalisation_pass_channels() {
    let build = |name: &str, tail: bool| {
        let mut b = GraphBuilder::new(name, 3);
        let ids = b.ids_input("ids", &[6]);
        let mask = b.input("mask", &[6]);
        let e = b.embedding(&ids, 20, 12).unwrap();
        let h = b.linear(&e, 16).unwrap();
        let h = b.gelu(&h).unwrap();
        let soft = b.sigmoid(&mask).unwrap();
        let p = b.masked_mean_pool(&h, &soft).unwrap();
        let d = b.linear(&p, 10).unwrap();
        let n = b.l2_normalize(&d).unwrap();
        let y = if tail { b.linear(&n, 3).unwrap() } else { n };
        b.finish(&[&y]).unwrap()
    };
    for g in [
        build("sentence_head", true),
        build("sentence_head_normalised_output", false),
    ] {
        let err = check(&g, 4);
        eprintln!("{}: max relative error {err:.2e}", g.name);
        let labels = group_labels(&g);
        assert!(
            labels.iter().any(|(n, _, u)| n == "linear1" && *u == 16),
            "{labels:?}"
        );
    }

    // a 0 / 1 mask (the mask read directly) with a fully padded first sample
    let mut b = GraphBuilder::new("hard_mask", 3);
    let ids = b.ids_input("ids", &[6]);
    let mask = b.input("mask", &[6]);
    let e = b.embedding(&ids, 20, 12).unwrap();
    let h = b.linear(&e, 16).unwrap();
    let p = b.masked_mean_pool(&h, &mask).unwrap();
    let d = b.linear(&p, 10).unwrap();
    let n = b.l2_normalize(&d).unwrap();
    let y = b.linear(&n, 3).unwrap();
    let g = b.finish(&[&y]).unwrap();
    randomise(&g, 5);
    let mut pruned = g.clone();
    let r = prune_structured(&mut pruned, &StructuredConfig::new(0.5), &Norm::L1).unwrap();
    assert!(pruned.param_count() < g.param_count());
    let ids = random_inputs(&g, 3, 4).unwrap().remove(0);
    let m = Tensor::new(
        &[
            [0f32, 0.0, 0.0, 0.0, 0.0, 0.0],
            [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            [1.0, 0.0, 1.0, 1.0, 1.0, 1.0],
        ],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let xs = vec![ids, m];
    let plan = r.removed();
    let v = prunekit_prune::verify(&g, &pruned, &plan, std::slice::from_ref(&xs)).unwrap();
    assert!(v.max_rel_error <= TOL, "relative error {}", v.max_rel_error);
    let y = prunekit_graph::Executor::new(0).eval(&pruned, &xs).unwrap();
    let first: Vec<f32> = y[0].get(0).unwrap().to_vec1().unwrap();
    assert!(first.iter().all(|v| v.is_finite()), "{first:?}");
    // our format keeps both ops and their outputs
    let dir = std::env::temp_dir().join(format!("prunekit-eq-sentence-{}", std::process::id()));
    format::save(&pruned, &dir).unwrap();
    let back = format::load(&dir, &candle_core::Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let ops =
        |g: &Graph| -> Vec<prunekit_graph::Op> { g.nodes.iter().map(|n| n.op.clone()).collect() };
    assert_eq!(ops(&back), ops(&pruned));
    let yb = prunekit_graph::Executor::new(0).eval(&back, &xs).unwrap();
    assert_eq!(
        yb[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        y[0].flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}
