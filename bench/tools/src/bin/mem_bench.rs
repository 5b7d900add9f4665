//! Memory benchmark of the memory store: how many bytes one stored session costs.
//!
//! Inserts `--sessions` sessions (default 1,000,000) of `--data-bytes` bytes of JSON each
//! (default 200) through `MemoryStore::create`, each with its own data allocation as in the
//! proxy, and reads `VmRSS` from `/proc/self/status` before and after. The overhead is what
//! a session costs beyond its data: the id, the record's fields, the map and the allocator.
//!
//! Run with
//! ```not_rust
//! cargo run --release --example mem_bench -- --sessions 1000000 --data-bytes 200
//! ```
//! It prints one line of tab-separated `key=value` fields (read by `loadgen report`).

use bench_tools::rss_bytes;
use std::sync::Arc;

use session_proxy::session::Handle;
use session_proxy::store::memory::MemoryStore;
use session_proxy::store::{Record, SessionStore as _, now_ms};

/// A JSON object of exactly `len` bytes (for `len >= 32`), different for every `i`.
fn data(i: u64, len: usize) -> String {
    let head = format!("{{\"visits\":{i},\"profile\":\"");
    let pad = len.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "p".repeat(pad))
}

fn main() -> anyhow::Result<()> {
    let (mut sessions, mut data_bytes) = (1_000_000u64, 200usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))?;
        match arg.as_str() {
            "--sessions" => sessions = value.parse()?,
            "--data-bytes" => data_bytes = value.parse()?,
            _ => anyhow::bail!("usage: mem_bench [--sessions N] [--data-bytes N]"),
        }
    }
    anyhow::ensure!(data_bytes >= 32, "--data-bytes must be at least 32");
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let store = MemoryStore::default();
    let now = now_ms();
    // Ids are generated inside the loop: a Vec of them would add to the RSS delta.
    let before = rss_bytes()?;
    let start = std::time::Instant::now();
    rt.block_on(async {
        for i in 0..sessions {
            let id = Handle::generate()?;
            let record = Record {
                data: Arc::from(data(i, data_bytes)),
                created_at: now,
                updated_at: now,
                expires_at: now + 86_400_000,
                version: 1,
                meta: Default::default(),
            };
            anyhow::ensure!(store.create(&id, &record).await?, "id collision");
        }
        Ok(())
    })?;
    let elapsed = start.elapsed();
    let after = rss_bytes()?;
    let delta = after.saturating_sub(before);
    let per = delta as f64 / sessions as f64;
    println!(
        "sessions={sessions}\tdata_bytes={data_bytes}\trss_before_bytes={before}\t\
         rss_after_bytes={after}\trss_delta_bytes={delta}\tbytes_per_session={per:.1}\t\
         overhead_bytes={:.1}\tinsert_secs={:.2}",
        per - data_bytes as f64,
        elapsed.as_secs_f64()
    );
    // Keep the store alive until after the measurement.
    drop(store);
    Ok(())
}
