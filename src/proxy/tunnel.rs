//! The upgrade path (RFC 9110 §7.8: WebSocket, or any HTTP/1.1 `Upgrade`). The handshake is an
//! ordinary request for the pipeline: session headers to the app, the app's instructions in its
//! 101 carried out, the cookie on the 101. Then the two connections are joined and bytes are
//! copied both ways, untouched, until either side closes.
//!
//! Architecture invariant: the tunnel never reads, parses or changes a byte. Whatever the app
//! learns on the socket it must put into the session on a later ordinary request. The session
//! work after the 101 is only this: a tunnel opened under a stored session is entered in
//! `sockets::Sockets` under its handle, notes that bytes moved (activity, touched by the
//! registry), and is closed, both sides, when that session ends.
//!
//! The tunnel runs in the connection task that served the handshake (`downstream` takes it out
//! of the response's extensions), so it holds its connection slot (`limits.max_connections`)
//! and is drained at shutdown like a request in flight.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::time::Instant;

use super::sockets::{Activity, Registration, Sockets};
use super::{ProxyBody, full};
use crate::http::keep_upgrade;
use crate::metrics::Metrics;
use crate::outcome::Ended;
use crate::session::Handle;
use crate::store::Record;
use crate::upstream::ResponseBody;

/// How long a tunnel closed for its session's end waits for each side's FIN to go out.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);

/// The session a tunnel was opened under, to enter it in the registry when it starts.
#[derive(Clone)]
pub(super) struct Under {
    pub(super) sockets: Arc<Sockets>,
    pub(super) handle: Handle,
    /// The record the handshake left.
    pub(super) record: Record,
}

/// The two halves of an agreed upgrade, handed from the pipeline to the connection task in the
/// 101's extensions (hence `Clone`: `OnUpgrade` is a shared handle, and only one clone is run).
#[derive(Clone)]
pub struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    metrics: Arc<Metrics>,
    /// `None` for a tunnel with no stored session: nothing can end it but its sides.
    under: Option<Under>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").field("idle", &self.idle).finish()
    }
}

/// The 101 the client gets: the app's (already filtered and with the session cookie), with
/// `Connection: upgrade` and the agreed `Upgrade` put back, no body, and the tunnel attached.
pub(super) fn switch(
    resp: Response<ResponseBody>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    protocols: HeaderValue,
    idle: Duration,
    metrics: Arc<Metrics>,
    under: Option<Under>,
) -> Response<ProxyBody> {
    let (mut parts, _empty) = resp.into_parts();
    debug_assert_eq!(parts.status, StatusCode::SWITCHING_PROTOCOLS);
    parts.headers.remove(CONTENT_LENGTH);
    keep_upgrade(&mut parts.headers, protocols);
    parts.extensions.insert(Tunnel {
        client,
        upstream,
        idle,
        metrics,
        under,
    });
    Response::from_parts(parts, full(bytes::Bytes::new()))
}

impl Tunnel {
    /// Copies bytes both ways until either side closes or fails, or no byte has moved either
    /// way for `limits.upgrade_idle_timeout`. The first end seen ends both directions (as
    /// nginx does): what was read is delivered, the other side gets a FIN, and both
    /// connections are closed. `copy_bidirectional` would instead keep a half-closed tunnel
    /// open until the other side closes too, which a client that has gone quiet never does.
    /// Dropping the future closes both connections as well. A tunnel opened under a session
    /// is closed the same way, both sides, when that session ends (see `sockets`).
    pub async fn run(self) {
        let (client, upstream) = match tokio::try_join!(self.client, self.upstream) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(%error, "an agreed upgrade did not complete");
                return;
            }
        };
        let _open = Open::new(&self.metrics);
        let mut registered = self.under.map(|u| u.sockets.register(u.handle, u.record));
        let start = Instant::now();
        let last = AtomicU64::new(0);
        let client = Watched {
            io: TokioIo::new(client),
            start,
            last: &last,
            active: registered.as_ref().map(Registration::activity),
        };
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut upstream_read, mut upstream_write) = tokio::io::split(TokioIo::new(upstream));
        tokio::select! {
            up = tokio::io::copy(&mut client_read, &mut upstream_write) => {
                log_end("client", up);
                let _ = upstream_write.shutdown().await;
            }
            down = tokio::io::copy(&mut upstream_read, &mut client_write) => {
                log_end("app", down);
                let _ = client_write.shutdown().await;
            }
            () = idle(start, &last, self.idle) => {
                tracing::debug!(idle = ?self.idle, "closing a tunnel idle both ways");
            }
            why = session_end(&mut registered) => {
                if let Some(r) = &registered {
                    tracing::info!(handle = %r.handle(), reason = why.as_str(), "closed a WebSocket: its session ended");
                }
                self.metrics.socket_closed(why);
                let _ = tokio::time::timeout(SHUTDOWN_LIMIT, async {
                    let _ = tokio::join!(client_write.shutdown(), upstream_write.shutdown());
                })
                .await;
            }
        }
    }
}

/// Completes when the tunnel's session ends; never for a tunnel without one.
async fn session_end(registered: &mut Option<Registration>) -> Ended {
    match registered {
        Some(r) => r.ended().await,
        None => std::future::pending().await,
    }
}

fn log_end(from: &'static str, copied: std::io::Result<u64>) {
    match copied {
        Ok(bytes) => tracing::debug!(from, bytes, "tunnel closed"),
        Err(error) => tracing::debug!(from, %error, "tunnel broke"),
    }
}

/// Completes once nothing has moved for `limit` since the last byte (`last`, in ms after
/// `start`).
async fn idle(start: Instant, last: &AtomicU64, limit: Duration) {
    loop {
        let at = start + Duration::from_millis(last.load(Ordering::Relaxed)) + limit;
        if at <= Instant::now() {
            return;
        }
        tokio::time::sleep_until(at).await;
    }
}

/// Counts the tunnel in `tunnels_open` for as long as it lives.
struct Open<'a>(&'a Metrics);

impl<'a> Open<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.tunnel_opened();
        Open(metrics)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.tunnel_closed();
    }
}

/// The client's side of the tunnel, noting when a byte last moved: every byte of either
/// direction is read from or written to the client, so one side tells both.
struct Watched<'a, T> {
    io: T,
    start: Instant,
    last: &'a AtomicU64,
    /// The session's activity flag (`sockets`), for a tunnel opened under one.
    active: Option<Activity>,
}

impl<T> Watched<'_, T> {
    fn moved(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
        if let Some(active) = &self.active {
            active.moved();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.moved();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
