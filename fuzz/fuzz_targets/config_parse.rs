#![no_main]
//! The machine config arrives from fw_cfg, a CIDATA volume, the ESP or a URL: untrusted.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_config::fuzz_parse(data);
});
