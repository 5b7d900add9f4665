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
use crate::error::ProxyError;
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

    /// Points the request at the upstream and adds `X-Forwarded-*`. The client's `Host` is
    /// kept (an HTTP/2 request's `:authority` becomes `Host`), so the app sees the name it was
    /// called by. `X-Forwarded-Proto`/`-Host` are overwritten with what this hop saw, unless
    /// `trust_forwarded_headers` says a front proxy (TLS terminator) set them.
    pub fn rewrite<B>(&self, req: &mut Request<B>, peer: &Peer) {
        let host = match req.headers().get(HOST) {
            Some(host) => Some(host.clone()),
            None => req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
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
