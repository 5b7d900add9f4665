//! The shared store: sessions in Redis (one server) or Redis Cluster, so that several proxies
//! behind a load balancer serve the same sessions.
//!
//! Owns the key layout, the three Lua scripts that make every write atomic, the connections
//! (multiplexed, reconnecting, with timeouts so a dead Redis fails fast instead of hanging a
//! request) and the `SCAN`-based listing. It never writes a session it did not find live, except
//! through [`SessionStore::create`].
//!
//! **Layout.** One hash per session at `{key_prefix}{id}`: field `v` is the record's version as
//! decimal text, field `r` the whole record as [`Record::to_json`], field `e` its `expires_at`.
//! The version and expiry are kept apart so the scripts can compare them without parsing JSON in
//! Lua (whose `cjson` would also not round-trip every number), and `r` stays exactly what the
//! other stores write. Every write sets `PEXPIREAT` to [`GRACE`] past the record's `expires_at`,
//! so Redis removes dead sessions by itself: no sweeper.
//!
//! **Why a grace.** A key gone by its TTL cannot be told from an id that never existed, so the
//! audit log's `expired` event would be lost. For [`GRACE`] the dead record stays: a load that
//! meets it removes it with the expire script (compare-and-delete on version and `e`), so of
//! all loaders, in every proxy, exactly one reports it. Every other read checks `expires_at` as
//! before (`get_live`, the listing, the user index), and every write script refuses a dead key
//! (`CAS_SET` answers gone; `CREATE` writes over it, as over a missing one), so nothing dead is
//! listed, returned or resurrected. Keyspace notifications were the other way: pub/sub, so at
//! most once and lost while disconnected, a server setting, and every proxy would report.
//!
//! **Why compare-and-set.** [`Update::apply`] (merge patch, size limit, expiry) lives in Rust and
//! must stay the one definition of a session's next state, so it cannot move into a script. An
//! update therefore applies the change to the record its request loaded (`Update::base`) and
//! writes it with a script that succeeds only if the stored version is still that one: a single
//! round trip in the common case. If another proxy wrote in between, the script answers with the
//! current record instead, and the update is re-applied to it and tried again (bounded). A
//! missing key ends the update with `None`: a destroyed session is never resurrected. Updates of
//! one session within this process also queue on a striped lock, so a burst of concurrent writes
//! through one proxy costs at most one conflict each instead of a thundering herd.
//!
//! Regenerate creates the new id first and then deletes the old one only if it still holds the
//! version the data came from (else it carries the newer data over), so a failure in between
//! leaves the old session intact and a change that raced in is not lost.
//!
//! Every script touches one session key, so everything works unchanged on Redis Cluster
//! (sessions are in different slots). Needs Redis 7.0 or later (`PEXPIREAT ... GT`).
//!
//! **The user index** (`session.user_key`): a set of ids per user at `{key_prefix}user:{user}`
//! (`:` is not in the id alphabet, so it never meets a session key). Every script takes the
//! old and the new user's set as `KEYS[2]`/`KEYS[3]` and changes them after its write, in the
//! same script: on one server the index moves with the session atomically. A set's expiry is
//! pushed out to its latest member's (`PEXPIREAT ... GT`), so a user's set dies with their last
//! session; members that expired by TTL before it are removed (`SREM`) by the next read of the
//! user. So a set holds at most the sessions the user was given within one session lifetime
//! before its last read, and never outlives them. On Redis Cluster the user's set is in another
//! slot than the session: the session's script runs with the index part turned off, and a second
//! call changes the set; a proxy dying between the two leaves an entry naming a session that is
//! not the user's, which every read drops by checking the record (live, and still this user's).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisWrite, Script, ServerErrorKind,
    ToRedisArgs, ToSingleRedisArg, Value,
};

use super::lock::StripedLock;
use super::{
    Capabilities, ExpiredSink, Loaded, Page, Record, Result, SessionStore, StoreError, Update,
    now_ms,
};
use crate::config::RedisConfig;
use crate::session::SessionId;

