//! The store seam: the [`SessionStore`] trait, the [`Record`] every backend keeps, and the one
//! function ([`Update::apply`]) that computes a record's next state, so all backends agree on
//! merge, size and expiry rules.
//!
//! Architecture invariant: a store never writes a session it did not first find live, except
//! through [`SessionStore::create`]. An update racing a destroy therefore cannot resurrect a
//! logged-out session.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{Lifetime, StoreConfig, StoreKind};
use crate::session::{DataChange, SessionId};

pub mod fs;
pub mod lock;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store can fail with. Backends convert their own errors into this.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The change was refused, nothing was written; not a store failure.
    #[error("session data would be {size} bytes, over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("store i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("store call took longer than {0:?}")]
    Timeout(Duration),
    #[error("store backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored session is not valid: {0}")]
    Corrupt(String),
}

/// Milliseconds since the Unix epoch: the clock every record uses.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One stored session.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The session data: the text of a JSON object, kept as text so a read costs no parse.
    pub data: Arc<str>,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Last change of `data`, unix milliseconds.
    pub updated_at: u64,
    /// The session is dead at this instant (unix milliseconds).
    pub expires_at: u64,
    /// Bumped by every write, so optimistic stores can detect a concurrent one.
    pub version: u64,
}

impl Record {
    pub fn is_live(&self, now: u64) -> bool {
        self.expires_at > now
    }

