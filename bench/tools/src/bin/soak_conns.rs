//! The connection-holding half of `bench/soak.sh`: idle keep-alive connections and a slowloris
//! batch, held against the proxy for `--duration` seconds, each one reconnected when the proxy
//! closes it (which is the point: the proxy must close them, and take them back again).
//!
//! - `--idle N`: N connections, each sending one GET (no cookie) and then holding the idle
//!   keep-alive connection until the proxy closes it (`limits.keep_alive_timeout` /
//!   `header_read_timeout`), then reconnecting. Connects are spread over the first seconds.
//! - `--slowloris N`: N connections, each trickling a request head one byte per `--trickle-ms`
//!   and never finishing it. The proxy must cut each one (`limits.header_read_timeout`); the
//!   longest any lived is reported, so the script can check it against the configured timeout.
//! - `--slow-bodies N`: N connections, each sending a POST head with `Content-Length:
//!   --body-length` (65536), at once `--body-prefix` bytes (61440) of the body, and then one byte
//!   per `--trickle-ms`: what slow clients make the proxy hold in request buffers
//!   (`limits.request_buffer`, `request_buffer_total`). Reconnected when the proxy answers or
//!   closes; connects are spread over the first seconds.
//!
//! At the end every connection is closed and one line of tab-separated `key=value` fields is
//! printed. Run with (normally through bench/soak.sh)
//! ```not_rust
//! cargo run --release -p bench-tools --bin soak_conns -- --addr 127.0.0.1:8080 --idle 2000 --slowloris 50 --duration 60
//! ```
//! Traffic goes only to `--addr`; soak.sh only ever passes 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

type ClientBuilder = http1::Builder;

struct Args {
    addr: String,
    idle: usize,
    slowloris: usize,
    slow_bodies: usize,
    body_length: usize,
    body_prefix: usize,
    duration: Duration,
    trickle: Duration,
}

#[derive(Default)]
struct Counts {
    idle_connects: AtomicU64,
    idle_ok: AtomicU64,
    idle_errors: AtomicU64,
    /// Idle connections the proxy closed (the others were still open at the end).
    idle_closed: AtomicU64,
    idle_open: AtomicU64,
    idle_open_max: AtomicU64,
    /// The longest an idle connection stayed open after its response, in ms.
    idle_max_ms: AtomicU64,
    slow_connects: AtomicU64,
    slow_cut: AtomicU64,
    slow_errors: AtomicU64,
    slow_max_ms: AtomicU64,
    slow_bytes: AtomicU64,
    body_connects: AtomicU64,
    /// Slow bodies the proxy answered or closed (a 408, or a response from the app).
    body_ended: AtomicU64,
    body_open: AtomicU64,
    body_open_max: AtomicU64,
}

fn usage() -> ! {
    eprintln!(
        "usage: soak_conns --addr HOST:PORT [--idle N] [--slowloris N] [--slow-bodies N] \
         [--body-length BYTES] [--body-prefix BYTES] [--duration SECS] [--trickle-ms MS]"
    );
    std::process::exit(2);
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        addr: String::new(),
        idle: 0,
        slowloris: 0,
        slow_bodies: 0,
        body_length: 65536,
        body_prefix: 61440,
        duration: Duration::from_secs(60),
        trickle: Duration::from_millis(1000),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--addr" => a.addr = value(),
            "--idle" => a.idle = value().parse()?,
            "--slowloris" => a.slowloris = value().parse()?,
            "--slow-bodies" => a.slow_bodies = value().parse()?,
            "--body-length" => a.body_length = value().parse()?,
            "--body-prefix" => a.body_prefix = value().parse()?,
            "--duration" => a.duration = Duration::from_secs(value().parse()?),
            "--trickle-ms" => a.trickle = Duration::from_millis(value().parse()?),
            _ => usage(),
        }
    }
    anyhow::ensure!(!a.addr.is_empty(), "--addr is required");
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(a))
}

async fn run(a: Args) -> anyhow::Result<()> {
    let counts = Arc::new(Counts::default());
    let host = HeaderValue::from_str(&a.addr)?;
    let mut tasks = tokio::task::JoinSet::new();
    // 2,000 connects at once would be a SYN flood of our own; spread them over ~2 s.
    let spread = Duration::from_millis(2000) / (a.idle.max(1) as u32);
    for i in 0..a.slowloris {
        tasks.spawn(slowloris(a.addr.clone(), a.trickle, i, counts.clone()));
    }
    for _ in 0..a.idle {
        tasks.spawn(idle(a.addr.clone(), host.clone(), counts.clone()));
        tokio::time::sleep(spread).await;
    }
    let spread = Duration::from_millis(2000) / (a.slow_bodies.max(1) as u32);
    for _ in 0..a.slow_bodies {
        tasks.spawn(slow_body(
            a.addr.clone(),
            a.clone_body(),
            a.trickle,
            counts.clone(),
        ));
        tokio::time::sleep(spread).await;
    }
    tokio::time::sleep(a.duration.saturating_sub(Duration::from_secs(2))).await;
    // Dropping the tasks closes every connection they hold.
    tasks.shutdown().await;
    let c = &counts;
    let get = |n: &AtomicU64| n.load(Ordering::Relaxed).to_string();
    let fields = [
        ("idle", a.idle.to_string()),
        ("idle_connects", get(&c.idle_connects)),
        ("idle_ok", get(&c.idle_ok)),
        ("idle_errors", get(&c.idle_errors)),
        ("idle_closed_by_proxy", get(&c.idle_closed)),
        ("idle_open_max", get(&c.idle_open_max)),
        ("idle_max_ms", get(&c.idle_max_ms)),
        ("slowloris", a.slowloris.to_string()),
        ("slowloris_connects", get(&c.slow_connects)),
        ("slowloris_cut", get(&c.slow_cut)),
        ("slowloris_errors", get(&c.slow_errors)),
        ("slowloris_max_ms", get(&c.slow_max_ms)),
        ("slowloris_bytes", get(&c.slow_bytes)),
        ("slow_bodies", a.slow_bodies.to_string()),
        ("slow_body_connects", get(&c.body_connects)),
        ("slow_body_ended", get(&c.body_ended)),
        ("slow_body_open_max", get(&c.body_open_max)),
    ];
    let line: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("{}", line.join("\t"));
    Ok(())
}

