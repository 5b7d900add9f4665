//! Shutdown does not wait on connections with nothing in flight: an HTTP/2 client that never
//! reads, a client half-way through a request head, and an idle keep-alive connection are all
//! closed at once on SIGTERM, so the binary exits long before `shutdown_timeout`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::support::raw::closed_within;
use crate::support::{App, ProxyProcess, write_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_connections_at_once() {
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
