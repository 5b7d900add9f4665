//! The store's background and bulk walks: the [`Sweeper`] that removes expired sessions, and
//! [`walk`] with [`session_json`], the one listing loop and view the CLI and the admin share.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::watch;

use super::{ExpiredSink, Record, Result, SessionStore, StoreError};
use crate::session::{Handle, now_ms};

/// Removes expired sessions every `interval`. Only housekeeping: loads already treat an
/// expired session as missing. A prune runs on the blocking pool (fs), under short shard
/// locks (memory) or in chunks through the writer thread (sqlite), so requests never wait long
/// for it.
///
/// With the audit log on, each session it removes is one `expired` line, queued like every
/// other event: a sweep of more sessions than the queue holds drops the lines that do not fit
/// (counted in `audit_dropped_total`), it never waits for the disk.
pub struct Sweeper {
    store: Arc<dyn SessionStore>,
    /// `store.sweep_interval`, which a reload may change (from the next sweep on).
    interval: watch::Receiver<Duration>,
    /// Told of every session a sweep removes; `None` collects no ids.
    expired: Option<ExpiredSink>,
}

impl Sweeper {
    pub(super) fn new(store: Arc<dyn SessionStore>, interval: watch::Receiver<Duration>) -> Self {
        Sweeper {
            store,
            interval,
            expired: None,
        }
    }

    /// Tells `sink` of every session this sweeper removes (the audit log's `expired` lines).
    pub fn reporting_to(mut self, sink: ExpiredSink) -> Self {
        self.expired = Some(sink);
        self
    }

    /// Runs until the task is aborted.
    pub async fn run(mut self) {
        loop {
            let every = *self.interval.borrow_and_update();
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => self.sweep().await,
                    // A new interval starts a new ticker; once the sender is gone (the proxy
                    // is stopping) the branch stays off and the ticker goes on.
                    Ok(()) = self.interval.changed() => break,
                }
            }
        }
    }

    async fn sweep(&self) {
        match self
            .store
            .prune_reporting(now_ms(), self.expired.as_ref())
            .await
        {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "swept expired sessions"),
            Err(error) => tracing::warn!(%error, "sweeping expired sessions failed"),
        }
    }
}

/// Walks every live session, page by page, handing each to `each`, until `limit` were seen.
/// The one paging loop the CLI and the admin export share.
pub async fn walk(
    store: &dyn SessionStore,
    limit: usize,
    mut each: impl FnMut(Handle, Record) -> Result<()>,
) -> Result<usize> {
    const PAGE: usize = 500;
    let mut cursor: Option<String> = None;
    let mut seen = 0;
    while seen < limit {
        let page = store
            .list(cursor.as_deref(), (limit - seen).min(PAGE))
            .await?;
        for (id, record) in page.sessions {
            each(id, record)?;
            seen += 1;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(seen)
}

/// One session as the CLI prints it and the admin API shows it: the handle with the stored
/// record's fields beside it.
pub fn session_json(handle: &Handle, record: &Record) -> Result<String> {
    let data = RawValue::from_string(record.data.to_string())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    serde_json::to_string(&ShownSession {
        handle: handle.as_str(),
        data: &data,
        created_at: record.created_at,
        updated_at: record.updated_at,
        expires_at: record.expires_at,
        version: record.version,
        remember: record.meta.remember,
        returned: record.meta.returned,
        last_seen: record.meta.last_seen,
        created_ip: record.meta.created_ip,
        last_ip: record.meta.last_ip,
        user_agent: record.meta.user_agent.as_deref(),
    })
    .map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[derive(Serialize)]
struct ShownSession<'a> {
    handle: &'a str,
    data: &'a RawValue,
    created_at: u64,
    updated_at: u64,
    expires_at: u64,
    version: u64,
    /// `X-Session-Remember`, in milliseconds; 0: the configured lifetime.
    remember: u64,
    /// Its client sent the cookie back at least once.
    returned: bool,
    /// The device ([`super::Meta`]): 0 and nulls for a session stored before they were kept.
    last_seen: u64,
    created_ip: Option<std::net::IpAddr>,
    last_ip: Option<std::net::IpAddr>,
    user_agent: Option<&'a str>,
}
