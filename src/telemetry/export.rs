//! The export queue: the SDK hands every ended, sampled span to [`Queue`], which puts it in a
//! bounded channel without waiting (a full one drops and counts it); the [`Exporter`] task
//! takes batches from it and sends each with `opentelemetry-otlp`'s HTTP/protobuf exporter.
//!
//! Not the SDK's `BatchSpanProcessor`: it drops too, but only logs how many at shutdown, and
//! an operator needs the count as it happens (`trace_spans_dropped` in `/metrics`). The HTTP
//! client is opentelemetry-http's hyper one (plain HTTP), so nothing else joins the tree.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::TracingConfig;

/// Spans sent in one request to the collector at most.
const MAX_BATCH: usize = 512;
/// How long a batch waits for more spans after its first, so a quiet proxy sends a request per
/// second at most rather than one per span.
const DELAY: Duration = Duration::from_secs(1);
/// How long one send may take before its spans count as dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A failing collector is logged at most this often (the count is in `/metrics`).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why the exporter could not be built: a setting to fix, like a bad config.
#[derive(Debug, thiserror::Error)]
#[error("[tracing]: cannot build the OTLP exporter: {0}")]
pub struct BuildError(#[from] opentelemetry_otlp::ExporterBuildError);

/// The queue and the task that empties it.
pub(super) fn open(
    config: &TracingConfig,
    dropped: Counter,
) -> Result<(Queue, Exporter), BuildError> {
    let mut otlp = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.endpoint.to_string())
        .with_timeout(SEND_TIMEOUT)
        .build()?;
    otlp.set_resource(&resource(config));
    let (tx, rx) = mpsc::channel(config.queue);
    let queue = Queue {
        tx,
        dropped: dropped.clone(),
    };
    Ok((queue, Exporter { rx, otlp, dropped }))
}

/// What every span says of its process: `service.name`.
pub(super) fn resource(config: &TracingConfig) -> Resource {
    Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .build()
}

/// The SDK's side of the queue: called where a span ends, on the request's task; never waits.
#[derive(Debug)]
pub(super) struct Queue {
    tx: mpsc::Sender<SpanData>,
    dropped: Counter,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() && self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    /// The [`Exporter`] task is stopped (and flushes) by its owner, not through the SDK.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The task that sends the queued spans, a batch at a time.
#[derive(Debug)]
pub struct Exporter {
    rx: mpsc::Receiver<SpanData>,
    otlp: opentelemetry_otlp::SpanExporter,
    dropped: Counter,
}

impl Exporter {
    /// Sends batches until `stop` fires, then what is queued; bound the wait at exit (a
    /// collector that hangs holds a send for its timeout).
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut warned: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                n = self.rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { break },
            }
            let deadline = Instant::now() + DELAY;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                let more = self.rx.recv_many(&mut batch, room);
                if !matches!(tokio::time::timeout_at(deadline, more).await, Ok(n) if n > 0) {
                    break;
                }
            }
            self.send(&mut batch, &mut warned).await;
        }
        self.rx.close();
        while let Some(span) = self.rx.recv().await {
            batch.push(span);
            if batch.len() == MAX_BATCH {
                self.send(&mut batch, &mut warned).await;
            }
        }
        self.send(&mut batch, &mut warned).await;
    }

    async fn send(&self, batch: &mut Vec<SpanData>, warned: &mut Option<Instant>) {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
        let n = spans.len() as u64;
        if let Err(error) = self.otlp.export(spans).await {
            self.dropped.inc_by(n);
            if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                *warned = Some(Instant::now());
                tracing::warn!(%error, spans = n, "could not export spans to the OTLP collector; dropped (counted in trace_spans_dropped, logged once a minute)");
            }
        }
    }
}
