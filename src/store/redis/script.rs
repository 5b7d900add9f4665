//! The Lua scripts that make every write atomic, and the one way to call them: an `EVALSHA`
//! built by hand, sent again after loading the script if the server does not know it. Each
//! script touches one session key and starts with the user index's part; on Redis Cluster,
//! whose user sets live in other slots, the index is changed by a second call. A write's
//! arguments are read by position (`ARGV[n]`), so each call is built next to its script.

use redis::aio::ConnectionLike;
use redis::{
    Cmd, ErrorKind, RedisError, RedisWrite, Script, ServerErrorKind, ToRedisArgs, ToSingleRedisArg,
    Value,
};

use super::conn::{Conn, Key, call_err};
use super::{GRACE, RedisStore};
use crate::session::Handle;
use crate::store::{Record, Result, Sealer, StoreError, now_ms};

/// The Lua function every script that adds a session to its user's set calls: the member
/// goes in, and the set's expiry is pushed to `at` (unix ms) if that is later, so the set
/// lives as long as its latest session. A macro, so scripts can `concat!` it.
macro_rules! set_add {
    () => {
        r"
local function set_add(set, member, at)
  redis.call('SADD', set, member)
  if redis.call('PTTL', set) < 0 then
    redis.call('PEXPIREAT', set, at)
  else
    redis.call('PEXPIREAT', set, at, 'GT')
  end
end
"
    };
}
pub(super) use set_add;

/// The index part every script starts with. KEYS[2]: the old user's set, KEYS[3]: the new
/// user's; ARGV[1] = '1': remove the member from KEYS[2]; ARGV[2] = '1': add it to KEYS[3] and
/// push that set's expiry to ARGV[4] (unix ms) if later; ARGV[3]: the member (the session's
/// handle; a legacy id only when a record written before handles leaves its old key). With both flags '0' (no
/// user index, or Redis Cluster) it does nothing, and KEYS[2] and KEYS[3] repeat KEYS[1].
pub(super) const REINDEX: &str = concat!(
    set_add!(),
    r"
local function reindex()
  if ARGV[1] == '1' then redis.call('SREM', KEYS[2], ARGV[3]) end
  if ARGV[2] == '1' then set_add(KEYS[3], ARGV[3], ARGV[4]) end
end
"
);

/// The key's `PEXPIREAT`: [`GRACE`] past the record's expiry.
pub(super) fn key_expiry(record: &Record) -> u64 {
    record.expires_at.saturating_add(GRACE.as_millis() as u64)
}

/// `HSET` + `PEXPIREAT` if no live session holds the key. KEYS[1]: the session; ARGV[5..]:
/// version, record JSON, its expiry, the key's expiry (unix ms), now. A key whose field `e`
/// (the record's expiry) has passed is dead and is written over; a key without `e` (written
/// before it existed, expiring by its TTL) counts as live. Returns 1 if written, 0 if taken.
const CREATE: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if e then
  if tonumber(e) > tonumber(ARGV[9]) then return 0 end
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[5], 'r', ARGV[6], 'e', ARGV[7])
redis.call('PEXPIREAT', KEYS[1], ARGV[8])
reindex()
return 1
";

/// Compare-and-set. KEYS[1]: the session; ARGV[5..]: expected version, record JSON, its
/// version, its expiry, the key's expiry (unix ms), now. Returns 1 if written, nil if the key
/// is gone or holds a dead session (never written over: that would resurrect it), else the
/// current record.
const CAS_SET: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return false end
local e = redis.call('HGET', KEYS[1], 'e')
if e and tonumber(e) <= tonumber(ARGV[10]) then return false end
if v ~= ARGV[5] then return redis.call('HGET', KEYS[1], 'r') end
redis.call('HSET', KEYS[1], 'v', ARGV[7], 'r', ARGV[6], 'e', ARGV[8])
redis.call('PEXPIREAT', KEYS[1], ARGV[9])
reindex()
return 1
";

/// Compare-and-delete. KEYS[1]: the session; ARGV[5]: expected version. Returns 1 if deleted,
/// nil if the key is gone, else the current record.
const CAS_DEL: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return false end
if v ~= ARGV[5] then return redis.call('HGET', KEYS[1], 'r') end
redis.call('DEL', KEYS[1])
reindex()
return 1
";

