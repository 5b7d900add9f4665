//! WebSocket and any HTTP/1.1 `Upgrade` through the proxy: the handshake is an ordinary request
//! for the session (headers to the app, the app's instructions in its 101 carried out), then
//! bytes flow both ways until either side closes. Real tokio-tungstenite clients and a real
//! WebSocket app (`support/app.rs`, `/ws`), or raw TCP for a made-up protocol (`/raw-upgrade`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::support::app::{self, App};
use crate::support::raw::{closed_within, read_until_closed, status_of};
use crate::support::{ProxyProcess, TestProxy, get, write_config};

pub(crate) type Ws = WebSocketStream<TcpStream>;
type Handshake = http::Response<Option<Vec<u8>>>;

/// Opens a WebSocket to `path` on `addr` with `headers` added to the handshake; the handshake's
/// response comes back too (or the error, for a refused upgrade).
pub(crate) async fn open_ws(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Handshake), tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(req, stream).await
}

/// Sends `text` and returns the next text message.
pub(crate) async fn say(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no answer on the socket");
        match next {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("the socket ended instead of answering: {other:?}"),
        }
    }
}

/// Whether the socket ends (a close frame, EOF or an error) within `limit`.
pub(crate) async fn ends_within(ws: &mut Ws, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// The cookie header of a client logged in as `user` (the app set it with an instruction).
async fn logged_in(proxy: &TestProxy, user: &str) -> String {
    let mut b = proxy.client();
    let r = b
        .get("/login")
        .app_responds_with(&[("X-Session-Update", &json!({ "user": user }).to_string())])
        .await;
    assert_eq!(r.status, 200);
    format!("{}={}", b.cookie_name, b.cookie.unwrap())
}

/// `session_proxy_tunnels_open` on the admin listener's `/metrics`.
async fn tunnels_open(admin: SocketAddr) -> i64 {
    let r = get(admin, "/metrics").await;
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("session_proxy_tunnels_open "))
        .unwrap_or_else(|| panic!("no tunnels_open gauge: {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Polls `/metrics` until `tunnels_open` is `want` (at most 10 s); returns the last value.
async fn wait_tunnels(admin: SocketAddr, want: i64) -> i64 {
    let start = Instant::now();
    loop {
        let n = tunnels_open(admin).await;
        if n == want || start.elapsed() > Duration::from_secs(10) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw HTTP/1.1 upgrade to `protocol` on `path`: the connection and the response head.
async fn raw_upgrade(addr: SocketAddr, path: &str, protocol: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("no response head")
            .unwrap();
        if n == 0 {
            break;
        }
        got.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&got).into_owned())
}

/// Writes `bytes` and reads exactly as many back.
async fn echoed(s: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    s.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("no echo")
        .unwrap();
    back
}

#[tokio::test]
async fn a_websocket_echoes_with_the_user_from_the_session() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let cookie = logged_in(&proxy, "ada").await;
    let (mut ws, handshake) = open_ws(
        proxy.addr,
        "/ws",
        &[
            ("cookie", &cookie),
            // Hop-by-hop options besides the upgrade are the client's business with this hop.
            ("connection", "keep-alive, Upgrade, x-hop"),
            ("x-hop", "only for the proxy"),
            ("keep-alive", "timeout=5"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(handshake.status(), 101);
    assert!(handshake.headers().contains_key("x-request-id"));
    assert_eq!(say(&mut ws, "hello").await, "ada: hello");
    assert_eq!(say(&mut ws, "again").await, "ada: again");

    // The handshake the app got: the session's headers, the upgrade, no other hop-by-hop.
    let seen: Value = serde_json::from_str(&say(&mut ws, "seen").await).unwrap();
    let h = &seen["headers"];
    assert_eq!(h["connection"], json!(["upgrade"]), "{seen}");
    assert_eq!(h["upgrade"], json!(["websocket"]));
    assert!(h["sec-websocket-key"].is_array());
    assert!(
        h.get("x-hop").is_none() && h.get("keep-alive").is_none(),
        "{seen}"
    );
    assert_eq!(h["x-session-new"], json!(["0"]));
    assert!(
        h.get("cookie").is_none(),
        "the session cookie is the proxy's: {seen}"
    );
    assert_eq!(seen["session"], json!({ "user": "ada" }));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn the_apps_instructions_in_its_101_are_carried_out_before_the_switch() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let update = app::respond_with_value(&[
        ("X-Session-Update", r#"{"user":"bob","via":"socket"}"#),
        ("X-Session-Regenerate", "1"),
    ]);
    let (mut ws, handshake) = open_ws(proxy.addr, "/ws", &[(app::RESPOND_WITH, &update)])
        .await
        .unwrap();
    assert_eq!(handshake.status(), 101);
    for name in ["x-session-update", "x-session-regenerate"] {
        assert!(
            !handshake.headers().contains_key(name),
            "{name} reached the client"
        );
    }
    let set_cookie = handshake.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set_cookie.starts_with("session_id="), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    // The socket itself carries no session work: it is the app's, byte for byte.
    assert_eq!(say(&mut ws, "hi").await, "stranger: hi");

    // The store has what the 101 asked for: a normal request with the cookie reads it back.
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let r = get(proxy.addr, "/echo")
        .client_sends(&[("cookie", &cookie)])
        .await;
    assert!(!r.app_saw().is_new());
    assert_eq!(
        r.app_saw().session(),
        json!({ "user": "bob", "via": "socket" })
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_refused_upgrade_is_an_ordinary_response_with_its_session_work() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    for status in [200, 400, 426] {
        let r = get(proxy.addr, "/ws")
            .client_sends(&[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ])
            .app_status(status)
            .app_responds_with(&[("X-Session-Update", &format!(r#"{{"refused":{status}}}"#))])
            .await;
        assert_eq!(r.status, status);
        assert!(!r.headers.contains_key("upgrade"));
        // The app was asked to upgrade, and said no.
        assert_eq!(r.app_saw().header("upgrade").as_deref(), Some("websocket"));
        let cookie = r.set_cookie("session_id").expect("the session was saved");
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let again = get(proxy.addr, "/echo")
            .client_sends(&[("cookie", &cookie)])
            .await;
        assert_eq!(again.app_saw().session(), json!({ "refused": status }));
    }
    // And through the WebSocket client: the handshake fails with the app's answer.
    let refused = open_ws(proxy.addr, "/ws", &[(app::STATUS, "403")]).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected the app's 403, got {:?}", other.map(|(_, r)| r)),
    }
}

#[tokio::test]
async fn a_raw_upgrade_to_any_protocol_passes_bytes_both_ways() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let (mut s, head) = raw_upgrade(proxy.addr, "/raw-upgrade", "foo/1").await;
    assert_eq!(status_of(&head), Some(101), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: foo/1\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        !lower.contains("\r\nset-cookie: "),
        "an untouched new session: {head}"
    );
    assert_eq!(echoed(&mut s, b"ping").await, b"ping");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echoed(&mut s, &big).await, big);
    // The app closes: the client's connection ends.
    s.write_all(b"quit").await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
}

/// Hardening defect 8 stays fixed for requests that asked for no upgrade (see
/// `upstream_framing`), and a 101 switching to what the client did not offer is as bad.
#[tokio::test]
async fn a_101_to_another_protocol_than_asked_is_a_502() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    for path in [
        "/raw-upgrade?as=bar",
        "/raw-upgrade?as=",
        "/raw-upgrade?as=foo/2",
    ] {
        let (mut s, head) = raw_upgrade(proxy.addr, path, "foo/1").await;
        assert_eq!(status_of(&head), Some(502), "{path}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("\r\nupgrade:"),
            "{head}"
        );
        let (rest, _) = read_until_closed(&mut s, Duration::from_millis(300)).await;
        assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1 101"));
    }
    // Over HTTP/1.0 there is no upgrade: the request goes as an ordinary one.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.0\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n")
        .await
        .unwrap();
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(!out.contains("\"upgrade\""), "{out}");
}

#[tokio::test]
async fn an_upgrade_to_http_itself_is_forwarded_as_an_ordinary_request() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    // An upgrade to HTTP itself would let the client talk to the app past the proxy (h2c
    // smuggling): the request goes as an ordinary one, without its `Upgrade`.
    for protocol in ["h2c", "websocket, h2c", "HTTP/2.0"] {
        let (mut s, head) = raw_upgrade(proxy.addr, "/raw-upgrade", protocol).await;
        assert_eq!(status_of(&head), Some(200), "{protocol}: {head}");
        let (body, _) = read_until_closed(&mut s, Duration::from_millis(500)).await;
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("\"upgrade\""), "{protocol}: {body}");
    }
}

#[tokio::test]
async fn a_forged_session_header_in_the_handshake_is_stripped() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    // {"user":"mallory"} as X-Session would carry it.
    let forged = "eyJ1c2VyIjoibWFsbG9yeSJ9";
    let (mut ws, _) = open_ws(
        proxy.addr,
        "/ws",
        &[
            ("x-session", forged),
            ("x-session-id", "forged-id"),
            ("x-session-new", "0"),
            ("x_session_update", r#"{"user":"mallory"}"#),
        ],
    )
    .await
    .unwrap();
    assert_eq!(say(&mut ws, "hi").await, "stranger: hi");
    let seen: Value = serde_json::from_str(&say(&mut ws, "seen").await).unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["session"], json!({}), "{seen}");
    assert_eq!(h["x-session-new"], json!(["1"]));
    assert_ne!(h["x-session-id"], json!(["forged-id"]));
    assert!(h.get("x_session_update").is_none(), "{seen}");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_side_closing_ends_the_tunnel_and_frees_its_connection() {
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        "[limits]\nmax_connections = 1\n[admin]\nlisten = \"127.0.0.1:0\"",
    )
    .await;
    let admin = proxy.admin_addr();
    for closer in ["client", "app"] {
        // The previous round's probe closed its connection, but the proxy frees that slot just
        // after the close the probe saw: a connection made in between is turned away.
        let start = Instant::now();
        let (mut ws, _) = loop {
            match open_ws(proxy.addr, "/ws", &[]).await {
                Ok(opened) => break opened,
                Err(e) => assert!(start.elapsed() < Duration::from_secs(10), "{closer}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(say(&mut ws, "hi").await, "stranger: hi");
        assert_eq!(tunnels_open(admin).await, 1, "{closer}");

        // The tunnel holds the one connection slot: another client is turned away.
        let mut other = TcpStream::connect(proxy.addr).await.unwrap();
        let _ = other.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let (out, closed) = read_until_closed(&mut other, Duration::from_secs(10)).await;
        assert!(
            closed && out.is_empty(),
            "{closer}: {:?}",
            String::from_utf8_lossy(&out)
        );

        match closer {
            "client" => {
                ws.close(None).await.unwrap();
                assert!(ends_within(&mut ws, Duration::from_secs(10)).await);
                drop(ws);
            }
            _ => {
                ws.send(Message::text("bye")).await.unwrap();
                assert!(
                    ends_within(&mut ws, Duration::from_secs(10)).await,
                    "{closer}"
                );
            }
        }
        assert_eq!(wait_tunnels(admin, 0).await, 0, "{closer}");

        // The slot is free again.
        let start = Instant::now();
        loop {
            let mut s = TcpStream::connect(proxy.addr).await.unwrap();
            let _ = s
                .write_all(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await;
            let (out, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
            if status_of(&String::from_utf8_lossy(&out)) == Some(200) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{closer}: slot never freed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Neither the keep-alive nor the body timeouts apply to a tunnel that passes bytes; only
/// `upgrade_idle_timeout`, with nothing moving either way, closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_tunnel_idle_both_ways_is_closed() {
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        "[limits]\nkeep_alive_timeout = \"1s\"\nbody_idle_timeout = \"1s\"\nbody_timeout = \"1s\"\nhandshake_timeout = \"1s\"\nheader_read_timeout = \"1s\"\nupgrade_idle_timeout = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"",
    )
    .await;
    let (mut s, head) = raw_upgrade(proxy.addr, "/raw-upgrade", "foo").await;
    assert_eq!(status_of(&head), Some(101), "{head}");
    // Four seconds of traffic, a piece every 300 ms: past every other timeout, and twice the
    // idle one.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert_eq!(echoed(&mut s, b"tick").await, b"tick");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(tunnels_open(proxy.admin_addr()).await, 1);
    // Then silence: the proxy closes it.
    assert!(closed_within(&mut s, Duration::from_secs(20)).await);
    assert_eq!(wait_tunnels(proxy.admin_addr(), 0).await, 0);
}

/// The binary: SIGTERM while a socket is open keeps it working through the drain, then closes
/// it by `shutdown_timeout` and exits; the handshake had one access-log line, with status 101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_tunnel_closes_it_by_the_deadline() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "proxy.toml",
        "shutdown_timeout = \"2s\"\n[store]\nkind = \"memory\"\n",
    );
    let app_url = format!("http://{}", app.addr);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut proxy = ProxyProcess::spawn_logging(
        &["--config", &config, "--upstream", &app_url],
        "info",
        log.reopen().unwrap(),
    );
    let (mut ws, handshake) = open_ws(proxy.addr, "/ws", &[]).await.unwrap();
    assert_eq!(handshake.status(), 101);
    assert_eq!(say(&mut ws, "before").await, "stranger: before");

    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Draining: the tunnel is still served, like a request in flight.
    assert_eq!(say(&mut ws, "draining").await, "stranger: draining");
    assert!(
        ends_within(&mut ws, Duration::from_secs(20)).await,
        "the tunnel outlived the shutdown deadline"
    );
    let code = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));

    let text = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" request ")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains("path=/ws status=101"), "{text}");
}
