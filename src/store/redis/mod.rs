//! The shared store: sessions in Redis (one server) or Redis Cluster, so that several proxies
//! behind a load balancer serve the same sessions. Needs Redis 7.0 or later.
//!
//! One hash per session at `{key_prefix}{id}` (field `v` the version, `r` the record as
//! [`Record::to_json`], `e` its expiry), kept [`GRACE`] past its expiry so that of all loaders,
//! in every proxy, exactly one reports it expired; then Redis drops it by itself (no sweeper).
//! Every write is one Lua script on one session key that compares before it writes
//! (`script.rs`), so writes are atomic across proxies and work unchanged on Redis Cluster;
//! `conn.rs` holds the connections and the listing's `SCAN`. It never writes a session it did
//! not find live, except through [`SessionStore::create`]. Why: docs/stores.md.

mod alias;
mod conn;
mod legacy;
mod script;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use redis::{Cmd, RedisError};

use self::conn::{Conn, Key, ListCursor, call_err, connect, glob_escape, redact};
use self::legacy::Legacy;
pub use self::legacy::Migrated;
use self::script::{Cas, Scripts};
use super::lock::StripedLock;
use super::{
    Alias, Capabilities, ExpiredSink, Loaded, Page, Record, Result, Sealer, SessionStore,
    StoreError, Update, now_ms,
};
use crate::config::RedisConfig;
use crate::session::{Handle, SessionId};

/// Compare-and-set attempts before an update gives up.
const MAX_ATTEMPTS: u32 = 32;
/// `SCAN` calls one `list` page may make before it returns what it has (keeps a page fast when
/// the database holds many keys that are not sessions).
const MAX_SCANS_PER_PAGE: usize = 64;

/// How long a session's key outlives its `expires_at`: for this long a load can still find the
/// dead record, remove it and report it (`expired` in the audit log); after it Redis drops the
/// key by itself, unreported. An hour covers a user who comes back after a short idle timeout
/// (the common case worth a line) and bounds what dead keys cost: at most an hour's worth of
/// the sessions that expired, every other read treating them as gone.
pub const GRACE: Duration = Duration::from_secs(3600);

