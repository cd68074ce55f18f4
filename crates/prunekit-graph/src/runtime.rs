//! Executes a graph with candle: forward in eval or training mode, with or without gradient tracking,
//! with hooks that capture the inputs and outputs of chosen nodes and the input of chosen weights. Backward is candle's autodiff
//! (`loss.backward()`), through our custom ops where candle lacks a backward.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rand::rngs::StdRng;

use crate::error::{GraphError, Result};
use crate::graph::{Graph, InputKind};
use crate::ops::{Ctx, ParamView, WeightInputs};
use crate::sparse_plan::{SparseOptions, SparsePlan};

/// How a forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// training behaviour of BatchNorm (batch statistics, running-stat updates) and Dropout
    pub train: bool,
    /// build candle's autodiff graph through the parameters
    pub grad: bool,
}

impl Mode {
    /// Inference: eval behaviour, no gradients.
    pub const EVAL: Mode = Mode {
        train: false,
        grad: false,
    };
    /// Training: train behaviour and gradients.
    pub const TRAIN: Mode = Mode {
        train: true,
        grad: true,
    };
    /// Eval behaviour with gradients (gradient-based importance on a trained model).
    pub const EVAL_GRAD: Mode = Mode {
        train: false,
        grad: true,
    };
}

/// Capture requests and captured tensors.
///
/// `capture_weight_inputs` asks for the activation that multiplies a weight, keyed by (node,
/// param): the op reports it from inside its forward ([`Ctx::report_weight_input`]), so inputs
/// internal to an op are available too (attention's concatenated head outputs before `o_weight`,
/// the hidden states h_{t-1} fed to a recurrent `weight_hh`). After a run, `weight_inputs` holds
/// the pieces of every requested weight its op reported (one tensor for most ops, one per time
/// step for `weight_hh`); a weight whose op reports nothing (an embedding table) is absent. A
/// borrowed weight (`Node::shared`) is reported under the borrowing node's key, per use; the
/// criteria score a shared weight as its owner's, from the owner's key.
///
/// candle's `backward` keeps gradients of variables only, so for the nodes in `capture_grads` the
/// runtime adds a zero variable (a probe) to the node's output in a pass with `grad` on;
/// [`Hooks::output_grad`] then reads the activation gradient from the probe after `backward()`.
#[derive(Debug, Default)]
pub struct Hooks {
    pub capture_outputs: HashSet<String>,
    pub capture_inputs: HashSet<String>,
    pub capture_grads: HashSet<String>,
    pub outputs: HashMap<String, Tensor>,
    pub inputs: HashMap<String, Vec<Tensor>>,
    pub capture_weight_inputs: HashSet<(String, String)>,
    pub weight_inputs: HashMap<(String, String), Vec<Tensor>>,
    probes: HashMap<String, Var>,
}

impl Hooks {
    pub fn outputs_of<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            capture_outputs: names.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
    pub fn inputs_of<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            capture_inputs: names.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
    pub fn grads_of<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            capture_grads: names.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
    /// Asks for the input of every (node, param) weight in `keys`.
    pub fn weight_inputs_of<I: IntoIterator<Item = (String, String)>>(keys: I) -> Self {
        Self {
            capture_weight_inputs: keys.into_iter().collect(),
            ..Default::default()
        }
    }
    /// Gradient of the loss with respect to the output of node `name` (requested in `capture_grads`).
    pub fn output_grad(&self, name: &str, grads: &GradStore) -> Option<Tensor> {
        self.probes
            .get(name)
            .and_then(|v| grads.get(v.as_tensor()).cloned())
    }
}

/// Runs graphs; owns the seeded generator used by dropout and, optionally, the sparse kernels
/// chosen for a pruned model's inference.
pub struct Executor {
    rng: StdRng,
    sparse: Option<Arc<SparsePlan>>,
}

