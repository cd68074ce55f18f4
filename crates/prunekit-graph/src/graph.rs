//! The model graph: named inputs, typed nodes in topological order with their parameters and masks,
//! named outputs. Shapes are per sample; the batch axis is implicit.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{GraphError, Result};
use crate::ops::{Init, Op, ParamDecl, Role};

/// What a model input carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// real values (images, features)
    #[default]
    Float,
    /// integer token or category ids (u32)
    Ids,
}

/// A model input: its name and per-sample shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(default)]
    pub kind: InputKind,
}

/// A named parameter of a node. Masked positions (mask == 0) are kept exactly zero in `value`.
#[derive(Debug)]
pub struct Param {
    pub value: Var,
    pub mask: Option<Tensor>,
    pub role: Role,
}

impl Param {
    pub fn tensor(&self) -> &Tensor {
        self.value.as_tensor()
    }
    /// Whether unstructured pruning masks this parameter and sparsity figures count it: a weight
    /// matrix or kernel (`Role::Weight` of rank >= 2: Linear, Conv, attention projections,
    /// recurrent weights, embedding tables). Biases, norm scales and buffers are not.
    pub fn is_prunable_weight(&self) -> bool {
        self.role == Role::Weight && self.tensor().rank() >= 2
    }
    fn deep_copy(&self) -> Result<Param> {
        Ok(Param {
            value: Var::from_tensor(&self.value.as_tensor().copy()?)?,
            mask: self.mask.as_ref().map(|m| m.copy()).transpose()?,
            role: self.role,
        })
    }
}

/// `t` where `mask` (0 / 1) is nonzero, +0.0 elsewhere (also where `t` is negative, infinite or
/// NaN, which `t * mask` would leave -0.0 or NaN).
fn masked(t: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok(mask.ne(0.0)?.where_cond(t, &t.zeros_like()?)?)
}

/// Elements of `t` that are exactly zero, counted in integers (exact at any size: an f32 sum of a
/// 0/1 tensor stops counting at 2^24). NaN counts as nonzero.
pub fn count_zeros(t: &Tensor) -> Result<usize> {
    Ok(t.eq(0.0)?
        .flatten_all()?
        .to_vec1::<u8>()?
        .iter()
        .filter(|&&z| z != 0)
        .count())
}

/// Elements of `t` that are not zero (see [`count_zeros`]).
pub fn count_nonzeros(t: &Tensor) -> Result<usize> {
    Ok(t.elem_count() - count_zeros(t)?)
}

/// Rows (indices along axis 0) of `t` that hold at least one nonzero value; 0 for a scalar.
pub fn live_rows(t: &Tensor) -> Result<usize> {
    let Some(&rows) = t.dims().first() else {
        return Ok(0);
    };
    let zero = t.eq(0.0)?.flatten_all()?.to_vec1::<u8>()?;
    let per = zero.len() / rows.max(1);
    if per == 0 {
        return Ok(0);
    }
    Ok(zero.chunks(per).filter(|r| r.contains(&0)).count())
}

/// Zeros among the prunable weights ([`Param::is_prunable_weight`]): what every sparsity figure
/// is computed from, so zero biases (BatchNorm's beta starts at 0) never count as sparsity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightCounts {
    /// elements of the prunable weights
    pub weights: usize,
    /// of them exactly zero
    pub zeros: usize,
}

impl WeightCounts {
    /// Counts over the prunable weights among `params`.
    pub fn of<'a>(params: impl IntoIterator<Item = &'a Param>) -> Result<Self> {
        let mut c = Self::default();
        for p in params.into_iter().filter(|p| p.is_prunable_weight()) {
            c.weights += p.tensor().elem_count();
            c.zeros += count_zeros(p.tensor())?;
        }
        Ok(c)
    }
    /// zeros / weights (0 without weights).
    pub fn sparsity(&self) -> f64 {
        if self.weights == 0 {
            0.0
        } else {
            self.zeros as f64 / self.weights as f64
        }
    }
}

/// The owner of a shared parameter: parameter `param` of node `node` (see [`Node::shared`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamRef {
    pub node: String,
    pub param: String,
}

