//! Typed ops. Each op lives in one file with all of its rules together: its attributes (serialised in
//! model.json), its shape rule, the parameters it owns, its MAC count, its forward pass (candle; the
//! backward comes from candle's autodiff or from the op's own custom kernel), and its channel rule
//! (how pruning one channel of its input or output touches its parameters).
//!
//! Adding an op: write a struct implementing [`OpRules`] in a file here, then add one line to the
//! `ops!` list below. Every pass (shape inference, counting, format, runtime, pruning) then knows it.

pub mod activation;
pub mod attention;
pub mod constant;
pub mod conv;
pub mod elementwise;
pub mod embedding;
pub mod linear;
pub mod norm;
pub mod pool;
pub mod recurrent;
pub mod resample;
pub mod shape;

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

pub use activation::{
    Clip, Dropout, Erf, Gelu, HardSigmoid, HardSwish, LeakyRelu, PRelu, Relu, Sigmoid, Silu,
    Softmax, Sqrt, Tanh,
};
pub use attention::Attention;
pub use constant::Constant;
pub use conv::{Conv1d, Conv2d, ConvTranspose2d};
pub use elementwise::{Add, Concat, Div, Mul, Sub};
pub use embedding::{Embedding, PositionalEmbedding};
pub use linear::{Linear, MatMul};
pub use norm::{BatchNorm, GroupNorm, L2Normalize, LayerNorm, RmsNorm};
pub use pool::{AvgPool2d, GlobalAvgPool, MaskedMeanPool, MaxPool2d, ReduceMean};
pub use recurrent::{Gru, Lstm};
pub use resample::{Resize, ResizeMode};
pub use shape::{Flatten, Gather, Narrow, Pad, PadMode, Reshape, Slice, Transpose};

pub use crate::channels::{AdaptInput, Chan, ChannelCx};
use crate::graph::Param;

/// What a parameter is for: trainable weights and biases, or buffers (running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Weight,
    Bias,
    Buffer,
}

impl Role {
    pub fn trainable(self) -> bool {
        !matches!(self, Role::Buffer)
    }
}

/// How a fresh parameter is initialised (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's kaiming_uniform(a=sqrt(5)) for weights and its bias rule.
    FanInUniform {
        fan_in: usize,
    },
    Zeros,
    Ones,
    Normal {
        std: f64,
    },
    /// Every element `value` (PReLU's slopes start at 0.25).
    Constant {
        value: f64,
    },
}

/// A parameter an op owns: its name, its shape as the op's attributes dictate, its role and its init.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub role: Role,
    pub init: Init,
}

impl ParamDecl {
    pub fn new(name: &'static str, shape: Vec<usize>, role: Role, init: Init) -> Self {
        Self {
            name,
            shape,
            role,
            init,
        }
    }
}

/// Execution context of one forward pass.
pub struct Ctx<'a> {
    /// training mode: batch statistics and running-stat updates in BatchNorm, active dropout
    pub train: bool,
    /// seeded generator for dropout masks
    pub rng: &'a mut rand::rngs::StdRng,
    /// the weights of the node being run whose inputs a hook asked for, and what the op reported
    /// (see [`Ctx::report_weight_input`]); the runtime fills and drains it around every node
    pub weight_inputs: WeightInputs,
    /// the node's `weight` held sparse, when the runtime runs an inference pass with a
    /// [`crate::SparsePlan`] that chose the sparse kernel for this node: Linear and Conv2d then
    /// skip the pruned weights ([`crate::kernels::sparse`])
    pub sparse: Option<&'a crate::kernels::sparse::SparseMatrix>,
}

/// Weight-input capture for one node: the requested parameter names and the reported tensors.
#[derive(Debug, Default)]
pub struct WeightInputs {
    /// parameters of the node being run whose inputs are wanted
    pub wanted: Vec<String>,
    /// (parameter, input piece) in the order the op reported them
    pub reported: Vec<(String, Tensor)>,
}

impl<'a> Ctx<'a> {
    /// A context with no weight inputs requested.
    pub fn new(train: bool, rng: &'a mut rand::rngs::StdRng) -> Self {
        Self {
            train,
            rng,
            weight_inputs: WeightInputs::default(),
            sparse: None,
        }
    }

    /// Whether a hook asked for the input of weight `param` of the node being run (ops check it
    /// before building a tensor only the report needs).
    pub fn wants_weight_input(&self, param: &str) -> bool {
        self.weight_inputs.wanted.iter().any(|p| p == param)
    }

