//! The one writer: a thread that owns the only write connection and commits every queued write
//! in one transaction (group commit).
//!
//! SQLite takes one writer at a time per file anyway; a single thread makes that explicit, lets
//! one fsync cover every write that queued while the last commit ran, and keeps every blocking
//! write off the async workers. The operations of a batch run inside its
//! `BEGIN IMMEDIATE … COMMIT`:
//!
//! - a refusal (session gone, id taken, too large) rolls back that operation only;
//! - a panic in an operation is caught, rolls back that operation only, and the thread lives on;
//! - an SQLite error (disk full, I/O, a lock held too long) rolls back the whole batch, and every
//!   waiter in it gets that error: a later operation may have read what an earlier one wrote.
//!
//! Rolling back one operation needs a SAVEPOINT around it, which costs every operation two
//! statements and a copy of each page it first touches (the sub-journal). The operations here
//! refuse before they write, so a batch first runs without savepoints; only if an operation is
//! refused or panics after it changed rows (`total_changes`) is the batch rolled back and run
//! again with a savepoint around each operation. An operation is therefore a `Fn`: it may run
//! twice, the first run undone.
//!
//! Waiters are answered only after the commit, so an answer means the write is in the file.
//! Operations run in queue order: two updates of one session in a batch apply one after the
//! other. Checkpoints run after the waiters are answered, mostly on a helper thread
//! (`checkpoint.rs`), never inside a COMMIT.

use std::cell::Cell;
use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{self, BACKSTOP, Checkpointer, NUDGE_EVERY, SLOW};
use crate::store::{Result, StoreError};

thread_local! {
    /// Pages in the WAL after this thread's last commit, as SQLite's WAL hook reported them.
    /// Thread-local because the hook is a plain function, and each writer commits on its own
    /// thread.
    static WAL_PAGES: Cell<c_int> = const { Cell::new(0) };
}

/// The writer connection's WAL hook. Setting it replaces SQLite's automatic checkpoint, which
/// would run inside the COMMIT: the writer checkpoints after answering instead (`after_commit`).
fn wal_pages(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// Writes waiting for the writer. A full queue makes callers wait (async, holding no thread);
/// a batch takes at most this many, so one commit stays short.
const QUEUE: usize = 1024;

/// Why one operation did not happen.
pub(super) enum OpError {
    /// This operation only was refused; the batch goes on.
    Refused(StoreError),
    /// SQLite failed: the batch is rolled back.
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Sqlite(e)
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Refused(e)
    }
}

/// The async side's handle: queues operations and awaits their answers.
#[derive(Debug)]
pub(super) struct Writer {
    queue: mpsc::Sender<Box<dyn Work>>,
}

impl Writer {
    /// Starts the writer thread on `conn`. It ends when the last handle is dropped.
    pub(super) fn start(
        conn: Connection,
        path: PathBuf,
        fsync: bool,
        count: Arc<AtomicU64>,
    ) -> Result<Writer> {
        let checkpointer = Checkpointer::start(&path, fsync)?;
        let (queue, mut rx) = mpsc::channel::<Box<dyn Work>>(QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".to_owned())
            .spawn(move || {
                let batch = Batch::new(conn, path, count, Some(checkpointer));
                let mut works = Vec::with_capacity(QUEUE);
                while let Some(first) = rx.blocking_recv() {
                    works.push(first);
                    while works.len() < QUEUE {
                        match rx.try_recv() {
                            Ok(work) => works.push(work),
                            Err(_) => break,
                        }
                    }
                    batch.run(&mut works);
                }
            })?;
        Ok(Writer { queue })
    }

    /// Runs `op` in the next batch and returns its result once the batch is committed.
    pub(super) async fn run<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, OpError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Box::new(Task {
                op,
                result: None,
                reply,
            }))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("the sqlite writer thread has stopped".into())
}

/// One queued operation, its result kept until the batch's fate is known.
trait Work: Send {
    /// Whoever queued it stopped waiting (their `store.timeout` passed): it is skipped, so a
    /// request that was answered 503 leaves nothing behind.
    fn abandoned(&self) -> bool;
    /// `Ok(true)`: keep its changes; `Ok(false)`: refused, roll them back; `Err`: fail the batch.
    /// May be called again after its batch was rolled back; the last run's result counts.
    fn run(&mut self, conn: &Connection) -> Result<bool, rusqlite::Error>;
    fn panicked(&mut self);
    /// Sends the result, or `failed` if the batch was rolled back.
    fn answer(self: Box<Self>, failed: Option<&Arc<rusqlite::Error>>);
}

