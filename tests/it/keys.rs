//! Cookie key rotation: a list of secrets (the first signs, all verify), an old key's cookie
//! re-signed with the current one, a removed key's refused; `cookie.secret_file` and the
//! environment variable; SIGHUP swapping the keys in the running binary while a keep-alive
//! connection stays open, and refusing a bad new set; the per-key metric.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use cookie::{Cookie, CookieJar, Key};
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::support::{App, ProxyProcess, Resp, Running, TestProxy, app, get, write_config};

const NEW: &str = "new-secret-0123456789abcdef0123456789";
const OLD: &str = "old-secret-0123456789abcdef0123456789";
const UPDATE: (&str, &str) = ("X-Session-Update", r#"{"a":1}"#);

/// The value of `session_id` for `id` signed with `secret`, as any signer with the secret
/// would make it (the `cookie` crate's signed jar, which docs/src/protocol.md names).
fn signed(id: &str, secret: &str) -> String {
    let mut jar = CookieJar::new();
    jar.signed_mut(&Key::derive_from(secret.as_bytes()))
        .add(Cookie::new("session_id", id.to_owned()));
    jar.get("session_id").unwrap().value().to_owned()
}

/// The session cookie's value in a response, if it set one.
fn cookie_in(r: &Resp) -> Option<String> {
    let line = r.set_cookie("session_id")?;
    Some(line["session_id=".len()..].split(';').next()?.to_owned())
}

/// Creates a session with `{"a":1}` through the proxy at `addr`; returns its id.
async fn new_session(addr: SocketAddr) -> String {
    let r = get(addr, "/").app_responds_with(&[UPDATE]).await;
    assert!(cookie_in(&r).is_some(), "{:?}", r.set_cookies());
    r.app_saw().session_id()
}

fn with_cookie(addr: SocketAddr, value: &str) -> crate::support::ClientRequest<'static> {
    get(addr, "/").client_sends(&[("cookie", &format!("session_id={value}"))])
}

/// `name value` lines of the admin's `/metrics` that start with `prefix`, sorted (a family's
/// children come in no fixed order).
async fn metrics(admin: SocketAddr, prefix: &str) -> Vec<String> {
    let r = get(admin, "/metrics").await;
    assert_eq!(r.status, 200);
    let mut lines: Vec<String> = String::from_utf8(r.body.to_vec())
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn rotated_toml() -> String {
    format!("[cookie]\nsecret = [\"{NEW}\", \"{OLD}\"]\n[admin]\nlisten = \"127.0.0.1:0\"")
}

#[tokio::test]
async fn a_cookie_signed_with_an_old_key_is_accepted_and_re_signed_with_the_current_one() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &rotated_toml()).await;
    let id = new_session(proxy.addr).await;
    let parsed = session_proxy::session::SessionId::parse(&id)
        .unwrap()
        .handle();
    // Its first return (one write: session.first_lifetime) with the current key.
    assert_eq!(with_cookie(proxy.addr, &signed(&id, NEW)).await.status, 200);
    let before = proxy.store.load(&parsed).await.unwrap().unwrap();

    let r = with_cookie(proxy.addr, &signed(&id, OLD)).await;
    assert_eq!(r.status, 200);
    let seen = r.app_saw();
    assert_eq!(
        (seen.session_id(), seen.is_new()),
        (id.clone(), false),
        "the old key's cookie must keep its session"
    );
    assert_eq!(seen.session(), json!({"a": 1}));
    assert_eq!(r.set_cookies().len(), 1, "{:?}", r.set_cookies());
    assert_eq!(cookie_in(&r), Some(signed(&id, NEW)));
    // Re-signing alone writes nothing.
    let after = proxy.store.load(&parsed).await.unwrap().unwrap();
    assert_eq!(
        (after.version, after.updated_at, after.expires_at),
        (before.version, before.updated_at, before.expires_at)
    );
    assert_eq!(&*after.data, &*before.data);

    // The new cookie needs nothing re-set.
    let r = with_cookie(proxy.addr, &signed(&id, NEW)).await;
    assert_eq!(r.app_saw().session_id(), id);
    assert_eq!(cookie_in(&r), None);

    // An old-key cookie with an update: one Set-Cookie, the current key's, and the change kept.
    let r = with_cookie(proxy.addr, &signed(&id, OLD))
        .app_responds_with(&[("X-Session-Update", r#"{"b":2}"#)])
        .await;
    assert_eq!(r.set_cookies().len(), 1, "{:?}", r.set_cookies());
    assert_eq!(cookie_in(&r), Some(signed(&id, NEW)));
    let r = with_cookie(proxy.addr, &signed(&id, NEW)).await;
    assert_eq!(r.app_saw().session(), json!({"a": 1, "b": 2}));

    // Destroy wins over re-signing: the cookie is expired, not re-set.
    let r = with_cookie(proxy.addr, &signed(&id, OLD))
        .app_responds_with(&[("X-Session-Destroy", "1")])
        .await;
    let lines = r.set_cookies();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("Max-Age=0"), "{lines:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_cookie_signed_with_a_removed_key_gets_a_fresh_session() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &format!("[cookie]\nsecret = \"{NEW}\"")).await;
    let id = new_session(proxy.addr).await;
    let r = with_cookie(proxy.addr, &signed(&id, OLD)).await;
    let seen = r.app_saw();
    assert!(seen.is_new());
    assert_ne!(seen.session_id(), id);
    assert_eq!(seen.session(), json!({}));
    // Still there for its own key's cookie.
    let r = with_cookie(proxy.addr, &signed(&id, NEW)).await;
    assert_eq!(r.app_saw().session_id(), id);
    proxy.stop().await;
}

