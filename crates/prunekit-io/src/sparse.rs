//! Compressed storage of masked parameters in our format (format version 2, issue 16).
//!
//! A masked parameter `K` (`node.param`: shape `S`, `n` elements, `k` of them kept by its mask,
//! values of `s` bytes each) is written in whichever layout below takes the fewest bytes of tensor
//! data (ties go to the earlier row). Every layout except `dense` is named in the safetensors
//! header's `__metadata__` under `prunekit.sparse.K`, as JSON:
//! `{"encoding": "bitmask", "shape": [512, 512]}` (`nm` adds `"n"` and `"m"`).
//!
//! | encoding | tensors | bytes | used when |
//! | --- | --- | --- | --- |
//! | `nm` | `K.nm_indices` U8 `[ceil(k b / 8)]` + `K.values` `[k]` | k s + k b / 8 | every group of M along axis 1 keeps exactly N |
//! | `bitmask` | `K.bitmask` U8 `[ceil(n / 8)]` + `K.values` `[k]` | k s + n / 8 | always possible |
//! | `delta16` | `K.indices` U16 `[k]` + `K.values` `[k]` | k (s + 2) | the first index and every gap fit in 16 bits |
//! | `index32` | `K.indices` U32 `[k]` + `K.values` `[k]` | k (s + 4) | n <= 2^32 |
//! | `nonzero` | `K` `[S]` | n s | the mask is exactly `K != 0` (no kept weight is zero) |
//! | `dense` (format 1) | `K` `[S]` + `K.mask` U8 `[S]` | n (s + 1) | values that are not F16 / BF16 / F32 / F64 |
//!
//! - `K.values` holds the kept values (mask 1) in row-major order, in the parameter's dtype
//!   (F16, BF16, F32 or F64; bit-exact), also for `nm`.
//! - `K.bitmask`: bit `i % 8` of byte `i / 8` (least significant bit first) is the mask of
//!   element `i` in row-major order; the unused high bits of the last byte are 0.
//! - `K.indices`: `delta16` holds the first kept index, then the gap (>= 1) from each kept index
//!   to the next; `index32` holds the kept indices themselves, increasing. Little-endian.
//! - `nm` (N:M semi-structured masks, as `prunekit_prune::prune_nm` makes them): for a
//!   parameter of shape [out, in, rest..] the groups are the runs of M consecutive `in` indices at
//!   each (out, rest..) position (M divides `in`), each keeping exactly N, 1 <= N < M <= 256.
//!   Group `g` is (o, block, r) in that nesting order (r innermost, the flattened rest axes). Each
//!   group's N positions within the group (0..M, distinct) are written with
//!   `b = ceil(log2 M)` bits each, one group after another, into a little-endian bit stream
//!   (bit `j` of the stream is bit `j % 8` of byte `j / 8`; unused high bits 0).
//!   A 2:4 mask costs 2 bits per kept value, 1 bit per weight, as the bitmask does; 1:4 or 2:8
//!   cost less.
//!
//! No `K.mask` is stored by the compressed layouts: the bitmask, indices or N:M positions are
//! the mask (`nonzero`: the values are). Loading restores the same values and mask, with every
//! masked value +0.0 (the writer drops masked values; `Graph::set_mask` and the loader keep them
//! +0.0).
//!
//! Bounds: a compressed parameter's shape must equal the one model.json declares, its element
//! count may not exceed [`MAX_ELEMENTS_PER_BYTE`] per stored byte of its tensors (or
//! [`SMALL_TENSOR_ELEMENTS`]), checked before anything of that size is allocated; the writer keeps
//! to the same bound (it then falls back to the bitmask). Every inconsistency (an index past the
//! shape, a value count other than the mask's, a bad N:M position or a repeated one, a bitmask of
//! the wrong length, stray bits) is a one-line error naming the tensor.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use prunekit_graph::error::{GraphError, Result};

/// Prefix of the header metadata key that names a parameter's compressed layout:
/// `prunekit.sparse.<node>.<param>`.
pub const META_PREFIX: &str = "prunekit.sparse.";

/// A compressed parameter may decode to at most this many elements per byte of its stored
/// tensors (256: an f32 tensor at most 1 KiB per stored byte) ...
pub const MAX_ELEMENTS_PER_BYTE: u64 = 256;

/// ... or to at most this many elements (2^20, 4 MiB of f32) whatever it stores: a small tensor may
/// be entirely masked.
pub const SMALL_TENSOR_ELEMENTS: u64 = 1 << 20;

/// The largest M of the `nm` layout (positions then fit in 8 bits).
pub const MAX_NM_M: usize = 256;

/// How a parameter is laid out in `model.safetensors` (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `K` + `K.mask` (U8): format 1's layout, kept for non-float values
    Dense,
    /// `K` only: the mask is `K != 0`
    Nonzero,
    /// `K.bitmask` (1 bit per element) + `K.values`
    Bitmask,
    /// `K.indices` (U16 gaps) + `K.values`
    Delta16,
    /// `K.indices` (U32 indices) + `K.values`
    Index32,
    /// `K.nm_indices` (ceil(log2 m) bits per kept value) + `K.values`: every group of `m` along
    /// axis 1 keeps exactly `n`
    Nm { n: usize, m: usize },
}

