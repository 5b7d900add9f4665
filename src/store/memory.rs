//! In-process store: an ordered map split into shards by id range. For tests and
//! single-process deployments; its sessions die with the process.
//!
//! Atomicity comes from the shard locks, which are only ever held by synchronous code: no lock
//! is held across an await. Walking the shards in order walks the ids in order, and each lock
//! covers 1/4096 of the sessions. With `session.user_key`, a `UserIndex` is changed by every
//! write while the session's shard is still write-locked (the session's shard first, then one
//! user shard at a time). Why these shards, measured against other layouts: docs/stores.md.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use super::users::UserIndex;
use super::{
    Alias, Capabilities, ExpiredSink, Loaded, Page, Record, Result, Sealer, SessionStore, Update,
    now_ms,
};
use crate::session::Handle;
use crate::session::UserKey;

/// The base64url alphabet of ids in byte order, so the rank of a character orders ids.
const ALPHABET: &[u8; 64] = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

/// A byte's place in [`ALPHABET`] (ids hold no other bytes: `Handle` guarantees it).
const RANK: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// One per two-character id prefix: about 250 sessions a shard at a million, so a tree is
/// three levels deep and a write lock blocks almost nobody.
const SHARDS: usize = 64 * 64;

/// Shard `i` holds exactly the ids whose first two characters rank `i / 64` and `i % 64`, so
/// every id in shard `i` sorts before every id in shard `i + 1`.
fn shard_of(id: &Handle) -> usize {
    let b = id.as_str().as_bytes();
    match b {
        [first, second, ..] => {
            usize::from(RANK[usize::from(*first)]) * 64 + usize::from(RANK[usize::from(*second)])
        }
        _ => 0,
    }
}

type Shard = RwLock<BTreeMap<Handle, Record>>;

pub struct MemoryStore {
    /// Shared with the sweeper's blocking task. With a sealer on, each record's data is held
    /// sealed (as another store would keep it) and opened by every read.
    shards: Arc<[Shard]>,
    users: Option<Arc<Users>>,
    sealer: Sealer,
    /// The aliases regenerates left (`session.regenerate_grace`), by old handle: apart from
    /// the sessions, so no listing or count meets one. Touched only on regenerates and misses.
    aliases: Arc<Mutex<HashMap<Handle, Alias>>>,
}

/// The user index and the key it is built from.
#[derive(Debug)]
struct Users {
    key: UserKey,
    index: UserIndex,
}

impl Users {
    fn user(&self, record: &Record) -> Option<String> {
        self.key.user_of(&record.data)
    }

    /// `id`'s record went from `old` to `new` (either may be none, both opened); called under
    /// its shard lock.
    fn change(&self, id: &Handle, old: Option<&Record>, new: Option<&Record>) {
        if let (Some(old), Some(new)) = (old, new)
            && Arc::ptr_eq(&old.data, &new.data)
        {
            return;
        }
        let old = old.and_then(|r| self.user(r));
        let new = new.and_then(|r| self.user(r));
        self.index.change(id, old.as_deref(), new.as_deref());
    }
}

/// By hand: a derived `Debug` would print every session, and their data is the users'.
impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(None)
    }
}

impl MemoryStore {
    /// A store that keeps a user index when `users` names the user key.
    pub fn new(users: Option<UserKey>) -> Self {
        MemoryStore::sealed(users, Sealer::default())
    }

    /// [`MemoryStore::new`], holding session data sealed by `sealer` (`store.encryption_key`).
    pub fn sealed(users: Option<UserKey>, sealer: Sealer) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            users: users.map(|key| {
                Arc::new(Users {
                    key,
                    index: UserIndex::default(),
                })
            }),
            sealer,
            aliases: Arc::default(),
        }
    }

    /// This store's sessions (the same maps, shared) with the user index `users` names, built
    /// from the sessions as they are now: what a reload that changes `session.user_key` or
    /// `store.hash_users` serves from then on. A session written by a request still in flight
    /// under the store it replaces is indexed at its next write.
    pub fn reindexed(&self, users: Option<UserKey>) -> Self {
        let users = users.map(|key| {
            let users = Users {
                key,
                index: UserIndex::default(),
            };
            for shard in self.shards.iter() {
                for (id, stored) in read(shard).iter() {
                    if let Some(record) = opened(&self.sealer, id, stored) {
                        users.change(id, None, Some(&record));
                    }
                }
            }
            Arc::new(users)
        });
        MemoryStore {
            shards: self.shards.clone(),
            users,
            sealer: self.sealer.clone(),
            aliases: self.aliases.clone(),
        }
    }

    /// Entries of the user index (user, id), for the size measurement (bench/tools).
    #[doc(hidden)]
    pub fn user_entries(&self) -> usize {
        self.users.as_ref().map_or(0, |u| u.index.entries())
    }
}

