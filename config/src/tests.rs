//! Parsing and validation tests; the invalid-config corpus lives in `tests/invalid/`.

use super::*;

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn empty_config_is_safe_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c, Config::default());
    assert!(
        c.network.interfaces.is_empty(),
        "empty = DHCP on every interface"
    );
    assert!(c.containers.is_empty());
    assert_eq!(c.host.hostname(), "berth");
    Config::default().validate().unwrap();
}

#[test]
fn type_errors_name_path_and_line() {
    let text = "[host]\nhostname = \"a\"\n\n[[containers]]\nname = \"a\"\nimage = \"ntpd\"\n\n[[containers]]\nname = \"b\"\nimage = \"ntpd\"\nlimits = { memory = \"12Q\" }\n";
    let e = err(text);
    assert!(
        e.starts_with("line 11: containers[1].limits.memory: invalid size \"12Q\""),
        "{e}"
    );
}

#[test]
fn semantic_errors_name_path_and_line() {
    let text = "[[containers]]\nname = \"a\"\nimage = \"ntpd\"\n\n[[containers]]\nname = \"a\"\nimage = \"ntpd\"\n";
    assert_eq!(
        err(text),
        "line 6: containers[1].name: duplicate container name \"a\" (also containers[0])"
    );
}

/// The ```toml blocks of docs/CONFIG.md.
fn doc_examples() -> Vec<String> {
    let doc = include_str!("../../docs/CONFIG.md");
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        match (&mut cur, line.trim_end()) {
            (None, "```toml") => cur = Some(String::new()),
            (Some(_), "```") => out.extend(cur.take()),
            (Some(c), l) => {
                c.push_str(l);
                c.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[test]
fn documented_example_parses_validates_and_uses_every_section() {
    let ex = doc_examples();
    assert_eq!(ex.len(), 1, "docs/CONFIG.md should have one full example");
    let c = parse(&ex[0]).unwrap_or_else(|e| panic!("docs/CONFIG.md example: {e}"));
    assert_eq!(c.host.hostname(), "edge-01.example.com");
    assert_eq!(c.network.interfaces.len(), 2);
    assert_eq!(c.network.interfaces[0].routes[0].to, RouteTarget::Default);
    assert!(c.network.interfaces[1].matches("enp0s3") && !c.network.interfaces[1].matches("eth0"));
    assert_eq!(c.sysctl["net.ipv4.tcp_syncookies"].as_text(), "1");
    assert_eq!(c.files[1].mode, FileMode(0o600));
    assert_eq!(c.files[1].owner_ids(), Some((1000, 1000)));
    assert_eq!(c.kernel.modules.len(), 2);
    assert_eq!(c.registries["registry.example.com:5000"].mirrors.len(), 2);
    assert!(c.registries["localhost:5000"].insecure);
    assert_eq!(c.containers.len(), 3);
    let db = &c.containers[0];
    assert_eq!(db.limits.memory, Some(Size(512 << 20)));
    assert_eq!(db.limits.cpus, Some(Cpus(1500)));
    assert_eq!(
        db.volumes[0].host_path(),
        std::path::Path::new("/var/lib/berth/volumes/pgdata")
    );
    assert!(matches!(
        db.health.as_ref().unwrap().check(),
        Some(HealthCheck::Tcp("127.0.0.1:5432"))
    ));
    assert_eq!(c.containers[1].restart.policy, RestartPolicy::OnFailure);
    assert_eq!(c.containers[1].restart.max_backoff, Duration::secs(60));
    assert_eq!(c.containers[2].network, NetworkMode::None);
    assert!(matches!(&c.containers[2].image, ImageRef::Shipped { name, .. } if name == "toolbox"));
    assert_eq!(c.update.policy, UpdatePolicy::Auto);
    assert_eq!(c.api.listen.to_string(), "0.0.0.0:7443");
    assert_eq!(c.api.allowed_sources.len(), 2);
    assert_eq!(c.api.revoked_serials[0].as_str(), "3fa2019c");
    assert_eq!(c.api.revoked_serials[1].as_str(), "b7e");
    assert!(c.api.enabled() && c.api.ca_key.is_some() && c.api.key.is_some());
    // Every top-level section of the schema is set to something other than its default.
    let d = Config::default();
    assert!(
        c.host != d.host && c.network != d.network && c.sysctl != d.sysctl && c.files != d.files
    );
    assert!(
        c.kernel != d.kernel
            && c.registries != d.registries
            && c.update != d.update
            && c.api != d.api
    );
    // `osctl config show` prints what parse reads back unchanged.
    let t = c.to_toml().unwrap();
    assert_eq!(parse(&t).unwrap(), c, "{t}");
    let order = start_order(&c.containers.iter().collect::<Vec<_>>()).unwrap();
    assert_eq!(order, [0, 1, 2]);
}

#[test]
fn all_semantic_errors_are_reported_at_once() {
    let text = "[host]\nhostname = \"bad_name\"\n\n[[files]]\npath = \"/usr/x\"\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert_eq!(e.0[0].line, Some(2));
    assert_eq!(e.0[1].path.to_string(), "files[0].path");
    assert_eq!(e.0[1].line, Some(5));
}

#[test]
fn validate_without_text_has_paths_but_no_lines() {
    let mut c = Config::default();
    c.host.hostname = Some("-x".into());
    let e = c.validate().unwrap_err();
    assert_eq!(e.to_string(), "host.hostname: invalid hostname \"-x\" (letters, digits and '-' in dot-separated labels, at most 64 characters)");
}

#[test]
fn service_definitions() {
    let s = parse_service("name = \"ntpd\"\nimage = \"ntpd\"\ncapabilities = [\"SYS_TIME\"]\nrequired_for_boot = true\n").unwrap();
    assert_eq!(s.name, "ntpd");
    assert!(s.required_for_boot);
    assert_eq!(s.network, NetworkMode::Host);
    assert_eq!(s.restart, Restart::default());
    let e =
        parse_service("name = \"ntpd\"\nimage = \"ntpd\"\nlimits = { pids = 0 }\n").unwrap_err();
    assert_eq!(e.to_string(), "line 3: limits.pids: must be at least 1");
    let e = parse_service("name = \"ntpd\"\n").unwrap_err();
    assert_eq!(e.to_string(), "line 1: (top level): missing field `image`");
}

fn spec(name: &str, after: &[&str], requires: &[&str]) -> ContainerSpec {
    let mut s = parse_service(&format!("name = \"{name}\"\nimage = \"x\"\n")).unwrap();
    s.after = after.iter().map(|s| s.to_string()).collect();
    s.requires = requires.iter().map(|s| s.to_string()).collect();
    s
}

#[test]
fn start_order_over_services_and_workloads() {
    let set = [
        spec("web", &["db"], &["net"]),
        spec("db", &["missing-is-fine"], &[]),
        spec("net", &[], &[]),
        spec("log", &[], &[]),
    ];
    let refs: Vec<&ContainerSpec> = set.iter().collect();
    assert_eq!(start_order(&refs).unwrap(), [1, 2, 0, 3]);

    let bad = [spec("a", &[], &["b"])];
    assert_eq!(
        start_order(&bad.iter().collect::<Vec<_>>())
            .unwrap_err()
            .to_string(),
        "\"a\" requires \"b\", which is not defined"
    );
    let cyc = [
        spec("a", &["b"], &[]),
        spec("b", &[], &["c"]),
        spec("c", &["b"], &[]),
    ];
    assert_eq!(
        start_order(&cyc.iter().collect::<Vec<_>>()).unwrap_err(),
        DependencyError::Cycle(vec!["b".into(), "c".into(), "b".into()])
    );
    let dup = [spec("a", &[], &[]), spec("a", &[], &[])];
    assert_eq!(
        start_order(&dup.iter().collect::<Vec<_>>()).unwrap_err(),
        DependencyError::Duplicate("a".into())
    );
    // A long chain does not overflow the stack.
    let chain: Vec<ContainerSpec> = (0..5000)
        .map(|i| {
            let n = format!("c{i}");
            let prev = format!("c{}", i + 1);
            spec(&n, &[prev.as_str()], &[])
        })
        .collect();
    let order = start_order(&chain.iter().collect::<Vec<_>>()).unwrap();
    assert_eq!(order[0], 4999);
}

#[test]
fn fuzz_entry_point_survives_odd_input() {
    for input in [
        &b"\xff\xfe"[..],
        b"[[containers]]\n",
        b"a = 1\na = 2",
        b"[sysctl]\n\"\" = 1",
        b"x = \"\\u{0}\"",
    ] {
        fuzz_parse(input);
    }
}

#[test]
fn ntp_servers_render_and_are_checked() {
    let c =
        parse("[host]\nntp_servers = [\"time.example.com\", \"10.0.2.2\", \"fd00::1\"]\n").unwrap();
    assert_eq!(
        c.ntpd_conf(),
        "# Generated by Berth from host.ntp_servers. Do not edit.\n\
         servers time.example.com\nservers 10.0.2.2\nservers fd00::1\n"
    );
    assert!(Config::default()
        .ntpd_conf()
        .ends_with("\nservers pool.ntp.org\n"));
    let e = err("[host]\nntp_servers = [\"ok.example\", \"bad name\"]\n");
    assert!(
        e.contains("host.ntp_servers[1]: invalid NTP server \"bad name\""),
        "{e}"
    );
    let e = err("[host]\nntp_servers = [\"a.example\", \"a.example\"]\n");
    assert!(
        e.contains("host.ntp_servers[1]: NTP server \"a.example\" is listed twice"),
        "{e}"
    );
    let many: Vec<String> = (0..9).map(|i| format!("\"n{i}.example\"")).collect();
    let e = err(&format!("[host]\nntp_servers = [{}]\n", many.join(", ")));
    assert!(e.contains("at most 8 NTP servers"), "{e}");
}

/// A one-container config mounting `source` at /m.
fn mounting(source: &str) -> String {
    format!("[[containers]]\nname = \"a\"\nimage = \"x\"\nmounts = [{{ source = {source:?}, target = \"/m\" }}]\n")
}

#[test]
fn berth_state_is_refused_as_a_mount_source() {
    let state = "holds Berth's own state (content store, credentials, other containers' data): mounting it into a container would hand it the node";
    let runtime = "holds Berth's runtime state (the API socket, container state, the ESP): mounting it into a container would hand it the node";
    let esp = "is the EFI system partition (boot loader, kernels, boot entries): mounting it into a container would hand it the node";
    let logs = "holds every container's logs: mounting it into a container would hand it the node";
    for (source, expect) in [
        ("/var/lib/berth", format!("\"/var/lib/berth\" {state}")),
        (
            "/var/lib/berth/images",
            format!("\"/var/lib/berth/images\" {state}"),
        ),
        (
            "/var/lib/berth/config.toml",
            format!("\"/var/lib/berth/config.toml\" {state}"),
        ),
        (
            "/var/lib/berth/volumes/other",
            format!("\"/var/lib/berth/volumes/other\" {state}"),
        ),
        (
            "/var/lib",
            format!("\"/var/lib\" contains /var/lib/berth, which {state}"),
        ),
        (
            "/var/log",
            format!("\"/var/log\" contains /var/log/berth, which {logs}"),
        ),
        ("/var/log/berth", format!("\"/var/log/berth\" {logs}")),
        (
            "/var/log/berth/db.log",
            format!("\"/var/log/berth/db.log\" {logs}"),
        ),
        ("/run/berth", format!("\"/run/berth\" {runtime}")),
        (
            "/run/berth/osctl.sock",
            format!("\"/run/berth/osctl.sock\" {runtime}"),
        ),
        (
            "/run/berth/containers/db",
            format!("\"/run/berth/containers/db\" {runtime}"),
        ),
        ("/run/berth/esp", format!("\"/run/berth/esp\" {esp}")),
        (
            "/run/berth/esp/loader",
            format!("\"/run/berth/esp/loader\" {esp}"),
        ),
    ] {
        assert_eq!(
            err(&mounting(source)),
            format!("line 4: containers[0].mounts[0].source: {expect}"),
            "{source}"
        );
    }
    // Trees that contain Berth's state: the first protected one they contain is named.
    for (source, inner) in [("/var", "/var/lib/berth"), ("/run", "/run/berth/esp")] {
        let e = err(&mounting(source));
        assert!(
            e.contains(&format!("{source:?} contains {inner}, which"))
                && e.ends_with("would hand it the node"),
            "{source}: {e}"
        );
    }
    // Outside /var, /etc and /run: refused as before.
    for source in ["/usr", "/home", "/varx", "/etc"] {
        assert!(
            err(&mounting(source)).ends_with("is outside /var, /etc and /run"),
            "{source}"
        );
    }
}

#[test]
fn denormalised_paths_into_berth_state_are_refused() {
    for source in [
        "/var/lib/x/../berth",
        "/var/lib/./berth",
        "/var//lib/berth",
        "/var/lib/berth/",
        "/var/data/../../run/berth/esp",
        "/run/./berth",
        "var/lib/berth",
    ] {
        let e = err(&mounting(source));
        assert!(
            e.starts_with("line 4: containers[0].mounts[0].source: ")
                && (e.contains("must not contain") || e.contains("must be an absolute path")),
            "{source}: {e}"
        );
    }
}

#[test]
fn ordinary_mount_sources_stay_allowed() {
    for source in [
        "/var/data",
        "/var/lib/postgres",
        "/var/lib/berthx",
        "/var/lib/berth-other",
        "/var/log/nginx",
        "/var/log/berthold",
        "/etc/ssl/certs",
        "/etc/resolv.conf",
        "/run/app.sock",
        "/run/berthd",
    ] {
        let c = parse(&mounting(source)).unwrap_or_else(|e| panic!("{source}: {e}"));
        assert_eq!(c.containers[0].mounts[0].source, source);
    }
}

#[test]
fn system_services_may_bind_rendered_files_but_not_berth_state() {
    let svc = |source: &str| {
        format!("name = \"ntpd\"\nimage = \"ntpd\"\nmounts = [{{ source = {source:?}, target = \"/m\" }}]\n")
    };
    // What the shipped ntpd service binds: allowed for a service, not for a workload.
    parse_service(&svc("/run/berth/ntpd.conf")).unwrap();
    let e = parse_workload(&svc("/run/berth/ntpd.conf"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "line 3: mounts[0].source: \"/run/berth/ntpd.conf\" holds Berth's runtime state"
        ),
        "{e}"
    );
    for source in [
        "/run/berth",
        "/run",
        "/run/berth/esp",
        "/run/berth/esp/EFI",
        "/var/lib/berth/images",
        "/var/log/berth",
        "/var",
    ] {
        let e = parse_service(&svc(source)).unwrap_err().to_string();
        assert!(e.ends_with("would hand it the node"), "{source}: {e}");
    }
    parse_workload(&svc("/var/data")).unwrap();
}

#[test]
fn volume_names_cannot_leave_the_volumes_directory() {
    for name in [
        "..",
        ".",
        "../berth",
        "a/b",
        "a/../../images",
        "",
        "A",
        "-x",
        "a.b",
    ] {
        let text = format!(
            "[[containers]]\nname = \"a\"\nimage = \"x\"\nvolumes = [{{ name = {name:?}, target = \"/d\" }}]\n"
        );
        assert_eq!(
            err(&text),
            format!("line 4: containers[0].volumes[0].name: invalid volume name {name:?}"),
        );
        // The same rule for `osctl run --volume` (a workload definition).
        let def = format!(
            "name = \"a\"\nimage = \"x\"\nvolumes = [{{ name = {name:?}, target = \"/d\" }}]\n"
        );
        assert!(parse_workload(&def).is_err(), "{name}");
    }
    let c = parse("[[containers]]\nname = \"a\"\nimage = \"x\"\nvolumes = [{ name = \"pg-data-1\", target = \"/d\" }]\n").unwrap();
    assert_eq!(
        c.containers[0].volumes[0].host_path(),
        std::path::Path::new("/var/lib/berth/volumes/pg-data-1")
    );
}

#[test]
fn user_namespace_is_opt_in_and_round_trips() {
    let s = parse_workload("name = \"web\"\nimage = \"x\"\n").unwrap();
    assert!(!s.user_namespace);
    // Off is not written out, so saved definitions stay as they were.
    assert!(!toml::to_string(&s).unwrap().contains("user_namespace"));
    let s = parse_workload("name = \"web\"\nimage = \"x\"\nuser_namespace = true\n").unwrap();
    assert!(s.user_namespace);
    let text = toml::to_string(&s).unwrap();
    assert!(text.contains("user_namespace = true"), "{text}");
    assert_eq!(parse_workload(&text).unwrap(), s);
    let e =
        parse_workload("name = \"web\"\nimage = \"x\"\nuser_namespace = \"yes\"\n").unwrap_err();
    assert!(e.to_string().contains("user_namespace"), "{e}");
}

/// A config with `[api]` lines after a CA certificate (so every key can be tried alone).
fn with_api(lines: &str) -> String {
    format!("[api]\nca = \"\"\"\n{CERT}\"\"\"\n{lines}")
}

const CERT: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBdDCCARqgAwIBAgIUExample\n-----END CERTIFICATE-----\n";
const KEY: &str =
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqG\n-----END PRIVATE KEY-----\n";

#[test]
fn api_is_off_by_default_and_listens_on_7443() {
    let c = parse("").unwrap();
    assert!(!c.api.enabled());
    assert_eq!(c.api.listen.to_string(), DEFAULT_API_LISTEN);
    assert_eq!(c.api.cert_ttl, DEFAULT_API_CERT_TTL);
    // The default section is not printed by `osctl config show`.
    assert!(!c.to_toml().unwrap().contains("[api]"));
    let c = parse(&with_api("listen = \"[::]:443\"\n")).unwrap();
    assert!(c.api.enabled());
    assert_eq!(c.api.listen.port(), 443);
    assert_eq!(parse(&c.to_toml().unwrap()).unwrap(), c);
}

#[test]
fn admin_section_is_refused_with_a_pointer_to_api() {
    let e = err("[admin]\nkeys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample a@b\"]\n");
    assert!(e.starts_with("line 1: admin: [admin] was removed"), "{e}");
    assert!(
        e.contains("[api]") && e.contains("client certificates"),
        "{e}"
    );
    // Even empty.
    let e = err("[host]\nhostname = \"a\"\n\n[admin]\n");
    assert!(e.starts_with("line 4: admin: [admin] was removed"), "{e}");
}

#[test]
fn api_pem_values_are_checked_and_named() {
    let e = err(&with_api("ca_key = \"ssh-ed25519 AAAA\"\n"));
    assert!(
        e.starts_with("line 7: api.ca_key: expected a PEM private key (-----BEGIN ...): expected -----BEGIN ...-----, found \"ssh-ed25519 AAAA\""),
        "{e}"
    );
    // A certificate where the key belongs, and the other way round.
    let e = err(&with_api(&format!(
        "cert = \"\"\"\n{KEY}\"\"\"\nkey = \"\"\"\n{KEY}\"\"\"\n"
    )));
    assert!(e.contains("api.cert: expected a PEM certificate (-----BEGIN ...): unexpected PEM block \"PRIVATE KEY\""), "{e}");
    let e = err("[api]\nca = \"-----BEGIN CERTIFICATE-----\\nMIIB\\n\"\n");
    assert!(e.contains("api.ca: expected a PEM certificate (-----BEGIN ...): -----BEGIN CERTIFICATE----- is never closed"), "{e}");
    let e =
        err("[api]\nca = \"-----BEGIN CERTIFICATE-----\\nMI IB!\\n-----END CERTIFICATE-----\"\n");
    assert!(e.contains("not base64"), "{e}");
    let e = err("[api]\nca = \"\"\n");
    assert!(
        e.contains("api.ca: expected a PEM certificate (-----BEGIN ...): empty"),
        "{e}"
    );
    // Good ones pass, EC keys too.
    let ec = KEY.replace("PRIVATE KEY", "EC PRIVATE KEY");
    parse(&with_api(&format!(
        "cert = \"\"\"\n{CERT}{CERT}\"\"\"\nkey = \"\"\"\n{ec}\"\"\"\n"
    )))
    .unwrap();
}

#[test]
fn api_cert_and_key_go_together_and_need_a_ca() {
    let e = err(&with_api(&format!("cert = \"\"\"\n{CERT}\"\"\"\n")));
    assert!(e.contains("api.cert: needs api.key"), "{e}");
    let e = err(&with_api(&format!("key = \"\"\"\n{KEY}\"\"\"\n")));
    assert!(e.contains("api.key: needs api.cert"), "{e}");
    let e = err(&format!("[api]\nca_key = \"\"\"\n{KEY}\"\"\"\n"));
    assert!(e.contains("line 2: api.ca_key: needs api.ca"), "{e}");
}

#[test]
fn api_sources_serials_listen_and_ttl_are_checked() {
    let e = err(&with_api("allowed_sources = [\"10.0.0.0/33\"]\n"));
    assert!(
        e.contains("api.allowed_sources[0]: invalid CIDR \"10.0.0.0/33\""),
        "{e}"
    );
    let e = err(&with_api("allowed_sources = [\"10.0.0.1/8\"]\n"));
    assert!(
        e.contains(
            "api.allowed_sources[0]: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"
        ),
        "{e}"
    );
    for bad in ["xyz", "", "0a::1b", ":0a", "0a:", &"ab".repeat(21)] {
        let e = err(&with_api(&format!(
            "revoked_serials = [\"1\", \"{bad}\"]\n"
        )));
        assert!(
            e.contains("api.revoked_serials[1]: invalid certificate serial"),
            "{bad}: {e}"
        );
    }
    let e = err(&with_api("listen = \"0.0.0.0\"\n"));
    assert!(
        e.contains("line 7: api.listen: invalid address \"0.0.0.0\" (expected address:port"),
        "{e}"
    );
    let e = err(&with_api("listen = \"0.0.0.0:0\"\n"));
    assert!(e.contains("api.listen: the port must not be 0"), "{e}");
    let e = err(&with_api("cert_ttl = \"10m\"\n"));
    assert!(
        e.contains("api.cert_ttl: the node certificate lifetime"),
        "{e}"
    );
}

#[test]
fn serials_are_normalized_and_matched_in_any_form() {
    let c = parse(&with_api(
        "revoked_serials = [\"0A:1B:FF\", \"00\", \"0x7f\"]\n",
    ))
    .unwrap();
    let s: Vec<_> = c.api.revoked_serials.iter().map(Serial::as_str).collect();
    assert_eq!(s, ["a1bff", "0", "7f"]);
    assert!(
        c.api.is_revoked("a1bff") && c.api.is_revoked("0a:1b:ff") && c.api.is_revoked("0A1BFF")
    );
    assert!(!c.api.is_revoked("a1bf") && !c.api.is_revoked("not hex"));
    // Printed normalized; read back the same.
    let t = c.to_toml().unwrap();
    assert!(
        t.contains("revoked_serials = [\"a1bff\", \"0\", \"7f\"]"),
        "{t}"
    );
    assert_eq!(parse(&t).unwrap(), c);
}

#[test]
fn allowed_sources_match_ipv4_mapped_peers() {
    let c = parse(&with_api(
        "allowed_sources = [\"10.0.0.0/8\", \"fd00::/8\"]\n",
    ))
    .unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert!(c.api.source_allowed(ip("10.1.2.3")));
    assert!(c.api.source_allowed(ip("::ffff:10.1.2.3")));
    assert!(c.api.source_allowed(ip("fd12::1")));
    assert!(!c.api.source_allowed(ip("192.168.1.1")));
    assert!(!c.api.source_allowed(ip("::ffff:192.168.1.1")));
    assert!(
        parse("").unwrap().api.source_allowed(ip("203.0.113.9")),
        "empty = any"
    );
}

#[test]
fn redacted_config_hides_keys_and_passwords_only() {
    let ex = doc_examples();
    let c = parse(&ex[0]).unwrap();
    let r = c.redacted();
    assert_eq!(r.api.ca_key.as_deref(), Some(REDACTED));
    assert_eq!(r.api.key.as_deref(), Some(REDACTED));
    assert_eq!(
        r.registries["registry.example.com:5000"]
            .password
            .as_deref(),
        Some(REDACTED)
    );
    assert_eq!(
        r.registries["localhost:5000"].password, None,
        "nothing to hide"
    );
    assert_eq!(r.api.ca, c.api.ca, "a certificate is public");
    assert_eq!(r.api.cert, c.api.cert);
    let t = r.to_toml().unwrap();
    assert!(!t.contains("PRIVATE KEY") && !t.contains("s3cret"), "{t}");
    let mut back = r.clone();
    back.api.ca_key = c.api.ca_key.clone();
    back.api.key = c.api.key.clone();
    back.registries = c.registries.clone();
    assert_eq!(back, c, "only the secrets differ");
}

#[test]
fn bridge_network_and_ports_parse_and_workloads_default_to_the_bridge() {
    let c = parse(
        "[network.bridge]\nsubnet = \"10.99.0.0/24\"\n\n[[containers]]\nname = \"web\"\nimage = \"ntpd\"\nnetwork = \"bridge\"\nports = [\"8080:80\", \"127.0.0.1:5353:53/udp\"]\n\n[[containers]]\nname = \"h\"\nimage = \"ntpd\"\n",
    )
    .unwrap();
    assert_eq!(c.network.bridge.subnet.to_string(), "10.99.0.0/24");
    assert_eq!(c.containers[0].network, NetworkMode::Bridge);
    assert_eq!(c.containers[0].ports.len(), 2);
    assert_eq!(c.containers[0].ports[1].proto, Proto::Udp);
    assert_eq!(
        c.containers[1].network,
        NetworkMode::Bridge,
        "a workload that names no network is bridged"
    );
    assert_eq!(
        parse("").unwrap().network.bridge.subnet.to_string(),
        DEFAULT_BRIDGE_SUBNET
    );
    // Round trip: the default subnet is not written out, a set one is.
    let text = c.to_toml().unwrap();
    assert!(text.contains("10.99.0.0/24"), "{text}");
    assert_eq!(parse(&text).unwrap(), c);
}

#[test]
fn bad_ports_are_refused_naming_the_key() {
    let e = err("[[containers]]\nname = \"a\"\nimage = \"ntpd\"\nnetwork = \"bridge\"\nports = [\"8080:0\"]\n");
    assert!(e.contains("containers[0].ports[0]"), "{e}");
    assert!(e.contains("container port \"0\""), "{e}");
    let e = err("[[containers]]\nname = \"a\"\nimage = \"ntpd\"\nnetwork = \"bridge\"\nports = [\"[::1]:8080:80\"]\n");
    assert!(
        e.contains("containers[0].ports[0]: [::1]:8080:80")
            || e.contains("containers[0].ports[0]:"),
        "{e}"
    );
    assert!(e.contains("IPv6 host addresses are not supported"), "{e}");
    for mode in ["host", "none"] {
        let e = err(&format!("[[containers]]\nname = \"a\"\nimage = \"ntpd\"\nnetwork = \"{mode}\"\nports = [\"8080:80\"]\n"));
        assert!(
            e.contains("containers[0].ports: ports are published only from network = \"bridge\""),
            "{e}"
        );
    }
    // A workload that names no network is bridged, so its ports are fine.
    parse("[[containers]]\nname = \"a\"\nimage = \"ntpd\"\nports = [\"8080:80\"]\n").unwrap();
}

#[test]
fn a_port_published_twice_is_refused_within_and_across_containers() {
    let e = err("[[containers]]\nname = \"a\"\nimage = \"ntpd\"\nnetwork = \"bridge\"\nports = [\"8080:80\", \"127.0.0.1:8080:81\"]\n");
    assert!(
        e.contains("containers[0].ports[1]: host port 127.0.0.1:8080:81"),
        "{e}"
    );
    assert!(e.contains("conflicts with ports[0]"), "{e}");
    let e = err("[[containers]]\nname = \"a\"\nimage = \"ntpd\"\nnetwork = \"bridge\"\nports = [\"8080:80\"]\n\n[[containers]]\nname = \"b\"\nimage = \"ntpd\"\nnetwork = \"bridge\"\nports = [\"9090:90\", \"8080:80\"]\n");
    assert!(e.contains("containers[1].ports[1]"), "{e}");
    assert!(e.contains("of container \"a\""), "{e}");
    // Same port, other protocol or other addresses: fine.
    parse("[[containers]]\nname = \"a\"\nimage = \"ntpd\"\nnetwork = \"bridge\"\nports = [\"8080:80\", \"8080:80/udp\"]\n\n[[containers]]\nname = \"b\"\nimage = \"ntpd\"\nnetwork = \"bridge\"\nports = [\"127.0.0.1:9090:80\"]\n\n[[containers]]\nname = \"c\"\nimage = \"ntpd\"\nnetwork = \"bridge\"\nports = [\"127.0.0.2:9090:80\"]\n").unwrap();
}

#[test]
fn bridge_subnets_that_cannot_work_are_refused() {
    let e = err("[network.bridge]\nsubnet = \"fd00::/64\"\n");
    assert!(
        e.contains("network.bridge.subnet: fd00::/64 is not usable"),
        "{e}"
    );
    let e = err("[network.bridge]\nsubnet = \"10.0.0.0/31\"\n");
    assert!(e.contains("network.bridge.subnet"), "{e}");
    let e = err("[network.bridge]\nsubnet = \"10.88.0.1/16\"\n");
    assert!(e.contains("host bits set"), "{e}");
    let e = err("[network.bridge]\nsubnet = \"10.88.0.0/16\"\n\n[[network.interfaces]]\nname = \"eth0\"\nmode = \"static\"\naddresses = [\"10.0.0.5/8\"]\n");
    assert!(
        e.contains("network.bridge.subnet: bridge subnet 10.88.0.0/16 overlaps address 10.0.0.5/8 of network.interfaces[0].addresses[0] (eth0)"),
        "{e}"
    );
    parse("[[network.interfaces]]\nname = \"eth0\"\nmode = \"static\"\naddresses = [\"10.89.0.5/16\"]\n").unwrap();
}

#[test]
fn fleetlock_strategy_and_urls() {
    let base = "[update]\nsource = \"registry.example.com/berth/os:stable\"\npolicy = \"auto\"\nstrategy = \"fleetlock\"\n[update.fleetlock]\n";
    for url in [
        "\"http://lock.example.com:3333/\"",
        "\"https://lock.example.com/base/\"",
        "\"http://10.0.0.5:3333\"",
        "\"http://[fd00::5]:3333/\"",
        "[\"http://a:3333/\", \"http://b:3333/\"]",
    ] {
        let c = parse(&format!("{base}url = {url}\n")).unwrap_or_else(|e| panic!("{url}: {e}"));
        let f = c.update.fleetlock.as_ref().unwrap();
        assert_eq!(f.group, "default");
        assert_eq!(c.update.strategy, UpdateStrategy::Fleetlock);
        assert_eq!(parse(&c.to_toml().unwrap()).unwrap(), c);
    }
    for (url, why) in [
        ("\"lock.example.com:3333\"", "update.fleetlock.url: invalid FleetLock URL \"lock.example.com:3333\": the scheme must be http:// or https://"),
        ("\"http://\"", "no host"),
        ("\"http://:3333/\"", "no host"),
        ("\"http://u:p@lock/\"", "no user:password@"),
        ("\"http://lock/?x=1\"", "no query or fragment"),
        ("\"http://lock:0/\"", "the port must be 1-65535"),
        ("\"http://[fd00::5/\"", "unclosed ["),
        ("[]", "update.fleetlock.url: at least one URL"),
        ("[\"http://a/\", \"b\"]", "update.fleetlock.url[1]: invalid FleetLock URL"),
    ] {
        let e = err(&format!("{base}url = {url}\n"));
        assert!(e.contains(why), "{url}: {e}");
    }
    assert_eq!(Config::default().update.strategy, UpdateStrategy::Immediate);
}

#[test]
fn logging_is_off_by_default_and_round_trips() {
    let c = parse("").unwrap();
    assert!(c.logging.forward.is_none());
    assert_eq!(c.logging.spool_max, DEFAULT_SPOOL_MAX);
    assert!(!c.to_toml().unwrap().contains("[logging]"));
    let text = format!(
        "[logging]\nforward = \"tcp+tls://logs.example.com\"\nca = \"\"\"\n{CERT}\"\"\"\nspool_max = \"8M\"\n"
    );
    let c = parse(&text).unwrap();
    let f = c.logging.forward.as_ref().unwrap();
    assert_eq!((f.host.as_str(), f.port), ("logs.example.com", 6514));
    assert_eq!(c.logging.spool_max.bytes(), 8 << 20);
    let shown = c.to_toml().unwrap();
    assert!(
        shown.contains("forward = \"tcp+tls://logs.example.com:6514\""),
        "{shown}"
    );
    assert_eq!(parse(&shown).unwrap(), c);
    parse("[logging]\nforward = \"udp://[fd00::1]\"\n").unwrap();
}

#[test]
fn logging_keys_are_checked_and_named() {
    let e = err(&format!(
        "[logging]\nforward = \"tcp://logs:514\"\nca = \"\"\"\n{CERT}\"\"\"\n"
    ));
    assert!(
        e.starts_with("line 3: logging.ca: only used with forward = \"tcp+tls://...\""),
        "{e}"
    );
    let e = err("[logging]\nspool_max = \"8M\"\n");
    assert!(
        e.starts_with("line 2: logging.spool_max: only used with logging.forward"),
        "{e}"
    );
    let e = err("[logging]\nforward = \"tcp://logs\"\nspool_max = \"100G\"\n");
    assert!(
        e.contains("logging.spool_max: the spool must be between 1M and 64G"),
        "{e}"
    );
    let e = err("[logging]\nforward = 514\n");
    assert!(e.contains("logging.forward"), "{e}");
    let e = err("[logging]\nforwrad = \"tcp://logs\"\n");
    assert!(e.contains("forwrad"), "{e}");
    let e = err("[logging]\nforward = \"tcp+tls://logs\"\nca = \"\"\n");
    assert!(
        e.contains("logging.ca: expected a PEM certificate (-----BEGIN ...): empty"),
        "{e}"
    );
}

#[test]
fn metrics_are_off_by_default_and_round_trip() {
    let c = parse("").unwrap();
    assert_eq!(c.metrics.listen, None);
    assert!(!c.metrics.tls);
    assert!(!c.to_toml().unwrap().contains("[metrics]"));
    let c = parse("[metrics]\nlisten = \"0.0.0.0:9101\"\n").unwrap();
    assert_eq!(c.metrics.listen.unwrap().to_string(), "0.0.0.0:9101");
    let text = c.to_toml().unwrap();
    assert!(
        text.contains("[metrics]") && !text.contains("tls"),
        "{text}"
    );
    assert_eq!(parse(&text).unwrap(), c);
    let c = parse(&format!(
        "{}\n[metrics]\nlisten = \"[::]:9101\"\ntls = true\n",
        with_api("")
    ))
    .unwrap();
    assert!(c.metrics.tls);
    assert_eq!(parse(&c.to_toml().unwrap()).unwrap(), c);
}

#[test]
fn metrics_keys_are_checked_and_named() {
    let e = err("[metrics]\nlisten = \"9101\"\n");
    assert!(
        e.starts_with("line 2: metrics.listen: invalid address \"9101\""),
        "{e}"
    );
    let e = err("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    assert!(
        e.contains("line 2: metrics.listen: the port must not be 0"),
        "{e}"
    );
    let e = err("[metrics]\nlisten = \"0.0.0.0:9101\"\ntls = \"yes\"\n");
    assert!(e.contains("metrics.tls"), "{e}");
    let e = err("[metrics]\nlisten = \"0.0.0.0:9101\"\nport = 9101\n");
    assert!(e.contains("port"), "{e}");
    // TLS needs the remote API's CA, and an address.
    let e = err("[metrics]\nlisten = \"0.0.0.0:9101\"\ntls = true\n");
    assert!(
        e.contains("line 3: metrics.tls: needs api.ca: metrics over TLS use the remote API's CA"),
        "{e}"
    );
    let e = err(&format!("{}\n[metrics]\ntls = true\n", with_api("")));
    assert!(e.contains("metrics.tls: needs metrics.listen"), "{e}");
    // Not on the remote API's port.
    let e = err(&format!(
        "{}\n[metrics]\nlisten = \"10.0.0.5:7443\"\n",
        with_api("")
    ));
    assert!(
        e.contains("metrics.listen: 10.0.0.5:7443 is taken by the remote API (api.listen = \"0.0.0.0:7443\")"),
        "{e}"
    );
    // Same port on another address of the node is fine, and without [api] at all.
    parse(&format!(
        "{}listen = \"127.0.0.1:7443\"\n[metrics]\nlisten = \"10.0.0.5:7443\"\n",
        with_api("")
    ))
    .unwrap();
    parse("[metrics]\nlisten = \"0.0.0.0:7443\"\n").unwrap();
}
