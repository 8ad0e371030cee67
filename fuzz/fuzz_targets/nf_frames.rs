//! libFuzzer entry for `braid_fuzzing::nf_frames`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| braid_fuzzing::nf_frames(data));
