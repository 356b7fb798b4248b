#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::api_key(data));