/// The client's own limits, derived from `store.timeout`: a connection attempt gets half of
/// it and a command three quarters, so a stuck or vanished Redis is reported as a Redis error
/// (with its cause) just before the proxy's own deadline would cut the request off anyway.
///
/// On one server the command limit bounds only the `PING` at start: every later call is under
/// `store.timeout` already ([`super::Timed`]), and redis-rs's own timer around each command
/// cost a timer-wheel entry per command for the same deadline. A stuck server is then
/// reported as the store timeout; a lost connection still fails at once, with its cause, and
/// reconnects as before (redis-rs never reconnected on a timeout). A cluster keeps it: its
/// client also runs calls of its own (slot refreshes) that no store call bounds.
fn client_timeouts(store_timeout: Duration) -> (Duration, Duration) {
    (store_timeout / 2, store_timeout * 3 / 4)
}
/// Reconnect attempts after a lost connection, per command that finds it lost.
const RECONNECT_RETRIES: usize = 2;
/// Compare-and-set attempts before an update gives up.
const MAX_ATTEMPTS: u32 = 32;
/// `SCAN` calls one `list` page may make before it returns what it has (keeps a page fast when
/// the database holds many keys that are not sessions).
const MAX_SCANS_PER_PAGE: usize = 64;

/// The index part every script starts with. KEYS[2]: the old user's set, KEYS[3]: the new
/// user's; ARGV[1] = '1': remove the id from KEYS[2]; ARGV[2] = '1': add it to KEYS[3] and push
/// that set's expiry to ARGV[4] (unix ms) if later; ARGV[3]: the id. With both flags '0' (no
/// user index, or Redis Cluster) it does nothing, and KEYS[2] and KEYS[3] repeat KEYS[1].
const REINDEX: &str = r"
local function reindex()
  if ARGV[1] == '1' then redis.call('SREM', KEYS[2], ARGV[3]) end
  if ARGV[2] == '1' then
    redis.call('SADD', KEYS[3], ARGV[3])
    if redis.call('PTTL', KEYS[3]) < 0 then
      redis.call('PEXPIREAT', KEYS[3], ARGV[4])
    else
      redis.call('PEXPIREAT', KEYS[3], ARGV[4], 'GT')
    end
  end
end
";

/// How long a session's key outlives its `expires_at`: for this long a load can still find the
/// dead record, remove it and report it (`expired` in the audit log); after it Redis drops the
/// key by itself, unreported. An hour covers a user who comes back after a short idle timeout
/// (the common case worth a line) and bounds what dead keys cost: at most an hour's worth of
/// the sessions that expired, every other read treating them as gone.
pub const GRACE: Duration = Duration::from_secs(3600);

/// The key's `PEXPIREAT`: [`GRACE`] past the record's expiry.
fn key_expiry(record: &Record) -> u64 {
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

/// How a write moves its id in the user index: out of `old`'s set, into `new`'s (whose
/// expiry follows the session's).
#[derive(Debug, Default)]
struct Reindex {
    old: Option<String>,
    new: Option<String>,
    expires_at: u64,
}

impl Reindex {
    fn removes(&self) -> bool {
        self.old.is_some() && self.old != self.new
    }
}

/// A session's key, `{key_prefix}{id}`, written straight into the command that names it: no
/// `String` per call (a request names its key in two commands).
#[derive(Clone, Copy)]
struct Key<'a> {
    prefix: &'a str,
    id: &'a SessionId,
}

impl ToRedisArgs for Key<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        // Writing into the command's buffer cannot fail.
        let _ = arg.write_all(self.prefix.as_bytes());
        let _ = arg.write_all(self.id.as_str().as_bytes());
    }
}

impl ToSingleRedisArg for Key<'_> {}

/// A record as [`Record::to_json`] spells it, written straight into the command that stores
/// it: no `String` of its own to build, copy into the command and free.
struct RecordJson<'a>(&'a Record);

impl RecordJson<'_> {
    /// Its length, give or take the digits of the numbers: the command's capacity hint.
    fn len_hint(&self) -> usize {
        self.0.data.len() + 128
    }
}

impl ToRedisArgs for RecordJson<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        for piece in self.0.json_pieces() {
            // Writing into the command's buffer cannot fail.
            let _ = arg.write_all(piece.as_str().as_bytes());
        }
    }
}

impl ToSingleRedisArg for RecordJson<'_> {}

/// A Redis call that failed, with what was being done (and never a key: keys hold session ids).
#[derive(Debug, thiserror::Error)]
#[error("redis {what}: {source}")]
struct RedisCallError {
    what: &'static str,
    #[source]
    source: RedisError,
}

/// The store could not reach Redis when it was opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to Redis at {url}: {source}")]
struct ConnectError {
    /// The URL with any password replaced.
    url: String,
    #[source]
    source: RedisError,
}

