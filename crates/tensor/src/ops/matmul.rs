//! matmul (A·B) and linear (x·Wᵀ + b), both as GEMMs with transposes taken as
//! strides, each large product split into row blocks run in parallel
//! ([`crate::gemm::gemm_row_blocks`]); linear at batches of a few rows
//! (and a size the GEMM would not split) through the unpacked loops of
//! [`crate::ops::linear_small`].

use crate::gemm::{gemm_row_blocks as gemm, Mat, ROW_BLOCK_FLOPS};
use crate::isa::Isa;
use crate::ops::linear_small::{
    linear_backward_input_small, linear_forward_small, linear_weight_grad_small, SMALL_BATCH_ROWS,
};
use crate::tensor::Tensor;

impl Tensor {
    /// (m, k) · (k, n) → (m, n).
    pub fn matmul(&self, b: &Tensor) -> Tensor {
        let (sa, sb) = (self.shape(), b.shape());
        assert!(
            sa.len() == 2 && sb.len() == 2 && sa[1] == sb[0],
            "matmul: shapes {sa:?} and {sb:?} do not multiply"
        );
        let (m, k, n) = (sa[0], sa[1], sb[1]);
        // Overwritten whole: the GEMM runs with beta = 0.
        let mut out = crate::buffers::take(m * n);
        gemm(
            1.0,
            Mat::row_major(&self.data(), m, k),
            Mat::row_major(&b.data(), k, n),
            0.0,
            &mut out,
            n,
        );
        let (a, bt) = (self.clone(), b.clone());
        Tensor::from_op(out, &[m, n], &[self, b], move |dout, grads| {
            let dy = Mat::row_major(dout, m, n);
            // dA = dY · Bᵀ (m, k)
            grads.accumulate(&a, |ga| {
                gemm(1.0, dy, Mat::row_major(&bt.data(), k, n).t(), 1.0, ga, k)
            });
            // dB = Aᵀ · dY (k, n)
            grads.accumulate(&bt, |gb| {
                gemm(1.0, Mat::row_major(&a.data(), m, k).t(), dy, 1.0, gb, n)
            });
        })
    }

    /// y = x·Wᵀ + b, with x (N, in), W (out, in), b (out): PyTorch's layout.
    pub fn linear(&self, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let (sx, sw) = (self.shape(), w.shape());
        assert!(
            sx.len() == 2 && sw.len() == 2 && sx[1] == sw[1],
            "linear: input {sx:?} does not fit weight {sw:?} (want input (N, in) and weight (out, in))"
        );
        let (n, fin, fout) = (sx[0], sx[1], sw[0]);
        if let Some(b) = bias {
            assert_eq!(
                b.shape(),
                [fout],
                "linear: bias {:?} does not fit weight {sw:?}",
                b.shape()
            );
        }
        // x is (N, in), y is (N, out)
        // A few rows: the loops of linear_small.rs, with no packing; unless
        // the layer is so large that the GEMM would split it into row
        // blocks on the pool (the forward loops run on one thread).
        let small = n <= SMALL_BATCH_ROWS && 2 * n * fin * fout < 2 * ROW_BLOCK_FLOPS;
        // Overwritten whole: rows start as the bias (GEMM beta = 1) or are
        // ignored (beta = 0).
        let mut out = crate::buffers::take(n * fout);
        if small {
            let b = bias.map(|b| b.data());
            let k = Isa::best();
            linear_forward_small(
                &self.data(),
                &w.data(),
                b.as_deref().map(|v| &v[..]),
                (n, fin, fout),
                &mut out,
                k,
            );
        } else if let Some(b) = bias {
            for row in out.chunks_mut(fout) {
                row.copy_from_slice(&b.data());
            }
        }
        let beta = if bias.is_some() { 1.0 } else { 0.0 };
        if !small {
            gemm(
                1.0,
                Mat::row_major(&self.data(), n, fin),
                Mat::row_major(&w.data(), fout, fin).t(),
                beta,
                &mut out,
                fout,
            );
        }
        let (x, wt, bt) = (self.clone(), w.clone(), bias.cloned());
        let mut inputs = vec![self, w];
        inputs.extend(bias);
        Tensor::from_op(out, &[n, fout], &inputs, move |dout, grads| {
            let dy = Mat::row_major(dout, n, fout);
            let (shape, k) = ((n, fin, fout), Isa::best());
            // dx = dY · W (N, in)
            grads.accumulate(&x, |gx| match small {
                true => linear_backward_input_small(dout, &wt.data(), shape, gx, k),
                false => gemm(1.0, dy, Mat::row_major(&wt.data(), fout, fin), 1.0, gx, fin),
            });
            // dW = dYᵀ · x (out, in). Small batches write it whole into a
            // buffer of its own (no zeroing, no read back), then hand it
            // over: moved in if it is W's first gradient, else added.
            if small && wt.needs_grad() {
                let mut gw = crate::buffers::take(fout * fin);
                linear_weight_grad_small(dout, &x.data(), shape, &mut gw, k);
                grads.add_owned(&wt, gw);
            } else {
                grads.accumulate(&wt, |gw| {
                    gemm(1.0, dy.t(), Mat::row_major(&x.data(), n, fin), 1.0, gw, fin)
                });
            }
            // db = Σ_rows dY, summed in row order.
            if let Some(b) = &bt {
                grads.accumulate(b, |gb| {
                    for row in dout.chunks(fout) {
                        gb.iter_mut().zip(row).for_each(|(g, d)| *g += d);
                    }
                });
            }
        })
    }
}
