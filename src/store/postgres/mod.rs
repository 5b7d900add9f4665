//! The shared SQL store: sessions in PostgreSQL, so several proxies serve the same sessions
//! from the database a team already runs (with its failover, backups and point-in-time
//! recovery), without Redis.
//!
//! One row per session in `{store.table}.sessions`, keyed by handle (`schema.rs`), reached
//! through a pool of `store.pool_size` connections (`connect.rs`: the URL, TLS over rustls,
//! the pool that replaces a connection the server closed, so the store comes back by itself
//! after a database restart). Every statement is prepared once per connection (`rows.rs`).
//!
//! Atomic across proxies, statement by statement:
//!
//! - create is `INSERT … ON CONFLICT DO UPDATE … WHERE expired`: a live session keeps its id;
//! - an update is a compare-and-set on `version` against the record the request loaded (one
//!   statement); when another write came in between, or nothing was loaded, it reads the row
//!   `FOR UPDATE` in a transaction and writes under that lock, so a hot session never starves;
//! - a regenerate locks the old row, writes the new one and the alias, and deletes the old one
//!   in one transaction: of concurrent regenerates exactly one finds the old row;
//! - an expiry is seen once: `DELETE … WHERE expires_at <= now RETURNING` hands the row to one
//!   caller;
//! - the user index is the row's `user_name` column, written by the same statement as its data;
//! - the sweeper deletes in chunks by tuple id, skipping rows a request holds, so neither
//!   waits long on the other.

mod connect;
mod rows;
mod schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Object, Pool};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{
    Alias, ExpiredSink, Loaded, Page, Record, Result, Sealer, SessionStore, StoreError, Update,
    now_ms,
};
use crate::config::PostgresConfig;
use crate::session::{Handle, UserKey};
use rows::{Sql, int, record};

/// Expired rows one statement of the sweep removes: each chunk is its own short transaction,
/// so requests never wait on a long one (bench/POSTGRES.md measures the p99 during a prune).
const PRUNE_CHUNK: i64 = 1000;

/// Sessions in PostgreSQL. Cheap to share: the pool is.
pub struct PostgresStore {
    pool: Pool,
    sql: Arc<Sql>,
    /// Rows in the table: counted at start and after each sweep, moved by this process's writes
    /// in between (another proxy's show after the next sweep); expired ones until swept.
    count: AtomicU64,
    users: Option<UserKey>,
    /// The `data` and `meta` columns hold what this sealed.
    sealer: Sealer,
    /// `store.url` without its password, for messages.
    shown: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

/// An error of the database or the driver, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("postgres: {doing}: {source}")]
pub struct PgError {
    doing: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl PgError {
    fn wrap(
        doing: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Backend(Box::new(PgError {
            doing,
            source: source.into(),
        }))
    }
}

/// Maps a driver error of one statement to a [`StoreError`] naming what it did.
fn err(doing: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| PgError::wrap(doing, e)
}

/// The rows of `sql` (prepared once per connection, then from the pool's cache) on `client`.
async fn rows(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    doing: &'static str,
) -> Result<Vec<Row>> {
    let stmt = client.prepare_cached(sql).await.map_err(err(doing))?;
    client.query(&stmt, params).await.map_err(err(doing))
}

/// The one row of `sql` on `client`, if any.
async fn row(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    doing: &'static str,
) -> Result<Option<Row>> {
    let stmt = client.prepare_cached(sql).await.map_err(err(doing))?;
    client.query_opt(&stmt, params).await.map_err(err(doing))
}

/// How many rows `sql` changed on `client`.
async fn exec(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    doing: &'static str,
) -> Result<u64> {
    let stmt = client.prepare_cached(sql).await.map_err(err(doing))?;
    client.execute(&stmt, params).await.map_err(err(doing))
}

/// The `user_name` column's value for `r`.
fn user_of(users: Option<&UserKey>, r: &Record) -> Option<String> {
    users.and_then(|k| k.user_of(&r.data))
}

impl PostgresStore {
    /// Connects (so a wrong URL, password or port fails at start, with the URL, password
    /// hidden), then creates or migrates the schema and its user index.
    pub async fn open(config: PostgresConfig) -> Result<Self> {
        Self::open_sealed(config, None, Sealer::default()).await
    }