    /// The sparse form of the node's weight for an f32 CPU input `x`, when the runtime's plan
    /// holds one (see [`Ctx::sparse`]).
    pub fn sparse_weight(&self, x: &Tensor) -> Option<&'a crate::kernels::sparse::SparseMatrix> {
        self.sparse
            .filter(|_| crate::kernels::supported(x) && x.dtype() == candle_core::DType::F32)
    }

    /// Reports the activation that multiplies weight `param` of the node being run, when a hook
    /// asked for it (otherwise nothing happens). For a matrix weight [out, in] applied as
    /// y = x W^T, `x` is [batch, .., in] (its features on the last axis); for a convolution kernel
    /// [out, in / groups, k..], `x` is the unpadded input [batch, in, spatial..] (features on axis
    /// 1). An op may report several pieces for one weight: a recurrent layer reports h_{t-1} of
    /// every step that has a recurrent term ([batch, hidden] each). The tensor is detached.
    pub fn report_weight_input(&mut self, param: &str, x: &Tensor) {
        if self.wants_weight_input(param) {
            self.weight_inputs
                .reported
                .push((param.to_string(), x.detach()));
        }
    }
}

/// The parameters of one node as the forward pass sees them: tracked variables when gradients are
/// wanted, detached tensors otherwise. A borrowed parameter ([`crate::Node::shared`]) resolves to
/// its owner's variable and mask, so under autodiff the gradients of every use of a shared tensor
/// accumulate into its one variable. Build it with [`ParamView::of`].
pub struct ParamView<'a> {
    pub node: &'a str,
    pub params: &'a BTreeMap<String, Param>,
    /// the node's borrowed parameters, resolved to their owners' (name in this node -> param)
    pub borrowed: BTreeMap<&'a str, &'a Param>,
    pub track_grad: bool,
}

impl<'a> ParamView<'a> {
    /// The view of node `n` of graph `g`, its borrowed parameters resolved to their owners'.
    pub fn of(g: &'a crate::Graph, n: &'a crate::Node, track_grad: bool) -> Self {
        let borrowed = n
            .shared
            .keys()
            .filter_map(|k| g.param_of(n, k).map(|p| (k.as_str(), p)))
            .collect();
        Self {
            node: &n.name,
            params: &n.params,
            borrowed,
            track_grad,
        }
    }

    fn param(&self, name: &str) -> Option<&'a Param> {
        self.params
            .get(name)
            .or_else(|| self.borrowed.get(name).copied())
    }
    pub fn get(&self, name: &str) -> candle_core::Result<Tensor> {
        let p = self.var(name)?;
        Ok(if self.track_grad {
            p.as_tensor().clone()
        } else {
            p.as_tensor().detach()
        })
    }
    pub fn opt(&self, name: &str) -> candle_core::Result<Option<Tensor>> {
        if self.param(name).is_some() {
            self.get(name).map(Some)
        } else {
            Ok(None)
        }
    }
    /// The mask of a parameter, if it has one (1 = kept, 0 = pruned).
    pub fn mask(&self, name: &str) -> Option<&Tensor> {
        self.param(name).and_then(|p| p.mask.as_ref())
    }
    pub fn var(&self, name: &str) -> candle_core::Result<&Var> {
        self.param(name).map(|p| &p.value).ok_or_else(|| {
            candle_core::Error::Msg(format!("node `{}`: missing parameter `{name}`", self.node))
        })
    }
}

/// The rules every op provides. Shapes are per sample (the batch axis is implicit and never named).
pub trait OpRules {
    /// Output shape from input shapes, or a message saying what does not fit.
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String>;
    /// The parameters this op owns, with shapes following from its attributes.
    fn params(&self) -> Vec<ParamDecl> {
        Vec::new()
    }
    /// Multiply-accumulates per sample.
    fn macs(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }
    /// The MACs per sample each weight takes part in, as (parameter, MACs): every element of such
    /// a weight is used equally often, so skipping its zeros saves MACs times its zero fraction
    /// ([`crate::Graph::effective_macs`]). MACs without a weight (attention scores) are not listed.
    /// Default: none.
    fn weight_macs(&self, _inputs: &[&[usize]], _output: &[usize]) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Forward pass on batched tensors (axis 0 is the batch). An op with weights reports the
    /// input of each weight through [`Ctx::report_weight_input`] (Wanda and other activation
    /// criteria read them through [`crate::Hooks`]).
    fn forward(&self, xs: &[Tensor], p: &ParamView, ctx: &mut Ctx) -> candle_core::Result<Tensor>;
    /// How channels flow through this op (for pruning): which parameter slices its inputs' and
    /// output's channels index, and how they relate (see [`crate::channels`]). The default
    /// protects every input channel: an op without a rule is never pruned through.
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        cx.opaque()
    }
    /// Re-derive attributes that depend on input widths but not on parameters (Narrow's offsets,
    /// Reshape's target) after channels were removed.
    fn adapt(&mut self, _inputs: &[AdaptInput]) {}
    /// Forward pass with a following ReLU fused in, when the op has a fused kernel for it in this
    /// context; None falls back to the two ops. The runtime calls this when a ReLU is the op's only
    /// consumer (saves a pass each way and the intermediate tensor autodiff would keep).
    fn forward_fused_relu(
        &self,
        _xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }
    /// Re-derive attributes from parameter shapes after parameters were sliced.
    fn resize(&mut self, _shapes: &BTreeMap<String, Vec<usize>>) {}
}

