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
