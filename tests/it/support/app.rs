//! The test app (the proxy's upstream in every test): a real hyper app that reports what it
//! received and answers with what the test asks for.
//!
//! - Every response to `/echo...` (and any unknown path) is a JSON description of the request:
//!   method, path, query, every header, and `X-Session` decoded by [`decode_x_session`]
//!   (`"session"`, or `"session_error"` when the header is there but does not decode).
//! - `/stream/N` answers with N bytes, generated chunk by chunk (never held in memory).
//! - `/sink` reads the request body and answers `{"received": bytes}`; what it saw of each body
//!   (its framing headers, how much came, whether it ended well) is kept for [`App::sunk`].
//! - `/ws` is a WebSocket (the handshake done by hand, as an app behind hyper does it): each
//!   text message is answered with `"{user}: {message}"`, `user` taken from the session on the
//!   handshake (`stranger` without one); `seen` is answered with the JSON description of the
//!   handshake request (as `/echo` gives), and `bye` makes the app close the socket.
//! - `/raw-upgrade` takes any other `Upgrade`: a 101 naming the asked protocol (or the one in
//!   `?as=`), then every byte is echoed back until EOF; a read that holds `quit` makes the app
//!   close the connection.
//!
//! Either upgrade path answers as an ordinary request when [`STATUS`] is given (a refused
//! upgrade), and its 101 carries the [`RESPOND_WITH`] headers too (session instructions).
//!
//! # Its control channel
//!
//! A test tells the app how to answer one request through request headers named `x-test-app-*`,
//! which the proxy forwards like any other client header (they are outside the reserved
//! prefix). They stand for the app's own logic, so tests never write them out:
//! `ClientRequest::app_responds_with` and the other `app_*` methods in `support/mod.rs` do, and a
//! call site reads `.app_responds_with(&[("X-Session-Update", ...)])`, never as if the client had
//! sent the instruction.
//!
//! - [`RESPOND_WITH`] `[["Header","value"],...]`: the app adds these headers to its response, in
//!   order (a name may repeat).
//! - [`DELAY_MS`] `N`: the app waits N ms before it answers.
//! - [`STATUS`] `N`: the app answers with status N.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};

/// Control header: the response headers the app answers with, a JSON list of `[name, value]`.
pub const RESPOND_WITH: &str = "x-test-app-respond";
/// Control header: how many milliseconds the app waits before it answers.
pub const DELAY_MS: &str = "x-test-app-delay-ms";
/// Control header: the status the app answers with.
pub const STATUS: &str = "x-test-app-status";

/// The [`RESPOND_WITH`] value that makes the app answer with `headers`.
pub fn respond_with_value(headers: &[(&str, &str)]) -> String {
    serde_json::to_string(headers).unwrap()
}

/// Decodes an `X-Session` value the way the README tells an app to, written out here instead of
/// calling the crate's own codec (a bug made symmetric in its encoder and decoder would pass
/// unseen): base64url without padding (strict: no `=`, no stray bits), then UTF-8 JSON text that
/// must be an object.
pub fn decode_x_session(value: &[u8]) -> Result<Value, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|e| format!("not base64url without padding: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(data)) => Ok(Value::Object(data)),
        Ok(other) => Err(format!("not a JSON object: {other}")),
        Err(e) => Err(format!("not JSON ({e}): {text:?}")),
    }
}

/// The test app, serving on 127.0.0.1:0 until dropped. Named `App` because `Upstream` is the
/// production client (`session_proxy::upstream`).
pub struct App {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// How many connections the app has accepted, and how many of them are open now.
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    /// The path of every request the app received, in order of arrival.
    paths: Arc<std::sync::Mutex<Vec<String>>>,
    sunk: Sinks,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type TestBody = BoxBody<Bytes, Infallible>;

/// What `/sink` saw of one request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sunk {
    pub content_length: Option<String>,
    pub transfer_encoding: Option<String>,
    pub expect: Option<String>,
    /// Data bytes the app read.
    pub received: u64,
    /// Whether the body ended as framed (false: the proxy cut it off).
    pub complete: bool,
    /// The names of the body's trailers, in order.
    pub trailers: Vec<String>,
}

type Sinks = Arc<std::sync::Mutex<Vec<Sunk>>>;

