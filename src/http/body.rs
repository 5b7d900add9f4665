//! The client's request body on its way to the app (or into a buffer, `buffer.rs`): bounded in
//! time, rate and size, its trailers filtered, and its failures marked as the client's.
//!
//! Without a deadline a client that sends half a body and stops holds one of the app's workers
//! (which is reading it) for as long as the client likes. Four limits apply: the longest pause
//! between two pieces (`limits.body_idle_timeout`), the whole body (`limits.body_timeout`), the
//! minimum rate after a grace (`limits.body_min_rate`, which a client trickling a byte now and
//! then, never idle for long, cannot meet), and the size (`limits.max_body_size`). Pauses and
//! the rate are timed only while this body is waiting on the client, never while the app is not
//! reading, so a slow app is not blamed on the client.
//!
//! A failure is reported as a [`BodyError`], which the upstream error keeps as its source, so
//! [`crate::upstream`] can tell "the client's body broke" (400, 408 or 413, the client's fault) from
//! "the app broke" (502).

use std::collections::VecDeque;
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

/// The client's request body, read under the `[limits]` on bodies.
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
    /// Where the timer is set now, so it is reset only when that changes.
    armed: Option<Instant>,
    /// Since when this body has been waiting on the client, and until when it may (the idle
    /// limit, never past the deadline).
    waiting: Option<(Instant, Instant)>,
    /// Time spent waiting on the client before the current wait: the clock `rate` runs on.
    waited: Duration,
    /// Data bytes read so far.
    received: u64,
    max_size: Option<u64>,
    rate: Option<MinRate>,
}

/// Why a request body could not be read: always the client's fault.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct BodyError {
    pub kind: ClientError,
    #[source]
    source: Option<hyper::Error>,
}

impl BodyError {
    fn new(kind: ClientError) -> Self {
        BodyError { kind, source: None }
    }
}

impl RequestBody {
    pub fn new(inner: Incoming, reserved: Arc<ProtocolHeaders>, limits: &Limits) -> Self {
        let is_empty = inner.is_end_stream();
        RequestBody {
            inner,
            reserved,
            idle: limits.body_idle_timeout,
            total: limits.body_timeout,
            deadline: None,
            timer: None,
            armed: None,
            waiting: None,
            waited: Duration::ZERO,
            received: 0,
            max_size: limits.max_body_size,
            // Only a body still to come is timed: a GET's empty body costs no allocation.
            rate: (limits.body_min_rate > 0 && !is_empty)
                .then(|| MinRate::new(limits.body_min_rate, limits.body_min_rate_grace)),
        }
    }

    /// The client's time on this body so far: what it spent waiting on the client.
    fn client_time(&self, now: Instant) -> Duration {
        self.waited
            + self
                .waiting
                .map_or(Duration::ZERO, |(since, _)| now - since)
    }

    /// The rate check up to `now` on the client's clock; `Err` when the body fell below it.
    fn check_rate(&mut self, at: Duration) -> Result<(), BodyError> {
        let received = self.received;
        let slow = self
            .rate
            .as_mut()
            .is_some_and(|rate| !rate.keeps_up(at, received));
        if slow {
            Err(BodyError::new(ClientError::BodyTooSlow))
        } else {
            Ok(())
        }
    }

