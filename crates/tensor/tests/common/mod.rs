//! What the sparse convolution tests share: a reproducible generator, the
//! table of awkward geometries, the masks tried on each, and the tolerance
//! of a comparison with the dense oracle.

#![allow(dead_code)] // each test file uses its own part

use tensor::ops::conv2d::{Conv2dOptions, Conv2dShape};

/// xorshift32, mapped to [-1, 1): reproducible data without dependencies.
pub struct Rng(pub u32);
impl Rng {
    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    pub fn next(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
    /// Each entry active with probability `density`.
    pub fn mask(&mut self, n: usize, density: f64) -> Vec<bool> {
        (0..n)
            .map(|_| (self.next_u32() as f64 / u32::MAX as f64) < density)
            .collect()
    }
}

pub struct Case {
    pub name: &'static str,
    pub input: [usize; 4],  // (B, C, H, W)
    pub weight: [usize; 4], // (O, C/groups, KH, KW)
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

pub const fn case(name: &'static str, input: [usize; 4], weight: [usize; 4]) -> Case {
    Case {
        name,
        input,
        weight,
        stride: (1, 1),
        padding: (0, 0),
        dilation: (1, 1),
        groups: 1,
    }
}

pub fn cases() -> Vec<Case> {
    vec![
        case("plain 3x7x5", [1, 3, 7, 5], [4, 3, 3, 3]),
        case("batch 3, C != H != W", [3, 2, 9, 6], [5, 2, 3, 3]),
        case("non-square kernel 3x2", [2, 3, 7, 5], [5, 3, 3, 2]),
        case("non-square kernel 1x4", [2, 2, 5, 8], [3, 2, 1, 4]),
        Case {
            stride: (2, 2),
            ..case("stride 2", [2, 3, 9, 8], [4, 3, 3, 3])
        },
        Case {
            stride: (2, 1),
            ..case("stride (2,1)", [3, 2, 9, 6], [3, 2, 3, 2])
        },
        Case {
            stride: (1, 3),
            ..case("stride (1,3)", [2, 2, 6, 11], [3, 2, 2, 3])
        },
        Case {
            padding: (1, 2),
            ..case("padding (1,2)", [2, 3, 7, 5], [4, 3, 3, 2])
        },
        Case {
            padding: (2, 2),
            ..case("padding 2, 5x5", [2, 2, 6, 7], [3, 2, 5, 5])
        },
        Case {
            dilation: (2, 2),
            ..case("dilation 2", [2, 3, 9, 8], [2, 3, 3, 2])
        },
        Case {
            dilation: (2, 1),
            padding: (1, 1),
            ..case("dilation (2,1) + padding", [2, 3, 9, 5], [2, 3, 3, 2])
        },
        Case {
            groups: 2,
            ..case("groups 2", [3, 4, 6, 7], [6, 2, 3, 3])
        },
        Case {
            groups: 3,
            ..case("groups 3", [1, 6, 5, 5], [3, 2, 2, 2])
        },
        Case {
            groups: 3,
            padding: (1, 0),
            ..case("groups 3 + padding", [2, 6, 6, 5], [6, 2, 3, 2])
        },
        Case {
            stride: (2, 3),
            padding: (2, 1),
            dilation: (1, 2),
            groups: 3,
            ..case("everything at once", [3, 6, 11, 9], [9, 2, 3, 2])
        },
        Case {
            padding: (3, 3),
            ..case(
                "padding wider than kernel reach",
                [1, 1, 2, 3],
                [2, 1, 2, 2],
            )
        },
        case("1x1 kernel", [2, 5, 4, 3], [3, 5, 1, 1]),
        case("kernel covers input", [2, 2, 4, 3], [3, 2, 4, 3]),
        case("LeNet conv1 (batch 2)", [2, 3, 32, 32], [6, 3, 5, 5]),
        case("LeNet conv2 (batch 3)", [3, 6, 14, 14], [16, 6, 5, 5]),
        // Rows of whole vectors (8, 16, 32 floats), which the SIMD kernels
        // write straight into compact rows, strided and not.
        Case {
            padding: (1, 1),
            ..case("ResNet 3x3 on 8x8", [2, 4, 8, 8], [5, 4, 3, 3])
        },
        Case {
            padding: (1, 1),
            ..case("ResNet 3x3 on 16x16", [2, 3, 16, 16], [4, 3, 3, 3])
        },
        Case {
            padding: (1, 1),
            ..case("ResNet 3x3 on 32x32", [1, 2, 32, 32], [3, 2, 3, 3])
        },
        Case {
            padding: (1, 1),
            stride: (2, 2),
            ..case("ResNet 3x3 stride 2 on 32x32", [2, 3, 32, 32], [4, 3, 3, 3])
        },
        Case {
            padding: (1, 2),
            ..case("3x5 padding (1,2), 16 wide", [2, 2, 5, 16], [3, 2, 3, 5])
        },
    ]
}

pub fn shape_of(c: &Case) -> Conv2dShape {
    let opts = Conv2dOptions {
        stride: c.stride,
        padding: c.padding,
        dilation: c.dilation,
        groups: c.groups,
    };
    Conv2dShape::new(&c.input, &c.weight, opts).unwrap()
}

/// `n_terms` is the length of the sums behind each value: rounding error
/// grows about as its square root.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], n_terms: usize) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = 1e-5 * (n_terms.max(1) as f32).sqrt();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = scale * w.abs().max(1.0);
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

/// Masks to try on a weight of shape [o, cg, kh, kw]: random at several
/// densities, and structured ones (k taps per kernel, whole filters, one tap
/// pattern for the whole layer).
pub fn masks(shape: [usize; 4], rng: &mut Rng) -> Vec<(String, Vec<bool>)> {
    let [o, cg, kh, kw] = shape;
    let taps = kh * kw;
    let n = o * cg * taps;
    let mut out = Vec::new();
    for d in [0.0, 0.04, 0.12, 0.5, 1.0] {
        out.push((format!("random {d}"), rng.mask(n, d)));
    }
    // Balanced: k of the taps of every (o, c) kernel, k = 12 % rounded up.
    let k = (taps * 12).div_ceil(100);
    let mut balanced = vec![false; n];
    for kernel in balanced.chunks_mut(taps) {
        let mut placed = 0;
        while placed < k {
            let t = rng.next_u32() as usize % taps;
            if !kernel[t] {
                kernel[t] = true;
                placed += 1;
            }
        }
    }
    out.push((format!("balanced {k} per kernel"), balanced));
    // Whole filters on and off: every other output channel.
    let filters: Vec<bool> = (0..n).map(|i| (i / (cg * taps)) % 2 == 0).collect();
    out.push(("every other filter".into(), filters));
    // One pattern for the whole layer: the kernel's corners and centre.
    let pattern = |ki: usize, kj: usize| {
        (ki == 0 || ki == kh - 1) && (kj == 0 || kj == kw - 1) || (ki == kh / 2 && kj == kw / 2)
    };
    let layer: Vec<bool> = (0..n).map(|i| pattern((i % taps) / kw, i % kw)).collect();
    out.push(("corners + centre everywhere".into(), layer));
    out
}

/// Every value the same bits.
pub fn assert_bitwise(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{what}[{i}]: got {g}, want {w}");
    }
}
