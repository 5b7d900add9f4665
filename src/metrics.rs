//! The Prometheus metrics the admin listener serves at `/metrics`.
//!
//! Counting must cost the request path next to nothing, so every labelled child is resolved
//! once, here, at start: a request increments plain atomics and never hashes a label set or
//! takes a family's lock. Histograms take one uncontended mutex per observation (the crate's
//! design); the request path observes two (request and upstream) and the store one per call.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::outcome::{Ended, StoreWrite};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// A cookie key's position in the configured list (`"0"` signs).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabel {
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The cookie keys' share. The key ring resolves one child per key when its keys are set (at
/// start and on each reload), so a request increments a plain atomic. A proxy made without
/// [`Metrics`] (unit tests) gets one whose counters nobody reads.
#[derive(Clone)]
pub struct CookieMetrics {
    verified: Family<KeyLabel, Counter>,
    failed: Counter,
    reloads: Family<ResultLabel, Counter>,
    reload_applied: Counter,
    reload_refused: Counter,
}

impl Default for CookieMetrics {
    fn default() -> Self {
        let reloads = Family::<ResultLabel, Counter>::default();
        let result = |result| ResultLabel { result };
        CookieMetrics {
            verified: Family::default(),
            failed: Counter::default(),
            reload_applied: reloads.get_or_create_owned(&result("applied")),
            reload_refused: reloads.get_or_create_owned(&result("refused")),
            reloads,
        }
    }
}

impl std::fmt::Debug for CookieMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieMetrics")
    }
}

impl CookieMetrics {
    /// The counter of cookies verified by the key at `index` of the list.
    pub fn key(&self, index: usize) -> Counter {
        self.verified.get_or_create_owned(&KeyLabel {
            key: index.to_string(),
        })
    }

    /// Counts a session cookie that was sent but did not verify (bad signature, or no valid id).
    pub fn failed(&self) -> Counter {
        self.failed.clone()
    }

    /// Counts one reload of the keys (SIGHUP), applied or refused.
    pub fn reload(&self, applied: bool) {
        if applied {
            self.reload_applied.inc();
        } else {
            self.reload_refused.inc();
        }
    }
}

/// Why an instruction from the app was not carried out.
#[derive(Debug, Clone, Copy)]
pub enum Rejected {
    /// Not JSON, not an object, bad base64.
    Malformed,
    /// It would make the session larger than `session.max_size`.
    TooLarge,
}

/// How a call to the upstream failed.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    /// Anything else: the connection broke, the response was malformed.
    Failed,
}

/// A store operation, as the store metrics label it.
#[derive(Debug, Clone, Copy)]
pub enum StoreOp {
    Load,
    Create,
    Update,
    Delete,
    Regenerate,
    List,
    Prune,
    /// The batched existence check of the sessions that hold WebSockets.
    Live,
}

impl StoreOp {
    const ALL: [StoreOp; 8] = [
        StoreOp::Load,
        StoreOp::Create,
        StoreOp::Update,
        StoreOp::Delete,
        StoreOp::Regenerate,
        StoreOp::List,
        StoreOp::Prune,
        StoreOp::Live,
    ];

    fn as_str(self) -> &'static str {
        match self {
            StoreOp::Load => "load",
            StoreOp::Create => "create",
            StoreOp::Update => "update",
            StoreOp::Delete => "delete",
            StoreOp::Regenerate => "regenerate",
            StoreOp::List => "list",
            StoreOp::Prune => "prune",
            StoreOp::Live => "live",
        }
    }
}

/// Latency buckets from 50 µs to about 13 s: a memory-store hop sits at the bottom, a
/// timed-out store or slow app at the top.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

type HistogramFamily = Family<OpLabel, Histogram, fn() -> Histogram>;

/// The store's share: one latency histogram and one error counter per operation, resolved at
/// start. Cloning shares the same counters (they are `Arc`s inside).
#[derive(Clone)]
pub struct StoreMetrics {
    duration: Arc<[Histogram; 8]>,
    errors: Arc<[Counter; 8]>,
    duration_family: HistogramFamily,
    errors_family: Family<OpLabel, Counter>,
    /// Stored sessions that could not be read back: sealed data that did not open (a key no
    /// longer configured, a tampered or moved record), treated as missing.
    pub unreadable: Counter,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreMetrics")
    }
}

impl Default for StoreMetrics {
    fn default() -> Self {
        let duration_family: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let errors_family = Family::<OpLabel, Counter>::default();
        let label = |op: StoreOp| OpLabel { op: op.as_str() };
        let duration = StoreOp::ALL.map(|op| duration_family.get_or_create_owned(&label(op)));
        let errors = StoreOp::ALL.map(|op| errors_family.get_or_create_owned(&label(op)));
        StoreMetrics {
            duration: Arc::new(duration),
            errors: Arc::new(errors),
            duration_family,
            errors_family,
            unreadable: Counter::default(),
        }
    }
}

