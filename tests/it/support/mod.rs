//! The test harness: a real test app (the proxy's upstream), the real proxy (in-process or as
//! the built binary), and a real HTTP client, all on ephemeral ports on 127.0.0.1. Nothing here
//! is a mock.

#![allow(dead_code)]

pub mod app;
#[cfg(feature = "postgres")]
pub mod otlp;
pub mod postgres;
pub mod raw;
#[cfg(feature = "redis")]
pub mod redis;
pub mod tls;
pub mod webdriver;

use std::future::{Future, IntoFuture};
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use session_proxy::Proxy;
use session_proxy::config::{Config, RawConfig};
use session_proxy::store::SessionStore;
use tokio::sync::oneshot;

pub use app::App;

/// The proxy served in this process, on 127.0.0.1:0.
pub struct TestProxy {
    pub addr: SocketAddr,
    /// The admin listener, when the config has `[admin] listen` (bound on 127.0.0.1:0).
    pub admin: Option<SocketAddr>,
    pub store: Arc<dyn SessionStore>,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Parses `toml` (plus the upstream address) the way the binary does.
pub fn config(upstream: SocketAddr, toml: &str) -> Config {
    let mut raw = RawConfig::from_toml("test.toml", toml).unwrap();
    raw.listen = Some("127.0.0.1:0".to_owned());
    raw.upstream = Some(format!("http://{upstream}"));
    raw.validate("test.toml").unwrap()
}

impl TestProxy {
    /// Starts a proxy in front of the test `app` with the given TOML (store defaults to memory if
    /// the TOML names none).
    pub async fn start(app: &App, toml: &str) -> TestProxy {
        let toml = if toml.contains("[store]") {
            toml.to_owned()
        } else {
            format!("{toml}\n[store]\nkind = \"memory\"\n")
        };
        Self::with_config(config(app.addr, &toml)).await
    }

