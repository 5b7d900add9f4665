//! Whether a connection has a request in flight: what tells an idle connection (closed at
//! shutdown at once, or after `keep_alive_timeout`) from a busy one (given its deadline).
//!
//! A request is in flight from the moment hyper hands it to the service until its response
//! body is done or dropped, so a long download counts as busy, not idle.
//!
//! The driver learns that a request ended without a wake-up where it can: an HTTP/1 request's
//! service future and response body live in the connection's future, which the driver polls, so
//! their end happens inside that poll and the driver looks at [`Activity::take_ended`] right
//! after it. An HTTP/2 stream runs in a task of its own, so its end wakes the driver. A wake per
//! HTTP/1 request would cost a second poll of the whole connection (measured in
//! bench/PROFILE.md, "[perf-3] experiments").

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};

/// Shared by a connection's driver and the requests on it: two atomics and the driver's waker,
/// made once per connection.
#[derive(Debug, Default)]
pub(super) struct Activity {
    in_flight: AtomicUsize,
    /// A request ended since the driver last looked.
    ended: AtomicBool,
    /// The driver's task, woken by a request that ends in another task.
    driver: AtomicWaker,
}

impl Activity {
    /// Marks a request as in flight until the returned guard is dropped. `elsewhere`: the
    /// request runs outside the driver's task (HTTP/2), so its end must wake the driver.
    pub(super) fn enter(self: &Arc<Self>, elsewhere: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            activity: self.clone(),
            elsewhere,
        }
    }

    pub(super) fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// The task to wake when a request ends outside it; call before [`Self::take_ended`].
    pub(super) fn register(&self, waker: &Waker) {
        self.driver.register(waker);
    }

    /// Whether a request ended since the last call; clears it.
    pub(super) fn take_ended(&self) -> bool {
        self.ended.swap(false, Ordering::AcqRel)
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
    elsewhere: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.ended.store(true, Ordering::Release);
            if self.elsewhere {
                activity.driver.wake();
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is done: the last frame sent,
    /// or the body dropped (the client went away).
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> Tracked<B> {
    pub(super) fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            in_flight: Some(in_flight),
        }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            this.in_flight.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
