//! The Redis store (issue [redis]) against real `redis-server` processes: several proxies on one
//! Redis, atomic merges across them, regenerate, an outage, TTL expiry, `SCAN` listing, Redis
//! Cluster, and start-up errors.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::AsyncCommands as _;
use serde_json::{Map, Value, json};
use session_proxy::Proxy;
use session_proxy::session::{DataChange, Handle};
use session_proxy::store::{Record, SessionStore, Update, now_ms};

use crate::support::redis::{RedisCluster, RedisServer, free_port};
use crate::support::{App, Browser, TestProxy, config, get, handle};

fn redis_toml(url: &str, extra: &str) -> String {
    format!("{extra}\n[store]\nkind = \"redis\"\nurl = \"{url}\"\n")
}

fn cluster_toml(cluster: &RedisCluster) -> String {
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[store]\nkind = \"redis\"\nnodes = [{}]\n",
        nodes.join(", ")
    )
}

/// Two proxies (A and B) in front of one test app, sharing one store config.
async fn two_proxies(toml: &str) -> (App, TestProxy, TestProxy) {
    let app = App::start().await;
    let a = TestProxy::with_config(config(app.addr, toml)).await;
    let b = TestProxy::with_config(config(app.addr, toml)).await;
    (app, a, b)
}

/// The browser, pointed at another proxy but keeping its cookie.
fn via(browser: &Browser, proxy: &TestProxy) -> Browser {
    Browser {
        addr: proxy.addr,
        ..browser.clone()
    }
}

fn patch(value: Value) -> Option<DataChange> {
    Some(DataChange::Patch(value.as_object().unwrap().clone()))
}

fn update(proxy: &TestProxy, base: Option<Record>, change: Option<DataChange>) -> Update {
    Update {
        change,
        base,
        now: now_ms(),
        lifetime: proxy.config.session.lifetime,
        max_size: proxy.config.session.max_size,
        extends: true,
        visit: None,
    }
}

fn data(record: &Record) -> Value {
    serde_json::from_str(&record.data).unwrap()
}

#[tokio::test]
async fn a_session_made_through_one_proxy_is_read_changed_and_destroyed_through_another() {
    let redis = RedisServer::start().await;
    let (_app, a, b) = two_proxies(&redis_toml(&redis.url(), "")).await;

    let mut on_a = a.client();
    let r = on_a
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)])
        .await;
    assert_eq!(r.status, 200);
    let id = r.app_saw().session_id();

    let mut on_b = via(&on_a, &b);
    let seen = on_b.get("/").await.app_saw();
    assert!(!seen.is_new());
    assert_eq!(seen.session_id(), id);
    assert_eq!(seen.session(), json!({"user":"ada"}));

    on_b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"n":2}"#)])
        .await;
    let seen = on_a.get("/").await.app_saw();
    assert_eq!(seen.session(), json!({"user":"ada","n":2}));

    let r = on_b
        .get("/")
        .app_responds_with(&[("X-Session-Destroy", "1")])
        .await;
    assert!(r.set_cookie("session_id").unwrap().contains("Max-Age=0"));
    assert!(on_b.cookie.is_none());
    let exists: bool = redis
        .conn()
        .await
        .exists(format!("session:{id}"))
        .await
        .unwrap();
    assert!(!exists, "the key is gone from Redis");

    // A still holds the old cookie: it gets a fresh, empty session.
    let seen = on_a.get("/").await.app_saw();
    assert!(seen.is_new());
    assert_ne!(seen.session_id(), id);
    assert_eq!(seen.session(), json!({}));
}

