//! `berth-image build`: root tree -> EROFS + dm-verity, initramfs, ESP, state, GPT disk.

use crate::bls::{self, Entry};
use crate::cpio;
use crate::layout::{self, Arch, Sizes};
use crate::modules::{self, ModulesDep};
use crate::tools::{self, ToolError};
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub arch: Arch,
    /// Output of `kernel-config/fetch-kernel.sh`: `vmlinuz`, `version`, `lib/modules/<v>/`.
    pub kernel_dir: PathBuf,
    /// Directory with the static `init`, `sysd` and `osctl` binaries.
    pub bin_dir: PathBuf,
    pub out_dir: PathBuf,
    /// Seeds every UUID and the verity salt: same id + same inputs = same root image.
    pub build_id: String,
    pub version: String,
    /// Module list (`kernel-config/modules-*.txt`).
    pub modules_list: PathBuf,
    /// Base kernel command line (`kernel-config/cmdline-*.txt`).
    pub cmdline: String,
    /// systemd-boot EFI binary.
    pub systemd_boot: PathBuf,
    pub sizes: Sizes,
    /// Unpacked firmware packages (a folder holding `lib/firmware/...`): the files the
    /// selected modules name in `modinfo firmware=` and that exist there go into the
    /// initramfs under `/lib/firmware`. `None`: no firmware.
    pub firmware_dir: Option<PathBuf>,
    /// Public keys (PEM, like `cosign.pub`) trusted to sign OS updates: copied to
    /// `/usr/lib/berth/keys/<file name>` (the name must end in `.pub`).
    pub trusted_keys: Vec<PathBuf>,
    /// Extra system service definitions (`ContainerSpec` TOML, e.g. a vendor agent) added
    /// to `/usr/lib/berth/services/<name>.toml` next to the shipped ones.
    pub extra_services: Vec<PathBuf>,
}

/// What a build produced (also written to `OUT/image.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BuildOutput {
    pub arch: String,
    pub version: String,
    pub build_id: String,
    pub kernel: String,
    pub disk: PathBuf,
    pub root_image: PathBuf,
    pub root_hash: String,
    pub verity_salt: String,
    pub data_blocks: u64,
    pub initrd: PathBuf,
    pub kernel_image: PathBuf,
    pub disk_bytes: u64,
    pub root_bytes: u64,
    pub initrd_bytes: u64,
    pub kernel_bytes: u64,
    pub modules: Vec<String>,
    /// Firmware files in the initramfs, relative to `/lib/firmware`.
    #[serde(default)]
    pub firmware: Vec<String>,
    /// Slot A's kernel command line (the boot entry's `options`).
    #[serde(default)]
    pub boot_options: String,
    /// Slot A's kernel, initrd and command line for a direct kernel boot without firmware
    /// or boot loader (`qemu/run.sh --direct`): `vmlinuz`, `initrd.img`, `cmdline`.
    #[serde(default)]
    pub direct_boot: PathBuf,
}

