//! Sparse x dense products for inference with pruned weights (issue 16 §2): a weight matrix held
//! by its kept elements only (compressed sparse rows, or N:M as packed values plus each value's
//! position in its group), multiplied with dense activations without touching a pruned weight.
//!
//! One kernel serves Linear and convolution: `dst[r, 0..L] = sum_k W[r, k] * src[off(k) ..
//! off(k) + L]`, where `off` maps a column of the weight to the start of a contiguous run of L
//! activations. For a Linear at batch B the activations are transposed to [in, B] (`off(k) = k B`,
//! L = B); for a convolution they are the input planes zero-padded once (stride 1: the run of
//! kernel tap (c, ky, kx) starts at `c * plane + ky * pw + kx`, as in the shifted-GEMM layout of
//! [`super::conv`]) or the im2col matrix (other strides). This is the layout XNNPACK's sparse
//! inference uses (Elsen et al., "Fast Sparse ConvNets", CVPR 2020): every kept weight is
//! broadcast once and multiplies a vector of activations, so the work is proportional to the kept
//! weights. Each output row is computed in register tiles of 32 (or 16) activations, accumulated
//! over the row's kept weights and stored once. At batch 1 a Linear is a gather dot product per
//! row instead (`gemv`).
//!
//! f32 only (the precision of inference here); forward only: training keeps the dense path with
//! masks.

use rayon::prelude::*;

use super::conv::ConvGeom;
use super::Isa;

/// How the kept elements of each row of a [`SparseMatrix`] are found.
#[derive(Clone, Debug, PartialEq)]
pub enum RowIndex {
    /// Compressed sparse rows: row r keeps `values[ptr[r]..ptr[r + 1]]` at columns
    /// `cols[ptr[r]..ptr[r + 1]]` (increasing).
    Csr { ptr: Vec<u32>, cols: Vec<u32> },
    /// N:M: the columns of a row are `rest` interleaved runs of blocks of `m` (a weight [out, in,
    /// ..rest] flattened; a Linear has `rest` = 1, a kh x kw convolution kernel `rest` = kh kw),
    /// and each group of m columns `(b m + j) rest + p`, j < m, keeps exactly n. Row r holds
    /// `cols / m * n` values in (block b, position p, kept j) order; `pos` gives each value's j.
    Nm {
        n: usize,
        m: usize,
        rest: usize,
        pos: Vec<u8>,
    },
    /// A bitmask per block of 16 columns: row r keeps `values[ptr[r]..ptr[r + 1]]` in column
    /// order at the set bits of `masks[r * blocks..(r + 1) * blocks]` (bit i of block j: column
    /// 16 j + i; blocks = ceil(cols / 16)). The layout of AVX-512's expand-load: a batch-1 row is
    /// one masked load and one FMA per 16 columns, whatever the sparsity ([`SparseMatrix::to_bitmask`]).
    Bitmask { ptr: Vec<u32>, masks: Vec<u16> },
}

/// A pruned weight matrix [rows, cols] (a Linear weight [out, in], or a convolution kernel [out,
/// in kh kw]) that keeps only its kept elements, for [`SparseMatrix::linear`] and
/// [`SparseMatrix::conv2d`].
#[derive(Clone, Debug, PartialEq)]
/// Its fields are private: the kernels index without bounds checks on the columns it holds, so
/// only [`SparseMatrix::from_dense`] builds one.
pub struct SparseMatrix {
    rows: usize,
    cols: usize,
    /// the kept values, row by row
    values: Vec<f32>,
    index: RowIndex,
}

/// The least work (MACs) split over threads.
const PAR_MIN: usize = 1 << 21;

/// The N:M patterns tried, most common first.
const NM_PATTERNS: [(usize, usize); 6] = [(2, 4), (1, 4), (4, 8), (2, 8), (1, 2), (3, 4)];

