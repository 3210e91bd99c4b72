//! The layer unpacker on arbitrary (tar, gzip or zstd) bytes: never panics, and never
//! writes outside the layer directory.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_registry::fuzz_unpack(data));
