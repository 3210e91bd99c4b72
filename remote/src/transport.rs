//! zbus over any byte stream: a TLS stream in Berth's case.
//!
//! zbus knows Unix and TCP sockets; a TLS stream is neither, so it gets the two halves of
//! [`zbus::connection::socket::Socket`] here. Authentication is `ANONYMOUS` on both
//! sides: the TLS layer has authenticated the peer, and D-Bus `EXTERNAL` needs Unix
//! credentials a TCP peer does not have.

use std::io;
#[cfg(unix)]
use std::os::fd::{BorrowedFd, OwnedFd};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zbus::connection::socket::{BoxedSplit, ReadHalf, Split, WriteHalf};
use zbus::AuthMechanism;

/// A zbus socket over `stream`. Use it with `zbus::connection::Builder::socket(..).p2p()`
/// and `auth_mechanism(AuthMechanism::Anonymous)` on both sides (plus `server(guid)` on the
/// node).
pub fn zbus_socket<S>(stream: S) -> BoxedSplit
where
    S: AsyncRead + AsyncWrite + Send + Sync + Unpin + std::fmt::Debug + 'static,
{
    let (r, w) = tokio::io::split(stream);
    Split::new(
        Box::new(Reader(r)) as Box<dyn ReadHalf>,
        Box::new(Writer(w)) as Box<dyn WriteHalf>,
    )
}

/// The I/O error inside a zbus error, if the failure was one (a refused TLS handshake shows
/// up in TLS 1.3 as an error on the client's first read: explain it with
/// [`crate::tls::explain_handshake_error`]).
pub fn io_error(e: &zbus::Error) -> Option<&io::Error> {
    match e {
        zbus::Error::InputOutput(io) => Some(io),
        _ => None,
    }
}

#[derive(Debug)]
struct Reader<S>(tokio::io::ReadHalf<S>);

#[derive(Debug)]
struct Writer<S>(tokio::io::WriteHalf<S>);

#[async_trait::async_trait]
impl<S> ReadHalf for Reader<S>
where
    S: AsyncRead + AsyncWrite + Send + Sync + Unpin + std::fmt::Debug + 'static,
{
    #[cfg(unix)]
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        Ok((self.0.read(buf).await?, Vec::new()))
    }

    #[cfg(not(unix))]
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }

    fn auth_mechanism(&self) -> AuthMechanism {
        AuthMechanism::Anonymous
    }
}

#[async_trait::async_trait]
impl<S> WriteHalf for Writer<S>
where
    S: AsyncRead + AsyncWrite + Send + Sync + Unpin + std::fmt::Debug + 'static,
{
    async fn send_message(&mut self, msg: &zbus::Message) -> zbus::Result<()> {
        let data = msg.data();
        #[cfg(unix)]
        if !data.fds().is_empty() {
            return Err(no_fds().into());
        }
        self.0.write_all(data).await?;
        // TLS buffers records: without a flush the message may sit in the session.
        self.0.flush().await?;
        Ok(())
    }

    async fn sendmsg(
        &mut self,
        buf: &[u8],
        #[cfg(unix)] fds: &[BorrowedFd<'_>],
    ) -> io::Result<usize> {
        #[cfg(unix)]
        if !fds.is_empty() {
            return Err(no_fds());
        }
        self.0.write_all(buf).await?;
        self.0.flush().await?;
        Ok(buf.len())
    }

    async fn close(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

#[cfg(unix)]
fn no_fds() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "file descriptors cannot be passed over a network connection",
    )
}