impl SparseMatrix {
    /// The kept elements of a dense row-major [rows, cols] matrix `w`: those where `keep` (e.g. a
    /// pruning mask, 1 = kept) is nonzero, or, without one, the nonzero values. The N:M layout is
    /// chosen when every group of m columns (in blocks along the input axis, `rest` positions
    /// interleaved, see [`RowIndex::Nm`]) keeps exactly n for one of 2:4, 1:4, 4:8, 2:8, 1:2,
    /// 3:4; otherwise CSR.
    ///
    /// # Panics
    /// When `w` (or `keep`) does not hold rows x cols values, `rest` does not divide cols, or
    /// cols exceeds u32 (callers build it from a checked parameter).
    pub fn from_dense(
        w: &[f32],
        keep: Option<&[f32]>,
        rows: usize,
        cols: usize,
        rest: usize,
    ) -> Self {
        assert_eq!(
            w.len(),
            rows * cols,
            "sparse matrix: values do not fit the shape"
        );
        assert!(
            rest > 0 && cols.is_multiple_of(rest),
            "sparse matrix: rest must divide cols"
        );
        assert!(
            u32::try_from(cols).is_ok(),
            "sparse matrix: too many columns"
        );
        let kept = |i: usize| match keep {
            Some(k) => k[i] != 0.0,
            None => w[i] != 0.0,
        };
        if let Some((n, m)) = detect_nm(&kept, rows, cols, rest) {
            let groups = cols / m;
            let mut values = Vec::with_capacity(rows * groups * n);
            let mut pos = Vec::with_capacity(rows * groups * n);
            for r in 0..rows {
                for b in 0..cols / rest / m {
                    for p in 0..rest {
                        for j in 0..m {
                            let i = r * cols + (b * m + j) * rest + p;
                            if kept(i) {
                                values.push(w[i]);
                                pos.push(j as u8);
                            }
                        }
                    }
                }
            }
            return Self {
                rows,
                cols,
                values,
                index: RowIndex::Nm { n, m, rest, pos },
            };
        }
        let mut ptr = Vec::with_capacity(rows + 1);
        let mut cs = Vec::new();
        let mut values = Vec::new();
        ptr.push(0u32);
        for r in 0..rows {
            for c in 0..cols {
                if kept(r * cols + c) {
                    cs.push(c as u32);
                    values.push(w[r * cols + c]);
                }
            }
            ptr.push(u32::try_from(cs.len()).unwrap_or(u32::MAX));
        }
        Self {
            rows,
            cols,
            values,
            index: RowIndex::Csr { ptr, cols: cs },
        }
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs, times kh kw for a convolution kernel).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// How each row's kept elements are found.
    pub fn index(&self) -> &RowIndex {
        &self.index
    }

    /// Kept elements.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// The layout's name: `csr`, `bitmask` or `N:M`.
    pub fn format(&self) -> String {
        match &self.index {
            RowIndex::Csr { .. } => "csr".into(),
            RowIndex::Nm { n, m, .. } => format!("{n}:{m}"),
            RowIndex::Bitmask { .. } => "bitmask".into(),
        }
    }

    /// Bytes the matrix holds (values and indices).
    pub fn bytes(&self) -> usize {
        4 * self.values.len()
            + match &self.index {
                RowIndex::Csr { ptr, cols } => 4 * (ptr.len() + cols.len()),
                RowIndex::Nm { pos, .. } => pos.len(),
                RowIndex::Bitmask { ptr, masks } => 4 * ptr.len() + 2 * masks.len(),
            }
    }

    /// The same matrix in the [`RowIndex::Bitmask`] layout.
    pub fn to_bitmask(&self) -> SparseMatrix {
        let blocks = self.cols.div_ceil(16);
        let mut masks = vec![0u16; self.rows * blocks];
        let mut ptr = Vec::with_capacity(self.rows + 1);
        let mut values = Vec::with_capacity(self.nnz());
        ptr.push(0u32);
        let mut row = Vec::new();
        for r in 0..self.rows {
            row.clear();
            self.for_each_kept(r, |c, v| row.push((c, v)));
            row.sort_by_key(|&(c, _)| c);
            for &(c, v) in &row {
                masks[r * blocks + c / 16] |= 1 << (c % 16);
                values.push(v);
            }
            ptr.push(u32::try_from(values.len()).unwrap_or(u32::MAX));
        }
        SparseMatrix {
            rows: self.rows,
            cols: self.cols,
            values,
            index: RowIndex::Bitmask { ptr, masks },
        }
    }

