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
