//! SSSE3 kernels: 16 bytes per step, products looked up with `PSHUFB` in the
//! two 16-entry nibble tables of the constant.

use super::{portable, NIBBLE};
use std::arch::x86_64::*;

/// `dst ^= c * src`. Only called after SSSE3 was detected.
pub(super) fn mul_acc(dst: &mut [u8], src: &[u8], c: u8) {
    debug_assert!(std::arch::is_x86_feature_detected!("ssse3"));
    // SAFETY: `Kernel::mul_acc` dispatches here only when
    // `Kernel::Ssse3.is_available()` detected SSSE3 on this CPU.
    unsafe { mul_acc_impl(dst, src, c) }
}

/// `dst *= c`. Only called after SSSE3 was detected.
pub(super) fn scale(dst: &mut [u8], c: u8) {
    // SAFETY: `Kernel::scale` dispatches here only when SSSE3 was detected.
    unsafe { scale_impl(dst, c) }
}

#[target_feature(enable = "ssse3")]
fn tables(c: u8) -> (__m128i, __m128i) {
    let [lo, hi] = &NIBBLE[c as usize];
    // SAFETY: each table row is exactly 16 bytes; unaligned loads.
    unsafe { (_mm_loadu_si128(lo.as_ptr().cast()), _mm_loadu_si128(hi.as_ptr().cast())) }
}

#[target_feature(enable = "ssse3")]
fn product(lo: __m128i, hi: __m128i, s: __m128i) -> __m128i {
    let mask = _mm_set1_epi8(0x0f);
    let l = _mm_shuffle_epi8(lo, _mm_and_si128(s, mask));
    let h = _mm_shuffle_epi8(hi, _mm_and_si128(_mm_srli_epi64(s, 4), mask));
    _mm_xor_si128(l, h)
}

#[target_feature(enable = "ssse3")]
fn mul_acc_impl(dst: &mut [u8], src: &[u8], c: u8) {
    let (lo, hi) = tables(c);
    let mut d_chunks = dst.chunks_exact_mut(16);
    let mut s_chunks = src.chunks_exact(16);
    for (d, s) in (&mut d_chunks).zip(&mut s_chunks) {
        // SAFETY: both chunks are exactly 16 bytes; unaligned load/store.
        unsafe {
            let sv = _mm_loadu_si128(s.as_ptr().cast());
            let dv = _mm_loadu_si128(d.as_ptr().cast());
            _mm_storeu_si128(d.as_mut_ptr().cast(), _mm_xor_si128(dv, product(lo, hi, sv)));
        }
    }
    portable::mul_acc(d_chunks.into_remainder(), s_chunks.remainder(), c);
}

#[target_feature(enable = "ssse3")]
fn scale_impl(dst: &mut [u8], c: u8) {
    let (lo, hi) = tables(c);
    let mut d_chunks = dst.chunks_exact_mut(16);
    for d in &mut d_chunks {
        // SAFETY: the chunk is exactly 16 bytes; unaligned load/store.
        unsafe {
            let dv = _mm_loadu_si128(d.as_ptr().cast());
            _mm_storeu_si128(d.as_mut_ptr().cast(), product(lo, hi, dv));
        }
    }
    portable::scale(d_chunks.into_remainder(), c);
}
