//! The D-Bus API without a VM or a bus: sysd's server and osctl's proxy over a socket pair.

use berth_api::ManagerProxy;

/// osctl's side of a socket pair.
async fn client(end: tokio::net::UnixStream) -> (zbus::Connection, ManagerProxy<'static>) {
    let conn = zbus::connection::Builder::unix_stream(end)
        .p2p()
        .build()
        .await
        .unwrap();
    let m = ManagerProxy::new(&conn).await.unwrap();
    (conn, m)
}

/// The API alone: no containers, node or updates behind it.
fn bare(sysd_start: u32) -> berth_sysd::api::Manager {
    berth_sysd::api::Manager {
        sysd_start,
        containers: None,
        node: None,
        updates: None,
        exec: Default::default(),
        owner: String::new(),
        caller: Default::default(),
        audit: None,
        remote: None,
    }
}

#[tokio::test]
async fn status_over_a_socket_pair() {
    let (server_end, client_end) = tokio::net::UnixStream::pair().unwrap();
    let server = tokio::spawn(berth_sysd::api::serve_connection(server_end, bare(7)));
    let (conn, m) = client(client_end).await;
    let st = m.status().await.unwrap();
    assert_eq!(st.sysd_starts, 7);
    assert_eq!(st.sysd_pid, std::process::id());
    // The arch crosses the wire (it is part of the Status signature).
    assert!(st.arch == "x86_64" || st.arch == "arm64", "{:?}", st.arch);
    // On a development host there is no Berth os-release: reported, not hidden.
    if !std::path::Path::new(berth_api::OS_RELEASE_PATH).exists() {
        assert!(
            st.warnings.iter().any(|w| w.contains("os-release")),
            "{:?}",
            st.warnings
        );
    }
    // The peer going away ends the server task cleanly.
    drop(m);
    drop(conn);
    let res = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("server did not notice the peer leaving");
    assert!(res.unwrap().is_ok());
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_handshake_timeout() {
    let (server_end, _client_end) = tokio::net::UnixStream::pair().unwrap();
    tokio::time::pause();
    let server = tokio::spawn(berth_sysd::api::serve_connection(server_end, bare(1)));
    tokio::time::advance(berth_sysd::api::HANDSHAKE_TIMEOUT + std::time::Duration::from_secs(1))
        .await;
    let res = server.await.unwrap();
    assert!(
        res.is_err(),
        "a peer that never authenticates must be dropped"
    );
}

#[tokio::test]
async fn exec_session_errors_are_typed() {
    let (server_end, client_end) = tokio::net::UnixStream::pair().unwrap();
    tokio::spawn(berth_sysd::api::serve_connection(server_end, bare(1)));
    let (_conn, m) = client(client_end).await;
    use berth_api::ManagerError;
    // A bad session id is refused before anything starts.
    let e = m
        .exec_start("no/slash", "admin", &["sh".into()], true, 24, 80)
        .await;
    assert!(matches!(e, Err(ManagerError::Invalid(_))), "{e:?}");
    // Without containers there is nothing to exec in: a failure, not a hang.
    let e = m
        .exec_start("s1", "admin", &["sh".into()], true, 24, 80)
        .await;
    assert!(
        matches!(&e, Err(ManagerError::Failed(m)) if m.contains("not managed")),
        "{e:?}"
    );
    // Sessions that do not exist.
    for e in [
        m.exec_wait("s1").await.map(drop),
        m.exec_input("s1", b"x").await,
        m.exec_resize("s1", 1, 1).await,
    ] {
        assert!(matches!(e, Err(ManagerError::NotFound(_))), "{e:?}");
    }
}
