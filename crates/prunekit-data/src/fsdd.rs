//! The Free Spoken Digit Dataset (FSDD) as MFCC (or log-mel) sequences.
//!
//! Data: 3,000 mono 8 kHz 16-bit WAV recordings `recordings/{digit}_{speaker}_{index}.wav` of
//! the digits 0-9 spoken by 6 speakers, 50 of each digit per speaker (Zohar Jackson et al., "Free
//! Spoken Digit Dataset", DOI 10.5281/zenodo.1342401, CC BY-SA 4.0), read from
//! `shared/data/fsdd` (see [`crate::shared_data_dir`]). The conventional split: recording index
//! 0-4 of every digit and speaker is the test set (300 clips), index 5 and above (5-49) the
//! training set (2,700 clips).
//!
//! Each clip becomes one sample of a single float input named `"sequence"`, shape `[T, F]`
//! ([`AudioFeatures::frames`] frames of [`AudioFeatures::feature_dim`] features, frame-major),
//! with a [`Target::Class`] of 10 classes (the digit) and [`Task::classification`]. See
//! [`AudioFeatures`] for the features and every constant's source, [`FeatureStats`] for the
//! normalisation, [`featurize`] to turn a new recording into a sample the same way.
//!
//! Clip lengths of the real data (3,000 clips): min 143.5 ms, median 420 ms, 95th percentile
//! 663 ms, 99th 924 ms, max 2,283 ms. With 25 ms frames every 10 ms, T = 64 frames span 655 ms
//! and hold the whole of 95.1% of the clips.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Feature, Split, Target};
use crate::error::{DataError, Result};
use crate::task::Task;

/// Number of FSDD classes (the digits 0-9).
pub const FSDD_CLASSES: usize = 10;
/// Recordings with an index below this are the test set (the dataset's conventional split).
pub const FSDD_TEST_INDEX_BELOW: u32 = 5;
/// Name of the dataset's one input (the zoo's recurrent classifiers take an input of that name).
pub const FSDD_INPUT: &str = "sequence";
/// The file-name pattern of the recordings.
pub const FSDD_FILE_PATTERN: &str = "{digit}_{speaker}_{index}.wav";
/// The largest WAV file read (64 MiB, over an hour of 8 kHz 16-bit mono; FSDD's largest file is
/// 36 KiB): a bound on what one file may make us allocate.
pub const MAX_WAV_BYTES: u64 = 64 << 20;

/// How a clip becomes a `[T, F]` feature sequence: MFCCs (default) or log-mel energies.
///
/// Per frame, in the order of Kaldi's `compute-mfcc-feats` (`feature-window.cc`,
/// `feature-mfcc.cc`), with Kaldi's defaults unless said otherwise:
/// 1. a window of [`window_ms`](Self::window_ms) = 25 ms (200 samples at 8 kHz) every
///    [`hop_ms`](Self::hop_ms) = 10 ms (80 samples): Kaldi, HTK and most speech front ends.
///    Frames lie wholly inside the clip (Kaldi's `snip-edges=true`: `1 + (N - 200) / 80` frames
///    of a clip of N samples; a clip shorter than one window is zero-padded to one frame).
/// 2. the frame's mean is removed (Kaldi `remove-dc-offset=true`); no dither (Kaldi dithers
///    by default; we do not, so features are deterministic);
/// 3. pre-emphasis `x[i] -= 0.97 x[i-1]` ([`pre_emphasis`](Self::pre_emphasis); Kaldi and HTK
///    0.97; `x[0] -= 0.97 x[0]` as in Kaldi);
/// 4. a periodic Hann window `0.5 - 0.5 cos(2 pi n / L)` (the window of librosa and
///    `torch.hann_window`; Kaldi's default is the Povey window, HTK's Hamming);
/// 5. zero-padding to the next power of two, 256 points (Kaldi `round-to-power-of-two`), the
///    real FFT (`realfft`) and the power spectrum `|X_k|^2`, 129 bins of 31.25 Hz;
/// 6. [`n_mels`](Self::n_mels) = 40 triangular mel filters between
///    [`f_min`](Self::f_min) = 20 Hz (Kaldi `low-freq`) and [`f_max`](Self::f_max) = 4000 Hz
///    (the Nyquist frequency, Kaldi `high-freq=0`), on the HTK mel scale
///    `mel(f) = 2595 log10(1 + f / 700)` (HTK, Kaldi, torchaudio's default) with filter centres
///    equally spaced in mel and triangles linear in Hz between them, evaluated at the bin
///    frequencies, unnormalised (peak 1): exactly librosa's `mel(htk=True, norm=None)` and
///    torchaudio's `melscale_fbanks(mel_scale="htk", norm=None)`. Kaldi's 23 bins at 16 kHz
///    become 40 here as in librosa's and torchaudio's MFCC defaults; at 8 kHz each filter still
///    spans at least two bins (checked: a filter bank with an empty filter is refused);
/// 7. `ln(energy + eps)` with [`log_eps`](Self::log_eps) = 1e-8 on samples scaled to [-1, 1)
///    (`i16 / 32768`, librosa's scale): about the 16-bit quantisation-noise power of one mel
///    band (noise variance `2^-30 / 12` times the window's energy `sum w^2 = 75` times a band
///    of a few bins), so that digitally silent frames floor at the level of the quietest real
///    signal instead of producing outliers (librosa's `amin` is 1e-10, Kaldi floors at float
///    epsilon on the int16 scale);
/// 8. MFCC: the orthonormal DCT-II of the 40 log-mel energies (`scipy.fft.dct(norm="ortho")`,
///    librosa's MFCC), keeping the first [`n_mfcc`](Self::n_mfcc) = 20 coefficients, c0
///    included (librosa keeps c0; Kaldi replaces it with the log energy). No liftering: a
///    lifter (Kaldi and HTK use 22) scales each coefficient by a constant, which the
///    per-feature normalisation ([`FeatureStats`]) removes again. `n_mfcc = 0` skips the DCT
///    and gives the 40 log-mel energies instead.
///
/// Why MFCC rather than log-mel: 20 decorrelated coefficients carry the spectral envelope of
/// 40 strongly correlated log-mel bands in half the width (the recurrent models' input layer
/// and MACs halve), drop the fine harmonic structure (pitch, a speaker trait) that the high
/// quefrencies hold, and are the classic features of isolated-word recognition (Davis &
/// Mermelstein 1980).
///
/// Fixed length: a clip of more than [`frames`](Self::frames) = T = 64 frames keeps its
/// centre T frames (the clips are trimmed of silence, so what overhangs is mostly the slow
/// onset and decay at either end); a shorter clip is padded AT THE START (pre-padding), so a
/// recurrent classifier that reads its last step has just read the speech. Padding frames are
/// 0 after normalisation. T = 64 covers 95.1% of the FSDD clips whole (clips of up to 655 ms).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AudioFeatures {
    /// Sample rate the recordings must have, in Hz (8000 for FSDD); other rates are refused,
    /// not resampled.
    pub sample_rate: u32,
    /// Frame (window) length in milliseconds (25).
    pub window_ms: f32,
    /// Frame shift (hop) in milliseconds (10).
    pub hop_ms: f32,
    /// Pre-emphasis coefficient in `[0, 1)` (0.97; 0 disables it).
    pub pre_emphasis: f32,
    /// Number of mel filters (40).
    pub n_mels: usize,
    /// Lower edge of the lowest mel filter, in Hz (20).
    pub f_min: f32,
    /// Upper edge of the highest mel filter, in Hz, at most `sample_rate / 2` (4000).
    pub f_max: f32,
    /// Number of MFCCs kept (20, at most `n_mels`); 0 gives the log-mel energies.
    pub n_mfcc: usize,
    /// Frames per clip, T (64).
    pub frames: usize,
    /// The floor added to each mel energy before the log (1e-8, on samples in [-1, 1)).
    pub log_eps: f32,
}

