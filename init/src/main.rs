//! `init`: PID 1 of Berth (stage 1 in the initramfs, stage 2 on the real root).

fn main() {
    berth_init::install_panic_hook();
    if berth_init::in_initramfs() {
        berth_init::stage1::run()
    } else {
        berth_init::stage2::run()
    }
}
