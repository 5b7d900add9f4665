//! The parts of `bench/admin_list.sh` (issue [admin], "Listing at scale"): how long a page of
//! the session listing takes at a million sessions, and what paging through the whole store
//! does to the proxy's own requests.
//!
//! - `list_bench fill-fs --dir DIR [--sessions N]` writes N sessions straight into DIR in the fs
//!   store's format (`session_{id}.json` holding `Record::to_json`, mtime = expiry, no fsync),
//!   on two threads: much faster than N creates through the store, and the same files.
//! - `list_bench pages --store memory|fs [--dir DIR] [--sessions N] [--samples S]` opens the
//!   store through `session_proxy::store::open` (fs: on DIR as filled, timing the open, which
//!   builds the index; memory: then creates N sessions through the store), times S pages of 50
//!   after cursors at the start, the middle and the end of the id space, then walks the whole
//!   store with pages of 1000 and checks it saw every session once, in order.
//! - `list_bench serve --store memory|fs [--dir DIR] [--sessions N] --upstream ADDR
//!   --walk-flag FILE` runs the real proxy in this process (`Proxy::open` + `Proxy::serve` on
//!   127.0.0.1:0, on a runtime built as `main.rs` builds it), filled like `pages`, and prints
//!   `list-bench listening on http://ADDR`. While FILE exists, a task on the same runtime (where
//!   an admin API handler would run) walks the store through `proxy.store()` with pages of
//!   1000, over and over; when FILE is removed it prints what it walked. This is the honest
//!   way to page a memory store while loadgen drives the proxy: the proxy has no admin API yet.
//!
//! Every output is one line of tab-separated `key=value` fields.

use bench_tools::rss_bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use session_proxy::config::RawConfig;
use session_proxy::session::Handle;
use session_proxy::store::{self, Record, SessionStore, now_ms};

struct Args {
    store: String,
    dir: Option<PathBuf>,
    sessions: u64,
    samples: usize,
    upstream: Option<String>,
    walk_flag: Option<PathBuf>,
}

fn usage() -> anyhow::Error {
    anyhow::anyhow!(
        "usage: list_bench fill-fs --dir DIR [--sessions N]\n       \
         list_bench pages --store memory|fs [--dir DIR] [--sessions N] [--samples S]\n       \
         list_bench serve --store memory|fs [--dir DIR] [--sessions N] --upstream ADDR \
         --walk-flag FILE"
    )
}

fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut a = Args {
        store: "memory".to_owned(),
        dir: None,
        sessions: 1_000_000,
        samples: 200,
        upstream: None,
        walk_flag: None,
    };
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(usage)?;
        match arg.as_str() {
            "--store" => a.store = value,
            "--dir" => a.dir = Some(value.into()),
            "--sessions" => a.sessions = value.parse()?,
            "--samples" => a.samples = value.parse()?,
            "--upstream" => a.upstream = Some(value),
            "--walk-flag" => a.walk_flag = Some(value.into()),
            _ => return Err(usage()),
        }
    }
    anyhow::ensure!(
        a.store == "memory" || a.store == "fs",
        "--store is memory or fs"
    );
    anyhow::ensure!(
        a.store == "memory" || a.dir.is_some(),
        "the fs store needs --dir"
    );
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().ok_or_else(usage)?;
    let a = parse(args)?;
    match command.as_str() {
        "fill-fs" => fill_fs(&a),
        "pages" => runtime()?.block_on(pages(&a)),
        "serve" => runtime()?.block_on(serve(&a)),
        _ => Err(usage()),
    }
}

/// As `main.rs` builds it: one worker per core the process may run on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// A JSON object of exactly `len` bytes, different for every `i` (as in mem_bench).
fn data(i: u64, len: usize) -> String {
    let head = format!("{{\"visits\":{i},\"profile\":\"");
    let pad = len.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "p".repeat(pad))
}

fn record(i: u64, now: u64) -> Record {
    Record {
        data: Arc::from(data(i, 200)),
        created_at: now,
        updated_at: now,
        expires_at: now + 86_400_000,
        version: 1,
        meta: Default::default(),
    }
}

fn store_toml(a: &Args) -> String {
    match &a.dir {
        Some(dir) if a.store == "fs" => format!(
            "[store]\nkind = \"fs\"\npath = {:?}\nfsync = false\n",
            dir.display().to_string()
        ),
        _ => "[store]\nkind = \"memory\"\n".to_owned(),
    }
}

