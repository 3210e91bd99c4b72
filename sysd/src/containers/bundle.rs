//! From a container definition (+ its image's config) to an OCI runtime spec.
//!
//! Pure functions: everything here is unit-tested without root.

use berth_config::{ContainerSpec, NetworkMode};
use berth_registry::ImageConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, RootBuilder, Spec, UserBuilder,
};
use std::path::{Path, PathBuf};

/// Errors building a spec; each names the container.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "container {name}: nothing to run (no command and the image has no entrypoint or cmd)"
    )]
    NoCommand { name: String },
    #[error("container {name}: invalid user {user:?} (use numeric uid[:gid])")]
    BadUser { name: String, user: String },
    #[error("container {name}: unknown capability {cap:?}")]
    BadCapability { name: String, cap: String },
    #[error("container {name}: user_namespace is set but no id range was allocated")]
    NoIdRange { name: String },
    #[error("container {name}: network = \"bridge\" but it has no hosts and resolv.conf")]
    NoNetFiles { name: String },
    #[error("container {name}: cannot build the OCI spec: {msg}")]
    Spec { name: String, msg: String },
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// cpu.max period in microseconds.
const CPU_PERIOD: u64 = 100_000;

/// Host files a host-network container sees read-only, so name resolution works.
pub const HOST_NET_FILES: [&str; 3] = ["/etc/resolv.conf", "/etc/hosts", "/etc/hostname"];

/// The process arguments: the definition's command, else the image's entrypoint + cmd.
pub fn args(spec: &ContainerSpec, image: &ImageConfig) -> Vec<String> {
    if !spec.command.is_empty() {
        return spec.command.clone();
    }
    let rc = image.config.clone().unwrap_or_default();
    let mut a = rc.entrypoint.unwrap_or_default();
    a.extend(rc.cmd.unwrap_or_default());
    a
}