    /// The dense row-major [rows, cols] matrix (the reference of the tests).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut d = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            self.for_each_kept(r, |c, v| d[r * self.cols + c] = v);
        }
        d
    }

    /// Calls `f(column, value)` for every kept element of row `r`.
    #[inline(always)]
    fn for_each_kept(&self, r: usize, mut f: impl FnMut(usize, f32)) {
        match &self.index {
            RowIndex::Bitmask { ptr, masks } => {
                let blocks = self.cols.div_ceil(16);
                let mut k = ptr[r] as usize;
                for (j, &m) in masks[r * blocks..(r + 1) * blocks].iter().enumerate() {
                    let mut m = m;
                    while m != 0 {
                        f(16 * j + m.trailing_zeros() as usize, self.values[k]);
                        k += 1;
                        m &= m - 1;
                    }
                }
            }
            RowIndex::Csr { ptr, cols } => {
                let (a, b) = (ptr[r] as usize, ptr[r + 1] as usize);
                for (&c, &v) in cols[a..b].iter().zip(&self.values[a..b]) {
                    f(c as usize, v);
                }
            }
            RowIndex::Nm { n, m, rest, pos } => {
                let (n, m, rest) = (*n, *m, *rest);
                let per_row = self.cols / m * n;
                let vals = &self.values[r * per_row..(r + 1) * per_row];
                let pos = &pos[r * per_row..(r + 1) * per_row];
                let mut k = 0;
                for b in 0..self.cols / rest / m {
                    for p in 0..rest {
                        let base = b * m * rest + p;
                        for _ in 0..n {
                            f(base + pos[k] as usize * rest, vals[k]);
                            k += 1;
                        }
                    }
                }
            }
        }
    }

    /// `y[r] = sum_c W[r, c] x[c]` for rows r0.. (one sample; a gather dot product per row).
    #[inline(always)]
    fn gemv_rows<const FMA: bool>(&self, r0: usize, x: &[f32], y: &mut [f32]) {
        let fma = |a: f32, v: f32, x: f32| if FMA { v.mul_add(x, a) } else { a + v * x };
        assert!(x.len() >= self.cols, "sparse gemv: input too short");
        // SAFETY: every column is below cols <= x.len() (columns are checked at construction)
        let xc = |c: usize| unsafe { *x.get_unchecked(c) };
        for (i, yr) in y.iter_mut().enumerate() {
            let r = r0 + i;
            *yr = match &self.index {
                RowIndex::Bitmask { .. } => {
                    let mut acc = 0f32;
                    self.for_each_kept(r, |c, v| acc = fma(acc, v, x[c]));
                    acc
                }
                RowIndex::Csr { ptr, cols } => {
                    let (a, b) = (ptr[r] as usize, ptr[r + 1] as usize);
                    let (cs, vs) = (&cols[a..b], &self.values[a..b]);
                    let mut acc = [0f32; 8];
                    let mut cc = cs.chunks_exact(8);
                    let mut vc = vs.chunks_exact(8);
                    for (c8, v8) in (&mut cc).zip(&mut vc) {
                        for j in 0..8 {
                            acc[j] = fma(acc[j], v8[j], xc(c8[j] as usize));
                        }
                    }
                    let tail: f32 = cc
                        .remainder()
                        .iter()
                        .zip(vc.remainder())
                        .map(|(&c, &v)| v * xc(c as usize))
                        .sum();
                    acc.iter().sum::<f32>() + tail
                }
                RowIndex::Nm { n, m, rest, pos } => {
                    let (n, m, rest) = (*n, *m, *rest);
                    let per_row = self.cols / m * n;
                    let vals = &self.values[r * per_row..(r + 1) * per_row];
                    let pos = &pos[r * per_row..(r + 1) * per_row];
                    let mut acc = [0f32; 2];
                    let mut k = 0;
                    for b in 0..self.cols / rest / m {
                        for p in 0..rest {
                            let base = b * m * rest + p;
                            for u in 0..n {
                                acc[u & 1] =
                                    fma(acc[u & 1], vals[k], xc(base + pos[k] as usize * rest));
                                k += 1;
                            }
                        }
                    }
                    acc[0] + acc[1]
                }
            };
        }
    }

    /// `dst[i, 0..len] = sum_c W[r0 + i, c] src[off[c]..off[c] + len]`, `len` a multiple of `T`
    /// and `src` long enough for `off[c] + len` (the callers pad it). The loops are written out per
    /// layout, without closures, so that they inline into the target-feature wrappers below and
    /// each tile's accumulators stay in vector registers.
    #[inline(always)]
    fn spmm_rows<const T: usize, const FMA: bool>(
        &self,
        r0: usize,
        off: &[u32],
        src: &[f32],
        len: usize,
        dst: &mut [f32],
    ) {
        // every run this call reads lies inside `src`, and every column inside `off` (the matrix's
        // columns are checked at construction): the loops below index without bounds checks,
        // which would otherwise keep the accumulators in memory
        assert!(
            off.len() == self.cols
                && len.is_multiple_of(T)
                && off.iter().all(|&o| o as usize + len <= src.len()),
            "sparse product: the activation runs do not fit the source"
        );
        #[inline(always)]
        fn axpy<const T: usize, const FMA: bool>(acc: &mut [f32; T], v: f32, s: &[f32], at: usize) {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: at + T <= s.len() for every run (asserted above)
                let x = unsafe { *s.get_unchecked(at + j) };
                *a = if FMA { v.mul_add(x, *a) } else { *a + v * x };
            }
        }
        // four partial sums per tile, so consecutive kept weights do not wait on each other's FMA
        for (i, out) in dst.chunks_exact_mut(len).enumerate() {
            let r = r0 + i;
            for (t, o) in out.chunks_exact_mut(T).enumerate() {
                let t0 = t * T;
                // four partial sums for short tiles; a long tile (>= 64) has enough independent
                // vectors in one and would run out of registers with four
                let slot = |u: usize| if T >= 64 { 0 } else { u };
                let mut acc = [[0f32; T]; 4];
                // SAFETY: c < cols = off.len() (asserted above; columns are below cols)
                let run = |c: usize| unsafe { *off.get_unchecked(c) } as usize + t0;
                match &self.index {
                    RowIndex::Bitmask { .. } => {
                        self.for_each_kept(r, |c, v| axpy::<T, FMA>(&mut acc[0], v, src, run(c)));
                    }
                    RowIndex::Csr { ptr, cols } => {
                        let (a, b) = (ptr[r] as usize, ptr[r + 1] as usize);
                        let (cs, vs) = (&cols[a..b], &self.values[a..b]);
                        let mut c4 = cs.chunks_exact(4);
                        let mut v4 = vs.chunks_exact(4);
                        for (c, v) in (&mut c4).zip(&mut v4) {
                            for u in 0..4 {
                                axpy::<T, FMA>(&mut acc[slot(u)], v[u], src, run(c[u] as usize));
                            }
                        }
                        for (&c, &v) in c4.remainder().iter().zip(v4.remainder()) {
                            axpy::<T, FMA>(&mut acc[0], v, src, run(c as usize));
                        }
                    }
                    RowIndex::Nm { n, m, rest, pos } => {
                        let (n, m, rest) = (*n, *m, *rest);
                        let per_row = self.cols / m * n;
                        let vals = &self.values[r * per_row..(r + 1) * per_row];
                        let pos = &pos[r * per_row..(r + 1) * per_row];
                        // block b at position p: columns (b m + j) rest + p; two groups in
                        // flight, each kept value of a group into its own partial sum
                        let mut k = 0;
                        for b in 0..self.cols / rest / m {
                            for p in 0..rest {
                                let base = b * m * rest + p;
                                // SAFETY: k + n <= per_row = vals.len() = pos.len()
                                let at = |u: usize| unsafe {
                                    let j = *pos.get_unchecked(k + u) as usize;
                                    (*vals.get_unchecked(k + u), run(base + j * rest))
                                };
                                if n == 2 {
                                    let ((v0, a0), (v1, a1)) = (at(0), at(1));
                                    if (b + p) & 1 == 0 {
                                        axpy::<T, FMA>(&mut acc[0], v0, src, a0);
                                        axpy::<T, FMA>(&mut acc[slot(1)], v1, src, a1);
                                    } else {
                                        axpy::<T, FMA>(&mut acc[slot(2)], v0, src, a0);
                                        axpy::<T, FMA>(&mut acc[slot(3)], v1, src, a1);
                                    }
                                } else {
                                    for u in 0..n {
                                        let (v, a) = at(u);
                                        axpy::<T, FMA>(&mut acc[0], v, src, a);
                                    }
                                }
                                k += n;
                            }
                        }
                    }
                }
                for j in 0..T {
                    o[j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
                }
            }
        }
    }

    /// Rows per parallel chunk and whether to split at all, for work of `per_row` MACs a row:
    /// waking the pool costs tens of microseconds, so only work of at least 2^21 MACs (about half a
    /// millisecond on one core) is split.
    fn split(&self, per_row: usize) -> Option<usize> {
        let threads = rayon::current_num_threads();
        let work = self.nnz() * per_row;
        (threads > 1 && work >= PAR_MIN).then(|| self.rows.div_ceil(threads * 4).max(1))
    }

    /// `y = x W^T` for x [batch, cols] (row-major), y [batch, rows]: a Linear without its bias.
    ///
    /// # Panics
    /// When x does not hold a multiple of `cols` values.
    pub fn linear(&self, x: &[f32]) -> Vec<f32> {
        assert!(
            self.cols > 0 && x.len().is_multiple_of(self.cols),
            "sparse linear: input width"
        );
        let batch = x.len() / self.cols;
        let isa = Isa::get();
        if batch == 1 {
            let mut y = vec![0f32; self.rows];
            #[cfg(target_arch = "x86_64")]
            if let (RowIndex::Bitmask { ptr, masks }, Isa::Avx512) = (&self.index, isa) {
                // x padded to whole blocks of 16
                let mut xp = x.to_vec();
                xp.resize(self.cols.div_ceil(16) * 16, 0.0);
                let run = |r0: usize, yc: &mut [f32]| {
                    // SAFETY: AVX-512F is present (Isa::get); the operands are as the function
                    // asks
                    unsafe { gemv_bitmask_avx512(self, ptr, masks, r0, &xp, yc) }
                };
                match self.split(1) {
                    Some(chunk) => y
                        .par_chunks_mut(chunk)
                        .enumerate()
                        .for_each(|(i, yc)| run(i * chunk, yc)),
                    None => run(0, &mut y),
                }
                return y;
            }
            match self.split(1) {
                Some(chunk) => y
                    .par_chunks_mut(chunk)
                    .enumerate()
                    .for_each(|(i, yc)| isa.gemv(self, i * chunk, x, yc)),
                None => isa.gemv(self, 0, x, &mut y),
            }
            return y;
        }
        // activations transposed to [cols, len], len = batch rounded up to the tile
        let tile = tile_for(batch);
        let len = batch.div_ceil(tile) * tile;
        // written row by row of xt (reading a column of x: `batch` lines that stay in L1)
        let mut xt = vec![0f32; self.cols * len];
        for (c, dst) in xt.chunks_exact_mut(len).enumerate() {
            for (b, v) in dst[..batch].iter_mut().enumerate() {
                *v = x[b * self.cols + c];
            }
        }
        let off: Vec<u32> = (0..self.cols).map(|c| (c * len) as u32).collect();
        let yt = self.spmm(&off, &xt, len, tile, isa);
        // transposed back in blocks of 16 rows, each output line written whole: a row-at-a-time
        // scatter strides by the row count (2 KiB for 512), which maps every line it touches
        // into two L1 sets and ran 10x slower
        let mut y = vec![0f32; batch * self.rows];
        for (k, block) in yt.chunks(16 * len).enumerate() {
            let r0 = k * 16;
            for (b, yb) in y.chunks_exact_mut(self.rows).enumerate() {
                for (i, row) in block.chunks_exact(len).enumerate() {
                    yb[r0 + i] = row[b];
                }
            }
        }
        y
    }

    /// [rows, len] = W x the runs of `src` at `off` (see [`Self::spmm_rows`]), split over rows.
    fn spmm(&self, off: &[u32], src: &[f32], len: usize, tile: usize, isa: Isa) -> Vec<f32> {
        let mut dst = vec![0f32; self.rows * len];
        match self.split(len) {
            Some(chunk) => dst
                .par_chunks_mut(chunk * len)
                .enumerate()
                .for_each(|(i, d)| isa.spmm(self, i * chunk, off, src, len, tile, d)),
            None => isa.spmm(self, 0, off, src, len, tile, &mut dst),
        }
        dst
    }

    /// A convolution of x [N, C, H, W] (row-major) by this matrix as the kernel [O, C kh kw]
    /// (groups = 1), without bias: y [N, O, OH, OW]. Stride-1 convolutions read the once-padded
    /// input planes (no im2col copy), others an im2col matrix; samples run in parallel when the
    /// batch feeds every thread.
    ///
    /// # Panics
    /// When the geometry does not match the matrix or x.
    pub(crate) fn conv2d(&self, x: &[f32], g: &ConvGeom) -> Vec<f32> {
        assert!(g.groups == 1 && self.rows == g.o && self.cols == g.c * g.kh * g.kw);
        assert_eq!(x.len(), g.n * g.c * g.h * g.w, "sparse conv2d: input size");
        let isa = Isa::get();
        let (ohw, chw) = (g.oh * g.ow, g.c * g.h * g.w);
        // the activation runs: (offset of every kernel column, run length, width of a run row)
        let shifted = g.stride == 1;
        let (off, run, row_w, src_len) = if shifted {
            let (pw, plane) = g.shifted_dims();
            let off: Vec<u32> = (0..self.cols)
                .map(|k| {
                    let (c, t) = (k / (g.kh * g.kw), k % (g.kh * g.kw));
                    (c * plane + (t / g.kw) * g.dil * pw + (t % g.kw) * g.dil) as u32
                })
                .collect();
            (off, g.oh * pw, pw, g.c * plane)
        } else {
            let off: Vec<u32> = (0..self.cols).map(|k| (k * ohw) as u32).collect();
            (off, ohw, g.ow, self.cols * ohw)
        };
        let tile = tile_for(run);
        let len = run.div_ceil(tile) * tile;
        let one = |xn: &[f32], yn: &mut [f32], par: bool| {
            let mut src = vec![0f32; src_len + len];
            if shifted {
                g.pad_planes(xn, &mut src[..src_len]);
            } else {
                g.im2col(xn, &mut src[..src_len]);
            }
            let d = if par {
                self.spmm(&off, &src, len, tile, isa)
            } else {
                let mut d = vec![0f32; self.rows * len];
                isa.spmm(self, 0, &off, &src, len, tile, &mut d);
                d
            };
            for (o, row) in d.chunks_exact(len).enumerate() {
                let y = &mut yn[o * ohw..(o + 1) * ohw];
                for (oy, yr) in y.chunks_exact_mut(g.ow).enumerate() {
                    yr.copy_from_slice(&row[oy * row_w..oy * row_w + g.ow]);
                }
            }
        };
        let mut y = vec![0f32; g.n * g.o * ohw];
        if g.n >= rayon::current_num_threads() && g.n > 1 {
            y.par_chunks_mut(g.o * ohw)
                .zip(x.par_chunks(chw))
                .for_each(|(yn, xn)| one(xn, yn, false));
        } else {
            for (yn, xn) in y.chunks_mut(g.o * ohw).zip(x.chunks(chw)) {
                one(xn, yn, true);
            }
        }
        y
    }
}