#[tokio::test]
async fn the_metric_counts_verifications_per_key_index() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &rotated_toml()).await;
    let admin = proxy.admin_addr();
    let id = new_session(proxy.addr).await;
    for value in [signed(&id, NEW), signed(&id, OLD), signed(&id, OLD)] {
        with_cookie(proxy.addr, &value).await;
    }
    with_cookie(
        proxy.addr,
        &signed(&id, "unknown-secret-0123456789abcdef012345"),
    )
    .await;
    with_cookie(proxy.addr, &id).await;
    assert_eq!(
        metrics(admin, "session_proxy_cookie_verification").await,
        [
            "session_proxy_cookie_verification_failures_total 2",
            "session_proxy_cookie_verifications_total{key=\"0\"} 1",
            "session_proxy_cookie_verifications_total{key=\"1\"} 2",
        ]
    );
    proxy.stop().await;
}

/// One HTTP/1.1 connection to `addr`, kept open: every request goes over the same socket, and
/// a request on a connection the proxy closed fails.
struct KeepAlive {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> KeepAlive {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        KeepAlive { send, addr }
    }

    /// A GET with the session cookie `cookie`; the app answers with `respond`.
    async fn get(&mut self, cookie: Option<&str>, respond: &[(&str, &str)]) -> Resp {
        let mut req = Request::get(format!("http://{}/", self.addr))
            .header("host", self.addr.to_string())
            .header(app::RESPOND_WITH, app::respond_with_value(respond));
        if let Some(c) = cookie {
            req = req.header("cookie", format!("session_id={c}"));
        }
        self.send
            .ready()
            .await
            .expect("the keep-alive connection closed");
        let resp = self
            .send
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .expect("the keep-alive connection failed");
        let (parts, body) = resp.into_parts();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

fn write_secrets(path: &Path, secrets: &[&str]) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("# newest first\n{}\n", secrets.join("\n"))).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A proxy binary reading its secrets from `dir/secrets` (holding `secrets`), through a config
/// file, with the admin listener.
fn with_secret_file(dir: &Path, app: &App, secrets: &[&str]) -> (Running, String) {
    let file = dir.join("secrets");
    write_secrets(&file, secrets);
    let config = write_config(
        dir,
        "proxy.toml",
        &format!(
            "upstream = \"http://{}\"\n[cookie]\nsecret_file = \"{}\"\n[store]\nkind = \"memory\"\n",
            app.addr,
            file.display()
        ),
    );
    let running = Running::spawn(&["--config", &config, "--admin-listen", "127.0.0.1:0"]);
    (running, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_keys_from_the_secret_file_while_a_keep_alive_connection_keeps_working() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = with_secret_file(dir.path(), &app, &[OLD]);
    let mut conn = KeepAlive::open(running.proxy.addr).await;
    let r = conn.get(None, &[UPDATE]).await;
    let id = r.app_saw().session_id();
    assert_eq!(cookie_in(&r), Some(signed(&id, OLD)));

    // Rotation, step 1: the new key first, the old one still verifying.
    write_secrets(&dir.path().join("secrets"), &[NEW, OLD]);
    let log = running.hangup_until("configuration reloaded", 1).await;
    assert!(log.contains("keys=2"), "{log}");
    let r = conn.get(Some(&signed(&id, OLD)), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.app_saw().session_id(), r.app_saw().is_new()),
        (id.clone(), false)
    );
    assert_eq!(r.app_saw().session(), json!({"a": 1}));
    assert_eq!(cookie_in(&r), Some(signed(&id, NEW)));

    // Step 2: the old key removed. Its cookie is refused; the new one keeps the session.
    write_secrets(&dir.path().join("secrets"), &[NEW]);
    running.hangup_until("configuration reloaded", 2).await;
    let r = conn.get(Some(&signed(&id, OLD)), &[]).await;
    assert!(r.app_saw().is_new());
    let r = conn.get(Some(&signed(&id, NEW)), &[]).await;
    assert_eq!(r.app_saw().session_id(), id);
    assert_eq!(r.app_saw().session(), json!({"a": 1}));

    // A file every user may read is used, with a warning.
    assert!(!running.log().contains("readable by every user"));
    let file = dir.path().join("secrets");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let log = running.hangup_until("configuration reloaded", 3).await;
    assert!(log.contains("readable by every user"), "{log}");

    let admin = running.proxy.admin.unwrap();
    assert_eq!(
        metrics(admin, "session_proxy_cookie_key_reloads_total").await,
        [
            "session_proxy_cookie_key_reloads_total{result=\"applied\"} 3",
            "session_proxy_cookie_key_reloads_total{result=\"refused\"} 0",
        ]
    );
    // No secret in the log.
    let log = running.log();
    assert!(!log.contains(NEW) && !log.contains(OLD), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_new_set_on_sighup_keeps_the_old_keys_and_logs_an_error() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (running, config) = with_secret_file(dir.path(), &app, &[OLD]);
    let id = new_session(running.proxy.addr).await;
    let short = "short-secret";

    // A secret too short: refused, with the line named and the secret not shown.
    write_secrets(&dir.path().join("secrets"), &[NEW, short]);
    let line = running.hangup_line("configuration not reloaded").await;
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("`cookie.secret_file`"), "{line}");
    assert!(line.contains("line 3: must be at least 32 bytes"), "{line}");
    let log = running.log();
    assert!(!log.contains(short) && !log.contains(NEW), "{log}");

    // The file gone: refused.
    std::fs::remove_file(dir.path().join("secrets")).unwrap();
    running.hangup_until("configuration not reloaded", 2).await;
    // The config file no longer TOML (its text never quoted into the log): refused.
    std::fs::write(&config, format!("[cookie\nsecret = \"{NEW}\"\n")).unwrap();
    let log = running.hangup_until("not valid TOML", 1).await;
    assert!(!log.contains(NEW), "{log}");
    // Signing turned off: refused.
    std::fs::write(&config, format!("upstream = \"http://{}\"\n", app.addr)).unwrap();
    let log = running.hangup_until("configuration not reloaded", 3).await;
    assert!(log.contains("takes a restart"), "{log}");

    // Through all of it, the old key signs and verifies, the process serves.
    let r = with_cookie(running.proxy.addr, &signed(&id, OLD)).await;
    assert_eq!(
        (r.app_saw().session_id(), r.app_saw().is_new()),
        (id, false)
    );
    let r = get(running.proxy.addr, "/")
        .app_responds_with(&[UPDATE])
        .await;
    let fresh = r.app_saw().session_id();
    assert_eq!(cookie_in(&r), Some(signed(&fresh, OLD)));
    assert_eq!(
        metrics(
            running.proxy.admin.unwrap(),
            "session_proxy_cookie_key_reloads_total"
        )
        .await,
        [
            "session_proxy_cookie_key_reloads_total{result=\"applied\"} 0",
            "session_proxy_cookie_key_reloads_total{result=\"refused\"} 4",
        ]
    );
}

/// Without any secret (so SIGHUP has nothing to change), SIGHUP still never ends the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_never_ends_the_process() {
    let app = App::start().await;
    let upstream = format!("http://{}", app.addr);
    let mut running = Running::spawn(&["--store", "memory", "--upstream", &upstream]);
    running.hangup_until("configuration reloaded", 1).await;
    running.hangup_until("configuration reloaded", 2).await;
    assert_eq!(running.proxy.child.try_wait().unwrap(), None);
    assert_eq!(get(running.proxy.addr, "/").await.status, 200);
    running.proxy.signal("TERM");
    let code =
        tokio::task::spawn_blocking(move || running.proxy.wait_exit(Duration::from_secs(10)))
            .await
            .unwrap();
    assert_eq!(code, Some(0));
}

