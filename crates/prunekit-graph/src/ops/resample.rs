//! Spatial resampling: Resize (nearest and bilinear upsampling / downsampling by a scale).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{expect_inputs, Chan, ChannelCx, Ctx, OpRules, ParamView};

/// How [`Resize`] interpolates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    #[default]
    Nearest,
    Bilinear,
}

/// Resizes the spatial axes of [C, H, W] by `scale` = [height, width] to
/// [C, floor(H * scale[0]), floor(W * scale[1])] (each at least 1).
///
/// Reference semantics, per axis with input length `n`, output position `o` and `r = 1 / scale`
/// (the given scale, not out / in, as PyTorch with `scale_factor` and ONNX with `scales` use):
///
/// - `nearest`: PyTorch `F.interpolate(x, scale_factor=scale, mode="nearest")`, ONNX `Resize`
///   with `mode = "nearest"`, `coordinate_transformation_mode = "asymmetric"`, `nearest_mode =
///   "floor"`: output o reads input `min(floor(o * r), n - 1)` (computed in f32, as PyTorch does).
/// - `bilinear`: PyTorch `F.interpolate(x, scale_factor=scale, mode="bilinear",
///   align_corners=False)`, ONNX `Resize` with `mode = "linear"` and
///   `coordinate_transformation_mode = "half_pixel"` (= `"pytorch_half_pixel"` for outputs longer
///   than 1): source coordinate `s = max(0, (o + 0.5) * r - 0.5)`, `i0 = floor(s)`,
///   `i1 = min(i0 + 1, n - 1)`, `l = s - i0`, output `(1 - l) x[i0] + l x[i1]` along each axis
///   (height, then width: the result is separable).
///
/// Forward: nearest is an `index_select` per axis; bilinear multiplies by two fixed
/// interpolation matrices ([H_out, H] on the left, [W, W_out] on the right); both differentiable.
/// MACs: 0 (no weights, like pooling). Channel rule: channels on axis 0 pass through; channels on
/// a spatial axis are protected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    #[serde(default)]
    pub mode: ResizeMode,
    /// [height, width]
    pub scale: [f64; 2],
}

impl Resize {
    pub fn new(mode: ResizeMode, scale: f64) -> Self {
        Self {
            mode,
            scale: [scale, scale],
        }
    }

    fn out_len(n: usize, scale: f64) -> usize {
        (n as f64 * scale).floor() as usize
    }
}

/// Source index of each output position for nearest (PyTorch's f32 arithmetic).
fn nearest_indices(n: usize, out: usize, scale: f64) -> Vec<u32> {
    let r = (1.0 / scale) as f32;
    (0..out)
        .map(|o| ((o as f32 * r).floor() as usize).min(n - 1) as u32)
        .collect()
}

/// The [out, n] bilinear (align_corners = False) interpolation matrix of one axis, row-major.
fn linear_matrix(n: usize, out: usize, scale: f64) -> Vec<f64> {
    let r = 1.0 / scale;
    let mut m = vec![0.0; out * n];
    for o in 0..out {
        let s = ((o as f64 + 0.5) * r - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        let l = s - i0 as f64;
        m[o * n + i0] += 1.0 - l;
        m[o * n + i1] += l;
    }
    m
}

impl OpRules for Resize {
    fn infer(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let x = expect_inputs(inputs, 1)?[0];
        let [c, h, w] = x else {
            return Err(format!(
                "expects a [channels, height, width] input, got {x:?}"
            ));
        };
        if self.scale.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(format!(
                "scale {:?} must be finite and positive",
                self.scale
            ));
        }
        let (ho, wo) = (
            Self::out_len(*h, self.scale[0]),
            Self::out_len(*w, self.scale[1]),
        );
        if ho == 0 || wo == 0 {
            return Err(format!(
                "scale {:?} leaves no output for the input {h}x{w}",
                self.scale
            ));
        }
        Ok(vec![*c, ho, wo])
    }

    fn forward(
        &self,
        xs: &[Tensor],
        _p: &ParamView,
        _ctx: &mut Ctx,
    ) -> candle_core::Result<Tensor> {
        let x = &xs[0];
        let (b, c, h, w) = x.dims4()?;
        let (ho, wo) = (
            Self::out_len(h, self.scale[0]),
            Self::out_len(w, self.scale[1]),
        );
        match self.mode {
            ResizeMode::Nearest => {
                let ih = Tensor::new(nearest_indices(h, ho, self.scale[0]), x.device())?;
                let iw = Tensor::new(nearest_indices(w, wo, self.scale[1]), x.device())?;
                x.contiguous()?.index_select(&ih, 2)?.index_select(&iw, 3)
            }
            ResizeMode::Bilinear => {
                let mh =
                    Tensor::from_vec(linear_matrix(h, ho, self.scale[0]), (ho, h), x.device())?
                        .to_dtype(x.dtype())?;
                let mw =
                    Tensor::from_vec(linear_matrix(w, wo, self.scale[1]), (wo, w), x.device())?
                        .to_dtype(x.dtype())?;
                // width: [B*C*H, W] x [W, Wo]
                let t = x
                    .contiguous()?
                    .reshape((b * c * h, w))?
                    .matmul(&mw.t()?.contiguous()?)?;
                // height: [B*C*Wo, H] x [H, Ho] on the planes transposed, then back
                let t = t
                    .reshape((b * c, h, wo))?
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((b * c * wo, h))?
                    .matmul(&mh.t()?.contiguous()?)?;
                t.reshape((b * c, wo, ho))?
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((b, c, ho, wo))
            }
        }
    }

    fn channels(&self, cx: &mut ChannelCx) -> Option<Chan> {
        cx.pass(Some(0), &[])
    }
}
