//! `[assertion]` through the real proxy: the `X-Session-Assertion` the test app receives
//! verifies (jsonwebtoken, the JWKS fetched from the admin listener without a token) over
//! HTTP/1.1 and HTTP/2, and its claims name this request, this session's handle and the exact
//! `X-Session` value; a client's own assertion never reaches the app; the binary's
//! `assertion jwks`, the key file `openssl` reads, and a SIGHUP key rotation.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::support::{
    App, ProxyProcess, Seen, TestProxy, assertion_jwks, get, h2_send, write_config,
};

const TOKEN: &str = "test-admin-token-0123456789";

fn toml(dir: &Path, extra: &str) -> String {
    format!(
        "[assertion]\nkey_file = \"{}\"\n{extra}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        dir.join("assertion.pem").display()
    )
}

/// The JWKS from the admin listener, fetched without the admin token.
async fn jwks(admin: std::net::SocketAddr) -> JwkSet {
    let r = get(admin, "/.well-known/jwks.json").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "application/json");
    serde_json::from_slice(&r.body).unwrap()
}

/// Verifies `token` against `set` as an app would (signature, `exp`, `aud`, `iss`).
fn verify(token: &str, set: &JwkSet, aud: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let kid = decode_header(token)?.kid.unwrap_or_default();
    let jwk = set
        .find(&kid)
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[aud]);
    v.set_issuer(&["session-proxy"]);
    v.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    Ok(decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &v)?.claims)
}

fn b64_sha256(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(bytes))
}

/// What binds the token to the request the app saw: the handle of its session id, its request
/// id, its `X-Session` value, and whether it is new.
fn assert_bound(claims: &Value, seen: &Seen) {
    let id = seen.session_id();
    assert_eq!(claims["sid"], b64_sha256(id.as_bytes()));
    assert_eq!(claims["sid"].as_str().unwrap().len(), 43);
    assert_eq!(
        claims["rid"].as_str(),
        seen.header("x-request-id").as_deref()
    );
    let session = seen.header("x-session").unwrap();
    assert_eq!(claims["sdh"], b64_sha256(session.as_bytes()));
    assert_eq!(claims["new"], seen.is_new());
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp, iat + 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_gets_an_assertion_that_verifies_and_binds_the_session_over_h1_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &toml(dir.path(), "")).await;
    let set = jwks(proxy.admin_addr()).await;
    assert_eq!(set.keys.len(), 1);
    let aud = format!("http://{}", app.addr);

    // HTTP/1.1: a new session, then the same one with data; a client's own assertion is gone.
    let mut b = proxy.client();
    let r = b
        .get("/")
        .client_sends(&[("X-Session-Assertion", "forged.by.client")])
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)])
        .await;
    let seen = r.app_saw();
    assert_eq!(seen.headers("x-session-assertion").len(), 1);
    let token = seen.header("x-session-assertion").unwrap();
    assert_ne!(token, "forged.by.client");
    assert!(!token.contains(&seen.session_id()), "the id is never in it");
    let claims = verify(&token, &set, &aud).unwrap();
    assert_bound(&claims, &seen);
    assert_eq!(claims["new"], true);
    assert_eq!(claims.get("sub"), None, "no user_key, no sub");
    // The app answers with the proxy's names only: the assertion is not sent back.
    assert!(r.headers.get("x-session-assertion").is_none());

    let seen = b.get("/").await.app_saw();
    let token = seen.header("x-session-assertion").unwrap();
    let claims = verify(&token, &set, &aud).unwrap();
    assert_bound(&claims, &seen);
    assert_eq!(claims["new"], false);
    assert_eq!(seen.session()["user"], "ada");
    // Someone else's audience refuses it.
    assert!(verify(&token, &set, "http://elsewhere").is_err());

    // HTTP/2 from the client: the same, with the cookie.
    let req = Request::get(format!("http://{}/", proxy.addr))
        .header(
            "cookie",
            format!("session_id={}", b.cookie.clone().unwrap()),
        )
        .header("x-request-id", "h2-request-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (resp, _) = h2_send(req).await;
    let seen = resp.app_saw();
    let token = seen.header("x-session-assertion").unwrap();
    let claims = verify(&token, &set, &aud).unwrap();
    assert_bound(&claims, &seen);
    assert_eq!(claims["rid"], "h2-request-1");
    assert_eq!(seen.session()["user"], "ada");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_is_the_user_and_no_session_means_no_assertion() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let extra = "audience = \"my-app\"\nttl = \"5m\"\n[session]\nuser_key = \"user\"\nskip = [\"/static/\"]";
    let proxy = TestProxy::start(&app, &toml(dir.path(), extra)).await;
    let set = jwks(proxy.admin_addr()).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)])
        .await;
    let seen = b.get("/").await.app_saw();
    let claims = verify(&seen.header("x-session-assertion").unwrap(), &set, "my-app").unwrap();
    assert_eq!(claims["sub"], "ada");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    // A skipped path carries no session, so no assertion either.
    let seen = b.get("/static/app.css").await.app_saw();
    assert!(!seen.has_header("x-session"));
    assert!(!seen.has_header("x-session-assertion"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_section_there_is_no_assertion_and_no_jwks() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "[admin]\nlisten = \"127.0.0.1:0\"").await;
    let seen = proxy.client().get("/").await.app_saw();
    assert!(seen.has_header("x-session"));
    assert!(!seen.has_header("x-session-assertion"));
    let r = get(proxy.admin_addr(), "/.well-known/jwks.json").await;
    assert_eq!(r.status, 404);
    proxy.stop().await;
}

