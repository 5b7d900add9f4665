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
    /// A new session was not created: its client was over `limits.new_sessions_per_ip`.
    Throttled,
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
            StoreWrite::Throttled => "throttled",
        }
    }
}

/// Why a session ended, as the WebSockets it held are told: each is a `reason` of
/// `session_proxy_sockets_closed_total` and of the line that says the socket closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The app destroyed it (`X-Session-Destroy`).
    Destroyed,
    /// The app moved it to a new id (`X-Session-Regenerate`): the old id is dead.
    Regenerated,
    /// Signed out with the rest of its user's sessions (`X-Session-Revoke`, the admin's
    /// `DELETE /users/{user}/sessions`).
    Revoked,
    /// Its user went over `session.max_per_user` and it was the least recently used.
    Evicted,
    /// The admin deleted it (`DELETE /sessions/{handle}`).
    Admin,
    /// Its idle or absolute deadline passed (a load or the sweeper removed it).
    Expired,
    /// Found gone by a recheck or a write: ended where this process did not see it (another
    /// proxy, the CLI), or expired by the store itself (Redis).
    Gone,
}

impl Ended {
    /// Every reason, in the order the metric's children are made.
    pub const ALL: [Ended; 7] = [
        Ended::Destroyed,
        Ended::Regenerated,
        Ended::Revoked,
        Ended::Evicted,
        Ended::Admin,
        Ended::Expired,
        Ended::Gone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Destroyed => "destroyed",
            Ended::Regenerated => "regenerated",
            Ended::Revoked => "revoked",
            Ended::Evicted => "evicted",
            Ended::Admin => "admin",
            Ended::Expired => "expired",
            Ended::Gone => "gone",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `metrics.rs` indexes its counters by `why as usize`.
    #[test]
    fn every_reason_sits_at_its_own_index() {
        for (i, why) in Ended::ALL.into_iter().enumerate() {
            assert_eq!(why as usize, i, "{}", why.as_str());
        }
    }
}
