#![no_main]
// The checks live in the library so `make test` replays seeds and saved crashes too.
libfuzzer_sys::fuzz_target!(|data: &[u8]| podwire_fuzz::oci_state(data));
