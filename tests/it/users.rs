//! Sessions per user through the real proxy: the app's `X-Session-Revoke: others|all`, the
//! admin's `GET`/`DELETE /users/{user}/sessions` (with `except`), `session.max_per_user`
//! eviction of the least recently used session, revocation across two proxies on one Redis,
//! a dead id never listed (Redis Cluster, a set entry behind the store's back), the index
//! bounded by the live sessions after expiry, rebuilt at open (fs, sqlite), and the CLI.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use session_proxy::session::{Handle, SessionId};

use crate::support::{App, Browser, Resp, TestProxy, request, write_config};

const USERS: &str = "[session]\nuser_key = \"user\"\n";
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// A browser that signed in as `user`: the app set the user key in its session.
async fn signed_in(proxy: &TestProxy, user: &str) -> Browser {
    let mut b = proxy.client();
    let update = json!({ "user": user }).to_string();
    b.get("/login")
        .app_responds_with(&[("X-Session-Update", &update)])
        .await;
    assert!(b.cookie.is_some());
    b
}

/// What the app sees of `b`'s session on its next request: its data, and whether it is new.
async fn session_of(b: &mut Browser) -> (Value, bool) {
    let seen = b.get("/").await.app_saw();
    (seen.session(), seen.is_new())
}

async fn admin(addr: SocketAddr, method: Method, path: &str) -> Resp {
    request(addr, method, path).body(Bytes::new()).await
}

fn ids(page: &Value) -> Vec<String> {
    let mut ids: Vec<String> = page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["handle"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The handle of the browser's session (the name the stores and the admin API know it by).
fn id_of(b: &Browser) -> String {
    SessionId::parse(b.cookie.as_deref().unwrap())
        .unwrap()
        .handle()
        .to_string()
}

/// `others`: every other session of the user ends, this one and other users' stay; the header
/// never reaches the client.
#[tokio::test]
async fn revoke_others_signs_the_user_out_elsewhere() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, USERS).await;
    let (mut laptop, mut phone, mut other) = (
        signed_in(&proxy, "ada").await,
        signed_in(&proxy, "ada").await,
        signed_in(&proxy, "bob").await,
    );
    let r = laptop
        .get("/password")
        .app_responds_with(&[("X-Session-Revoke", "others")])
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("x-session-revoke"));
    assert_eq!(
        session_of(&mut laptop).await,
        (json!({"user":"ada"}), false)
    );
    assert_eq!(
        session_of(&mut phone).await,
        (json!({}), true),
        "still signed in"
    );
    assert_eq!(session_of(&mut other).await, (json!({"user":"bob"}), false));
}

/// `all`: this session ends too, and its cookie is cleared.
#[tokio::test]
async fn revoke_all_includes_this_session() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, USERS).await;
    let (mut laptop, mut phone) = (
        signed_in(&proxy, "ada").await,
        signed_in(&proxy, "ada").await,
    );
    let r = laptop
        .get("/lock")
        .app_responds_with(&[("X-Session-Revoke", "all")])
        .await;
    let cookie = r.set_cookie(&laptop.cookie_name).unwrap();
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
    assert!(laptop.cookie.is_none());
    assert_eq!(session_of(&mut phone).await, (json!({}), true));
    assert!(
        proxy
            .sessions()
            .await
            .iter()
            .all(|(_, d)| d["user"] != "ada")
    );
}