/// Build failures, each naming the step and file involved.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("kernel modules")]
    Modules(#[from] modules::ModuleError),
    #[error("the root image ({size} bytes with its hash tree) does not fit the {part} byte root partition")]
    RootTooBig { size: u64, part: u64 },
    #[error("veritysetup printed no root hash")]
    NoRootHash,
    #[error("system container images")]
    SysImage(#[from] crate::sysimage::SysImageError),
    #[error("update key {path}: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("service definition {path}: {reason}")]
    BadService { path: PathBuf, reason: String },
}

fn io<T>(what: &'static str, path: &Path, r: std::io::Result<T>) -> Result<T, BuildError> {
    r.map_err(|source| BuildError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), BuildError> {
    if let Some(p) = path.parent() {
        io("creating", p, fs::create_dir_all(p))?;
    }
    io("writing", path, fs::write(path, data))?;
    io(
        "chmod",
        path,
        fs::set_permissions(path, fs::Permissions::from_mode(mode)),
    )
}

/// Hex SHA-256 of a string (salt and ids).
pub fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `/usr/lib/berth/os-release`.
pub fn os_release(version: &str, build_id: &str, arch: Arch) -> String {
    format!(
        "NAME=\"Berth\"\nID=berth\nPRETTY_NAME=\"Berth {version}\"\nVERSION_ID={version}\n\
         BUILD_ID={build_id}\nVARIANT_ID=cloud\nBERTH_ARCH={}\nHOME_URL=\"https://berth.invalid/\"\n",
        arch.as_str()
    )
}

/// Lay out the root filesystem tree.
pub fn root_tree(opts: &BuildOptions, dir: &Path) -> Result<(), BuildError> {
    if dir.exists() {
        io("cleaning", dir, fs::remove_dir_all(dir))?;
    }
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "var",
        "tmp",
        "etc",
        "usr/bin",
        "usr/lib/berth/services",
        "usr/lib/berth/images",
        "usr/lib/berth/keys",
    ] {
        io("creating", &dir.join(d), fs::create_dir_all(dir.join(d)))?;
    }
    for bin in ["init", "sysd", "osctl"] {
        let src = opts.bin_dir.join(bin);
        let data = io("reading", &src, fs::read(&src))?;
        write(&dir.join("usr/bin").join(bin), &data, 0o755)?;
    }
    write(
        &dir.join("usr/lib/berth/os-release"),
        os_release(&opts.version, &opts.build_id, opts.arch).as_bytes(),
        0o644,
    )?;
    let links = [
        ("usr/lib/os-release", "berth/os-release"),
        ("etc/os-release", "../usr/lib/os-release"),
        ("sbin", "usr/bin"),
    ];
    for (l, t) in links {
        io(
            "linking",
            &dir.join(l),
            std::os::unix::fs::symlink(t, dir.join(l)),
        )?;
    }
    crate::sysimage::install(dir, opts.arch, &opts.kernel_dir)?;
    install_keys_and_services(opts, dir)?;
    write(&dir.join("etc/hostname"), b"berth\n", 0o644)?;
    write(
        &dir.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    write(&dir.join("etc/group"), b"root:x:0:\ntty:x:5:\n", 0o644)?;
    for d in ["dev", "proc", "sys", "run", "var", "tmp"] {
        let p = dir.join(d);
        io(
            "chmod",
            &p,
            fs::set_permissions(
                &p,
                fs::Permissions::from_mode(if d == "tmp" { 0o1777 } else { 0o755 }),
            ),
        )?;
    }
    Ok(())
}

/// The trusted update keys and extra services of `opts`, checked before they go in: a key
/// that does not parse or a service the node would reject fails the build, not the node.
fn install_keys_and_services(opts: &BuildOptions, dir: &Path) -> Result<(), BuildError> {
    for k in &opts.trusted_keys {
        let bad = |reason: String| BuildError::BadKey {
            path: k.clone(),
            reason,
        };
        let text = io("reading", k, fs::read_to_string(k))?;
        berth_updater::PublicKey::from_pem(&text, &k.display().to_string())
            .map_err(|e| bad(e.to_string()))?;
        let name = k
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.ends_with(".pub"))
            .ok_or_else(|| bad("the file name must end in .pub".into()))?;
        write(
            &dir.join("usr/lib/berth/keys").join(name),
            text.as_bytes(),
            0o644,
        )?;
    }
    for f in &opts.extra_services {
        let text = io("reading", f, fs::read_to_string(f))?;
        let spec = berth_config::parse_service(&text).map_err(|e| BuildError::BadService {
            path: f.clone(),
            reason: e.to_string(),
        })?;
        let dest = dir
            .join("usr/lib/berth/services")
            .join(format!("{}.toml", spec.name));
        if dest.exists() {
            return Err(BuildError::BadService {
                path: f.clone(),
                reason: format!("a service named {:?} is already in the image", spec.name),
            });
        }
        write(&dest, text.as_bytes(), 0o644)?;
    }
    check_services(&dir.join("usr/lib/berth/services"))
}

/// The image's services as one set: every `requires` defined, no dependency cycle (sysd
/// would leave such services stopped; better to refuse the image).
fn check_services(dir: &Path) -> Result<(), BuildError> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return io("reading", dir, Err(e)),
    };
    files.sort();
    let mut specs = Vec::new();
    for f in &files {
        let text = io("reading", f, fs::read_to_string(f))?;
        specs.push(
            berth_config::parse_service(&text).map_err(|e| BuildError::BadService {
                path: f.clone(),
                reason: e.to_string(),
            })?,
        );
    }
    let refs: Vec<&berth_config::ContainerSpec> = specs.iter().collect();
    berth_config::start_order(&refs).map_err(|e| BuildError::BadService {
        path: dir.to_path_buf(),
        reason: format!("the image's services together: {e}"),
    })?;
    Ok(())
}

