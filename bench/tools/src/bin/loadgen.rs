//! The load generator of `bench/load.sh`, and its report.
//!
//! `loadgen run` opens `--connections` keep-alive HTTP/1.1 connections, one task each, and sends
//! GET requests back to back (a closed loop) for `--warmup` then `--duration` seconds. Every
//! connection has its own cookie jar, so with cookies on each connection is one browser whose
//! session is created once and then reused; `--no-cookies` makes every request cookie-less (a
//! new session each time). Latency is recorded in an HDR histogram during the measured part
//! only. For every `--pid NAME=PID` it reads utime+stime from `/proc/PID/stat` at the start and
//! the end of the measured part. It prints one line of tab-separated `key=value` fields.
//!
//! `loadgen report FILE [--mem FILE]` turns those lines (plus `mem_bench`'s line) into the
//! Markdown tables and the target check of `bench/RESULTS.md`.
//!
//! Run with (normally through bench/load.sh)
//! ```not_rust
//! cargo run --release --example loadgen -- run --url http://127.0.0.1:8080/ --duration 5
//! ```
//! Traffic goes only to the `--url` given; load.sh only ever passes 127.0.0.1.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{COOKIE, HOST, SET_COOKIE};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

type ClientBuilder = http1::Builder;

struct RunArgs {
    url: Uri,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    cookies: bool,
    pids: Vec<(String, u32)>,
    clk_tck: f64,
    labels: Vec<(String, String)>,
}

fn usage() -> ! {
    eprintln!(
        "usage:\n  loadgen run --url URL [--connections N] [--warmup SECS] [--duration SECS] \
         [--no-cookies] [--pid NAME=PID]... [--clk-tck N] [--label KEY=VALUE]...\n  \
         loadgen report FILE [--mem FILE]"
    );
    std::process::exit(2);
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("run") => run(parse_run(args)?),
        Some("report") => {
            let file = args.next().unwrap_or_else(|| usage());
            let mem = match (args.next().as_deref(), args.next()) {
                (Some("--mem"), Some(f)) => Some(f),
                (None, _) => None,
                _ => usage(),
            };
            print!("{}", report(&file, mem.as_deref())?);
            Ok(())
        }
        _ => usage(),
    }
}

fn parse_run(mut args: impl Iterator<Item = String>) -> anyhow::Result<RunArgs> {
    let mut a = RunArgs {
        url: Uri::from_static("http://127.0.0.1:8080/"),
        connections: 64,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(10),
        cookies: true,
        pids: Vec::new(),
        clk_tck: 100.0,
        labels: Vec::new(),
    };
    let secs = |v: Option<String>| -> anyhow::Result<Duration> {
        Ok(Duration::from_secs_f64(
            v.unwrap_or_else(|| usage()).parse::<f64>()?,
        ))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => a.url = args.next().unwrap_or_else(|| usage()).parse()?,
            "--connections" => a.connections = args.next().unwrap_or_else(|| usage()).parse()?,
            "--warmup" => a.warmup = secs(args.next())?,
            "--duration" => a.duration = secs(args.next())?,
            "--no-cookies" => a.cookies = false,
            "--clk-tck" => a.clk_tck = args.next().unwrap_or_else(|| usage()).parse()?,
            "--pid" | "--label" => {
                let v = args.next().unwrap_or_else(|| usage());
                let (k, v) = v.split_once('=').unwrap_or_else(|| usage());
                if arg == "--pid" {
                    a.pids.push((k.to_owned(), v.parse()?));
                } else {
                    a.labels.push((k.to_owned(), v.to_owned()));
                }
            }
            _ => usage(),
        }
    }
    anyhow::ensure!(a.url.scheme_str() == Some("http"), "only http:// URLs");
    anyhow::ensure!(a.connections > 0, "--connections must be positive");
    Ok(a)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32, clk_tck: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces), which ends at the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // man 5 proc: utime is field 14 and stime 15; `rest` starts at field 3 (state).
    let utime: f64 = fields.get(11).copied().unwrap_or("0").parse()?;
    let stime: f64 = fields.get(12).copied().unwrap_or("0").parse()?;
    Ok((utime + stime) / clk_tck)
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    connects: AtomicU64,
}

