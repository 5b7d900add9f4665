//! The WebSockets (any upgraded tunnel) open under a session, by the session's handle, so that
//! a socket ends with its session and keeps it alive while it is used.
//!
//! - An end this process sees (the app's destroy, regenerate or revoke, an eviction, the admin's
//!   delete, an expiry a load or the sweeper removed) reaches [`Sockets::ended`], the one place
//!   a session's end is announced to its sockets, which closes them at once.
//! - An end it cannot see (another proxy on the same Redis or sqlite file, the CLI) is found by
//!   [`Sockets::run`]: every `session.socket_recheck`, one [`SessionStore::live_among`] call for
//!   every session that holds a socket.
//! - Traffic is activity: a tunnel sets its socket's `moved` flag when bytes move (one relaxed
//!   store per read or write, never per byte), and the same task touches a session whose
//!   sockets moved bytes once its touch is due (`Update::needs_touch`, so `touch_interval`
//!   coalesces touches as it does requests').
//!
//! A tunnel is entered when it starts, just after its 101: an end announced in between is
//! found by the next recheck. With no socket open this costs one atomic load per announced end
//! and a timer tick.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::Live;
use crate::metrics::Metrics;
use crate::outcome::Ended;
use crate::session::{Handle, Lifetime};
use crate::store::{Record, SessionStore, Update, now_ms};

/// The most handles one `live_among` call is asked about.
const BATCH: usize = 500;

/// Every tunnel open under a session in this process, by the session's handle.
#[derive(Default)]
pub struct Sockets {
    held: Mutex<HashMap<Handle, Held>>,
    /// How many handles `held` holds, so an end announced while no socket is open takes no lock.
    handles: AtomicUsize,
    next: AtomicU64,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets")
            .field("handles", &self.handles.load(Ordering::Relaxed))
            .finish()
    }
}

/// One session's sockets.
struct Held {
    sockets: Vec<Arc<Socket>>,
    /// The record as last seen here (the handshake's, then each touch's): when a touch is due.
    record: Record,
}

/// One open tunnel, shared by the registry and the tunnel.
struct Socket {
    id: u64,
    /// Set by the tunnel when bytes move, cleared when the session is touched for it.
    moved: AtomicBool,
    /// `Some(why)` once the session ended: the tunnel closes.
    close: watch::Sender<Option<Ended>>,
}

/// A tunnel's activity flag, held by the side of it that sees every byte move.
pub struct Activity(Arc<Socket>);

impl Activity {
    /// Bytes moved: one relaxed store.
    pub fn moved(&self) {
        self.0.moved.store(true, Ordering::Relaxed);
    }
}

/// A tunnel's place in [`Sockets`], from its start to its end: dropped, it leaves.
pub struct Registration {
    sockets: Arc<Sockets>,
    handle: Handle,
    socket: Arc<Socket>,
    closed: watch::Receiver<Option<Ended>>,
}

impl Registration {
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// What the tunnel tells when bytes move.
    pub fn activity(&self) -> Activity {
        Activity(self.socket.clone())
    }

