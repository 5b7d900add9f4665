//! `[audit]`: where the audit log of session events goes, and how many events may wait for its
//! writer; off unless `path` is set. Only the values are checked here: whether the file opens
//! is learnt at start, where it is opened.

use std::path::PathBuf;

use super::ConfigError;
use super::origin::{Origin, count};
use super::raw::RawAudit;

/// `[audit]`: where the audit log goes and how many events may wait for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Appended to; created with mode 0600; reopened on SIGHUP.
    pub path: PathBuf,
    /// Events queued for the writer at most; one more is dropped and counted, never waited for.
    pub queue: usize,
}

/// `[audit]`: off without `path`. Whether the file can be opened is checked at start, where it
/// is opened (and by `check`).
pub(super) fn audit(at: &Origin, a: RawAudit) -> Result<Option<AuditConfig>, ConfigError> {
    let Some(path) = a.path else {
        if a.queue.is_some() {
            return Err(at.bad("audit.queue", "has no effect without audit.path"));
        }
        return Ok(None);
    };
    if path.as_os_str().is_empty() {
        return Err(at.bad("audit.path", "must not be empty"));
    }
    let queue = count(at, "audit.queue", a.queue, 16_384, 1..=1_000_000)?;
    Ok(Some(AuditConfig {
        path,
        queue: usize::try_from(queue).unwrap_or(usize::MAX),
    }))
}