macro_rules! ops {
    ($($variant:ident = $tag:literal),* $(,)?) => {
        /// Every op the graph knows, serialised as `{"type": "<tag>", ...attributes}`.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum Op {
            $( #[serde(rename = $tag)] $variant($variant), )*
        }

        impl Op {
            /// The op's type name as written in model.json.
            pub fn type_name(&self) -> &'static str {
                match self { $(Op::$variant(_) => $tag,)* }
            }
            /// Every type name, for error messages and docs.
            pub fn all_type_names() -> &'static [&'static str] {
                &[$($tag,)*]
            }
            pub fn rules(&self) -> &dyn OpRules {
                match self { $(Op::$variant(o) => o,)* }
            }
            pub fn rules_mut(&mut self) -> &mut dyn OpRules {
                match self { $(Op::$variant(o) => o,)* }
            }
        }
        $( impl From<$variant> for Op { fn from(o: $variant) -> Op { Op::$variant(o) } } )*
    };
}

ops! {
    Linear = "linear",
    Conv2d = "conv2d",
    Conv1d = "conv1d",
    BatchNorm = "batch_norm",
    LayerNorm = "layer_norm",
    RmsNorm = "rms_norm",
    GroupNorm = "group_norm",
    Embedding = "embedding",
    Relu = "relu",
    Gelu = "gelu",
    Silu = "silu",
    Tanh = "tanh",
    Sigmoid = "sigmoid",
    Softmax = "softmax",
    Dropout = "dropout",
    Add = "add",
    Mul = "mul",
    Concat = "concat",
    Flatten = "flatten",
    Reshape = "reshape",
    Narrow = "narrow",
    MaxPool2d = "max_pool2d",
    AvgPool2d = "avg_pool2d",
    GlobalAvgPool = "global_avg_pool",
    Lstm = "lstm",
    Gru = "gru",
    Attention = "attention",
    PositionalEmbedding = "positional_embedding",
    Transpose = "transpose",
    ConvTranspose2d = "conv_transpose2d",
    Resize = "resize",
    MatMul = "matmul",
    Slice = "slice",
    Gather = "gather",
    Pad = "pad",
    Clip = "clip",
    HardSigmoid = "hard_sigmoid",
    HardSwish = "hard_swish",
    LeakyRelu = "leaky_relu",
    PRelu = "prelu",
    Sub = "sub",
    Div = "div",
    Erf = "erf",
    Sqrt = "sqrt",
    ReduceMean = "reduce_mean",
    Constant = "constant",
    MaskedMeanPool = "masked_mean_pool",
    L2Normalize = "l2_normalize",
}

/// Checks the input count; shared by every op's `infer`.
pub(crate) fn expect_inputs<'a>(
    inputs: &[&'a [usize]],
    n: usize,
) -> Result<Vec<&'a [usize]>, String> {
    if inputs.len() != n {
        return Err(format!("expects {n} input(s), got {}", inputs.len()));
    }
    Ok(inputs.to_vec())
}

/// Resolves a possibly negative per-sample axis.
pub(crate) fn resolve_axis(axis: isize, rank: usize) -> Result<usize, String> {
    let a = if axis < 0 { axis + rank as isize } else { axis };
    if a < 0 || a as usize >= rank {
        return Err(format!(
            "axis {axis} is out of range for a rank-{rank} input"
        ));
    }
    Ok(a as usize)
}

pub(crate) fn numel(shape: &[usize]) -> u64 {
    shape.iter().map(|&d| d as u64).product()
}

pub(crate) fn default_true() -> bool {
    true
}
