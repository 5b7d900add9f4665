//! What a record keeps besides the data (issue sessions-2, parts 1, 4 and 5a), through the real
//! proxy on memory, sqlite and Redis: `X-Session-Remember` (a persistent cookie and idle
//! timeout, capped by `session.remember_max`, `0` back to the defaults, kept across Regenerate
//! and a restart), the device fields in the admin API, `X-Session-Revoke: <handle>` (one other
//! session of the same user, never another user's), `X-Session-Devices` on a
//! `session.devices_path`, and `session.first_lifetime` (sessions whose cookie never comes back
//! vanish, returning ones stay).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use session_proxy::session::{Handle, SessionId, now_ms};

use crate::support::redis::RedisServer;
use crate::support::{App, Browser, ProxyProcess, TestProxy, get, request, write_config};

const DAY_S: u64 = 86_400;
const DAY_MS: u64 = DAY_S * 1000;

/// The three stores, each as a `[store]` section (kept alive by the returned guards).
struct Stores {
    dir: tempfile::TempDir,
    redis: RedisServer,
}

impl Stores {
    async fn start() -> Stores {
        Stores {
            dir: tempfile::tempdir().unwrap(),
            redis: RedisServer::start().await,
        }
    }

    /// `(name, [store] section)`; the sqlite file is `name`'s own.
    fn each(&self, name: &str) -> Vec<(&'static str, String)> {
        let db = self.dir.path().join(format!("{name}.db"));
        vec![
            ("memory", "[store]\nkind = \"memory\"\n".to_owned()),
            (
                "sqlite",
                format!("[store]\nkind = \"sqlite\"\npath = \"{}\"\n", db.display()),
            ),
            (
                "redis",
                format!(
                    "[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{name}:\"\n",
                    self.redis.url()
                ),
            ),
        ]
    }
}

fn handle_of(b: &Browser) -> Handle {
    SessionId::parse(b.cookie.as_deref().unwrap())
        .unwrap()
        .handle()
}

/// The `Max-Age` of a `Set-Cookie` line, if it has one.
fn max_age(line: &str) -> Option<u64> {
    line.split(';')
        .find_map(|a| a.trim().strip_prefix("Max-Age="))
        .map(|v| v.parse().unwrap())
}

async fn admin_json(addr: SocketAddr, path: &str) -> Value {
    let r = request(addr, Method::GET, path).body(Bytes::new()).await;
    assert_eq!(r.status, 200, "{path}");
    r.json()
}

