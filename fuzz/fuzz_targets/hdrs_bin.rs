#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| spop_proto::fuzzing::hdrs_bin(data));
