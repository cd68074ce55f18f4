//! Dependency analysis: which parameter slices must be removed together.
//!
//! Every value that carries channels has a *channel axis*, and every position along it carries one
//! *element*. Ops state, in their [`OpRules::channels`] rule, how the elements of their inputs relate
//! to those of their output and to their own parameters, through a [`ChannelCx`]:
//!
//! - a Linear or Conv2d *consumes* its input's elements (each indexes a column of the weight) and
//!   *creates* a fresh space of elements for its output (each indexes a row);
//! - BatchNorm, activations, pooling and dropout pass the elements through (BatchNorm's per-channel
//!   parameters are indexed by them);
//! - Add and Mul *unify* the elements of their inputs position by position (residual connections,
//!   gating): one element of each input becomes one unit; an input broadcast along the channel
//!   axis (extent 1 or the axis missing: a spatial-attention map, a scalar gate) is not indexed
//!   by the channels and neither couples nor protects them;
//! - Concat lays its inputs' elements side by side (an input without channels on that axis
//!   contributes fixed positions), Narrow (Split) takes a range of them;
//! - Flatten repeats an element over the block of features it becomes;
//! - grouped and depthwise convolutions unify all input and output channels of one group;
//! - attention creates a space of heads (or of KV groups and of query heads within a group), LSTM and
//!   GRU a space of hidden units that index rows of every gate and the recurrent weight's columns.
//!
//! Elements that are unified form one *unit*: the smallest thing that can be removed. A unit's slices
//! are every (parameter, axis, index) its elements touch; removing the unit deletes all of them at
//! once, and the model stays a valid graph computing the same function as the unpruned model with
//! those slices zeroed (normalisations over a pruned axis take statistics over the kept channels
//! only: their weight's mask says which). Units whose elements reach a graph input or output, or
//! an op without a rule, are protected. Units that grew from connected spaces form a *group* (a
//! layer's channels, or a residual stream shared by many layers): the pruner ranks units within groups.
//!
//! Union-find over elements makes every coupling, however indirect, a single pass over the graph.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use candle_core::Tensor;
use serde::Serialize;

use crate::error::{GraphError, Result};
use crate::graph::{Graph, InputKind, Node};

/// One channel position in the analysis (an index into its union-find).
pub type Elem = usize;

/// The sentinel element every protected element is unified with.
const PROTECTED: Elem = 0;

/// The channel axis of a value and the element each position along it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chan {
    pub axis: usize,
    pub elems: Vec<Elem>,
}

struct Space {
    node: String,
    label: &'static str,
}

#[derive(Default)]
struct State {
    parent: Vec<usize>,
    /// the space each element was created in
    space: Vec<usize>,
    spaces: Vec<Space>,
    /// (node, param, axis, index, element)
    touches: Vec<(usize, &'static str, usize, usize, Elem)>,
    /// nodes whose rule protected channels of their inputs ("name (type)")
    blocked_by: Vec<String>,
    /// a second union-find over the same elements with every union except those with the
    /// protected sentinel: an element's class here is what it is coupled to, so the reasons
    /// recorded on any member say why the whole class is protected
    links: Vec<usize>,
    /// (element, why it was protected)
    reasons: Vec<(Elem, Protection)>,
}

/// Why channel elements were protected (see [`ProtectedSpace`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Protection {
    /// coupled to the channels of this graph input
    GraphInput { name: String },
    /// coupled to the channels of this graph output
    GraphOutput { name: String },
    /// the channel rule of this node protected them (an op without a rule, softmax over
    /// channels, an elementwise op whose inputs cannot be followed, a Linear along another axis)
    Op { node: String, op: String },
}

impl std::fmt::Display for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protection::GraphInput { name } => write!(f, "graph input `{name}`"),
            Protection::GraphOutput { name } => write!(f, "graph output `{name}`"),
            Protection::Op { node, op } => write!(f, "`{node}` ({op})"),
        }
    }
}

impl State {
    fn new() -> Self {
        let mut s = State::default();
        s.spaces.push(Space {
            node: String::new(),
            label: "protected",
        });
        s.parent.push(PROTECTED);
        s.links.push(PROTECTED);
        s.space.push(0);
        s
    }
    /// A fresh element of space `s`.
    fn push(&mut self, s: usize) -> Elem {
        let e = self.parent.len();
        self.parent.push(e);
        self.links.push(e);
        self.space.push(s);
        e
    }
    fn protect(&mut self, e: Elem, why: Protection) {
        self.union(e, PROTECTED);
        self.reasons.push((e, why));
    }
    fn link_root(&mut self, mut e: Elem) -> Elem {
        while self.links[e] != e {
            self.links[e] = self.links[self.links[e]];
            e = self.links[e];
        }
        e
    }
    /// Unifies two elements (both union-finds).
    fn couple(&mut self, a: Elem, b: Elem) {
        self.union(a, b);
        let (ra, rb) = (self.link_root(a), self.link_root(b));
        if ra != rb {
            self.links[ra.max(rb)] = ra.min(rb);
        }
    }
    fn find(&mut self, mut e: Elem) -> Elem {
        while self.parent[e] != e {
            self.parent[e] = self.parent[self.parent[e]];
            e = self.parent[e];
        }
        e
    }
    fn union(&mut self, a: Elem, b: Elem) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // the protected sentinel (0) stays a root
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent[hi] = lo;
        }
    }
}

