//! Opening the database file: its mode, the connections' settings, and the schema version
//! (`PRAGMA user_version`) with the migrations that bring an older file up to date.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::SqliteError;
use crate::config::SqliteConfig;
use crate::session::Handle;
use crate::session::{SessionId, UserKey};
use crate::store::{Result, Sealer, StoreError};

/// One schema migration: SQL, or SQL and then a step in Rust (what SQL cannot compute).
enum Step {
    Sql(&'static str),
    SqlThen(&'static str, fn(&Connection) -> rusqlite::Result<()>),
}

/// `MIGRATIONS[v]` brings a file from schema version `v` to `v + 1`; the version this binary
/// writes is their count. A migration only ever adds a step at the end: a file is never
/// migrated down, and one newer than the binary is refused.
const MIGRATIONS: [Step; 5] = [
    Step::Sql(
        // 0 → 1: the sessions, expiry-indexed for the sweeper, and a row count kept by triggers
        // in the same transaction as the change, so `sessions_live` is exact across every process
        // writing the file and costs no scan.
        "CREATE TABLE sessions (
        id TEXT PRIMARY KEY NOT NULL,
        data TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        version INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX sessions_expires_at ON sessions (expires_at);
    CREATE TABLE session_count (n INTEGER NOT NULL);
    INSERT INTO session_count (n) SELECT count(*) FROM sessions;
    CREATE TRIGGER session_inserted AFTER INSERT ON sessions
        BEGIN UPDATE session_count SET n = n + 1; END;
    CREATE TRIGGER session_deleted AFTER DELETE ON sessions
        BEGIN UPDATE session_count SET n = n - 1; END;",
    ),
    // 1 → 2: the user index: a column written by the same statement as the data, indexed only
    // where set (a file without `session.user_key` pays nothing), and the key it was built
    // from, so opening with another key rebuilds it (`reindex_users`).
    Step::Sql(
        "ALTER TABLE sessions ADD COLUMN user TEXT;
    CREATE INDEX sessions_user ON sessions (user) WHERE user IS NOT NULL;
    CREATE TABLE user_index (key TEXT);
    INSERT INTO user_index (key) VALUES (NULL);",
    ),
    // 2 → 3: sessions keyed by their handle, never by their id (a bearer credential): the
    // column is renamed and every id in it replaced by its handle, in the migration's
    // transaction. The user index and the count are per row, so they follow the row.
    Step::SqlThen(
        "ALTER TABLE sessions RENAME COLUMN id TO handle;",
        ids_to_handles,
    ),
    // 3 → 4: the aliases a regenerate leaves under the old handle (`session.regenerate_grace`),
    // a table apart so that no listing, count (`session_count`'s triggers are on `sessions`)
    // or user index meets one; expiry-indexed for the sweeper.
    Step::Sql(
        "CREATE TABLE aliases (
        old TEXT PRIMARY KEY NOT NULL,
        new TEXT NOT NULL,
        sealed TEXT NOT NULL,
        grace_until INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX aliases_expires_at ON aliases (expires_at);",
    ),
    // 4 → 5: the session's metadata (`store::Meta`: remember-me, first return, device), one
    // JSON object (sealed like `data` when the store seals), NULL for none.
    Step::Sql("ALTER TABLE sessions ADD COLUMN meta TEXT;"),
];

/// Replaces every session id in the `handle` column by its handle. A row whose key is not a
/// session id (a hand edit) is left as it was: no listing shows it, and the sweeper removes it
/// when it expires.
fn ids_to_handles(conn: &Connection) -> rusqlite::Result<()> {
    let ids: Vec<String> = conn
        .prepare("SELECT handle FROM sessions")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = conn.prepare("UPDATE sessions SET handle = ?2 WHERE handle = ?1")?;
    let mut moved = 0usize;
    for text in &ids {
        if let Some(id) = SessionId::parse(text) {
            moved += update.execute([text.as_str(), id.handle().as_str()])?;
        }
    }
    tracing::info!(
        sessions = moved,
        "sessions re-keyed by handle (base64url of the SHA-256 of the id)"
    );
    Ok(())
}

/// Makes the `user` column follow `key` (or clears it, for `None`) if the file's index was
/// built from another key (or none): one statement, in one transaction, at open. The rule is
/// [`UserKey::user_of`]'s, in SQL: a non-empty string or an integer, the last of a repeated
/// key; every read checks the data again in Rust, so an edge where the two could differ (an
/// integer past 2^63) is left out, never listed wrongly.
///
/// With a sealer on, SQL cannot read the data: each row is opened and its user found in Rust
/// (a row that does not open gets no user), in the same transaction.
pub(super) fn reindex_users(
    conn: &Connection,
    users: Option<&UserKey>,
    sealer: &Sealer,
    path: &Path,
) -> Result<()> {
    // What the file records about its index: the key, and whether users are hashed.
    let id = users.map(UserKey::index_id);
    let key = users.map(UserKey::name);
    let fail =
        |doing: &'static str| move |source: rusqlite::Error| SqliteError::wrap(path, doing, source);
    let stored: Option<String> = conn
        .query_row("SELECT key FROM user_index", [], |row| row.get(0))
        .map_err(fail("cannot read the user index's key"))?;
    if stored == id {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(fail("cannot lock to rebuild the user index"))?;
    let result = (|| {
        // SQL reads neither sealed data nor hashes a user: those rebuild row by row in Rust.
        let n = match users.filter(|u| sealer.is_on() || u.is_hashed()) {
            Some(users) => reindex_sealed(conn, users, sealer)
                .map_err(fail("cannot rebuild the user index"))?,
            None => conn
                .execute(
                    "UPDATE sessions SET user = CASE WHEN ?1 IS NOT NULL AND json_valid(data) THEN
                    (SELECT CASE type WHEN 'text' THEN nullif(value, '')
                                      WHEN 'integer' THEN CAST(value AS TEXT) END
                     FROM json_each(sessions.data) WHERE key = ?1 ORDER BY id DESC LIMIT 1)
                 END",
                    [key],
                )
                .map_err(fail("cannot rebuild the user index"))?,
        };
        conn.execute("UPDATE user_index SET key = ?1", [&id])
            .map_err(fail("cannot record the user index's key"))?;
        conn.execute_batch("COMMIT")
            .map_err(fail("cannot commit the rebuilt user index"))?;
        tracing::info!(path = %path.display(), sessions = n, key, "rebuilt the user index");
        Ok(())
    })();
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

/// [`reindex_users`] of a sealed file: every row opened and its `user` set, in Rust; returns
/// how many rows there were.
fn reindex_sealed(conn: &Connection, users: &UserKey, sealer: &Sealer) -> rusqlite::Result<usize> {
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT handle, data FROM sessions")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut set = conn.prepare("UPDATE sessions SET user = ?2 WHERE handle = ?1")?;
    for (handle, data) in &rows {
        let user = Handle::parse(handle)
            .and_then(|id| sealer.open(data, &id).ok())
            .and_then(|data| users.user_of(&data));
        set.execute(rusqlite::params![handle, user])?;
    }
    Ok(rows.len())
}

/// The schema version this binary reads and writes.
pub(super) const VERSION: i64 = MIGRATIONS.len() as i64;

/// The WAL is truncated back to this after a checkpoint: one burst of writes must not leave a
/// file of that size behind for good.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The writer's page cache, in KiB as `cache_size` takes a negative number. Each write of a
/// session reads and dirties its b-tree leaf and index pages; with SQLite's default 2 MiB a file
/// of a million sessions (~370 MB) re-reads nearly every page from the OS on every write. Used
/// only as the file grows to fill it.
const WRITER_CACHE_KIB: i64 = -64 * 1024;

/// Creates the file (and its directory) if missing, opens the writer's connection, and brings
/// the schema up to date. Every failure names the file.
pub(super) fn open_writer(config: &SqliteConfig) -> Result<Connection> {
    let path = &config.path;
    create_file(path, config.mode).map_err(|e| {
        StoreError::Io(io::Error::new(
            e.kind(),
            format!("session database {}: {e}", path.display()),
        ))
    })?;
    let fail =
        |doing: &'static str| move |source: rusqlite::Error| SqliteError::wrap(path, doing, source);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(fail("cannot open"))?;
    // SQLite quietly opens a file it may not write read-only; every write would then fail.
    if conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(fail("cannot open"))?
    {
        return Err(StoreError::Io(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("session database {}: not writable", path.display()),
        )));
    }
    // Another process's write lock is waited for this long, then the batch fails (503).
    conn.busy_timeout(config.timeout)
        .map_err(fail("cannot set the busy timeout"))?;
    // Switching a new file to WAL needs it to itself for a moment, and SQLite answers BUSY at
    // once, without its busy handler, when another process opening the same new file holds it:
    // retried here within the same timeout.
    let deadline = Instant::now() + config.timeout;
    let mode: String = loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other.map_err(fail("cannot switch to WAL mode"))?,
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unexpected(format!(
            "session database {}: the journal mode stays {mode:?}, not WAL",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", synchronous(config.fsync))
        .map_err(fail("cannot set synchronous"))?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
        .map_err(fail("cannot set journal_size_limit"))?;
    conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
        .map_err(fail("cannot set cache_size"))?;
    migrate(&conn, path)?;
    Ok(conn)
}

fn synchronous(fsync: bool) -> &'static str {
    if fsync { "FULL" } else { "NORMAL" }
}

/// Read connections do not map the file (`mmap_size` stays 0): a reader's page cache is
/// dropped whenever another connection has committed since its last read, and with a map
/// SQLite then unmaps and maps the file again; measured with callgrind at 10 % updates, a
/// 1 GiB map doubled a load's instructions (11k to 22k, `getPageMMap`).
/// A read connection: it never writes (`query_only`). Its busy timeout is zero: the caller
/// sets one for a query that may wait (see `Reads`).
pub(super) fn open_reader(path: &Path) -> Result<Connection> {
    let fail =
        |doing: &'static str| move |source: rusqlite::Error| SqliteError::wrap(path, doing, source);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(fail("cannot open a reader"))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(fail("cannot make a reader read-only"))?;
    conn.busy_timeout(Duration::ZERO)
        .map_err(fail("cannot set the busy timeout"))?;
    Ok(conn)
}

/// The checkpoint helper's connection (`checkpoint.rs`). It never writes a row; its
/// `synchronous` is the writer's, which a checkpoint's fsyncs follow.
pub(super) fn open_checkpointer(path: &Path, fsync: bool) -> Result<Connection> {
    let fail =
        |doing: &'static str| move |source: rusqlite::Error| SqliteError::wrap(path, doing, source);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(fail("cannot open the checkpoint connection"))?;
    conn.pragma_update(None, "synchronous", synchronous(fsync))
        .map_err(fail("cannot set synchronous"))?;
    conn.busy_timeout(Duration::ZERO)
        .map_err(fail("cannot set the busy timeout"))?;
    Ok(conn)
}

/// A new file gets `mode` before SQLite sees it: SQLite would create it 0644, readable by
/// every local user, and gives the `-wal` and `-shm` files the database file's mode.
fn create_file(path: &Path, mode: u32) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        match fs::metadata(dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", dir.display()),
                ));
            }
            Ok(_) => {}
            Err(_) => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?,
        }
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Checks the file's schema version and migrates an older one, under the write lock: two
/// processes opening one new file at once migrate it once.
fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let fail =
        |doing: &'static str| move |source: rusqlite::Error| SqliteError::wrap(path, doing, source);
    let version = user_version(conn).map_err(fail("cannot read the schema version"))?;
    if version == VERSION {
        return Ok(());
    }
    check_version(version, path)?;
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(fail("cannot lock for the schema migration"))?;
    let result = (|| {
        // Read again under the lock: another process may have migrated meanwhile.
        let version = user_version(conn).map_err(fail("cannot read the schema version"))?;
        check_version(version, path)?;
        let from = usize::try_from(version).unwrap_or(0);
        for (step, migration) in MIGRATIONS.iter().enumerate().skip(from) {
            let (sql, then) = match migration {
                Step::Sql(sql) => (sql, None),
                Step::SqlThen(sql, then) => (sql, Some(then)),
            };
            conn.execute_batch(sql)
                .map_err(fail("cannot migrate the schema"))?;
            if let Some(then) = then {
                then(conn).map_err(fail("cannot migrate the schema"))?;
            }
            tracing::info!(path = %path.display(), to = step + 1, "migrated the session database");
        }
        conn.pragma_update(None, "user_version", VERSION)
            .map_err(fail("cannot write the schema version"))?;
        conn.execute_batch("COMMIT")
            .map_err(fail("cannot commit the schema migration"))?;
        Ok(from < REKEYED)
    })();
    match result {
        Ok(true) => scrub(conn, path),
        Ok(false) => {}
        Err(_) if !conn.is_autocommit() => {
            let _ = conn.execute_batch("ROLLBACK");
        }
        Err(_) => {}
    }
    result.map(drop)
}