/// Remember: a persistent cookie of that age, the stored deadline that far, re-sent as it
/// slides; capped by `remember_max`; kept across Regenerate; `0` back to a browser-session
/// cookie and the idle timeout. On every store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remember_me_sets_a_persistent_cookie_and_the_idle_timeout() {
    let stores = Stores::start().await;
    let app = App::start().await;
    for (kind, store) in stores.each("remember") {
        let toml = format!(
            "[session]\nidle_timeout = \"1h\"\nremember_max = \"60d\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{store}"
        );
        let proxy = TestProxy::start(&app, &toml).await;
        let mut b = proxy.client();
        let r = b
            .get("/login")
            .app_responds_with(&[
                ("X-Session-Update", r#"{"user":"ada"}"#),
                ("X-Session-Remember", "30d"),
            ])
            .await;
        assert!(!r.headers.contains_key("x-session-remember"), "{kind}");
        let line = r.set_cookie("session_id").unwrap();
        assert_eq!(max_age(&line), Some(30 * DAY_S), "{kind}: {line}");
        assert!(line.contains("Expires="), "{kind}: {line}");
        let id = handle_of(&b);
        let stored = proxy.store.load(&id).await.unwrap().unwrap();
        assert_eq!(stored.meta.remember, 30 * DAY_MS, "{kind}");
        // Until the cookie comes back, session.first_lifetime (10m) bounds it...
        assert!(stored.expires_at <= now_ms() + 600_000, "{kind}");
        assert!(!b.get("/").await.app_saw().is_new(), "{kind}");
        // ...then the remembered idle timeout applies.
        let stored = proxy.store.load(&id).await.unwrap().unwrap();
        assert!(stored.expires_at > now_ms() + 29 * DAY_MS, "{kind}");

        // A write slides it: the cookie goes out again, still persistent.
        let r = b
            .get("/")
            .app_responds_with(&[("X-Session-Update", r#"{"n":1}"#)])
            .await;
        let line = r.set_cookie("session_id").unwrap();
        assert_eq!(max_age(&line), Some(30 * DAY_S), "{kind}: {line}");

        // Over remember_max: capped.
        let r = b
            .get("/")
            .app_responds_with(&[("X-Session-Remember", "365d")])
            .await;
        let line = r.set_cookie("session_id").unwrap();
        assert_eq!(max_age(&line), Some(60 * DAY_S), "{kind}: {line}");
        let stored = proxy.store.load(&id).await.unwrap().unwrap();
        assert_eq!(stored.meta.remember, 60 * DAY_MS, "{kind}");
        assert!(stored.expires_at > now_ms() + 59 * DAY_MS, "{kind}");

        // Regenerate: the choice moves to the new id.
        let r = b
            .get("/")
            .app_responds_with(&[("X-Session-Regenerate", "1")])
            .await;
        let line = r.set_cookie("session_id").unwrap();
        assert_eq!(max_age(&line), Some(60 * DAY_S), "{kind}: {line}");
        let new = handle_of(&b);
        assert_ne!(new, id);
        let stored = proxy.store.load(&new).await.unwrap().unwrap();
        assert_eq!(stored.meta.remember, 60 * DAY_MS, "{kind}");
        // The admin API shows it.
        let shown = admin_json(proxy.admin_addr(), &format!("/sessions/{new}")).await;
        assert_eq!(shown["remember"], json!(60 * DAY_MS), "{kind}: {shown}");

        // 0: back to a browser-session cookie and the idle timeout.
        let r = b
            .get("/")
            .app_responds_with(&[("X-Session-Remember", "0")])
            .await;
        let line = r.set_cookie("session_id").unwrap();
        assert_eq!(max_age(&line), None, "{kind}: {line}");
        assert!(!line.contains("Expires="), "{kind}: {line}");
        let stored = proxy.store.load(&new).await.unwrap().unwrap();
        assert_eq!(stored.meta.remember, 0, "{kind}");
        assert!(stored.expires_at <= now_ms() + 3_600_000, "{kind}");
        assert_eq!(b.get("/").await.app_saw().session()["user"], "ada");
        proxy.stop().await;
    }
}

/// On sqlite the choice survives a restart: the session loads with its deadline, and its
/// next write re-sends the persistent cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remember_me_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let toml = format!(
        "[session]\nidle_timeout = \"1h\"\n[store]\nkind = \"sqlite\"\npath = \"{}\"\n",
        dir.path().join("s.db").display()
    );
    let proxy = TestProxy::start(&app, &toml).await;
    let mut b = proxy.client();
    b.get("/login")
        .app_responds_with(&[
            ("X-Session-Update", r#"{"user":"ada"}"#),
            ("X-Session-Remember", "7d"),
        ])
        .await;
    let cookie = b.cookie.clone();
    proxy.stop().await;

    let proxy = TestProxy::start(&app, &toml).await;
    let mut b2 = proxy.client();
    b2.cookie = cookie;
    let seen = b2
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"n":1}"#)])
        .await;
    let line = seen.set_cookie("session_id").unwrap();
    assert_eq!(max_age(&line), Some(7 * DAY_S), "{line}");
    assert!(!seen.app_saw().is_new());
    let stored = proxy.store.load(&handle_of(&b2)).await.unwrap().unwrap();
    assert_eq!(stored.meta.remember, 7 * DAY_MS);
    assert!(stored.expires_at > now_ms() + 6 * DAY_MS);
}

/// A browser that signed in as `user` with this `User-Agent`, and came back once.
async fn device(proxy: &TestProxy, user: &str, agent: &str) -> Browser {
    let mut b = proxy.client();
    let update = json!({ "user": user }).to_string();
    b.get("/login")
        .client_sends(&[("User-Agent", agent)])
        .app_responds_with(&[("X-Session-Update", &update)])
        .await;
    b.get("/").client_sends(&[("User-Agent", agent)]).await;
    b
}

/// Devices: the record keeps where and with what each session was made and last used (shown
/// by the admin API, by handle and per user); a `devices_path` request carries the user's
/// sessions; the app ends one other session of the same user by its handle, never another
/// user's. On every store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed_and_one_can_be_signed_out() {
    let stores = Stores::start().await;
    let app = App::start().await;
    for (kind, store) in stores.each("devices") {
        let toml = format!(
            "[session]\nuser_key = \"user\"\ndevices_path = [\"/account/\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{store}"
        );
        let proxy = TestProxy::start(&app, &toml).await;
        let long_agent = format!("Laptop/{}", "x".repeat(300));
        let mut laptop = device(&proxy, "ada", &long_agent).await;
        let mut phone = device(&proxy, "ada", "Phone/1").await;
        let mut bob = device(&proxy, "bob", "Bob/1").await;
        let (l, p, o) = (handle_of(&laptop), handle_of(&phone), handle_of(&bob));

        // The admin API: by handle, and per user.
        let shown = admin_json(proxy.admin_addr(), &format!("/sessions/{l}")).await;
        assert_eq!(shown["created_ip"], "127.0.0.1", "{kind}: {shown}");
        assert_eq!(shown["last_ip"], "127.0.0.1", "{kind}");
        assert_eq!(shown["user_agent"].as_str().unwrap().len(), 256, "{kind}");
        assert!(
            shown["user_agent"]
                .as_str()
                .unwrap()
                .starts_with("Laptop/x")
        );
        assert!(shown["last_seen"].as_u64().unwrap() >= shown["created_at"].as_u64().unwrap());
        assert_eq!(shown["returned"], true, "{kind}");
        let listed = admin_json(proxy.admin_addr(), "/users/ada/sessions").await;
        let text = listed.to_string();
        assert!(
            text.contains("Phone/1") && text.contains("127.0.0.1"),
            "{kind}: {text}"
        );
        assert!(!text.contains("Bob/1"), "{kind}");

        // X-Session-Devices on a devices_path request only, decoded.
        assert!(
            !laptop
                .get("/")
                .await
                .app_saw()
                .has_header("x-session-devices")
        );
        let seen = laptop.get("/account/sessions").await.app_saw();
        let value = seen.header("x-session-devices").unwrap();
        let devices: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(value).unwrap()).unwrap();
        let devices = devices.as_array().unwrap();
        assert_eq!(devices.len(), 2, "{kind}: {devices:?}");
        let current: Vec<&Value> = devices.iter().filter(|d| d["current"] == true).collect();
        assert_eq!(current.len(), 1, "{kind}");
        assert_eq!(current[0]["handle"], l.as_str(), "{kind}");
        let other = devices.iter().find(|d| d["current"] == false).unwrap();
        assert_eq!(other["handle"], p.as_str(), "{kind}");
        assert_eq!(other["user_agent"], "Phone/1", "{kind}");
        assert_eq!(other["created_ip"], "127.0.0.1", "{kind}");
        assert_eq!(other["last_ip"], "127.0.0.1", "{kind}");
        assert!(other["last_seen"].as_u64().unwrap() > 0, "{kind}");
        // A client cannot forge it.
        let forged = bob
            .get("/")
            .client_sends(&[("X-Session-Devices", "W10")])
            .await
            .app_saw();
        assert!(!forged.has_header("x-session-devices"), "{kind}");

        // Revoke another user's session: refused, nothing ends.
        let r = laptop
            .get("/account/signout")
            .app_responds_with(&[("X-Session-Revoke", o.as_str())])
            .await;
        assert!(!r.headers.contains_key("x-session-revoke"));
        assert!(proxy.store.load(&o).await.unwrap().is_some(), "{kind}");
        assert!(!bob.get("/").await.app_saw().is_new(), "{kind}");
        // One other session of the same user: it ends, this one stays.
        laptop
            .get("/account/signout")
            .app_responds_with(&[("X-Session-Revoke", p.as_str())])
            .await;
        assert!(proxy.store.load(&p).await.unwrap().is_none(), "{kind}");
        assert!(phone.get("/").await.app_saw().is_new(), "{kind}");
        assert!(!laptop.get("/").await.app_saw().is_new(), "{kind}");
        proxy.stop().await;
    }
}

