//! libFuzzer entry for `braid_fuzzing::statelets`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| braid_fuzzing::statelets(data));