struct Task<T, F> {
    op: F,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Work for Task<T, F>
where
    T: Send,
    F: Fn(&Connection) -> Result<T, OpError> + Send,
{
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn run(&mut self, conn: &Connection) -> Result<bool, rusqlite::Error> {
        self.result = None;
        match (self.op)(conn) {
            Ok(value) => {
                self.result = Some(Ok(value));
                Ok(true)
            }
            Err(OpError::Refused(e)) => {
                self.result = Some(Err(e));
                Ok(false)
            }
            Err(OpError::Sqlite(e)) => Err(e),
        }
    }

    fn panicked(&mut self) {
        self.result = Some(Err(StoreError::Backend(
            "a session write panicked; it was rolled back".into(),
        )));
    }

    fn answer(self: Box<Self>, failed: Option<&Arc<rusqlite::Error>>) {
        let result = match (failed, self.result) {
            (Some(e), _) => Err(StoreError::Backend(Box::new(BatchFailed(e.clone())))),
            (None, Some(result)) => result,
            // Skipped: nobody is waiting for it.
            (None, None) => Err(stopped()),
        };
        let _ = self.reply.send(result);
    }
}

/// What every waiter of a rolled-back batch gets.
#[derive(Debug, thiserror::Error)]
#[error("sqlite: {0}; the batch of writes it was in was rolled back")]
struct BatchFailed(Arc<rusqlite::Error>);

struct Batch {
    conn: Connection,
    path: PathBuf,
    count: Arc<AtomicU64>,
    /// `None` in unit tests of the batch alone.
    checkpointer: Option<Checkpointer>,
    /// The WAL's size in pages when the helper was last nudged.
    nudged: Cell<c_int>,
}

impl Batch {
    fn new(
        conn: Connection,
        path: PathBuf,
        count: Arc<AtomicU64>,
        checkpointer: Option<Checkpointer>,
    ) -> Batch {
        conn.wal_hook(Some(wal_pages));
        Batch {
            conn,
            path,
            count,
            checkpointer,
            nudged: Cell::new(0),
        }
    }

    /// Runs and commits `works`, answers each, and leaves `works` empty.
    fn run(&self, works: &mut Vec<Box<dyn Work>>) {
        let start = Instant::now();
        let outcome = self.transaction(works);
        let took = start.elapsed();
        if took >= SLOW {
            tracing::warn!(
                path = %self.path.display(),
                ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                writes = works.len(),
                wal_pages = WAL_PAGES.get(),
                "slow sqlite write batch (no checkpoint runs inside one)"
            );
        }
        let failed = match outcome {
            Ok(n) => {
                self.count.store(n, Ordering::Relaxed);
                None
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    writes = works.len(),
                    "sqlite write batch failed and was rolled back; each of its writes failed"
                );
                Some(Arc::new(e))
            }
        };
        for work in works.drain(..) {
            work.answer(failed.as_ref());
        }
        self.after_commit(WAL_PAGES.replace(0));
    }

