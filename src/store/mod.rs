//! The store seam: the [`SessionStore`] trait, the [`Record`] every backend keeps, and the one
//! function ([`Update::apply`]) that computes a record's next state, so all backends agree on
//! merge, size and expiry rules.
//!
//! Architecture invariant: a store never writes a session it did not first find live, except
//! through [`SessionStore::create`]. An update racing a destroy therefore cannot resurrect a
//! logged-out session.

use std::sync::Arc;

use crate::config::{StoreConfig, StoreKind};
use crate::metrics::StoreMetrics;
use crate::outcome::Ended;
use crate::session::{Handle, SessionId};

pub mod alias;
mod error;
pub mod fs;
pub mod lock;
pub mod memory;
mod meta;
#[cfg(feature = "postgres")]
pub mod postgres;
mod record;
#[cfg(feature = "redis")]
pub mod redis;
pub mod seal;
pub mod sqlite;
mod sweeper;
mod timed;
mod update;
pub mod users;

pub use crate::session::now_ms;
pub use alias::Alias;
pub use error::{Blame, Result, StoreError};
pub use meta::{Meta, USER_AGENT_MAX, Visit};
pub use record::Record;
pub use seal::Sealer;
pub use sweeper::{Sweeper, session_json, walk};
pub use timed::Timed;
pub use update::Update;

/// The cursor of the stores that list in id order: the last id of the previous page.
pub(crate) fn handle_cursor(cursor: Option<&str>) -> Result<Option<Handle>> {
    cursor
        .map(|c| Handle::parse(c).ok_or_else(|| StoreError::BadCursor(c.to_owned())))
        .transpose()
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    pub sessions: Vec<(Handle, Record)>,
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
pub type ExpiredSink = Arc<dyn Fn(&Handle, Option<&str>) + Send + Sync>;

/// Where whoever ends a session in this process says so (the proxy's save, the admin API, the
/// sweeper's [`ExpiredSink`] as `lib.rs` builds it), so the proxy can close the WebSockets the
/// session held. Cheap to clone; [`SessionEnds::default`] tells no one. The callee must not
/// wait: it is called on the request path and from the sweeper's thread.
#[derive(Clone, Default)]
pub struct SessionEnds(Option<EndedSink>);

/// The callee of [`SessionEnds`].
type EndedSink = Arc<dyn Fn(&Handle, Ended) + Send + Sync>;

impl SessionEnds {
    pub fn new(tell: impl Fn(&Handle, Ended) + Send + Sync + 'static) -> Self {
        SessionEnds(Some(Arc::new(tell)))
    }

    /// `handle`'s session ended, for `why`.
    pub fn ended(&self, handle: &Handle, why: Ended) {
        if let Some(tell) = &self.0 {
            tell(handle, why);
        }
    }
}

impl std::fmt::Debug for SessionEnds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SessionEnds")
            .field(&self.0.is_some())
            .finish()
    }
}

