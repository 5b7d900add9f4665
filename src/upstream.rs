//! The upstream side: one pooled keep-alive HTTP/1.1 client, the request rewrite
//! (URI, Host, forwarding headers), the connect/response timeouts, and the check that a 101
//! answers an upgrade the request asked for (the connection then leaves the pool for the
//! tunnel, `proxy::tunnel`).

use std::time::Duration;

use http::header::{self, HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Config;
use crate::downstream::Peer;
use crate::error::{ClientError, ProxyError};
use crate::http::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, upgrade_agreed};
use crate::proxy::body::{RequestBody, client_fault};

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Headers an app (or its framework) may take as the client's address, scheme, host, port or
/// path, besides the three `X-Forwarded-*` this hop sets. Clients that reach the proxy directly
/// could set any of them, so without a trusted front proxy they are removed (or, for
/// `X-Real-IP` and `X-Forwarded-Port`, overwritten with what this hop saw). Compared with `_`
/// read as `-`, as CGI-style servers read them.
const FORWARDING: [&str; 16] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-proxyuser-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "x-url-scheme",
    "front-end-https",
];

/// `Client` is cheap to clone; its pool is shared by every request.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<HttpConnector, RequestBody>,
    authority: Authority,
    response_timeout: Duration,
    trust_forwarded: bool,
}

/// Whether `name`, with `_` read as `-`, equals `want` (lowercase, written with `-`).
fn same_name(name: &str, want: &str) -> bool {
    name.len() == want.len()
        && name
            .bytes()
            .zip(want.bytes())
            .all(|(n, w)| n == w || (n == b'_' && w == b'-'))
}

/// Whether `name` (with `_` read as `-`) starts with `prefix`.
fn starts_with_name(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && same_name(&name[..prefix.len()], prefix)
}

/// A forwarding header the client may not set unless a trusted front proxy vouches for it.
fn is_forwarding(name: &HeaderName) -> bool {
    let name = name.as_str();
    starts_with_name(name, "x-forwarded-") || FORWARDING.iter().any(|f| same_name(name, f))
}

/// A spelling with `_` of a header this hop sets: never a real front proxy's, always a trick
/// on servers that read `_` and `-` alike.
fn is_underscore_alias(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.contains('_')
        && [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-real-ip",
            "host",
        ]
        .iter()
        .any(|f| same_name(name, f))
}

/// Removes every header `pred` picks, allocating only if there is one.
fn remove_where(headers: &mut HeaderMap, pred: impl Fn(&HeaderName) -> bool) {
    if !headers.keys().any(&pred) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| pred(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
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

    /// Points the request at the upstream and sets the forwarding headers.
    ///
    /// `Host` is the name the client called: the request target's authority when it has one
    /// (an HTTP/2 `:authority`, RFC 9113 §8.3.1, or an absolute-form target, RFC 9112 §3.2.2),
    /// else the client's `Host`. Without a trusted front proxy, every forwarding header the
    /// client sent is removed or overwritten with what this hop saw (`X-Forwarded-For`,
    /// `-Proto`, `-Host`, `-Port`, `X-Real-IP`); with `trust_forwarded_headers`, a front proxy's
    /// values are kept and this hop's address is appended to `X-Forwarded-For`.
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

        let trust = self.trust_forwarded;
        let headers = req.headers_mut();
        if trust {
            remove_where(headers, is_underscore_alias);
        } else {
            remove_where(headers, |n| {
                is_forwarding(n) && n != X_FORWARDED_FOR || is_underscore_alias(n)
            });
        }
        let keep = |headers: &HeaderMap, name: &HeaderName| trust && headers.contains_key(name);
        if let Some(host) = host {
            if !keep(headers, &X_FORWARDED_HOST) {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            headers.insert(HOST, host);
        }
        // A trusted front proxy's chain is extended (RFC 7239 §5.2 style); an untrusted
        // client's is not believed at all.
        let xff = if trust && headers.contains_key(&X_FORWARDED_FOR) {
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
        if !trust {
            headers.insert(X_REAL_IP, peer.forwarded_for.clone());
            if let Some(port) = &peer.port {
                headers.insert(X_FORWARDED_PORT, port.clone());
            }
        }
    }

    /// Sends the request; the response body streams, only the wait for headers is bounded.
    /// A failure caused by the client's body is the client's error, not the app's. The request
    /// asks for an upgrade when it still carries `Upgrade` (the pipeline keeps it only for one
    /// it tunnels); a 101 is accepted only for such a request.
    pub async fn send(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, ProxyError> {
        let asked = req.headers().get(header::UPGRADE).cloned();
        let resp = match tokio::time::timeout(self.response_timeout, self.client.request(req)).await
        {
            Err(_) => return Err(ProxyError::UpstreamTimeout(self.response_timeout)),
            Ok(Err(e)) => {
                return Err(match client_fault(&e) {
                    Some(kind) => ProxyError::Client(kind),
                    None if e.is_connect() => ProxyError::UpstreamConnect(e),
                    None => ProxyError::Upstream(e),
                });
            }
            Ok(Ok(resp)) => resp,
        };
        check_framing(&resp, asked.as_ref())?;
        Ok(resp)
    }
}

/// Refuses responses whose framing this hop cannot forward faithfully. hyper reads a response
/// with both `Content-Length` and `Transfer-Encoding` by the latter, but the length would go on
/// to the client and cut the body short (RFC 9112 §6.3: a message with both is a smuggling
/// attempt or an error); and a `101` is a switch only to a protocol the request offered in
/// `asked`: to any other request, or to another protocol, the client could not be told what
/// the connection now speaks.
fn check_framing<B>(resp: &Response<B>, asked: Option<&HeaderValue>) -> Result<(), ProxyError> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return match asked {
            None => Err(ProxyError::BadUpstreamResponse(
                "101 Switching Protocols to a request that asked for no upgrade",
            )),
            Some(asked) if !upgrade_agreed(asked, resp.headers().get(header::UPGRADE)) => {
                Err(ProxyError::BadUpstreamResponse(
                    "101 Switching Protocols to a protocol the request did not offer",
                ))
            }
            Some(_) => Ok(()),
        };
    }
    let h = resp.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadUpstreamResponse(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_names_match_in_every_spelling() {
        for name in [
            "forwarded",
            "x-real-ip",
            "x_real_ip",
            "x-forwarded-port",
            "x_forwarded_for",
            "x-forwarded-anything",
            "true-client-ip",
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(is_forwarding(&name), "{name}");
        }
        for name in ["x-forwarder", "accept", "x-really"] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(!is_forwarding(&name), "{name}");
        }
        assert!(is_underscore_alias(&HeaderName::from_static(
            "x_forwarded_for"
        )));
        assert!(!is_underscore_alias(&HeaderName::from_static(
            "x-forwarded-for"
        )));
    }
}