/// first_lifetime: sessions whose cookie never comes back (a crawler) are gone after it; a
/// session whose client returned once lives on under the idle timeout. On every store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_returned_sessions_vanish_after_first_lifetime() {
    let stores = Stores::start().await;
    let app = App::start().await;
    for (kind, store) in stores.each("first") {
        let toml = format!("[session]\nidle_timeout = \"1h\"\nfirst_lifetime = \"1s\"\n{store}");
        let proxy = TestProxy::start(&app, &toml).await;
        let mut crawled = Vec::new();
        for _ in 0..5 {
            let mut bot = proxy.client();
            bot.get("/")
                .app_responds_with(&[("X-Session-Update", r#"{"visited":1}"#)])
                .await;
            let id = handle_of(&bot);
            let stored = proxy.store.load(&id).await.unwrap().unwrap();
            assert!(stored.expires_at <= now_ms() + 1000, "{kind}");
            crawled.push(id);
        }
        let mut user = proxy.client();
        user.get("/")
            .app_responds_with(&[("X-Session-Update", r#"{"cart":1}"#)])
            .await;
        assert!(!user.get("/").await.app_saw().is_new(), "{kind}");
        let stored = proxy.store.load(&handle_of(&user)).await.unwrap().unwrap();
        assert!(stored.meta.returned, "{kind}");
        assert!(stored.expires_at > now_ms() + 3_000_000, "{kind}");

        tokio::time::sleep(Duration::from_millis(1300)).await;
        for id in &crawled {
            assert!(proxy.store.load(id).await.unwrap().is_none(), "{kind}");
        }
        assert_eq!(user.get("/").await.app_saw().session(), json!({"cart":1}));
        proxy.stop().await;
    }
}

/// `limits.new_sessions_per_ip`: past its burst, an address's new sessions are not created (the
/// app's answer still arrives, with no cookie and nothing stored), while other addresses, an
/// IPv6 client's other /64s, and sessions the address already holds go on. On every store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_per_ip_caps_creation_not_answers() {
    let stores = Stores::start().await;
    let app = App::start().await;
    for (kind, store) in stores.each("flood") {
        let toml = format!(
            "trusted_proxies = [\"127.0.0.1\"]\n[limits]\nnew_sessions_per_ip = \"3/h\"\n{store}"
        );
        let proxy = TestProxy::start(&app, &toml).await;
        // A new client from `ip`: whether its session was stored (cookie and record).
        let login = |ip: &'static str| {
            let mut b = proxy.client();
            async move {
                let resp = b
                    .get("/")
                    .client_sends(&[("X-Forwarded-For", ip)])
                    .app_responds_with(&[("X-Session-Update", r#"{"bot":1}"#)])
                    .await;
                assert_eq!(resp.status, 200, "the app's answer goes out");
                assert!(resp.app_saw().is_new());
                (b.cookie.is_some(), b)
            }
        };
        let mut first = None;
        for n in 0..3 {
            let (stored, b) = login("203.0.113.5").await;
            assert!(stored, "{kind}: creation {n} within the burst");
            first.get_or_insert(b);
        }
        let before = proxy.sessions().await.len();
        for _ in 0..4 {
            assert!(!login("203.0.113.5").await.0, "{kind}: over the cap");
        }
        assert_eq!(
            proxy.sessions().await.len(),
            before,
            "{kind}: nothing stored"
        );
        // Another address, and the capped address's own session, are untouched.
        assert!(login("203.0.113.6").await.0, "{kind}");
        let mut first = first.unwrap();
        first
            .get("/")
            .client_sends(&[("X-Forwarded-For", "203.0.113.5")])
            .app_responds_with(&[("X-Session-Update", r#"{"bot":2}"#)])
            .await;
        assert_eq!(
            first.get("/").await.app_saw().session(),
            json!({"bot":2}),
            "{kind}"
        );
        // IPv6 counts per /64.
        for host in ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff::3"] {
            assert!(login(host).await.0, "{kind}: {host}");
        }
        assert!(!login("2001:db8:0:1::4").await.0, "{kind}");
        assert!(login("2001:db8:0:2::1").await.0, "{kind}");
        proxy.stop().await;
    }
}

/// The cap through the binary: refused creations are counted in
/// `session_proxy_sessions_throttled_total` and logged once a minute per client, not per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_per_ip_is_counted_and_logged_once() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "proxy.toml",
        &format!(
            "upstream = \"http://{}\"\n[store]\nkind = \"memory\"\n[limits]\nnew_sessions_per_ip = \"2/h\"\n",
            app.addr
        ),
    );
    let log = dir.path().join("stderr.log");
    let proxy = ProxyProcess::start(
        &["--config", &config, "--admin-listen", "127.0.0.1:0"],
        "warn",
        std::fs::File::create(&log).unwrap(),
        &[],
        "http",
    );
    let mut cookies = 0;
    for _ in 0..6 {
        let resp = get(proxy.addr, "/")
            .app_responds_with(&[("X-Session-Update", r#"{"bot":1}"#)])
            .await;
        assert_eq!(resp.status, 200);
        cookies += usize::from(resp.set_cookie("session_id").is_some());
    }
    assert_eq!(cookies, 2);
    let metrics = get(proxy.admin.unwrap(), "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.lines()
            .any(|l| l == "session_proxy_sessions_throttled_total 4"),
        "{text}"
    );
    drop(proxy);
    let logged = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<_> = logged
        .lines()
        .filter(|l| l.contains("limits.new_sessions_per_ip"))
        .collect();
    assert_eq!(lines.len(), 1, "{logged}");
    assert!(lines[0].contains("127.0.0.1"), "{logged}");
}
