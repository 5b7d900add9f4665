//! `[tracing]`: OpenTelemetry spans through the real binary, received by a real OTLP/HTTP
//! receiver ([`Collector`]): the span tree, the client's trace continued, `traceparent` at
//! the app, the attributes and no secret in the exported bytes; with tracing off no
//! `traceparent` invented; a dead collector never blocks or fails a request.

use std::future::IntoFuture as _;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::support::otlp::Collector;
use crate::support::{App, Browser, ProxyProcess, counter, get, handle, write_config};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span's attribute, as text (strings as they are, integers in decimal).
fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Any::StringValue(s) => s.clone(),
            Any::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

/// The binary in front of `app` (memory store, admin listener on), `tracing` added to its file.
fn start_proxy(dir: &std::path::Path, app: &App, tracing: &str) -> ProxyProcess {
    start_with_env(dir, app, tracing, &[])
}

fn start_with_env(
    dir: &std::path::Path,
    app: &App,
    tracing: &str,
    env: &[(&str, &str)],
) -> ProxyProcess {
    let config = write_config(
        dir,
        "proxy.toml",
        &format!(
            "upstream = \"http://{}\"\n[store]\nkind = \"memory\"\n{tracing}",
            app.addr
        ),
    );
    let args = ["--config", &config, "--admin-listen", "127.0.0.1:0"];
    ProxyProcess::start(&args, "warn", std::process::Stdio::inherit(), env, "http")
}

/// Two requests of one session, the first continuing the client's trace: each is a request
/// span with a load, an upstream and a save span under it; the app's `traceparent` names the
/// same trace with the upstream span as its parent; the attributes say what happened, and no
/// session id, handle, cookie, data value or query is anywhere in what was exported.
#[tokio::test]
async fn each_request_is_a_span_tree_in_the_clients_trace_and_the_apps() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let collector = Collector::start().await;
    let proxy = start_proxy(
        dir.path(),
        &app,
        &collector.section("service_name = \"edge\"\n"),
    );
    let mut b = Browser::new(proxy.addr, "session_id");
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let first = b
        .get("/account/settings?token=query-secret")
        .client_sends(&[("traceparent", &traceparent), ("tracestate", "vendor=1")])
        .app_responds_with(&[("X-Session-Update", r#"{"card":"data-value-4242"}"#)])
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.app_saw().header("tracestate").unwrap(), "vendor=1");
    let at_app = first.app_saw().header("traceparent").unwrap();
    let parts: Vec<&str> = at_app.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE_ID, "01"),
        "{at_app}"
    );
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the app's parent is the proxy's span"
    );
    let id = b.cookie.clone().unwrap();
    // The second request starts a trace of its own; the session is loaded and touched.
    let second = b.get("/account/settings").await;
    assert_eq!(second.status, 200);
    let second_parent = second.app_saw().header("traceparent").unwrap();
    assert!(!second_parent.contains(TRACE_ID), "{second_parent}");

    let spans = collector.spans(8).await;
    assert_eq!(spans.len(), 8, "{spans:#?}");
    let requests: Vec<&Span> = spans.iter().filter(|s| s.name == "GET").collect();
    assert_eq!(requests.len(), 2);
    let first_span = requests
        .iter()
        .find(|s| hex(&s.trace_id) == TRACE_ID)
        .expect("a request span in the client's trace");
    assert_eq!(hex(&first_span.parent_span_id), CLIENT_SPAN);
    for request in &requests {
        let mut children: Vec<&str> = spans
            .iter()
            .filter(|s| s.parent_span_id == request.span_id)
            .inspect(|s| assert_eq!(s.trace_id, request.trace_id))
            .map(|s| s.name.as_str())
            .collect();
        children.sort_unstable();
        assert_eq!(children, ["session.load", "session.save", "upstream"]);
        assert_eq!(attr(request, "http.request.method").unwrap(), "GET");
        assert_eq!(attr(request, "url.path").unwrap(), "/account/settings");
        assert_eq!(attr(request, "http.response.status_code").unwrap(), "200");
        assert_eq!(attr(request, "session.store").unwrap(), "memory");
        assert_eq!(attr(request, "fault"), None);
    }
    let upstream = spans
        .iter()
        .find(|s| s.name == "upstream" && hex(&s.trace_id) == TRACE_ID)
        .unwrap();
    assert_eq!(
        hex(&upstream.span_id),
        parts[2],
        "the app's parent is the upstream span"
    );
    assert_eq!(attr(upstream, "http.response.status_code").unwrap(), "200");
    let in_first = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.parent_span_id == first_span.span_id)
            .unwrap()
    };
    assert_eq!(attr(first_span, "session.state").unwrap(), "new");
    assert_eq!(attr(first_span, "session.write").unwrap(), "created");
    assert_eq!(
        attr(in_first("session.load"), "session.state").unwrap(),
        "new"
    );
    assert_eq!(
        attr(in_first("session.save"), "session.write").unwrap(),
        "created"
    );
    let second_span = requests
        .iter()
        .find(|s| s.span_id != first_span.span_id)
        .unwrap();
    assert_eq!(attr(second_span, "session.state").unwrap(), "existing");

    let got = collector.got.lock().unwrap();
    assert!(
        got.paths.iter().all(|p| p == "/v1/traces"),
        "{:?}",
        got.paths
    );
    let exported: Vec<u8> = got.bodies.concat();
    let text = String::from_utf8_lossy(&exported);
    assert!(text.contains("edge"), "service.name is the configured one");
    for secret in [
        id.as_str(),
        &handle(&id),
        "data-value-4242",
        "card",
        "query-secret",
    ] {
        assert!(!text.contains(secret), "{secret:?} was exported");
    }
}