impl MemoryStore {
    fn aliases(&self) -> std::sync::MutexGuard<'_, HashMap<Handle, Alias>> {
        self.aliases.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `stored` as callers see it: its data opened (`None`: it does not open, and counts as
/// missing). Off, a clone.
fn opened(sealer: &Sealer, id: &Handle, stored: &Record) -> Option<Record> {
    if !sealer.is_on() {
        return Some(stored.clone());
    }
    let data = sealer.open(&stored.data, id).ok()?;
    Some(Record {
        data: Arc::from(data),
        ..stored.clone()
    })
}

/// `plain` as the map holds it: its data sealed. Off, a clone.
fn sealed(sealer: &Sealer, id: &Handle, plain: &Record) -> Result<Record> {
    if !sealer.is_on() {
        return Ok(plain.clone());
    }
    let data = sealer.seal(&plain.data, id)?;
    Ok(Record {
        data: Arc::from(data),
        ..plain.clone()
    })
}

/// A panic while a shard was locked leaves a valid map (every change is one `BTreeMap` call),
/// so a poisoned lock is used as it is rather than taking the store down.
fn read(shard: &Shard) -> RwLockReadGuard<'_, BTreeMap<Handle, Record>> {
    shard.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shard: &Shard) -> RwLockWriteGuard<'_, BTreeMap<Handle, Record>> {
    shard.write().unwrap_or_else(PoisonError::into_inner)
}

/// Shard locks a listing takes (and entries it visits) between yields. At a few tens of
/// nanoseconds each, a page of 1000 gives its async worker back every few microseconds,
/// so requests on the same worker wait for a slice of a page, not for the page.
const SLICE: usize = 64;

/// Where a listing is: the shard it is reading and the last id it visited.
struct Position {
    shard: usize,
    after: Option<Handle>,
}

enum Step {
    /// The page is full.
    Full,
    /// No id after the ones visited.
    End,
    /// The slice's budget is spent; the page needs more.
    Continue,
}

impl MemoryStore {
    fn shard(&self, id: &Handle) -> &Shard {
        &self.shards[shard_of(id)]
    }

    /// One slice of a listing, synchronously: visits up to [`SLICE`] ids and shards after
    /// `at`, adding the live sessions to `out` until it holds `limit`. Each shard's read lock is
    /// held only while its part of the slice is copied.
    fn slice(
        &self,
        at: &mut Position,
        out: &mut Vec<(Handle, Record)>,
        limit: usize,
        now: u64,
    ) -> Step {
        let mut budget = SLICE;
        while at.shard < SHARDS && budget > 0 && out.len() < limit {
            let map = read(&self.shards[at.shard]);
            let lower = at.after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut exhausted = true;
            for (id, r) in map.range((lower, Bound::Unbounded)) {
                if budget == 0 || out.len() == limit {
                    exhausted = false;
                    break;
                }
                budget -= 1;
                // Every later shard's ids sort after this one, so it stays a valid bound.
                at.after = Some(*id);
                if r.is_live(now)
                    && let Some(r) = opened(&self.sealer, id, r)
                {
                    out.push((*id, r));
                }
            }
            drop(map);
            if exhausted {
                at.shard += 1;
                budget = budget.saturating_sub(1);
            }
        }
        if out.len() == limit {
            Step::Full
        } else if at.shard == SHARDS {
            Step::End
        } else {
            Step::Continue
        }
    }

    /// Whether any id sorts after `at.after`: the first non-empty shard from `at.shard` on
    /// answers, so this locks more than one shard only where the store is sparse.
    fn any_after(&self, at: &Position) -> bool {
        let lower = at.after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        self.shards[at.shard.min(SHARDS)..].iter().any(|shard| {
            read(shard)
                .range((lower, Bound::Unbounded))
                .next()
                .is_some()
        })
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, id: &Handle) -> Result<Option<Record>> {
        let now = now_ms();
        Ok(read(self.shard(id))
            .get(id)
            .filter(|r| r.is_live(now))
            .and_then(|r| opened(&self.sealer, id, r)))
    }

