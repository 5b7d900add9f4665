//! `[tls]`: HTTPS on the client listener with certificates made here (a CA of the test's own):
//! HTTP/1.1 and HTTP/2 by ALPN, a Secure session cookie end to end, `X-Forwarded-Proto: https`,
//! bad files refused at start with exit 2, SIGHUP swapping the certificate under a live
//! connection (and keeping it when the new files are bad), silent TLS clients cut by
//! `handshake_timeout` and counted against `max_connections`, the warn for `cookie.secure`.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::support::raw::closed_within;
use crate::support::tls::{Https, TestCa, alpn, connect, server_cert, spawn_https};
use crate::support::{App, ProxyProcess, TestProxy, app};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A CA, one leaf it signed written into `dir`, and the `[tls]` section naming its files.
fn tls_setup(dir: &Path) -> (TestCa, String) {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("proxy-a").write(dir, "a", &ca);
    let section = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    (ca, section)
}

/// The app's own instruction, carried on the test app's control header.
fn app_responds_with(headers: &[(&str, &str)]) -> (&'static str, String) {
    (app::RESPOND_WITH, app::respond_with_value(headers))
}

#[tokio::test]
async fn https_serves_http1_and_h2_as_alpn_chose_and_tells_the_app_https() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, section) = tls_setup(dir.path());
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &section).await;

    // What the client offers, what ALPN chooses, what the response comes back as.
    type Case = (
        &'static [&'static [u8]],
        Option<&'static [u8]>,
        http::Version,
    );
    let cases: [Case; 4] = [
        (&[b"h2", b"http/1.1"], Some(b"h2"), http::Version::HTTP_2),
        (&[b"http/1.1"], Some(b"http/1.1"), http::Version::HTTP_11),
        (&[b"http/1.1", b"h2"], Some(b"h2"), http::Version::HTTP_2),
        // No ALPN at all (an old client): HTTP/1.1.
        (&[], None, http::Version::HTTP_11),
    ];
    for (offered, chosen, version) in cases {
        let stream = connect(proxy.addr, &ca, offered).await;
        assert_eq!(alpn(&stream).as_deref(), chosen, "offered {offered:?}");
        let mut conn = Https::over(stream).await;
        for _ in 0..2 {
            let (resp, got) = conn.get("/where", &[("x-forwarded-proto", "http")]).await;
            assert_eq!(
                (resp.status.as_u16(), got),
                (200, version),
                "offered {offered:?}"
            );
            let seen = resp.app_saw();
            assert_eq!(
                seen.header("x-forwarded-proto").as_deref(),
                Some("https"),
                "offered {offered:?}: the client's forged value is replaced by this hop's"
            );
            assert_eq!(seen.0["path"], "/where");
        }
    }
    assert_eq!(app.hits(), 8);
}

/// ALPN said HTTP/1.1, so an HTTP/2 preface on that connection is not served as HTTP/2
/// (prior-knowledge detection is for plain TCP only).
#[tokio::test]
async fn a_client_that_chose_http1_cannot_switch_to_h2_by_its_preface() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, section) = tls_setup(dir.path());
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &section).await;
    let mut stream = connect(proxy.addr, &ca, &[b"http/1.1"]).await;
    stream.write_all(PREFACE).await.unwrap();
    stream.flush().await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut got),
    )
    .await
    .expect("the connection was left open");
    // hyper answers a request line it cannot parse with 400 (or closes); no h2 SETTINGS frame.
    let text = String::from_utf8_lossy(&got);
    assert!(
        read.is_err() || got.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text:?}"
    );
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn the_secure_session_cookie_round_trips_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, section) = tls_setup(dir.path());
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &format!("[cookie]\nsecure = true\n{section}")).await;
    for offered in [&[b"h2" as &[u8]][..], &[b"http/1.1"]] {
        let mut conn = Https::over(connect(proxy.addr, &ca, offered).await).await;
        let (name, value) = app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)]);
        let (r, _) = conn.get("/login", &[(name, value.as_str())]).await;
        assert_eq!(r.status, 200);
        let line = r.set_cookie("session_id").expect("a session cookie");
        assert!(
            line.split("; ").any(|a| a == "Secure"),
            "not Secure: {line}"
        );
        let pair = line.split(';').next().unwrap().to_owned();
        // A new connection, as a browser's next visit may be.
        let mut again = Https::over(connect(proxy.addr, &ca, offered).await).await;
        let (r, _) = again.get("/", &[("cookie", pair.as_str())]).await;
        let seen = r.app_saw();
        assert!(
            !seen.is_new(),
            "{offered:?}: the cookie did not bring the session back"
        );
        assert_eq!(seen.session()["user"], "ada");
    }
}

/// Runs the binary (which must refuse to start) and returns its exit code and stderr.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--store", "memory"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: the proxy started");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (code, err)
}

