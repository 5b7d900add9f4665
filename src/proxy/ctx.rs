//! What one request learned on its way through the phases: [`RequestCtx`], read once by the
//! logging phase, and the request id.

use std::time::Instant;

use http::uri::PathAndQuery;
use http::{HeaderValue, Method};

use crate::http::X_REQUEST_ID;

use crate::error::ProxyError;
use crate::outcome::{SessionState, StoreWrite};
use crate::telemetry::Trace;

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
    // Hex by hand: `format!("{:032x}")` went through `core::fmt` on every request.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random = rand::random::<u128>().to_be_bytes();
    let mut id = [0u8; 32];
    for (pair, byte) in id.chunks_exact_mut(2).zip(random) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A request's path (never its query: it may carry secrets), as `Uri::path` gives it. It holds
/// the URI's own bytes (a reference count; hyper's parsed URI shares the connection's read
/// buffer) instead of a copy in a `String` of its own: one allocation less per request.
#[derive(Debug, Clone)]
pub struct Path(Option<PathAndQuery>);

impl Path {
    pub fn as_str(&self) -> &str {
        // `Uri::path`: "" where the URI has no path (authority form), else never empty.
        self.0.as_ref().map_or("", PathAndQuery::path)
    }
}

impl std::ops::Deref for Path {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// Filled in as the phases run; read once by the logging phase.
#[derive(Debug)]
pub struct RequestCtx {
    /// Sent to the app and back to the client, and in the access line.
    pub request_id: HeaderValue,
    pub start: Instant,
    pub method: Method,
    /// The path only: a query string may carry secrets.
    pub path: Path,
    pub session: SessionState,
    pub write: StoreWrite,
    /// Why the request failed, if it did (its response is already built).
    pub error: Option<ProxyError>,
    /// The request's spans, with `[tracing]` on.
    pub trace: Option<Box<Trace>>,
}

impl RequestCtx {
    pub fn new<B>(req: &http::Request<B>) -> Self {
        RequestCtx {
            request_id: request_id(req.headers()),
            start: Instant::now(),
            method: req.method().clone(),
            path: Path(req.uri().path_and_query().cloned()),
            session: SessionState::Unloaded,
            write: StoreWrite::None,
            error: None,
            trace: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh id is 32 lowercase hex digits, what `{:032x}` of a random `u128` gave; a well
    /// formed client id is kept, anything else replaced.
    /// The same path as `Uri::path` in every form of request target, without the query.
    #[test]
    fn the_path_is_the_uris_path() {
        for target in [
            "/a/b?secret=1",
            "/",
            "*",
            "http://h",
            "http://h/x?q",
            "h:443",
        ] {
            let req = http::Request::get(target).body(()).unwrap();
            assert_eq!(
                RequestCtx::new(&req).path.as_str(),
                req.uri().path(),
                "{target}"
            );
        }
    }

    #[test]
    fn request_ids_are_the_clients_when_well_formed_else_fresh_hex() {
        let fresh = request_id(&http::HeaderMap::new());
        let text = fresh.to_str().unwrap();
        assert_eq!(text.len(), 32, "{text}");
        assert!(
            text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{text}"
        );
        assert_ne!(request_id(&http::HeaderMap::new()), fresh);
        let mut h = http::HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("req-1.A_b"));
        assert_eq!(request_id(&h), "req-1.A_b");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("two words"));
        assert_eq!(request_id(&h).len(), 32);
    }
}