fn call_err(what: &'static str) -> impl FnOnce(RedisError) -> StoreError {
    move |source| StoreError::Backend(Box::new(RedisCallError { what, source }))
}

/// A script's integer reply, as `invoke_async::<i64>` read it.
fn int_reply(reply: Result<Value, RedisError>) -> Result<i64, RedisError> {
    Ok(redis::from_redis_value(reply?)?)
}

/// The outcome of a compare-and-set script.
enum Cas {
    Done,
    Gone,
    Changed(Record),
}

impl Cas {
    fn from_value(value: Value) -> Result<Cas> {
        match value {
            Value::Nil => Ok(Cas::Gone),
            Value::Int(1) => Ok(Cas::Done),
            Value::BulkString(bytes) => Ok(Cas::Changed(Record::from_json(&bytes)?)),
            other => Err(StoreError::Unexpected(format!(
                "reply from the compare-and-set script: {other:?}"
            ))),
        }
    }
}

/// One connection handle for both deployments; both kinds multiplex and are cheap to clone.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// The nodes a listing walks, each named by the lowest hash slot it serves (which routes a
    /// command to it), in ascending order. A single server is one node, `0`.
    async fn scan_nodes(&self) -> Result<Vec<u16>> {
        let Conn::Cluster(c) = self else {
            return Ok(vec![0]);
        };
        let slots: Vec<Vec<Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c.clone())
            .await
            .map_err(call_err("CLUSTER SLOTS"))?;
        // Each entry: start slot, end slot, then the primary as [host, port, ...], then replicas.
        let mut primaries: Vec<(Vec<u8>, i64, u16)> = Vec::new();
        for entry in slots {
            let (Some(Value::Int(start)), Some(Value::Array(primary))) =
                (entry.first(), entry.get(2))
            else {
                return Err(StoreError::Unexpected("CLUSTER SLOTS reply".to_owned()));
            };
            let host = match primary.first() {
                Some(Value::BulkString(h)) => h.clone(),
                _ => Vec::new(),
            };
            let port = match primary.get(1) {
                Some(Value::Int(p)) => *p,
                _ => 0,
            };
            let start = u16::try_from(*start)
                .map_err(|_| StoreError::Unexpected("slot out of range".to_owned()))?;
            match primaries
                .iter_mut()
                .find(|(h, p, _)| *h == host && *p == port)
            {
                Some((_, _, min)) => *min = (*min).min(start),
                None => primaries.push((host, port, start)),
            }
        }
        let mut nodes: Vec<u16> = primaries.into_iter().map(|(_, _, slot)| slot).collect();
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.is_empty() {
            return Err(StoreError::Unexpected(
                "the cluster serves no hash slots".to_owned(),
            ));
        }
        Ok(nodes)
    }

    fn route(node: u16) -> SingleNodeRoutingInfo {
        SingleNodeRoutingInfo::SpecificNode(Route::new(node, SlotAddr::Master))
    }

    /// One `SCAN` step on `node`.
    async fn scan(&self, node: u16, cursor: u64, pattern: &str, count: usize) -> Result<Value> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .arg("TYPE")
            .arg("hash");
        let result = match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => {
                c.clone()
                    .route_command(
                        cmd,
                        redis::cluster_routing::RoutingInfo::SingleNode(Self::route(node)),
                    )
                    .await
            }
        };
        result.map_err(call_err("SCAN"))
    }

    /// Field `r` of each key, in one pipeline to `node` (the node the keys were scanned on).
    async fn records(&self, node: u16, keys: &[Key<'_>]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.hget(*key, "r");
        }
        let result = match self {
            Conn::Single(c) => pipe.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => c
                .clone()
                .route_pipeline(pipe, 0, keys.len(), Self::route(node))
                .await
                .and_then(|values| {
                    values
                        .into_iter()
                        .map(|v| redis::from_redis_value(v).map_err(RedisError::from))
                        .collect()
                }),
        };
        result.map_err(call_err("HGET (list)"))
    }
}

/// Where a listing resumes: `node.scan` or `node.scan.after`, where `after` is the last id
/// already returned from the `SCAN` step at `scan` (a page may end inside a step).
struct ListCursor {
    node: u16,
    scan: u64,
    after: Option<SessionId>,
}

impl ListCursor {
    fn parse(text: &str) -> Result<ListCursor> {
        let bad = || StoreError::BadCursor(text.to_owned());
        let mut parts = text.splitn(3, '.');
        let node = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let scan = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let after = match parts.next() {
            None => None,
            Some(id) => Some(SessionId::parse(id).ok_or_else(bad)?),
        };
        Ok(ListCursor { node, scan, after })
    }
}