impl Encoding {
    /// The name written in the metadata (`"nm"` for every N:M).
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Dense => "dense",
            Encoding::Nonzero => "nonzero",
            Encoding::Bitmask => "bitmask",
            Encoding::Delta16 => "delta16",
            Encoding::Index32 => "index32",
            Encoding::Nm { .. } => "nm",
        }
    }

    /// Whether the layout keeps only the kept values (and so is bounded by
    /// [`MAX_ELEMENTS_PER_BYTE`]).
    fn drops_values(self) -> bool {
        !matches!(self, Encoding::Dense | Encoding::Nonzero)
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encoding::Nm { n, m } => write!(f, "nm {n}:{m}"),
            e => f.write_str(e.name()),
        }
    }
}

/// One tensor to write: a candle tensor, or raw little-endian bytes (U16 indices, for which candle
/// has no dtype, and the packed layouts).
pub enum Stored {
    /// a candle tensor, written in its own dtype and shape
    Tensor(Tensor),
    /// `data`: the elements of `shape` in `dtype`, little-endian, row-major
    /// (`data.len()` = elements x the dtype's bytes)
    Raw {
        dtype: safetensors::Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
    },
}

impl safetensors::View for Stored {
    fn dtype(&self) -> safetensors::Dtype {
        match self {
            Stored::Tensor(t) => t.dtype().into(),
            Stored::Raw { dtype, .. } => *dtype,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Stored::Tensor(t) => t.dims(),
            Stored::Raw { shape, .. } => shape,
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Stored::Tensor(t) => safetensors::View::data(t),
            Stored::Raw { data, .. } => Cow::Borrowed(data),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Stored::Tensor(t) => safetensors::View::data_len(t),
            Stored::Raw { data, .. } => data.len(),
        }
    }
}

/// A parameter's tensors as written: the layout, its tensors (names `K`, `K.values`, ...) and
/// its header metadata entry (none for [`Encoding::Dense`]).
pub struct Encoded {
    /// the layout chosen
    pub encoding: Encoding,
    /// (name, tensor) pairs to write: `K` and / or `K.mask`, `K.bitmask`, `K.indices`,
    /// `K.nm_indices`, `K.values` (see the module docs)
    pub tensors: Vec<(String, Stored)>,
    /// (`prunekit.sparse.K`, the layout's JSON) for the header's `__metadata__`
    pub meta: Option<(String, String)>,
}

/// The metadata entry of a compressed parameter.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SparseMeta {
    encoding: String,
    shape: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<u64>,
}

/// Bytes per element of the float dtypes the compressed layouts hold; `None` for the others.
fn float_width(dtype: DType) -> Option<usize> {
    match dtype {
        DType::F16 | DType::BF16 => Some(2),
        DType::F32 => Some(4),
        DType::F64 => Some(8),
        _ => None,
    }
}

/// Whether a little-endian float element is +0.0 or -0.0 (every bit but the sign is 0).
fn is_zero(e: &[u8]) -> bool {
    match e.split_last() {
        Some((last, rest)) => last & 0x7f == 0 && rest.iter().all(|&b| b == 0),
        None => true,
    }
}

/// ceil(log2 m) for m >= 2: the bits of one N:M position.
fn position_bits(m: usize) -> usize {
    (usize::BITS - (m - 1).leading_zeros()) as usize
}

/// The (out, in, rest) view of a shape for N:M groups along axis 1; `None` below rank 2.
fn nm_axes(shape: &[usize]) -> Option<(usize, usize, usize)> {
    match shape {
        [out, input, rest @ ..] => Some((*out, *input, rest.iter().product())),
        _ => None,
    }
}

/// Calls `f(g, base, stride)` for every N:M group in order: group `g` covers flat indices
/// `base + i * stride` for i in 0..m.
fn for_each_group(
    (out, input, rest): (usize, usize, usize),
    m: usize,
    mut f: impl FnMut(usize, usize, usize) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let mut g = 0;
    for o in 0..out {
        for block in 0..input / m {
            for r in 0..rest {
                f(g, (o * input + block * m) * rest + r, rest)?;
                g += 1;
            }
        }
    }
    Ok(())
}

/// The smallest M (2..=[`MAX_NM_M`], dividing axis 1) for which every group keeps the same
/// number N (1 <= N < M) of elements, as `(n, m)`. The smallest such M is the cheapest: every
/// one holds the same k values and a larger M spends at least as many bits per position.
fn detect_nm(keep: &[u8], shape: &[usize]) -> Option<(usize, usize)> {
    let axes = nm_axes(shape)?;
    let input = axes.1;
    if axes.0 * input * axes.2 == 0 {
        return None;
    }
    (2..=input.min(MAX_NM_M))
        .filter(|&m| input.is_multiple_of(m))
        .find_map(|m| {
            let mut want = None;
            let uniform = for_each_group(axes, m, |_, base, stride| {
                let c = (0..m).filter(|i| keep[base + i * stride] != 0).count();
                match want {
                    None => want = Some(c),
                    Some(w) if w != c => return Err(String::new()),
                    Some(_) => {}
                }
                Ok(())
            })
            .is_ok();
            match want {
                Some(n) if uniform && n >= 1 && n < m => Some((n, m)),
                _ => None,
            }
        })
}

