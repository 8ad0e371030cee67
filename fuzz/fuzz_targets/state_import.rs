//! libFuzzer entry for `braid_fuzzing::state_import`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| braid_fuzzing::state_import(data));
