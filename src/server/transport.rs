//! One socket write per turn of an HTTP/2 connection rather than one per
//! large message.
//!
//! h2 keeps at most one DATA frame of 256 bytes or more queued: before it
//! takes the next frame it writes that one, with everything before it, and
//! flushes the connection (hyperium/h2#902). Every answer with a message of
//! that size so cost its own socket write, TLS record and TCP segment, and
//! the client a wake-up: at GetTool 64, 1.76 `writev` per call against 0.9
//! for Health, whose small answers h2 copies together. Such a write comes
//! as a vectored write of the frames before it and the frame's payload,
//! and h2 goes on taking frames right after its flush; the flush that ends
//! a turn follows a plain write or none. So this layer holds what it is
//! given at a flush that directly follows a vectored write, and sends it
//! all at the next flush, which h2 makes before the turn ends. Past
//! `HIGH_WATER` (full-sync pages) writes go out at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Bytes held before a write or flush sends them without waiting.
const HIGH_WATER: usize = 64 * 1024;
/// A buffer grown past this by a burst is given back once it is sent, so
/// an idle connection keeps no more than h2's own 16 KiB buffer. (Writes
/// never hold more than `HIGH_WATER`, so a bound at or above twice that
/// would never apply.)
const KEEP_CAPACITY: usize = 16 * 1024;

pub struct BatchedWrites<T> {
    io: T,
    /// Hold writes at all: only on HTTP/2 connections (see `new`).
    hold: bool,
    held: Vec<u8>,
    /// The prefix of `held` already handed to `io`.
    sent: usize,
    /// The last write was h2's write of a queued large DATA frame.
    large_frame: bool,
    /// The last send found the socket full; its waker is set.
    blocked: bool,
}