/// Environment: image env, then the definition's (overriding by key); PATH always set.
pub fn env(spec: &ContainerSpec, image: &ImageConfig) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: &str| match out.iter_mut().find(|(key, _)| key == k) {
        Some(e) => e.1 = v.to_string(),
        None => out.push((k.to_string(), v.to_string())),
    };
    let image_env = image
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    let has_path = image_env.iter().any(|kv| kv.starts_with("PATH="));
    for kv in &image_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        put(k, v);
    }
    if !has_path {
        let (k, v) = DEFAULT_PATH.split_once('=').unwrap_or(("PATH", ""));
        put(k, v);
    }
    for (k, v) in &spec.env {
        put(k, v);
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn parse_user(name: &str, user: &str) -> Result<(u32, u32), BundleError> {
    let bad = || BundleError::BadUser {
        name: name.into(),
        user: user.into(),
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = if u == "root" || u.is_empty() {
        0
    } else {
        u.parse().map_err(|_| bad())?
    };
    let gid = match g {
        Some("root") => 0,
        Some(g) => g.parse().map_err(|_| bad())?,
        None => uid,
    };
    Ok((uid, gid))
}

fn capability(name: &str, cap: &str) -> Result<Capability, BundleError> {
    let upper = cap.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    // The spec's JSON spelling (`CAP_SYS_TIME`) is what the serde form accepts.
    serde_json::from_value::<Capability>(serde_json::Value::String(full)).map_err(|_| {
        BundleError::BadCapability {
            name: name.into(),
            cap: cap.into(),
        }
    })
}

/// A bind mount of a host path. Always `nodev` and `nosuid`: what a container is given of
/// the host (its binds, volumes and the host-network files) can neither open a device
/// node nor run a setuid program found there, whatever a container with write access put
/// in it.
fn bind(source: &Path, target: &str, ro: bool) -> Result<Mount, String> {
    let mut opts: Vec<String> = ["rbind", "rprivate", "nodev", "nosuid"]
        .into_iter()
        .map(String::from)
        .collect();
    if ro {
        opts.push("ro".into());
    }
    MountBuilder::default()
        .destination(PathBuf::from(target))
        .typ("bind")
        .source(source.to_path_buf())
        .options(opts)
        .build()
        .map_err(|e| e.to_string())
}

/// Inputs besides the definition.
pub struct Inputs<'a> {
    /// Where the overlay rootfs is mounted.
    pub rootfs: &'a Path,
    /// The image's config.
    pub image: &'a ImageConfig,
    /// Root of named volumes (`/var/lib/berth/volumes`).
    pub volumes_dir: &'a Path,
    /// First host id of the container's range, for `user_namespace` (see `userns`).
    pub id_base: Option<u32>,
    /// A `bridge` container's `/etc/hosts` and `/etc/resolv.conf` on the host (see
    /// `network`); bound read-only. `None` for `host` and `none` containers.
    pub net_files: Option<(&'a Path, &'a Path)>,
}

/// The OCI spec for a container: Docker-like defaults plus Berth's default security
/// profile (capabilities, seccomp, no_new_privileges, masked paths, read-only /sys), the
/// definition's extra capabilities, mounts, volumes, limits and network mode.
pub fn build(spec: &ContainerSpec, inp: &Inputs) -> Result<Spec, BundleError> {
    let name = spec.name.as_str();
    let err = |msg: String| BundleError::Spec {
        name: name.into(),
        msg,
    };
    let args = args(spec, inp.image);
    if args.is_empty() {
        return Err(BundleError::NoCommand { name: name.into() });
    }
    let rc = inp.image.config.clone().unwrap_or_default();
    let user = spec
        .user
        .clone()
        .or(rc.user.clone())
        .filter(|u| !u.is_empty());
    let (uid, gid) = match &user {
        Some(u) => parse_user(name, u)?,
        None => (0, 0),
    };
    let cwd = spec
        .workdir
        .clone()
        .or(rc.working_dir.clone())
        .filter(|w| w.starts_with('/'))
        .unwrap_or_else(|| "/".into());

    let mut s = Spec::default();
    s.set_hostname(Some(name.to_string()));
    s.set_root(Some(
        RootBuilder::default()
            .path(inp.rootfs.to_path_buf())
            .readonly(false)
            .build()
            .map_err(|e| err(e.to_string()))?,
    ));
    let mut process = s.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(env(spec, inp.image)));
    process.set_cwd(PathBuf::from(cwd));
    process.set_terminal(Some(false));
    process.set_user(
        UserBuilder::default()
            .uid(uid)
            .gid(gid)
            .build()
            .map_err(|e| err(e.to_string()))?,
    );
    s.set_process(Some(process));

    // Namespaces: host network (and its UTS) shared when network = host.
    let mut linux = s.linux().clone().unwrap_or_else(|| {
        LinuxBuilder::default()
            .build()
            .unwrap_or_else(|_| Default::default())
    });
    let mut ns: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
    if spec.network == NetworkMode::Host {
        ns.retain(|n| {
            !matches!(
                n.typ(),
                LinuxNamespaceType::Network | LinuxNamespaceType::Uts
            )
        });
        s.set_hostname(None);
    }
    if !ns.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup) {
        let mut c = LinuxNamespace::default();
        c.set_typ(LinuxNamespaceType::Cgroup);
        ns.push(c);
    }
    // A user namespace of its own: container ids 0..SIZE are host ids base..base+SIZE.
    if spec.user_namespace {
        let base = inp
            .id_base
            .ok_or_else(|| BundleError::NoIdRange { name: name.into() })?;
        if !ns.iter().any(|n| n.typ() == LinuxNamespaceType::User) {
            let mut u = LinuxNamespace::default();
            u.set_typ(LinuxNamespaceType::User);
            ns.push(u);
        }
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(base)
            .size(super::userns::SIZE)
            .build()
            .map_err(|e| err(e.to_string()))?;
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    }
    linux.set_namespaces(Some(ns));
    linux.set_cgroups_path(Some(PathBuf::from(name)));

    // Limits.
    let mut res = LinuxResourcesBuilder::default();
    let mut any = false;
    if let Some(m) = spec.limits.memory {
        res = res.memory(
            LinuxMemoryBuilder::default()
                .limit(m.bytes() as i64)
                .build()
                .map_err(|e| err(e.to_string()))?,
        );
        any = true;
    }
    if let Some(c) = spec.limits.cpus {
        let quota = (c.millis() as u64 * CPU_PERIOD / 1000).max(1000) as i64;
        res = res.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD)
                .build()
                .map_err(|e| err(e.to_string()))?,
        );
        any = true;
    }
    if let Some(p) = spec.limits.pids {
        res = res.pids(
            LinuxPidsBuilder::default()
                .limit(p as i64)
                .build()
                .map_err(|e| err(e.to_string()))?,
        );
        any = true;
    }
    if any {
        linux.set_resources(Some(res.build().map_err(|e| err(e.to_string()))?));
    }
    s.set_linux(Some(linux));

    // Mounts: the defaults, host files for host networking, binds, volumes.
    let mut mounts: Vec<Mount> = s.mounts().clone().unwrap_or_default();
    if spec.network == NetworkMode::Host {
        for f in HOST_NET_FILES {
            mounts.push(bind(Path::new(f), f, true).map_err(err)?);
        }
    }
    if spec.network == NetworkMode::Bridge {
        let (hosts, resolv) = inp
            .net_files
            .ok_or_else(|| BundleError::NoNetFiles { name: name.into() })?;
        mounts.push(bind(hosts, "/etc/hosts", true).map_err(err)?);
        mounts.push(bind(resolv, "/etc/resolv.conf", true).map_err(err)?);
    }
    for m in &spec.mounts {
        mounts.push(bind(Path::new(&m.source), &m.target, m.read_only).map_err(err)?);
    }
    for v in &spec.volumes {
        mounts.push(bind(&inp.volumes_dir.join(&v.name), &v.target, false).map_err(err)?);
    }
    s.set_mounts(Some(mounts));

    berth_runtime::profile::apply_default(&mut s);
    if !spec.capabilities.is_empty() {
        let mut extra = Vec::new();
        for c in &spec.capabilities {
            extra.push(capability(name, c)?);
        }
        let mut p = s.process().clone().unwrap_or_default();
        if let Some(mut caps) = p.capabilities().clone() {
            for set in [
                caps.bounding().clone(),
                caps.effective().clone(),
                caps.permitted().clone(),
            ]
            .iter()
            .enumerate()
            {
                let mut v = set.1.clone().unwrap_or_default();
                v.extend(extra.iter().copied());
                match set.0 {
                    0 => caps.set_bounding(Some(v)),
                    1 => caps.set_effective(Some(v)),
                    _ => caps.set_permitted(Some(v)),
                };
            }
            p.set_capabilities(Some(caps));
        }
        s.set_process(Some(p));
        // The system calls those capabilities exist for (mount for SYS_ADMIN,
        // clock_settime for SYS_TIME, ...), as Docker's profile allows them.
        if let Some(mut linux) = s.linux().clone() {
            linux.set_seccomp(Some(berth_runtime::profile::seccomp_for(&extra)));
            s.set_linux(Some(linux));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(toml: &str) -> ContainerSpec {
        berth_config::parse_service(toml).unwrap()
    }

    fn image(json: &str) -> ImageConfig {
        ImageConfig::parse(json.as_bytes()).unwrap()
    }

    fn inputs<'a>(img: &'a ImageConfig) -> Inputs<'a> {
        Inputs {
            rootfs: Path::new("/var/lib/berth/containers/x/rootfs"),
            image: img,
            volumes_dir: Path::new("/var/lib/berth/volumes"),
            id_base: None,
            net_files: None,
        }
    }

    #[test]
    fn bridge_network_has_its_own_namespace_and_bound_hosts_and_resolv_conf() {
        let img = image(r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]}}"#);
        let d =
            def("name = \"web\"\nimage = \"admin\"\nnetwork = \"bridge\"\nports = [\"8080:80\"]\n");
        // Without the files: an error naming the container, not a container without names.
        let e = build(&d, &inputs(&img)).unwrap_err();
        assert!(e.to_string().contains("web"), "{e}");
        let mut inp = inputs(&img);
        inp.net_files = Some((
            Path::new("/run/berth/net/web/hosts"),
            Path::new("/run/berth/net/web/resolv.conf"),
        ));
        let s = build(&d, &inp).unwrap();
        let ns: Vec<_> = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Uts));
        assert_eq!(s.hostname().as_deref(), Some("web"));
        let m = s.mounts().clone().unwrap();
        for (dst, src) in [
            ("/etc/hosts", "/run/berth/net/web/hosts"),
            ("/etc/resolv.conf", "/run/berth/net/web/resolv.conf"),
        ] {
            let b = m
                .iter()
                .find(|m| m.destination() == Path::new(dst))
                .unwrap_or_else(|| panic!("{dst} is not mounted"));
            assert_eq!(b.source().as_deref(), Some(Path::new(src)));
            assert_eq!(opts(b), ["rbind", "rprivate", "nodev", "nosuid", "ro"]);
        }
        assert!(!m
            .iter()
            .any(|m| m.source().as_deref() == Some(Path::new("/etc/hosts"))));
    }

    #[test]
    fn user_namespace_and_id_maps_only_when_asked() {
        let img = image(r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]}}"#);
        let has_user = |s: &Spec| {
            s.linux()
                .as_ref()
                .unwrap()
                .namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .filter(|n| n.typ() == LinuxNamespaceType::User)
                .count()
        };
        // Off (the default): no user namespace, no maps, even with a range at hand.
        let d = def("name = \"web\"\nimage = \"admin\"\n");
        let mut inp = inputs(&img);
        inp.id_base = Some(100_000);
        let s = build(&d, &inp).unwrap();
        assert_eq!(has_user(&s), 0);
        let l = s.linux().as_ref().unwrap();
        assert!(l.uid_mappings().is_none() && l.gid_mappings().is_none());

        let d = def("name = \"web\"\nimage = \"admin\"\nuser_namespace = true\n");
        inp.id_base = Some(100_000 + 2 * 65_536);
        let s = build(&d, &inp).unwrap();
        assert_eq!(has_user(&s), 1);
        let v = serde_json::to_value(&s).unwrap();
        let want = serde_json::json!([{"containerID": 0, "hostID": 231_072, "size": 65_536}]);
        assert_eq!(v["linux"]["uidMappings"], want);
        assert_eq!(v["linux"]["gidMappings"], want);
        // Root inside stays root inside: the process user is the container's own id.
        assert_eq!(v["process"]["user"]["uid"], 0);

        // Asked for but no range: an error naming the container, not a root container.
        inp.id_base = None;
        let e = build(&d, &inp).unwrap_err();
        assert!(matches!(e, BundleError::NoIdRange { .. }), "{e:?}");
        assert!(e.to_string().contains("web"), "{e}");
    }

    #[test]
    fn command_replaces_entrypoint_and_cmd() {
        let img = image(
            r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/app"],"Cmd":["--x"]}}"#,
        );
        let d = def("name = \"web\"\nimage = \"admin\"\n");
        assert_eq!(args(&d, &img), ["/bin/app", "--x"]);
        let d = def("name = \"web\"\nimage = \"admin\"\ncommand = [\"sh\", \"-c\", \"true\"]\n");
        assert_eq!(args(&d, &img), ["sh", "-c", "true"]);
        let empty = image(r#"{"architecture":"amd64","os":"linux"}"#);
        let d = def("name = \"web\"\nimage = \"admin\"\n");
        assert!(matches!(
            build(&d, &inputs(&empty)),
            Err(BundleError::NoCommand { .. })
        ));
    }

    #[test]
    fn env_merges_with_definition_winning() {
        let img = image(r#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1","B=2"]}}"#);
        let d = def("name = \"w\"\nimage = \"admin\"\nenv = { B = \"3\", C = \"4\" }\n");
        let e = env(&d, &img);
        assert_eq!(e[0], "A=1");
        assert_eq!(e[1], "B=3");
        assert!(e.iter().any(|x| x.starts_with("PATH=/usr/local/sbin")));
        assert_eq!(e.last().unwrap(), "C=4");
    }

    #[test]
    fn host_network_shares_net_and_uts_and_sees_resolv_conf() {
        let img = image(r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]}}"#);
        let s = build(&def("name = \"n\"\nimage = \"admin\"\n"), &inputs(&img)).unwrap();
        let ns: Vec<_> = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup));
        let m = s.mounts().clone().unwrap();
        for f in HOST_NET_FILES {
            let b = m
                .iter()
                .find(|m| m.destination() == Path::new(f))
                .unwrap_or_else(|| panic!("{f} is not mounted"));
            assert_eq!(b.source().as_deref(), Some(Path::new(f)));
            assert_eq!(
                opts(b),
                ["rbind", "rprivate", "nodev", "nosuid", "ro"],
                "{f}"
            );
        }
        let s = build(
            &def("name = \"n\"\nimage = \"admin\"\nnetwork = \"none\"\n"),
            &inputs(&img),
        )
        .unwrap();
        let ns: Vec<_> = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        assert_eq!(s.hostname().as_deref(), Some("n"));
    }

    #[test]
    fn limits_caps_and_volumes() {
        let img = image(
            r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["ntpd"],"User":"100:101"}}"#,
        );
        let d = def(
            "name = \"t\"\nimage = \"ntpd\"\ncapabilities = [\"SYS_TIME\"]\nvolumes = [{ name = \"data\", target = \"/data\" }]\n[limits]\nmemory = \"64M\"\ncpus = 0.5\npids = 20\n",
        );
        let s = build(&d, &inputs(&img)).unwrap();
        let r = s.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 20);
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.user().uid(), 100);
        assert_eq!(p.user().gid(), 101);
        let caps = p.capabilities().as_ref().unwrap();
        assert!(caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysTime));
        assert!(caps
            .effective()
            .as_ref()
            .unwrap()
            .contains(&Capability::Chown));
        assert!(!caps
            .effective()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert_eq!(p.no_new_privileges(), Some(true));
        // SYS_TIME's system calls are allowed by the filter too.
        let seccomp = s.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        assert!(seccomp
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .any(|r| r.names().iter().any(|n| n == "clock_settime")));
        let m = s.mounts().clone().unwrap();
        let v = m
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .expect("the volume is mounted");
        assert_eq!(
            v.source().as_deref(),
            Some(Path::new("/var/lib/berth/volumes/data"))
        );
        assert_eq!(opts(v), ["rbind", "rprivate", "nodev", "nosuid"]);
        assert!(s.linux().as_ref().unwrap().seccomp().is_some());
    }

    fn opts(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    #[test]
    fn binds_are_nodev_and_nosuid_read_only_when_asked() {
        let img = image(r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]}}"#);
        let d = def(
            "name = \"b\"\nimage = \"admin\"\nnetwork = \"none\"\nmounts = [{ source = \"/var/data\", target = \"/data\" }, { source = \"/etc/ssl/certs\", target = \"/certs\", read_only = true }]\n",
        );
        let s = build(&d, &inputs(&img)).unwrap();
        let m = s.mounts().clone().unwrap();
        let find = |t: &str| {
            m.iter()
                .find(|m| m.destination() == Path::new(t))
                .unwrap_or_else(|| panic!("{t} is not mounted"))
        };
        assert_eq!(find("/data").typ().as_deref(), Some("bind"));
        assert_eq!(
            find("/data").source().as_deref(),
            Some(Path::new("/var/data"))
        );
        assert_eq!(
            opts(find("/data")),
            ["rbind", "rprivate", "nodev", "nosuid"]
        );
        assert_eq!(
            opts(find("/certs")),
            ["rbind", "rprivate", "nodev", "nosuid", "ro"]
        );
        // network = "none": no host files.
        assert!(!m
            .iter()
            .any(|m| m.destination() == Path::new("/etc/resolv.conf")));
        // Every bind in the spec, the profile's included, is nodev and nosuid.
        for b in m.iter().filter(|m| m.typ().as_deref() == Some("bind")) {
            let o = opts(b);
            assert!(
                o.iter().any(|o| o == "nodev") && o.iter().any(|o| o == "nosuid"),
                "{:?}: {o:?}",
                b.destination()
            );
        }
    }

    #[test]
    fn bad_user_and_capability_are_named() {
        let img = image(
            r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["x"],"User":"nobody"}}"#,
        );
        let e = build(&def("name = \"u\"\nimage = \"admin\"\n"), &inputs(&img)).unwrap_err();
        assert!(e.to_string().contains("invalid user \"nobody\""), "{e}");
    }
}
