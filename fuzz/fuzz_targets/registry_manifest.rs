//! OCI/Docker manifest, index and config parsing (plus references, digests, platforms
//! and WWW-Authenticate challenges) must never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_registry::fuzz_manifest(data));
