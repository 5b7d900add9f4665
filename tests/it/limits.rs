//! `[limits]`: connections that send nothing are closed, the connection count is capped, heads
//! and targets over their limits get 431/414, slow or broken request bodies are the client's
//! 408/400 (and logged as the client's fault), HTTP/2 streams per connection are capped.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::support::raw::{closed_within, exchange, read_until_closed, status_of};
use crate::support::{App, ProxyProcess, TestProxy, get, h2_client, write_config};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connections that never complete a request: a silent one, half an HTTP/2 preface, a whole
/// preface and then silence, and half an HTTP/1.1 head. Each is closed by the proxy soon after
/// `handshake_timeout`, never left open.
#[tokio::test]
async fn connections_that_send_no_request_are_closed_after_the_handshake_timeout() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "[limits]\nhandshake_timeout = \"500ms\"").await;
    let starts: [&[u8]; 4] = [
        b"",
        &PREFACE[..16],
        PREFACE,
        b"GET / HTTP/1.1\r\nHost: t\r\n",
    ];
    let mut waits = Vec::new();
    for start in starts {
        let addr = proxy.addr;
        waits.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(start).await.unwrap();
            let t = Instant::now();
            let closed = closed_within(&mut s, Duration::from_secs(5)).await;
            (
                String::from_utf8_lossy(start).into_owned(),
                closed,
                t.elapsed(),
            )
        }));
    }
    for w in waits {
        let (start, closed, took) = w.await.unwrap();
        assert!(closed, "{start:?}: still open after 5 s");
        assert!(
            took >= Duration::from_millis(400),
            "{start:?}: closed too early ({took:?})"
        );
    }
    assert_eq!(app.hits(), 0);
    // The proxy still serves.
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

/// An HTTP/1.1 connection on which one request was made.
async fn open_h1(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn status_on(send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>) -> u16 {
    let req = Request::get("/")
        .header("host", "t")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn the_connection_after_max_connections_is_refused_and_the_first_ones_still_served() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "[limits]\nmax_connections = 2").await;
    let mut first = open_h1(proxy.addr).await;
    let mut second = open_h1(proxy.addr).await;
    assert_eq!(status_on(&mut first).await, 200);
    assert_eq!(status_on(&mut second).await, 200);

    let (text, closed) = exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        closed && text.is_empty(),
        "a third connection was served: {text:?}"
    );
    assert_eq!(
        status_on(&mut first).await,
        200,
        "the first ones are still served"
    );
    assert_eq!(status_on(&mut second).await, 200);

    // One closes: a new one is served again.
    drop(first);
    let start = Instant::now();
    loop {
        let (text, _) = exchange(
            proxy.addr,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            Duration::from_secs(3),
        )
        .await;
        if status_of(&text) == Some(200) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never served again: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn heads_targets_and_header_counts_over_the_limits_are_431_and_414() {
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        "[limits]\nmax_head_size = 16384\nmax_uri_length = 1000\nmax_headers = 20",
    )
    .await;
    let big = "v".repeat(20_000);
    let r = get(proxy.addr, "/").client_sends(&[("x-big", &big)]).await;
    assert_eq!(r.status, 431, "head over max_head_size");
    let r = get(proxy.addr, &format!("/{}", "a".repeat(1001))).await;
    assert_eq!(r.status, 414, "target over max_uri_length");
    let names: Vec<String> = (0..30).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = get(proxy.addr, "/").client_sends(&many).await;
    assert_eq!(r.status, 431, "more fields than max_headers");
    assert_eq!(app.hits(), 0, "none of them reached the app");

    // HTTP/2: the same limits, the same answers.
    let mut req = Request::get(format!("http://{}/", proxy.addr));
    for n in &names {
        req = req.header(n, "1");
    }
    let resp = h2_client()
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let req = Request::get(format!("http://{}/{}", proxy.addr, "a".repeat(1001)))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(h2_client().request(req).await.unwrap().status(), 414);
    assert_eq!(app.hits(), 0);
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

/// A body that stops half-way, and one that trickles for longer than the whole-body limit: both
/// are answered 408 within the limits, and the app (reading the body) is let go.
#[tokio::test]
async fn a_request_body_that_stalls_or_trickles_is_a_408() {
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        "[limits]\nbody_idle_timeout = \"300ms\"\nbody_timeout = \"1500ms\"",
    )
    .await;
    let started = Instant::now();
    let (text, closed) = exchange(
        proxy.addr,
        b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&text), Some(408), "{text:?}");
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(3));

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = async {
        for _ in 0..50 {
            if s.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), trickle)
        .await
        .ok();
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&text), Some(408), "{text:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

