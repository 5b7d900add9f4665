//! The accept loop: one task per connection, HTTP/1.1 and HTTP/2 (h2c prior knowledge) on the
//! same port, and graceful shutdown with a stated deadline.
//!
//! A connection's error stays in its own task; an accept error (EMFILE, say) is logged and the
//! loop goes on after a short pause, never exits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::proxy::{self, State};

mod peer;
pub use peer::Peer;

type ServerBuilder = auto::Builder<TokioExecutor>;

/// Serves until `shutdown` completes, then stops accepting and gives open connections
/// `deadline` to finish their requests (whose sessions are saved as usual).
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
    deadline: Duration,
) {
    let mut builder = ServerBuilder::new(TokioExecutor::new());
    // Slowloris guard: a client gets 30 s to send its request head.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    let peer = Peer::plain(remote);
                    let service = service_fn(move |req| proxy::handle(state.clone(), peer.clone(), req));
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        if let Err(error) = conn.await {
                            tracing::debug!(%error, %remote, "connection closed with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(deadline = ?deadline, "shutting down: no new connections; waiting for open requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(deadline) => tracing::warn!("shutdown deadline passed; closing the remaining connections"),
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
