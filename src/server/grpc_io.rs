//! The gRPC listener's connections.
//!
//! h2 (0.4) does not copy a DATA frame of 256 bytes or more into its write buffer when the
//! socket reports vectored writes: it chains the frame and must flush before it can buffer
//! the next one. A `CheckResponse` carrying the identity JWT is ~700 bytes, so with a plain
//! `TcpStream` every answer costs its own `writev`, even when Envoy has many Checks in
//! flight on the connection. Reporting no vectored writes makes h2 copy frames under 1 KiB
//! into its 16 KiB buffer, so answers that are ready together leave in one write
//! (measured in BENCHMARKS.md: 1.88 → 0.86 writes per Check under load).

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpIncoming};

/// A TCP connection that tells h2 it has no vectored writes (see the module docs).
pub struct Coalescing(TcpStream);

/// The accepted connections of `listener`, with `TCP_NODELAY` (a Check answer must not
/// wait for Nagle) and coalesced writes, ready for `serve_with_incoming_shutdown`.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<Coalescing>> {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|conn| conn.map(Coalescing))
}

impl AsyncRead for Coalescing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalescing {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    // Still correct if a caller ignores `is_write_vectored`; h2 does not.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connected for Coalescing {
    type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_hide_vectored_writes_and_carry_bytes_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming(listener));
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut server = accepted.next().await.unwrap().unwrap();

        assert!(!server.is_write_vectored());
        assert!(server.0.nodelay().unwrap());
        assert_eq!(server.connect_info().local_addr(), Some(addr));

        client.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
    }
}
