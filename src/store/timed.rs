//! [`Timed`]: the wrapper every caller's store calls go through (the proxy, the CLI, the admin
//! API), so `store.timeout` bounds each one wherever it comes from, and a stuck store costs a
//! clear error instead of a hang; and the one place that records each operation's latency and
//! store-side errors for `/metrics`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Alias, Blame, Capabilities, ExpiredSink, Loaded, Page, Record, Result, SessionStore,
    StoreError, Update,
};
use crate::metrics::{StoreMetrics, StoreOp};
use crate::session::{Handle, SessionId};

/// `store.timeout` as [`Timed`] reads it at every call, so a reload can change it (`None`: the
/// backend never waits, and a reload leaves it so). Clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Limit(Option<Arc<AtomicU64>>);

impl Limit {
    pub fn new(limit: Option<Duration>) -> Self {
        Limit(limit.map(|d| Arc::new(AtomicU64::new(nanos(d)))))
    }

    fn get(&self) -> Option<Duration> {
        self.0
            .as_ref()
            .map(|n| Duration::from_nanos(n.load(Ordering::Relaxed)))
    }

    /// Bounds the calls that start from now on by `limit` (a store that never waits stays so).
    pub fn set(&self, limit: Duration) {
        if let Some(n) = &self.0 {
            n.store(nanos(limit), Ordering::Relaxed);
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A backend whose every call is bounded by `limit` (`None`: the backend never waits, so no
/// timer is armed).
#[derive(Debug)]
pub struct Timed<S> {
    inner: S,
    limit: Limit,
    metrics: StoreMetrics,
}

impl<S: SessionStore> Timed<S> {
    pub fn new(inner: S, limit: Limit, metrics: StoreMetrics) -> Self {
        Timed {
            inner,
            limit,
            metrics,
        }
    }

    async fn run<T>(&self, op: StoreOp, call: impl Future<Output = Result<T>>) -> Result<T> {
        let start = Instant::now();
        let result = match self.limit.get() {
            None => call.await,
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Err(StoreError::Timeout(limit))),
        };
        // A refused change (too large, a bad cursor) is the caller's, not a store error.
        let failed = matches!(&result, Err(e) if e.blame() == Blame::Store);
        self.metrics.observe(op, start.elapsed(), failed);
        result
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for Timed<S> {
    async fn load(&self, id: &Handle) -> Result<Option<Record>> {
        self.run(StoreOp::Load, self.inner.load(id)).await
    }

    /// Counted as a load, the removal of an expired record included: it is the request's one
    /// read, and `store.timeout` bounds both halves together.
    async fn load_or_expired(&self, id: &Handle) -> Result<Loaded> {
        self.run(StoreOp::Load, self.inner.load_or_expired(id))
            .await
    }

    /// Counted as a load too: it is the rest of the request's one read, under its own
    /// `store.timeout`.
    async fn adopt_legacy(&self, id: &SessionId, handle: &Handle) -> Result<Loaded> {
        self.run(StoreOp::Load, self.inner.adopt_legacy(id, handle))
            .await
    }

    /// One call for the whole batch, under one `store.timeout`.
    async fn live_among(&self, handles: &[Handle]) -> Result<Vec<bool>> {
        self.run(StoreOp::Live, self.inner.live_among(handles))
            .await
    }

    async fn create(&self, id: &Handle, record: &Record) -> Result<bool> {
        self.run(StoreOp::Create, self.inner.create(id, record))
            .await
    }

    async fn update(&self, id: &Handle, update: &Update) -> Result<Option<Record>> {
        self.run(StoreOp::Update, self.inner.update(id, update))
            .await
    }

    async fn delete(&self, id: &Handle) -> Result<bool> {
        self.run(StoreOp::Delete, self.inner.delete(id)).await
    }

    /// One deadline for the whole move, whatever the backend does inside it.
    async fn regenerate_aliased(
        &self,
        old: &Handle,
        new: &Handle,
        update: &Update,
        alias: Option<&Alias>,
    ) -> Result<Option<Record>> {
        self.run(
            StoreOp::Regenerate,
            self.inner.regenerate_aliased(old, new, update, alias),
        )
        .await
    }

    /// Counted as a load: it is the rest of the request's read, on a miss.
    async fn alias(&self, old: &Handle) -> Result<Option<Alias>> {
        self.run(StoreOp::Load, self.inner.alias(old)).await
    }

    async fn put_alias(&self, alias: &Alias) -> Result<()> {
        self.run(StoreOp::Create, self.inner.put_alias(alias)).await
    }

    async fn drop_alias(&self, old: &Handle, new: &Handle) -> Result<()> {
        self.run(StoreOp::Delete, self.inner.drop_alias(old, new))
            .await
    }

    async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page> {
        self.run(StoreOp::List, self.inner.list(cursor, limit))
            .await
    }

    /// Unbounded: a sweep of a large store legitimately takes longer than one request's
    /// budget, and nobody waits for it.
    async fn prune_reporting(&self, now: u64, expired: Option<&ExpiredSink>) -> Result<u64> {
        let start = Instant::now();
        let result = self.inner.prune_reporting(now, expired).await;
        self.metrics
            .observe(StoreOp::Prune, start.elapsed(), result.is_err());
        result
    }

    /// Counted as a listing: it is one, of one user's sessions.
    async fn user_sessions(&self, user: &str) -> Result<Vec<(Handle, Record)>> {
        self.run(StoreOp::List, self.inner.user_sessions(user))
            .await
    }

    fn count(&self) -> Option<u64> {
        self.inner.count()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_moves_the_bound_of_a_store_that_waits_only() {
        let limit = Limit::new(Some(Duration::from_secs(2)));
        limit.clone().set(Duration::from_millis(300));
        assert_eq!(limit.get(), Some(Duration::from_millis(300)));
        let never = Limit::new(None);
        never.set(Duration::from_secs(1));
        assert_eq!(never.get(), None);
    }

    /// A backend that never answers: no real store stalls on demand, and this is what a
    /// stuck disk or network looks like to the caller.
    struct Stalled;

    #[async_trait]
    impl SessionStore for Stalled {
        async fn load(&self, _: &Handle) -> Result<Option<Record>> {
            std::future::pending().await
        }
        async fn create(&self, _: &Handle, _: &Record) -> Result<bool> {
            std::future::pending().await
        }
        async fn update(&self, _: &Handle, _: &Update) -> Result<Option<Record>> {
            std::future::pending().await
        }
        async fn delete(&self, _: &Handle) -> Result<bool> {
            std::future::pending().await
        }
        async fn list(&self, _: Option<&str>, _: usize) -> Result<Page> {
            std::future::pending().await
        }
        async fn prune_reporting(&self, _: u64, _: Option<&ExpiredSink>) -> Result<u64> {
            Ok(0)
        }
    }

    #[tokio::test]
    async fn every_call_is_bounded() {
        let limit = Duration::from_millis(50);
        let store = Timed::new(Stalled, Limit::new(Some(limit)), StoreMetrics::default());
        let Ok(id) = Handle::generate() else {
            panic!("no id")
        };
        assert!(matches!(store.load(&id).await, Err(StoreError::Timeout(l)) if l == limit));
        assert!(matches!(
            store.delete(&id).await,
            Err(StoreError::Timeout(_))
        ));
        assert!(matches!(
            store.list(None, 1).await,
            Err(StoreError::Timeout(_))
        ));
    }
}
