//! braid-runtime (being built).
