//! Multi-head self-attention with grouped-query attention, an optional causal mask, optional rotary
//! position embedding and an optional key padding mask. Composed from differentiable candle ops
//! (candle's fused softmax has no backward).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

use super::activation::softmax;
use super::{default_true, Chan, ChannelCx, Ctx, Init, OpRules, ParamDecl, ParamView, Role};

/// The score given to masked-out keys before the softmax: exp of it underflows to exactly zero
/// next to any real score, and it stays finite, so a fully masked row does not produce NaN.
const MASKED_SCORE: f64 = -1e9;
/// Added to the softmax denominator: a fully masked row gives zero weights instead of 0 / 0. Every
/// other row's denominator is at least the largest kept weight, so this changes nothing there.
const DENOMINATOR_FLOOR: f64 = 1e-30;

/// Multi-head self-attention over [T, embed_dim] -> [T, out_dim]:
///
/// ```text
/// q = x W_q^T + b_q   [T, num_heads * head_dim]      split into num_heads heads of head_dim
/// k = x W_k^T + b_k   [T, num_kv_heads * head_dim]   split into num_kv_heads heads
/// v = x W_v^T + b_v   [T, num_kv_heads * head_dim]
/// head h = softmax(q_h k_g^T / sqrt(head_dim) + mask) v_g   with g = h / (num_heads / num_kv_heads)
/// y = concat(heads) W_o^T + b_o
/// ```
///
/// `num_kv_heads == num_heads` is plain multi-head attention; a divisor of it is grouped-query
/// attention (consecutive query heads share a key/value head), 1 is multi-query attention.
/// `causal` lets position t attend to positions <= t only. `rope_theta` applies rotary position
/// embedding to q and k (the Llama / Hugging Face "rotate_half" convention: dimension i of a head is
/// paired with i + head_dim/2, frequency theta^(-2i/head_dim), positions 0..T; head_dim even).
///
/// An optional second input is a key padding mask of per-sample shape [T]: keys whose mask value is
/// at most 0.5 are ignored (padding, 0.0), the others are attended with their softmax weight scaled
/// by the mask value (1.0 for plain attention), which keeps the op differentiable in the mask. A
/// query that may attend to no key at all outputs zero attention (then y = b_o).
///
/// Parameters: `q_weight` [num_heads*head_dim, embed_dim], `k_weight` and `v_weight`
/// [num_kv_heads*head_dim, embed_dim], `o_weight` [out_dim, num_heads*head_dim], and with `bias`
/// `q_bias`, `k_bias`, `v_bias` (their rows) and `o_bias` [out_dim].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attention {
    pub embed_dim: usize,
    pub out_dim: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    #[serde(default)]
    pub causal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default = "default_true")]
    pub bias: bool,
}

impl Attention {
    /// Plain multi-head attention with out_dim = embed_dim, no mask, no rotary embedding, with biases.
    pub fn new(embed_dim: usize, num_heads: usize, head_dim: usize) -> Self {
        Self {
            embed_dim,
            out_dim: embed_dim,
            num_heads,
            num_kv_heads: num_heads,
            head_dim,
            causal: false,
            rope_theta: None,
            bias: true,
        }
    }

    /// Query heads per key/value head.
    fn group(&self) -> Result<usize, String> {
        if self.num_heads == 0 {
            return Err("num_heads must be positive".into());
        }
        if self.num_kv_heads == 0 {
            return Err("num_kv_heads must be positive".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_kv_heads = {} does not divide num_heads = {}",
                self.num_kv_heads, self.num_heads
            ));
        }
        Ok(self.num_heads / self.num_kv_heads)
    }

    fn check(&self) -> Result<(), String> {
        self.group()?;
        for (name, v) in [
            ("embed_dim", self.embed_dim),
            ("out_dim", self.out_dim),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if let Some(theta) = self.rope_theta {
            if !(theta.is_finite() && theta > 0.0) {
                return Err(format!("rope_theta = {theta} must be a positive number"));
            }
            if !self.head_dim.is_multiple_of(2) {
                return Err(format!(
                    "rotary position embedding (rope_theta) needs an even head_dim, got {}",
                    self.head_dim
                ));
            }
        }
        Ok(())
    }
}

