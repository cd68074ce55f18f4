//! Optimizers over a graph's trainable parameters. Masks are held fixed: the gradient of a masked value
//! is dropped and the value is re-zeroed after every step, so it is exactly zero.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use prunekit_graph::Graph;
use serde::{Deserialize, Serialize};

use crate::Result;

pub trait Optimizer {
    /// Updates every trainable parameter that has a gradient in `grads`.
    fn step(&mut self, g: &Graph, grads: &GradStore) -> Result<()>;
    fn set_lr(&mut self, lr: f64);
    fn lr(&self) -> f64;
}

/// Which optimizer, with its hyper-parameters (the learning rate comes from the schedule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd {
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
    },
    AdamW {
        weight_decay: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
    },
}

impl OptimizerKind {
    pub fn sgd(momentum: f64, weight_decay: f64) -> Self {
        OptimizerKind::Sgd {
            momentum,
            weight_decay,
            nesterov: false,
        }
    }
    pub fn adamw(weight_decay: f64) -> Self {
        OptimizerKind::AdamW {
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
    pub fn build(&self, lr: f64) -> Box<dyn Optimizer> {
        match *self {
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
                nesterov,
            } => Box::new(Sgd {
                lr,
                momentum,
                weight_decay,
                nesterov,
                state: HashMap::new(),
            }),
            OptimizerKind::AdamW {
                weight_decay,
                beta1,
                beta2,
                eps,
            } => Box::new(AdamW {
                lr,
                weight_decay,
                beta1,
                beta2,
                eps,
                step: 0,
                state: HashMap::new(),
            }),
        }
    }
}

type Key = (String, String);

/// Calls `update(key, weight, masked gradient)` for every parameter with a gradient, writes the new
/// value back and re-applies its mask.
fn for_each_param(
    g: &Graph,
    grads: &GradStore,
    mut update: impl FnMut(Key, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<()> {
    for (node, name, p) in g.trainable() {
        let Some(grad) = grads.get(p.tensor()) else {
            continue;
        };
        let mut grad = grad.detach();
        if let Some(m) = &p.mask {
            grad = (grad * m)?;
        }
        let w = p.tensor().detach();
        let mut new = update((node.name.clone(), name.clone()), &w, &grad)?;
        if let Some(m) = &p.mask {
            new = (new * m)?;
        }
        p.value.set(&new)?;
    }
    Ok(())
}

/// State tensor for `key`, reset when the parameter changed shape (pruning).
fn state_for<'a>(
    state: &'a mut HashMap<Key, Tensor>,
    key: Key,
    like: &Tensor,
) -> candle_core::Result<&'a mut Tensor> {
    let fresh = state.get(&key).is_none_or(|t| t.dims() != like.dims());
    if fresh {
        state.insert(key.clone(), like.zeros_like()?);
    }
    Ok(state.get_mut(&key).expect("inserted"))
}

/// Stochastic gradient descent with momentum, L2 weight decay and optional Nesterov (PyTorch's rule).
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    state: HashMap<Key, Tensor>,
}

impl Optimizer for Sgd {
    fn step(&mut self, g: &Graph, grads: &GradStore) -> Result<()> {
        let (lr, mom, wd, nesterov) = (self.lr, self.momentum, self.weight_decay, self.nesterov);
        let state = &mut self.state;
        for_each_param(g, grads, |key, w, grad| {
            let mut d = if wd != 0.0 {
                (grad + (w * wd)?)?
            } else {
                grad.clone()
            };
            if mom != 0.0 {
                let first = !state.contains_key(&key);
                let buf = state_for(state, key, w)?;
                *buf = if first {
                    d.clone()
                } else {
                    ((&*buf * mom)? + &d)?
                };
                d = if nesterov {
                    (d + (&*buf * mom)?)?
                } else {
                    buf.clone()
                };
            }
            w - (d * lr)?
        })
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn lr(&self) -> f64 {
        self.lr
    }
}

/// Adam with decoupled weight decay (Loshchilov & Hutter).
pub struct AdamW {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    step: i32,
    state: HashMap<Key, Tensor>,
}

impl Optimizer for AdamW {
    fn step(&mut self, g: &Graph, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let (lr, wd, b1, b2, eps) = (self.lr, self.weight_decay, self.beta1, self.beta2, self.eps);
        let (c1, c2) = (1.0 - b1.powi(self.step), 1.0 - b2.powi(self.step));
        let state = &mut self.state;
        for_each_param(g, grads, |(node, name), w, grad| {
            let m = state_for(state, (node.clone(), format!("{name}#m")), w)?;
            *m = ((&*m * b1)? + (grad * (1.0 - b1))?)?;
            let m_hat = (&*m / c1)?;
            let v = state_for(state, (node, format!("{name}#v")), w)?;
            *v = ((&*v * b2)? + (grad.sqr()? * (1.0 - b2))?)?;
            let v_hat = (&*v / c2)?;
            let w = (w * (1.0 - lr * wd))?;
            w - (m_hat / (v_hat.sqrt()? + eps)?)?.affine(lr, 0.0)?
        })
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn lr(&self) -> f64 {
        self.lr
    }
}