/// What the writer knows of one masked parameter.
struct Scan {
    shape: Vec<usize>,
    /// bytes per element
    es: usize,
    /// the values, little-endian, row-major
    bytes: Vec<u8>,
    /// the mask, 0 / 1 per element
    keep: Vec<u8>,
    kept: usize,
}

impl Scan {
    fn new(value: &Tensor, mask: &Tensor, es: usize) -> Result<Scan> {
        let bytes = safetensors::View::data(value).into_owned();
        let keep = mask.flatten_all()?.ne(0.0)?.to_vec1::<u8>()?;
        let kept = keep.iter().filter(|&&b| b != 0).count();
        Ok(Scan {
            shape: value.dims().to_vec(),
            es,
            bytes,
            keep,
            kept,
        })
    }

    fn n(&self) -> usize {
        self.keep.len()
    }

    fn kept_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.keep
            .iter()
            .enumerate()
            .filter(|(_, &b)| b != 0)
            .map(|(i, _)| i)
    }

    /// Bytes of tensor data of every layout that can hold this parameter, in tie-break order.
    fn sizes(&self) -> Vec<(Encoding, u64)> {
        let (n, k, es) = (self.n() as u64, self.kept as u64, self.es as u64);
        let values = k * es;
        let mut out = Vec::new();
        if let Some((nn, m)) = detect_nm(&self.keep, &self.shape) {
            out.push((
                Encoding::Nm { n: nn, m },
                values + (k * position_bits(m) as u64).div_ceil(8),
            ));
        }
        out.push((Encoding::Bitmask, values + n.div_ceil(8)));
        let mut prev = None;
        let gaps_fit = self.kept_indices().all(|i| {
            let gap = prev.map_or(i, |p| i - p);
            prev = Some(i);
            gap <= u16::MAX as usize
        });
        if gaps_fit {
            out.push((Encoding::Delta16, values + 2 * k));
        }
        if n <= 1 << 32 {
            out.push((Encoding::Index32, values + 4 * k));
        }
        let nonzero = self
            .bytes
            .chunks_exact(self.es)
            .zip(&self.keep)
            .all(|(e, &m)| (m != 0) != is_zero(e));
        if nonzero {
            out.push((Encoding::Nonzero, n * es));
        }
        out.push((Encoding::Dense, n * es + n));
        out.retain(|&(e, bytes)| !e.drops_values() || within_bound(n, bytes));
        out
    }

    /// The kept values, row-major.
    fn values(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.kept * self.es);
        for i in self.kept_indices() {
            v.extend_from_slice(&self.bytes[i * self.es..(i + 1) * self.es]);
        }
        v
    }
}

/// Whether `n` elements may be decoded from `stored` bytes ([`MAX_ELEMENTS_PER_BYTE`],
/// [`SMALL_TENSOR_ELEMENTS`]).
fn within_bound(n: u64, stored: u64) -> bool {
    n <= SMALL_TENSOR_ELEMENTS || n <= stored.saturating_mul(MAX_ELEMENTS_PER_BYTE)
}

/// Bytes of tensor data (headers not counted) of every layout that can hold `value` (any shape)
/// under `mask` (0 / 1, the same shape), smallest first; the first is the one [`encode`]
/// writes. Non-float values have only [`Encoding::Dense`].
///
/// Errors: the shapes differ; a tensor cannot be read.
pub fn layout_sizes(value: &Tensor, mask: &Tensor) -> Result<Vec<(Encoding, u64)>> {
    check_same_shape(value, mask)?;
    let Some(es) = float_width(value.dtype()) else {
        let n = value.elem_count() as u64;
        return Ok(vec![(
            Encoding::Dense,
            n * value.dtype().size_in_bytes() as u64 + n,
        )]);
    };
    let mut sizes = Scan::new(value, mask, es)?.sizes();
    sizes.sort_by_key(|&(_, b)| b); // stable: ties keep their order
    Ok(sizes)
}

fn check_same_shape(value: &Tensor, mask: &Tensor) -> Result<()> {
    if value.dims() != mask.dims() {
        return Err(GraphError::Invalid(format!(
            "a mask of shape {:?} over a parameter of shape {:?}",
            mask.dims(),
            value.dims()
        )));
    }
    Ok(())
}

/// The tensors (and metadata entry) that store parameter `key` (`node.param`) holding `value`
/// under `mask` (0 / 1, `value`'s shape), in the smallest layout ([`layout_sizes`]).
///
/// Errors: the shapes differ; a tensor cannot be read.
pub fn encode(key: &str, value: &Tensor, mask: &Tensor) -> Result<Encoded> {
    check_same_shape(value, mask)?;
    let Some(es) = float_width(value.dtype()) else {
        return dense(key, value, mask);
    };
    let scan = Scan::new(value, mask, es)?;
    match scan.sizes().iter().min_by_key(|&&(_, b)| b) {
        Some(&(encoding, _)) => build(key, value, mask, &scan, encoding),
        None => dense(key, value, mask),
    }
}