/// The update in the same response applies first: a sign-in that revokes the user's other
/// sessions keeps the one it signed in; a Destroy with `others` ends them all.
#[tokio::test]
async fn revoke_composes_with_update_and_destroy() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, USERS).await;
    let mut old = signed_in(&proxy, "ada").await;
    let mut fresh = proxy.client();
    fresh
        .get("/login")
        .app_responds_with(&[
            ("X-Session-Update", r#"{"user":"ada"}"#),
            ("X-Session-Revoke", "others"),
        ])
        .await;
    assert_eq!(session_of(&mut fresh).await, (json!({"user":"ada"}), false));
    assert_eq!(session_of(&mut old).await, (json!({}), true));

    let mut second = signed_in(&proxy, "ada").await;
    fresh
        .get("/logout")
        .app_responds_with(&[("X-Session-Destroy", "1"), ("X-Session-Revoke", "others")])
        .await;
    assert!(fresh.cookie.is_none());
    assert_eq!(session_of(&mut second).await, (json!({}), true));

    // A bad value is dropped; the rest of the response's instructions still apply.
    let mut b = signed_in(&proxy, "eve").await;
    let mut keep = signed_in(&proxy, "eve").await;
    b.get("/")
        .app_responds_with(&[
            ("X-Session-Revoke", "everyone"),
            ("X-Session-Update", r#"{"n":1}"#),
        ])
        .await;
    assert_eq!(session_of(&mut b).await.0, json!({"user":"eve","n":1}));
    assert!(!session_of(&mut keep).await.1);
}

/// The admin lists one user's sessions (the listing's shape, with the user) and signs the user
/// out everywhere, or everywhere but one session.
#[tokio::test]
async fn admin_lists_and_revokes_a_users_sessions() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &format!("{USERS}{ADMIN}")).await;
    let addr = proxy.admin_addr();
    let (mut a1, mut a2, mut a3, mut bob) = (
        signed_in(&proxy, "ada").await,
        signed_in(&proxy, "ada").await,
        signed_in(&proxy, "ada").await,
        signed_in(&proxy, "bob").await,
    );
    let r = admin(addr, Method::GET, "/users/ada/sessions").await;
    assert_eq!(r.status, 200);
    let page = r.json();
    let mut want = vec![id_of(&a1), id_of(&a2), id_of(&a3)];
    want.sort();
    assert_eq!(ids(&page), want);
    assert!(page["next_cursor"].is_null());
    let first = &page["sessions"][0];
    assert_eq!(first["user"], "ada");
    for field in ["created_at", "updated_at", "expires_at", "size"] {
        assert!(first[field].is_u64(), "{field}: {page}");
    }
    let listing = admin(addr, Method::GET, "/sessions").await.json();
    assert!(
        listing["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["user"] == "bob"),
        "{listing}"
    );

    let keep = id_of(&a2);
    let r = admin(
        addr,
        Method::DELETE,
        &format!("/users/ada/sessions?except={keep}"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"revoked": 2}));
    assert!(session_of(&mut a1).await.1);
    assert!(session_of(&mut a3).await.1);
    assert_eq!(session_of(&mut a2).await, (json!({"user":"ada"}), false));

    let r = admin(addr, Method::DELETE, "/users/ada/sessions").await;
    assert_eq!(r.json(), json!({"revoked": 1}));
    assert!(session_of(&mut a2).await.1);
    assert!(!session_of(&mut bob).await.1);
    let r = admin(addr, Method::GET, "/users/ada/sessions").await;
    assert_eq!(ids(&r.json()), Vec::<String>::new());

    for bad in [
        "/users/ada/sessions?except=short",
        "/users/ada/sessions?everyone=1",
    ] {
        let r = admin(addr, Method::DELETE, bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json()["error"].is_string());
    }
    assert!(
        !session_of(&mut bob).await.1,
        "a bad call revoked something"
    );
}

/// Without `session.user_key` there is no index: the admin routes say so, and an app's
/// `X-Session-Revoke` is stripped and ignored.
#[tokio::test]
async fn without_a_user_key_there_is_nothing_to_revoke() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, ADMIN).await;
    let r = admin(proxy.admin_addr(), Method::GET, "/users/ada/sessions").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("user_key"));
    let r = admin(proxy.admin_addr(), Method::DELETE, "/users/ada/sessions").await;
    assert_eq!(r.status, 404);
    let (mut a, mut b) = (
        signed_in(&proxy, "ada").await,
        signed_in(&proxy, "ada").await,
    );
    let r = a
        .get("/")
        .app_responds_with(&[("X-Session-Revoke", "all")])
        .await;
    assert!(!r.headers.contains_key("x-session-revoke"));
    assert!(!session_of(&mut a).await.1);
    assert!(!session_of(&mut b).await.1);
}

/// `max_per_user = 2`: a third sign-in ends the least recently used of the other two, which is
/// not the oldest one when that one was used since.
#[tokio::test]
async fn max_per_user_evicts_the_least_recently_used() {
    evicts_the_least_recently_used("").await;
}

/// The same on the postgres store: the `user_name` column's index finds the user's sessions.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn max_per_user_evicts_the_least_recently_used_on_postgres() {
    let db = crate::support::postgres::PgDb::new().await;
    evicts_the_least_recently_used(&format!(
        "[store]\nkind = \"postgres\"\nurl = \"{}\"\n",
        db.url()
    ))
    .await;
}

