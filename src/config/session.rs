//! `[session]`: the protocol's header names (built here once from `header_prefix`), the size
//! bound, the lifetime (idle, absolute, touch interval), the paths that get no session, and the
//! user index. Later code takes these as given and checks none of them again.

use std::time::Duration;

use super::ConfigError;
use super::origin::Origin;
use super::raw::RawSession;
use crate::protocol::ProtocolHeaders;
use crate::session::Lifetime;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub header_prefix: String,
    /// The names built from `header_prefix`, once, so nothing later rebuilds or re-checks them.
    pub headers: ProtocolHeaders,
    pub renew_missing: bool,
    /// Upper bound on the session's JSON text, in bytes.
    pub max_size: usize,
    pub lifetime: Lifetime,
    /// Paths that get no session (static assets): see [`SkipRules`].
    pub skip: SkipRules,
    /// `session.user_key`: the data key that names a session's user; `None`, no user index.
    pub user_key: Option<crate::session::UserKey>,
    /// `session.max_per_user`: live sessions one user may hold (only with `user_key`).
    pub max_per_user: Option<usize>,
    /// `session.socket_recheck`: how often the sessions that hold WebSockets are checked, in
    /// one batched store call, for an end this process did not see (another proxy, the CLI).
    pub socket_recheck: Duration,
    /// `session.regenerate_grace`: how long a regenerated-away id keeps resolving to the new
    /// session; zero writes no alias (the old id dies at once, and no stale use is seen).
    pub regenerate_grace: Duration,
    /// `session.on_stale_use`: what a use of an old id past its grace does besides being
    /// counted, logged and audited.
    pub on_stale_use: OnStaleUse,
    /// `session.devices_path`: requests that get `X-Session-Devices` (the user's sessions).
    pub devices_path: SkipRules,
}

impl SessionConfig {
    /// `user` (as an operator or the app names it) as the user index names it: hashed with
    /// `store.hash_users`, else as it is.
    pub fn indexed_user(&self, user: &str) -> String {
        match &self.user_key {
            Some(key) => key.indexed(user),
            None => user.to_owned(),
        }
    }
}

/// `session.on_stale_use`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStaleUse {
    /// Counted, logged at warn, audited; nothing ends.
    #[default]
    Ignore,
    /// Also ends every session of the user of the session the old id now names.
    Revoke,
}

/// `session.skip`: request paths the proxy passes through without touching the store. An
/// entry ending in `/` matches every path under it, any other entry only that exact path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipRules {
    prefixes: Vec<String>,
    exact: Vec<String>,
}

impl SkipRules {
    pub(crate) fn new(entries: Vec<String>) -> Self {
        let (prefixes, exact) = entries.into_iter().partition(|e| e.ends_with('/'));
        SkipRules { prefixes, exact }
    }

    /// Whether a request for `path` skips the session. Checked on every request: a few string
    /// comparisons, no allocation.
    pub fn matches(&self, path: &str) -> bool {
        self.exact.iter().any(|e| e == path)
            || self.prefixes.iter().any(|p| path.starts_with(p.as_str()))
    }
}

const DEFAULT_MAX_SIZE: u64 = 16 * 1024;
const MAX_MAX_SIZE: u64 = 1024 * 1024;