/// Format 1's layout: `K` and a U8 mask `K.mask`.
fn dense(key: &str, value: &Tensor, mask: &Tensor) -> Result<Encoded> {
    Ok(Encoded {
        encoding: Encoding::Dense,
        tensors: vec![
            (key.to_string(), Stored::Tensor(value.clone())),
            (
                format!("{key}.mask"),
                Stored::Tensor(mask.ne(0.0)?.to_dtype(DType::U8)?),
            ),
        ],
        meta: None,
    })
}

/// The tensors of `encoding`, one of `scan.sizes()`.
fn build(
    key: &str,
    value: &Tensor,
    mask: &Tensor,
    scan: &Scan,
    encoding: Encoding,
) -> Result<Encoded> {
    let es = scan.es;
    let raw = |dtype, data: Vec<u8>, width: usize| Stored::Raw {
        dtype,
        shape: vec![data.len() / width],
        data,
    };
    let values = || {
        (
            format!("{key}.values"),
            raw(value.dtype().into(), scan.values(), es),
        )
    };
    let tensors = match encoding {
        Encoding::Dense => return dense(key, value, mask),
        Encoding::Nonzero => vec![(key.to_string(), Stored::Tensor(value.clone()))],
        Encoding::Bitmask => {
            let mut bits = vec![0u8; scan.n().div_ceil(8)];
            for i in scan.kept_indices() {
                bits[i / 8] |= 1 << (i % 8);
            }
            vec![
                (
                    format!("{key}.bitmask"),
                    raw(safetensors::Dtype::U8, bits, 1),
                ),
                values(),
            ]
        }
        Encoding::Delta16 | Encoding::Index32 => {
            let mut data = Vec::new();
            let mut prev = None;
            for i in scan.kept_indices() {
                if encoding == Encoding::Delta16 {
                    let gap = prev.map_or(i, |p| i - p) as u16; // fits: checked by `sizes`
                    data.extend_from_slice(&gap.to_le_bytes());
                } else {
                    data.extend_from_slice(&(i as u32).to_le_bytes());
                }
                prev = Some(i);
            }
            let (dtype, width) = if encoding == Encoding::Delta16 {
                (safetensors::Dtype::U16, 2)
            } else {
                (safetensors::Dtype::U32, 4)
            };
            vec![
                (format!("{key}.indices"), raw(dtype, data, width)),
                values(),
            ]
        }
        Encoding::Nm { n, m } => {
            let axes = nm_axes(&scan.shape).ok_or_else(|| {
                GraphError::Invalid(format!("`{key}`: an N:M layout needs two axes"))
            })?;
            let bits = position_bits(m);
            let mut w = BitWriter::new(scan.kept * bits);
            for_each_group(axes, m, |_, base, stride| {
                for i in 0..m {
                    if scan.keep[base + i * stride] != 0 {
                        w.push(i as u32, bits);
                    }
                }
                Ok(())
            })
            .map_err(GraphError::Invalid)?;
            debug_assert_eq!(w.len, scan.kept * bits, "{n}:{m} groups");
            vec![
                (
                    format!("{key}.nm_indices"),
                    raw(safetensors::Dtype::U8, w.bytes, 1),
                ),
                values(),
            ]
        }
    };
    let (n, m) = match encoding {
        Encoding::Nm { n, m } => (Some(n as u64), Some(m as u64)),
        _ => (None, None),
    };
    let meta = SparseMeta {
        encoding: encoding.name().to_string(),
        shape: scan.shape.iter().map(|&d| d as u64).collect(),
        n,
        m,
    };
    let json = serde_json::to_string(&meta).map_err(|e| GraphError::Invalid(e.to_string()))?;
    Ok(Encoded {
        encoding,
        tensors,
        meta: Some((format!("{META_PREFIX}{key}"), json)),
    })
}

/// A little-endian bit stream (bit `j` is bit `j % 8` of byte `j / 8`).
struct BitWriter {
    bytes: Vec<u8>,
    len: usize,
}

impl BitWriter {
    fn new(bits: usize) -> Self {
        Self {
            bytes: vec![0; bits.div_ceil(8)],
            len: 0,
        }
    }
    fn push(&mut self, v: u32, bits: usize) {
        for b in 0..bits {
            if v >> b & 1 != 0 {
                let j = self.len + b;
                self.bytes[j / 8] |= 1 << (j % 8);
            }
        }
        self.len += bits;
    }
}

/// Reads `bits` bits at bit `at` of a little-endian bit stream (the caller checks the length).
fn read_bits(bytes: &[u8], at: usize, bits: usize) -> usize {
    (0..bits)
        .filter(|b| bytes[(at + b) / 8] >> ((at + b) % 8) & 1 != 0)
        .map(|b| 1 << b)
        .sum()
}

