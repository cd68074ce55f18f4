//! Fast CPU kernels used as candle custom ops: convolution (im2col + GEMM, and a direct depthwise
//! kernel), with forward and both backward passes. Each public function falls back to candle's own op on other devices or dtypes, so
//! the same graph runs everywhere and candle stays the reference in tests.

/// Runs `$body` on one, two or three CPU storages of the same float type (f32 or f64), each bound
/// to the name before its `=` as a contiguous slice, and wraps the resulting Vec back into storage.
/// Other dtypes are an error naming the kernel.
macro_rules! float_kernel {
    (@arm $name:expr, $variant:ident, [$($a:ident = $v:ident, $l:expr);+] => $body:expr) => {{
        $(let $a = $crate::kernels::contiguous($v, $l, $name)?;)+
        candle_core::CpuStorage::$variant($body)
    }};
    ($name:expr; $a:ident = $sa:expr, $la:expr => $body:expr) => {
        match $sa {
            candle_core::CpuStorage::F32(v) => $crate::kernels::float_kernel!(@arm $name, F32, [$a = v, $la] => $body),
            candle_core::CpuStorage::F64(v) => $crate::kernels::float_kernel!(@arm $name, F64, [$a = v, $la] => $body),
            _ => candle_core::bail!("{}: only f32 and f64 are supported", $name),
        }
    };
    ($name:expr; $a:ident = $sa:expr, $la:expr; $b:ident = $sb:expr, $lb:expr => $body:expr) => {
        match ($sa, $sb) {
            (candle_core::CpuStorage::F32(v), candle_core::CpuStorage::F32(w)) => {
                $crate::kernels::float_kernel!(@arm $name, F32, [$a = v, $la; $b = w, $lb] => $body)
            }
            (candle_core::CpuStorage::F64(v), candle_core::CpuStorage::F64(w)) => {
                $crate::kernels::float_kernel!(@arm $name, F64, [$a = v, $la; $b = w, $lb] => $body)
            }
            _ => candle_core::bail!("{}: only f32 and f64 of one type are supported", $name),
        }
    };
    ($name:expr; $a:ident = $sa:expr, $la:expr; $b:ident = $sb:expr, $lb:expr; $c:ident = $sc:expr, $lc:expr => $body:expr) => {
        match ($sa, $sb, $sc) {
            (candle_core::CpuStorage::F32(v), candle_core::CpuStorage::F32(w), candle_core::CpuStorage::F32(u)) => {
                $crate::kernels::float_kernel!(@arm $name, F32, [$a = v, $la; $b = w, $lb; $c = u, $lc] => $body)
            }
            (candle_core::CpuStorage::F64(v), candle_core::CpuStorage::F64(w), candle_core::CpuStorage::F64(u)) => {
                $crate::kernels::float_kernel!(@arm $name, F64, [$a = v, $la; $b = w, $lb; $c = u, $lc] => $body)
            }
            _ => candle_core::bail!("{}: only f32 and f64 of one type are supported", $name),
        }
    };
}
pub(crate) use float_kernel;

pub mod activation;
pub mod batch_norm;
pub mod channel;
pub mod conv;
pub mod depthwise;
pub mod recurrent;
pub mod sparse;

use std::sync::atomic::{AtomicBool, Ordering};

use num_traits::Float;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Switches the custom kernels on or off process-wide; off, every op runs candle's own ops (the
/// reference, and the "stock candle" column of the benchmark).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the custom kernels are on (the default).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the CPU kernels can run on `x`: kernels on, CPU tensor, f32 or f64.
pub fn supported(x: &candle_core::Tensor) -> bool {
    enabled()
        && x.device().is_cpu()
        && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// The elements of a contiguous tensor's storage; `what` names the kernel in the error otherwise.
pub(crate) fn contiguous<'a, T>(
    v: &'a [T],
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expects contiguous tensors"),
    }
}

/// The widest vector extension this CPU has that the kernels' loops are compiled for: the loops
/// are plain Rust, inlined into functions built with `#[target_feature]` for the extension, so
/// that LLVM vectorises them with its registers (the default x86-64 target stops at SSE2). Each
/// kernel module adds its own dispatch methods (`depthwise`, `sparse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Base,
}

impl Isa {
    /// AVX-512 (F + VL), else AVX2 + FMA, else the base target.
    pub(crate) fn get() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                return Self::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Self::Avx2;
            }
        }
        Self::Base
    }
}

/// Element types the kernels run on.
pub trait Elem: Float + Send + Sync + 'static {}
impl Elem for f32 {}
impl Elem for f64 {}

/// A row-major matrix view: element (r, c) at `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A contiguous row-major [rows, cols] matrix.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a contiguous row-major [rows, cols] matrix.
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }
    fn span(&self, rows: usize, cols: usize) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * self.rs + (cols - 1) * self.cs + 1
        }
    }
}

#[allow(clippy::too_many_arguments)] // the GEMM shape (m, n, k) reads best spelled out
/// dst[m, n] (row-major, contiguous) = a[m, k] x b[k, n] (+ dst when `accumulate`), with the gemm
/// crate candle uses. `threads` > 1 lets gemm split the work.
pub(crate) fn matmul<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
    threads: usize,
) {
    assert!(dst.len() >= m * n, "matmul: destination too small");
    assert!(
        a.data.len() >= a.span(m, k) && b.data.len() >= b.span(k, n),
        "matmul: operand too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].iter_mut().for_each(|v| *v = T::zero());
        }
        return;
    }
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every index the strides can reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

/// Helpers shared by the kernels' tests.
/// Parts a batch reduction is split into by [`ordered_sum`]: a constant, so that the parts (and
/// the order their partial sums are added in) depend on the batch size only.
pub(crate) const REDUCTION_PARTS: usize = 16;

/// A parallel reduction whose result is the same on every run and any number of threads: the
/// items `0..n` are split into at most [`REDUCTION_PARTS`] contiguous ranges of equal length,
/// `fold` accumulates each range (in order) into its own `init()` in parallel, and the partial
/// results are combined by `add` in range order. (rayon's `fold` + `reduce` splits work as threads
/// steal it, so float sums came out different from run to run.) `n = 0` gives `init()`.
pub(crate) fn ordered_sum<A: Send>(
    n: usize,
    init: impl Fn() -> A + Sync + Send,
    fold: impl Fn(&mut A, std::ops::Range<usize>) + Sync + Send,
    add: impl Fn(&mut A, A),
) -> A {
    use rayon::prelude::*;
    let parts = n.clamp(1, REDUCTION_PARTS);
    let size = n.div_ceil(parts).max(1);
    let partials: Vec<A> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let mut acc = init();
            let range = (p * size).min(n)..((p + 1) * size).min(n);
            if !range.is_empty() {
                fold(&mut acc, range);
            }
            acc
        })
        .collect();
    let mut it = partials.into_iter();
    let mut total = it.next().unwrap_or_else(&init);
    for a in it {
        add(&mut total, a);
    }
    total
}

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::{Device, Tensor};
    use rand::Rng;

    /// Seeded uniform f64 values in [lo, hi).
    pub fn uniform(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
        let mut r = crate::graph::rng(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| r.random_range(lo..hi)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches")
    }

    /// Largest absolute difference of two f64 tensors.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f64>())
            .expect("same shapes, f64")
    }
}
