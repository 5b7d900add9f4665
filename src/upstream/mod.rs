//! The upstream side: the pool of keep-alive HTTP/1.1 connections to the app (`pool.rs`), the
//! request rewrite (target, Host, forwarding headers), the response timeout, one retry of a
//! request a reused connection handed back unsent, and the check that a 101 answers an upgrade
//! the request asked for (the connection then leaves for the tunnel, `proxy::tunnel`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, CONNECTION, FORWARDED, HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::config::Config;
use crate::downstream::Peer;
use crate::error::{ClientError, ProxyError};
use crate::http::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, upgrade_agreed};
use crate::proxy::body::{RequestBody, client_fault};

mod pool;

pub use pool::{ConnectError, ResponseBody};
use pool::{Lease, Pool};

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Headers an app (or its framework) may take as the client's address, scheme, host, port or
/// path, besides the three `X-Forwarded-*` this hop sets. Clients that reach the proxy directly
/// could set any of them, so from a peer that is not in `trusted_proxies` they are removed (or,
/// for `Forwarded`, `X-Real-IP` and `X-Forwarded-Port`, overwritten with what this hop saw).
/// Compared with `_` read as `-`, as CGI-style servers read them.
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

/// Built once at start; its pool is shared by every request.
pub struct Upstream {
    pool: Arc<Pool<RequestBody>>,
    /// The `Host` of a request that names none (HTTP/1.0 may leave it out): the app's
    /// authority, without the default port, as the legacy client set it from the URI.
    default_host: HeaderValue,
    response_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("default_host", &self.default_host)
            .finish_non_exhaustive()
    }
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
        let authority = &config.upstream;
        let host = match authority.port_u16() {
            None | Some(80) => authority.host().to_owned(),
            Some(port) => format!("{}:{port}", authority.host()),
        };
        Upstream {
            pool: Arc::new(Pool::new(
                authority.clone(),
                config.upstream_timeouts.connect,
                config.limits.max_connections,
                pool::IDLE_TIMEOUT,
            )),
            // An authority is always a valid header value.
            default_host: HeaderValue::from_str(&host)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            response_timeout: config.upstream_timeouts.response,
        }
    }

    /// Points the request at the upstream and sets the forwarding headers.
    ///
    /// `Host` is the name the client called: the request target's authority when it has one
    /// (an HTTP/2 `:authority`, RFC 9113 §8.3.1, or an absolute-form target, RFC 9112 §3.2.2),
    /// else the client's `Host`. This hop's element (`for`, `proto`, `host`) always ends the
    /// `Forwarded` chain (RFC 7239) and its address the `X-Forwarded-For` chain. From a peer
    /// that is not in `trusted_proxies`, every forwarding header the client sent is removed or
    /// overwritten, so both chains start at the peer. A trusted peer's chains are kept and
    /// extended, as are its `X-Forwarded-Proto`, `-Host`, `-Port` and `X-Real-IP`.
    ///
    /// The target goes in origin form (RFC 9112 §3.2.1), the app being no proxy: an
    /// HTTP/1.1 target usually already is, so only an absolute-form one or an HTTP/2 request's
    /// is rebuilt.
    pub fn rewrite<B>(&self, req: &mut Request<B>, peer: &Peer) {
        let host = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => req.headers().get(HOST).cloned(),
        };
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path);
        }
        *req.version_mut() = Version::HTTP_11;

        let trust = peer.trusted;
        let headers = req.headers_mut();
        if trust {
            remove_where(headers, is_underscore_alias);
        } else {
            remove_where(headers, |n| is_forwarding(n) || is_underscore_alias(n));
        }
        let element = forwarded_element(peer, host.as_ref());
        let (xff, forwarded) = if trust {
            trusted_chains(headers, peer, element)
        } else {
            (peer.forwarded_for.clone(), element)
        };
        headers.insert(X_FORWARDED_FOR, xff);
        headers.insert(FORWARDED, forwarded);
        let keep = |headers: &HeaderMap, name: &HeaderName| trust && headers.contains_key(name);
        if let Some(host) = host {
            if !keep(headers, &X_FORWARDED_HOST) {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            headers.insert(HOST, host);
        } else {
            headers.insert(HOST, self.default_host.clone());
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
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let asked = req.headers().get(header::UPGRADE).cloned();
        // Boxed: inline, its state (the request, the connect, hyper's send) would be copied
        // with the whole service future when hyper moves that (callgrind: about 10k
        // instructions of memcpy per request in hyper's `recv_msg`, against one allocation).
        let exchange = Box::pin(exchange(&self.pool, req));
        let resp = match tokio::time::timeout(self.response_timeout, exchange).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout(self.response_timeout)),
            Ok(answer) => answer?,
        };
        check_framing(&resp, asked.as_ref())?;
        Ok(resp)
    }
}

