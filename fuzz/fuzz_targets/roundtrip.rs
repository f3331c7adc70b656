#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| spop_proto::fuzzing::roundtrip(data));
