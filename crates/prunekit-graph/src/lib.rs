//! prunekit's model graph: typed ops with their rules, the graph and its builder,
//! the candle runtime that executes graphs forward and backward, and the losses.

pub mod builder;
pub mod channels;
pub mod device;
pub mod error;
pub mod graph;
pub mod kernels;
pub mod loss;
pub mod ops;
pub mod runtime;
pub mod sparse_plan;

pub use builder::{GraphBuilder, Value};
pub use channels::{
    analyse, ChannelAnalysis, ChannelGroup, ProtectedSpace, Protection, SliceKey, Unit,
};
pub use error::{GraphError, Result};
pub use graph::{
    count_nonzeros, count_zeros, live_rows, Graph, InputKind, InputSpec, Node, NodeMacs, Param,
    ParamRef, Shapes, WeightCounts,
};
pub use ops::{Ctx, Op, OpRules, Role, WeightInputs};
pub use runtime::{param_grads, Executor, Hooks, Mode};
pub use sparse_plan::{SparseDecision, SparseOptions, SparsePlan};
