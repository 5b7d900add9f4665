//! The `aliases` table (schema step 3 → 4): the aliases regenerates leave under an old handle
//! (`session.regenerate_grace`, see [`Alias`]), apart from `sessions` so that no listing, count
//! or user index meets one. Written in the regenerate's transaction; removed by the sweeper.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::int;
use crate::session::Handle;
use crate::store::Alias;

/// Writes `alias` under its old handle, replacing any (a second regenerate of a re-used id).
pub(super) fn put(conn: &Connection, alias: &Alias) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO aliases (old, new, sealed, grace_until, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        alias.old.as_str(),
        alias.new.as_str(),
        alias.sealed,
        int(alias.grace_until),
        int(alias.expires_at)
    ])?;
    Ok(())
}

/// The unexpired alias under `old`; a row that does not parse (a hand edit) counts as none.
pub(super) fn get(conn: &Connection, old: &Handle, now: u64) -> rusqlite::Result<Option<Alias>> {
    let row = conn
        .prepare_cached(
            "SELECT new, sealed, grace_until, expires_at FROM aliases \
             WHERE old = ?1 AND expires_at > ?2",
        )?
        .query_row(params![old.as_str(), int(now)], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    Ok(row.and_then(|(new, sealed, grace_until, expires_at)| {
        Some(Alias {
            old: *old,
            new: Handle::parse(&new)?,
            sealed,
            grace_until: u64::try_from(grace_until).ok()?,
            expires_at: u64::try_from(expires_at).ok()?,
        })
    }))
}

/// Removes the aliases expired by `now`; how many.
pub(super) fn prune(conn: &Connection, now: u64) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM aliases WHERE expires_at <= ?1")?
        .execute(params![int(now)])
}