impl std::fmt::Display for ParamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`.{}", self.node, self.param)
    }
}

/// One op applied to named inputs, owning its parameters.
///
/// A node may *borrow* a parameter its op declares from another node instead of owning it
/// (parameter sharing: a language model's output layer tied to its embedding table). A borrowed
/// parameter is listed in `shared` (its name in this node -> the owner's node and parameter) and
/// has no entry in `params`, so every pass that iterates `params` (counts, masks, optimizers,
/// files) sees the one tensor once, on its owner. [`Graph::validate`] checks that the owner owns
/// it (no chains) with the shape this node's op declares; the runtime, the dependency analysis and
/// the writers resolve it through [`Graph::param_of`].
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
    pub params: BTreeMap<String, Param>,
    /// parameters borrowed from other nodes: name in this node -> owner (never also in `params`)
    pub shared: BTreeMap<String, ParamRef>,
}

impl Node {
    /// A node owning `params` and borrowing nothing.
    pub fn new(
        name: impl Into<String>,
        op: Op,
        inputs: Vec<String>,
        params: BTreeMap<String, Param>,
    ) -> Self {
        Self {
            name: name.into(),
            op,
            inputs,
            params,
            shared: BTreeMap::new(),
        }
    }

    /// Whether the node has parameter `name`, owned or borrowed.
    pub fn has_param(&self, name: &str) -> bool {
        self.params.contains_key(name) || self.shared.contains_key(name)
    }
}

/// A model: inputs, nodes in topological order, outputs, and free-form metadata (task, dataset,
/// normalisation) that travels with the model file.
#[derive(Debug)]
pub struct Graph {
    pub name: String,
    pub inputs: Vec<InputSpec>,
    pub nodes: Vec<Node>,
    pub outputs: Vec<String>,
    pub meta: BTreeMap<String, serde_json::Value>,
    /// Tensors the model's file held that no node computes with (BERT's pooler, when the graph
    /// stops at `last_hidden_state`), by their key in that file: not parameters (not counted,
    /// trained or pruned), kept so that saving and exporting write them back and nothing read is
    /// lost.
    pub carried: BTreeMap<String, Tensor>,
}

/// Per-sample shape of every value (inputs and node outputs) by name.
pub type Shapes = HashMap<String, Vec<usize>>;

/// The most elements one tensor may hold: a graph input or node output (per sample, without the
/// batch axis) or a parameter. 2^31 elements are 8 GiB of f32, far beyond any real model's single
/// tensor (the largest embedding matrices hold about 2^30), so a file declaring more is corrupt or
/// hostile, and [`Graph::validate`] refuses it before anything is allocated.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 31;

/// The most elements a graph may declare in total: every parameter plus every value of one sample.
/// 2^34 elements are 64 GiB of f32.
pub const MAX_TOTAL_ELEMENTS: u64 = 1 << 34;

/// The largest magnitude an integer attribute of an op may have (channels, features, kernel,
/// stride, padding, heads, axes, ...): 2^31. It keeps every shape rule's arithmetic far from
/// overflow; each resulting shape is bounded by [`MAX_TENSOR_ELEMENTS`] on its own.
pub const MAX_ATTRIBUTE: u64 = 1 << 31;

/// The number of elements of `shape`, or None when the product overflows u64.
pub fn element_count(shape: &[usize]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
}

/// The element count of `shape` when within [`MAX_TENSOR_ELEMENTS`]; otherwise the problem in words.
fn bounded_elements(shape: &[usize]) -> std::result::Result<u64, String> {
    match element_count(shape) {
        Some(n) if n <= MAX_TENSOR_ELEMENTS => Ok(n),
        n => Err(format!(
            "shape {shape:?} has {} elements, more than the limit of 2^31 ({MAX_TENSOR_ELEMENTS}) per tensor",
            n.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
        )),
    }
}

/// An error once the running total of declared elements exceeds [`MAX_TOTAL_ELEMENTS`] (`at`: where).
fn check_total(total: u64, at: &str) -> Result<()> {
    if total > MAX_TOTAL_ELEMENTS {
        return Err(GraphError::Invalid(format!(
            "up to {at}, the graph's parameters and values of one sample hold {total} elements, more than the limit of 2^34 ({MAX_TOTAL_ELEMENTS})"
        )));
    }
    Ok(())
}

/// The first integer in an op's serialised attributes whose magnitude exceeds [`MAX_ATTRIBUTE`], as
/// (attribute path, value).
fn oversized_attribute(v: &serde_json::Value, path: &str) -> Option<(String, String)> {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            let big = n.as_u64().is_some_and(|u| u > MAX_ATTRIBUTE)
                || n.as_i64().is_some_and(|i| i.unsigned_abs() > MAX_ATTRIBUTE);
            big.then(|| (path.to_string(), n.to_string()))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| oversized_attribute(x, &format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(k, x)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            oversized_attribute(x, &p)
        }),
        _ => None,
    }
}

/// Checks what a node's op declares before any shape rule runs or anything is allocated: every
/// integer attribute within [`MAX_ATTRIBUTE`], every declared parameter within
/// [`MAX_TENSOR_ELEMENTS`]. Returns the elements of its declared parameters.
///
/// Errors: [`GraphError::Shape`] naming the node and the attribute, or [`GraphError::Param`] naming
/// the parameter.
pub fn check_declared_sizes(node: &str, op: &Op) -> Result<u64> {
    let attrs = serde_json::to_value(op)
        .map_err(|e| GraphError::shape(node, op.type_name(), e.to_string()))?;
    if let Some((path, value)) = oversized_attribute(&attrs, "") {
        return Err(GraphError::shape(
            node,
            op.type_name(),
            format!("attribute `{path}` = {value} exceeds the limit of 2^31 ({MAX_ATTRIBUTE})"),
        ));
    }
    let mut total = 0u64;
    for d in op.rules().params() {
        total += bounded_elements(&d.shape).map_err(|m| GraphError::param(node, d.name, m))?;
    }
    Ok(total)
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/'))
}

/// Fresh parameters for a declaration list.
pub fn init_params(
    decls: &[ParamDecl],
    dtype: DType,
    device: &Device,
    rng: &mut rand::rngs::StdRng,
) -> Result<BTreeMap<String, Param>> {
    let mut out = BTreeMap::new();
    for d in decls {
        let n: usize = d.shape.iter().product();
        let data: Vec<f32> = match d.init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Constant { value } => vec![value as f32; n],
            Init::FanInUniform { fan_in } => {
                let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
            }
            Init::Normal { std } => (0..n)
                .map(|_| {
                    // Box-Muller from the seeded generator
                    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                    let u2: f64 = rng.random();
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
                })
                .collect(),
        };
        let t = Tensor::from_vec(data, d.shape.as_slice(), device)?.to_dtype(dtype)?;
        out.insert(
            d.name.to_string(),
            Param {
                value: Var::from_tensor(&t)?,
                mask: None,
                role: d.role,
            },
        );
    }
    Ok(out)
}

impl Clone for Graph {
    /// A deep copy: the clone's parameters do not share storage with the original (parameter
    /// sharing within the graph is kept, see [`Graph::try_clone`]).
    fn clone(&self) -> Self {
        self.try_clone().expect("copying CPU tensors does not fail")
    }
}

impl Graph {
    /// A deep copy (see [`Clone`]); parameter sharing is kept: each owner's tensor is copied once
    /// and every borrower refers to the copy.
    pub fn try_clone(&self) -> Result<Graph> {
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let mut params = BTreeMap::new();
            for (k, p) in &n.params {
                params.insert(k.clone(), p.deep_copy()?);
            }
            nodes.push(Node {
                name: n.name.clone(),
                op: n.op.clone(),
                inputs: n.inputs.clone(),
                params,
                // borrowers keep their references: they resolve to the copied owners
                shared: n.shared.clone(),
            });
        }
        Ok(Graph {
            name: self.name.clone(),
            inputs: self.inputs.clone(),
            nodes,
            outputs: self.outputs.clone(),
            meta: self.meta.clone(),
            carried: self.carried.clone(),
        })
    }

    /// Checks names, wiring, every op's shape rule and every parameter against its declaration;
    /// returns the per-sample shape of every value.
    ///
    /// Sizes are bounded before anything could be allocated from them: each input, parameter and
    /// inferred value holds at most [`MAX_TENSOR_ELEMENTS`], all of them together at most
    /// [`MAX_TOTAL_ELEMENTS`], and integer op attributes stay within [`MAX_ATTRIBUTE`]; errors name
    /// the input, node or parameter.
    pub fn validate(&self) -> Result<Shapes> {
        let mut shapes: Shapes = HashMap::new();
        let mut total = 0u64;
        for i in &self.inputs {
            if !valid_name(&i.name) {
                return Err(GraphError::InvalidName(i.name.clone()));
            }
            if i.shape.contains(&0) {
                return Err(GraphError::Invalid(format!(
                    "input `{}` has shape {:?}: every dimension must be at least 1",
                    i.name, i.shape
                )));
            }
            total += bounded_elements(&i.shape).map_err(|msg| GraphError::Input {
                name: i.name.clone(),
                msg: format!("{msg} per sample"),
            })?;
            if shapes.insert(i.name.clone(), i.shape.clone()).is_some() {
                return Err(GraphError::DuplicateName(i.name.clone()));
            }
        }
        check_total(total, "the inputs")?;
        for node in &self.nodes {
            if !valid_name(&node.name) {
                return Err(GraphError::InvalidName(node.name.clone()));
            }
            let mut ins = Vec::with_capacity(node.inputs.len());
            for i in &node.inputs {
                ins.push(shapes.get(i).ok_or_else(|| GraphError::UnknownInput {
                    node: node.name.clone(),
                    input: i.clone(),
                })?);
            }
            let ins: Vec<&[usize]> = ins.iter().map(|s| s.as_slice()).collect();
            total += check_declared_sizes(&node.name, &node.op)?;
            let out = node
                .op
                .rules()
                .infer(&ins)
                .map_err(|m| GraphError::shape(&node.name, node.op.type_name(), m))?;
            total += bounded_elements(&out).map_err(|m| {
                GraphError::shape(
                    &node.name,
                    node.op.type_name(),
                    format!("output {m} per sample"),
                )
            })?;
            check_total(total, &format!("node `{}`", node.name))?;
            self.check_params(node)?;
            self.check_shared(node)?;
            if shapes.insert(node.name.clone(), out).is_some() {
                return Err(GraphError::DuplicateName(node.name.clone()));
            }
        }
        if self.outputs.is_empty() {
            return Err(GraphError::Invalid("the graph has no outputs".into()));
        }
        for o in &self.outputs {
            if !shapes.contains_key(o) {
                return Err(GraphError::UnknownOutput(o.clone()));
            }
        }
        Ok(shapes)
    }

    fn check_params(&self, node: &Node) -> Result<()> {
        let decls = node.op.rules().params();
        for d in &decls {
            if node.shared.contains_key(d.name) {
                if node.params.contains_key(d.name) {
                    return Err(GraphError::param(
                        &node.name,
                        d.name,
                        "is both owned and borrowed (listed in `shared`)",
                    ));
                }
                continue; // checked by check_shared
            }
            let p = node
                .params
                .get(d.name)
                .ok_or_else(|| GraphError::param(&node.name, d.name, "missing"))?;
            if p.tensor().dims() != d.shape.as_slice() {
                return Err(GraphError::param(
                    &node.name,
                    d.name,
                    format!(
                        "has shape {:?}, the op's attributes need {:?}",
                        p.tensor().dims(),
                        d.shape
                    ),
                ));
            }
            if let Some(m) = &p.mask {
                if m.dims() != d.shape.as_slice() {
                    return Err(GraphError::param(
                        &node.name,
                        d.name,
                        format!("mask has shape {:?}, expected {:?}", m.dims(), d.shape),
                    ));
                }
            }
        }
        for k in node.params.keys() {
            if !decls.iter().any(|d| d.name == k) {
                return Err(GraphError::param(
                    &node.name,
                    k,
                    format!("is not a parameter of a {} op", node.op.type_name()),
                ));
            }
        }
        Ok(())
    }

    /// Checks every parameter `node` borrows: the borrowing op declares it, the owner is another
    /// node that owns it (a borrowed parameter cannot be lent on: no chains), with the declared
    /// shape and role. Errors name both nodes.
    fn check_shared(&self, node: &Node) -> Result<()> {
        if node.shared.is_empty() {
            return Ok(());
        }
        let decls = node.op.rules().params();
        for (name, r) in &node.shared {
            let Some(d) = decls.iter().find(|d| d.name == name) else {
                return Err(GraphError::param(
                    &node.name,
                    name,
                    format!(
                        "is borrowed from {r} but is not a parameter of a {} op",
                        node.op.type_name()
                    ),
                ));
            };
            let err = |msg: String| GraphError::param(&node.name, name, msg);
            if r.node == node.name {
                return Err(err(format!(
                    "is borrowed from {r}: a node cannot borrow from itself"
                )));
            }
            let owner = self
                .nodes
                .iter()
                .find(|n| n.name == r.node)
                .ok_or_else(|| {
                    err(format!(
                        "is borrowed from {r}, but the graph has no node `{}`",
                        r.node
                    ))
                })?;
            let Some(p) = owner.params.get(&r.param) else {
                let why = match owner.shared.get(&r.param) {
                    Some(o) => format!(
                        "borrows it from {o} itself; borrow from the owner directly (no chains)"
                    ),
                    None => format!("has no parameter `{}`", r.param),
                };
                return Err(err(format!(
                    "is borrowed from {r}, but node `{}` {why}",
                    r.node
                )));
            };
            if p.tensor().dims() != d.shape.as_slice() {
                return Err(err(format!(
                    "is borrowed from {r} of shape {:?}, but the {} op of `{}` needs {:?}",
                    p.tensor().dims(),
                    node.op.type_name(),
                    node.name,
                    d.shape
                )));
            }
            if p.role != d.role {
                return Err(err(format!(
                    "is borrowed from {r}, a {:?}, but the {} op of `{}` declares a {:?}",
                    p.role,
                    node.op.type_name(),
                    node.name,
                    d.role
                )));
            }
        }
        Ok(())
    }

    /// Checks the parameters of node `node` as [`Graph::validate`] does: every declared parameter
    /// owned with its declared shape or borrowed from an owner that owns it with that shape.
    pub fn check_node_params(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        self.check_params(n)?;
        self.check_shared(n)
    }

    /// Parameter `name` of `node`, owned or borrowed (resolved to the owner's [`Param`]); None when
    /// the node has no such parameter or a borrowed one's owner is missing (an invalid graph).
    pub fn param_of<'a>(&'a self, node: &'a Node, name: &str) -> Option<&'a Param> {
        match node.shared.get(name) {
            Some(r) => self
                .nodes
                .iter()
                .find(|n| n.name == r.node)
                .and_then(|o| o.params.get(&r.param)),
            None => node.params.get(name),
        }
    }

    /// The (node, param) that owns parameter `param` of node `node`: itself unless borrowed.
    pub fn owner_of(&self, node: &str, param: &str) -> Result<ParamRef> {
        let n = self.node(node)?;
        Ok(match n.shared.get(param) {
            Some(r) => r.clone(),
            None => ParamRef {
                node: node.to_string(),
                param: param.to_string(),
            },
        })
    }

    /// Every (borrowing node, its parameter name) that borrows `param` of `owner`.
    pub fn borrowers_of(&self, owner: &str, param: &str) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.shared
                    .iter()
                    .filter(|(_, r)| r.node == owner && r.param == param)
                    .map(|(k, _)| (n.name.clone(), k.clone()))
            })
            .collect()
    }

    /// The shape of every parameter of `node`, owned or borrowed (what `OpRules::resize` takes).
    pub fn param_shapes(&self, node: &Node) -> BTreeMap<String, Vec<usize>> {
        let mut shapes: BTreeMap<String, Vec<usize>> = node
            .params
            .iter()
            .map(|(k, p)| (k.clone(), p.tensor().dims().to_vec()))
            .collect();
        for k in node.shared.keys() {
            if let Some(p) = self.param_of(node, k) {
                shapes.insert(k.clone(), p.tensor().dims().to_vec());
            }
        }
        shapes
    }

    /// Ties parameter `param` of node `node` to parameter `owner_param` of node `owner`: the node
    /// drops its own tensor (and mask) and borrows the owner's from now on (see [`Node::shared`]).
    /// The node's parameters are checked as [`Graph::validate`] does (the owner owns the parameter,
    /// with the shape and role the node's op declares); on error the graph is unchanged.
    ///
    /// ```
    /// use prunekit_graph::GraphBuilder;
    /// let mut b = GraphBuilder::new("tied-lm", 0);
    /// let ids = b.ids_input("ids", &[4]);
    /// let h = b.named("embed").embedding(&ids, 10, 6).unwrap();
    /// let y = b.named("lm_head").linear(&h, 10).unwrap();
    /// let mut g = b.finish(&[&y]).unwrap();
    /// let before = g.param_count();
    /// g.tie("lm_head", "weight", "embed", "weight").unwrap();
    /// assert_eq!(g.param_count(), before - 60);
    /// ```
    pub fn tie(&mut self, node: &str, param: &str, owner: &str, owner_param: &str) -> Result<()> {
        let n = self.node_mut(node)?;
        let old = n.params.remove(param);
        n.shared.insert(
            param.to_string(),
            ParamRef {
                node: owner.to_string(),
                param: owner_param.to_string(),
            },
        );
        if let Err(e) = self.check_node_params(node) {
            let n = self.node_mut(node)?;
            n.shared.remove(param);
            if let Some(p) = old {
                n.params.insert(param.to_string(), p);
            }
            return Err(e);
        }
        Ok(())
    }

    pub fn shapes(&self) -> Result<Shapes> {
        self.validate()
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| GraphError::UnknownNode(name.to_string()))
    }

    pub fn node_mut(&mut self, name: &str) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| GraphError::UnknownNode(name.to_string()))
    }

    /// Nodes that read the value `name`, with the input position.
    pub fn consumers(&self, name: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for (pos, inp) in n.inputs.iter().enumerate() {
                if inp == name {
                    out.push((i, pos));
                }
            }
        }
        out
    }

    pub fn device(&self) -> Device {
        self.nodes
            .iter()
            .flat_map(|n| n.params.values())
            .next()
            .map(|p| p.tensor().device().clone())
            .unwrap_or_else(crate::device::default_device)
    }

    pub fn dtype(&self) -> DType {
        self.nodes
            .iter()
            .flat_map(|n| n.params.values())
            .next()
            .map(|p| p.tensor().dtype())
            .unwrap_or(DType::F32)
    }

    /// Converts every parameter and mask to `dtype` (f64 for gradient checks).
    pub fn to_dtype(&mut self, dtype: DType) -> Result<()> {
        for n in &mut self.nodes {
            for p in n.params.values_mut() {
                p.value = Var::from_tensor(&p.tensor().to_dtype(dtype)?)?;
                p.mask = p.mask.as_ref().map(|m| m.to_dtype(dtype)).transpose()?;
            }
        }
        Ok(())
    }

    /// Every owned (node, param name, param) in order: a shared parameter once, under its owner
    /// (see [`Node::shared`]).
    pub fn params(&self) -> impl Iterator<Item = (&Node, &String, &Param)> {
        self.nodes
            .iter()
            .flat_map(|n| n.params.iter().map(move |(k, p)| (n, k, p)))
    }

    /// Trainable parameters (weights and biases; not running statistics).
    pub fn trainable(&self) -> impl Iterator<Item = (&Node, &String, &Param)> {
        self.params().filter(|(_, _, p)| p.role.trainable())
    }

    /// Number of trainable parameter values.
    pub fn param_count(&self) -> usize {
        self.trainable()
            .map(|(_, _, p)| p.tensor().elem_count())
            .sum()
    }

    /// Number of nonzero trainable parameter values (weights and biases; counted in integers).
    pub fn nonzero_count(&self) -> Result<usize> {
        let mut nz = 0usize;
        for (_, _, p) in self.trainable() {
            nz += count_nonzeros(p.tensor())?;
        }
        Ok(nz)
    }

    /// Every prunable weight ([`Param::is_prunable_weight`]) as (node, param name, param), in
    /// order: what unstructured pruning masks and sparsity figures count.
    pub fn prunable_weights(&self) -> impl Iterator<Item = (&Node, &String, &Param)> {
        self.params().filter(|(_, _, p)| p.is_prunable_weight())
    }

    /// Zero and total counts of the prunable weights of the whole model.
    pub fn weight_counts(&self) -> Result<WeightCounts> {
        WeightCounts::of(self.prunable_weights().map(|(_, _, p)| p))
    }

    /// Multiply-accumulates per sample, counted from the ops and the inferred shapes.
    pub fn macs(&self) -> Result<u64> {
        Ok(self.node_macs()?.iter().map(|m| m.dense).sum())
    }

    /// Multiply-accumulates per sample when zero weights are skipped (see [`NodeMacs`]).
    pub fn effective_macs(&self) -> Result<u64> {
        let total: f64 = self.node_macs()?.iter().map(|m| m.effective).sum();
        Ok(total.round() as u64)
    }

    /// Dense and zeros-skipped MACs per sample of every node, in graph order.
    pub fn node_macs(&self) -> Result<Vec<NodeMacs>> {
        let shapes = self.validate()?;
        let mut out = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let ins: Vec<&[usize]> = n.inputs.iter().map(|i| shapes[i].as_slice()).collect();
            let rules = n.op.rules();
            let dense = rules.macs(&ins, &shapes[&n.name]);
            let mut skipped = 0f64;
            for (param, macs) in rules.weight_macs(&ins, &shapes[&n.name]) {
                // a borrowed weight skips its zeros in every node that uses it
                let Some(p) = self.param_of(n, param) else {
                    continue;
                };
                let t = p.tensor();
                if t.elem_count() > 0 {
                    skipped += macs as f64 * count_zeros(t)? as f64 / t.elem_count() as f64;
                }
            }
            out.push(NodeMacs {
                dense,
                effective: (dense as f64 - skipped).max(0.0),
            });
        }
        Ok(out)
    }

    /// Sets a mask on a parameter and zeroes the masked values. The mask holds 0 (pruned) and 1 (kept).
    /// Every masked value becomes +0.0 (not the -0.0 of a negative value times 0), kept values keep
    /// their bits: what the model format's compressed layouts restore.
    ///
    /// A borrowed parameter's mask is set on its owner (one mask for every user of the tensor).
    pub fn set_mask(&mut self, node: &str, param: &str, mask: Tensor) -> Result<()> {
        let r = self.owner_of(node, param)?;
        let (node, param) = (r.node.as_str(), r.param.as_str());
        let n = self.node_mut(node)?;
        let p = n
            .params
            .get_mut(param)
            .ok_or_else(|| GraphError::param(node, param, "no such parameter"))?;
        if mask.dims() != p.tensor().dims() {
            return Err(GraphError::param(
                node,
                param,
                format!(
                    "mask shape {:?} differs from the parameter's {:?}",
                    mask.dims(),
                    p.tensor().dims()
                ),
            ));
        }
        let mask = mask.to_dtype(p.tensor().dtype())?;
        p.value.set(&masked(p.tensor(), &mask)?)?;
        p.mask = Some(mask);
        Ok(())
    }

    /// Re-applies every mask (after an optimizer step): masked values become exactly +0.0.
    pub fn apply_masks(&self) -> Result<()> {
        for (_, _, p) in self.params() {
            if let Some(m) = &p.mask {
                p.value.set(&masked(p.tensor(), m)?)?;
            }
        }
        Ok(())
    }

    /// Removes entries `keep`'s complement along `axis` of a parameter (and its mask), then lets the
    /// op re-derive its attributes (and every node borrowing the parameter: the one tensor is sliced
    /// once for all its users). The graph may be inconsistent until every coupled slice is done.
    /// `param` must be owned by `node` (a borrowed one is an error naming its owner).
    pub fn select(&mut self, node: &str, param: &str, axis: usize, keep: &[u32]) -> Result<()> {
        let n = self.node_mut(node)?;
        if let Some(r) = n.shared.get(param) {
            return Err(GraphError::param(
                node,
                param,
                format!("is borrowed from {r}: slice the owner's"),
            ));
        }
        let p = n
            .params
            .get_mut(param)
            .ok_or_else(|| GraphError::param(node, param, "no such parameter"))?;
        let idx = Tensor::new(keep, p.tensor().device())?;
        let v = p.tensor().index_select(&idx, axis)?;
        p.value = Var::from_tensor(&v)?;
        p.mask = p
            .mask
            .as_ref()
            .map(|m| m.index_select(&idx, axis))
            .transpose()?;
        // the owner and every node borrowing this parameter re-derive their attributes
        let mut users = vec![node.to_string()];
        users.extend(self.borrowers_of(node, param).into_iter().map(|(n, _)| n));
        for u in users {
            let shapes = self.param_shapes(self.node(&u)?);
            self.node_mut(&u)?.op.rules_mut().resize(&shapes);
        }
        Ok(())
    }
}

