//! The binary as an operator runs it: SIGTERM drains in-flight requests (their sessions are
//! saved), fs sessions survive a restart.

use std::time::Duration;

use serde_json::json;

use crate::support::{App, ProxyProcess, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_fs_sessions_survive_a_restart() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let app = App::start().await;
        let store = format!("fs:{}", dir.path().display());
        let app_url = format!("http://{}", app.addr);
        let args = ["--store", store.as_str(), "--upstream", app_url.as_str()];
        let mut proxy = ProxyProcess::spawn(&args);

        // A slow request is in flight when the signal arrives.
        let addr = proxy.addr;
        let in_flight = tokio::spawn(async move {
            get(addr, "/")
                .app_takes_ms(1000)
                .app_responds_with(&[("X-Session-Update", r#"{"saved":"during shutdown"}"#)])
                .await
        });
        while app.hits() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.signal(signal);
        let r = in_flight.await.unwrap();
        assert_eq!(r.status, 200, "SIG{signal}");
        let line = r
            .set_cookie("session_id")
            .expect("the in-flight request's session was saved");
        let id = line["session_id=".len()..]
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let code = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(code, Some(0), "SIG{signal}: clean exit");

        // A new process on the same directory has the session.
        let proxy = ProxyProcess::spawn(&args);
        let r = get(proxy.addr, "/")
            .client_sends(&[("cookie", &format!("session_id={id}"))])
            .await;
        assert!(!r.app_saw().is_new());
        assert_eq!(r.app_saw().session(), json!({"saved":"during shutdown"}));
    }
}

/// The access log at the default level: one line per request with what the README lists, plain
/// values bare, and the lines still queued at shutdown are written before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_and_is_flushed_at_exit() {
    let app = App::start().await;
    let app_url = format!("http://{}", app.addr);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut proxy = ProxyProcess::spawn_logging(
        &["--store", "memory", "--upstream", app_url.as_str()],
        "info",
        log.reopen().unwrap(),
    );
    let r = get(proxy.addr, "/logged?secret=1")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    assert_eq!(r.status, 200);
    let mut ids = vec![r.headers["x-request-id"].to_str().unwrap().to_owned()];
    let r = get(proxy.addr, "/missing").app_status(404).await;
    assert_eq!(r.status, 404);
    ids.push(r.headers["x-request-id"].to_str().unwrap().to_owned());
    proxy.signal("TERM");
    let code = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));

    let text = std::fs::read_to_string(log.path()).unwrap();
    let requests: Vec<&str> = text.lines().filter(|l| l.contains(" request ")).collect();
    assert_eq!(requests.len(), 2, "{text}");
    let fields = |line: &str| -> Vec<String> {
        line.split(" request ")
            .nth(1)
            .unwrap()
            .split(' ')
            .filter(|f| !f.starts_with("latency_us=") && !f.starts_with("request_id="))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        fields(requests[0]),
        [
            "method=GET",
            "path=/logged",
            "status=200",
            "session=new",
            "saved=created"
        ],
        "the query string is never logged: {text}"
    );
    assert_eq!(
        fields(requests[1]),
        [
            "method=GET",
            "path=/missing",
            "status=404",
            "session=new",
            "saved=none"
        ],
    );
    // The request id the client got back is the one in the line: 32 hex digits, made here.
    for (line, id) in requests.iter().zip(&ids) {
        assert!(line.contains(&format!(" request_id={id}")), "{line}");
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
    for line in &requests {
        let us = line
            .split(' ')
            .find_map(|f| f.strip_prefix("latency_us="))
            .unwrap_or_else(|| panic!("no latency in {line}"));
        assert!(us.parse::<u64>().is_ok(), "{line}");
    }
    assert!(text.contains("all connections closed"), "{text}");
}

/// `--log-format json`: the same access line as one JSON object; the request id is the
/// client's when well formed (passed to the app and returned), a fresh one otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_log_has_the_same_fields_and_the_request_id() {
    let app = App::start().await;
    let app_url = format!("http://{}", app.addr);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut proxy = ProxyProcess::spawn_logging(
        &[
            "--store",
            "memory",
            "--upstream",
            app_url.as_str(),
            "--log-format",
            "json",
        ],
        "info",
        log.reopen().unwrap(),
    );
    let kept = get(proxy.addr, "/a")
        .client_sends(&[("x-request-id", "req-42.A_b")])
        .await;
    assert_eq!(kept.headers["x-request-id"], "req-42.A_b");
    assert_eq!(
        kept.app_saw().header("x-request-id").as_deref(),
        Some("req-42.A_b")
    );
    let replaced = get(proxy.addr, "/b")
        .client_sends(&[("x-request-id", "two words\" x=1")])
        .await;
    let fresh = replaced.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(fresh.len(), 32, "{fresh}");
    assert_eq!(
        replaced.app_saw().header("x-request-id"),
        Some(fresh.clone())
    );
    proxy.signal("TERM");
    let code = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));

    let text = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(requests.len(), 2, "{text}");
    for (line, (path, id)) in requests
        .iter()
        .zip([("/a", "req-42.A_b"), ("/b", fresh.as_str())])
    {
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], path);
        assert_eq!(line["status"], 200);
        assert_eq!(line["session"], "new");
        assert_eq!(line["saved"], "none");
        assert_eq!(line["request_id"], id);
        assert!(line["latency_us"].is_u64(), "{line}");
    }
}