/// One request on a pooled connection (or a new one), and its response with the connection
/// leased to the body. A request that a reused connection hands back unsent (hyper gives it
/// back only when not a byte of it was written: the app had closed the idle connection and
/// hyper had not read the close yet) is sent once more, on a new connection; nothing else is
/// retried, so the app never sees a request twice.
async fn exchange<B>(
    pool: &Arc<Pool<B>>,
    req: Request<B>,
) -> Result<Response<ResponseBody<B>>, ProxyError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let closes = says_close(req.headers());
    let (mut sender, reused) = match pool.checkout() {
        Some(sender) => (sender, true),
        None => (
            pool.connect().await.map_err(ProxyError::UpstreamConnect)?,
            false,
        ),
    };
    let resp = match sender.try_send_request(req).await {
        Ok(resp) => resp,
        Err(mut unsent) => match unsent.take_message() {
            Some(req) if reused => {
                tracing::debug!(error = %unsent.error(), "a reused upstream connection was closed; sending the request on a new one");
                sender = pool.connect().await.map_err(ProxyError::UpstreamConnect)?;
                sender.send_request(req).await.map_err(failed)?
            }
            _ => return Err(failed(unsent.into_error())),
        },
    };
    // After a 101 the socket belongs to the tunnel; after a close, to nobody.
    let keep = resp.status() != StatusCode::SWITCHING_PROTOCOLS
        && resp.version() == Version::HTTP_11
        && !closes
        && !says_close(resp.headers());
    let lease = keep.then(|| Lease::new(sender, pool.clone()));
    Ok(resp.map(|body| ResponseBody::new(body, lease)))
}

/// The client's fault if the request body broke the exchange, else the app's.
fn failed(error: hyper::Error) -> ProxyError {
    match client_fault(&error) {
        Some(kind) => ProxyError::Client(kind),
        None => ProxyError::Upstream(error),
    }
}

/// Whether `Connection` lists `close` (RFC 9112 §9.6): the connection ends after this exchange.
fn says_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// Every field line of `name` joined into one list (RFC 9110 §5.3), or `None` if there is none
/// or the list holds nothing but whitespace and commas.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut lines = headers.get_all(name).iter();
    let mut list = lines.next()?.as_bytes().to_vec();
    for line in lines {
        list.extend_from_slice(b", ");
        list.extend_from_slice(line.as_bytes());
    }
    list.iter()
        .any(|b| !matches!(b, b' ' | b'\t' | b','))
        .then_some(list)
}

/// `list, last`, as a header value.
fn extended(mut list: Vec<u8>, last: &[u8]) -> Option<HeaderValue> {
    list.extend_from_slice(b", ");
    list.extend_from_slice(last);
    HeaderValue::from_bytes(&list).ok()
}