/// Sessions in Redis or Redis Cluster. Cheap to share: one multiplexed connection (per node).
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    /// `SCAN MATCH` pattern for `prefix`: its glob characters escaped, then `*`.
    pattern: String,
    scripts: Scripts,
    locks: StripedLock,
    users: Option<crate::session::UserKey>,
    /// Sessions a release before handles kept under their ids: looked for until
    /// `sessions migrate` sets its marker (`legacy.rs`).
    legacy: Legacy,
    /// Seals field `r`'s data on write (`script.rs` `RecordJson`) and opens it on read; the
    /// scripts compare versions only, never data.
    sealer: Sealer,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects (and for a cluster, learns the slot map), so a wrong URL, password or port
    /// fails at start, with the URL (password hidden) in the message.
    pub async fn open(config: RedisConfig) -> Result<Self> {
        Self::open_indexed(config, None).await
    }

    /// [`RedisStore::open`], keeping a user index on `users`.
    pub async fn open_indexed(
        config: RedisConfig,
        users: Option<crate::session::UserKey>,
    ) -> Result<Self> {
        Self::open_sealed(config, users, Sealer::default()).await
    }

    /// [`RedisStore::open_indexed`], sealing session data with `sealer`
    /// (`store.encryption_key`).
    pub async fn open_sealed(
        config: RedisConfig,
        users: Option<crate::session::UserKey>,
        sealer: Sealer,
    ) -> Result<Self> {
        let shown = config
            .urls
            .iter()
            .map(|u| redact(u))
            .collect::<Vec<_>>()
            .join(", ");
        // redis-rs builds its rustls config inside the connect, and rustls panics there if the
        // build has no TLS crypto provider. Connecting in a task turns that into a start-up
        // error instead of a crash.
        // rediss:// needs a process-wide rustls crypto provider; an error here only means one
        // is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let urls = config.urls.clone();
        let conn = match tokio::spawn(connect(urls, config.cluster, config.timeout, shown.clone()))
            .await
        {
            Ok(conn) => conn?,
            Err(e) if e.is_panic() => {
                return Err(StoreError::Backend(
                    format!(
                        "connecting to Redis at {shown} panicked (for rediss://, this build may lack a TLS crypto provider)"
                    )
                    .into(),
                ));
            }
            Err(e) => return Err(StoreError::Backend(Box::new(e))),
        };
        let pattern = format!("{}*", glob_escape(&config.key_prefix));
        let migrated = Self::marker_set(&mut conn.clone(), &config.key_prefix).await?;
        if migrated {
            tracing::debug!("redis store: every session is keyed by its handle");
        } else {
            tracing::info!(
                "redis store: a session a release before handles kept under its id moves under \
                 its handle when first loaded; until `session-proxy sessions migrate` has run, \
                 an unknown cookie costs one more Redis call (two on a cluster)"
            );
        }
        Ok(RedisStore {
            conn,
            prefix: config.key_prefix,
            pattern,
            scripts: Scripts::default(),
            locks: StripedLock::default(),
            users,
            legacy: Legacy::new(migrated),
            sealer,
        })
    }

    fn key<'a>(&'a self, id: &'a Handle) -> Key<'a> {
        Key::of(&self.prefix, id)
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// The record at `id`'s key if it is live at `now`.
    async fn get_live(&self, id: &Handle, now: u64) -> Result<Option<Record>> {
        Ok(self.get(id).await?.filter(|r| r.is_live(now)))
    }

    /// The record at `id`'s key, live or dead (kept for [`GRACE`]). A record that does not
    /// parse is logged and treated as missing, so one bad value cannot lock a client out.
    async fn get(&self, id: &Handle) -> Result<Option<Record>> {
        Ok(self
            .get_bytes(self.key(id))
            .await?
            .and_then(|bytes| Record::from_stored(&bytes, id, &self.sealer)))
    }

    /// Field `r` at `key` as Redis sent it.
    async fn get_bytes(&self, key: Key<'_>) -> Result<Option<Vec<u8>>> {
        let mut cmd = Cmd::with_capacity(3, 8 + self.prefix.len() + crate::session::HANDLE_LEN);
        cmd.arg("HGET").arg(key).arg("r");
        cmd.query_async(&mut self.conn())
            .await
            .map_err(call_err("HGET"))
    }

    /// The user's set of session handles, `{key_prefix}user:{user}`.
    fn user_set(&self, user: &str) -> String {
        format!("{}user:{}", self.prefix, user)
    }

    /// A delete that takes the session out of its user's set: read, then compare-and-delete,
    /// so the set changed is the user the deleted record named. Without a user index, `DEL`.
    async fn delete_indexed(&self, id: &Handle) -> Result<bool> {
        let key = self.key(id);
        if self.users.is_none() {
            return self.del(key).await;
        }
        for _ in 0..MAX_ATTEMPTS {
            let Some(bytes) = self.get_bytes(key).await? else {
                return Ok(false);
            };
            let Some(current) = Record::from_stored(&bytes, id, &self.sealer) else {
                // Unreadable: its user is unknown; a read of the index drops the entry.
                return self.del(key).await;
            };
            match self.cas_del(key, id.as_str(), id, &current).await? {
                // A dead session kept for its grace is removed, but was no longer there.
                Cas::Done => return Ok(current.is_live(now_ms())),
                Cas::Gone => return Ok(false),
                Cas::Changed(_) => {}
            }
        }
        Err(StoreError::Backend(
            format!("delete lost {MAX_ATTEMPTS} races with concurrent writes").into(),
        ))
    }

    /// The second half of [`SessionStore::regenerate`], after the new id was created holding
    /// `record` (computed from `current`): removes the old id if it still holds `current`, or
    /// else moves the newer data over first. `None` if the old session vanished meanwhile.
    async fn finish_regenerate(
        &self,
        old_key: Key<'_>,
        new_key: Key<'_>,
        update: &Update,
        (old, new): (&Handle, &Handle),
        (mut current, mut record): (Record, Record),
        alias: Option<&Alias>,
    ) -> Result<Option<Record>> {
        for _ in 0..MAX_ATTEMPTS {
            let cas = match alias {
                Some(alias) if !self.is_cluster() => {
                    self.cas_del_aliased(old_key, old, &current, alias).await?
                }
                _ => self.cas_del(old_key, old.as_str(), old, &current).await?,
            };
            match cas {
                Cas::Done => return Ok(Some(record)),
                Cas::Changed(stored) if stored.is_live(update.now) => {
                    // Another write reached the old id first: carry it over. Nobody else knows
                    // the new id yet, so this compare-and-set only guards against a bug.
                    let next = update.apply(&stored)?;
                    let Cas::Done = self.cas_set(new_key, new, &record, &next).await? else {
                        return Err(StoreError::Unexpected(
                            "regenerated session changed under its new id".to_owned(),
                        ));
                    };
                    (current, record) = (stored, next);
                }
                Cas::Gone | Cas::Changed(_) => {
                    // Destroyed or expired meanwhile: it must not live on under the new id.
                    self.delete_indexed(new).await?;
                    return Ok(None);
                }
            }
        }
        Err(StoreError::Backend(
            format!("regenerate lost {MAX_ATTEMPTS} races with concurrent writes").into(),
        ))
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn load(&self, id: &Handle) -> Result<Option<Record>> {
        self.get_live(id, now_ms()).await
    }

    /// One `HGET` for a live session, as `load`; a record past its expiry (its key kept for
    /// [`GRACE`]) is removed by the expire script, whose compare-and-delete tells exactly one
    /// loader, in whichever proxy, that it expired.
    async fn load_or_expired(&self, id: &Handle) -> Result<Loaded> {
        let now = now_ms();
        let Some(record) = self.get(id).await? else {
            return Ok(Loaded::Missing);
        };
        if record.is_live(now) {
            return Ok(Loaded::Live(record));
        }
        if self.expire(self.key(id), id.as_str(), &record, now).await? {
            return Ok(Loaded::Expired {
                user: self.users.as_ref().and_then(|k| k.user_of(&record.data)),
            });
        }
        // Another loader removed it, or a create took the id since the read.
        Ok(self
            .get_live(id, now)
            .await?
            .map_or(Loaded::Missing, Loaded::Live))
    }

    /// One script call on one server (two when the session is found: a read, then the
    /// move); on a cluster, a read, a create and a compare-and-delete. None at all once
    /// `sessions migrate` has set its marker. See `legacy.rs`.
    async fn adopt_legacy(&self, id: &SessionId, handle: &Handle) -> Result<Loaded> {
        self.adopt(id, handle).await
    }

    /// Fields `e` (the expiry) and `v` of every key in one pipeline (one round trip) on one
    /// server; on a cluster, one `HMGET` per key in turn. A key with `v` but no `e` (written
    /// before `e` existed) is read whole, as `load` reads it.
    async fn live_among(&self, handles: &[Handle]) -> Result<Vec<bool>> {
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let fields: Vec<(Option<u64>, Option<String>)> = match &self.conn {
            Conn::Single(c) => {
                let mut pipe = redis::pipe();
                for handle in handles {
                    pipe.cmd("HMGET").arg(self.key(handle)).arg("e").arg("v");
                }
                pipe.query_async(&mut c.clone())
                    .await
                    .map_err(call_err("HMGET (live)"))?
            }
            Conn::Cluster(_) => {
                let mut out = Vec::with_capacity(handles.len());
                for handle in handles {
                    let got: (Option<u64>, Option<String>) = redis::cmd("HMGET")
                        .arg(self.key(handle))
                        .arg("e")
                        .arg("v")
                        .query_async(&mut self.conn())
                        .await
                        .map_err(call_err("HMGET (live)"))?;
                    out.push(got);
                }
                out
            }
        };
        let mut live = Vec::with_capacity(handles.len());
        for (handle, (e, v)) in handles.iter().zip(fields) {
            live.push(match (e, v) {
                (Some(e), _) => e > now,
                (None, None) => false,
                (None, Some(_)) => self.get_live(handle, now).await?.is_some(),
            });
        }
        Ok(live)
    }

    async fn create(&self, id: &Handle, record: &Record) -> Result<bool> {
        self.create_key(self.key(id), id, record).await
    }

    async fn update(&self, id: &Handle, update: &Update) -> Result<Option<Record>> {
        let key = self.key(id);
        let _guard = self.locks.lock(id).await;
        let mut current = update.base.clone().filter(|r| r.is_live(update.now));
        for _ in 0..MAX_ATTEMPTS {
            let base = match current.take() {
                Some(r) => r,
                None => match self.get_live(id, update.now).await? {
                    Some(r) => r,
                    None => return Ok(None),
                },
            };
            let next = update.apply(&base)?;
            match self.cas_set(key, id, &base, &next).await? {
                Cas::Done => return Ok(Some(next)),
                Cas::Gone => return Ok(None),
                Cas::Changed(stored) if stored.is_live(update.now) => {
                    // Retry at once: the reply is the freshest record there is, and it only
                    // grows stale while waiting.
                    current = Some(stored);
                }
                Cas::Changed(_) => return Ok(None),
            }
        }
        Err(StoreError::Backend(
            format!("update lost {MAX_ATTEMPTS} races with concurrent writes").into(),
        ))
    }

    async fn delete(&self, id: &Handle) -> Result<bool> {
        self.delete_indexed(id).await
    }

    /// Creates the new id, then deletes the old one only if it still holds the version the data
    /// was taken from: two round trips, and a change that raced in is carried over, not lost.
    /// The alias is written by the delete's script on one server; on a cluster by a call before
    /// it, removed again if the regenerate then loses or fails (`alias.rs`).
    async fn regenerate_aliased(
        &self,
        old: &Handle,
        new: &Handle,
        update: &Update,
        alias: Option<&Alias>,
    ) -> Result<Option<Record>> {
        let (old_key, new_key) = (self.key(old), self.key(new));
        let _guard = self.locks.lock(old).await;
        let current = match update.base.clone().filter(|r| r.is_live(update.now)) {
            Some(r) => r,
            None => match self.get_live(old, update.now).await? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let record = update.apply(&current)?;
        if !self.create_key(new_key, new, &record).await? {
            return Err(StoreError::IdCollision);
        }
        let alias = alias.map(|a| a.expiring(record.expires_at));
        let early = alias.as_ref().filter(|_| self.is_cluster());
        let result = match early {
            Some(alias) => self.set_alias(alias).await,
            None => Ok(()),
        };
        let result = match result {
            Ok(()) => {
                self.finish_regenerate(
                    old_key,
                    new_key,
                    update,
                    (old, new),
                    (current, record),
                    alias.as_ref(),
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let (Some(alias), Ok(None) | Err(_)) = (early, &result)
            && let Err(error) = self.unset_alias(alias).await
        {
            tracing::warn!(%error, "could not remove a lost regenerate's alias");
        }
        if result.is_err() {
            // Best effort: the client keeps its old id, so the new one must not linger.
            let _ = self.delete_indexed(new).await;
        }
        result
    }

    async fn alias(&self, old: &Handle) -> Result<Option<Alias>> {
        self.get_alias(old).await
    }

    /// `SCAN` (never `KEYS`) over every primary in turn. Pages hold at most `limit` sessions in
    /// no particular order; a session alive for the whole walk is listed at least once.
    async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page> {
        let mut page = Page::default();
        if limit == 0 {
            return Ok(page);
        }
        let nodes = self.conn.scan_nodes().await?;
        let mut pos = match cursor {
            Some(c) => ListCursor::parse(c)?,
            None => ListCursor {
                node: nodes[0],
                scan: 0,
                after: None,
            },
        };
        let count = limit.clamp(10, 1000);
        let now = now_ms();
        for _ in 0..MAX_SCANS_PER_PAGE {
            let reply = self
                .conn
                .scan(pos.node, pos.scan, &self.pattern, count, "hash")
                .await?;
            let (next_scan, keys): (u64, Vec<String>) = redis::from_redis_value(reply)
                .map_err(|e| call_err("SCAN")(RedisError::from(e)))?;
            let mut ids: Vec<Handle> = keys
                .iter()
                .filter_map(|k| k.strip_prefix(&self.prefix).and_then(Handle::parse))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            if let Some(after) = pos.after.take() {
                ids.retain(|id| *id > after);
            }
            let keys: Vec<Key<'_>> = ids.iter().map(|id| self.key(id)).collect();
            let records = self.conn.records(pos.node, &keys).await?;
            let mut live: Vec<(Handle, Record)> = ids
                .into_iter()
                .zip(records)
                .filter_map(|(id, bytes)| {
                    let record = Record::from_stored(&bytes?, &id, &self.sealer)?;
                    record.is_live(now).then_some((id, record))
                })
                .collect();
            let room = limit - page.sessions.len();
            if live.len() > room {
                live.truncate(room);
                let after = live.last().map(|(id, _)| *id);
                page.sessions.extend(live);
                page.next = Some(
                    ListCursor {
                        node: pos.node,
                        scan: pos.scan,
                        after,
                    }
                    .to_string(),
                );
                return Ok(page);
            }
            page.sessions.extend(live);
            if next_scan != 0 {
                pos.scan = next_scan;
            } else if let Some(&node) = nodes.iter().find(|n| **n > pos.node) {
                pos = ListCursor {
                    node,
                    scan: 0,
                    after: None,
                };
            } else {
                return Ok(page);
            }
            if page.sessions.len() == limit {
                break;
            }
        }
        page.next = Some(pos.to_string());
        Ok(page)
    }

    /// Nothing to do: keys expire by their TTL ([`GRACE`] after the session), and a dead
    /// one met before that is removed by the load that meets it.
    async fn prune_reporting(&self, _now: u64, _expired: Option<&ExpiredSink>) -> Result<u64> {
        Ok(0)
    }

    /// The user's set, each member read back: a live session of this user is returned; a
    /// member whose key is gone (expired by TTL, or deleted between a cluster's two calls) or
    /// expired leaves the set, which is what bounds it. A member naming another user now is
    /// only skipped: on a cluster its move may still be under way.
    async fn user_sessions(&self, user: &str) -> Result<Vec<(Handle, Record)>> {
        let Some(key) = &self.users else {
            return Err(StoreError::NoUserIndex);
        };
        let set = self.user_set(user);
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut self.conn())
            .await
            .map_err(call_err("SMEMBERS"))?;
        let now = now_ms();
        let (mut out, mut dead) = (Vec::new(), Vec::new());
        for member in members {
            let Some(id) = Handle::parse(&member) else {
                dead.push(member);
                continue;
            };
            let Some(bytes) = self.get_bytes(self.key(&id)).await? else {
                dead.push(member);
                continue;
            };
            match Record::from_stored(&bytes, &id, &self.sealer) {
                Some(r) if crate::store::users::holds(key, &r, user, now) => out.push((id, r)),
                Some(r) if !r.is_live(now) => dead.push(member),
                _ => {}
            }
        }
        if !dead.is_empty() {
            redis::cmd("SREM")
                .arg(&set)
                .arg(&dead)
                .query_async::<i64>(&mut self.conn())
                .await
                .map_err(call_err("SREM"))?;
        }
        Ok(out)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            expires_by_itself: true,
            never_waits: false,
            lists_in_order: false,
        }
    }
}
