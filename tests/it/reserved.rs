//! The reserved namespace in every spelling (`_` for `-`, any case), both ways, HTTP/1.1 and
//! HTTP/2.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

use crate::support::{App, TestProxy, app, get, h2_send};

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
