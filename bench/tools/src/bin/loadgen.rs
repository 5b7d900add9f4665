//! The load generator of `bench/load.sh`, and its report.
//!
//! `loadgen run` opens `--connections` keep-alive HTTP/1.1 connections, one task each, and sends
//! GET requests back to back (a closed loop) for `--warmup` then `--duration` seconds (with
//! `--body N`, POSTs of an N-byte body with its `Content-Length` instead). Every
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
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

type ClientBuilder = http1::Builder;

struct RunArgs {
    url: Uri,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    cookies: bool,
    /// The bytes of each request's body: 0 sends GETs without one.
    body: usize,
    pids: Vec<(String, u32)>,
    clk_tck: f64,
    labels: Vec<(String, String)>,
}

fn usage() -> ! {
    eprintln!(
        "usage:\n  loadgen run --url URL [--connections N] [--warmup SECS] [--duration SECS] \
         [--no-cookies] [--body BYTES] [--pid NAME=PID]... [--clk-tck N] [--label KEY=VALUE]...\n  \
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
        body: 0,
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
            "--body" => a.body = args.next().unwrap_or_else(|| usage()).parse()?,
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

/// The machine's CPU time as `/proc/stat`'s first line counts it: (steal, all), in ticks. Steal is
/// time the hypervisor gave this VM's CPUs to someone else: on a shared host it is what makes one
/// row of a run slower than the next with no change of the code.
fn cpu_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow::anyhow!("/proc/stat: no cpu line"))?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    Ok((fields.get(7).copied().unwrap_or(0), fields.iter().sum()))
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
                    Bytes::from(vec![b'b'; a.body]),
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
        let ticks_before = cpu_ticks()?;
        let start = Instant::now();
        shared.measuring.store(true, Ordering::SeqCst);
        tokio::time::sleep(a.duration).await;
        shared.measuring.store(false, Ordering::SeqCst);
        let secs = start.elapsed().as_secs_f64();
        let ticks_after = cpu_ticks()?;
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
        let (steal, all) = (
            ticks_after.0.saturating_sub(ticks_before.0),
            ticks_after.1.saturating_sub(ticks_before.1),
        );
        if all > 0 {
            fields.push((
                "steal_pct".to_owned(),
                format!("{:.1}", steal as f64 * 100.0 / all as f64),
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
    body: Bytes,
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
            .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
        else {
            r.errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while !shared.stop.load(Ordering::Relaxed) {
            let method = if body.is_empty() {
                Method::GET
            } else {
                Method::POST
            };
            let mut req = Request::builder()
                .method(method)
                .uri(path.as_str())
                .header(HOST, host.clone());
            if cookies && !jar.is_empty() {
                let header: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
                req = req.header(COOKIE, header.join("; "));
            }
            let Ok(req) = req.body(Full::new(body.clone())) else {
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

/// CPU seconds per 10,000 requests for `who` in `row`: `cpu10k_WHO`, which `report` derives
/// for each round's row from its `cpu_WHO` and `requests`, and `cases` carries as a median.
fn cpu_per_10k(row: &Row, who: &str) -> Option<f64> {
    num(row, &format!("cpu10k_{who}"))
}

/// Adds `cpu10k_WHO` to a round's row: `cpu_WHO` seconds over its requests, per 10,000.
fn add_cpu_per_10k(row: &mut Row) {
    let Some(requests) = num(row, "requests").filter(|&r| r > 0.0) else {
        return;
    };
    for who in ["proxy", "upstream", "redis"] {
        if let Some(cpu) = num(row, &format!("cpu_{who}")) {
            row.insert(format!("cpu10k_{who}"), (cpu / requests * 1e4).to_string());
        }
    }
}

/// The distinct values of `items`, in the order they first appear.
fn first_seen<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// What a target compares between two rows (or within one).
#[derive(Clone, Copy)]
enum Metric {
    Rps,
    P99,
    /// The proxy's CPU per request.
    Cpu,
    /// The proxy's CPU per request over the upstream's, within one row.
    CpuVsUpstream,
}

impl Metric {
    fn of(self, row: &Row) -> Option<f64> {
        match self {
            Metric::Rps => num(row, "rps"),
            Metric::P99 => num(row, "p99_ms"),
            Metric::Cpu => cpu_per_10k(row, "proxy"),
            Metric::CpuVsUpstream => {
                Some(cpu_per_10k(row, "proxy")? / cpu_per_10k(row, "upstream")?)
            }
        }
    }
}

/// The bound a target sets on its ratio.
#[derive(Clone, Copy)]
enum Limit {
    AtLeast(f64),
    AtMost(f64),
}

/// One line of the target check: `metric` of the case `row` over the same of `base` (or on
/// its own without one), against `limit`.
struct Check {
    what: &'static str,
    row: (&'static str, &'static str),
    base: Option<(&'static str, &'static str)>,
    metric: Metric,
    limit: Limit,
}

impl Check {
    /// The ratio, with `look` finding a case's row (the medians, or one round's).
    fn eval<'a>(&self, look: &dyn Fn(&str, &str) -> Option<&'a Row>) -> Option<f64> {
        let top = self.metric.of(look(self.row.0, self.row.1)?)?;
        match self.base {
            Some((t, m)) => Some(top / self.metric.of(look(t, m)?)?),
            None => Some(top),
        }
    }
    fn met(&self, r: f64) -> bool {
        match self.limit {
            Limit::AtLeast(limit) => r >= limit,
            Limit::AtMost(limit) => r <= limit,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count), or `None` if empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The keys whose value in a case's row is the median over its rounds. CPU is first turned
/// into seconds per 10,000 requests in each round (`cpu10k_*`), so the median is of the
/// per-request figure, not of seconds over rounds of different lengths.
const MEDIAN_KEYS: [&str; 8] = [
    "rps",
    "steal_pct",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "cpu10k_proxy",
    "cpu10k_upstream",
    "cpu10k_redis",
];

/// One row per case (target, mix), in the order of first appearance: with one round it is that
/// round's row; with several (`ROUNDS` in load.sh, `round=K` in each line) the median of each
/// of [`MEDIAN_KEYS`], the sum of the errors, the highest load average, and `rounds=N`. A case
/// every round of which was skipped stays a skipped row; skipped rounds of a case that ran in
/// other rounds are left out of its medians.
fn cases(rows: &[Row]) -> Vec<Row> {
    first_seen(rows.iter().map(|r| (r["target"].clone(), r["mix"].clone())))
        .into_iter()
        .map(|(target, mix)| {
            let all: Vec<&Row> = rows
                .iter()
                .filter(|r| r["target"] == target && r["mix"] == mix)
                .collect();
            let ran: Vec<&Row> = all
                .iter()
                .copied()
                .filter(|r| !r.contains_key("skipped"))
                .collect();
            if ran.is_empty() {
                return all[0].clone();
            }
            let mut out = Row::new();
            out.insert("target".into(), target);
            out.insert("mix".into(), mix);
            out.insert("rounds".into(), ran.len().to_string());
            for key in MEDIAN_KEYS {
                if let Some(m) = median(ran.iter().filter_map(|r| num(r, key)).collect()) {
                    out.insert(key.into(), m.to_string());
                }
            }
            let errors: f64 = ran.iter().filter_map(|r| num(r, "errors")).sum();
            out.insert("errors".into(), errors.to_string());
            if let Some(load) = ran
                .iter()
                .filter_map(|r| num(r, "load1"))
                .max_by(f64::total_cmp)
            {
                out.insert("load1".into(), format!("{load:.2}"));
            }
            out
        })
        .collect()
}

fn report(file: &str, mem: Option<&str>) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let text = std::fs::read_to_string(file)?;
    let mut rounds: Vec<Row> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
        .collect();
    rounds.iter_mut().for_each(add_cpu_per_10k);
    let rows = cases(&rounds);
    let find = |target: &str, mix: &str| {
        rows.iter()
            .find(|r| r.get("target").map(String::as_str) == Some(target) && r["mix"] == mix)
    };
    // Round `k`'s own row of a case, for the per-round ratios of the target check.
    let find_round = |target: &str, mix: &str, k: &str| {
        rounds.iter().find(|r| {
            r["target"] == target
                && r["mix"] == mix
                && r.get("round").map_or("1", String::as_str) == k
                && !r.contains_key("skipped")
        })
    };
    let round_ids = first_seen(
        rounds
            .iter()
            .map(|r| r.get("round").map_or("1", String::as_str)),
    );
    let mut out = String::new();
    writeln!(
        out,
        "| target | mix | req/s | × direct | p50 ms | p99 ms | p99.9 ms | p99 × direct \
         | proxy CPU s/10k req | upstream CPU s/10k req | proxy CPU / upstream CPU | errors \
         | load avg | steal % | rounds |"
    )?;
    writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for row in &rows {
        let (target, mix) = (row["target"].as_str(), row["mix"].as_str());
        if let Some(note) = row.get("skipped") {
            writeln!(
                out,
                "| {target} | {mix} | skipped: {note} | | | | | | | | | | | | |"
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
            "| {target} | {mix} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
            fmt_opt(num(row, "steal_pct"), 0),
            row.get("rounds").map_or("1", String::as_str),
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

    // Each target is a ratio of two rows of one run: computed on the cases' medians, and on
    // each round's own rows (one round's rows ran minutes apart at most, so drift of the
    // shared machine shows as the spread of these, not as a bias of one row).
    let checks = [
        Check {
            what: "memory, every request updates: ≥ 0.35× direct req/s",
            row: ("memory", "write"),
            base: Some(("direct", "write")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.35),
        },
        Check {
            what: "memory, every request updates: proxy CPU/request ≤ 2× upstream's",
            row: ("memory", "write"),
            base: None,
            metric: Metric::CpuVsUpstream,
            limit: Limit::AtMost(2.0),
        },
        Check {
            what: "memory, 10 % updates: ≥ 0.40× direct req/s",
            row: ("memory", "read"),
            base: Some(("direct", "read")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.40),
        },
        Check {
            what: "memory, 10 % updates: p99 ≤ 4× direct p99",
            row: ("memory", "read"),
            base: Some(("direct", "read")),
            metric: Metric::P99,
            limit: Limit::AtMost(4.0),
        },
        Check {
            what: "fs (fsync = false), every request updates: ≥ 0.25× direct req/s",
            row: ("fs-nofsync", "write"),
            base: Some(("direct", "write")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.25),
        },
        // Issue [store] #11: the sqlite store (fsync on) against the memory store.
        Check {
            what: "sqlite (fsync = true), every request updates: ≥ 0.5× memory req/s",
            row: ("sqlite-fsync", "write"),
            base: Some(("memory", "write")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.5),
        },
        Check {
            what: "sqlite (fsync = true), every request updates: p99 ≤ 3× memory p99",
            row: ("sqlite-fsync", "write"),
            base: Some(("memory", "write")),
            metric: Metric::P99,
            limit: Limit::AtMost(3.0),
        },
        Check {
            what: "sqlite (fsync = true), 10 % updates: ≥ 0.85× memory req/s",
            row: ("sqlite-fsync", "read"),
            base: Some(("memory", "read")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.85),
        },
        Check {
            what: "sqlite (fsync = true), every request creates: ≥ 0.5× memory req/s",
            row: ("sqlite-fsync", "new"),
            base: Some(("memory", "new")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.5),
        },
        // Issue [perf] #15: the proxy at the default log level (memory-info) against nginx's
        // plain hop, and the Redis store against the memory store (both at `warn`).
        Check {
            what: "memory, default log level, every request updates: proxy CPU/request ≤ 1.5× nginx's",
            row: ("memory-info", "write"),
            base: Some(("nginx", "write")),
            metric: Metric::Cpu,
            limit: Limit::AtMost(1.5),
        },
        Check {
            what: "memory, default log level, every request updates: ≥ 0.6× nginx req/s",
            row: ("memory-info", "write"),
            base: Some(("nginx", "write")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.6),
        },
        Check {
            what: "memory, default log level, 10 % updates: ≥ 0.65× nginx req/s",
            row: ("memory-info", "read"),
            base: Some(("nginx", "read")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.65),
        },
        Check {
            what: "memory, default log level, 10 % updates: p99 ≤ 2× nginx p99",
            row: ("memory-info", "read"),
            base: Some(("nginx", "read")),
            metric: Metric::P99,
            limit: Limit::AtMost(2.0),
        },
        Check {
            what: "redis, every request updates: proxy CPU/request ≤ 1.4× the memory store's",
            row: ("redis", "write"),
            base: Some(("memory", "write")),
            metric: Metric::Cpu,
            limit: Limit::AtMost(1.4),
        },
        // Issue [postgres] #26: the PostgreSQL store against the Redis and memory stores.
        Check {
            what: "postgres (synchronous_commit = off), every request updates: ≥ 1.0× redis req/s",
            row: ("postgres", "write"),
            base: Some(("redis", "write")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(1.0),
        },
        Check {
            what: "postgres (synchronous_commit = off), every request updates: ≥ 0.4× memory req/s",
            row: ("postgres", "write"),
            base: Some(("memory", "write")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.4),
        },
        Check {
            what: "postgres-sync (PostgreSQL's defaults), every request updates: ≥ 1.0× redis req/s",
            row: ("postgres-sync", "write"),
            base: Some(("redis", "write")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(1.0),
        },
        Check {
            what: "postgres-sync (PostgreSQL's defaults), every request updates: ≥ 0.4× memory req/s",
            row: ("postgres-sync", "write"),
            base: Some(("memory", "write")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.4),
        },
        // Issue [perf-3] #28: the proxy's own cost, against nginx and against its own bare hop
        // (bench/tools/src/bin/bare_hop.rs), and the default store against the memory store.
        Check {
            what: "memory, default log level, every request updates: proxy CPU/request ≤ 1.25× nginx's",
            row: ("memory-info", "write"),
            base: Some(("nginx", "write")),
            metric: Metric::Cpu,
            limit: Limit::AtMost(1.25),
        },
        Check {
            what: "memory, default log level, every request updates: proxy CPU/request ≤ 1.15× the bare hop's",
            row: ("memory-info", "write"),
            base: Some(("bare-hop", "write")),
            metric: Metric::Cpu,
            limit: Limit::AtMost(1.15),
        },
        Check {
            what: "memory, default log level, every request updates: ≥ 0.75× nginx req/s",
            row: ("memory-info", "write"),
            base: Some(("nginx", "write")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.75),
        },
        Check {
            what: "memory, default log level, 10 % updates: ≥ 0.8× nginx req/s",
            row: ("memory-info", "read"),
            base: Some(("nginx", "read")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.8),
        },
        Check {
            what: "memory, default log level, 10 % updates: p99 ≤ 1.5× nginx p99",
            row: ("memory-info", "read"),
            base: Some(("nginx", "read")),
            metric: Metric::P99,
            limit: Limit::AtMost(1.5),
        },
        Check {
            what: "sqlite (fsync = true), every request updates: ≥ 0.6× memory req/s",
            row: ("sqlite-fsync", "write"),
            base: Some(("memory", "write")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.6),
        },
        Check {
            what: "sqlite (fsync = true), 10 % updates: ≥ 0.9× memory req/s",
            row: ("sqlite-fsync", "read"),
            base: Some(("memory", "read")),
            metric: Metric::Rps,
            limit: Limit::AtLeast(0.9),
        },
        Check {
            what: "redis, every request updates: proxy CPU/request ≤ 1.3× the memory store's",
            row: ("redis", "write"),
            base: Some(("memory", "write")),
            metric: Metric::Cpu,
            limit: Limit::AtMost(1.3),
        },
    ];

    writeln!(out, "\n### Targets\n")?;
    if round_ids.len() > 1 {
        writeln!(
            out,
            "Measured on the medians of {} rounds; \"each round\" is the same ratio on each \
             round's own rows, and \"met\" says yes only if the medians meet the target.\n",
            round_ids.len()
        )?;
    }
    writeln!(out, "| target | measured | each round | met |")?;
    writeln!(out, "|---|---|---|---|")?;
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "not measured",
    };
    for check in &checks {
        let r = check.eval(&find);
        let each: Vec<String> = round_ids
            .iter()
            .map(|k| fmt_opt(check.eval(&|t, m| find_round(t, m, k)), 2))
            .collect();
        writeln!(
            out,
            "| {} | {}× | {} | {} |",
            check.what,
            fmt_opt(r, 2),
            each.join(", "),
            verdict(r.map(|r| check.met(r)))
        )?;
    }
    let overhead = mem_row.as_ref().and_then(|m| num(m, "overhead_bytes"));
    writeln!(
        out,
        "| memory store at 1M sessions: ≤ 400 bytes overhead per session | {} bytes | – | {} |",
        fmt_opt(overhead, 0),
        verdict(overhead.map(|o| o <= 400.0))
    )?;
    Ok(out)
}