pub(super) fn session(at: &Origin, s: RawSession) -> Result<SessionConfig, ConfigError> {
    let header_prefix = s.header_prefix.unwrap_or_else(|| "X-Session".to_owned());
    let headers = ProtocolHeaders::new(&header_prefix)
        .map_err(|e| at.bad("session.header_prefix", e.to_string()))?;
    if header_prefix
        .to_ascii_lowercase()
        .starts_with("x-forwarded")
    {
        return Err(at.bad(
            "session.header_prefix",
            "must not overlap the X-Forwarded-* headers",
        ));
    }
    let max_size = s.max_size.unwrap_or(DEFAULT_MAX_SIZE);
    if !(2..=MAX_MAX_SIZE).contains(&max_size) {
        return Err(at.bad(
            "session.max_size",
            format!("{max_size} is outside 2..={MAX_MAX_SIZE} bytes"),
        ));
    }
    let idle_timeout = at.duration(
        "session.idle_timeout",
        &s.idle_timeout,
        Duration::from_secs(24 * 3600),
    )?;
    if idle_timeout < Duration::from_secs(1) {
        return Err(at.bad("session.idle_timeout", "must be at least 1s"));
    }
    let absolute_timeout = at.optional_duration("session.absolute_timeout", &s.absolute_timeout)?;
    if absolute_timeout.is_some_and(|a| a < Duration::from_secs(1)) {
        return Err(at.bad(
            "session.absolute_timeout",
            "must be at least 1s (leave it out to turn it off)",
        ));
    }
    let touch_interval = at.duration(
        "session.touch_interval",
        &s.touch_interval,
        idle_timeout / 10,
    )?;
    if touch_interval > idle_timeout {
        return Err(at.bad(
            "session.touch_interval",
            "must not exceed session.idle_timeout, or idle sessions would die while in use",
        ));
    }
    let skip = paths(at, "session.skip", s.skip)?;
    let devices_path = paths(at, "session.devices_path", s.devices_path)?;
    let remember_max = at.duration(
        "session.remember_max",
        &s.remember_max,
        Duration::from_secs(90 * 86400),
    )?;
    at.positive("session.remember_max", remember_max)?;
    let remember_absolute = match &s.remember_absolute {
        None => absolute_timeout,
        Some(_) => match at.optional_duration("session.remember_absolute", &s.remember_absolute)? {
            Some(d) if d.is_zero() => None,
            d => d,
        },
    };
    let first_lifetime = at
        .duration(
            "session.first_lifetime",
            &s.first_lifetime,
            Duration::from_secs(600),
        )
        .map(|d| (!d.is_zero()).then_some(d))?;
    let user_key = match s.user_key.as_deref() {
        None => None,
        Some("") => {
            return Err(at.bad(
                "session.user_key",
                "must not be empty (leave it out to turn the user index off)",
            ));
        }
        Some(key) => Some(crate::session::UserKey::new(key)),
    };
    let max_per_user = match s.max_per_user {
        None => None,
        Some(0) => {
            return Err(at.bad(
                "session.max_per_user",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        Some(_) if user_key.is_none() => {
            return Err(at.bad(
                "session.max_per_user",
                "needs session.user_key: without it no session has a user",
            ));
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let socket_recheck = at.duration(
        "session.socket_recheck",
        &s.socket_recheck,
        Duration::from_secs(30),
    )?;
    at.positive("session.socket_recheck", socket_recheck)?;
    let regenerate_grace = at.duration(
        "session.regenerate_grace",
        &s.regenerate_grace,
        Duration::from_secs(10),
    )?;
    let on_stale_use = match s.on_stale_use.as_deref() {
        None | Some("ignore") => OnStaleUse::Ignore,
        Some("revoke") if user_key.is_none() => {
            return Err(at.bad(
                "session.on_stale_use",
                "\"revoke\" needs session.user_key: without it no session has a user",
            ));
        }
        Some("revoke") => OnStaleUse::Revoke,
        Some(other) => {
            return Err(at.bad(
                "session.on_stale_use",
                format!("{other:?} is not one of \"ignore\", \"revoke\""),
            ));
        }
    };
    if on_stale_use == OnStaleUse::Revoke && regenerate_grace.is_zero() {
        return Err(at.bad(
            "session.on_stale_use",
            "\"revoke\" needs a session.regenerate_grace above 0: with 0 no old id is kept",
        ));
    }
    Ok(SessionConfig {
        regenerate_grace,
        on_stale_use,
        socket_recheck,
        user_key,
        max_per_user,
        skip: SkipRules::new(skip),
        devices_path: SkipRules::new(devices_path),
        header_prefix,
        headers,
        renew_missing: s.renew_missing.unwrap_or(true),
        max_size: max_size as usize,
        lifetime: Lifetime {
            idle_timeout,
            absolute_timeout,
            touch_interval,
            remember_max,
            remember_absolute,
            first_lifetime,
        },
    })
}

/// A list of request paths (`session.skip`, `session.devices_path`): each starts with `/`.
fn paths(
    at: &Origin,
    key: &'static str,
    list: Option<Vec<String>>,
) -> Result<Vec<String>, ConfigError> {
    let list = list.unwrap_or_default();
    if let Some(bad) = list.iter().find(|e| {
        !e.starts_with('/')
            || e.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    }) {
        return Err(at.bad(
            key,
            format!("{bad:?} is not a path: entries start with / (end one with / to match everything under it)"),
        ));
    }
    Ok(list)
}
