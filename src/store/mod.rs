//! The store seam: the [`SessionStore`] trait, the [`Record`] every backend keeps, and the one
//! function ([`Update::apply`]) that computes a record's next state, so all backends agree on
//! merge, size and expiry rules.
//!
//! Architecture invariant: a store never writes a session it did not first find live, except
//! through [`SessionStore::create`]. An update racing a destroy therefore cannot resurrect a
//! logged-out session.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{StoreConfig, StoreKind};
use crate::metrics::StoreMetrics;
use crate::session::SessionId;

pub mod fs;
pub mod lock;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod sqlite;
mod timed;
mod update;
pub mod users;

pub use crate::session::now_ms;
pub use timed::Timed;
pub use update::Update;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store can fail with. Backends convert their own errors into this.
///
/// Each error knows whose fault it is ([`StoreError::fault`]): the admin API answers a caller's
/// mistake with a 4xx and a store failure with a 503; the proxy never blames a client for the
/// store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The change was refused, nothing was written; not a store failure.
    #[error("session data would be {size} bytes, over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    /// A listing cursor this store did not hand out (or from another kind of store).
    #[error("{0:?} is not a listing cursor of this store")]
    BadCursor(String),
    #[error("store i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("store call took longer than {0:?}")]
    Timeout(Duration),
    #[error("store backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend answered in a shape this code does not expect (a protocol or version
    /// mismatch, say): the store's fault, never the caller's.
    #[error("store backend answered unexpectedly: {0}")]
    Unexpected(String),
    /// A stored record (or its data) does not parse.
    #[error("stored session is not valid: {0}")]
    Corrupt(String),
    /// A freshly generated id was taken: with 192 random bits that means the random source or
    /// the store is broken, not bad luck.
    #[error("a freshly generated session id is already taken")]
    IdCollision,
    /// A per-user call on a proxy without `session.user_key`: nothing to look a user up in.
    #[error("there is no user index: session.user_key is not set")]
    NoUserIndex,
}

/// Who has to act on a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request asked for something invalid; retrying it unchanged fails the same way.
    Caller,
    /// The store failed; the same request may succeed later.
    Store,
}

impl StoreError {
    pub fn fault(&self) -> Fault {
        match self {
            StoreError::TooLarge { .. } | StoreError::BadCursor(_) | StoreError::NoUserIndex => {
                Fault::Caller
            }
            StoreError::Io(_)
            | StoreError::Timeout(_)
            | StoreError::Backend(_)
            | StoreError::Unexpected(_)
            | StoreError::Corrupt(_)
            | StoreError::IdCollision => Fault::Store,
        }
    }

    /// A background task (the blocking pool) died or was cancelled.
    pub(crate) fn join(e: tokio::task::JoinError) -> Self {
        StoreError::Backend(Box::new(e))
    }
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
    ///
    /// Written by hand, in the bytes `serde_json` wrote for it before (fields in this order,
    /// no spaces), so records on disk and in Redis read the same either way. `data` goes in as
    /// the text it is: it is a valid JSON object by construction (a merge's output, or text a
    /// backend validated on reading it back), so copying it through a parser would only
    /// re-check it.
    pub fn to_json(&self) -> Result<String> {
        let pieces = self.json_pieces();
        let mut out = String::with_capacity(pieces.iter().map(|p| p.as_str().len()).sum());
        for piece in &pieces {
            out.push_str(piece.as_str());
        }
        Ok(out)
    }

    /// [`Record::to_json`] in three pieces, for a writer that takes them one at a time (the
    /// Redis store writes them straight into its command): `{"data":`, the data, and what
    /// follows it.
    pub(crate) fn json_pieces(&self) -> [JsonPiece<'_>; 3] {
        debug_assert!(
            Record::check_data(&self.data).is_ok(),
            "a record's data is a JSON object: {:?}",
            self.data
        );
        [
            JsonPiece::Str(JSON_HEAD),
            JsonPiece::Str(&self.data),
            JsonPiece::Tail(self.json_tail()),
        ]
    }

