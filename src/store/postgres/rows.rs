//! The statements (their text made once at open, with the schema's name in it; each prepared
//! once per connection and cached by the pool) and the rows of `sessions` as records.

use std::sync::Arc;

use tokio_postgres::Row;

use crate::session::Handle;
use crate::store::{Meta, Record, Result, Sealer, StoreError};

/// PostgreSQL integers are signed; no time or version of ours comes near the limit.
pub(super) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The record's columns, in the order [`record`] reads them.
const COLUMNS: &str = "data, created_at, updated_at, expires_at, version, meta";

/// Every statement of the store, for one schema.
#[derive(Debug)]
pub(super) struct Sql {
    /// `$1` handle, `$2` now: the live record.
    pub select_live: String,
    /// [`Sql::select_live`], the row locked until the transaction ends.
    pub select_locked: String,
    /// `$1` handle: the record whatever its expiry.
    pub select_any: String,
    /// `$1` handle, `$2` now: removes an expired row, returning its user: of all callers
    /// meeting one expiry, exactly one gets the row back.
    pub delete_expired: String,
    /// `$1` handle: removes the row, returning its expiry.
    pub delete: String,
    /// `$1`..`$8` the row, `$9` now: create-if-absent; a dead row's handle is free again.
    /// Returns a row when written: whether it was inserted (not a dead row replaced).
    pub create: String,
    /// `$1`..`$7` the row, `$8` whether the user changes, `$9` the user, `$10` the version
    /// read, `$11` now: the compare-and-set write of a live row.
    pub write: String,
    /// `$1` after, `$2` now, `$3` limit: one page in handle order.
    pub list: String,
    /// `$1` handles, `$2` now: those of them that are live.
    pub live_among: String,
    /// `$1` user, `$2` now.
    pub user_sessions: String,
    /// `$1` now, `$2` limit: one chunk of the sweep, returning handles and users.
    pub prune: String,
    pub alias_put: String,
    pub alias_get: String,
    pub alias_drop: String,
    pub alias_prune: String,
    pub count: String,
}

impl Sql {
    pub(super) fn new(s: &str) -> Sql {
        let t = format!("{s}.sessions");
        let a = format!("{s}.aliases");
        Sql {
            select_live: format!("SELECT {COLUMNS} FROM {t} WHERE handle = $1 AND expires_at > $2"),
            select_locked: format!(
                "SELECT {COLUMNS} FROM {t} WHERE handle = $1 AND expires_at > $2 FOR UPDATE"
            ),
            select_any: format!("SELECT {COLUMNS} FROM {t} WHERE handle = $1"),
            delete_expired: format!(
                "DELETE FROM {t} WHERE handle = $1 AND expires_at <= $2 RETURNING user_name"
            ),
            delete: format!("DELETE FROM {t} WHERE handle = $1 RETURNING expires_at"),
            create: format!(
                "INSERT INTO {t} AS s (handle, {COLUMNS}, user_name) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (handle) DO UPDATE SET data = EXCLUDED.data, \
                 created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
                 expires_at = EXCLUDED.expires_at, version = EXCLUDED.version, \
                 meta = EXCLUDED.meta, user_name = EXCLUDED.user_name \
                 WHERE s.expires_at <= $9 RETURNING (xmax = 0)"
            ),
            write: format!(
                "UPDATE {t} SET data = $2, created_at = $3, updated_at = $4, expires_at = $5, \
                 version = $6, meta = $7, \
                 user_name = CASE WHEN $8 THEN $9 ELSE user_name END \
                 WHERE handle = $1 AND version = $10 AND expires_at > $11"
            ),
            list: format!(
                "SELECT handle, {COLUMNS} FROM {t} WHERE handle > $1 AND expires_at > $2 \
                 ORDER BY handle LIMIT $3"
            ),
            live_among: format!(
                "SELECT handle FROM {t} WHERE handle = ANY($1) AND expires_at > $2"
            ),
            user_sessions: format!(
                "SELECT handle, {COLUMNS} FROM {t} WHERE user_name = $1 AND expires_at > $2"
            ),
            // The chunk's rows found by the expiry index and deleted by their tuple ids: a
            // row a request holds locked is skipped (the next sweep takes it), so the sweep
            // never waits on a request, nor a request long on the sweep.
            prune: format!(
                "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} \
                 WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)) \
                 AND expires_at <= $1 RETURNING handle, user_name"
            ),
            alias_put: format!(
                "INSERT INTO {a} (old, new, sealed, grace_until, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (old) DO UPDATE SET \
                 new = EXCLUDED.new, sealed = EXCLUDED.sealed, \
                 grace_until = EXCLUDED.grace_until, expires_at = EXCLUDED.expires_at"
            ),
            alias_get: format!(
                "SELECT new, sealed, grace_until, expires_at FROM {a} \
                 WHERE old = $1 AND expires_at > $2"
            ),
            alias_drop: format!("DELETE FROM {a} WHERE old = $1 AND new = $2"),
            alias_prune: format!("DELETE FROM {a} WHERE expires_at <= $1"),
            count: format!("SELECT count(*) FROM {t}"),
        }
    }
}

/// The record of a row selected as [`COLUMNS`], starting at column `at`; an unreadable one is
/// `None`, by the one rule of `Record::readable`, and so is sealed data that does not open
/// (the sealer counted it).
pub(super) fn record(row: &Row, at: usize, id: &Handle, sealer: &Sealer) -> Option<Record> {
    Record::readable(decode(row, at, id, sealer), id).flatten()
}

fn decode(row: &Row, at: usize, id: &Handle, sealer: &Sealer) -> Result<Option<Record>> {
    let corrupt = |e: tokio_postgres::Error| StoreError::Corrupt(e.to_string());
    let data: &str = row.try_get(at).map_err(corrupt)?;
    let mut times = [0u64; 4];
    for (i, slot) in times.iter_mut().enumerate() {
        let v: i64 = row.try_get(at + 1 + i).map_err(corrupt)?;
        *slot = u64::try_from(v)
            .map_err(|_| StoreError::Corrupt(format!("negative time or version {v}")))?;
    }
    let [created_at, updated_at, expires_at, version] = times;
    let sealed = !data.starts_with('{');
    let Ok(data) = sealer.open(data, id) else {
        return Ok(None);
    };
    let meta: Option<&str> = row.try_get(at + 5).map_err(corrupt)?;
    let meta = match meta.map(|m| sealer.open(m, id)) {
        None => Meta::default(),
        Some(Ok(text)) => Meta::from_json(&text)?,
        Some(Err(_)) => return Ok(None),
    };
    if !(sealed && data.starts_with('{')) {
        Record::check_data(&data)?;
    }
    Ok(Some(Record {
        data: Arc::from(data),
        created_at,
        updated_at,
        expires_at,
        version,
        meta,
    }))
}