impl Default for AudioFeatures {
    /// The FSDD features: 8 kHz, 25 ms / 10 ms frames, 40 HTK mel filters over 20-4000 Hz,
    /// 20 MFCCs, 64 frames: samples of shape `[64, 20]`.
    fn default() -> Self {
        Self {
            sample_rate: 8000,
            window_ms: 25.0,
            hop_ms: 10.0,
            pre_emphasis: 0.97,
            n_mels: 40,
            f_min: 20.0,
            f_max: 4000.0,
            n_mfcc: 20,
            frames: 64,
            log_eps: 1e-8,
        }
    }
}

impl AudioFeatures {
    /// Window length in samples: `round(sample_rate * window_ms / 1000)` (200).
    pub fn window_len(&self) -> usize {
        ms_to_samples(self.sample_rate, self.window_ms)
    }

    /// Hop length in samples: `round(sample_rate * hop_ms / 1000)` (80).
    pub fn hop_len(&self) -> usize {
        ms_to_samples(self.sample_rate, self.hop_ms)
    }

    /// FFT length: the window length rounded up to a power of two (256).
    pub fn n_fft(&self) -> usize {
        self.window_len().next_power_of_two()
    }

    /// Features per frame, F: `n_mfcc`, or `n_mels` when `n_mfcc` is 0 (20).
    pub fn feature_dim(&self) -> usize {
        if self.n_mfcc > 0 {
            self.n_mfcc
        } else {
            self.n_mels
        }
    }

    /// The per-sample shape of the features, `[frames, feature_dim]` (`[64, 20]`).
    pub fn shape(&self) -> Vec<usize> {
        vec![self.frames, self.feature_dim()]
    }

