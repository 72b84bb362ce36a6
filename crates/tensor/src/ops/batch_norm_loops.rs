//! The per-plane loops of batch norm: the two sums of each pass over a
//! plane, and the two elementwise passes, each compiled three times.
//!
//! Each loop is plain Rust over chunks of 8 values with one accumulator
//! lane per position in the chunk, written once (`#[inline(always)]`) and
//! instantiated in a portable function, one compiled for AVX2 and one for
//! AVX-512F. The compiler turns the 8 lanes into vectors of the width at
//! hand; Rust never fuses a multiply and an add on its own, and the lanes
//! are independent, so all three give the same bits (tested): the ISA
//! changes the speed, not the result. The sums are in f64 (a plane of
//! 32 × 32 activations, squared, summed in f32 would lose digits the
//! variance needs). Against a 4-lane loop behind an index closure, compiled
//! for the baseline x86-64 only, the forward pass takes half the time on
//! ResNet-20's shapes and the backward pass about a tenth less; both now
//! run at about the speed memory delivers their three or four streams
//! (`cargo bench --bench resnet_ops`).

use crate::isa::Isa;
use crate::ops::elementwise::{relu, relu_grad};

/// Accumulator lanes: value i of a plane goes to lane i mod 8.
const LANES: usize = 8;

/// The lanes summed in a fixed tree: ((l0 + l1) + (l2 + l3)) + ((l4 + l5)
/// + (l6 + l7)).
#[inline(always)]
fn tree(l: [f64; LANES]) -> f64 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// Runs `$body` (an expression naming only its arguments) in a portable
/// function or in one compiled for AVX2 or AVX-512F, as `$k` allows.
macro_rules! on_isa {
    ($k:expr, fn($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {{
        #[inline(always)]
        fn body($($arg: $ty),*) -> $ret $body
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        fn avx512($($arg: $ty),*) -> $ret { body($($arg),*) }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn avx2($($arg: $ty),*) -> $ret { body($($arg),*) }
        let k: Isa = $k;
        #[cfg(target_arch = "x86_64")]
        if k.avx512() {
            // SAFETY: AVX-512F is present (checked by `avx512`).
            return unsafe { avx512($($arg),*) };
        }
        #[cfg(target_arch = "x86_64")]
        if k.avx2() {
            // SAFETY: AVX2 is present (checked by `avx2`).
            return unsafe { avx2($($arg),*) };
        }
        body($($arg),*)
    }};
}

/// (Σ x, Σ x²) over a plane, in f64.
pub(crate) fn sums_x_x2(x: &[f32], k: Isa) -> (f64, f64) {
    on_isa!(k, fn(x: &[f32]) -> (f64, f64) {
        let (mut s, mut q) = ([0f64; LANES], [0f64; LANES]);
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                let v = c[l] as f64;
                s[l] += v;
                q[l] += v * v;
            }
        }
        for (l, &v) in chunks.remainder().iter().enumerate() {
            let v = v as f64;
            s[l] += v;
            q[l] += v * v;
        }
        (tree(s), tree(q))
    })
}

/// (Σ g, Σ g·(x − mean)) over a plane, in f64, where g is the gradient at
/// the batch norm's output: `d` itself, or with `relu_out` (the op's
/// output after ReLU) relu_grad(relu_out, d). All slices one length.
pub(crate) fn sums_grad(
    d: &[f32],
    x: &[f32],
    relu_out: Option<&[f32]>,
    mean: f64,
    k: Isa,
) -> (f64, f64) {
    assert!(
        d.len() == x.len() && relu_out.is_none_or(|y| y.len() == d.len()),
        "sums_grad: lengths"
    );
    // Without ReLU, `d` stands in for the output and is not read as one.
    let (y, relu) = match relu_out {
        Some(y) => (y, true),
        None => (d, false),
    };
    on_isa!(k, fn(d: &[f32], x: &[f32], y: &[f32], relu: bool, mean: f64) -> (f64, f64) {
        if relu {
            grad_sums_loop::<true>(d, x, y, mean)
        } else {
            grad_sums_loop::<false>(d, x, y, mean)
        }
    })
}

/// The loop of [`sums_grad`], one copy with ReLU's mask and one without.
#[inline(always)]
fn grad_sums_loop<const RELU: bool>(d: &[f32], x: &[f32], y: &[f32], mean: f64) -> (f64, f64) {
    let (mut s, mut t) = ([0f64; LANES], [0f64; LANES]);
    let grad = |y: f32, d: f32| if RELU { relu_grad(y, d) } else { d };
    let full = d.len() / LANES * LANES;
    let (d8, x8, y8) = (&d[..full], &x[..full], &y[..full]);
    for i in (0..full).step_by(LANES) {
        let dv: &[f32; LANES] = d8[i..i + LANES].try_into().unwrap();
        let xv: &[f32; LANES] = x8[i..i + LANES].try_into().unwrap();
        let yv: &[f32; LANES] = y8[i..i + LANES].try_into().unwrap();
        let g: [f64; LANES] = std::array::from_fn(|l| grad(yv[l], dv[l]) as f64);
        let c: [f64; LANES] = std::array::from_fn(|l| xv[l] as f64 - mean);
        for l in 0..LANES {
            s[l] += g[l];
            t[l] += g[l] * c[l];
        }
    }
    for (l, i) in (full..d.len()).enumerate() {
        let g = grad(y[i], d[i]) as f64;
        s[l] += g;
        t[l] += g * (x[i] as f64 - mean);
    }
    (tree(s), tree(t))
}