/// The removal of an expired session by the load that found it. KEYS[1]: the session;
/// ARGV[5..]: the version read, now. Deletes the key only if it still holds that version and
/// its `e` has passed, so of several loaders (in any number of proxies) exactly one gets 1.
const EXPIRE: &str = r"
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[5] then return 0 end
local e = redis.call('HGET', KEYS[1], 'e')
if not e or tonumber(e) > tonumber(ARGV[6]) then return 0 end
redis.call('DEL', KEYS[1])
reindex()
return 1
";

/// `DEL` that says whether it removed a live session. KEYS[1]: the session; ARGV[1]: now.
const DEL_LIVE: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
if e and tonumber(e) <= tonumber(ARGV[1]) then return 0 end
return 1
";

/// Redis Cluster's second call: the index part alone, on one user's set (all three keys).
const INDEX_ONLY: &str = r"
reindex()
return 1
";

/// The scripts a store calls, each (but `DEL_LIVE`, which never changes the index) with the
/// index part in front.
pub(super) struct Scripts {
    create: Script,
    cas_set: Script,
    cas_del: Script,
    expire: Script,
    del_live: Script,
    index_only: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            create: Script::new(&format!("{REINDEX}{CREATE}")),
            cas_set: Script::new(&format!("{REINDEX}{CAS_SET}")),
            cas_del: Script::new(&format!("{REINDEX}{CAS_DEL}")),
            expire: Script::new(&format!("{REINDEX}{EXPIRE}")),
            del_live: Script::new(DEL_LIVE),
            index_only: Script::new(&format!("{REINDEX}{INDEX_ONLY}")),
        }
    }
}

/// How a write moves its id in the user index: out of `old`'s set, into `new`'s (whose
/// expiry follows the session's).
#[derive(Debug, Default)]
pub(super) struct Reindex {
    old: Option<String>,
    new: Option<String>,
    expires_at: u64,
}

impl Reindex {
    fn removes(&self) -> bool {
        self.old.is_some() && self.old != self.new
    }
}

/// A record as [`Record::to_stored_json`] spells it (its data sealed when the store seals),
/// written straight into the command that stores it: no `String` of its own to build, copy
/// into the command and free.
struct RecordJson<'a> {
    record: &'a Record,
    /// The data's JSON value: the data itself, or its sealed form as a string.
    data: std::borrow::Cow<'a, str>,
    /// The meta's ([`Record::meta_json`]), if any.
    meta: Option<String>,
}

impl<'a> RecordJson<'a> {
    fn new(record: &'a Record, sealer: &Sealer, id: &Handle) -> Result<Self> {
        Ok(RecordJson {
            record,
            data: sealer.seal_json(&record.data, id)?,
            meta: record.meta_json(sealer, Some(id))?,
        })
    }

    /// Its length, give or take the digits of the numbers: the command's capacity hint.
    fn len_hint(&self) -> usize {
        self.data.len() + self.meta.as_ref().map_or(0, |m| m.len() + 8) + 128
    }
}

impl ToRedisArgs for RecordJson<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        for piece in self
            .record
            .json_pieces_with(&self.data, self.meta.as_deref())
        {
            // Writing into the command's buffer cannot fail.
            let _ = arg.write_all(piece.as_str().as_bytes());
        }
    }
}

impl ToSingleRedisArg for RecordJson<'_> {}

/// A script's integer reply, as redis-rs's `invoke_async::<i64>` reads it.
pub(super) fn int_reply(reply: Result<Value, RedisError>) -> Result<i64, RedisError> {
    Ok(redis::from_redis_value(reply?)?)
}

/// The outcome of a compare-and-set script.
pub(super) enum Cas {
    Done,
    Gone,
    Changed(Record),
}

impl Cas {
    /// The script's reply about `id`; a changed record whose sealed data does not open (the
    /// sealer counted it) is as good as gone to this caller.
    pub(super) fn from_value(value: Value, sealer: &Sealer, id: &Handle) -> Result<Cas> {
        match value {
            Value::Nil => Ok(Cas::Gone),
            Value::Int(1) => Ok(Cas::Done),
            Value::BulkString(bytes) => Ok(match Record::from_sealed_json(&bytes, sealer, id)? {
                Some(record) => Cas::Changed(record),
                None => Cas::Gone,
            }),
            other => Err(StoreError::Unexpected(format!(
                "reply from the compare-and-set script: {other:?}"
            ))),
        }
    }
}

