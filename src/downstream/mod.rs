//! The accept loop: one task per connection, HTTP/1.1 and HTTP/2 (h2c prior knowledge, or
//! ALPN under TLS) on the same port, every connection bounded in number and in time, and a
//! shutdown that gives in-flight requests a stated deadline and closes the rest without
//! failing a client's next request.
//!
//! The drain (SIGTERM, or a new process took the listeners over): HTTP/2 connections get
//! GOAWAY at once. An HTTP/1.1 connection is not closed under a client that may be sending its
//! next request on it right then (it would see the connection end: a failed request); instead
//! every further response on it says `Connection: close` (the client's next request opens a new
//! connection, which lands in the listening socket's queue: the new process's, after a
//! handoff), and one that stays idle is closed after [`DRAIN_IDLE_GRACE`].
//!
//! With `[tls]`, the TLS handshake runs in the connection's task, inside the same
//! `handshake_timeout` as the first request and under the same connection slot: a client that
//! opens TCP and never says hello costs what a silent plain-HTTP one does.
//!
//! An upgraded connection (a WebSocket) stays in the task that served its handshake: it keeps
//! its connection slot, and at shutdown it gets the same deadline as a request in flight and is
//! then closed.
//!
//! A connection's error stays in its own task. An accept error (EMFILE, say) is logged and the
//! loop goes on after a pause that doubles up to a cap, so a persistent error costs little CPU
//! and log volume while a passing one costs little latency.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::proxy::{self, Live, Tunnel};
use crate::tls;

mod activity;
mod rlimit;

use crate::forwarding::Peer;
use activity::Activity;
pub use activity::Tracked;

type ServerBuilder = auto::Builder<TokioExecutor>;

/// The first pause after a failed accept, and the longest.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));
/// How long a connection that has nothing in flight gets to finish writing before it is
/// dropped: hyper may still hold the tail of the last response in its buffer.
const FLUSH_GRACE: Duration = Duration::from_millis(200);
/// How long a drained HTTP/1 connection with nothing in flight stays open for the client's
/// next request (answered with `Connection: close`) before it is closed: a client that uses
/// it keeps sending within this, one that does not is unlikely to be sending right then.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);
/// File descriptors kept free of connections: the upstream pool, the store, logs.
const SPARE_FDS: u64 = 64;

/// The builders, configured once from `[limits]`: plain TCP detects h2c prior knowledge;
/// under TLS, ALPN has already said which protocol the client speaks, and only that one is
/// served (a client that chose `http/1.1` cannot switch to HTTP/2 by sending its preface).
///
/// HTTP/1.1 under TLS is hyper's own HTTP/1 builder, not the auto builder with `http1_only`:
/// hyper-util's `serve_connection_with_upgrades`, which a WebSocket needs, ignores
/// `http1_only` and detects the version again.
struct Builders {
    auto: ServerBuilder,
    http1: hyper::server::conn::http1::Builder,
    http2: ServerBuilder,
}

impl Builders {
    fn new(limits: &Limits) -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_head_size.max(8192));
        if limits.max_headers != 100 {
            http1.max_headers(limits.max_headers);
        }
        Builders {
            auto: builder(limits),
            http1,
            http2: builder(limits).http2_only(),
        }
    }
}

type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// The connection's end as a future, borrowed for one wait.
fn served<'c>(
    conn: &'c mut Pin<Box<dyn Served + '_>>,
) -> impl Future<Output = Result<(), ConnError>> + 'c {
    std::future::poll_fn(move |cx| conn.as_mut().poll_served(cx))
}

/// A connection as the driver loop sees it, whichever builder serves it: polled to its end,
/// or asked to finish gracefully.
trait Served: Send {
    fn poll_served(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>>;
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Served for auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Send,
    S::Future: Send + 'static,
    S::Error: Into<ConnError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<ConnError>,
    Self: Future<Output = Result<(), ConnError>> + Send,
{
    fn poll_served(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        self.poll(cx)
    }
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> Served for auto::Connection<'_, I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Send,
    S::Future: Send + 'static,
    S::Error: Into<ConnError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<ConnError>,
    Self: Future<Output = Result<(), ConnError>> + Send,
{
    fn poll_served(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        self.poll(cx)
    }
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::Connection::graceful_shutdown(self);
    }
}

impl<I, S, B> Served for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Send,
    S::Future: Send,
    S::Error: Into<ConnError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<ConnError>,
    Self: Future<Output = hyper::Result<()>> + Send,
{
    fn poll_served(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        self.poll(cx).map_err(Into::into)
    }
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// Which of the [`Builders`] serves a connection.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Detect,
    Http1,
    Http2,
}

/// One builder's settings, from `[limits]`.
fn builder(limits: &Limits) -> ServerBuilder {
    let mut builder = ServerBuilder::new(TokioExecutor::new());
    let mut h1 = builder.http1();
    // A head that does not fit the read buffer is answered 431 by hyper; bodies stream through
    // the same buffer piece by piece, so its size is the head limit and nothing more.
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_size.max(8192));
    // hyper keeps 100 header slots on the stack; any other count moves them to the heap.
    if limits.max_headers != 100 {
        h1.max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_head_size).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_timeout);
    builder
}

