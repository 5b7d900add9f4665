//! End to end: the quickstart (`examples/counter.rs`: the example app and the proxy on its
//! default sqlite store, one process) in a real headless Chromium (support/webdriver.rs), over
//! HTTPS on 127.0.0.1 with a certificate made in the test (Chromium trusts exactly its key, by
//! `--ignore-certificate-errors-spki-list`). The counter rises across reloads (the `Secure`
//! cookie comes back over https), login regenerates the id, logout destroys the session,
//! `HttpOnly` keeps the cookie out of `document.cookie`, and a WebSocket (`wss://`) opened by the
//! page gets its echo with the user's name from the session.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::support::tls::TestCa;
use crate::support::webdriver::{Chrome, Locator, Options};

/// The example's binary, run in a temporary directory (its `sessions.db` goes there) with a
/// config whose addresses end in port 0. Killed by its PID when dropped.
struct Counter {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Counter {
    /// With the `[tls]` files `cert` and `key`, and `cookie.secure`.
    fn start(cert: &std::path::Path, key: &std::path::Path) -> Counter {
        // `cargo test` builds the examples, `cargo test --test it` does not: make sure it is
        // there and current (a no-op when it is).
        let built = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "counter"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(built.success(), "cargo build --example counter failed");
        // The test binary is target/<profile>/deps/it-<hash>; examples sit beside deps/.
        let exe: PathBuf = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(|deps| deps.parent())
            .unwrap()
            .join("examples/counter");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("proxy.toml");
        std::fs::write(
            &config,
            // The store's timeout raised: a loaded test machine is not what this test is about.
            format!(
                "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:0\"\n[store]\ntimeout = \"30s\"\n\
                 [cookie]\nsecure = true\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(exe)
            .arg(&config)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let addr = loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "the example exited"
            );
            if let Some(rest) = line.strip_prefix("session-proxy on https://") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        Counter {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn page_text(chrome: &Chrome) -> String {
    chrome
        .client()
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The session cookie's value as the browser holds it, if it holds one.
async fn session_cookie(chrome: &Chrome) -> Option<String> {
    let c = chrome.client().get_named_cookie("session_id").await.ok()?;
    assert_eq!(c.http_only(), Some(true), "{c}");
    assert_eq!(c.secure(), Some(true), "{c}");
    Some(c.value().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_in_a_browser_counts_logs_in_and_out_and_talks_over_a_websocket() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf("e2e");
    let (cert, key) = leaf.write(certs.path(), "e2e", &ca);
    let counter = Counter::start(&cert, &key);
    let chrome = Chrome::start_with(Options {
        args: vec![format!(
            "--ignore-certificate-errors-spki-list={}",
            leaf.spki_pin
        )],
        ..Options::default()
    })
    .await;
    let client = chrome.client();
    let base = format!("https://localhost:{}", counter.addr.port());

    // The counter rises across reloads: one session, kept by its cookie.
    client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(
        page_text(&chrome).await,
        "Hello, stranger. Visits in this session: 1"
    );
    let first = session_cookie(&chrome).await.expect("a session cookie");
    for n in 2..=3 {
        client.refresh().await.unwrap();
        let text = page_text(&chrome).await;
        assert_eq!(
            text,
            format!("Hello, stranger. Visits in this session: {n}")
        );
    }
    assert_eq!(
        session_cookie(&chrome).await.as_deref(),
        Some(first.as_str())
    );
    // HttpOnly: the page's script cannot read it.
    let script_sees = client
        .execute("return document.cookie", Vec::new())
        .await
        .unwrap();
    assert!(
        !script_sees.as_str().unwrap().contains("session_id"),
        "{script_sees}"
    );

    // Login regenerates the id (against fixation) and keeps the session's data.
    client
        .goto(&format!("{base}/login?user=ada"))
        .await
        .unwrap();
    assert!(page_text(&chrome).await.starts_with("Logged in as ada"));
    let second = session_cookie(&chrome).await.expect("a session cookie");
    assert_ne!(second, first, "login must issue a new session id");
    client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(
        page_text(&chrome).await,
        "Hello, ada. Visits in this session: 4"
    );

    // A WebSocket from the page, through the proxy: the app answers with the session's user.
    client.goto(&format!("{base}/chat")).await.unwrap();
    chrome
        .wait_for(
            "the WebSocket to open",
            "return document.body.dataset.ws === 'open'",
        )
        .await;
    client
        .find(Locator::Css("#message"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    client
        .find(Locator::Css("#message"))
        .await
        .unwrap()
        .send_keys("hi there")
        .await
        .unwrap();
    client
        .find(Locator::Css("button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let echo = chrome
        .wait_for(
            "the echo",
            "return document.getElementById('echo').textContent",
        )
        .await;
    assert_eq!(echo.as_str().unwrap().trim(), "ada: hi there");

    // Logout destroys the session: the cookie goes, and the next visit starts a new one.
    client.goto(&format!("{base}/logout")).await.unwrap();
    assert!(page_text(&chrome).await.starts_with("Logged out"));
    assert_eq!(session_cookie(&chrome).await, None);
    client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(
        page_text(&chrome).await,
        "Hello, stranger. Visits in this session: 1"
    );
    let third = session_cookie(&chrome).await.expect("a new session cookie");
    assert!(third != first && third != second);
    chrome.close().await;
}
