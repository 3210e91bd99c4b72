#![no_main]
//! config.json comes from the bundle (image config converted by sysd, or a
//! user's bundle for the CLI): parse + validate + plan must never panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_runtime::fuzz_config_json(data);
});
