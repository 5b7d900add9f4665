//! The upstream app for `bench/load.sh`: as small as a real app can be, so the benchmark
//! measures the proxy, not the app.
//!
//! Each request's `X-Session` is decoded and parsed as JSON (what a real app does with it).
//! A configurable share of responses carries an `X-Session-Update` merge patch that bumps
//! `visits`; a session without `profile` also gets a ~160-byte `profile` string, so sessions
//! that the benchmark keeps reusing hold ~200 bytes of data, like a small login session.
//!
//! Which requests update is decided by a global request counter, so "10 %" means exactly every
//! tenth request, not a random draw.
//!
//! Run with
//! ```not_rust
//! cargo run --release --example bench_upstream -- --listen 127.0.0.1:0 --update-percent 10
//! ```
//! It prints `bench-upstream listening on http://ADDR` on stdout and serves until killed.
//! HTTP/1.1 only (the proxy talks HTTP/1.1 to its upstream), on a single-threaded runtime.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use session_proxy::protocol::codec;

const PROFILE_LEN: usize = 160;

struct App {
    /// Out of 100: how many requests answer with an update.
    update_percent: u64,
    requests: AtomicU64,
}

impl App {
    /// True for `update_percent` of every 100 consecutive requests, evenly spread.
    fn should_update(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let p = self.update_percent;
        (n + 1) * p / 100 != n * p / 100
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let session: Value = req
            .headers()
            .get("x-session")
            .and_then(|v| codec::decode_session(v.as_bytes()))
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        let visits = session["visits"].as_u64().unwrap_or(0);
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        if self.should_update() {
            let patch = if session.get("profile").is_some() {
                json!({ "visits": visits + 1 })
            } else {
                json!({ "visits": visits + 1, "profile": "p".repeat(PROFILE_LEN) })
            };
            if let Ok(v) = HeaderValue::from_str(&patch.to_string()) {
                resp.headers_mut().insert("x-session-update", v);
            }
        }
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        resp
    }
}

fn usage() -> ! {
    eprintln!("usage: bench_upstream [--listen ADDR] [--update-percent 0..=100]");
    std::process::exit(2);
}

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut update_percent = 10u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--update-percent" => {
                update_percent = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|p| *p <= 100)
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let app = Arc::new(App {
        update_percent,
        requests: AtomicU64::new(0),
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            println!(
                "bench-upstream listening on http://{}",
                listener.local_addr()?
            );
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let resp = app.handle(&req);
                        // Read the body, as an app does (the bench's GETs have none).
                        async move {
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
}