struct ConnResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    /// Non-2xx answers by status code (also counted in `errors`).
    statuses: BTreeMap<u16, u64>,
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let authority = a
            .url
            .authority()
            .ok_or_else(|| anyhow::anyhow!("--url has no host"))?
            .clone();
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let path = a
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let host = HeaderValue::from_str(authority.as_str())?;
        let shared = Arc::new(Shared {
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            connects: AtomicU64::new(0),
        });
        let tasks: Vec<_> = (0..a.connections)
            .map(|_| {
                tokio::spawn(connection(
                    addr.clone(),
                    path.clone(),
                    host.clone(),
                    a.cookies,
                    shared.clone(),
                ))
            })
            .collect();

        tokio::time::sleep(a.warmup).await;
        let cpu_before: Vec<f64> = a
            .pids
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid, a.clk_tck))
            .collect::<anyhow::Result<_>>()?;
        let start = Instant::now();
        shared.measuring.store(true, Ordering::SeqCst);
        tokio::time::sleep(a.duration).await;
        shared.measuring.store(false, Ordering::SeqCst);
        let secs = start.elapsed().as_secs_f64();
        let cpu_after: Vec<f64> = a
            .pids
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid, a.clk_tck))
            .collect::<anyhow::Result<_>>()?;
        shared.stop.store(true, Ordering::SeqCst);

        let mut hist = new_histogram();
        let (mut ok, mut errors) = (0u64, 0u64);
        let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
        for task in tasks {
            let r = tokio::time::timeout(Duration::from_secs(10), task).await??;
            hist.add(&r.hist)?;
            ok += r.ok;
            errors += r.errors;
            for (status, n) in r.statuses {
                *statuses.entry(status).or_default() += n;
            }
        }
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
        let mut fields: Vec<(String, String)> = a.labels.clone();
        fields.extend([
            ("requests".to_owned(), ok.to_string()),
            ("errors".to_owned(), errors.to_string()),
            ("secs".to_owned(), format!("{secs:.3}")),
            ("rps".to_owned(), format!("{:.1}", ok as f64 / secs)),
            ("p50_ms".to_owned(), format!("{:.3}", ms(0.50))),
            ("p99_ms".to_owned(), format!("{:.3}", ms(0.99))),
            ("p999_ms".to_owned(), format!("{:.3}", ms(0.999))),
            (
                "connects".to_owned(),
                shared.connects.load(Ordering::Relaxed).to_string(),
            ),
        ]);
        if !statuses.is_empty() {
            let list: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}:{n}")).collect();
            fields.push(("statuses".to_owned(), list.join(",")));
        }
        for (i, (name, _)) in a.pids.iter().enumerate() {
            fields.push((
                format!("cpu_{name}"),
                format!("{:.3}", cpu_after[i] - cpu_before[i]),
            ));
        }
        let line: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{}", line.join("\t"));
        Ok(())
    })
}

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap_or_else(|e| panic!("histogram: {e}"))
}

