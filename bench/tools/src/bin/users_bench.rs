//! The user index's size (issue [users]): a store filled with `--sessions` sessions (default
//! 1,000,000) spread over `--users` users (default 100,000), with `--index on` or `off`
//! (`session.user_key`). Run it twice and subtract: the difference is the index.
//!
//! - `memory`: the process's `VmRSS` before and after filling a `MemoryStore` (each session's
//!   data its own allocation, as in the proxy), and the index's entries.
//! - `sqlite --path FILE`: the file's size after filling it through `SqliteStore::create` (the
//!   writer thread, 256 creates in flight) and a checkpoint, from `page_count * page_size`.
//!
//! Both also time `user_sessions` for 1000 users (one user's ~10 sessions, read back and
//! checked). Run with
//! ```not_rust
//! cargo run --release -p bench-tools --bin users_bench -- memory --index on
//! cargo run --release -p bench-tools --bin users_bench -- sqlite --path /tmp/u.db --index off
//! ```
//! Each prints one line of tab-separated `key=value` fields.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_tools::rss_bytes;
use session_proxy::config::SqliteConfig;
use session_proxy::session::Handle;
use session_proxy::session::UserKey;
use session_proxy::store::memory::MemoryStore;
use session_proxy::store::sqlite::{Reads, SqliteStore};
use session_proxy::store::{Record, SessionStore, now_ms};

/// About 200 bytes of JSON naming user `i % users`, different for every `i`.
fn data(i: u64, users: u64) -> String {
    format!(
        "{{\"user\":\"user-{}\",\"visits\":{i},\"profile\":\"{}\"}}",
        i % users,
        "p".repeat(160)
    )
}

fn record(i: u64, users: u64, now: u64) -> Record {
    Record {
        data: Arc::from(data(i, users)),
        created_at: now,
        updated_at: now,
        expires_at: now + 86_400_000,
        version: 1,
        meta: Default::default(),
    }
}

/// Mean time of one user's lookup, over 1000 users (0 without an index).
async fn lookups(
    store: &dyn SessionStore,
    users: u64,
    indexed: bool,
) -> anyhow::Result<(f64, usize)> {
    if !indexed {
        return Ok((0.0, 0));
    }
    let (start, mut found) = (Instant::now(), 0);
    for u in 0..1000u64 {
        found += store
            .user_sessions(&format!("user-{}", u * (users / 1000).max(1) % users))
            .await?
            .len();
    }
    Ok((start.elapsed().as_secs_f64() * 1e6 / 1000.0, found))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_default();
    let (mut sessions, mut users, mut indexed, mut path) = (1_000_000u64, 100_000u64, true, None);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))?;
        match arg.as_str() {
            "--sessions" => sessions = value.parse()?,
            "--users" => users = value.parse()?,
            "--index" => indexed = value == "on",
            "--path" => path = Some(std::path::PathBuf::from(value)),
            _ => anyhow::bail!(
                "usage: users_bench memory|sqlite [--sessions N] [--users N] [--index on|off] [--path FILE]"
            ),
        }
    }
    anyhow::ensure!(users > 0, "--users must be positive");
    let key = indexed.then(|| UserKey::new("user"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let now = now_ms();
    match kind.as_str() {
        "memory" => {
            let store = MemoryStore::new(key);
            let before = rss_bytes()?;
            let start = Instant::now();
            rt.block_on(async {
                for i in 0..sessions {
                    let id = Handle::generate()?;
                    anyhow::ensure!(
                        store.create(&id, &record(i, users, now)).await?,
                        "id collision"
                    );
                }
                Ok(())
            })?;
            let fill = start.elapsed();
            let after = rss_bytes()?;
            let (lookup_us, found) = rt.block_on(lookups(&store, users, indexed))?;
            println!(
                "store=memory\tindex={}\tsessions={sessions}\tusers={users}\tentries={}\trss_delta_bytes={}\tper_session_bytes={:.0}\tfill_s={:.1}\tlookup_us={lookup_us:.1}\tfound={found}",
                if indexed { "on" } else { "off" },
                store.user_entries(),
                after.saturating_sub(before),
                after.saturating_sub(before) as f64 / sessions as f64,
                fill.as_secs_f64()
            );
        }
        "sqlite" => {
            let path = path.ok_or_else(|| anyhow::anyhow!("sqlite needs --path FILE"))?;
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            let config = SqliteConfig {
                path: path.clone(),
                mode: 0o600,
                fsync: false,
                timeout: Duration::from_secs(30),
            };
            let start = Instant::now();
            let (lookup_us, found) = rt.block_on(async {
                let store = Arc::new(SqliteStore::open_indexed(config, Reads::Inline, key).await?);
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..sessions {
                    if tasks.len() >= 256 {
                        tasks.join_next().await.transpose()?.transpose()?;
                    }
                    let store = store.clone();
                    tasks.spawn(async move {
                        let id = Handle::generate()?;
                        anyhow::ensure!(
                            store.create(&id, &record(i, users, now)).await?,
                            "id collision"
                        );
                        Ok(())
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done??;
                }
                lookups(&*store, users, indexed).await
            })?;
            let fill = start.elapsed();
            let conn = rusqlite::Connection::open(&path)?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let bytes = pages * page;
            println!(
                "store=sqlite\tindex={}\tsessions={sessions}\tusers={users}\tfile_bytes={bytes}\tper_session_bytes={:.0}\tfill_s={:.1}\tlookup_us={lookup_us:.1}\tfound={found}",
                if indexed { "on" } else { "off" },
                bytes as f64 / sessions as f64,
                fill.as_secs_f64()
            );
        }
        _ => anyhow::bail!("usage: users_bench memory|sqlite ..."),
    }
    Ok(())
}