async fn evicts_the_least_recently_used(store: &str) {
    let app = App::start().await;
    let toml =
        format!("{USERS}max_per_user = 2\nidle_timeout = \"1h\"\ntouch_interval = \"1s\"\n{store}");
    let proxy = TestProxy::start(&app, &toml).await;
    let mut first = signed_in(&proxy, "ada").await;
    let mut second = signed_in(&proxy, "ada").await;
    let mut bob = signed_in(&proxy, "bob").await;
    // Used again after `second` signed in: `second` is now the least recently used.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    first.get("/").await;
    let mut third = signed_in(&proxy, "ada").await;
    assert_eq!(
        session_of(&mut second).await,
        (json!({}), true),
        "not evicted"
    );
    assert!(!session_of(&mut first).await.1);
    assert!(!session_of(&mut third).await.1);
    assert!(!session_of(&mut bob).await.1);
    // Re-saving a signed-in session is no new sign-in: nothing more is evicted.
    third
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada","n":1}"#)])
        .await;
    assert!(!session_of(&mut first).await.1);
    let live: Vec<_> = proxy
        .sessions()
        .await
        .into_iter()
        .filter(|(_, d)| d["user"] == "ada")
        .collect();
    assert_eq!(live.len(), 2, "{live:?}");
}

/// Two proxies on one Redis: a revoke through one ends the session the other serves, on its
/// very next request.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_takes_effect_on_every_proxy_sharing_the_store() {
    let server = crate::support::redis::RedisServer::start().await;
    a_revoke_takes_effect_on_every_proxy(&format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\n",
        server.url()
    ))
    .await;
}

/// The same with two proxies on one PostgreSQL database.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_takes_effect_on_every_proxy_sharing_one_postgres() {
    let db = crate::support::postgres::PgDb::new().await;
    a_revoke_takes_effect_on_every_proxy(&format!(
        "[store]\nkind = \"postgres\"\nurl = \"{}\"\n",
        db.url()
    ))
    .await;
}

async fn a_revoke_takes_effect_on_every_proxy(store: &str) {
    let app = App::start().await;
    let toml = format!("{USERS}{store}");
    let (one, two) = (
        TestProxy::start(&app, &toml).await,
        TestProxy::start(&app, &toml).await,
    );
    let mut laptop = signed_in(&one, "ada").await;
    let mut phone = signed_in(&two, "ada").await;
    let mut also = Browser {
        addr: one.addr,
        ..phone.clone()
    };
    assert!(!session_of(&mut also).await.1, "the proxies share sessions");
    laptop
        .get("/password")
        .app_responds_with(&[("X-Session-Revoke", "others")])
        .await;
    assert_eq!(session_of(&mut phone).await, (json!({}), true));
    let mut laptop_on_two = Browser {
        addr: two.addr,
        ..laptop.clone()
    };
    assert_eq!(
        session_of(&mut laptop_on_two).await,
        (json!({"user":"ada"}), false)
    );
}

/// Redis Cluster writes the index in a second call, so a set can name a session that is gone
/// or is another user's: neither is ever listed, and the gone one leaves the set.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_id_is_never_listed_on_redis_cluster() {
    use redis::AsyncCommands as _;
    let cluster = crate::support::redis::RedisCluster::start().await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    let toml = format!(
        "{USERS}[store]\nkind = \"redis\"\nnodes = [{}]\n",
        nodes.join(", ")
    );
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &toml).await;
    let (a, b, bob) = (
        signed_in(&proxy, "ada").await,
        signed_in(&proxy, "ada").await,
        signed_in(&proxy, "bob").await,
    );
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    // Behind the store's back: `a`'s key goes, and bob's session is added to ada's set.
    let _: i64 = conn.del(format!("session:{}", id_of(&a))).await.unwrap();
    let _: i64 = conn.sadd("session:user:ada", id_of(&bob)).await.unwrap();
    let listed: Vec<Handle> = proxy
        .store
        .user_sessions("ada")
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, vec![Handle::parse(&id_of(&b)).unwrap()]);
    let members: Vec<String> = conn.smembers("session:user:ada").await.unwrap();
    assert!(
        !members.contains(&id_of(&a)),
        "the dead id stayed: {members:?}"
    );
}

