//! The client end of one downstream connection, learned once when it is accepted.

use std::net::SocketAddr;

use http::HeaderValue;

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
}

impl Peer {
    /// A client on a plain-HTTP connection to `local`.
    pub fn new(addr: SocketAddr, local: Option<SocketAddr>) -> Self {
        let ip = addr.ip().to_string();
        Peer {
            addr,
            // An IP address is always a valid header value.
            forwarded_for: HeaderValue::from_maybe_shared(bytes::Bytes::from(ip))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static("http"),
            port: local.map(|l| HeaderValue::from(l.port())),
        }
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
