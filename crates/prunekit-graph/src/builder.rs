//! A builder that reads like the network it builds:
//!
//! ```
//! use prunekit_graph::GraphBuilder;
//! let mut b = GraphBuilder::new("tiny-cnn", 0);
//! let x = b.input("image", &[1, 8, 8]);
//! let x = b.conv2d(&x, 8, 3, 1, 1).unwrap();
//! let x = b.batch_norm(&x).unwrap();
//! let x = b.relu(&x).unwrap();
//! let x = b.max_pool2d(&x, 2, 2).unwrap();
//! let x = b.flatten(&x).unwrap();
//! let y = b.linear(&x, 10).unwrap();
//! let g = b.finish(&[&y]).unwrap();
//! assert_eq!(g.nodes.len(), 6);
//! ```

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device};
use rand::rngs::StdRng;

use crate::error::{GraphError, Result};
use crate::graph::{init_params, valid_name, Graph, InputKind, InputSpec, Node, ParamRef, Shapes};
use crate::ops::*;

/// A value produced while building: its name and per-sample shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub name: String,
    pub shape: Vec<usize>,
}

pub struct GraphBuilder {
    graph: Graph,
    shapes: Shapes,
    rng: StdRng,
    device: Device,
    dtype: DType,
    counters: HashMap<&'static str, usize>,
    next_name: Option<String>,
    /// parameters the next node borrows: (its param, owner node, owner param)
    next_shared: Vec<(String, String, String)>,
}

impl GraphBuilder {
    /// A builder whose parameters are initialised from `seed` (PyTorch's default inits).
    pub fn new(name: &str, seed: u64) -> Self {
        Self {
            graph: Graph {
                name: name.to_string(),
                inputs: Vec::new(),
                nodes: Vec::new(),
                outputs: Vec::new(),
                meta: BTreeMap::new(),
                carried: BTreeMap::new(),
            },
            shapes: HashMap::new(),
            rng: crate::graph::rng(seed),
            device: crate::device::default_device(),
            dtype: DType::F32,
            counters: HashMap::new(),
            next_name: None,
            next_shared: Vec::new(),
        }
    }