#[test]
fn bad_certificate_or_key_files_stop_the_start_with_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("proxy-a").write(d, "a", &ca);
    let (_, other_key) = ca.leaf("proxy-b").write(d, "b", &ca);
    let empty = d.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let garbage = d.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = d.join("missing.pem");
    let s = |p: &Path| p.display().to_string();
    let cases: Vec<(Vec<String>, String, &str)> = vec![
        (
            vec![s(&missing), s(&key)],
            format!("`tls.cert`: {}: cannot read", s(&missing)),
            "missing cert",
        ),
        (
            vec![s(&cert), s(&missing)],
            format!("`tls.key`: {}: cannot read", s(&missing)),
            "missing key",
        ),
        (
            vec![s(&empty), s(&key)],
            format!("`tls.cert`: {}: no certificate in the file", s(&empty)),
            "empty cert",
        ),
        (
            vec![s(&garbage), s(&key)],
            format!("`tls.cert`: {}: not a PEM file", s(&garbage)),
            "bad base64",
        ),
        (
            // The certificate file holds no key.
            vec![s(&cert), s(&cert)],
            format!("`tls.key`: {}: no private key in the file", s(&cert)),
            "no key",
        ),
        (
            vec![s(&cert), s(&other_key)],
            format!(
                "`tls.key`: {}: the private key does not match the certificate in {}",
                s(&other_key),
                s(&cert)
            ),
            "mismatched key",
        ),
    ];
    for (files, want, what) in cases {
        let args = [
            "--tls-cert",
            files[0].as_str(),
            "--tls-key",
            files[1].as_str(),
        ];
        let (code, err) = refused(&args);
        assert_eq!(code, Some(2), "{what}: {err}");
        assert!(err.contains(&want), "{what}: {err}");
        // `check` says the same, without starting.
        let (code, err) = refused(&[&["check"][..], &args].concat());
        assert_eq!(code, Some(2), "check, {what}: {err}");
        assert!(err.contains(&want), "check, {what}: {err}");
    }
    // One of the two in the file: the missing one is named.
    let config = d.join("half.toml");
    std::fs::write(&config, format!("[tls]\ncert = \"{}\"\n", s(&cert))).unwrap();
    let (code, err) = refused(&["--config", &s(&config)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{}: `tls.key`: is required with tls.cert",
            s(&config)
        )),
        "{err}"
    );
}

/// The proxy's stderr, collected line by line by a thread as it comes.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn collect(proxy: &mut ProxyProcess) -> Log {
        let log = Log::default();
        let lines = log.0.clone();
        let stderr = proxy.child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        log
    }

    /// Waits up to 10 s for a line containing `text`.
    async fn wait_for(&self, text: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.0.lock().unwrap().iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no log line with {text:?} in {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn count(&self, text: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }
}

/// Writes `name`'s files over the ones in use the way a renewal tool should: whole files
/// renamed into place.
fn replace(from: (std::path::PathBuf, std::path::PathBuf), to: (&Path, &Path)) {
    std::fs::rename(from.0, to.0).unwrap();
    std::fs::rename(from.1, to.1).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_for_new_handshakes_while_open_connections_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new();
    let a = ca.leaf("proxy-a");
    let (cert, key) = a.write(d, "live", &ca);
    let app = App::start().await;
    let upstream = format!("http://{}", app.addr);
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let args = [
        "--upstream",
        &upstream,
        "--store",
        "memory",
        "--cookie-secure",
        "--tls-cert",
        &c,
        "--tls-key",
        &k,
    ];
    let mut proxy = spawn_https(&args, "info", Stdio::piped());
    let log = Log::collect(&mut proxy);

    // A keep-alive connection of each protocol, made under certificate A.
    let mut open = Vec::new();
    for offered in [&[b"h2" as &[u8]][..], &[b"http/1.1"]] {
        let stream = connect(proxy.addr, &ca, offered).await;
        assert_eq!(server_cert(&stream), a.der);
        let mut conn = Https::over(stream).await;
        assert_eq!(conn.get("/", &[]).await.0.status, 200);
        open.push(conn);
    }

    let b = ca.leaf("proxy-b");
    replace(b.write(d, "next", &ca), (&cert, &key));
    proxy.signal("HUP");
    log.wait_for("certificate and key reloaded").await;
    let fresh = connect(proxy.addr, &ca, &[b"h2"]).await;
    assert_eq!(
        server_cert(&fresh),
        b.der,
        "a new handshake gets certificate B"
    );
    assert_ne!(a.der, b.der);
    let mut fresh = Https::over(fresh).await;
    assert_eq!(fresh.get("/", &[]).await.0.status, 200);
    for conn in &mut open {
        assert_eq!(
            conn.get("/", &[]).await.0.status,
            200,
            "a connection made under A still serves"
        );
    }

    // A renewal gone wrong: a key that is not B's, then an empty chain. Each is logged and B
    // stays.
    let c_leaf = ca.leaf("proxy-c");
    let (_, wrong_key) = c_leaf.write(d, "c", &ca);
    std::fs::rename(&wrong_key, &key).unwrap();
    proxy.signal("HUP");
    log.wait_for("does not match the certificate").await;
    std::fs::write(&cert, "").unwrap();
    proxy.signal("HUP");
    log.wait_for("no certificate in the file").await;
    assert_eq!(
        log.count("configuration not reloaded; the one in use is kept"),
        2
    );
    let stream = connect(proxy.addr, &ca, &[b"http/1.1"]).await;
    assert_eq!(
        server_cert(&stream),
        b.der,
        "the bad files did not replace B"
    );
    assert_eq!(Https::over(stream).await.get("/", &[]).await.0.status, 200);
    for conn in &mut open {
        assert_eq!(conn.get("/", &[]).await.0.status, 200);
    }
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "the proxy exited"
    );
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}

