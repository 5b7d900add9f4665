//! The upstream side: the pool of keep-alive HTTP/1.1 connections to the app (`pool.rs`), the
//! request rewrite (target, Host, forwarding headers), the response timeout, one retry of a
//! request a reused connection handed back unsent, and the check that a 101 answers an upgrade
//! the request asked for (the connection then leaves for the tunnel, `proxy::tunnel`).

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, CONNECTION, HOST, HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};

use crate::config::Config;
use crate::error::ProxyError;
use crate::forwarding::{self, Peer};
use crate::http::upgrade_agreed;
use crate::http::{ForwardBody, client_fault};

mod pool;

pub use pool::ResponseBody;
use pool::{Lease, Pool};

/// Built at start; its pool is shared by every request (and by the clones a reload makes when
/// the app's address stays).
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool<ForwardBody>>,
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

    /// The settings of `config` over this pool, if they can share it (the same app, connect
    /// timeout and connection cap); `None` when a new pool is needed.
    pub fn reconfigured(&self, old: &Config, config: &Config) -> Option<Self> {
        let same = old.upstream == config.upstream
            && old.upstream_timeouts.connect == config.upstream_timeouts.connect
            && old.limits.max_connections == config.limits.max_connections;
        same.then(|| Upstream {
            response_timeout: config.upstream_timeouts.response,
            ..self.clone()
        })
    }

    /// Points the request at the upstream and sets the forwarding headers
    /// ([`forwarding::set_headers`]).
    ///
    /// `Host` is the name the client called: the request target's authority when it has one
    /// (an HTTP/2 `:authority`, RFC 9113 §8.3.1, or an absolute-form target, RFC 9112 §3.2.2),
    /// else the client's `Host`, else the app's authority.
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

        let headers = req.headers_mut();
        let called = host.clone().unwrap_or_else(|| self.default_host.clone());
        headers.insert(HOST, called);
        forwarding::set_headers(headers, peer, host.as_ref());
    }

    /// Sends the request; the response body streams, only the wait for headers is bounded.
    /// A failure caused by the client's body is the client's error, not the app's. The request
    /// asks for an upgrade when it still carries `Upgrade` (the pipeline keeps it only for one
    /// it tunnels); a 101 is accepted only for such a request.
    pub async fn send(
        &self,
        req: Request<ForwardBody>,
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
    use http::uri::Authority;
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
}
