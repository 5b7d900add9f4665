//! The sqlite store's own numbers (issue [store]), without HTTP around it:
//!
//! - `reads`: a point read (`load`) run inline on the async worker against the same read on
//!   `spawn_blocking`, from 64 concurrent tasks on a 2-worker runtime (the proxy's shape on the
//!   2-core machine), with 10 % of the tasks' operations updates going through the writer.
//! - `scale`: a file of `--sessions` sessions (default 1,000,000, a tenth of them expired):
//!   how long the store takes to open, a page of 50 (the first and at random cursors), a point
//!   read, and the prune of the expired ones.
//! - `fill`: only the file of `scale` (`--sessions`, a tenth expired), left at `--path` for a
//!   proxy to open: `bench/sqlite_prune.sh` measures requests while the sweeper prunes it.
//!
//! ```not_rust
//! cargo run --release -p bench-tools --bin sqlite_bench -- reads --seconds 5
//! cargo run --release -p bench-tools --bin sqlite_bench -- scale --sessions 1000000
//! ```
//! `bench/sqlite_scale.sh` runs both and writes bench/SQLITE.md. Each prints `key=value` lines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use session_proxy::config::{Lifetime, SqliteConfig};
use session_proxy::session::{DataChange, Handle};
use session_proxy::store::sqlite::{Reads, SqliteStore};
use session_proxy::store::{Record, SessionStore, Update, now_ms};

/// A JSON object of about `len` bytes, different for every `i`.
fn data(i: u64, len: usize) -> String {
    let head = format!("{{\"visits\":{i},\"profile\":\"");
    let pad = len.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "p".repeat(pad))
}

fn config(path: &Path) -> SqliteConfig {
    SqliteConfig {
        path: path.to_owned(),
        mode: 0o600,
        fsync: false,
        timeout: Duration::from_secs(30),
    }
}

fn record(i: u64, expires_at: u64) -> Record {
    let now = now_ms();
    Record {
        data: Arc::from(data(i, 200)),
        created_at: now,
        updated_at: now,
        expires_at,
        version: 1,
        meta: Default::default(),
    }
}

/// Creates `n` sessions, `expired_every`-th of them already dead, 512 creates in flight so the
/// writer commits them in large groups. Returns the live ids.
async fn fill(store: &Arc<SqliteStore>, n: u64, expired_every: u64) -> anyhow::Result<Vec<Handle>> {
    let now = now_ms();
    let mut live = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let id = Handle::generate()?;
        let dead = expired_every != 0 && i % expired_every == 0;
        if !dead {
            live.push(id);
        }
        let expires_at = if dead { now - 1 } else { now + 86_400_000 };
        let store = store.clone();
        tasks.spawn(async move { store.create(&id, &record(i, expires_at)).await });
        if tasks.len() >= 512
            && let Some(created) = tasks.join_next().await
        {
            anyhow::ensure!(created??, "id collision");
        }
    }
    while let Some(created) = tasks.join_next().await {
        anyhow::ensure!(created??, "id collision");
    }
    Ok(live)
}