impl StoreMetrics {
    pub fn observe(&self, op: StoreOp, took: Duration, failed: bool) {
        let i = op as usize;
        self.duration[i].observe(took.as_secs_f64());
        if failed {
            self.errors[i].inc();
        }
    }
}

/// Every metric of the process, registered once.
pub struct Metrics {
    registry: Registry,
    requests: [Counter; 5],
    request_duration: Histogram,
    upstream_duration: Histogram,
    created: Counter,
    updated: Counter,
    touched: Counter,
    destroyed: Counter,
    regenerated: Counter,
    rejected_malformed: Counter,
    rejected_too_large: Counter,
    throttled: Counter,
    upstream_connect: Counter,
    upstream_timeout: Counter,
    upstream_failed: Counter,
    /// Audit events that are not in the audit log (queue full, or a failed write).
    audit_dropped: Counter,
    /// Spans not exported (queue full, or a failed send to the collector).
    trace_dropped: Counter,
    /// Registered only for a store that counts cheaply ([`SessionStore::count`]).
    ///
    /// [`SessionStore::count`]: crate::store::SessionStore::count
    sessions_live: Option<Gauge>,
    cookie: CookieMetrics,
    /// Upgraded connections (WebSockets) passing bytes now.
    tunnels_open: Gauge,
    /// Request bodies streamed because `limits.request_buffer_total` was spent.
    buffer_overflows: Counter,
    /// Tunnels closed because their session ended, by [`Ended`] (indexed by its position in
    /// [`Ended::ALL`]).
    sockets_closed: [Counter; Ended::ALL.len()],
    /// Old ids used past their `session.regenerate_grace` (a copied cookie's sign).
    stale_uses: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(store: &StoreMetrics, store_counts: bool) -> Self {
        let mut registry = Registry::with_prefix("session_proxy");
        let requests_family = Family::<StatusLabel, Counter>::default();
        let requests = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|status| requests_family.get_or_create_owned(&StatusLabel { status }));
        registry.register(
            "requests",
            "Requests answered on the public listener, by status class",
            requests_family,
        );
        let request_duration = latency_histogram();
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its response head, proxy and app together",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_duration = latency_histogram();
        registry.register_with_unit(
            "upstream_duration",
            "Time the app took to send its response head",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let created = counter("sessions_created", "Sessions stored for the first time");
        let updated = counter("sessions_updated", "Session data changes saved");
        let touched = counter(
            "sessions_touched",
            "Read-only uses that moved a session's idle deadline",
        );
        let destroyed = counter(
            "sessions_destroyed",
            "Sessions destroyed by the app (X-Session-Destroy)",
        );
        let regenerated = counter("sessions_regenerated", "Sessions moved to a new id");
        let throttled = counter(
            "sessions_throttled",
            "New sessions not created (the app's answer went out without a cookie): their \
             client's address was over limits.new_sessions_per_ip",
        );
        let buffer_overflows = counter(
            "request_buffer_overflows",
            "Request bodies that fit limits.request_buffer but streamed to the app, \
             because the buffers held limits.request_buffer_total",
        );
        let audit_dropped = counter(
            "audit_dropped",
            "Audit events not in the audit log: the queue was full, or writing failed",
        );
        let trace_dropped = counter(
            "trace_spans_dropped",
            "Trace spans not exported: the queue ([tracing] queue) was full, or sending failed",
        );
        let rejected_family = Family::<ReasonLabel, Counter>::default();
        let rejected_malformed = rejected_family.get_or_create_owned(&ReasonLabel {
            reason: "malformed",
        });
        let rejected_too_large = rejected_family.get_or_create_owned(&ReasonLabel {
            reason: "too_large",
        });
        registry.register(
            "session_instructions_rejected",
            "Session instructions from the app that were ignored, by reason",
            rejected_family,
        );
        let upstream_family = Family::<KindLabel, Counter>::default();
        let upstream_connect = upstream_family.get_or_create_owned(&KindLabel { kind: "connect" });
        let upstream_timeout = upstream_family.get_or_create_owned(&KindLabel { kind: "timeout" });
        let upstream_failed = upstream_family.get_or_create_owned(&KindLabel { kind: "failed" });
        registry.register(
            "upstream_errors",
            "Calls to the app that failed, by kind",
            upstream_family,
        );
        registry.register(
            "store_errors",
            "Store calls that failed, by operation",
            store.errors_family.clone(),
        );
        registry.register_with_unit(
            "store_duration",
            "Time of one store call, by operation",
            Unit::Seconds,
            store.duration_family.clone(),
        );
        registry.register(
            "store_unreadable",
            "Stored sessions whose sealed data did not open (a key no longer in \
             store.encryption_key, or a record tampered with or moved), treated as missing",
            store.unreadable.clone(),
        );
        let cookie = CookieMetrics::default();
        registry.register(
            "cookie_verifications",
            "Signed session cookies that verified, by the index of the key that verified them \
             (0 is the key that signs; a rotated-out key's count stops rising when no client holds it)",
            cookie.verified.clone(),
        );
        registry.register(
            "cookie_verification_failures",
            "Session cookies that were sent and refused: a bad or unknown signature, or no valid id",
            cookie.failed.clone(),
        );
        registry.register(
            "cookie_key_reloads",
            "Reloads of the cookie keys (SIGHUP): applied, or refused with the old keys kept",
            cookie.reloads.clone(),
        );
        let sessions_live = store_counts.then(|| {
            let gauge = Gauge::default();
            registry.register(
                "sessions_live",
                "Sessions held by the store when /metrics was read (expired ones count until swept)",
                gauge.clone(),
            );
            gauge
        });
        let tunnels_open = Gauge::default();
        registry.register(
            "tunnels_open",
            "Upgraded connections (WebSocket or other Upgrade) open now",
            tunnels_open.clone(),
        );
        let closed_family = Family::<ReasonLabel, Counter>::default();
        let sockets_closed = Ended::ALL.map(|why| {
            closed_family.get_or_create_owned(&ReasonLabel {
                reason: why.as_str(),
            })
        });
        registry.register(
            "sockets_closed",
            "Upgraded connections (WebSockets) the proxy closed because their session ended, by why it ended",
            closed_family,
        );
        let stale_uses = Counter::default();
        registry.register(
            "session_stale_uses",
            "Requests presenting an id regenerated away whose session.regenerate_grace had \
             ended, while the session it moved to still lived (a copied cookie's sign)",
            stale_uses.clone(),
        );
        Metrics {
            stale_uses,
            sockets_closed,
            registry,
            requests,
            request_duration,
            upstream_duration,
            created,
            updated,
            touched,
            destroyed,
            regenerated,
            throttled,
            rejected_malformed,
            rejected_too_large,
            upstream_connect,
            upstream_timeout,
            upstream_failed,
            audit_dropped,
            trace_dropped,
            sessions_live,
            cookie,
            tunnels_open,
            buffer_overflows,
        }
    }

