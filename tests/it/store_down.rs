//! The store-down policy (`store.on_error`), with a real `redis-server` that is stopped under
//! the proxy: `fail_closed` (the default) answers 503 with `Retry-After` without calling the
//! app; `fail_open` sends the request on without a session and with `X-Session-Unavailable`,
//! and sets or clears no cookie; the app's instructions (even a Destroy) are stripped and ignored.

use crate::support::redis::RedisServer;
use crate::support::{App, Browser, TestProxy};

/// A proxy on a live Redis with `on_error`, and a browser whose session holds `{"user":"ada"}`.
async fn setup(on_error: &str) -> (RedisServer, App, TestProxy, Browser, String) {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let toml = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"500ms\"\n{on_error}",
        redis.url()
    );
    let proxy = TestProxy::start(&app, &toml).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)])
        .await;
    let cookie = b.cookie.clone().unwrap();
    (redis, app, proxy, b, cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_is_a_503_with_retry_after_and_the_app_is_not_called() {
    let (mut redis, app, _proxy, mut b, cookie) = setup("").await;
    redis.stop();
    let hits = app.hits();
    let r = b
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"eve"}"#)])
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(
        r.set_cookies().is_empty(),
        "a store error never touches the cookie"
    );
    assert_eq!(app.hits(), hits, "the app was called without its session");
    assert_eq!(b.cookie.as_deref(), Some(cookie.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_forwards_without_a_session_and_touches_no_cookie() {
    let (mut redis, _app, _proxy, mut b, cookie) = setup("on_error = \"fail_open\"").await;
    // Redis is down: the app is still called, told there is no session, and its session
    // instructions (even a Destroy) are stripped and ignored.
    redis.stop();
    let r = b
        .get("/")
        .client_sends(&[("x-session-unavailable", "0"), ("x-session", "e30")])
        .app_responds_with(&[
            ("X-Session-Update", r#"{"user":"eve"}"#),
            ("X-Session-Destroy", "1"),
        ])
        .await;
    assert_eq!(r.status, 200);
    let seen = r.app_saw();
    assert_eq!(
        seen.headers("x-session-unavailable"),
        vec!["1".to_owned()],
        "the client's forged copy must be gone"
    );
    for name in [
        "x-session",
        "x-session-id",
        "x-session-new",
        "x-session-expires",
    ] {
        assert!(!seen.has_header(name), "{name} sent without a session");
    }
    assert!(r.set_cookies().is_empty(), "no cookie set or cleared");
    assert!(
        r.headers
            .keys()
            .all(|k| !k.as_str().starts_with("x-session")),
        "{:?}",
        r.headers
    );
    assert_eq!(b.cookie.as_deref(), Some(cookie.as_str()));
}
