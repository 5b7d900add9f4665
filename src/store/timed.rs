//! [`Timed`]: the wrapper every caller's store calls go through (the proxy, the CLI, the admin
//! API), so `store.timeout` bounds each one wherever it comes from, and a stuck store costs a
//! clear error instead of a hang. Later, the place that records per-operation latency and errors.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use super::{Capabilities, Page, Record, Result, SessionStore, StoreError, Update};
use crate::session::SessionId;

/// A backend whose every call is bounded by `limit` (`None`: the backend never waits, so no
/// timer is armed).
#[derive(Debug)]
pub struct Timed<S> {
    inner: S,
    limit: Option<Duration>,
}

impl<S: SessionStore> Timed<S> {
    pub fn new(inner: S, limit: Option<Duration>) -> Self {
        Timed { inner, limit }
    }

    async fn run<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        match self.limit {
            None => call.await,
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .map_err(|_| StoreError::Timeout(limit))?,
        }
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for Timed<S> {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        self.run(self.inner.load(id)).await
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        self.run(self.inner.create(id, record)).await
    }

    async fn update(&self, id: &SessionId, update: &Update) -> Result<Option<Record>> {
        self.run(self.inner.update(id, update)).await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool> {
        self.run(self.inner.delete(id)).await
    }

    /// One deadline for the whole move, whatever the backend does inside it.
    async fn regenerate(
        &self,
        old: &SessionId,
        new: &SessionId,
        update: &Update,
    ) -> Result<Option<Record>> {
        self.run(self.inner.regenerate(old, new, update)).await
    }

    async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page> {
        self.run(self.inner.list(cursor, limit)).await
    }

    /// Unbounded: a sweep of a large store legitimately takes longer than one request's
    /// budget, and nobody waits for it.
    async fn prune(&self, now: u64) -> Result<u64> {
        self.inner.prune(now).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that never answers: no real store stalls on demand, and this is what a
    /// stuck disk or network looks like to the caller.
    struct Stalled;

    #[async_trait]
    impl SessionStore for Stalled {
        async fn load(&self, _: &SessionId) -> Result<Option<Record>> {
            std::future::pending().await
        }
        async fn create(&self, _: &SessionId, _: &Record) -> Result<bool> {
            std::future::pending().await
        }
        async fn update(&self, _: &SessionId, _: &Update) -> Result<Option<Record>> {
            std::future::pending().await
        }
        async fn delete(&self, _: &SessionId) -> Result<bool> {
            std::future::pending().await
        }
        async fn list(&self, _: Option<&str>, _: usize) -> Result<Page> {
            std::future::pending().await
        }
        async fn prune(&self, _: u64) -> Result<u64> {
            Ok(0)
        }
    }

    #[tokio::test]
    async fn every_call_is_bounded() {
        let limit = Duration::from_millis(50);
        let store = Timed::new(Stalled, Some(limit));
        let Ok(id) = SessionId::generate() else {
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