/// Reads parameter `key` (`node.param`) stored in a compressed layout: `json` is its metadata
/// entry ([`META_PREFIX`]`key`), `want` the shape model.json declares (already bounded). The
/// tensors it reads are removed from `unused`. Returns the value (the stored dtype, every masked
/// element +0.0) and the mask (0 / 1 in the same dtype), both of shape `want`, on `device`.
///
/// Errors (one line naming the file and the tensor): unreadable metadata or an unknown
/// encoding; a shape that overflows, differs from `want`, or holds more than
/// [`MAX_ELEMENTS_PER_BYTE`] elements per stored byte (beyond [`SMALL_TENSOR_ELEMENTS`]); a
/// missing tensor or one of the wrong dtype or rank; a bitmask of the wrong byte length or with
/// bits past the end; a value count other than the mask's; an index past the end or not
/// increasing; an N:M position >= M or repeated within its group, or N, M that do not fit the
/// shape.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    st: &safetensors::SafeTensors,
    key: &str,
    json: &str,
    want: &[usize],
    op: &str,
    path: &Path,
    device: &Device,
    unused: &mut BTreeSet<String>,
) -> Result<(Tensor, Tensor)> {
    let fail = |msg: String| GraphError::file(path, format!("tensor `{key}`: {msg}"));
    let meta: SparseMeta = serde_json::from_str(json)
        .map_err(|e| fail(format!("unreadable metadata `{META_PREFIX}{key}`: {e}")))?;
    // the shape: its product may not overflow, and it must be what model.json declares
    let mut n: u64 = 1;
    for &d in &meta.shape {
        n = n
            .checked_mul(d)
            .ok_or_else(|| fail(format!("shape {:?} overflows", meta.shape)))?;
    }
    let declared: Vec<u64> = want.iter().map(|&d| d as u64).collect();
    if meta.shape != declared {
        return Err(fail(format!(
            "stored with shape {:?}, model.json's {op} op needs {want:?}",
            meta.shape
        )));
    }
    let encoding = match (meta.encoding.as_str(), meta.n, meta.m) {
        ("nonzero", None, None) => Encoding::Nonzero,
        ("bitmask", None, None) => Encoding::Bitmask,
        ("delta16", None, None) => Encoding::Delta16,
        ("index32", None, None) => Encoding::Index32,
        ("nm", Some(nn), Some(m)) => {
            let input = want.get(1).copied().unwrap_or(0) as u64;
            if want.len() < 2 || !(2..=MAX_NM_M as u64).contains(&m) || nn == 0 || nn >= m {
                return Err(fail(format!(
                    "N:M {nn}:{m} needs 1 <= N < M <= {MAX_NM_M} and a shape of two axes or more, it has {want:?}"
                )));
            }
            if !input.is_multiple_of(m) {
                return Err(fail(format!(
                    "N:M {nn}:{m}: M does not divide axis 1 of shape {want:?}"
                )));
            }
            Encoding::Nm {
                n: nn as usize,
                m: m as usize,
            }
        }
        (e, nn, m) => {
            return Err(fail(format!(
                "unknown layout `{e}`{} (this prunekit reads nonzero, bitmask, delta16, index32 and nm with n and m)",
                match (nn, m) {
                    (None, None) => String::new(),
                    _ => format!(" with n {nn:?}, m {m:?}"),
                }
            )))
        }
    };
    let n = n as usize; // equal to the bounded declared shape: at most 2^31
    if encoding == Encoding::Nonzero {
        let view = take(st, key, path, unused)?;
        if view.shape() != want {
            return Err(fail(format!(
                "has shape {:?}, model.json's {op} op needs {want:?}",
                view.shape()
            )));
        }
        let t =
            candle_core::safetensors::Load::load(&view, device).map_err(|e| fail(e.to_string()))?;
        if float_width(t.dtype()).is_none() {
            return Err(fail(format!(
                "the nonzero layout holds F16, BF16, F32 or F64 values, not {:?}",
                view.dtype()
            )));
        }
        let keep = t.ne(0.0)?;
        let mask = keep.to_dtype(t.dtype())?;
        return Ok((keep.where_cond(&t, &t.zeros_like()?)?, mask));
    }
    // the values and the tensor that says where they go
    let values_key = format!("{key}.values");
    let values = take(st, &values_key, path, unused)?;
    let (dtype, es) = st_float(values.dtype()).ok_or_else(|| {
        fail(format!(
            "`{values_key}` holds {:?}; values are F16, BF16, F32 or F64",
            values.dtype()
        ))
    })?;
    one_axis(&values, &values_key, path)?;
    let k = values.shape()[0];
    let (index_key, index_dtype) = match encoding {
        Encoding::Bitmask => (format!("{key}.bitmask"), safetensors::Dtype::U8),
        Encoding::Delta16 => (format!("{key}.indices"), safetensors::Dtype::U16),
        Encoding::Index32 => (format!("{key}.indices"), safetensors::Dtype::U32),
        _ => (format!("{key}.nm_indices"), safetensors::Dtype::U8),
    };
    let index = take(st, &index_key, path, unused)?;
    if index.dtype() != index_dtype {
        return Err(fail(format!(
            "`{index_key}` holds {:?}, the {} layout stores {index_dtype:?}",
            index.dtype(),
            encoding.name()
        )));
    }
    one_axis(&index, &index_key, path)?;
    let stored = (values.data().len() + index.data().len()) as u64;
    if !within_bound(n as u64, stored) {
        return Err(fail(format!(
            "shape {want:?} holds {n} elements but its tensors store only {stored} bytes (at most {MAX_ELEMENTS_PER_BYTE} elements per byte): refused"
        )));
    }
    if k > n {
        return Err(fail(format!(
            "`{values_key}` holds {k} values, more than the {n} elements of shape {want:?}"
        )));
    }
    // the mask, 0 / 1 per element (n bytes: bounded above)
    let mut keep = vec![0u8; n];
    let idx = index.data();
    match encoding {
        Encoding::Bitmask => {
            if idx.len() != n.div_ceil(8) {
                return Err(fail(format!(
                    "bitmask `{index_key}` has {} bytes, shape {want:?} ({n} elements) needs {}",
                    idx.len(),
                    n.div_ceil(8)
                )));
            }
            check_padding(idx, n, &index_key, path)?;
            for (i, b) in keep.iter_mut().enumerate() {
                *b = idx[i / 8] >> (i % 8) & 1;
            }
        }
        Encoding::Delta16 | Encoding::Index32 => {
            let width = if encoding == Encoding::Delta16 { 2 } else { 4 };
            let count = idx.len() / width;
            if count != k {
                return Err(fail(format!(
                    "`{index_key}` holds {count} indices, `{values_key}` {k} values"
                )));
            }
            let mut prev: Option<u64> = None;
            for (j, c) in idx.chunks_exact(width).enumerate() {
                let x = c.iter().rev().fold(0u64, |a, &b| a << 8 | b as u64);
                let at = match (encoding, prev) {
                    (Encoding::Delta16, Some(p)) if x == 0 => {
                        return Err(fail(format!(
                            "`{index_key}`: gap {j} is 0 (index {p} repeated; gaps are >= 1)"
                        )))
                    }
                    (Encoding::Delta16, Some(p)) => p + x,
                    (Encoding::Index32, Some(p)) if x <= p => {
                        return Err(fail(format!(
                            "`{index_key}`: index {j} ({x}) does not increase from {p}"
                        )))
                    }
                    _ => x,
                };
                if at >= n as u64 {
                    return Err(fail(format!(
                        "`{index_key}`: index {j} is {at}, past the end of shape {want:?} ({n} elements)"
                    )));
                }
                keep[at as usize] = 1;
                prev = Some(at);
            }
        }
        Encoding::Nm { n: nn, m } => {
            let axes = nm_axes(want).ok_or_else(|| fail("N:M needs two axes".into()))?;
            let groups = n / m;
            let bits = position_bits(m);
            if groups * nn != k {
                return Err(fail(format!(
                    "`{values_key}` holds {k} values, {groups} groups of {nn}:{m} keep {}",
                    groups * nn
                )));
            }
            let need = (k * bits).div_ceil(8);
            if idx.len() != need {
                return Err(fail(format!(
                    "`{index_key}` has {} bytes, {k} positions of {bits} bits need {need}",
                    idx.len()
                )));
            }
            check_padding(idx, k * bits, &index_key, path)?;
            let mut at = 0;
            for_each_group(axes, m, |g, base, stride| {
                for _ in 0..nn {
                    let i = read_bits(idx, at, bits);
                    at += bits;
                    if i >= m {
                        return Err(format!(
                            "`{index_key}`: group {g} holds position {i}, not below M = {m}"
                        ));
                    }
                    let e = &mut keep[base + i * stride];
                    if *e != 0 {
                        return Err(format!("`{index_key}`: group {g} repeats position {i}"));
                    }
                    *e = 1;
                }
                Ok(())
            })
            .map_err(fail)?;
        }
        Encoding::Dense | Encoding::Nonzero => unreachable!("handled above"),
    }
    let kept = keep.iter().filter(|&&b| b != 0).count();
    if kept != k {
        return Err(fail(format!(
            "`{values_key}` holds {k} values, `{index_key}` keeps {kept}"
        )));
    }
    // the values into their places; every other element stays +0.0 (all bits 0)
    let vals = values.data();
    let mut dense = vec![0u8; n * es];
    for (j, i) in keep
        .iter()
        .enumerate()
        .filter(|(_, &b)| b != 0)
        .map(|(i, _)| i)
        .enumerate()
    {
        dense[i * es..(i + 1) * es].copy_from_slice(&vals[j * es..(j + 1) * es]);
    }
    let value = Tensor::from_raw_buffer(&dense, dtype, want, device)?;
    drop(dense);
    let mask = Tensor::from_vec(keep, want, device)?.to_dtype(dtype)?;
    Ok((value, mask))
}