    /// A frame from the client: counted against `max_body_size`, its trailers filtered.
    fn take(
        &mut self,
        frame: Result<Frame<Bytes>, hyper::Error>,
    ) -> Result<Frame<Bytes>, BodyError> {
        let frame = frame.map_err(|e| BodyError {
            kind: ClientError::BodyMalformed,
            source: Some(e),
        })?;
        if let Some(data) = frame.data_ref() {
            self.received += data.len() as u64;
            if self.max_size.is_some_and(|max| self.received > max) {
                return Err(BodyError::new(ClientError::BodyTooLarge));
            }
        }
        Ok(filter_trailers(frame, &self.reserved))
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
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some((since, _)) = this.waiting.take() {
                this.waited += since.elapsed();
                // Checked before this frame counts: the window was judged as it stood while
                // the client kept the body waiting.
                if let Err(e) = this.check_rate(this.waited) {
                    return Poll::Ready(Some(Err(e)));
                }
            }
            return Poll::Ready(frame.map(|f| this.take(f)));
        }
        // Waiting on the client: from now, it has `idle` for the next piece (and never past
        // the whole body's deadline), and the rate is judged at each of its points.
        let mut now = Instant::now();
        let idle_until = match this.waiting {
            Some((_, until)) => until,
            None => {
                let until = (now + this.idle).min(deadline);
                this.waiting = Some((now, until));
                until
            }
        };
        loop {
            let at = this.client_time(now);
            if let Err(e) = this.check_rate(at) {
                return Poll::Ready(Some(Err(e)));
            }
            if now >= idle_until {
                return Poll::Ready(Some(Err(BodyError::new(ClientError::BodyTimeout))));
            }
            let wake = match &this.rate {
                Some(rate) => idle_until.min(now + rate.next.saturating_sub(at)),
                None => idle_until,
            };
            if this.armed != Some(wake) {
                this.armed = Some(wake);
                match &mut this.timer {
                    Some(timer) => timer.as_mut().reset(wake),
                    None => this.timer = Some(Box::pin(tokio::time::sleep_until(wake))),
                }
            }
            let fired = this
                .timer
                .as_mut()
                .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
            if !fired {
                return Poll::Pending;
            }
            now = Instant::now();
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `limits.body_min_rate`: after the grace, every window of the grace's length (on the client's
/// clock: time spent waiting on it) must have brought `rate` bytes a second. Judged at every
/// quarter window, from five points (a window's start and its quarters), so it costs nothing
/// per frame but an add.
#[derive(Debug)]
struct MinRate {
    /// Bytes one window must bring.
    per_window: u64,
    window: Duration,
    step: Duration,
    /// The client time of the next point.
    next: Duration,
    /// (client time, bytes received) at each point of the last window.
    points: VecDeque<(Duration, u64)>,
}

impl MinRate {
    fn new(rate: u64, window: Duration) -> Self {
        let per_window =
            u64::try_from(u128::from(rate) * window.as_millis() / 1000).unwrap_or(u64::MAX);
        let step = (window / 4).max(Duration::from_millis(1));
        let mut points = VecDeque::with_capacity(6);
        points.push_back((Duration::ZERO, 0));
        MinRate {
            per_window,
            window,
            step,
            next: step,
            points,
        }
    }

    /// Whether the body kept up until client time `at`, with `received` bytes read by then.
    fn keeps_up(&mut self, at: Duration, received: u64) -> bool {
        while self.next <= at {
            let point = self.next;
            self.next += self.step;
            self.points.push_back((point, received));
            while self
                .points
                .front()
                .is_some_and(|(t, _)| *t + self.window < point)
            {
                self.points.pop_front();
            }
            if point < self.window {
                continue;
            }
            let from = self.points.front().map_or(0, |(_, bytes)| *bytes);
            if received - from < self.per_window {
                return false;
            }
        }
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_rate_is_judged_only_after_the_grace_and_over_the_last_window() {
        // 10 bytes a second over a 4 s window: 40 bytes per window.
        let mut rate = MinRate::new(10, 4 * S);
        // Nothing for the grace's first 3 s is not judged yet.
        assert!(rate.keeps_up(3 * S, 0));
        // At 4 s the first window is judged: 40 bytes were needed.
        assert!(rate.keeps_up(4 * S, 40));
        // 80 in all by 5 s: each window up to [3 s, 7 s] brought at least 40.
        assert!(rate.keeps_up(7 * S, 80));
        // The client stops: the window [4 s, 8 s] still holds the 40 that came after 4 s.
        assert!(rate.keeps_up(8 * S, 80));
        // By 9 s the window [5 s, 9 s] brought nothing.
        assert!(!rate.keeps_up(9 * S, 80));
    }

    #[test]
    fn a_client_that_trickles_below_the_rate_fails_at_the_end_of_the_grace() {
        let mut rate = MinRate::new(1024, S);
        assert!(rate.keeps_up(Duration::from_millis(999), 1));
        assert!(!rate.keeps_up(S, 1));
    }
}
