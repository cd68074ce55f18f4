//! Whole-layer removal: residual blocks (y = x + f(x)) whose branch f can be deleted, leaving
//! y = x, and transformer layers (an attention block and the feed-forward block after it).
//!
//! A block is found from an Add of two inputs with the output's shape, where one input (the skip)
//! is the block input and the other is computed only from it (and from graph inputs such as an
//! attention mask) by nodes nothing else reads. Deleting those nodes and the Add, and reading the
//! skip wherever the Add was read, leaves a valid graph. In a post-norm block (`norm(x + f(x))`,
//! BERT's layers) the norm that alone reads the Add belongs to the block, so removing a whole
//! post-norm layer leaves y = x, as removing a pre-norm one does.
//! Blocks are scored by *block influence* (1 - cosine similarity of the layer's input and output
//! over a calibration batch: a layer that barely changes its input matters least) or by *ablation*
//! (the loss with the layer removed).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use candle_core::{DType, Tensor};
use prunekit_graph::{Executor, Graph, Hooks, Mode, Op};
use serde::Serialize;

use crate::{PruneError, Result};

/// One residual block: `output = input + branch(input)`, or `output = norm(input +
/// branch(input))` (post-norm).
#[derive(Clone, Debug, Serialize)]
pub struct Block {
    /// the block's last node: the Add, or the LayerNorm / RMSNorm that alone reads it (post-norm;
    /// the Add is then among `nodes`)
    pub output: String,
    /// the skip input (the block's input)
    pub input: String,
    /// the branch's nodes, in graph order
    pub nodes: Vec<String>,
}

/// A removable layer: one residual block, or an attention block with the feed-forward block that
/// follows it (a transformer layer).
#[derive(Clone, Debug, Serialize)]
pub struct Layer {
    pub name: String,
    pub blocks: Vec<Block>,
}

impl Layer {
    pub fn input(&self) -> &str {
        &self.blocks[0].input
    }
    pub fn output(&self) -> &str {
        &self.blocks[self.blocks.len() - 1].output
    }
}

/// The branch computing `r` from `skip` (and graph inputs), or None when `r` depends on another
/// node's output or something outside the block reads the branch.
fn branch(g: &Graph, add: usize, skip: &str, r: &str) -> Option<Vec<String>> {
    let index: BTreeMap<&str, usize> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut seen: BTreeSet<usize> = BTreeSet::new();
    let mut stack = vec![r.to_string()];
    while let Some(v) = stack.pop() {
        if v == skip {
            continue;
        }
        let Some(&i) = index.get(v.as_str()) else {
            // a graph input other than the skip (an attention mask): read, not removed
            if g.inputs.iter().any(|x| x.name == v) {
                continue;
            }
            return None;
        };
        if !seen.insert(i) {
            continue;
        }
        stack.extend(g.nodes[i].inputs.iter().cloned());
    }
    if seen.is_empty() || !seen.iter().all(|&i| i < add) {
        return None;
    }
    // every branch node must reach the skip, and only branch nodes or the Add may read it
    for &i in &seen {
        let name = &g.nodes[i].name;
        if g.outputs.contains(name) {
            return None;
        }
        for (c, _) in g.consumers(name) {
            if c != add && !seen.contains(&c) {
                return None;
            }
        }
    }
    let reaches_skip = seen
        .iter()
        .any(|&i| g.nodes[i].inputs.iter().any(|x| x == skip));
    reaches_skip.then(|| seen.iter().map(|&i| g.nodes[i].name.clone()).collect())
}

/// Every residual block of the graph, in order (not those owning a parameter that a node
/// outside the block borrows).
pub fn find_blocks(g: &Graph) -> Result<Vec<Block>> {
    let shapes = g.validate()?;
    let mut out = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op, Op::Add(_)) || n.inputs.len() != 2 {
            continue;
        }
        for (s, r) in [(0, 1), (1, 0)] {
            let (skip, res) = (&n.inputs[s], &n.inputs[r]);
            if shapes[skip] != shapes[&n.name] || skip == res {
                continue;
            }
            if let Some(mut nodes) = branch(g, i, skip, res) {
                // post-norm: the skip is a norm's output, and a LayerNorm / RMSNorm that is the
                // Add's only reader closes the block (a pre-norm model's final norm also reads
                // only the last Add, but that block's skip is the Add before it)
                let is_norm = |name: &str| {
                    g.node(name)
                        .map(|m| matches!(m.op, Op::LayerNorm(_) | Op::RmsNorm(_)))
                        .unwrap_or(false)
                };
                let readers = g.consumers(&n.name);
                let mut output = n.name.clone();
                if let ([(c, _)], true) = (readers.as_slice(), is_norm(skip)) {
                    let norm = &g.nodes[*c];
                    if is_norm(&norm.name)
                        && norm.inputs.len() == 1
                        && !g.outputs.contains(&n.name)
                        && shapes[&norm.name] == shapes[skip]
                    {
                        nodes.push(n.name.clone());
                        output = norm.name.clone();
                    }
                }
                // a block owning a parameter that a node outside it borrows (`Node::shared`)
                // cannot go: the borrower would lose its tensor
                let inside = |m: &str| nodes.iter().any(|x| x == m) || m == output;
                let lends_out = g
                    .nodes
                    .iter()
                    .any(|m| !inside(&m.name) && m.shared.values().any(|r| inside(&r.node)));
                if lends_out {
                    continue;
                }
                out.push(Block {
                    output,
                    input: skip.clone(),
                    nodes,
                });
                break;
            }
        }
    }
    Ok(out)
}

