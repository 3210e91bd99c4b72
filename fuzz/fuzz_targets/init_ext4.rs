#![no_main]
//! The ext4 superblock parser reads whatever is on the state partition.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Pad to a full superblock so every input reaches the field parsing; keep the magic
    // often valid so the fuzzer explores past it.
    let mut sb = [0u8; 1024];
    let n = data.len().min(1024);
    sb[..n].copy_from_slice(&data[..n]);
    if data.first().is_some_and(|b| b & 1 == 1) {
        sb[0x38] = 0x53;
        sb[0x39] = 0xEF;
    }
    if let Some(sb) = berth_init::ext4::Superblock::parse(&sb) {
        let _ = sb.clean();
    }
});
