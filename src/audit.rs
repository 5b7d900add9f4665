//! The audit log (`[audit] path`): one JSON line per session event (created, updated,
//! replaced, regenerated, destroyed, expired) and per admin action, appended to a file an
//! operator can keep, rotate and ship.
//!
//! Why a queue: the request path must not wait on a disk. A hook builds an [`Entry`] and
//! `try_send`s it into a bounded channel; one [`Writer`] task turns batches into lines, writes
//! them on the blocking pool and fsyncs once per batch. When the channel is full the event is
//! dropped, counted (`audit_dropped_total`) and warned about once per burst: a slow disk costs
//! audit lines, never latency. With `[audit]` off, [`Audit`] is `None` inside and every hook is
//! one branch.
//!
//! What must never happen: a session id, or any session data value, in the file. An id is a
//! bearer secret, so a line names the session by its [`Handle`] (`sid`, base64url of the SHA-256
//! of the id: the name the stores, the admin API and the signed assertion use too); a change names
//! its top-level keys, never their values.
//!
//! SIGHUP reopens the file (logrotate's `postrotate`); shutdown closes the channel, writes what
//! it holds and fsyncs, so every event the channel accepted is in the file.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::AuditConfig;
use crate::session::{DataChange, Handle, now_ms};

/// Lines written (and fsynced) together at most; a longer queue is written in several batches.
const BATCH: usize = 1024;

/// Why a session was destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The app sent `X-Session-Destroy`.
    App,
    /// An operator deleted it through the admin API.
    Admin,
    /// A revocation of the user's sessions (`X-Session-Revoke`, or the admin's per-user delete).
    Revoked,
    /// The user went over `session.max_per_user`; the least recently used session went.
    Evicted,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::App => "app",
            Reason::Admin => "admin",
            Reason::Revoked => "revoked",
            Reason::Evicted => "evicted",
        }
    }
}

/// What happened. Keys are the top-level names of session data, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new session was stored, with these keys set.
    Created {
        keys: Vec<String>,
    },
    /// A merge patch: the keys it set or removed.
    Updated {
        keys: Vec<String>,
    },
    /// The whole data was replaced; the keys of the new data.
    Replaced {
        keys: Vec<String>,
    },
    /// The session moved to a new id (the entry's `sid`) from `old`, with the keys a change
    /// made on the way (empty without one).
    Regenerated {
        old: Handle,
        keys: Vec<String>,
    },
    Destroyed(Reason),
    /// The proxy saw the session dead by its expiry (at a load, or sweeping).
    Expired,
    /// An operator read session data or the listing through the admin API.
    Read,
    /// A request presented `old`, an id regenerated away (to the entry's `sid`) whose
    /// `session.regenerate_grace` had ended: a copied cookie's sign.
    StaleUse {
        old: Handle,
    },
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::Created { .. } => "created",
            Event::Updated { .. } => "updated",
            Event::Replaced { .. } => "replaced",
            Event::Regenerated { .. } => "regenerated",
            Event::Destroyed(_) => "destroyed",
            Event::Expired => "expired",
            Event::Read => "read",
            Event::StaleUse { .. } => "stale_use",
        }
    }

    /// The event of a data change (an update or a replace) with its key names.
    pub fn of_change(change: Option<&DataChange>) -> Event {
        match change {
            Some(DataChange::Replace(map)) => Event::Replaced {
                keys: map.keys().cloned().collect(),
            },
            Some(DataChange::Patch(map)) => Event::Updated {
                keys: map.keys().cloned().collect(),
            },
            None => Event::Updated { keys: Vec::new() },
        }
    }

    /// A new session, with the keys its first change set.
    pub fn created(change: Option<&DataChange>) -> Event {
        Event::Created {
            keys: keys_of(change),
        }
    }

    /// A move from id `old`, with the keys a change made on the way.
    pub fn regenerated(old: Handle, change: Option<&DataChange>) -> Event {
        Event::Regenerated {
            old,
            keys: keys_of(change),
        }
    }
}

fn keys_of(change: Option<&DataChange>) -> Vec<String> {
    match change {
        Some(DataChange::Replace(map) | DataChange::Patch(map)) => map.keys().cloned().collect(),
        None => Vec::new(),
    }
}

/// One line of the log, as a hook hands it over.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Unix milliseconds, taken when the hook ran.
    pub at: u64,
    pub event: Event,
    pub sid: Option<Handle>,
    /// The session's user, when the user index knows it.
    pub user: Option<String>,
    pub request_id: Option<HeaderValue>,
    /// The admin caller's address, for an admin action.
    pub operator: Option<SocketAddr>,
    /// The admin route of an admin action, e.g. `DELETE /sessions/{handle}`.
    pub action: Option<&'static str>,
}