/// MACs per sample of one node: `dense` as the op counts them, `effective` with the zeros of its
/// weights skipped: every weight the op lists in `OpRules::weight_macs` (a Linear's or Conv's
/// `weight`, attention's q/k/v/o weights, a recurrent layer's weight_ih and weight_hh) saves its
/// MACs times its zero fraction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeMacs {
    pub dense: u64,
    pub effective: f64,
}

/// A seeded generator from a u64 seed; every random choice in prunekit goes through one.
pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GraphBuilder;

    #[test]
    fn counts_are_exact_above_two_to_the_24() {
        // an f32 sum of 0/1 flags stops at 2^24 = 16_777_216 (2^24 + 1 rounds back down)
        let n = (1usize << 24) + 1;
        let zeros = Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(count_zeros(&zeros).unwrap(), n);
        assert_eq!(count_nonzeros(&zeros).unwrap(), 0);
        let ones = Tensor::ones(n, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(count_nonzeros(&ones).unwrap(), n);
        let rows = Tensor::new(&[[0f32, 0.0], [0.0, 2.0], [f32::NAN, 0.0]], &Device::Cpu).unwrap();
        assert_eq!(count_zeros(&rows).unwrap(), 4, "NaN is not zero");
        assert_eq!(live_rows(&rows).unwrap(), 2);
    }

    /// Masks the first `zeros` elements (row-major) of a parameter.
    fn mask_first(g: &mut Graph, node: &str, param: &str, zeros: usize) {
        let t = g.node(node).unwrap().params[param].tensor().clone();
        let n = t.elem_count();
        let m: Vec<f32> = (0..n).map(|i| if i < zeros { 0.0 } else { 1.0 }).collect();
        let m = Tensor::from_vec(m, t.dims(), &Device::Cpu).unwrap();
        g.set_mask(node, param, m).unwrap();
    }

    /// ids [3] -> `embed` (10 x 4) -> `head` linear 4 -> 10, its weight tied to the table.
    fn tied() -> Graph {
        let mut b = GraphBuilder::new("tied", 0);
        let ids = b.ids_input("ids", &[3]);
        let h = b.named("embed").embedding(&ids, 10, 4).unwrap();
        let y = b.named("head").linear(&h, 10).unwrap();
        let mut g = b.finish(&[&y]).unwrap();
        g.tie("head", "weight", "embed", "weight").unwrap();
        g
    }

    #[test]
    fn a_borrowed_parameter_resolves_to_its_owner() {
        let g = tied();
        let head = g.node("head").unwrap();
        assert!(head.has_param("weight") && !head.params.contains_key("weight"));
        let owner = &g.node("embed").unwrap().params["weight"];
        let got = g.param_of(head, "weight").unwrap();
        assert_eq!(got.tensor().id(), owner.tensor().id());
        assert_eq!(
            g.owner_of("head", "weight").unwrap().to_string(),
            "`embed`.weight"
        );
        assert_eq!(g.owner_of("head", "bias").unwrap().node, "head");
        assert_eq!(
            g.borrowers_of("embed", "weight"),
            vec![("head".to_string(), "weight".to_string())]
        );
        assert_eq!(g.param_shapes(head)["weight"], vec![10, 4]);
        assert_eq!(g.param_count(), 40 + 10);
    }

    #[test]
    fn a_failed_tie_leaves_the_graph_as_it_was() {
        let mut g = tied();
        let before = g.param_count();
        // head.bias [10] cannot borrow the [10, 4] table
        let e = g
            .tie("head", "bias", "embed", "weight")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("head") && e.contains("embed") && e.contains("[10, 4]"),
            "{e}"
        );
        assert!(g.node("head").unwrap().params.contains_key("bias"));
        assert!(!g.node("head").unwrap().shared.contains_key("bias"));
        assert_eq!(g.param_count(), before);
        g.validate().unwrap();
    }

    #[test]
    fn selecting_a_borrowed_parameter_is_an_error_and_the_owners_resizes_both() {
        let mut g = tied();
        let e = g
            .select("head", "weight", 1, &[0, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("embed"), "{e}");
        g.select("embed", "weight", 1, &[0, 2, 3]).unwrap();
        match (&g.node("embed").unwrap().op, &g.node("head").unwrap().op) {
            (Op::Embedding(e), Op::Linear(l)) => {
                assert_eq!(e.embedding_dim, 3);
                assert_eq!((l.out_features, l.in_features), (10, 3));
            }
            other => panic!("{other:?}"),
        }
        g.validate().unwrap();
    }

    #[test]
    fn effective_macs_skip_the_zeros_of_every_weight() {
        // attention (T = 5, E = 8, 2 heads of 4) then an LSTM (hidden 6) then a linear head
        let mut b = GraphBuilder::new("seq", 0);
        let x = b.input("x", &[5, 8]);
        let a = b.attention(&x, 2, 2, 4, false, None).unwrap();
        let h = b.lstm(&a, 6, false).unwrap();
        let y = b.linear(&h, 3).unwrap();
        let mut g = b.finish(&[&y]).unwrap();
        let dense = g.macs().unwrap();
        assert_eq!(g.effective_macs().unwrap(), dense);
        // o_weight [8, 8] half zero, weight_hh [24, 6] a quarter zero, weight_ih [24, 8] none
        mask_first(&mut g, "attention1", "o_weight", 32);
        mask_first(&mut g, "lstm1", "weight_hh", 36);
        mask_first(&mut g, "attention1", "k_weight", 16);
        let (t, e, out, q) = (5u64, 8u64, 8u64, 8u64);
        let saved_o = (t * q * out) as f64 * 0.5;
        let saved_k = (t * e * q) as f64 * 0.25;
        let saved_hh = (t * 24 * 6) as f64 * 0.25;
        let want = (dense as f64 - saved_o - saved_k - saved_hh).round() as u64;
        assert_eq!(g.effective_macs().unwrap(), want);
        let per = g.node_macs().unwrap();
        assert_eq!(per.len(), 3);
        assert!((per[1].effective - (per[1].dense as f64 - saved_hh)).abs() < 1e-9);
    }
}
