//! Health checks: TCP connect and HTTP GET from the host side; `exec` runs inside the
//! container through the runtime (see `Manager::exec_capture`).

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Health as `osctl ps` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No check defined.
    None,
    /// Checks have not passed yet (or the start period runs).
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::None => "none",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Connect to `addr` (`host:port`) within `timeout`.
pub async fn tcp(addr: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
        Err(_) => Err(format!("connect {addr}: timed out")),
    }
}

/// Split `http://host:port/path` into (`host:port`, `host`, `/path`).
pub fn split_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are checked"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let host = hostport
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(hostport)
        .to_string();
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok((addr, host, path.to_string()))
}

/// The status code of an HTTP/1.x status line.
pub fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut it = line.split_whitespace();
    if !it.next()?.starts_with("HTTP/1.") {
        return None;
    }
    it.next()?.parse().ok()
}

/// GET `url`; healthy on 2xx or 3xx.
pub async fn http(url: &str, timeout: Duration) -> Result<(), String> {
    let (addr, host, path) = split_url(url)?;
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: berth-sysd\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut head = vec![0u8; 512];
        let mut n = 0;
        while n < head.len() && !head[..n].contains(&b'\n') {
            let m = s
                .read(&mut head[n..])
                .await
                .map_err(|e| format!("read from {addr}: {e}"))?;
            if m == 0 {
                break;
            }
            n += m;
        }
        match status_code(&head[..n]) {
            Some(c) if (200..400).contains(&c) => Ok(()),
            Some(c) => Err(format!("{url} answered {c}")),
            None => Err(format!("{url}: not an HTTP answer")),
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("{url}: timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/health").unwrap(),
            (
                "127.0.0.1:8080".into(),
                "127.0.0.1".into(),
                "/health".into()
            )
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost:80".into(), "localhost".into(), "/".into())
        );
        assert!(split_url("https://x/").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 500 oops\r\n"), Some(500));
        assert_eq!(status_code(b"SSH-2.0\r\n"), None);
    }

    #[tokio::test]
    async fn http_and_tcp_against_a_local_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for code in ["200 OK", "503 Unavailable"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 256];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(format!("HTTP/1.0 {code}\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let url = format!("http://{addr}/h");
        http(&url, Duration::from_secs(5)).await.unwrap();
        let e = http(&url, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.contains("503"), "{e}");
        assert!(tcp("127.0.0.1:1", Duration::from_secs(2)).await.is_err());
    }
}
