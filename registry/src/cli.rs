//! `berth-image pull | unpack | push | copy`: the host-side face of this crate.

use crate::client::{Client, Credentials, RegistryConfig};
use crate::manifest::Platform;
use crate::progress::{Progress, ProgressEvent};
use crate::reference::{Reference, ReferenceError};
use crate::store::{PullOptions, Store, StoreError};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

/// Registry settings shared by the subcommands (they apply to every registry the
/// command talks to).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Talk plain HTTP (an "insecure" registry), e.g. a local test registry.
    #[arg(long)]
    pub insecure: bool,
    /// Extra CA certificate(s), PEM, to trust for registry TLS.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Credentials `USER:PASSWORD` (default: $BERTH_REGISTRY_AUTH; anonymous if unset).
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "BERTH_REGISTRY_AUTH",
        hide_env_values = true
    )]
    pub creds: Option<String>,
    /// Pull-through mirror host[:port], tried before the registry (repeatable).
    #[arg(long, value_name = "HOST")]
    pub mirror: Vec<String>,
}

/// The registry subcommands of `berth-image`.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Command {
    /// Pull an image into a store, unpacking its layers in the same pass.
    Pull {
        /// Image reference, e.g. 127.0.0.1:5000/apps/web:1.
        reference: String,
        /// Store root directory.
        #[arg(long)]
        store: PathBuf,
        /// Platform os/arch[/variant] (default: this machine's).
        #[arg(long)]
        platform: Option<String>,
        /// Store the blobs only.
        #[arg(long)]
        no_unpack: bool,
        /// Registry settings.
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pull (if needed) and flatten an image into a directory.
    Unpack {
        /// Image reference (registry) or a name already in the store.
        reference: String,
        /// Store root directory.
        #[arg(long)]
        store: PathBuf,
        /// Output directory (created; must be empty or missing).
        #[arg(long)]
        to: PathBuf,
        /// Platform os/arch[/variant].
        #[arg(long)]
        platform: Option<String>,
        /// Registry settings.
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Push an image from a store (or an `oci:DIR:TAG` layout) to a registry.
    Push {
        /// Name in the store, or `oci:DIR:TAG`.
        source: String,
        /// Destination reference.
        destination: String,
        /// Store root directory.
        #[arg(long)]
        store: PathBuf,
        /// Registry settings.
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Copy an image between registries and OCI layouts (`oci:DIR:TAG` or a reference,
    /// optionally prefixed with `docker://`).
    Copy {
        /// Source.
        source: String,
        /// Destination.
        destination: String,
        /// Store to go through (default: a temporary one).
        #[arg(long)]
        store: Option<PathBuf>,
        /// Platform os/arch[/variant] to pick from a registry index.
        #[arg(long)]
        platform: Option<String>,
        /// Registry settings.
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

/// Errors of the CLI layer.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bad reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Local file problem.
    #[error("cannot {op} {path}")]
    Io {
        /// What.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Flattening failed.
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
}

enum Loc {
    Registry(Reference),
    Layout(PathBuf, String),
}

fn parse_loc(s: &str) -> Result<Loc, CliError> {
    if let Some(rest) = s.strip_prefix("oci:") {
        let (dir, tag) = rest.rsplit_once(':').unwrap_or((rest, "latest"));
        if dir.is_empty() {
            return Err(CliError::Usage(format!("{s:?}: expected oci:DIR:TAG")));
        }
        return Ok(Loc::Layout(PathBuf::from(dir), tag.to_string()));
    }
    let s = s.strip_prefix("docker://").unwrap_or(s);
    Ok(Loc::Registry(Reference::parse(s)?))
}

/// A client for these registry settings (used by `berth-image`'s OS-update commands too).
pub fn client(args: &RegistryArgs) -> Result<Client, CliError> {
    let ca_pem = match &args.ca {
        Some(p) => Some(std::fs::read(p).map_err(|source| CliError::Io {
            op: "read",
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    let credentials = match &args.creds {
        Some(c) => {
            let (u, p) = c
                .split_once(':')
                .ok_or_else(|| CliError::Usage("--creds must be USER:PASSWORD".into()))?;
            Some(Credentials::Basic {
                username: u.into(),
                password: p.into(),
            })
        }
        None => None,
    };
    Ok(Client::new(
        Default::default(),
        RegistryConfig {
            insecure: args.insecure,
            ca_pem,
            credentials,
            mirrors: args.mirror.clone(),
        },
    ))
}

fn platform(p: &Option<String>) -> Result<Platform, CliError> {
    match p {
        Some(s) => Platform::parse(s).ok_or_else(|| {
            CliError::Usage(format!("bad platform {s:?}: use os/arch, e.g. linux/arm64"))
        }),
        None => Ok(Platform::host()),
    }
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
fn progress_bar() -> (Progress, Option<indicatif::ProgressBar>) {
    if !std::io::stderr().is_terminal() {
        return (crate::progress::none(), None);
    }
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let p = pb.clone();
    let f: Progress = Arc::new(move |e| match e {
        ProgressEvent::Resolved {
            total_bytes,
            layers,
            ..
        } => {
            p.set_length(total_bytes);
            p.set_message(format!("{layers} layers"));
        }
        ProgressEvent::Bytes { n, .. } => p.inc(n),
        ProgressEvent::BlobDone { cached: true, .. }
        | ProgressEvent::BlobStart { .. }
        | ProgressEvent::BlobDone { .. } => {}
    });
    (f, Some(pb))
}

/// Run a subcommand (builds its own async runtime).
pub fn run(cmd: Command) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| CliError::Io {
            op: "start the async runtime for",
            path: PathBuf::from("berth-image"),
            source,
        })?;
    rt.block_on(run_async(cmd))
}

fn open(store: &std::path::Path) -> Result<Store, CliError> {
    Ok(Store::open(store)?)
}

async fn run_async(cmd: Command) -> Result<(), CliError> {
    match cmd {
        Command::Pull {
            reference,
            store,
            platform: p,
            no_unpack,
            registry,
        } => {
            let r = Reference::parse(&reference)?;
            let (progress, pb) = progress_bar();
            let opts = PullOptions {
                platform: platform(&p)?,
                unpack: !no_unpack,
                progress,
                ..Default::default()
            };
            let img = open(&store)?.pull(&client(&registry)?, &r, &opts).await;
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            let img = img?;
            println!(
                "{} {} ({} layers)",
                img.name,
                img.digest,
                img.manifest.layers.len()
            );
            Ok(())
        }
        Command::Unpack {
            reference,
            store,
            to,
            platform: p,
            registry,
        } => {
            let s = open(&store)?;
            let plat = platform(&p)?;
            let img = match s.image(&reference, &plat) {
                Ok(img) if img.layers.len() == img.manifest.layers.len() => img,
                _ => {
                    let r = Reference::parse(&reference)?;
                    let (progress, pb) = progress_bar();
                    let opts = PullOptions {
                        platform: plat,
                        progress,
                        ..Default::default()
                    };
                    let img = s.pull(&client(&registry)?, &r, &opts).await;
                    if let Some(pb) = pb {
                        pb.finish_and_clear();
                    }
                    img?
                }
            };
            if to.exists()
                && std::fs::read_dir(&to)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(true)
            {
                return Err(CliError::Usage(format!(
                    "{} is not empty: unpack needs an empty or missing directory",
                    to.display()
                )));
            }
            crate::rootfs::flatten(&img.layers, &to)?;
            println!("{} {} -> {}", img.name, img.digest, to.display());
            Ok(())
        }
        Command::Push {
            source,
            destination,
            store,
            registry,
        } => {
            let s = open(&store)?;
            copy(&s, &source, &destination, &registry, None).await
        }
        Command::Copy {
            source,
            destination,
            store,
            platform: p,
            registry,
        } => {
            let tmp;
            let s = match store {
                Some(d) => open(&d)?,
                None => {
                    tmp = tempfile::tempdir().map_err(|source| CliError::Io {
                        op: "create a temporary store in",
                        path: std::env::temp_dir(),
                        source,
                    })?;
                    open(tmp.path())?
                }
            };
            copy(&s, &source, &destination, &registry, Some(platform(&p)?)).await
        }
    }
}

async fn copy(
    s: &Store,
    src: &str,
    dst: &str,
    args: &RegistryArgs,
    plat: Option<Platform>,
) -> Result<(), CliError> {
    let c = client(args)?;
    let (progress, pb) = progress_bar();
    let src_loc = parse_loc(src)?;
    let name = match &src_loc {
        Loc::Layout(dir, tag) => {
            let name = format!("oci:{}:{tag}", dir.display());
            s.import_layout(dir, tag, &name)?;
            name
        }
        Loc::Registry(r) if plat.is_some() => {
            let opts = PullOptions {
                platform: plat.clone().unwrap_or_else(Platform::host),
                unpack: false,
                progress: progress.clone(),
                ..Default::default()
            };
            let img = s.pull(&c, r, &opts).await?;
            // Copy exactly the platform pulled, not the whole index.
            let name = format!("{}#{}", img.name, opts.platform);
            s.set_ref(&name, &img.digest)?;
            name
        }
        Loc::Registry(r) => {
            // `push NAME`: a name in the store.
            if s.resolve_ref(src).is_ok() {
                src.to_string()
            } else {
                r.to_string()
            }
        }
    };
    let digest = match parse_loc(dst)? {
        Loc::Layout(dir, tag) => s.export_layout(&name, &dir, &tag)?,
        Loc::Registry(d) => {
            let mount = match &src_loc {
                Loc::Registry(r) if r.registry == d.registry && r.repository != d.repository => {
                    Some(r.repository.clone())
                }
                _ => None,
            };
            s.push(&c, &name, &d, mount.as_deref(), &progress).await?
        }
    };
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    println!("{dst} {digest}");
    Ok(())
}