/// `mkfs.erofs` the tree, reproducibly (fixed UUID, timestamps, owners).
pub fn make_erofs(tree: &Path, out: &Path, build_id: &str) -> Result<u64, BuildError> {
    let _ = fs::remove_file(out);
    tools::run(
        Command::new("mkfs.erofs")
            .args(["-zlz4hc", "-Enoinline_data", "--all-root", "-T0", "-U"])
            .arg(layout::uuid_for(build_id, "root-fs"))
            .arg(out)
            .arg(tree),
    )?;
    Ok(io("stat", out, fs::metadata(out))?.len())
}

/// Append a dm-verity hash tree to `img`. Returns (root hash, salt, data blocks).
pub fn add_verity(img: &Path, build_id: &str) -> Result<(String, String, u64), BuildError> {
    let size = io("stat", img, fs::metadata(img))?.len();
    let blocks = size.div_ceil(4096);
    // Pad the data to whole blocks so the hash tree starts at a block boundary.
    let f = io("opening", img, fs::OpenOptions::new().write(true).open(img))?;
    io("padding", img, f.set_len(blocks * 4096))?;
    drop(f);
    let salt = sha256_hex(&format!("verity-salt:{build_id}"));
    let out = tools::run(
        Command::new("veritysetup")
            .arg("format")
            .args(["--data-block-size=4096", "--hash-block-size=4096"])
            .arg(format!("--data-blocks={blocks}"))
            .arg(format!("--hash-offset={}", blocks * 4096))
            .arg(format!("--salt={salt}"))
            .arg(format!("--uuid={}", layout::uuid_for(build_id, "verity")))
            .arg(img)
            .arg(img),
    )?;
    let hash = out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .ok_or(BuildError::NoRootHash)?;
    Ok((hash, salt, blocks))
}

/// Empty ext4 state filesystem (PID 1 creates its directories); also the template stage 1
/// recreates `/var` from. Reproducible: fixed UUID, hash seed and time.
pub fn make_state(out: &Path, size: u64, build_id: &str) -> Result<(), BuildError> {
    let _ = fs::remove_file(out);
    tools::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "state", "-b", "4096", "-U"])
            .arg(layout::uuid_for(build_id, "state-fs"))
            .arg("-E")
            .arg(format!(
                "lazy_itable_init=0,root_owner=0:0,hash_seed={}",
                layout::uuid_for(build_id, "state-hash-seed")
            ))
            .arg(out)
            .arg(format!("{}k", size / 1024))
            .env("E2FSPROGS_FAKE_TIME", "1"),
    )?;
    Ok(())
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data)?;
    gz.finish()
}

/// What went into the initramfs.
#[derive(Debug, Clone, Default)]
pub struct InitrdContents {
    /// Module names, in load order.
    pub modules: Vec<String>,
    /// Firmware files, relative to `/lib/firmware`.
    pub firmware: Vec<String>,
}