    /// [`PostgresStore::open`], keeping a user index on `users` and sealing session data with
    /// `sealer` (`store.encryption_key`).
    pub async fn open_sealed(
        config: PostgresConfig,
        users: Option<UserKey>,
        sealer: Sealer,
    ) -> Result<Self> {
        let target = connect::target(&config.url, |k| std::env::var(k).ok())?;
        let shown = target.shown.clone();
        let pool = connect::pool(target, &config)?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| PgError::wrap("connecting", format!("cannot connect to {shown}: {e}")))?;
        schema::prepare(&mut client, &config.schema, users.as_ref(), &sealer, &shown).await?;
        let sql = Arc::new(Sql::new(&config.schema));
        let n: i64 = client
            .query_one(&sql.count, &[])
            .await
            .map_err(err("counting the sessions"))?
            .get(0);
        Ok(PostgresStore {
            pool,
            sql,
            count: AtomicU64::new(u64::try_from(n).unwrap_or(0)),
            users,
            sealer,
            shown,
        })
    }

    async fn client(&self) -> Result<Object> {
        self.pool
            .get()
            .await
            .map_err(|e| PgError::wrap("taking a connection", format!("{}: {e}", self.shown)))
    }

    /// The live record of `id`, read on `client` with `query` (`select_live` or `_locked`).
    async fn select(
        &self,
        client: &impl GenericClient,
        query: &str,
        id: &Handle,
        now: u64,
    ) -> Result<Option<Record>> {
        let row = row(
            client,
            query,
            &[&id.as_str(), &int(now)],
            "reading a session",
        )
        .await?;
        Ok(row.and_then(|row| record(&row, 0, id, &self.sealer)))
    }

    /// Create-if-absent of `r` under `id` on `client`: `None` if a live session has the id,
    /// else whether the row is new (not a dead one's replaced), for the count.
    async fn insert(
        &self,
        client: &impl GenericClient,
        id: &Handle,
        r: &Record,
    ) -> Result<Option<bool>> {
        let user = user_of(self.users.as_ref(), r);
        let data = self.sealer.seal(&r.data, id)?;
        let meta = r.meta_column(&self.sealer, id)?;
        let written = row(
            client,
            &self.sql.create,
            &[
                &id.as_str(),
                &&*data,
                &int(r.created_at),
                &int(r.updated_at),
                &int(r.expires_at),
                &int(r.version),
                &meta.as_deref(),
                &user.as_deref(),
                &int(now_ms()),
            ],
            "creating a session",
        )
        .await?;
        Ok(written.map(|row| row.get::<_, bool>(0)))
    }

