use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::support::{App, Browser, TestProxy, app, get, handle, request};

async fn setup(toml: &str) -> (App, TestProxy, Browser) {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, toml).await;
    let browser = proxy.client();
    (app, proxy, browser)
}

#[tokio::test]
async fn untouched_new_session_is_not_stored_and_sets_no_cookie() {
    let (_app, proxy, mut b) = setup("").await;
    let r = b.get("/").await;
    assert_eq!(r.status, 200);
    let seen = r.app_saw();
    assert_eq!(seen.header("x-session").as_deref(), Some("e30"));
    assert!(seen.is_new());
    assert_eq!(seen.session_id().len(), 32);
    assert!(
        r.set_cookie("session_id").is_none(),
        "{:?}",
        r.set_cookies()
    );
    assert!(proxy.sessions().await.is_empty());
}

#[tokio::test]
async fn update_creates_the_session_and_the_cookie_carries_its_id() {
    let (_app, proxy, mut b) = setup("").await;
    let r = b
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada","n":1}"#)])
        .await;
    let id = r.app_saw().session_id();
    assert_eq!(b.cookie.as_deref(), Some(id.as_str()));
    // The app gets the session's handle beside its id: the name the store keeps it under.
    assert_eq!(r.app_saw().header("x-session-handle"), Some(handle(&id)));
    assert_eq!(
        proxy.sessions().await,
        vec![(handle(&id), json!({"user":"ada","n":1}))]
    );

    let r = b.get("/").await;
    let seen = r.app_saw();
    assert!(!seen.is_new());
    assert_eq!(seen.session_id(), id);
    assert_eq!(seen.session(), json!({"user":"ada","n":1}));
}

#[tokio::test]
async fn update_is_a_merge_patch_and_accepts_base64url() {
    let (_app, _p, mut b) = setup("").await;
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1,"b":{"c":1,"d":2},"e":"x"}"#)])
        .await;
    // base64url (no padding) of {"a":null,"b":{"c":null,"f":3}}
    b.get("/")
        .app_responds_with(&[(
            "X-Session-Update",
            "eyJhIjpudWxsLCJiIjp7ImMiOm51bGwsImYiOjN9fQ",
        )])
        .await;
    assert_eq!(
        b.get("/").await.app_saw().session(),
        json!({"b":{"d":2,"f":3},"e":"x"})
    );
}

