//! The rows of the `sessions` table as records: the columns a record is read from and
//! written to ([`record`], [`create`], [`write`]), sealed data and meta opened and checked.

use std::sync::Arc;

use rusqlite::{Connection, Row, params};

use crate::session::Handle;
use crate::store::{Meta, Record, Sealer, StoreError};

/// SQLite integers are signed; no time or version of ours comes near the limit.
pub(super) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The record's columns, in the order `record` reads them. A macro, so the statements below
/// are `concat!`ed constants: the statement cache is looked up by text, once per call.
macro_rules! columns {
    () => {
        "data, created_at, updated_at, expires_at, version, meta"
    };
}

/// The record of a row selected as `columns!()`, starting at column `at`; an unreadable one is
/// `None`, by the one rule of `Record::readable`, and so is sealed data that does not open
/// (the sealer counted it). Plain data is checked; opened data is what this store sealed.
pub(super) fn record(
    row: &Row,
    at: usize,
    id: &Handle,
    sealer: &Sealer,
) -> rusqlite::Result<Option<Record>> {
    // Borrowed from the row, so the text is copied once, into the record's `Arc`.
    let data = row.get_ref(at)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(at, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let mut times = [0u64; 4];
    let mut bad = None;
    for (i, slot) in times.iter_mut().enumerate() {
        let v: i64 = row.get(at + 1 + i)?;
        match u64::try_from(v) {
            Ok(v) => *slot = v,
            Err(_) => bad = Some(v),
        }
    }
    let [created_at, updated_at, expires_at, version] = times;
    let sealed = !data.starts_with('{');
    let Ok(data) = sealer.open(data, id) else {
        return Ok(None);
    };
    let meta: Option<&str> = row.get_ref(at + 5)?.as_str_or_null().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(at + 5, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let meta = match meta.map(|m| sealer.open(m, id)) {
        None => Ok(Meta::default()),
        Some(Ok(text)) => Meta::from_json(&text),
        Some(Err(_)) => return Ok(None),
    };
    let checked = match bad {
        Some(v) => Err(StoreError::Corrupt(format!("negative time or version {v}"))),
        None if sealed && data.starts_with('{') => Ok(()),
        None => Record::check_data(&data),
    };
    Ok(Record::readable(
        checked.and_then(|()| {
            Ok(Record {
                data: Arc::from(data),
                created_at,
                updated_at,
                expires_at,
                version,
                meta: meta?,
            })
        }),
        id,
    ))
}

/// A record's columns as stored: the record, its `data` and `meta` columns' text (as the
/// sealer stores them: [`Record::meta_column`]).
pub(super) type Row3<'a> = (&'a Record, &'a str, Option<&'a str>);

/// Create-if-absent: a live session keeps its id; a dead one's id is free again.
pub(super) fn create(
    conn: &Connection,
    id: &Handle,
    (r, data, meta): Row3<'_>,
    user: Option<&str>,
    now: u64,
) -> rusqlite::Result<bool> {
    let values = params![
        id.as_str(),
        data,
        int(r.created_at),
        int(r.updated_at),
        int(r.expires_at),
        int(r.version),
        user,
        meta,
        int(now),
    ];
    let inserted = conn
        .prepare_cached(concat!(
            "INSERT INTO sessions (handle, ",
            columns!(),
            ", user) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8, ?7) ON CONFLICT (handle) DO NOTHING"
        ))?
        .execute(&values[..8])?;
    if inserted == 1 {
        return Ok(true);
    }
    let replaced = conn
        .prepare_cached(
            "UPDATE sessions SET data = ?2, created_at = ?3, updated_at = ?4, expires_at = ?5, \
             version = ?6, user = ?7, meta = ?8 WHERE handle = ?1 AND expires_at <= ?9",
        )?
        .execute(values)?;
    Ok(replaced == 1)
}

/// Writes `r` over the row; `user` is the new `user` column, or `None` for a write that kept
/// the data (a touch), which leaves it.
pub(super) fn write(
    conn: &Connection,
    id: &Handle,
    (r, data, meta): Row3<'_>,
    user: Option<Option<&str>>,
) -> rusqlite::Result<()> {
    let values = params![
        id.as_str(),
        data,
        int(r.created_at),
        int(r.updated_at),
        int(r.expires_at),
        int(r.version),
        meta,
        user.flatten(),
    ];
    match user {
        None => conn
            .prepare_cached(
                "UPDATE sessions SET data = ?2, created_at = ?3, updated_at = ?4, \
                 expires_at = ?5, version = ?6, meta = ?7 WHERE handle = ?1",
            )?
            .execute(&values[..7])?,
        Some(_) => conn
            .prepare_cached(
                "UPDATE sessions SET data = ?2, created_at = ?3, updated_at = ?4, \
                 expires_at = ?5, version = ?6, meta = ?7, user = ?8 WHERE handle = ?1",
            )?
            .execute(values)?,
    };
    Ok(())
}
