//! GFNI kernels: 64 bytes per step with `GF2P8MULB`, which multiplies bytes
//! in GF(2^8) modulo 0x11B, the field this crate uses. Masked tails.

use std::arch::x86_64::*;

/// `dst ^= c * src`. Only called after GFNI, AVX-512F and AVX-512BW were
/// detected.
pub(super) fn mul_acc(dst: &mut [u8], src: &[u8], c: u8) {
    // SAFETY: `Kernel::mul_acc` dispatches here only when
    // `Kernel::Gfni.is_available()` detected GFNI, AVX-512F and AVX-512BW.
    unsafe { mul_acc_impl(dst, src, c) }
}

/// `dst *= c`. Only called after GFNI, AVX-512F and AVX-512BW were detected.
pub(super) fn scale(dst: &mut [u8], c: u8) {
    // SAFETY: `Kernel::scale` dispatches here only when GFNI and AVX-512F/BW
    // were detected.
    unsafe { scale_impl(dst, c) }
}

#[inline]
fn tail_mask(n: usize) -> __mmask64 {
    (1u64 << n) - 1
}

#[target_feature(enable = "avx512f,avx512bw,gfni")]
fn mul_acc_impl(dst: &mut [u8], src: &[u8], c: u8) {
    let cv = _mm512_set1_epi8(c as i8);
    let mut d_chunks = dst.chunks_exact_mut(64);
    let mut s_chunks = src.chunks_exact(64);
    for (d, s) in (&mut d_chunks).zip(&mut s_chunks) {
        // SAFETY: both chunks are exactly 64 bytes; unaligned load/store.
        unsafe {
            let sv = _mm512_loadu_si512(s.as_ptr().cast());
            let dv = _mm512_loadu_si512(d.as_ptr().cast());
            let p = _mm512_gf2p8mul_epi8(sv, cv);
            _mm512_storeu_si512(d.as_mut_ptr().cast(), _mm512_xor_si512(dv, p));
        }
    }
    let d = d_chunks.into_remainder();
    let s = s_chunks.remainder();
    if !d.is_empty() {
        let k = tail_mask(d.len());
        // SAFETY: both remainders have d.len() < 64 bytes and the mask
        // enables exactly those lanes; masked-off lanes are not accessed.
        unsafe {
            let sv = _mm512_maskz_loadu_epi8(k, s.as_ptr().cast());
            let dv = _mm512_maskz_loadu_epi8(k, d.as_ptr().cast());
            let p = _mm512_gf2p8mul_epi8(sv, cv);
            _mm512_mask_storeu_epi8(d.as_mut_ptr().cast(), k, _mm512_xor_si512(dv, p));
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,gfni")]
fn scale_impl(dst: &mut [u8], c: u8) {
    let cv = _mm512_set1_epi8(c as i8);
    let mut d_chunks = dst.chunks_exact_mut(64);
    for d in &mut d_chunks {
        // SAFETY: the chunk is exactly 64 bytes; unaligned load/store.
        unsafe {
            let dv = _mm512_loadu_si512(d.as_ptr().cast());
            _mm512_storeu_si512(d.as_mut_ptr().cast(), _mm512_gf2p8mul_epi8(dv, cv));
        }
    }
    let d = d_chunks.into_remainder();
    if !d.is_empty() {
        let k = tail_mask(d.len());
        // SAFETY: the remainder has d.len() < 64 bytes and the mask enables
        // exactly those lanes.
        unsafe {
            let dv = _mm512_maskz_loadu_epi8(k, d.as_ptr().cast());
            _mm512_mask_storeu_epi8(d.as_mut_ptr().cast(), k, _mm512_gf2p8mul_epi8(dv, cv));
        }
    }
}

/// `dst ^= sum(coefs[i] * srcs[i][..dst.len()])`, four sources per pass so
/// `dst` is loaded and stored once per four products. Every source must be
/// at least `dst.len()` long (checked by the caller).
pub(super) fn combine(dst: &mut [u8], srcs: &[&[u8]], coefs: &[u8]) {
    // SAFETY: `Kernel::combine` dispatches here only when GFNI and
    // AVX-512F/BW were detected.
    unsafe { combine_impl(dst, srcs, coefs) }
}

#[target_feature(enable = "avx512f,avx512bw,gfni")]
fn combine_impl(dst: &mut [u8], srcs: &[&[u8]], coefs: &[u8]) {
    let n = dst.len();
    let full = n / 64 * 64;
    let k = tail_mask(n - full);
    let mut groups = srcs.chunks_exact(4).zip(coefs.chunks_exact(4));
    for (s, c) in &mut groups {
        let (s0, s1, s2, s3) = (&s[0][..n], &s[1][..n], &s[2][..n], &s[3][..n]);
        let c0 = _mm512_set1_epi8(c[0] as i8);
        let c1 = _mm512_set1_epi8(c[1] as i8);
        let c2 = _mm512_set1_epi8(c[2] as i8);
        let c3 = _mm512_set1_epi8(c[3] as i8);
        let mut off = 0;
        while off < full {
            // SAFETY: off + 64 <= full <= n and every slice here is n bytes
            // long; unaligned loads and store.
            unsafe {
                let mut acc = _mm512_loadu_si512(dst.as_ptr().add(off).cast());
                let v0 = _mm512_loadu_si512(s0.as_ptr().add(off).cast());
                let v1 = _mm512_loadu_si512(s1.as_ptr().add(off).cast());
                let v2 = _mm512_loadu_si512(s2.as_ptr().add(off).cast());
                let v3 = _mm512_loadu_si512(s3.as_ptr().add(off).cast());
                acc = _mm512_xor_si512(acc, _mm512_gf2p8mul_epi8(v0, c0));
                acc = _mm512_xor_si512(acc, _mm512_gf2p8mul_epi8(v1, c1));
                acc = _mm512_xor_si512(acc, _mm512_gf2p8mul_epi8(v2, c2));
                acc = _mm512_xor_si512(acc, _mm512_gf2p8mul_epi8(v3, c3));
                _mm512_storeu_si512(dst.as_mut_ptr().add(off).cast(), acc);
            }
            off += 64;
        }
        if full < n {
            // SAFETY: the mask enables lanes full..n only, all inside every
            // n-byte slice; masked-off lanes are not accessed.
            unsafe {
                let mut acc = _mm512_maskz_loadu_epi8(k, dst.as_ptr().add(full).cast());
                let v0 = _mm512_maskz_loadu_epi8(k, s0.as_ptr().add(full).cast());
                let v1 = _mm512_maskz_loadu_epi8(k, s1.as_ptr().add(full).cast());
                let v2 = _mm512_maskz_loadu_epi8(k, s2.as_ptr().add(full).cast());
                let v3 = _mm512_maskz_loadu_epi8(k, s3.as_ptr().add(full).cast());
                acc = _mm512_xor_si512(acc, _mm512_gf2p8mul_epi8(v0, c0));
                acc = _mm512_xor_si512(acc, _mm512_gf2p8mul_epi8(v1, c1));
                acc = _mm512_xor_si512(acc, _mm512_gf2p8mul_epi8(v2, c2));
                acc = _mm512_xor_si512(acc, _mm512_gf2p8mul_epi8(v3, c3));
                _mm512_mask_storeu_epi8(dst.as_mut_ptr().add(full).cast(), k, acc);
            }
        }
    }
    let rest = srcs.len() / 4 * 4;
    for (s, &c) in srcs[rest..].iter().zip(&coefs[rest..]) {
        mul_acc_impl(dst, &s[..n], c);
    }
}
