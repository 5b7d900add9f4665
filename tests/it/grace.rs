//! `session.regenerate_grace` through the proxy and the real test app, on memory, fs, sqlite
//! and Redis: requests with the old cookie around a login all succeed within the grace (the new
//! session's data, the new cookie, their instructions landing in the new session) and start a
//! fresh session after it (counted, audited); `on_stale_use = "revoke"` ends the user's
//! sessions; a destroy ends the grace at once; grace 0 is the old behaviour; two proxies on one
//! Redis.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::support::redis::RedisServer;
use crate::support::{App, Browser, Resp, TestProxy, config, fs_store, get, handle};

/// The id the response's session cookie sets, if it sets one.
fn cookie_id(r: &Resp) -> Option<String> {
    let line = r.set_cookie("session_id")?;
    let value = line["session_id=".len()..].split(';').next()?.to_owned();
    (!value.is_empty() && !line.contains("Max-Age=0")).then_some(value)
}

fn toml(grace: &str, extra: &str, audit: &Path, store: &str) -> String {
    format!(
        "[session]\nregenerate_grace = \"{grace}\"\n{extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [audit]\npath = \"{}\"\n{store}",
        audit.display()
    )
}

async fn stale_uses(proxy: &TestProxy) -> u64 {
    let text = String::from_utf8(get(proxy.admin_addr(), "/metrics").await.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("session_proxy_session_stale_uses_total "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Polls the audit log until a line with `event` shows up (the writer is in the background).
async fn audit_line(path: &Path, event: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| l["event"] == event)
        {
            return line;
        }
        assert!(Instant::now() < deadline, "no {event} line in {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_cookie(proxy: &TestProxy, id: &str, path: &str) -> crate::support::ClientRequest<'static> {
    get(proxy.addr, path).client_sends(&[("cookie", &format!("session_id={id}"))])
}

/// The whole story on one store: a login (regenerate) with requests carrying the old cookie
/// before, during and after it, an instruction sent with the old cookie, then the grace's end.
async fn the_old_cookie_works_within_the_grace_only(store: &str) {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let proxy = TestProxy::start(&app, &toml("2s", "", &audit, store)).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"visits":1}"#)])
        .await;
    let old = b.cookie.clone().unwrap();
    let login_at = Instant::now();
    let mut set = JoinSet::new();
    {
        let (addr, old) = (proxy.addr, old.clone());
        set.spawn(async move {
            let r = get(addr, "/login")
                .client_sends(&[("cookie", &format!("session_id={old}"))])
                .app_takes_ms(150)
                .app_responds_with(&[
                    ("X-Session-Regenerate", "1"),
                    ("X-Session-Update", r#"{"user":"ada"}"#),
                ])
                .await;
            (true, r)
        });
    }
    // Parallel XHRs with the old cookie, some before the login's response, most after.
    for i in 0..10u64 {
        let (addr, old) = (proxy.addr, old.clone());
        set.spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 40)).await;
            let r = get(addr, "/xhr")
                .client_sends(&[("cookie", &format!("session_id={old}"))])
                .await;
            (false, r)
        });
    }
    let all: Vec<(bool, Resp)> = set.join_all().await;
    let new = all
        .iter()
        .find(|(login, _)| *login)
        .and_then(|(_, r)| cookie_id(r))
        .expect("the login set the new cookie");
    assert_ne!(new, old);
    let mut followed = 0;
    for (login, r) in &all {
        assert_eq!(r.status, 200);
        if *login {
            continue;
        }
        let seen = r.app_saw();
        assert!(
            !seen.is_new(),
            "an XHR with the old cookie lost its session"
        );
        let data = seen.session();
        if data == json!({"visits":1,"user":"ada"}) {
            assert_eq!(
                cookie_id(r).as_deref(),
                Some(new.as_str()),
                "gets the new cookie"
            );
            followed += 1;
        } else {
            assert_eq!(
                data,
                json!({"visits":1}),
                "before the login: the old session"
            );
        }
    }
    // However slow the machine made the login, requests sent after its answer (within the
    // grace) follow it to the new session.
    for _ in 0..3 {
        let r = with_cookie(&proxy, &old, "/xhr").await;
        assert_eq!(r.app_saw().session(), json!({"visits":1,"user":"ada"}));
        assert_eq!(
            cookie_id(&r).as_deref(),
            Some(new.as_str()),
            "gets the new cookie"
        );
        followed += 1;
    }
    assert!(followed >= 3, "only {followed} XHRs came after the login");
    // An instruction sent with the old cookie lands in the new session.
    let r = with_cookie(&proxy, &old, "/cart")
        .app_responds_with(&[("X-Session-Update", r#"{"cart":3}"#)])
        .await;
    assert_eq!(cookie_id(&r).as_deref(), Some(new.as_str()));
    let r = with_cookie(&proxy, &new, "/").await;
    assert_eq!(
        r.app_saw().session(),
        json!({"visits":1,"user":"ada","cart":3})
    );
    assert_eq!(
        proxy.sessions().await.len(),
        1,
        "one session, no alias listed"
    );
    assert_eq!(stale_uses(&proxy).await, 0);
    assert!(
        login_at.elapsed() < Duration::from_secs(2),
        "the machine is too slow for this test"
    );
    // After the grace (from the login's response, 150ms after it started): a fresh session,
    // counted and audited; the new session lives on.
    tokio::time::sleep(Duration::from_millis(2_400).saturating_sub(login_at.elapsed())).await;
    let r = with_cookie(&proxy, &old, "/late").await;
    assert_eq!(r.status, 200);
    assert!(r.app_saw().is_new(), "past the grace the old id is dead");
    assert_eq!(r.app_saw().session(), json!({}));
    assert_ne!(cookie_id(&r).as_deref(), Some(new.as_str()));
    assert_eq!(stale_uses(&proxy).await, 1);
    let line = audit_line(&audit, "stale_use").await;
    assert_eq!(line["old_sid"], handle(&old));
    assert_eq!(line["sid"], handle(&new));
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !text.contains(&old) && !text.contains(&new),
        "no id in the audit log"
    );
    let r = with_cookie(&proxy, &new, "/").await;
    assert!(!r.app_saw().is_new(), "ignore: the new session lives on");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_old_cookie_within_the_grace_only() {
    the_old_cookie_works_within_the_grace_only("[store]\nkind = \"memory\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_old_cookie_within_the_grace_only() {
    let dir = tempfile::tempdir().unwrap();
    the_old_cookie_works_within_the_grace_only(&fs_store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_old_cookie_within_the_grace_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\nkind = \"sqlite\"\npath = \"{}\"\n",
        dir.path().join("s.db").display()
    );
    the_old_cookie_works_within_the_grace_only(&store).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_old_cookie_within_the_grace_only() {
    let redis = RedisServer::start().await;
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
    the_old_cookie_works_within_the_grace_only(&store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_old_cookie_within_the_grace_only() {
    let db = crate::support::postgres::PgDb::new().await;
    let store = format!("[store]\nkind = \"postgres\"\nurl = \"{}\"\n", db.url());
    the_old_cookie_works_within_the_grace_only(&store).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_old_cookie_within_the_grace_only() {
    let cluster = crate::support::redis::RedisCluster::start().await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    let store = format!(
        "[store]\nkind = \"redis\"\nnodes = [{}]\n",
        nodes.join(", ")
    );
    the_old_cookie_works_within_the_grace_only(&store).await;
}

/// `on_stale_use = "revoke"`: the stale use ends every session of the user (here two).
async fn a_stale_use_revokes_the_user(store: &str) {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let extra = "user_key = \"user\"\non_stale_use = \"revoke\"";
    let proxy = TestProxy::start(&app, &toml("300ms", extra, &audit, store)).await;
    let (mut phone, mut laptop) = (proxy.client(), proxy.client());
    phone
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"n":1}"#)])
        .await;
    let old = phone.cookie.clone().unwrap();
    for b in [&mut phone, &mut laptop] {
        b.get("/login")
            .app_responds_with(&[
                ("X-Session-Regenerate", "1"),
                ("X-Session-Update", r#"{"user":"ada"}"#),
            ])
            .await;
    }
    assert_eq!(proxy.sessions().await.len(), 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = with_cookie(&proxy, &old, "/").await;
    assert!(r.app_saw().is_new());
    assert_eq!(stale_uses(&proxy).await, 1);
    for b in [&mut phone, &mut laptop] {
        assert!(b.get("/").await.app_saw().is_new(), "revoked");
    }
    let line = audit_line(&audit, "stale_use").await;
    assert_eq!(line["user"], "ada");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_stale_use_revokes_the_user() {
    a_stale_use_revokes_the_user("[store]\nkind = \"memory\"\n").await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_stale_use_revokes_the_user() {
    let redis = RedisServer::start().await;
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
    a_stale_use_revokes_the_user(&store).await;
}

/// A destroy (logout) of the new session ends the grace at once: the old cookie gets a fresh
/// session, and that is no stale use (nothing lives to steal).
async fn a_destroy_ends_the_grace(store: &str) {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let proxy = TestProxy::start(&app, &toml("30s", "", &audit, store)).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"n":1}"#)])
        .await;
    let old = b.cookie.clone().unwrap();
    b.get("/login")
        .app_responds_with(&[("X-Session-Regenerate", "1")])
        .await;
    assert!(!with_cookie(&proxy, &old, "/").await.app_saw().is_new());
    b.get("/logout")
        .app_responds_with(&[("X-Session-Destroy", "1")])
        .await;
    let r = with_cookie(&proxy, &old, "/").await;
    assert!(r.app_saw().is_new(), "the destroy ended the grace");
    assert_eq!(stale_uses(&proxy).await, 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_destroy_ends_the_grace() {
    a_destroy_ends_the_grace("[store]\nkind = \"memory\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_destroy_ends_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\nkind = \"sqlite\"\npath = \"{}\"\n",
        dir.path().join("s.db").display()
    );
    a_destroy_ends_the_grace(&store).await;
}

/// Grace 0: the old id dies with the regenerate, as before, and nothing is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_zero_is_the_old_behaviour() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let proxy =
        TestProxy::start(&app, &toml("0", "", &audit, "[store]\nkind = \"memory\"\n")).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"n":1}"#)])
        .await;
    let old = b.cookie.clone().unwrap();
    b.get("/login")
        .app_responds_with(&[("X-Session-Regenerate", "1")])
        .await;
    assert!(with_cookie(&proxy, &old, "/").await.app_saw().is_new());
    assert_eq!(stale_uses(&proxy).await, 0);
    proxy.stop().await;
}

/// Two proxies on one Redis: a login through A, the old cookie through B within the grace gets
/// the new session and cookie; after the grace B counts the stale use.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_two_proxies_on_one_redis() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
    let a = TestProxy::with_config(config(
        app.addr,
        &toml("1s", "", &dir.path().join("a.log"), &store),
    ))
    .await;
    let b = TestProxy::with_config(config(
        app.addr,
        &toml("1s", "", &dir.path().join("b.log"), &store),
    ))
    .await;
    let mut browser = Browser::new(a.addr, "session_id");
    browser
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"n":1}"#)])
        .await;
    let old = browser.cookie.clone().unwrap();
    let r = browser
        .get("/login")
        .app_responds_with(&[
            ("X-Session-Regenerate", "1"),
            ("X-Session-Update", r#"{"user":"ada"}"#),
        ])
        .await;
    let new = cookie_id(&r).unwrap();
    let r = with_cookie(&b, &old, "/").await;
    assert_eq!(r.app_saw().session(), json!({"n":1,"user":"ada"}));
    assert_eq!(cookie_id(&r).as_deref(), Some(new.as_str()));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(with_cookie(&b, &old, "/").await.app_saw().is_new());
    assert_eq!(stale_uses(&b).await, 1);
    assert!(!with_cookie(&a, &new, "/").await.app_saw().is_new());
    a.stop().await;
    b.stop().await;
}