/// The binary with `SESSION_PROXY_COOKIE_SECRET=env` and `args`: its address, once listening.
fn spawn_with_env(env: &str, args: &[&str]) -> ProxyProcess {
    ProxyProcess::start(
        args,
        "warn",
        Stdio::inherit(),
        &[("SESSION_PROXY_COOKIE_SECRET", env)],
        "http",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_variable_holds_one_secret_a_line() {
    let app = App::start().await;
    let upstream = format!("http://{}", app.addr);
    let args = ["--store", "memory", "--upstream", upstream.as_str()];
    let proxy = spawn_with_env(&format!("{NEW}\n{OLD}\n"), &args);
    let id = new_session(proxy.addr).await;
    let r = with_cookie(proxy.addr, &signed(&id, NEW)).await;
    assert_eq!(r.app_saw().session_id(), id);
    let r = with_cookie(proxy.addr, &signed(&id, OLD)).await;
    assert_eq!(r.app_saw().session_id(), id);
    assert_eq!(cookie_in(&r), Some(signed(&id, NEW)));
    drop(proxy);

    // One secret alone, as before rotation existed.
    let proxy = spawn_with_env(OLD, &args);
    let id = new_session(proxy.addr).await;
    let r = with_cookie(proxy.addr, &signed(&id, OLD)).await;
    assert_eq!((r.app_saw().session_id(), cookie_in(&r)), (id, None));
}

/// `session-proxy check` with `config` (and `env` as the secret variable, if any): exit code
/// and stderr.
fn check(config: &str, env: Option<&str>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "proxy.toml", config);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_session-proxy"));
    cmd.args(["check", "--config", &path, "--store", "memory"]);
    if let Some(env) = env {
        cmd.env("SESSION_PROXY_COOKIE_SECRET", env);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_secrets_are_refused_at_start_naming_the_key_never_the_secret() {
    let short = "0123456789";
    let cases = [
        (
            format!("[cookie]\nsecret = [\"{NEW}\", \"{short}\"]"),
            None,
            "`cookie.secret`: secret 1 (of 2, counting from 0): must be at least 32 bytes",
        ),
        (
            format!("[cookie]\nsecret = [\"{NEW}\", \"{NEW}\"]"),
            None,
            "`cookie.secret`: secret 1 (of 2, counting from 0) repeats secret 0",
        ),
        (
            format!("[cookie]\nsecret = \"{NEW}\"\nsecret_file = \"/nonexistent\""),
            None,
            "`cookie.secret_file`: give either cookie.secret or cookie.secret_file, not both",
        ),
        (
            "[cookie]\nsecret_file = \"/nonexistent/secrets\"".to_owned(),
            None,
            "`cookie.secret_file`: cannot read /nonexistent/secrets",
        ),
        (
            String::new(),
            Some(format!("{NEW}\n{short}")),
            "`cookie.secret`: secret 1 (of 2, counting from 0): must be at least 32 bytes",
        ),
    ];
    for (config, env, want) in cases {
        let (code, err) = check(&config, env.as_deref());
        assert_eq!(code, Some(2), "{config}: {err}");
        assert!(err.contains(want), "{config}: {err}");
        assert!(!err.contains(short) && !err.contains(NEW), "{err}");
    }
    let (code, out) = check(&format!("[cookie]\nsecret = [\"{NEW}\", \"{OLD}\"]"), None);
    assert_eq!(code, Some(0), "{out}");
}
