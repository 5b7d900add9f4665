//! Request buffering (nginx's `proxy_request_buffering`): a body up to `limits.request_buffer`
//! bytes is read whole before the app is asked, so a slow client costs the proxy a buffer, never
//! one of the app's workers. All buffers together hold at most `limits.request_buffer_total`
//! bytes (a [`Semaphore`] of bytes); a body that would go over it, or that is larger than one
//! buffer, streams as it comes ([`ForwardBody`] either way, the body the upstream client sends).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::http::body::{BodyError, RequestBody};

/// The buffers' budget, shared by every request (clones share it).
#[derive(Debug, Clone)]
pub struct Buffers {
    /// One permit per byte of `limits.request_buffer_total` not held by a buffer now.
    total: Arc<Semaphore>,
    /// `limits.request_buffer`: 0 buffers nothing.
    limit: u64,
}

/// How a request's body goes to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffering {
    /// Read whole: the app gets it at once, with its length.
    Whole,
    /// Streamed: no body, or one larger than `limits.request_buffer` (or buffering is off).
    Streamed,
    /// Streamed because the buffers' total was spent.
    Overflowed,
}

/// The body the upstream client sends: the buffered body, or the client's streaming through
/// (after what was read of it while trying to buffer it).
pub struct ForwardBody(Inner);

enum Inner {
    Whole {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
        /// The buffer's bytes in the total, given back when the body is dropped (sent).
        _held: Option<OwnedSemaphorePermit>,
    },
    Streamed {
        read: Option<Bytes>,
        /// The bytes of `read` in the total, given back once they are sent.
        held: Option<OwnedSemaphorePermit>,
        rest: RequestBody,
    },
}

/// What was read of a body so far: most bodies come in one piece, kept as it came; a second
/// piece copies them into one buffer, so what is held is what is counted.
enum Read {
    Nothing,
    One(Bytes),
    Many(BytesMut),
}

impl Read {
    fn push(&mut self, data: Bytes, capacity: u64) {
        *self = match std::mem::replace(self, Read::Nothing) {
            Read::Nothing => Read::One(data),
            Read::One(first) => {
                let want = usize::try_from(capacity).unwrap_or(usize::MAX);
                let mut all = BytesMut::with_capacity(want.max(first.len() + data.len()));
                all.extend_from_slice(&first);
                all.extend_from_slice(&data);
                Read::Many(all)
            }
            Read::Many(mut all) => {
                all.extend_from_slice(&data);
                Read::Many(all)
            }
        };
    }

    fn into_bytes(self) -> Option<Bytes> {
        match self {
            Read::Nothing => None,
            Read::One(data) => Some(data),
            Read::Many(all) => Some(all.freeze()),
        }
    }
}

impl Buffers {
    pub fn new(limits: &Limits) -> Self {
        let total = usize::try_from(limits.request_buffer_total)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Buffers {
            total: Arc::new(Semaphore::new(total)),
            limit: limits.request_buffer,
        }
    }

    /// Reads `body` whole if it fits in a buffer and in what is left of the total, else hands it
    /// back to stream (with what was read of it). A known length is reserved at once; an unknown
    /// one piece by piece, so a body that outgrows the total streams from there.
    pub async fn read(&self, mut body: RequestBody) -> Result<(ForwardBody, Buffering), BodyError> {
        let hint = body.size_hint();
        if self.limit == 0 || body.is_end_stream() || hint.lower() > self.limit {
            return Ok((ForwardBody::streamed(None, None, body), Buffering::Streamed));
        }
        let declared = hint.exact();
        let mut held = match declared {
            Some(n) => match self.reserve(n) {
                Some(permit) => Some(permit),
                None => {
                    return Ok((
                        ForwardBody::streamed(None, None, body),
                        Buffering::Overflowed,
                    ));
                }
            },
            None => None,
        };
        let capacity = declared.unwrap_or(0);
        let mut read = Read::Nothing;
        let mut len: u64 = 0;
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let data = match frame?.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            };
            len += data.len() as u64;
            if declared.is_none() {
                // hyper holds a declared body to its length; any other is counted here.
                let over = if len > self.limit {
                    Some(Buffering::Streamed)
                } else {
                    match self.reserve(data.len() as u64) {
                        Some(more) => {
                            match &mut held {
                                Some(permit) => permit.merge(more),
                                None => held = Some(more),
                            }
                            None
                        }
                        None => Some(Buffering::Overflowed),
                    }
                };
                if let Some(how) = over {
                    read.push(data, 0);
                    let body = ForwardBody::streamed(read.into_bytes(), held, body);
                    return Ok((body, how));
                }
            }
            read.push(data, capacity);
        }
        let body = ForwardBody(Inner::Whole {
            data: read.into_bytes(),
            trailers,
            _held: held,
        });
        Ok((body, Buffering::Whole))
    }

    /// `bytes` of the total, if that many are free now (a buffer never waits for room).
    fn reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes).ok()?;
        self.total.clone().try_acquire_many_owned(n).ok()
    }
}

impl ForwardBody {
    fn streamed(
        read: Option<Bytes>,
        held: Option<OwnedSemaphorePermit>,
        rest: RequestBody,
    ) -> Self {
        ForwardBody(Inner::Streamed { read, held, rest })
    }

    /// The length of a body read whole without trailers: what goes in its `Content-Length`.
    pub fn whole_length(&self) -> Option<u64> {
        match &self.0 {
            Inner::Whole {
                data,
                trailers: None,
                ..
            } => Some(data.as_ref().map_or(0, |d| d.len() as u64)),
            _ => None,
        }
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().0 {
            Inner::Whole { data, trailers, .. } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Inner::Streamed { read, held, rest } => {
                if let Some(data) = read.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                *held = None;
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Whole { data, trailers, .. } => data.is_none() && trailers.is_none(),
            Inner::Streamed { read, rest, .. } => read.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Whole { data, trailers, .. } => {
                let len = data.as_ref().map_or(0, |d| d.len() as u64);
                match trailers {
                    // Trailers need chunked framing, which a known length would rule out.
                    Some(_) => {
                        let mut hint = SizeHint::new();
                        hint.set_lower(len);
                        hint
                    }
                    None => SizeHint::with_exact(len),
                }
            }
            Inner::Streamed { read, rest, .. } => {
                let more = read.as_ref().map_or(0, |d| d.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + more);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + more);
                }
                hint
            }
        }
    }
}