/// What an op's channel rule sees and records: its inputs' channels and shapes, its output shape,
/// and calls that create spaces, unify elements, protect them and record parameter slices.
pub struct ChannelCx<'a> {
    state: &'a mut State,
    node_index: usize,
    node: &'a Node,
    inputs: Vec<Option<Chan>>,
    in_shapes: Vec<Vec<usize>>,
    out_shape: Vec<usize>,
}

impl ChannelCx<'_> {
    pub fn num_inputs(&self) -> usize {
        self.inputs.len()
    }
    /// The channels of input `i`, or None when it carries none.
    pub fn input(&self, i: usize) -> Option<&Chan> {
        self.inputs.get(i).and_then(|c| c.as_ref())
    }
    pub fn in_shape(&self, i: usize) -> &[usize] {
        &self.in_shapes[i]
    }
    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }
    /// The last axis of input `i`'s per-sample shape.
    pub fn last_axis(&self, i: usize) -> usize {
        self.in_shapes[i].len().saturating_sub(1)
    }

    /// A fresh space of `n` prunable elements created by this node (`label` names what they are:
    /// "channels", "heads", "kv_groups", "units").
    pub fn new_space(&mut self, n: usize, label: &'static str) -> Vec<Elem> {
        let s = self.state.spaces.len();
        self.state.spaces.push(Space {
            node: self.node.name.clone(),
            label,
        });
        (0..n).map(|_| self.state.push(s)).collect()
    }
    pub fn union(&mut self, a: Elem, b: Elem) {
        self.state.couple(a, b);
    }
    /// Marks elements as not removable (recording this node as the reason).
    pub fn protect(&mut self, elems: &[Elem]) {
        let why = Protection::Op {
            node: self.node.name.clone(),
            op: self.node.op.type_name().to_string(),
        };
        for &e in elems {
            self.state.protect(e, why.clone());
        }
    }
    /// Protects every input's channels.
    pub fn protect_inputs(&mut self) {
        let all: Vec<Elem> = self
            .inputs
            .iter()
            .flatten()
            .flat_map(|c| c.elems.clone())
            .collect();
        self.protect(&all);
    }
    /// The rule of an op that cannot follow channels: its inputs are protected, its output carries
    /// none. The node is named as having blocked them unless each input carries at most one
    /// channel (a value's only channel is never removable anyway).
    pub fn opaque(&mut self) -> Option<Chan> {
        if self.inputs.iter().flatten().any(|c| c.elems.len() > 1) {
            self.record_blocked();
        }
        self.protect_inputs();
        None
    }
    /// Records that removing element `e` removes `index` along `axis` of parameter `param` (ignored
    /// when the node has no such parameter, e.g. an absent bias).
    /// A borrowed parameter ([`crate::Node::shared`]) is touched like an owned one; the analysis
    /// then makes its slices the owner's (see [`analyse`]).
    pub fn touch(&mut self, param: &'static str, axis: usize, index: usize, e: Elem) {
        if self.node.has_param(param) {
            self.state
                .touches
                .push((self.node_index, param, axis, index, e));
        }
    }
    /// Index i along each `(param, axis)` belongs to `elems[i]`.
    pub fn touch_all(&mut self, params: &[(&'static str, usize)], elems: &[Elem]) {
        for &(p, axis) in params {
            for (i, &e) in elems.iter().enumerate() {
                self.touch(p, axis, i, e);
            }
        }
    }

    /// Input 0's channels pass through unchanged, indexing `params`. With `axis` given, the
    /// channels must lie on it (else the op is opaque); None accepts any axis.
    pub fn pass(&mut self, axis: Option<usize>, params: &[(&'static str, usize)]) -> Option<Chan> {
        let c = self.input(0)?.clone();
        if axis.is_some_and(|a| a != c.axis) {
            return self.opaque();
        }
        self.touch_all(params, &c.elems);
        Some(c)
    }

    /// Consumes input 0's channels on `in_axis` (indexing `in_params`) and creates a new space for
    /// the output's `out_axis` (indexing `out_params`). Channels on another axis are protected.
    pub fn transform(
        &mut self,
        in_axis: usize,
        in_params: &[(&'static str, usize)],
        out_axis: usize,
        out_params: &[(&'static str, usize)],
    ) -> Option<Chan> {
        if let Some(c) = self.input(0).cloned() {
            if c.axis == in_axis {
                self.touch_all(in_params, &c.elems);
            } else {
                self.protect(&c.elems);
            }
        }
        let n = self.out_shape.get(out_axis).copied().unwrap_or(0);
        let elems = self.new_space(n, "channels");
        self.touch_all(out_params, &elems);
        Some(Chan {
            axis: out_axis,
            elems,
        })
    }

    /// The output axis that axis `axis` of input `i` lands on: numpy broadcasting aligns
    /// per-sample shapes from the right, so a lower-rank input's axes are offset.
    fn output_axis(&self, i: usize, axis: usize) -> usize {
        axis + self.out_shape.len().saturating_sub(self.in_shapes[i].len())
    }

    /// Input `i`'s extent along output axis `a` (1 where it lacks that axis: it is broadcast).
    fn extent_along(&self, i: usize, a: usize) -> usize {
        let offset = self.out_shape.len().saturating_sub(self.in_shapes[i].len());
        a.checked_sub(offset)
            .and_then(|j| self.in_shapes[i].get(j).copied())
            .unwrap_or(1)
    }

    /// Whether input `i` carries its channels on output axis `a`, at the output's full extent.
    fn spans_with_channels(&self, i: usize, a: usize) -> bool {
        self.input(i).is_some_and(|c| {
            self.output_axis(i, c.axis) == a && self.extent_along(i, a) == self.out_shape[a]
        })
    }

    /// Protects an input's channels that the output cannot follow; the node is named as having
    /// blocked them unless there is a single one (a value's only channel is never removable).
    pub fn protect_unfollowed(&mut self, elems: &[Elem]) {
        if elems.len() > 1 {
            self.record_blocked();
        }
        self.protect(elems);
    }

    fn record_blocked(&mut self) {
        let who = format!("`{}` ({})", self.node.name, self.node.op.type_name());
        if !self.state.blocked_by.contains(&who) {
            self.state.blocked_by.push(who);
        }
    }

    /// `n` positions that carry no removable channel (e.g. the slots of a concatenated input that
    /// carries none along the concatenation axis).
    pub fn fixed_space(&mut self, n: usize) -> Vec<Elem> {
        let elems = self.new_space(n, "fixed");
        self.protect(&elems);
        elems
    }

    /// Elementwise ops with numpy broadcasting (Add, Mul). The output's channel axis is the first
    /// output axis on which some input carries channels at full extent and along which every other
    /// input is either the same (its channels there too) or broadcast (extent 1, or the axis
    /// missing: a lower-rank input such as a bias-like `[T, 16] + [16]`). Inputs carrying channels
    /// there are unified position by position; a broadcast input is not indexed by those channels
    /// (spatial attention `x * sigmoid(conv(x))` with a `[1, H, W]` map, a `[1]` gate), so it
    /// neither couples nor protects them, and its own channels, on an axis the output does not
    /// follow, are protected. When no axis qualifies (channels on different axes that both span
    /// the output, an input of unknown channels spanning the axis) every input is protected.
    pub fn elementwise(&mut self) -> Option<Chan> {
        let n = self.inputs.len();
        let mut candidates: Vec<usize> = Vec::new();
        for i in 0..n {
            if let Some(c) = self.input(i) {
                let a = self.output_axis(i, c.axis);
                if self.spans_with_channels(i, a) && !candidates.contains(&a) {
                    candidates.push(a);
                }
            }
        }
        let followable = |cx: &Self, a: usize| {
            (0..n).all(|i| cx.spans_with_channels(i, a) || cx.extent_along(i, a) == 1)
        };
        let Some(a) = candidates.into_iter().find(|&a| followable(self, a)) else {
            return self.opaque();
        };
        let mut first: Option<Vec<Elem>> = None;
        for i in 0..n {
            let Some(c) = self.input(i).cloned() else {
                continue;
            };
            if !self.spans_with_channels(i, a) {
                self.protect_unfollowed(&c.elems);
                continue;
            }
            match &first {
                None => first = Some(c.elems),
                Some(f) => {
                    for (&x, &y) in f.iter().zip(&c.elems) {
                        self.state.couple(x, y);
                    }
                }
            }
        }
        let elems = first?;
        Some(Chan { axis: a, elems })
    }
}

/// A (node, parameter, axis) a unit removes indices from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SliceKey {
    pub node: String,
    pub param: String,
    pub axis: usize,
}

/// The smallest removable structure: unified channel elements and every parameter slice they index.
#[derive(Clone, Debug, Serialize)]
pub struct Unit {
    pub id: usize,
    pub group: usize,
    /// the nodes whose channel spaces the unit's elements were created in (its "output of")
    pub sources: Vec<String>,
    /// (node, param, axis) -> sorted indices along that axis
    pub slices: BTreeMap<SliceKey, Vec<usize>>,
}

impl Unit {
    /// Parameter elements this unit owns (sum over its slices of the slice sizes).
    pub fn param_count(&self, g: &Graph) -> usize {
        self.slices
            .iter()
            .map(|(k, idx)| {
                let t = g
                    .nodes
                    .iter()
                    .find(|n| n.name == k.node)
                    .and_then(|n| n.params.get(&k.param));
                t.map_or(0, |p| {
                    let d = p.tensor().dims();
                    idx.len() * d.iter().product::<usize>() / d[k.axis].max(1)
                })
            })
            .sum()
    }
}

/// Units grown from connected spaces: one layer's channels, a residual stream, one attention's heads.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelGroup {
    /// the node that created the group's first space, and what its elements are
    pub name: String,
    pub label: String,
    pub units: Vec<usize>,
    /// every node whose parameters the group's units touch
    pub nodes: Vec<String>,
}

impl ChannelGroup {
    /// A stable name for per-group settings: the creating node, plus `/label` for anything but
    /// plain channels (`attention1/heads`, `lstm1/units`).
    pub fn key(&self) -> String {
        space_key(&self.name, &self.label)
    }
}

/// A space created by a node (its channels, heads, units) of which some elements are protected.
#[derive(Clone, Debug, Serialize)]
pub struct ProtectedSpace {
    /// the node that created the space, and what its elements are ("channels", "heads", ...)
    pub node: String,
    pub label: String,
    /// elements in the space, and how many of them are protected
    pub size: usize,
    pub protected: usize,
    /// why: every protection recorded on anything the protected elements are coupled to
    /// (sorted, without repeats)
    pub reasons: Vec<Protection>,
}

impl ProtectedSpace {
    /// The name a [`ChannelGroup`] over this space would have ([`ChannelGroup::key`]).
    pub fn key(&self) -> String {
        space_key(&self.node, &self.label)
    }
}

/// `node` for plain channels, `node/label` for anything else (`attention1/heads`, `lstm1/units`).
fn space_key(node: &str, label: &str) -> String {
    if label == "channels" {
        node.to_string()
    } else {
        format!("{node}/{label}")
    }
}

/// The result of the dependency analysis of one graph.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelAnalysis {
    pub units: Vec<Unit>,
    pub groups: Vec<ChannelGroup>,
    /// nodes whose channel rule stopped channels from being pruned through them (ops without a
    /// rule, softmax over channels, mismatched elementwise inputs), for error messages
    pub blocked_by: Vec<String>,
    /// every space created by a node (not a graph input's) with elements that were protected,
    /// and why: what a pruner reports as channels it could not remove
    pub protected_spaces: Vec<ProtectedSpace>,
    /// per value: its channel axis and the unit at each position (None: protected or untouched)
    #[serde(skip)]
    values: HashMap<String, (usize, Vec<Option<usize>>)>,
}

/// Runs every op's channel rule over the graph.
pub fn analyse(g: &Graph) -> Result<ChannelAnalysis> {
    let shapes = g.validate()?;
    let mut st = State::new();
    let mut chans: HashMap<String, Option<Chan>> = HashMap::new();
    for input in &g.inputs {
        let chan = match input.kind {
            InputKind::Ids => None,
            _ => {
                let rank = input.shape.len();
                let axis = if rank >= 3 { 0 } else { rank.saturating_sub(1) };
                let n = input.shape.get(axis).copied().unwrap_or(1);
                let s = st.spaces.len();
                st.spaces.push(Space {
                    node: input.name.clone(),
                    label: "input",
                });
                let why = Protection::GraphInput {
                    name: input.name.clone(),
                };
                let elems: Vec<Elem> = (0..n).map(|_| st.push(s)).collect();
                for &e in &elems {
                    st.protect(e, why.clone());
                }
                Some(Chan { axis, elems })
            }
        };
        chans.insert(input.name.clone(), chan);
    }
    for (ni, node) in g.nodes.iter().enumerate() {
        let inputs: Vec<Option<Chan>> = node
            .inputs
            .iter()
            .map(|i| chans.get(i).cloned().flatten())
            .collect();
        let in_shapes: Vec<Vec<usize>> = node.inputs.iter().map(|i| shapes[i].clone()).collect();
        let mut cx = ChannelCx {
            state: &mut st,
            node_index: ni,
            node,
            inputs,
            in_shapes,
            out_shape: shapes[&node.name].clone(),
        };
        let out = node.op.rules().channels(&mut cx);
        if let Some(c) = &out {
            let len = shapes[&node.name].get(c.axis).copied();
            if len != Some(c.elems.len()) {
                return Err(GraphError::Invalid(format!(
                    "node `{}`: the {} op's channel rule gave {} channels on axis {} of {:?}",
                    node.name,
                    node.op.type_name(),
                    c.elems.len(),
                    c.axis,
                    shapes[&node.name]
                )));
            }
        }
        chans.insert(node.name.clone(), out);
    }
    for o in &g.outputs {
        if let Some(Some(c)) = chans.get(o) {
            let why = Protection::GraphOutput { name: o.clone() };
            for &e in &c.elems {
                st.protect(e, why.clone());
            }
        }
    }
    tie_shared(g, &mut st)?;
    Ok(collect(g, st, &chans))
}

/// Parameter sharing in the analysis. A shared tensor has several users: its owner (node, param)
/// and every (node, param) that borrows it. Each user's channel rule touched it in its own terms;
/// removing an index of the one tensor removes it for all of them, so for every (axis, index):
///
/// - when every user touches it, each with one element, those elements are unified (the same
///   channel for all users: an embedding's width and a tied output layer's input features);
/// - otherwise (a user does not index that position by channels, as an embedding does not its
///   vocabulary rows while a tied output layer's rows are its output channels; or a user touches
///   it with several elements) the elements that touch it are protected, the user that cannot
///   follow named as the reason: different users would need different slices of one tensor.
///
/// Touches keep the borrower's names here; [`collect`] files them under the owner's.
fn tie_shared(g: &Graph, st: &mut State) -> Result<()> {
    // tensor id per user, and the users of each tensor
    let mut tensor_of: HashMap<(usize, &str), usize> = HashMap::new();
    let mut users: Vec<Vec<usize>> = Vec::new(); // node indices, per tensor
    let index_of: HashMap<&str, usize> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    for (ni, n) in g.nodes.iter().enumerate() {
        for (k, r) in &n.shared {
            let &oi = index_of.get(r.node.as_str()).ok_or_else(|| {
                GraphError::param(&n.name, k, format!("is borrowed from {r}: no such node"))
            })?;
            let t = *tensor_of.entry((oi, r.param.as_str())).or_insert_with(|| {
                users.push(vec![oi]);
                users.len() - 1
            });
            tensor_of.insert((ni, k.as_str()), t);
            users[t].push(ni);
        }
    }
    if users.is_empty() {
        return Ok(());
    }
    // (tensor, axis, index) -> (user node, element) of every touch
    let mut slots: BTreeMap<(usize, usize, usize), Vec<(usize, Elem)>> = BTreeMap::new();
    for &(ni, param, axis, index, e) in &st.touches {
        if let Some(&t) = tensor_of.get(&(ni, param)) {
            slots.entry((t, axis, index)).or_default().push((ni, e));
        }
    }
    // per user that cannot follow, the elements it refuses
    let mut refused: BTreeMap<usize, Vec<Elem>> = BTreeMap::new();
    for ((t, _, _), touches) in slots.iter_mut() {
        touches.sort_unstable();
        touches.dedup();
        let by: BTreeSet<usize> = touches.iter().map(|&(ni, _)| ni).collect();
        if by.len() == users[*t].len() && by.len() == touches.len() {
            for w in touches.windows(2) {
                st.couple(w[0].1, w[1].1);
            }
        } else {
            // the user that cannot follow: one that does not touch the slot, else one that
            // touches it more than once
            let who = users[*t]
                .iter()
                .copied()
                .find(|u| !by.contains(u))
                .or_else(|| {
                    by.iter()
                        .copied()
                        .find(|u| touches.iter().filter(|(n, _)| n == u).count() > 1)
                })
                .unwrap_or(users[*t][0]);
            refused
                .entry(who)
                .or_default()
                .extend(touches.iter().map(|&(_, e)| e));
        }
    }
    for (who, elems) in refused {
        let node = &g.nodes[who];
        let why = Protection::Op {
            node: node.name.clone(),
            op: node.op.type_name().to_string(),
        };
        let protected = st.find(PROTECTED);
        let mut open: Vec<Elem> = elems
            .into_iter()
            .filter(|&e| st.find(e) != protected)
            .collect();
        open.sort_unstable();
        open.dedup();
        if open.len() > 1 {
            let name = format!("`{}` ({})", node.name, node.op.type_name());
            if !st.blocked_by.contains(&name) {
                st.blocked_by.push(name);
            }
        }
        for e in open {
            st.protect(e, why.clone());
        }
    }
    Ok(())
}

fn collect(g: &Graph, mut st: State, chans: &HashMap<String, Option<Chan>>) -> ChannelAnalysis {
    let protected = st.find(PROTECTED);
    // unit per root that has touches and is not protected
    let mut unit_of_root: BTreeMap<Elem, usize> = BTreeMap::new();
    let mut slices: Vec<BTreeMap<SliceKey, BTreeSet<usize>>> = Vec::new();
    let mut roots_in_order: Vec<Elem> = Vec::new();
    let touches = std::mem::take(&mut st.touches);
    for &(ni, param, axis, index, e) in &touches {
        let r = st.find(e);
        if r == protected {
            continue;
        }
        // a borrowed parameter's slices are its owner's (one tensor, sliced once)
        let (node, param) = match g.nodes[ni].shared.get(param) {
            Some(o) => (o.node.clone(), o.param.clone()),
            None => (g.nodes[ni].name.clone(), param.to_string()),
        };
        let u = *unit_of_root.entry(r).or_insert_with(|| {
            slices.push(BTreeMap::new());
            roots_in_order.push(r);
            slices.len() - 1
        });
        slices[u]
            .entry(SliceKey { node, param, axis })
            .or_default()
            .insert(index);
    }
    // groups: spaces connected through unified elements
    let nspaces = st.spaces.len();
    let mut sp: Vec<usize> = (0..nspaces).collect();
    fn sfind(sp: &mut [usize], mut x: usize) -> usize {
        while sp[x] != x {
            sp[x] = sp[sp[x]];
            x = sp[x];
        }
        x
    }
    let mut first_space_of_root: HashMap<Elem, usize> = HashMap::new();
    for e in 1..st.parent.len() {
        let r = st.find(e);
        let s = st.space[e];
        match first_space_of_root.get(&r) {
            Some(&s0) => {
                let (a, b) = (sfind(&mut sp, s0), sfind(&mut sp, s));
                if a != b {
                    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                    sp[hi] = lo;
                }
            }
            None => {
                first_space_of_root.insert(r, s);
            }
        }
    }
    let mut group_of_space: BTreeMap<usize, usize> = BTreeMap::new();
    let mut groups: Vec<ChannelGroup> = Vec::new();
    let mut units = Vec::with_capacity(slices.len());
    for (u, r) in roots_in_order.iter().enumerate() {
        let s = sfind(&mut sp, first_space_of_root[r]);
        let gi = *group_of_space.entry(s).or_insert_with(|| {
            groups.push(ChannelGroup {
                name: st.spaces[s].node.clone(),
                label: st.spaces[s].label.to_string(),
                units: Vec::new(),
                nodes: Vec::new(),
            });
            groups.len() - 1
        });
        groups[gi].units.push(u);
        let sl: BTreeMap<SliceKey, Vec<usize>> = std::mem::take(&mut slices[u])
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        for k in sl.keys() {
            if !groups[gi].nodes.contains(&k.node) {
                groups[gi].nodes.push(k.node.clone());
            }
        }
        units.push(Unit {
            id: u,
            group: gi,
            sources: Vec::new(),
            slices: sl,
        });
    }
    for e in 1..st.parent.len() {
        let r = st.find(e);
        if let Some(&u) = unit_of_root.get(&r) {
            let node = &st.spaces[st.space[e]].node;
            if !units[u].sources.contains(node) {
                units[u].sources.push(node.clone());
            }
        }
    }
    let protected_spaces = protected_spaces(&mut st, protected);
    let values = chans
        .iter()
        .filter_map(|(name, c)| {
            let c = c.as_ref()?;
            let ids = c
                .elems
                .iter()
                .map(|&e| unit_of_root.get(&st.find(e)).copied())
                .collect();
            Some((name.clone(), (c.axis, ids)))
        })
        .collect();
    ChannelAnalysis {
        units,
        groups,
        blocked_by: std::mem::take(&mut st.blocked_by),
        protected_spaces,
        values,
    }
}

/// The spaces (other than graph inputs') with protected elements, and the reasons recorded on
/// the classes those elements are coupled to.
fn protected_spaces(st: &mut State, protected: Elem) -> Vec<ProtectedSpace> {
    let mut why: HashMap<Elem, BTreeSet<Protection>> = HashMap::new();
    for (e, r) in std::mem::take(&mut st.reasons) {
        let root = st.link_root(e);
        why.entry(root).or_default().insert(r);
    }
    let mut per_space: BTreeMap<usize, (usize, usize, BTreeSet<Protection>)> = BTreeMap::new();
    for e in 1..st.parent.len() {
        let s = st.space[e];
        let entry = per_space.entry(s).or_default();
        entry.0 += 1;
        if st.find(e) == protected {
            entry.1 += 1;
            let root = st.link_root(e);
            if let Some(r) = why.get(&root) {
                entry.2.extend(r.iter().cloned());
            }
        }
    }
    per_space
        .into_iter()
        .filter(|(s, (_, p, _))| *p > 0 && st.spaces[*s].label != "input")
        .map(|(s, (size, protected, reasons))| ProtectedSpace {
            node: st.spaces[s].node.clone(),
            label: st.spaces[s].label.to_string(),
            size,
            protected,
            reasons: reasons.into_iter().collect(),
        })
        .collect()
}

/// What an op's `adapt` sees of one input after units were removed.
pub struct AdaptInput<'a> {
    pub old_shape: &'a [usize],
    pub new_shape: &'a [usize],
    /// the input's channel axis and which positions along it were kept (None: no channels)
    pub kept: Option<(usize, Vec<bool>)>,
}

impl ChannelAnalysis {
    /// Per (node, param, axis): the indices the given units remove. Checks unit ids.
    pub fn removal_plan(&self, remove: &[usize]) -> Result<BTreeMap<SliceKey, BTreeSet<usize>>> {
        let mut plan: BTreeMap<SliceKey, BTreeSet<usize>> = BTreeMap::new();
        for &u in remove {
            let unit = self.units.get(u).ok_or_else(|| {
                GraphError::Invalid(format!(
                    "unit {u} does not exist (the analysis has {} units)",
                    self.units.len()
                ))
            })?;
            for (k, idx) in &unit.slices {
                plan.entry(k.clone())
                    .or_default()
                    .extend(idx.iter().copied());
            }
        }
        Ok(plan)
    }

    /// Checks that no parameter axis would be emptied, returning what each slicing keeps.
    fn kept_indices(&self, g: &Graph, remove: &[usize]) -> Result<Vec<Sliced>> {
        let plan = self.removal_plan(remove)?;
        let mut out = Vec::with_capacity(plan.len());
        for (key, removed) in plan {
            let len = param_len(g, &key)?;
            let kept: Vec<u32> = (0..len)
                .filter(|i| !removed.contains(i))
                .map(|i| i as u32)
                .collect();
            if kept.is_empty() {
                return Err(GraphError::Invalid(format!(
                    "removing these channels would leave `{}` with zero width ({} has {len} \
                     entries along axis {}, all removed)",
                    key.node, key.param, key.axis
                )));
            }
            out.push(Sliced { key, kept, len });
        }
        Ok(out)
    }

    /// Takes units out of `remove` until no parameter axis and no value's channel axis would lose
    /// all its entries: for each that would be emptied, the unit in it with the highest
    /// `priority` stays. Returns each unit taken back with what its removal would have emptied
    /// (e.g. "`linear2`.weight axis 0 (all 4 entries)", "value `add1` (every channel)").
    pub fn keep_nonempty(
        &self,
        g: &Graph,
        remove: &mut Vec<usize>,
        priority: &dyn Fn(usize) -> f64,
    ) -> Result<Vec<(usize, String)>> {
        let mut taken_back = Vec::new();
        loop {
            let plan = self.removal_plan(remove)?;
            let mut emptied: Option<(BTreeSet<usize>, String)> = None;
            for (key, removed) in &plan {
                let len = param_len(g, key)?;
                if removed.len() >= len {
                    let units = remove
                        .iter()
                        .copied()
                        .filter(|&u| self.units[u].slices.contains_key(key));
                    let what = format!(
                        "`{}`.{} axis {} (all {len} entries)",
                        key.node, key.param, key.axis
                    );
                    emptied = Some((units.collect(), what));
                    break;
                }
            }
            if emptied.is_none() {
                let removed: BTreeSet<usize> = remove.iter().copied().collect();
                emptied = self
                    .values
                    .iter()
                    .find(|(_, (_, ids))| {
                        ids.iter().all(|u| u.is_some_and(|u| removed.contains(&u)))
                    })
                    .map(|(name, (_, ids))| {
                        let units = ids.iter().flatten().copied().collect();
                        (units, format!("value `{name}` (every channel)"))
                    });
            }
            let Some((candidates, what)) = emptied else {
                return Ok(taken_back);
            };
            let best = remove
                .iter()
                .enumerate()
                .filter(|(_, u)| candidates.contains(u))
                .max_by(|a, b| priority(*a.1).total_cmp(&priority(*b.1)))
                .map(|(i, _)| i);
            match best {
                Some(i) => taken_back.push((remove.swap_remove(i), what)),
                None => return Ok(taken_back),
            }
        }
    }

    /// Physically removes the units: every slice they index is deleted, ops re-derive their
    /// attributes, and the graph is validated. On error the graph is unchanged. Returns what each
    /// sliced parameter axis kept.
    pub fn remove(&self, g: &mut Graph, remove: &[usize]) -> Result<Vec<Sliced>> {
        let sliced = self.kept_indices(g, remove)?;
        let old_shapes = g.validate()?;
        let mut work = g.try_clone()?;
        for s in &sliced {
            work.select(&s.key.node, &s.key.param, s.key.axis, &s.kept)?;
        }
        let removed: BTreeSet<usize> = remove.iter().copied().collect();
        let mut new_shapes: HashMap<String, Vec<usize>> = work
            .inputs
            .iter()
            .map(|i| (i.name.clone(), i.shape.clone()))
            .collect();
        for node in &mut work.nodes {
            let kept_of = |v: &str| {
                self.values.get(v).map(|(axis, ids)| {
                    let k = ids
                        .iter()
                        .map(|u| !u.is_some_and(|u| removed.contains(&u)))
                        .collect();
                    (*axis, k)
                })
            };
            let ins: Vec<AdaptInput> = node
                .inputs
                .iter()
                .map(|i| AdaptInput {
                    old_shape: &old_shapes[i],
                    new_shape: &new_shapes[i],
                    kept: kept_of(i),
                })
                .collect();
            node.op.rules_mut().adapt(&ins);
            let in_shapes: Vec<&[usize]> = ins.iter().map(|a| a.new_shape).collect();
            let out = node
                .op
                .rules()
                .infer(&in_shapes)
                .map_err(|m| GraphError::shape(&node.name, node.op.type_name(), m))?;
            new_shapes.insert(node.name.clone(), out);
        }
        work.validate()?;
        *g = work;
        Ok(sliced)
    }

    /// The masked reference of [`remove`](Self::remove): see [`mask_slices`].
    pub fn mask(&self, g: &mut Graph, remove: &[usize]) -> Result<()> {
        self.kept_indices(g, remove)?;
        mask_slices(g, &self.removal_plan(remove)?)
    }

    /// The group with this [`ChannelGroup::key`] (or, for channel groups, this node name).
    pub fn group(&self, key: &str) -> Option<&ChannelGroup> {
        self.groups.iter().find(|gr| gr.key() == key)
    }
}

/// One parameter axis sliced by a removal: its length before, and the indices it kept.
#[derive(Clone, Debug)]
pub struct Sliced {
    pub key: SliceKey,
    pub kept: Vec<u32>,
    pub len: usize,
}

fn param_len(g: &Graph, key: &SliceKey) -> Result<usize> {
    Ok(g.node(&key.node)?
        .params
        .get(&key.param)
        .ok_or_else(|| GraphError::param(&key.node, &key.param, "no such parameter"))?
        .tensor()
        .dim(key.axis)?)
}

/// Zeroes every listed index of every (node, param, axis) through the parameter's mask (combined
/// with any mask it has). Normalisations read their weight's mask to take statistics over kept
/// channels only, so masking computes the same function as removing.
pub fn mask_slices(g: &mut Graph, removed: &BTreeMap<SliceKey, BTreeSet<usize>>) -> Result<()> {
    for (k, removed) in removed {
        let p = &g.node(&k.node)?.params[&k.param];
        let t = p.tensor();
        let len = param_len(g, k)?;
        let v: Vec<f32> = (0..len)
            .map(|i| if removed.contains(&i) { 0.0 } else { 1.0 })
            .collect();
        let mut bshape = vec![1usize; t.rank()];
        bshape[k.axis] = len;
        let m = Tensor::from_vec(v, bshape, t.device())?
            .to_dtype(t.dtype())?
            .broadcast_as(t.shape())?
            .contiguous()?;
        let m = match &p.mask {
            Some(old) => (old * m)?,
            None => m,
        };
        g.set_mask(&k.node, &k.param, m)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GraphBuilder;

    #[test]
    fn the_users_of_a_shared_tensor_share_its_elements() {
        // two Linear 4 -> 4 on different inputs, the second borrowing the first's weight: their
        // input channels and their output channels each become one set of units
        let mut b = GraphBuilder::new("tied", 0);
        let x = b.input("x", &[4]);
        let p = b.named("p").linear(&x, 4).unwrap();
        let q = b.named("q").linear(&x, 4).unwrap();
        let a = b.named("a").linear(&p, 4).unwrap();
        let c = b
            .named("c")
            .shared_param("weight", "a", "weight")
            .linear(&q, 4)
            .unwrap();
        let s = b.add(&a, &c).unwrap();
        let y = b.linear(&s, 2).unwrap();
        let g = b.finish(&[&y]).unwrap();
        let an = analyse(&g).unwrap();
        // p's and q's channels are unified through the shared columns
        let gr = an.group("p").expect("p's channels are a group");
        assert_eq!(gr.units.len(), 4);
        for &u in &gr.units {
            let nodes: Vec<&str> = an.units[u].slices.keys().map(|k| k.node.as_str()).collect();
            assert!(nodes.contains(&"q") && nodes.contains(&"a"), "{nodes:?}");
            assert!(
                !nodes.contains(&"c"),
                "the borrower's slices are the owner's"
            );
        }
        // removing one unit of p removes column u of the one weight for both users
        let mut pruned = g.try_clone().unwrap();
        an.remove(&mut pruned, &[gr.units[1]]).unwrap();
        let w = pruned.node("a").unwrap().params["weight"]
            .tensor()
            .dims()
            .to_vec();
        assert_eq!(w, vec![4, 3]);
        pruned.validate().unwrap();
    }
}
