//! braid-probe (being built).