/// The initramfs: `/init` (stage 1), the resolved modules and their load order, the
/// firmware those modules name (when a firmware folder is given), the state template,
/// `/dev/console`.
pub fn make_initrd(
    opts: &BuildOptions,
    kver: &str,
    state_img: &Path,
    out: &Path,
) -> Result<InitrdContents, BuildError> {
    let moddir = opts.kernel_dir.join("lib/modules").join(kver);
    let dep_path = moddir.join("modules.dep");
    let builtin = fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let dep = ModulesDep::parse(&io("reading", &dep_path, fs::read_to_string(&dep_path))?)?
        .with_builtin(&builtin);
    let list_text = io(
        "reading",
        &opts.modules_list,
        fs::read_to_string(&opts.modules_list),
    )?;
    let order = dep.resolve(&modules::parse_list(&list_text, opts.arch.as_str()))?;

    let mut w = cpio::Writer::new(Vec::new());
    let e = |r: std::io::Result<()>| io("writing initramfs", out, r);
    for d in [
        "dev",
        "proc",
        "sys",
        "sysroot",
        "run",
        "etc",
        "lib",
        "lib/berth",
        "lib/modules",
    ] {
        e(w.dir(d, 0o755))?;
    }
    e(w.char_dev("dev/console", 0o600, 5, 1))?;
    e(w.dir(&format!("lib/modules/{kver}"), 0o755))?;
    let init_path = opts.bin_dir.join("init");
    let init = io("reading", &init_path, fs::read(&init_path))?;
    e(w.file("init", 0o755, &init))?;
    e(w.file(
        "etc/initrd-release",
        0o644,
        format!(
            "NAME=\"Berth initrd\"\nID=berth\nVERSION_ID={}\n",
            opts.version
        )
        .as_bytes(),
    ))?;
    let mut load = String::new();
    let mut names = Vec::new();
    let mut wanted_fw = std::collections::BTreeSet::new();
    for rel in &order {
        let base = rel.rsplit('/').next().unwrap_or(rel);
        let src = moddir.join(rel);
        let data = io("reading", &src, fs::read(&src))?;
        wanted_fw.extend(modules::firmware_names(&data));
        e(w.file(&format!("lib/modules/{kver}/{base}"), 0o644, &data))?;
        load.push_str(base);
        load.push('\n');
        names.push(modules::name_of(rel));
    }
    // Firmware: only what the chosen drivers name and the packages ship (most drivers need
    // none; a missing file is the same as on any distribution without that package).
    let mut firmware = Vec::new();
    if let Some(fw_root) = &opts.firmware_dir {
        let fw_dir = fw_root.join("lib/firmware");
        let mut dirs = std::collections::BTreeSet::new();
        for name in &wanted_fw {
            let src = fw_dir.join(name);
            if !src.is_file() {
                continue;
            }
            let data = io("reading", &src, fs::read(&src))?;
            let mut parent = String::from("lib/firmware");
            if dirs.insert(parent.clone()) {
                e(w.dir(&parent, 0o755))?;
            }
            let comps: Vec<&str> = name.split('/').collect();
            for c in &comps[..comps.len().saturating_sub(1)] {
                parent = format!("{parent}/{c}");
                if dirs.insert(parent.clone()) {
                    e(w.dir(&parent, 0o755))?;
                }
            }
            e(w.file(&format!("lib/firmware/{name}"), 0o644, &data))?;
            firmware.push(name.clone());
        }
    }
    e(w.file(
        &format!("lib/modules/{kver}/berth.load"),
        0o644,
        load.as_bytes(),
    ))?;
    let state = io("reading", state_img, fs::read(state_img))?;
    let state_gz = io("compressing", state_img, gzip(&state))?;
    e(w.file("lib/berth/state.img.gz", 0o644, &state_gz))?;
    let cpio = io("writing initramfs", out, w.finish())?;
    let gz = io("compressing", out, gzip(&cpio))?;
    write(out, &gz, 0o644)?;
    Ok(InitrdContents {
        modules: names,
        firmware,
    })
}

/// FAT32 ESP with systemd-boot, loader.conf, slot A's kernel, initrd and boot entry.
pub fn make_esp(
    opts: &BuildOptions,
    out: &Path,
    kernel: &Path,
    initrd: &Path,
    entry: &Entry,
) -> Result<(), BuildError> {
    let _ = fs::remove_file(out);
    let vol_id = &sha256_hex(&format!("esp:{}", opts.build_id))[..8];
    tools::run(
        Command::new("mkfs.vfat")
            .env("SOURCE_DATE_EPOCH", tools::FAT_EPOCH)
            .args([
                "--invariant",
                "-F",
                "32",
                "-n",
                "BERTH-ESP",
                "-i",
                vol_id,
                "-C",
            ])
            .arg(out)
            .arg((opts.sizes.esp / 1024).to_string()),
    )?;
    let dirs = [
        "::/EFI",
        "::/EFI/BOOT",
        "::/loader",
        "::/loader/entries",
        "::/berth",
        "::/berth/a",
        "::/berth/b",
    ];
    tools::run(tools::mtools("mmd", out).args(dirs))?;
    let tmp = opts.out_dir.join("esp.d");
    let _ = fs::remove_dir_all(&tmp);
    write(
        &tmp.join("loader.conf"),
        bls::loader_conf().as_bytes(),
        0o644,
    )?;
    write(
        &tmp.join(entry.file_name()),
        entry.render().as_bytes(),
        0o644,
    )?;
    let copies: [(PathBuf, String); 5] = [
        (
            opts.systemd_boot.clone(),
            format!("::/EFI/BOOT/{}", opts.arch.efi_boot_name()),
        ),
        (tmp.join("loader.conf"), "::/loader/loader.conf".into()),
        (
            tmp.join(entry.file_name()),
            format!("::/loader/entries/{}", entry.file_name()),
        ),
        (
            kernel.to_path_buf(),
            format!("::{}/vmlinuz", entry.slot_dir()),
        ),
        (
            initrd.to_path_buf(),
            format!("::{}/initrd", entry.slot_dir()),
        ),
    ];
    for (src, dst) in copies {
        tools::run(tools::mtools("mcopy", out).arg("-o").arg(&src).arg(&dst))?;
    }
    let _ = fs::remove_dir_all(&tmp);
    Ok(())
}

