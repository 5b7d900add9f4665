//! The open-file limit, raised once at start.
//!
//! Every connection is a descriptor (two, with its upstream one). The usual soft limit of 1024
//! would stop a busy proxy with EMFILE long before the hard limit the system allows, so the soft
//! limit is raised to the hard one, as nginx's `worker_rlimit_nofile` and most servers do. The
//! `rlimit` crate wraps `getrlimit`/`setrlimit` (and macOS's `OPEN_MAX` cap) without `unsafe`
//! here; it is small, maintained, and depends on nothing but `libc`.

use std::sync::OnceLock;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (once per process) and returns the limit
/// now in force, or `None` if it cannot be read.
pub(super) fn raise_nofile() -> Option<u64> {
    static RAISED: OnceLock<Option<u64>> = OnceLock::new();
    *RAISED.get_or_init(|| match ::rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::debug!(open_files = limit, "raised the open-file limit");
            Some(limit)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit (RLIMIT_NOFILE)");
            ::rlimit::getrlimit(::rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    })
}
