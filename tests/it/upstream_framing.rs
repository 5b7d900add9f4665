//! An app (raw TCP, writing exactly these bytes) whose response framing cannot be forwarded
//! faithfully: the client gets a 502, never a truncated or re-framed body.

use crate::support::raw::RawApp;
use crate::support::{TestProxy, config, get};

async fn through(app: &RawApp) -> crate::support::Resp {
    let proxy = TestProxy::with_config(config(app.addr, "[store]\nkind = \"memory\"")).await;
    get(proxy.addr, "/").await
}

#[tokio::test]
async fn content_length_with_transfer_encoding_from_the_app_is_a_502() {
    let app = RawApp::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let r = through(&app).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(&r.body[..], b"502 Bad Gateway\n");
}

#[tokio::test]
async fn an_unasked_101_from_the_app_is_a_502() {
    let app = RawApp::start(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    let r = through(&app).await;
    assert_eq!(r.status, 502);
    assert!(!r.headers.contains_key("upgrade"));
    assert_eq!(app.heads().len(), 1);
}
