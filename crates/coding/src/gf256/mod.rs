//! Arithmetic in GF(2^8) and bulk multiply-accumulate kernels.
//!
//! The field is GF(2)[x] / (x^8 + x^4 + x^3 + x + 1) (0x11B, the AES
//! polynomial). That choice lets the GFNI kernel use the hardware
//! `GF2P8MULB` instruction directly, which multiplies in exactly this field.
//!
//! Bulk operations (`dst ^= c * src`, `dst *= c`) have one implementation per
//! instruction set, chosen once at run time by [`Kernel::best`]:
//! GFNI (AVX-512), AVX-512BW, AVX2, SSSE3 (all x86-64, nibble-split table
//! shuffles except GFNI) and a portable fallback that runs anywhere. Every
//! SIMD kernel is checked against the portable one by property tests.

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD intrinsics
mod avx2;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD intrinsics
mod avx512;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD intrinsics
mod gfni;
mod portable;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // SIMD intrinsics
mod ssse3;

use std::sync::OnceLock;

/// The reduction polynomial without its x^8 term.
pub const POLY: u16 = 0x11B;

const fn mul_slow(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= (POLY & 0xFF) as u8;
        }
        b >>= 1;
    }
    p
}

/// exp[i] = g^i for the generator g = 3, doubled so that exp[log a + log b]
/// needs no modulo.
const EXP: [u8; 512] = {
    let mut t = [0u8; 512];
    let mut x = 1u8;
    let mut i = 0;
    while i < 255 {
        t[i] = x;
        t[i + 255] = x;
        x = mul_slow(x, 3);
        i += 1;
    }
    t[510] = t[0];
    t[511] = t[1];
    t
};

const LOG: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 255 {
        t[EXP[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Nibble-split product tables: `NIBBLE[c][0][i] = c * i` and
/// `NIBBLE[c][1][i] = c * (i << 4)` for i in 0..16, so that
/// `c * b = NIBBLE[c][0][b & 15] ^ NIBBLE[c][1][b >> 4]`. The SIMD kernels
/// load the two 16-byte rows for `c` and look bytes up with a shuffle.
pub(crate) static NIBBLE: [[[u8; 16]; 2]; 256] = {
    let mut t = [[[0u8; 16]; 2]; 256];
    let mut c = 0;
    while c < 256 {
        let mut i = 0;
        while i < 16 {
            t[c][0][i] = mul_slow(c as u8, i as u8);
            t[c][1][i] = mul_slow(c as u8, (i << 4) as u8);
            i += 1;
        }
        c += 1;
    }
    t
};

/// a + b (= a - b) in GF(2^8).
#[inline]
pub fn add(a: u8, b: u8) -> u8 {
    a ^ b
}

/// a * b in GF(2^8).
#[inline]
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        0
    } else {
        EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
    }
}

/// The multiplicative inverse of a non-zero element; `inv(0)` is `None`.
#[inline]
pub fn inv(a: u8) -> Option<u8> {
    if a == 0 {
        None
    } else {
        Some(EXP[255 - LOG[a as usize] as usize])
    }
}

/// One implementation of the bulk operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Log/exp and nibble tables, one byte at a time; runs everywhere.
    Portable,
    /// 16-byte `PSHUFB` nibble lookups.
    Ssse3,
    /// 32-byte `VPSHUFB` nibble lookups.
    Avx2,
    /// 64-byte `VPSHUFB` nibble lookups (AVX-512BW).
    Avx512,
    /// 64-byte `GF2P8MULB` (GFNI with AVX-512).
    Gfni,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 5] =
        [Kernel::Portable, Kernel::Ssse3, Kernel::Avx2, Kernel::Avx512, Kernel::Gfni];

    /// Short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Ssse3 => "ssse3",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Gfni => "gfni",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Ssse3 => std::arch::is_x86_feature_detected!("ssse3"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Gfni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("gfni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernels this CPU can run, slowest first.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// The fastest kernel this CPU can run (detected once).
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            Kernel::ALL.into_iter().rev().find(|k| k.is_available()).unwrap_or(Kernel::Portable)
        })
    }

    /// `dst[i] ^= c * src[i]` for i < min(len). Falls back to the portable
    /// code if this CPU cannot run the kernel.
    pub fn mul_acc(self, dst: &mut [u8], src: &[u8], c: u8) {
        let n = dst.len().min(src.len());
        let (dst, src) = (&mut dst[..n], &src[..n]);
        match c {
            0 => return,
            1 => return xor_into(dst, src),
            _ => {}
        }
        if !self.is_available() {
            return portable::mul_acc(dst, src, c);
        }
        match self {
            Kernel::Portable => portable::mul_acc(dst, src, c),
            #[cfg(target_arch = "x86_64")]
            Kernel::Ssse3 => ssse3::mul_acc(dst, src, c),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::mul_acc(dst, src, c),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::mul_acc(dst, src, c),
            #[cfg(target_arch = "x86_64")]
            Kernel::Gfni => gfni::mul_acc(dst, src, c),
            #[cfg(not(target_arch = "x86_64"))]
            _ => portable::mul_acc(dst, src, c),
        }
    }

    /// `dst ^= sum(coefs[i] * srcs[i])` over the first `dst.len()` bytes:
    /// a whole linear combination in one call. Sources shorter than `dst`
    /// count as zero-padded. The GFNI kernel fuses four sources per pass
    /// over `dst`; the others call [`Kernel::mul_acc`] per source.
    pub fn combine(self, dst: &mut [u8], srcs: &[&[u8]], coefs: &[u8]) {
        let n = srcs.len().min(coefs.len());
        let (srcs, coefs) = (&srcs[..n], &coefs[..n]);
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Gfni && self.is_available() && srcs.iter().all(|s| s.len() >= dst.len())
        {
            return gfni::combine(dst, srcs, coefs);
        }
        for (s, &c) in srcs.iter().zip(coefs) {
            let m = s.len().min(dst.len());
            self.mul_acc(&mut dst[..m], s, c);
        }
    }

    /// `dst[i] = c * dst[i]`.
    pub fn scale(self, dst: &mut [u8], c: u8) {
        match c {
            0 => return dst.fill(0),
            1 => return,
            _ => {}
        }
        if !self.is_available() {
            return portable::scale(dst, c);
        }
        match self {
            Kernel::Portable => portable::scale(dst, c),
            #[cfg(target_arch = "x86_64")]
            Kernel::Ssse3 => ssse3::scale(dst, c),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::scale(dst, c),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::scale(dst, c),
            #[cfg(target_arch = "x86_64")]
            Kernel::Gfni => gfni::scale(dst, c),
            #[cfg(not(target_arch = "x86_64"))]
            _ => portable::scale(dst, c),
        }
    }
}

