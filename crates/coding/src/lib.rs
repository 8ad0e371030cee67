//! braid-coding (being built).
