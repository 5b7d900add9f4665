//! The client's request body on its way to the app: bounded in time, its trailers filtered, and
//! its failures marked as the client's.
//!
//! Without a deadline a client that sends half a body and stops holds one of the app's workers
//! (which is reading it) for as long as the client likes. Two limits apply: the longest pause
//! between two pieces (`limits.body_idle_timeout`) and the whole body (`limits.body_timeout`).
//! The pause is timed only while this body is waiting on the client, never while the app is not
//! reading, so a slow app is not blamed on the client.
//!
//! A failure is reported as a [`BodyError`], which the upstream error keeps as its source, so
//! [`crate::upstream`] can tell "the client's body broke" (400 or 408, the client's fault) from
//! "the app broke" (502).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::config::Limits;
use crate::error::ClientError;
use crate::http::filter_trailers;
use crate::protocol::ProtocolHeaders;

/// The request body the upstream client sends.
pub struct RequestBody {
    inner: Incoming,
    reserved: Arc<ProtocolHeaders>,
    idle: Duration,
    total: Duration,
    /// When the whole body must be in: set on the first poll, so a request whose body is never
    /// read (a GET) costs no clock read.
    deadline: Option<Instant>,
    /// Armed while waiting on the client; made on the first wait only (a body that is already
    /// there, or a request without one, allocates nothing).
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

/// Why a request body could not be read: always the client's fault.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct BodyError {
    pub kind: ClientError,
    #[source]
    source: Option<hyper::Error>,
}

impl RequestBody {
    pub fn new(inner: Incoming, reserved: Arc<ProtocolHeaders>, limits: &Limits) -> Self {
        RequestBody {
            inner,
            reserved,
            idle: limits.body_idle_timeout,
            total: limits.body_timeout,
            deadline: None,
            timer: None,
            waiting: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let deadline = *this
            .deadline
            .get_or_insert_with(|| Instant::now() + this.total);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                return Poll::Ready(frame.map(|f| match f {
                    Ok(f) => Ok(filter_trailers(f, &this.reserved)),
                    Err(e) => Err(BodyError {
                        kind: ClientError::BodyMalformed,
                        source: Some(e),
                    }),
                }));
            }
            Poll::Pending => {}
        }
        // Waiting on the client: from now, it has `idle` for the next piece (and never past
        // the whole body's deadline).
        if !this.waiting {
            this.waiting = true;
            let at = (Instant::now() + this.idle).min(deadline);
            match &mut this.timer {
                Some(timer) => timer.as_mut().reset(at),
                None => this.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let fired = this
            .timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if fired {
            Poll::Ready(Some(Err(BodyError {
                kind: ClientError::BodyTimeout,
                source: None,
            })))
        } else {
            Poll::Pending
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;

/// The client's fault, if `error` (an upstream call's) was caused by the request body.
pub fn client_fault(error: &(dyn std::error::Error + 'static)) -> Option<ClientError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(body) = e.downcast_ref::<BodyError>() {
            return Some(body.kind);
        }
        next = e.source();
    }
    None
}