/// `dst[i] ^= src[i]`; the compiler vectorizes this loop on its own.
#[inline]
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

/// `dst ^= c * src` with the best kernel of this CPU.
#[inline]
pub fn mul_acc(dst: &mut [u8], src: &[u8], c: u8) {
    Kernel::best().mul_acc(dst, src, c)
}

/// `dst *= c` with the best kernel of this CPU.
#[inline]
pub fn scale(dst: &mut [u8], c: u8) {
    Kernel::best().scale(dst, c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn field_axioms_on_all_elements() {
        for a in 0..=255u8 {
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
            if a != 0 {
                assert_eq!(mul(a, inv(a).unwrap()), 1, "a={a}");
            }
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), mul_slow(a, b));
                assert_eq!(mul(a, b), mul(b, a));
            }
        }
        assert_eq!(inv(0), None);
        // FIPS-197 section 4.2 example: {57} * {83} = {c1}.
        assert_eq!(mul(0x57, 0x83), 0xc1);
    }

    #[test]
    fn generator_has_full_order() {
        let mut seen = [false; 256];
        for &e in &EXP[..255] {
            assert!(!seen[e as usize]);
            seen[e as usize] = true;
        }
        assert!(!seen[0]);
    }

    proptest! {
        #[test]
        fn distributive(a: u8, b: u8, c: u8) {
            prop_assert_eq!(mul(a, b ^ c), mul(a, b) ^ mul(a, c));
            prop_assert_eq!(mul(mul(a, b), c), mul(a, mul(b, c)));
        }

        #[test]
        fn every_kernel_matches_portable(
            dst in proptest::collection::vec(any::<u8>(), 0..700),
            src in proptest::collection::vec(any::<u8>(), 0..700),
            c: u8,
            offset in 0usize..64,
        ) {
            // An offset into the slices exercises unaligned heads and tails.
            let off = offset.min(dst.len()).min(src.len());
            let mut want = dst.clone();
            portable::mul_acc(&mut want[off..], &src[off..], c);
            let n = (dst.len().min(src.len())).max(off);
            for (i, w) in want.iter().enumerate() {
                if i < off || i >= n {
                    prop_assert_eq!(*w, dst[i]);
                } else {
                    prop_assert_eq!(*w, dst[i] ^ mul(c, src[i]));
                }
            }
            let mut want_scale = dst.clone();
            portable::scale(&mut want_scale[off..], c);
            for k in Kernel::available() {
                let mut got = dst.clone();
                k.mul_acc(&mut got[off..], &src[off..], c);
                prop_assert_eq!(&got, &want, "mul_acc kernel {}", k.name());
                let mut got = dst.clone();
                k.scale(&mut got[off..], c);
                prop_assert_eq!(&got, &want_scale, "scale kernel {}", k.name());
            }
        }
    }

    proptest! {
        #[test]
        fn combine_matches_mul_acc(
            n in 0usize..300,
            srcs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..320), 0..11),
            coefs in proptest::collection::vec(any::<u8>(), 0..11),
        ) {
            let refs: Vec<&[u8]> = srcs.iter().map(|s| &s[..]).collect();
            let mut want = vec![7u8; n];
            for (s, &c) in refs.iter().zip(&coefs) {
                let m = s.len().min(n);
                portable::mul_acc(&mut want[..m], &s[..m], c);
            }
            for k in Kernel::available() {
                let mut got = vec![7u8; n];
                k.combine(&mut got, &refs, &coefs);
                prop_assert_eq!(&got, &want, "kernel {}", k.name());
                // Equal-length sources take the fused path.
                let eq: Vec<Vec<u8>> = srcs.iter().map(|s| { let mut v = s.clone(); v.resize(n, 0); v }).collect();
                let eq_refs: Vec<&[u8]> = eq.iter().map(|s| &s[..]).collect();
                let mut got = vec![7u8; n];
                k.combine(&mut got, &eq_refs, &coefs);
                prop_assert_eq!(&got, &want, "kernel {} (equal lengths)", k.name());
            }
        }
    }

    #[test]
    fn best_kernel_is_available() {
        assert!(Kernel::best().is_available());
        assert!(Kernel::available().contains(&Kernel::Portable));
    }
}
