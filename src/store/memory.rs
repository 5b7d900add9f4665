//! In-process store: a sharded concurrent map. For tests and single-process deployments; its
//! sessions die with the process.
//!
//! Atomicity comes from the map's shard locks, which are only ever held by synchronous code:
//! no lock is held across an await.

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;

use super::{Capabilities, Page, Record, Result, SessionStore, Update, now_ms};
use crate::session::SessionId;

#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Shared with the sweeper's blocking task.
    map: Arc<DashMap<SessionId, Record>>,
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        let now = now_ms();
        Ok(self
            .map
            .get(id)
            .filter(|r| r.is_live(now))
            .map(|r| r.clone()))
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        let now = now_ms();
        match self.map.entry(*id) {
            dashmap::Entry::Occupied(mut e) if !e.get().is_live(now) => {
                e.insert(record.clone());
                Ok(true)
            }
            dashmap::Entry::Occupied(_) => Ok(false),
            dashmap::Entry::Vacant(e) => {
                e.insert(record.clone());
                Ok(true)
            }
        }
    }

    async fn update(&self, id: &SessionId, update: &Update) -> Result<Option<Record>> {
        let Some(mut entry) = self.map.get_mut(id) else {
            return Ok(None);
        };
        if !entry.is_live(update.now) {
            return Ok(None);
        }
        let next = update.apply(&entry)?;
        *entry = next.clone();
        Ok(Some(next))
    }

    async fn delete(&self, id: &SessionId) -> Result<bool> {
        let now = now_ms();
        Ok(self.map.remove(id).is_some_and(|(_, r)| r.is_live(now)))
    }

    async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page> {
        let after = super::id_cursor(cursor)?;
        if limit == 0 {
            return Ok(Page::default());
        }
        let now = now_ms();
        let mut live: Vec<(SessionId, Record)> = self
            .map
            .iter()
            .filter(|e| e.is_live(now) && after.is_none_or(|c| *e.key() > c))
            .map(|e| (*e.key(), e.value().clone()))
            .collect();
        live.sort_unstable_by_key(|(id, _)| *id);
        let next = (live.len() > limit).then(|| live[limit - 1].0.to_string());
        live.truncate(limit);
        Ok(Page {
            sessions: live,
            next,
        })
    }

    fn count(&self) -> Option<u64> {
        u64::try_from(self.map.len()).ok()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            never_waits: true,
            expires_by_itself: false,
            lists_in_order: true,
        }
    }

    /// Walks the whole map, so it runs on the blocking pool: at a million sessions that is
    /// tens of milliseconds an async worker must not spend. Shards are locked one at a time.
    async fn prune(&self, now: u64) -> Result<u64> {
        let map = self.map.clone();
        tokio::task::spawn_blocking(move || {
            let mut removed = 0u64;
            map.retain(|_, r| {
                let live = r.is_live(now);
                removed += u64::from(!live);
                live
            });
            removed
        })
        .await
        .map_err(super::StoreError::join)
    }
}
