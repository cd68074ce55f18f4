//! Structured (channel / neuron) pruning driven by each op's channel rule.
//!
//! A group starts at an op that creates a channel space (`ChannelRule::Transform`: Linear, Conv2d) and
//! follows the value through pass-through ops (BatchNorm, activations, pooling, dropout) and Flatten
//! (one channel becomes a block of features) to every op that consumes the space. Each step records the
//! parameter slices indexed by the channel. Removing channel c removes all those slices; masking
//! channel c zeroes them; the two give the same function. Ops without a rule (and the graph's
//! outputs) stop a group: it is not prunable. The dependency-analysis issue extends the rules
//! (residual Add, Concat, grouped convolutions, attention, recurrent units).

use candle_core::{DType, Tensor};
use prunekit_graph::{ChannelAxis, ChannelRule, Graph};
use serde::Serialize;

use crate::{check_ratio, PruneError, Result};

/// Parameter slice indexed by a group's channels: channel c owns indices c*block..(c+1)*block of `axis`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Slice {
    pub node: String,
    pub param: String,
    pub axis: usize,
    pub block: usize,
}

/// Channels created by `source` together with every parameter slice coupled to them.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelGroup {
    pub source: String,
    pub width: usize,
    pub slices: Vec<Slice>,
}

/// Per-channel norm used as importance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    L1,
    L2,
}

fn axis_matches(axis: ChannelAxis, pos: usize, rank: usize) -> bool {
    match axis {
        ChannelAxis::Any => true,
        ChannelAxis::First => pos == 0,
        ChannelAxis::Last => pos + 1 == rank,
    }
}