    /// The JSON the file and Redis stores keep, and the admin listing shows.
    pub fn to_json(&self) -> Result<String> {
        let data = RawValue::from_string(self.data.to_string())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        serde_json::to_string(&StoredRecord {
            data,
            created_at: self.created_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            version: self.version,
        })
        .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    pub fn from_json(bytes: &[u8]) -> Result<Record> {
        let s: StoredRecord =
            serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if !s.data.get().starts_with('{') {
            return Err(StoreError::Corrupt("data is not a JSON object".to_owned()));
        }
        Ok(Record {
            data: Arc::from(s.data.get()),
            created_at: s.created_at,
            updated_at: s.updated_at,
            expires_at: s.expires_at,
            version: s.version,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    data: Box<RawValue>,
    created_at: u64,
    updated_at: u64,
    expires_at: u64,
    version: u64,
}

impl Lifetime {
    /// When a session created at `created_at` and used at `now` dies.
    pub fn expiry(&self, created_at: u64, now: u64) -> u64 {
        let idle = now.saturating_add(ms(self.idle_timeout));
        match self.absolute_timeout {
            Some(abs) => idle.min(created_at.saturating_add(ms(abs))),
            None => idle,
        }
    }

    /// Whether a read-only use at `now` should write, to move the deadline by at least one
    /// touch interval. Derived from `expires_at`, so no extra field is stored.
    pub fn needs_touch(&self, record: &Record, now: u64) -> bool {
        self.expiry(record.created_at, now)
            >= record
                .expires_at
                .saturating_add(ms(self.touch_interval).max(1))
    }
}

/// A write to an existing session: an optional data change plus the refreshed expiry.
#[derive(Debug, Clone)]
pub struct Update {
    pub change: Option<DataChange>,
    /// The record as this request loaded it, if it did. Optimistic stores (Redis) try a
    /// compare-and-set against its `version` first and re-read only when another write came
    /// in between; stores that lock ignore it.
    pub base: Option<Record>,
    pub now: u64,
    pub lifetime: Lifetime,
    pub max_size: usize,
}

impl Update {
    /// The next state of `current`. Every backend calls this, under its own atomicity.
    pub fn apply(&self, current: &Record) -> Result<Record> {
        let (data, updated_at) = match &self.change {
            None => (current.data.clone(), current.updated_at),
            Some(change) => (
                Arc::from(apply_change(&current.data, change, self.max_size)?),
                self.now,
            ),
        };
        Ok(Record {
            data,
            created_at: current.created_at,
            updated_at,
            expires_at: self.lifetime.expiry(current.created_at, self.now),
            version: current.version.wrapping_add(1),
        })
    }

    /// A first record, for a session that was never stored.
    pub fn create(&self) -> Result<Record> {
        let data = match &self.change {
            None => "{}".to_owned(),
            Some(change) => apply_change("{}", change, self.max_size)?,
        };
        Ok(Record {
            data: Arc::from(data),
            created_at: self.now,
            updated_at: self.now,
            expires_at: self.lifetime.expiry(self.now, self.now),
            version: 1,
        })
    }
}

fn apply_change(data: &str, change: &DataChange, max: usize) -> Result<String> {
    let text = change
        .apply_to_text(data)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if text.len() > max {
        return Err(StoreError::TooLarge {
            size: text.len(),
            max,
        });
    }
    Ok(text)
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    pub sessions: Vec<(SessionId, Record)>,
    /// Pass back to get the next page; `None` at the end.
    pub next: Option<String>,
}

/// A session backend. Every method is safe to call concurrently from many requests.
///
/// `load` never returns an expired record: expiry is checked on every read, so correctness
/// never depends on a sweeper.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The live record for `id`, or `None` if it is missing or expired.
    async fn load(&self, id: &SessionId) -> Result<Option<Record>>;

    /// Stores a brand-new session. Returns `false`, writing nothing, if a live session already
    /// has this id (the caller picks another id).
    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool>;

    /// Atomic read-apply-write: applies `update` to the record as stored *now*. `None` if the
    /// session is gone, in which case nothing is written.
    async fn update(&self, id: &SessionId, update: &Update) -> Result<Option<Record>>;

    /// Removes the session. `true` if it existed.
    async fn delete(&self, id: &SessionId) -> Result<bool>;

    /// Moves a session to a new id (against fixation), applying `update` on the way. `None` if
    /// the old session is gone. A change racing with a regenerate on the old id may be lost;
    /// the old id is dead either way.
    async fn regenerate(
        &self,
        old: &SessionId,
        new: &SessionId,
        update: &Update,
    ) -> Result<Option<Record>> {
        let Some(current) = self.load(old).await? else {
            return Ok(None);
        };
        let record = update.apply(&current)?;
        if !self.create(new, &record).await? {
            return Err(StoreError::Corrupt(
                "regenerated id collided with a live session".to_owned(),
            ));
        }
        self.delete(old).await?;
        Ok(Some(record))
    }

    /// Live sessions in id order, starting after `cursor`.
    async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page>;

    /// Removes expired sessions; returns how many. Stores that expire by themselves return 0.
    async fn prune(&self, now: u64) -> Result<u64>;

    /// Whether expired sessions disappear without [`SessionStore::prune`] (Redis key TTLs).
    fn expires_by_itself(&self) -> bool {
        false
    }

    /// Whether every call completes without waiting on IO (the memory store). The proxy skips
    /// the `store.timeout` timer for such a store: it could never fire.
    fn never_waits(&self) -> bool {
        false
    }
}

/// Opens the configured store.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn SessionStore>> {
    Ok(match &config.kind {
        StoreKind::Memory => Arc::new(memory::MemoryStore::default()),
        StoreKind::Fs(fs) => Arc::new(fs::FsStore::open(fs.clone()).await?),
        #[cfg(feature = "redis")]
        StoreKind::Redis(r) => Arc::new(redis::RedisStore::open(r.clone()).await?),
        #[cfg(not(feature = "redis"))]
        StoreKind::Redis(_) => {
            return Err(StoreError::Backend(
                "built without the `redis` feature".into(),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lifetime(idle: u64, abs: Option<u64>, touch: u64) -> Lifetime {
        Lifetime {
            idle_timeout: Duration::from_millis(idle),
            absolute_timeout: abs.map(Duration::from_millis),
            touch_interval: Duration::from_millis(touch),
        }
    }

    #[test]
    fn expiry_and_touch() {
        let l = lifetime(1000, Some(5000), 100);
        assert_eq!(l.expiry(0, 0), 1000);
        assert_eq!(l.expiry(0, 4500), 5000);
        let r = Record {
            data: Arc::from("{}"),
            created_at: 0,
            updated_at: 0,
            expires_at: 1000,
            version: 1,
        };
        assert!(!l.needs_touch(&r, 50));
        assert!(l.needs_touch(&r, 100));
        // Capped by the absolute deadline: touching would not move it.
        let capped = Record {
            expires_at: 5000,
            ..r
        };
        assert!(!l.needs_touch(&capped, 4900));
    }

    #[test]
    fn apply_merges_and_bounds() {
        let u = Update {
            change: Some(DataChange::Patch(
                json!({"b":2,"a":null}).as_object().unwrap().clone(),
            )),
            base: None,
            now: 10,
            lifetime: lifetime(1000, None, 100),
            max_size: 64,
        };
        let cur = Record {
            data: Arc::from(r#"{"a":1}"#),
            created_at: 1,
            updated_at: 1,
            expires_at: 500,
            version: 7,
        };
        let next = u.apply(&cur).unwrap();
        assert_eq!(&*next.data, r#"{"b":2}"#);
        assert_eq!(
            (
                next.created_at,
                next.updated_at,
                next.expires_at,
                next.version
            ),
            (1, 10, 1010, 8)
        );

        let big = Update {
            change: Some(DataChange::Replace(
                json!({"x":"y".repeat(100)}).as_object().unwrap().clone(),
            )),
            ..u
        };
        assert!(matches!(big.apply(&cur), Err(StoreError::TooLarge { .. })));
    }

    #[test]
    fn record_json_round_trip() {
        let r = Record {
            data: Arc::from(r#"{"k":[1,{}],"s":"é"}"#),
            created_at: 1,
            updated_at: 2,
            expires_at: 3,
            version: 4,
        };
        assert_eq!(
            Record::from_json(r.to_json().unwrap().as_bytes()).unwrap(),
            r
        );
        assert!(
            Record::from_json(
                br#"{"data":[1],"created_at":1,"updated_at":2,"expires_at":3,"version":4}"#
            )
            .is_err()
        );
        assert!(Record::from_json(b"{").is_err());
    }
}