    pub async fn with_config(config: Config) -> TestProxy {
        let proxy = Proxy::open(config.clone()).await.unwrap();
        let store = proxy.store();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = match &config.admin {
            Some(_) => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        let admin = admin_listener.as_ref().map(|l| l.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(proxy.serve_with_admin(listener, admin_listener, async {
            let _ = rx.await;
        }));
        TestProxy {
            addr,
            admin,
            store,
            config,
            shutdown: Some(tx),
            task,
        }
    }

    /// The admin listener's address; panics if the config has no `[admin]`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .expect("this proxy was started without [admin] listen")
    }

    pub fn client(&self) -> Browser {
        Browser::new(self.addr, &self.config.cookie.name)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Every live session in the store, by handle (see [`handle`]).
    pub async fn sessions(&self) -> Vec<(String, Value)> {
        let page = self.store.list(None, 100_000).await.unwrap();
        page.sessions
            .into_iter()
            .map(|(id, r)| (id.to_string(), serde_json::from_str(&r.data).unwrap()))
            .collect()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The handle of the session whose cookie (unsigned) is `id`: the name the stores, the audit
/// log and the admin API know it by.
pub fn handle(id: &str) -> String {
    session_proxy::session::SessionId::parse(id)
        .unwrap_or_else(|| panic!("not a session id: {id:?}"))
        .handle()
        .to_string()
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The `Set-Cookie` line for cookie `name`, if the response set one.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// What the test app echoed back about the request it received (see `app.rs`).
    pub fn app_saw(&self) -> Seen {
        Seen(self.json())
    }
}

/// The request as the test app received it.
pub struct Seen(pub Value);

impl Seen {
    /// The first value of a request header, as the test app saw it.
    pub fn header(&self, name: &str) -> Option<String> {
        self.0["headers"][name.to_ascii_lowercase()][0]
            .as_str()
            .map(str::to_owned)
    }
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.0["headers"][name.to_ascii_lowercase()]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn has_header(&self, name: &str) -> bool {
        !self.headers(name).is_empty()
    }
    /// `X-Session` decoded (by the test app's own decoder, not the crate's): the session data
    /// the test app got. Fails the test if the header did not decode.
    pub fn session(&self) -> Value {
        if let Some(e) = self.0["session_error"].as_str() {
            panic!("the test app could not decode X-Session: {e}");
        }
        self.0["session"].clone()
    }
    pub fn session_id(&self) -> String {
        self.header("x-session-id").expect("no X-Session-Id")
    }
    pub fn is_new(&self) -> bool {
        self.header("x-session-new").as_deref() == Some("1")
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 (prior knowledge) client, as `curl --http2-prior-knowledge` is.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `req` over HTTP/2 and returns the response with its body (and trailers, if any).
pub async fn h2_send(req: Request<Full<Bytes>>) -> (Resp, Option<HeaderMap>) {
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    let resp = Resp {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
    };
    (resp, trailers)
}

/// A GET of `path` from a client with no cookie jar; add to it, then `.await` it.
pub fn get(addr: SocketAddr, path: &str) -> ClientRequest<'static> {
    request(addr, Method::GET, path)
}

/// A request from a client with no cookie jar; add to it, then `.await` it.
pub fn request(addr: SocketAddr, method: Method, path: &str) -> ClientRequest<'static> {
    ClientRequest {
        addr,
        method,
        path: path.to_owned(),
        client_headers: Vec::new(),
        body: Bytes::new(),
        app: AppAnswer::default(),
        browser: None,
    }
}

/// One request, built in two visibly separate parts: what the client sends
/// ([`client_sends`](Self::client_sends), [`body`](Self::body)), and how the test app answers
/// it (the `app_*` methods, carried to the app on its control channel, see `app.rs`). Awaiting
/// it sends it and returns exactly what the proxy sent back.
#[must_use = "a request is sent only when awaited"]
pub struct ClientRequest<'a> {
    addr: SocketAddr,
    method: Method,
    path: String,
    client_headers: Vec<(String, String)>,
    body: Bytes,
    app: AppAnswer,
    /// Set for a [`Browser`]'s request: its cookie goes out, the response's cookie comes back.
    browser: Option<&'a mut Browser>,
}

/// How the test app answers one request.
#[derive(Default)]
struct AppAnswer {
    headers: Vec<(String, String)>,
    delay_ms: Option<u64>,
    status: Option<u16>,
}

impl ClientRequest<'_> {
    /// Request headers the client itself sends. Any `X-Session*` among them is a client's
    /// forgery, which the proxy must strip.
    pub fn client_sends(mut self, headers: &[(&str, &str)]) -> Self {
        self.client_headers.extend(
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self
    }

    /// The request body the client sends.
    pub fn body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }

    /// The test app answers with these response headers, in this order (this is how a test's
    /// app gives session instructions such as `X-Session-Update`).
    pub fn app_responds_with(mut self, headers: &[(&str, &str)]) -> Self {
        self.app.headers.extend(
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self
    }

    /// The test app takes `ms` milliseconds before it answers.
    pub fn app_takes_ms(mut self, ms: u64) -> Self {
        self.app.delay_ms = Some(ms);
        self
    }

    /// The test app answers with this status (200 otherwise).
    pub fn app_status(mut self, status: u16) -> Self {
        self.app.status = Some(status);
        self
    }

    async fn send(self) -> Resp {
        let mut builder = Request::builder()
            .method(self.method)
            .uri(format!("http://{}{}", self.addr, self.path));
        if let Some(jar) = &self.browser
            && let Some(c) = &jar.cookie
        {
            builder = builder.header("cookie", format!("{}={c}", jar.cookie_name));
        }
        for (k, v) in &self.client_headers {
            builder = builder.header(k, v);
        }
        if !self.app.headers.is_empty() {
            let pairs: Vec<(&str, &str)> = self
                .app
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            builder = builder.header(app::RESPOND_WITH, app::respond_with_value(&pairs));
        }
        if let Some(ms) = self.app.delay_ms {
            builder = builder.header(app::DELAY_MS, ms);
        }
        if let Some(status) = self.app.status {
            builder = builder.header(app::STATUS, status);
        }
        let resp = client()
            .request(builder.body(Full::new(self.body)).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let resp = Resp {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        };
        if let Some(jar) = self.browser {
            jar.absorb(&resp);
        }
        resp
    }
}

impl<'a> IntoFuture for ClientRequest<'a> {
    type Output = Resp;
    type IntoFuture = Pin<Box<dyn Future<Output = Resp> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A client with a one-cookie jar for the session cookie, like a browser on one site.
#[derive(Clone)]
pub struct Browser {
    pub addr: SocketAddr,
    pub cookie_name: String,
    /// The session cookie's value, as last set by the proxy.
    pub cookie: Option<String>,
}

impl Browser {
    pub fn new(addr: SocketAddr, cookie_name: &str) -> Self {
        Browser {
            addr,
            cookie_name: cookie_name.to_owned(),
            cookie: None,
        }
    }

    /// A GET of `path` with the jar's session cookie; the response's cookie goes into the jar.
    pub fn get(&mut self, path: &str) -> ClientRequest<'_> {
        let addr = self.addr;
        ClientRequest {
            browser: Some(self),
            ..get(addr, path)
        }
    }

    /// Applies the response's Set-Cookie for the session cookie, as a browser would.
    pub fn absorb(&mut self, resp: &Resp) {
        if let Some(line) = resp.set_cookie(&self.cookie_name) {
            let value = line[self.cookie_name.len() + 1..]
                .split(';')
                .next()
                .unwrap()
                .to_owned();
            let removal = line.contains("Max-Age=0") || value.is_empty();
            self.cookie = if removal { None } else { Some(value) };
        }
    }
}

/// The built `session-proxy` binary, run as a child process.
pub struct ProxyProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when started with `--admin-listen`.
    pub admin: Option<SocketAddr>,
}

impl ProxyProcess {
    /// Starts the binary with `args` plus `--listen 127.0.0.1:0`, and waits for its
    /// "listening" line.
    pub fn spawn(args: &[&str]) -> ProxyProcess {
        Self::spawn_logging(args, "warn", Stdio::inherit())
    }

    /// [`spawn`](Self::spawn) with `RUST_LOG=level` and the log going to `stderr`.
    pub fn spawn_logging(args: &[&str], level: &str, stderr: impl Into<Stdio>) -> ProxyProcess {
        Self::start(args, level, stderr, &[], "http")
    }

    /// The one way the tests run the binary: `args` plus `--listen 127.0.0.1:0`, `RUST_LOG=level`,
    /// `env` set, stderr as given; waits for the listening line, which must name `scheme`
    /// (`http`, or `https` with `[tls]`), and then for the admin line if `--admin-listen` is given.
    pub fn start(
        args: &[&str],
        level: &str,
        stderr: impl Into<Stdio>,
        env: &[(&str, &str)],
        scheme: &str,
    ) -> ProxyProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_session-proxy"));
        command
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", level)
            .envs(env.iter().copied())
            .stderr(stderr);
        Self::launch(&mut command, args.contains(&"--admin-listen"), scheme)
    }

    /// Runs `command` (the binary, or a program that execs it) with stdout piped, and waits for
    /// the listening line, which must name `scheme`, then for the admin line when `admin`.
    pub fn launch(command: &mut Command, admin: bool, scheme: &str) -> ProxyProcess {
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut next_addr = |prefix: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            // With `--log-format json` the line is a JSON event; its message is the text line.
            if line.starts_with('{') {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap();
                line = event["message"].as_str().unwrap_or_default().to_owned();
            }
            line.strip_prefix(prefix)
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or_else(|| panic!("no {prefix:?} line from the proxy: {line:?}"))
                .parse()
                .unwrap()
        };
        let addr = next_addr(&format!("session-proxy listening on {scheme}://"));
        let admin = admin.then(|| next_addr("session-proxy admin on http://"));
        ProxyProcess { child, addr, admin }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `[store]` section for the fs store in `dir`, fsync off: these tests are about behaviour,
/// not durability, and run faster without it.
pub fn fs_store(dir: &Path) -> String {
    format!(
        "[store]\nkind = \"fs\"\npath = \"{}\"\nfsync = false",
        dir.display()
    )
}

/// A port nobody listens on right now (the OS picked it for a listener we then closed).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of the counter `name` (its full name, `session_proxy_..._total`) in the admin
/// listener's `/metrics`, failing the test if it is not there.
pub async fn counter(admin: SocketAddr, name: &str) -> u64 {
    let text = get(admin, "/metrics").await;
    let text = String::from_utf8(text.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse::<u64>()
        .unwrap()
}

/// Writes a config file into `dir` and returns its path as a string.
pub fn write_config(dir: &Path, name: &str, toml: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

/// What `session-proxy -c CONFIG assertion jwks` prints (the JWKS), failing the test if it fails.
pub fn assertion_jwks(config: &str) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["-c", config, "assertion", "jwks"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The binary, started with `args`, its log (`RUST_LOG=info`) in a file: for the tests that
/// signal it (SIGHUP) and read what it logged.
pub struct Running {
    pub proxy: ProxyProcess,
    log: tempfile::NamedTempFile,
}

impl Running {
    pub fn spawn(args: &[&str]) -> Running {
        let log = tempfile::NamedTempFile::new().unwrap();
        let proxy = ProxyProcess::spawn_logging(args, "info", log.reopen().unwrap());
        Running { proxy, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    /// Sends SIGHUP and waits (polling the log, at most 10 s) until the reload has been
    /// reported: `n` lines containing `what` in all.
    pub async fn hangup_until(&self, what: &str, n: usize) -> String {
        self.proxy.signal("HUP");
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.matches(what).count() >= n {
                return log;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {what:?} in the log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`hangup_until`](Self::hangup_until) the first report holding `what`; returns its line.
    pub async fn hangup_line(&self, what: &str) -> String {
        let log = self.hangup_until(what, 1).await;
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_default()
            .to_owned()
    }

    /// SIGTERM, and a clean exit within 10 s.
    pub fn stop(mut self) {
        self.proxy.signal("TERM");
        assert_eq!(self.proxy.wait_exit(Duration::from_secs(10)), Some(0));
    }
}
