//! The embedded default store: every session a row of one SQLite file, in WAL mode.
//!
//! Writes go through one writer thread (`writer.rs`), which commits everything queued in one
//! transaction and answers each write only after the commit: with `fsync = true`
//! (`synchronous = FULL`) an answered write survives power loss, and one fsync covers a whole
//! batch. An update is the read-merge-write of [`Update::apply`] inside that transaction, so it
//! is atomic against every other writer of the file, in this process or another (SQLite's
//! write lock, waited for up to `store.timeout`): several proxies on one machine may share one
//! file.
//!
//! Reads run on a small pool of read-only connections; in WAL mode they never wait for the
//! writer. A `load` is a point read of one row, and [`Reads`] says where it runs.
//! Listings page by keyset (`id > cursor`), so a page costs the same at any depth.
//!
//! With `session.user_key`, each row's `user` column is set by the statement that writes its
//! data (a touch leaves it), so the index is in the same transaction as the session; a delete
//! or the sweeper's removal of the row removes its entry. All processes sharing a file must use
//! the same `user_key`: opening with another one rebuilds the column (`schema::reindex_users`).

mod alias;
mod checkpoint;
mod readers;
#[macro_use]
mod rows;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::{
    Alias, ExpiredSink, Loaded, Page, Record, Result, Sealer, SessionStore, StoreError, Update,
    now_ms,
};
use crate::config::SqliteConfig;
use crate::session::{Handle, UserKey};
use readers::Readers;
use rows::{create, int, record, write};
use writer::{OpError, Writer};

/// Read connections: enough for the async workers plus a listing or two; each costs a file
/// handle and a page cache.
const READERS: usize = 4;
/// Expired rows removed per writer operation by `prune`, so requests' writes queued meanwhile
/// wait for one chunk, not for the whole sweep. Expired ids are scattered over the table, so a
/// chunk dirties about one page per row, all of it written to the WAL and fsynced with the
/// requests' writes of the same commit: at 1,000 a chunk held those writes ~45 ms and a prune
/// of 100,000 under load raised the request p99 to 6x its baseline (bench/PRUNE.md).
const PRUNE_CHUNK: i64 = 100;

/// Where a `load` runs its query. The proxy uses [`Reads::Inline`]; the other is kept so the
/// measurement can be re-run (`sqlite_bench reads`, bench/SQLITE.md).
///
/// A load is a point read of one row on a connection that is already open, in WAL mode, where
/// readers never wait for the writer: about 6 µs (p50) when the page is cached. Measured from
/// 64 tasks on a 2-worker runtime with 10 % updates through the writer, inline ran 44,000 to
/// 79,000 loads/s (p99 0.26–0.58 ms) and `spawn_blocking` 18,000 to 38,000 (p99 5–16 ms), in
/// every run (the range is the shared machine's noise): the hop to the blocking pool and back
/// costs far more than the query. So a load runs inline,
/// bounded: an inline read never waits on a lock (its busy timeout is zero) and never opens a
/// file; in the rare case it would (a lock held by another process's recovery or last-close
/// checkpoint, or no idle connection), it moves to the blocking pool. What remains inline is
/// reading a page the OS has not cached, as a first touch of a memory-mapped file would be.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// On the async worker that awaits it, falling back to the blocking pool.
    Inline,
    /// Always on tokio's blocking pool (`spawn_blocking`).
    Blocking,
}

#[derive(Debug)]
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<Readers>,
    reads: Reads,
    /// Rows in the file as of this process's last commit (expired ones until swept).
    count: Arc<AtomicU64>,
    users: Option<UserKey>,
    /// The `data` column holds what this sealed; every read opens it, so the merge and the
    /// `user` column work on the opened data.
    sealer: Sealer,
}

/// An error of the SQLite library, with the file and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("session database {}: {doing}: {source}", path.display())]
pub struct SqliteError {
    path: PathBuf,
    doing: &'static str,
    #[source]
    source: rusqlite::Error,
}

impl SqliteError {
    fn wrap(path: &Path, doing: &'static str, source: rusqlite::Error) -> StoreError {
        StoreError::Backend(Box::new(SqliteError {
            path: path.to_owned(),
            doing,
            source,
        }))
    }
}

impl SqliteStore {
    /// Opens (creating it if missing) the database file, checks that it is writable and that
    /// its schema is one this binary knows, and starts the writer thread.
    pub async fn open(config: SqliteConfig) -> Result<Self> {
        Self::open_with(config, Reads::Inline).await
    }

    #[doc(hidden)]
    pub async fn open_with(config: SqliteConfig, reads: Reads) -> Result<Self> {
        Self::open_indexed(config, reads, None).await
    }

    /// [`SqliteStore::open_with`], keeping a user index on `users`.
    pub async fn open_indexed(
        config: SqliteConfig,
        reads: Reads,
        users: Option<UserKey>,
    ) -> Result<Self> {
        Self::open_sealed(config, reads, users, Sealer::default()).await
    }

