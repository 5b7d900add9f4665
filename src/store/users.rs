//! The user index: which live sessions belong to one user, so an operator or the app can sign
//! a user out everywhere, and `session.max_per_user` can bound their sessions.
//!
//! **The seam.** The index is a pure function of the stored data: a session belongs to the
//! user named by the top-level key `session.user_key` of its data ([`UserKey::user_of`]). No
//! caller passes a user to the store; every backend derives the old and the new user from the
//! records it already holds in its write, and changes the index in that same atomic step:
//!
//! - memory: under the session's shard lock (`UserIndex`, its own 256 shards by user, each
//!   locked after the session's shard and never the other way round, one at a time, so no
//!   global lock and no deadlock);
//! - fs: under the id's stripe, in the same blocking task as the file's rename (`UserIndex`
//!   again, per process, rebuilt from the files at open);
//! - sqlite: a `user` column of the row, written by the same statement;
//! - Redis: the same Lua script (a set per user); on Redis Cluster a second call.
//!
//! Every read ([`SessionStore::user_sessions`]) also checks each session it returns against
//! the record (live, and still this user's), so no backend ever lists a dead session, even
//! where the index lags (Redis Cluster, a set entry whose session expired by TTL).
//!
//! Revocation and eviction are built on that read plus `delete`, here, once: [`revoke`] and
//! [`evict`] return the ids they destroyed, for the caller to report.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use super::{Record, Result, SessionStore};
use crate::session::{Handle, UserKey};

/// Whether `record` is live at `now` and belongs to `user` under `key`: the check every read
/// of an index makes before it hands a session out.
pub(crate) fn holds(key: &UserKey, record: &Record, user: &str, now: u64) -> bool {
    record.is_live(now) && key.user_of(&record.data).as_deref() == Some(user)
}

/// One per user shard: enough that two requests rarely share one, few enough to cost nothing
/// when empty.
const USER_SHARDS: usize = 256;

type UserShard = Mutex<HashMap<Box<str>, BTreeSet<Handle>>>;

/// user → ids, for the stores that keep their index in this process (memory, fs).
///
/// Invariant: the entries of an id change only while its writer holds the session's own lock
/// (the memory shard, the fs stripe), and that lock is taken first; a user shard is locked
/// alone, for one map operation. So an id's entries always match its record as of that lock,
/// and a reader (which takes a user shard, copies the ids, lets go, then reads the records)
/// can never deadlock with a writer.
pub(crate) struct UserIndex {
    shards: Box<[UserShard]>,
}

impl fmt::Debug for UserIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserIndex").finish_non_exhaustive()
    }
}

impl Default for UserIndex {
    fn default() -> Self {
        UserIndex {
            shards: (0..USER_SHARDS).map(|_| UserShard::default()).collect(),
        }
    }
}

impl UserIndex {
    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<Box<str>, BTreeSet<Handle>>> {
        // FNV-1a: cheap, and a user name is not chosen to collide (a bad spread costs only
        // contention, never correctness).
        let hash = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        self.shards[(hash % USER_SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `id` left `old` and now belongs to `new` (either may be none). A user with no ids left
    /// leaves the map, so the index holds exactly the stored sessions that name a user.
    pub(crate) fn change(&self, id: &Handle, old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            let mut map = self.shard(old);
            if let Some(ids) = map.get_mut(old) {
                ids.remove(id);
                if ids.is_empty() {
                    map.remove(old);
                }
            }
        }
        if let Some(new) = new {
            self.shard(new).entry(new.into()).or_default().insert(*id);
        }
    }

    /// The ids indexed under `user`, copied out.
    pub(crate) fn ids(&self, user: &str) -> Vec<Handle> {
        self.shard(user)
            .get(user)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every (user, id) entry: for tests and the size measurement.
    pub(crate) fn entries(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .map(BTreeSet::len)
                    .sum::<usize>()
            })
            .sum()
    }

    pub(crate) fn clear(&self) {
        for s in self.shards.iter() {
            s.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }
}

/// Destroys every live session of `user` but `except`; returns the ids it destroyed (a session
/// that died meanwhile is not counted). Sessions given to the user while this runs may survive
/// it: revocation covers the sessions the user had when it was asked for.
pub async fn revoke(
    store: &dyn SessionStore,
    user: &str,
    except: Option<&Handle>,
) -> Result<Vec<Handle>> {
    let mut destroyed = Vec::new();
    for (id, _) in store.user_sessions(user).await? {
        if Some(&id) == except {
            continue;
        }
        if store.delete(&id).await? {
            destroyed.push(id);
        }
    }
    Ok(destroyed)
}

/// `session.max_per_user`: after `keep` was given to `user`, destroys the least recently used
/// of the user's other sessions until the user holds at most `max`; returns the ids destroyed.
///
/// "Least recently used" is read off the record: the oldest last use (`meta.last_seen`, which
/// every write for the client moves, touches included; the last change for a record stored
/// before it was kept), then the earliest deadline. Not the deadline first: an unreturned
/// session's (`first_lifetime`) and a remembered one's say nothing about use.
pub async fn evict(
    store: &dyn SessionStore,
    user: &str,
    keep: &Handle,
    max: usize,
) -> Result<Vec<Handle>> {
    let sessions = store.user_sessions(user).await?;
    let excess = sessions.len().saturating_sub(max);
    if excess == 0 {
        return Ok(Vec::new());
    }
    let mut others: Vec<(Handle, Record)> =
        sessions.into_iter().filter(|(id, _)| id != keep).collect();
    others.sort_by_key(|(_, r)| {
        (
            r.meta.last_seen.max(r.updated_at),
            r.expires_at,
            r.created_at,
        )
    });
    let mut destroyed = Vec::new();
    for (id, _) in others.into_iter().take(excess) {
        if store.delete(&id).await? {
            destroyed.push(id);
        }
    }
    Ok(destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_drops_a_user_with_no_ids_left() {
        let index = UserIndex::default();
        let (a, b) = (Handle::generate().unwrap(), Handle::generate().unwrap());
        index.change(&a, None, Some("u"));
        index.change(&b, None, Some("u"));
        index.change(&a, Some("u"), Some("v"));
        assert_eq!(index.ids("u"), vec![b]);
        assert_eq!(index.ids("v"), vec![a]);
        index.change(&b, Some("u"), None);
        index.change(&a, Some("v"), None);
        assert_eq!(index.entries(), 0);
        assert!(index.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }
}
