//! berth-fleetlock against a real etcd (Debian's etcd-server, on loopback ports) and
//! Berth's real FleetLock client (`berth_updater::fleetlock`), with the reboot recorded
//! instead of performed.
//!
//! * `ten_nodes_two_slots`: a 3-member etcd cluster, two lock servers, 10 nodes that all
//!   want to reboot at once into 2 slots; one etcd member and one lock server are killed
//!   midway. etcd's history of the semaphore key (every revision) proves that no more
//!   than 2 ever held a slot, every node rebooted holding one and released it after.
//! * `wire_and_refusals`: the bytes Berth's client sends, byte for byte the protocol
//!   document's example; a Zincati-style request accepted by the server; the refusals
//!   with airlock's error kinds; airlock's semaphore shared; the holder TTL; the operator
//!   `release` command.
//!
//! etcd must be installed (`scripts/deps.sh`: etcd-server); without it these tests fail.

use berth_updater::fleetlock::{self, Backoff, Client, LockState, Op};
use etcd_client::GetOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "com.coreos.airlock/groups/default/v1/semaphore";

fn etcd_bin() -> PathBuf {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("etcd is not installed: run scripts/deps.sh (Debian package etcd-server)");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Children killed on drop.
struct Procs(Vec<Option<Child>>);

impl Procs {
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.0[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.0.len() {
            self.kill(i);
        }
    }
}

/// An etcd cluster of `n` members on loopback, data in a temporary directory.
struct Etcd {
    procs: Procs,
    urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    async fn start(n: usize) -> Etcd {
        let bin = etcd_bin();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = format!(
            "berth-fleetlock-test-{}-{}",
            std::process::id(),
            free_port()
        );
        let mut procs = Procs(Vec::new());
        let mut urls = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data = dir.path().join(format!("m{i}"));
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
            let child = Command::new(&bin)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(&data)
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args(["--initial-cluster", &cluster.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--logger", "zap"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            procs.0.push(Some(child));
            urls.push(format!("http://127.0.0.1:{client}"));
        }
        let etcd = Etcd {
            procs,
            urls,
            _dir: dir,
        };
        // Every member answers a linearizable read (so the cluster has a leader).
        let deadline = Instant::now() + Duration::from_secs(30);
        for u in &etcd.urls {
            loop {
                let ok = async {
                    let opts = etcd_client::ConnectOptions::new()
                        .with_timeout(Duration::from_secs(1))
                        .with_connect_timeout(Duration::from_secs(1));
                    let mut c = etcd_client::Client::connect([u], Some(opts)).await.ok()?;
                    c.get("probe", None).await.ok()
                }
                .await;
                if ok.is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {u} did not come up; logs in {}",
                    etcd._dir.path().display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        etcd
    }

    /// A client of the members still running.
    async fn client(&self) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new()
            .with_timeout(Duration::from_secs(3))
            .with_connect_timeout(Duration::from_secs(1));
        let live: Vec<&String> = self
            .urls
            .iter()
            .zip(&self.procs.0)
            .filter(|(_, p)| p.is_some())
            .map(|(u, _)| u)
            .collect();
        etcd_client::Client::connect(live, Some(opts))
            .await
            .unwrap()
    }
}

/// Lock servers (the real binary), killed on drop.
struct Servers {
    procs: Procs,
    urls: Vec<String>,
}

async fn start_servers(n: usize, etcd: &[String], extra: &[&str]) -> Servers {
    let mut procs = Procs(Vec::new());
    let mut urls = Vec::new();
    for _ in 0..n {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-fleetlock"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
        for e in etcd {
            cmd.args(["--etcd", e]);
        }
        cmd.args(extra).stdin(Stdio::null());
        procs.0.push(Some(cmd.spawn().unwrap()));
        urls.push(format!("http://127.0.0.1:{port}/"));
    }
    for u in &urls {
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{u}metrics")).await.is_err() {
            assert!(Instant::now() < deadline, "lock server {u} did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Servers { procs, urls }
}

/// Every distinct value the key had, in revision order: (mod revision, holders, slots).
async fn history(etcd: &mut etcd_client::Client, key: &str) -> Vec<(i64, Vec<String>, u64)> {
    let now = etcd
        .get(key, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut out: Vec<(i64, Vec<String>, u64)> = Vec::new();
    for rev in 1..=now {
        let r = etcd
            .get(key, Some(GetOptions::new().with_revision(rev)))
            .await
            .unwrap();
        let Some(kv) = r.kvs().first() else { continue };
        if out.last().is_some_and(|l| l.0 == kv.mod_revision()) {
            continue;
        }
        let sem = berth_fleetlock::semaphore::Semaphore::parse(kv.value())
            .unwrap_or_else(|| panic!("revision {rev}: not a semaphore: {:?}", kv.value_str()));
        out.push((kv.mod_revision(), sem.holders, sem.total_slots));
    }
    out
}

#[derive(Debug, Clone)]
struct Reboot {
    node: usize,
    at: Instant,
    held_in_etcd: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_nodes_two_slots() {
    let started = Instant::now();
    let mut etcd = Etcd::start(3).await;
    let servers = start_servers(2, &etcd.urls, &["--group", "default=2"]).await;
    let servers = Arc::new(Mutex::new(servers));
    let urls = servers.lock().unwrap().urls.clone();
    let reboots = Arc::new(Mutex::new(Vec::<Reboot>::new()));
    let lock_failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let update = berth_config::Update {
        policy: berth_config::UpdatePolicy::Auto,
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for node in 0..10 {
        // Half the nodes list server A first, half server B.
        let mine: Vec<&str> = if node % 2 == 0 {
            vec![&urls[0], &urls[1]]
        } else {
            vec![&urls[1], &urls[0]]
        };
        let id = format!("{node:02}{}", "0".repeat(30));
        let client = Client::new(&mine, &id, "default")
            .unwrap()
            .with_backoff(Backoff {
                first: Duration::from_millis(50),
                max: Duration::from_millis(400),
            });
        let (reboots, update) = (reboots.clone(), update.clone());
        let lock_failures = lock_failures.clone();
        let etcd_urls = etcd.urls.clone();
        tasks.push(tokio::spawn(async move {
            let status = client.new_status();
            let rebooted = Arc::new(Mutex::new(None));
            let r2 = rebooted.clone();
            // The updater's own sequence: lock, window, reboot.
            let d = fleetlock::lock_then_reboot(
                &client,
                &status,
                &update,
                || 1_704_067_200,
                move || *r2.lock().unwrap() = Some(Instant::now()),
            )
            .await;
            assert_eq!(d, berth_updater::RebootDecision::Now);
            assert_eq!(status.lock().unwrap().state, LockState::Held);
            let at = rebooted.lock().unwrap().expect("reboot not called");
            // While "rebooting", etcd lists it as a holder.
            let mut e = etcd_client::Client::connect(&etcd_urls, None)
                .await
                .unwrap();
            let held_in_etcd = loop {
                if let Ok(r) = e.get(KEY, None).await {
                    let s =
                        berth_fleetlock::semaphore::Semaphore::parse(r.kvs()[0].value()).unwrap();
                    break s.holds(client.id());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            reboots.lock().unwrap().push(Reboot {
                node,
                at,
                held_in_etcd,
            });
            if let Some(e) = &status.lock().unwrap().last_error {
                lock_failures.lock().unwrap().push(e.clone());
            }
            // The reboot, and the new boot becoming healthy.
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.release(&status).await;
            assert_eq!(status.lock().unwrap().state, LockState::Released);
        }));
    }
    // Midway (4 reboots done): kill etcd member 0 and lock server A.
    let deadline = Instant::now() + Duration::from_secs(60);
    while reboots.lock().unwrap().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "no progress: {:?}",
            reboots.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    etcd.procs.kill(0);
    servers.lock().unwrap().procs.kill(0);
    let killed_at = Instant::now();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a node did not finish within 60 s")
            .unwrap();
    }
    let reboots = reboots.lock().unwrap().clone();
    assert_eq!(reboots.len(), 10);
    assert!(reboots.iter().all(|r| r.held_in_etcd), "{reboots:?}");
    assert!(
        reboots.iter().filter(|r| r.at > killed_at).count() >= 4,
        "most reboots should come after the kills: {reboots:?}"
    );
    // Contention happened: nodes were refused because the semaphore was full.
    let failures = lock_failures.lock().unwrap().clone();
    assert!(
        failures
            .iter()
            .any(|f| f.contains("failed_lock_semaphore_full")),
        "{failures:?}"
    );

    // etcd's history (through the two surviving members).
    let mut c = etcd.client().await;
    let h = history(&mut c, KEY).await;
    let max = h.iter().map(|(_, holders, _)| holders.len()).max().unwrap();
    assert!(h.iter().all(|(_, _, slots)| *slots == 2));
    assert_eq!(max, 2, "at most 2 holders, and both slots used: {h:?}");
    assert!(h.last().unwrap().1.is_empty(), "everyone released: {h:?}");
    // Each node took a slot exactly once and gave it back exactly once.
    for node in 0..10 {
        let id = format!("{node:02}{}", "0".repeat(30));
        let mut held = false;
        let (mut takes, mut releases) = (0, 0);
        for (_, holders, _) in &h {
            let now = holders.contains(&id);
            if now && !held {
                takes += 1;
            }
            if !now && held {
                releases += 1;
            }
            held = now;
        }
        assert_eq!((takes, releases), (1, 1), "node {node}: {h:?}");
    }
    // Reboots never overlapped beyond two at once by the clients' own records either:
    // for each reboot, the nodes that rebooted within the hold time before it.
    let mut ats: Vec<_> = reboots.iter().map(|r| (r.at, r.node)).collect();
    ats.sort();
    for w in ats.windows(3) {
        assert!(
            w[2].0.duration_since(w[0].0) >= Duration::from_millis(250),
            "three reboots within one hold time: {ats:?}"
        );
    }
    eprintln!(
        "10 nodes, 2 slots, {} semaphore revisions, max holders {max}; {:.1} s",
        h.len(),
        started.elapsed().as_secs_f64()
    );

    // etcd loses quorum (a second member of three killed): a node asking for the lock
    // gets failed_lock and waits; it does not reboot.
    etcd.procs.kill(1);
    let client = Client::new(&[&urls[1]], "quorum-test", "default")
        .unwrap()
        .with_backoff(Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(200),
        });
    let status = client.new_status();
    let rebooted = Arc::new(Mutex::new(false));
    let r2 = rebooted.clone();
    let waited = tokio::time::timeout(
        Duration::from_secs(8),
        fleetlock::lock_then_reboot(
            &client,
            &status,
            &update,
            || 1_704_067_200,
            move || *r2.lock().unwrap() = true,
        ),
    )
    .await;
    assert!(waited.is_err(), "lock_then_reboot returned without quorum");
    assert!(!*rebooted.lock().unwrap(), "rebooted without the lock");
    let s = status.lock().unwrap().clone();
    assert_eq!(s.state, LockState::WaitingForLock);
    assert!(s.tries >= 1, "{s:?}");
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("failed_lock"),
        "{s:?}"
    );
    assert!(s
        .describe()
        .starts_with("waiting for the fleet lock (group default, "));
    eprintln!(
        "without quorum: {} tries in 8 s, last: {:?}",
        s.tries, s.last_error
    );
}

/// What one HTTP exchange carried (a tiny server that answers one canned reply).
fn capture_one(
    status: &'static str,
    extra: &'static str,
    body: &'static str,
) -> (String, std::thread::JoinHandle<(String, Vec<u8>)>) {
    let reply = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        (&s).write_all(reply.as_bytes()).unwrap();
        (head, body)
    });
    (url, h)
}

/// A raw HTTP/1.1 POST; (status, body).
fn raw_post(url: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_and_refusals() {
    // The doc's example body, as Zincati sends it (pretty-printed).
    const DOC_BODY: &str = "{\n  \"client_params\": {\n    \"group\": \"default\",\n    \"id\": \"c988d2509fdf5cdcbed39037c56406fb\"\n  }\n}";

    // 1. What Berth's client puts on the wire.
    let (url, h) = capture_one("200 OK", "", "");
    let c = Client::new(&[&url], "c988d2509fdf5cdcbed39037c56406fb", "default").unwrap();
    c.try_once(Op::PreReboot, 0).await.unwrap();
    let (head, body) = h.join().unwrap();
    assert!(
        head.starts_with("POST /v1/pre-reboot HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nfleet-lock-protocol: true\r\n"),
        "{head}"
    );
    assert_eq!(String::from_utf8(body).unwrap(), DOC_BODY);
    // A FleetLock error body is reported with its kind; anything else as generic_http_N.
    let (url, h) = capture_one(
        "500 Internal Server Error",
        "Content-Type: application/json\r\n",
        r#"{"kind":"failed_lock_semaphore_full","value":"all slots are held"}"#,
    );
    let c = Client::new(&[&url], "n", "default").unwrap();
    let e = c.try_once(Op::PreReboot, 0).await.unwrap_err().to_string();
    assert!(
        e.contains("HTTP 500, failed_lock_semaphore_full): all slots are held"),
        "{e}"
    );
    h.join().unwrap();
    let (url, h) = capture_one("302 Found", "Location: http://127.0.0.1:9/\r\n", "");
    let c = Client::new(&[&url], "n", "default").unwrap();
    let e = c
        .try_once(Op::SteadyState, 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("HTTP 302, generic_http_302"),
        "a redirect is not followed: {e}"
    );
    h.join().unwrap();

    // No server answers: the node waits, retrying, and never reboots.
    let nobody = format!("http://127.0.0.1:{}/", free_port());
    let c = Client::new(&[&nobody], "n", "default")
        .unwrap()
        .with_backoff(Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(50),
        });
    let st = c.new_status();
    let update = berth_config::Update {
        policy: berth_config::UpdatePolicy::Auto,
        ..Default::default()
    };
    let r = tokio::time::timeout(
        Duration::from_millis(800),
        fleetlock::lock_then_reboot(&c, &st, &update, || 0, || panic!("rebooted unlocked")),
    )
    .await;
    assert!(r.is_err());
    let s = st.lock().unwrap().clone();
    assert!(
        s.tries >= 3 && s.state == LockState::WaitingForLock,
        "{s:?}"
    );

    // 2. The server, on a one-member etcd.
    let etcd = Etcd::start(1).await;
    let mut e = etcd.client().await;
    let servers = start_servers(
        1,
        &etcd.urls,
        &[
            "--group",
            "default=1",
            "--group",
            "ttl=1",
            "--holder-ttl",
            "2",
        ],
    )
    .await;
    let srv = &servers.urls[0];
    let hdr = "fleet-lock-protocol: true\r\n";
    // Zincati's request (the doc's body, pretty-printed, no content type) is accepted.
    assert_eq!(
        raw_post(srv, "/v1/pre-reboot", hdr, DOC_BODY),
        (200, String::new())
    );
    let v = e.get(KEY, None).await.unwrap();
    assert_eq!(
        v.kvs()[0].value_str().unwrap(),
        r#"{"total_slots":1,"holders":["c988d2509fdf5cdcbed39037c56406fb"]}"#
    );
    // Recursive: again is fine.
    assert_eq!(raw_post(srv, "/v1/pre-reboot", hdr, DOC_BODY).0, 200);
    // Refusals, with airlock's kinds and codes.
    let other = r#"{"client_params":{"group":"default","id":"other"}}"#;
    let (st, body) = raw_post(srv, "/v1/pre-reboot", hdr, other);
    assert_eq!(st, 500);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["kind"], "failed_lock_semaphore_full", "{body}");
    assert!(err["value"]
        .as_str()
        .unwrap()
        .contains("c988d2509fdf5cdcbed39037c56406fb"));
    for (headers, body, status, kind) in [
        ("", DOC_BODY, 400, "invalid_client_identity"),
        (
            "fleet-lock-protocol: false\r\n",
            DOC_BODY,
            400,
            "invalid_client_identity",
        ),
        (
            hdr,
            "{\"client_params\":{\"group\":\"default\",\"node_uuid\":\"x\"}}",
            400,
            "invalid_client_identity",
        ),
        (
            hdr,
            "{\"client_params\":{\"group\":\"nope\",\"id\":\"x\"}}",
            400,
            "unknown_group",
        ),
        (hdr, "\u{0}\u{1}garbage", 400, "invalid_client_identity"),
    ] {
        let (st, b) = raw_post(srv, "/v1/pre-reboot", headers, body);
        assert_eq!(st, status, "{headers:?} {body:?}: {b}");
        let v: serde_json::Value =
            serde_json::from_str(&b).unwrap_or_else(|_| panic!("not JSON: {b}"));
        assert_eq!(v["kind"], kind, "{b}");
        assert!(!v["value"].as_str().unwrap().is_empty());
    }
    // A body over the limit is refused before it is read whole.
    let big = "x".repeat(berth_fleetlock::server::MAX_BODY + 1);
    assert_eq!(raw_post(srv, "/v1/pre-reboot", hdr, &big).0, 413);
    // Without the header, nothing changed in etcd.
    let (st, _) = raw_post(srv, "/v1/steady-state", "", DOC_BODY);
    assert_eq!(st, 400);
    assert!(e.get(KEY, None).await.unwrap().kvs()[0]
        .value_str()
        .unwrap()
        .contains("c988"));
    // /metrics lists the holder.
    let m = reqwest::get(format!("{srv}metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("berth_fleetlock_semaphore_holders{group=\"default\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "berth_fleetlock_holder{group=\"default\",id=\"c988d2509fdf5cdcbed39037c56406fb\"} 1"
        ),
        "{m}"
    );
    assert!(m.contains("berth_fleetlock_etcd_up 1"), "{m}");
    // steady-state releases; releasing again is fine.
    assert_eq!(raw_post(srv, "/v1/steady-state", hdr, DOC_BODY).0, 200);
    assert_eq!(raw_post(srv, "/v1/steady-state", hdr, DOC_BODY).0, 200);
    assert_eq!(
        e.get(KEY, None).await.unwrap().kvs()[0]
            .value_str()
            .unwrap(),
        r#"{"total_slots":1,"holders":[]}"#
    );

    // 3. A semaphore written by airlock is shared: its holder blocks ours, and is freed
    //    by the operator's release command.
    e.put(KEY, r#"{"total_slots":1,"holders":["airlock-node"]}"#, None)
        .await
        .unwrap();
    let c = Client::new(&[srv], "berth-node", "default").unwrap();
    let err = c.try_once(Op::PreReboot, 0).await.unwrap_err().to_string();
    assert!(
        err.contains("failed_lock_semaphore_full") && err.contains("airlock-node"),
        "{err}"
    );
    let release = |group: &str, id: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-fleetlock"));
        cmd.args([
            "release",
            "--etcd",
            &etcd.urls[0],
            "--group",
            group,
            "--id",
            id,
        ]);
        cmd.output().unwrap()
    };
    let out = release("default", "airlock-node");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("released: airlock-node"));
    let out = release("default", "airlock-node");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no slot"),
        "{out:?}"
    );
    let out = release("no-such-group", "x");
    assert!(!out.status.success());
    c.try_once(Op::PreReboot, 0).await.unwrap();
    c.try_once(Op::SteadyState, 0).await.unwrap();

    // 4. Holder TTL (2 s, group "ttl"): a holder that never comes back loses its slot;
    //    airlock's semaphore key is untouched in form, the side keys sit beside it.
    let dead = Client::new(&[srv], "dead-node", "ttl").unwrap();
    dead.try_once(Op::PreReboot, 0).await.unwrap();
    let alive = Client::new(&[srv], "live-node", "ttl").unwrap();
    let err = alive
        .try_once(Op::PreReboot, 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("failed_lock_semaphore_full"), "{err}");
    let side = e
        .get(
            "com.coreos.airlock/groups/ttl/v1/berth/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    let keys: Vec<_> = side
        .kvs()
        .iter()
        .map(|k| k.key_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "com.coreos.airlock/groups/ttl/v1/berth/alive/dead-node",
            "com.coreos.airlock/groups/ttl/v1/berth/ttl/dead-node"
        ]
    );
    let t = Instant::now();
    let status = alive.clone().with_backoff(Backoff {
        first: Duration::from_millis(200),
        max: Duration::from_millis(500),
    });
    let st = status.new_status();
    tokio::time::timeout(Duration::from_secs(15), status.acquire(&st))
        .await
        .expect("the expired holder was never freed");
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "freed too early: {:?}",
        t.elapsed()
    );
    let v = e
        .get("com.coreos.airlock/groups/ttl/v1/semaphore", None)
        .await
        .unwrap();
    assert_eq!(
        v.kvs()[0].value_str().unwrap(),
        r#"{"total_slots":1,"holders":["live-node"]}"#
    );
    drop(servers);
}