/// A session backend. Every method is safe to call concurrently from many requests.
///
/// `load` never returns an expired record: expiry is checked on every read, so correctness
/// never depends on a sweeper.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The live record for `id`, or `None` if it is missing or expired.
    async fn load(&self, id: &Handle) -> Result<Option<Record>>;

    /// [`load`](Self::load), telling an expired session from a missing one: a record found
    /// past its expiry is removed here (a conditional delete, so of several callers exactly one
    /// gets [`Loaded::Expired`]; the others get `Missing`), as the sweeper would have removed
    /// it. This default cannot tell, and answers `Missing` for both; every backend that keeps
    /// `expires_at` overrides it, and a wrapper must forward it.
    async fn load_or_expired(&self, id: &Handle) -> Result<Loaded> {
        Ok(match self.load(id).await? {
            Some(record) => Loaded::Live(record),
            None => Loaded::Missing,
        })
    }

    /// Called only after [`load_or_expired`](Self::load_or_expired) answered
    /// [`Loaded::Missing`] for the presented cookie's `id`: moves a session a release before
    /// handles kept under `id` to `handle` (atomically, so of concurrent callers exactly one
    /// moves it and the others find it under `handle`), answering as `load_or_expired` would
    /// have (an expired one is removed, and reported once). The store never keeps `id`: it only
    /// names the old key, which is gone afterwards, index entries included. The default (every
    /// store whose old data was migrated at open) answers `Missing` without any work.
    async fn adopt_legacy(&self, id: &SessionId, handle: &Handle) -> Result<Loaded> {
        let _ = (id, handle);
        Ok(Loaded::Missing)
    }

    /// For each of `handles`, in order, whether it names a live session now: the recheck of
    /// the sessions that hold WebSockets, one call for all of them. The default loads each in
    /// turn; a backend that can ask in one round trip (sqlite, Redis) overrides it, and a
    /// wrapper must forward it.
    async fn live_among(&self, handles: &[Handle]) -> Result<Vec<bool>> {
        let mut live = Vec::with_capacity(handles.len());
        for handle in handles {
            live.push(self.load(handle).await?.is_some());
        }
        Ok(live)
    }

    /// Stores a brand-new session. Returns `false`, writing nothing, if a live session already
    /// has this id (the caller picks another id).
    async fn create(&self, id: &Handle, record: &Record) -> Result<bool>;

    /// Atomic read-apply-write: applies `update` to the record as stored *now*. `None` if the
    /// session is gone, in which case nothing is written.
    async fn update(&self, id: &Handle, update: &Update) -> Result<Option<Record>>;

    /// Removes the session. `true` if it existed.
    async fn delete(&self, id: &Handle) -> Result<bool>;

    /// Moves a session to a new id (against fixation), applying `update` on the way. `None` if
    /// the old session is gone. A change racing with a regenerate on the old id may be lost;
    /// the old id is dead either way. [`regenerate_aliased`](Self::regenerate_aliased) with no
    /// alias.
    async fn regenerate(
        &self,
        old: &Handle,
        new: &Handle,
        update: &Update,
    ) -> Result<Option<Record>> {
        self.regenerate_aliased(old, new, update, None).await
    }

    /// [`regenerate`](Self::regenerate), leaving `alias` (`session.regenerate_grace`) under
    /// `old`, expiring with the new record ([`Alias::expiring`]), in the same store operation:
    /// no reader finds the old session gone before the alias is there.
    ///
    /// Atomic among concurrent regenerates of one id: of all of them, exactly one new id
    /// survives. Whoever deletes the old id wins (a delete reports whether it found the
    /// session, and finds it once); every other one removes the copy it wrote and answers
    /// `None`, as if the session had already gone. A failure after the copy was written removes
    /// it too, so a failed regenerate leaves no second session behind.
    ///
    /// This default (memory, fs) writes the new session, then the alias, then deletes the old
    /// one: a crash in between leaves the old id resolving to the old session. A loser of
    /// concurrent regenerates removes the alias only if it still names its own copy, so the
    /// winner's alias may be lost only when the loser wrote its alias last (the old id then
    /// dies at once, as with no grace).
    async fn regenerate_aliased(
        &self,
        old: &Handle,
        new: &Handle,
        update: &Update,
        alias: Option<&Alias>,
    ) -> Result<Option<Record>> {
        let Some(current) = self.load(old).await? else {
            return Ok(None);
        };
        let record = update.apply(&current)?;
        if !self.create(new, &record).await? {
            return Err(StoreError::IdCollision);
        }
        let written = match alias {
            Some(alias) => self.put_alias(&alias.expiring(record.expires_at)).await,
            None => Ok(()),
        };
        let deleted = match written {
            Ok(()) => self.delete(old).await,
            Err(e) => Err(e),
        };
        match deleted {
            Ok(true) => Ok(Some(record)),
            Ok(false) => {
                // Another regenerate (or a destroy) took the old id first.
                if alias.is_some() {
                    self.drop_alias(old, new).await?;
                }
                self.delete(new).await?;
                Ok(None)
            }
            Err(e) => {
                let alias = match alias {
                    Some(_) => self.drop_alias(old, new).await,
                    None => Ok(()),
                };
                if let Err(cleanup) = alias.and(self.delete(new).await.map(|_| ())) {
                    tracing::warn!(error = %cleanup, "could not remove a failed regenerate's copy");
                }
                Err(e)
            }
        }
    }

    /// The alias kept under `old` (a regenerated-away id's handle), if not yet expired. Says
    /// nothing of the session it names: the caller loads that (a destroyed one ends the alias).
    async fn alias(&self, old: &Handle) -> Result<Option<Alias>> {
        let _ = old;
        Ok(None)
    }

    /// Writes `alias` under its old handle, replacing any. Only the default
    /// [`regenerate_aliased`](Self::regenerate_aliased) calls it. This default keeps nothing
    /// (every backend in this crate overrides it): a store without aliases behaves as with
    /// `regenerate_grace = 0`, the old id dying at once.
    async fn put_alias(&self, alias: &Alias) -> Result<()> {
        let _ = alias;
        Ok(())
    }

    /// Removes the alias under `old` if it names `new` (a failed or lost regenerate's).
    async fn drop_alias(&self, old: &Handle, new: &Handle) -> Result<()> {
        let _ = (old, new);
        Ok(())
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
    async fn user_sessions(&self, user: &str) -> Result<Vec<(Handle, Record)>> {
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
    /// The backend's sealer (`store.encryption_key`; off without one), shared with it: a
    /// reload of its keys ([`Sealer::replace`]) is what the backend uses from then on.
    pub sealer: Sealer,
    /// What a reload changes in this store.
    pub reload: Reload,
}

/// Opens the configured store and wraps it in [`Timed`]; with `store.encryption_key`, the
/// backend seals session data (see [`seal`]).
pub async fn open(config: &StoreConfig) -> Result<Opened> {
    let metrics = StoreMetrics::default();
    let secrets: Vec<&[u8]> = config
        .encryption_keys
        .iter()
        .map(|s| s.as_str().as_bytes())
        .collect();
    let sealer = Sealer::new(&secrets, metrics.unreadable.clone())
        .map_err(|e| StoreError::Unexpected(e.to_string()))?;
    let (sweep, _) = tokio::sync::watch::channel(config.sweep_interval);
    let reload = Reload {
        limit: timed::Limit::new(Some(config.timeout)),
        sweep: Arc::new(sweep),
        memory: matches!(config.kind, StoreKind::Memory)
            .then(|| Arc::new(memory::MemoryStore::sealed(None, sealer.clone()))),
        metrics,
        sealer,
    };
    let (store, sweeper) = reload.open(config).await?;
    Ok(Opened {
        store,
        sweeper,
        metrics: reload.metrics.clone(),
        sealer: reload.sealer.clone(),
        reload,
    })
}

/// What a reload changes in a running store: each call's bound and the sweeper's interval
/// ([`apply`](Reload::apply)), the encryption keys ([`sealer`](Reload::sealer)), and the store
/// itself, opened again with other backend settings (`fsync`, `mode`, `key_prefix`,
/// `filename_template`, `pool_size`, `table`) or another user index ([`open`](Reload::open)):
/// the new backend goes behind the same bound, counters and keys as the one it replaces, and
/// its sweeper follows the same interval. Clones share all of it.
#[derive(Clone)]
pub struct Reload {
    limit: timed::Limit,
    sweep: Arc<tokio::sync::watch::Sender<std::time::Duration>>,
    /// The memory store's sessions, which every memory store this opens shares (with its own
    /// user index): opening it again must not lose them.
    memory: Option<Arc<memory::MemoryStore>>,
    metrics: StoreMetrics,
    sealer: Sealer,
}

impl Reload {
    /// Puts `config`'s timeout (for calls that start from now on; a backend that never waits
    /// stays so) and sweep interval (from the next sweep on) in force.
    pub fn apply(&self, config: &StoreConfig) {
        self.limit.set(config.timeout);
        self.sweep.send_if_modified(|every| {
            let changed = *every != config.sweep_interval;
            *every = config.sweep_interval;
            changed
        });
    }

    /// The backends' sealer: a reload of its keys ([`Sealer::replace`]) is what they use from
    /// then on.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Opens the backend `config` names (a sqlite file with another user key is reindexed as
    /// at start), behind [`Timed`], with its sweeper when it needs one. The caller puts it in
    /// force; the store it replaces serves the calls in flight and closes when they are done.
    pub async fn open(
        &self,
        config: &StoreConfig,
    ) -> Result<(Arc<dyn SessionStore>, Option<Sweeper>)> {
        let users = config.users.clone();
        let s = self.sealer.clone();
        Ok(match &config.kind {
            StoreKind::Memory => self.timed(match &self.memory {
                Some(sessions) => sessions.reindexed(users),
                None => memory::MemoryStore::sealed(users, s),
            }),
            StoreKind::Fs(fs) => self.timed(fs::FsStore::open_sealed(fs.clone(), users, s).await?),
            StoreKind::Sqlite(q) => self.timed(
                sqlite::SqliteStore::open_sealed(q.clone(), sqlite::Reads::Inline, users, s)
                    .await?,
            ),
            #[cfg(feature = "redis")]
            StoreKind::Redis(r) => {
                self.timed(redis::RedisStore::open_sealed(r.clone(), users, s).await?)
            }
            #[cfg(not(feature = "redis"))]
            StoreKind::Redis(_) => {
                return Err(StoreError::Backend(
                    "built without the `redis` feature".into(),
                ));
            }
            #[cfg(feature = "postgres")]
            StoreKind::Postgres(p) => {
                self.timed(postgres::PostgresStore::open_sealed(p.clone(), users, s).await?)
            }
            #[cfg(not(feature = "postgres"))]
            StoreKind::Postgres(_) => {
                return Err(StoreError::Backend(
                    "built without the `postgres` feature".into(),
                ));
            }
        })
    }

    fn timed<S: SessionStore>(&self, backend: S) -> (Arc<dyn SessionStore>, Option<Sweeper>) {
        let caps = backend.capabilities();
        let limit = if caps.never_waits {
            timed::Limit::new(None)
        } else {
            self.limit.clone()
        };
        let store: Arc<dyn SessionStore> =
            Arc::new(Timed::new(backend, limit, self.metrics.clone()));
        let sweeper =
            (!caps.expires_by_itself).then(|| Sweeper::new(store.clone(), self.sweep.subscribe()));
        (store, sweeper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The memory store, with a delete of one chosen id that fails: a regenerate that fails
    /// after writing its new copy must not leave that copy behind.
    struct FailingDelete {
        inner: memory::MemoryStore,
        fails: Handle,
    }

    #[async_trait::async_trait]
    impl SessionStore for FailingDelete {
        async fn load(&self, id: &Handle) -> Result<Option<Record>> {
            self.inner.load(id).await
        }
        async fn create(&self, id: &Handle, record: &Record) -> Result<bool> {
            self.inner.create(id, record).await
        }
        async fn update(&self, id: &Handle, update: &Update) -> Result<Option<Record>> {
            self.inner.update(id, update).await
        }
        async fn delete(&self, id: &Handle) -> Result<bool> {
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
        let (old, new) = (Handle::generate().unwrap(), Handle::generate().unwrap());
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
            meta: Default::default(),
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
                remember_max: std::time::Duration::from_secs(90 * 86400),
                remember_absolute: None,
                first_lifetime: None,
            },
            max_size: 1024,
            extends: true,
            visit: None,
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
}
