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
    assert_eq!(
        seen["handle"],
        crate::support::handle(b.cookie.as_deref().unwrap())
    );

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

/// `remember()` sends X-Session-Remember (a persistent cookie; `0` back to a browser-session
/// one), `devices` is the parsed X-Session-Devices on a devices_path, and `revoke(handle)` signs
/// out another device of the same user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_remembers_lists_devices_and_signs_one_out() {
    let app = PythonApp::start("tests/it/python/app.py", &[]);
    let toml = "[session]\nuser_key = \"user\"\ndevices_path = [\"/account/\"]\n[store]\nkind = \"memory\"";
    let proxy = TestProxy::with_config(config(app.addr, toml)).await;
    let (mut laptop, mut phone) = (proxy.client(), proxy.client());
    let r = laptop.get("/remember").await;
    let line = r.set_cookie("session_id").unwrap();
    assert!(line.contains("Max-Age=2592000"), "{line}");
    phone.get("/remember").await;
    assert!(visit(&mut laptop, "/").await["devices"].is_null());
    let seen = visit(&mut laptop, "/account/").await;
    let devices = seen["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{seen}");
    let other = devices.iter().find(|d| d["current"] == false).unwrap();
    let phone_handle = crate::support::handle(phone.cookie.as_deref().unwrap());
    assert_eq!(other["handle"], phone_handle.as_str());
    assert_eq!(other["created_ip"], "127.0.0.1");

    let r = laptop.get("/forget").await;
    let line = r.set_cookie("session_id").unwrap();
    assert!(!line.contains("Max-Age"), "{line}");

    visit(&mut laptop, &format!("/signout/{phone_handle}")).await;
    assert_eq!(visit(&mut phone, "/").await["new"], true, "signed out");
    assert_eq!(visit(&mut laptop, "/").await["data"]["user"], "ada");
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
    assert!(report.contains("Ran 8 tests"), "{report}");
}

/// `[assertion]` with `audience = "python-app"` and the key in `dir`, plus `extra` TOML.
fn assertion_toml(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[store]\nkind = \"memory\"\n[assertion]\nkey_file = \"{}\"\naudience = \"python-app\"\n{extra}",
        dir.join("assertion.pem").display()
    )
}

/// A request straight to the Python app (not through the proxy) with these headers.
async fn direct(app: &PythonApp, headers: &[(&str, &str)]) -> crate::support::Resp {
    crate::support::get(app.addr, "/")
        .client_sends(headers)
        .await
}

