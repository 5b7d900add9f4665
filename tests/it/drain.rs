//! Shutdown does not wait on connections with nothing in flight: an HTTP/2 client that never
//! reads, a client half-way through a request head, and an idle keep-alive connection are all
//! closed on SIGTERM (HTTP/2 at once, HTTP/1 after the drain's idle grace), so the binary exits
//! long before `shutdown_timeout`. An idle HTTP/1.1 connection still answers a request that
//! comes within that grace, with `Connection: close`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::support::raw::closed_within;
use crate::support::{App, ProxyProcess, get, write_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_connections_without_waiting_for_the_deadline() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "proxy.toml",
        "shutdown_timeout = \"20s\"\n[limits]\nhandshake_timeout = \"60s\"\nheader_read_timeout = \"60s\"\nkeep_alive_timeout = \"60s\"\n[store]\nkind = \"memory\"\n",
    );
    let app_url = format!("http://{}", app.addr);
    let mut proxy = ProxyProcess::spawn(&["--config", &config, "--upstream", &app_url]);

    // HTTP/2 that never reads: the preface and an empty SETTINGS frame, then nothing.
    let mut h2 = TcpStream::connect(proxy.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // Half a request head.
    let mut half = TcpStream::connect(proxy.addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    // A keep-alive connection that made one request and is idle now.
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let idle = tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "t")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    proxy.signal("TERM");
    assert!(
        closed_within(&mut half, Duration::from_secs(5)).await,
        "the half head was kept"
    );
    let code = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for connections with nothing in flight",
        started.elapsed()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), idle).await;
    drop(h2);
}

/// A kept-alive HTTP/1.1 connection that is idle when the drain begins is not closed under a
/// client about to use it: its next request is answered (with `Connection: close`, so the
/// client's following one opens a new connection), and then the connection ends. hyper's own
/// graceful shutdown would close it at once, and that request would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_keep_alive_connection_answers_its_next_request_with_connection_close() {
    let app = App::start().await;
    let app_url = format!("http://{}", app.addr);
    let mut proxy = ProxyProcess::spawn(&[
        "--store",
        "memory",
        "--upstream",
        &app_url,
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let request = || {
        http::Request::get("/")
            .header("host", "t")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let resp = send.send_request(request()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("connection").is_none());
    resp.into_body().collect().await.unwrap();

    proxy.signal("TERM");
    // The drain has begun when /readyz says so; the connection has been idle throughout.
    let admin = proxy.admin.unwrap();
    while get(admin, "/readyz").await.status != 503 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = send
        .send_request(request())
        .await
        .expect("the idle connection still answers during the drain");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["connection"], "close");
    resp.into_body().collect().await.unwrap();
    // Then the proxy closes it.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection ends after that response")
        .unwrap()
        .unwrap();
    let code = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}
