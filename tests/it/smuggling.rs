//! Request smuggling stays impossible: raw HTTP/1.1 bytes of every classic desync (CL+TE,
//! duplicate or invalid Content-Length, obfuscated Transfer-Encoding, obs-fold, bare CR, NUL and
//! control bytes, broken chunk framing) are refused with a 400 and the connection closed, and
//! the request hidden inside never reaches the app.

use std::time::Duration;

use crate::support::raw::{exchange, status_of};
use crate::support::{App, TestProxy};

/// The request each attack tries to sneak past the proxy.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";

async fn attack(proxy: &TestProxy, head: &str) -> (Option<u16>, bool, String) {
    let bytes = format!("{head}{SMUGGLED}");
    let (text, closed) = exchange(proxy.addr, bytes.as_bytes(), Duration::from_secs(5)).await;
    (status_of(&text), closed, text)
}

fn responses(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn malformed_framing_is_a_400_closed_and_never_forwarded() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let cases = [
        // Two lengths that disagree, or that are not a plain number.
        "POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
        "POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 40\r\n\r\nhello",
        "POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
        "POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 0x05\r\n\r\nhello",
        // Transfer-Encoding that is not plainly chunked.
        "POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        "POST /sink HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // obs-fold, bare CR, NUL and other control bytes.
        "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n chunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\rHost: t\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nX\0A: b\r\n\r\n",
        // Chunk framing the proxy cannot read: answered 400 by the proxy, as the client's fault.
        "POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
    ];
    for head in cases {
        let (status, closed, text) = attack(&proxy, head).await;
        assert_eq!(status, Some(400), "{head:?}: {text}");
        assert!(closed, "{head:?}: connection left open");
        assert_eq!(responses(&text), 1, "{head:?}: {text}");
    }
    assert!(
        !app.paths().iter().any(|p| p == "/smuggled"),
        "a smuggled request reached the app: {:?}",
        app.paths()
    );
}

/// Content-Length and Transfer-Encoding together: hyper frames the body by Transfer-Encoding
/// alone and closes the connection after answering (RFC 9112 §6.1), and it removes the
/// Content-Length before the proxy sees the request, so the proxy cannot tell it from a plain
/// chunked request and answer 400. What matters holds either way: the app gets one request
/// framed one way, the connection is closed after it, and the bytes after the body (the
/// smuggled request, in whichever order the two headers come) are never read as a request.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_never_desynchronised() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    for head in [
        "POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 45\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 45\r\n\r\n0\r\n\r\n",
    ] {
        let (status, closed, text) = attack(&proxy, head).await;
        assert!(matches!(status, Some(200 | 400)), "{head:?}: {text}");
        assert!(closed, "{head:?}: connection left open");
        assert_eq!(responses(&text), 1, "{head:?}: a second response: {text}");
        if status == Some(200) {
            assert!(
                text.ends_with("{\"received\":0}"),
                "{head:?}: framed by length: {text}"
            );
        }
    }
    assert!(
        !app.paths().iter().any(|p| p == "/smuggled"),
        "{:?}",
        app.paths()
    );
}