impl Entry {
    pub fn new(event: Event, sid: Option<&Handle>) -> Self {
        Entry {
            at: now_ms(),
            event,
            sid: sid.copied(),
            user: None,
            request_id: None,
            operator: None,
            action: None,
        }
    }

    pub fn request_id(mut self, id: &HeaderValue) -> Self {
        self.request_id = Some(id.clone());
        self
    }

    pub fn user(mut self, user: Option<String>) -> Self {
        self.user = user;
        self
    }

    pub fn admin(mut self, operator: SocketAddr, action: &'static str) -> Self {
        self.operator = Some(operator);
        self.action = Some(action);
        self
    }
}

/// The handle every hook holds: cheap to clone, and a no-op when `[audit]` is off. Clones share
/// one log: [`replace`](Audit::replace) (a reload) moves them all to a new file or queue, or
/// turns the log on or off, at once.
#[derive(Clone, Default)]
pub struct Audit {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_on() {
            "Audit(on)"
        } else {
            "Audit(off)"
        })
    }
}

/// What every clone of one [`Audit`] sees.
#[derive(Default)]
struct Shared {
    /// The queue of the writer in force; `None` while `[audit]` is off.
    sender: ArcSwapOption<Sender>,
    /// `audit_dropped_total`, kept across the writers a reload starts.
    dropped: Counter,
}

struct Sender {
    tx: mpsc::Sender<Entry>,
    shared: Arc<Drops>,
}

/// What the senders and the writer both see.
struct Drops {
    /// `audit_dropped_total`: events that are not in the file (queue full, writer gone, or a
    /// failed write).
    dropped: Counter,
    /// Set at the first drop of a burst (one warning), cleared once the writer empties the queue.
    overflowing: AtomicBool,
}

/// A log opened by [`Audit::prepare`], not yet in force: `None` inside for `[audit]` off.
pub struct Prepared(Option<(Sender, Writer)>);

impl Audit {
    /// The handle for `[audit]` off.
    pub fn off() -> Self {
        Audit::default()
    }

    pub fn is_on(&self) -> bool {
        self.shared.sender.load().is_some()
    }

    /// Opens (creates, mode 0600) the log for appending and returns the handle and the writer
    /// that must run for lines to reach the file. `None` config: off, no writer.
    pub async fn open(
        config: Option<&AuditConfig>,
        dropped: Counter,
    ) -> Result<(Audit, Option<Writer>), OpenError> {
        let audit = Audit {
            shared: Arc::new(Shared {
                sender: ArcSwapOption::empty(),
                dropped,
            }),
        };
        let prepared = audit.prepare(config).await?;
        let writer = audit.replace(prepared);
        Ok((audit, writer))
    }

    /// Opens the log `config` names (creating the file, as [`open`](Self::open) does) without
    /// putting it in force, so a reload can refuse a file it cannot open and change nothing.
    pub async fn prepare(&self, config: Option<&AuditConfig>) -> Result<Prepared, OpenError> {
        let Some(config) = config else {
            return Ok(Prepared(None));
        };
        let file = open_file(&config.path).await?;
        let (tx, rx) = mpsc::channel(config.queue);
        let shared = Arc::new(Drops {
            dropped: self.shared.dropped.clone(),
            overflowing: AtomicBool::new(false),
        });
        let writer = Writer {
            rx,
            file,
            path: config.path.clone(),
            shared: shared.clone(),
        };
        Ok(Prepared(Some((Sender { tx, shared }, writer))))
    }

    /// Puts `prepared` in force for every clone of this handle and returns its writer, which
    /// must run for its lines to reach the file. The writer in force until now gets no new
    /// event: it writes what its queue holds and returns.
    pub fn replace(&self, prepared: Prepared) -> Option<Writer> {
        let (sender, writer) = match prepared.0 {
            Some((sender, writer)) => (Some(Arc::new(sender)), Some(writer)),
            None => (None, None),
        };
        self.shared.sender.store(sender);
        writer
    }

    /// Stops taking events (at exit): every writer writes what its queue holds, fsyncs and
    /// returns.
    pub fn close(&self) {
        self.shared.sender.store(None);
    }

    /// Queues the entry `make` builds (only built when the log is on). Never waits: a full
    /// queue drops the entry and counts it.
    pub fn emit(&self, make: impl FnOnce() -> Entry) {
        let sender = self.shared.sender.load();
        let Some(sender) = sender.as_deref() else {
            return;
        };
        if let Err(e) = sender.tx.try_send(make()) {
            sender.shared.dropped.inc();
            if !sender.shared.overflowing.swap(true, Ordering::Relaxed) {
                match e {
                    mpsc::error::TrySendError::Full(_) => tracing::warn!(
                        "the audit log queue is full: dropping audit events (counted in audit_dropped_total) until it drains"
                    ),
                    mpsc::error::TrySendError::Closed(_) => tracing::warn!(
                        "the audit log writer has stopped: dropping audit events (counted in audit_dropped_total)"
                    ),
                }
            }
        }
    }

