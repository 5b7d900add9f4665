//! The read connections of the sqlite store: a small pool of `query_only` connections, each
//! taken out for one query and put back (a point read runs inline when one is idle and the
//! file is not locked; anything else on the blocking pool).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use super::{READERS, schema};
use crate::store::{Result, StoreError};

/// The read connections. A connection is taken out for one query and put back; the semaphore
/// bounds how many are out, so the pool never grows.
#[derive(Debug)]
pub(super) struct Readers {
    path: PathBuf,
    busy: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Readers {
    pub(super) fn open(path: &Path, busy: Duration) -> Result<Readers> {
        let idle = (0..READERS)
            .map(|_| schema::open_reader(path))
            .collect::<Result<Vec<_>>>()?;
        Ok(Readers {
            path: path.to_owned(),
            busy,
            idle: Mutex::new(idle),
            permits: Arc::new(tokio::sync::Semaphore::new(READERS)),
        })
    }

    fn take(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }

    /// Runs `query` on an idle read connection on the calling thread, without waiting for any
    /// lock; `None` if that could not be done (no idle connection, or the file was locked).
    pub(super) async fn inline<T>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<Option<T>> {
        let _permit = self.permits.acquire().await.map_err(closed)?;
        let Some(conn) = self.take() else {
            return Ok(None);
        };
        let result = query(&conn);
        self.put(conn);
        match result {
            Err(e) if is_busy(&e) => Ok(None),
            other => other
                .map(Some)
                .map_err(|e| StoreError::Backend(Box::new(e))),
        }
    }

    /// Runs `query` on a read connection on the blocking pool, waiting up to the busy timeout
    /// for a lock. A connection lost with a cancelled query is replaced here.
    pub(super) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        query: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = self.permits.clone().acquire_owned().await.map_err(closed)?;
        let readers = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match readers.take() {
                Some(conn) => conn,
                None => schema::open_reader(&readers.path)?,
            };
            let fail = |e| StoreError::Backend(Box::new(e));
            conn.busy_timeout(readers.busy).map_err(fail)?;
            let result = query(&conn);
            conn.busy_timeout(Duration::ZERO).map_err(fail)?;
            readers.put(conn);
            result
        })
        .await
        .map_err(StoreError::join)?
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn closed(e: tokio::sync::AcquireError) -> StoreError {
    StoreError::Backend(Box::new(e))
}
