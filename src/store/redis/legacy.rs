//! Sessions a release before handles wrote: hashes at `{key_prefix}{id}` and user sets whose
//! members are ids. Each one moves under its handle on its first load ([`RedisStore::adopt`],
//! behind [`SessionStore::adopt_legacy`](crate::store::SessionStore::adopt_legacy)), or all at
//! once with `sessions migrate` ([`RedisStore::migrate`]), which ends by setting the marker
//! (`{key_prefix}schema` = `handles`) that a store reads at open to skip the lookup for good.
//!
//! An id here only ever names the old key or the old index member, in a command: it is never
//! logged, never in an error, never written anywhere, and after a move neither holds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::{Script, Value};

use super::conn::{Key, call_err};
use super::script::{Cas, int_reply, key_expiry, run};
use super::{GRACE, MAX_ATTEMPTS, RedisStore};
use crate::session::{Handle, SessionId};
use crate::store::{Loaded, Record, Result, StoreError, now_ms};

/// The marker's key, after the prefix, and its value once every old key has moved.
const MARKER: &str = "schema";
const MARKER_VALUE: &str = "handles";

/// The move, on one server, in one atomic step. KEYS[1]: the old key (the id's), KEYS[2]: the
/// handle's, KEYS[3]: the record's user's set (KEYS[1] again without a user index). ARGV[1] =
/// '1': the index is kept; ARGV[2]: the id, ARGV[3]: the handle, ARGV[4]: the record's expiry
/// (the set's, as REINDEX pushes it), ARGV[5]: the version the caller read ('' for none yet),
/// ARGV[6]: now, ARGV[7]: the key's expiry if the old key had none.
///
/// Returns `{code, r}`: 0 the old key is gone (`r`: the handle's live record, if any: another
/// caller may have just moved it); 1 moved; 2 the handle already held a live session, which
/// stays (`r`), and the old key is deleted; 3 the old key holds another version than ARGV[5]
/// (`r`: what it holds: read it and call again); 4 it expired since it was read.
const ADOPT: &str = concat!(
    super::script::set_add!(),
    r"
local function live(key)
  local e = redis.call('HGET', key, 'e')
  if e then return tonumber(e) > tonumber(ARGV[6]) end
  return redis.call('EXISTS', key) == 1
end
local v = redis.call('HGET', KEYS[1], 'v')
if not v then
  if live(KEYS[2]) then return {0, redis.call('HGET', KEYS[2], 'r')} end
  return {0, false}
end
local r = redis.call('HGET', KEYS[1], 'r')
if v ~= ARGV[5] then return {3, r} end
local e = redis.call('HGET', KEYS[1], 'e')
if e and tonumber(e) <= tonumber(ARGV[6]) then return {4, false} end
if live(KEYS[2]) then
  redis.call('DEL', KEYS[1])
  if ARGV[1] == '1' then redis.call('SREM', KEYS[3], ARGV[2]) end
  return {2, redis.call('HGET', KEYS[2], 'r')}
end
if e then
  redis.call('HSET', KEYS[2], 'v', v, 'r', r, 'e', e)
else
  redis.call('HSET', KEYS[2], 'v', v, 'r', r)
end
local at = redis.call('PEXPIRETIME', KEYS[1])
if at < 0 then at = ARGV[7] end
redis.call('PEXPIREAT', KEYS[2], at)
redis.call('DEL', KEYS[1])
if ARGV[1] == '1' then
  redis.call('SREM', KEYS[3], ARGV[2])
  set_add(KEYS[3], ARGV[3], ARGV[4])
end
return {1, false}
"
);

/// Whether the store still looks for old keys, and the script it moves them with.
pub(super) struct Legacy {
    lookups: AtomicBool,
    adopt: Script,
}

impl Legacy {
    /// `migrated`: the marker was found at open, so no old key is left to look for.
    pub(super) fn new(migrated: bool) -> Legacy {
        Legacy {
            lookups: AtomicBool::new(!migrated),
            adopt: Script::new(ADOPT),
        }
    }

    pub(super) fn lookups(&self) -> bool {
        self.lookups.load(Ordering::Relaxed)
    }
}

/// What `sessions migrate` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// Live sessions moved under their handles.
    pub moved: u64,
    /// Old keys holding an expired session, removed (as a load would have).
    pub expired: u64,
    /// Old keys removed without a move: unreadable records (which count as missing), or
    /// copies whose session already lived under its handle.
    pub dropped: u64,
    /// User-set members that were ids, rewritten to handles.
    pub members: u64,
}

/// One try at a move.
enum Step {
    Done(Loaded),
    Again,
}

/// The script's `{code, r}`.
fn adopt_reply(value: Value) -> Result<(i64, Option<Vec<u8>>)> {
    redis::from_redis_value(value).map_err(|e| call_err("adopt script")(redis::RedisError::from(e)))
}