impl fmt::Display for ListCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.scan)?;
        if let Some(after) = &self.after {
            write!(f, ".{after}")?;
        }
        Ok(())
    }
}

/// Sessions in Redis or Redis Cluster. Cheap to share: one multiplexed connection (per node).
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    /// `SCAN MATCH` pattern for `prefix`: its glob characters escaped, then `*`.
    pattern: String,
    create: Script,
    cas_set: Script,
    cas_del: Script,
    expire: Script,
    del_live: Script,
    index_only: Script,
    locks: StripedLock,
    users: Option<crate::store::UserKey>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects (and for a cluster, learns the slot map), so a wrong URL, password or port
    /// fails at start, with the URL (password hidden) in the message.
    pub async fn open(config: RedisConfig) -> Result<Self> {
        Self::open_indexed(config, None).await
    }

    /// [`RedisStore::open`], keeping a user index on `users`.
    pub async fn open_indexed(
        config: RedisConfig,
        users: Option<crate::store::UserKey>,
    ) -> Result<Self> {
        let shown = config
            .urls
            .iter()
            .map(|u| redact(u))
            .collect::<Vec<_>>()
            .join(", ");
        // redis-rs builds its rustls config inside the connect, and rustls panics there if the
        // build has no TLS crypto provider. Connecting in a task turns that into a start-up
        // error instead of a crash.
        // rediss:// needs a process-wide rustls crypto provider; an error here only means one
        // is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let urls = config.urls.clone();
        let conn = match tokio::spawn(connect(urls, config.cluster, config.timeout, shown.clone()))
            .await
        {
            Ok(conn) => conn?,
            Err(e) if e.is_panic() => {
                return Err(StoreError::Backend(
                    format!(
                        "connecting to Redis at {shown} panicked (for rediss://, this build may lack a TLS crypto provider)"
                    )
                    .into(),
                ));
            }
            Err(e) => return Err(StoreError::Backend(Box::new(e))),
        };
        let pattern = format!("{}*", glob_escape(&config.key_prefix));
        Ok(RedisStore {
            conn,
            prefix: config.key_prefix,
            pattern,
            create: Script::new(&format!("{REINDEX}{CREATE}")),
            cas_set: Script::new(&format!("{REINDEX}{CAS_SET}")),
            cas_del: Script::new(&format!("{REINDEX}{CAS_DEL}")),
            expire: Script::new(&format!("{REINDEX}{EXPIRE}")),
            del_live: Script::new(DEL_LIVE),
            index_only: Script::new(&format!("{REINDEX}{INDEX_ONLY}")),
            locks: StripedLock::default(),
            users,
        })
    }

    fn key<'a>(&'a self, id: &'a SessionId) -> Key<'a> {
        Key {
            prefix: &self.prefix,
            id,
        }
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// The record at `id`'s key if it is live at `now`.
    async fn get_live(&self, id: &SessionId, now: u64) -> Result<Option<Record>> {
        Ok(self.get(id).await?.filter(|r| r.is_live(now)))
    }

    /// The record at `id`'s key, live or dead (kept for [`GRACE`]). A record that does not
    /// parse is logged and treated as missing, so one bad value cannot lock a client out.
    async fn get(&self, id: &SessionId) -> Result<Option<Record>> {
        Ok(self
            .get_bytes(self.key(id))
            .await?
            .and_then(|bytes| Record::from_stored(&bytes, id)))
    }

    /// Field `r` at `key` as Redis sent it.
    async fn get_bytes(&self, key: Key<'_>) -> Result<Option<Vec<u8>>> {
        let mut cmd = Cmd::with_capacity(3, 8 + self.prefix.len() + crate::session::ID_LEN);
        cmd.arg("HGET").arg(key).arg("r");
        cmd.query_async(&mut self.conn())
            .await
            .map_err(call_err("HGET"))
    }

    /// Runs `cmd`, an `EVALSHA` of `script` made by [`RedisStore::invocation`]. A server
    /// that does not know the script yet (first call, restart, `SCRIPT FLUSH`, another node)
    /// is sent it once and the call repeated, as redis-rs's `invoke_async` would; building
    /// the command here instead writes every argument straight into one buffer.
    async fn run(&self, script: &Script, cmd: &Cmd) -> Result<Value, RedisError> {
        let mut conn = self.conn();
        match cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load_async(&mut conn).await?;
                cmd.query_async(&mut conn).await
            }
            result => result,
        }
    }

    /// Removes `current`, found dead at `now`, if the key still holds it: `true` for the one
    /// caller that did.
    async fn expire(&self, id: &SessionId, current: &Record, now: u64) -> Result<bool> {
        let plan = self.reindex(Some(current), None);
        let mut cmd = self.invocation(&self.expire, self.key(id), id, &plan, 2, 0);
        cmd.arg(current.version).arg(now);
        let removed =
            int_reply(self.run(&self.expire, &cmd).await).map_err(call_err("expire script"))?;
        if removed == 1 {
            self.reindex_cluster(id, &plan).await;
        }
        Ok(removed == 1)
    }

    fn user_set(&self, user: &str) -> String {
        format!("{}user:{}", self.prefix, user)
    }

    fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// How a write from `old` to `new` moves `id` in the index (nothing without a user key).
    fn reindex(&self, old: Option<&Record>, new: Option<&Record>) -> Reindex {
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
    /// to [`RedisStore::run`].
    fn invocation(
        &self,
        script: &Script,
        key: Key<'_>,
        id: &SessionId,
        plan: &Reindex,
        extra: usize,
        extra_bytes: usize,
    ) -> Cmd {
        // Keys, the id and the numbers; a record JSON appended later grows the buffer once.
        let mut cmd = Cmd::with_capacity(
            3 + 3 + 4 + extra,
            64 + 3 * (self.prefix.len() + crate::session::ID_LEN) + 24 * extra + extra_bytes,
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
            .arg(id.as_str())
            .arg(plan.expires_at);
        cmd
    }

    /// Redis Cluster's second call, after the session's script succeeded: the same index
    /// change, one set at a time. A failure is logged, not returned: the session was written,
    /// and every read of the index checks the records.
    async fn reindex_cluster(&self, id: &SessionId, plan: &Reindex) {
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
            let result: Result<i64, RedisError> = self
                .index_only
                .key(&set)
                .key(&set)
                .key(&set)
                .arg(rem)
                .arg(add)
                .arg(id.as_str())
                .arg(plan.expires_at)
                .invoke_async(&mut self.conn())
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, "could not change the user index (Redis Cluster's second call)");
            }
        }
    }

    async fn create_key(&self, key: Key<'_>, id: &SessionId, record: &Record) -> Result<bool> {
        let plan = self.reindex(None, Some(record));
        let json = RecordJson(record);
        let mut cmd = self.invocation(&self.create, key, id, &plan, 5, json.len_hint());
        cmd.arg(record.version)
            .arg(json)
            .arg(record.expires_at)
            .arg(key_expiry(record))
            .arg(now_ms());
        let written =
            int_reply(self.run(&self.create, &cmd).await).map_err(call_err("create script"))?;
        if written == 1 {
            self.reindex_cluster(id, &plan).await;
        }
        Ok(written == 1)
    }

    /// Writes `record` over `base` (at `expected`, its version) if it is still there.
    async fn cas_set(
        &self,
        key: Key<'_>,
        id: &SessionId,
        base: &Record,
        record: &Record,
    ) -> Result<Cas> {
        let plan = self.reindex(Some(base), Some(record));
        let json = RecordJson(record);
        let mut cmd = self.invocation(&self.cas_set, key, id, &plan, 6, json.len_hint());
        cmd.arg(base.version)
            .arg(json)
            .arg(record.version)
            .arg(record.expires_at)
            .arg(key_expiry(record))
            .arg(now_ms());
        let value = self
            .run(&self.cas_set, &cmd)
            .await
            .map_err(call_err("compare-and-set script"))?;
        let cas = Cas::from_value(value)?;
        if let Cas::Done = cas {
            self.reindex_cluster(id, &plan).await;
        }
        Ok(cas)
    }

    /// Deletes `current` if it is still there unchanged.
    async fn cas_del(&self, key: Key<'_>, id: &SessionId, current: &Record) -> Result<Cas> {
        let plan = self.reindex(Some(current), None);
        let mut cmd = self.invocation(&self.cas_del, key, id, &plan, 1, 0);
        cmd.arg(current.version);
        let value = self
            .run(&self.cas_del, &cmd)
            .await
            .map_err(call_err("compare-and-delete script"))?;
        let cas = Cas::from_value(value)?;
        if let Cas::Done = cas {
            self.reindex_cluster(id, &plan).await;
        }
        Ok(cas)
    }

    /// A delete that takes the session out of its user's set: read, then compare-and-delete,
    /// so the set changed is the user the deleted record named. Without a user index, `DEL`.
    async fn delete_indexed(&self, id: &SessionId) -> Result<bool> {
        let key = self.key(id);
        if self.users.is_none() {
            return self.del(key).await;
        }
        for _ in 0..MAX_ATTEMPTS {
            let Some(bytes) = self.get_bytes(key).await? else {
                return Ok(false);
            };
            let Some(current) = Record::from_stored(&bytes, id) else {
                // Unreadable: its user is unknown; a read of the index drops the entry.
                return self.del(key).await;
            };
            match self.cas_del(key, id, &current).await? {
                // A dead session kept for its grace is removed, but was no longer there.
                Cas::Done => return Ok(current.is_live(now_ms())),
                Cas::Gone => return Ok(false),
                Cas::Changed(_) => {}
            }
        }
        Err(StoreError::Backend(
            format!("delete lost {MAX_ATTEMPTS} races with concurrent writes").into(),
        ))
    }

    /// `DEL`; `true` if the key held a live session.
    async fn del(&self, key: Key<'_>) -> Result<bool> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.del_live.get_hash())
            .arg(1)
            .arg(key)
            .arg(now_ms());
        let removed =
            int_reply(self.run(&self.del_live, &cmd).await).map_err(call_err("delete script"))?;
        Ok(removed == 1)
    }

    /// The second half of [`SessionStore::regenerate`], after the new id was created holding
    /// `record` (computed from `current`): removes the old id if it still holds `current`, or
    /// else moves the newer data over first. `None` if the old session vanished meanwhile.
    async fn finish_regenerate(
        &self,
        old_key: Key<'_>,
        new_key: Key<'_>,
        update: &Update,
        (old, new): (&SessionId, &SessionId),
        mut current: Record,
        mut record: Record,
    ) -> Result<Option<Record>> {
        for _ in 0..MAX_ATTEMPTS {
            match self.cas_del(old_key, old, &current).await? {
                Cas::Done => return Ok(Some(record)),
                Cas::Changed(stored) if stored.is_live(update.now) => {
                    // Another write reached the old id first: carry it over. Nobody else knows
                    // the new id yet, so this compare-and-set only guards against a bug.
                    let next = update.apply(&stored)?;
                    let Cas::Done = self.cas_set(new_key, new, &record, &next).await? else {
                        return Err(StoreError::Unexpected(
                            "regenerated session changed under its new id".to_owned(),
                        ));
                    };
                    (current, record) = (stored, next);
                }
                Cas::Gone | Cas::Changed(_) => {
                    // Destroyed or expired meanwhile: it must not live on under the new id.
                    self.delete_indexed(new).await?;
                    return Ok(None);
                }
            }
        }
        Err(StoreError::Backend(
            format!("regenerate lost {MAX_ATTEMPTS} races with concurrent writes").into(),
        ))
    }
}