/// Serves until `shutdown` completes, then stops accepting, closes every connection that has
/// nothing in flight, and gives the others `deadline` to finish their requests (whose sessions
/// are saved as usual).
pub async fn serve(
    listener: TcpListener,
    live: Live,
    shutdown: impl Future<Output = ()>,
    deadline: Duration,
) {
    let state = live.current();
    let mut limits = state.config.limits;
    let mut max_connections = connection_cap(limits.max_connections);
    let mut builders = Arc::new(Builders::new(&limits));
    let tls = state.config.tls.as_ref().map(|t| {
        if t.cookie_secure_unset {
            tracing::warn!(
                "tls is on but cookie.secure is not set: browsers will also send the session \
                 cookie over plain HTTP to this host; set cookie.secure = true"
            );
        }
        TlsAcceptor::from(t.server.clone())
    });
    let slots = Arc::new(Semaphore::new(max_connections));
    // Every connection task holds a receiver: `closed()` says when the last one has ended.
    let (stop, stopped) = watch::channel(false);
    // Read by every response: whether it should close its HTTP/1 connection.
    let draining = Arc::new(AtomicBool::new(false));
    let mut backoff = ACCEPT_BACKOFF.0;
    let mut last_refusal_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    // A reload's limits apply to the connections accepted after it.
                    let state = live.current();
                    if state.config.limits != limits {
                        limits = state.config.limits;
                        builders = Arc::new(Builders::new(&limits));
                        max_connections = recap(&slots, max_connections, limits.max_connections);
                    }
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        // Closed at once: the client learns now, instead of waiting in a queue
                        // while its socket holds a descriptor.
                        drop(stream);
                        if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                            last_refusal_log = Some(Instant::now());
                            tracing::warn!(max_connections, "connection limit reached; refusing new connections");
                        }
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let peer = Peer::new(remote, stream.local_addr().ok())
                        .trusting(&state.config.trusted_proxies);
                    let conn = Connection {
                        builders: builders.clone(),
                        tls: tls.clone(),
                        live: live.clone(),
                        stop: stopped.clone(),
                        draining: draining.clone(),
                        limits,
                        deadline,
                    };
                    tokio::spawn(async move {
                        conn.run(stream, peer).await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, pause = ?backoff, "accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(stopped);
    draining.store(true, Ordering::Relaxed);
    tracing::info!(deadline = ?deadline, "shutting down: no new connections; waiting for open requests");
    let _ = stop.send(true);
    tokio::select! {
        () = stop.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(deadline) => tracing::warn!("shutdown deadline passed; closing the remaining connections"),
    }
}

/// The connection cap in force: the configured one, lowered if the process may not open that
/// many descriptors (each connection may need a second one, to the app), so that accepting
/// never fails with EMFILE.
fn connection_cap(configured: usize) -> usize {
    let Some(fds) = rlimit::raise_nofile() else {
        return configured;
    };
    let affordable = usize::try_from(fds.saturating_sub(SPARE_FDS) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    if affordable < configured {
        tracing::warn!(
            configured,
            affordable,
            open_files = fds,
            "limits.max_connections lowered to what the open-file limit (RLIMIT_NOFILE) allows"
        );
        affordable
    } else {
        configured
    }
}

/// Resizes the connection cap to `configured` (bounded by the open-file limit as at start);
/// returns the cap now in force. A lowered cap takes the free slots away; while connections
/// hold the others, it falls only as far as the free ones allow (a later reload lowers it on).
fn recap(slots: &Semaphore, cap: usize, configured: usize) -> usize {
    let new = connection_cap(configured);
    if new >= cap {
        slots.add_permits(new - cap);
        new
    } else {
        cap - slots.forget_permits(cap - new)
    }
}

/// What one connection task needs.
struct Connection {
    builders: Arc<Builders>,
    /// `Some` with `[tls]`: every connection starts with a TLS handshake.
    tls: Option<TlsAcceptor>,
    /// Each request takes the state in force when it starts.
    live: Live,
    stop: watch::Receiver<bool>,
    /// Set when the drain begins, before `stop` says so.
    draining: Arc<AtomicBool>,
    limits: Limits,
    /// The shutdown deadline, which a tunnel also gets.
    deadline: Duration,
}

/// Why a connection's driver stops waiting.
enum Wake {
    /// hyper finished the connection.
    Done,
    /// Shutdown began.
    Stop,
    /// A request ended while closing: look again.
    Check,
    /// The timer fired: a deadline may have passed.
    Timer,
}

impl Connection {
    /// Serves one connection: plain, or after its TLS handshake. The handshake shares the
    /// first request's deadline, and shutdown ends it at once (it has nothing in flight).
    async fn run(mut self, stream: TcpStream, peer: Peer) {
        let deadline = Instant::now() + self.limits.handshake_timeout;
        let Some(acceptor) = self.tls.take() else {
            return self.serve(stream, peer, Protocol::Detect, deadline).await;
        };
        if *self.stop.borrow() {
            return;
        }
        let remote = peer.addr;
        let handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %remote, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "closing a connection that finished no tls handshake in time");
                    return;
                }
            },
            _ = self.stop.changed() => return,
        };
        let protocol = if tls::chose_h2(stream.get_ref().1) {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        self.serve(stream, peer.over_tls(), protocol, deadline)
            .await;
    }

    /// Serves one connection and watches it: no first request by `deadline` (nothing sent,
    /// half an HTTP/2 preface, a preface and then silence), or nothing in flight for
    /// `keep_alive_timeout`, closes it; so does shutdown, at once when nothing is in flight.
    /// hyper alone would wait for a request head that never comes. Generic over the stream, so
    /// plain TCP and TLS are served by the same code.
    async fn serve<I>(mut self, io: I, peer: Peer, protocol: Protocol, deadline: Instant)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let remote = peer.addr;
        // Shared by the connection's requests: a reference count per request, not a copy of
        // its four header values.
        let peer = Arc::new(peer);
        let activity = Arc::new(Activity::default());
        // Whether the connection speaks HTTP/2 (known under TLS from ALPN, else from its first
        // request): the drain sends it GOAWAY at once.
        let h2 = Arc::new(AtomicBool::new(matches!(protocol, Protocol::Http2)));
        // Where a 101 leaves its tunnel, run here once hyper has handed the connection over.
        let switched: Arc<Mutex<Option<Tunnel>>> = Arc::default();
        let service = {
            let (live, activity) = (self.live.clone(), activity.clone());
            let (switched, draining, h2) = (switched.clone(), self.draining.clone(), h2.clone());
            service_fn(move |req| {
                let http1 = req.version() < http::Version::HTTP_2;
                let in_flight = activity.enter(!http1);
                if !http1 {
                    h2.store(true, Ordering::Relaxed);
                }
                let handled = proxy::handle(live.current(), peer.clone(), req);
                let (switched, draining) = (switched.clone(), draining.clone());
                async move {
                    let mut resp = handled.await?;
                    if let Some(tunnel) = resp.extensions_mut().remove::<Tunnel>()
                        && let Ok(mut slot) = switched.lock()
                    {
                        *slot = Some(tunnel);
                    } else if http1 && draining.load(Ordering::Relaxed) {
                        // hyper closes the connection once this response is written.
                        resp.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    Ok::<_, std::convert::Infallible>(
                        resp.map(|body| Tracked::new(body, in_flight)),
                    )
                }
            })
        };
        let builders = self.builders.clone();
        let io = TokioIo::new(io);
        let mut conn: Pin<Box<dyn Served + '_>> = match protocol {
            Protocol::Detect => Box::pin(builders.auto.serve_connection_with_upgrades(io, service)),
            Protocol::Http1 => {
                Box::pin(builders.http1.serve_connection(io, service).with_upgrades())
            }
            // HTTP/2 has no upgrade.
            Protocol::Http2 => Box::pin(builders.http2.serve_connection(io, service)),
        };
        let mut draining = *self.stop.borrow();
        // Accepted just before the drain began: the drain's grace for its first request.
        let mut deadline = Some(if draining {
            deadline.min(Instant::now() + DRAIN_IDLE_GRACE)
        } else {
            deadline
        });
        // One timer for the connection's life, moved only when it fires before `deadline` or
        // when `deadline` comes earlier than it (the first request's end under a
        // `keep_alive_timeout` shorter than `handshake_timeout`; the drain): a keep-alive
        // connection's requests each push `deadline` later without touching the timer.
        let timer = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
        tokio::pin!(timer);
        // When the timer will fire (`None`: it fired, and is off until set again).
        let mut armed = deadline;
        let mut stop = self.stop.clone();
        let stopped = stop.changed();
        tokio::pin!(stopped);
        let mut served_one = false;
        // The drain's GOAWAY (HTTP/2) or idle close (HTTP/1) was sent: nothing but its end is
        // left to wait for once nothing is in flight.
        let mut closing = false;
        loop {
            if draining && !closing && h2.load(Ordering::Relaxed) {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            if closing && activity.idle() {
                // Nothing in flight: nothing to wait for but hyper's last flush.
                let _ = tokio::time::timeout(FLUSH_GRACE, served(&mut conn)).await;
                return self.tunnel(&switched, true).await;
            }
            // One future polled for as long as the connection has requests to serve: the
            // connection first, and a request's end is seen right after the poll in which it
            // happened (see `activity`).
            let wake = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = conn.as_mut().poll_served(cx) {
                    if let Err(error) = result {
                        tracing::debug!(%error, %remote, "connection closed with an error");
                    }
                    return Poll::Ready(Wake::Done);
                }
                if !draining && stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Stop);
                }
                if h2.load(Ordering::Relaxed) {
                    activity.register(cx.waker());
                }
                if activity.idle() && activity.take_ended() {
                    served_one = true;
                    if closing {
                        return Poll::Ready(Wake::Check);
                    }
                    let idle = if draining {
                        DRAIN_IDLE_GRACE.min(self.limits.keep_alive_timeout)
                    } else {
                        self.limits.keep_alive_timeout
                    };
                    let at = Instant::now() + idle;
                    deadline = Some(at);
                    arm_by(timer.as_mut(), &mut armed, at);
                }
                if armed.is_some() && timer.as_mut().poll(cx).is_ready() {
                    armed = None;
                    return Poll::Ready(Wake::Timer);
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Done => return self.tunnel(&switched, draining).await,
                Wake::Stop => {
                    draining = true;
                    if activity.idle() {
                        // HTTP/1: one more idle grace (the loop's top sends HTTP/2 its GOAWAY).
                        let grace = Instant::now() + DRAIN_IDLE_GRACE;
                        let at = deadline.map_or(grace, |d| d.min(grace));
                        deadline = Some(at);
                        arm_by(timer.as_mut(), &mut armed, at);
                    } else {
                        // The request's end sets the deadline.
                        deadline = None;
                    }
                }
                Wake::Check => {}
                Wake::Timer => {
                    if !activity.idle() {
                        // The request's end sets the deadline; until then none runs.
                        deadline = None;
                        continue;
                    }
                    let Some(at) = deadline else { continue };
                    if at > Instant::now() {
                        // Requests ended since the timer was set: their deadline is later.
                        arm_by(timer.as_mut(), &mut armed, at);
                        continue;
                    }
                    if served_one {
                        tracing::debug!(%remote, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(FLUSH_GRACE, served(&mut conn)).await;
                    } else {
                        tracing::debug!(%remote, "closing a connection that sent no request in time");
                    }
                    return;
                }
            }
        }
    }
}

impl Connection {
    /// Runs the tunnel a 101 left, if any: until it ends, or, once shutdown has begun, for at
    /// most the shutdown deadline (then both sides are closed).
    async fn tunnel(&mut self, switched: &Mutex<Option<Tunnel>>, draining: bool) {
        let Some(tunnel) = switched.lock().ok().and_then(|mut slot| slot.take()) else {
            return;
        };
        let run = tunnel.run();
        tokio::pin!(run);
        if !draining {
            tokio::select! {
                () = &mut run => return,
                _ = self.stop.changed() => {}
            }
        }
        if tokio::time::timeout(self.deadline, run).await.is_err() {
            tracing::debug!("shutdown deadline passed; closing a tunnel");
        }
    }
}

/// Makes the connection's timer fire by `at`: moved only if it is off or set later.
fn arm_by(timer: Pin<&mut tokio::time::Sleep>, armed: &mut Option<Instant>, at: Instant) {
    if armed.is_none_or(|t| at < t) {
        timer.reset(at);
        *armed = Some(at);
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
