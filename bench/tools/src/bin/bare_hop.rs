//! The bare hop for `bench/load.sh` and `bench/instructions.sh` (issue [perf-3]): what an HTTP
//! hop costs here with the proxy's own engine and no session work, the reference the proxy's
//! own cost is measured above.
//!
//! `--mode pooled` (the default, load.sh's `bare-hop` row) is built from the library's pieces:
//! hyper-util's `auto` server builder configured as `downstream` configures it (timer, header
//! read timeout, head buffer, h2c detection and upgrades), the request body under
//! `http::RequestBody` and `http::Buffers` (the only body the pool sends), the hop-by-hop strip
//! and `Upstream::rewrite` (Host, `X-Forwarded-*`), and `Upstream::send` over the proxy's pool
//! with its response timeout. Left out, and so measured by the difference to the proxy: the
//! session (cookie, store, `X-Session*`, instructions, merge, save, `Set-Cookie`), the request
//! filter's limits and Host check, the request id, metrics, the access line, the connection
//! driver's idle and shutdown watch, the response's trailer filter and in-flight tracking.
//!
//! `--mode plain` is the issue's "bare hyper 1" row: hyper's HTTP/1 server and one
//! `client::conn::http1` connection to the app per client connection (a spawned task), no pool.
//!
//! ```not_rust
//! bare_hop --listen 127.0.0.1:0 --upstream 127.0.0.1:8080 [--mode pooled|plain]
//! ```
//! It prints `bare-hop listening on http://ADDR ` on stdout and serves until SIGTERM or SIGINT,
//! on a multi-thread runtime as the proxy's.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use session_proxy::config::{Config, RawConfig};
use session_proxy::forwarding::Peer;
use session_proxy::http::{Buffers, RequestBody, strip_hop_by_hop};
use session_proxy::upstream::Upstream;
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Pooled,
    Plain,
}

fn usage() -> ! {
    eprintln!("usage: bare_hop --upstream HOST:PORT [--listen ADDR] [--mode pooled|plain]");
    std::process::exit(2);
}

fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut upstream = None;
    let mut mode = Mode::Pooled;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--upstream" => upstream = Some(args.next().unwrap_or_else(|| usage())),
            "--mode" => {
                mode = match args.next().as_deref() {
                    Some("pooled") => Mode::Pooled,
                    Some("plain") => Mode::Plain,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    let upstream = upstream.unwrap_or_else(|| usage());
    let upstream = upstream.trim_start_matches("http://").to_owned();
    // The proxy's defaults for everything the pieces read (limits, timeouts, header prefix).
    let toml = format!("upstream = \"http://{upstream}\"\n");
    let config = RawConfig::from_toml("bare_hop.toml", &toml)?.validate("bare_hop.toml")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            println!("bare-hop listening on http://{} ", listener.local_addr()?);
            let serve = async {
                match mode {
                    Mode::Pooled => pooled(listener, &config).await,
                    Mode::Plain => plain(listener, upstream).await,
                }
            };
            tokio::select! {
                () = serve => {}
                () = session_proxy::downstream::shutdown_signal() => {}
            }
            Ok(())
        })
}

/// The library's engine: the downstream builder's settings, the body wrappers, the pool.
async fn pooled(listener: TcpListener, config: &Config) {
    let limits = config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_size.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_timeout);
    let builder = Arc::new(builder);
    let upstream = Upstream::new(config);
    let reserved = Arc::new(config.session.headers.clone());
    let buffers = Buffers::new(&limits);
    loop {
        let Some((stream, remote)) = accept(&listener).await else {
            continue;
        };
        let peer = Peer::new(remote, stream.local_addr().ok());
        let (builder, upstream) = (builder.clone(), upstream.clone());
        let (reserved, buffers) = (reserved.clone(), buffers.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (upstream, peer) = (upstream.clone(), peer.clone());
                let (reserved, buffers) = (reserved.clone(), buffers.clone());
                async move {
                    let (mut parts, body) = req.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = RequestBody::new(body, reserved, &limits);
                    let resp = match buffers.read(body).await {
                        Ok((body, _)) => {
                            let mut req = Request::from_parts(parts, body);
                            upstream.rewrite(&mut req, &peer);
                            upstream.send(req).await.ok()
                        }
                        Err(_) => None,
                    };
                    let resp = resp.map(|mut resp| {
                        strip_hop_by_hop(resp.headers_mut());
                        resp.map(Either::Left)
                    });
                    Ok::<_, Infallible>(resp.unwrap_or_else(bad_gateway))
                }
            });
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// An empty 502: the bare hop's only error answer.
fn bad_gateway<B>() -> Response<Either<B, Empty<Bytes>>> {
    let mut resp = Response::new(Either::Right(Empty::new()));
    *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
    resp
}

/// hyper alone: its HTTP/1 server, and one client connection to the app per client connection.
async fn plain(listener: TcpListener, upstream: String) {
    loop {
        let Some((stream, _)) = accept(&listener).await else {
            continue;
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(app) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = app.set_nodelay(true);
            let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(app)).await
            else {
                return;
            };
            tokio::spawn(conn);
            let sender = Arc::new(tokio::sync::Mutex::new(sender));
            let service = service_fn(move |req: Request<Incoming>| {
                let sender = sender.clone();
                async move {
                    let resp = sender.lock().await.send_request(req).await;
                    Ok::<_, Infallible>(match resp {
                        Ok(resp) => resp.map(Either::Left),
                        Err(_) => bad_gateway(),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn accept(listener: &TcpListener) -> Option<(TcpStream, std::net::SocketAddr)> {
    match listener.accept().await {
        Ok((stream, remote)) => {
            let _ = stream.set_nodelay(true);
            Some((stream, remote))
        }
        Err(e) => {
            eprintln!("bare-hop: accept failed: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            None
        }
    }
}
