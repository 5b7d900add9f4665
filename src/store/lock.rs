//! Striped per-session write locks, shared by the stores that serialise writers of one id in
//! this process (fs for atomicity, Redis to keep compare-and-set retries short).
//!
//! The locks are async: a writer waiting for its turn holds no thread, and when its request
//! times out the wait is simply dropped, having written nothing.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::session::Handle;

/// `STRIPES` mutexes; the id's hash picks one. Unrelated ids rarely share a stripe, and memory
/// stays fixed however many sessions there are.
#[derive(Debug)]
pub struct StripedLock {
    stripes: Vec<Arc<Mutex<()>>>,
}

const STRIPES: usize = 256;

impl Default for StripedLock {
    fn default() -> Self {
        StripedLock {
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
        }
    }
}

impl StripedLock {
    fn stripe(&self, id: &Handle) -> Arc<Mutex<()>> {
        let hash = id
            .as_str()
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        self.stripes[hash % self.stripes.len()].clone()
    }

    /// Waits (asynchronously) for the id's stripe. The guard is owned, so it can move into a
    /// `spawn_blocking` closure.
    pub async fn lock(&self, id: &Handle) -> OwnedMutexGuard<()> {
        self.stripe(id).lock_owned().await
    }

    /// The same, from a blocking-pool thread (never call it on an async worker).
    pub fn blocking_lock(&self, id: &Handle) -> OwnedMutexGuard<()> {
        self.stripe(id).blocking_lock_owned()
    }
}
