//! The one matrix multiply everything else is built on: a thin, bounds-checked
//! wrapper over `matrixmultiply::sgemm`.
//!
//! A matrix is a slice plus a row stride and a column stride, so a transpose is
//! only a swap of strides ([`Mat::t`]) and never a copy. conv2d's backward pass
//! uses this to multiply by Wᵀ and colsᵀ in place.
//!
//! `matrixmultiply` is used without its `threading` feature, so one call is
//! single-threaded and its result does not depend on the rayon pool: callers
//! parallelise over independent outputs (images, chunks) instead.
//! [`gemm_row_blocks`] does so for one large product (the linear layers):
//! it cuts C into blocks of rows, a pure function of the shape, and
//! multiplies them on the pool.

/// A read-only strided view of a `rows × cols` matrix inside `data`:
/// element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous row-major matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, as a view: no data moves.
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn assert_in_bounds(&self, what: &str) {
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
        assert!(
            last < self.data.len(),
            "gemm: {what} ({}x{}, strides {}/{}) needs {} elements, slice has {}",
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
            last + 1,
            self.data.len()
        );
    }
}

/// `c = alpha · a · b + beta · c`, where `c` is row-major `a.rows × b.cols` with
/// row stride `ldc` (usually `b.cols`). With `beta == 0` the old contents of `c`
/// are ignored (even NaN), as in BLAS.
pub fn gemm(alpha: f32, a: Mat, b: Mat, beta: f32, c: &mut [f32], ldc: usize) {
    assert_eq!(
        a.cols, b.rows,
        "gemm: inner dimensions differ: a is {}x{}, b is {}x{}",
        a.rows, a.cols, b.rows, b.cols
    );
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n, "gemm: ldc {ldc} < n {n}");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: output slice too short");
    if k == 0 {
        for i in 0..m {
            for v in &mut c[i * ldc..i * ldc + n] {
                *v = if beta == 0.0 { 0.0 } else { beta * *v };
            }
        }
        return;
    }
    a.assert_in_bounds("a");
    b.assert_in_bounds("b");
    // SAFETY: the asserts above check that every index the kernel touches,
    // (rows-1)*row_stride + (cols-1)*col_stride, lies inside each slice, and `c`
    // is borrowed mutably so it cannot alias `a` or `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

/// Flops a row block of [`gemm_row_blocks`] holds at least, so that each
/// rayon task is worth its fork/join and its share of packing B.
pub const ROW_BLOCK_FLOPS: usize = 1 << 21;

/// [`gemm`] on blocks of C's rows, in parallel. The blocks depend only on
/// the shape (each holds at least `ROW_BLOCK_FLOPS`), never on the number
/// of threads, and every element is computed by one block's own call, so
/// the result is the same for any thread count. Small products run as one
/// call on this thread.
pub fn gemm_row_blocks(alpha: f32, a: Mat, b: Mat, beta: f32, c: &mut [f32], ldc: usize) {
    use rayon::prelude::*;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let blocks = (2 * m * k * n / ROW_BLOCK_FLOPS).min(m);
    if blocks <= 1 || n == 0 || ldc < n || a.cols != b.rows || c.len() < (m - 1) * ldc + n {
        // One call (and gemm's own checks and messages for bad shapes).
        return gemm(alpha, a, b, beta, c, ldc);
    }
    a.assert_in_bounds("a");
    let rows = m.div_ceil(blocks);
    let c = &mut c[..(m - 1) * ldc + n];
    c.par_chunks_mut(rows * ldc)
        .enumerate()
        .for_each(|(i, c_blk)| {
            let r0 = i * rows;
            let a_blk = Mat {
                data: &a.data[r0 * a.row_stride..],
                rows: rows.min(m - r0),
                ..a
            };
            gemm(alpha, a_blk, b, beta, c_blk, ldc);
        });
}

/// The textbook triple loop, kept as documentation and as the test oracle.
pub fn gemm_naive(alpha: f32, a: Mat, b: Mat, beta: f32, c: &mut [f32], ldc: usize) {
    assert_eq!(a.cols, b.rows);
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut acc = 0.0f32;
            for p in 0..a.cols {
                acc += a.data[i * a.row_stride + p * a.col_stride]
                    * b.data[p * b.row_stride + j * b.col_stride];
            }
            let old = if beta == 0.0 {
                0.0
            } else {
                beta * c[i * ldc + j]
            };
            c[i * ldc + j] = alpha * acc + old;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_with_transposes() {
        // a is 3x5, b is 5x4, both also used transposed from stored transposes.
        let a: Vec<f32> = (0..15).map(|v| (v as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..20).map(|v| (v as f32 * 0.11).cos()).collect();
        let at: Vec<f32> = (0..15).map(|i| a[(i % 3) * 5 + i / 3]).collect(); // 5x3
        let am = Mat::row_major(&a, 3, 5);
        let bm = Mat::row_major(&b, 5, 4);
        let mut want = vec![1.0; 12];
        gemm_naive(2.0, am, bm, 0.5, &mut want, 4);
        let mut got = vec![1.0; 12];
        gemm(2.0, Mat::row_major(&at, 5, 3).t(), bm, 0.5, &mut got, 4);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    /// The linear layers' products at batch 64, split into row blocks: the
    /// oracle's values, and the same bits on 1 and 3 threads.
    #[test]
    fn row_blocks_match_naive_and_not_the_thread_count() {
        let (m, k, n) = (64, 400, 120);
        let x: Vec<f32> = (0..m * k).map(|v| (v as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|v| (v as f32 * 0.11).cos()).collect();
        let dy: Vec<f32> = (0..m * n).map(|v| (v as f32 * 0.23).sin()).collect();
        // y = x·Wᵀ (m×n), dW = dYᵀ·x (n×k): a plain and a transposed A.
        let cases = [
            (Mat::row_major(&x, m, k), Mat::row_major(&w, n, k).t(), n),
            (Mat::row_major(&dy, m, n).t(), Mat::row_major(&x, m, k), k),
        ];
        for (a, b, ldc) in cases {
            assert!(
                2 * a.rows * a.cols * b.cols / ROW_BLOCK_FLOPS > 1,
                "not split"
            );
            let mut want = vec![0.5; a.rows * ldc];
            gemm_naive(1.0, a, b, 1.0, &mut want, ldc);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut c = vec![0.5; a.rows * ldc];
                pool.install(|| gemm_row_blocks(1.0, a, b, 1.0, &mut c, ldc));
                c
            };
            let (one, three) = (run(1), run(3));
            assert!(one
                .iter()
                .zip(&three)
                .all(|(p, q)| p.to_bits() == q.to_bits()));
            for (g, w) in one.iter().zip(&want) {
                assert!((g - w).abs() < 1e-3 * w.abs().max(1.0), "{g} vs {w}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "inner dimensions differ")]
    fn shape_mismatch_is_named() {
        let a = vec![0.0; 6];
        let mut c = vec![0.0; 4];
        gemm(
            1.0,
            Mat::row_major(&a, 2, 3),
            Mat::row_major(&a, 2, 3),
            0.0,
            &mut c,
            3,
        );
    }
}