/// Copy `src` into `disk` at `offset`, skipping all-zero 64 KiB chunks (keeps it sparse).
pub fn copy_into(disk: &mut fs::File, offset: u64, src: &Path) -> std::io::Result<()> {
    let mut f = fs::File::open(src)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = offset;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let r = f.read(&mut buf[n..])?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|b| *b != 0) {
            disk.seek(SeekFrom::Start(pos))?;
            disk.write_all(&buf[..n])?;
        }
        pos += n as u64;
    }
}

/// Slot A's boot files side by side for a direct kernel boot (QEMU `-kernel`, `-initrd`,
/// `-append`): the same kernel, initrd and command line as the disk's boot entry, so a VM
/// booted this way runs exactly what the firmware and boot loader would have started.
fn write_direct_boot(
    dir: &Path,
    kernel: &Path,
    initrd: &Path,
    options: &str,
) -> Result<(), BuildError> {
    io("creating", dir, fs::create_dir_all(dir))?;
    for (src, name) in [(kernel, "vmlinuz"), (initrd, "initrd.img")] {
        let dst = dir.join(name);
        io("copying to", &dst, fs::copy(src, &dst).map(drop))?;
    }
    write(
        &dir.join("cmdline"),
        format!("{}\n", options.trim()).as_bytes(),
        0o644,
    )
}