    /// Checks that the settings make sense.
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`] naming the field: a zero sample rate, a window of fewer
    /// than 2 samples or over 1 s, a hop of 0 samples, no mel filters, more MFCCs than mel
    /// filters, no frames or a `[T, F]` of over 2^20 values, band edges outside
    /// `0 <= f_min < f_max <= sample_rate / 2`, a pre-emphasis outside `[0, 1)`, a `log_eps`
    /// that is not finite and positive.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::InvalidArgument(format!("audio features: {m}")));
        if self.sample_rate == 0 {
            return bad("sample_rate must be positive".into());
        }
        let (w, h) = (self.window_len(), self.hop_len());
        if !(self.window_ms.is_finite() && w >= 2 && w <= self.sample_rate as usize) {
            return bad(format!(
                "window_ms = {} gives {w} samples (need 2 to one second's worth)",
                self.window_ms
            ));
        }
        if !(self.hop_ms.is_finite() && h >= 1 && h <= self.sample_rate as usize) {
            return bad(format!(
                "hop_ms = {} gives {h} samples (need 1 to one second's worth)",
                self.hop_ms
            ));
        }
        if self.n_mels == 0 || self.n_mels > 512 {
            return bad(format!("n_mels = {} (need 1 to 512)", self.n_mels));
        }
        if self.n_mfcc > self.n_mels {
            return bad(format!(
                "n_mfcc = {} exceeds n_mels = {}",
                self.n_mfcc, self.n_mels
            ));
        }
        if self.frames == 0 || self.frames.saturating_mul(self.feature_dim()) > 1 << 20 {
            return bad(format!(
                "frames = {} x {} features (need 1 to 2^20 values)",
                self.frames,
                self.feature_dim()
            ));
        }
        let nyquist = self.sample_rate as f32 / 2.0;
        if !(self.f_min >= 0.0 && self.f_min < self.f_max && self.f_max <= nyquist) {
            return bad(format!(
                "mel band {}..{} Hz (need 0 <= f_min < f_max <= {nyquist})",
                self.f_min, self.f_max
            ));
        }
        if !(0.0..1.0).contains(&self.pre_emphasis) {
            return bad(format!(
                "pre_emphasis = {} (need 0 <= p < 1)",
                self.pre_emphasis
            ));
        }
        if !(self.log_eps.is_finite() && self.log_eps > 0.0) {
            return bad(format!("log_eps = {} (need > 0)", self.log_eps));
        }
        Ok(())
    }
}

fn ms_to_samples(rate: u32, ms: f32) -> usize {
    let n = (f64::from(rate) * f64::from(ms) / 1000.0).round();
    if (0.0..1e9).contains(&n) {
        n as usize
    } else {
        0
    }
}

/// HTK mel scale: `2595 log10(1 + f / 700)` (Young et al., The HTK Book, sec. 5.4).
fn hz_to_mel(f: f64) -> f64 {
    2595.0 * (1.0 + f / 700.0).log10()
}

/// Inverse of [`hz_to_mel`].
fn mel_to_hz(m: f64) -> f64 {
    700.0 * (10f64.powf(m / 2595.0) - 1.0)
}

/// One triangular mel filter: its weights on the power bins `start..start + weights.len()`.
#[derive(Clone, Debug)]
struct MelFilter {
    start: usize,
    weights: Vec<f32>,
}

/// The precomputed front end of an [`AudioFeatures`]: window, FFT plan, mel filters and DCT.
/// Build it once and featurise many clips (it is `Send + Sync`).
#[derive(Clone)]
pub struct Featurizer {
    cfg: AudioFeatures,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
    filters: Vec<MelFilter>,
    /// `n_mfcc x n_mels`, row-major (empty for log-mel output).
    dct: Vec<f32>,
}

impl std::fmt::Debug for Featurizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Featurizer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Featurizer {
    /// The front end of `cfg`.
    ///
    /// # Errors
    /// As [`AudioFeatures::validate`]; [`DataError::InvalidArgument`] when a mel filter falls
    /// between two FFT bins (too many filters for the FFT's resolution).
    pub fn new(cfg: &AudioFeatures) -> Result<Self> {
        cfg.validate()?;
        let win = cfg.window_len();
        let n_fft = cfg.n_fft();
        let window = (0..win)
            .map(|n| {
                let x = std::f64::consts::TAU * n as f64 / win as f64;
                (0.5 - 0.5 * x.cos()) as f32
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(n_fft);
        let filters = mel_filters(cfg)?;
        let dct = if cfg.n_mfcc > 0 {
            dct_matrix(cfg.n_mfcc, cfg.n_mels)
        } else {
            Vec::new()
        };
        Ok(Self {
            cfg: cfg.clone(),
            window,
            fft,
            filters,
            dct,
        })
    }

    /// The settings this front end computes.
    pub fn config(&self) -> &AudioFeatures {
        &self.cfg
    }

    /// Number of frames of a clip of `len` samples: `1 + (len - window) / hop`, and 1 for a
    /// non-empty clip shorter than a window (zero-padded), 0 for an empty one.
    pub fn frame_count(&self, len: usize) -> usize {
        let (w, h) = (self.cfg.window_len(), self.cfg.hop_len());
        match len {
            0 => 0,
            n if n < w => 1,
            n => 1 + (n - w) / h,
        }
    }

    /// The raw (unnormalised) features of every frame of `samples` (mono, at
    /// [`AudioFeatures::sample_rate`], in [-1, 1)): `[frame_count, F]` row-major.
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`] for an empty clip or a non-finite sample.
    pub fn all_frames(&self, samples: &[f32]) -> Result<Vec<f32>> {
        let n = self.frame_count(samples.len());
        self.frames_from(samples, 0, n)
    }

    /// The raw features of the frames the fixed-length sequence keeps: all of them when there
    /// are at most T, otherwise the centre T (frames `(n - T) / 2 ..`). `[min(n, T), F]`.
    ///
    /// # Errors
    /// As [`Featurizer::all_frames`].
    pub fn kept_frames(&self, samples: &[f32]) -> Result<Vec<f32>> {
        let n = self.frame_count(samples.len());
        let t = self.cfg.frames;
        let (first, count) = if n > t { ((n - t) / 2, t) } else { (0, n) };
        self.frames_from(samples, first, count)
    }

    /// The normalised, pre-padded `[T, F]` sequence of `samples` (a sample of the dataset).
    ///
    /// # Errors
    /// As [`Featurizer::all_frames`]; [`DataError::InvalidArgument`] when `stats` has another
    /// feature width than the settings.
    pub fn featurize(&self, samples: &[f32], stats: &FeatureStats) -> Result<Vec<f32>> {
        if stats.dim() != self.cfg.feature_dim() {
            return Err(DataError::InvalidArgument(format!(
                "feature statistics of {} features for features of width {}",
                stats.dim(),
                self.cfg.feature_dim()
            )));
        }
        let kept = self.kept_frames(samples)?;
        Ok(stats.sequence(&kept, self.cfg.frames))
    }

    fn frames_from(&self, samples: &[f32], first: usize, count: usize) -> Result<Vec<f32>> {
        if samples.is_empty() {
            return Err(DataError::InvalidArgument("no audio samples".into()));
        }
        if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
            return Err(DataError::InvalidArgument(format!(
                "audio sample {i} is not finite ({})",
                samples[i]
            )));
        }
        let cfg = &self.cfg;
        let (win, hop, dim) = (cfg.window_len(), cfg.hop_len(), cfg.feature_dim());
        let mut input = self.fft.make_input_vec();
        let mut spectrum: Vec<Complex<f32>> = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; spectrum.len()];
        let mut logmel = vec![0f32; cfg.n_mels];
        let mut out = Vec::with_capacity(count * dim);
        let p = cfg.pre_emphasis;
        for f in first..first + count {
            let start = f * hop;
            let end = (start + win).min(samples.len());
            let frame = &mut input[..win];
            frame.fill(0.0);
            frame[..end - start].copy_from_slice(&samples[start..end]);
            // 2. DC offset (over the whole window, as Kaldi: a short clip's zero padding included)
            let mean = frame.iter().map(|&v| f64::from(v)).sum::<f64>() / win as f64;
            for v in frame.iter_mut() {
                *v -= mean as f32;
            }
            // 3. pre-emphasis, from the end so each step sees the original previous sample
            if p > 0.0 {
                for i in (1..win).rev() {
                    frame[i] -= p * frame[i - 1];
                }
                frame[0] -= p * frame[0];
            }
            // 4. window
            for (v, w) in frame.iter_mut().zip(&self.window) {
                *v *= w;
            }
            input[win..].fill(0.0);
            // 5. power spectrum
            self.fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .map_err(|e| DataError::InvalidArgument(format!("fft: {e}")))?;
            for (pw, c) in power.iter_mut().zip(&spectrum) {
                *pw = c.norm_sqr();
            }
            // 6-7. log mel energies
            for (m, filt) in logmel.iter_mut().zip(&self.filters) {
                let e: f32 = filt
                    .weights
                    .iter()
                    .zip(&power[filt.start..])
                    .map(|(w, p)| w * p)
                    .sum();
                *m = (e + cfg.log_eps).ln();
            }
            // 8. DCT-II
            if self.dct.is_empty() {
                out.extend_from_slice(&logmel);
            } else {
                for row in self.dct.chunks_exact(cfg.n_mels) {
                    out.push(row.iter().zip(&logmel).map(|(a, b)| a * b).sum());
                }
            }
        }
        Ok(out)
    }
}

