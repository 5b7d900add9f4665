//! HTTP facts every side of the proxy shares: hop-by-hop headers and their stripping, the
//! protocol upgrade a request asks for, the forwarding header names, and the one body type of
//! every response the proxy sends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};
use hyper::body::{Body, Frame, SizeHint};

use crate::protocol::ProtocolHeaders;

pub mod body;
pub mod buffer;

pub use body::{BodyError, RequestBody, client_fault};
pub use buffer::{Buffering, Buffers, ForwardBody};

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies still see. "Intermediaries
/// MUST parse a received Connection header field before a message is forwarded and, for each
/// connection-option in this field, remove any header field(s) from the message with the same name
/// as the connection-option, and then remove the Connection header field itself".
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// One id per request, in every log line, passed to the app and returned to the client.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes hop-by-hop headers, including every header the `Connection` header names.
/// `Upgrade` goes too: an upgrade is put back, on its own, by [`keep_upgrade`] when the request
/// asked for one the proxy tunnels.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than ten removals by hash.
    // (A header that `Connection` names goes only if `Connection` is there, so it is covered.)
    let hop_by_hop = |name: &HeaderName| name == header::UPGRADE || HOP_BY_HOP.contains(name);
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The protocols an HTTP/1.1 request asks to switch to (RFC 9110 §7.8): its one `Upgrade`
/// value, when `Connection` lists `upgrade` and the value is a list of `protocol[/version]`
/// tokens. HTTP/1.0 has no upgrade and HTTP/2 forbids it (RFC 9113 §8.2.2; extended CONNECT,
/// RFC 8441, is not supported), so theirs is stripped like any hop-by-hop header. So is an
/// upgrade to HTTP itself (`h2c`, `HTTP/2.0`...): the client would then speak HTTP straight to
/// the app, past the proxy's stripping of reserved headers ("h2c smuggling").
pub fn requested_upgrade<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let h = req.headers();
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|option| option.trim().eq_ignore_ascii_case("upgrade"));
    let mut values = h.get_all(header::UPGRADE).iter();
    let value = match (asks, values.next(), values.next()) {
        (true, Some(v), None) => v,
        _ => return None,
    };
    let http = |p: &&str| {
        let name = p.split('/').next().unwrap_or(p);
        ["h2c", "h2", "http"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
    };
    match protocols(value) {
        Some(list) if !list.iter().any(http) => Some(value.clone()),
        _ => None,
    }
}

/// The protocols an `Upgrade` value lists, or `None` unless it is a non-empty list of
/// `token["/"token]` (RFC 9110 §7.8).
fn protocols(value: &HeaderValue) -> Option<Vec<&str>> {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let list: Vec<&str> = value.to_str().ok()?.split(',').map(str::trim).collect();
    let valid = list.iter().all(|p| match p.split_once('/') {
        Some((name, version)) => token(name) && token(version),
        None => token(p),
    });
    valid.then_some(list)
}

/// Puts the upgrade back on a message whose hop-by-hop headers were stripped: `Connection:
/// upgrade` (no other option) and the `Upgrade` value.
pub fn keep_upgrade(headers: &mut HeaderMap, protocols: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocols);
}

/// Whether a 101's `Upgrade` names only protocols the request offered ("A server MUST NOT switch
/// to a protocol that was not indicated by the client", RFC 9110 §7.8); compared without case.
pub fn upgrade_agreed(asked: &HeaderValue, answered: Option<&HeaderValue>) -> bool {
    let (Some(asked), Some(answered)) = (protocols(asked), answered.and_then(protocols)) else {
        return false;
    };
    answered
        .iter()
        .all(|p| asked.iter().any(|a| a.eq_ignore_ascii_case(p)))
}

pin_project_lite::pin_project! {
    /// A body whose trailers are held to the same rules as headers: trailers are headers sent
    /// late (HTTP/1.1 chunked, HTTP/2 HEADERS after DATA), so a reserved name or a hop-by-hop
    /// one in them is stripped exactly as it would be at the top. Data frames pass untouched.
    pub struct Trailers<B> {
        #[pin]
        inner: B,
        reserved: Arc<ProtocolHeaders>,
    }
}

impl<B> Trailers<B> {
    pub fn new(inner: B, reserved: Arc<ProtocolHeaders>) -> Self {
        Trailers { inner, reserved }
    }
}

impl<B: Body> Body for Trailers<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        Poll::Ready(frame.map(|f| f.map(|f| filter_trailers(f, this.reserved))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A trailers frame without hop-by-hop or reserved fields; any other frame as it is.
pub fn filter_trailers<D>(frame: Frame<D>, reserved: &ProtocolHeaders) -> Frame<D> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            strip_hop_by_hop(&mut trailers);
            if reserved.strip_reserved(&mut trailers) > 0 {
                tracing::debug!("stripped session protocol fields from trailers");
            }
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-foo"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-bar", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-bar"));
    }

    fn upgrade_of(version: Version, headers: &[(&str, &str)]) -> Option<HeaderValue> {
        let mut req = Request::builder().version(version);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        requested_upgrade(&req.body(()).unwrap())
    }

    #[test]
    fn an_upgrade_is_asked_only_by_http11_with_connection_upgrade() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        assert_eq!(upgrade_of(Version::HTTP_11, &ws).unwrap(), "websocket");
        assert_eq!(upgrade_of(Version::HTTP_10, &ws), None);
        assert_eq!(upgrade_of(Version::HTTP_2, &ws), None);
        assert_eq!(
            upgrade_of(Version::HTTP_11, &[("upgrade", "websocket")]),
            None
        );
        for bad in [
            "",
            "web socket",
            "a/b/c",
            "ws,",
            "/1",
            "h2c",
            "websocket, H2C",
            "HTTP/2.0",
        ] {
            let h = [("connection", "upgrade"), ("upgrade", bad)];
            assert_eq!(upgrade_of(Version::HTTP_11, &h), None, "{bad:?}");
        }
        let two = Request::builder()
            .header("connection", "upgrade")
            .header("upgrade", "a")
            .header("upgrade", "b")
            .body(())
            .unwrap();
        assert_eq!(requested_upgrade(&two), None);
    }

    #[test]
    fn a_101_may_switch_only_to_an_offered_protocol() {
        let asked = HeaderValue::from_static("foo/2, WebSocket");
        let agreed = |v: &'static str| upgrade_agreed(&asked, Some(&HeaderValue::from_static(v)));
        assert!(agreed("websocket"));
        assert!(agreed("foo/2"));
        assert!(!agreed("foo"));
        assert!(!agreed("h2c"));
        assert!(!agreed(""));
        assert!(!upgrade_agreed(&asked, None));
    }
}