    /// A read lock for the common case; only a record found expired takes the write lock,
    /// and is removed under it if it is still the expired one.
    async fn load_or_expired(&self, id: &Handle) -> Result<Loaded> {
        let now = now_ms();
        let live = |r: &Record| opened(&self.sealer, id, r).map_or(Loaded::Missing, Loaded::Live);
        match read(self.shard(id)).get(id) {
            None => return Ok(Loaded::Missing),
            Some(r) if r.is_live(now) => return Ok(live(r)),
            Some(_) => {}
        }
        let mut map = write(self.shard(id));
        Ok(match map.entry(*id) {
            Entry::Occupied(e) if !e.get().is_live(now) => {
                let old = e.remove();
                let users = self.users.as_deref();
                let old = users.and_then(|_| opened(&self.sealer, id, &old));
                if let Some(users) = users {
                    users.change(id, old.as_ref(), None);
                }
                Loaded::Expired {
                    user: users.zip(old.as_ref()).and_then(|(u, old)| u.user(old)),
                }
            }
            // A create took the dead id between the two locks.
            Entry::Occupied(e) => live(e.get()),
            Entry::Vacant(_) => Loaded::Missing,
        })
    }

    async fn create(&self, id: &Handle, record: &Record) -> Result<bool> {
        let now = now_ms();
        let stored = sealed(&self.sealer, id, record)?;
        let mut map = write(self.shard(id));
        match map.entry(*id) {
            Entry::Occupied(mut e) if !e.get().is_live(now) => {
                let old = e.insert(stored);
                if let Some(users) = &self.users {
                    let old = opened(&self.sealer, id, &old);
                    users.change(id, old.as_ref(), Some(record));
                }
                Ok(true)
            }
            Entry::Occupied(_) => Ok(false),
            Entry::Vacant(e) => {
                e.insert(stored);
                if let Some(users) = &self.users {
                    users.change(id, None, Some(record));
                }
                Ok(true)
            }
        }
    }

    async fn update(&self, id: &Handle, update: &Update) -> Result<Option<Record>> {
        let mut map = write(self.shard(id));
        let Some(entry) = map.get_mut(id) else {
            return Ok(None);
        };
        if !entry.is_live(update.now) {
            return Ok(None);
        }
        let Some(current) = opened(&self.sealer, id, entry) else {
            return Ok(None);
        };
        let next = update.apply(&current)?;
        *entry = if Arc::ptr_eq(&current.data, &next.data) {
            // A touch: the data held (sealed or not) is still the data.
            Record {
                data: entry.data.clone(),
                ..next.clone()
            }
        } else {
            sealed(&self.sealer, id, &next)?
        };
        if let Some(users) = &self.users {
            users.change(id, Some(&current), Some(&next));
        }
        Ok(Some(next))
    }

    async fn delete(&self, id: &Handle) -> Result<bool> {
        let now = now_ms();
        let mut map = write(self.shard(id));
        let removed = map.remove(id);
        if let (Some(users), Some(old)) = (&self.users, &removed) {
            users.change(id, opened(&self.sealer, id, old).as_ref(), None);
        }
        Ok(removed.is_some_and(|r| r.is_live(now)))
    }

    /// O(page + log n), on the async worker (it never waits on anything), yielding between
    /// slices so that a large page does not hold the worker.
    async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page> {
        let after = super::handle_cursor(cursor)?;
        let mut page = Page::default();
        if limit == 0 {
            return Ok(page);
        }
        let now = now_ms();
        let mut at = Position {
            shard: after.as_ref().map_or(0, shard_of),
            after,
        };
        page.sessions.reserve(limit.min(1024));
        loop {
            match self.slice(&mut at, &mut page.sessions, limit, now) {
                Step::Full => {
                    // `at.after` is the page's last id: the page filled as it was added.
                    if self.any_after(&at) {
                        page.next = at.after.map(|id| id.to_string());
                    }
                    return Ok(page);
                }
                Step::End => return Ok(page),
                Step::Continue => tokio::task::yield_now().await,
            }
        }
    }

    /// The index's ids, each read back under its shard lock and kept only if live and still
    /// the user's.
    async fn user_sessions(&self, user: &str) -> Result<Vec<(Handle, Record)>> {
        let Some(users) = &self.users else {
            return Err(super::StoreError::NoUserIndex);
        };
        let now = now_ms();
        Ok(users
            .index
            .ids(user)
            .into_iter()
            .filter_map(|id| {
                let record = opened(&self.sealer, &id, read(self.shard(&id)).get(&id)?)?;
                crate::store::users::holds(&users.key, &record, user, now).then_some((id, record))
            })
            .collect())
    }

    /// One read lock per shard, each held for a length read: cheap enough for a scrape.
    fn count(&self) -> Option<u64> {
        let n: usize = self.shards.iter().map(|s| read(s).len()).sum();
        u64::try_from(n).ok()
    }

