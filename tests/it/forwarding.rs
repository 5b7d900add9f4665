//! What the app is told about the request's origin: `Host` by RFC 9112 §3.2 and RFC 9113
//! §8.3.1, CONNECT refused, forwarding headers a client might forge removed or overwritten,
//! and the `X-Forwarded-For` and `Forwarded` (RFC 7239) chains a peer in `trusted_proxies`
//! passes on, extended.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use session_proxy::Proxy;

use crate::support::raw::{exchange, status_of};
use crate::support::{App, Seen, TestProxy, config, get, h2_send, write_config};

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

/// This hop's `Forwarded` element for a client on 127.0.0.1 that called `proxy`.
fn this_hop(proxy: SocketAddr) -> String {
    format!("for=127.0.0.1;proto=http;host=\"{proxy}\"")
}

/// The app's view of a raw HTTP/1.1 request that the proxy answered 200.
async fn raw_seen(addr: SocketAddr, head: &str) -> Seen {
    let (status, text) = raw(addr, head).await;
    assert_eq!(status, Some(200), "{text}");
    Seen(serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap())
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
        "x_forwarded_for",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "true-client-ip",
        "x-original-url",
    ] {
        assert!(!seen.has_header(gone), "{gone} reached the app");
    }
    assert_eq!(seen.headers("forwarded"), [this_hop(proxy.addr)]);
    assert_eq!(seen.headers("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.headers("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(
        seen.headers("x-forwarded-port"),
        [proxy.addr.port().to_string()]
    );
    assert_eq!(seen.headers("x-forwarded-proto"), ["http"]);

    // Behind a trusted front proxy its values stay, and this hop extends the chains.
    let proxy = TestProxy::start(&app, "trusted_proxies = [\"127.0.0.1\"]").await;
    let seen = get(proxy.addr, "/").client_sends(&forged).await.app_saw();
    assert_eq!(
        seen.headers("forwarded"),
        [format!(
            "for=203.0.113.9;proto=https, {}",
            this_hop(proxy.addr)
        )]
    );
    assert_eq!(seen.headers("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(seen.headers("x-real-ip"), ["203.0.113.9"]);
    assert_eq!(seen.headers("x-forwarded-port"), ["443"]);
    assert!(
        !seen.has_header("x_forwarded_for"),
        "an underscore alias is never a front proxy's"
    );
}

#[tokio::test]
async fn a_trusted_proxys_chains_are_extended_in_both_headers() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.0/8\"]").await;
    let hop = this_hop(proxy.addr);

    // Both chains, each in two field lines: joined, then extended by this hop.
    let seen = get(proxy.addr, "/")
        .client_sends(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=198.51.100.1"),
            ("forwarded", "for=203.0.113.9;proto=https;host=app.example"),
            ("x-forwarded-proto", "https"),
        ])
        .await
        .app_saw();
    assert_eq!(
        seen.headers("x-forwarded-for"),
        ["198.51.100.1, 203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(
        seen.headers("forwarded"),
        [format!(
            "for=198.51.100.1, for=203.0.113.9;proto=https;host=app.example, {hop}"
        )]
    );
    assert_eq!(seen.headers("x-forwarded-proto"), ["https"]);

    // `X-Forwarded-For` alone (nginx's `$proxy_add_x_forwarded_for`): `Forwarded` says the same.
    let seen = get(proxy.addr, "/")
        .client_sends(&[("x-forwarded-for", "203.0.113.9, 2001:db8::7")])
        .await
        .app_saw();
    assert_eq!(
        seen.headers("x-forwarded-for"),
        ["203.0.113.9, 2001:db8::7, 127.0.0.1"]
    );
    assert_eq!(
        seen.headers("forwarded"),
        [format!("for=203.0.113.9, for=\"[2001:db8::7]\", {hop}")]
    );

    // `Forwarded` alone: `X-Forwarded-For` says the same, addresses without their ports.
    let seen = get(proxy.addr, "/")
        .client_sends(&[("forwarded", "for=\"[2001:db8::7]:4711\", for=unknown")])
        .await
        .app_saw();
    assert_eq!(
        seen.headers("x-forwarded-for"),
        ["2001:db8::7, unknown, 127.0.0.1"]
    );
    assert_eq!(
        seen.headers("forwarded"),
        [format!("for=\"[2001:db8::7]:4711\", for=unknown, {hop}")]
    );

    // Neither: both chains start at the peer, as from anyone else.
    let seen = get(proxy.addr, "/").await.app_saw();
    assert_eq!(seen.headers("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.headers("forwarded"), [hop]);
}

/// A peer outside `trusted_proxies` is a client like any other: whatever it claims, in any
/// spelling or case, is replaced, and both chains start at it.
#[tokio::test]
async fn an_untrusted_peers_chains_are_replaced_in_every_spelling() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]").await;
    let seen = raw_seen(
        proxy.addr,
        &format!(
            "GET / HTTP/1.1\r\nHost: {}\r\n\
             FORWARDED: for=203.0.113.9\r\n\
             Forwarded: for=198.51.100.1;proto=https\r\n\
             X-Forwarded-For: 203.0.113.9\r\n\
             x_forwarded_for: 203.0.113.9\r\n\
             X_Real_IP: 203.0.113.9\r\n\
             X-Forwarded-Proto: https\r\n\
             X-FORWARDED-HOST: evil.example\r\n\
             x_forwarded_host: evil.example\r\n\
             Connection: close\r\n\r\n",
            proxy.addr
        ),
    )
    .await;
    assert_eq!(seen.headers("forwarded"), [this_hop(proxy.addr)]);
    assert_eq!(seen.headers("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.headers("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(seen.headers("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.headers("x-forwarded-host"), [proxy.addr.to_string()]);
    for gone in ["x_forwarded_for", "x_real_ip", "x_forwarded_host"] {
        assert!(!seen.has_header(gone), "{gone} reached the app");
    }
}

#[tokio::test]
async fn http2_requests_get_the_same_forwarding_rules() {
    let app = App::start().await;
    let h2 = |proxy: SocketAddr| {
        Request::get(format!("http://{proxy}/"))
            .header("forwarded", "for=203.0.113.9")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x_forwarded_for", "198.51.100.1")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let seen = |body: &Bytes| Seen(serde_json::from_slice(body).unwrap());

    let untrusted = TestProxy::start(&app, "trusted_proxies = [\"10.0.0.0/8\"]").await;
    let (resp, _) = h2_send(h2(untrusted.addr)).await;
    let app_saw = seen(&resp.body);
    assert_eq!(app_saw.headers("forwarded"), [this_hop(untrusted.addr)]);
    assert_eq!(app_saw.headers("x-forwarded-for"), ["127.0.0.1"]);
    assert!(!app_saw.has_header("x_forwarded_for"));

    let trusted = TestProxy::start(&app, "trusted_proxies = [\"127.0.0.1/32\"]").await;
    let (resp, _) = h2_send(h2(trusted.addr)).await;
    let app_saw = seen(&resp.body);
    assert_eq!(
        app_saw.headers("forwarded"),
        [format!("for=203.0.113.9, {}", this_hop(trusted.addr))]
    );
    assert_eq!(
        app_saw.headers("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert!(!app_saw.has_header("x_forwarded_for"));
}

/// A `Forwarded` that breaks RFC 7239 is not passed on even from a trusted proxy: it is
/// replaced as if the proxy had sent none, so the two chains still agree.
#[tokio::test]
async fn a_malformed_forwarded_from_a_trusted_proxy_is_replaced() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "trusted_proxies = [\"127.0.0.1\"]").await;
    let hop = this_hop(proxy.addr);
    for malformed in [
        "for=\"unterminated",
        "for=1.2.3.4;for=5.6.7.8",
        "for=[2001:db8::1]",
        "secret",
    ] {
        let seen = get(proxy.addr, "/")
            .client_sends(&[("forwarded", malformed), ("x-forwarded-for", "203.0.113.9")])
            .await
            .app_saw();
        assert_eq!(
            seen.headers("forwarded"),
            [format!("for=203.0.113.9, {hop}")],
            "{malformed}"
        );
        assert_eq!(
            seen.headers("x-forwarded-for"),
            ["203.0.113.9, 127.0.0.1"],
            "{malformed}"
        );
        let seen = get(proxy.addr, "/")
            .client_sends(&[("forwarded", malformed)])
            .await
            .app_saw();
        assert_eq!(seen.headers("forwarded"), [hop.as_str()], "{malformed}");
        assert_eq!(
            seen.headers("x-forwarded-for"),
            ["127.0.0.1"],
            "{malformed}"
        );
    }
}

/// A proxy of `toml` in front of `app`, listening on `[::1]:0`.
async fn on_ipv6_loopback(app: &App, toml: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let config = config(app.addr, &format!("{toml}\n[store]\nkind = \"memory\"\n"));
    let proxy = Proxy::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("[::1]:0")
        .await
        .expect("the tests need IPv6 on loopback (::1)");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(proxy.serve_with_admin(listener, None, std::future::pending()));
    (addr, task)
}

#[tokio::test]
async fn an_ipv6_peer_is_bracketed_and_quoted_in_forwarded() {
    let app = App::start().await;
    let (addr, task) = on_ipv6_loopback(&app, "").await;
    let hop = format!("for=\"[::1]\";proto=http;host=\"{addr}\"");
    let seen = get(addr, "/")
        .client_sends(&[
            ("forwarded", "for=192.0.2.1"),
            ("x-forwarded-for", "192.0.2.1"),
        ])
        .await
        .app_saw();
    assert_eq!(seen.headers("forwarded"), [hop.as_str()]);
    assert_eq!(seen.headers("x-forwarded-for"), ["::1"]);
    assert_eq!(seen.headers("x-real-ip"), ["::1"]);
    task.abort();

    let (addr, task) = on_ipv6_loopback(&app, "trusted_proxies = [\"::1/128\"]").await;
    let hop = format!("for=\"[::1]\";proto=http;host=\"{addr}\"");
    let seen = get(addr, "/")
        .client_sends(&[("forwarded", "for=192.0.2.1")])
        .await
        .app_saw();
    assert_eq!(seen.headers("forwarded"), [format!("for=192.0.2.1, {hop}")]);
    assert_eq!(seen.headers("x-forwarded-for"), ["192.0.2.1, ::1"]);
    task.abort();
}

/// The binary refuses the old key and a bad entry at start (exit 2), saying what to write.
#[test]
fn the_old_key_and_a_bad_trusted_proxy_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "trust_forwarded_headers = true\n",
            "`trust_forwarded_headers`: was replaced by `trusted_proxies`: list the addresses of \
             your front proxies, e.g. trusted_proxies = [\"127.0.0.1\"]",
        ),
        (
            "trust_forwarded_headers = false\n",
            "`trust_forwarded_headers`: was replaced by `trusted_proxies`: delete the line",
        ),
        (
            "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/40\"]\n",
            "`trusted_proxies`: \"10.0.0.0/40\" is not an IP address or a network like \"10.0.0.0/8\"",
        ),
        (
            "trusted_proxies = [\"10.1.2.3/8\"]\n",
            "`trusted_proxies`: \"10.1.2.3/8\" has host bits set",
        ),
    ];
    for (text, want) in cases {
        let path = write_config(dir.path(), "proxy.toml", text);
        let out = Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .args(["check", "--config", &path])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains(&format!("proxy.toml: {want}")),
            "{text}: {err}"
        );
    }
}