/// A Linear by a sparse weight: x [.., in] (any leading axes, batch first) times W^T (+ bias [out])
/// gives [.., out]. f32 CPU tensors only (the caller falls back to the dense op otherwise).
///
/// # Errors
/// x's last axis is not the matrix's column count, or a candle error.
pub fn linear(
    x: &candle_core::Tensor,
    a: &SparseMatrix,
    bias: Option<&candle_core::Tensor>,
) -> candle_core::Result<candle_core::Tensor> {
    let dims = x.dims();
    if dims.last() != Some(&a.cols) {
        candle_core::bail!("sparse linear: input {dims:?} does not end in {}", a.cols);
    }
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = dims.to_vec();
    *out.last_mut().expect("checked above") = a.rows;
    let y = candle_core::Tensor::from_vec(a.linear(&xs), out, x.device())?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// A convolution (groups = 1) of x [N, C, H, W] by a sparse kernel [O, C kh kw] (+ bias [O]):
/// [N, O, OH, OW]. f32 CPU tensors only.
///
/// # Errors
/// A geometry that does not fit, or a candle error.
#[allow(clippy::too_many_arguments)] // the convolution's attributes, spelled out
pub fn conv2d(
    x: &candle_core::Tensor,
    a: &SparseMatrix,
    kernel: [usize; 2],
    stride: usize,
    pad: usize,
    dil: usize,
    bias: Option<&candle_core::Tensor>,
) -> candle_core::Result<candle_core::Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if a.cols != c * kernel[0] * kernel[1] {
        candle_core::bail!(
            "sparse conv2d: a kernel of {} columns does not fit {c} channels of {kernel:?}",
            a.cols
        );
    }
    // the geometry, from the shapes the dense kernel would see
    let k = (a.rows, c, kernel[0], kernel[1]);
    let g = ConvGeom::of_dims((n, c, h, w), k, stride, pad, dil, 1)?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let y = candle_core::Tensor::from_vec(a.conv2d(&xs, &g), (n, g.o, g.oh, g.ow), x.device())?;
    match bias {
        Some(b) => super::channel::channel_bias(&y, b),
        None => Ok(y),
    }
}