    /// [`SqliteStore::open_indexed`], sealing session data with `sealer`
    /// (`store.encryption_key`).
    pub async fn open_sealed(
        config: SqliteConfig,
        reads: Reads,
        users: Option<UserKey>,
        sealer: Sealer,
    ) -> Result<Self> {
        tokio::task::spawn_blocking(move || {
            let conn = schema::open_writer(&config)?;
            schema::reindex_users(&conn, users.as_ref(), &sealer, &config.path)?;
            let n: i64 = conn
                .query_row("SELECT n FROM session_count", [], |row| row.get(0))
                .map_err(|e| SqliteError::wrap(&config.path, "cannot count the sessions", e))?;
            let count = Arc::new(AtomicU64::new(u64::try_from(n).unwrap_or(0)));
            let readers = Readers::open(&config.path, config.timeout)?;
            let writer = Writer::start(conn, config.path.clone(), config.fsync, count.clone())?;
            Ok(SqliteStore {
                writer,
                readers: Arc::new(readers),
                reads,
                count,
                users,
                sealer,
            })
        })
        .await
        .map_err(StoreError::join)?
    }

    /// One point read: on the async worker when reads run inline and a connection is free and
    /// not busy, else on the blocking pool.
    async fn point_read<T: Send + 'static>(
        &self,
        query: impl Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.reads == Reads::Inline
            && let Some(found) = self.readers.inline(&query).await?
        {
            return Ok(found);
        }
        self.readers
            .blocking(move |conn| query(conn).map_err(|e| StoreError::Backend(Box::new(e))))
            .await
    }
}

fn select_live(
    conn: &Connection,
    id: &Handle,
    now: u64,
    sealer: &Sealer,
) -> rusqlite::Result<Option<Record>> {
    conn.prepare_cached(concat!(
        "SELECT ",
        columns!(),
        " FROM sessions WHERE handle = ?1 AND expires_at > ?2"
    ))?
    .query_row(params![id.as_str(), int(now)], |row| {
        record(row, 0, id, sealer)
    })
    .optional()
    .map(Option::flatten)
}

/// The row of `id` whatever its expiry, for the caller to tell live from expired.
fn select_any(conn: &Connection, id: &Handle, sealer: &Sealer) -> rusqlite::Result<Option<Record>> {
    conn.prepare_cached(concat!(
        "SELECT ",
        columns!(),
        " FROM sessions WHERE handle = ?1"
    ))?
    .query_row(params![id.as_str()], |row| record(row, 0, id, sealer))
    .optional()
    .map(Option::flatten)
}

/// Removes the row of `id` if it expired by `now`; its `user` column if it did. Run by the
/// writer, so of several processes meeting one expiry exactly one removes the row.
fn delete_expired(
    conn: &Connection,
    id: &Handle,
    now: u64,
) -> rusqlite::Result<Option<Option<String>>> {
    conn.prepare_cached(
        "DELETE FROM sessions WHERE handle = ?1 AND expires_at <= ?2 RETURNING user",
    )?
    .query_row(params![id.as_str(), int(now)], |row| row.get(0))
    .optional()
}

/// The `user` column's value for `r`.
fn user_of(users: Option<&UserKey>, r: &Record) -> Option<String> {
    users.and_then(|k| k.user_of(&r.data))
}

/// Removes the row; `true` if it held a live session.
fn delete(conn: &Connection, id: &Handle, now: u64) -> rusqlite::Result<bool> {
    let expires_at: Option<i64> = conn
        .prepare_cached("DELETE FROM sessions WHERE handle = ?1 RETURNING expires_at")?
        .query_row([id.as_str()], |row| row.get(0))
        .optional()?;
    Ok(expires_at.is_some_and(|e| e > int(now)))
}

fn list(
    conn: &Connection,
    after: Option<Handle>,
    limit: usize,
    now: u64,
    sealer: &Sealer,
) -> Result<Page> {
    let fail = |e| StoreError::Backend(Box::new(e));
    let mut stmt = conn
        .prepare_cached(concat!(
            "SELECT handle, ",
            columns!(),
            " FROM sessions WHERE handle > ?1 AND expires_at > ?2 ORDER BY handle LIMIT ?3"
        ))
        .map_err(fail)?;
    // One row past the page tells whether there is a next one.
    let want = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
    let after = after.map(|id| id.to_string()).unwrap_or_default();
    let mut rows = stmt.query(params![after, int(now), want]).map_err(fail)?;
    let mut page = Page::default();
    let (mut seen, mut last) = (0, None);
    while let Some(row) = rows.next().map_err(fail)? {
        if seen == limit {
            page.next = last;
            break;
        }
        seen += 1;
        let text: String = row.get(0).map_err(fail)?;
        last = Some(text.clone());
        let Some(id) = Handle::parse(&text) else {
            tracing::error!("a row whose id is not a session id skipped in a listing");
            continue;
        };
        if let Some(r) = record(row, 1, &id, sealer).map_err(fail)? {
            page.sessions.push((id, r));
        }
    }
    Ok(page)
}

