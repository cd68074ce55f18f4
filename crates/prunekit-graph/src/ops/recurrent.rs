//! Recurrent layers over a sequence: LSTM and GRU, one layer, one direction, zero initial state, in
//! PyTorch's parameter layout and gate order (so weights load from `torch.nn.LSTM` / `torch.nn.GRU`
//! layer 0 as they are). Composed from differentiable candle ops; the input projection of every
//! step is one matmul before the loop over time.

use std::collections::BTreeMap;

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use super::{
    default_true, expect_inputs, Chan, ChannelCx, Ctx, Init, OpRules, ParamDecl, ParamView, Role,
};

/// Checks a recurrent layer's attributes and its input [T, input_size]; returns T.
fn sequence_len(
    inputs: &[&[usize]],
    input_size: usize,
    hidden_size: usize,
) -> Result<usize, String> {
    let x = expect_inputs(inputs, 1)?[0];
    if hidden_size == 0 {
        return Err("hidden_size must be positive".into());
    }
    match *x {
        [t, i] if i == input_size && t > 0 => Ok(t),
        [0, i] if i == input_size => Err("the input sequence has no time steps".into()),
        _ => Err(format!(
            "input shape {x:?} is not [T, input_size = {input_size}]"
        )),
    }
}

/// The output shape of a recurrent layer over T steps.
fn sequence_output(t: usize, hidden_size: usize, return_sequences: bool) -> Vec<usize> {
    if return_sequences {
        vec![t, hidden_size]
    } else {
        vec![hidden_size]
    }
}

/// PyTorch's init for every recurrent parameter: U(-1/sqrt(H), 1/sqrt(H)).
fn recurrent_params(gates: usize, input_size: usize, hidden_size: usize) -> Vec<ParamDecl> {
    let init = Init::FanInUniform {
        fan_in: hidden_size,
    };
    let rows = gates * hidden_size;
    vec![
        ParamDecl::new("weight_ih", vec![rows, input_size], Role::Weight, init),
        ParamDecl::new("weight_hh", vec![rows, hidden_size], Role::Weight, init),
        ParamDecl::new("bias_ih", vec![rows], Role::Bias, init),
        ParamDecl::new("bias_hh", vec![rows], Role::Bias, init),
    ]
}

/// x [B, T, I] -> x W^T + b [B, T, rows]: the input projection of every step in one matmul.
fn project_inputs(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, steps, features) = x.dims3()?;
    let rows = w.dim(0)?;
    x.reshape((batch * steps, features))?
        .matmul(&w.t()?)?
        .broadcast_add(b)?
        .reshape((batch, steps, rows))
}

/// MACs of weight_ih (T G H I) and weight_hh (T G H H) of a recurrent layer with `gates` gates.
fn recurrent_weight_macs(
    inputs: &[&[usize]],
    gates: usize,
    input_size: usize,
    hidden_size: usize,
) -> Vec<(&'static str, u64)> {
    let t = inputs.first().and_then(|x| x.first()).copied().unwrap_or(0) as u64;
    let rows = (gates * hidden_size) as u64;
    vec![
        ("weight_ih", t * rows * input_size as u64),
        ("weight_hh", t * rows * hidden_size as u64),
    ]
}

/// Re-derives (input_size, hidden_size) from the recurrent weights: weight_ih [G*H, I], weight_hh [G*H, H].
fn resize_recurrent(
    shapes: &BTreeMap<String, Vec<usize>>,
    input_size: &mut usize,
    hidden_size: &mut usize,
) {
    if let Some(&[_, i]) = shapes.get("weight_ih").map(Vec::as_slice) {
        *input_size = i;
    }
    if let Some(&[_, h]) = shapes.get("weight_hh").map(Vec::as_slice) {
        *hidden_size = h;
    }
}

/// Channel rule of a recurrent layer with `gates` gates stacked along the weights' rows: the
/// input's channels index W_ih's columns; hidden unit u is a new space's element that owns row
/// g*H + u of W_ih, W_hh and both biases for every gate g, and column u of W_hh.
fn recurrent_channels(cx: &mut ChannelCx, gates: usize, hidden: usize) -> Option<Chan> {
    let last = cx.last_axis(0);
    if let Some(c) = cx.input(0).cloned() {
        if c.axis == last {
            cx.touch_all(&[("weight_ih", 1)], &c.elems);
        } else {
            cx.protect(&c.elems);
        }
    }
    let units = cx.new_space(hidden, "units");
    for (u, &e) in units.iter().enumerate() {
        for g in 0..gates {
            for p in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] {
                cx.touch(p, 0, g * hidden + u, e);
            }
        }
        cx.touch("weight_hh", 1, u, e);
    }
    Some(Chan {
        axis: cx.out_shape().len() - 1,
        elems: units,
    })
}