/// The mel filter bank of `cfg` (librosa `mel(htk=True, norm=None)`), each filter stored sparsely.
fn mel_filters(cfg: &AudioFeatures) -> Result<Vec<MelFilter>> {
    let n_fft = cfg.n_fft();
    let bins = n_fft / 2 + 1;
    let (lo, hi) = (
        hz_to_mel(f64::from(cfg.f_min)),
        hz_to_mel(f64::from(cfg.f_max)),
    );
    let edges: Vec<f64> = (0..cfg.n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (cfg.n_mels + 1) as f64))
        .collect();
    let bin_hz = f64::from(cfg.sample_rate) / n_fft as f64;
    let mut filters = Vec::with_capacity(cfg.n_mels);
    for k in 0..cfg.n_mels {
        let (left, centre, right) = (edges[k], edges[k + 1], edges[k + 2]);
        let weight = |j: usize| {
            let f = j as f64 * bin_hz;
            let up = (f - left) / (centre - left);
            let down = (right - f) / (right - centre);
            up.min(down).max(0.0) as f32
        };
        let nonzero: Vec<usize> = (0..bins).filter(|&j| weight(j) > 0.0).collect();
        let (Some(&start), Some(&last)) = (nonzero.first(), nonzero.last()) else {
            return Err(DataError::InvalidArgument(format!(
                "audio features: mel filter {k} ({left:.1}-{right:.1} Hz) covers no FFT bin of \
                 {bin_hz:.2} Hz; use fewer mel filters or a longer window"
            )));
        };
        filters.push(MelFilter {
            start,
            weights: (start..=last).map(weight).collect(),
        });
    }
    Ok(filters)
}

/// The orthonormal DCT-II, first `n` rows of `m`: `c_k = s_k sum_i x_i cos(pi k (2i + 1) / 2m)`,
/// `s_0 = sqrt(1/m)`, `s_k = sqrt(2/m)` (scipy `dct(type=2, norm="ortho")`).
fn dct_matrix(n: usize, m: usize) -> Vec<f32> {
    let mut d = Vec::with_capacity(n * m);
    for k in 0..n {
        let s = if k == 0 {
            (1.0 / m as f64).sqrt()
        } else {
            (2.0 / m as f64).sqrt()
        };
        for i in 0..m {
            let a = std::f64::consts::PI * k as f64 * (2 * i + 1) as f64 / (2 * m) as f64;
            d.push((s * a.cos()) as f32);
        }
    }
    d
}

/// Per-feature normalisation of the sequences: `x[t, f] = (x[t, f] - mean[f]) / std[f]`,
/// fitted on the speech frames of the training clips (padding excluded), applied to both
/// splits and to any new clip ([`featurize`]); padding frames are 0 after it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    /// Mean of each feature over the training frames (F values).
    pub mean: Vec<f32>,
    /// Population standard deviation of each feature over the training frames (F values; 1
    /// for a constant feature).
    pub std: Vec<f32>,
}

impl FeatureStats {
    /// The identity normalisation of `dim` features (mean 0, std 1).
    pub fn identity(dim: usize) -> Self {
        Self {
            mean: vec![0.0; dim],
            std: vec![1.0; dim],
        }
    }

    /// Mean and population std of each of the `dim` features over every frame of `clips`
    /// (each `[frames, dim]` row-major; accumulated in f64). No frames give the identity.
    pub fn fit<'a>(clips: impl IntoIterator<Item = &'a [f32]>, dim: usize) -> Self {
        let mut sum = vec![0f64; dim];
        let mut sq = vec![0f64; dim];
        let mut n = 0u64;
        for clip in clips {
            for frame in clip.chunks_exact(dim.max(1)) {
                for ((s, q), &v) in sum.iter_mut().zip(sq.iter_mut()).zip(frame) {
                    *s += f64::from(v);
                    *q += f64::from(v) * f64::from(v);
                }
                n += 1;
            }
        }
        if n == 0 {
            return Self::identity(dim);
        }
        let n = n as f64;
        let (mean, std) = sum
            .iter()
            .zip(&sq)
            .map(|(&s, &q)| {
                let m = s / n;
                let sd = (q / n - m * m).max(0.0).sqrt();
                let sd = if sd.is_finite() && sd > 1e-12 {
                    sd
                } else {
                    1.0
                };
                (m as f32, sd as f32)
            })
            .unzip();
        Self { mean, std }
    }

    /// Number of features, F.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The `[frames, F]` sequence of a clip's kept frames (`[n, F]`, n <= `frames`, raw):
    /// normalised and pre-padded with `frames - n` zero frames. Frames past `frames` are
    /// dropped.
    pub fn sequence(&self, kept: &[f32], frames: usize) -> Vec<f32> {
        let dim = self.dim();
        let n = (kept.len() / dim.max(1)).min(frames);
        let mut out = vec![0f32; frames * dim];
        let speech = &mut out[(frames - n) * dim..];
        for (o, frame) in speech
            .chunks_exact_mut(dim.max(1))
            .zip(kept.chunks_exact(dim.max(1)))
        {
            for (((o, &v), &m), &s) in o.iter_mut().zip(frame).zip(&self.mean).zip(&self.std) {
                *o = (v - m) / s;
            }
        }
        out
    }
}

/// Turns a mono clip (`samples` in [-1, 1) at `cfg.sample_rate`, e.g. from [`read_wav`]) into
/// one sample of the dataset: the `[cfg.frames, cfg.feature_dim()]` sequence (row-major),
/// normalised with `stats` and pre-padded, exactly as [`fsdd`] featurises its clips. For many
/// clips build a [`Featurizer`] once.
///
/// # Errors
/// As [`Featurizer::new`] and [`Featurizer::featurize`].
pub fn featurize(samples: &[f32], cfg: &AudioFeatures, stats: &FeatureStats) -> Result<Vec<f32>> {
    Featurizer::new(cfg)?.featurize(samples, stats)
}