/// The issue's acceptance test: concurrent `X-Session-Update`s to different keys of one session,
/// through two proxies, all survive.
async fn concurrent_updates_keep_every_key(toml: &str, requests: usize) {
    let (_app, a, b) = two_proxies(toml).await;
    let mut browser = a.client();
    browser
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"start":true}"#)])
        .await;
    let id = browser.cookie.clone().unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..requests {
        let mut client = via(&browser, if i % 2 == 0 { &a } else { &b });
        tasks.spawn(async move {
            let change = json!({ format!("k{i}"): i }).to_string();
            let r = client
                .get("/")
                .app_responds_with(&[("X-Session-Update", &change)])
                .await;
            (r.status, client.cookie)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (status, cookie) = done.unwrap();
        assert_eq!(status, 200);
        assert_eq!(cookie.as_deref(), Some(id.as_str()));
    }

    let session = via(&browser, &b).get("/").await.app_saw().session();
    let mut want = Map::new();
    want.insert("start".to_owned(), json!(true));
    for i in 0..requests {
        want.insert(format!("k{i}"), json!(i));
    }
    assert_eq!(session, Value::Object(want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_through_two_proxies_keep_every_key() {
    let redis = RedisServer::start().await;
    concurrent_updates_keep_every_key(&redis_toml(&redis.url(), ""), 120).await;
}

#[tokio::test]
async fn regenerate_through_one_proxy_kills_the_old_id_on_the_other() {
    let redis = RedisServer::start().await;
    // No grace (tests/it/grace.rs has the grace across two proxies).
    let grace = "[session]\nregenerate_grace = \"0\"";
    let (_app, a, b) = two_proxies(&redis_toml(&redis.url(), grace)).await;
    let mut on_a = a.client();
    on_a.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"cart":[1]}"#)])
        .await;
    let old = on_a.cookie.clone().unwrap();

    let r = on_a
        .get("/login")
        .app_responds_with(&[
            ("X-Session-Regenerate", "1"),
            ("X-Session-Update", r#"{"user":"ada"}"#),
        ])
        .await;
    assert_eq!(r.status, 200);
    let new = on_a.cookie.clone().unwrap();
    assert_ne!(new, old);

    let r = get(b.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={old}"))])
        .await;
    assert!(
        r.app_saw().is_new(),
        "the pre-login id must be dead everywhere"
    );
    let seen = via(&on_a, &b).get("/").await.app_saw();
    assert_eq!(seen.session_id(), new);
    assert_eq!(seen.session(), json!({"cart":[1],"user":"ada"}));
}

#[tokio::test]
async fn when_redis_goes_away_requests_get_503_and_recover_when_it_is_back() {
    let mut redis = RedisServer::start().await;
    let app = App::start().await;
    let proxy = TestProxy::with_config(config(app.addr, &redis_toml(&redis.url(), ""))).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    assert!(b.cookie.is_some());

    redis.stop();
    for app_answer in [&[][..], &[("X-Session-Update", r#"{"b":2}"#)][..]] {
        let start = Instant::now();
        let mut jar = b.clone();
        let get = jar.get("/").app_responds_with(app_answer);
        let r = tokio::time::timeout(Duration::from_secs(10), get)
            .await
            .expect("a request hung while Redis was down");
        assert_eq!(r.status, 503);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    redis.restart().await;
    let start = Instant::now();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), b.get("/"))
            .await
            .expect("a request hung after Redis came back");
        if r.status == 200 {
            // Nothing was persisted, so the old session is gone: a fresh one.
            assert!(r.app_saw().is_new());
            break;
        }
        assert_eq!(r.status, 503);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the proxy did not reconnect to Redis within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = b
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"c":3}"#)])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(b.get("/").await.app_saw().session(), json!({"c":3}));
}

#[tokio::test]
async fn expiry_is_a_redis_ttl() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let toml = redis_toml(&redis.url(), "[session]\nidle_timeout = \"1s\"");
    let proxy = TestProxy::with_config(config(app.addr, &toml)).await;
    assert!(proxy.store.capabilities().expires_by_itself);
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    let id = b.cookie.clone().unwrap();
    let key = format!("session:{}", handle(&id));

    // The key outlives the session by the grace in which a load can still report its expiry.
    let grace = session_proxy::store::redis::GRACE.as_millis() as i64;
    let mut conn = redis.conn().await;
    let pttl: i64 = conn.pttl(&key).await.unwrap();
    assert!(grace < pttl && pttl <= grace + 1000, "PTTL {pttl}");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = b.get("/").await.app_saw();
    assert!(seen.is_new());
    assert_ne!(seen.session_id(), id);
    assert_eq!(seen.session(), json!({}));
    let exists: bool = conn.exists(&key).await.unwrap();
    assert!(
        !exists,
        "the load that found the session expired left its key"
    );
    assert_eq!(proxy.store.prune(now_ms()).await.unwrap(), 0);
}

async fn create_sessions(store: &Arc<dyn SessionStore>, n: usize) -> HashSet<String> {
    let now = now_ms();
    let mut ids = HashSet::new();
    for i in 0..n {
        let id = Handle::generate().unwrap();
        let record = Record {
            data: Arc::from(json!({ "i": i }).to_string()),
            created_at: now,
            updated_at: now,
            expires_at: now + 600_000,
            version: 1,
            meta: Default::default(),
        };
        assert!(store.create(&id, &record).await.unwrap());
        assert!(
            !store.create(&id, &record).await.unwrap(),
            "a live id is never overwritten"
        );
        ids.insert(id.to_string());
    }
    ids
}

/// Pages through `store.list` with `limit` and returns every id it listed. `SCAN` promises each
/// key present for the whole walk *at least* once (it may repeat one, e.g. while Redis rehashes
/// a growing table), so repeats are allowed, but only a few: a cursor that went backwards would
/// repeat whole pages.
async fn list_all(store: &Arc<dyn SessionStore>, limit: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut listed = 0usize;
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let page = store.list(cursor.as_deref(), limit).await.unwrap();
        assert!(
            page.sessions.len() <= limit,
            "{} > {limit}",
            page.sessions.len()
        );
        for (id, record) in page.sessions {
            assert!(record.is_live(now_ms()));
            seen.insert(id.to_string());
            listed += 1;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => {
                assert!(
                    listed <= seen.len() + seen.len() / 10,
                    "{listed} listed for {} sessions",
                    seen.len()
                );
                return seen;
            }
        }
    }
    panic!("the listing never ended");
}

#[tokio::test]
async fn list_pages_through_every_live_session() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let proxy = TestProxy::with_config(config(app.addr, &redis_toml(&redis.url(), ""))).await;
    let ids = create_sessions(&proxy.store, 250).await;

    // Keys that are not live sessions of this prefix are never listed.
    let mut conn = redis.conn().await;
    let _: () = conn.set("other:key", "x").await.unwrap();
    let _: () = conn.hset("session:not-an-id", "r", "{}").await.unwrap();
    let _: () = conn
        .set("session:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "a string")
        .await
        .unwrap();

    assert_eq!(list_all(&proxy.store, 100).await, ids);
    // A small limit ends pages in the middle of a SCAN step.
    assert_eq!(list_all(&proxy.store, 7).await, ids);
    assert_eq!(list_all(&proxy.store, 1000).await, ids);
    assert!(proxy.store.list(None, 0).await.unwrap().sessions.is_empty());
}

#[tokio::test]
async fn key_prefix_is_used_and_glob_characters_in_it_are_literal() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let toml = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"app[1]*:\"\n",
        redis.url()
    );
    let proxy = TestProxy::with_config(config(app.addr, &toml)).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    let id = b.cookie.clone().unwrap();
    let mut conn = redis.conn().await;
    let exists: bool = conn
        .exists(format!("app[1]*:{}", handle(&id)))
        .await
        .unwrap();
    assert!(exists);
    // Matches the unescaped glob `app[1]*:*`, but is not under the prefix.
    let other = Handle::generate().unwrap();
    let _: () = conn
        .hset(format!("app1xyz:{other}"), "r", "{}")
        .await
        .unwrap();
    let listed: Vec<String> = proxy
        .sessions()
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, vec![handle(&id)]);
}