/// Stacks the per-step hidden states [B, H] into [B, T, H], or returns the last one.
fn sequence_result(hs: Vec<Tensor>, return_sequences: bool) -> candle_core::Result<Tensor> {
    if return_sequences {
        Tensor::stack(&hs, 1)
    } else {
        hs.into_iter()
            .next_back()
            .ok_or_else(|| candle_core::Error::Msg("the input sequence has no time steps".into()))
    }
}

/// The LSTM recurrence composed from candle ops (the reference for the fused kernel, and the path
/// on other devices and dtypes): `xw` [B, T, 4H] (x W_ih^T + b_ih + b_hh), `w_hh` [4H, H] -> every
/// step's h [B, H]; `report` sees h_{t-1} of every step t >= 1.
pub fn lstm_steps(
    xw: &Tensor,
    w_hh: &Tensor,
    mut report: impl FnMut(&Tensor),
) -> candle_core::Result<Vec<Tensor>> {
    let h_size = w_hh.dim(1)?;
    let w_hh_t = w_hh.t()?;
    let steps = xw.dim(1)?;
    let mut hs: Vec<Tensor> = Vec::with_capacity(steps);
    let mut c: Option<Tensor> = None;
    for t in 0..steps {
        let xt = xw.narrow(1, t, 1)?.squeeze(1)?;
        // h0 = 0: the first step has no recurrent term
        let gates = match hs.last() {
            Some(h) => {
                report(h);
                (xt + h.matmul(&w_hh_t)?)?
            }
            None => xt,
        };
        let gate = |k: usize| gates.narrow(D::Minus1, k * h_size, h_size);
        let i = candle_nn::ops::sigmoid(&gate(0)?)?;
        let f = candle_nn::ops::sigmoid(&gate(1)?)?;
        let g = gate(2)?.tanh()?;
        let o = candle_nn::ops::sigmoid(&gate(3)?)?;
        let ig = (i * g)?;
        let c_next = match &c {
            Some(c) => ((f * c)? + ig)?,
            None => ig,
        };
        hs.push((o * c_next.tanh()?)?);
        c = Some(c_next);
    }
    Ok(hs)
}

/// The GRU recurrence composed from candle ops (the reference for the fused kernel, and the path
/// on other devices and dtypes): `xw` [B, T, 3H] (x W_ih^T + b_ih), `w_hh` [3H, H], `b_hh` [3H] ->
/// every step's h [B, H]; `report` sees h_{t-1} of every step t >= 1.
pub fn gru_steps(
    xw: &Tensor,
    w_hh: &Tensor,
    b_hh: &Tensor,
    mut report: impl FnMut(&Tensor),
) -> candle_core::Result<Vec<Tensor>> {
    let h_size = w_hh.dim(1)?;
    let w_hh_t = w_hh.t()?;
    let steps = xw.dim(1)?;
    let mut hs: Vec<Tensor> = Vec::with_capacity(steps);
    for t in 0..steps {
        let xt = xw.narrow(1, t, 1)?.squeeze(1)?;
        // h0 = 0: the first step's recurrent term is b_hh alone
        let hw = match hs.last() {
            Some(h) => {
                report(h);
                h.matmul(&w_hh_t)?.broadcast_add(b_hh)?
            }
            None => b_hh.unsqueeze(0)?.broadcast_as(xt.dims())?,
        };
        let xg = |k: usize| xt.narrow(D::Minus1, k * h_size, h_size);
        let hg = |k: usize| hw.narrow(D::Minus1, k * h_size, h_size);
        let r = candle_nn::ops::sigmoid(&(xg(0)? + hg(0)?)?)?;
        let z = candle_nn::ops::sigmoid(&(xg(1)? + hg(1)?)?)?;
        let n = (xg(2)? + (r * hg(2)?)?)?.tanh()?;
        // (1 - z) n + z h = n + z (h - n)
        let h_next = match hs.last() {
            Some(h) => (&n + (z * (h - &n)?)?)?,
            None => (&n - (z * &n)?)?,
        };
        hs.push(h_next);
    }
    Ok(hs)
}

/// The output of a fused recurrent kernel ([`crate::kernels::recurrent`]): every step's h
/// [B, T, H] or the last one [B, H]; reports h_{t-1} of every step t >= 1 as the input of
/// `weight_hh`, as the composed loop does.
fn fused_result(hs: &Tensor, return_sequences: bool, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
    let steps = hs.dim(1)?;
    if steps == 0 {
        candle_core::bail!("the input sequence has no time steps");
    }
    if ctx.wants_weight_input("weight_hh") {
        for t in 1..steps {
            ctx.report_weight_input("weight_hh", &hs.narrow(1, t - 1, 1)?.squeeze(1)?);
        }
    }
    if return_sequences {
        Ok(hs.clone())
    } else {
        hs.narrow(1, steps - 1, 1)?.squeeze(1)?.contiguous()
    }
}