    /// The proxy's hook after a successful store write that is an event (a touch is not): the
    /// request's `request_id`, the id the session has now and the user it belongs to.
    pub fn saved(
        &self,
        request_id: &HeaderValue,
        id: &Handle,
        event: Event,
        user: impl FnOnce() -> Option<String>,
    ) {
        self.emit(|| {
            Entry::new(event, Some(id))
                .request_id(request_id)
                .user(user())
        });
    }

    /// A session destroyed on a request: by the app, or as one of `user`'s sessions revoked
    /// (`X-Session-Revoke`) or evicted (`session.max_per_user`).
    pub fn destroyed(
        &self,
        request_id: &HeaderValue,
        id: &Handle,
        reason: Reason,
        user: Option<&str>,
    ) {
        self.emit(|| {
            Entry::new(Event::Destroyed(reason), Some(id))
                .request_id(request_id)
                .user(user.map(str::to_owned))
        });
    }

    /// An admin action by `operator` on a session of `user`.
    pub fn admin_on_user(
        &self,
        operator: SocketAddr,
        action: &'static str,
        id: &Handle,
        user: &str,
        event: impl FnOnce() -> Event,
    ) {
        self.emit(|| {
            Entry::new(event(), Some(id))
                .admin(operator, action)
                .user(Some(user.to_owned()))
        });
    }

    /// A request presented the id of `old`, regenerated away to `new` (of `user`) and past its
    /// grace.
    pub fn stale_use(
        &self,
        request_id: &HeaderValue,
        old: &Handle,
        new: &Handle,
        user: Option<String>,
    ) {
        self.emit(|| {
            Entry::new(Event::StaleUse { old: *old }, Some(new))
                .request_id(request_id)
                .user(user)
        });
    }

    /// A request found its session dead by expiry (and its load removed it).
    pub fn expired(&self, request_id: &HeaderValue, id: &Handle, user: Option<String>) {
        self.emit(|| {
            Entry::new(Event::Expired, Some(id))
                .request_id(request_id)
                .user(user)
        });
    }

    /// The sweeper removed an expired session: no request, no operator.
    pub fn swept(&self, id: &Handle, user: Option<&str>) {
        self.emit(|| Entry::new(Event::Expired, Some(id)).user(user.map(str::to_owned)));
    }

    /// An admin action by `operator` on route `action`, about session `id` (none for a listing).
    pub fn admin(
        &self,
        operator: SocketAddr,
        action: &'static str,
        id: Option<&Handle>,
        event: impl FnOnce() -> Event,
    ) {
        self.emit(|| Entry::new(event(), id).admin(operator, action));
    }
}

/// The log file could not be opened: the operator's to fix, so the proxy refuses to start
/// (exit 2, like a bad config).
#[derive(Debug, thiserror::Error)]
#[error("`audit.path`: cannot open {path} for appending: {source}")]
pub struct OpenError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// Opens `path` for appending, creating it with mode 0600 (session events are nobody else's
/// business); an existing file keeps its mode.
pub async fn open_file(path: &Path) -> Result<Arc<std::fs::File>, OpenError> {
    let owned = path.to_owned();
    let opened = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&owned)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    opened.map(Arc::new).map_err(|source| OpenError {
        path: path.display().to_string(),
        source,
    })
}

/// The task that owns the file: run it with [`Writer::run`] for as long as the proxy serves.
pub struct Writer {
    rx: mpsc::Receiver<Entry>,
    file: Arc<std::fs::File>,
    path: PathBuf,
    shared: Arc<Drops>,
}