/// A client that opens TCP and never sends its ClientHello (or half of one) is closed at
/// `handshake_timeout`; while it waits it holds a connection slot.
#[tokio::test]
async fn a_silent_tls_client_is_cut_by_the_handshake_timeout_and_holds_a_slot_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, section) = tls_setup(dir.path());
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        &format!("{section}[limits]\nhandshake_timeout = \"500ms\"\n"),
    )
    .await;
    // The first five bytes of a TLS record header promising a ClientHello, and then nothing.
    let starts: [&[u8]; 2] = [b"", &[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01]];
    for start in starts {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(start).await.unwrap();
        let t = Instant::now();
        assert!(
            closed_within(&mut s, Duration::from_secs(5)).await,
            "{start:?}: still open after 5 s"
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(400),
            "{start:?}: closed too early ({took:?})"
        );
    }
    let mut conn = Https::over(connect(proxy.addr, &ca, &[b"h2"]).await).await;
    assert_eq!(conn.get("/", &[]).await.0.status, 200);
    proxy.stop().await;

    let proxy = TestProxy::start(
        &app,
        &format!("{section}[limits]\nhandshake_timeout = \"1s\"\nmax_connections = 1\n"),
    )
    .await;
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The slot is taken: the next connection is closed before any handshake.
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut second, Duration::from_secs(5)).await);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
    // Its slot is free again.
    let start = Instant::now();
    loop {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        if tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never served again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.hits(), 1, "only the one request reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_cookie_secure_warns_at_start() {
    const WARN: &str = "tls is on but cookie.secure is not set";
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("proxy-a").write(dir.path(), "a", &ca);
    let app = App::start().await;
    let upstream = format!("http://{}", app.addr);
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let base = [
        "--upstream",
        &upstream,
        "--store",
        "memory",
        "--tls-cert",
        &c,
        "--tls-key",
        &k,
    ];

    let mut proxy = spawn_https(&base, "info", Stdio::piped());
    let log = Log::collect(&mut proxy);
    let line = log.wait_for(WARN).await;
    assert!(line.contains("WARN"), "{line}");

    // Set, either way: no warning. The access line of a request shows the start is over.
    let explicit_false = dir.path().join("insecure.toml");
    std::fs::write(&explicit_false, "[cookie]\nsecure = false\n").unwrap();
    let f = explicit_false.display().to_string();
    for extra in [&["--cookie-secure"][..], &["--config", &f]] {
        let mut proxy = spawn_https(&[&base[..], extra].concat(), "info", Stdio::piped());
        let log = Log::collect(&mut proxy);
        let mut conn = Https::over(connect(proxy.addr, &ca, &[b"h2"]).await).await;
        assert_eq!(conn.get("/", &[]).await.0.status, 200);
        log.wait_for("status=200").await;
        assert_eq!(log.count(WARN), 0, "{extra:?}");
    }
}

/// A WebSocket through the TLS listener (ALPN `http/1.1`): the handshake carries the session
/// like any request, then the echo flows; the tunnel is the same as on plain TCP.
#[tokio::test]
async fn a_websocket_passes_through_tls_with_the_user_from_the_session() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let dir = tempfile::tempdir().unwrap();
    let (ca, section) = tls_setup(dir.path());
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &format!("[cookie]\nsecure = true\n{section}")).await;
    let mut conn = Https::over(connect(proxy.addr, &ca, &[b"http/1.1"]).await).await;
    let (name, value) = app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)]);
    let (r, _) = conn.get("/login", &[(name, value.as_str())]).await;
    let pair = r.set_cookie("session_id").expect("a session cookie");
    let pair = pair.split(';').next().unwrap().to_owned();

    let stream = connect(proxy.addr, &ca, &[b"http/1.1"]).await;
    assert_eq!(alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
    let mut req = "wss://localhost/ws".into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", http::HeaderValue::from_str(&pair).unwrap());
    let (mut ws, handshake) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(handshake.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let echo = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no echo over TLS")
        {
            Some(Ok(Message::Text(t))) => break t.as_str().to_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("the socket ended instead of answering: {other:?}"),
        }
    };
    assert_eq!(echo, "ada: hello");
    ws.close(None).await.unwrap();
}
