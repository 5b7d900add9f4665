//! The test harness: a real test app (the proxy's upstream), the real proxy (in-process or as
//! the built binary), and a real HTTP client, all on ephemeral ports on 127.0.0.1. Nothing here
//! is a mock.

#![allow(dead_code)]

pub mod app;
#[cfg(feature = "redis")]
pub mod redis;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
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
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(proxy.serve(listener, async {
            let _ = rx.await;
        }));
        TestProxy {
            addr,
            store,
            config,
            shutdown: Some(tx),
            task,
        }
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

    /// Every live session in the store.
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
    pub fn seen(&self) -> Seen {
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
    /// `X-Session` decoded: the session data the test app got.
    pub fn session(&self) -> Value {
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

/// One raw request; returns exactly what the proxy sent.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Resp {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let resp = client()
        .request(builder.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(addr, Method::GET, path, headers, Bytes::new()).await
}

/// Asks the test app to add these response headers (its `x-test-respond`).
pub fn respond(headers: &[(&str, &str)]) -> String {
    let map: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    Value::Object(map).to_string()
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

    /// GET `path`; `respond_with` lists headers the test app should answer with.
    pub async fn get(&mut self, path: &str, respond_with: &[(&str, &str)]) -> Resp {
        let mut headers: Vec<(&str, String)> = Vec::new();
        if let Some(c) = &self.cookie {
            headers.push(("cookie", format!("{}={c}", self.cookie_name)));
        }
        if !respond_with.is_empty() {
            headers.push(("x-test-respond", respond(respond_with)));
        }
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = get(self.addr, path, &refs).await;
        self.absorb(&resp);
        resp
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
}

impl ProxyProcess {
    /// Starts the binary with `args` plus `--listen 127.0.0.1:0`, and waits for its
    /// "listening" line.
    pub fn spawn(args: &[&str]) -> ProxyProcess {
        Self::spawn_logging(args, "warn", Stdio::inherit())
    }

    /// [`spawn`](Self::spawn) with `RUST_LOG=level` and the log going to `stderr`.
    pub fn spawn_logging(args: &[&str], level: &str, stderr: impl Into<Stdio>) -> ProxyProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no listening line from the proxy: {line:?}"))
            .parse()
            .unwrap();
        ProxyProcess { child, addr }
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

/// Writes a config file into `dir` and returns its path as a string.
pub fn write_config(dir: &Path, name: &str, toml: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}
