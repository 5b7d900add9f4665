//! Issue [at-rest], the upgrade of a Redis written by the release before handles
//! (tests/fixtures/previous/redis.json: hashes at `session:<id>`, user sets of ids): each old
//! cookie keeps its session and data through the real proxy, its key moving under the handle on
//! first load; an expired one is reported once; `sessions migrate` (the binary) moves the rest,
//! after which no key, value or set member holds an id. On one server and on a cluster, plus
//! concurrent moves of one session through the store's contract.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use ::redis::AsyncCommands as _;
use ::redis::aio::ConnectionLike;
use serde_json::{Value, json};
use session_proxy::session::SessionId;
use session_proxy::store::{Loaded, SessionStore};

use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::{App, TestProxy, config, get, write_config};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/previous");

/// One session of the fixture, as sessions.json gives it.
struct Old {
    id: String,
    user: Option<String>,
    data: Value,
    expired: bool,
}

impl Old {
    fn handle(&self) -> String {
        SessionId::parse(&self.id).unwrap().handle().to_string()
    }

    fn cookie(&self) -> String {
        format!("session_id={}", self.id)
    }
}

/// The fixture's Redis sessions.
fn old_sessions() -> Vec<Old> {
    let text = std::fs::read_to_string(format!("{FIXTURES}/sessions.json")).unwrap();
    let all: Vec<Value> = serde_json::from_str(&text).unwrap();
    all.into_iter()
        .filter(|s| s["store"] == "redis")
        .map(|s| Old {
            id: s["id"].as_str().unwrap().to_owned(),
            user: s["user"].as_str().map(str::to_owned),
            data: s["data"].clone(),
            expired: s["expired"].as_bool().unwrap(),
        })
        .collect()
}

fn of_user<'a>(sessions: &'a [Old], user: &str) -> Vec<&'a Old> {
    sessions
        .iter()
        .filter(|s| s.user.as_deref() == Some(user) && !s.expired)
        .collect()
}

/// Writes every key of redis.json through `conn` (a server's or a cluster's), each with the
/// TTL it had at the dump: the live ones about ten years, carol's expired hash under an hour,
/// so it is still there for a load to find and report.
async fn replay(conn: &mut impl ConnectionLike) {
    let text = std::fs::read_to_string(format!("{FIXTURES}/redis.json")).unwrap();
    let keys: Vec<Value> = serde_json::from_str(&text).unwrap();
    for entry in keys {
        let key = entry["key"].as_str().unwrap();
        match entry["type"].as_str().unwrap() {
            "hash" => {
                let fields: Vec<(String, String)> = entry["value"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                ::redis::cmd("HSET")
                    .arg(key)
                    .arg(&fields)
                    .query_async::<()>(conn)
                    .await
                    .unwrap();
            }
            "set" => {
                let members: Vec<&str> = entry["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap())
                    .collect();
                ::redis::cmd("SADD")
                    .arg(key)
                    .arg(&members)
                    .query_async::<()>(conn)
                    .await
                    .unwrap();
            }
            other => panic!("redis.json holds a {other}"),
        }
        ::redis::cmd("PEXPIRE")
            .arg(key)
            .arg(entry["pttl_ms"].as_u64().unwrap())
            .query_async::<()>(conn)
            .await
            .unwrap();
    }
}

/// Every key on `node`, and every string it holds (hash fields and values, set members,
/// strings).
async fn everything(node: &mut impl ConnectionLike) -> Vec<String> {
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(node)
        .await
        .unwrap();
    let mut out = keys.clone();
    for key in keys {
        let kind: String = ::redis::cmd("TYPE")
            .arg(&key)
            .query_async(node)
            .await
            .unwrap();
        let held: Vec<String> = match kind.as_str() {
            "hash" => ::redis::cmd("HGETALL")
                .arg(&key)
                .query_async(node)
                .await
                .unwrap(),
            "set" => ::redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(node)
                .await
                .unwrap(),
            "string" => vec![
                ::redis::cmd("GET")
                    .arg(&key)
                    .query_async(node)
                    .await
                    .unwrap(),
            ],
            other => panic!("{key} is a {other}"),
        };
        out.extend(held);
    }
    out
}

/// No key or value anywhere on `nodes` holds any of `ids`.
async fn no_id_anywhere(nodes: Vec<::redis::aio::MultiplexedConnection>, ids: &[String]) {
    for mut node in nodes {
        for text in everything(&mut node).await {
            for id in ids {
                assert!(
                    !text.contains(id.as_str()),
                    "an id is still in Redis: {text}"
                );
            }
        }
    }
}

fn node_conns_urls(urls: &[String]) -> Vec<String> {
    urls.iter().map(|u| format!("{u}/")).collect()
}

async fn conns(urls: &[String]) -> Vec<::redis::aio::MultiplexedConnection> {
    let mut out = Vec::new();
    for url in node_conns_urls(urls) {
        out.push(
            ::redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        );
    }
    out
}

/// The proxy's config, as the fixture's release ran it (no cookie secret: the cookie is the id),
/// with an audit log.
fn toml(store: &str, audit: &Path) -> String {
    format!(
        "[session]\nidle_timeout = \"3650d\"\nuser_key = \"user\"\n[audit]\npath = \"{}\"\n{store}",
        audit.display()
    )
}

fn server_store(redis: &RedisServer) -> String {
    format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url())
}

fn cluster_store(cluster: &RedisCluster) -> String {
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[store]\nkind = \"redis\"\nnodes = [{}]\n",
        nodes.join(", ")
    )
}