fn fill_fs(a: &Args) -> anyhow::Result<()> {
    let dir = a.dir.clone().ok_or_else(usage)?;
    std::fs::create_dir_all(&dir)?;
    let now = now_ms();
    let start = Instant::now();
    let threads = 2u64;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let dir = &dir;
                s.spawn(move || -> anyhow::Result<()> {
                    let mut i = t;
                    while i < a.sessions {
                        let id = Handle::generate()?;
                        let r = record(i, now);
                        let path = dir.join(format!("session_{id}.json"));
                        std::fs::write(&path, r.to_json()?)?;
                        std::fs::File::options()
                            .write(true)
                            .open(&path)?
                            .set_modified(UNIX_EPOCH + Duration::from_millis(r.expires_at))?;
                        i += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a fill thread panicked"))??;
        }
        Ok(())
    })?;
    println!(
        "fill=fs\tsessions={}\tfill_secs={:.1}",
        a.sessions,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

struct OpenedStore {
    store: Arc<dyn SessionStore>,
    /// fs: the index is built here.
    open_secs: f64,
    /// What the open added to the RSS (fs: the index).
    open_rss: u64,
    /// memory: creates through the store.
    fill_secs: f64,
}

/// Opens the store as the proxy would, then fills a memory store.
async fn open(a: &Args) -> anyhow::Result<OpenedStore> {
    let config =
        RawConfig::from_toml("list_bench.toml", &store_toml(a))?.validate("list_bench.toml")?;
    let (start, rss) = (Instant::now(), rss_bytes()?);
    let store = store::open(&config.store).await?.store;
    let open_secs = start.elapsed().as_secs_f64();
    let open_rss = rss_bytes()?.saturating_sub(rss);
    let fill_secs = fill_memory(a, &*store).await?;
    Ok(OpenedStore {
        store,
        open_secs,
        open_rss,
        fill_secs,
    })
}

async fn fill_memory(a: &Args, store: &dyn SessionStore) -> anyhow::Result<f64> {
    if a.store != "memory" {
        return Ok(0.0);
    }
    let now = now_ms();
    let start = Instant::now();
    for i in 0..a.sessions {
        anyhow::ensure!(
            store.create(&Handle::generate()?, &record(i, now)).await?,
            "id collision"
        );
    }
    Ok(start.elapsed().as_secs_f64())
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// How many sessions the walk must see: the memory store holds what it was filled with; an fs
/// directory may be reused from an earlier run (whose load runs added their clients' sessions),
/// so its session files are counted.
fn expected(a: &Args) -> anyhow::Result<u64> {
    match &a.dir {
        Some(dir) if a.store == "fs" => {
            let mut n = 0;
            for entry in std::fs::read_dir(dir)? {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                n += u64::from(name.starts_with("session_") && name.ends_with(".json"));
            }
            Ok(n)
        }
        _ => Ok(a.sessions),
    }
}

async fn pages(a: &Args) -> anyhow::Result<()> {
    let want = expected(a)?;
    let opened = open(a).await?;
    let store = opened.store;
    let mut fields = vec![
        format!("store={}", a.store),
        format!("sessions={want}"),
        format!("open_secs={:.2}", opened.open_secs),
        format!("open_rss_mib={:.1}", opened.open_rss as f64 / 1048576.0),
        format!("fill_secs={:.1}", opened.fill_secs),
    ];
    // The ids are base64url: in byte order '-' < digits < 'A'..'Z' < '_' < 'a'..'z'. 'V' is
    // the 33rd of the 64 characters (the middle); after "zz…" about n/4096 ids remain, after
    // "z…" about n/64 (enough for a full page from 5,000 sessions on).
    let end = if a.sessions >= 400_000 { "zz" } else { "z" };
    for (name, cursor) in [("start", None), ("middle", Some("V")), ("end", Some(end))] {
        let cursor = cursor.map(|p| format!("{p}{}", "-".repeat(32 - p.len())));
        let mut times = Vec::with_capacity(a.samples);
        for _ in 0..a.samples {
            let t = Instant::now();
            let page = store.list(cursor.as_deref(), 50).await?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(page.sessions.len() == 50, "a short page at the {name}");
        }
        times.sort_by(f64::total_cmp);
        fields.push(format!("page50_{name}_p50_ms={:.3}", quantile(&times, 0.5)));
        fields.push(format!("page50_{name}_max_ms={:.3}", quantile(&times, 1.0)));
    }
    let walk = walk(&*store, 1000).await?;
    anyhow::ensure!(
        walk.sessions == want,
        "the walk saw {} sessions of {want}",
        walk.sessions
    );
    fields.extend(walk.fields("walk1000"));
    println!("{}", fields.join("\t"));
    Ok(())
}

struct Walk {
    sessions: u64,
    pages: u64,
    secs: f64,
    page_ms: Vec<f64>,
}

impl Walk {
    fn fields(mut self, name: &str) -> Vec<String> {
        self.page_ms.sort_by(f64::total_cmp);
        let q = |q| {
            if self.page_ms.is_empty() {
                0.0
            } else {
                quantile(&self.page_ms, q)
            }
        };
        vec![
            format!("{name}_sessions={}", self.sessions),
            format!("{name}_pages={}", self.pages),
            format!("{name}_secs={:.2}", self.secs),
            format!("{name}_page_p50_ms={:.3}", q(0.5)),
            format!("{name}_page_p99_ms={:.3}", q(0.99)),
            format!("{name}_page_max_ms={:.3}", q(1.0)),
        ]
    }
}

/// One walk over the whole store, checking every id comes once and in order.
async fn walk(store: &dyn SessionStore, limit: usize) -> anyhow::Result<Walk> {
    let mut w = Walk {
        sessions: 0,
        pages: 0,
        secs: 0.0,
        page_ms: Vec::new(),
    };
    let start = Instant::now();
    let mut cursor: Option<String> = None;
    let mut last: Option<Handle> = None;
    loop {
        let t = Instant::now();
        let page = store.list(cursor.as_deref(), limit).await?;
        w.page_ms.push(t.elapsed().as_secs_f64() * 1e3);
        w.pages += 1;
        for (id, _) in &page.sessions {
            anyhow::ensure!(last.is_none_or(|l| l < *id), "out of order or repeated");
            last = Some(*id);
            w.sessions += 1;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    w.secs = start.elapsed().as_secs_f64();
    Ok(w)
}

async fn serve(a: &Args) -> anyhow::Result<()> {
    let upstream = a.upstream.clone().ok_or_else(usage)?;
    let flag = a.walk_flag.clone().ok_or_else(usage)?;
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\nshutdown_timeout = \"1s\"\n{}",
        store_toml(a)
    );
    let config = RawConfig::from_toml("list_bench.toml", &toml)?.validate("list_bench.toml")?;
    let start = Instant::now();
    let proxy = session_proxy::Proxy::open(config).await?;
    let open_secs = start.elapsed().as_secs_f64();
    let store = proxy.store();
    let fill_secs = fill_memory(a, &*store).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "store={}\topen_secs={open_secs:.2}\tfill_secs={fill_secs:.1}",
        a.store
    );
    println!("list-bench listening on http://{}", listener.local_addr()?);
    let walker = tokio::spawn(walker(store, flag));
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    };
    proxy.serve(listener, shutdown).await;
    walker.abort();
    Ok(())
}

/// Walks while `flag` exists, then prints one line for all the walks it made.
async fn walker(store: Arc<dyn SessionStore>, flag: PathBuf) {
    loop {
        while !flag.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut all = Walk {
            sessions: 0,
            pages: 0,
            secs: 0.0,
            page_ms: Vec::new(),
        };
        let (mut walks, mut complete) = (0u64, 0u64);
        let start = Instant::now();
        let mut cursor: Option<String> = None;
        while flag.exists() {
            let t = Instant::now();
            match store.list(cursor.as_deref(), 1000).await {
                Ok(page) => {
                    all.page_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    all.pages += 1;
                    all.sessions += page.sessions.len() as u64;
                    cursor = page.next;
                    if cursor.is_none() {
                        walks += 1;
                        complete += 1;
                    }
                }
                Err(error) => {
                    println!("walk_error={error}");
                    cursor = None;
                    walks += 1;
                }
            }
        }
        all.secs = start.elapsed().as_secs_f64();
        let mut fields = vec![
            format!("walks_started={}", walks + u64::from(cursor.is_some())),
            format!("walks_complete={complete}"),
        ];
        fields.extend(all.fields("walk"));
        println!("{}", fields.join("\t"));
    }
}