/// A proxy on a fresh Redis whose store holds one session, `{"a":1}`, written directly.
async fn proxy_with_one_session() -> (RedisServer, App, TestProxy, Handle) {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let proxy = TestProxy::with_config(config(app.addr, &redis_toml(&redis.url(), ""))).await;
    let id = Handle::generate().unwrap();
    let first = update(&proxy, None, patch(json!({"a":1})))
        .create()
        .unwrap();
    assert!(proxy.store.create(&id, &first).await.unwrap());
    (redis, app, proxy, id)
}

/// The compare-and-set paths, driven directly: an update whose base is stale is re-applied to
/// the stored record, and one on a destroyed session writes nothing.
#[tokio::test]
async fn update_with_a_stale_base_merges_and_never_resurrects() {
    let (redis, _app, proxy, id) = proxy_with_one_session().await;
    let store = &proxy.store;

    let base = store.load(&id).await.unwrap().unwrap();
    let b = store
        .update(
            &id,
            &update(&proxy, Some(base.clone()), patch(json!({"b":2}))),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.version, base.version + 1);
    // Still carries the old base: one conflict, then merged onto {"a":1,"b":2}.
    let c = store
        .update(
            &id,
            &update(&proxy, Some(base.clone()), patch(json!({"c":3}))),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data(&c), json!({"a":1,"b":2,"c":3}));
    assert_eq!(c.version, base.version + 2);
    // No base at all: read, then write.
    let d = store
        .update(&id, &update(&proxy, None, patch(json!({"d":4}))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data(&store.load(&id).await.unwrap().unwrap()), data(&d));

    assert!(store.delete(&id).await.unwrap());
    assert!(!store.delete(&id).await.unwrap());
    let gone = store
        .update(&id, &update(&proxy, Some(d), patch(json!({"e":5}))))
        .await
        .unwrap();
    assert!(gone.is_none());
    let exists: bool = redis
        .conn()
        .await
        .exists(format!("session:{id}"))
        .await
        .unwrap();
    assert!(
        !exists,
        "a destroyed session is not resurrected by an update"
    );
}

#[tokio::test]
async fn regenerate_carries_over_a_change_that_raced_in_and_never_revives_a_destroyed_session() {
    let (redis, _app, proxy, old) = proxy_with_one_session().await;
    let store = &proxy.store;
    let base = store.load(&old).await.unwrap().unwrap();

    // Another request writes after this one loaded `base`.
    store
        .update(
            &old,
            &update(&proxy, Some(base.clone()), patch(json!({"raced":true}))),
        )
        .await
        .unwrap()
        .unwrap();
    let new = Handle::generate().unwrap();
    let moved = store
        .regenerate(
            &old,
            &new,
            &update(&proxy, Some(base), patch(json!({"user":"ada"}))),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data(&moved), json!({"a":1,"raced":true,"user":"ada"}));
    assert_eq!(store.load(&new).await.unwrap(), Some(moved));
    assert_eq!(store.load(&old).await.unwrap(), None);

    // Regenerating a session destroyed meanwhile creates nothing.
    let base = store.load(&new).await.unwrap().unwrap();
    assert!(store.delete(&new).await.unwrap());
    let newer = Handle::generate().unwrap();
    let r = store
        .regenerate(&new, &newer, &update(&proxy, Some(base), None))
        .await
        .unwrap();
    assert!(r.is_none());
    let keys: Vec<String> = redis.conn().await.keys("session:*").await.unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// The error a proxy with `toml` (a Redis store) fails to start with, as an operator reads it;
/// `why` says why it must fail. Opening may not hang.
async fn start_error(app: &App, toml: &str, why: &str) -> String {
    let err = tokio::time::timeout(Duration::from_secs(10), Proxy::open(config(app.addr, toml)))
        .await
        .unwrap_or_else(|_| panic!("opening the store hung: {why}"))
        .err()
        .unwrap_or_else(|| panic!("{why}"));
    let text = format!("{err}");
    assert!(text.contains("cannot connect to Redis"), "{text}");
    text
}

#[tokio::test]
async fn a_redis_url_with_a_wrong_port_fails_at_start_with_a_clear_error() {
    let app = App::start().await;
    let port = free_port();
    let url = format!("redis://ada:hunter2@127.0.0.1:{port}/0");
    let start = Instant::now();
    let text = start_error(
        &app,
        &redis_toml(&url, ""),
        "opening a store on a closed port must fail",
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        text.contains(&format!("redis://ada:***@127.0.0.1:{port}/0")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
}

#[tokio::test]
async fn username_and_password_in_the_url_are_used() {
    let redis = RedisServer::start_with(&[
        "--user", "default", "off", // No anonymous access.
        "--user", "ada", "on", ">hunter2", "~*", "&*", "+@all",
    ])
    .await;
    let app = App::start().await;
    let url = format!("redis://ada:hunter2@127.0.0.1:{}/0", redis.port);
    let proxy = TestProxy::with_config(config(app.addr, &redis_toml(&url, ""))).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    assert_eq!(b.get("/").await.app_saw().session(), json!({"a":1}));

    let wrong = format!("redis://ada:wrong@127.0.0.1:{}/0", redis.port);
    let text = start_error(
        &app,
        &redis_toml(&wrong, ""),
        "a wrong password must fail at start",
    )
    .await;
    assert!(!text.contains("wrong@"), "{text}");
}

#[tokio::test]
async fn cluster_create_read_update_list_destroy() {
    let cluster = RedisCluster::start().await;
    // No grace: the old id dies with the regenerate (tests/it/grace.rs has it on a cluster).
    let toml = format!(
        "[session]\nregenerate_grace = \"0\"\n{}",
        cluster_toml(&cluster)
    );
    let (_app, a, b) = two_proxies(&toml).await;

    let mut on_a = a.client();
    on_a.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)])
        .await;
    let id = on_a.cookie.clone().unwrap();
    let mut on_b = via(&on_a, &b);
    assert_eq!(
        on_b.get("/").await.app_saw().session(),
        json!({"user":"ada"})
    );
    on_b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"n":2}"#)])
        .await;
    assert_eq!(
        on_a.get("/").await.app_saw().session(),
        json!({"user":"ada","n":2})
    );
    on_a.get("/")
        .app_responds_with(&[("X-Session-Regenerate", "1")])
        .await;
    let new = on_a.cookie.clone().unwrap();
    assert_ne!(new, id);
    let r = get(b.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={id}"))])
        .await;
    assert!(r.app_saw().is_new());

    // Sessions spread over all three primaries; the listing walks every one.
    let mut ids = create_sessions(&a.store, 60).await;
    ids.insert(handle(&new));
    assert_eq!(list_all(&b.store, 7).await, ids);
    assert_eq!(list_all(&b.store, 100).await, ids);

    let r = via(&on_a, &b)
        .get("/")
        .app_responds_with(&[("X-Session-Destroy", "1")])
        .await;
    assert!(r.set_cookie("session_id").unwrap().contains("Max-Age=0"));
    let seen = on_a.get("/").await.app_saw();
    assert!(seen.is_new());
    assert_eq!(seen.session(), json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_concurrent_updates_through_two_proxies_keep_every_key() {
    let cluster = RedisCluster::start().await;
    concurrent_updates_keep_every_key(&cluster_toml(&cluster), 120).await;
}

#[tokio::test]
async fn rediss_speaks_tls_and_reports_a_handshake_failure_cleanly() {
    // A plain-text server: the TLS handshake must fail with an error, not a panic for want of
    // a crypto provider.
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let url = redis.url().replacen("redis://", "rediss://", 1);
    let text = start_error(
        &app,
        &redis_toml(&url, ""),
        "TLS to a plain-text server must fail",
    )
    .await;
    assert!(!text.contains("panicked"), "{text}");
}

#[tokio::test]
async fn store_flag_takes_a_redis_url() {
    let redis = RedisServer::start().await;
    let run = |store: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .args(["check", "--config", "proxy.toml", "--store", &store])
            .output()
            .unwrap()
    };
    // `check` opens the store: a live Redis passes, a closed port fails with exit code 1.
    let out = run(redis.url());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
    let out = run(format!("redis://127.0.0.1:{}/0", free_port()));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to Redis"));
}

/// A record another version of the proxy wrote (its JSON as `serde_json` spelled it, and a hand
/// edit's spacing and field order) is read and updated like any other, and the update leaves it
/// in the same spelling the other stores use.
#[tokio::test]
async fn a_record_written_by_an_earlier_version_still_loads_and_updates() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let proxy = TestProxy::with_config(config(app.addr, &redis_toml(&redis.url(), ""))).await;
    let mut conn = redis.conn().await;
    let now = now_ms();
    let expires = now + 600_000;
    for (n, stored) in [
        format!(
            r#"{{"data":{{"cart":[1,{{"é":"\u00e9"}}],"n":null}},"created_at":{now},"updated_at":{now},"expires_at":{expires},"version":7}}"#
        ),
        format!(
            r#"{{ "version": 7, "expires_at": {expires}, "data": {{ "cart": [1, {{"é": "\u00e9"}}], "n": null }}, "updated_at": {now}, "created_at": {now} }}"#
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let id = session_proxy::session::SessionId::generate().unwrap();
        let key = format!("session:{}", id.handle());
        let _: () = ::redis::cmd("HSET")
            .arg(&key)
            .arg("v")
            .arg(7)
            .arg("r")
            .arg(&stored)
            .arg("e")
            .arg(expires)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut b = proxy.client();
        b.cookie = Some(id.to_string());
        let seen = b
            .get("/")
            .app_responds_with(&[("X-Session-Update", r#"{"n":2}"#)])
            .await
            .app_saw();
        assert!(!seen.is_new(), "record {n} did not load: {stored}");
        assert_eq!(seen.session(), json!({"cart":[1,{"é":"é"}],"n":null}));

        let written: String = conn.hget(&key, "r").await.unwrap();
        let record = Record::from_json(written.as_bytes()).unwrap();
        assert_eq!(data(&record), json!({"cart":[1,{"é":"é"}],"n":2}));
        assert_eq!(record.version, 8);
        assert_eq!(written, record.to_json().unwrap());
        assert!(
            written.starts_with(r#"{"data":{"#)
                && written.contains(r#","version":8,"meta":{"returned":true,"#),
            "{written}"
        );
    }
}

/// A Redis that stops answering (here: stopped with SIGSTOP, its connections left open) costs
/// each request a 503 within `store.timeout`, not a hang; once it answers again, the session
/// it holds is served as before.
#[tokio::test]
async fn a_redis_that_stops_answering_costs_a_503_within_the_store_timeout() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let toml = format!("{}timeout = \"300ms\"\n", redis_toml(&redis.url(), ""));
    let proxy = TestProxy::with_config(config(app.addr, &toml)).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    let id = b.cookie.clone().unwrap();
    let pid = redis.pid().unwrap().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };

    signal("-STOP");
    for app_answer in [&[][..], &[("X-Session-Update", r#"{"b":2}"#)][..]] {
        let start = Instant::now();
        let mut jar = b.clone();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            jar.get("/").app_responds_with(app_answer),
        )
        .await;
        let elapsed = start.elapsed();
        let Ok(r) = r else {
            signal("-CONT");
            panic!("a request hung while Redis was not answering");
        };
        assert_eq!(r.status, 503);
        assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    }
    signal("-CONT");

    let start = Instant::now();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), b.get("/"))
            .await
            .expect("a request hung after Redis answered again");
        if r.status == 200 {
            let seen = r.app_saw();
            assert_eq!(seen.session_id(), id);
            assert_eq!(seen.session(), json!({"a":1}));
            break;
        }
        assert_eq!(r.status, 503);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the proxy did not serve from Redis again within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server that accepts the connection but never answers (not Redis, or a hung one) stops
/// the proxy at start with the usual message, within about the store timeout.
#[tokio::test]
async fn a_redis_that_never_answers_fails_at_start_within_the_store_timeout() {
    let app = App::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Holds every connection open, reads nothing and writes nothing.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let url = format!("redis://127.0.0.1:{port}/0");
    let toml = format!("{}timeout = \"400ms\"\n", redis_toml(&url, ""));
    let start = Instant::now();
    let text = start_error(
        &app,
        &toml,
        "a server that never answers must fail the start",
    )
    .await;
    assert!(text.contains(&url), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    silent.abort();
}