/// Connects to one server or, with `cluster`, to the cluster the seed `urls` belong to (learning
/// its slot map), then PINGs, which also proves the password. `shown` is the URL list for
/// messages, passwords hidden.
async fn connect(
    urls: Vec<String>,
    cluster: bool,
    store_timeout: Duration,
    shown: String,
) -> Result<Conn> {
    let (connect_timeout, response_timeout) = client_timeouts(store_timeout);
    let connect_err = |source| {
        StoreError::Backend(Box::new(ConnectError {
            url: shown.clone(),
            source,
        }))
    };
    let conn = if cluster {
        let client = ClusterClientBuilder::new(urls.iter().map(String::as_str))
            .connection_timeout(connect_timeout)
            .response_timeout(response_timeout)
            .retries(RECONNECT_RETRIES as u32)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .build()
            .map_err(connect_err)?;
        Conn::Cluster(client.get_async_connection().await.map_err(connect_err)?)
    } else {
        let url = urls
            .first()
            .ok_or_else(|| StoreError::Backend("no Redis URL configured".into()))?;
        let client = redis::Client::open(url.as_str()).map_err(connect_err)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        Conn::Single(
            ConnectionManager::new_with_config(client, manager)
                .await
                .map_err(connect_err)?,
        )
    };
    let ping = redis::cmd("PING");
    let mut pinged = conn.clone();
    match tokio::time::timeout(response_timeout, ping.query_async::<()>(&mut pinged)).await {
        Ok(reply) => reply.map_err(connect_err)?,
        Err(elapsed) => return Err(connect_err(RedisError::from(std::io::Error::from(elapsed)))),
    }
    Ok(conn)
}