    /// The cookie keys' counters, for the key ring (shared: clones count into the same ones).
    pub fn cookie(&self) -> CookieMetrics {
        self.cookie.clone()
    }

    /// One answered request: its status, its total time, and the store write it made.
    pub fn request(&self, status: u16, took: Duration, write: StoreWrite) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].inc();
        self.request_duration.observe(took.as_secs_f64());
        let counter = match write {
            StoreWrite::Created => &self.created,
            StoreWrite::Updated => &self.updated,
            StoreWrite::Touched => &self.touched,
            StoreWrite::Destroyed => &self.destroyed,
            StoreWrite::Regenerated => &self.regenerated,
            StoreWrite::Refused => &self.rejected_too_large,
            StoreWrite::Throttled => &self.throttled,
            StoreWrite::None | StoreWrite::Vanished => return,
        };
        counter.inc();
    }

    pub fn upstream(&self, took: Duration) {
        self.upstream_duration.observe(took.as_secs_f64());
    }

    pub fn upstream_failed(&self, how: UpstreamFailure) {
        match how {
            UpstreamFailure::Connect => &self.upstream_connect,
            UpstreamFailure::Timeout => &self.upstream_timeout,
            UpstreamFailure::Failed => &self.upstream_failed,
        }
        .inc();
    }

    pub fn rejected(&self, why: Rejected) {
        match why {
            Rejected::Malformed => &self.rejected_malformed,
            Rejected::TooLarge => &self.rejected_too_large,
        }
        .inc();
    }

    /// The audit log's drop counter, handed to its senders and writer at start.
    pub fn audit_dropped(&self) -> Counter {
        self.audit_dropped.clone()
    }

    /// The trace export's drop counter, handed to its queue and exporter at start.
    pub fn trace_dropped(&self) -> Counter {
        self.trace_dropped.clone()
    }

    /// A body that would have been buffered streamed: the buffers' total was spent.
    pub fn buffer_overflowed(&self) {
        self.buffer_overflows.inc();
    }

    pub fn tunnel_opened(&self) {
        self.tunnels_open.inc();
    }

    pub fn tunnel_closed(&self) {
        self.tunnels_open.dec();
    }

    /// A tunnel closed because its session ended, for `why`.
    pub fn socket_closed(&self, why: Ended) {
        self.sockets_closed[why as usize].inc();
    }

    /// A regenerated-away id was used past its grace.
    pub fn stale_use(&self) {
        self.stale_uses.inc();
    }

    /// A session's idle deadline moved without a request: its WebSocket passed bytes.
    pub fn session_touched(&self) {
        self.touched.inc();
    }

    /// The text exposition, with `sessions_live` set from `live` (when the store can count).
    pub fn encode(&self, live: Option<u64>) -> Result<String, std::fmt::Error> {
        if let (Some(gauge), Some(n)) = (&self.sessions_live, live) {
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
