//! braid-io (being built).