/// A trusted peer's `X-Forwarded-For` and `Forwarded` chains, each extended by this hop. The
/// two say the same thing: when the peer sent one and not the other (nginx's usual
/// `X-Forwarded-For` alone), the missing one is written from the other, so that an app reading
/// `Forwarded` first (as Spring does) does not take the front proxy for the client. A malformed
/// `Forwarded` is not passed on: it is replaced as if the peer had sent none.
fn trusted_chains(
    headers: &HeaderMap,
    peer: &Peer,
    element: HeaderValue,
) -> (HeaderValue, HeaderValue) {
    let xff = joined(headers, &X_FORWARDED_FOR);
    let forwarded =
        joined(headers, &FORWARDED).and_then(|list| match forwarded_for_values(&list) {
            Some(nodes) => Some((list, nodes)),
            None => {
                tracing::debug!("malformed Forwarded from a trusted proxy replaced");
                None
            }
        });
    let new_forwarded = match (&forwarded, &xff) {
        (Some((list, _)), _) => extended(list.clone(), element.as_bytes()),
        (None, Some(list)) => extended(forwarded_from_xff(list), element.as_bytes()),
        (None, None) => None,
    };
    let new_xff = match (xff, forwarded) {
        (Some(list), _) => extended(list, peer.forwarded_for.as_bytes()),
        (None, Some((_, nodes))) => extended(xff_from_nodes(&nodes), peer.forwarded_for.as_bytes()),
        (None, None) => None,
    };
    (
        new_xff.unwrap_or_else(|| peer.forwarded_for.clone()),
        new_forwarded.unwrap_or(element),
    )
}