/// Runs `cmd`, an `EVALSHA` of `script` (made by [`RedisStore::invocation`], or by hand for a
/// script without the index part's arguments), on `conn`: every script call goes through here.
/// A server that does not know the script yet (first call, restart, `SCRIPT FLUSH`, another
/// node) is sent it once and the call repeated, as redis-rs's `invoke_async` would; building
/// the command here instead writes every argument straight into one buffer.
pub(super) async fn run(
    conn: &mut impl ConnectionLike,
    script: &Script,
    cmd: &Cmd,
) -> Result<Value, RedisError> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        result => result,
    }
}

/// The `EVALSHA` of [`INDEX_ONLY`] on one user's `set` (as all three keys), with the index
/// part's flags `(rem, add)`.
fn index_only_call(
    script: &Script,
    set: &str,
    (rem, add): (&str, &str),
    member: &str,
    expires_at: u64,
) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash())
        .arg(3)
        .arg(set)
        .arg(set)
        .arg(set)
        .arg(rem)
        .arg(add)
        .arg(member)
        .arg(expires_at);
    cmd
}

impl RedisStore {
    /// Writes `record` at `key`, the key of `handle`, if no live session holds it: `false` if
    /// one does. The user index holds it as its handle; the data is sealed for that handle.
    pub(super) async fn create_key(
        &self,
        key: Key<'_>,
        handle: &Handle,
        record: &Record,
    ) -> Result<bool> {
        let member = handle.as_str();
        let plan = self.reindex(None, Some(record));
        let json = RecordJson::new(record, &self.sealer, handle)?;
        let mut cmd = self.invocation(&self.scripts.create, key, member, &plan, 5, json.len_hint());
        cmd.arg(record.version)
            .arg(json)
            .arg(record.expires_at)
            .arg(key_expiry(record))
            .arg(now_ms());
        let written = int_reply(run(&mut self.conn(), &self.scripts.create, &cmd).await)
            .map_err(call_err("create script"))?;
        if written == 1 {
            self.reindex_cluster(member, &plan).await;
        }
        Ok(written == 1)
    }

    /// Writes `record` over `base` (at `expected`, its version) at `key`, the key of `handle`,
    /// if it is still there.
    pub(super) async fn cas_set(
        &self,
        key: Key<'_>,
        handle: &Handle,
        base: &Record,
        record: &Record,
    ) -> Result<Cas> {
        let member = handle.as_str();
        let plan = self.reindex(Some(base), Some(record));
        let json = RecordJson::new(record, &self.sealer, handle)?;
        let mut cmd = self.invocation(
            &self.scripts.cas_set,
            key,
            member,
            &plan,
            6,
            json.len_hint(),
        );
        cmd.arg(base.version)
            .arg(json)
            .arg(record.version)
            .arg(record.expires_at)
            .arg(key_expiry(record))
            .arg(now_ms());
        let value = run(&mut self.conn(), &self.scripts.cas_set, &cmd)
            .await
            .map_err(call_err("compare-and-set script"))?;
        let cas = Cas::from_value(value, &self.sealer, handle)?;
        if let Cas::Done = cas {
            self.reindex_cluster(member, &plan).await;
        }
        Ok(cas)
    }

    /// Deletes `current` if it is still there unchanged, and `member` from its user's set. A
    /// record the script answers with is opened for `handle` (the session's handle; a key of
    /// the release before handles holds only plain records).
    pub(super) async fn cas_del(
        &self,
        key: Key<'_>,
        member: &str,
        handle: &Handle,
        current: &Record,
    ) -> Result<Cas> {
        let plan = self.reindex(Some(current), None);
        let mut cmd = self.invocation(&self.scripts.cas_del, key, member, &plan, 1, 0);
        cmd.arg(current.version);
        let value = run(&mut self.conn(), &self.scripts.cas_del, &cmd)
            .await
            .map_err(call_err("compare-and-delete script"))?;
        let cas = Cas::from_value(value, &self.sealer, handle)?;
        if let Cas::Done = cas {
            self.reindex_cluster(member, &plan).await;
        }
        Ok(cas)
    }

