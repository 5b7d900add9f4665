//! The connections to the app: a LIFO stack of idle HTTP/1.1 connections (hyper's
//! `client::conn::http1`), each checked out for one request and given back when its response
//! body ends.
//!
//! Why not hyper-util's pooled `Client`: per request it keys a map by scheme and authority,
//! races a checkout against a connect, and spawns a task that waits for the connection to be
//! ready again (issue 15 measured about 3 µs per request of that on top of hyper's own engine).
//! There is one upstream here, so the pool is one stack behind one uncontended lock; and the
//! response body itself gives the connection back on its last frame (`ResponseBody`), when
//! hyper's connection task has nearly always already asked for the next request. Only when it
//! has not (a race between the two tasks, or the app answered before reading the whole request
//! body, which hyper is still writing) does a task wait for it, as the legacy client's did.
//!
//! What the legacy client did and this keeps: the connect timeout and `TCP_NODELAY` (its
//! `HttpConnector`, which also resolves the name and tries each address), an idle timeout
//! (`IDLE_TIMEOUT`), HTTP/1.1 only, and one retry, on a fresh connection, of a request that a
//! reused connection handed back unsent (the app closed it while idle and hyper had not seen it
//! yet). A connection is never given back after an error, after `Connection: close` from either
//! side, when the response body is dropped before its end, or after a 101 (hyper hands the
//! socket to the tunnel; `with_upgrades`).
//!
//! The number of idle connections is capped at `limits.max_connections`: the open-file budget
//! (`downstream::connection_cap`) already reserves one app connection per client connection,
//! and while N client connections are busy at most N app connections are, so a burst leaves at
//! most that many idle, and the LIFO order lets the ones that are not needed age out.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http::uri::Authority;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service as _;

use crate::http::ForwardBody;

/// How long a connection may sit idle in the pool before it is closed (the legacy client's
/// `pool_idle_timeout` here, unchanged). Apps commonly close idle connections after 5 to 75 s;
/// one the app closes first is noticed by hyper and skipped, or, in a race, its request is
/// retried.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The pool, generic over the request body only so that its tests can send bodies of their
/// own.
pub(super) struct Pool<B> {
    /// Most recently used at the back: checked out from there, aged out from the front.
    idle: Mutex<VecDeque<Idle<B>>>,
    cap: usize,
    timeout: Duration,
    connector: HttpConnector,
    /// `http://authority/`, what the connector is asked for.
    dst: Uri,
    /// Whether the task that closes expired idle connections runs.
    reaping: AtomicBool,
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

impl<B> Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    pub(super) fn new(
        authority: Authority,
        connect_timeout: Duration,
        cap: usize,
        timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let dst = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        Pool {
            idle: Mutex::new(VecDeque::new()),
            cap,
            timeout,
            connector,
            dst,
            reaping: AtomicBool::new(false),
        }
    }

    /// The most recently used idle connection that is still open, if any.
    pub(super) fn checkout(&self) -> Option<http1::SendRequest<B>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(entry) = idle.pop_back() {
            if !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// A new connection, its task spawned (with upgrades: a 101 hands the socket over). The
    /// error says why none could be had (the app's address did not answer, or not in time).
    pub(super) async fn connect(
        &self,
    ) -> Result<http1::SendRequest<B>, Box<dyn StdError + Send + Sync>> {
        let io = self.connector.clone().call(self.dst.clone()).await?;
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }
}

impl<B: Send + 'static> Pool<B> {
    /// Takes a connection back once its response has ended: at once when hyper is ready for
    /// the next request, after a wait in a task of its own when it is still finishing this one,
    /// never when it is closing.
    fn give_back(self: &Arc<Self>, mut sender: http1::SendRequest<B>) {
        if sender.is_ready() {
            self.push(sender);
        } else if !sender.is_closed() {
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                if sender.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    pool.push(sender);
                }
            });
        }
    }

    pub(super) fn push(self: &Arc<Self>, sender: http1::SendRequest<B>) {
        let since = Instant::now();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() >= self.cap {
            // The oldest goes: it is the one least likely to be needed again.
            idle.pop_front();
        }
        idle.push_back(Idle { sender, since });
        drop(idle);
        if !self.reaping.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Closes every connection idle for the timeout or longer (and forgets closed ones).
    fn expire(&self, now: Instant) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        idle.retain(|i| now.duration_since(i.since) < self.timeout && !i.sender.is_closed());
    }

    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }
}

/// Runs as long as the pool does, like the legacy client's idle task: every half timeout, so
/// a connection is closed between one and one and a half timeouts after its last use.
async fn reap<B: Send + 'static>(pool: Weak<Pool<B>>) {
    let every = match pool.upgrade() {
        Some(pool) => pool.timeout / 2,
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.expire(Instant::now());
    }
}

/// A connection checked out for one exchange, given back by the response body.
pub(super) struct Lease<B> {
    sender: http1::SendRequest<B>,
    pool: Arc<Pool<B>>,
}

impl<B: Send + 'static> Lease<B> {
    pub(super) fn new(sender: http1::SendRequest<B>, pool: Arc<Pool<B>>) -> Self {
        Lease { sender, pool }
    }

    fn give_back(self) {
        self.pool.give_back(self.sender);
    }
}

/// The app's response body, holding its connection until the last frame: then the connection
/// goes back to the pool. Dropped before that (the client went away), or failed, it takes the
/// connection with it, which hyper then closes.
pub struct ResponseBody<B = ForwardBody> {
    inner: Incoming,
    lease: Option<Lease<B>>,
}

impl<B: Send + 'static> ResponseBody<B> {
    /// `lease` is `None` when the connection must not be reused.
    pub(super) fn new(inner: Incoming, lease: Option<Lease<B>>) -> Self {
        let mut body = ResponseBody { inner, lease };
        // An empty body (a 204, a 304, an answer to HEAD) may never be polled.
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.give_back();
        }
    }
}

impl<B: Send + 'static> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            // The length was known and is now read: the server may never poll again.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.lease = None,
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
