//! The remote API's TLS-framed transport on arbitrary bytes, before the TLS handshake and as
//! application data after a real one: sysd never panics or hangs, and keeps serving.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_sysd::remote::fuzz_tls_transport(data));
