//! The proxy's request errors and the one place that turns them into responses.
//!
//! Each variant records which side failed (pingora's `ErrorSource`): the upstream (502/504),
//! the store (503), or the proxy itself (500). The client gets a short body and no detail;
//! the detail goes to the request's log line.

use std::time::Duration;

use http::{Response, StatusCode, header};

use crate::http::{ProxyBody, full};
use crate::metrics::UpstreamFailure;
use crate::session::RandomError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream unreachable: {0}")]
    UpstreamConnect(#[source] hyper_util::client::legacy::Error),
    #[error("upstream failed: {0}")]
    Upstream(#[source] hyper_util::client::legacy::Error),
    #[error("upstream sent no response within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("session store failed: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

impl ProxyError {
    /// How the upstream failed, if this is an upstream failure (a metric label).
    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        match self {
            ProxyError::UpstreamConnect(_) => Some(UpstreamFailure::Connect),
            ProxyError::UpstreamTimeout(_) => Some(UpstreamFailure::Timeout),
            ProxyError::Upstream(_) => Some(UpstreamFailure::Failed),
            ProxyError::Store(_) | ProxyError::Random(_) => None,
        }
    }
}

/// The one mapping from error to status.
pub fn status(error: &ProxyError) -> StatusCode {
    match error {
        ProxyError::UpstreamConnect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
        ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        ProxyError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        ProxyError::Random(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
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
    resp
}