/// Counts one more open idle connection; the guard counts it closed when dropped.
struct Open<'a>(&'a Counts);
impl<'a> Open<'a> {
    fn new(c: &'a Counts) -> Self {
        let now = c.idle_open.fetch_add(1, Ordering::Relaxed) + 1;
        c.idle_open_max.fetch_max(now, Ordering::Relaxed);
        Open(c)
    }
}
impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.idle_open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn idle(addr: String, host: HeaderValue, c: Arc<Counts>) {
    loop {
        let Ok(stream) = TcpStream::connect(&addr).await else {
            c.idle_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        c.idle_connects.fetch_add(1, Ordering::Relaxed);
        let _open = Open::new(&c);
        let Ok((mut sender, conn)) = ClientBuilder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
        else {
            c.idle_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut conn = std::pin::pin!(conn);
        let req = Request::get("/idle")
            .header(HOST, host.clone())
            .body(Empty::<Bytes>::new());
        let Ok(req) = req else {
            return;
        };
        // Drive the connection while the one request runs.
        let answered = tokio::select! {
            r = async {
                let resp = sender.send_request(req).await.ok()?;
                let ok = resp.status().is_success();
                resp.into_body().collect().await.ok()?;
                Some(ok)
            } => r,
            _ = &mut conn => None,
        };
        match answered {
            Some(true) => c.idle_ok.fetch_add(1, Ordering::Relaxed),
            _ => {
                c.idle_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Now idle: the sender stays alive, so only the proxy can end the connection.
        let since = Instant::now();
        let _ = conn.await;
        c.idle_closed.fetch_add(1, Ordering::Relaxed);
        c.idle_max_ms
            .fetch_max(since.elapsed().as_millis() as u64, Ordering::Relaxed);
        drop(sender);
    }
}

async fn slowloris(addr: String, trickle: Duration, n: usize, c: Arc<Counts>) {
    // Start the batch spread over one trickle period, so cuts do not all land at once.
    tokio::time::sleep(trickle * (n as u32 % 10) / 10).await;
    let head = format!("GET /slow HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
    loop {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            c.slow_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        c.slow_connects.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let since = Instant::now();
        let mut bytes = head
            .as_bytes()
            .iter()
            .copied()
            .chain(std::iter::repeat(b'a'));
        let mut tick = tokio::time::interval(trickle);
        let mut buf = [0u8; 1024];
        // Until the proxy closes (it may send a 408 first) or refuses a byte.
        loop {
            tokio::select! {
                r = stream.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                },
                _ = tick.tick() => {
                    let b = bytes.next().unwrap_or(b'a');
                    if stream.write_all(&[b]).await.is_err() {
                        break;
                    }
                    c.slow_bytes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        c.slow_cut.fetch_add(1, Ordering::Relaxed);
        c.slow_max_ms
            .fetch_max(since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Args {
    /// A slow body's head and the prefix sent with it.
    fn clone_body(&self) -> (Vec<u8>, usize) {
        let head = format!(
            "POST /slow-body HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            self.addr, self.body_length
        );
        let mut start = head.into_bytes();
        start.extend(std::iter::repeat_n(
            b'p',
            self.body_prefix.min(self.body_length),
        ));
        (
            start,
            self.body_length - self.body_prefix.min(self.body_length),
        )
    }
}

async fn slow_body(
    addr: String,
    (start, rest): (Vec<u8>, usize),
    trickle: Duration,
    c: Arc<Counts>,
) {
    loop {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            c.slow_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        c.body_connects.fetch_add(1, Ordering::Relaxed);
        let now = c.body_open.fetch_add(1, Ordering::Relaxed) + 1;
        c.body_open_max.fetch_max(now, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let mut left = rest;
        let mut tick = tokio::time::interval(trickle);
        let mut buf = [0u8; 1024];
        if stream.write_all(&start).await.is_ok() {
            // Until the proxy answers or closes (or the body is all sent, and it answers).
            loop {
                tokio::select! {
                    r = stream.read(&mut buf) => match r {
                        Ok(_) | Err(_) => break,
                    },
                    _ = tick.tick(), if left > 0 => {
                        if stream.write_all(b"t").await.is_err() {
                            break;
                        }
                        left -= 1;
                    }
                }
            }
        }
        c.body_open.fetch_sub(1, Ordering::Relaxed);
        c.body_ended.fetch_add(1, Ordering::Relaxed);
    }
}
