//! [`StoreError`], everything a store can fail with, and whose it is to act on it ([`Blame`]).

use std::time::Duration;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store can fail with. Backends convert their own errors into this.
///
/// Each error knows whose fault it is ([`StoreError::blame`]): the admin API answers a caller's
/// mistake with a 4xx and a store failure with a 503; the proxy never blames a client for the
/// store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The change was refused, nothing was written; not a store failure.
    #[error("session data would be {size} bytes, over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    /// A listing cursor this store did not hand out (or from another kind of store).
    #[error("{0:?} is not a listing cursor of this store")]
    BadCursor(String),
    #[error("store i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("store call took longer than {0:?}")]
    Timeout(Duration),
    #[error("store backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend answered in a shape this code does not expect (a protocol or version
    /// mismatch, say): the store's fault, never the caller's.
    #[error("store backend answered unexpectedly: {0}")]
    Unexpected(String),
    /// A stored record (or its data) does not parse.
    #[error("stored session is not valid: {0}")]
    Corrupt(String),
    /// A freshly generated id was taken: with 192 random bits that means the random source or
    /// the store is broken, not bad luck.
    #[error("a freshly generated session id is already taken")]
    IdCollision,
    /// A per-user call on a proxy without `session.user_key`: nothing to look a user up in.
    #[error("there is no user index: session.user_key is not set")]
    NoUserIndex,
}

/// Who has to act on a [`StoreError`] (the proxy's [`crate::error::Fault`] says more: whose
/// fault a whole request's failure was).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The request asked for something invalid; retrying it unchanged fails the same way.
    Caller,
    /// The store failed; the same request may succeed later.
    Store,
}

impl StoreError {
    pub fn blame(&self) -> Blame {
        match self {
            StoreError::TooLarge { .. } | StoreError::BadCursor(_) | StoreError::NoUserIndex => {
                Blame::Caller
            }
            StoreError::Io(_)
            | StoreError::Timeout(_)
            | StoreError::Backend(_)
            | StoreError::Unexpected(_)
            | StoreError::Corrupt(_)
            | StoreError::IdCollision => Blame::Store,
        }
    }

    /// A background task (the blocking pool) died or was cancelled.
    pub(crate) fn join(e: tokio::task::JoinError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}
