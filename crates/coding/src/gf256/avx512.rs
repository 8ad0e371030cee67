//! AVX-512BW kernels: 64 bytes per step with `VPSHUFB` nibble lookups; the
//! tail (< 64 bytes) uses a masked load and store instead of scalar code.

use super::NIBBLE;
use std::arch::x86_64::*;

/// `dst ^= c * src`. Only called after AVX-512F and AVX-512BW were detected.
pub(super) fn mul_acc(dst: &mut [u8], src: &[u8], c: u8) {
    // SAFETY: `Kernel::mul_acc` dispatches here only when
    // `Kernel::Avx512.is_available()` detected AVX-512F and AVX-512BW.
    unsafe { mul_acc_impl(dst, src, c) }
}

/// `dst *= c`. Only called after AVX-512F and AVX-512BW were detected.
pub(super) fn scale(dst: &mut [u8], c: u8) {
    // SAFETY: `Kernel::scale` dispatches here only when AVX-512F/BW were
    // detected.
    unsafe { scale_impl(dst, c) }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn tables(c: u8) -> (__m512i, __m512i) {
    let [lo, hi] = &NIBBLE[c as usize];
    // SAFETY: each table row is exactly 16 bytes; unaligned loads.
    let (lo, hi) =
        unsafe { (_mm_loadu_si128(lo.as_ptr().cast()), _mm_loadu_si128(hi.as_ptr().cast())) };
    (_mm512_broadcast_i32x4(lo), _mm512_broadcast_i32x4(hi))
}

#[target_feature(enable = "avx512f,avx512bw")]
fn product(lo: __m512i, hi: __m512i, s: __m512i) -> __m512i {
    let mask = _mm512_set1_epi8(0x0f);
    let l = _mm512_shuffle_epi8(lo, _mm512_and_si512(s, mask));
    let h = _mm512_shuffle_epi8(hi, _mm512_and_si512(_mm512_srli_epi64(s, 4), mask));
    _mm512_xor_si512(l, h)
}

/// Lane mask selecting the first `n` (< 64) bytes.
#[inline]
fn tail_mask(n: usize) -> __mmask64 {
    (1u64 << n) - 1
}

#[target_feature(enable = "avx512f,avx512bw")]
fn mul_acc_impl(dst: &mut [u8], src: &[u8], c: u8) {
    let (lo, hi) = tables(c);
    let mut d_chunks = dst.chunks_exact_mut(64);
    let mut s_chunks = src.chunks_exact(64);
    for (d, s) in (&mut d_chunks).zip(&mut s_chunks) {
        // SAFETY: both chunks are exactly 64 bytes; unaligned load/store.
        unsafe {
            let sv = _mm512_loadu_si512(s.as_ptr().cast());
            let dv = _mm512_loadu_si512(d.as_ptr().cast());
            _mm512_storeu_si512(d.as_mut_ptr().cast(), _mm512_xor_si512(dv, product(lo, hi, sv)));
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
            _mm512_mask_storeu_epi8(
                d.as_mut_ptr().cast(),
                k,
                _mm512_xor_si512(dv, product(lo, hi, sv)),
            );
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn scale_impl(dst: &mut [u8], c: u8) {
    let (lo, hi) = tables(c);
    let mut d_chunks = dst.chunks_exact_mut(64);
    for d in &mut d_chunks {
        // SAFETY: the chunk is exactly 64 bytes; unaligned load/store.
        unsafe {
            let dv = _mm512_loadu_si512(d.as_ptr().cast());
            _mm512_storeu_si512(d.as_mut_ptr().cast(), product(lo, hi, dv));
        }
    }
    let d = d_chunks.into_remainder();
    if !d.is_empty() {
        let k = tail_mask(d.len());
        // SAFETY: the remainder has d.len() < 64 bytes and the mask enables
        // exactly those lanes.
        unsafe {
            let dv = _mm512_maskz_loadu_epi8(k, d.as_ptr().cast());
            _mm512_mask_storeu_epi8(d.as_mut_ptr().cast(), k, product(lo, hi, dv));
        }
    }
}