/// A malformed chunked body is the client's error: 400, and the log line says so (not an
/// upstream failure, not a 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_a_400_logged_as_the_clients_fault() {
    let app = App::start().await;
    let app_url = format!("http://{}", app.addr);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut proxy = ProxyProcess::spawn_logging(
        &["--store", "memory", "--upstream", app_url.as_str()],
        "info",
        log.reopen().unwrap(),
    );
    let (text, closed) = exchange(
        proxy.addr,
        b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&text), Some(400), "{text:?}");
    assert!(closed);
    proxy.signal("TERM");
    let code = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let logged = std::fs::read_to_string(log.path()).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("path=/sink"))
        .unwrap_or_else(|| panic!("no access line: {logged}"));
    assert!(
        line.contains("status=400") && line.contains("fault=client"),
        "{line}"
    );
    assert!(!line.contains("upstream"), "{line}");
}

/// `h2_max_concurrent_streams = 2`: four slow requests on one HTTP/2 connection run two at a
/// time, so they take two rounds of the app's time, not one.
#[tokio::test]
async fn http2_streams_per_connection_are_capped() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "[limits]\nh2_max_concurrent_streams = 2").await;
    let client = h2_client();
    // One request first, so the client has the proxy's SETTINGS (with the cap) before the rest.
    let warm = Request::get(format!("http://{}/", proxy.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.request(warm).await.unwrap().status(), 200);
    let started = Instant::now();
    let mut all = Vec::new();
    for _ in 0..4 {
        let req = Request::get(format!("http://{}/", proxy.addr))
            .header(crate::support::app::DELAY_MS, "500")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = client.clone();
        all.push(tokio::spawn(async move {
            client.request(req).await.unwrap().status()
        }));
    }
    for r in all {
        assert_eq!(r.await.unwrap(), 200);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "more than two streams ran at once: {:?}",
        started.elapsed()
    );
}

/// The cap is also in the config file the binary reads (`[limits]` keys reach the listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_applies_limits_from_its_config_file() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "proxy.toml",
        "[limits]\nhandshake_timeout = \"300ms\"\n[store]\nkind = \"memory\"\n",
    );
    let app_url = format!("http://{}", app.addr);
    let proxy = ProxyProcess::spawn(&["--config", &config, "--upstream", &app_url]);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
}

/// An HTTP/2 client that made a request and then stops answering the proxy's PINGs (a dead peer,
/// or one that holds the connection without reading) is closed after
/// `h2_keep_alive_interval` + `h2_keep_alive_timeout`, long before `keep_alive_timeout`.
#[tokio::test]
async fn an_http2_connection_that_stops_answering_pings_is_closed() {
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        "[limits]\nkeep_alive_timeout = \"60s\"\nh2_keep_alive_interval = \"300ms\"\nh2_keep_alive_timeout = \"300ms\"",
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut frames = PREFACE.to_vec();
    // SETTINGS (empty), then HEADERS on stream 1 (END_STREAM | END_HEADERS) for GET http://t/,
    // written in HPACK by hand: :method GET, :scheme http, :path /, :authority "t".
    frames.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    frames.extend_from_slice(b"\x00\x00\x06\x01\x05\x00\x00\x00\x01\x82\x86\x84\x41\x01t");
    s.write_all(&frames).await.unwrap();
    let started = Instant::now();
    let (out, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "still open after 5 s");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(!out.is_empty(), "the request was answered first");
    assert_eq!(app.hits(), 1);
}
