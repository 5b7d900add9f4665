//! The binary as an operator runs it: SIGTERM drains in-flight requests (their sessions are
//! saved), fs sessions survive a restart.

use std::time::Duration;

use serde_json::json;

use crate::support::{ProxyProcess, Upstream, get, respond};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_fs_sessions_survive_a_restart() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let upstream = Upstream::start().await;
        let store = format!("fs:{}", dir.path().display());
        let upstream_url = format!("http://{}", upstream.addr);
        let args = [
            "--store",
            store.as_str(),
            "--upstream",
            upstream_url.as_str(),
        ];
        let mut proxy = ProxyProcess::spawn(&args);

        // A slow request is in flight when the signal arrives.
        let addr = proxy.addr;
        let in_flight = tokio::spawn(async move {
            get(
                addr,
                "/",
                &[
                    ("x-test-delay-ms", "1000"),
                    (
                        "x-test-respond",
                        &respond(&[("X-Session-Update", r#"{"saved":"during shutdown"}"#)]),
                    ),
                ],
            )
            .await
        });
        while upstream.hits() == 0 {
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
        let r = get(proxy.addr, "/", &[("cookie", &format!("session_id={id}"))]).await;
        assert!(!r.seen().is_new());
        assert_eq!(r.seen().session(), json!({"saved":"during shutdown"}));
    }
}
