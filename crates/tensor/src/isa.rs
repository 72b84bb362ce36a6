//! The one place that decides which instruction set the kernels use.
//!
//! Every kernel with SIMD loops has a portable twin, and some an AVX2 + FMA
//! and an AVX-512 version. [`Isa::detected`] asks the CPU once what it has;
//! [`Isa::best`] is that, capped by the environment variable `HEBB_ISA`
//! (`portable`, `avx2` or `avx512`), so that the whole engine, its tests
//! included, can be run on the portable or the AVX2 loops of a machine that
//! has more:
//!
//! ```text
//! HEBB_ISA=portable cargo test -p tensor
//! ```
//!
//! Kernels take an `Isa` (tests pass each of [`Isa::available`]; the ops
//! pass [`Isa::best`]) and ask it [`Isa::avx2`] or [`Isa::avx512`] before
//! they call a loop compiled for those instructions. Both check the CPU as
//! well as the request, so no value of `Isa` can make a kernel run
//! instructions the CPU lacks.
//!
//! The loops of different instruction sets may round differently (an FMA
//! rounds once where the portable loop rounds twice), so results are
//! bitwise reproducible for one instruction set, not across them: the
//! AVX-512 loops are written to give the AVX2 loops' bits, the portable
//! ones are tested against the oracles to rounding.

use std::sync::OnceLock;

/// An instruction set the kernels are compiled for, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F, with AVX2 and FMA (which every such CPU has, and the
    /// AVX-512 loops' short tails use).
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// What this CPU runs, asked once.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// The instruction set the kernels use: the CPU's, capped by `HEBB_ISA`
    /// if it is set. Decided once per process.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let cap = std::env::var("HEBB_ISA").ok().and_then(|v| {
                let cap = Isa::ALL.into_iter().find(|i| i.name() == v.trim());
                if cap.is_none() {
                    eprintln!(
                        "warning: HEBB_ISA={v:?} is not portable, avx2 or avx512; ignoring it"
                    );
                }
                cap
            });
            Isa::detected().min(cap.unwrap_or(Isa::Avx512))
        })
    }

    /// Every instruction set this process may use, from the portable one
    /// up to [`Isa::best`]: what a test runs each kernel on.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|&i| i <= Isa::best()).collect()
    }

    /// Whether the AVX2 + FMA loops may run: asked for, and the CPU has
    /// them.
    pub fn avx2(self) -> bool {
        self >= Isa::Avx2 && Isa::detected() >= Isa::Avx2
    }

    /// Whether the AVX-512 loops may run: asked for, and the CPU has them.
    pub fn avx512(self) -> bool {
        self >= Isa::Avx512 && Isa::detected() >= Isa::Avx512
    }
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2 && is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_never_exceed_the_cpu() {
        for isa in Isa::ALL {
            assert_eq!(isa.avx2(), isa >= Isa::Avx2 && Isa::detected() >= Isa::Avx2);
            assert!(!isa.avx512() || Isa::detected() == Isa::Avx512);
        }
        assert!(Isa::best() <= Isa::detected());
        assert_eq!(Isa::available().first(), Some(&Isa::Portable));
        assert_eq!(Isa::available().last(), Some(&Isa::best()));
        assert!(!Isa::Portable.avx2() && !Isa::Portable.avx512());
    }
}
