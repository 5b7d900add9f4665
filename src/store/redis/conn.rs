//! The connections to Redis: one server or a cluster, both multiplexed and reconnecting, with
//! timeouts so a dead Redis fails fast instead of hanging a request; the commands a listing sends
//! to one node (`SCAN`, then the records it found) and the cursor it resumes from. Below the
//! scripts and the store, it also holds what all their commands are written with: a session's
//! [`Key`], and [`call_err`] for a call that failed.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Cmd, Pipeline, RedisError, RedisFuture, RedisWrite, ToRedisArgs, ToSingleRedisArg, Value,
};

use crate::session::{Handle, SessionId};
use crate::store::{Result, StoreError};

/// The client's own limits, derived from `store.timeout`: a connection attempt gets half of
/// it and a command three quarters, so a stuck or vanished Redis is reported as a Redis error
/// (with its cause) just before the proxy's own deadline would cut the request off anyway.
///
/// On one server the command limit bounds only the `PING` at start: every later call is under
/// `store.timeout` already ([`crate::store::Timed`]), and redis-rs's own timer around each command
/// cost a timer-wheel entry per command for the same deadline. A stuck server is then
/// reported as the store timeout; a lost connection still fails at once, with its cause, and
/// reconnects as before (redis-rs never reconnected on a timeout). A cluster keeps it: its
/// client also runs calls of its own (slot refreshes) that no store call bounds.
fn client_timeouts(store_timeout: Duration) -> (Duration, Duration) {
    (store_timeout / 2, store_timeout * 3 / 4)
}
/// Reconnect attempts after a lost connection, per command that finds it lost.
const RECONNECT_RETRIES: usize = 2;

/// A session's key, `{key_prefix}{handle}`, written straight into the command that names it: no
/// `String` per call (a request names its key in two commands). Only [`Key::of`] and
/// [`Key::legacy`] make one, so a key names a session and nothing a client chose.
#[derive(Clone, Copy)]
pub(super) struct Key<'a> {
    prefix: &'a str,
    name: &'a str,
}

impl<'a> Key<'a> {
    /// The key of the session whose handle is `handle`: where every session lives.
    pub(super) fn of(prefix: &'a str, handle: &'a Handle) -> Key<'a> {
        Key {
            prefix,
            name: handle.as_str(),
        }
    }

    /// `{key_prefix}{id}`: where a release before handles kept the session, read only to move
    /// it under its handle.
    pub(super) fn legacy(prefix: &'a str, id: &'a SessionId) -> Key<'a> {
        Key {
            prefix,
            name: id.as_str(),
        }
    }
}

impl ToRedisArgs for Key<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        // Writing into the command's buffer cannot fail.
        let _ = arg.write_all(self.prefix.as_bytes());
        let _ = arg.write_all(self.name.as_bytes());
    }
}

impl ToSingleRedisArg for Key<'_> {}

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

pub(super) fn call_err(what: &'static str) -> impl FnOnce(RedisError) -> StoreError {
    move |source| StoreError::Backend(Box::new(RedisCallError { what, source }))
}

/// One connection handle for both deployments; both kinds multiplex and are cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
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
    pub(super) async fn scan_nodes(&self) -> Result<Vec<u16>> {
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

    /// One `SCAN` step on `node`, over keys of type `kind` (`hash` for sessions).
    pub(super) async fn scan(
        &self,
        node: u16,
        cursor: u64,
        pattern: &str,
        count: usize,
        kind: &str,
    ) -> Result<Value> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .arg("TYPE")
            .arg(kind);
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
    pub(super) async fn records(
        &self,
        node: u16,
        keys: &[Key<'_>],
    ) -> Result<Vec<Option<Vec<u8>>>> {
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
pub(super) struct ListCursor {
    pub(super) node: u16,
    pub(super) scan: u64,
    pub(super) after: Option<Handle>,
}

impl ListCursor {
    pub(super) fn parse(text: &str) -> Result<ListCursor> {
        let bad = || StoreError::BadCursor(text.to_owned());
        let mut parts = text.splitn(3, '.');
        let node = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let scan = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let after = match parts.next() {
            None => None,
            Some(id) => Some(Handle::parse(id).ok_or_else(bad)?),
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

/// Connects to one server or, with `cluster`, to the cluster the seed `urls` belong to (learning
/// its slot map), then PINGs, which also proves the password. `shown` is the URL list for
/// messages, passwords hidden.
pub(super) async fn connect(
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
pub(super) fn glob_escape(text: &str) -> String {
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
pub(super) fn redact(url: &str) -> String {
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
        let id = Handle::generate().unwrap();
        for text in ["0.0".to_owned(), "5461.17".to_owned(), format!("0.12.{id}")] {
            assert_eq!(ListCursor::parse(&text).unwrap().to_string(), text);
        }
        for bad in ["", "x", "1", "1.x", "1.2.short", "70000.1"] {
            assert!(ListCursor::parse(bad).is_err(), "{bad:?}");
        }
    }
}