/// The register tiles the kernel is compiled for (activations per tile).
const TILES: [usize; 8] = [16, 32, 48, 64, 80, 96, 112, 128];

/// The register tile for runs of `run` activations: a run of at most 128 is one tile (the
/// multiple of 16 just above it: the row's kept weights are read once); a longer one tiles by 32
/// unless rounding up to 32 computes more padding than rounding up to 16.
fn tile_for(run: usize) -> usize {
    let t = if run <= 128 {
        run.div_ceil(16).max(1) * 16
    } else if run.div_ceil(32) * 32 == run.div_ceil(16) * 16 {
        32
    } else {
        16
    };
    debug_assert!(TILES.contains(&t));
    t
}

/// The N:M pattern (n, m) every group of `kept` follows, if any (see [`RowIndex::Nm`]).
fn detect_nm(
    kept: &impl Fn(usize) -> bool,
    rows: usize,
    cols: usize,
    rest: usize,
) -> Option<(usize, usize)> {
    let inner = cols / rest;
    NM_PATTERNS.into_iter().find(|&(n, m)| {
        inner.is_multiple_of(m)
            && inner >= m
            && (0..rows).all(|r| {
                (0..inner / m).all(|b| {
                    (0..rest).all(|p| {
                        (0..m)
                            .filter(|&j| kept(r * cols + (b * m + j) * rest + p))
                            .count()
                            == n
                    })
                })
            })
    })
}