impl<T> BatchedWrites<T> {
    /// `hold` only for connections that negotiated HTTP/2, whose writer
    /// is h2; HTTP/1.1 (gRPC-Web) connections write straight through.
    pub fn new(io: T, hold: bool) -> Self {
        Self {
            io,
            hold,
            held: Vec::new(),
            sent: 0,
            large_frame: false,
            blocked: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> BatchedWrites<T> {
    /// Hands everything held to `io` and flushes it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let written = Pin::new(&mut self.io).poll_write(cx, &self.held[self.sent..]);
            self.blocked = written.is_pending();
            let n = ready!(written)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        if self.held.capacity() > KEEP_CAPACITY {
            self.held = Vec::new();
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Makes room before more is held: past `HIGH_WATER` the caller waits
    /// for the socket, as it would without this layer.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.len() >= HIGH_WATER {
            ready!(self.poll_send(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for BatchedWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.held.is_empty() {
            // A send the socket held up (`blocked`) resumes here, at the
            // start of the next turn; Pending leaves it held with the
            // socket's waker set, and reading goes on meanwhile.
            if let Poll::Ready(Err(err)) = this.poll_send(cx) {
                return Poll::Ready(Err(err));
            }
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.hold {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        ready!(this.poll_room(cx))?;
        this.large_frame = false;
        let n = buf.len().min(HIGH_WATER - this.held.len());
        this.held.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.hold {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        ready!(this.poll_room(cx))?;
        this.large_frame = bufs.iter().filter(|buf| !buf.is_empty()).count() > 1;
        let mut n = 0;
        for buf in bufs {
            let take = buf.len().min(HIGH_WATER - this.held.len());
            this.held.extend_from_slice(&buf[..take]);
            n += take;
            if take < buf.len() {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.hold || self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.large_frame) && this.held.len() < HIGH_WATER && !this.blocked {
            return Poll::Ready(Ok(()));
        }
        this.poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for BatchedWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    fn pair(hold: bool) -> (BatchedWrites<DuplexStream>, DuplexStream) {
        let (ours, peer) = duplex(1 << 20);
        (BatchedWrites::new(ours, hold), peer)
    }

    /// What the peer can read now, without waiting.
    fn readable(peer: &mut DuplexStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(Ok(n)) = peer.read(&mut buf).now_or_never() {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// h2 writing a queued large DATA frame: the frames before it, then
    /// its payload.
    async fn large_frame(io: &mut BatchedWrites<DuplexStream>, head: &[u8], payload: &[u8]) {
        let written = io
            .write_vectored(&[IoSlice::new(head), IoSlice::new(payload)])
            .await
            .unwrap();
        assert_eq!(written, head.len() + payload.len());
        io.flush().await.unwrap();
    }

    #[tokio::test]
    async fn a_turn_of_large_frames_leaves_at_its_last_flush() {
        let (mut io, mut peer) = pair(true);
        large_frame(&mut io, b"h1", &[1; 300]).await;
        large_frame(&mut io, b"t1h2", &[2; 300]).await;
        assert!(
            readable(&mut peer).is_empty(),
            "held at h2's mid-turn flushes"
        );

        io.write_all(b"t2").await.unwrap();
        io.flush().await.unwrap();
        let mut expected = b"h1".to_vec();
        expected.extend([1; 300]);
        expected.extend(b"t1h2");
        expected.extend([2; 300]);
        expected.extend(b"t2");
        assert_eq!(readable(&mut peer), expected);
    }

    #[tokio::test]
    async fn a_turn_ending_with_a_large_frame_leaves_at_the_flush_after_it() {
        let (mut io, mut peer) = pair(true);
        large_frame(&mut io, b"h", &[7; 400]).await;
        assert!(readable(&mut peer).is_empty());
        // h2 ends every turn with a flush of its own.
        io.flush().await.unwrap();
        assert_eq!(readable(&mut peer).len(), 401);
    }

    #[tokio::test]
    async fn held_writes_leave_before_a_read_and_at_shutdown() {
        let (mut io, mut peer) = pair(true);
        large_frame(&mut io, b"h", &[3; 300]).await;
        peer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(readable(&mut peer).len(), 301);

        large_frame(&mut io, b"h", &[4; 300]).await;
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 301);
    }

    #[tokio::test]
    async fn past_high_water_writes_leave_at_once() {
        let (mut io, mut peer) = pair(true);
        let payload = vec![5; HIGH_WATER];
        let taken = io
            .write_vectored(&[IoSlice::new(b"h"), IoSlice::new(&payload)])
            .await
            .unwrap();
        assert_eq!(taken, HIGH_WATER, "no more than HIGH_WATER is held");
        io.flush().await.unwrap();
        assert_eq!(readable(&mut peer).len(), HIGH_WATER);
    }

    #[tokio::test]
    async fn http1_connections_write_straight_through() {
        let (mut io, mut peer) = pair(false);
        let written = io
            .write_vectored(&[IoSlice::new(b"h"), IoSlice::new(&[6; 300])])
            .await
            .unwrap();
        assert_eq!(written, 301);
        io.flush().await.unwrap();
        assert_eq!(readable(&mut peer).len(), 301);
    }

    /// h2 as the hub runs it, answers with large messages among them:
    /// every answer arrives while the client sends nothing more. A turn of
    /// h2's that ended on a held write would leave it waiting for the peer.
    #[tokio::test]
    async fn h2_answers_leave_without_waiting_for_the_peer() {
        let (server_io, client_io) = duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut connection = h2::server::handshake(BatchedWrites::new(server_io, true))
                .await
                .unwrap();
            while let Some(request) = connection.accept().await {
                let (_, mut respond) = request.unwrap();
                tokio::spawn(async move {
                    let mut send = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap();
                    send.send_data(bytes::Bytes::from(vec![9u8; 1500]), false)
                        .unwrap();
                    send.send_trailers(http::HeaderMap::new()).unwrap();
                });
            }
        });
        let (client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let answers = (0..32).map(|_| {
            let client = client.clone();
            async move {
                let mut client = client.ready().await.unwrap();
                let request = http::Request::builder()
                    .uri("https://hub/copex.v1.ToolService/GetTool")
                    .body(())
                    .unwrap();
                let (response, _) = client.send_request(request, true).unwrap();
                let mut body = response.await.unwrap().into_body();
                let mut received = 0;
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    received += chunk.len();
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                body.trailers().await.unwrap();
                received
            }
        });
        let received = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            futures_util::future::join_all(answers),
        )
        .await
        .expect("every answer arrives");
        assert_eq!(received, vec![1500; 32]);
        server.abort();
    }
}
