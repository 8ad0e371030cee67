//! Portable kernels: one table lookup per byte, no CPU features needed.

use super::NIBBLE;

/// `dst[i] ^= c * src[i]` (slices of equal length).
pub(super) fn mul_acc(dst: &mut [u8], src: &[u8], c: u8) {
    let [lo, hi] = &NIBBLE[c as usize];
    for (d, &s) in dst.iter_mut().zip(src) {
        *d ^= lo[(s & 15) as usize] ^ hi[(s >> 4) as usize];
    }
}

/// `dst[i] = c * dst[i]`.
pub(super) fn scale(dst: &mut [u8], c: u8) {
    let [lo, hi] = &NIBBLE[c as usize];
    for d in dst.iter_mut() {
        *d = lo[(*d & 15) as usize] ^ hi[(*d >> 4) as usize];
    }
}
