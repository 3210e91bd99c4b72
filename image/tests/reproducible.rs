//! Two builds of the same inputs give a byte-identical root image (EROFS + verity tree),
//! and a different build id gives a different one. Needs mkfs.erofs and veritysetup
//! (`make deps`).

use berth_image::build::{add_verity, make_erofs, root_tree, sha256_hex};
use berth_image::layout::{Arch, Sizes};
use berth_image::BuildOptions;
use std::path::{Path, PathBuf};

fn opts(dir: &Path, build_id: &str) -> BuildOptions {
    BuildOptions {
        arch: Arch::X86_64,
        kernel_dir: dir.join("kernel"),
        bin_dir: dir.join("bin"),
        out_dir: dir.join("out"),
        build_id: build_id.into(),
        version: "1.2.3".into(),
        modules_list: dir.join("modules.txt"),
        cmdline: "console=ttyS0".into(),
        systemd_boot: dir.join("boot.efi"),
        sizes: Sizes::default(),
        firmware_dir: None,
        trusted_keys: Vec::new(),
        extra_services: Vec::new(),
    }
}

fn root_image(dir: &Path, build_id: &str, name: &str) -> (Vec<u8>, String) {
    let o = opts(dir, build_id);
    let tree = dir.join(format!("tree-{name}"));
    root_tree(&o, &tree).unwrap();
    let img = dir.join(format!("root-{name}.img"));
    make_erofs(&tree, &img, build_id).unwrap();
    let (hash, _, _) = add_verity(&img, build_id).unwrap();
    (std::fs::read(&img).unwrap(), hash)
}

#[test]
fn same_inputs_same_root_image() {
    let dir: PathBuf = std::env::temp_dir().join(format!("berth-repro-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    for (b, content) in [("init", "i"), ("sysd", "s"), ("osctl", "o")] {
        std::fs::write(dir.join("bin").join(b), content.repeat(10_000)).unwrap();
    }
    // Stands in for busybox-static (the system container images are built from it).
    std::fs::create_dir_all(dir.join("kernel")).unwrap();
    std::fs::write(dir.join("kernel/busybox"), "b".repeat(10_000)).unwrap();
    // And for the unpacked openntpd and libc6 packages (the ntpd image).
    let debs = dir.join("kernel/debs");
    for (p, content) in [
        ("openntpd/usr/sbin/ntpd", "n"),
        ("libc6/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "l"),
        ("libc6/lib/x86_64-linux-gnu/libc.so.6", "c"),
        ("libc6/lib/x86_64-linux-gnu/libm.so.6", "m"),
    ] {
        std::fs::create_dir_all(debs.join(p).parent().unwrap()).unwrap();
        std::fs::write(debs.join(p), content.repeat(10_000)).unwrap();
    }
    let (a, ha) = root_image(&dir, "id1", "a");
    // Touch the inputs: timestamps must not matter.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for b in ["init", "sysd", "osctl"] {
        let p = dir.join("bin").join(b);
        let data = std::fs::read(&p).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    let (b, hb) = root_image(&dir, "id1", "b");
    assert_eq!(ha, hb, "verity root hashes differ");
    assert!(
        a == b,
        "root images differ: {} vs {}",
        sha256_hex(&format!("{a:?}")),
        sha256_hex(&format!("{b:?}"))
    );
    let (_, hc) = root_image(&dir, "id2", "c");
    assert_ne!(ha, hc, "a different build id must change the salt and uuid");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn same_build_id_same_state_template() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("berth-repro-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    berth_image::build::make_state(&a, 32 << 20, "id1").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    berth_image::build::make_state(&b, 32 << 20, "id1").unwrap();
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "state images differ"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
