//! The Berth machine config: one schema for init, sysd, osctl and berth-image.
//!
//! - [`parse`] turns `berth.toml` text into a validated [`Config`]; every error, a TOML
//!   syntax error, a type error or a semantic one, names the key path and the line
//!   (`line 12: containers[1].memory: invalid size "12X" ...`).
//! - [`parse_service`] does the same for a system service definition
//!   (`/usr/lib/berth/services/*.toml`, a [`ContainerSpec`] at the top level) and
//!   [`parse_workload`] for an `osctl run` workload; [`start_order`] checks a whole set of
//!   definitions for duplicates, missing requirements and dependency cycles.
//! - [`datasource`] finds the first-boot config (fw_cfg, CIDATA, ESP, kernel command line).
//! - [`store`] keeps the applied config and the last known good one on `/var`.
//! - [`render`] produces the hostname, `/etc/resolv.conf`, `/etc/hosts` and sysctl paths.
//!
//! `docs/CONFIG.md` documents every key; a test parses its example.

pub mod apply;
pub mod datasource;
mod error;
pub mod render;
mod schema;
pub mod store;
mod types;
mod validate;

pub use error::{ConfigError, Errors, KeyPath, Seg};
pub use schema::*;
pub use types::{
    valid_registry_host, Cidr, Cpus, Duration, FileMode, Forward, ForwardProto, ImageRef,
    PortMapping, Proto, Size,
};
pub use validate::{find_cycle, start_order, valid_capability, valid_name, DependencyError};

use error::Locator;
use serde::de::DeserializeOwned;

/// Turns a serde_path_to_error path into ours.
fn convert_path(p: &serde_path_to_error::Path) -> KeyPath {
    use serde_path_to_error::Segment;
    KeyPath(
        p.iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(Seg::Index(*index)),
                Segment::Map { key } => Some(Seg::Key(key.clone())),
                Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
                Segment::Unknown => None,
            })
            .collect(),
    )
}

/// Parses TOML into `T`, mapping syntax and type errors to a key path and line.
fn deserialize<T: DeserializeOwned>(text: &str, loc: &Locator<'_>) -> Result<T, Errors> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| {
        Errors(vec![ConfigError {
            path: KeyPath::root(),
            line: e.span().map(|s| loc.line_of_offset(s.start)),
            message: format!("invalid TOML: {}", e.message().trim_end()),
        }])
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = convert_path(e.path());
        let inner = e.inner();
        let line = inner
            .span()
            .map(|s| loc.line_of_offset(s.start))
            .or_else(|| loc.line(&path));
        Errors(vec![ConfigError {
            path,
            line,
            message: inner.message().trim_end().to_string(),
        }])
    })
}

/// Parses and validates a machine config.
pub fn parse(text: &str) -> Result<Config, Errors> {
    let loc = Locator::new(text);
    let config: Config = deserialize(text, &loc)?;
    let mut cx = validate::Ctx::new(&loc);
    validate::config(&config, &mut cx);
    if cx.errors.is_empty() {
        Ok(config)
    } else {
        Err(Errors(cx.errors))
    }
}

/// Parses and validates one system service definition (a [`ContainerSpec`] at the top
/// level), as shipped in the verified root image: like a workload, except that its mounts
/// may bind files sysd renders for it below `/run/berth`.
pub fn parse_service(text: &str) -> Result<ContainerSpec, Errors> {
    parse_definition(text, validate::Origin::System)
}

/// Parses and validates one workload definition (an `osctl run` request, or one saved on
/// the state partition) with the rules of the machine config's `[[containers]]`.
pub fn parse_workload(text: &str) -> Result<ContainerSpec, Errors> {
    parse_definition(text, validate::Origin::Workload)
}

fn parse_definition(text: &str, origin: validate::Origin) -> Result<ContainerSpec, Errors> {
    let loc = Locator::new(text);
    let mut spec: ContainerSpec = deserialize(text, &loc)?;
    // Workloads default to the bridge; a system service that names no network keeps the
    // host's (ntpd, the admin toolbox and the like serve or manage the node itself).
    if origin == validate::Origin::System
        && !toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("network"))
    {
        spec.network = NetworkMode::Host;
    }
    let mut cx = validate::Ctx::new(&loc);
    validate::container(&spec, &KeyPath::root(), origin, &mut cx);
    if cx.errors.is_empty() {
        Ok(spec)
    } else {
        Err(Errors(cx.errors))
    }
}

impl Config {
    /// Validates a config built in code (no line numbers).
    pub fn validate(&self) -> Result<(), Errors> {
        let loc = Locator::none();
        let mut cx = validate::Ctx::new(&loc);
        validate::config(self, &mut cx);
        if cx.errors.is_empty() {
            Ok(())
        } else {
            Err(Errors(cx.errors))
        }
    }

    /// The config as TOML, as `osctl config show` prints it; [`parse`] reads it back unchanged.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// Fuzz entry point: parse arbitrary bytes; must never panic.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        match parse(text) {
            Ok(c) => {
                // What we accept we must be able to print and read back.
                if let Ok(t) = c.to_toml() {
                    let _ = parse(&t);
                }
                let _ = c.hosts();
                let _ = c.resolv_conf(&[], &[]);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
        let _ = parse_service(text);
        let _ = parse_workload(text);
    }
}

#[cfg(test)]
mod tests;

/// An error with its causes, each added once: `pulling X: registry request failed: HTTP 404`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}
