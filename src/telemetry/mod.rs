//! OpenTelemetry traces (`[tracing]`): a span per request with a child for each phase that
//! waits on something (the store load, the upstream call, the store save), the W3C trace
//! context continued from the client and handed on to the app, and the spans exported over
//! OTLP/HTTP in the background (`export.rs`).
//!
//! The spans are made with the OpenTelemetry SDK directly, not through `tracing` spans and
//! `tracing-opentelemetry`: a `tracing` span per request would be seen by the log subscriber
//! too (its registry slot, its fields formatted, the access line's prewrite bypassed) and would
//! cost with traces off; here, off is one `None` per phase.
//!
//! A span carries the method, the path (never the query), the statuses, the session's state
//! and write, the store kind and whose fault a failure was: never a session id, handle,
//! cookie or data value (tests/it/tracing.rs searches the exported bytes).

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use prometheus_client::metrics::counter::Counter;

use crate::config::TracingConfig;

mod export;

pub use export::{BuildError, Exporter};

/// The W3C trace context headers: read from the client, written to the app (`traceparent`
/// names the trace and the parent span, `tracestate` carries vendors' entries along).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The tracer every request starts its span from; `None` in the proxy's state when off.
#[derive(Debug)]
pub struct Telemetry {
    tracer: SdkTracer,
    /// Kept for its lifetime: the tracer's spans go to its processor (the export queue).
    _provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
    /// `store.kind`, on every request span.
    store: &'static str,
}

impl Telemetry {
    /// The tracer and the [`Exporter`] task that sends its spans (spawned by the caller, which
    /// stops it at exit). `dropped` counts spans not exported (queue full, or a failed send).
    pub fn open(
        config: &TracingConfig,
        store: &'static str,
        dropped: Counter,
    ) -> Result<(Telemetry, Exporter), BuildError> {
        let (queue, exporter) = export::open(config, dropped)?;
        // Parent-based: a client's sampled `traceparent` is followed, as the W3C rule asks;
        // the ratio decides for the traces this proxy starts.
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_sampler(sampler)
            .with_resource(export::resource(config))
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "session-proxy");
        Ok((
            Telemetry {
                tracer,
                _provider: provider,
                propagator: TraceContextPropagator::new(),
                store,
            },
            exporter,
        ))
    }

    /// Starts a request's span: a child of the client's `traceparent` when it is valid, else
    /// the root of a new trace.
    pub fn start(&self, headers: &HeaderMap, method: &Method, path: &str) -> Box<Trace> {
        let parent = self.propagator.extract(&Headers(headers));
        let mut span = self
            .tracer
            .span_builder(Cow::Owned(method.as_str().to_owned()))
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        // A request the sampler left out costs its ids and this one span: no attributes, no
        // phases (measured: bench/PROFILE.md, "otel").
        let recording = span.is_recording();
        if recording {
            span.set_attributes([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                KeyValue::new("url.path", path.to_owned()),
                KeyValue::new("session.store", self.store),
            ]);
        }
        Box::new(Trace {
            tracer: self.tracer.clone(),
            request: parent.with_span(span),
            recording,
            phase: None,
            propagator: self.propagator.clone(),
        })
    }
}

/// A phase of a request with a span of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Load,
    Upstream,
    Save,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Load => "session.load",
            Phase::Upstream => "upstream",
            Phase::Save => "session.save",
        }
    }
}

/// One request's spans, held by its context while it runs. A span still open when the
/// request ends (its phase failed) ends as an error; one dropped with an abandoned request
/// ends then.
#[derive(Debug)]
pub struct Trace {
    tracer: SdkTracer,
    /// The request's span, as the parent of the phases'.
    request: Context,
    /// Sampled: only then are phases and attributes recorded.
    recording: bool,
    phase: Option<Span>,
    propagator: TraceContextPropagator,
}

impl Trace {
    /// Opens `phase`'s span under the request's (when the request's is recorded).
    pub fn begin(&mut self, phase: Phase) {
        if !self.recording {
            return;
        }
        let kind = match phase {
            Phase::Upstream => SpanKind::Client,
            Phase::Load | Phase::Save => SpanKind::Internal,
        };
        let span = self
            .tracer
            .span_builder(phase.name())
            .with_kind(kind)
            .start_with_context(&self.tracer, &self.request);
        self.phase = Some(span);
    }

    /// Ends the open phase's span with what it learnt: the session's state (`Load`), the
    /// app's status (`Upstream`), the store write (`Save`).
    pub fn end(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(mut span) = self.phase.take() {
            span.set_attribute(KeyValue::new(key, value));
            span.end();
        }
    }

    /// Writes the trace context of the open phase (the upstream call; the request's own when
    /// it is not recorded) into the request to the app, replacing the client's: the app's
    /// spans become children of this proxy's, and an unsampled trace stays unsampled.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        let cx = match &self.phase {
            Some(span) => self
                .request
                .with_remote_span_context(span.span_context().clone()),
            None => self.request.clone(),
        };
        self.propagator
            .inject_context(&cx, &mut HeadersMut(headers));
    }

    /// Ends the request's span with its outcome.
    pub fn finish(
        mut self: Box<Self>,
        status: u16,
        session: &'static str,
        write: &'static str,
        fault: Option<&'static str>,
    ) {
        if !self.recording {
            return;
        }
        if let Some(mut span) = self.phase.take() {
            span.set_status(Status::error("phase failed"));
            if let Some(fault) = fault {
                span.set_attribute(KeyValue::new("fault", fault));
            }
            span.end();
        }
        let span = self.request.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        span.set_attribute(KeyValue::new("session.state", session));
        span.set_attribute(KeyValue::new("session.write", write));
        if let Some(fault) = fault {
            span.set_attribute(KeyValue::new("fault", fault));
        }
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// A request's headers, read by the propagator.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// A request's headers, written by the propagator (an empty `tracestate` is left out).
struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
