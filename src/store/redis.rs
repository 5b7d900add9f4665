//! Redis store: not written yet (issue [redis]).

use async_trait::async_trait;

use super::{Page, Record, Result, SessionStore, StoreError, Update};
use crate::config::RedisConfig;
use crate::session::SessionId;

#[derive(Debug)]
pub struct RedisStore;

impl RedisStore {
    pub async fn open(_config: RedisConfig) -> Result<Self> {
        Err(StoreError::Backend(
            "the redis store is not implemented yet".into(),
        ))
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn load(&self, _id: &SessionId) -> Result<Option<Record>> {
        Ok(None)
    }
    async fn create(&self, _id: &SessionId, _record: &Record) -> Result<bool> {
        Ok(false)
    }
    async fn update(&self, _id: &SessionId, _update: &Update) -> Result<Option<Record>> {
        Ok(None)
    }
    async fn delete(&self, _id: &SessionId) -> Result<bool> {
        Ok(false)
    }
    async fn list(&self, _cursor: Option<&str>, _limit: usize) -> Result<Page> {
        Ok(Page::default())
    }
    async fn prune(&self, _now: u64) -> Result<u64> {
        Ok(0)
    }
}
