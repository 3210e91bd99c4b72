//! `berth-image`: build (and later sign and publish) Berth OS images.

use berth_image::layout::{Arch, Sizes};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Build, sign and publish Berth OS images.
#[derive(Parser)]
#[command(name = "berth-image", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the bootable GPT disk image (ESP + root A + root B + state) from static
    /// binaries and a Debian kernel. Needs mkfs.erofs, veritysetup, mkfs.vfat, mtools,
    /// mkfs.ext4 and sfdisk (`make deps`); no root, loop devices or mounts.
    Build {
        /// Target architecture (x86_64 or arm64).
        #[arg(long, default_value = "x86_64")]
        arch: String,
        /// Kernel folder made by kernel-config/fetch-kernel.sh.
        #[arg(long)]
        kernel: PathBuf,
        /// Folder with the static init, sysd and osctl binaries.
        #[arg(long)]
        bin: PathBuf,
        /// Output folder (berth.img, root.img, initrd.img, image.json, ...).
        #[arg(long)]
        out: PathBuf,
        /// Build id: seeds UUIDs and the verity salt (same id + inputs = same root image).
        #[arg(long, default_value = "dev")]
        build_id: String,
        /// OS version recorded in os-release and the boot entry.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        os_version: String,
        /// Kernel module list.
        #[arg(long, default_value = "kernel-config/modules-cloud.txt")]
        modules: PathBuf,
        /// File with the base kernel command line.
        #[arg(long)]
        cmdline: Option<PathBuf>,
        /// systemd-boot EFI binary (default: Debian's, for the arch).
        #[arg(long)]
        systemd_boot: Option<PathBuf>,
        /// Unpacked firmware packages (`kernel-config/fetch-firmware.sh`): the firmware the
        /// selected modules name is copied into the initramfs.
        #[arg(long)]
        firmware: Option<PathBuf>,
        /// Public key (PEM, e.g. from `berth-image keygen`) trusted to sign OS updates,
        /// shipped in /usr/lib/berth/keys/ (file name must end in .pub). Repeatable.
        #[arg(long = "trusted-key", value_name = "FILE.pub")]
        trusted_keys: Vec<PathBuf>,
        /// Extra system service definition (TOML, as in image/services/) to ship in
        /// /usr/lib/berth/services/. Repeatable.
        #[arg(long = "service", value_name = "FILE.toml")]
        extra_services: Vec<PathBuf>,
    },
    /// Show the kernel command line of a built disk image's boot entries, or add
    /// arguments to it before the image is written to a disk, e.g.
    /// `berth-image cmdline build/x86_64/berth.img --append berth.config=http://10.0.0.1/node.toml`
    /// (the node fetches that config at first boot when no other datasource has one).
    /// An argument whose key is already there replaces it. OS updates write entries with
    /// their own command line.
    Cmdline {
        /// The disk image (berth.img) to read or edit in place.
        disk: PathBuf,
        /// Kernel argument to add (repeatable).
        #[arg(long, value_name = "ARG")]
        append: Vec<String>,
    },
    // OS update subcommands (keygen, publish, sign, verify, inspect): image/src/oscli.rs.
    #[command(flatten)]
    Os(berth_image::oscli::OsCommand),
    // Registry subcommands (pull, unpack, push, copy): owned by the berth-registry crate.
    #[command(flatten)]
    Registry(berth_registry::cli::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Registry(cmd) => Ok(berth_registry::cli::run(cmd)?),
        Cmd::Os(cmd) => berth_image::oscli::run(cmd),
        Cmd::Cmdline { disk, append } => {
            for (entry, options) in berth_image::cmdline::edit(&disk, &append)? {
                println!("{entry}: {options}");
            }
            Ok(())
        }
        Cmd::Build {
            arch,
            kernel,
            bin,
            out,
            build_id,
            os_version,
            modules,
            cmdline,
            systemd_boot,
            firmware,
            trusted_keys,
            extra_services,
        } => {
            let arch = Arch::parse(&arch)
                .ok_or_else(|| anyhow::anyhow!("unknown arch {arch:?}: use x86_64 or arm64"))?;
            let cmdline_file = cmdline.unwrap_or_else(|| {
                PathBuf::from(format!("kernel-config/cmdline-{}.txt", arch.as_str()))
            });
            let cmdline = std::fs::read_to_string(&cmdline_file).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the kernel command line {}: {e}",
                    cmdline_file.display()
                )
            })?;
            let efi = match arch {
                Arch::X86_64 => "systemd-bootx64.efi",
                Arch::Arm64 => "systemd-bootaa64.efi",
            };
            let opts = berth_image::BuildOptions {
                arch,
                kernel_dir: kernel,
                bin_dir: bin,
                out_dir: out,
                build_id,
                version: os_version,
                modules_list: modules,
                cmdline: cmdline.lines().next().unwrap_or("").to_string(),
                systemd_boot: systemd_boot
                    .unwrap_or_else(|| PathBuf::from("/usr/lib/systemd/boot/efi").join(efi)),
                sizes: Sizes::default(),
                firmware_dir: firmware,
                trusted_keys,
                extra_services,
            };
            let o = berth_image::build(&opts)?;
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            println!(
                "built {} ({} {}): disk {:.0} MiB, root {:.1} MiB, initrd {:.1} MiB, kernel {:.1} MiB, {} modules, {} firmware files\nverity root hash {}",
                o.disk.display(),
                o.arch,
                o.version,
                mib(o.disk_bytes),
                mib(o.root_bytes),
                mib(o.initrd_bytes),
                mib(o.kernel_bytes),
                o.modules.len(),
                o.firmware.len(),
                o.root_hash
            );
            Ok(())
        }
    }
}
