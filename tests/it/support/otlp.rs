//! A real OTLP/HTTP receiver for the trace tests: a hyper server on 127.0.0.1 that decodes each
//! `ExportTraceServiceRequest` with the protocol's own prost types.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// What the receiver got: every request body as sent, and the spans decoded from them.
#[derive(Default)]
pub struct Received {
    pub bodies: Vec<Bytes>,
    pub spans: Vec<Span>,
    pub paths: Vec<String>,
}

/// A real OTLP/HTTP receiver on 127.0.0.1:0.
pub struct Collector {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Received>>,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Received::default()));
        let shared = got.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let got = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let got = got.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body.clone()).unwrap();
                            let mut got = got.lock().unwrap();
                            got.paths.push(path);
                            got.bodies.push(body);
                            for rs in export.resource_spans {
                                for ss in rs.scope_spans {
                                    got.spans.extend(ss.spans);
                                }
                            }
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector { addr, got }
    }

    /// The config's `[tracing]` section exporting to this receiver, with `extra` lines.
    pub fn section(&self, extra: &str) -> String {
        format!(
            "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\n{extra}",
            self.addr
        )
    }

    /// Waits (10 s at most) until `n` spans arrived.
    pub async fn spans(&self, n: usize) -> Vec<Span> {
        let start = Instant::now();
        loop {
            let spans = self.got.lock().unwrap().spans.clone();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} spans of {n} arrived",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
