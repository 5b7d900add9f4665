//! The responses the proxy sends: one body type for all of them ([`ProxyBody`]), the bodies the
//! proxy writes itself ([`full`]), and the one place an error becomes a response ([`response`]).

use bytes::Bytes;
use http::{Response, header};
use http_body_util::{Either, Full};

use crate::error::{ClientError, ProxyError, status};
use crate::http::Trailers;
use crate::upstream::ResponseBody;

/// Every response the proxy sends has this body type: the upstream's body streaming through, or
/// one the proxy wrote. An enum, not a boxed body: no allocation and no dynamic call per frame.
pub type ProxyBody = Either<Trailers<ResponseBody>, Full<Bytes>>;

/// A body built by the proxy itself.
pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Either::Right(Full::new(body.into()))
}

/// The response for `error`: its status and reason phrase, nothing internal.
pub fn response(error: &ProxyError) -> Response<ProxyBody> {
    let status = status(error);
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    if let ProxyError::Store(_) = error {
        // The store is expected back: a well-behaved client or load balancer retries later
        // instead of at once.
        h.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    if let ProxyError::Client(e) = error {
        if e.closes() {
            // hyper closes an HTTP/1.1 connection after a response that says so.
            h.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        if *e == ClientError::Connect {
            h.insert(
                header::ALLOW,
                header::HeaderValue::from_static(
                    "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE",
                ),
            );
        }
    }
    resp
}
