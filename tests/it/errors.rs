use std::time::{Duration, Instant};

use crate::support::{App, TestProxy, config, fs_store, get};

#[tokio::test]
async fn upstream_down_is_a_502_with_a_short_body() {
    // A port that was free a moment ago: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TestProxy::with_config(config(dead, "[store]\nkind = \"memory\"")).await;
    let r = get(proxy.addr, "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(&r.body[..], b"502 Bad Gateway\n");
    assert!(r.set_cookie("session_id").is_none());
}

#[tokio::test]
async fn upstream_too_slow_is_a_504() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "[upstream_timeouts]\nresponse = \"300ms\"").await;
    let r = get(proxy.addr, "/").app_takes_ms(3000).await;
    assert_eq!(r.status, 504);
    assert_eq!(&r.body[..], b"504 Gateway Timeout\n");
    // And a fast request on the same proxy is fine.
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

#[tokio::test]
async fn store_failure_is_a_503_and_nothing_is_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &fs_store(&sessions)).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"n":1}"#)])
        .await;
    let hits = app.hits();

    // Break the store: the session directory becomes a plain file (root ignores permissions).
    let aside = dir.path().join("aside");
    std::fs::rename(&sessions, &aside).unwrap();
    std::fs::write(&sessions, b"not a directory").unwrap();
    let r = b
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"n":2}"#)])
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(&r.body[..], b"503 Service Unavailable\n");
    assert_eq!(
        app.hits(),
        hits,
        "a store failing at load must not reach the app"
    );

    // Restore: the session is exactly as last saved, not half-written.
    std::fs::remove_file(&sessions).unwrap();
    std::fs::rename(&aside, &sessions).unwrap();
    assert_eq!(
        b.get("/").await.app_saw().session(),
        serde_json::json!({"n":1})
    );
}

#[tokio::test]
async fn store_failure_at_save_is_a_503_without_a_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &fs_store(&sessions)).await;
    // The app is slow; the store breaks while it works.
    let addr = proxy.addr;
    let slow = tokio::spawn(async move {
        get(addr, "/")
            .app_takes_ms(500)
            .app_responds_with(&[("X-Session-Update", r#"{"n":1}"#)])
            .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    std::fs::remove_dir_all(&sessions).unwrap();
    std::fs::write(&sessions, b"x").unwrap();
    let r = slow.await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.set_cookie("session_id").is_none());
}

#[tokio::test]
async fn hostile_cookie_and_header_bytes_never_break_the_proxy() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let long = "x".repeat(7000);
    let cases: Vec<Vec<u8>> = vec![
        b"session_id=\xff\xfe".to_vec(),
        b";;;==;session_id==;".to_vec(),
        format!("session_id={long}").into_bytes(),
        b"session_id=\"quoted\"".to_vec(),
        b"=; =x; session_id".to_vec(),
    ];
    for cookie in cases {
        let resp = raw_get(proxy.addr, &cookie).await;
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "{:?}: {resp}",
            String::from_utf8_lossy(&cookie)
        );
    }
    // Still healthy afterwards.
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

/// Sends a request with a raw Cookie header (bytes a typed client would refuse to send).
async fn raw_get(addr: std::net::SocketAddr, cookie: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncookie: ".to_vec();
    req.extend_from_slice(cookie);
    req.extend_from_slice(b"\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    s.read_to_end(&mut out).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    String::from_utf8_lossy(&out).into_owned()
}
