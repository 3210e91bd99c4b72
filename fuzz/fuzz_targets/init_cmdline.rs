#![no_main]
//! The kernel command line comes from a boot entry on the (unverified) ESP.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(args) = berth_init::cmdline::parse(s) {
            if let Some(v) = &args.verity {
                let _ = berth_init::verity::table_params("/dev/vda2", v);
            }
        }
    }
});