impl Executor {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: crate::graph::rng(seed),
            sparse: None,
        }
    }

    /// Runs the layers `plan` chose on the sparse kernels in every pass without gradients (passes
    /// with gradients stay dense). The plan must have been built for the graph this executor runs,
    /// after its last weight change ([`SparsePlan`]).
    pub fn with_sparse_plan(mut self, plan: Arc<SparsePlan>) -> Self {
        self.sparse = Some(plan);
        self
    }

    /// An executor for inference of `g` at `batch`: with a [`SparsePlan`] (default options, timed
    /// on this machine) when any layer of `g` is sparse enough to be a candidate, plain otherwise.
    ///
    /// # Errors
    /// As [`SparsePlan::build`].
    pub fn for_inference(g: &Graph, batch: usize) -> Result<Self> {
        let plan = SparsePlan::build(
            g,
            SparseOptions {
                batch,
                ..Default::default()
            },
        )?;
        let exec = Self::new(0);
        Ok(if plan.is_empty() {
            exec
        } else {
            exec.with_sparse_plan(Arc::new(plan))
        })
    }

    /// The sparse plan this executor uses, if any.
    pub fn sparse_plan(&self) -> Option<&SparsePlan> {
        self.sparse.as_deref()
    }

    /// Eval-mode forward without gradients; one tensor per graph output.
    pub fn eval(&mut self, g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.run(g, inputs, Mode::EVAL, None)
    }

    /// Forward pass in `mode`, filling `hooks` when given.
    pub fn run(
        &mut self,
        g: &Graph,
        inputs: &[Tensor],
        mode: Mode,
        mut hooks: Option<&mut Hooks>,
    ) -> Result<Vec<Tensor>> {
        check_inputs(g, inputs)?;
        // index of every value, and the last node that reads it, so values are dropped early
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, spec) in g.inputs.iter().enumerate() {
            index.insert(spec.name.as_str(), i);
        }
        let base = g.inputs.len();
        for (i, n) in g.nodes.iter().enumerate() {
            index.insert(n.name.as_str(), base + i);
        }
        let mut last_use = vec![usize::MAX; base + g.nodes.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            for inp in &n.inputs {
                let v = *index
                    .get(inp.as_str())
                    .ok_or_else(|| GraphError::UnknownInput {
                        node: n.name.clone(),
                        input: inp.clone(),
                    })?;
                last_use[v] = i;
            }
        }
        for o in &g.outputs {
            let v = *index
                .get(o.as_str())
                .ok_or_else(|| GraphError::UnknownOutput(o.clone()))?;
            last_use[v] = usize::MAX - 1; // never dropped
        }
        let mut values: Vec<Option<Tensor>> = inputs.iter().cloned().map(Some).collect();
        values.resize(base + g.nodes.len(), None);
        let plan = if mode.grad {
            None
        } else {
            self.sparse.as_deref()
        };
        let mut ctx = Ctx::new(mode.train, &mut self.rng);
        // the requested weights of every node; a run replaces what an earlier one captured
        let mut wanted: HashMap<String, Vec<String>> = HashMap::new();
        if let Some(h) = hooks.as_deref_mut() {
            h.weight_inputs.clear();
            for (node, param) in &h.capture_weight_inputs {
                wanted.entry(node.clone()).or_default().push(param.clone());
            }
        }
        let fuse = relu_fusions(g, hooks.as_deref());
        let mut skip = vec![false; g.nodes.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            if skip[i] {
                continue;
            }
            let xs: Vec<Tensor> = n
                .inputs
                .iter()
                .map(|inp| {
                    values[index[inp.as_str()]]
                        .clone()
                        .expect("inputs computed before use")
                })
                .collect();
            let view = ParamView::of(g, n, mode.grad);
            ctx.sparse = plan.and_then(|p| p.get(&n.name));
            ctx.weight_inputs = WeightInputs {
                wanted: wanted.get(n.name.as_str()).cloned().unwrap_or_default(),
                reported: Vec::new(),
            };
            let forward_error = |e: candle_core::Error| GraphError::Forward {
                node: n.name.clone(),
                op: n.op.type_name().to_string(),
                source: Box::new(e),
            };
            // a ReLU that is this node's only consumer may be fused into it: the ReLU's value is
            // then produced here and the ReLU node is skipped
            let fused = match fuse[i] {
                Some(j) => {
                    n.op.rules()
                        .forward_fused_relu(&xs, &view, &mut ctx)
                        .map_err(forward_error)?
                        .map(|y| (j, y))
                }
                None => None,
            };
            let (out, y) = match fused {
                Some((j, y)) => {
                    skip[j] = true;
                    (j, y)
                }
                None => (
                    i,
                    n.op.rules()
                        .forward(&xs, &view, &mut ctx)
                        .map_err(forward_error)?,
                ),
            };
            let out_name = &g.nodes[out].name;
            let mut y = y;
            if let Some(h) = hooks.as_deref_mut() {
                if mode.grad && h.capture_grads.contains(out_name) {
                    let probe = Var::zeros(y.shape(), y.dtype(), y.device())?;
                    y = (y + probe.as_tensor())?;
                    h.probes.insert(out_name.clone(), probe);
                }
                for (param, x) in std::mem::take(&mut ctx.weight_inputs.reported) {
                    h.weight_inputs
                        .entry((n.name.clone(), param))
                        .or_default()
                        .push(x);
                }
                if h.capture_inputs.contains(&n.name) {
                    h.inputs.insert(n.name.clone(), xs.clone());
                }
                if h.capture_outputs.contains(out_name) {
                    h.outputs.insert(out_name.clone(), y.clone());
                }
            }
            values[base + out] = Some(y);
            for inp in &n.inputs {
                let v = index[inp.as_str()];
                if last_use[v] == i {
                    values[v] = None;
                }
            }
        }
        Ok(g.outputs
            .iter()
            .map(|o| values[index[o.as_str()]].clone().expect("outputs kept"))
            .collect())
    }
}