/// This hop's `Forwarded` element (RFC 7239 §4): `for` the peer, `proto` the scheme it used,
/// `host` the name it called (left out when there is none).
fn forwarded_element(peer: &Peer, host: Option<&HeaderValue>) -> HeaderValue {
    let mut element = Vec::with_capacity(64);
    element.extend_from_slice(b"for=");
    element.extend_from_slice(peer.forwarded_node.as_bytes());
    element.extend_from_slice(b";proto=");
    push_value(&mut element, peer.proto.as_bytes());
    if let Some(host) = host.filter(|h| !h.is_empty()) {
        element.extend_from_slice(b";host=");
        push_value(&mut element, host.as_bytes());
    }
    // Every byte came from a header value or is ASCII punctuation: always a valid value.
    HeaderValue::from_bytes(&element).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A `Forwarded` value (RFC 7239 §4: `token / quoted-string`): as it is when it is a token,
/// else quoted, with `"` and `\` escaped (RFC 9110 §5.6.4).
fn push_value(out: &mut Vec<u8>, value: &[u8]) {
    if !value.is_empty() && value.iter().copied().all(is_tchar) {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// The `for` value of each element of a `Forwarded` list (unquoted; `None` where an element has
/// none), or `None` if the list does not follow RFC 7239 §4: `1#forwarded-element`, each
/// `[ pair ] *( ";" [ pair ] )`, a pair `token "=" ( token / quoted-string )`, no parameter
/// twice in one element. Whitespace is allowed around `,` (the list rule) and `;`.
fn forwarded_for_values(list: &[u8]) -> Option<Vec<Option<Vec<u8>>>> {
    let ows = |i: &mut usize| {
        while list.get(*i).is_some_and(|b| matches!(b, b' ' | b'\t')) {
            *i += 1;
        }
    };
    let mut fors = Vec::new();
    let mut i = 0;
    loop {
        ows(&mut i);
        match list.get(i) {
            None => break,
            // An empty list element, which a recipient ignores (RFC 9110 §5.6.1).
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(_) => {}
        }
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut for_value = None;
        loop {
            ows(&mut i);
            match list.get(i) {
                None | Some(b',') => break,
                Some(b';') => {
                    i += 1;
                    continue;
                }
                Some(_) => {}
            }
            let start = i;
            while list.get(i).copied().is_some_and(is_tchar) {
                i += 1;
            }
            let name = list[start..i].to_ascii_lowercase();
            if name.is_empty() || list.get(i) != Some(&b'=') || names.contains(&name) {
                return None;
            }
            i += 1;
            let value = if list.get(i) == Some(&b'"') {
                quoted(list, &mut i)?
            } else {
                let start = i;
                while list.get(i).copied().is_some_and(is_tchar) {
                    i += 1;
                }
                if i == start {
                    return None;
                }
                list[start..i].to_vec()
            };
            if name == b"for" {
                for_value = Some(value);
            }
            names.push(name);
            ows(&mut i);
            match list.get(i) {
                None | Some(b',') => break,
                Some(b';') => i += 1,
                Some(_) => return None,
            }
        }
        fors.push(for_value);
        if list.get(i) == Some(&b',') {
            i += 1;
        }
    }
    (!fors.is_empty()).then_some(fors)
}

/// The content of the quoted-string that starts at `list[*i]`, leaving `*i` after it.
fn quoted(list: &[u8], i: &mut usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    *i += 1;
    loop {
        let b = *list.get(*i)?;
        *i += 1;
        match b {
            b'"' => return Some(out),
            b'\\' => {
                let escaped = *list.get(*i)?;
                *i += 1;
                out.push(escaped);
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => out.push(b),
            _ => return None,
        }
    }
}

/// The address a `Forwarded` node names (`192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]`,
/// `[2001:db8::1]:80`), if it names one.
fn node_ip(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (ip, tail) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        return (tail.is_empty() || tail.starts_with(':')).then_some(IpAddr::V6(ip));
    }
    let host = node.split_once(':').map_or(node, |(host, _)| host);
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// An `X-Forwarded-For` list saying what a `Forwarded` list's `for` values say: each address
/// without its port, `unknown` and obfuscated names (RFC 7239 §6.2, §6.3) as they are.
fn xff_from_nodes(nodes: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut list = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        if n > 0 {
            list.extend_from_slice(b", ");
        }
        let node = node.as_deref().and_then(|v| std::str::from_utf8(v).ok());
        match node {
            Some(node) => match node_ip(node) {
                Some(ip) => list.extend_from_slice(ip.to_string().as_bytes()),
                None if node.bytes().all(is_tchar) && !node.is_empty() => {
                    list.extend_from_slice(node.as_bytes());
                }
                None => list.extend_from_slice(b"unknown"),
            },
            None => list.extend_from_slice(b"unknown"),
        }
    }
    list
}

/// An address as a `Forwarded` node (RFC 7239 §6): IPv4 as a token, IPv6 in brackets, and
/// then quoted, since `[` and `:` are not token characters.
pub(crate) fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// A `Forwarded` list saying what an `X-Forwarded-For` list says: one `for=` element per entry.
fn forwarded_from_xff(xff: &[u8]) -> Vec<u8> {
    let mut list = Vec::new();
    let entries = xff
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty());
    for entry in entries {
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(b"for=");
        let text = std::str::from_utf8(entry).unwrap_or("");
        if let Ok(ip) = text.parse::<IpAddr>() {
            list.extend_from_slice(forwarded_node(ip).as_bytes());
        } else if let Ok(addr) = text.parse::<SocketAddr>() {
            push_value(&mut list, addr.to_string().as_bytes());
        } else if entry.iter().copied().all(is_tchar) {
            list.extend_from_slice(entry);
        } else {
            list.extend_from_slice(b"unknown");
        }
    }
    list
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

    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;

    /// An app on 127.0.0.1 that answers every request 200, and how many connections it took.
    async fn counting_app() -> (Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, SeqCst);
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (authority, accepted)
    }

    fn pool(authority: Authority) -> Arc<Pool<Empty<Bytes>>> {
        Arc::new(Pool::new(
            authority,
            Duration::from_secs(2),
            4,
            pool::IDLE_TIMEOUT,
        ))
    }

    fn request() -> Request<Empty<Bytes>> {
        Request::get("/")
            .header(HOST, "t")
            .body(Empty::new())
            .unwrap()
    }

    /// The race the retry is for, made certain: a pooled connection whose task has not run when
    /// the request is queued on it (as when the app's close is in flight) hands the request
    /// back when it ends, unsent; the request goes once more, on a new connection.
    #[tokio::test]
    async fn a_request_a_reused_connection_hands_back_unsent_goes_on_a_new_one() {
        let (authority, accepted) = counting_app().await;
        let pool = pool(authority.clone());
        let stale = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stale))
            .await
            .unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(conn);
        });
        pool.push(sender);
        let resp = exchange(&pool, request()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(accepted.load(SeqCst), 2, "the stale one and a new one");
        drop(resp);
        // The body was empty: the connection went back as soon as hyper was ready for more.
        for _ in 0..200 {
            if pool.idle_count() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pool.idle_count(), 1, "the new one is back in the pool");
        let resp = exchange(&pool, request()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(accepted.load(SeqCst), 2, "and is reused");
    }

    /// On a new connection there is nothing to retry on: the failure is the app's.
    #[tokio::test]
    async fn a_new_connection_that_fails_is_not_retried() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            // Reads the request, then closes without a byte of answer.
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, SeqCst);
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            }
        });
        let pool = pool(authority);
        match exchange(&pool, request()).await.err() {
            Some(ProxyError::Upstream(_)) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(accepted.load(SeqCst), 1);
        assert_eq!(pool.idle_count(), 0);
    }

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

    fn peer(addr: &str) -> Peer {
        Peer::plain(addr.parse().unwrap())
    }

    /// RFC 7239 §4 and §6: IPv6 nodes bracketed and quoted, a value that is not a token quoted
    /// with `"` and `\` escaped, `host` left out when there is none.
    #[test]
    fn this_hops_forwarded_element_quotes_what_is_not_a_token() {
        let host = |h: &'static str| Some(HeaderValue::from_static(h));
        let cases = [
            (
                "192.0.2.60:1",
                host("example.com"),
                "for=192.0.2.60;proto=http;host=example.com",
            ),
            (
                "[2001:db8:cafe::17]:1",
                host("example.com:8080"),
                "for=\"[2001:db8:cafe::17]\";proto=http;host=\"example.com:8080\"",
            ),
            (
                "[::ffff:192.0.2.60]:1",
                host("[::1]:8443"),
                "for=192.0.2.60;proto=http;host=\"[::1]:8443\"",
            ),
            ("127.0.0.1:1", None, "for=127.0.0.1;proto=http"),
            ("127.0.0.1:1", host(""), "for=127.0.0.1;proto=http"),
        ];
        for (addr, host, want) in cases {
            assert_eq!(
                forwarded_element(&peer(addr), host.as_ref()),
                want,
                "{addr}"
            );
        }
        let mut out = Vec::new();
        push_value(&mut out, br#"a "b" \c"#);
        assert_eq!(out, br#""a \"b\" \\c""#);
        let mut out = Vec::new();
        push_value(&mut out, b"");
        assert_eq!(out, b"\"\"");
    }

    #[test]
    fn forwarded_lists_are_parsed_by_rfc_7239_or_refused() {
        let fors = |list: &str| {
            forwarded_for_values(list.as_bytes()).map(|v| {
                v.into_iter()
                    .map(|f| f.map(|f| String::from_utf8(f).unwrap()))
                    .collect::<Vec<_>>()
            })
        };
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            fors("for=192.0.2.43, for=\"[2001:db8:cafe::17]\";proto=https;by=203.0.113.60"),
            Some(vec![s("192.0.2.43"), s("[2001:db8:cafe::17]")])
        );
        assert_eq!(fors("For=unknown ;Proto=http"), Some(vec![s("unknown")]));
        assert_eq!(
            fors("proto=https,,for=_hidden"),
            Some(vec![None, s("_hidden")])
        );
        assert_eq!(fors("for=\"a\\\"b\""), Some(vec![s("a\"b")]));
        assert_eq!(fors("for=1.2.3.4;;host=x"), Some(vec![s("1.2.3.4")]));
        for bad in [
            "for=",
            "for",
            "=1.2.3.4",
            "for=1.2.3.4;for=5.6.7.8",
            "for=\"unterminated",
            "for=1.2.3.4 junk",
            "for=[::1]",
            "for=a/b",
            ", ,",
        ] {
            assert_eq!(fors(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_chain_is_written_from_the_other() {
        let nodes = forwarded_for_values(
            b"for=\"192.0.2.43:80\", for=\"[2001:db8::1]:4711\", for=unknown, proto=http, for=_x, for=\"a b\"",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(xff_from_nodes(&nodes)).unwrap(),
            "192.0.2.43, 2001:db8::1, unknown, unknown, _x, unknown"
        );
        assert_eq!(
            String::from_utf8(forwarded_from_xff(
                b"203.0.113.9, 2001:db8::1,, 192.0.2.1:80, unknown, not an ip"
            ))
            .unwrap(),
            "for=203.0.113.9, for=\"[2001:db8::1]\", for=\"192.0.2.1:80\", for=unknown, for=unknown"
        );
    }
}