/// `session-proxy --config CONFIG sessions migrate`: its stdout, failing the test if it fails.
fn migrate(config: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["--config", config, "sessions", "migrate"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    for s in old_sessions() {
        assert!(
            !stdout.contains(&s.id) && !stderr.contains(&s.id),
            "an id in the output"
        );
    }
    stdout
}

/// A request with the old cookie keeps its session: the app sees the same id and data.
async fn keeps_its_session(proxy: &TestProxy, old: &Old) {
    let r = get(proxy.addr, "/")
        .client_sends(&[("cookie", &old.cookie())])
        .await;
    assert_eq!(r.status, 200);
    let seen = r.app_saw();
    assert!(!seen.is_new(), "{:?} lost its session", old.user);
    assert_eq!(seen.session_id(), old.id);
    assert_eq!(seen.session(), old.data);
}

async fn user_handles(proxy: &TestProxy, user: &str) -> HashSet<String> {
    proxy
        .store
        .user_sessions(user)
        .await
        .unwrap()
        .into_iter()
        .map(|(h, _)| h.to_string())
        .collect()
}

fn expired_lines(audit: &Path) -> Vec<Value> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["event"] == "expired")
        .map(|mut l| {
            l.as_object_mut().unwrap().remove("time");
            l.as_object_mut().unwrap().remove("request_id");
            l
        })
        .collect()
}

