//! The shared store: sessions in Redis (one server) or Redis Cluster, so that several proxies
//! behind a load balancer serve the same sessions.
//!
//! Owns the key layout, the three Lua scripts that make every write atomic, the connections
//! (multiplexed, reconnecting, with timeouts so a dead Redis fails fast instead of hanging a
//! request) and the `SCAN`-based listing. It never writes a session it did not find live, except
//! through [`SessionStore::create`].
//!
//! **Layout.** One hash per session at `{key_prefix}{id}`: field `v` is the record's version as
//! decimal text, field `r` the whole record as [`Record::to_json`]. The version is kept apart so
//! the scripts can compare it without parsing JSON in Lua (whose `cjson` would also not
//! round-trip every number), and `r` stays exactly what the other stores write. Every write sets
//! `PEXPIREAT` to the record's `expires_at`, so Redis removes dead sessions by itself: no sweeper.
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
//! Every script touches one key, so everything works unchanged on Redis Cluster (sessions are
//! in different slots). Needs Redis 6.0 or later (`SCAN ... TYPE`).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};

use super::lock::StripedLock;
use super::{Capabilities, Page, Record, Result, SessionStore, StoreError, Update, now_ms};
use crate::config::RedisConfig;
use crate::session::SessionId;

/// The client's own limits, derived from `store.timeout`: a connection attempt gets half of
/// it and a command three quarters, so a stuck or vanished Redis is reported as a Redis error
/// (with its cause) just before the proxy's own deadline would cut the request off anyway.
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

/// `HSET` + `PEXPIREAT` if the key does not exist. KEYS[1]: the session; ARGV: version, record
/// JSON, expiry (unix ms). Returns 1 if written, 0 if the key exists.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'r', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
";

/// Compare-and-set. KEYS[1]: the session; ARGV: expected version, record JSON, its version, its
/// expiry (unix ms). Returns 1 if written, nil if the key is gone, else the current record.
const CAS_SET: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return false end
if v ~= ARGV[1] then return redis.call('HGET', KEYS[1], 'r') end
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'r', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return 1
";

/// Compare-and-delete. KEYS[1]: the session; ARGV[1]: expected version. Returns 1 if deleted,
/// nil if the key is gone, else the current record.
const CAS_DEL: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return false end
if v ~= ARGV[1] then return redis.call('HGET', KEYS[1], 'r') end
redis.call('DEL', KEYS[1])
return 1
";

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
    async fn records(&self, node: u16, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.hget(key, "r");
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
    locks: StripedLock,
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
            create: Script::new(CREATE),
            cas_set: Script::new(CAS_SET),
            cas_del: Script::new(CAS_DEL),
            locks: StripedLock::default(),
        })
    }

    fn key(&self, id: &SessionId) -> String {
        format!("{}{}", self.prefix, id)
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// The record at `key` if it is live at `now`. A record that does not parse is logged and
    /// treated as missing, so one bad value cannot lock a client out.
    async fn get_live(&self, id: &SessionId, now: u64) -> Result<Option<Record>> {
        let key = self.key(id);
        let bytes: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&key)
            .arg("r")
            .query_async(&mut self.conn())
            .await
            .map_err(call_err("HGET"))?;
        let Some(bytes) = bytes else { return Ok(None) };
        Ok(Record::from_stored(&bytes, id).filter(|r| r.is_live(now)))
    }

    async fn create_key(&self, key: &str, record: &Record) -> Result<bool> {
        let written: i64 = self
            .create
            .key(key)
            .arg(record.version)
            .arg(record.to_json()?)
            .arg(record.expires_at)
            .invoke_async(&mut self.conn())
            .await
            .map_err(call_err("create script"))?;
        Ok(written == 1)
    }

    async fn cas_set(&self, key: &str, expected: u64, record: &Record) -> Result<Cas> {
        let value: Value = self
            .cas_set
            .key(key)
            .arg(expected)
            .arg(record.to_json()?)
            .arg(record.version)
            .arg(record.expires_at)
            .invoke_async(&mut self.conn())
            .await
            .map_err(call_err("compare-and-set script"))?;
        Cas::from_value(value)
    }

    async fn cas_del(&self, key: &str, expected: u64) -> Result<Cas> {
        let value: Value = self
            .cas_del
            .key(key)
            .arg(expected)
            .invoke_async(&mut self.conn())
            .await
            .map_err(call_err("compare-and-delete script"))?;
        Cas::from_value(value)
    }

    async fn del(&self, key: &str) -> Result<bool> {
        let removed: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut self.conn())
            .await
            .map_err(call_err("DEL"))?;
        Ok(removed > 0)
    }

    /// The second half of [`SessionStore::regenerate`], after the new id was created holding
    /// `record` (computed from `current`): removes the old id if it still holds `current`, or
    /// else moves the newer data over first. `None` if the old session vanished meanwhile.
    async fn finish_regenerate(
        &self,
        old_key: &str,
        new_key: &str,
        update: &Update,
        mut current: Record,
        mut record: Record,
    ) -> Result<Option<Record>> {
        for _ in 0..MAX_ATTEMPTS {
            match self.cas_del(old_key, current.version).await? {
                Cas::Done => return Ok(Some(record)),
                Cas::Changed(stored) if stored.is_live(update.now) => {
                    // Another write reached the old id first: carry it over. Nobody else knows
                    // the new id yet, so this compare-and-set only guards against a bug.
                    let next = update.apply(&stored)?;
                    let Cas::Done = self.cas_set(new_key, record.version, &next).await? else {
                        return Err(StoreError::Unexpected(
                            "regenerated session changed under its new id".to_owned(),
                        ));
                    };
                    (current, record) = (stored, next);
                }
                Cas::Gone | Cas::Changed(_) => {
                    // Destroyed or expired meanwhile: it must not live on under the new id.
                    self.del(new_key).await?;
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
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        Conn::Single(
            ConnectionManager::new_with_config(client, manager)
                .await
                .map_err(connect_err)?,
        )
    };
    redis::cmd("PING")
        .query_async::<()>(&mut conn.clone())
        .await
        .map_err(connect_err)?;
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

    async fn create(&self, id: &SessionId, record: &Record) -> Result<bool> {
        self.create_key(&self.key(id), record).await
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
            match self.cas_set(&key, base.version, &next).await? {
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
        self.del(&self.key(id)).await
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
        if !self.create_key(&new_key, &record).await? {
            return Err(StoreError::IdCollision);
        }
        let result = self
            .finish_regenerate(&old_key, &new_key, update, current, record)
            .await;
        if result.is_err() {
            // Best effort: the client keeps its old id, so the new one must not linger.
            let _ = self.del(&new_key).await;
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
            let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
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

    async fn prune(&self, _now: u64) -> Result<u64> {
        Ok(0)
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