impl Writer {
    /// Writes batches as they come and reopens the file on SIGHUP, until its handle lets it go
    /// ([`Audit::close`] at exit, or [`Audit::replace`] by a reload); then writes what its
    /// queue holds, fsyncs and returns.
    pub async fn run(mut self) {
        // Its own SIGHUP stream: other parts of the proxy may listen for SIGHUP too, and each
        // stream gets every signal.
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; the audit log will not be reopened on rotation");
                None
            }
        };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                n = self.rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.write(&mut batch).await;
                }
                Some(()) = async {
                    match &mut hangup {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.reopen().await,
            }
        }
    }

    /// Formats `batch` into one buffer, appends it with one write and fsyncs, on the blocking
    /// pool. A failed write loses its lines (counted as dropped) and the next batch tries again.
    async fn write(&mut self, batch: &mut Vec<Entry>) {
        let n = batch.len();
        let mut buf = Vec::with_capacity(n * 160);
        for entry in batch.drain(..) {
            line(&entry, &mut buf);
        }
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut f = &*file;
            f.write_all(&buf)?;
            f.sync_data()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(error) = written {
            self.shared.dropped.inc_by(n as u64);
            tracing::error!(%error, lost = n, path = %self.path.display(), "writing the audit log failed");
        }
        if self.rx.is_empty() {
            self.shared.overflowing.store(false, Ordering::Relaxed);
        }
    }

    /// logrotate moved the file away: continue in a new one at the configured path. If that
    /// fails, the old file (wherever it now is) keeps receiving lines.
    async fn reopen(&mut self) {
        match open_file(&self.path).await {
            Ok(file) => {
                self.file = file;
                tracing::info!(path = %self.path.display(), "reopened the audit log (SIGHUP)");
            }
            Err(error) => {
                tracing::error!(%error, "cannot reopen the audit log; still writing to the old file");
            }
        }
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_sid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_sid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    operator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'static str>,
}

/// Appends the JSON line of `entry` (with its newline) to `out`.
fn line(entry: &Entry, out: &mut Vec<u8>) {
    let time = rfc3339_ms(entry.at);
    let sid = entry.sid.as_ref().map(Handle::as_str);
    let old = match &entry.event {
        Event::Regenerated { old, .. } | Event::StaleUse { old } => Some(old.as_str()),
        _ => None,
    };
    let keys = match &entry.event {
        Event::Created { keys }
        | Event::Updated { keys }
        | Event::Replaced { keys }
        | Event::Regenerated { keys, .. } => Some(keys.as_slice()),
        _ => None,
    };
    let reason = match entry.event {
        Event::Destroyed(r) => Some(r.as_str()),
        _ => None,
    };
    let line = JsonLine {
        time: &time,
        event: entry.event.name(),
        sid,
        old_sid: old,
        new_sid: old.and(sid),
        keys,
        reason,
        user: entry.user.as_deref(),
        // A request id is checked to be printable ASCII (or made by the proxy).
        request_id: entry.request_id.as_ref().and_then(|v| v.to_str().ok()),
        operator: entry.operator.map(|a| a.to_string()),
        action: entry.action,
    };
    // Only strings and string lists: serializing cannot fail.
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

/// `2026-12-01T22:30:00.123Z`: RFC 3339, UTC, milliseconds.
fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_hash_is_a_sha256_prefix_and_the_line_holds_no_id() {
        let raw = crate::session::SessionId::parse("abcdefghijklmnopqrstuvwxyz012345").unwrap();
        let id = raw.handle();
        // sha256("abcdefghijklmnopqrstuvwxyz012345") in base64url, by openssl and basenc.
        assert_eq!(id.as_str(), "ZTuxJF6Cj82k-lP81aPe9b12VOZR9UtBMrc9dOZENcQ");
        let new_raw = crate::session::SessionId::generate().unwrap();
        let new = new_raw.handle();
        let mut entry = Entry::new(
            Event::Regenerated {
                old: id,
                keys: vec!["cart".to_owned()],
            },
            Some(&new),
        )
        .request_id(&HeaderValue::from_static("req-1"));
        entry.at = 1_764_628_200_123;
        let mut out = Vec::new();
        line(&entry, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        assert!(!text.contains(raw.as_str()) && !text.contains(new_raw.as_str()));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({
                "time": "2025-12-01T22:30:00.123Z",
                "event": "regenerated",
                "sid": new.as_str(),
                "old_sid": id.as_str(),
                "new_sid": new.as_str(),
                "keys": ["cart"],
                "request_id": "req-1",
            })
        );
    }

    #[test]
    fn an_admin_line_names_the_operator_and_the_route() {
        let id = Handle::generate().unwrap();
        let operator: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let mut entry = Entry::new(Event::Destroyed(Reason::Admin), Some(&id))
            .admin(operator, "DELETE /sessions/{handle}");
        entry.at = 0;
        let mut out = Vec::new();
        line(&entry, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({
                "time": "1970-01-01T00:00:00.000Z",
                "event": "destroyed",
                "sid": id.as_str(),
                "reason": "admin",
                "operator": "127.0.0.1:4242",
                "action": "DELETE /sessions/{handle}",
            })
        );
    }

    #[test]
    fn off_is_a_no_op_that_never_builds_the_entry() {
        let audit = Audit::off();
        assert!(!audit.is_on());
        audit.emit(|| panic!("built an entry with the log off"));
    }
}
