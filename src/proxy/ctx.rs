//! What one request learned on its way through the phases. The enums are closed sets on
//! purpose: each becomes a log value now and a metric label later, so a typo cannot invent a
//! new one.

use std::time::Instant;

use http::{HeaderValue, Method};

use crate::http::X_REQUEST_ID;

use crate::error::ProxyError;

/// The session as the request found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// The request failed before its session was loaded.
    Unloaded,
    /// This request started the session (no cookie, or one for a dead session).
    New,
    /// The cookie named a live session.
    Existing,
    /// The store failed and `store.on_error = "fail_open"` sent the request on without one.
    Unavailable,
    /// The path is in `session.skip`: no session was loaded or offered.
    Skipped,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Unloaded => "",
            SessionState::New => "new",
            SessionState::Existing => "existing",
            SessionState::Unavailable => "unavailable",
            SessionState::Skipped => "skipped",
        }
    }
}

/// The store write the request made (at most one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreWrite {
    None,
    Created,
    Updated,
    /// A read-only request moved the idle deadline.
    Touched,
    Destroyed,
    Regenerated,
    /// The session was destroyed or expired by another request before this one saved.
    Vanished,
    /// The app's change was refused (too large); nothing was written.
    Refused,
}

impl StoreWrite {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreWrite::None => "none",
            StoreWrite::Created => "created",
            StoreWrite::Updated => "updated",
            StoreWrite::Touched => "touched",
            StoreWrite::Destroyed => "destroyed",
            StoreWrite::Regenerated => "regenerated",
            StoreWrite::Vanished => "vanished",
            StoreWrite::Refused => "refused",
        }
    }
}

/// The client's `X-Request-Id` when it is well formed (1 to 64 characters of `A-Z a-z 0-9 - _ .`,
/// so it cannot break a log line or smuggle anything to the app), else a fresh one: 32 hex
/// digits from the thread's generator (an id to correlate lines, not a secret).
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    if let (Some(v), None) = (values.next(), values.next()) {
        let b = v.as_bytes();
        if (1..=64).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            return v.clone();
        }
    }
    let id = format!("{:032x}", rand::random::<u128>());
    HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Filled in as the phases run; read once by the logging phase.
#[derive(Debug)]
pub struct RequestCtx {
    /// Sent to the app and back to the client, and in the access line.
    pub request_id: HeaderValue,
    pub start: Instant,
    pub method: Method,
    /// The path only: a query string may carry secrets.
    pub path: String,
    pub session: SessionState,
    pub write: StoreWrite,
    /// Why the request failed, if it did (its response is already built).
    pub error: Option<ProxyError>,
}

impl RequestCtx {
    pub fn new<B>(req: &http::Request<B>) -> Self {
        RequestCtx {
            request_id: request_id(req.headers()),
            start: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            session: SessionState::Unloaded,
            write: StoreWrite::None,
            error: None,
        }
    }
}