    /// The bytes of the JSON after `data`: the four integers and the closing brace.
    fn json_tail(&self) -> JsonTail {
        let mut tail = JsonTail::default();
        let mut int = itoa::Buffer::new();
        for (name, value) in [
            (&br#","created_at":"#[..], self.created_at),
            (br#","updated_at":"#, self.updated_at),
            (br#","expires_at":"#, self.expires_at),
            (br#","version":"#, self.version),
        ] {
            tail.push(name);
            tail.push(int.format(value).as_bytes());
        }
        tail.push(b"}");
        tail
    }

    /// The record a backend read back for `id`. One that does not parse is logged at `error`
    /// and counts as missing, so one bad file or value cannot lock a client out of the site
    /// (they get a fresh session); it is left where it is for inspection. The log names the id
    /// by its prefix only: the whole id is a bearer credential.
    pub fn from_stored(bytes: &[u8], id: &SessionId) -> Option<Record> {
        Record::readable(Record::from_json(bytes), id)
    }

    /// The one rule for a record a backend could not read back, however it keeps records
    /// (whole JSON, or columns): logged, and treated as missing.
    pub(crate) fn readable(record: Result<Record>, id: &SessionId) -> Option<Record> {
        record
            .inspect_err(|error| {
                tracing::error!(%error, ?id, "unreadable stored session treated as missing")
            })
            .ok()
    }

    /// `data` as a backend that keeps it apart from the times holds it: valid JSON and an
    /// object, or the record is [`StoreError::Corrupt`].
    pub(crate) fn check_data(data: &str) -> Result<()> {
        serde_json::from_str::<&RawValue>(data).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if !data.starts_with('{') {
            return Err(StoreError::Corrupt("data is not a JSON object".to_owned()));
        }
        Ok(())
    }

    /// Reads what [`Record::to_json`] writes, and any other JSON spelling of it (spaces,
    /// another field order) that an earlier version or a hand edit left. `data` is borrowed
    /// from `bytes` while it is checked, then copied once into the record.
    pub fn from_json(bytes: &[u8]) -> Result<Record> {
        let s: StoredRecord<'_> =
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

/// What a record's JSON starts with.
const JSON_HEAD: &str = r#"{"data":"#;

/// The longest [`Record::json_tail`]: the field names and `}` (54 bytes), four `u64`s of up
/// to 20 digits each.
const JSON_TAIL_MAX: usize = 54 + 4 * 20;

/// The end of a record's JSON, on the stack: it is short and written once per save.
pub(crate) struct JsonTail {
    buf: [u8; JSON_TAIL_MAX],
    len: usize,
}

impl Default for JsonTail {
    fn default() -> Self {
        JsonTail {
            buf: [0; JSON_TAIL_MAX],
            len: 0,
        }
    }
}

impl JsonTail {
    fn push(&mut self, bytes: &[u8]) {
        // Sized for the longest tail there is, so this never runs out of room.
        if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII names and digits were pushed.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// One piece of a record's JSON ([`Record::json_pieces`]).
pub(crate) enum JsonPiece<'a> {
    Str(&'a str),
    Tail(JsonTail),
}

impl JsonPiece<'_> {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            JsonPiece::Str(s) => s,
            JsonPiece::Tail(t) => t.as_str(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    created_at: u64,
    updated_at: u64,
    expires_at: u64,
    version: u64,
}

/// The cursor of the stores that list in id order: the last id of the previous page.
pub(crate) fn id_cursor(cursor: Option<&str>) -> Result<Option<SessionId>> {
    cursor
        .map(|c| SessionId::parse(c).ok_or_else(|| StoreError::BadCursor(c.to_owned())))
        .transpose()
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    pub sessions: Vec<(SessionId, Record)>,
    /// Pass back to get the next page; `None` at the end.
    pub next: Option<String>,
}

/// What [`SessionStore::load_or_expired`] found under an id.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    Live(Record),
    /// The id held a session that had expired, and this call removed it: of all the callers
    /// that meet one expiry (loads in several proxies, a sweeper), exactly one is told, so the
    /// audit log gets one `expired` line. `user` is the one its data named (with
    /// `session.user_key`).
    Expired {
        user: Option<String>,
    },
    /// No session, or one that another caller already removed or saw expire.
    Missing,
}

/// Where [`SessionStore::prune_reporting`] reports each session it removed: its id and the user
/// its data named (with `session.user_key`). Called from whatever thread the backend prunes
/// on (the blocking pool for memory and fs), so it must not wait.
pub type ExpiredSink = Arc<dyn Fn(&SessionId, Option<&str>) + Send + Sync>;

/// A session backend. Every method is safe to call concurrently from many requests.
///
/// `load` never returns an expired record: expiry is checked on every read, so correctness
/// never depends on a sweeper.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The live record for `id`, or `None` if it is missing or expired.
    async fn load(&self, id: &SessionId) -> Result<Option<Record>>;

    /// [`load`](Self::load), telling an expired session from a missing one: a record found
    /// past its expiry is removed here (a conditional delete, so of several callers exactly one
    /// gets [`Loaded::Expired`]; the others get `Missing`), as the sweeper would have removed
    /// it. This default cannot tell, and answers `Missing` for both; every backend that keeps
    /// `expires_at` overrides it, and a wrapper must forward it.
    async fn load_or_expired(&self, id: &SessionId) -> Result<Loaded> {
        Ok(match self.load(id).await? {
            Some(record) => Loaded::Live(record),
            None => Loaded::Missing,
        })
    }

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
    ///
    /// Atomic among concurrent regenerates of one id: of all of them, exactly one new id
    /// survives. Whoever deletes the old id wins (a delete reports whether it found the
    /// session, and finds it once); every other one removes the copy it wrote and answers
    /// `None`, as if the session had already gone. A failure after the copy was written removes
    /// it too, so a failed regenerate leaves no second session behind.
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
            return Err(StoreError::IdCollision);
        }
        match self.delete(old).await {
            Ok(true) => Ok(Some(record)),
            Ok(false) => {
                // Another regenerate (or a destroy) took the old id first.
                self.delete(new).await?;
                Ok(None)
            }
            Err(e) => {
                if let Err(cleanup) = self.delete(new).await {
                    tracing::warn!(error = %cleanup, "could not remove a failed regenerate's copy");
                }
                Err(e)
            }
        }
    }

    /// Live sessions in id order (see [`Capabilities::lists_in_order`]), starting after
    /// `cursor`, a `Page::next` this store handed out; any other cursor is
    /// [`StoreError::BadCursor`].
    async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page>;

    /// Removes expired sessions; returns how many. Stores that expire by themselves return 0.
    /// A removed session leaves the user index in the same write.
    async fn prune(&self, now: u64) -> Result<u64> {
        self.prune_reporting(now, None).await
    }

    /// [`prune`](Self::prune), handing each session this call removed to `expired` (the
    /// sweeper's audit lines). With `None` no id or user is collected, so a prune nobody audits
    /// costs what it always did. A session another caller removed first is not reported here.
    async fn prune_reporting(&self, now: u64, expired: Option<&ExpiredSink>) -> Result<u64>;

    /// The live sessions of `user` (see [`users`]), in no set order: never a dead one, nor one
    /// whose data has since named another user. [`StoreError::NoUserIndex`] when the store was
    /// opened without `session.user_key`.
    async fn user_sessions(&self, user: &str) -> Result<Vec<(SessionId, Record)>> {
        let _ = user;
        Err(StoreError::NoUserIndex)
    }

    /// How many sessions the backend holds, if it can tell without a scan (for
    /// `sessions_live`). Expired sessions count until they are swept.
    fn count(&self) -> Option<u64> {
        None
    }

    /// What this backend can do without help; [`open`] reads it once to decide the timer and
    /// the sweeper, so no other caller needs to ask.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            expires_by_itself: false,
            never_waits: false,
            lists_in_order: true,
        }
    }
}

/// What a backend does by itself.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Expired sessions disappear without [`SessionStore::prune`] (Redis key TTLs): no sweeper.
    pub expires_by_itself: bool,
    /// Every call completes without waiting on IO (the memory store): `store.timeout` could
    /// never fire, so no timer is armed.
    pub never_waits: bool,
    /// `list` walks in id order and lists every live session exactly once. Redis `SCAN` lists
    /// each at least once (a session may repeat across pages), in no order.
    pub lists_in_order: bool,
}

/// The configured store, ready for every caller (the proxy, the CLI, the admin API).
pub struct Opened {
    /// The backend behind [`Timed`]: every call is bounded by `store.timeout`.
    pub store: Arc<dyn SessionStore>,
    /// Present when the backend needs a sweeper; run it with [`Sweeper::run`].
    pub sweeper: Option<Sweeper>,
    /// The latency and error counters `Timed` records into, for `/metrics`.
    pub metrics: StoreMetrics,
}

/// Opens the configured store and wraps it in [`Timed`].
pub async fn open(config: &StoreConfig) -> Result<Opened> {
    let users = config.users.clone();
    Ok(match &config.kind {
        StoreKind::Memory => wrap(memory::MemoryStore::new(users), config),
        StoreKind::Fs(fs) => wrap(fs::FsStore::open_indexed(fs.clone(), users).await?, config),
        StoreKind::Sqlite(s) => wrap(
            sqlite::SqliteStore::open_indexed(s.clone(), sqlite::Reads::Inline, users).await?,
            config,
        ),
        #[cfg(feature = "redis")]
        StoreKind::Redis(r) => wrap(
            redis::RedisStore::open_indexed(r.clone(), users).await?,
            config,
        ),
        #[cfg(not(feature = "redis"))]
        StoreKind::Redis(_) => {
            return Err(StoreError::Backend(
                "built without the `redis` feature".into(),
            ));
        }
    })
}

fn wrap<S: SessionStore>(backend: S, config: &StoreConfig) -> Opened {
    let caps = backend.capabilities();
    let limit = (!caps.never_waits).then_some(config.timeout);
    let metrics = StoreMetrics::default();
    let store: Arc<dyn SessionStore> = Arc::new(Timed::new(backend, limit, metrics.clone()));
    let sweeper = (!caps.expires_by_itself).then(|| Sweeper {
        store: store.clone(),
        interval: config.sweep_interval,
        expired: None,
    });
    Opened {
        store,
        sweeper,
        metrics,
    }
}

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
    interval: Duration,
    /// Told of every session a sweep removes; `None` collects no ids.
    expired: Option<ExpiredSink>,
}