    /// Removes `current`, found dead at `now`, if `key` still holds it (and `member` from its
    /// user's set): `true` for the one caller that did.
    pub(super) async fn expire(
        &self,
        key: Key<'_>,
        member: &str,
        current: &Record,
        now: u64,
    ) -> Result<bool> {
        let plan = self.reindex(Some(current), None);
        let mut cmd = self.invocation(&self.scripts.expire, key, member, &plan, 2, 0);
        cmd.arg(current.version).arg(now);
        let removed = int_reply(run(&mut self.conn(), &self.scripts.expire, &cmd).await)
            .map_err(call_err("expire script"))?;
        if removed == 1 {
            self.reindex_cluster(member, &plan).await;
        }
        Ok(removed == 1)
    }

    /// `DEL`; `true` if the key held a live session.
    pub(super) async fn del(&self, key: Key<'_>) -> Result<bool> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts.del_live.get_hash())
            .arg(1)
            .arg(key)
            .arg(now_ms());
        let removed = int_reply(run(&mut self.conn(), &self.scripts.del_live, &cmd).await)
            .map_err(call_err("delete script"))?;
        Ok(removed == 1)
    }

    /// How a write from `old` to `new` moves `id` in the index (nothing without a user key).
    pub(super) fn reindex(&self, old: Option<&Record>, new: Option<&Record>) -> Reindex {
        let Some(key) = &self.users else {
            return Reindex::default();
        };
        let new_user = new.and_then(|r| key.user_of(&r.data));
        let old_user = match (old, new) {
            // A touch keeps the data, and so the user.
            (Some(o), Some(n)) if std::sync::Arc::ptr_eq(&o.data, &n.data) => new_user.clone(),
            _ => old.and_then(|r| key.user_of(&r.data)),
        };
        Reindex {
            old: old_user,
            new: new_user,
            expires_at: new.map_or(0, |r| r.expires_at),
        }
    }

    /// A script's `EVALSHA` with its index part: the three keys (the session, then the sets,
    /// or on a cluster, whose sets live in other slots, the session key again) and ARGV[1..4].
    /// The caller appends its own `extra` arguments, `extra_bytes` long in all beyond their
    /// numbers (capacity hints only, so the buffer is allocated once), and passes the command
    /// to [`run`].
    pub(super) fn invocation(
        &self,
        script: &Script,
        key: Key<'_>,
        member: &str,
        plan: &Reindex,
        extra: usize,
        extra_bytes: usize,
    ) -> Cmd {
        // Keys, the id and the numbers; a record JSON appended later grows the buffer once.
        let mut cmd = Cmd::with_capacity(
            3 + 3 + 4 + extra,
            64 + 3 * (self.prefix.len() + crate::session::HANDLE_LEN) + 24 * extra + extra_bytes,
        );
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(3).arg(key);
        let inline = !self.is_cluster();
        let (old, new) = (plan.old.as_deref(), plan.new.as_deref());
        match (inline, old) {
            (true, Some(u)) => cmd.arg(self.user_set(u)),
            _ => cmd.arg(key),
        };
        match (inline, new) {
            (true, Some(u)) => cmd.arg(self.user_set(u)),
            _ => cmd.arg(key),
        };
        let flag = |on: bool| if inline && on { "1" } else { "0" };
        cmd.arg(flag(plan.removes()))
            .arg(flag(new.is_some()))
            .arg(member)
            .arg(plan.expires_at);
        cmd
    }

    /// Redis Cluster's second call, after the session's script succeeded: the same index
    /// change, one set at a time. A failure is logged, not returned: the session was written,
    /// and every read of the index checks the records.
    pub(super) async fn reindex_cluster(&self, member: &str, plan: &Reindex) {
        if !self.is_cluster() {
            return;
        }
        let mut steps = Vec::new();
        if plan.removes()
            && let Some(old) = &plan.old
        {
            steps.push((self.user_set(old), "1", "0"));
        }
        if let Some(new) = &plan.new {
            steps.push((self.user_set(new), "0", "1"));
        }
        for (set, rem, add) in steps {
            let script = &self.scripts.index_only;
            let cmd = index_only_call(script, &set, (rem, add), member, plan.expires_at);
            let result = int_reply(run(&mut self.conn(), script, &cmd).await);
            if let Err(error) = result {
                tracing::warn!(%error, "could not change the user index (Redis Cluster's second call)");
            }
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use redis::{Pipeline, RedisFuture};

    use super::*;
    use crate::session::Handle;

    /// A server that answers each command from a list, and records each command's name.
    struct Answers {
        replies: VecDeque<Result<Value, RedisError>>,
        sent: Vec<String>,
        packed: Vec<Vec<u8>>,
    }

    impl Answers {
        fn new(replies: impl IntoIterator<Item = Result<Value, RedisError>>) -> Answers {
            Answers {
                replies: replies.into_iter().collect(),
                sent: Vec::new(),
                packed: Vec::new(),
            }
        }
    }

    impl ConnectionLike for Answers {
        fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
            let name: Vec<String> = cmd
                .args_iter()
                .take(2)
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => "?".to_owned(),
                })
                .collect();
            self.sent.push(name.join(" "));
            self.packed.push(cmd.get_packed_command());
            let reply = self
                .replies
                .pop_front()
                .expect("an answer for every command");
            Box::pin(async move { reply })
        }

