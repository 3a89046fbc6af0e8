//! The accept loop: TCP connections in, TLS streams out.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::auth::tls;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and completes TLS handshakes concurrently, so a
/// slow or hostile client cannot hold up the others.
///
/// At most `max_handshakes` handshakes run at once, each for at most
/// `HANDSHAKE_TIMEOUT`: connections that never finish theirs would
/// otherwise hold a task and a socket each, without bound. Past the cap the
/// loop stops accepting until a handshake ends, and new connections wait in
/// the kernel's listen queue rather than being closed: a client then gets
/// in as soon as a slot frees (within the timeout at worst) instead of
/// being refused and retrying, and the queue is bounded by the kernel.
pub(super) fn accept_loop(
    listener: TcpListener,
    tls: Arc<tls::ServerTls>,
    incoming: mpsc::Sender<TlsStream<TcpStream>>,
    max_handshakes: usize,
) -> tokio::task::JoinHandle<()> {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(max_handshakes));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                // The semaphore is never closed.
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            // Each handshake uses the configuration of now, so reloaded
            // certificates and CRLs apply to every new connection.
            let acceptor = TlsAcceptor::from(tls.config());
            let incoming = incoming.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                // The slot frees when the handshake ends, before the
                // connection waits to be served.
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = incoming.send(stream).await;
                    }
                    Ok(Err(err)) => tracing::info!(%peer, error = %err, "tls handshake refused"),
                    Err(_) => tracing::info!(%peer, "tls handshake timed out"),
                }
            });
        }
    })
}