/// Removable layers: each residual block, except that an attention block and the block right
/// after it (the feed-forward block of the same transformer layer) form one layer.
pub fn find_layers(g: &Graph) -> Result<Vec<Layer>> {
    let blocks = find_blocks(g)?;
    let has_attention = |b: &Block| {
        b.nodes.iter().any(|n| {
            g.node(n)
                .map(|n| matches!(n.op, Op::Attention(_)))
                .unwrap_or(false)
        })
    };
    let mut layers = Vec::new();
    let mut i = 0;
    while i < blocks.len() {
        let mut members = vec![blocks[i].clone()];
        if has_attention(&blocks[i]) && i + 1 < blocks.len() && !has_attention(&blocks[i + 1]) {
            members.push(blocks[i + 1].clone());
            i += 1;
        }
        i += 1;
        layers.push(Layer {
            name: format!("layer{}", layers.len()),
            blocks: members,
        });
    }
    Ok(layers)
}

/// Removes the layers: their branches and Adds go, and every reader of an Add reads its skip.
pub fn remove_layers(g: &mut Graph, layers: &[&Layer]) -> Result<()> {
    let mut work = g.try_clone()?;
    let mut drop: HashSet<String> = HashSet::new();
    let mut rename: BTreeMap<String, String> = BTreeMap::new();
    for l in layers {
        for b in &l.blocks {
            drop.extend(b.nodes.iter().cloned());
            drop.insert(b.output.clone());
            rename.insert(b.output.clone(), b.input.clone());
        }
    }
    let resolve = |mut v: String| {
        while let Some(next) = rename.get(&v) {
            v = next.clone();
        }
        v
    };
    work.nodes.retain(|n| !drop.contains(&n.name));
    for n in &mut work.nodes {
        for i in &mut n.inputs {
            *i = resolve(i.clone());
        }
    }
    for o in &mut work.outputs {
        *o = resolve(o.clone());
    }
    work.validate()?;
    *g = work;
    Ok(())
}

/// Block influence of each layer: 1 - mean cosine similarity between the layer's input and
/// output over the samples of `inputs` (per sample, flattened).
pub fn block_influence(g: &Graph, layers: &[Layer], inputs: &[Tensor]) -> Result<Vec<f64>> {
    let mut hooks = Hooks::default();
    for l in layers {
        for v in [l.input(), l.output()] {
            hooks.capture_outputs.insert(v.to_string());
        }
    }
    Executor::new(0).run(g, inputs, Mode::EVAL, Some(&mut hooks))?;
    let value = |name: &str| -> Result<Tensor> {
        if let Some(t) = hooks.outputs.get(name) {
            return Ok(t.clone());
        }
        // the skip of the first block may be a graph input
        let i = g
            .inputs
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| PruneError::Invalid(format!("no captured value `{name}`")))?;
        Ok(inputs[i].clone())
    };
    layers
        .iter()
        .map(|l| {
            let a = value(l.input())?.to_dtype(DType::F64)?.flatten_from(1)?;
            let b = value(l.output())?.to_dtype(DType::F64)?.flatten_from(1)?;
            let dot = (&a * &b)?.sum(1)?;
            let na = a.sqr()?.sum(1)?.sqrt()?;
            let nb = b.sqr()?.sum(1)?.sqrt()?;
            let cos = dot.div(&(na * nb)?.clamp(1e-30, f64::MAX)?)?;
            Ok(1.0 - cos.mean_all()?.to_scalar::<f64>()?)
        })
        .collect()
}

/// Ablation score of each layer: `loss` of the graph with that layer removed.
pub fn ablation_scores(
    g: &Graph,
    layers: &[Layer],
    loss: &dyn Fn(&Graph) -> Result<f64>,
) -> Result<Vec<f64>> {
    layers
        .iter()
        .map(|l| {
            let mut h = g.try_clone()?;
            remove_layers(&mut h, &[l])?;
            loss(&h)
        })
        .collect()
}

/// What `prune_layers` removed.
#[derive(Clone, Debug, Serialize)]
pub struct LayersRemoved {
    pub removed: Vec<String>,
    pub scores: Vec<(String, f64)>,
}

/// Removes the `n` layers with the lowest scores (`scores[i]` belongs to `layers[i]`).
///
/// At least one removable layer always stays (`n` must be below `layers.len()`, or 0): removing
/// every block would leave the skip path alone, in a residual network an identity map with no
/// parameters, which is no longer the model. Errors: `n` not below the number of removable
/// layers (the message gives that number), `scores` not one per layer, or a removal that leaves
/// an invalid graph (the graph is then unchanged).
pub fn prune_layers(
    g: &mut Graph,
    layers: &[Layer],
    scores: &[f64],
    n: usize,
) -> Result<LayersRemoved> {
    if n > 0 && n >= layers.len() {
        let rule = match layers.len() {
            0 => String::new(),
            k => format!(
                "; at least one must stay, so remove at most {} (--layers / `count` below {k})",
                k - 1
            ),
        };
        return Err(PruneError::Invalid(format!(
            "cannot remove {n} layers: the model has {} removable layers (residual blocks and \
             transformer layers){rule}",
            layers.len()
        )));
    }
    if scores.len() != layers.len() {
        return Err(PruneError::Invalid(format!(
            "{} layer scores for {} layers",
            scores.len(),
            layers.len()
        )));
    }
    let mut order: Vec<usize> = (0..layers.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let chosen: Vec<&Layer> = order[..n].iter().map(|&i| &layers[i]).collect();
    remove_layers(g, &chosen)?;
    Ok(LayersRemoved {
        removed: chosen.iter().map(|l| l.name.clone()).collect(),
        scores: layers
            .iter()
            .zip(scores)
            .map(|(l, &s)| (l.name.clone(), s))
            .collect(),
    })
}