/// The candle dtype and width of a stored float dtype.
fn st_float(dtype: safetensors::Dtype) -> Option<(DType, usize)> {
    use safetensors::Dtype as D;
    match dtype {
        D::F16 => Some((DType::F16, 2)),
        D::BF16 => Some((DType::BF16, 2)),
        D::F32 => Some((DType::F32, 4)),
        D::F64 => Some((DType::F64, 8)),
        _ => None,
    }
}

/// Tensor `name` of the file, marked used; a missing one is an error naming it.
fn take<'a>(
    st: &safetensors::SafeTensors<'a>,
    name: &str,
    path: &Path,
    unused: &mut BTreeSet<String>,
) -> Result<safetensors::tensor::TensorView<'a>> {
    if !unused.remove(name) {
        return Err(GraphError::file(
            path,
            format!("missing tensor `{name}` (its metadata names a compressed layout)"),
        ));
    }
    st.tensor(name)
        .map_err(|e| GraphError::file(path, format!("tensor `{name}`: {e}")))
}

fn one_axis(view: &safetensors::tensor::TensorView, name: &str, path: &Path) -> Result<()> {
    if view.shape().len() != 1 {
        return Err(GraphError::file(
            path,
            format!(
                "tensor `{name}` has shape {:?}, a compressed layout stores one axis",
                view.shape()
            ),
        ));
    }
    Ok(())
}