/// y = x·a + b, then relu if `relu`, over a plane. OVERWRITES y.
pub(crate) fn scale_shift_plane(
    x: &[f32],
    a: f32,
    b: f32,
    relu_after: bool,
    y: &mut [f32],
    k: Isa,
) {
    assert_eq!(x.len(), y.len(), "scale_shift_plane: lengths");
    on_isa!(k, fn(x: &[f32], a: f32, b: f32, relu_after: bool, y: &mut [f32]) -> () {
        if relu_after {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = relu(x * a + b);
            }
        } else {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * a + b;
            }
        }
    })
}

/// y = y·a + b, then + r (the plane of a shortcut) if there is one, then
/// relu if `relu_after`, in place over a plane: the batch norm of
/// [`scale_shift_plane`] and the add of [`crate::ops::residual`] on a plane
/// a convolution just wrote, each value rounded as those ops round it.
pub(crate) fn epilogue_plane(
    y: &mut [f32],
    a: f32,
    b: f32,
    r: Option<&[f32]>,
    relu_after: bool,
    k: Isa,
) {
    assert!(
        r.is_none_or(|r| r.len() == y.len()),
        "epilogue_plane: lengths"
    );
    on_isa!(k, fn(y: &mut [f32], a: f32, b: f32, r: Option<&[f32]>, relu_after: bool) -> () {
        match (r, relu_after) {
            (Some(r), true) => {
                for (y, &r) in y.iter_mut().zip(r) {
                    *y = relu((*y * a + b) + r);
                }
            }
            (Some(r), false) => {
                for (y, &r) in y.iter_mut().zip(r) {
                    *y = (*y * a + b) + r;
                }
            }
            (None, true) => {
                for y in y.iter_mut() {
                    *y = relu(*y * a + b);
                }
            }
            (None, false) => {
                for y in y.iter_mut() {
                    *y = *y * a + b;
                }
            }
        }
    })
}

/// dx = a·g − c·x + b over a plane, g the gradient at the batch norm's
/// output (`d`, or relu_grad(relu_out, d)). OVERWRITES dx.
#[allow(clippy::too_many_arguments)] // the plane's four slices and three coefficients
pub(crate) fn input_grad_plane(
    d: &[f32],
    x: &[f32],
    relu_out: Option<&[f32]>,
    (a, c, b): (f32, f32, f32),
    dx: &mut [f32],
    k: Isa,
) {
    assert!(
        d.len() == x.len() && d.len() == dx.len() && relu_out.is_none_or(|y| y.len() == d.len()),
        "input_grad_plane: lengths"
    );
    let (y, relu) = match relu_out {
        Some(y) => (y, true),
        None => (d, false),
    };
    on_isa!(k, fn(d: &[f32], x: &[f32], y: &[f32], relu: bool, a: f32, c: f32, b: f32, dx: &mut [f32]) -> () {
        if relu {
            for (((g, &v), &dv), &yv) in dx.iter_mut().zip(x).zip(d).zip(y) {
                *g = a * relu_grad(yv, dv) - c * v + b;
            }
        } else {
            for ((g, &v), &dv) in dx.iter_mut().zip(x).zip(d) {
                *g = a * dv - c * v + b;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test values in [-2, 2).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        crate::ops::test_values::values(n, seed)
            .into_iter()
            .map(|v| 2.0 * v)
            .collect()
    }

    /// Every loop on every ISA gives the portable loop's bits, at lengths
    /// around the 8 lanes, and the sums are the f64 sums to rounding.
    #[test]
    fn every_isa_gives_the_portable_bits() {
        for n in (0..40).chain([64, 256, 1023, 1024]) {
            let (x, d, y) = (values(n, 7), values(n, 11), values(n, 13));
            let exact: f64 = x.iter().map(|&v| v as f64).sum();
            let run = |k: Isa| {
                let (s, q) = sums_x_x2(&x, k);
                let (g0, g1) = sums_grad(&d, &x, Some(&y), 0.25, k);
                let (h0, h1) = sums_grad(&d, &x, None, -0.5, k);
                let mut out = vec![f32::NAN; n];
                scale_shift_plane(&x, 1.5, -0.25, true, &mut out, k);
                let mut out2 = vec![f32::NAN; n];
                input_grad_plane(&d, &x, Some(&y), (0.7, 0.1, -0.3), &mut out2, k);
                let mut bits: Vec<u64> =
                    [s, q, g0, g1, h0, h1].iter().map(|v| v.to_bits()).collect();
                bits.extend(out.iter().chain(&out2).map(|v| v.to_bits() as u64));
                (s, bits)
            };
            let (s, want) = run(Isa::Portable);
            assert!(
                (s - exact).abs() <= 1e-9 * (1.0 + exact.abs()),
                "n {n}: {s} vs {exact}"
            );
            for k in Isa::available() {
                assert_eq!(run(k).1, want, "n {n} {k:?}");
            }
        }
    }

    /// The gradient sums take ReLU's mask from the output: where it is
    /// ≤ 0 the gradient is 0.
    #[test]
    fn grad_sums_mask_by_the_output() {
        let (d, x) = ([1.0f32, 2.0, 4.0], [0.0f32, 1.0, 2.0]);
        let y = [0.0f32, 3.0, -1.0];
        for k in Isa::available() {
            assert_eq!(sums_grad(&d, &x, Some(&y), 1.0, k), (2.0, 0.0));
            assert_eq!(sums_grad(&d, &x, None, 1.0, k), (7.0, 3.0));
        }
    }
}
