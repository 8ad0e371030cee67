//! AVX2 kernels: 32 bytes per step (two steps per loop iteration), products
//! looked up with `VPSHUFB` in the nibble tables broadcast to both lanes.

use super::{portable, NIBBLE};
use std::arch::x86_64::*;

/// `dst ^= c * src`. Only called after AVX2 was detected.
pub(super) fn mul_acc(dst: &mut [u8], src: &[u8], c: u8) {
    // SAFETY: `Kernel::mul_acc` dispatches here only when
    // `Kernel::Avx2.is_available()` detected AVX2 on this CPU.
    unsafe { mul_acc_impl(dst, src, c) }
}

/// `dst *= c`. Only called after AVX2 was detected.
pub(super) fn scale(dst: &mut [u8], c: u8) {
    // SAFETY: `Kernel::scale` dispatches here only when AVX2 was detected.
    unsafe { scale_impl(dst, c) }
}

#[target_feature(enable = "avx2")]
fn tables(c: u8) -> (__m256i, __m256i) {
    let [lo, hi] = &NIBBLE[c as usize];
    // SAFETY: each table row is exactly 16 bytes; unaligned loads.
    let (lo, hi) =
        unsafe { (_mm_loadu_si128(lo.as_ptr().cast()), _mm_loadu_si128(hi.as_ptr().cast())) };
    (_mm256_broadcastsi128_si256(lo), _mm256_broadcastsi128_si256(hi))
}

#[target_feature(enable = "avx2")]
fn product(lo: __m256i, hi: __m256i, s: __m256i) -> __m256i {
    let mask = _mm256_set1_epi8(0x0f);
    let l = _mm256_shuffle_epi8(lo, _mm256_and_si256(s, mask));
    let h = _mm256_shuffle_epi8(hi, _mm256_and_si256(_mm256_srli_epi64(s, 4), mask));
    _mm256_xor_si256(l, h)
}

#[target_feature(enable = "avx2")]
fn mul_acc_impl(dst: &mut [u8], src: &[u8], c: u8) {
    let (lo, hi) = tables(c);
    let mut d_chunks = dst.chunks_exact_mut(32);
    let mut s_chunks = src.chunks_exact(32);
    for (d, s) in (&mut d_chunks).zip(&mut s_chunks) {
        // SAFETY: both chunks are exactly 32 bytes; unaligned load/store.
        unsafe {
            let sv = _mm256_loadu_si256(s.as_ptr().cast());
            let dv = _mm256_loadu_si256(d.as_ptr().cast());
            _mm256_storeu_si256(d.as_mut_ptr().cast(), _mm256_xor_si256(dv, product(lo, hi, sv)));
        }
    }
    portable::mul_acc(d_chunks.into_remainder(), s_chunks.remainder(), c);
}

#[target_feature(enable = "avx2")]
fn scale_impl(dst: &mut [u8], c: u8) {
    let (lo, hi) = tables(c);
    let mut d_chunks = dst.chunks_exact_mut(32);
    for d in &mut d_chunks {
        // SAFETY: the chunk is exactly 32 bytes; unaligned load/store.
        unsafe {
            let dv = _mm256_loadu_si256(d.as_ptr().cast());
            _mm256_storeu_si256(d.as_mut_ptr().cast(), product(lo, hi, dv));
        }
    }
    portable::scale(d_chunks.into_remainder(), c);
}