impl RedisStore {
    /// Whether the marker is set: every old key has moved (read once, at open).
    pub(super) async fn marker_set(conn: &mut super::conn::Conn, prefix: &str) -> Result<bool> {
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}{MARKER}"))
            .query_async(conn)
            .await
            .map_err(call_err("GET (schema marker)"))?;
        Ok(value.as_deref() == Some(MARKER_VALUE))
    }

    /// [`SessionStore::adopt_legacy`](crate::store::SessionStore::adopt_legacy): moves the
    /// session kept under `id` to `handle`, or reports it expired (removed, exactly once), or
    /// finds that a concurrent caller moved it first. `Missing` at once when the marker says
    /// nothing is left to move.
    pub(super) async fn adopt(&self, id: &SessionId, handle: &Handle) -> Result<Loaded> {
        if !self.legacy.lookups() {
            return Ok(Loaded::Missing);
        }
        let old = Key::legacy(&self.prefix, id);
        // One server: the script's first call reads the old key (and the handle's, should a
        // concurrent caller have just moved it), so a cookie nobody knows costs one round trip.
        let mut seen: Option<Record> = None;
        for _ in 0..MAX_ATTEMPTS {
            let record = match seen.take() {
                Some(record) => record,
                None if self.is_cluster() => match self.get_bytes(old).await? {
                    Some(bytes) => match Record::from_stored(&bytes, handle, &self.sealer) {
                        Some(record) => record,
                        None => return Ok(Loaded::Missing),
                    },
                    None => return self.found_under(handle).await,
                },
                None => match self.adopt_script(old, id, handle, None).await? {
                    (3, Some(bytes)) => match Record::from_stored(&bytes, handle, &self.sealer) {
                        Some(record) => record,
                        None => return Ok(Loaded::Missing),
                    },
                    (code, bytes) => return self.answer(code, bytes, handle, None),
                },
            };
            let now = now_ms();
            if !record.is_live(now) {
                if self.expire(old, id.as_str(), &record, now).await? {
                    return Ok(Loaded::Expired {
                        user: self.users.as_ref().and_then(|k| k.user_of(&record.data)),
                    });
                }
                continue;
            }
            let step = if self.is_cluster() {
                self.adopt_in_steps(old, id, handle, &record).await?
            } else {
                match self.adopt_script(old, id, handle, Some(&record)).await? {
                    (3, Some(bytes)) => {
                        seen = Record::from_stored(&bytes, handle, &self.sealer);
                        if seen.is_none() {
                            return Ok(Loaded::Missing);
                        }
                        Step::Again
                    }
                    (4, _) => Step::Again,
                    (code, bytes) => Step::Done(self.answer(code, bytes, handle, Some(record))?),
                }
            };
            if let Step::Done(loaded) = step {
                return Ok(loaded);
            }
        }
        Err(StoreError::Backend(
            format!(
                "moving a session to its handle lost {MAX_ATTEMPTS} races with concurrent writes"
            )
            .into(),
        ))
    }

    /// The script's answers that end a move: `moved` is the record it moved (code 1).
    fn answer(
        &self,
        code: i64,
        bytes: Option<Vec<u8>>,
        handle: &Handle,
        moved: Option<Record>,
    ) -> Result<Loaded> {
        let now = now_ms();
        let under_handle = || {
            bytes
                .as_deref()
                .and_then(|b| Record::from_stored(b, handle, &self.sealer))
                .filter(|r| r.is_live(now))
                .map_or(Loaded::Missing, Loaded::Live)
        };
        match (code, moved) {
            (0 | 2, _) => Ok(under_handle()),
            (1, Some(record)) => Ok(Loaded::Live(record)),
            // The old key changed but could not be read back, or expired at the first read.
            (3 | 4, None) => Ok(Loaded::Missing),
            _ => Err(StoreError::Unexpected(format!(
                "reply from the adopt script: {code}"
            ))),
        }
    }

    /// One call of the [`ADOPT`] script; `expected`: the record read before (`None` on the
    /// first call, which only reads).
    async fn adopt_script(
        &self,
        old: Key<'_>,
        id: &SessionId,
        handle: &Handle,
        expected: Option<&Record>,
    ) -> Result<(i64, Option<Vec<u8>>)> {
        let user = expected.and_then(|r| self.users.as_ref().and_then(|k| k.user_of(&r.data)));
        let script = &self.legacy.adopt;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(3)
            .arg(old)
            .arg(Key::of(&self.prefix, handle));
        match &user {
            Some(u) => cmd.arg(self.user_set(u)),
            None => cmd.arg(old),
        };
        cmd.arg(if user.is_some() { "1" } else { "0" })
            .arg(id.as_str())
            .arg(handle.as_str())
            .arg(expected.map_or(0, |r| r.expires_at))
            .arg(expected.map_or(String::new(), |r| r.version.to_string()))
            .arg(now_ms())
            .arg(expected.map_or(GRACE.as_millis() as u64, key_expiry));
        let value = run(&mut self.conn(), script, &cmd)
            .await
            .map_err(call_err("adopt script"))?;
        adopt_reply(value)
    }

    /// Redis Cluster, where the two keys live in different slots: create under the handle
    /// (create-if-absent), then compare-and-delete the old key. Whoever created the copy
    /// decides: if the old key changed or vanished meanwhile, the copy is deleted again (a
    /// session destroyed under its old key must not live on), and a caller that finds the
    /// handle taken uses that session and leaves the old key to its creator. The user sets
    /// change by the cluster's second calls, as for every write.
    async fn adopt_in_steps(
        &self,
        old: Key<'_>,
        id: &SessionId,
        handle: &Handle,
        record: &Record,
    ) -> Result<Step> {
        if !self
            .create_key(Key::of(&self.prefix, handle), handle, record)
            .await?
        {
            return Ok(Step::Done(self.found_under(handle).await?));
        }
        match self.cas_del(old, id.as_str(), handle, record).await? {
            Cas::Done => Ok(Step::Done(Loaded::Live(record.clone()))),
            Cas::Gone | Cas::Changed(_) => {
                self.delete_indexed(handle).await?;
                Ok(Step::Again)
            }
        }
    }

    /// What the handle holds now: another caller may have moved the session a moment ago.
    async fn found_under(&self, handle: &Handle) -> Result<Loaded> {
        Ok(self
            .get_live(handle, now_ms())
            .await?
            .map_or(Loaded::Missing, Loaded::Live))
    }

    /// `sessions migrate`: moves every session still under its id (the move of a first load, on
    /// every primary in turn), rewrites every user-set member that is an id to its handle,
    /// then sets the marker, so that stores opened from now on skip the lookup. Safe to run
    /// while proxies serve (each move is the one a load makes), and to run again.
    pub async fn migrate(&self) -> Result<Migrated> {
        let mut done = Migrated::default();
        let mut left = Vec::new();
        for key in self.scan_all(&self.pattern, "hash").await? {
            let Some(id) = key.strip_prefix(&self.prefix).and_then(SessionId::parse) else {
                continue;
            };
            match self.adopt(&id, &id.handle()).await? {
                Loaded::Live(_) => done.moved += 1,
                Loaded::Expired { .. } => done.expired += 1,
                Loaded::Missing => {}
            }
            if self.exists(Key::legacy(&self.prefix, &id)).await? {
                left.push(id);
            }
        }
        if !left.is_empty() {
            // Still there after its move: unreadable, or (on a cluster) shadowed by a copy
            // under its handle that a proxy stopped before deleting the old key. Give a move
            // in flight in another proxy time to finish first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            for id in &left {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(Key::legacy(&self.prefix, id));
                let removed =
                    int_reply(cmd.query_async(&mut self.conn()).await).map_err(call_err("DEL"))?;
                done.dropped += u64::from(removed == 1);
            }
        }
        let sets = format!("{}user:*", super::conn::glob_escape(&self.prefix));
        for set in self.scan_all(&sets, "set").await? {
            done.members += self.rewrite_members(&set).await?;
        }
        redis::cmd("SET")
            .arg(format!("{}{MARKER}", self.prefix))
            .arg(MARKER_VALUE)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(call_err("SET (schema marker)"))?;
        self.legacy.lookups.store(false, Ordering::Relaxed);
        Ok(done)
    }

    /// Every key matching `pattern` of type `kind`, on every primary.
    async fn scan_all(&self, pattern: &str, kind: &str) -> Result<Vec<String>> {
        let mut all = Vec::new();
        for node in self.conn.scan_nodes().await? {
            let mut cursor = 0;
            loop {
                let reply = self.conn.scan(node, cursor, pattern, 1000, kind).await?;
                let (next, keys): (u64, Vec<String>) = redis::from_redis_value(reply)
                    .map_err(|e| call_err("SCAN")(redis::RedisError::from(e)))?;
                all.extend(keys);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    async fn exists(&self, key: Key<'_>) -> Result<bool> {
        redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut self.conn())
            .await
            .map_err(call_err("EXISTS"))
    }

    /// Rewrites the members of `set` that are ids to their handles: the handle first, so the
    /// set never lacks the session. Returns how many.
    async fn rewrite_members(&self, set: &str) -> Result<u64> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(set)
            .query_async(&mut self.conn())
            .await
            .map_err(call_err("SMEMBERS"))?;
        let mut rewritten = 0;
        for id in members.iter().filter_map(|m| SessionId::parse(m)) {
            let mut cmd = redis::cmd("SADD");
            cmd.arg(set).arg(id.handle().as_str());
            int_reply(cmd.query_async(&mut self.conn()).await).map_err(call_err("SADD"))?;
            let mut cmd = redis::cmd("SREM");
            cmd.arg(set).arg(id.as_str());
            int_reply(cmd.query_async(&mut self.conn()).await).map_err(call_err("SREM"))?;
            rewritten += 1;
        }
        Ok(rewritten)
    }
}