/// On one Redis server the set follows the session in the same script; one whose member
/// expired by TTL sheds it on the next read, and the set itself expires with its last session.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_users_set_is_bounded_by_its_live_sessions() {
    use redis::AsyncCommands as _;
    let server = crate::support::redis::RedisServer::start().await;
    let app = App::start().await;
    let toml = format!(
        "[session]\nuser_key = \"user\"\nidle_timeout = \"2s\"\n[store]\nkind = \"redis\"\nurl = \"{}\"\n",
        server.url()
    );
    let proxy = TestProxy::start(&app, &toml).await;
    let mut conn = server.conn().await;
    let a = signed_in(&proxy, "ada").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let b = signed_in(&proxy, "ada").await;
    let members: Vec<String> = conn.smembers("session:user:ada").await.unwrap();
    assert_eq!(members.len(), 2);
    let ttl: i64 = conn.pttl("session:user:ada").await.unwrap();
    assert!(
        ttl > 1000 && ttl <= 2000,
        "the set's expiry follows its latest session: {ttl}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // `a` expired by TTL; `b` is live.
    let listed = proxy.store.user_sessions("ada").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0.to_string(), id_of(&b));
    let members: Vec<String> = conn.smembers("session:user:ada").await.unwrap();
    assert_eq!(members, vec![id_of(&b)], "{}", id_of(&a));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let exists: bool = conn.exists("session:user:ada").await.unwrap();
    assert!(!exists, "the set outlived its sessions");
}

