//! libFuzzer entry for `braid_fuzzing::headers`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| braid_fuzzing::headers(data));
