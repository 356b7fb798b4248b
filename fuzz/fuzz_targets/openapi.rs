#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::openapi_import(data));