/// Off: a client's `traceparent` reaches the app unchanged, and none is invented.
#[tokio::test]
async fn off_passes_the_clients_traceparent_through_and_invents_none() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let proxy = start_proxy(dir.path(), &app, "");
    let plain = get(proxy.addr, "/").await;
    assert!(!plain.app_saw().has_header("traceparent"));
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let carried = get(proxy.addr, "/")
        .client_sends(&[("traceparent", &traceparent), ("tracestate", "vendor=1")])
        .await;
    assert_eq!(
        carried.app_saw().header("traceparent").unwrap(),
        traceparent
    );
    assert_eq!(carried.app_saw().header("tracestate").unwrap(), "vendor=1");
}

/// A collector that accepts and never answers, and a queue of 4 spans: every request is
/// answered at once (each within 5 s, half the exporter's send timeout), the spans that did
/// not fit are counted in `trace_spans_dropped_total`, and SIGTERM still exits promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_never_blocks_or_fails_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = hole.accept().await {
            open.push(stream);
        }
    });
    let mut proxy = start_proxy(
        dir.path(),
        &app,
        &format!("[tracing]\notlp_endpoint = \"http://{hole_addr}/v1/traces\"\nqueue = 4\n"),
    );
    let admin = proxy.admin.unwrap();
    let dropped = || counter(admin, "session_proxy_trace_spans_dropped_total");
    // Rounds of 20 requests (80 spans), a pause between them so the exporter takes its batch
    // and hangs in the send: then the queue of 4 fills, and the rest is dropped.
    let mut rounds = 0;
    while dropped().await == 0 {
        rounds += 1;
        assert!(rounds <= 5, "nothing dropped after {rounds} rounds");
        for i in 0..20 {
            let resp = tokio::time::timeout(
                Duration::from_secs(5),
                get(proxy.addr, &format!("/r{i}"))
                    .app_responds_with(&[("X-Session-Update", r#"{"n":1}"#)])
                    .into_future(),
            )
            .await
            .unwrap_or_else(|_| panic!("request {i} waited on the collector"));
            assert_eq!(resp.status, 200);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(20)), Some(0));
    held.abort();
}

/// The standard variables alone turn tracing on: `OTEL_EXPORTER_OTLP_ENDPOINT` as the base of
/// `/v1/traces`, `OTEL_SERVICE_NAME` as the service.
#[tokio::test]
async fn the_standard_variables_turn_tracing_on() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let collector = Collector::start().await;
    let base = format!("http://{}/", collector.addr);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
        ("OTEL_SERVICE_NAME", "from-env"),
    ];
    let proxy = start_with_env(dir.path(), &app, "", &env);
    let resp = get(proxy.addr, "/").await;
    assert!(resp.app_saw().has_header("traceparent"));
    let spans = collector.spans(4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let got = collector.got.lock().unwrap();
    assert_eq!(got.paths, ["/v1/traces"]);
    assert!(String::from_utf8_lossy(&got.bodies[0]).contains("from-env"));
}

/// `sample_ratio = 0`: a trace the proxy starts is not recorded, but the app still gets its
/// (unsampled) `traceparent`; a client's sampled trace is followed and recorded.
#[tokio::test]
async fn the_ratio_decides_new_traces_and_a_clients_sampled_flag_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let collector = Collector::start().await;
    let proxy = start_proxy(dir.path(), &app, &collector.section("sample_ratio = 0.0\n"));
    let unsampled = get(proxy.addr, "/a").await;
    let at_app = unsampled.app_saw().header("traceparent").unwrap();
    assert!(
        at_app.starts_with("00-") && at_app.ends_with("-00"),
        "{at_app}"
    );
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let sampled = get(proxy.addr, "/b")
        .client_sends(&[("traceparent", &traceparent)])
        .await;
    assert!(
        sampled
            .app_saw()
            .header("traceparent")
            .unwrap()
            .ends_with("-01")
    );
    let spans = collector.spans(4).await;
    // Give a stray span of the first request time to arrive, then count again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = collector.spans(spans.len()).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert!(spans.iter().all(|s| hex(&s.trace_id) == TRACE_ID));
}
