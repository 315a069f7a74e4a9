//! Driving one probe's TLS client handshake over a connected socket, and
//! stopping as soon as the client has judged the server.
//!
//! A probe only needs the server's side of the handshake: its chain, the
//! signature that proves it holds the key (CertificateVerify on TLS 1.3,
//! ServerKeyExchange on TLS 1.2) and its Finished, which binds both to this
//! handshake. On TLS 1.3 all of that arrives in the server's first flight,
//! before the client's Finished is due; sending the client's Finished would
//! only make the server check it and mint session tickets for a
//! connection that is about to be reset. So the loop sends what the
//! handshake needs while it is in progress and nothing after: what rustls
//! has queued once it is complete stays unsent (the caller resets the
//! connection), unless the caller asks for it: `probe::Ending::Polite`,
//! for servers that log a connection ended inside the handshake as a
//! failure. On TLS 1.2 the client's Finished comes before the server's, so
//! it is sent, as any client would.

use std::io;

use rustls::ClientConnection;
use tokio::net::TcpStream;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed, or closed before the handshake completed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer's messages were refused (a verifier's verdict, a bad
    /// signature, an alert from the server).
    #[error("{0}")]
    Tls(#[from] rustls::Error),
}

/// Run `conn`'s handshake over `tcp` until the client side is complete;
/// with `flush`, then send what the client has queued after it too (its
/// Finished on TLS 1.3), for a server that would log the connection as a
/// failed handshake otherwise (`probe::Ending::Polite`). The caller bounds
/// it in time.
pub async fn complete(
    conn: &mut ClientConnection,
    tcp: &TcpStream,
    flush: bool,
) -> Result<(), HandshakeError> {
    while conn.is_handshaking() {
        send(conn, tcp).await?;
        tcp.readable().await?;
        match conn.read_tls(&mut Socket(tcp)) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the handshake",
                )
                .into());
            }
            Ok(_) => {}
            // A spurious wake-up; tokio has cleared the readiness.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the server why, as far as the socket takes it now; the
            // verdict stands whatever happens to the alert.
            let _ = conn.write_tls(&mut Socket(tcp));
            return Err(e.into());
        }
    }
    if flush {
        send(conn, tcp).await?;
    }
    Ok(())
}

/// Write everything `conn` has queued.
async fn send(conn: &mut ClientConnection, tcp: &TcpStream) -> Result<(), HandshakeError> {
    while conn.wants_write() {
        match conn.write_tls(&mut Socket(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Blocking-style reads and writes on the non-blocking socket, as rustls's
/// `read_tls` / `write_tls` want them: `WouldBlock` means "wait for
/// readiness", which [`complete`] does.
struct Socket<'a>(&'a TcpStream);

impl io::Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
