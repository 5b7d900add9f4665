//! What the app is told about the request's origin: `Host` by RFC 9112 §3.2 and RFC 9113
//! §8.3.1, CONNECT refused, and forwarding headers a client might forge removed or overwritten.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::raw::{exchange, status_of};
use crate::support::{App, TestProxy, get, h2_send};

/// The app's view (its echo) of a raw HTTP/1.1 request, or the status if the proxy refused it.
async fn raw(addr: std::net::SocketAddr, head: &str) -> (Option<u16>, String) {
    let (text, _) = exchange(addr, head.as_bytes(), Duration::from_secs(5)).await;
    (status_of(&text), text)
}

#[tokio::test]
async fn http2_authority_wins_over_a_host_header() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let req = Request::get(format!("http://{}/", proxy.addr))
        .header("host", "evil.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (resp, _) = h2_send(req).await;
    let seen: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(
        seen["headers"]["host"],
        serde_json::json!([proxy.addr.to_string()])
    );
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        serde_json::json!([proxy.addr.to_string()])
    );
}

#[tokio::test]
async fn an_absolute_form_targets_authority_wins_over_host() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let (status, text) = raw(
        proxy.addr,
        "GET http://target.example/x?q=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, Some(200), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        seen["headers"]["host"],
        serde_json::json!(["target.example"])
    );
    assert_eq!(seen["path"], "/x");
    assert_eq!(seen["query"], "q=1");
}

#[tokio::test]
async fn a_missing_repeated_or_invalid_host_is_a_400_and_connect_a_405() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    for head in [
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b/c@d\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: user@a.example\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example/path\r\nConnection: close\r\n\r\n",
    ] {
        let (status, text) = raw(proxy.addr, head).await;
        assert_eq!(status, Some(400), "{head:?}: {text}");
    }
    let (status, text) = raw(
        proxy.addr,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, Some(405), "{text}");
    assert!(text.to_ascii_lowercase().contains("\r\nallow: "), "{text}");
    assert_eq!(app.hits(), 0, "none of them reached the app");
    // HTTP/1.0 may leave Host out; a port is fine.
    let (_, text) = raw(proxy.addr, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.0 200 "), "{text}");
    assert_eq!(
        get(proxy.addr, "/")
            .client_sends(&[("host", "a.example:8443")])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn forwarding_headers_a_client_sends_are_not_believed() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let forged = [
        ("forwarded", "for=203.0.113.9;proto=https"),
        ("x-real-ip", "203.0.113.9"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x_forwarded_for", "203.0.113.9"),
        ("x-forwarded-ssl", "on"),
        ("x-forwarded-scheme", "https"),
        ("true-client-ip", "203.0.113.9"),
        ("x-original-url", "/admin"),
    ];
    let seen = get(proxy.addr, "/").client_sends(&forged).await.app_saw();
    for gone in [
        "forwarded",
        "x_forwarded_for",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "true-client-ip",
        "x-original-url",
    ] {
        assert!(!seen.has_header(gone), "{gone} reached the app");
    }
    assert_eq!(seen.headers("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.headers("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(
        seen.headers("x-forwarded-port"),
        [proxy.addr.port().to_string()]
    );
    assert_eq!(seen.headers("x-forwarded-proto"), ["http"]);

    // Behind a trusted front proxy its values stay, and this hop extends the chain.
    let proxy = TestProxy::start(&app, "trust_forwarded_headers = true").await;
    let seen = get(proxy.addr, "/").client_sends(&forged).await.app_saw();
    assert_eq!(seen.headers("forwarded"), ["for=203.0.113.9;proto=https"]);
    assert_eq!(seen.headers("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(seen.headers("x-real-ip"), ["203.0.113.9"]);
    assert!(
        !seen.has_header("x_forwarded_for"),
        "an underscore alias is never a front proxy's"
    );
}