    fn add_input(&mut self, name: &str, shape: &[usize], kind: InputKind) -> Value {
        self.graph.inputs.push(InputSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
            kind,
        });
        self.shapes.insert(name.to_string(), shape.to_vec());
        Value {
            name: name.to_string(),
            shape: shape.to_vec(),
        }
    }

    /// A real-valued input with a per-sample shape.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> Value {
        self.add_input(name, shape, InputKind::Float)
    }

    /// An integer-id input (tokens, categories).
    pub fn ids_input(&mut self, name: &str, shape: &[usize]) -> Value {
        self.add_input(name, shape, InputKind::Ids)
    }

    /// Names the next node (otherwise `<op><n>`).
    pub fn named(&mut self, name: &str) -> &mut Self {
        self.next_name = Some(name.to_string());
        self
    }

    /// Makes the next node borrow its parameter `param` from parameter `owner_param` of the
    /// already built node `owner` instead of owning one (parameter sharing, see
    /// [`crate::Node::shared`]; [`Graph::tie`] does the same on a built graph). The next node's
    /// op must declare `param` with the owner's shape and role:
    ///
    /// ```
    /// use prunekit_graph::GraphBuilder;
    /// let mut b = GraphBuilder::new("tied-lm", 0);
    /// let ids = b.ids_input("ids", &[4]);
    /// let h = b.named("embed").embedding(&ids, 10, 6).unwrap();
    /// // an Embedding weight [vocab, dim] is a Linear weight [out = vocab, in = dim]
    /// let y = b.named("lm_head").shared_param("weight", "embed", "weight").linear(&h, 10).unwrap();
    /// let g = b.finish(&[&y]).unwrap();
    /// assert_eq!(g.param_count(), 60 + 10); // the table once, lm_head's bias
    /// ```
    pub fn shared_param(&mut self, param: &str, owner: &str, owner_param: &str) -> &mut Self {
        self.next_shared.push((
            param.to_string(),
            owner.to_string(),
            owner_param.to_string(),
        ));
        self
    }

    /// Metadata stored with the model.
    pub fn meta(&mut self, key: &str, value: serde_json::Value) -> &mut Self {
        self.graph.meta.insert(key.to_string(), value);
        self
    }

    /// Adds any op: checks its shape rule and initialises its parameters.
    pub fn node(&mut self, op: impl Into<Op>, inputs: &[&Value]) -> Result<Value> {
        let op = op.into();
        let shared = std::mem::take(&mut self.next_shared);
        let name = match self.next_name.take() {
            Some(n) => n,
            None => {
                let c = self.counters.entry(op.type_name()).or_insert(0);
                *c += 1;
                format!("{}{}", op.type_name(), c)
            }
        };
        if !valid_name(&name) {
            return Err(GraphError::InvalidName(name));
        }
        if self.shapes.contains_key(&name) {
            return Err(GraphError::DuplicateName(name));
        }
        let ins: Vec<&[usize]> = inputs.iter().map(|v| v.shape.as_slice()).collect();
        let shape = op
            .rules()
            .infer(&ins)
            .map_err(|m| GraphError::shape(&name, op.type_name(), m))?;
        let decls: Vec<ParamDecl> = op
            .rules()
            .params()
            .into_iter()
            .filter(|d| !shared.iter().any(|(p, _, _)| p == d.name))
            .collect();
        let params = init_params(&decls, self.dtype, &self.device, &mut self.rng)?;
        let mut node = Node::new(
            name.clone(),
            op,
            inputs.iter().map(|v| v.name.clone()).collect(),
            params,
        );
        for (param, owner, owner_param) in shared {
            node.shared.insert(
                param,
                ParamRef {
                    node: owner,
                    param: owner_param,
                },
            );
        }
        self.graph.nodes.push(node);
        if let Err(e) = self.graph.check_node_params(&name) {
            self.graph.nodes.pop();
            return Err(e);
        }
        self.shapes.insert(name.clone(), shape.clone());
        Ok(Value { name, shape })
    }

    fn channels(x: &Value) -> usize {
        x.shape.first().copied().unwrap_or(0)
    }

    pub fn linear(&mut self, x: &Value, out: usize) -> Result<Value> {
        let inf = x.shape.last().copied().unwrap_or(0);
        self.node(Linear::new(inf, out), &[x])
    }

    /// Square-kernel convolution with stride and symmetric padding.
    pub fn conv2d(
        &mut self,
        x: &Value,
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Value> {
        self.conv2d_with(x, out, kernel, stride, padding, 1, true)
    }

    /// Convolution without bias (followed by BatchNorm).
    pub fn conv2d_no_bias(
        &mut self,
        x: &Value,
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Value> {
        self.conv2d_with(x, out, kernel, stride, padding, 1, false)
    }

    /// Any square-kernel 2-D convolution.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_with(
        &mut self,
        x: &Value,
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        bias: bool,
    ) -> Result<Value> {
        let mut c = Conv2d::new(Self::channels(x), out, kernel);
        c.stride = stride;
        c.padding = padding;
        c.groups = groups;
        c.bias = bias;
        self.node(c, &[x])
    }

    pub fn batch_norm(&mut self, x: &Value) -> Result<Value> {
        self.node(BatchNorm::new(Self::channels(x)), &[x])
    }

    /// 1-D convolution over [channels, length] with stride and symmetric padding.
    pub fn conv1d(
        &mut self,
        x: &Value,
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Value> {
        let mut c = Conv1d::new(Self::channels(x), out, kernel);
        c.stride = stride;
        c.padding = padding;
        self.node(c, &[x])
    }

    /// Depthwise (groups = channels, `multiplier` outputs per channel) or grouped 2-D convolution
    /// without bias.
    pub fn conv2d_grouped(
        &mut self,
        x: &Value,
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> Result<Value> {
        self.conv2d_with(x, out, kernel, stride, padding, groups, false)
    }

    pub fn group_norm(&mut self, x: &Value, groups: usize) -> Result<Value> {
        self.node(GroupNorm::new(groups, Self::channels(x)), &[x])
    }

    pub fn rms_norm(&mut self, x: &Value) -> Result<Value> {
        self.node(RmsNorm::new(x.shape.last().copied().unwrap_or(0)), &[x])
    }

    /// Splits `x` along `axis` into pieces of the given sizes (one Narrow node each).
    pub fn split(&mut self, x: &Value, axis: isize, sizes: &[usize]) -> Result<Vec<Value>> {
        let mut start = 0;
        let mut out = Vec::with_capacity(sizes.len());
        for &len in sizes {
            out.push(self.node(Narrow { axis, start, len }, &[x])?);
            start += len;
        }
        Ok(out)
    }

    pub fn layer_norm(&mut self, x: &Value) -> Result<Value> {
        self.node(LayerNorm::new(x.shape.last().copied().unwrap_or(0)), &[x])
    }

    pub fn embedding(&mut self, x: &Value, num: usize, dim: usize) -> Result<Value> {
        self.node(
            Embedding {
                num_embeddings: num,
                embedding_dim: dim,
            },
            &[x],
        )
    }

    /// Learned positional embedding added to a sequence [T, D], for sequences up to `max_len`.
    pub fn positional_embedding(&mut self, x: &Value, max_len: usize) -> Result<Value> {
        let dim = x.shape.last().copied().unwrap_or(0);
        self.node(PositionalEmbedding { max_len, dim }, &[x])
    }

    /// LSTM over a sequence [T, I]: [T, hidden] with `return_sequences`, else the last step's [hidden].
    pub fn lstm(&mut self, x: &Value, hidden: usize, return_sequences: bool) -> Result<Value> {
        let mut op = Lstm::new(x.shape.last().copied().unwrap_or(0), hidden);
        op.return_sequences = return_sequences;
        self.node(op, &[x])
    }

    /// GRU over a sequence [T, I]: [T, hidden] with `return_sequences`, else the last step's [hidden].
    pub fn gru(&mut self, x: &Value, hidden: usize, return_sequences: bool) -> Result<Value> {
        let mut op = Gru::new(x.shape.last().copied().unwrap_or(0), hidden);
        op.return_sequences = return_sequences;
        self.node(op, &[x])
    }

    fn attention_op(
        x: &Value,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        causal: bool,
        rope_theta: Option<f64>,
    ) -> Attention {
        let mut op = Attention::new(x.shape.last().copied().unwrap_or(0), heads, head_dim);
        op.num_kv_heads = kv_heads;
        op.causal = causal;
        op.rope_theta = rope_theta;
        op
    }

    /// Self-attention over a sequence [T, E] -> [T, E] with biases: `heads` query heads sharing
    /// `kv_heads` key/value heads (== heads for plain multi-head attention), optionally causal and
    /// with rotary position embedding of base `rope_theta`.
    pub fn attention(
        &mut self,
        x: &Value,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        causal: bool,
        rope_theta: Option<f64>,
    ) -> Result<Value> {
        let op = Self::attention_op(x, heads, kv_heads, head_dim, causal, rope_theta);
        self.node(op, &[x])
    }

    /// [`attention`](Self::attention) with a key padding mask [T] (1.0 = attend, 0.0 = padding).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_masked(
        &mut self,
        x: &Value,
        mask: &Value,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        causal: bool,
        rope_theta: Option<f64>,
    ) -> Result<Value> {
        let op = Self::attention_op(x, heads, kv_heads, head_dim, causal, rope_theta);
        self.node(op, &[x, mask])
    }

    pub fn relu(&mut self, x: &Value) -> Result<Value> {
        self.node(Relu {}, &[x])
    }
    pub fn gelu(&mut self, x: &Value) -> Result<Value> {
        self.node(Gelu::default(), &[x])
    }
    pub fn silu(&mut self, x: &Value) -> Result<Value> {
        self.node(Silu {}, &[x])
    }
    pub fn tanh(&mut self, x: &Value) -> Result<Value> {
        self.node(Tanh {}, &[x])
    }
    pub fn sigmoid(&mut self, x: &Value) -> Result<Value> {
        self.node(Sigmoid {}, &[x])
    }
    pub fn softmax(&mut self, x: &Value) -> Result<Value> {
        self.node(Softmax::default(), &[x])
    }
    pub fn dropout(&mut self, x: &Value, p: f64) -> Result<Value> {
        self.node(Dropout { p }, &[x])
    }
    pub fn add(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.node(Add {}, &[a, b])
    }
    pub fn mul(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.node(Mul {}, &[a, b])
    }
    pub fn concat(&mut self, xs: &[&Value], axis: isize) -> Result<Value> {
        self.node(Concat { axis }, xs)
    }
    pub fn flatten(&mut self, x: &Value) -> Result<Value> {
        self.node(Flatten {}, &[x])
    }
    pub fn reshape(&mut self, x: &Value, shape: &[usize]) -> Result<Value> {
        self.node(
            Reshape {
                shape: shape.to_vec(),
            },
            &[x],
        )
    }
    pub fn max_pool2d(&mut self, x: &Value, kernel: usize, stride: usize) -> Result<Value> {
        self.node(MaxPool2d(pool::Pool2dAttrs::new(kernel, stride)), &[x])
    }
    pub fn avg_pool2d(&mut self, x: &Value, kernel: usize, stride: usize) -> Result<Value> {
        self.node(AvgPool2d(pool::Pool2dAttrs::new(kernel, stride)), &[x])
    }
    pub fn global_avg_pool(&mut self, x: &Value) -> Result<Value> {
        self.node(GlobalAvgPool {}, &[x])
    }

    /// Mean over the real tokens: x [T, D] and a token mask [T] (1 = real token, 0 = padding)
    /// -> [D] (sentence-transformers' mean pooling; a fully padded sample gives zeros).
    pub fn masked_mean_pool(&mut self, x: &Value, mask: &Value) -> Result<Value> {
        self.node(
            MaskedMeanPool::new(x.shape.last().copied().unwrap_or(0)),
            &[x, mask],
        )
    }

    /// x / max(||x||_2, 1e-12) over the last axis (sentence-transformers' `Normalize`).
    pub fn l2_normalize(&mut self, x: &Value) -> Result<Value> {
        self.node(L2Normalize::new(x.shape.last().copied().unwrap_or(0)), &[x])
    }

    /// Finishes the graph with its outputs and validates it.
    pub fn finish(mut self, outputs: &[&Value]) -> Result<Graph> {
        self.graph.outputs = outputs.iter().map(|v| v.name.clone()).collect();
        self.graph.validate()?;
        Ok(self.graph)
    }
}