/// The first schema version whose sessions are keyed by handle.
const REKEYED: usize = 3;

/// After the re-keying, the ids it replaced are still in the file's free pages (SQLite does not
/// clear what it frees): `VACUUM` rewrites the file without them and the checkpoint empties the
/// WAL, so a copy of the file holds no id. A failure (another process holding the file) is
/// logged with what to run; the sessions are migrated either way.
fn scrub(conn: &Connection, path: &Path) {
    let done = conn
        .execute_batch("VACUUM")
        .and_then(|()| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
        })
        .map_err(|e| e.to_string())
        .and_then(|busy| {
            (busy == 0)
                .then_some(())
                .ok_or_else(|| "the checkpoint was blocked by a reader".to_owned())
        });
    if let Err(error) = done {
        tracing::warn!(
            path = %path.display(),
            %error,
            "the session ids replaced by handles may remain in the file's free pages; \
             run `sqlite3 FILE 'VACUUM'` while no proxy has it open"
        );
    }
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// A file written by a newer binary may hold what this one would misread or destroy.
fn check_version(version: i64, path: &Path) -> Result<()> {
    if (0..=VERSION).contains(&version) {
        return Ok(());
    }
    let what = if version > VERSION {
        "is newer than this binary knows"
    } else {
        "is not one this binary knows"
    };
    Err(StoreError::Unexpected(format!(
        "session database {}: schema version {version} {what} ({VERSION}); run the \
         session-proxy that wrote it (or a newer one), or point store.path at another file",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &Path) -> SqliteConfig {
        SqliteConfig {
            path: path.to_owned(),
            mode: 0o600,
            fsync: false,
            timeout: Duration::from_secs(5),
        }
    }

    /// Several processes starting on one new file at once: one migrates, the others find it
    /// done under the lock, and none fails.
    #[test]
    fn concurrent_opens_of_a_new_file_migrate_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("s.db");
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || open_writer(&config(&path)).map(|_| ()))
            })
            .collect();
        for open in opens {
            open.join().unwrap().unwrap();
        }
        let conn = open_writer(&config(&path)).unwrap();
        assert_eq!(user_version(&conn).unwrap(), VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let n: i64 = conn
            .query_row("SELECT n FROM session_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "the count row was inserted more than once");
    }

    #[test]
    fn an_unknown_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (version, want) in [(7, "is newer than"), (-1, "is not one")] {
            let path = dir.path().join(format!("v{version}.db"));
            Connection::open(&path)
                .unwrap()
                .pragma_update(None, "user_version", version)
                .unwrap();
            let err = open_writer(&config(&path)).unwrap_err().to_string();
            assert!(
                err.contains(&format!("schema version {version} {want}")),
                "{err}"
            );
        }
    }

    /// The triggers keep the count through inserts, deletes and an upsert over a dead row.
    #[test]
    fn the_count_follows_inserts_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&config(&dir.path().join("c.db"))).unwrap();
        conn.execute_batch(
            "INSERT INTO sessions (handle, data, created_at, updated_at, expires_at, version) VALUES ('a', '{}', 1, 1, 1, 1);
             INSERT INTO sessions (handle, data, created_at, updated_at, expires_at, version) VALUES ('b', '{}', 1, 1, 1, 1);
             UPDATE sessions SET expires_at = 5 WHERE handle = 'a';
             DELETE FROM sessions WHERE handle = 'b';",
        )
        .unwrap();
        let n: i64 = conn
            .query_row("SELECT n FROM session_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