// the sparse loops compiled for each extension of [`super::Isa`]
impl Isa {
    fn gemv(self, a: &SparseMatrix, r0: usize, x: &[f32], y: &mut [f32]) {
        match self {
            // SAFETY: the CPU has the features these functions are compiled for (checked in `get`).
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { gemv_avx512(a, r0, x, y) },
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { gemv_avx2(a, r0, x, y) },
            Self::Base => a.gemv_rows::<false>(r0, x, y),
        }
    }

    #[allow(clippy::too_many_arguments)] // the product's operands, spelled out
    fn spmm(
        self,
        a: &SparseMatrix,
        r0: usize,
        off: &[u32],
        src: &[f32],
        len: usize,
        tile: usize,
        dst: &mut [f32],
    ) {
        macro_rules! dispatch {
            ($($t:literal)+) => {
                match (self, tile) {
                    $(
                        // SAFETY: as in `gemv`.
                        #[cfg(target_arch = "x86_64")]
                        (Self::Avx512, $t) => unsafe { spmm_avx512::<$t>(a, r0, off, src, len, dst) },
                        #[cfg(target_arch = "x86_64")]
                        (Self::Avx2, $t) => unsafe { spmm_avx2::<$t>(a, r0, off, src, len, dst) },
                        (_, $t) => a.spmm_rows::<$t, false>(r0, off, src, len, dst),
                    )+
                    _ => unreachable!("tile {tile} is one of TILES"),
                }
            };
        }
        dispatch!(16 32 48 64 80 96 112 128)
    }
}

