//! The reserved namespace in every spelling (`_` for `-`, any case), both ways, HTTP/1.1 and
//! HTTP/2, headers and trailers; and the session cookie, which only the proxy may set.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::support::raw::RawApp;
use crate::support::{App, TestProxy, app, config, get, h2_send};

/// Names the app saw that a server reading `_` as `-` would take for a reserved header.
fn reserved_aliases(seen: &serde_json::Value) -> Vec<String> {
    seen["headers"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.replace('_', "-").starts_with("x-session") && k.contains('_'))
        .cloned()
        .collect()
}

const FORGED: [(&str, &str); 4] = [
    ("X_Session", "eyJyb2xlIjoiYWRtaW4ifQ"),
    ("X_Session_Id", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ("x_session-new", "0"),
    ("X-SESSION_UPDATE", r#"{"role":"admin"}"#),
];

#[tokio::test]
async fn underscore_spellings_of_reserved_request_headers_never_reach_the_app() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let r = get(proxy.addr, "/").client_sends(&FORGED).await;
    let seen = r.app_saw();
    assert_eq!(reserved_aliases(&seen.0), Vec::<String>::new());
    assert_eq!(seen.session(), json!({}));

    // HTTP/2: the same.
    let mut req = Request::get(format!("http://{}/", proxy.addr));
    for (k, v) in FORGED {
        req = req.header(k, v);
    }
    let (resp, _) = h2_send(req.body(Full::new(Bytes::new())).unwrap()).await;
    let seen: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(reserved_aliases(&seen), Vec::<String>::new());
}

#[tokio::test]
async fn underscore_spellings_of_reserved_response_headers_never_reach_the_client() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let answer = [
        ("X_Session_Id", "leaked"),
        ("x_session", "leaked"),
        ("X-Session_Whatever", "leaked"),
        ("X-Other", "kept"),
    ];
    let r = get(proxy.addr, "/").app_responds_with(&answer).await;
    let leaked: Vec<&str> = r
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.replace('_', "-").starts_with("x-session"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    assert_eq!(r.headers["x-other"], "kept");

    let req = Request::get(format!("http://{}/", proxy.addr))
        .header(app::RESPOND_WITH, app::respond_with_value(&answer))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (resp, _) = h2_send(req).await;
    let leaked: Vec<&str> = resp
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.replace('_', "-").starts_with("x-session"))
        .collect();
    assert!(leaked.is_empty(), "h2: {leaked:?}");
}

/// The app's trailers go through the same filter as its headers: an HTTP/2 client that asked
/// for trailers gets the app's own, never a reserved one.
#[tokio::test]
async fn reserved_trailers_never_reach_an_http2_client() {
    let raw = RawApp::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Session-Id, X-Session-Update, X-App\r\n\r\n\
          5\r\nhello\r\n0\r\nX-Session-Id: leaked\r\nX-Session-Update: {\"a\":1}\r\nX_Session_Other: 1\r\nX-App: kept\r\n\r\n",
    )
    .await;
    let proxy = TestProxy::with_config(config(raw.addr, "[store]\nkind = \"memory\"")).await;
    let req = Request::get(format!("http://{}/", proxy.addr))
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (resp, trailers) = h2_send(req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(&resp.body[..], b"hello");
    let trailers = trailers.expect("the app's trailers arrive");
    let names: Vec<&str> = trailers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-app"], "{trailers:?}");
    // A trailer is never an instruction: nothing was stored.
    assert!(proxy.sessions().await.is_empty());
}

/// Only the proxy sets the session cookie: the app's `Set-Cookie` for that name is dropped (the
/// app's other cookies pass), so an app cannot fix a client's session id.
#[tokio::test]
async fn the_apps_set_cookie_for_the_session_cookie_is_dropped() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let forced = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let r = get(proxy.addr, "/")
        .app_responds_with(&[
            ("Set-Cookie", &format!("session_id={forced}; Path=/")),
            ("Set-Cookie", "app=1; Path=/"),
        ])
        .await;
    assert_eq!(r.set_cookies(), ["app=1; Path=/"]);

    let r = get(proxy.addr, "/")
        .app_responds_with(&[
            ("Set-Cookie", &format!("session_id={forced}")),
            ("X-Session-Update", r#"{"a":1}"#),
        ])
        .await;
    let ours = r.set_cookies();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert!(!ours[0].contains(forced), "{ours:?}");
}
