//! The proxy's request errors and whose fault each is ([`status`] picks the response's status;
//! `proxy/response.rs` writes the response).
//!
//! Each variant records which side failed (pingora's `ErrorSource`, here [`Fault`]): the client
//! (4xx: a bad request, a body too slow or malformed), the upstream (502/504), the store (503),
//! or the proxy itself (500). The client gets a short body and no detail; the detail goes to the
//! request's log line, which names the fault, so a client's garbage is never reported as the
//! app failing.

use std::time::Duration;

use http::StatusCode;

use crate::metrics::UpstreamFailure;
use crate::session::RandomError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client sent something this proxy refuses; nothing reached the app, or what did was
    /// cut off.
    #[error("client error: {0}")]
    Client(#[from] ClientError),
    #[error("upstream unreachable: {0}")]
    /// The cause is the connector's (hyper-util's `HttpConnector`): boxed, as pingora-error
    /// keeps a cause, so this room names no upstream type.
    UpstreamConnect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("upstream failed: {0}")]
    Upstream(#[source] hyper::Error),
    #[error("upstream sent no response within {0:?}")]
    UpstreamTimeout(Duration),
    /// The app answered, but in a form that cannot be forwarded safely.
    #[error("upstream sent a bad response: {0}")]
    BadUpstreamResponse(&'static str),
    #[error("session store failed: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// What the client did wrong. Each maps to the status RFC 9110 names for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("no Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("the Host header is not a valid host[:port]")]
    InvalidHost,
    #[error("method CONNECT is not supported")]
    Connect,
    #[error("request target longer than limits.max_uri_length")]
    UriTooLong,
    #[error("more header fields than limits.max_headers")]
    TooManyHeaders,
    #[error("request body malformed or cut off")]
    BodyMalformed,
    #[error("request body not received within the limits.body_* timeouts")]
    BodyTimeout,
    #[error("request body slower than limits.body_min_rate")]
    BodyTooSlow,
    #[error("request body larger than limits.max_body_size")]
    BodyTooLarge,
}

/// Whose fault a failed request is: the log line says it, and only upstream failures count in
/// `upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Store,
    Proxy,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Store => "store",
            Fault::Proxy => "proxy",
        }
    }
}

impl ProxyError {
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::Client(_) => Fault::Client,
            ProxyError::UpstreamConnect(_)
            | ProxyError::Upstream(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::BadUpstreamResponse(_) => Fault::Upstream,
            ProxyError::Store(_) => Fault::Store,
            ProxyError::Random(_) => Fault::Proxy,
        }
    }

    /// How the upstream failed, if this is an upstream failure (a metric label).
    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        match self {
            ProxyError::UpstreamConnect(_) => Some(UpstreamFailure::Connect),
            ProxyError::UpstreamTimeout(_) => Some(UpstreamFailure::Timeout),
            ProxyError::Upstream(_) | ProxyError::BadUpstreamResponse(_) => {
                Some(UpstreamFailure::Failed)
            }
            ProxyError::Client(_) | ProxyError::Store(_) | ProxyError::Random(_) => None,
        }
    }
}

impl ClientError {
    pub fn status(self) -> StatusCode {
        match self {
            ClientError::MissingHost
            | ClientError::DuplicateHost
            | ClientError::InvalidHost
            | ClientError::BodyMalformed => StatusCode::BAD_REQUEST,
            ClientError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ClientError::UriTooLong => StatusCode::URI_TOO_LONG,
            ClientError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ClientError::BodyTimeout | ClientError::BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            ClientError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Whether the connection must close after the answer: a body left half-read leaves its
    /// framing untrustworthy, and a client too slow to send one is not worth keeping.
    pub fn closes(self) -> bool {
        matches!(
            self,
            ClientError::BodyMalformed
                | ClientError::BodyTimeout
                | ClientError::BodyTooSlow
                | ClientError::BodyTooLarge
        )
    }
}

/// The one mapping from error to status.
pub fn status(error: &ProxyError) -> StatusCode {
    match error {
        ProxyError::Client(e) => e.status(),
        ProxyError::UpstreamConnect(_)
        | ProxyError::Upstream(_)
        | ProxyError::BadUpstreamResponse(_) => StatusCode::BAD_GATEWAY,
        ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        ProxyError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        ProxyError::Random(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
