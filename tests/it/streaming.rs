//! Bodies stream through the proxy: 256 MiB each way while the proxy's peak RSS stays small.

use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;

use crate::support::{App, ProxyProcess};

const SIZE: u64 = 256 * 1024 * 1024;
/// Far below SIZE: a proxy that buffered a body could not stay under it.
const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

fn client<B>()
-> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_with_flat_memory() {
    let app = App::start().await;
    let proxy = ProxyProcess::spawn(&[
        "--store",
        "memory",
        "--upstream",
        &format!("http://{}", app.addr),
    ]);

    // Download: count the bytes as they arrive; never hold the body.
    let resp = client::<http_body_util::Empty<Bytes>>()
        .get(
            format!("http://{}/stream/{SIZE}", proxy.addr)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, SIZE);

    // Upload: a generated body, sent chunk by chunk.
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = SIZE / chunk.len() as u64;
    let stream = futures_stream(chunk, chunks);
    let req = http::Request::post(format!("http://{}/sink", proxy.addr))
        .body(StreamBody::new(stream))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["received"], SIZE);

    let peak = proxy.peak_rss_kib();
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "proxy peak RSS {peak} KiB after streaming 2 x 256 MiB"
    );
}

/// `n` copies of `chunk` as a body stream, produced lazily.
fn futures_stream(
    chunk: Bytes,
    n: u64,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Send + 'static
{
    struct Chunks {
        chunk: Bytes,
        left: u64,
    }
    impl futures_core::Stream for Chunks {
        type Item = Result<Frame<Bytes>, std::convert::Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            self.left -= 1;
            std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
        }
    }
    Chunks { chunk, left: n }
}