/// carol's dead session: a new session, one `expired` line (the second request with the same
/// cookie finds nothing to report), and the old key gone.
async fn the_expired_one_is_reported_once(proxy: &TestProxy, carol: &Old) {
    for _ in 0..2 {
        let seen = get(proxy.addr, "/")
            .client_sends(&[("cookie", &carol.cookie())])
            .await
            .app_saw();
        assert!(seen.is_new());
        assert_ne!(seen.session_id(), carol.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_of_the_previous_release_keeps_every_session() {
    let redis = RedisServer::start().await;
    let mut conn = redis.conn().await;
    replay(&mut conn).await;
    let olds = old_sessions();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let toml = toml(&server_store(&redis), &audit);
    let app = App::start().await;
    let proxy = TestProxy::with_config(config(app.addr, &toml)).await;

    // ada's two sessions, loaded: each moves under its handle, nothing keeps its id.
    let ada = of_user(&olds, "ada");
    assert_eq!(ada.len(), 2);
    for old in &ada {
        keeps_its_session(&proxy, old).await;
        let moved: bool = conn
            .exists(format!("session:{}", old.handle()))
            .await
            .unwrap();
        let left: bool = conn.exists(format!("session:{}", old.id)).await.unwrap();
        assert!(moved && !left);
        // A second load finds it under the handle.
        keeps_its_session(&proxy, old).await;
    }
    let members: HashSet<String> = conn.smembers("session:user:ada").await.unwrap();
    let want: HashSet<String> = ada.iter().map(|o| o.handle()).collect();
    assert_eq!(members, want, "ada's set holds her handles, and no id");
    assert_eq!(user_handles(&proxy, "ada").await, want);

    let carol = olds.iter().find(|o| o.expired).unwrap();
    the_expired_one_is_reported_once(&proxy, carol).await;
    let left: bool = conn.exists(format!("session:{}", carol.id)).await.unwrap();
    assert!(!left, "the expired session's old key is removed");

    // A stale member (an id whose session is long gone) in bob's set, for migrate to rewrite.
    let stale = SessionId::generate().unwrap();
    let _: i64 = conn.sadd("session:user:bob", stale.as_str()).await.unwrap();

    let file = write_config(dir.path(), "proxy.toml", &toml);
    let out = migrate(&file);
    assert_eq!(
        out.lines().next().unwrap().split(" (").next().unwrap(),
        "moved 2 sessions to their handles",
        "{out}"
    );
    assert!(out.contains("1 user-index entries rewritten"), "{out}");
    let mut ids: Vec<String> = olds.iter().map(|o| o.id.clone()).collect();
    ids.push(stale.to_string());
    no_id_anywhere(vec![redis.conn().await], &ids).await;
    let marker: String = conn.get("session:schema").await.unwrap();
    assert_eq!(marker, "handles");

    // The sessions migrate moved keep working, bob's in his user index.
    for old in olds.iter().filter(|o| !o.expired) {
        keeps_its_session(&proxy, old).await;
    }
    let bob = of_user(&olds, "bob");
    assert_eq!(
        user_handles(&proxy, "bob").await,
        bob.iter().map(|o| o.handle()).collect()
    );
    proxy.stop().await;
    let carol_handle = carol.handle();
    assert_eq!(
        expired_lines(&audit),
        vec![json!({"event":"expired","sid":carol_handle,"user":"carol"})]
    );
    let log = std::fs::read_to_string(&audit).unwrap();
    for id in &ids {
        assert!(!log.contains(id.as_str()), "an id in the audit log");
    }

    // A proxy started after the migration no longer looks for old keys: one written now (by
    // hand, as the old release would have) is not found.
    let late = SessionId::generate().unwrap();
    let record =
        r#"{"data":{"n":1},"created_at":1,"updated_at":1,"expires_at":4102444800000,"version":1}"#;
    ::redis::cmd("HSET")
        .arg(format!("session:{late}"))
        .arg(&[("v", "1"), ("r", record), ("e", "4102444800000")])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let after = TestProxy::with_config(config(app.addr, &toml)).await;
    let seen = get(after.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={late}"))])
        .await
        .app_saw();
    assert!(seen.is_new(), "the marker turns the lookup off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_of_the_previous_release_keeps_every_session() {
    let cluster = RedisCluster::start().await;
    let client = ::redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    replay(&mut conn).await;
    let olds = old_sessions();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let toml = toml(&cluster_store(&cluster), &audit);
    let app = App::start().await;
    let proxy = TestProxy::with_config(config(app.addr, &toml)).await;

    let ada = of_user(&olds, "ada");
    for old in &ada {
        keeps_its_session(&proxy, old).await;
        let moved: bool = conn
            .exists(format!("session:{}", old.handle()))
            .await
            .unwrap();
        let left: bool = conn.exists(format!("session:{}", old.id)).await.unwrap();
        assert!(moved && !left);
    }
    let members: HashSet<String> = conn.smembers("session:user:ada").await.unwrap();
    let want: HashSet<String> = ada.iter().map(|o| o.handle()).collect();
    assert_eq!(members, want);
    assert_eq!(user_handles(&proxy, "ada").await, want);

    let carol = olds.iter().find(|o| o.expired).unwrap();
    the_expired_one_is_reported_once(&proxy, carol).await;

    let file = write_config(dir.path(), "proxy.toml", &toml);
    let out = migrate(&file);
    assert!(
        out.starts_with("moved 2 sessions to their handles"),
        "{out}"
    );
    let ids: Vec<String> = olds.iter().map(|o| o.id.clone()).collect();
    no_id_anywhere(conns(&cluster.urls()).await, &ids).await;
    for old in olds.iter().filter(|o| !o.expired) {
        keeps_its_session(&proxy, old).await;
    }
    proxy.stop().await;
    let carol_handle = carol.handle();
    assert_eq!(
        expired_lines(&audit),
        vec![json!({"event":"expired","sid":carol_handle,"user":"carol"})]
    );
}

/// Writes a session the way the previous release did: `session:<id>`, in ada's set by id.
async fn write_old(conn: &mut impl ConnectionLike, id: &SessionId, expires_at: u64) {
    // The data names the handle, to tell the sessions apart.
    let handle = id.handle();
    let record = format!(
        r#"{{"data":{{"user":"ada","k":"{handle}"}},"created_at":1,"updated_at":1,"expires_at":{expires_at},"version":3}}"#
    );
    ::redis::cmd("HSET")
        .arg(format!("session:{id}"))
        .arg(&[
            ("v", "3".to_owned()),
            ("r", record),
            ("e", expires_at.to_string()),
        ])
        .query_async::<()>(conn)
        .await
        .unwrap();
    ::redis::cmd("PEXPIREAT")
        .arg(format!("session:{id}"))
        .arg(expires_at + 3_600_000)
        .query_async::<()>(conn)
        .await
        .unwrap();
    ::redis::cmd("SADD")
        .arg("session:user:ada")
        .arg(id.as_str())
        .query_async::<()>(conn)
        .await
        .unwrap();
}

/// Eight concurrent first loads of one old session, for each of 10 sessions: every one gets
/// the live session, which ends up under its handle once, the old key and its id gone from the
/// index. Eight of an expired one: exactly one `Expired`.
async fn concurrent_adopts(store: Arc<dyn SessionStore>, conn: &mut impl ConnectionLike) {
    let now = session_proxy::store::now_ms();
    for round in 0..10 {
        let id = SessionId::generate().unwrap();
        let handle = id.handle();
        let dead = round == 9;
        write_old(conn, &id, if dead { now - 1000 } else { now + 3_600_000 }).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let store = store.clone();
            tasks.spawn(async move { store.adopt_legacy(&id, &handle).await.unwrap() });
        }
        let mut answers = Vec::new();
        while let Some(done) = tasks.join_next().await {
            answers.push(done.unwrap());
        }
        if dead {
            let expired = answers
                .iter()
                .filter(|a| matches!(a, Loaded::Expired { user } if user.as_deref() == Some("ada")))
                .count();
            assert_eq!(expired, 1, "{answers:?}");
            assert!(answers.iter().all(|a| !matches!(a, Loaded::Live(_))));
        } else {
            for answer in &answers {
                let Loaded::Live(record) = answer else {
                    panic!("{answers:?}")
                };
                assert_eq!(record.version, 3);
                assert!(record.data.contains(handle.as_str()));
            }
            let stored = store.load(&handle).await.unwrap().unwrap();
            assert_eq!(stored.version, 3);
        }
        let left: bool = ::redis::cmd("EXISTS")
            .arg(format!("session:{id}"))
            .query_async(conn)
            .await
            .unwrap();
        assert!(!left, "the old key is gone");
        let members: Vec<String> = ::redis::cmd("SMEMBERS")
            .arg("session:user:ada")
            .query_async(conn)
            .await
            .unwrap();
        assert!(!members.contains(&id.to_string()), "the id left the index");
        assert_eq!(
            members.contains(&handle.to_string()),
            !dead,
            "the handle is indexed while live"
        );
        assert_eq!(
            store.adopt_legacy(&id, &handle).await.unwrap(),
            if dead {
                Loaded::Missing
            } else {
                Loaded::Live(store.load(&handle).await.unwrap().unwrap())
            },
            "a later adopt finds it where it went"
        );
    }
}

async fn opened(toml: &str) -> Arc<dyn SessionStore> {
    let app_addr = "127.0.0.1:9".parse().unwrap();
    let config = config(app_addr, &format!("[session]\nuser_key = \"user\"\n{toml}"));
    session_proxy::store::open(&config.store)
        .await
        .unwrap()
        .store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adopts_of_one_session_move_it_once() {
    let redis = RedisServer::start().await;
    let store = opened(&server_store(&redis)).await;
    concurrent_adopts(store, &mut redis.conn().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adopts_of_one_session_move_it_once_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let store = opened(&cluster_store(&cluster)).await;
    let client = ::redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    concurrent_adopts(store, &mut conn).await;
}

/// A store with nothing to migrate answers `Missing` and leaves no trace: no handle is made
/// for a cookie nobody knows.
#[tokio::test]
async fn an_unknown_cookie_is_missing_and_writes_nothing() {
    let redis = RedisServer::start().await;
    let store = opened(&server_store(&redis)).await;
    let id = SessionId::generate().unwrap();
    assert_eq!(
        store.adopt_legacy(&id, &id.handle()).await.unwrap(),
        Loaded::Missing
    );
    let keys: Vec<String> = redis.conn().await.keys("*").await.unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// `sessions migrate` on the stores that migrate at open: nothing to do, said so; the memory
/// store refused, as by the other `sessions` commands.
#[test]
fn sessions_migrate_on_sqlite_and_fs_has_nothing_to_do_and_memory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in [
        (
            "sqlite",
            format!(
                "[store]\nkind = \"sqlite\"\npath = \"{}\"\n",
                dir.path().join("s.db").display()
            ),
        ),
        ("fs", crate::support::fs_store(&dir.path().join("fs"))),
    ] {
        let config = write_config(dir.path(), &format!("{name}.toml"), &store);
        let out = migrate(&config);
        assert!(out.contains("nothing to do"), "{name}: {out}");
    }
    let config = write_config(dir.path(), "memory.toml", "[store]\nkind = \"memory\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["--config", &config, "sessions", "migrate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("memory store"));
}