    /// Nudges the helper each [`NUDGE_EVERY`] pages the WAL grows, and past [`BACKSTOP`]
    /// checkpoints here, so that the next commit can start the WAL over.
    fn after_commit(&self, pages: c_int) {
        if pages < self.nudged.get() {
            // The WAL was started over.
            self.nudged.set(0);
        }
        if pages >= BACKSTOP {
            if let Some(helper) = &self.checkpointer {
                helper.wait_idle();
            }
            // Busy (another process's checkpoint holds the lock) or failed: the next commit
            // tries again.
            if let Err(e) = checkpoint::passive(&self.conn, "writer") {
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "sqlite checkpoint failed; the next commit tries again"
                );
            }
        } else if pages >= self.nudged.get() + NUDGE_EVERY
            && let Some(helper) = &self.checkpointer
        {
            self.nudged.set(pages);
            helper.nudge();
        }
    }

    /// The batch's transaction; returns the session count it leaves.
    fn transaction(&self, works: &mut [Box<dyn Work>]) -> rusqlite::Result<u64> {
        let conn = &self.conn;
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        if !self.operations(works, false)? {
            conn.prepare_cached("ROLLBACK")?.execute([])?;
            conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            self.operations(works, true)?;
        }
        let n: i64 = conn
            .prepare_cached("SELECT n FROM session_count")?
            .query_row([], |row| row.get(0))?;
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Runs the operations, each under a SAVEPOINT if `savepoints`; `Ok(false)` (only without
    /// them) if one was refused or panicked after it had changed rows: the caller rolls back
    /// and runs them all again with savepoints.
    fn operations(&self, works: &mut [Box<dyn Work>], savepoints: bool) -> rusqlite::Result<bool> {
        let conn = &self.conn;
        for work in works.iter_mut() {
            if work.abandoned() {
                continue;
            }
            if savepoints {
                conn.prepare_cached("SAVEPOINT op")?.execute([])?;
            }
            let before = conn.total_changes();
            let keep = match catch_unwind(AssertUnwindSafe(|| work.run(conn))) {
                Ok(Ok(keep)) => keep,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    tracing::error!("a session write panicked; rolled back, the writer goes on");
                    work.panicked();
                    false
                }
            };
            if savepoints {
                if !keep {
                    conn.prepare_cached("ROLLBACK TO op")?.execute([])?;
                }
                conn.prepare_cached("RELEASE op")?.execute([])?;
            } else if !keep && conn.total_changes() != before {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqliteConfig;

    fn open() -> (tempfile::TempDir, Batch) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = super::super::schema::open_writer(&SqliteConfig {
            path: path.clone(),
            mode: 0o600,
            fsync: false,
            timeout: std::time::Duration::from_secs(1),
        })
        .unwrap();
        let batch = Batch::new(conn, path, Arc::default(), None);
        (dir, batch)
    }

    fn task<T: Send + 'static>(
        op: impl Fn(&Connection) -> Result<T, OpError> + Send + 'static,
    ) -> (Box<dyn Work>, oneshot::Receiver<Result<T>>) {
        let (reply, answer) = oneshot::channel();
        let work: Box<dyn Work> = Box::new(Task {
            op,
            result: None,
            reply,
        });
        (work, answer)
    }

    fn insert(id: &'static str, data: &'static str) -> impl Fn(&Connection) -> Result<(), OpError> {
        move |conn| {
            conn.execute(
                "INSERT INTO sessions (handle, data, created_at, updated_at, expires_at, version) VALUES (?1, ?2, 0, 0, 9999999999999, 1)",
                [id, data],
            )?;
            Ok(())
        }
    }

    fn append(
        id: &'static str,
        suffix: &'static str,
    ) -> impl Fn(&Connection) -> Result<(), OpError> {
        move |conn| {
            conn.execute(
                "UPDATE sessions SET data = data || ?2 WHERE handle = ?1",
                [id, suffix],
            )?;
            Ok(())
        }
    }

    fn data(batch: &Batch, id: &str) -> Option<String> {
        batch
            .conn
            .query_row("SELECT data FROM sessions WHERE handle = ?1", [id], |r| {
                r.get(0)
            })
            .ok()
    }

    /// A panic rolls back its own operation; the ones before and after it commit, and the
    /// writer keeps working.
    #[test]
    fn a_panic_fails_only_its_own_operation() {
        let (_dir, batch) = open();
        let (a, a_answer) = task(insert("a", "1"));
        let (p, p_answer) = task(|conn| -> Result<(), OpError> {
            conn.execute("INSERT INTO sessions (handle, data, created_at, updated_at, expires_at, version) VALUES ('p', '1', 0, 0, 1, 1)", [])?;
            panic!("an operation panicked")
        });
        let (b, b_answer) = task(insert("b", "1"));
        let mut works = vec![a, p, b];
        batch.run(&mut works);
        assert!(a_answer.blocking_recv().unwrap().is_ok());
        assert!(b_answer.blocking_recv().unwrap().is_ok());
        let err = p_answer.blocking_recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(data(&batch, "a").as_deref(), Some("1"));
        assert_eq!(data(&batch, "p"), None, "the panicked write was kept");
        assert_eq!(batch.count.load(Ordering::Relaxed), 2);

        let (c, c_answer) = task(insert("c", "1"));
        batch.run(&mut vec![c]);
        assert!(c_answer.blocking_recv().unwrap().is_ok());
    }

    /// A refusal rolls back only its own changes.
    #[test]
    fn a_refusal_fails_only_its_own_operation() {
        let (_dir, batch) = open();
        let (a, a_answer) = task(insert("a", "1"));
        let (r, r_answer) = task(|conn| -> Result<(), OpError> {
            insert("r", "1")(conn)?;
            Err(StoreError::TooLarge { size: 2, max: 1 }.into())
        });
        batch.run(&mut vec![a, r]);
        assert!(a_answer.blocking_recv().unwrap().is_ok());
        assert!(matches!(
            r_answer.blocking_recv().unwrap(),
            Err(StoreError::TooLarge { .. })
        ));
        assert_eq!(data(&batch, "r"), None);
        assert_eq!(data(&batch, "a").as_deref(), Some("1"));
    }

    /// An SQLite error fails every operation of the batch, the successful ones too, and
    /// nothing of it is committed.
    #[test]
    fn an_sqlite_error_fails_the_whole_batch() {
        let (_dir, batch) = open();
        let (a, a_answer) = task(insert("a", "1"));
        let (bad, bad_answer) = task(|conn| -> Result<(), OpError> {
            conn.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok(())
        });
        batch.run(&mut vec![a, bad]);
        for err in [
            a_answer.blocking_recv().unwrap().unwrap_err(),
            bad_answer.blocking_recv().unwrap().unwrap_err(),
        ] {
            assert_eq!(err.blame(), crate::store::Blame::Store);
            assert!(err.to_string().contains("no_such_table"), "{err}");
        }
        assert_eq!(data(&batch, "a"), None, "a rolled-back batch left a write");
        let (c, c_answer) = task(insert("c", "1"));
        batch.run(&mut vec![c]);
        assert!(c_answer.blocking_recv().unwrap().is_ok());
    }

    /// A refusal before any write (the usual kind) costs no second run: the batch ran
    /// without savepoints, once.
    #[test]
    fn a_refusal_before_any_write_runs_the_batch_once() {
        let (_dir, batch) = open();
        let runs = Arc::new(AtomicU64::new(0));
        let counted = runs.clone();
        let (a, a_answer) = task(move |conn| {
            counted.fetch_add(1, Ordering::Relaxed);
            insert("a", "1")(conn)
        });
        let (r, r_answer) = task(|_: &Connection| -> Result<(), OpError> {
            Err(StoreError::TooLarge { size: 2, max: 1 }.into())
        });
        batch.run(&mut vec![a, r]);
        assert!(a_answer.blocking_recv().unwrap().is_ok());
        assert!(r_answer.blocking_recv().unwrap().is_err());
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        assert_eq!(data(&batch, "a").as_deref(), Some("1"));
    }

    /// A refusal after a write rolls the batch back and runs it again with savepoints: the
    /// operations before it run twice, their first run undone, and commit once.
    #[test]
    fn a_refusal_after_a_write_reruns_the_batch_with_savepoints() {
        let (_dir, batch) = open();
        let runs = Arc::new(AtomicU64::new(0));
        let counted = runs.clone();
        let (a, a_answer) = task(insert("a", "x"));
        let (b, b_answer) = task(move |conn| {
            counted.fetch_add(1, Ordering::Relaxed);
            append("a", "1")(conn)
        });
        let (r, r_answer) = task(|conn| -> Result<(), OpError> {
            append("a", "bad")(conn)?;
            Err(StoreError::TooLarge { size: 2, max: 1 }.into())
        });
        batch.run(&mut vec![a, b, r]);
        assert!(a_answer.blocking_recv().unwrap().is_ok());
        assert!(b_answer.blocking_recv().unwrap().is_ok());
        assert!(r_answer.blocking_recv().unwrap().is_err());
        assert_eq!(runs.load(Ordering::Relaxed), 2);
        assert_eq!(data(&batch, "a").as_deref(), Some("x1"));
    }

    /// Operations of one batch apply in queue order.
    #[test]
    fn operations_apply_in_queue_order() {
        let (_dir, batch) = open();
        let (a, _a) = task(insert("a", "x"));
        let (b, _b) = task(append("a", "1"));
        let (c, _c) = task(append("a", "2"));
        batch.run(&mut vec![a, b, c]);
        assert_eq!(data(&batch, "a").as_deref(), Some("x12"));
    }

    /// A waiter that gave up (its timeout passed) leaves nothing behind.
    #[test]
    fn an_abandoned_operation_is_skipped() {
        let (_dir, batch) = open();
        let (a, a_answer) = task(insert("a", "1"));
        drop(a_answer);
        batch.run(&mut vec![a]);
        assert_eq!(data(&batch, "a"), None);
    }
}
