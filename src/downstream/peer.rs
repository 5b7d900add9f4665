//! The client end of one downstream connection, learned once when it is accepted.

use std::net::SocketAddr;

use http::HeaderValue;

use crate::config::TrustedProxies;
use crate::upstream::forwarded_node;

/// Who is on the other end of a connection, in the forms the request path needs: formatted
/// once per connection rather than once per request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client's IP as `X-Forwarded-For` and `X-Real-IP` name it.
    pub forwarded_for: HeaderValue,
    /// The scheme the client used to reach this hop, as `X-Forwarded-Proto` says it.
    pub proto: HeaderValue,
    /// The port the client connected to, as `X-Forwarded-Port` says it.
    pub port: Option<HeaderValue>,
    /// The client's IP as a `Forwarded` `for=` names it (RFC 7239 §6: IPv6 bracketed and
    /// quoted).
    pub forwarded_node: HeaderValue,
    /// Whether the peer is one of `trusted_proxies`, so its forwarding headers are passed on:
    /// decided once here, leaving each request a bool to read.
    pub trusted: bool,
}

impl Peer {
    /// A client on a plain-HTTP connection to `local`.
    pub fn new(addr: SocketAddr, local: Option<SocketAddr>) -> Self {
        // A dual-stack listener reports an IPv4 client as `::ffff:a.b.c.d`; the app is told
        // the IPv4 address, as trust decisions read it.
        let ip = addr.ip().to_canonical();
        let node = forwarded_node(ip);
        let ip = ip.to_string();
        Peer {
            addr,
            // An IP address is always a valid header value.
            forwarded_for: HeaderValue::from_maybe_shared(bytes::Bytes::from(ip))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static("http"),
            port: local.map(|l| HeaderValue::from(l.port())),
            forwarded_node: HeaderValue::from_str(&node)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            trusted: false,
        }
    }

    /// The same peer, trusted if its address is in `proxies`.
    pub fn trusting(mut self, proxies: &TrustedProxies) -> Self {
        self.trusted = proxies.contains(self.addr.ip());
        self
    }

    /// The same client, on a connection whose TLS this hop terminated: the app is told `https`.
    pub fn over_tls(mut self) -> Self {
        self.proto = HeaderValue::from_static("https");
        self
    }

    /// A client on a plain-HTTP connection whose local end is unknown.
    pub fn plain(addr: SocketAddr) -> Self {
        Self::new(addr, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_named_once_for_each_header() {
        let v4 = Peer::plain("192.0.2.60:4711".parse().unwrap());
        assert_eq!(v4.forwarded_for, "192.0.2.60");
        assert_eq!(v4.forwarded_node, "192.0.2.60");
        let v6 = Peer::plain("[2001:db8:cafe::17]:4711".parse().unwrap());
        assert_eq!(v6.forwarded_for, "2001:db8:cafe::17");
        assert_eq!(v6.forwarded_node, "\"[2001:db8:cafe::17]\"");
        let mapped = Peer::plain("[::ffff:192.0.2.60]:4711".parse().unwrap());
        assert_eq!(mapped.forwarded_for, "192.0.2.60");
        assert_eq!(mapped.forwarded_node, "192.0.2.60");
        assert!(!mapped.trusted);
        let proxies = TrustedProxies::new(vec!["192.0.2.0/24".parse().unwrap()]);
        assert!(mapped.trusting(&proxies).trusted);
        assert!(!v6.trusting(&proxies).trusted);
    }
}