/// Reads a WAV file as mono samples in [-1, 1): integer PCM of 8 to 32 bits divided by
/// `2^(bits - 1)` (librosa's scale), or 32-bit float as is. Several channels are DOWNMIXED
/// (their mean), since that is lossless for the mono speech this reads; a sample rate other
/// than `sample_rate` is REFUSED (resampling needs a filter design of its own; convert the
/// file first). Reads with `hound`.
///
/// # Errors
/// A one-line error naming the file: [`DataError::Io`] when it cannot be opened,
/// [`DataError::BadWav`] for an empty file, a file over [`MAX_WAV_BYTES`], a header `hound`
/// cannot read, a data chunk that announces more bytes than the file holds or ends early
/// (truncated), no samples, a non-finite float sample; [`DataError::WrongSampleRate`] naming
/// the rate found and the rate expected.
pub fn read_wav(path: &Path, sample_rate: u32) -> Result<Vec<f32>> {
    let bad = |problem: String| DataError::BadWav {
        path: path.to_path_buf(),
        problem,
    };
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size == 0 {
        return Err(bad("empty file (0 bytes)".into()));
    }
    if size > MAX_WAV_BYTES {
        return Err(bad(format!(
            "{size} bytes, more than the limit of {MAX_WAV_BYTES} bytes for one recording"
        )));
    }
    let mut reader = hound::WavReader::new(BufReader::new(file))
        .map_err(|e| bad(format!("not a readable WAV file ({e})")))?;
    let spec = reader.spec();
    if spec.sample_rate != sample_rate {
        return Err(DataError::WrongSampleRate {
            path: path.to_path_buf(),
            found: spec.sample_rate,
            expected: sample_rate,
        });
    }
    let channels = usize::from(spec.channels.max(1));
    let declared = u64::from(reader.len());
    let bytes = declared * u64::from(spec.bits_per_sample).div_ceil(8);
    if bytes > size {
        return Err(bad(format!(
            "truncated: the header announces {bytes} bytes of samples but the file has only \
             {size} bytes"
        )));
    }
    if declared == 0 {
        return Err(bad("no audio samples".into()));
    }
    // bounded by the file size (checked above)
    let mut interleaved = Vec::with_capacity(declared as usize);
    // hound reports a short data chunk as an I/O EOF or as "Failed to read enough bytes."
    let truncated = |read: usize, e: hound::Error| {
        bad(format!(
            "truncated: the data ends after {read} of the {declared} samples the header \
             announces ({e})"
        ))
    };
    match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = 1.0 / 2f64.powi(i32::from(spec.bits_per_sample) - 1);
            for s in reader.samples::<i32>() {
                let v = s.map_err(|e| truncated(interleaved.len(), e))?;
                interleaved.push((f64::from(v) * scale) as f32);
            }
        }
        hound::SampleFormat::Float => {
            for s in reader.samples::<f32>() {
                let v = s.map_err(|e| truncated(interleaved.len(), e))?;
                if !v.is_finite() {
                    return Err(bad(format!(
                        "sample {} is not finite ({v})",
                        interleaved.len()
                    )));
                }
                interleaved.push(v);
            }
        }
    }
    if interleaved.len() < channels {
        return Err(bad("no audio samples".into()));
    }
    if channels == 1 {
        return Ok(interleaved);
    }
    Ok(interleaved
        .chunks_exact(channels)
        .map(|c| c.iter().sum::<f32>() / channels as f32)
        .collect())
}

/// What an FSDD file name says: `{digit}_{speaker}_{index}.wav`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Recording {
    digit: u32,
    speaker: String,
    index: u32,
    path: PathBuf,
}