#[tokio::test]
async fn replace_replaces_and_beats_update() {
    let (_app, _p, mut b) = setup("").await;
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    b.get("/")
        .app_responds_with(&[
            ("X-Session-Replace", r#"{"only":true}"#),
            ("X-Session-Update", r#"{"ignored":1}"#),
        ])
        .await;
    assert_eq!(b.get("/").await.app_saw().session(), json!({"only":true}));
}

#[tokio::test]
async fn destroy_deletes_the_session_and_expires_the_cookie() {
    let (_app, proxy, mut b) = setup("").await;
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)])
        .await;
    let old = b.cookie.clone().unwrap();
    let r = b
        .get("/")
        .app_responds_with(&[
            ("X-Session-Destroy", "1"),
            ("X-Session-Update", r#"{"x":1}"#),
            ("X-Session-Regenerate", "1"),
        ])
        .await;
    let line = r.set_cookie("session_id").unwrap();
    assert!(line.contains("Max-Age=0"), "{line}");
    assert!(b.cookie.is_none());
    assert!(
        proxy.sessions().await.is_empty(),
        "Destroy beats Update and Regenerate"
    );

    // The old cookie, replayed, is worth nothing.
    let r = get(proxy.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={old}"))])
        .await;
    assert!(r.app_saw().is_new());
    assert_ne!(r.app_saw().session_id(), old);
    assert_eq!(r.app_saw().session(), json!({}));
}

#[tokio::test]
async fn regenerate_moves_the_data_to_a_new_id_and_kills_the_old_one() {
    // No grace: the old id dies with the regenerate (tests/it/grace.rs has the grace).
    let (_app, proxy, mut b) = setup("[session]\nregenerate_grace = \"0\"").await;
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"cart":[1,2]}"#)])
        .await;
    let old = b.cookie.clone().unwrap();
    let r = b
        .get("/login")
        .app_responds_with(&[
            ("X-Session-Regenerate", "1"),
            ("X-Session-Update", r#"{"user":"ada"}"#),
        ])
        .await;
    let new = b.cookie.clone().unwrap();
    assert_ne!(new, old);
    assert_eq!(
        r.app_saw().session_id(),
        old,
        "the request itself ran under the old id"
    );
    let sessions = proxy.sessions().await;
    assert_eq!(
        sessions,
        vec![(handle(&new), json!({"cart":[1,2],"user":"ada"}))]
    );

    let r = get(proxy.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={old}"))])
        .await;
    assert!(
        r.app_saw().is_new(),
        "the pre-login id must not work after regenerate"
    );
    assert_eq!(
        b.get("/").await.app_saw().session(),
        json!({"cart":[1,2],"user":"ada"})
    );
}

#[tokio::test]
async fn instruction_headers_never_reach_the_client() {
    let (_app, _p, mut b) = setup("").await;
    let r = b
        .get("/")
        .app_responds_with(&[
            ("X-Session-Update", r#"{"a":1}"#),
            ("X-Session-Whatever", "internal"),
            ("X-SessionX", "also reserved"),
            ("X-Other", "kept"),
        ])
        .await;
    for name in r.headers.keys() {
        assert!(
            !name.as_str().starts_with("x-session"),
            "{name} leaked to the client"
        );
    }
    assert_eq!(r.headers["x-other"], "kept");
}

#[tokio::test]
async fn malformed_instructions_are_ignored_not_errors() {
    let (_app, _p, mut b) = setup("").await;
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"keep":1}"#)])
        .await;
    for bad in ["{not json", "[1,2]", "!!!", "WzEsMl0", "\"str\"", "null"] {
        let r = b
            .get("/")
            .app_responds_with(&[("X-Session-Update", bad), ("X-Session-Replace", bad)])
            .await;
        assert_eq!(r.status, 200, "{bad}");
        assert!(
            r.headers
                .keys()
                .all(|n| !n.as_str().starts_with("x-session"))
        );
    }
    assert_eq!(b.get("/").await.app_saw().session(), json!({"keep":1}));
}

#[tokio::test]
async fn a_change_over_max_size_is_refused_and_the_session_kept() {
    let (_app, _p, mut b) = setup("[session]\nmax_size = 64").await;
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"keep":1}"#)])
        .await;
    let big = json!({ "big": "x".repeat(100) }).to_string();
    let r = b
        .get("/")
        .app_responds_with(&[("X-Session-Update", &big)])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(b.get("/").await.app_saw().session(), json!({"keep":1}));
}

#[tokio::test]
async fn forged_client_session_headers_are_stripped() {
    let (_app, _p, mut b) = setup("").await;
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"role":"user"}"#)])
        .await;
    let cookie = format!("session_id={}", b.cookie.clone().unwrap());
    // The client itself sends every reserved header, an instruction among them: forgeries all,
    // which the proxy strips before adding its own.
    let r = get(b.addr, "/")
        .client_sends(&[
            ("cookie", &cookie),
            ("x-session", "eyJyb2xlIjoiYWRtaW4ifQ"), // {"role":"admin"}
            ("X-Session-Id", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ("x-session-new", "1"),
            ("X-Session-Expires", "9999999999"),
            ("x-session-update", r#"{"role":"admin"}"#),
            ("X-Sessionology", "1"),
        ])
        .await;
    let seen = r.app_saw();
    assert_eq!(seen.session(), json!({"role":"user"}));
    assert_eq!(seen.headers("x-session").len(), 1);
    assert_eq!(seen.session_id(), b.cookie.clone().unwrap());
    assert_eq!(seen.headers("x-session-new"), vec!["0"]);
    assert!(!seen.has_header("x-session-update"));
    assert!(!seen.has_header("x-sessionology"));
    assert_ne!(
        seen.header("x-session-expires").as_deref(),
        Some("9999999999")
    );
}

#[tokio::test]
async fn custom_header_prefix() {
    let (_app, _p, mut b) = setup("[session]\nheader_prefix = \"X-App-State\"").await;
    let r = b
        .get("/")
        .app_responds_with(&[
            ("X-App-State-Update", r#"{"a":1}"#),
            ("X-Session-Update", r#"{"b":1}"#),
        ])
        .await;
    assert!(r.app_saw().has_header("x-app-state-id"));
    assert!(!r.app_saw().has_header("x-session"));
    // Under another prefix, X-Session-* is just an app header: it passes through.
    assert!(r.headers.contains_key("x-session-update"));
    assert!(!r.headers.contains_key("x-app-state-update"));
    assert_eq!(
        b.get("/").await.app_saw().0["headers"]["x-app-state"][0],
        "eyJhIjoxfQ"
    );
}

#[tokio::test]
async fn forwarded_headers_and_host() {
    let (_app, proxy, _b) = setup("").await;
    let r = get(proxy.addr, "/")
        .client_sends(&[("host", "app.example"), ("x-forwarded-for", "203.0.113.9")])
        .await;
    let seen = r.app_saw();
    // Without a trusted front proxy, the client's chain is not believed (see forwarding.rs).
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some("app.example")
    );
    assert_eq!(seen.header("host").as_deref(), Some("app.example"));

    let r = get(proxy.addr, "/").await;
    assert_eq!(
        r.app_saw().header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn forwarded_proto_and_host_from_a_front_proxy_are_kept_only_when_trusted() {
    let front = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "www.example"),
    ];
    let (_app, untrusted, _b) = setup("").await;
    let seen = get(untrusted.addr, "/")
        .client_sends(&front)
        .await
        .app_saw();
    assert_eq!(seen.headers("x-forwarded-proto"), vec!["http"]);
    assert_ne!(seen.headers("x-forwarded-host"), vec!["www.example"]);

    let (_app, trusted, _b) = setup("trusted_proxies = [\"127.0.0.1\"]").await;
    let seen = get(trusted.addr, "/").client_sends(&front).await.app_saw();
    assert_eq!(seen.headers("x-forwarded-proto"), vec!["https"]);
    assert_eq!(seen.headers("x-forwarded-host"), vec!["www.example"]);
    // Without a front proxy's headers, this hop's own values still go in.
    let seen = get(trusted.addr, "/")
        .client_sends(&[("host", "direct.example")])
        .await
        .app_saw();
    assert_eq!(seen.headers("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.headers("x-forwarded-host"), vec!["direct.example"]);
}

#[tokio::test]
async fn session_cookie_is_removed_other_cookies_pass_unchanged() {
    let (_app, _p, mut b) = setup("").await;
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    let id = b.cookie.clone().unwrap();
    let cookie = format!("theme=dark; session_id={id}; tracking=\"a=b\";lang=en");
    let r = get(b.addr, "/")
        .client_sends(&[("cookie", &cookie), ("cookie", "second=2")])
        .await;
    let seen = r.app_saw();
    assert_eq!(seen.session_id(), id);
    assert_eq!(
        seen.headers("cookie"),
        vec!["theme=dark; tracking=\"a=b\"; lang=en; second=2"]
    );

    let r = get(b.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={id}"))])
        .await;
    assert!(!r.app_saw().has_header("cookie"));

    // Without our cookie, the header reaches the app byte for byte.
    let r = get(b.addr, "/")
        .client_sends(&[("cookie", "a=1;b=2 ;  c")])
        .await;
    assert_eq!(r.app_saw().headers("cookie"), vec!["a=1;b=2 ;  c"]);
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let (_app, proxy, _b) = setup("").await;
    let r = get(proxy.addr, "/")
        .client_sends(&[
            ("connection", "x-private, keep-alive"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-public", "1"),
        ])
        .await;
    let seen = r.app_saw();
    for h in ["x-private", "keep-alive", "te"] {
        assert!(!seen.has_header(h), "{h} was forwarded");
    }
    assert!(seen.has_header("x-public"));
}

#[tokio::test]
async fn the_apps_own_set_cookie_and_status_pass_through() {
    let (_app, _p, mut b) = setup("").await;
    let r = b
        .get("/")
        .app_responds_with(&[
            ("Set-Cookie", "app=1; Path=/"),
            ("X-Session-Update", r#"{"a":1}"#),
            ("Cache-Control", "private"),
        ])
        .await;
    let cookies = r.set_cookies();
    assert!(cookies.iter().any(|c| c == "app=1; Path=/"), "{cookies:?}");
    assert!(
        cookies.iter().any(|c| c.starts_with("session_id=")),
        "{cookies:?}"
    );
    assert_eq!(r.headers["cache-control"], "private");

    let r = get(b.addr, "/").app_status(418).await;
    assert_eq!(r.status, 418);
}

#[tokio::test]
async fn methods_query_and_request_bodies_pass_through() {
    let (_app, proxy, _b) = setup("").await;
    let r = request(proxy.addr, Method::POST, "/sink?x=1")
        .body(Bytes::from(vec![7u8; 100_000]))
        .await;
    assert_eq!(r.json(), json!({"received": 100000}));
    let r = request(proxy.addr, Method::DELETE, "/echo/a%20b?q=1&r=2").await;
    assert_eq!(r.json()["method"], "DELETE");
    assert_eq!(r.json()["path"], "/echo/a%20b");
    assert_eq!(r.json()["query"], "q=1&r=2");
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    use http_body_util::{BodyExt as _, Empty};
    let (_app, proxy, _b) = setup("").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let req = http::Request::get(format!("http://{}/h2", proxy.addr))
        // Built by hand for HTTP/2, so the app's part goes on its control header directly.
        .header(
            app::RESPOND_WITH,
            app::respond_with_value(&[("X-Session-Update", r#"{"via":"h2"}"#)]),
        )
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        seen["version"], "HTTP/1.1",
        "the app side (the proxy's upstream) is HTTP/1.1"
    );
    assert_eq!(seen["headers"]["cookie"], json!(["a=1; b=2"]));
    assert_eq!(seen["headers"]["host"][0], proxy.addr.to_string());
    assert!(set_cookie.starts_with("session_id="));
    assert_eq!(proxy.sessions().await[0].1, json!({"via":"h2"}));
}

#[tokio::test]
async fn expires_header_tells_the_app_when_the_session_dies() {
    // A new session lives session.first_lifetime until its cookie comes back.
    let (_app, _p, mut b) =
        setup("[session]\nidle_timeout = \"1h\"\nfirst_lifetime = \"10m\"").await;
    let now = session_proxy::session::now_ms() / 1000;
    let expires: u64 = b
        .get("/")
        .await
        .app_saw()
        .header("x-session-expires")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (now + 599..=now + 601).contains(&expires),
        "{expires} vs {now}"
    );
    let (_app, _p, mut b) = setup("[session]\nidle_timeout = \"1h\"\nfirst_lifetime = 0").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = b
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    let expires: u64 = r
        .app_saw()
        .header("x-session-expires")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (now + 3599..=now + 3601).contains(&expires),
        "{expires} vs {now}"
    );
}