/// The bits of the last byte past `bits` must be 0.
fn check_padding(bytes: &[u8], bits: usize, name: &str, path: &Path) -> Result<()> {
    if !bits.is_multiple_of(8) {
        if let Some(&last) = bytes.last() {
            if last >> (bits % 8) != 0 {
                return Err(GraphError::file(
                    path,
                    format!("tensor `{name}` sets bits past its last entry (bit {bits} on)"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Encodes `value` under `mask` as `encoding` (which must be possible), writes the tensors to
    /// a safetensors buffer, decodes it and returns what came back.
    fn through_file(value: &Tensor, mask: &Tensor, encoding: Option<Encoding>) -> (Tensor, Tensor) {
        let es = float_width(value.dtype()).unwrap();
        let scan = Scan::new(value, mask, es).unwrap();
        let e = match encoding {
            Some(enc) => {
                assert!(
                    scan.sizes().iter().any(|&(x, _)| x == enc),
                    "{enc} possible"
                );
                build("n.w", value, mask, &scan, enc).unwrap()
            }
            None => encode("n.w", value, mask).unwrap(),
        };
        let (meta_key, json) = e.meta.clone().unwrap();
        let meta: std::collections::HashMap<String, String> = [(meta_key, json.clone())].into();
        let bytes = safetensors::tensor::serialize(e.tensors, Some(meta)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut unused: BTreeSet<String> = st.names().into_iter().map(String::from).collect();
        let out = decode(
            &st,
            "n.w",
            &json,
            value.dims(),
            "linear",
            Path::new("model.safetensors"),
            &Device::Cpu,
            &mut unused,
        )
        .unwrap();
        assert!(unused.is_empty(), "every stored tensor is read: {unused:?}");
        out
    }

    fn bytes(t: &Tensor) -> Vec<u8> {
        safetensors::View::data(t).into_owned()
    }

    #[test]
    fn position_bits_are_ceil_log2() {
        let got: Vec<usize> = [2, 3, 4, 5, 6, 8, 9, 16, 17, 256]
            .iter()
            .map(|&m| position_bits(m))
            .collect();
        assert_eq!(got, vec![1, 2, 2, 3, 3, 3, 4, 4, 5, 8]);
    }

    #[test]
    fn bit_streams_are_little_endian() {
        let mut w = BitWriter::new(3 * 5);
        for v in [5u32, 0, 7, 1, 2] {
            w.push(v, 3);
        }
        // 101 000 111 100 010 from bit 0 on
        assert_eq!(w.bytes, vec![0b1100_0101, 0b0010_0011]);
        let back: Vec<usize> = (0..5).map(|i| read_bits(&w.bytes, 3 * i, 3)).collect();
        assert_eq!(back, vec![5, 0, 7, 1, 2]);
    }

    #[test]
    fn nm_is_detected_with_the_smallest_uniform_m_along_axis_1() {
        // one row: pairs keep 2, 0, .. (not 1:2), quads keep 2 each
        let keep = [1, 1, 0, 0, 0, 1, 0, 1];
        assert_eq!(detect_nm(&keep, &[1, 8]), Some((2, 4)));
        assert_eq!(detect_nm(&keep, &[8]), None, "one axis");
        assert_eq!(detect_nm(&[1, 1, 1, 1], &[1, 4]), None, "N = M");
        assert_eq!(detect_nm(&[0, 0, 0, 0], &[1, 4]), None, "N = 0");
        // [1, 4, 2]: groups run along axis 1 with stride 2; r = 0 keeps in 0, 1, r = 1 in 2, 3
        let keep = [1, 0, 1, 0, 0, 1, 0, 1];
        assert_eq!(detect_nm(&keep, &[1, 4, 2]), Some((2, 4)));
        // the same bytes as one row are 1:2
        assert_eq!(detect_nm(&keep, &[1, 8]), Some((1, 2)));
    }

    #[test]
    fn sizes_follow_the_formulas() {
        // 2 x 8 f32, 4 kept, index gaps small
        let v = t((0..16).map(|i| i as f32 + 1.0).collect(), &[2, 8]);
        let m = t(
            vec![
                1., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 0., 1.,
            ],
            &[2, 8],
        );
        let sizes: BTreeMap<&str, u64> = layout_sizes(&v, &m)
            .unwrap()
            .into_iter()
            .map(|(e, b)| (e.name(), b))
            .collect();
        assert_eq!(sizes["bitmask"], 16 + 2);
        assert_eq!(sizes["delta16"], 16 + 8);
        assert_eq!(sizes["index32"], 16 + 16);
        assert_eq!(sizes["dense"], 64 + 16);
        // 1:4 along axis 1: 4 positions of 2 bits
        assert_eq!(sizes["nm"], 16 + 1);
        assert!(!sizes.contains_key("nonzero"), "masked values are nonzero");
        assert_eq!(
            layout_sizes(&v, &m).unwrap()[0].0,
            Encoding::Nm { n: 1, m: 4 }
        );
    }

    #[test]
    fn non_float_values_stay_dense_with_a_u8_mask() {
        let v = Tensor::new(&[[1u32, 2], [3, 4]], &Device::Cpu).unwrap();
        let m = Tensor::new(&[[1u32, 0], [0, 1]], &Device::Cpu).unwrap();
        let e = encode("n.w", &v, &m).unwrap();
        assert_eq!(e.encoding, Encoding::Dense);
        assert!(e.meta.is_none());
        let names: Vec<&str> = e.tensors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["n.w", "n.w.mask"]);
        assert_eq!(
            layout_sizes(&v, &m).unwrap(),
            vec![(Encoding::Dense, 16 + 4)]
        );
    }

    #[test]
    fn a_mask_of_another_shape_is_an_error() {
        let v = t(vec![1.0; 6], &[2, 3]);
        let m = t(vec![1.0; 6], &[3, 2]);
        assert!(encode("n.w", &v, &m).is_err());
    }

    #[test]
    fn the_writer_keeps_to_the_readers_bound() {
        // 2^21 elements, one kept: indices would be 2^21 elements from 8 bytes; the bitmask is
        // chosen (2^18 bytes: 8 elements per byte)
        let n = 1 << 21;
        let v = Tensor::ones((2048, 1024), DType::F32, &Device::Cpu).unwrap();
        let mut keep = vec![0f32; n];
        keep[12345] = 1.0;
        let m = t(keep, &[2048, 1024]);
        let e = encode("n.w", &v, &m).unwrap();
        assert_eq!(e.encoding, Encoding::Bitmask);
    }

    fn dtype_strategy() -> impl Strategy<Value = DType> {
        prop_oneof![
            Just(DType::F32),
            Just(DType::F16),
            Just(DType::BF16),
            Just(DType::F64)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every possible layout of a random mask over random values (negative ones, zeros, NaN
        /// included) decodes to the same bytes and mask, masked elements +0.0.
        #[test]
        fn every_layout_roundtrips(
            out in 1usize..6,
            blocks in 1usize..5,
            m in prop_oneof![Just(2usize), Just(4), Just(6), Just(8)],
            rest in 1usize..4,
            density in 0.0f64..1.0,
            nm_n in 1usize..8,
            nm_mask in any::<bool>(),
            dtype in dtype_strategy(),
            seed in any::<u64>(),
        ) {
            use rand::{Rng, SeedableRng};
            let shape = [out, blocks * m, rest];
            let n: usize = shape.iter().product();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut vals: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            vals[0] = 0.0;
            if n > 2 {
                vals[1] = f32::NAN;
                vals[2] = -0.0;
            }
            let keep: Vec<f32> = if nm_mask {
                // exactly N of every group of M along axis 1
                let nn = nm_n.min(m - 1);
                let mut k = vec![0f32; n];
                for o in 0..out {
                    for b in 0..blocks {
                        for r in 0..rest {
                            let mut pos: Vec<usize> = (0..m).collect();
                            for i in 0..nn {
                                let j = rng.random_range(i..m);
                                pos.swap(i, j);
                                k[((o * blocks * m) + b * m + pos[i]) * rest + r] = 1.0;
                            }
                        }
                    }
                }
                k
            } else {
                (0..n).map(|_| if rng.random_bool(density) { 1.0 } else { 0.0 }).collect()
            };
            let value = t(vals, &shape).to_dtype(dtype).unwrap();
            let mask = t(keep.clone(), &shape).to_dtype(dtype).unwrap();
            let es = float_width(dtype).unwrap();
            let possible: Vec<Encoding> = Scan::new(&value, &mask, es)
                .unwrap()
                .sizes()
                .into_iter()
                .map(|(e, _)| e)
                .filter(|&e| e != Encoding::Dense)
                .collect();
            if nm_mask {
                prop_assert!(possible.iter().any(|e| matches!(e, Encoding::Nm { .. })), "{possible:?}");
            }
            for enc in possible.into_iter().map(Some).chain([None]) {
                let (v, mk) = through_file(&value, &mask, enc);
                prop_assert_eq!(v.dtype(), dtype);
                prop_assert_eq!(bytes(&mk), bytes(&mask), "{:?}: mask", enc);
                let (got, want) = (bytes(&v), bytes(&value));
                for (i, &k) in keep.iter().enumerate() {
                    let e = &got[i * es..(i + 1) * es];
                    if k == 0.0 {
                        prop_assert!(e.iter().all(|&b| b == 0), "{:?}: element {} +0.0", enc, i);
                    } else {
                        prop_assert_eq!(e, &want[i * es..(i + 1) * es], "{:?}: element {}", enc, i);
                    }
                }
            }
        }
    }
}