#[async_trait]
impl SessionStore for SqliteStore {
    /// Inline when it can be, see [`Reads`].
    async fn load(&self, id: &Handle) -> Result<Option<Record>> {
        let (id, sealer) = (*id, self.sealer.clone());
        self.point_read(move |conn| select_live(conn, &id, now_ms(), &sealer))
            .await
    }

    /// The same point read as `load` (inline when it can be); only a row found expired costs a
    /// writer operation, the conditional delete that decides who saw the expiry.
    async fn load_or_expired(&self, id: &Handle) -> Result<Loaded> {
        let (id, now) = (*id, now_ms());
        let sealer = self.sealer.clone();
        let found = self
            .point_read(move |conn| select_any(conn, &id, &sealer))
            .await?;
        match found {
            None => return Ok(Loaded::Missing),
            Some(r) if r.is_live(now) => return Ok(Loaded::Live(r)),
            Some(_) => {}
        }
        let indexed = self.users.is_some();
        let sealer = self.sealer.clone();
        self.writer
            .run(move |conn| {
                Ok(match delete_expired(conn, &id, now)? {
                    Some(user) => Loaded::Expired {
                        user: user.filter(|_| indexed),
                    },
                    // Removed by another caller, or created anew since the read.
                    None => {
                        select_live(conn, &id, now, &sealer)?.map_or(Loaded::Missing, Loaded::Live)
                    }
                })
            })
            .await
    }

    /// One query, `handle IN (...)`, on the blocking pool: the batch may be long.
    async fn live_among(&self, handles: &[Handle]) -> Result<Vec<bool>> {
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<Handle> = handles.to_vec();
        self.readers
            .blocking(move |conn| {
                let fail = |e| StoreError::Backend(Box::new(e));
                let marks = vec!["?"; wanted.len()].join(",");
                let sql = format!(
                    "SELECT handle FROM sessions WHERE expires_at > ? AND handle IN ({marks})"
                );
                let mut stmt = conn.prepare(&sql).map_err(fail)?;
                let now = rusqlite::types::Value::Integer(int(now_ms()));
                let args = std::iter::once(now).chain(
                    wanted
                        .iter()
                        .map(|h| rusqlite::types::Value::Text(h.as_str().to_owned())),
                );
                let found = stmt
                    .query_map(rusqlite::params_from_iter(args), |row| {
                        row.get::<_, String>(0)
                    })
                    .map_err(fail)?
                    .collect::<rusqlite::Result<std::collections::HashSet<String>>>()
                    .map_err(fail)?;
                Ok(wanted.iter().map(|h| found.contains(h.as_str())).collect())
            })
            .await
    }

    async fn create(&self, id: &Handle, record: &Record) -> Result<bool> {
        let (id, record) = (*id, record.clone());
        let user = user_of(self.users.as_ref(), &record);
        let data = self.sealer.seal(&record.data, &id)?.into_owned();
        let meta = record.meta_column(&self.sealer, &id)?;
        let row = move |conn: &Connection| {
            let columns = (&record, data.as_str(), meta.as_deref());
            create(conn, &id, columns, user.as_deref(), now_ms())
        };
        self.writer.run(move |conn| Ok(row(conn)?)).await
    }

    async fn update(&self, id: &Handle, update: &Update) -> Result<Option<Record>> {
        let (id, update, users) = (*id, update.clone(), self.users.clone());
        let sealer = self.sealer.clone();
        self.writer
            .run(move |conn| {
                let Some(current) = select_live(conn, &id, update.now, &sealer)? else {
                    return Ok(None);
                };
                let next = update.apply(&current)?;
                let user = (!Arc::ptr_eq(&current.data, &next.data))
                    .then(|| user_of(users.as_ref(), &next));
                let data = sealer.seal(&next.data, &id)?;
                let meta = next.meta_column(&sealer, &id)?;
                let user = user.as_ref().map(Option::as_deref);
                write(conn, &id, (&next, &data, meta.as_deref()), user)?;
                Ok(Some(next))
            })
            .await
    }

    async fn delete(&self, id: &Handle) -> Result<bool> {
        let id = *id;
        self.writer
            .run(move |conn| Ok(delete(conn, &id, now_ms())?))
            .await
    }

