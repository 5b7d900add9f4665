//! Checkpoints, off the commit path.
//!
//! In WAL mode a commit appends its pages to the `-wal` file; a checkpoint copies them into the
//! database file and fsyncs it, and once every page is copied the next write starts the WAL
//! over. SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past 1,000
//! pages, so the writes of that batch, and every write queued behind it, waited for the copy
//! of up to 1,000 scattered pages and the database file's fsync.
//!
//! Here a helper thread with its own connection runs a PASSIVE checkpoint (it waits for no one
//! and no one waits for it) each time the writer reports another [`NUDGE_EVERY`] pages in the
//! WAL. It cannot keep the WAL bounded alone: the WAL starts over only when every page in it
//! is copied, and under a write storm the writer appends while a concurrent checkpoint copies,
//! so it never catches up (checkpoint starvation: a separate checkpoint thread alone let the
//! WAL grow to 1 GB in 10 s). So the writer keeps its own checkpoint as the backstop, once the
//! WAL holds [`BACKSTOP`] pages, run after it has answered the batch's waiters; by then the
//! helper has copied all but the last few commits, and the writer's pass copies those.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::schema;
use crate::store::Result;

/// The helper checkpoints each time the WAL has grown by this many pages since it last did.
pub(super) const NUDGE_EVERY: i32 = 256;
/// The writer checkpoints itself once the WAL holds this many pages (16 MiB of 4 KiB pages),
/// which bounds the WAL at about this plus one batch. `journal_size_limit` then truncates the
/// file back after a burst.
pub(super) const BACKSTOP: i32 = 4096;
/// A checkpoint or commit slower than this is logged, with what it did.
pub(super) const SLOW: Duration = Duration::from_millis(100);

/// The writer's handle on the helper thread. Dropping it stops the thread.
#[derive(Debug)]
pub(super) struct Checkpointer {
    shared: Arc<Handoff>,
}

#[derive(Debug, Default)]
struct Handoff {
    state: Mutex<State>,
    /// Signalled when a pass is wanted or the helper is to stop.
    wake: Condvar,
    /// Signalled when a pass ends.
    idle: Condvar,
}

#[derive(Debug, Default)]
struct State {
    wanted: bool,
    running: bool,
    stopped: bool,
}

impl Checkpointer {
    /// Opens the helper's connection and starts it.
    pub(super) fn start(path: &Path, fsync: bool) -> Result<Checkpointer> {
        let conn = schema::open_checkpointer(path, fsync)?;
        let shared = Arc::new(Handoff::default());
        let helper = shared.clone();
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".to_owned())
            .spawn(move || helper.run(&conn, &path))?;
        Ok(Checkpointer { shared })
    }

    /// Asks for a pass; returns at once. Asks made while a pass runs make one more pass.
    pub(super) fn nudge(&self) {
        let mut state = self.shared.lock();
        state.wanted = true;
        self.shared.wake.notify_one();
    }

    /// Waits for the helper's pass, if one runs: SQLite answers a second checkpoint BUSY at
    /// once, and a writer that went on appending instead would let the WAL grow past the
    /// backstop for as long as the helper's pass lasts.
    pub(super) fn wait_idle(&self) {
        let mut state = self.shared.lock();
        while state.running {
            state = self
                .shared
                .idle
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_one();
    }
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, conn: &Connection, path: &Path) {
        loop {
            {
                let mut state = self.lock();
                while !state.wanted && !state.stopped {
                    state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if state.stopped {
                    return;
                }
                state.wanted = false;
                state.running = true;
            }
            // A failure (another process's checkpoint holds the lock, an I/O error) leaves
            // the pages to the next pass or to the writer's backstop.
            if let Err(e) = passive(conn, "helper") {
                tracing::debug!(path = %path.display(), error = %e, "sqlite checkpoint pass failed");
            }
            self.lock().running = false;
            self.idle.notify_all();
        }
    }
}

/// Runs `PRAGMA wal_checkpoint(PASSIVE)` on `conn`, and logs it: at debug, or as a warning
/// when it took [`SLOW`] or more.
pub(super) fn passive(conn: &Connection, by: &'static str) -> rusqlite::Result<()> {
    let start = Instant::now();
    let (busy, wal_pages, copied_pages) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((
                row.get::<_, i64>(0)? != 0,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
    let took = start.elapsed();
    let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    if took >= SLOW {
        tracing::warn!(
            by,
            ms,
            busy,
            wal_pages,
            copied_pages,
            "slow sqlite checkpoint"
        );
    } else {
        tracing::debug!(by, ms, busy, wal_pages, copied_pages, "sqlite checkpoint");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;
    use crate::config::SqliteConfig;
    use crate::session::Handle;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Record, SessionStore as _};

    /// A storm of writes, each a new row of ~2 KiB (a leaf and an overflow page at a random place in the
    /// table, as a new session's random id is), from 64 tasks: the WAL must stay near
    /// [`BACKSTOP`] pages however far behind the helper falls. Without the writer's backstop
    /// (the helper alone), the WAL here grows to about the size of everything written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_a_write_storm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storm.db");
        let store = Arc::new(
            SqliteStore::open(SqliteConfig {
                path: path.clone(),
                mode: 0o600,
                fsync: false,
                timeout: Duration::from_secs(10),
            })
            .await
            .unwrap(),
        );
        let wal = dir.path().join("storm.db-wal");
        let (stop, largest) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let watch = {
            let (stop, largest, wal) = (stop.clone(), largest.clone(), wal.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
                    largest.fetch_max(len, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let data: Arc<str> = Arc::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(2000)));
        const WRITES: usize = 12_800;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (store, data) = (store.clone(), data.clone());
            tasks.spawn(async move {
                for _ in 0..WRITES / 64 {
                    let record = Record {
                        data: data.clone(),
                        created_at: 1,
                        updated_at: 1,
                        expires_at: u64::MAX / 2,
                        version: 1,
                        meta: Default::default(),
                    };
                    let id = Handle::generate().unwrap();
                    assert!(store.create(&id, &record).await.unwrap());
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        watch.join().unwrap();
        let largest = largest.load(Ordering::Relaxed);
        // Every write fills a page of its own, with its overflow page ~30,000 pages (120 MiB) in all; the WAL may
        // hold the backstop's worth, a batch past it (up to 1,024 writes) while a helper pass
        // holds the checkpoint lock, and one more.
        let bound = 3 * u64::try_from(BACKSTOP).unwrap() * (4096 + 24);
        assert!(
            largest <= bound,
            "the WAL reached {largest} bytes (bound {bound}) over {WRITES} writes"
        );
        assert_eq!(
            store.count(),
            Some(u64::try_from(WRITES / 64 * 64).unwrap())
        );
    }
}
