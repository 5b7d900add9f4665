//! Request buffering and the body limits: a body within `limits.request_buffer` reaches the app
//! whole, with its length, and only once complete; the buffers' total is a hard bound (the
//! overflow streams and is counted); a streamed body must keep `limits.body_min_rate` after its
//! grace; `limits.max_body_size` is a 413 before the app sees more; `Expect: 100-continue` is
//! answered by the proxy when it starts buffering. Each assertion is on what the client or the
//! app saw.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::app::Sunk;
use crate::support::raw::{exchange, read_until_closed, status_of};
use crate::support::{App, ProxyProcess, TestProxy, get, write_config};

/// Limits under which only the minimum rate can end a slow body in these tests: the idle and
/// whole-body timeouts are far away, the rate's grace is 1 s.
const SLOW_RATE: &str = "body_idle_timeout = \"60s\"\nbody_timeout = \"60s\"\n\
                         body_min_rate = 100\nbody_min_rate_grace = \"1s\"";

/// Waits (up to 10 s) until `done` holds of the app; returns whether it did.
async fn eventually(app: &App, done: impl Fn(&App) -> bool) -> bool {
    for _ in 0..200 {
        if done(app) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Sends `head` and then one byte of body every 200 ms (5 bytes a second: far under the rate of
/// 100, never idle for long) until the proxy answers; returns the answer.
async fn trickle(addr: SocketAddr, head: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        tokio::select! {
            read = s.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if s.write_all(b"x").await.is_err() {
                    break;
                }
            }
        }
    }
    let (rest, _) = read_until_closed(&mut s, Duration::from_secs(2)).await;
    out.extend_from_slice(&rest);
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/2 (prior knowledge) client for any body.
fn h2<B>()
-> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// What the app sees of a whole body of `received` bytes sent with `Content-Length: length`.
fn whole(length: &str, received: u64) -> Sunk {
    Sunk {
        content_length: Some(length.to_owned()),
        transfer_encoding: None,
        expect: None,
        received,
        complete: true,
        trailers: Vec::new(),
    }
}

async fn metrics(admin: SocketAddr) -> String {
    let r = get(admin, "/metrics").await;
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// A chunked body within the buffer reaches the app de-chunked, with a `Content-Length`; so does
/// an HTTP/2 body sent without a length.
#[tokio::test]
async fn a_body_without_a_length_reaches_the_app_whole_with_one() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let (text, _) = exchange(
        proxy.addr,
        b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&text), Some(200), "{text:?}");

    let chunks = ["hello", " ", "h2"]
        .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c))));
    let req = Request::post(format!("http://{}/sink", proxy.addr))
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .unwrap();
    let client = h2();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();

    assert_eq!(app.sunk(), [whole("11", 11), whole("8", 8)]);
}

/// A client that sends its buffered body at 5 bytes a second (the rate is 100, the grace 1 s) is
/// answered 408 by the proxy, and the app never hears of the request: in the binary, from its
/// config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_on_a_buffered_body_never_reaches_the_app() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "proxy.toml",
        &format!("[limits]\n{SLOW_RATE}\n[store]\nkind = \"memory\"\n"),
    );
    let app_url = format!("http://{}", app.addr);
    let proxy = ProxyProcess::spawn(&["--config", &config, "--upstream", &app_url]);
    let text = trickle(
        proxy.addr,
        b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), Some(408), "{text:?}");
    assert_eq!(app.hits(), 0, "the app saw a request whose body never came");
    // The proxy still serves, and the app is reached once a body is whole.
    let r = get(proxy.addr, "/sink").await;
    assert_eq!(r.status, 200);
    assert_eq!(app.hits(), 1);
}

/// A body larger than the buffer streams: the app has the request, and when the client falls
/// under the rate after the grace, the proxy answers 408 and cuts the app's body off.
#[tokio::test]
async fn a_slow_client_on_a_streamed_body_is_cut_with_408_after_the_grace() {
    let app = App::start().await;
    let proxy =
        TestProxy::start(&app, &format!("[limits]\n{SLOW_RATE}\nrequest_buffer = 16")).await;
    let text = trickle(
        proxy.addr,
        b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), Some(408), "{text:?}");
    assert!(
        eventually(&app, |app| app.sunk().len() == 1).await,
        "the app never finished with the body"
    );
    let sunk = &app.sunk()[0];
    assert!(!sunk.complete, "the app's body was not cut off: {sunk:?}");
    assert!(sunk.received < 100, "{sunk:?}");
}

/// The same over HTTP/2: a streamed body that trickles is answered 408 after the grace.
#[tokio::test]
async fn a_slow_http2_body_is_a_408_after_the_grace() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &format!("[limits]\n{SLOW_RATE}\nrequest_buffer = 0")).await;
    let slow = Box::pin(futures_util::stream::unfold(0u32, |n| async move {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (n < 100).then(|| {
            (
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
                n + 1,
            )
        })
    }));
    let req = Request::post(format!("http://{}/sink", proxy.addr))
        .body(StreamBody::new(slow))
        .unwrap();
    let client = h2();
    let resp = tokio::time::timeout(Duration::from_secs(15), client.request(req))
        .await
        .expect("no answer within 15 s")
        .unwrap();
    assert_eq!(resp.status(), 408);
    assert!(eventually(&app, |app| app.sunk().len() == 1).await);
    assert!(!app.sunk()[0].complete);
}

