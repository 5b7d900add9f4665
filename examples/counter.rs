//! The quickstart: a tiny app with no session code of its own, behind session-proxy.
//!
//! The app (on the config's `upstream` address, 127.0.0.1:3000 by default) reads the session
//! only from the `X-Session` request header and changes it only with response headers:
//! `GET /` counts visits (`X-Session-Update`), `GET /login?user=NAME` logs in
//! (`X-Session-Regenerate` plus an update, against session fixation), `GET /logout` ends the
//! session (`X-Session-Destroy`). The proxy runs in the same process on the embedded sqlite
//! store (`sessions.db`).
//!
//! Run with
//! ```not_rust
//! cargo run --release --example counter                        # uses ./proxy.toml
//! curl -c jar -b jar http://127.0.0.1:8080/                     # visits: 1
//! curl -c jar -b jar http://127.0.0.1:8080/                     # visits: 2
//! curl -c jar -b jar 'http://127.0.0.1:8080/login?user=ada'
//! curl -c jar -b jar http://127.0.0.1:8080/logout
//! ```

use std::convert::Infallible;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use session_proxy::config::RawConfig;
use session_proxy::protocol::codec;
use session_proxy::{Proxy, downstream};

/// The app: everything it knows about sessions is in these headers.
async fn app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let session: Value = req
        .headers()
        .get("x-session")
        .and_then(|v| codec::decode_session(v.as_bytes()))
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| json!({}));
    let user = session["user"].as_str().unwrap_or("stranger").to_owned();
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
        "/logout" => builder
            .header("x-session-destroy", "1")
            .body("Logged out; session destroyed\n".to_owned()),
        _ => builder.status(404).body("not found\n".to_owned()),
    };
    Ok(resp
        .map(|r| r.map(|s| Full::new(Bytes::from(s))))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n")))))
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
    let file = Path::new("proxy.toml");
    let config = if file.exists() {
        RawConfig::from_file(file)?.validate("proxy.toml")?
    } else {
        RawConfig::default().validate("(defaults)")?
    };

    let app_listener = tokio::net::TcpListener::bind(config.upstream.as_str()).await?;
    println!("example app on http://{}", app_listener.local_addr()?);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = app_listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(app))
                    .await;
            });
        }
    });

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    println!(
        "session-proxy on http://{} (try: curl -c jar -b jar http://{}/)",
        listener.local_addr()?,
        listener.local_addr()?
    );
    Proxy::open(config)
        .await?
        .serve(listener, downstream::shutdown_signal())
        .await;
    Ok(())
}
