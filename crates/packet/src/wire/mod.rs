//! Zero-copy typed header views (in the style of smoltcp's `wire`).
//!
//! Being written; see the module list below as it fills in.