        fn req_packed_commands<'a>(
            &'a mut self,
            _: &'a Pipeline,
            _: usize,
            _: usize,
        ) -> RedisFuture<'a, Vec<Value>> {
            unreachable!("scripts are not pipelined")
        }

        fn get_db(&self) -> i64 {
            0
        }
    }

    fn call(script: &Script) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(1).arg("k");
        cmd
    }

    fn no_script() -> RedisError {
        RedisError::from((
            ErrorKind::Server(ServerErrorKind::NoScript),
            "NOSCRIPT No matching script.",
        ))
    }

    #[tokio::test]
    async fn a_script_the_server_does_not_know_is_loaded_once_and_called_again() {
        let script = Script::new(DEL_LIVE);
        let hash = script.get_hash();
        let mut server = Answers::new([
            Err(no_script()),
            Ok(Value::BulkString(hash.as_bytes().to_vec())),
            Ok(Value::Int(1)),
        ]);
        let reply = run(&mut server, &script, &call(&script)).await.unwrap();
        assert_eq!(reply, Value::Int(1));
        let evalsha = format!("EVALSHA {hash}");
        assert_eq!(server.sent, [&*evalsha, "SCRIPT LOAD", &*evalsha]);
    }

    #[tokio::test]
    async fn a_known_script_is_called_once_and_other_errors_are_not_retried() {
        let script = Script::new(DEL_LIVE);
        let mut server = Answers::new([Ok(Value::Int(0))]);
        let reply = run(&mut server, &script, &call(&script)).await.unwrap();
        assert_eq!(reply, Value::Int(0));
        assert_eq!(server.sent.len(), 1);

        let busy = ErrorKind::Server(ServerErrorKind::BusyLoading);
        let mut server = Answers::new([Err(RedisError::from((busy, "LOADING")))]);
        let error = run(&mut server, &script, &call(&script)).await.unwrap_err();
        assert_eq!(error.kind(), busy);
        assert_eq!(server.sent.len(), 1);

        // A failed load is the call's error; the script is not called a second time.
        let gone = RedisError::from((ErrorKind::Io, "gone"));
        let mut server = Answers::new([Err(no_script()), Err(gone)]);
        let error = run(&mut server, &script, &call(&script)).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Io);
        assert_eq!(server.sent.len(), 2);
    }

    /// Redis Cluster's second call was redis-rs's `invoke_async`; it now goes through [`run`]
    /// and sends the very command `invoke_async` sent.
    #[tokio::test]
    async fn the_cluster_index_call_is_the_command_invoke_async_sent() {
        let script = Script::new(&format!("{REINDEX}{INDEX_ONLY}"));
        let id = Handle::generate().unwrap();
        let set = "session:user:ada";
        let mut before = Answers::new([Ok(Value::Int(1))]);
        let reply: i64 = script
            .key(set)
            .key(set)
            .key(set)
            .arg("1")
            .arg("0")
            .arg(id.as_str())
            .arg(1_700_000_000_000_u64)
            .invoke_async(&mut before)
            .await
            .unwrap();
        assert_eq!(reply, 1);
        let mut now = Answers::new([Ok(Value::Int(1))]);
        let cmd = index_only_call(&script, set, ("1", "0"), id.as_str(), 1_700_000_000_000);
        assert_eq!(int_reply(run(&mut now, &script, &cmd).await).unwrap(), 1);
        assert_eq!(now.packed, before.packed);
    }
}
