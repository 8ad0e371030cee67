//! libFuzzer entry for `braid_fuzzing::shm`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| braid_fuzzing::shm(data));