/// The memory and sqlite indexes shrink with the sweep: after expiry and a prune, no entry is
/// left for a dead session.
#[tokio::test]
async fn the_sweep_removes_index_entries() {
    use session_proxy::session::UserKey;
    use session_proxy::store::memory::MemoryStore;
    use session_proxy::store::{Record, SessionStore, now_ms};
    let memory = MemoryStore::new(Some(UserKey::new("user")));
    let now = now_ms();
    let record = |expires_at| Record {
        data: std::sync::Arc::from(r#"{"user":"ada"}"#),
        created_at: now,
        updated_at: now,
        expires_at,
        version: 1,
        meta: Default::default(),
    };
    for i in 0..10 {
        let id = Handle::generate().unwrap();
        let expires_at = if i < 7 { now + 200 } else { now + 3_600_000 };
        assert!(memory.create(&id, &record(expires_at)).await.unwrap());
    }
    assert_eq!(memory.user_entries(), 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(memory.user_sessions("ada").await.unwrap().len(), 3);
    assert_eq!(memory.prune(now_ms()).await.unwrap(), 7);
    assert_eq!(memory.user_entries(), 3);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let config = session_proxy::config::SqliteConfig {
        path: path.clone(),
        mode: 0o600,
        fsync: false,
        timeout: Duration::from_secs(5),
    };
    let sqlite = session_proxy::store::sqlite::SqliteStore::open_indexed(
        config,
        session_proxy::store::sqlite::Reads::Inline,
        Some(UserKey::new("user")),
    )
    .await
    .unwrap();
    let now = now_ms();
    for i in 0..10 {
        let expires_at = if i < 7 { now + 200 } else { now + 3_600_000 };
        let r = Record {
            expires_at,
            ..record(0)
        };
        assert!(
            sqlite
                .create(&Handle::generate().unwrap(), &r)
                .await
                .unwrap()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sqlite.prune(now_ms()).await.unwrap(), 7);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let indexed: i64 = conn
        .query_row(
            "SELECT count(*) FROM sessions WHERE user = 'ada'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexed, 3);
}

/// The fs index is per process, rebuilt from the files at open; the sqlite column is rebuilt
/// when the file is opened with another `user_key` (sessions written before it was set are
/// found too).
#[tokio::test]
async fn the_index_is_rebuilt_at_open() {
    for kind in ["fs", "sqlite"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join(if kind == "fs" { "sessions" } else { "s.db" });
        let store = |session: &str| {
            format!(
                "{session}[store]\nkind = \"{kind}\"\npath = \"{}\"\nfsync = false\n",
                path.display()
            )
        };
        let app = App::start().await;
        let plain = TestProxy::start(&app, &store("")).await;
        let mut before = plain.client();
        before
            .get("/")
            .app_responds_with(&[("X-Session-Update", r#"{"uid":7,"user":"x"}"#)])
            .await;
        plain.stop().await;
        for key in ["uid", "user", "uid"] {
            let proxy =
                TestProxy::start(&app, &store(&format!("[session]\nuser_key = \"{key}\"\n"))).await;
            let user = if key == "uid" { "7" } else { "x" };
            let listed = proxy.store.user_sessions(user).await.unwrap();
            assert_eq!(listed.len(), 1, "{kind} with user_key {key}");
            assert_eq!(listed[0].0.to_string(), id_of(&before));
            let other = if key == "uid" { "x" } else { "7" };
            assert!(proxy.store.user_sessions(other).await.unwrap().is_empty());
            proxy.stop().await;
        }
    }
}

/// `sessions user USER` prints the user's sessions as JSON lines; `sessions revoke USER` ends
/// them, and the proxy's next request with the cookie gets a fresh session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_and_revokes_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let toml = format!(
        "{USERS}[store]\nkind = \"sqlite\"\npath = \"{}\"\nfsync = false\n",
        db.display()
    );
    let config = write_config(dir.path(), "proxy.toml", &toml);
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &toml).await;
    let (mut a, mut b, mut bob) = (
        signed_in(&proxy, "ada").await,
        signed_in(&proxy, "ada").await,
        signed_in(&proxy, "bob").await,
    );
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .args(["--config", &config, "sessions"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = run(&["user", "ada"]);
    let mut ids: Vec<String> = listed
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["handle"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    let mut want = vec![id_of(&a), id_of(&b)];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(run(&["revoke", "ada"]).trim(), "revoked 2 sessions");
    assert!(session_of(&mut a).await.1);
    assert!(session_of(&mut b).await.1);
    assert!(!session_of(&mut bob).await.1);
    assert_eq!(run(&["user", "ada"]), "");
}

/// `store.hash_users`: the index holds a hash of each user, never the name (the sqlite column,
/// the Redis set's key), and every way of naming a user still works: the admin's routes, the
/// CLI's, the app's revoke. Switching it on rebuilds a sqlite file's index at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_users_keep_names_out_of_the_store_and_everything_still_finds_them() {
    use redis::AsyncCommands as _;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let redis = crate::support::redis::RedisServer::start().await;
    let stores = [
        format!("[store]\nkind = \"sqlite\"\npath = \"{}\"\n", db.display()),
        format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url()),
    ];
    let app = App::start().await;
    for store in stores {
        // A plain index first, then hashed: the sqlite file's index is rebuilt at open.
        let plain = TestProxy::start(&app, &format!("{USERS}{store}")).await;
        let early = signed_in(&plain, "ada-lovelace").await;
        plain.stop().await;
        let toml = format!("{USERS}{ADMIN}{store}hash_users = true\n");
        let proxy = TestProxy::start(&app, &toml).await;
        let (mut a, mut b, mut bob) = (
            signed_in(&proxy, "ada-lovelace").await,
            signed_in(&proxy, "ada-lovelace").await,
            signed_in(&proxy, "bob-the-builder").await,
        );
        let admin = proxy.admin_addr();
        let listed = request(admin, Method::GET, "/users/ada-lovelace/sessions")
            .await
            .json();
        let want = if store.contains("sqlite") { 3 } else { 2 };
        assert_eq!(
            listed["sessions"].as_array().unwrap().len(),
            want,
            "{store}: {listed}"
        );
        // The admin shows the user as the data names it.
        assert_eq!(listed["sessions"][0]["user"], "ada-lovelace");
        // At rest: no name.
        let at_rest: Vec<u8> = if store.contains("sqlite") {
            let conn = rusqlite::Connection::open(&db).unwrap();
            let users: Vec<Option<String>> = conn
                .prepare("SELECT user FROM sessions")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            format!("{users:?}").into_bytes()
        } else {
            let mut conn = redis.conn().await;
            let keys: Vec<String> = conn.keys("*").await.unwrap();
            let mut all = format!("{keys:?}");
            for key in keys.iter().filter(|k| k.contains("user:")) {
                let members: Vec<String> = conn.smembers(key).await.unwrap();
                all.push_str(&format!("{members:?}"));
            }
            all.into_bytes()
        };
        let text = String::from_utf8(at_rest).unwrap();
        assert!(
            !text.contains("\"bob-the-builder\"") && !text.contains(":bob-the-builder"),
            "{store}: {text}"
        );
        if store.contains("sqlite") {
            assert!(!text.contains("ada-lovelace"), "{text}");
        }
        // The app's revoke and the admin's still find the user.
        a.get("/")
            .app_responds_with(&[("X-Session-Revoke", "others")])
            .await;
        assert!(session_of(&mut b).await.1, "{store}: b was not revoked");
        assert!(!session_of(&mut a).await.1);
        let r = request(admin, Method::DELETE, "/users/bob-the-builder/sessions").await;
        assert_eq!(r.json(), json!({"revoked": 1}), "{store}");
        assert!(session_of(&mut bob).await.1);
        drop(early);
        proxy.stop().await;
    }
}
