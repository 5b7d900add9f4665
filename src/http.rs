//! HTTP facts every side of the proxy shares: hop-by-hop headers and their stripping, the
//! forwarding header names, and the one body type of every response the proxy sends.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

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

/// Removes hop-by-hop headers, including every header the `Connection` header names.
/// `Upgrade` goes too: this proxy does not tunnel protocol upgrades.
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

/// Every response the proxy sends has this body type: the upstream's body streaming through, or
/// one the proxy wrote. An enum, not a boxed body: no allocation and no dynamic call per frame.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// A body built by the proxy itself.
pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Either::Right(Full::new(body.into()))
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
}