/// Escapes the glob characters of `SCAN MATCH`, so a prefix matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The URL with its password (if any) replaced by `***`, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                // `redis://password@host` is read as a password by redis-rs.
                "***".to_owned()
            };
            format!("{scheme}://{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>> {
        self.get_live(id, now_ms()).await
    }

    /// One `HGET` for a live session, as `load`; a record past its expiry (its key kept for
    /// [`GRACE`]) is removed by the expire script, whose compare-and-delete tells exactly one
    /// loader, in whichever proxy, that it expired.
    async fn load_or_expired(&self, id: &SessionId) -> Result<Loaded> {
        let now = now_ms();
        let Some(record) = self.get(id).await? else {
            return Ok(Loaded::Missing);
        };
        if record.is_live(now) {
            return Ok(Loaded::Live(record));
        }
        if self.expire(id, &record, now).await? {
            return Ok(Loaded::Expired {
                user: self.users.as_ref().and_then(|k| k.user_of(&record.data)),
            });
        }
        // Another loader removed it, or a create took the id since the read.
        Ok(self
            .get_live(id, now)
            .await?
            .map_or(Loaded::Missing, Loaded::Live))
    }

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        self.create_key(self.key(id), id, record).await
    }

    async fn update(&self, id: &SessionId, update: &Update) -> Result<Option<Record>> {
        let key = self.key(id);
        let _guard = self.locks.lock(id).await;
        let mut current = update.base.clone().filter(|r| r.is_live(update.now));
        for _ in 0..MAX_ATTEMPTS {
            let base = match current.take() {
                Some(r) => r,
                None => match self.get_live(id, update.now).await? {
                    Some(r) => r,
                    None => return Ok(None),
                },
            };
            let next = update.apply(&base)?;
            match self.cas_set(key, id, &base, &next).await? {
                Cas::Done => return Ok(Some(next)),
                Cas::Gone => return Ok(None),
                Cas::Changed(stored) if stored.is_live(update.now) => {
                    // Retry at once: the reply is the freshest record there is, and it only
                    // grows stale while waiting.
                    current = Some(stored);
                }
                Cas::Changed(_) => return Ok(None),
            }
        }
        Err(StoreError::Backend(
            format!("update lost {MAX_ATTEMPTS} races with concurrent writes").into(),
        ))
    }

    async fn delete(&self, id: &SessionId) -> Result<bool> {
        self.delete_indexed(id).await
    }

    /// Creates the new id, then deletes the old one only if it still holds the version the data
    /// was taken from: two round trips, and a change that raced in is carried over, not lost.
    async fn regenerate(
        &self,
        old: &SessionId,
        new: &SessionId,
        update: &Update,
    ) -> Result<Option<Record>> {
        let (old_key, new_key) = (self.key(old), self.key(new));
        let _guard = self.locks.lock(old).await;
        let current = match update.base.clone().filter(|r| r.is_live(update.now)) {
            Some(r) => r,
            None => match self.get_live(old, update.now).await? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let record = update.apply(&current)?;
        if !self.create_key(new_key, new, &record).await? {
            return Err(StoreError::IdCollision);
        }
        let result = self
            .finish_regenerate(old_key, new_key, update, (old, new), current, record)
            .await;
        if result.is_err() {
            // Best effort: the client keeps its old id, so the new one must not linger.
            let _ = self.delete_indexed(new).await;
        }
        result
    }

    /// `SCAN` (never `KEYS`) over every primary in turn. Pages hold at most `limit` sessions in
    /// no particular order; a session alive for the whole walk is listed at least once.
    async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page> {
        let mut page = Page::default();
        if limit == 0 {
            return Ok(page);
        }
        let nodes = self.conn.scan_nodes().await?;
        let mut pos = match cursor {
            Some(c) => ListCursor::parse(c)?,
            None => ListCursor {
                node: nodes[0],
                scan: 0,
                after: None,
            },
        };
        let count = limit.clamp(10, 1000);
        let now = now_ms();
        for _ in 0..MAX_SCANS_PER_PAGE {
            let reply = self
                .conn
                .scan(pos.node, pos.scan, &self.pattern, count)
                .await?;
            let (next_scan, keys): (u64, Vec<String>) = redis::from_redis_value(reply)
                .map_err(|e| call_err("SCAN")(RedisError::from(e)))?;
            let mut ids: Vec<SessionId> = keys
                .iter()
                .filter_map(|k| k.strip_prefix(&self.prefix).and_then(SessionId::parse))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            if let Some(after) = pos.after.take() {
                ids.retain(|id| *id > after);
            }
            let keys: Vec<Key<'_>> = ids.iter().map(|id| self.key(id)).collect();
            let records = self.conn.records(pos.node, &keys).await?;
            let mut live: Vec<(SessionId, Record)> = ids
                .into_iter()
                .zip(records)
                .filter_map(|(id, bytes)| {
                    let record = Record::from_stored(&bytes?, &id)?;
                    record.is_live(now).then_some((id, record))
                })
                .collect();
            let room = limit - page.sessions.len();
            if live.len() > room {
                live.truncate(room);
                let after = live.last().map(|(id, _)| *id);
                page.sessions.extend(live);
                page.next = Some(
                    ListCursor {
                        node: pos.node,
                        scan: pos.scan,
                        after,
                    }
                    .to_string(),
                );
                return Ok(page);
            }
            page.sessions.extend(live);
            if next_scan != 0 {
                pos.scan = next_scan;
            } else if let Some(&node) = nodes.iter().find(|n| **n > pos.node) {
                pos = ListCursor {
                    node,
                    scan: 0,
                    after: None,
                };
            } else {
                return Ok(page);
            }
            if page.sessions.len() == limit {
                break;
            }
        }
        page.next = Some(pos.to_string());
        Ok(page)
    }

    /// Nothing to do: keys expire by their TTL ([`GRACE`] after the session), and a dead
    /// one met before that is removed by the load that meets it.
    async fn prune_reporting(&self, _now: u64, _expired: Option<&ExpiredSink>) -> Result<u64> {
        Ok(0)
    }

    /// The user's set, each member read back: a live session of this user is returned; a
    /// member whose key is gone (expired by TTL, or deleted between a cluster's two calls) or
    /// expired leaves the set, which is what bounds it. A member naming another user now is
    /// only skipped: on a cluster its move may still be under way.
    async fn user_sessions(&self, user: &str) -> Result<Vec<(SessionId, Record)>> {
        let Some(key) = &self.users else {
            return Err(StoreError::NoUserIndex);
        };
        let set = self.user_set(user);
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut self.conn())
            .await
            .map_err(call_err("SMEMBERS"))?;
        let now = now_ms();
        let (mut out, mut dead) = (Vec::new(), Vec::new());
        for member in members {
            let Some(id) = SessionId::parse(&member) else {
                dead.push(member);
                continue;
            };
            let Some(bytes) = self.get_bytes(self.key(&id)).await? else {
                dead.push(member);
                continue;
            };
            match Record::from_stored(&bytes, &id) {
                Some(r) if key.holds(&r, user, now) => out.push((id, r)),
                Some(r) if !r.is_live(now) => dead.push(member),
                _ => {}
            }
        }
        if !dead.is_empty() {
            redis::cmd("SREM")
                .arg(&set)
                .arg(&dead)
                .query_async::<i64>(&mut self.conn())
                .await
                .map_err(call_err("SREM"))?;
        }
        Ok(out)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            expires_by_itself: true,
            never_waits: false,
            lists_in_order: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        for (url, want) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            (
                "rediss://ada:s3cret@cache.example:6380/2",
                "rediss://ada:***@cache.example:6380/2",
            ),
            ("redis://:s3cret@h", "redis://:***@h"),
            ("redis://s3cret@h/1", "redis://***@h/1"),
            ("redis://u:p@ss@h", "redis://u:***@h"),
        ] {
            assert_eq!(redact(url), want);
        }
    }

    #[test]
    fn glob_characters_in_the_prefix_are_escaped() {
        assert_eq!(glob_escape("session:"), "session:");
        assert_eq!(glob_escape(r"a*b?[c]\"), r"a\*b\?\[c\]\\");
    }

    #[test]
    fn list_cursor_round_trip() {
        let id = SessionId::generate().unwrap();
        for text in ["0.0".to_owned(), "5461.17".to_owned(), format!("0.12.{id}")] {
            assert_eq!(ListCursor::parse(&text).unwrap().to_string(), text);
        }
        for bad in ["", "x", "1", "1.x", "1.2.short", "70000.1"] {
            assert!(ListCursor::parse(bad).is_err(), "{bad:?}");
        }
    }
}