/// `request_buffer_total = 2500` holds two buffers of 1000: of five clients that each send the
/// first bytes of a 1000-byte body and wait, two are buffered (the app sees nothing of them) and
/// three stream to the app at once, counted in the metric. Then all five finish and are served.
#[tokio::test]
async fn the_buffers_total_holds_with_many_clients_and_the_overflow_streams() {
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        "[limits]\nrequest_buffer = 1000\nrequest_buffer_total = 2500\n[admin]\nlisten = \"127.0.0.1:0\"",
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[b'a'; 10]).await.unwrap();
        clients.push(s);
    }
    assert!(
        eventually(&app, |app| app.hits() == 3).await,
        "the app saw {} requests, not the 3 that overflowed",
        app.hits()
    );
    let text = metrics(proxy.admin_addr()).await;
    assert!(
        text.lines()
            .any(|l| l == "session_proxy_request_buffer_overflows_total 3"),
        "{text}"
    );
    // The two buffered ones are still held back from the app.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.hits(), 3);
    for s in &mut clients {
        s.write_all(&[b'b'; 990]).await.unwrap();
    }
    for mut s in clients {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&out).contains("\"received\"") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&text), Some(200), "{text:?}");
        assert!(text.contains("{\"received\":1000}"), "{text:?}");
    }
    assert_eq!(app.hits(), 5);
    assert!(app.sunk().iter().all(|s| s.received == 1000 && s.complete));
}

/// `max_body_size = 100`: a declared length over it is a 413 before a byte is read (the app is
/// never asked); a chunked body that grows over it is a 413 too, whether it was being buffered
/// (the app never asked) or streamed (the app saw at most the limit, then a cut).
#[tokio::test]
async fn bodies_over_max_body_size_are_413() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "[limits]\nmax_body_size = 100").await;
    let (text, closed) = exchange(
        proxy.addr,
        b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&text), Some(413), "{text:?}");
    assert!(closed);

    let mut chunked =
        b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(b"a\r\n0123456789\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (text, _) = exchange(proxy.addr, &chunked, Duration::from_secs(5)).await;
    assert_eq!(status_of(&text), Some(413), "{text:?}");
    assert_eq!(app.hits(), 0);

    let streamed =
        TestProxy::start(&app, "[limits]\nmax_body_size = 100\nrequest_buffer = 0").await;
    let mut s = TcpStream::connect(streamed.addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // Ten bytes at a time, so the app has the first ones before the limit is crossed.
    let mut answer = Vec::new();
    for _ in 0..20 {
        if s.write_all(b"a\r\n0123456789\r\n").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    answer.extend_from_slice(&out);
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&text), Some(413), "{text:?}");
    assert!(eventually(&app, |app| app.sunk().len() == 1).await);
    let sunk = &app.sunk()[0];
    assert!(sunk.received <= 100 && !sunk.complete, "{sunk:?}");
}

/// Over HTTP/2: a declared length over `max_body_size` is a 413, and so is a streamed body that
/// grows over it.
#[tokio::test]
async fn http2_bodies_over_max_body_size_are_413() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "[limits]\nmax_body_size = 100\nrequest_buffer = 0").await;
    let client = h2();
    let req = Request::post(format!("http://{}/sink", proxy.addr))
        .body(http_body_util::Full::new(Bytes::from(vec![b'a'; 101])))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(app.hits(), 0);

    let chunks = (0..20)
        .map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"0123456789"))));
    let req = Request::post(format!("http://{}/sink", proxy.addr))
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .unwrap();
    let client = h2();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert!(eventually(&app, |app| app.sunk().len() == 1).await);
    assert!(app.sunk()[0].received <= 100);
}

/// `Expect: 100-continue` on a body the proxy buffers: the proxy answers `100 Continue` itself,
/// reads the body, and the app gets it whole without the `Expect`.
#[tokio::test]
async fn expect_100_continue_is_answered_by_the_proxy_when_it_buffers() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no 100 Continue")
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim:?}"
    );
    assert_eq!(app.hits(), 0, "the app was asked before the body came");
    s.write_all(b"hello").await.unwrap();
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&text), Some(200), "{text:?}");
    assert_eq!(app.sunk(), [whole("5", 5)]);
}

/// A chunked body with trailers: buffered or streamed, the app gets the same trailers (the
/// body whole either way), and a reserved one never. (Over HTTP/1.1 that is none: hyper's client
/// sends only the trailers a `Trailer` header declares, and `Trailer` is hop-by-hop.)
#[tokio::test]
async fn trailers_pass_the_same_whether_the_body_is_buffered_or_streamed() {
    let mut seen = Vec::new();
    for limits in ["", "[limits]\nrequest_buffer = 0"] {
        let app = App::start().await;
        let proxy = TestProxy::start(&app, limits).await;
        let (text, _) = exchange(
            proxy.addr,
            b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum, X-Session-Update\r\nConnection: close\r\n\r\n\
              5\r\nhello\r\n0\r\nX-Sum: 5\r\nX-Session-Update: {\"admin\":true}\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&text), Some(200), "{limits}: {text:?}");
        let sunk = app.sunk();
        assert_eq!(sunk.len(), 1);
        assert_eq!((sunk[0].received, sunk[0].complete), (5, true));
        assert!(
            !sunk[0].trailers.iter().any(|t| t.starts_with("x-session")),
            "{sunk:?}"
        );
        seen.push(sunk[0].trailers.clone());
    }
    assert_eq!(seen[0], seen[1], "buffered, then streamed");
}
