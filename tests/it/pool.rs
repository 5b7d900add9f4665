//! The upstream connection pool, seen from the app: connections counted as the app accepts
//! and closes them. Reused while idle, at most `limits.max_connections` kept idle, never one
//! the app closed or told the proxy to close, never one whose response was cut off; and the
//! request the legacy client's way: origin-form target, a `Host` even for HTTP/1.0.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{App, TestProxy, app, get, h2_client};

/// Waits up to 5 s for `done`; the app sees a close only once the proxy's side has gone.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` requests at once on one HTTP/2 connection to the proxy, each of which the app holds for
/// `ms`, so each needs an app connection of its own.
async fn burst(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    proxy: SocketAddr,
    n: usize,
    ms: u64,
) {
    let requests = (0..n).map(|i| {
        let req = Request::get(format!("http://{proxy}/echo/{i}"))
            .header(app::DELAY_MS, ms)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            let status = resp.status();
            resp.into_body().collect().await.unwrap();
            status
        }
    });
    for status in futures_util::future::join_all(requests).await {
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn idle_connections_are_reused_and_at_most_the_cap_is_kept() {
    let app = App::start().await;
    // The idle cap is `limits.max_connections`; HTTP/2 lets one client connection have more
    // requests in flight than that.
    let proxy = TestProxy::start(&app, "[limits]\nmax_connections = 2\n").await;
    let client = h2_client();

    burst(&client, proxy.addr, 6, 300).await;
    assert_eq!(
        app.connections(),
        6,
        "one app connection per request in flight"
    );
    // Four of the six are closed once they are idle: the cap is 2.
    eventually("the pool keeps at most 2 idle connections", || {
        app.open_connections() == 2
    })
    .await;

    for _ in 0..5 {
        burst(&client, proxy.addr, 1, 0).await;
    }
    assert_eq!(
        app.connections(),
        6,
        "requests one after another reuse an idle connection"
    );

    burst(&client, proxy.addr, 6, 300).await;
    assert_eq!(
        app.connections(),
        10,
        "the two idle connections served two of the six, four were new"
    );
    eventually("again at most 2 idle connections", || {
        app.open_connections() == 2
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_connection_the_app_says_it_closes_is_not_reused() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    for n in 1..=3 {
        let resp = get(proxy.addr, "/echo")
            .app_responds_with(&[("Connection", "close")])
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(app.connections(), n, "a new connection after each close");
    }
    eventually("every closed connection closed", || {
        app.open_connections() == 0
    })
    .await;
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/echo").await.status, 200);
    }
    assert_eq!(app.connections(), 4, "then one connection, kept");
    proxy.stop().await;
}

#[tokio::test]
async fn a_response_cut_off_by_the_client_takes_its_connection_with_it() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    assert_eq!(get(proxy.addr, "/echo").await.status, 200);
    assert_eq!(app.connections(), 1);

    // 100 MB the client stops reading after the first bytes, then goes away.
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /stream/100000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = client.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "the stream began"
    );
    assert_eq!(
        app.connections(),
        1,
        "the stream reused the idle connection"
    );
    drop(client);
    eventually(
        "the cut-off stream's connection is closed, not kept",
        || app.open_connections() == 0,
    )
    .await;

    assert_eq!(get(proxy.addr, "/echo").await.status, 200);
    assert_eq!(
        app.connections(),
        2,
        "the next request had a new connection"
    );
    proxy.stop().await;
}

/// A keep-alive app on raw TCP that closes a connection idle for `idle` (shorter than the
/// proxy's idle timeout, as many apps' is) and records every request head.
struct IdleClosingApp {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IdleClosingApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IdleClosingApp {
    async fn start(idle: Duration) -> IdleClosingApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (seen, accepted) = (heads.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                *accepted.lock().unwrap() += 1;
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        let mut head = Vec::new();
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tokio::time::timeout(idle, s.read(&mut buf)).await {
                                Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                                // Idle too long, or the proxy closed: close.
                                _ => return,
                            }
                        }
                        seen.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head).into_owned());
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        IdleClosingApp {
            addr,
            heads,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_connection_the_app_closed_while_idle_is_not_used_again() {
    let app = IdleClosingApp::start(Duration::from_millis(100)).await;
    let proxy = TestProxy::with_config(crate::support::config(
        app.addr,
        "[store]\nkind = \"memory\"\n",
    ))
    .await;
    let status = |text: String| text.split(' ').nth(1).map(str::to_owned);
    for (n, wait) in [(1, 0), (1, 0), (2, 300), (2, 0), (3, 300)] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let (text, _) = crate::support::raw::exchange(
            proxy.addr,
            b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status(text.clone()).as_deref(), Some("200"), "{text}");
        assert_eq!(app.connections(), n, "after a pause of {wait} ms");
    }
    proxy.stop().await;
}

/// What the legacy client did silently and the app still gets: the target in origin form (the
/// proxy rewrites it to an absolute URI internally), and for an HTTP/1.0 request without
/// `Host`, the app's own authority as `Host` (HTTP/1.1 requires one).
#[tokio::test]
async fn the_app_gets_an_origin_form_target_and_always_a_host() {
    let app = IdleClosingApp::start(Duration::from_secs(5)).await;
    let proxy = TestProxy::with_config(crate::support::config(
        app.addr,
        "[store]\nkind = \"memory\"\n",
    ))
    .await;
    for request in [
        "GET /a/b?c=d HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
        "GET http://example.test/a/b?c=d HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    ] {
        let (text, _) =
            crate::support::raw::exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5))
                .await;
        assert!(text.contains(" 200 "), "{request:?}: {text}");
    }
    let heads = app.heads();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /a/b?c=d HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].starts_with("GET /a/b?c=d HTTP/1.1\r\n"),
        "{}",
        heads[1]
    );
    assert!(heads[2].starts_with("GET / HTTP/1.1\r\n"), "{}", heads[2]);
    let hosts: Vec<String> = heads
        .iter()
        .map(|h| {
            h.lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("host")
                        .then(|| value.trim().to_owned())
                })
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        hosts,
        ["example.test", "example.test", &app.addr.to_string()],
        "{heads:?}"
    );
    proxy.stop().await;
}
