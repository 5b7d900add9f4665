//! What a request did to its session, in words several rooms share: the access line and the
//! metrics read them, the audit hooks are picked by them. Closed sets on purpose: each becomes
//! a log value and a metric label, so a typo cannot invent a new one. A leaf.

/// The session as the request found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// The request failed before its session was loaded.
    Unloaded,
    /// This request started the session (no cookie, or one for a dead session).
    New,
    /// The cookie named a live session.
    Existing,
    /// The store failed and `store.on_error = "fail_open"` sent the request on without one.
    Unavailable,
    /// The path is in `session.skip`: no session was loaded or offered.
    Skipped,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Unloaded => "",
            SessionState::New => "new",
            SessionState::Existing => "existing",
            SessionState::Unavailable => "unavailable",
            SessionState::Skipped => "skipped",
        }
    }
}

/// The store write the request made (at most one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreWrite {
    None,
    Created,
    Updated,
    /// A read-only request moved the idle deadline.
    Touched,
    Destroyed,
    Regenerated,
    /// The session was destroyed or expired by another request before this one saved.
    Vanished,
    /// The app's change was refused (too large); nothing was written.
    Refused,
}

impl StoreWrite {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreWrite::None => "none",
            StoreWrite::Created => "created",
            StoreWrite::Updated => "updated",
            StoreWrite::Touched => "touched",
            StoreWrite::Destroyed => "destroyed",
            StoreWrite::Regenerated => "regenerated",
            StoreWrite::Vanished => "vanished",
            StoreWrite::Refused => "refused",
        }
    }
}