fn update() -> Update {
    let patch = serde_json::json!({"seen": now_ms()});
    Update {
        change: patch.as_object().cloned().map(DataChange::Patch),
        base: None,
        now: now_ms(),
        lifetime: Lifetime {
            idle_timeout: Duration::from_secs(86_400),
            absolute_timeout: None,
            touch_interval: Duration::from_secs(8_640),
            remember_max: std::time::Duration::from_secs(90 * 86400),
            remember_absolute: None,
            first_lifetime: None,
        },
        max_size: 16 * 1024,
        extends: true,
        visit: None,
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn reads(dir: &Path, seconds: u64) -> anyhow::Result<()> {
    let path = dir.join("reads.db");
    let store = Arc::new(SqliteStore::open_with(config(&path), Reads::Blocking).await?);
    let ids = Arc::new(fill(&store, 10_000, 0).await?);
    drop(store);
    for reads in [
        Reads::Inline,
        Reads::Blocking,
        Reads::Inline,
        Reads::Blocking,
    ] {
        let store = Arc::new(SqliteStore::open_with(config(&path), reads).await?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..64u64 {
            let (store, ids, stop) = (store.clone(), ids.clone(), stop.clone());
            tasks.spawn(async move {
                let mut h = Histogram::<u64>::new(3)?;
                let mut i = t * 7919;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let id = ids[(i * 2_654_435_761 % ids.len() as u64) as usize];
                    if i % 10 == 0 {
                        store.update(&id, &update()).await?;
                        continue;
                    }
                    let start = Instant::now();
                    anyhow::ensure!(store.load(&id).await?.is_some(), "a session is missing");
                    h.record(start.elapsed().as_micros() as u64)?;
                }
                anyhow::Ok(h)
            });
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Histogram::<u64>::new(3)?;
        while let Some(h) = tasks.join_next().await {
            all.add(h??)?;
        }
        println!(
            "bench=reads\treads={reads:?}\tloads_per_sec={:.0}\tp50_ms={:.3}\tp99_ms={:.3}\tp999_ms={:.3}",
            all.len() as f64 / seconds as f64,
            ms(&all, 0.5),
            ms(&all, 0.99),
            ms(&all, 0.999)
        );
    }
    Ok(())
}

/// Leaves a file of `sessions` sessions, a tenth of them expired, at `path`.
async fn fill_file(path: &Path, sessions: u64) -> anyhow::Result<()> {
    let store = Arc::new(SqliteStore::open(config(path)).await?);
    let start = Instant::now();
    let live = fill(&store, sessions, 10).await?;
    println!(
        "bench=fill\tsessions={sessions}\texpired={}\tsecs={:.1}",
        sessions - live.len() as u64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn scale(dir: &Path, sessions: u64) -> anyhow::Result<()> {
    let path = dir.join("scale.db");
    let store = Arc::new(SqliteStore::open(config(&path)).await?);
    let start = Instant::now();
    let live = fill(&store, sessions, 10).await?;
    let fill_secs = start.elapsed().as_secs_f64();
    drop(store);
    let bytes = std::fs::metadata(&path)?.len()
        + std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
    println!(
        "bench=fill\tsessions={sessions}\texpired={}\tsecs={fill_secs:.1}\tcreates_per_sec={:.0}\tfile_bytes={bytes}",
        sessions - live.len() as u64,
        sessions as f64 / fill_secs
    );
    // A fresh open, as a restarted proxy does it (the file is in the page cache).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let store = SqliteStore::open(config(&path)).await?;
    let open_ms = start.elapsed().as_secs_f64() * 1000.0;
    println!(
        "bench=open\tsessions={sessions}\topen_ms={open_ms:.1}\tcount={}",
        store.count().unwrap_or(0)
    );

    let mut pages = Histogram::<u64>::new(3)?;
    let start = Instant::now();
    let first = store.list(None, 50).await?;
    let first_ms = start.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(first.sessions.len() == 50, "a short first page");
    for k in 0..200u64 {
        let cursor = live[(k * 4_999) as usize % live.len()].to_string();
        let start = Instant::now();
        let page = store.list(Some(&cursor), 50).await?;
        pages.record(start.elapsed().as_micros() as u64)?;
        anyhow::ensure!(page.sessions.len() <= 50);
    }
    let mut loads = Histogram::<u64>::new(3)?;
    for k in 0..10_000u64 {
        let id = live[(k * 7_919) as usize % live.len()];
        let start = Instant::now();
        anyhow::ensure!(store.load(&id).await?.is_some(), "a session is missing");
        loads.record(start.elapsed().as_micros() as u64)?;
    }
    println!(
        "bench=page\tsessions={sessions}\tfirst_page_ms={first_ms:.2}\tpage50_p50_ms={:.3}\tpage50_max_ms={:.3}\tload_p50_ms={:.3}\tload_p99_ms={:.3}",
        ms(&pages, 0.5),
        pages.max() as f64 / 1000.0,
        ms(&loads, 0.5),
        ms(&loads, 0.99)
    );
    let start = Instant::now();
    let removed = store.prune(now_ms()).await?;
    let prune_secs = start.elapsed().as_secs_f64();
    println!(
        "bench=prune\tsessions={sessions}\tremoved={removed}\tsecs={prune_secs:.2}\tcount_after={}",
        store.count().unwrap_or(0)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_default();
    let (mut sessions, mut seconds, mut dir) = (1_000_000u64, 5u64, None::<PathBuf>);
    let mut path = None::<PathBuf>;
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))?;
        match arg.as_str() {
            "--sessions" => sessions = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            "--dir" => dir = Some(PathBuf::from(value)),
            "--path" => path = Some(PathBuf::from(value)),
            _ => anyhow::bail!("unknown flag {arg}"),
        }
    }
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir(),
    };
    let work = tempfile_dir(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        match what.as_str() {
            "reads" => reads(&work, seconds).await,
            "scale" => scale(&work, sessions).await,
            "fill" => match &path {
                Some(path) => fill_file(path, sessions).await,
                None => anyhow::bail!("fill needs --path FILE"),
            },
            _ => anyhow::bail!(
                "usage: sqlite_bench reads|scale|fill [--sessions N] [--seconds N] [--dir DIR] [--path FILE]"
            ),
        }
    });
    drop(rt);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// A fresh directory under `dir`, removed at the end.
fn tempfile_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let work = dir.join(format!("sqlite-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    Ok(work)
}