/// Long short-term memory over [T, input_size] -> [T, hidden_size] (every step's h) or, with
/// `return_sequences: false`, [hidden_size] (the last step's h). h0 = c0 = 0; per step, with the
/// gates stacked in PyTorch's order (i, f, g, o) along the rows of the weights:
///
/// ```text
/// [i, f, g, o] = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
/// c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g)
/// h_t = σ(o) ⊙ tanh(c_t)
/// ```
///
/// Parameters: `weight_ih` [4H, I], `weight_hh` [4H, H], `bias_ih` [4H], `bias_hh` [4H].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lstm {
    pub input_size: usize,
    pub hidden_size: usize,
    #[serde(default = "default_true")]
    pub return_sequences: bool,
}

impl Lstm {
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            return_sequences: true,
        }
    }
}

impl OpRules for Lstm {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let t = sequence_len(inputs, self.input_size, self.hidden_size)?;
        Ok(sequence_output(t, self.hidden_size, self.return_sequences))
    }

    fn params(&self) -> Vec<ParamDecl> {
        recurrent_params(4, self.input_size, self.hidden_size)
    }

    fn macs(&self, inputs: &[&[usize]], _output: &[usize]) -> u64 {
        let t = inputs.first().and_then(|x| x.first()).copied().unwrap_or(0) as u64;
        let h = self.hidden_size as u64;
        t * 4 * h * (self.input_size + self.hidden_size) as u64
    }

    fn weight_macs(&self, inputs: &[&[usize]], _output: &[usize]) -> Vec<(&'static str, u64)> {
        recurrent_weight_macs(inputs, 4, self.input_size, self.hidden_size)
    }

    /// Reports x as the input of weight_ih and h_{t-1} of every step t >= 1 as that of weight_hh.
    fn forward(&self, xs: &[Tensor], p: &ParamView, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        ctx.report_weight_input("weight_ih", x);
        // both biases enter every step the same way: fold b_hh into the input projection
        let bias = (p.get("bias_ih")? + p.get("bias_hh")?)?;
        let xw = project_inputs(x, &p.get("weight_ih")?, &bias)?;
        if crate::kernels::supported(&xw) {
            let hs = crate::kernels::recurrent::lstm(&xw, &p.get("weight_hh")?)?;
            return fused_result(&hs, self.return_sequences, ctx);
        }
        let hs = lstm_steps(&xw, &p.get("weight_hh")?, |h| {
            ctx.report_weight_input("weight_hh", h)
        })?;
        sequence_result(hs, self.return_sequences)
    }

    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        recurrent_channels(cx, 4, self.hidden_size)
    }

    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        resize_recurrent(shapes, &mut self.input_size, &mut self.hidden_size);
    }
}

/// Gated recurrent unit over [T, input_size] -> [T, hidden_size] (every step's h) or, with
/// `return_sequences: false`, [hidden_size] (the last step's h). h0 = 0; per step, with the gates
/// stacked in PyTorch's order (r, z, n) along the rows of the weights:
///
/// ```text
/// r = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
/// z = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
/// n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn))
/// h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}
/// ```
///
/// Parameters: `weight_ih` [3H, I], `weight_hh` [3H, H], `bias_ih` [3H], `bias_hh` [3H].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gru {
    pub input_size: usize,
    pub hidden_size: usize,
    #[serde(default = "default_true")]
    pub return_sequences: bool,
}

impl Gru {
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            return_sequences: true,
        }
    }
}

impl OpRules for Gru {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let t = sequence_len(inputs, self.input_size, self.hidden_size)?;
        Ok(sequence_output(t, self.hidden_size, self.return_sequences))
    }

    fn params(&self) -> Vec<ParamDecl> {
        recurrent_params(3, self.input_size, self.hidden_size)
    }

    fn macs(&self, inputs: &[&[usize]], _output: &[usize]) -> u64 {
        let t = inputs.first().and_then(|x| x.first()).copied().unwrap_or(0) as u64;
        let h = self.hidden_size as u64;
        t * 3 * h * (self.input_size + self.hidden_size) as u64
    }

    fn weight_macs(&self, inputs: &[&[usize]], _output: &[usize]) -> Vec<(&'static str, u64)> {
        recurrent_weight_macs(inputs, 3, self.input_size, self.hidden_size)
    }

    /// Reports x as the input of weight_ih and h_{t-1} of every step t >= 1 as that of weight_hh.
    fn forward(&self, xs: &[Tensor], p: &ParamView, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        ctx.report_weight_input("weight_ih", x);
        let xw = project_inputs(x, &p.get("weight_ih")?, &p.get("bias_ih")?)?;
        if crate::kernels::supported(&xw) {
            let hs = crate::kernels::recurrent::gru(&xw, &p.get("weight_hh")?, &p.get("bias_hh")?)?;
            return fused_result(&hs, self.return_sequences, ctx);
        }
        let hs = gru_steps(&xw, &p.get("weight_hh")?, &p.get("bias_hh")?, |h| {
            ctx.report_weight_input("weight_hh", h)
        })?;
        sequence_result(hs, self.return_sequences)
    }

    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        recurrent_channels(cx, 3, self.hidden_size)
    }

    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        resize_recurrent(shapes, &mut self.input_size, &mut self.hidden_size);
    }
}
