//! libFuzzer entry for `braid_fuzzing::descriptor`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| braid_fuzzing::descriptor(data));