    /// Moves the count by `delta` rows, as this process's committed writes did.
    fn counted(&self, delta: i64) {
        if delta > 0 {
            self.count
                .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        } else if delta < 0 {
            let _ = self
                .count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(delta.unsigned_abs()))
                });
        }
    }

    /// Writes `next` over `id`'s row if it is still live at `now` and at version `read`;
    /// `false` if another write came first (or the session is gone). `current` is what `next`
    /// was computed from: the user column changes only when the data did.
    async fn write_if(
        &self,
        client: &impl GenericClient,
        id: &Handle,
        (current, next): (&Record, &Record),
        now: u64,
    ) -> Result<bool> {
        let changed = !Arc::ptr_eq(&current.data, &next.data);
        let user = changed
            .then(|| user_of(self.users.as_ref(), next))
            .flatten();
        let data = self.sealer.seal(&next.data, id)?;
        let meta = next.meta_column(&self.sealer, id)?;
        let n = exec(
            client,
            &self.sql.write,
            &[
                &id.as_str(),
                &&*data,
                &int(next.created_at),
                &int(next.updated_at),
                &int(next.expires_at),
                &int(next.version),
                &meta.as_deref(),
                &changed,
                &user.as_deref(),
                &int(current.version),
                &int(now),
            ],
            "writing a session",
        )
        .await?;
        Ok(n == 1)
    }

    /// Removes `id`'s row: `None` if there was none, else whether it was live.
    async fn delete_on(
        &self,
        client: &impl GenericClient,
        id: &Handle,
        now: u64,
    ) -> Result<Option<bool>> {
        let row = row(
            client,
            &self.sql.delete,
            &[&id.as_str()],
            "deleting a session",
        )
        .await?;
        Ok(row.map(|row| row.get::<_, i64>(0) > int(now)))
    }

    async fn put_alias_on(&self, client: &impl GenericClient, alias: &Alias) -> Result<()> {
        exec(
            client,
            &self.sql.alias_put,
            &[
                &alias.old.as_str(),
                &alias.new.as_str(),
                &alias.sealed,
                &int(alias.grace_until),
                &int(alias.expires_at),
            ],
            "writing an alias",
        )
        .await?;
        Ok(())
    }

    /// Rows with handle and record from `at` on, as listings and the user index read them.
    fn records(&self, rows: &[tokio_postgres::Row]) -> Vec<(Handle, Record)> {
        rows.iter()
            .filter_map(|row| {
                let text: &str = row.get(0);
                let Some(id) = Handle::parse(text) else {
                    tracing::error!("a row whose key is not a session handle skipped");
                    return None;
                };
                record(row, 1, &id, &self.sealer).map(|r| (id, r))
            })
            .collect()
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn load(&self, id: &Handle) -> Result<Option<Record>> {
        let client = self.client().await?;
        self.select(&client, &self.sql.select_live, id, now_ms())
            .await
    }

    /// One read; only a row found expired costs the conditional delete that decides who saw
    /// the expiry.
    async fn load_or_expired(&self, id: &Handle) -> Result<Loaded> {
        let now = now_ms();
        let client = self.client().await?;
        let found = row(
            &client,
            &self.sql.select_any,
            &[&id.as_str()],
            "reading a session",
        )
        .await?;
        match found.and_then(|row| record(&row, 0, id, &self.sealer)) {
            None => return Ok(Loaded::Missing),
            Some(r) if r.is_live(now) => return Ok(Loaded::Live(r)),
            Some(_) => {}
        }
        let removed = row(
            &client,
            &self.sql.delete_expired,
            &[&id.as_str(), &int(now)],
            "removing an expired session",
        )
        .await?;
        Ok(match removed {
            Some(row) => {
                self.counted(-1);
                Loaded::Expired {
                    user: row
                        .get::<_, Option<String>>(0)
                        .filter(|_| self.users.is_some()),
                }
            }
            // Removed by another caller, or created anew since the read.
            None => self
                .select(&client, &self.sql.select_live, id, now)
                .await?
                .map_or(Loaded::Missing, Loaded::Live),
        })
    }

    /// One query, `handle = ANY($1)`.
    async fn live_among(&self, handles: &[Handle]) -> Result<Vec<bool>> {
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let wanted: Vec<&str> = handles.iter().map(Handle::as_str).collect();
        let rows = rows(
            &client,
            &self.sql.live_among,
            &[&wanted, &int(now_ms())],
            "checking sessions",
        )
        .await?;
        let found: std::collections::HashSet<&str> = rows.iter().map(|r| r.get(0)).collect();
        Ok(wanted.iter().map(|h| found.contains(h)).collect())
    }

    async fn create(&self, id: &Handle, record: &Record) -> Result<bool> {
        let client = self.client().await?;
        let written = self.insert(&client, id, record).await?;
        if written == Some(true) {
            self.counted(1);
        }
        Ok(written.is_some())
    }

    /// A compare-and-set against `update.base` first (one statement); else, or when another
    /// write came in between, the row read `FOR UPDATE` and written in one transaction.
    async fn update(&self, id: &Handle, update: &Update) -> Result<Option<Record>> {
        let mut client = self.client().await?;
        if let Some(base) = update.base.as_ref().filter(|b| b.is_live(update.now)) {
            let next = update.apply(base)?;
            if self
                .write_if(&client, id, (base, &next), update.now)
                .await?
            {
                return Ok(Some(next));
            }
        }
        let tx = client
            .transaction()
            .await
            .map_err(err("starting a transaction"))?;
        let Some(current) = self
            .select(&tx, &self.sql.select_locked, id, update.now)
            .await?
        else {
            return Ok(None);
        };
        let next = update.apply(&current)?;
        if !self
            .write_if(&tx, id, (&current, &next), update.now)
            .await?
        {
            return Err(StoreError::Unexpected(
                "a session row locked for update changed under the lock".to_owned(),
            ));
        }
        tx.commit().await.map_err(err("committing an update"))?;
        Ok(Some(next))
    }

    async fn delete(&self, id: &Handle) -> Result<bool> {
        let client = self.client().await?;
        let found = self.delete_on(&client, id, now_ms()).await?;
        if found.is_some() {
            self.counted(-1);
        }
        Ok(found == Some(true))
    }

    /// One transaction: the old row locked, the new one written, the alias left and the old
    /// row removed; a concurrent regenerate of the same id waits on the lock, then finds the
    /// old row gone.
    async fn regenerate_aliased(
        &self,
        old: &Handle,
        new: &Handle,
        update: &Update,
        alias: Option<&Alias>,
    ) -> Result<Option<Record>> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(err("starting a transaction"))?;
        let Some(current) = self
            .select(&tx, &self.sql.select_locked, old, update.now)
            .await?
        else {
            return Ok(None);
        };
        let next = update.apply(&current)?;
        // Sealed under the new handle: the old one's ciphertext would not open there.
        let Some(fresh) = self.insert(&tx, new, &next).await? else {
            return Err(StoreError::IdCollision);
        };
        if let Some(alias) = alias {
            self.put_alias_on(&tx, &alias.expiring(next.expires_at))
                .await?;
        }
        self.delete_on(&tx, old, update.now).await?;
        tx.commit().await.map_err(err("committing a regenerate"))?;
        // The old row went; the new one is one more unless it replaced a dead one.
        self.counted(i64::from(fresh) - 1);
        Ok(Some(next))
    }

    async fn alias(&self, old: &Handle) -> Result<Option<Alias>> {
        let client = self.client().await?;
        let row = row(
            &client,
            &self.sql.alias_get,
            &[&old.as_str(), &int(now_ms())],
            "reading an alias",
        )
        .await?;
        Ok(row.and_then(|row| {
            Some(Alias {
                old: *old,
                new: Handle::parse(row.get::<_, &str>(0))?,
                sealed: row.get(1),
                grace_until: u64::try_from(row.get::<_, i64>(2)).ok()?,
                expires_at: u64::try_from(row.get::<_, i64>(3)).ok()?,
            })
        }))
    }

    async fn put_alias(&self, alias: &Alias) -> Result<()> {
        let client = self.client().await?;
        self.put_alias_on(&client, alias).await
    }

    async fn drop_alias(&self, old: &Handle, new: &Handle) -> Result<()> {
        let client = self.client().await?;
        exec(
            &client,
            &self.sql.alias_drop,
            &[&old.as_str(), &new.as_str()],
            "removing an alias",
        )
        .await?;
        Ok(())
    }

    /// Keyset paging on the primary key (`handle > cursor`): a page costs the same at any depth.
    async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page> {
        let after = super::handle_cursor(cursor)?;
        if limit == 0 {
            return Ok(Page::default());
        }
        let client = self.client().await?;
        // One row past the page tells whether there is a next one.
        let want = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let after = after.as_ref().map_or("", Handle::as_str);
        let params: [&(dyn ToSql + Sync); 3] = [&after, &int(now_ms()), &want];
        let mut rows = rows(&client, &self.sql.list, &params, "listing sessions").await?;
        let next = (rows.len() > limit).then(|| {
            rows.truncate(limit);
            rows.last().map(|row| row.get::<_, String>(0))
        });
        Ok(Page {
            sessions: self.records(&rows),
            next: next.flatten(),
        })
    }

    /// Chunk by chunk, each its own statement; each removed session handed to `expired` once
    /// its chunk is committed. The count is read again afterwards.
    async fn prune_reporting(&self, now: u64, expired: Option<&ExpiredSink>) -> Result<u64> {
        let client = self.client().await?;
        client
            .execute(&self.sql.alias_prune, &[&int(now)])
            .await
            .map_err(err("removing expired aliases"))?;
        let indexed = self.users.is_some();
        let mut removed = 0u64;
        loop {
            let params: [&(dyn ToSql + Sync); 2] = [&int(now), &PRUNE_CHUNK];
            let doing = "removing expired sessions";
            let gone = rows(&client, &self.sql.prune, &params, doing).await?;
            if let Some(report) = expired {
                for row in &gone {
                    if let Some(id) = Handle::parse(row.get::<_, &str>(0)) {
                        let user: Option<&str> = row.get(1);
                        report(&id, user.filter(|_| indexed));
                    }
                }
            }
            removed += gone.len() as u64;
            if (gone.len() as i64) < PRUNE_CHUNK {
                break;
            }
        }
        let n: i64 = client
            .query_one(&self.sql.count, &[])
            .await
            .map_err(err("counting the sessions"))?
            .get(0);
        self.count
            .store(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
        Ok(removed)
    }

    /// The partial index on `user_name`; each row checked against its data before it is handed
    /// out.
    async fn user_sessions(&self, user: &str) -> Result<Vec<(Handle, Record)>> {
        let Some(key) = &self.users else {
            return Err(StoreError::NoUserIndex);
        };
        let client = self.client().await?;
        let now = now_ms();
        let params: [&(dyn ToSql + Sync); 2] = [&user, &int(now)];
        let sql = &self.sql.user_sessions;
        let rows = rows(&client, sql, &params, "reading a user's sessions").await?;
        let mut found = self.records(&rows);
        found.retain(|(_, r)| super::users::holds(key, r, user, now));
        Ok(found)
    }

    /// Exact as of the last sweep (or the start), plus this process's writes since: an exact
    /// count is a scan, paid once per sweep.
    fn count(&self) -> Option<u64> {
        Some(self.count.load(Ordering::Relaxed))
    }
}
