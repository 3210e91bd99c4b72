//! Log forwarding's syslog framing on arbitrary container output (lines with line feeds,
//! carriage returns, invalid UTF-8, lines past 64 KiB): every line becomes one RFC 6587
//! octet-counted RFC 5424 frame that parses back to the line, with printable ASCII headers.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_sysd::logfwd::format::fuzz_frame(data));