impl Sweeper {
    /// Tells `sink` of every session this sweeper removes (the audit log's `expired` lines).
    pub fn reporting_to(mut self, sink: ExpiredSink) -> Self {
        self.expired = Some(sink);
        self
    }

    /// Runs until the task is aborted.
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
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
}

/// Walks every live session, page by page, handing each to `each`, until `limit` were seen.
/// The one paging loop the CLI and the admin export share.
pub async fn walk(
    store: &dyn SessionStore,
    limit: usize,
    mut each: impl FnMut(SessionId, Record) -> Result<()>,
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

/// One session as the CLI prints it and the admin API shows it: the id with the stored
/// record's fields beside it.
pub fn session_json(id: &SessionId, record: &Record) -> Result<String> {
    let data = RawValue::from_string(record.data.to_string())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    serde_json::to_string(&ShownSession {
        id: id.as_str(),
        data: &data,
        created_at: record.created_at,
        updated_at: record.updated_at,
        expires_at: record.expires_at,
        version: record.version,
    })
    .map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[derive(Serialize)]
struct ShownSession<'a> {
    id: &'a str,
    data: &'a RawValue,
    created_at: u64,
    updated_at: u64,
    expires_at: u64,
    version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory store, with a delete of one chosen id that fails: a regenerate that fails
    /// after writing its new copy must not leave that copy behind.
    struct FailingDelete {
        inner: memory::MemoryStore,
        fails: SessionId,
    }

    #[async_trait::async_trait]
    impl SessionStore for FailingDelete {
        async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
            self.inner.load(id).await
        }
        async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
            self.inner.create(id, record).await
        }
        async fn update(&self, id: &SessionId, update: &Update) -> Result<Option<Record>> {
            self.inner.update(id, update).await
        }
        async fn delete(&self, id: &SessionId) -> Result<bool> {
            if *id == self.fails {
                return Err(StoreError::Unexpected("delete failed".to_owned()));
            }
            self.inner.delete(id).await
        }
        async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page> {
            self.inner.list(cursor, limit).await
        }
        async fn prune_reporting(&self, now: u64, expired: Option<&ExpiredSink>) -> Result<u64> {
            self.inner.prune_reporting(now, expired).await
        }
    }

    #[tokio::test]
    async fn a_failed_regenerate_removes_the_copy_it_wrote() {
        let (old, new) = (
            SessionId::generate().unwrap(),
            SessionId::generate().unwrap(),
        );
        let store = FailingDelete {
            inner: memory::MemoryStore::default(),
            fails: old,
        };
        let now = now_ms();
        let record = Record {
            data: Arc::from("{}"),
            created_at: now,
            updated_at: now,
            expires_at: now + 60_000,
            version: 1,
        };
        assert!(store.create(&old, &record).await.unwrap());
        let update = Update {
            change: None,
            base: None,
            now,
            lifetime: crate::session::Lifetime {
                idle_timeout: Duration::from_secs(60),
                absolute_timeout: None,
                touch_interval: Duration::from_secs(6),
            },
            max_size: 1024,
            extends: true,
        };
        assert!(store.regenerate(&old, &new, &update).await.is_err());
        assert!(
            store.load(&new).await.unwrap().is_none(),
            "the copy was left"
        );
        assert!(
            store.load(&old).await.unwrap().is_some(),
            "the old id is intact"
        );
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

    /// The JSON the file and Redis stores kept before `to_json` was written by hand:
    /// `serde_json` over this struct. The hand-written one must give the same bytes.
    #[derive(Serialize)]
    struct SerdeRecord<'a> {
        data: &'a RawValue,
        created_at: u64,
        updated_at: u64,
        expires_at: u64,
        version: u64,
    }

    #[test]
    fn record_json_is_byte_for_byte_what_serde_wrote() {
        for (data, n) in [
            ("{}", 0),
            (
                r#"{"k":[1,{}],"s":"é\"\u00e9","n":null,"f":1.5e300}"#,
                1_767_225_600_000,
            ),
            (r#"{ "spaced" : [ 1 , 2 ] }"#, u64::MAX),
        ] {
            let r = Record {
                data: Arc::from(data),
                created_at: n,
                updated_at: n / 3,
                expires_at: n.saturating_add(1),
                version: n / 7,
            };
            let raw: &RawValue = serde_json::from_str(data).unwrap();
            let serde = serde_json::to_string(&SerdeRecord {
                data: raw,
                created_at: r.created_at,
                updated_at: r.updated_at,
                expires_at: r.expires_at,
                version: r.version,
            })
            .unwrap();
            let json = r.to_json().unwrap();
            assert_eq!(json, serde);
            assert_eq!(Record::from_json(json.as_bytes()).unwrap(), r);
        }
    }

    /// Records as earlier versions (or a hand edit) stored them still load: any field order,
    /// spaces, escapes inside `data` kept as they were written.
    #[test]
    fn a_record_stored_by_earlier_code_still_loads() {
        let want = |data: &str| Record {
            data: Arc::from(data),
            created_at: 1_767_225_600_000,
            updated_at: 1_767_225_600_001,
            expires_at: 1_767_227_400_000,
            version: 12,
        };
        let stored = br#"{"data":{"user":"ada","cart":[1,2],"s":"\u00e9\n"},"created_at":1767225600000,"updated_at":1767225600001,"expires_at":1767227400000,"version":12}"#;
        assert_eq!(
            Record::from_json(stored).unwrap(),
            want(r#"{"user":"ada","cart":[1,2],"s":"\u00e9\n"}"#)
        );
        let edited = br#" { "version" : 12, "expires_at":1767227400000,
            "data" : {"a": 1} , "updated_at":1767225600001, "created_at":1767225600000 } "#;
        assert_eq!(Record::from_json(edited).unwrap(), want(r#"{"a": 1}"#));
        for bad in [
            &br#"{"data":{},"created_at":1,"updated_at":2,"expires_at":3}"#[..],
            br#"{"data":{},"created_at":1,"updated_at":2,"expires_at":3,"version":4,"x":0}"#,
            br#"{"data":{},"created_at":-1,"updated_at":2,"expires_at":3,"version":4}"#,
            br#"{"data":"{}","created_at":1,"updated_at":2,"expires_at":3,"version":4}"#,
            br#"{"data":{},"created_at":1,"updated_at":2,"expires_at":3,"version":4"#,
            b"\xff",
        ] {
            assert!(
                Record::from_json(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
