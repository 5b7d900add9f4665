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

/// The access log at the default level: one line per request with what docs/src/operations.md
/// lists, plain values bare, and the lines still queued at shutdown are written before the process
/// exits.
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

/// `--log-format json`: every line the process writes is one JSON object, the start lines on
/// stdout (the addresses as fields) and the log on stderr; so is the error that stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_json_mode_every_line_is_json_the_start_lines_and_a_fatal_error_too() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    let app = App::start().await;
    let app_url = format!("http://{}", app.addr);
    /// Stops the proxy if an assertion fails before the test does.
    struct Stop(Option<std::process::Child>);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Some(child) = &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let mut proxy = Stop(Some(
        Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .args(["--store", "memory", "--upstream", app_url.as_str()])
            .args(["--log-format", "json", "--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let child = proxy.0.as_mut().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut event = || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    };
    let listening = event();
    let listen = listening["listen"].as_str().unwrap().to_owned();
    assert!(listen.starts_with("http://127.0.0.1:"), "{listening}");
    assert_eq!(listening["upstream"], app_url.as_str(), "{listening}");
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert_eq!(
        listening["message"],
        format!("session-proxy listening on {listen} -> {app_url}").as_str()
    );
    assert!(listening["timestamp"].is_string(), "{listening}");
    let admin = event();
    assert!(
        admin["admin"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{admin}"
    );
    let addr: std::net::SocketAddr = listen.trim_start_matches("http://").parse().unwrap();
    assert_eq!(get(addr, "/").await.status, 200);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let child = proxy.0.take().unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let rest = String::from_utf8(out.stdout).unwrap();
    let log = String::from_utf8(out.stderr).unwrap();
    assert!(log.lines().count() >= 2, "{log}");
    for line in rest.lines().chain(log.lines()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }

    // A fatal error (the port is taken) is a JSON event too, on stderr.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["--store", "memory", "--upstream", app_url.as_str()])
        .args(["--log-format", "json", "--listen", port.as_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let log = String::from_utf8(out.stderr).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {log}"));
    assert_eq!(last["level"], "ERROR", "{log}");
    assert!(
        last["error"].as_str().unwrap().contains("cannot listen on"),
        "{log}"
    );
}
