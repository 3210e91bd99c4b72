//! The Rust dm-verity computation against `veritysetup format` (cryptsetup-bin) on files
//! of several sizes, including the tree-level boundaries, with the layout `berth-image`
//! uses (hash tree appended after the data, superblock first).

use berth_updater::verity;
use std::io::{Seek, SeekFrom, Write};
use std::process::Command;

fn format(path: &std::path::Path, blocks: u64, salt: &str) -> String {
    let out = Command::new("veritysetup")
        .arg("format")
        .args(["--data-block-size=4096", "--hash-block-size=4096"])
        .arg(format!("--data-blocks={blocks}"))
        .arg(format!("--hash-offset={}", blocks * 4096))
        .arg(format!("--salt={salt}"))
        .arg(path)
        .arg(path)
        .output()
        .expect("veritysetup (cryptsetup-bin) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .expect("root hash in veritysetup output")
}

#[test]
fn root_hash_matches_veritysetup() {
    let dir = tempfile::tempdir().unwrap();
    let salt = "0123456789abcdef0123456789abcdef";
    let mut seed = 7u64;
    for blocks in [2u64, 5, 128, 129, 1000, 16385] {
        let p = dir.path().join(format!("img-{blocks}"));
        let mut f = std::fs::File::create(&p).unwrap();
        // Pseudo-random data (xorshift), so every block hashes differently.
        let mut data = vec![0u8; (blocks * 4096) as usize];
        for b in data.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            b.copy_from_slice(&seed.to_le_bytes()[..b.len()]);
        }
        f.write_all(&data).unwrap();
        drop(f);
        let want = format(&p, blocks, salt);
        let mut f = std::fs::File::open(&p).unwrap();
        let v = verity::verify_image(&mut f, blocks, salt, &want, &mut |_| {})
            .unwrap_or_else(|e| panic!("{blocks} blocks: {e}"));
        assert_eq!(v.root_hash, want, "{blocks} blocks");
        assert_eq!(
            v.bytes,
            std::fs::metadata(&p).unwrap().len(),
            "{blocks} blocks: the whole image was read"
        );

        // A flipped bit in the data changes the root hash; one in the tree is caught.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.seek(SeekFrom::Start(4096 + 17)).unwrap();
        f.write_all(&[data[4096 + 17] ^ 1]).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let err = verity::verify_image(&mut f, blocks, salt, &want, &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, verity::VerityError::TreeMismatch { .. }),
            "{blocks}: {err}"
        );
    }
}

#[test]
fn wrong_parameters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    std::fs::write(&p, vec![0x5au8; 64 * 4096]).unwrap();
    let want = format(&p, 64, "aa");
    let mut f = std::fs::File::open(&p).unwrap();
    // Another salt: the superblock says otherwise.
    assert!(matches!(
        verity::verify_image(&mut f, 64, "bb", &want, &mut |_| {}),
        Err(verity::VerityError::Superblock { .. })
    ));
    // Another expected root hash.
    let mut f = std::fs::File::open(&p).unwrap();
    assert!(matches!(
        verity::verify_image(&mut f, 64, "aa", &"0".repeat(64), &mut |_| {}),
        Err(verity::VerityError::RootMismatch { .. })
    ));
}
