//! `berth-image keygen | publish | sign | verify | inspect`: the OS-update subcommands.

use crate::{inspect, publish, signing};
use berth_registry::cli::RegistryArgs;
use berth_registry::{Progress, ProgressEvent, Reference};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

/// The OS-update subcommands of `berth-image`.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum OsCommand {
    /// Make a signing key pair: PREFIX.key (PKCS#8 PEM, P-256) and PREFIX.pub (PEM, like cosign.pub).
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Push a built image (image.json, root.img, kernel, initrd) as the OS update artifact
    /// REF: one manifest per arch in REF's index; other arches already there are kept.
    Publish {
        /// Repository and tag, e.g. 127.0.0.1:5000/berth/os:stable.
        reference: String,
        /// Build output folder (e.g. build/x86_64).
        #[arg(long)]
        build: PathBuf,
        /// File with the base kernel command line (default: the build's boot entry).
        #[arg(long)]
        cmdline: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Sign what REF points at (the index) in cosign's key-based format.
    Sign {
        /// Private key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// Repository the signature names (registry host[:port]/path), when nodes reach
        /// the registry under another name than REF's (cosign's
        /// --sign-container-identity); nodes accept a signature only for the repository
        /// of their update.source. Default: REF's repository.
        #[arg(long)]
        identity: Option<String>,
        /// Repository and tag.
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Verify that what REF points at is signed by the public key.
    Verify {
        /// Public key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// Repository and tag.
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Show the versions, arches, digests, sizes and signature status of REF.
    Inspect {
        /// Repository and tag.
        reference: String,
        /// Public key to verify the signatures with.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Output format: text or json.
        #[arg(short = 'o', long, default_value = "text")]
        output: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

fn reference(s: &str) -> anyhow::Result<Reference> {
    Ok(Reference::parse(s.strip_prefix("docker://").unwrap_or(s))?)
}

fn upload_progress(total: u64) -> Option<Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif_like::Bar::new(total);
    Some(Arc::new(move |e| {
        if let ProgressEvent::Bytes { n, .. } = e {
            pb.inc(n)
        }
    }))
}

/// A minimal progress line on stderr (no extra dependency).
mod indicatif_like {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};

    pub struct Bar {
        total: u64,
        done: AtomicU64,
    }

    impl Bar {
        pub fn new(total: u64) -> Self {
            Self {
                total,
                done: AtomicU64::new(0),
            }
        }
        pub fn inc(&self, n: u64) {
            let d = self.done.fetch_add(n, Ordering::Relaxed) + n;
            let pct = (d * 100).checked_div(self.total).unwrap_or(100);
            let mut e = std::io::stderr();
            let _ = write!(e, "\r  uploaded {:.1} MiB ({pct}%)", d as f64 / 1048576.0);
            if d >= self.total {
                let _ = writeln!(e);
            }
        }
    }
}

/// Run one subcommand.
pub fn run(cmd: OsCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cmd))
}

async fn run_async(cmd: OsCommand) -> anyhow::Result<()> {
    match cmd {
        OsCommand::Keygen { out } => {
            let (k, p) = signing::keygen(&out)?;
            println!(
                "wrote {} (private, keep it secret) and {} (public: ship it in /usr/lib/berth/keys/ or update.trusted_keys)",
                k.display(),
                p.display()
            );
        }
        OsCommand::Publish {
            reference: r,
            build,
            cmdline,
            registry,
        } => {
            let r = reference(&r)?;
            if r.tag.is_none() || r.digest.is_some() {
                anyhow::bail!(
                    "publish needs a tag, e.g. {}/{}:stable",
                    r.registry,
                    r.repository
                );
            }
            let cmdline = match cmdline {
                Some(p) => Some(std::fs::read_to_string(&p).map_err(|e| {
                    anyhow::anyhow!("cannot read the command line {}: {e}", p.display())
                })?),
                None => None,
            };
            let art = publish::read_build(&build, cmdline)?;
            let client = berth_registry::cli::client(&registry)?;
            let c = &art.config;
            let total = c.root_size + c.kernel_size + c.initrd_size;
            let p = publish::publish(&client, &r, &art, upload_progress(total)).await?;
            println!(
                "published Berth {} for {} as {}\n  index    {}\n  manifest {}\n  arches   {}\n  payload  {:.1} MiB (root {:.1}, kernel {:.1}, initrd {:.1})\nsign it: berth-image sign --key KEY {}",
                c.version,
                c.arch,
                p.reference,
                p.index_digest,
                p.manifest_digest,
                p.platforms.join(", "),
                total as f64 / 1048576.0,
                c.root_size as f64 / 1048576.0,
                c.kernel_size as f64 / 1048576.0,
                c.initrd_size as f64 / 1048576.0,
                p.reference
            );
        }
        OsCommand::Sign {
            key,
            identity,
            reference: r,
            registry,
        } => {
            let r = reference(&r)?;
            let client = berth_registry::cli::client(&registry)?;
            let (d, sig) = signing::sign(&client, &r, &key, identity.as_deref()).await?;
            println!("signed {}@{d}\n  signature {sig}", r);
        }
        OsCommand::Verify {
            key,
            reference: r,
            registry,
        } => {
            let r = reference(&r)?;
            let client = berth_registry::cli::client(&registry)?;
            let (d, id) = signing::verify(&client, &r, &key).await?;
            println!("verified {}@{d}: signed by key {id}", r);
        }
        OsCommand::Inspect {
            reference: r,
            key,
            output,
            registry,
        } => {
            let r = reference(&r)?;
            let client = berth_registry::cli::client(&registry)?;
            let key = match key {
                Some(p) => {
                    let t = std::fs::read_to_string(&p)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
                    Some(berth_updater::PublicKey::from_pem(
                        &t,
                        &p.display().to_string(),
                    )?)
                }
                None => None,
            };
            let i = inspect::inspect(&client, &r, key.as_ref()).await?;
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&i)?),
                "text" => print!("{}", inspect::render(&i)),
                o => anyhow::bail!("unknown output format {o:?}: use text or json"),
            }
        }
    }
    Ok(())
}