/// Run the whole build.
pub fn build(opts: &BuildOptions) -> Result<BuildOutput, BuildError> {
    let out = &opts.out_dir;
    io("creating", out, fs::create_dir_all(out))?;
    let kver_path = opts.kernel_dir.join("version");
    let kver = io("reading", &kver_path, fs::read_to_string(&kver_path))?
        .trim()
        .to_string();
    let kernel = opts.kernel_dir.join("vmlinuz");

    let tree = out.join("rootfs");
    root_tree(opts, &tree)?;
    let root_img = out.join("root.img");
    make_erofs(&tree, &root_img, &opts.build_id)?;
    let (root_hash, salt, data_blocks) = add_verity(&root_img, &opts.build_id)?;
    let root_bytes = io("stat", &root_img, fs::metadata(&root_img))?.len();
    if root_bytes > opts.sizes.root {
        return Err(BuildError::RootTooBig {
            size: root_bytes,
            part: opts.sizes.root,
        });
    }

    let state_img = out.join("state.img");
    make_state(&state_img, opts.sizes.state, &opts.build_id)?;
    let initrd = out.join("initrd.img");
    let mods = make_initrd(opts, &kver, &state_img, &initrd)?;

    let entry = Entry {
        generation: 1,
        slot: 'a',
        version: opts.version.clone(),
        options: bls::options(&opts.cmdline, 'a', &root_hash, &salt, data_blocks),
        tries_left: None,
    };
    let esp = out.join("esp.img");
    make_esp(opts, &esp, &kernel, &initrd, &entry)?;
    let direct_boot = out.join("direct");
    write_direct_boot(&direct_boot, &kernel, &initrd, &entry.options)?;

    let (parts, total) = layout::layout(opts.arch, opts.sizes, &opts.build_id);
    let disk = out.join("berth.img");
    let tmp_disk = out.join("berth.img.tmp");
    {
        let _ = fs::remove_file(&tmp_disk);
        let f = io("creating", &tmp_disk, fs::File::create(&tmp_disk))?;
        io("sizing", &tmp_disk, f.set_len(total))?;
    }
    let script = layout::sfdisk_script(&parts, &opts.build_id);
    let mut child = io(
        "running sfdisk on",
        &tmp_disk,
        Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&tmp_disk)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn(),
    )?;
    if let Some(mut stdin) = child.stdin.take() {
        io(
            "running sfdisk on",
            &tmp_disk,
            stdin.write_all(script.as_bytes()),
        )?;
    }
    let o = io("running sfdisk on", &tmp_disk, child.wait_with_output())?;
    if !o.status.success() {
        return Err(ToolError::Failed {
            tool: "sfdisk".into(),
            status: o.status.to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        }
        .into());
    }
    let mut f = io(
        "opening",
        &tmp_disk,
        fs::OpenOptions::new().write(true).open(&tmp_disk),
    )?;
    for (part, img) in parts
        .iter()
        .zip([Some(&esp), Some(&root_img), None, Some(&state_img)])
    {
        if let Some(img) = img {
            io(
                "copying into the disk",
                img,
                copy_into(&mut f, part.offset, img),
            )?;
        }
    }
    io("syncing", &tmp_disk, f.sync_all())?;
    drop(f);
    io("renaming", &tmp_disk, fs::rename(&tmp_disk, &disk))?;

    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let output = BuildOutput {
        arch: opts.arch.as_str().into(),
        version: opts.version.clone(),
        build_id: opts.build_id.clone(),
        kernel: kver,
        disk_bytes: total,
        root_bytes,
        initrd_bytes: size(&initrd),
        kernel_bytes: size(&kernel),
        disk,
        root_image: root_img,
        root_hash,
        verity_salt: salt,
        data_blocks,
        initrd,
        kernel_image: kernel,
        modules: mods.modules,
        firmware: mods.firmware,
        boot_options: entry.options.trim().to_string(),
        direct_boot,
    };
    let json = serde_json::to_string_pretty(&output).unwrap_or_default();
    write(&out.join("image.json"), json.as_bytes(), 0o644)?;
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, keys: Vec<PathBuf>, services: Vec<PathBuf>) -> BuildOptions {
        BuildOptions {
            arch: Arch::X86_64,
            kernel_dir: dir.join("kernel"),
            bin_dir: dir.join("bin"),
            out_dir: dir.join("out"),
            build_id: "t".into(),
            version: "1.0.0".into(),
            modules_list: dir.join("modules.txt"),
            cmdline: String::new(),
            systemd_boot: dir.join("boot.efi"),
            sizes: Sizes::default(),
            firmware_dir: None,
            trusted_keys: keys,
            extra_services: services,
        }
    }

    #[test]
    fn keys_and_services_are_checked_before_they_ship() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let (_, good_pub) = crate::signing::keygen(&d.path().join("vendor")).unwrap();
        let svc = d.path().join("agent.toml");
        fs::write(&svc, "name = \"agent\"\nimage = \"admin\"\n").unwrap();
        install_keys_and_services(&opts(d.path(), vec![good_pub], vec![svc.clone()]), &root)
            .unwrap();
        assert!(root.join("usr/lib/berth/keys/vendor.pub").is_file());
        assert!(root.join("usr/lib/berth/services/agent.toml").is_file());

        // Not a key; a key without .pub; a service the node would reject; a duplicate.
        let junk = d.path().join("junk.pub");
        fs::write(&junk, "not a key").unwrap();
        let e = install_keys_and_services(&opts(d.path(), vec![junk], vec![]), &root);
        assert!(matches!(e, Err(BuildError::BadKey { .. })), "{e:?}");
        let named = d.path().join("vendor.pem");
        fs::copy(d.path().join("vendor.pub"), &named).unwrap();
        let e = install_keys_and_services(&opts(d.path(), vec![named], vec![]), &root);
        assert!(
            matches!(&e, Err(BuildError::BadKey { reason, .. }) if reason.contains(".pub")),
            "{e:?}"
        );
        let bad = d.path().join("bad.toml");
        fs::write(&bad, "name = \"x\"\nimage = \"admin\"\nrestart = 3\n").unwrap();
        let e = install_keys_and_services(&opts(d.path(), vec![], vec![bad]), &root);
        assert!(matches!(e, Err(BuildError::BadService { .. })), "{e:?}");
        let e = install_keys_and_services(&opts(d.path(), vec![], vec![svc]), &root);
        assert!(
            matches!(&e, Err(BuildError::BadService { reason, .. }) if reason.contains("already")),
            "{e:?}"
        );
        // Services that need each other in a circle, or a service that is not there.
        let (a, b) = (d.path().join("a.toml"), d.path().join("b.toml"));
        fs::write(
            &a,
            "name = \"svc-a\"\nimage = \"admin\"\nrequires = [\"svc-b\"]\n",
        )
        .unwrap();
        fs::write(
            &b,
            "name = \"svc-b\"\nimage = \"admin\"\nafter = [\"svc-a\"]\n",
        )
        .unwrap();
        let e = install_keys_and_services(&opts(d.path(), vec![], vec![a]), &d.path().join("r2"));
        assert!(
            matches!(&e, Err(BuildError::BadService { reason, .. }) if reason.contains("svc-b")),
            "{e:?}"
        );
        let e = install_keys_and_services(
            &opts(d.path(), vec![], vec![d.path().join("a.toml"), b]),
            &d.path().join("r3"),
        );
        assert!(
            matches!(&e, Err(BuildError::BadService { reason, .. })
                if reason.contains("dependency cycle: svc-a -> svc-b -> svc-a")),
            "{e:?}"
        );
    }
}