    /// One writer operation: the new id is written, the alias left and the old one removed in
    /// the same transaction, so no crash or concurrent request sees both or neither.
    async fn regenerate_aliased(
        &self,
        old: &Handle,
        new: &Handle,
        update: &Update,
        alias: Option<&Alias>,
    ) -> Result<Option<Record>> {
        let (old, new, update, users) = (*old, *new, update.clone(), self.users.clone());
        let alias = alias.cloned();
        let sealer = self.sealer.clone();
        self.writer
            .run(move |conn| {
                let Some(current) = select_live(conn, &old, update.now, &sealer)? else {
                    return Ok(None);
                };
                let next = update.apply(&current)?;
                let user = user_of(users.as_ref(), &next);
                // Sealed under the new handle: the old one's ciphertext would not open there.
                let data = sealer.seal(&next.data, &new)?;
                let meta = next.meta_column(&sealer, &new)?;
                let columns = (&next, &*data, meta.as_deref());
                if !create(conn, &new, columns, user.as_deref(), update.now)? {
                    return Err(OpError::Refused(StoreError::IdCollision));
                }
                if let Some(alias) = &alias {
                    alias::put(conn, &alias.expiring(next.expires_at))?;
                }
                delete(conn, &old, update.now)?;
                Ok(Some(next))
            })
            .await
    }

    async fn alias(&self, old: &Handle) -> Result<Option<Alias>> {
        let old = *old;
        self.readers
            .blocking(move |conn| {
                alias::get(conn, &old, now_ms()).map_err(|e| StoreError::Backend(Box::new(e)))
            })
            .await
    }

    /// Always on the blocking pool: a page is up to a thousand rows.
    async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page> {
        let after = super::handle_cursor(cursor)?;
        if limit == 0 {
            return Ok(Page::default());
        }
        let sealer = self.sealer.clone();
        self.readers
            .blocking(move |conn| list(conn, after, limit, now_ms(), &sealer))
            .await
    }

    /// Chunk by chunk through the writer, so requests' writes interleave with the sweep. With
    /// `expired`, each chunk's delete returns its ids and users, reported once it is committed.
    async fn prune_reporting(&self, now: u64, expired: Option<&ExpiredSink>) -> Result<u64> {
        self.writer
            .run(move |conn| Ok(alias::prune(conn, now)?))
            .await?;
        let mut removed = 0;
        loop {
            let n = match expired {
                None => {
                    self.writer
                        .run(move |conn| {
                            Ok(conn
                                .prepare_cached(
                                    "DELETE FROM sessions WHERE handle IN \
                                 (SELECT handle FROM sessions WHERE expires_at <= ?1 LIMIT ?2)",
                                )?
                                .execute(params![int(now), PRUNE_CHUNK])?)
                        })
                        .await?
                }
                Some(report) => {
                    let indexed = self.users.is_some();
                    let gone = self
                        .writer
                        .run(move |conn| {
                            let mut stmt = conn.prepare_cached(
                                "DELETE FROM sessions WHERE handle IN \
                                 (SELECT handle FROM sessions WHERE expires_at <= ?1 LIMIT ?2) \
                                 RETURNING handle, user",
                            )?;
                            let rows = stmt.query_map(params![int(now), PRUNE_CHUNK], |row| {
                                Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
                            })?;
                            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
                        })
                        .await?;
                    for (id, user) in &gone {
                        if let Some(id) = Handle::parse(id) {
                            report(&id, user.as_deref().filter(|_| indexed));
                        }
                    }
                    gone.len()
                }
            };
            removed += n as u64;
            if (n as i64) < PRUNE_CHUNK {
                return Ok(removed);
            }
        }
    }

    /// The partial index on `user`, on the blocking pool (a user may have many sessions).
    async fn user_sessions(&self, user: &str) -> Result<Vec<(Handle, Record)>> {
        let Some(key) = self.users.clone() else {
            return Err(StoreError::NoUserIndex);
        };
        let user = user.to_owned();
        let sealer = self.sealer.clone();
        self.readers
            .blocking(move |conn| {
                let fail = |e| StoreError::Backend(Box::new(e));
                let now = now_ms();
                let mut stmt = conn
                    .prepare_cached(concat!(
                        "SELECT handle, ",
                        columns!(),
                        " FROM sessions WHERE user = ?1 AND expires_at > ?2"
                    ))
                    .map_err(fail)?;
                let mut rows = stmt.query(params![user, int(now)]).map_err(fail)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(fail)? {
                    let text: String = row.get(0).map_err(fail)?;
                    let Some(id) = Handle::parse(&text) else {
                        continue;
                    };
                    if let Some(r) = record(row, 1, &id, &sealer).map_err(fail)?
                        && crate::store::users::holds(&key, &r, &user, now)
                    {
                        out.push((id, r));
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Kept exact by triggers in every writer's transaction; this process reads it back after
    /// each of its commits, so another process's writes show after this one's next write or
    /// sweep.
    fn count(&self) -> Option<u64> {
        Some(self.count.load(Ordering::Relaxed))
    }
}