/// For each node, the ReLU node that may be fused into it: the ReLU is the node's only consumer,
/// and neither the node's output nor the ReLU's input is a graph output or captured by a hook.
fn relu_fusions(g: &Graph, hooks: Option<&Hooks>) -> Vec<Option<usize>> {
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, n) in g.nodes.iter().enumerate() {
        for inp in &n.inputs {
            readers.entry(inp.as_str()).or_default().push(j);
        }
    }
    g.nodes
        .iter()
        .map(|n| {
            let r = readers.get(n.name.as_str())?;
            let j = *r.first()?;
            let relu = &g.nodes[j];
            let observed = hooks.is_some_and(|h| {
                h.capture_outputs.contains(&n.name)
                    || h.capture_grads.contains(&n.name)
                    || h.capture_inputs.contains(&relu.name)
            });
            (r.len() == 1
                && matches!(relu.op, crate::ops::Op::Relu(_))
                && relu.inputs.len() == 1
                && !g.outputs.contains(&n.name)
                && !observed)
                .then_some(j)
        })
        .collect()
}

fn check_inputs(g: &Graph, inputs: &[Tensor]) -> Result<()> {
    if inputs.len() != g.inputs.len() {
        return Err(GraphError::Invalid(format!(
            "the model takes {} input(s) ({}), got {}",
            g.inputs.len(),
            g.inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            inputs.len()
        )));
    }
    for (spec, t) in g.inputs.iter().zip(inputs) {
        let dims = t.dims();
        if dims.is_empty() || &dims[1..] != spec.shape.as_slice() {
            return Err(GraphError::Input {
                name: spec.name.clone(),
                msg: format!("expects [batch, {:?}], got {dims:?}", spec.shape),
            });
        }
        let ok = match spec.kind {
            InputKind::Float => t.dtype().is_float(),
            InputKind::Ids => matches!(t.dtype(), DType::U32 | DType::I64 | DType::U8),
        };
        if !ok {
            return Err(GraphError::Input {
                name: spec.name.clone(),
                msg: format!("expects {:?} values, got {:?}", spec.kind, t.dtype()),
            });
        }
    }
    Ok(())
}

/// Gradients of every trainable parameter present in `grads`, keyed by (node, param). A shared
/// parameter appears once, under its owner, with the gradients of all its uses summed.
pub fn param_grads(g: &Graph, grads: &GradStore) -> HashMap<(String, String), Tensor> {
    g.trainable()
        .filter_map(|(n, k, p)| {
            grads
                .get(p.tensor())
                .map(|t| ((n.name.clone(), k.clone()), t.clone()))
        })
        .collect()
}
