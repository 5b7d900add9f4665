//! The upstream side: one pooled keep-alive HTTP/1.1 client, the request rewrite
//! (URI, Host, X-Forwarded-*), and the connect/response timeouts.

use std::time::Duration;

use http::header::{HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Config;
use crate::downstream::Peer;
use crate::error::{ClientError, ProxyError};
use crate::http::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::proxy::body::{RequestBody, client_fault};

/// `Client` is cheap to clone; its pool is shared by every request.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<HttpConnector, RequestBody>,
    authority: Authority,
    response_timeout: Duration,
    trust_forwarded: bool,
}

/// The `Host` a request names, judged by RFC 9112 §3.2: exactly one, and a valid
/// `uri-host [":" port]` (no userinfo, no path). HTTP/1.0 may leave it out.
pub fn check_host(req: &Request<Incoming>) -> Result<(), ClientError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ClientError::DuplicateHost);
    }
    match first {
        None if req.version() == Version::HTTP_11 => Err(ClientError::MissingHost),
        // HTTP/2 carries the host in `:authority`, which hyper puts in the URI.
        None if req.version() == Version::HTTP_2 && req.uri().authority().is_none() => {
            Err(ClientError::MissingHost)
        }
        None => Ok(()),
        Some(v) if v.is_empty() => Ok(()),
        Some(v) => match Authority::try_from(v.as_bytes()) {
            Ok(a) if !a.as_str().contains('@') => Ok(()),
            _ => Err(ClientError::InvalidHost),
        },
    }
}

impl Upstream {
    pub fn new(config: &Config) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.upstream_timeouts.connect));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Upstream {
            client,
            authority: config.upstream.clone(),
            response_timeout: config.upstream_timeouts.response,
            trust_forwarded: config.trust_forwarded_headers,
        }
    }

    /// Points the request at the upstream and adds `X-Forwarded-*`.
    ///
    /// `Host` is the name the client called: the request target's authority when it has one
    /// (an HTTP/2 `:authority`, RFC 9113 §8.3.1, or an absolute-form target, RFC 9112 §3.2.2),
    /// else the client's `Host`. `X-Forwarded-Proto`/`-Host` are overwritten with what this hop
    /// saw, unless `trust_forwarded_headers` says a front proxy (TLS terminator) set them.
    pub fn rewrite<B>(&self, req: &mut Request<B>, peer: &Peer) {
        let host = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => req.headers().get(HOST).cloned(),
        };
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = Version::HTTP_11;

        let keep = |headers: &http::HeaderMap, name: &http::HeaderName| {
            self.trust_forwarded && headers.contains_key(name)
        };
        let headers = req.headers_mut();
        if let Some(host) = host {
            if !keep(headers, &X_FORWARDED_HOST) {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            headers.insert(HOST, host);
        }
        // Append to a chain a front proxy may have started (RFC 7239 §5.2 style).
        let xff = if headers.contains_key(&X_FORWARDED_FOR) {
            let mut joined = Vec::new();
            for hop in headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(hop.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(peer.forwarded_for.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        } else {
            Some(peer.forwarded_for.clone())
        };
        if let Some(xff) = xff {
            headers.insert(X_FORWARDED_FOR, xff);
        }
        if !keep(headers, &X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, peer.proto.clone());
        }
    }

    /// Sends the request; the response body streams, only the wait for headers is bounded.
    /// A failure caused by the client's body is the client's error, not the app's.
    pub async fn send(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(self.response_timeout)),
            Ok(Err(e)) => Err(match client_fault(&e) {
                Some(kind) => ProxyError::Client(kind),
                None if e.is_connect() => ProxyError::UpstreamConnect(e),
                None => ProxyError::Upstream(e),
            }),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}