/// The headers the app's assertion was checked against, as it echoed them.
fn echoed(seen: &Value) -> Vec<(String, String)> {
    seen["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect()
}

fn with(headers: &[(String, String)], name: &str, value: Option<&str>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect();
    if let Some(v) = value {
        out.push((name.to_owned(), v.to_owned()));
    }
    out
}

async fn replay(app: &PythonApp, headers: &[(String, String)]) -> crate::support::Resp {
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    direct(app, &refs).await
}

/// The adapter with `jwks` set (the URL of the admin listener's JWKS) verifies the assertion of
/// every request through the real proxy, over HTTP/1.1 and h2, and refuses with 403, without
/// calling the app, an assertion that is missing, wrongly signed, signed by an unknown key,
/// expired, or replayed with other session data or another session id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_verifies_the_assertion_and_refuses_forged_expired_and_replayed_ones() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    // A proxy whose admin listener serves the key's JWKS (its upstream is never asked).
    let keys = TestProxy::with_config(config(
        "127.0.0.1:9".parse().unwrap(),
        &assertion_toml(dir.path(), "[admin]\nlisten = \"127.0.0.1:0\""),
    ))
    .await;
    let url = format!("http://{}/.well-known/jwks.json", keys.admin_addr());
    let app = PythonApp::start(
        "tests/it/python/app.py",
        &["--jwks", &url, "--audience", "python-app"],
    );
    let proxy = TestProxy::with_config(config(app.addr, &assertion_toml(dir.path(), ""))).await;

    // Through the proxy, HTTP/1.1: verified, and the claims name this session by its handle.
    let mut b = proxy.client();
    let r = b.get("/cart").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = visit(&mut b, "/").await;
    let sid = seen["sid"].as_str().unwrap();
    let claims = &seen["assertion"];
    assert_eq!(
        claims["sid"],
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(sid.as_bytes()))
    );
    assert_eq!(claims["new"], false);
    assert_eq!(claims["aud"], "python-app");
    assert_eq!(seen["data"], json!({"cart": ["book"]}));
    let good = echoed(&seen);

    // HTTP/2 from the client: the same.
    let req = http::Request::get(format!("http://{}/", proxy.addr))
        .header(
            "cookie",
            format!("session_id={}", b.cookie.clone().unwrap()),
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (resp, _) = crate::support::h2_send(req).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json()["assertion"]["sid"], claims["sid"]);

    // Straight to the app: the same headers again pass (within ttl)...
    assert_eq!(replay(&app, &good).await.status, 200);
    // ...but not without the assertion,
    let r = replay(&app, &with(&good, "X-Session-Assertion", None)).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    // nor with other data (forged: {"user":"admin"}) under the same assertion,
    let other = URL_SAFE_NO_PAD.encode(br#"{"user":"admin"}"#);
    let r = replay(&app, &with(&good, "X-Session", Some(&other))).await;
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("sdh"));
    // nor for another session id,
    let r = replay(
        &app,
        &with(
            &good,
            "X-Session-Id",
            Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ),
    )
    .await;
    assert_eq!(r.status, 403);
    // nor with a signature that is not the key's,
    let token = good
        .iter()
        .find(|(k, _)| k == "X-Session-Assertion")
        .unwrap()
        .1
        .clone();
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    bytes[0] ^= 1;
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&bytes));
    let r = replay(&app, &with(&good, "X-Session-Assertion", Some(&forged))).await;
    assert_eq!(r.status, 403);
    // nor signed by a key the JWKS does not hold, with the very same claims.
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger =
        session_proxy::assertion::Signer::open(&session_proxy::config::AssertionConfig {
            key_file: elsewhere.path().join("other.pem"),
            audience: "python-app".into(),
            issuer: "session-proxy".into(),
            ttl: std::time::Duration::from_secs(60),
        })
        .unwrap();
    let value = |name: &str| good.iter().find(|(k, _)| k == name).unwrap().1.clone();
    let id = session_proxy::session::SessionId::parse(&value("X-Session-Id"))
        .unwrap()
        .handle();
    let rid = value("X-Request-Id");
    let claims = session_proxy::assertion::Claims::new(
        &rid,
        &id,
        false,
        value("X-Session").as_bytes(),
        None,
    );
    let foreign = stranger.sign(&claims);
    let r = replay(
        &app,
        &with(
            &good,
            "X-Session-Assertion",
            Some(foreign.to_str().unwrap()),
        ),
    )
    .await;
    assert_eq!(r.status, 403);

    // Expired: a proxy with ttl = 1s; its assertion, replayed 2 s later, is refused.
    let short = TestProxy::with_config(config(
        app.addr,
        &assertion_toml(dir.path(), "ttl = \"1s\""),
    ))
    .await;
    let mut c = short.client();
    // A second boundary between signing and checking expires a 1 s token at once: retry.
    let mut fresh = None;
    for _ in 0..5 {
        let r = c.get("/").await;
        if r.status == 200 {
            fresh = Some(echoed(&r.json()));
            break;
        }
    }
    let fresh = fresh.expect("a 1 s assertion verified at least once in 5 tries");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = replay(&app, &fresh).await;
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("expired"));

    short.stop().await;
    proxy.stop().await;
    keys.stop().await;
}

/// Through the proxy itself: a proxy that sends no assertion, or signs with a key other than
/// the one in the app's JWKS file (`session-proxy assertion jwks`), gets 403 from the adapter
/// over HTTP/1.1 and h2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_refuses_a_proxy_without_the_assertion_or_with_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        crate::support::write_config(dir.path(), "proxy.toml", &assertion_toml(dir.path(), ""));
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, crate::support::assertion_jwks(&cfg)).unwrap();
    let app = PythonApp::start(
        "tests/it/python/app.py",
        &["--jwks", jwks.to_str().unwrap(), "--audience", "python-app"],
    );
    let other = tempfile::tempdir().unwrap();
    for (toml, what) in [
        (assertion_toml(dir.path(), ""), None),
        (
            "[store]\nkind = \"memory\"".to_owned(),
            Some("no X-Session-Assertion"),
        ),
        (
            assertion_toml(other.path(), ""),
            Some("no key with this kid"),
        ),
    ] {
        let proxy = TestProxy::with_config(config(app.addr, &toml)).await;
        let r = proxy.client().get("/").await;
        let req = http::Request::get(format!("http://{}/", proxy.addr))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let (h2, _) = crate::support::h2_send(req).await;
        for r in [&r, &h2] {
            let body = String::from_utf8_lossy(&r.body);
            match what {
                None => assert_eq!(r.status, 200, "{body}"),
                Some(why) => {
                    assert_eq!(r.status, 403, "{body}");
                    assert!(body.contains(why), "{body}");
                }
            }
        }
        proxy.stop().await;
    }
}