    /// Completes when the session ended, with why.
    pub async fn ended(&mut self) -> Ended {
        let why = self
            .closed
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|why| *why);
        match why {
            Some(why) => why,
            // The sender lives in `socket`, which this holds: never dropped first.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut held = self.sockets.lock();
        if let Some(h) = held.get_mut(&self.handle) {
            h.sockets.retain(|s| s.id != self.socket.id);
            if h.sockets.is_empty() {
                held.remove(&self.handle);
                self.sockets.handles.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl Sockets {
    fn lock(&self) -> MutexGuard<'_, HashMap<Handle, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters a tunnel opened under `handle`'s session, whose record the handshake left as
    /// `record`.
    pub fn register(self: &Arc<Self>, handle: Handle, record: Record) -> Registration {
        let (close, closed) = watch::channel(None);
        let socket = Arc::new(Socket {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            moved: AtomicBool::new(false),
            close,
        });
        let mut held = self.lock();
        let entry = held.entry(handle).or_insert_with(|| {
            self.handles.fetch_add(1, Ordering::SeqCst);
            Held {
                sockets: Vec::new(),
                record,
            }
        });
        entry.sockets.push(socket.clone());
        drop(held);
        Registration {
            sockets: self.clone(),
            handle,
            socket,
            closed,
        }
    }

    /// `handle`'s session ended, for `why`: every tunnel open under it closes, both sides.
    /// The one place an end reaches the sockets (a regenerate grace would defer its
    /// [`Ended::Regenerated`] call here). Never waits.
    pub fn ended(&self, handle: &Handle, why: Ended) {
        if self.handles.load(Ordering::SeqCst) == 0 {
            return;
        }
        let Some(held) = self.lock().remove(handle) else {
            return;
        };
        self.handles.fetch_sub(1, Ordering::SeqCst);
        for socket in held.sockets {
            socket.close.send_replace(Some(why));
        }
    }

    /// How many sessions hold a socket now.
    pub fn sessions(&self) -> usize {
        self.handles.load(Ordering::SeqCst)
    }

    /// Runs until aborted: every `session.socket_recheck`, one batched existence check of the
    /// sessions that hold sockets (an end elsewhere closes them); and, as often as
    /// `touch_interval` allows (at most every second, at least every recheck), a touch of each
    /// session whose sockets moved bytes and whose touch is due. Reads the settings in force
    /// (`live`) at every tick, so a reload's apply from the next one.
    pub async fn run(self: Arc<Self>, live: Live) {
        loop {
            let state = live.current();
            let session = &state.config.session;
            let (recheck, touch) = (session.socket_recheck, session.lifetime.touch_interval);
            let period = recheck.min(touch.max(Duration::from_secs(1)));
            let every = (recheck.as_nanos() / period.as_nanos().max(1)).max(1);
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            let mut ticks: u128 = 0;
            loop {
                ticker.tick().await;
                ticks += 1;
                let state = live.current();
                let session = &state.config.session;
                if (session.socket_recheck, session.lifetime.touch_interval) != (recheck, touch) {
                    break;
                }
                if self.sessions() == 0 {
                    continue;
                }
                let store = &*state.store;
                if ticks.is_multiple_of(every) {
                    self.recheck(store).await;
                }
                self.touch(store, session.lifetime, session.max_size, &state.metrics)
                    .await;
            }
        }
    }

    /// Closes the sockets of every session the store no longer holds live.
    async fn recheck(&self, store: &dyn SessionStore) {
        let handles: Vec<Handle> = self.lock().keys().copied().collect();
        for batch in handles.chunks(BATCH) {
            match store.live_among(batch).await {
                Ok(live) => {
                    for (handle, _) in batch.iter().zip(live).filter(|(_, live)| !live) {
                        self.ended(handle, Ended::Gone);
                    }
                }
                Err(error) => {
                    // Nothing is closed on a guess: the next recheck asks again.
                    tracing::warn!(%error, "could not recheck the sessions that hold WebSockets");
                    return;
                }
            }
        }
    }

    /// Touches each session whose sockets moved bytes since its last touch, once its touch is
    /// due, as a request would; one that is gone closes its sockets.
    async fn touch(
        &self,
        store: &dyn SessionStore,
        lifetime: Lifetime,
        max_size: usize,
        metrics: &Metrics,
    ) {
        let update = |base: Option<Record>| Update {
            change: None,
            base,
            now: now_ms(),
            lifetime,
            max_size,
            extends: true,
            visit: None,
        };
        let due: Vec<(Handle, Record)> = {
            let probe = update(None);
            self.lock()
                .iter()
                .filter(|(_, h)| probe.needs_touch(&h.record))
                .filter(|(_, h)| {
                    // Every flag is cleared, not just up to the first set one.
                    h.sockets
                        .iter()
                        .map(|s| s.moved.swap(false, Ordering::Relaxed))
                        .fold(false, |any, moved| any | moved)
                })
                .map(|(handle, h)| (*handle, h.record.clone()))
                .collect()
        };
        for (handle, record) in due {
            match store.update(&handle, &update(Some(record))).await {
                Ok(Some(record)) => {
                    metrics.session_touched();
                    if let Some(h) = self.lock().get_mut(&handle) {
                        h.record = record;
                    }
                }
                Ok(None) => self.ended(&handle, Ended::Gone),
                Err(error) => {
                    tracing::warn!(%error, handle = %handle, "could not touch a session its WebSocket keeps in use");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            data: Arc::from("{}"),
            created_at: 0,
            updated_at: 0,
            expires_at: u64::MAX,
            version: 1,
            meta: Default::default(),
        }
    }

    #[tokio::test]
    async fn an_end_closes_every_socket_of_that_session_and_no_other() {
        let sockets = Arc::new(Sockets::default());
        let (a, b) = (Handle::generate().unwrap(), Handle::generate().unwrap());
        let mut a1 = sockets.register(a, record());
        let mut a2 = sockets.register(a, record());
        let mut b1 = sockets.register(b, record());
        assert_eq!(sockets.sessions(), 2);
        sockets.ended(&a, Ended::Revoked);
        assert_eq!(a1.ended().await, Ended::Revoked);
        assert_eq!(a2.ended().await, Ended::Revoked);
        assert_eq!(sockets.sessions(), 1);
        let waited = tokio::time::timeout(Duration::from_millis(50), b1.ended()).await;
        assert!(waited.is_err(), "another session's socket closed");
        drop((a1, a2));
        assert_eq!(sockets.sessions(), 1);
        drop(b1);
        assert_eq!(sockets.sessions(), 0);
        // An end after the last socket left is nothing.
        sockets.ended(&b, Ended::Destroyed);
    }
}
