//! libFuzzer entry for `braid_fuzzing::capture`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| braid_fuzzing::capture(data));
