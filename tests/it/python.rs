//! The Python adapter (`examples/python/session_proxy_wsgi.py`) with the real interpreter: the
//! werkzeug example app and a test app on the standard library's WSGI server, behind the real
//! proxy; and the adapter's own unit tests against the golden fixtures.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::{Browser, TestProxy, config};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A `python3` WSGI server child, killed by its PID when dropped.
struct PythonApp {
    child: Child,
    addr: SocketAddr,
}

impl PythonApp {
    fn start(script: &str, args: &[&str]) -> PythonApp {
        let mut child = Command::new("python3")
            .arg(format!("{ROOT}/{script}"))
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("python3 cannot be run ({e}): install python3; these tests never skip")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("serving on http://")
            .unwrap_or_else(|| panic!("no serving line from {script}: {line:?}"))
            .parse()
            .unwrap();
        PythonApp { child, addr }
    }
}

impl Drop for PythonApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn proxy_for(app: &PythonApp) -> TestProxy {
    TestProxy::with_config(config(app.addr, "[store]\nkind = \"memory\"")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn werkzeugs_example_counts_visits_behind_the_proxy() {
    let app = PythonApp::start("examples/python/counter_app.py", &["0"]);
    let proxy = proxy_for(&app).await;
    let mut b = proxy.client();
    for n in 1..=3 {
        let r = b.get("/").await;
        assert_eq!(r.status, 200);
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(
            body.contains(&format!("You visited this page {n} times.")),
            "{body}"
        );
    }
    // Another browser has its own count.
    let mut other = proxy.client();
    let body = other.get("/").await.body;
    assert!(String::from_utf8_lossy(&body).contains("1 times"));
    assert_eq!(proxy.sessions().await.len(), 2);
    proxy.stop().await;
}

/// What the test app reports about the session it saw.
async fn visit(b: &mut Browser, path: &str) -> Value {
    b.get(path).await.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_requests_that_change_different_keys_both_keep_their_change() {
    let app = PythonApp::start("tests/it/python/app.py", &[]);
    let proxy = proxy_for(&app).await;
    let mut b = proxy.client();
    visit(&mut b, "/cart").await; // starts the session: {"cart": ["book"]}
    let (mut slow, mut fast) = (b.clone(), b.clone());
    let a = tokio::spawn(async move { visit(&mut slow, "/slow-a").await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Answers while /slow-a still holds the session as it loaded it, without "b".
    let seen = visit(&mut fast, "/b").await;
    assert_eq!(seen["data"], json!({"cart": ["book"], "b": 2}));
    let slow_seen = a.await.unwrap();
    assert_eq!(slow_seen["data"], json!({"cart": ["book"], "a": 1}));
    // werkzeug's middleware writes the whole session back, so the slower request would drop
    // "b". The adapter sends only what changed: both changes are kept.
    assert_eq!(
        visit(&mut b, "/").await["data"],
        json!({"cart": ["book"], "a": 1, "b": 2})
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_sends_every_kind_of_change_right() {
    let app = PythonApp::start("tests/it/python/app.py", &[]);
    let proxy = proxy_for(&app).await;
    let mut b = proxy.client();

    let first = visit(&mut b, "/").await;
    assert_eq!(first["new"], true);
    assert_eq!(first["should_save"], false);
    assert!(b.cookie.is_none(), "an untouched session is not saved");

    let cart = visit(&mut b, "/cart").await;
    assert_eq!(cart["modified"], true);
    visit(&mut b, "/cart").await; // changed in place, twice
    let seen = visit(&mut b, "/").await;
    assert_eq!(seen["data"], json!({"cart": ["book", "book"]}));
    assert_eq!(seen["new"], false);
    assert_eq!(seen["sid"], b.cookie.clone().unwrap());

    visit(&mut b, "/prefs").await;
    visit(&mut b, "/prefs-drop").await; // a key removed inside an object
    visit(&mut b, "/unicode").await;
    assert_eq!(
        visit(&mut b, "/").await["data"],
        json!({"cart": ["book", "book"], "prefs": {"theme": "dark"}, "name": "Zoë 🐍"})
    );

    visit(&mut b, "/null").await; // a stored null survives (sent whole)
    assert_eq!(visit(&mut b, "/").await["data"]["nothing"], Value::Null);
    assert!(
        visit(&mut b, "/").await["data"]
            .as_object()
            .unwrap()
            .contains_key("nothing")
    );

    let before = b.cookie.clone().unwrap();
    visit(&mut b, "/login").await;
    let after = b.cookie.clone().unwrap();
    assert_ne!(before, after, "regenerate gives a new id");
    let seen = visit(&mut b, "/").await;
    assert_eq!(seen["data"]["user"], "ada");
    assert_eq!(seen["sid"], after);

    visit(&mut b, "/clear").await;
    assert_eq!(visit(&mut b, "/").await["data"], json!({"fresh": true}));

    visit(&mut b, "/logout").await;
    assert!(b.cookie.is_none(), "destroy expires the cookie");
    assert!(proxy.sessions().await.is_empty());
    proxy.stop().await;
}

#[test]
fn the_adapters_unit_tests_pass_on_the_golden_fixtures() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v", "test_session_proxy_wsgi"])
        .current_dir(format!("{ROOT}/examples/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("python3 cannot be run ({e}); these tests never skip"));
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("Ran 7 tests"), "{report}");
}