fn parse_name(path: &Path) -> Result<Recording> {
    let bad = || DataError::BadFileName {
        path: path.to_path_buf(),
        pattern: FSDD_FILE_PATTERN.into(),
    };
    let stem = path.file_stem().and_then(|s| s.to_str()).ok_or_else(bad)?;
    let parts: Vec<&str> = stem.split('_').collect();
    let number = |s: &str| {
        (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let [digit, speaker, index] = parts[..] else {
        return Err(bad());
    };
    let (Some(digit), Some(index)) = (number(digit), number(index)) else {
        return Err(bad());
    };
    if speaker.is_empty() || !speaker.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    if digit as usize >= FSDD_CLASSES {
        return Err(DataError::BadLabel {
            source_name: path.display().to_string(),
            label: f64::from(digit),
            num_classes: FSDD_CLASSES,
        });
    }
    Ok(Recording {
        digit,
        speaker: speaker.to_string(),
        index,
        path: path.to_path_buf(),
    })
}

/// The recordings of `dir` (its `recordings/` folder when it has one), sorted by digit,
/// speaker and index.
fn list_recordings(dir: &Path) -> Result<Vec<Recording>> {
    let rec = dir.join("recordings");
    let dir = if rec.is_dir() { rec } else { dir.to_path_buf() };
    let io = |source| DataError::Io {
        path: dir.clone(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let is_wav = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
        if is_wav && path.is_file() {
            out.push(parse_name(&path)?);
        }
    }
    if out.is_empty() {
        return Err(DataError::NoFiles {
            dir,
            what: format!("WAV recordings named {FSDD_FILE_PATTERN}"),
        });
    }
    out.sort();
    Ok(out)
}

/// Loads the Free Spoken Digit Dataset from `dir` (the folder holding `recordings/`, or the
/// recordings themselves; default [`crate::shared_data_dir`]`("fsdd")`) as `[T, F]` feature
/// sequences of `cfg` (see [`AudioFeatures`]): `"fsdd/train"` (index 5 and above, 2,700 clips)
/// and `"fsdd/test"` (index 0-4, 300 clips), ordered by digit, speaker and index, with one
/// float input [`FSDD_INPUT`] of shape `[cfg.frames, cfg.feature_dim()]`, 10 classes and
/// [`Task::classification`]. The features are normalised per feature with the returned
/// [`FeatureStats`], fitted on the training clips' frames only. Featurises in parallel (rayon).
///
/// # Errors
/// [`DataError::SharedDataNotFound`] (saying where it looked) when `dir` is `None` and no
/// shared folder exists; [`DataError::Io`] for an unreadable folder or file;
/// [`DataError::NoFiles`] for a folder without WAVs; [`DataError::BadFileName`] for a WAV
/// whose name does not match [`FSDD_FILE_PATTERN`]; [`DataError::BadLabel`] for a digit above 9;
/// the errors of [`read_wav`] (empty, truncated, another sample rate, ...);
/// [`DataError::EmptyDataset`] when one side of the split has no clip; invalid `cfg` as
/// [`Featurizer::new`].
pub fn fsdd(dir: Option<&Path>, cfg: &AudioFeatures) -> Result<(Split, FeatureStats)> {
    let featurizer = Featurizer::new(cfg)?;
    let dir = crate::data_dir(dir, "fsdd")?;
    let recordings = list_recordings(&dir)?;
    // first error in file order, whatever order the threads finish in
    let kept: Vec<Vec<f32>> = recordings
        .par_iter()
        .map(|r| {
            let samples = read_wav(&r.path, cfg.sample_rate)?;
            featurizer
                .kept_frames(&samples)
                .map_err(|e| DataError::BadWav {
                    path: r.path.clone(),
                    problem: e.to_string(),
                })
        })
        .collect::<Vec<Result<Vec<f32>>>>()
        .into_iter()
        .collect::<Result<_>>()?;
    let is_test = |r: &Recording| r.index < FSDD_TEST_INDEX_BELOW;
    let stats = FeatureStats::fit(
        recordings
            .iter()
            .zip(&kept)
            .filter(|(r, _)| !is_test(r))
            .map(|(_, k)| k.as_slice()),
        cfg.feature_dim(),
    );
    let part = |test: bool, name: &str| -> Result<Dataset> {
        let (mut x, mut labels) = (Vec::new(), Vec::new());
        for (r, k) in recordings
            .iter()
            .zip(&kept)
            .filter(|(r, _)| is_test(r) == test)
        {
            x.extend(stats.sequence(k, cfg.frames));
            labels.push(r.digit);
        }
        if labels.is_empty() {
            return Err(DataError::EmptyDataset { name: name.into() });
        }
        Dataset::with_task(
            name,
            vec![Feature::float(FSDD_INPUT, cfg.shape(), x)],
            Target::Class {
                labels,
                num_classes: FSDD_CLASSES,
            },
            Task::classification(),
        )
    };
    let split = Split::new(part(false, "fsdd/train")?, part(true, "fsdd/test")?);
    Ok((split, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes a 16-bit PCM WAV of `channels` x `frames` samples (a 440 Hz tone) at `rate`.
    fn write_wav(path: &Path, rate: u32, channels: u16, frames: usize) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).expect("create wav");
        for i in 0..frames {
            let v =
                (8000.0 * (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin()) as i16;
            for c in 0..channels {
                w.write_sample(if c == 0 { v } else { v / 2 })
                    .expect("sample");
            }
        }
        w.finalize().expect("finalize");
    }

    fn err_of(r: Result<impl std::fmt::Debug>) -> String {
        let e = r.expect_err("an error");
        let m = e.to_string();
        assert!(!m.contains('\n'), "one line: {m}");
        m
    }

    #[test]
    fn defaults_and_filter_bank() {
        let cfg = AudioFeatures::default();
        assert_eq!(
            (cfg.window_len(), cfg.hop_len(), cfg.n_fft(), cfg.shape()),
            (200, 80, 256, vec![64, 20])
        );
        let f = Featurizer::new(&cfg).expect("front end");
        assert_eq!(f.filters.len(), 40);
        assert!(f.filters.iter().all(|m| m.weights.iter().any(|&w| w > 0.0)));
        // HTK mel: 1000 Hz is 1000 mel (to the formula's precision)
        assert!((hz_to_mel(1000.0) - 1000.0).abs() < 0.1);
        assert!((mel_to_hz(hz_to_mel(1234.5)) - 1234.5).abs() < 1e-6);
        // the DCT is orthonormal
        let d = dct_matrix(40, 40);
        for a in 0..40 {
            for b in 0..40 {
                let dot: f32 = (0..40).map(|i| d[a * 40 + i] * d[b * 40 + i]).sum();
                assert!(
                    (dot - f32::from(u8::from(a == b))).abs() < 1e-4,
                    "{a} {b} {dot}"
                );
            }
        }
        assert_eq!(
            (
                f.frame_count(0),
                f.frame_count(50),
                f.frame_count(200),
                f.frame_count(5240)
            ),
            (0, 1, 1, 64)
        );
        // bad settings name the field
        for bad in [
            AudioFeatures {
                n_mfcc: 41,
                ..cfg.clone()
            },
            AudioFeatures {
                f_max: 5000.0,
                ..cfg.clone()
            },
            AudioFeatures {
                frames: 0,
                ..cfg.clone()
            },
            AudioFeatures {
                n_mels: 128,
                ..cfg.clone()
            },
        ] {
            let m = err_of(Featurizer::new(&bad));
            assert!(m.contains("audio features"), "{m}");
        }
    }

    #[test]
    fn features_padding_and_cut() {
        let cfg = AudioFeatures::default();
        let f = Featurizer::new(&cfg).expect("front end");
        let tone = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| 0.3 * (i as f32 * 440.0 * std::f32::consts::TAU / 8000.0).sin())
                .collect()
        };
        // a pure tone's log-mel energy peaks at the filter around 440 Hz
        let lm = Featurizer::new(&AudioFeatures {
            n_mfcc: 0,
            ..cfg.clone()
        })
        .expect("log-mel");
        let frames = lm.all_frames(&tone(2000)).expect("frames");
        assert_eq!(frames.len(), 23 * 40); // 1 + (2000 - 200) / 80
        let peak = frames[..40]
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("peak");
        let centre = mel_to_hz(
            hz_to_mel(20.0) + (hz_to_mel(4000.0) - hz_to_mel(20.0)) * (peak + 1) as f64 / 41.0,
        );
        assert!(
            (centre - 440.0).abs() < 60.0,
            "peak filter {peak} at {centre} Hz"
        );
        // short clip: pre-padded, padding exactly 0, speech last
        let stats = FeatureStats::identity(20);
        let short = f.featurize(&tone(1000), &stats).expect("short"); // 11 frames
        assert_eq!(short.len(), 64 * 20);
        assert!(short[..53 * 20].iter().all(|&v| v == 0.0));
        assert!(short[53 * 20..].iter().all(|v| v.is_finite()) && short[63 * 20] != 0.0);
        // long clip: the centre 64 frames
        let long: Vec<f32> = tone(12000);
        let n = f.frame_count(long.len());
        let all = f.all_frames(&long).expect("all");
        let kept = f.kept_frames(&long).expect("kept");
        let first = (n - 64) / 2;
        assert_eq!(kept, all[first * 20..(first + 64) * 20].to_vec());
        // silence floors at ln(eps), no NaN; non-finite input is refused
        let silent = f.all_frames(&[0.0; 400]).expect("silence");
        assert!(silent.iter().all(|v| v.is_finite()));
        assert!(err_of(f.all_frames(&[0.0, f32::NAN])).contains("not finite"));
        assert!(err_of(f.all_frames(&[])).contains("no audio samples"));
        assert!(err_of(f.featurize(&tone(500), &FeatureStats::identity(3))).contains("width"));
    }

    #[test]
    fn stats_fit_and_apply() {
        let a = [1.0f32, 10.0, 3.0, 30.0]; // 2 frames of 2 features
        let b = [2.0f32, 20.0];
        let s = FeatureStats::fit([&a[..], &b[..]], 2);
        assert!((s.mean[0] - 2.0).abs() < 1e-6 && (s.mean[1] - 20.0).abs() < 1e-5);
        let sd = (2.0f32 / 3.0).sqrt();
        assert!((s.std[0] - sd).abs() < 1e-6 && (s.std[1] - 10.0 * sd).abs() < 1e-5);
        let seq = s.sequence(&b, 3);
        assert_eq!(seq, vec![0.0; 6]);
        let seq = s.sequence(&a, 3);
        assert_eq!(&seq[..2], &[0.0, 0.0]);
        assert!((seq[2] + 1.0 / sd).abs() < 1e-5 && (seq[5] - 1.0 / sd).abs() < 1e-5);
        assert_eq!(
            FeatureStats::fit(std::iter::empty(), 3),
            FeatureStats::identity(3)
        );
        let c = FeatureStats::fit([&[5.0f32, 5.0][..]], 1);
        assert_eq!((c.mean[0], c.std[0]), (5.0, 1.0));
    }

    #[test]
    fn read_wav_formats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mono = dir.path().join("mono.wav");
        write_wav(&mono, 8000, 1, 1000);
        let s = read_wav(&mono, 8000).expect("mono");
        assert_eq!(s.len(), 1000);
        assert!(s.iter().all(|v| v.abs() <= 8000.0 / 32768.0 + 1e-6));
        // stereo is downmixed (mean of the channels)
        let stereo = dir.path().join("stereo.wav");
        write_wav(&stereo, 8000, 2, 1000);
        let d = read_wav(&stereo, 8000).expect("stereo downmixed");
        assert_eq!(d.len(), 1000);
        let expect = |i: usize| {
            let v = s[i] * 32768.0;
            (v + (v as i16 / 2) as f32) / 2.0 / 32768.0
        };
        assert!((0..1000).all(|i| (d[i] - expect(i)).abs() < 1e-6));
    }

    #[test]
    fn bad_wavs_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        // empty file
        File::create(p("empty.wav")).expect("empty");
        let m = err_of(read_wav(&p("empty.wav"), 8000));
        assert!(m.contains("empty.wav") && m.contains("empty file"), "{m}");
        // not a WAV
        std::fs::write(p("text.wav"), b"hello, this is not a RIFF file at all").expect("write");
        let m = err_of(read_wav(&p("text.wav"), 8000));
        assert!(
            m.contains("text.wav") && m.contains("not a readable WAV"),
            "{m}"
        );
        // truncated: the header announces 2,000 bytes of data, half are cut off
        write_wav(&p("full.wav"), 8000, 1, 1000);
        let bytes = std::fs::read(p("full.wav")).expect("read");
        std::fs::write(p("cut.wav"), &bytes[..bytes.len() - 1000]).expect("write");
        let m = err_of(read_wav(&p("cut.wav"), 8000));
        assert!(m.contains("cut.wav") && m.contains("truncated"), "{m}");
        // truncated by a few bytes only (the header's announced size still fits the file
        // size): caught while reading
        std::fs::write(p("cut2.wav"), &bytes[..bytes.len() - 20]).expect("write");
        let m = err_of(read_wav(&p("cut2.wav"), 8000));
        assert!(m.contains("cut2.wav") && m.contains("truncated"), "{m}");
        // a header that announces far more data than any file holds
        let mut huge = bytes.clone();
        let at = huge
            .windows(4)
            .position(|w| w == b"data")
            .expect("data chunk")
            + 4;
        huge[at..at + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        std::fs::write(p("huge.wav"), &huge).expect("write");
        let m = err_of(read_wav(&p("huge.wav"), 8000));
        assert!(m.contains("huge.wav") && m.contains("truncated"), "{m}");
        // another sample rate: refused, naming both rates
        write_wav(&p("16k.wav"), 16000, 1, 1000);
        let m = err_of(read_wav(&p("16k.wav"), 8000));
        assert!(
            m.contains("16k.wav") && m.contains("16000 Hz") && m.contains("8000 Hz"),
            "{m}"
        );
        // a header with no samples
        write_wav(&p("nothing.wav"), 8000, 1, 0);
        let m = err_of(read_wav(&p("nothing.wav"), 8000));
        assert!(
            m.contains("nothing.wav") && m.contains("no audio samples"),
            "{m}"
        );
        // a missing file
        let m = err_of(read_wav(&p("absent.wav"), 8000));
        assert!(m.contains("absent.wav"), "{m}");
    }

    /// A small FSDD-like folder: digits 0-2, speaker "ann", indices 0-6.
    fn mini_fsdd(root: &Path) -> PathBuf {
        let rec = root.join("recordings");
        std::fs::create_dir_all(&rec).expect("mkdir");
        for d in 0..3 {
            for i in 0..7 {
                write_wav(
                    &rec.join(format!("{d}_ann_{i}.wav")),
                    8000,
                    1,
                    1500 + 700 * d + 40 * i,
                );
            }
        }
        let mut f = File::create(rec.join("README.txt")).expect("readme");
        writeln!(f, "not a recording").expect("write");
        rec
    }

    #[test]
    fn loads_a_small_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        mini_fsdd(dir.path());
        let cfg = AudioFeatures {
            frames: 16,
            ..AudioFeatures::default()
        };
        let (split, stats) = fsdd(Some(dir.path()), &cfg).expect("loads");
        assert_eq!((split.train.len(), split.test.len()), (6, 15));
        assert_eq!(
            (split.train.name.as_str(), split.test.name.as_str()),
            ("fsdd/train", "fsdd/test")
        );
        assert_eq!(split.train.inputs[0].name, "sequence");
        assert_eq!(split.train.sample_shape(), &[16, 20]);
        assert_eq!(split.train.num_classes(), Some(10));
        assert_eq!(split.train.labels(), Some(&[0, 0, 1, 1, 2, 2][..]));
        assert_eq!(stats.dim(), 20);
        // the recordings folder itself works too
        let (again, _) = fsdd(Some(&dir.path().join("recordings")), &cfg).expect("loads");
        assert_eq!(again, split);
        // featurize reproduces a sample
        let wav = read_wav(&dir.path().join("recordings/1_ann_6.wav"), 8000).expect("wav");
        let x = featurize(&wav, &cfg, &stats).expect("featurize");
        let xs = split.train.float_values().expect("floats");
        assert_eq!(x, xs[3 * 16 * 20..4 * 16 * 20].to_vec());
        // by name, with the default features (already normalised: the identity comes back)
        let (named, norm) = crate::load("fsdd", Some(dir.path()), 7).expect("load");
        let (direct, _) = fsdd(Some(dir.path()), &AudioFeatures::default()).expect("fsdd");
        assert_eq!((named, norm), (direct, crate::Normalization::default()));
        assert!(crate::DATASETS.contains(&"fsdd"));
        // a folder of test clips only has no training side
        let only = tempfile::tempdir().expect("tempdir");
        write_wav(&only.path().join("3_bob_1.wav"), 8000, 1, 900);
        let m = err_of(fsdd(Some(only.path()), &cfg));
        assert!(m.contains("fsdd/train") && m.contains("empty"), "{m}");
    }

    #[test]
    fn bad_folders_name_the_file_and_the_problem() {
        let cfg = AudioFeatures::default();
        // no WAVs
        let empty = tempfile::tempdir().expect("tempdir");
        std::fs::write(empty.path().join("notes.txt"), "x").expect("write");
        let m = err_of(fsdd(Some(empty.path()), &cfg));
        assert!(m.contains("no WAV recordings"), "{m}");
        // a missing folder
        let m = err_of(fsdd(Some(&empty.path().join("nope")), &cfg));
        assert!(m.contains("nope"), "{m}");
        // names that do not match the pattern
        for name in [
            "hello.wav",
            "1_ann.wav",
            "x_ann_3.wav",
            "1_ann_3_b.wav",
            "1__3.wav",
            "-1_ann_3.wav",
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            mini_fsdd(dir.path());
            write_wav(&dir.path().join("recordings").join(name), 8000, 1, 800);
            let m = err_of(fsdd(Some(dir.path()), &cfg));
            assert!(
                m.contains(name) && m.contains("{digit}_{speaker}_{index}.wav"),
                "{m}"
            );
        }
        // a digit out of range
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = mini_fsdd(dir.path());
        write_wav(&rec.join("12_ann_7.wav"), 8000, 1, 800);
        let m = err_of(fsdd(Some(dir.path()), &cfg));
        assert!(
            m.contains("12_ann_7.wav") && m.contains("label 12 out of range"),
            "{m}"
        );
        // one bad recording among good ones is named
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = mini_fsdd(dir.path());
        write_wav(&rec.join("4_ann_9.wav"), 11025, 1, 800);
        let m = err_of(fsdd(Some(dir.path()), &cfg));
        assert!(m.contains("4_ann_9.wav") && m.contains("11025 Hz"), "{m}");
        File::create(rec.join("4_ann_9.wav")).expect("truncate");
        let m = err_of(fsdd(Some(dir.path()), &cfg));
        assert!(m.contains("4_ann_9.wav") && m.contains("empty file"), "{m}");
    }

    #[test]
    fn missing_shared_data_says_where_it_looked() {
        let m = DataError::SharedDataNotFound {
            name: "fsdd".into(),
            looked: crate::looked_for("fsdd"),
        }
        .to_string();
        assert!(
            m.contains("fsdd") && m.contains(crate::SHARED_DATA_ENV),
            "{m}"
        );
    }

    #[test]
    fn real_fsdd() {
        let Some(dir) = crate::shared_data_dir("fsdd") else {
            eprintln!(
                "skipping real_fsdd: no shared/data/fsdd found (set {} to the folder holding fsdd/)",
                crate::SHARED_DATA_ENV
            );
            return;
        };
        let cfg = AudioFeatures::default();
        let t0 = std::time::Instant::now();
        let (split, stats) = fsdd(Some(&dir), &cfg).expect("fsdd loads");
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("fsdd: read and featurised 3,000 clips in {secs:.2} s");
        let (tr, te) = (&split.train, &split.test);
        assert_eq!((tr.len(), te.len()), (2700, 300));
        assert_eq!(tr.class_counts(), vec![270; 10]);
        assert_eq!(te.class_counts(), vec![30; 10]);
        assert_eq!(tr.sample_shape(), &[64, 20]);
        for d in [tr, te] {
            assert!(d
                .float_values()
                .expect("floats")
                .iter()
                .all(|v| v.is_finite()));
        }
        // per-feature train moments over the speech frames (padding rows are exactly 0)
        let x = tr.float_values().expect("floats");
        let speech: Vec<&[f32]> = x
            .chunks_exact(20)
            .filter(|f| f.iter().any(|&v| v != 0.0))
            .collect();
        let padded = x.len() / 20 - speech.len();
        eprintln!(
            "fsdd: {} speech frames, {padded} padding frames in train ({:.1}%)",
            speech.len(),
            100.0 * padded as f64 / (x.len() / 20) as f64
        );
        for f in 0..20 {
            let n = speech.len() as f64;
            let m = speech.iter().map(|r| f64::from(r[f])).sum::<f64>() / n;
            let v = speech
                .iter()
                .map(|r| (f64::from(r[f]) - m).powi(2))
                .sum::<f64>()
                / n;
            assert!(
                m.abs() < 1e-3 && (v.sqrt() - 1.0).abs() < 1e-3,
                "feature {f}: {m} {v}"
            );
        }
        assert!(stats.std.iter().all(|&s| s > 0.0 && s.is_finite()));
    }
}