/// One client connection: its own cookie jar, requests back to back, reconnecting after an
/// error until told to stop.
async fn connection(
    addr: String,
    path: String,
    host: HeaderValue,
    cookies: bool,
    shared: Arc<Shared>,
) -> ConnResult {
    let mut r = ConnResult {
        hist: new_histogram(),
        ok: 0,
        errors: 0,
        statuses: BTreeMap::new(),
    };
    let mut jar: BTreeMap<String, String> = BTreeMap::new();
    'connect: while !shared.stop.load(Ordering::Relaxed) {
        let stream = match tokio::net::TcpStream::connect(&addr).await {
            Ok(s) => s,
            Err(_) => {
                r.errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        shared.connects.fetch_add(1, Ordering::Relaxed);
        let Ok((mut sender, conn)) = ClientBuilder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
        else {
            r.errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while !shared.stop.load(Ordering::Relaxed) {
            let mut req = Request::get(path.as_str()).header(HOST, host.clone());
            if cookies && !jar.is_empty() {
                let header: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
                req = req.header(COOKIE, header.join("; "));
            }
            let Ok(req) = req.body(Empty::<Bytes>::new()) else {
                r.errors += 1;
                continue 'connect;
            };
            let start = Instant::now();
            let resp = match sender.send_request(req).await {
                Ok(resp) => resp,
                Err(_) => {
                    r.errors += 1;
                    continue 'connect;
                }
            };
            let status = resp.status();
            if cookies {
                for value in resp.headers().get_all(SET_COOKIE) {
                    remember(&mut jar, value.as_bytes());
                }
            }
            if resp.into_body().collect().await.is_err() {
                r.errors += 1;
                continue 'connect;
            }
            let elapsed = start.elapsed();
            if shared.measuring.load(Ordering::Relaxed) {
                if status.is_success() {
                    r.ok += 1;
                    let _ = r.hist.record((elapsed.as_nanos() as u64).max(1));
                } else {
                    r.errors += 1;
                    *r.statuses.entry(status.as_u16()).or_default() += 1;
                }
            }
        }
    }
    r
}

/// Stores a `Set-Cookie` in the jar: `name=value` before the first `;`; an empty value or
/// `Max-Age=0` removes the cookie.
fn remember(jar: &mut BTreeMap<String, String>, set_cookie: &[u8]) {
    let Ok(text) = std::str::from_utf8(set_cookie) else {
        return;
    };
    let mut parts = text.split(';');
    let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
        return;
    };
    let removal =
        value.trim().is_empty() || parts.any(|p| p.trim().eq_ignore_ascii_case("max-age=0"));
    if removal {
        jar.remove(name.trim());
    } else {
        jar.insert(name.trim().to_owned(), value.trim().to_owned());
    }
}

// ----- report -----

type Row = BTreeMap<String, String>;

fn parse_line(line: &str) -> Row {
    line.split('\t')
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn num(row: &Row, key: &str) -> Option<f64> {
    row.get(key).and_then(|v| v.parse().ok())
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

/// CPU seconds per 10,000 requests for `who` in `row`.
fn cpu_per_10k(row: &Row, who: &str) -> Option<f64> {
    let requests = num(row, "requests")?;
    (requests > 0.0).then(|| num(row, &format!("cpu_{who}")).map(|c| c / requests * 1e4))?
}

fn report(file: &str, mem: Option<&str>) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let text = std::fs::read_to_string(file)?;
    let rows: Vec<Row> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
        .collect();
    let find = |target: &str, mix: &str| {
        rows.iter()
            .find(|r| r.get("target").map(String::as_str) == Some(target) && r["mix"] == mix)
    };
    let mut out = String::new();
    writeln!(
        out,
        "| target | mix | req/s | × direct | p50 ms | p99 ms | p99.9 ms | p99 × direct \
         | proxy CPU s/10k req | upstream CPU s/10k req | proxy CPU / upstream CPU | errors \
         | load avg |"
    )?;
    writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for row in &rows {
        let (target, mix) = (row["target"].as_str(), row["mix"].as_str());
        if let Some(note) = row.get("skipped") {
            writeln!(
                out,
                "| {target} | {mix} | skipped: {note} | | | | | | | | | | |"
            )?;
            continue;
        }
        let direct = find("direct", mix);
        let ratio = |key: &str| Some(num(row, key)? / num(direct?, key)?);
        let proxy_cpu = cpu_per_10k(row, "proxy");
        let upstream_cpu = cpu_per_10k(row, "upstream");
        let cpu_ratio = proxy_cpu.zip(upstream_cpu).map(|(p, u)| p / u);
        writeln!(
            out,
            "| {target} | {mix} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_opt(num(row, "rps"), 0),
            fmt_opt(ratio("rps"), 2),
            fmt_opt(num(row, "p50_ms"), 2),
            fmt_opt(num(row, "p99_ms"), 2),
            fmt_opt(num(row, "p999_ms"), 2),
            fmt_opt(ratio("p99_ms"), 2),
            fmt_opt(proxy_cpu, 3),
            fmt_opt(upstream_cpu, 3),
            fmt_opt(cpu_ratio, 2),
            row.get("errors").map_or("–", String::as_str),
            row.get("load1").map_or("–", String::as_str),
        )?;
    }

    let mem_row = match mem {
        Some(f) => std::fs::read_to_string(f)?
            .lines()
            .find(|l| l.contains("bytes_per_session="))
            .map(parse_line),
        None => None,
    };
    if let Some(m) = &mem_row {
        writeln!(out, "\n### Memory store at scale\n")?;
        writeln!(
            out,
            "| sessions | data bytes each | RSS delta | bytes per session | overhead per session |"
        )?;
        writeln!(out, "|---:|---:|---:|---:|---:|")?;
        writeln!(
            out,
            "| {} | {} | {} MiB | {} | {} |",
            m.get("sessions").map_or("–", String::as_str),
            m.get("data_bytes").map_or("–", String::as_str),
            fmt_opt(num(m, "rss_delta_bytes").map(|b| b / 1048576.0), 1),
            fmt_opt(num(m, "bytes_per_session"), 0),
            fmt_opt(num(m, "overhead_bytes"), 0),
        )?;
    }

    writeln!(out, "\n### Targets\n")?;
    writeln!(out, "| target | measured | met |")?;
    writeln!(out, "|---|---|---|")?;
    let ratio = |target: &str, mix: &str, key: &str| -> Option<f64> {
        let row = find(target, mix)?;
        let direct = find("direct", mix)?;
        Some(num(row, key)? / num(direct, key)?)
    };
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "not measured",
    };
    let mem_write = ratio("memory", "write", "rps");
    let mem_cpu = find("memory", "write")
        .and_then(|r| Some(cpu_per_10k(r, "proxy")? / cpu_per_10k(r, "upstream")?));
    writeln!(
        out,
        "| memory, every request updates: ≥ 0.35× direct req/s | {}× | {} |",
        fmt_opt(mem_write, 2),
        verdict(mem_write.map(|r| r >= 0.35))
    )?;
    writeln!(
        out,
        "| memory, every request updates: proxy CPU/request ≤ 2× upstream's | {}× | {} |",
        fmt_opt(mem_cpu, 2),
        verdict(mem_cpu.map(|r| r <= 2.0))
    )?;
    let mem_read = ratio("memory", "read", "rps");
    writeln!(
        out,
        "| memory, 10 % updates: ≥ 0.40× direct req/s | {}× | {} |",
        fmt_opt(mem_read, 2),
        verdict(mem_read.map(|r| r >= 0.40))
    )?;
    let mem_read_p99 = ratio("memory", "read", "p99_ms");
    writeln!(
        out,
        "| memory, 10 % updates: p99 ≤ 4× direct p99 | {}× | {} |",
        fmt_opt(mem_read_p99, 2),
        verdict(mem_read_p99.map(|r| r <= 4.0))
    )?;
    let fs_write = ratio("fs-nofsync", "write", "rps");
    writeln!(
        out,
        "| fs (fsync = false), every request updates: ≥ 0.25× direct req/s | {}× | {} |",
        fmt_opt(fs_write, 2),
        verdict(fs_write.map(|r| r >= 0.25))
    )?;
    // The sqlite store (fsync on) against the memory store, same mix, same run.
    let vs_memory = |mix: &str, key: &str| -> Option<f64> {
        Some(num(find("sqlite-fsync", mix)?, key)? / num(find("memory", mix)?, key)?)
    };
    for (mix, what, key, limit, at_least) in [
        (
            "write",
            "every request updates: ≥ 0.5× memory req/s",
            "rps",
            0.5,
            true,
        ),
        (
            "write",
            "every request updates: p99 ≤ 3× memory p99",
            "p99_ms",
            3.0,
            false,
        ),
        (
            "read",
            "10 % updates: ≥ 0.85× memory req/s",
            "rps",
            0.85,
            true,
        ),
        (
            "new",
            "every request creates: ≥ 0.5× memory req/s",
            "rps",
            0.5,
            true,
        ),
    ] {
        let r = vs_memory(mix, key);
        writeln!(
            out,
            "| sqlite (fsync = true), {what} | {}× | {} |",
            fmt_opt(r, 2),
            verdict(r.map(|r| if at_least { r >= limit } else { r <= limit }))
        )?;
    }
    // Issue [perf] #15: the proxy at the default log level (memory-info) against nginx's plain
    // hop in the same run, and the Redis store against the memory store (both at `warn`).
    let vs = |a: &str, b: &str, mix: &str, key: &str| -> Option<f64> {
        Some(num(find(a, mix)?, key)? / num(find(b, mix)?, key)?)
    };
    let cpu_vs = |a: &str, b: &str, mix: &str| -> Option<f64> {
        Some(cpu_per_10k(find(a, mix)?, "proxy")? / cpu_per_10k(find(b, mix)?, "proxy")?)
    };
    for (what, r, limit, at_least) in [
        (
            "memory, default log level, every request updates: proxy CPU/request ≤ 1.5× nginx's",
            cpu_vs("memory-info", "nginx", "write"),
            1.5,
            false,
        ),
        (
            "memory, default log level, every request updates: ≥ 0.6× nginx req/s",
            vs("memory-info", "nginx", "write", "rps"),
            0.6,
            true,
        ),
        (
            "memory, default log level, 10 % updates: ≥ 0.65× nginx req/s",
            vs("memory-info", "nginx", "read", "rps"),
            0.65,
            true,
        ),
        (
            "memory, default log level, 10 % updates: p99 ≤ 2× nginx p99",
            vs("memory-info", "nginx", "read", "p99_ms"),
            2.0,
            false,
        ),
        (
            "redis, every request updates: proxy CPU/request ≤ 1.4× the memory store's",
            cpu_vs("redis", "memory", "write"),
            1.4,
            false,
        ),
    ] {
        writeln!(
            out,
            "| {what} | {}× | {} |",
            fmt_opt(r, 2),
            verdict(r.map(|r| if at_least { r >= limit } else { r <= limit }))
        )?;
    }
    let overhead = mem_row.as_ref().and_then(|m| num(m, "overhead_bytes"));
    writeln!(
        out,
        "| memory store at 1M sessions: ≤ 400 bytes overhead per session | {} bytes | {} |",
        fmt_opt(overhead, 0),
        verdict(overhead.map(|o| o <= 400.0))
    )?;
    Ok(out)
}
