//! `session.skip`: paths that get no session. No store access, no session headers (the
//! reserved prefix still stripped both ways), the cookie untouched and still kept from the app.

use serde_json::json;

use crate::support::{App, TestProxy, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_paths_cost_no_store_call_and_carry_no_session() {
    let app = App::start().await;
    let toml =
        "[session]\nskip = [\"/static/\", \"/favicon.ico\"]\n[admin]\nlisten = \"127.0.0.1:0\"";
    let proxy = TestProxy::start(&app, toml).await;
    let admin = proxy.admin_addr();
    // Every store call is counted in /metrics: the skipped requests must add none.
    let loads = || async move {
        let text = String::from_utf8(get(admin, "/metrics").await.body.to_vec()).unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("session_proxy_store_duration_seconds_count{op=\"load\"} ")
            })
            .unwrap()
            .to_owned()
    };
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)])
        .await;
    let cookie = b.cookie.clone().unwrap();
    let before = proxy.store.load(&parse(&cookie)).await.unwrap().unwrap();
    let loads_before = loads().await;

    for path in ["/static/app.css", "/static/", "/favicon.ico"] {
        let mut jar = b.clone();
        let r = jar
            .get(path)
            .client_sends(&[("cookie", "theme=dark"), ("x-session", "eyJhZG1pbiI6MX0")])
            .app_responds_with(&[
                ("X-Session-Update", r#"{"user":"eve"}"#),
                ("X-Session-Destroy", "1"),
            ])
            .await;
        assert_eq!(r.status, 200, "{path}");
        let seen = r.app_saw();
        for name in [
            "x-session",
            "x-session-id",
            "x-session-new",
            "x-session-expires",
        ] {
            assert!(!seen.has_header(name), "{path}: {name} reached the app");
        }
        // The session cookie stays with the proxy; the app's own cookies pass.
        let cookies = seen.headers("cookie").join("; ");
        assert!(cookies.contains("theme=dark"), "{path}: {cookies}");
        assert!(
            !cookies.contains(&cookie),
            "{path}: the session cookie reached the app"
        );
        assert!(r.set_cookies().is_empty(), "{path}: the cookie was touched");
        assert!(
            r.headers
                .keys()
                .all(|k| !k.as_str().starts_with("x-session")),
            "{path}: {:?}",
            r.headers
        );
    }
    assert_eq!(
        loads().await,
        loads_before,
        "a skipped path loaded its session"
    );
    // The stored session is exactly as it was: not touched, not changed.
    let after = proxy.store.load(&parse(&cookie)).await.unwrap().unwrap();
    assert_eq!(after, before);

    // Exact entries are exact; prefixes need their slash; other paths have sessions.
    for path in ["/favicon.ico.bak", "/staticfiles", "/static"] {
        let seen = b.get(path).await.app_saw();
        assert_eq!(seen.session(), json!({"user":"ada"}), "{path}");
    }
    proxy.stop().await;
}

fn parse(cookie: &str) -> session_proxy::session::Handle {
    session_proxy::session::SessionId::parse(cookie)
        .unwrap()
        .handle()
}