/// cos and sin tables [T, head_dim] of the rotary embedding, each frequency repeated for both halves.
fn rope_tables(
    steps: usize,
    head_dim: usize,
    theta: f64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(steps * head_dim);
    let mut sin = Vec::with_capacity(steps * head_dim);
    for pos in 0..steps {
        for i in 0..head_dim {
            let inv_freq = theta.powf(-2.0 * (i % half) as f64 / head_dim as f64);
            let angle = pos as f64 * inv_freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let table = |v: Vec<f64>| Tensor::from_vec(v, (steps, head_dim), device)?.to_dtype(dtype);
    Ok((table(cos)?, table(sin)?))
}

/// x cos + rotate_half(x) sin over the last axis of x [B, heads, T, head_dim], with
/// rotate_half([x1, x2]) = [-x2, x1].
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(3)? / 2;
    let x1 = x.narrow(3, 0, half)?;
    let x2 = x.narrow(3, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Softmax over the keys (last axis) of scores [B, heads, T, T] with the causal mask and the key
/// padding mask [B, T] applied; differentiable in the scores and in the padding mask.
fn attention_probs(
    scores: &Tensor,
    causal: bool,
    key_mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    if !causal && key_mask.is_none() {
        return softmax(scores, 3);
    }
    let (batch, _, steps, _) = scores.dims4()?;
    let (dtype, device) = (scores.dtype(), scores.device());
    // allowed: 1 where the query may attend to the key, constant; weight: allowed scaled by the mask
    let mut allowed: Option<Tensor> = None;
    if causal {
        let tri: Vec<f64> = (0..steps * steps)
            .map(|i| if i % steps <= i / steps { 1.0 } else { 0.0 })
            .collect();
        allowed = Some(Tensor::from_vec(tri, (1, 1, steps, steps), device)?.to_dtype(dtype)?);
    }
    let mut weight = None;
    if let Some(m) = key_mask {
        let m = m.to_dtype(dtype)?.reshape((batch, 1, 1, steps))?;
        let keep = m.detach().gt(0.5)?.to_dtype(dtype)?;
        let keep = match allowed {
            Some(a) => a.broadcast_mul(&keep)?,
            None => keep,
        };
        weight = Some(keep.broadcast_mul(&m)?);
        allowed = Some(keep);
    }
    let allowed = allowed.ok_or_else(|| candle_core::Error::Msg("no attention mask".into()))?;
    let weight = weight.unwrap_or_else(|| allowed.clone());
    let bias = ((allowed - 1.0)? * -MASKED_SCORE)?;
    let s = scores.broadcast_add(&bias)?;
    let max = s.max_keepdim(3)?.detach();
    let e = s.broadcast_sub(&max)?.exp()?.broadcast_mul(&weight)?;
    let denominator = (e.sum_keepdim(3)? + DENOMINATOR_FLOOR)?;
    e.broadcast_div(&denominator)
}

impl OpRules for Attention {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        if !(1..=2).contains(&inputs.len()) {
            return Err(format!(
                "expects 1 input (the sequence) or 2 (the sequence and a key padding mask), got {}",
                inputs.len()
            ));
        }
        self.check()?;
        let x = inputs[0];
        let steps = match *x {
            [t, e] if e == self.embed_dim && t > 0 => t,
            [0, e] if e == self.embed_dim => {
                return Err("the input sequence has no positions".into())
            }
            _ => {
                return Err(format!(
                    "input shape {x:?} is not [T, embed_dim = {}]",
                    self.embed_dim
                ))
            }
        };
        if let Some(m) = inputs.get(1) {
            if *m != [steps] {
                return Err(format!(
                    "key padding mask shape {m:?} is not [T = {steps}] (one value per position)"
                ));
            }
        }
        Ok(vec![steps, self.out_dim])
    }

    fn params(&self) -> Vec<ParamDecl> {
        let q_rows = self.num_heads * self.head_dim;
        let kv_rows = self.num_kv_heads * self.head_dim;
        let in_init = Init::FanInUniform {
            fan_in: self.embed_dim,
        };
        let out_init = Init::FanInUniform { fan_in: q_rows };
        let mut p = vec![
            ParamDecl::new(
                "q_weight",
                vec![q_rows, self.embed_dim],
                Role::Weight,
                in_init,
            ),
            ParamDecl::new(
                "k_weight",
                vec![kv_rows, self.embed_dim],
                Role::Weight,
                in_init,
            ),
            ParamDecl::new(
                "v_weight",
                vec![kv_rows, self.embed_dim],
                Role::Weight,
                in_init,
            ),
            ParamDecl::new(
                "o_weight",
                vec![self.out_dim, q_rows],
                Role::Weight,
                out_init,
            ),
        ];
        if self.bias {
            p.extend([
                ParamDecl::new("q_bias", vec![q_rows], Role::Bias, in_init),
                ParamDecl::new("k_bias", vec![kv_rows], Role::Bias, in_init),
                ParamDecl::new("v_bias", vec![kv_rows], Role::Bias, in_init),
                ParamDecl::new("o_bias", vec![self.out_dim], Role::Bias, out_init),
            ]);
        }
        p
    }

    fn macs(&self, inputs: &[&[usize]], _output: &[usize]) -> u64 {
        let t = inputs.first().and_then(|x| x.first()).copied().unwrap_or(0) as u64;
        let (e, out) = (self.embed_dim as u64, self.out_dim as u64);
        let (nh, nkv, hd) = (
            self.num_heads as u64,
            self.num_kv_heads as u64,
            self.head_dim as u64,
        );
        let projections = t * e * (nh + 2 * nkv) * hd + t * nh * hd * out;
        projections + 2 * nh * t * t * hd
    }

    /// q: T E nh hd, k and v: T E nkv hd each, o: T nh hd out (the scores and the weighted sum
    /// of values have no weight).
    fn weight_macs(&self, inputs: &[&[usize]], _output: &[usize]) -> Vec<(&'static str, u64)> {
        let t = inputs.first().and_then(|x| x.first()).copied().unwrap_or(0) as u64;
        let (e, out) = (self.embed_dim as u64, self.out_dim as u64);
        let (q, kv) = (
            (self.num_heads * self.head_dim) as u64,
            (self.num_kv_heads * self.head_dim) as u64,
        );
        vec![
            ("q_weight", t * e * q),
            ("k_weight", t * e * kv),
            ("v_weight", t * e * kv),
            ("o_weight", t * q * out),
        ]
    }

    /// Reports x as the input of q/k/v_weight and the concatenated head outputs [B, T, nh*hd] as
    /// the input of o_weight.
    fn forward(&self, xs: &[Tensor], p: &ParamView, ctx: &mut Ctx) -> candle_core::Result<Tensor> {
        let group = self.group().map_err(candle_core::Error::Msg)?;
        let x = &xs[0];
        let (batch, steps, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        for w in ["q_weight", "k_weight", "v_weight"] {
            ctx.report_weight_input(w, x);
        }
        let project = |w: &str, b: &str| -> candle_core::Result<Tensor> {
            let bias = if self.bias { Some(p.get(b)?) } else { None };
            candle_nn::Linear::new(p.get(w)?, bias).forward(x)
        };
        // [B, T, n * hd] -> [B, n, T, hd]
        let heads = |y: Tensor, n: usize| y.reshape((batch, steps, n, hd))?.transpose(1, 2);
        let mut q = heads(project("q_weight", "q_bias")?, nh)?;
        let mut k = heads(project("k_weight", "k_bias")?, nkv)?;
        let v = heads(project("v_weight", "v_bias")?, nkv)?.contiguous()?;
        if let Some(theta) = self.rope_theta {
            if !hd.is_multiple_of(2) {
                candle_core::bail!("rotary position embedding needs an even head_dim, got {hd}");
            }
            let (cos, sin) = rope_tables(steps, hd, theta, x.dtype(), x.device())?;
            q = apply_rope(&q, &cos, &sin)?;
            k = apply_rope(&k, &cos, &sin)?;
        }
        let q = (q * (1.0 / (hd as f64).sqrt()))?;
        // the query heads of one key/value group side by side: [B, nkv, group * T, hd], so every
        // group is one matmul against its shared keys and values, without repeating them
        let q = q.contiguous()?.reshape((batch, nkv, group * steps, hd))?;
        let k = k.contiguous()?;
        let scores = q.matmul(&k.t()?)?.reshape((batch, nh, steps, steps))?;
        let probs = attention_probs(&scores, self.causal, xs.get(1))?;
        let y = probs
            .reshape((batch, nkv, group * steps, steps))?
            .matmul(&v)?
            .reshape((batch, nh, steps, hd))?
            .transpose(1, 2)?
            .reshape((batch, steps, nh * hd))?;
        ctx.report_weight_input("o_weight", &y);
        let o_bias = if self.bias {
            Some(p.get("o_bias")?)
        } else {
            None
        };
        candle_nn::Linear::new(p.get("o_weight")?, o_bias).forward(&y)
    }

    /// The input's channels index the columns of q/k/v; the output is a new space (o's rows). Heads
    /// are a space of their own: a head owns head_dim rows of q (and of k and v without GQA) and
    /// head_dim columns of o. With grouped-query attention there are two: KV groups (a group owns
    /// its k/v rows and all its query heads) and query heads within a group (slot j of every
    /// group, so the groups stay equal).
    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        let last = cx.last_axis(0);
        if let Some(c) = cx.input(0).cloned() {
            if c.axis == last {
                cx.touch_all(
                    &[("q_weight", 1), ("k_weight", 1), ("v_weight", 1)],
                    &c.elems,
                );
            } else {
                cx.protect(&c.elems);
            }
        }
        if let Some(mask) = cx.input(1).cloned() {
            cx.protect(&mask.elems);
        }
        let (d, h, kv) = (self.head_dim, self.num_heads, self.num_kv_heads.max(1));
        let per_group = h / kv;
        let q_rows = |cx: &mut ChannelCx, head: usize, e: usize| {
            for r in head * d..(head + 1) * d {
                cx.touch("q_weight", 0, r, e);
                cx.touch("q_bias", 0, r, e);
                cx.touch("o_weight", 1, r, e);
            }
        };
        let kv_rows = |cx: &mut ChannelCx, group: usize, e: usize| {
            for r in group * d..(group + 1) * d {
                for p in ["k_weight", "v_weight", "k_bias", "v_bias"] {
                    cx.touch(p, 0, r, e);
                }
            }
        };
        let label = if kv == h { "heads" } else { "kv_groups" };
        for (g, e) in cx.new_space(kv, label).into_iter().enumerate() {
            kv_rows(cx, g, e);
            for j in 0..per_group {
                q_rows(cx, g * per_group + j, e);
            }
        }
        if per_group > 1 {
            for (j, e) in cx
                .new_space(per_group, "query_heads")
                .into_iter()
                .enumerate()
            {
                for g in 0..kv {
                    q_rows(cx, g * per_group + j, e);
                }
            }
        }
        let out = cx.new_space(self.out_dim, "channels");
        cx.touch_all(&[("o_weight", 0), ("o_bias", 0)], &out);
        Some(Chan {
            axis: cx.out_shape().len() - 1,
            elems: out,
        })
    }

    /// num_heads = q_weight rows / head_dim, num_kv_heads = k_weight rows / head_dim,
    /// embed_dim = q_weight columns, out_dim = o_weight rows (head_dim is kept).
    fn resize(&mut self, shapes: &BTreeMap<String, Vec<usize>>) {
        if let Some(&[rows, cols]) = shapes.get("q_weight").map(Vec::as_slice) {
            if let Some(heads) = rows.checked_div(self.head_dim) {
                self.num_heads = heads;
            }
            self.embed_dim = cols;
        }
        if let Some(&[rows, _]) = shapes.get("k_weight").map(Vec::as_slice) {
            if let Some(heads) = rows.checked_div(self.head_dim) {
                self.num_kv_heads = heads;
            }
        }
        if let Some(&[rows, _]) = shapes.get("o_weight").map(Vec::as_slice) {
            self.out_dim = rows;
        }
    }
}