fn add_slices(
    g: &Graph,
    out: &mut Vec<Slice>,
    node: usize,
    params: &[(&'static str, usize)],
    block: usize,
) {
    let n = &g.nodes[node];
    for (p, axis) in params {
        if n.params.contains_key(*p) {
            out.push(Slice {
                node: n.name.clone(),
                param: p.to_string(),
                axis: *axis,
                block,
            });
        }
    }
}

/// Follows the channels created by node `src`; None when some op on the way has no rule or the
/// channels reach a graph output.
fn trace(g: &Graph, shapes: &prunekit_graph::Shapes, src: usize) -> Option<ChannelGroup> {
    let node = &g.nodes[src];
    let ChannelRule::Transform {
        output_axis,
        out_params,
        ..
    } = node.op.rules().channels()
    else {
        return None;
    };
    let shape = &shapes[&node.name];
    let pos = match output_axis {
        ChannelAxis::Last => shape.len() - 1,
        _ => 0,
    };
    let mut slices = Vec::new();
    add_slices(g, &mut slices, src, &out_params, 1);
    let mut stack = vec![(node.name.clone(), pos, 1usize)];
    while let Some((value, pos, block)) = stack.pop() {
        if g.outputs.contains(&value) {
            return None;
        }
        let in_shape = &shapes[&value];
        for (ci, _) in g.consumers(&value) {
            let c = &g.nodes[ci];
            if c.inputs.len() != 1 {
                return None;
            }
            match c.op.rules().channels() {
                ChannelRule::PassThrough { axis, params } => {
                    if !axis_matches(axis, pos, in_shape.len()) {
                        return None;
                    }
                    add_slices(g, &mut slices, ci, &params, block);
                    stack.push((c.name.clone(), pos, block));
                }
                ChannelRule::Transform {
                    input_axis,
                    in_params,
                    ..
                } => {
                    if !axis_matches(input_axis, pos, in_shape.len()) {
                        return None;
                    }
                    add_slices(g, &mut slices, ci, &in_params, block);
                }
                ChannelRule::Flatten => {
                    if pos != 0 {
                        return None;
                    }
                    let rest: usize = in_shape[1..].iter().product();
                    stack.push((c.name.clone(), 0, block * rest));
                }
                ChannelRule::Opaque => return None,
            }
        }
    }
    Some(ChannelGroup {
        source: node.name.clone(),
        width: shape[pos],
        slices,
    })
}

/// Every prunable channel group of the graph, in node order.
pub fn channel_groups(g: &Graph) -> Result<Vec<ChannelGroup>> {
    let shapes = g.validate()?;
    Ok((0..g.nodes.len())
        .filter_map(|i| trace(g, &shapes, i))
        .collect())
}

/// L1 or L2 norm of each output channel of the group's source weight.
pub fn group_scores(g: &Graph, group: &ChannelGroup, norm: Norm) -> Result<Vec<f32>> {
    let s = group
        .slices
        .iter()
        .find(|s| s.node == group.source && s.param == "weight")
        .ok_or_else(|| {
            PruneError::Invalid(format!("group `{}` has no source weight", group.source))
        })?;
    let w = g.node(&s.node)?.params[&s.param]
        .tensor()
        .to_dtype(DType::F32)?;
    let rows = w.transpose(0, s.axis)?.flatten_from(1)?;
    let scores = match norm {
        Norm::L1 => rows.abs()?.sum(1)?,
        Norm::L2 => rows.sqr()?.sum(1)?.sqrt()?,
    };
    Ok(scores.to_vec1::<f32>()?)
}

fn expand(channels: &[usize], block: usize) -> Vec<u32> {
    channels
        .iter()
        .flat_map(|&c| (c * block..(c + 1) * block).map(|i| i as u32))
        .collect()
}

fn check_removal(group: &ChannelGroup, remove: &[usize]) -> Result<Vec<usize>> {
    if let Some(&bad) = remove.iter().find(|&&c| c >= group.width) {
        return Err(PruneError::Invalid(format!(
            "channel {bad} is out of range for `{}` ({} channels)",
            group.source, group.width
        )));
    }
    let keep: Vec<usize> = (0..group.width).filter(|c| !remove.contains(c)).collect();
    if keep.is_empty() {
        return Err(PruneError::Invalid(format!(
            "removing all {} channels of `{}` would leave a zero-width layer",
            group.width, group.source
        )));
    }
    Ok(keep)
}

/// Physically removes channels `remove` of the group from every coupled parameter.
pub fn remove_channels(g: &mut Graph, group: &ChannelGroup, remove: &[usize]) -> Result<()> {
    let keep = check_removal(group, remove)?;
    for s in &group.slices {
        g.select(&s.node, &s.param, s.axis, &expand(&keep, s.block))?;
    }
    Ok(())
}

/// Zeroes every parameter slice of channels `remove` (the masked reference of `remove_channels`).
pub fn mask_channels(g: &Graph, group: &ChannelGroup, remove: &[usize]) -> Result<()> {
    check_removal(group, remove)?;
    for s in &group.slices {
        let p = &g.node(&s.node)?.params[&s.param];
        let t = p.tensor();
        let len = t.dim(s.axis)?;
        let mut v = vec![1f32; len];
        for i in expand(remove, s.block) {
            v[i as usize] = 0.0;
        }
        let mut bshape = vec![1usize; t.rank()];
        bshape[s.axis] = len;
        let m = Tensor::from_vec(v, bshape, t.device())?.to_dtype(t.dtype())?;
        p.value.set(&t.broadcast_mul(&m)?)?;
    }
    Ok(())
}

/// What happened to one group.
#[derive(Clone, Debug, Serialize)]
pub struct GroupPruned {
    pub source: String,
    pub before: usize,
    pub after: usize,
}

/// Removes the `ratio` lowest-norm channels of every prunable group (at least one channel stays;
/// with `round_to` > 1 the kept width is rounded up to a multiple of it, capped at the width).
pub fn prune_channels(
    g: &mut Graph,
    ratio: f64,
    norm: Norm,
    round_to: usize,
) -> Result<Vec<GroupPruned>> {
    check_ratio("structured", ratio)?;
    let groups = channel_groups(g)?;
    if groups.is_empty() {
        return Err(PruneError::Invalid(
            "the model has no prunable channel groups".into(),
        ));
    }
    let mut report = Vec::new();
    for group in &groups {
        let scores = group_scores(g, group, norm)?;
        let mut keep_n = (group.width - (ratio * group.width as f64).floor() as usize).max(1);
        if round_to > 1 {
            keep_n = keep_n.div_ceil(round_to) * round_to;
        }
        keep_n = keep_n.min(group.width);
        let mut order: Vec<usize> = (0..group.width).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        let remove = &order[..group.width - keep_n];
        if !remove.is_empty() {
            remove_channels(g, group, remove)?;
        }
        report.push(GroupPruned {
            source: group.source.clone(),
            before: group.width,
            after: keep_n,
        });
    }
    g.validate()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prunekit_graph::{Executor, GraphBuilder, Mode};
    use rand::Rng;

    fn cnn() -> Graph {
        let mut b = GraphBuilder::new("cnn", 7);
        let x = b.input("image", &[3, 12, 12]);
        let h = b.conv2d(&x, 8, 3, 1, 1).unwrap();
        let h = b.batch_norm(&h).unwrap();
        let h = b.relu(&h).unwrap();
        let h = b.max_pool2d(&h, 2, 2).unwrap();
        let h = b.conv2d(&h, 6, 3, 2, 1).unwrap();
        let h = b.batch_norm(&h).unwrap();
        let h = b.gelu(&h).unwrap();
        let h = b.flatten(&h).unwrap();
        let h = b.linear(&h, 10).unwrap();
        let h = b.dropout(&h, 0.1).unwrap();
        let h = b.tanh(&h).unwrap();
        let y = b.linear(&h, 5).unwrap();
        b.finish(&[&y]).unwrap()
    }

    /// Makes the running statistics non-trivial so BatchNorm's slices matter.
    fn randomise_buffers(g: &Graph, seed: u64) {
        let mut rng = prunekit_graph::graph::rng(seed);
        for (_, k, p) in g.params() {
            if k.starts_with("running") || k == "bias" || (k == "weight" && p.tensor().rank() == 1)
            {
                let n = p.tensor().elem_count();
                let v: Vec<f32> = (0..n).map(|_| rng.random_range(0.5..1.5)).collect();
                p.value
                    .set(&Tensor::from_vec(v, p.tensor().shape(), p.tensor().device()).unwrap())
                    .unwrap();
            }
        }
    }

    fn output(g: &Graph, x: &Tensor) -> Vec<f32> {
        Executor::new(0)
            .run(g, std::slice::from_ref(x), Mode::EVAL, None)
            .unwrap()[0]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn groups_follow_bn_pool_and_flatten() {
        let g = cnn();
        let groups = channel_groups(&g).unwrap();
        let names: Vec<&str> = groups.iter().map(|g| g.source.as_str()).collect();
        assert_eq!(
            names,
            ["conv2d1", "conv2d2", "linear1"],
            "the output layer is protected"
        );
        let flat = groups[1]
            .slices
            .iter()
            .find(|s| s.node == "linear1")
            .unwrap();
        assert_eq!(
            (flat.axis, flat.block),
            (1, 9),
            "conv2d2's channel is a 3x3 block of linear1's inputs"
        );
        assert_eq!(
            groups[0].slices.len(),
            2 + 4 + 1,
            "conv out (w, b), bn (4 params), next conv in"
        );
    }

    #[test]
    fn removal_equals_masking_on_random_groups() {
        let mut rng = prunekit_graph::graph::rng(11);
        for trial in 0..8u64 {
            let g = cnn();
            randomise_buffers(&g, trial);
            let x = Tensor::randn(0f32, 1.0, (4, 3, 12, 12), &candle_core::Device::Cpu).unwrap();
            let mut pruned = g.clone();
            let masked = g.clone();
            for group in channel_groups(&g).unwrap() {
                let k = rng.random_range(0..group.width);
                let mut remove: Vec<usize> = (0..group.width).collect();
                for i in (1..remove.len()).rev() {
                    remove.swap(i, rng.random_range(0..=i));
                }
                remove.truncate(k);
                mask_channels(&masked, &group, &remove).unwrap();
                remove_channels(&mut pruned, &group, &remove).unwrap();
            }
            pruned.validate().unwrap();
            let (a, b) = (output(&masked, &x), output(&pruned, &x));
            let num: f32 = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).powi(2))
                .sum::<f32>()
                .sqrt();
            let den: f32 = a.iter().map(|p| p * p).sum::<f32>().sqrt().max(1e-12);
            assert!(
                num / den <= 1e-5,
                "trial {trial}: relative error {}",
                num / den
            );
        }
    }

    #[test]
    fn ratio_zero_is_a_bit_exact_identity() {
        let g = cnn();
        let mut p = g.clone();
        prune_channels(&mut p, 0.0, Norm::L1, 1).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 12, 12), &candle_core::Device::Cpu).unwrap();
        assert_eq!(output(&g, &x), output(&p, &x));
        assert_eq!(g.param_count(), p.param_count());
    }

    #[test]
    fn half_ratio_halves_widths_and_keeps_the_largest_norms() {
        let mut g = cnn();
        let groups = channel_groups(&g).unwrap();
        let scores = group_scores(&g, &groups[0], Norm::L2).unwrap();
        let mut sorted = scores.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let report = prune_channels(&mut g, 0.5, Norm::L2, 1).unwrap();
        assert_eq!(report[0].after, 4);
        let kept = group_scores(&g, &channel_groups(&g).unwrap()[0], Norm::L2).unwrap();
        let mut kept_sorted = kept.clone();
        kept_sorted.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(kept_sorted, sorted[..4].to_vec());
        // the params counted from the graph equal the tensors' element counts
        let shapes = g.validate().unwrap();
        assert_eq!(shapes["conv2d2"], vec![3, 3, 3]);
    }

    #[test]
    fn round_to_and_bad_input() {
        let mut g = cnn();
        let r = prune_channels(&mut g, 0.5, Norm::L1, 8).unwrap();
        assert_eq!(r[0].after, 8, "4 rounds up to 8 (capped at the width)");
        let g2 = cnn();
        let group = &channel_groups(&g2).unwrap()[0];
        let all: Vec<usize> = (0..group.width).collect();
        let err = mask_channels(&g2, group, &all).unwrap_err().to_string();
        assert!(err.contains("zero-width"), "{err}");
        assert!(prune_channels(&mut cnn(), 1.0, Norm::L1, 1).is_err());
    }
}
