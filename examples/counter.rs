//! The quickstart: a tiny app with no session code of its own, behind session-proxy.
//!
//! The app (on the config's `upstream` address, 127.0.0.1:3000 by default) reads the session
//! only from the `X-Session` request header and changes it only with response headers:
//! `GET /` counts visits (`X-Session-Update`), `GET /login?user=NAME` logs in
//! (`X-Session-Regenerate` plus an update, against session fixation), `GET /logout` ends the
//! session (`X-Session-Destroy`). `GET /chat` is a page whose script opens the WebSocket
//! `/ws`, which echoes each message prefixed with the user's name: the app read it from the
//! session on the handshake, the one request of the socket the proxy sees. The proxy runs in
//! the same process on the embedded sqlite store (`sessions.db`).
//!
//! Run with
//! ```not_rust
//! cargo run -p counter                        # uses ./proxy.toml (or the file named)
//! cargo run -p counter -- --app-only 127.0.0.1:3000   # the app alone
//! curl -c jar -b jar http://127.0.0.1:8080/                     # visits: 1
//! curl -c jar -b jar http://127.0.0.1:8080/                     # visits: 2
//! curl -c jar -b jar 'http://127.0.0.1:8080/login?user=ada'
//! curl -c jar -b jar http://127.0.0.1:8080/logout
//! # and open http://127.0.0.1:8080/chat in a browser (after /login?user=ada there)
//! ```

use std::convert::Infallible;
use std::path::Path;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use session_proxy::config::RawConfig;
use session_proxy::protocol::codec;
use session_proxy::{Proxy, downstream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The page of `/chat`: its script talks to `/ws` on the same origin (so through the proxy,
/// with the session cookie), and shows what comes back.
const CHAT: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>counter: chat</title>
<p>Messages go to the app over a WebSocket; it answers with your name from the session.</p>
<form id="form"><input id="message" value="hello"> <button>Send</button></form>
<pre id="echo"></pre>
<script>
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
const echo = document.getElementById("echo");
ws.onopen = () => { document.body.dataset.ws = "open"; };
ws.onmessage = (event) => { echo.textContent += event.data + "\n"; };
ws.onclose = () => { document.body.dataset.ws = "closed"; };
document.getElementById("form").onsubmit = (event) => {
  event.preventDefault();
  ws.send(document.getElementById("message").value);
};
</script>
"#;

/// The app: everything it knows about sessions is in these headers.
async fn app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let session: Value = req
        .headers()
        .get("x-session")
        .and_then(|v| codec::decode_session(v.as_bytes()))
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| json!({}));
    let user = session["user"].as_str().unwrap_or("stranger").to_owned();
    if req.uri().path() == "/ws" {
        return Ok(websocket(req, user));
    }
    let visits = session["visits"].as_u64().unwrap_or(0) + 1;
    let query = req.uri().query().unwrap_or("");
    let builder = Response::builder().header("content-type", "text/plain; charset=utf-8");
    let resp = match req.uri().path() {
        "/" => builder
            .header("x-session-update", json!({ "visits": visits }).to_string())
            .body(format!("Hello, {user}. Visits in this session: {visits}\n")),
        "/login" => {
            let name = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("user="))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric()))
                .unwrap_or("guest");
            builder
                .header("x-session-regenerate", "1")
                .header("x-session-update", json!({ "user": name }).to_string())
                .body(format!("Logged in as {name} (new session id issued)\n"))
        }
        "/chat" => Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(CHAT.to_owned()),
        "/logout" => builder
            .header("x-session-destroy", "1")
            .body("Logged out; session destroyed\n".to_owned()),
        _ => builder.status(404).body("not found\n".to_owned()),
    };
    Ok(resp
        .map(|r| r.map(|s| Full::new(Bytes::from(s))))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n")))))
}

/// `/ws`: answers the handshake (RFC 6455 §4.2.2) and then echoes each text message as
/// `"{user}: {message}"`. `user` was read from the session on the handshake: nothing of the
/// session travels on the socket itself.
fn websocket(mut req: Request<Incoming>, user: String) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .filter(|_| req.headers().contains_key("upgrade"));
    let Some(key) = key else {
        let mut refused = Response::new(Full::new(Bytes::from_static(b"a WebSocket only\n")));
        *refused.status_mut() = http::StatusCode::UPGRADE_REQUIRED;
        return refused;
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let io = TokioIo::new(upgraded);
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let reply = Message::text(format!("{user}: {}", text.as_str()));
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("connection", http::HeaderValue::from_static("upgrade"));
    h.insert("upgrade", http::HeaderValue::from_static("websocket"));
    if let Ok(accept) = http::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", accept);
    }
    resp
}

/// Serves [`app`] on every connection `listener` accepts, forever.
async fn serve_app(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(app))
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // `--app-only ADDR`: the app alone, for a proxy that runs elsewhere (compose.yaml's `app`,
    // the container test).
    let mut args = std::env::args().skip(1);
    let named = args.next();
    if named.as_deref() == Some("--app-only") {
        let at = args.next().unwrap_or_else(|| "127.0.0.1:3000".to_owned());
        let app_listener = tokio::net::TcpListener::bind(at.as_str()).await?;
        println!("example app on http://{}", app_listener.local_addr()?);
        serve_app(app_listener).await;
        return Ok(());
    }
    // A config file may be named as the one argument (the browser test gives one whose
    // addresses end in port 0); otherwise ./proxy.toml, if there is one.
    let file = Path::new(named.as_deref().unwrap_or("proxy.toml"));
    let mut config = if file.exists() {
        RawConfig::from_file(file)?.validate(&file.display().to_string())?
    } else {
        RawConfig::default().validate("(defaults)")?
    };

    let app_listener = tokio::net::TcpListener::bind(config.upstream.as_str()).await?;
    let app_addr = app_listener.local_addr()?;
    // The address bound, so an `upstream` on port 0 works too.
    config.upstream = http::uri::Authority::try_from(app_addr.to_string())?;
    println!("example app on http://{app_addr}");
    tokio::spawn(serve_app(app_listener));

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    // With `[tls]` in the config the proxy serves HTTPS (the browser test runs it so).
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let addr = listener.local_addr()?;
    println!("session-proxy on {scheme}://{addr} (try: curl -c jar -b jar {scheme}://{addr}/)");
    Proxy::open(config)
        .await?
        .serve(listener, downstream::shutdown_signal())
        .await;
    Ok(())
}