    async fn alias(&self, old: &Handle) -> Result<Option<Alias>> {
        let now = now_ms();
        Ok(self.aliases().get(old).filter(|a| a.is_live(now)).cloned())
    }

    async fn put_alias(&self, alias: &Alias) -> Result<()> {
        self.aliases().insert(alias.old, alias.clone());
        Ok(())
    }

    async fn drop_alias(&self, old: &Handle, new: &Handle) -> Result<()> {
        let mut aliases = self.aliases();
        if aliases.get(old).is_some_and(|a| a.new == *new) {
            aliases.remove(old);
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            never_waits: true,
            expires_by_itself: false,
            lists_in_order: true,
        }
    }

    /// Walks the whole store, so it runs on the blocking pool: at a million sessions that is
    /// tens of milliseconds an async worker must not spend. Shards are locked one at a time,
    /// each for a few microseconds.
    async fn prune_reporting(&self, now: u64, expired: Option<&ExpiredSink>) -> Result<u64> {
        let shards = self.shards.clone();
        let users = self.users.clone();
        let expired = expired.cloned();
        let sealer = self.sealer.clone();
        self.aliases().retain(|_, a| a.is_live(now));
        tokio::task::spawn_blocking(move || {
            let mut removed = 0u64;
            for shard in shards.iter() {
                let mut map = write(shard);
                let before = map.len();
                map.retain(|id, r| {
                    let live = r.is_live(now);
                    if !live {
                        let r = users.as_ref().and_then(|_| opened(&sealer, id, r));
                        if let Some(users) = &users {
                            users.change(id, r.as_ref(), None);
                        }
                        if let Some(report) = &expired {
                            let user = users.as_ref().zip(r.as_ref()).and_then(|(u, r)| u.user(r));
                            report(id, user.as_deref());
                        }
                    }
                    live
                });
                removed += (before - map.len()) as u64;
            }
            removed
        })
        .await
        .map_err(super::StoreError::join)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The invariant listing rests on: shard order is id order.
    #[test]
    fn shards_are_id_ranges_in_order() {
        let mut sorted = ALPHABET.to_vec();
        sorted.sort_unstable();
        assert_eq!(&sorted[..], &ALPHABET[..], "ALPHABET is in byte order");
        let mut ids: Vec<Handle> = (0..2000).map(|_| Handle::generate().unwrap()).collect();
        for (a, b) in [("--", "-0"), ("-z", "0-"), ("zy", "zz"), ("Z_", "_-")] {
            let pad = "A".repeat(41);
            ids.push(Handle::parse(&format!("{a}{pad}")).unwrap());
            ids.push(Handle::parse(&format!("{b}{pad}")).unwrap());
        }
        ids.sort();
        for pair in ids.windows(2) {
            assert!(shard_of(&pair[0]) <= shard_of(&pair[1]), "{:?}", pair);
        }
        let last = Handle::parse(&format!("{}w", "z".repeat(42))).unwrap();
        assert_eq!(shard_of(&last), SHARDS - 1);
        let first = Handle::parse(&format!("{}A", "-".repeat(42))).unwrap();
        assert_eq!(shard_of(&first), 0);
    }

    /// A page that ends where the store is sparse still says whether more follow, and a
    /// walk over a nearly empty store (4096 shards, a handful of ids) sees every session once.
    #[tokio::test]
    async fn pages_span_empty_shards() {
        let store = MemoryStore::default();
        let now = now_ms();
        let record = Record {
            data: Arc::from("{}"),
            created_at: now,
            updated_at: now,
            expires_at: now + 60_000,
            version: 1,
            meta: Default::default(),
        };
        let mut want: Vec<Handle> = ["--", "-z", "V0", "zz"]
            .iter()
            .map(|p| Handle::parse(&format!("{p}{}A", "a".repeat(40))).unwrap())
            .collect();
        for id in &want {
            assert!(store.create(id, &record).await.unwrap());
        }
        want.sort();
        for limit in [1, 2, 3, 4, 5] {
            let (mut seen, mut cursor) = (Vec::new(), None::<String>);
            loop {
                let page = store.list(cursor.as_deref(), limit).await.unwrap();
                seen.extend(page.sessions.iter().map(|(id, _)| *id));
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, want, "pages of {limit}");
        }
        // A full last page says no more follow.
        let page = store.list(None, 4).await.unwrap();
        assert_eq!(page.sessions.len(), 4);
        assert!(page.next.is_none());
    }
}
