//! braid-testbed (being built).