impl App {
    pub async fn start() -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = paths.clone();
        let sunk: Sinks = Arc::default();
        let sinks = sunk.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (accepted, opened) = (connections.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let open = OpenConnection::new(&opened);
                let (counter, seen, sinks) = (counter.clone(), seen.clone(), sinks.clone());
                tokio::spawn(async move {
                    let _open = open;
                    let svc = service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push(req.uri().path().to_owned());
                        handle(req, sinks.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App {
            addr,
            hits,
            connections,
            open,
            paths,
            sunk,
            task,
        }
    }

    /// How many connections the app has accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How many of the app's connections are open now (the proxy's pool, seen from the app).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// What `/sink` saw of each body it finished reading (or lost), in order.
    pub fn sunk(&self) -> Vec<Sunk> {
        self.sunk.lock().unwrap().clone()
    }

    /// The path of every request the app has received so far.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// Counts one open connection for as long as it lives (its task may end in a panic or abort).
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    mut req: Request<Incoming>,
    sinks: Sinks,
) -> Result<Response<TestBody>, Infallible> {
    let h = req.headers();
    let delay = h
        .get(DELAY_MS)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let status = h
        .get(STATUS)
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let respond_with: Vec<(String, String)> = match h.get(RESPOND_WITH) {
        Some(v) => serde_json::from_slice(v.as_bytes())
            .unwrap_or_else(|e| panic!("bad {RESPOND_WITH} value {v:?}: {e}")),
        None => Vec::new(),
    };
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if h.get(STATUS).is_none()
        && let Some(mut resp) = upgrade(&mut req)
    {
        for (name, value) in respond_with {
            resp.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(&value).unwrap(),
            );
        }
        return Ok(resp);
    }

    let path = req.uri().path().to_owned();
    let body: TestBody = if let Some(n) = path.strip_prefix("/stream/") {
        Repeat {
            remaining: n.parse().unwrap_or(0),
        }
        .boxed()
    } else if path == "/sink" {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let mut seen = Sunk {
            content_length: header("content-length"),
            transfer_encoding: header("transfer-encoding"),
            expect: header("expect"),
            received: 0,
            complete: true,
            trailers: Vec::new(),
        };
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    seen.received += f.data_ref().map_or(0, |d| d.len() as u64);
                    if let Some(t) = f.trailers_ref() {
                        seen.trailers
                            .extend(t.keys().map(|k| k.as_str().to_owned()));
                    }
                }
                Err(_) => {
                    seen.complete = false;
                    break;
                }
            }
        }
        let received = seen.received;
        sinks.lock().unwrap().push(seen);
        full(json!({ "received": received }).to_string())
    } else {
        full(describe(&req).to_string())
    };

    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    for (name, value) in respond_with {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value.as_bytes()),
        ) else {
            panic!("the test app cannot answer with the header {name}: {value:?}");
        };
        resp.headers_mut().append(name, value);
    }
    Ok(resp)
}

/// The JSON description of a request that `/echo` answers with.
fn describe<B>(req: &Request<B>) -> Value {
    let path = req.uri().path();
    let mut headers: Map<String, Value> = Map::new();
    for name in req.headers().keys() {
        let values: Vec<Value> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.insert(name.as_str().to_owned(), Value::Array(values));
    }
    let mut echo = json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
        "session": null,
    });
    match req
        .headers()
        .get("x-session")
        .map(|v| decode_x_session(v.as_bytes()))
    {
        Some(Ok(data)) => echo["session"] = data,
        Some(Err(e)) => echo["session_error"] = Value::String(e),
        None => {}
    }
    echo
}

/// The 101 for `/ws` or `/raw-upgrade` when the request asks to upgrade, with the connection's
/// new protocol spawned to run once hyper hands it over; `None` for any other request.
fn upgrade(req: &mut Request<Incoming>) -> Option<Response<TestBody>> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let h = req.headers();
    let asked = h.get("upgrade")?.to_str().ok()?.to_owned();
    let seen = describe(req);
    let on_upgrade = hyper::upgrade::on(&mut *req);
    let resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade");
    match req.uri().path() {
        "/ws" if asked.eq_ignore_ascii_case("websocket") => {
            let key = req.headers().get("sec-websocket-key")?;
            let accept = derive_accept_key(key.as_bytes());
            let user = seen["session"]["user"]
                .as_str()
                .unwrap_or("stranger")
                .to_owned();
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) if t.as_str() == "bye" => {
                            let _ = ws.close(None).await;
                            return;
                        }
                        Message::Text(t) if t.as_str() == "seen" => seen.to_string(),
                        Message::Text(t) => format!("{user}: {}", t.as_str()),
                        Message::Close(_) => return,
                        _ => continue,
                    };
                    if ws.send(Message::text(reply)).await.is_err() {
                        return;
                    }
                }
            });
            Some(
                resp.header("upgrade", "websocket")
                    .header("sec-websocket-accept", accept)
                    .body(full(String::new()))
                    .unwrap(),
            )
        }
        "/raw-upgrade" => {
            let answer = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("as="))
                .map_or(asked, str::to_owned);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) if buf[..n].windows(4).any(|w| w == b"quit") => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            Some(
                resp.header("upgrade", answer)
                    .body(full(String::new()))
                    .unwrap(),
            )
        }
        _ => None,
    }
}

fn full(s: String) -> TestBody {
    Full::new(Bytes::from(s)).boxed()
}

/// A body of `remaining` bytes produced 64 KiB at a time.
struct Repeat {
    remaining: u64,
}

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}
