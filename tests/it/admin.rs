//! The admin listener through the real proxy: sessions made by proxied requests, then listed,
//! paged, shown, patched and deleted over the JSON API on every store; the token; the start
//! refusal; a 4xx with a JSON body for every bad input; 503 when the store is down; the probes
//! and the drain; metrics; the CLI's `sessions show|delete`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use crate::support::{App, Browser, ProxyProcess, Resp, TestProxy, fs_store, get, handle, request};

const TOKEN: &str = "test-admin-token-0123456789";

fn admin_toml(store: &str) -> String {
    format!("{store}\n[admin]\nlisten = \"127.0.0.1:0\"\n")
}

/// An admin call, optionally with the bearer token.
async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    request(admin, method, path)
        .client_sends(&headers)
        .body(Bytes::from(body.to_owned()))
        .await
}

fn assert_json_error(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "application/json");
    let body = r.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

/// A proxy with an admin listener (no token) and one session, `{"a":1}`, made through it.
async fn proxy_with_one_session() -> (App, TestProxy, Browser) {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &admin_toml("")).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    (app, proxy, b)
}

/// Three sessions made through the proxy, as a user's browser would.
async fn three_browsers(proxy: &TestProxy) -> Vec<Browser> {
    let mut browsers = Vec::new();
    for i in 0..3 {
        let mut b = proxy.client();
        b.get("/")
            .app_responds_with(&[("X-Session-Update", &format!(r#"{{"user":"u{i}","n":{i}}}"#))])
            .await;
        assert!(b.cookie.is_some());
        browsers.push(b);
    }
    browsers
}

async fn api_on(store: &str) {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &admin_toml(store)).await;
    let admin = proxy.admin_addr();
    let mut browsers = three_browsers(&proxy).await;
    let ids: BTreeSet<String> = browsers
        .iter()
        .map(|b| handle(b.cookie.as_deref().unwrap()))
        .collect();

    // List, two pages.
    let first = call(admin, Method::GET, "/sessions?limit=2", None, "").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["content-type"], "application/json");
    let first = first.json();
    let page: Vec<Value> = first["sessions"].as_array().unwrap().clone();
    assert_eq!(page.len(), 2, "{first}");
    for s in &page {
        for field in ["created_at", "updated_at", "expires_at", "size"] {
            assert!(s[field].is_u64(), "{field}: {s}");
        }
        assert!(s.get("data").is_none(), "a listing carries no data: {s}");
    }
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let second = call(
        admin,
        Method::GET,
        &format!("/sessions?limit=2&cursor={cursor}"),
        None,
        "",
    )
    .await
    .json();
    let mut listed: BTreeSet<String> = page
        .iter()
        .map(|s| s["handle"].as_str().unwrap().to_owned())
        .collect();
    for s in second["sessions"].as_array().unwrap() {
        listed.insert(s["handle"].as_str().unwrap().to_owned());
    }
    assert_eq!(listed, ids);

    // No listing holds a bearer id.
    let listings = format!("{first}{second}");
    for b in &browsers {
        let cookie = b.cookie.clone().unwrap();
        assert!(!listings.contains(&cookie), "a listing holds an id");
    }

    // Show: the whole record, and reading it is not activity. The API names a session by its
    // handle; its id is refused, and never echoed.
    let cookie = browsers[0].cookie.clone().unwrap();
    let by_id = call(admin, Method::GET, &format!("/sessions/{cookie}"), None, "").await;
    assert_json_error(&by_id, 400);
    assert!(!String::from_utf8_lossy(&by_id.body).contains(&cookie));
    let id = handle(&cookie);
    let shown = call(admin, Method::GET, &format!("/sessions/{id}"), None, "").await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.headers["content-type"], "application/json");
    assert!(!String::from_utf8_lossy(&shown.body).contains(&cookie));
    let before = shown.json();
    assert_eq!(before["handle"], id);
    assert_eq!(before["data"], json!({"user":"u0","n":0}));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = call(admin, Method::GET, &format!("/sessions/{id}"), None, "")
        .await
        .json();
    assert_eq!(again, before, "an admin read changed the session");

    // Patch: the same merge as X-Session-Update; the deadline stays.
    let patched = call(
        admin,
        Method::PATCH,
        &format!("/sessions/{id}"),
        None,
        r#"{"role":"admin","n":null}"#,
    )
    .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    let patched = patched.json();
    assert_eq!(patched["data"], json!({"user":"u0","role":"admin"}));
    assert_eq!(patched["expires_at"], before["expires_at"]);
    assert_eq!(
        patched["version"].as_u64().unwrap(),
        before["version"].as_u64().unwrap() + 1
    );
    let seen = browsers[0].get("/").await.app_saw();
    assert_eq!(seen.session(), json!({"user":"u0","role":"admin"}));

    // Delete: the user's next request starts fresh.
    let deleted = call(admin, Method::DELETE, &format!("/sessions/{id}"), None, "").await;
    assert_eq!(deleted.status, 204);
    let seen = browsers[0].get("/").await.app_saw();
    assert!(seen.is_new());
    assert_eq!(seen.session(), json!({}));
    assert_json_error(
        &call(admin, Method::GET, &format!("/sessions/{id}"), None, "").await,
        404,
    );
    assert_json_error(
        &call(admin, Method::DELETE, &format!("/sessions/{id}"), None, "").await,
        404,
    );
    assert_json_error(
        &call(admin, Method::PATCH, &format!("/sessions/{id}"), None, "{}").await,
        404,
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_the_memory_store() {
    api_on("[store]\nkind = \"memory\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_the_fs_store() {
    let dir = tempfile::tempdir().unwrap();
    api_on(&fs_store(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_the_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    api_on(&format!(
        "[store]\nkind = \"sqlite\"\npath = \"{}\"",
        db.display()
    ))
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_the_redis_store() {
    let redis = crate::support::redis::RedisServer::start().await;
    api_on(&format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"",
        redis.url()
    ))
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_the_postgres_store() {
    let db = crate::support::postgres::PgDb::new().await;
    api_on(&format!(
        "[store]\nkind = \"postgres\"\nurl = \"{}\"",
        db.url()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_a_4xx_with_a_json_error() {
    let (_app, proxy, b) = proxy_with_one_session().await;
    let admin = proxy.admin_addr();
    let id = handle(b.cookie.as_deref().unwrap());
    let one = format!("/sessions/{id}");
    let cases: Vec<(Method, String, &str, u16)> = vec![
        (Method::GET, "/sessions/not-an-id".into(), "", 400),
        (
            Method::GET,
            format!("/sessions/{}", "A".repeat(33)),
            "",
            400,
        ),
        (
            Method::GET,
            format!("/sessions/{}", b.cookie.clone().unwrap()),
            "",
            400,
        ),
        (
            Method::GET,
            format!("/sessions/{}B", "A".repeat(42)),
            "",
            400,
        ),
        (Method::DELETE, "/sessions/..%2F..%2Fetc".into(), "", 400),
        (Method::PATCH, one.clone(), "{not json", 400),
        (Method::PATCH, one.clone(), "[1,2]", 400),
        (Method::PATCH, one.clone(), "\"text\"", 400),
        (Method::PATCH, one.clone(), "", 400),
        (Method::PATCH, "/sessions/bad".into(), "{}", 400),
        (
            Method::PATCH,
            one.clone(),
            &*Box::leak(format!(r#"{{"big":"{}"}}"#, "x".repeat(20_000)).into_boxed_str()),
            413,
        ),
        (Method::GET, "/sessions?cursor=nope".into(), "", 400),
        (Method::GET, "/sessions?limit=abc".into(), "", 400),
        (Method::GET, "/sessions?limit=0".into(), "", 400),
        (Method::GET, "/sessions?limit=1001".into(), "", 400),
        (Method::GET, "/sessions?limit=-1".into(), "", 400),
        (Method::GET, "/sessions?colour=red".into(), "", 400),
        (Method::GET, "/nowhere".into(), "", 404),
        (Method::POST, "/sessions".into(), "{}", 405),
        (Method::PUT, one.clone(), "{}", 405),
    ];
    for (method, path, body, status) in cases {
        let r = call(admin, method.clone(), &path, None, body).await;
        assert_json_error(&r, status);
        assert!(r.status != 500, "{method} {path}");
    }
    // Nothing bad input did changed the session.
    let shown = call(admin, Method::GET, &one, None, "").await.json();
    assert_eq!(shown["data"], json!({"a":1}));
    assert_eq!(shown["version"], 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_route_but_the_probes_and_the_page_needs_it() {
    let app = App::start().await;
    let toml = format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    let proxy = TestProxy::start(&app, &toml).await;
    let admin = proxy.admin_addr();
    for path in [
        "/sessions",
        "/metrics",
        &format!("/sessions/{}A", "A".repeat(42)),
    ] {
        for token in [None, Some("wrong-token-0123456789"), Some("")] {
            let r = call(admin, Method::GET, path, token, "").await;
            assert_json_error(&r, 401);
            assert!(
                r.headers["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer"),
                "{path}"
            );
        }
    }
    // A token sent any other way than Bearer does not count.
    let r = request(admin, Method::GET, "/sessions")
        .client_sends(&[("authorization", &format!("Basic {TOKEN}"))])
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        call(admin, Method::GET, "/sessions", Some(TOKEN), "")
            .await
            .status,
        200
    );
    for open in ["/healthz", "/readyz", "/", "/admin.js", "/admin.css"] {
        assert_eq!(get(admin, open).await.status, 200, "{open}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn the_public_listener_never_serves_admin_routes() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &admin_toml("")).await;
    for path in ["/sessions", "/metrics", "/healthz", "/admin.js"] {
        let r = get(proxy.addr, path).await;
        assert_eq!(r.app_saw().0["path"], path, "not forwarded to the app");
    }
    proxy.stop().await;
}

#[test]
fn a_network_admin_listener_without_a_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["check", "--store", "memory", "--admin-listen", "0.0.0.0:0"],
        vec!["--store", "memory", "--admin-listen", "0.0.0.0:0"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("`admin.listen`") && err.contains("loopback"),
            "{err}"
        );
    }
    // With a token file it may bind any address.
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["check", "--store", "memory", "--admin-listen", "0.0.0.0:0"])
        .arg("--admin-token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_responses_cannot_be_sniffed_framed_or_cached() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &admin_toml("")).await;
    let admin = proxy.admin_addr();
    for path in ["/", "/sessions", "/healthz", "/nowhere"] {
        let r = get(admin, path).await;
        let h = |n: &str| r.headers[n].to_str().unwrap().to_owned();
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(h("referrer-policy"), "no-referrer", "{path}");
        assert!(h("content-security-policy").contains("frame-ancestors 'none'"));
        assert_eq!(h("cache-control"), "no-store");
    }
    let page = get(admin, "/").await;
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_session_writes() {
    let (_app, proxy, mut b) = proxy_with_one_session().await;
    let admin = proxy.admin_addr();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":2}"#)])
        .await;
    b.get("/")
        .app_responds_with(&[("X-Session-Update", "not json")])
        .await;
    b.get("/").app_status(404).await;
    let r = get(admin, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    for line in [
        "session_proxy_requests_total{status=\"2xx\"} 3",
        "session_proxy_requests_total{status=\"4xx\"} 1",
        "session_proxy_sessions_created_total 1",
        "session_proxy_sessions_updated_total 1",
        "session_proxy_session_instructions_rejected_total{reason=\"malformed\"} 1",
        "session_proxy_sessions_live 1",
        "session_proxy_request_duration_seconds_count 4",
        "session_proxy_upstream_duration_seconds_count 4",
        "session_proxy_store_duration_seconds_count{op=\"load\"} 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    for name in [
        "session_proxy_sessions_touched_total",
        "session_proxy_sessions_destroyed_total",
        "session_proxy_sessions_regenerated_total",
        "session_proxy_store_errors_total",
        "session_proxy_upstream_errors_total",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    proxy.stop().await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_is_a_503_with_the_reason() {
    let mut redis = crate::support::redis::RedisServer::start().await;
    let app = App::start().await;
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"500ms\"",
        redis.url()
    );
    let proxy = TestProxy::start(&app, &admin_toml(&store)).await;
    let admin = proxy.admin_addr();
    assert_eq!(get(admin, "/readyz").await.status, 200);
    redis.stop();
    for path in ["/sessions", &format!("/sessions/{}A", "A".repeat(42))] {
        assert_json_error(&call(admin, Method::GET, path, None, "").await, 503);
    }
    let ready = get(admin, "/readyz").await;
    assert_json_error(&ready, 503);
    assert!(ready.json()["error"].as_str().unwrap().contains("store"));
    // Liveness does not depend on the store.
    assert_eq!(get(admin, "/healthz").await.status, 200);
    let metrics = String::from_utf8(get(admin, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("session_proxy_store_errors_total{op=\"list\"} ")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    proxy.stop().await;
}

/// The binary: `/readyz` answers 503 from the moment SIGTERM starts the drain, while a slow
/// request still finishes; admin mutations are logged with the operator's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_draining_from_sigterm_and_mutations_are_logged() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let upstream = format!("http://{}", app.addr);
    let mut proxy = ProxyProcess::spawn_logging(
        &[
            "--store",
            "memory",
            "--upstream",
            &upstream,
            "--admin-listen",
            "127.0.0.1:0",
        ],
        "info",
        std::fs::File::create(&log).unwrap(),
    );
    let admin = proxy.admin.unwrap();
    let mut b = Browser::new(proxy.addr, "session_id");
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    let id = b.cookie.clone().unwrap();
    let r = call(
        admin,
        Method::DELETE,
        &format!("/sessions/{}", handle(&id)),
        None,
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(get(admin, "/readyz").await.status, 200);

    let addr = proxy.addr;
    let slow = tokio::spawn(async move { get(addr, "/").app_takes_ms(1500).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = get(admin, "/readyz").await;
    assert_json_error(&ready, 503);
    assert!(ready.json()["error"].as_str().unwrap().contains("draining"));
    assert_eq!(slow.await.unwrap().status, 200, "the drain cut a request");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));

    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("admin deleted a session"))
        .unwrap_or_else(|| panic!("no admin log line in:\n{text}"));
    assert!(line.contains("operator=127.0.0.1:"), "{line}");
    assert!(!line.contains(&id), "the whole id is a credential: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_and_deletes_a_session_and_refuses_the_memory_store() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &fs_store(dir.path())).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)])
        .await;
    let id = b.cookie.clone().unwrap();
    let config = crate::support::write_config(dir.path(), "p.toml", &fs_store(dir.path()));
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .args(args)
            .args(["--config", &config])
            .output()
            .unwrap()
    };
    // By handle, and (a support case: the user pasted their cookie) by id, hashed locally.
    let h = handle(&id);
    for args in [
        &["sessions", "show", &h][..],
        &["sessions", "show", "--id", &id],
    ] {
        let out = cli(args);
        assert!(out.status.success(), "{args:?}");
        let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(shown["data"], json!({"user":"ada"}));
        assert_eq!(shown["handle"], h.as_str());
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&id));
    }
    // An id where a handle goes is refused, and not echoed.
    let out = cli(&["sessions", "show", &id]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--id"), "{err}");
    assert!(!err.contains(&id), "{err}");

    assert!(cli(&["sessions", "delete", &h]).status.success());
    assert!(b.get("/").await.app_saw().is_new());
    let out = cli(&["sessions", "show", &h]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no live session"));
    let out = cli(&["sessions", "delete", "not-a-handle"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a session handle"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["sessions", "list", "--store", "memory"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("memory store lives inside"));
    proxy.stop().await;
}