/// The binary: the key file it creates is one `openssl pkey` reads (PKCS#8 v1, mode 0600),
/// `assertion jwks` prints the keys the admin listener serves, and a SIGHUP after the operator
/// replaced the key (with openssl) signs with the new key while the old one stays in the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_creates_a_standard_key_prints_the_jwks_and_rotates_on_sighup() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let key = dir.path().join("assertion.pem");
    let cfg = write_config(
        dir.path(),
        "proxy.toml",
        &format!(
            "upstream = \"http://{}\"\n[store]\nkind = \"memory\"\n{}",
            app.addr,
            toml(dir.path(), "")
        ),
    );
    let printed: JwkSet = serde_json::from_slice(&assertion_jwks(&cfg)).unwrap();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
    // openssl reads it, and its public key is the JWKS's.
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap_or_else(|e| panic!("openssl cannot be run ({e}); these tests never skip"));
    assert!(
        public.status.success(),
        "{}",
        String::from_utf8_lossy(&public.stderr)
    );
    let x = URL_SAFE_NO_PAD.encode(&public.stdout[public.stdout.len() - 32..]);
    let printed_x = serde_json::to_value(&printed.keys[0]).unwrap()["x"].clone();
    assert_eq!(printed_x, x);

    let proxy = ProxyProcess::spawn(&["-c", &cfg, "--admin-listen", "127.0.0.1:0"]);
    let admin = proxy.admin.unwrap();
    let served = jwks(admin).await;
    assert_eq!(served, printed);
    let aud = format!("http://{}", app.addr);
    let before = get(proxy.addr, "/").await.app_saw();
    let old_token = before.header("x-session-assertion").unwrap();
    verify(&old_token, &served, &aud).unwrap();

    // The operator rotates the key with openssl and sends SIGHUP.
    let fresh = dir.path().join("fresh.pem");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&fresh)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::rename(&fresh, &key).unwrap();
    proxy.signal("HUP");
    let mut rotated = served.clone();
    for _ in 0..100 {
        rotated = jwks(admin).await;
        if rotated.keys.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rotated.keys.len(), 2, "the new key and the one it replaced");
    let after = get(proxy.addr, "/").await.app_saw();
    let new_token = after.header("x-session-assertion").unwrap();
    let old_kid = decode_header(&old_token).unwrap().kid.unwrap();
    let new_kid = decode_header(&new_token).unwrap().kid.unwrap();
    assert_ne!(old_kid, new_kid);
    assert_eq!(rotated.keys[0].common.key_id.as_deref(), Some(&*new_kid));
    // Both verify against the set now served: the old token is still good for its ttl.
    verify(&new_token, &rotated, &aud).unwrap();
    verify(&old_token, &rotated, &aud).unwrap();
    // ...and the new one does not verify against the old set.
    assert!(verify(&new_token, &served, &aud).is_err());
}

/// A key file that is not an Ed25519 PKCS#8 key is a setting to fix: `check` and a start both
/// refuse it with exit code 2, naming the file.
#[test]
fn a_key_file_that_is_not_an_ed25519_key_refuses_check_and_start_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("assertion.pem"), "not a key\n").unwrap();
    let cfg = write_config(
        dir.path(),
        "proxy.toml",
        &format!(
            "[store]\nkind = \"memory\"\n[assertion]\nkey_file = \"{}\"\n",
            dir.path().join("assertion.pem").display()
        ),
    );
    for args in [
        vec!["-c", cfg.as_str(), "check"],
        vec!["-c", cfg.as_str(), "--listen", "127.0.0.1:0"],
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{args:?}: {err}");
        assert!(err.contains("not an Ed25519 private key"), "{err}");
        assert!(err.contains("assertion.pem"), "{err}");
    }
}

/// No assertion reaches the app through `proxy`, and `admin` serves no key.
async fn assert_off(proxy: std::net::SocketAddr, admin: std::net::SocketAddr) {
    let seen = get(proxy, "/").await.app_saw();
    assert!(!seen.has_header("x-session-assertion"));
    assert_eq!(get(admin, "/.well-known/jwks.json").await.status, 404);
}

/// A reload turns the assertion on (the key file created as a start would) and off: the app
/// gets a verifiable `X-Session-Assertion` and the admin listener serves its key only while on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_the_assertion_on_and_off() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let base = format!(
        "upstream = \"http://{}\"\n[store]\nkind = \"memory\"\n",
        app.addr
    );
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let cfg = write_config(dir.path(), "proxy.toml", &format!("{base}{admin}"));
    let running = crate::support::Running::spawn(&["-c", &cfg, "--admin-listen", "127.0.0.1:0"]);
    let (proxy, admin_addr) = (running.proxy.addr, running.proxy.admin.unwrap());
    assert_off(proxy, admin_addr).await;

    // On, the key file created as a start would.
    write_config(
        dir.path(),
        "proxy.toml",
        &format!("{base}{}", toml(dir.path(), "")),
    );
    running.hangup_line("configuration reloaded").await;
    assert!(dir.path().join("assertion.pem").exists());
    let set = jwks(admin_addr).await;
    let seen = get(proxy, "/").await.app_saw();
    let token = seen
        .header("x-session-assertion")
        .expect("on after the reload");
    verify(&token, &set, &format!("http://{}", app.addr)).unwrap();

    // Off again.
    write_config(dir.path(), "proxy.toml", &format!("{base}{admin}"));
    running.hangup_until("configuration reloaded", 2).await;
    assert_off(proxy, admin_addr).await;
    running.stop();
}