/// y = W x for a [`RowIndex::Bitmask`] matrix at batch 1: per block of 16 columns, the row's next
/// popcount(mask) values are expand-loaded into the mask's lanes (`vexpandps`) and multiplied
/// with 16 contiguous inputs; two accumulators alternate between blocks.
///
/// # Safety
/// The CPU has AVX-512F; `ptr` and `masks` are `a`'s (the values of every row hold exactly the
/// popcount of its masks), `x` holds ceil(cols / 16) * 16 values and `y` the rows r0.. (checked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemv_bitmask_avx512(
    a: &SparseMatrix,
    ptr: &[u32],
    masks: &[u16],
    r0: usize,
    x: &[f32],
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    let blocks = a.cols.div_ceil(16);
    assert!(
        x.len() >= blocks * 16 && r0 + y.len() <= a.rows && masks.len() == a.rows * blocks,
        "bitmask gemv: operands do not fit"
    );
    for (i, yr) in y.iter_mut().enumerate() {
        let r = r0 + i;
        let mut p = a.values.as_ptr().add(ptr[r] as usize);
        let ms = &masks[r * blocks..(r + 1) * blocks];
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut pairs = ms.chunks_exact(2);
        let mut xo = x.as_ptr();
        for m in &mut pairs {
            let v0 = _mm512_maskz_expandloadu_ps(m[0], p);
            p = p.add(m[0].count_ones() as usize);
            acc0 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(xo), acc0);
            let v1 = _mm512_maskz_expandloadu_ps(m[1], p);
            p = p.add(m[1].count_ones() as usize);
            acc1 = _mm512_fmadd_ps(v1, _mm512_loadu_ps(xo.add(16)), acc1);
            xo = xo.add(32);
        }
        if let [m] = pairs.remainder() {
            let v0 = _mm512_maskz_expandloadu_ps(*m, p);
            acc0 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(xo), acc0);
        }
        *yr = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn gemv_avx512(a: &SparseMatrix, r0: usize, x: &[f32], y: &mut [f32]) {
    a.gemv_rows::<true>(r0, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2(a: &SparseMatrix, r0: usize, x: &[f32], y: &mut [f32]) {
    a.gemv_rows::<true>(r0, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn spmm_avx512<const T: usize>(
    a: &SparseMatrix,
    r0: usize,
    off: &[u32],
    src: &[f32],
    len: usize,
    dst: &mut [f32],
) {
    a.spmm_rows::<T, true>(r0, off, src, len, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn spmm_avx2<const T: usize>(
    a: &SparseMatrix,
    r0: usize,
    off: &[u32],
    src: &[f32],
    len: usize,
    dst: &mut [f32],
) {
    a.spmm_rows::<T, true>(r0, off, src, len, dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// A random [rows, cols] matrix with about `density` of its values kept (the rest +0.0).
    fn random(rows: usize, cols: usize, density: f64, seed: u64) -> Vec<f32> {
        let mut r = crate::graph::rng(seed);
        (0..rows * cols)
            .map(|_| {
                if r.random_bool(density) {
                    r.random_range(-1.0f32..1.0)
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn dense_linear(w: &[f32], x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let batch = x.len() / cols;
        let mut y = vec![0f32; batch * rows];
        for b in 0..batch {
            for r in 0..rows {
                y[b * rows + r] = (0..cols).map(|c| w[r * cols + c] * x[b * cols + c]).sum();
            }
        }
        y
    }

    fn close(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn csr_linear_matches_dense_at_every_batch() {
        for (rows, cols, density) in [(37, 53, 0.1), (64, 64, 0.3), (5, 300, 0.9), (8, 8, 0.0)] {
            let w = random(rows, cols, density, 1);
            let a = SparseMatrix::from_dense(&w, None, rows, cols, 1);
            assert_eq!(a.to_dense(), w);
            for batch in [1, 2, 16, 17, 33, 70] {
                let x = random(batch, cols, 1.0, 2);
                let got = a.linear(&x);
                assert!(close(&got, &dense_linear(&w, &x, rows, cols)) < 1e-4);
            }
        }
    }

    #[test]
    fn nm_is_detected_and_matches_dense() {
        let (rows, cols) = (24, 64);
        let mut w = random(rows, cols, 1.0, 3);
        // 2:4 along each row: keep the first two of every group of four
        for (i, v) in w.iter_mut().enumerate() {
            if i % 4 >= 2 {
                *v = 0.0;
            }
        }
        let a = SparseMatrix::from_dense(&w, None, rows, cols, 1);
        assert_eq!(a.format(), "2:4");
        assert_eq!(a.nnz(), rows * cols / 2);
        assert_eq!(a.to_dense(), w);
        for batch in [1, 3, 40] {
            let x = random(batch, cols, 1.0, 4);
            assert!(close(&a.linear(&x), &dense_linear(&w, &x, rows, cols)) < 1e-4);
        }
        // a mask decides, even where a kept value is exactly zero
        let mut keep: Vec<f32> = w.iter().map(|&v| (v != 0.0) as u8 as f32).collect();
        w[0] = 0.0;
        assert_eq!(
            SparseMatrix::from_dense(&w, Some(&keep), rows, cols, 1).format(),
            "2:4"
        );
        keep[2] = 1.0; // three kept in the first group: not N:M
        assert_eq!(
            SparseMatrix::from_dense(&w, Some(&keep), rows, cols, 1).format(),
            "csr"
        );
    }

    #[test]
    fn bitmask_layout_matches_dense() {
        for (rows, cols, density) in [(37, 53, 0.1), (16, 64, 0.3), (5, 300, 0.9), (3, 15, 0.5)] {
            let w = random(rows, cols, density, 9);
            let a = SparseMatrix::from_dense(&w, None, rows, cols, 1).to_bitmask();
            assert_eq!(a.format(), "bitmask");
            assert_eq!(a.to_dense(), w);
            for batch in [1, 2, 33] {
                let x = random(batch, cols, 1.0, 10);
                assert!(close(&a.linear(&x), &dense_linear(&w, &x, rows, cols)) < 1e-4);
            }
        }
        // enough kept weights for the rows to be split over threads
        let (rows, cols) = (1100, 2000);
        let w = random(rows, cols, 0.97, 11);
        let a = SparseMatrix::from_dense(&w, None, rows, cols, 1).to_bitmask();
        assert!(a.nnz() >= PAR_MIN);
        let x = random(1, cols, 1.0, 12);
        assert!(close(&a.linear(&x), &dense_linear(&w, &x, rows, cols)) < 1e-3);
    }

    #[test]
    fn every_run_length_gets_a_compiled_tile() {
        for run in 1..2000 {
            let t = tile_for(run);
            assert!(TILES.contains(&t), "{run}");
            assert!(run > 128 || t >= run);
        }
    }

    #[test]
    fn nm_over_an_interleaved_kernel_axis() {
        // a conv kernel [o, c, 3, 3] pruned 2:4 along c at each of the 9 positions
        let (o, c, kk) = (6, 8, 9);
        let mut w = random(o, c * kk, 1.0, 5);
        for r in 0..o {
            for ci in 0..c {
                for p in 0..kk {
                    if (ci + p) % 4 >= 2 {
                        w[r * c * kk + ci * kk + p] = 0.0;
                    }
                }
            }
        }
        let a = SparseMatrix::from_dense(&w, None, o, c * kk, kk);
        assert_eq!(a.format(), "2:4");
        assert_eq!(a.to_dense(), w);
    }
    #[test]
    fn conv_matches_the_dense_kernel() {
        use candle_core::{Device, Tensor};
        // stride 1 (shifted runs), stride 2 (im2col), 1x1, dilation, odd sizes, batch 1 and 3
        for (n, c, h, o, k, stride, pad, dil) in [
            (1, 8, 8, 16, 3, 1, 1, 1),
            (3, 5, 9, 7, 3, 2, 1, 1),
            (2, 6, 7, 4, 1, 1, 0, 1),
            (1, 4, 10, 3, 3, 1, 2, 2),
            (3, 16, 8, 8, 3, 1, 1, 1),
        ] {
            let w = random(o, c * k * k, 0.3, 6);
            let x = random(n, c * h * h, 1.0, 7);
            let a = SparseMatrix::from_dense(&w, None, o, c * k * k, k * k);
            let xt = Tensor::from_vec(x, (n, c, h, h), &Device::Cpu).unwrap();
            let wt = Tensor::from_vec(w, (o, c, k, k), &Device::Cpu).unwrap();
            let bias = random(1, o, 1.0, 8);
            let bt = Tensor::from_vec(bias, o, &Device::Cpu).unwrap();
            let want = crate::kernels::conv::candle_conv2d(&xt, &wt, stride, pad, dil, 1)
                .unwrap()
                .broadcast_add(&bt.reshape((o, 1, 1)).unwrap())
                .unwrap();
            let got = conv2d(&xt, &a, [k, k], stride, pad, dil, Some(&bt)).unwrap();
            assert_eq!(got.dims(), want.dims());
            let d = (got - want).unwrap().abs().unwrap().flatten_all().unwrap();
            assert!(d.max(0).unwrap().to_scalar::<f32>().unwrap() < 1e-4);
        }
    }
}
