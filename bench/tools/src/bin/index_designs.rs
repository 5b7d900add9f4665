//! The layouts considered for the memory store's ordered index, measured side by side at scale
//! (issue [admin], "Listing at scale"), so the choice in `src/store/memory.rs` rests on numbers.
//!
//! Each design keeps `--sessions` sessions (default 1,000,000) of 200 bytes of JSON and is
//! measured in a process of its own (`--design NAME`), so its RSS delta is its own:
//!
//! - `dashmap`: today's store (no order; a page clones and sorts every session), the baseline.
//! - `dashmap+skipset`: the DashMap for point operations plus a `crossbeam_skiplist::SkipSet` of
//!   ids, changed only by create/delete/prune while the id's shard lock is held.
//! - `skipmap+stripes`: one `SkipMap<SessionId, Record>`; per-id atomicity from 256 striped std
//!   mutexes; an update inserts a new node (skip-list values are immutable).
//! - `sharded-btree`: 64 `RwLock<BTreeMap>` shards split by the id's first character, so the
//!   shards in order are the ids in order; `sharded-btree-4096`: 4096 by the first two.
//!
//! It times create, load and a read-modify-write (the structure's cost only: the new record
//! shares the old one's data) on random ids, and pages of 50 at the start, middle and end.
//! Single-threaded: it measures the cost per operation, not contention.
//!
//! ```not_rust
//! for d in dashmap dashmap+skipset skipmap+stripes sharded-btree sharded-btree-4096; do
//!   target/release/index_designs --design $d --sessions 1000000
//! done
//! ```
//! One line of tab-separated `key=value` fields per run.

use bench_tools::rss_bytes;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crossbeam_skiplist::{SkipMap, SkipSet};
use dashmap::DashMap;
use session_proxy::session::SessionId;
use session_proxy::store::{Record, now_ms};

trait Design: Sync {
    fn create(&self, id: SessionId, r: Record) -> bool;
    fn load(&self, id: &SessionId) -> Option<Record>;
    fn update(&self, id: &SessionId, f: &dyn Fn(&Record) -> Record) -> Option<Record>;
    fn page(&self, after: Option<SessionId>, limit: usize, now: u64) -> Vec<(SessionId, Record)>;
}

#[derive(Default)]
struct Dash(DashMap<SessionId, Record>);

impl Design for Dash {
    fn create(&self, id: SessionId, r: Record) -> bool {
        match self.0.entry(id) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(e) => {
                e.insert(r);
                true
            }
        }
    }
    fn load(&self, id: &SessionId) -> Option<Record> {
        self.0.get(id).map(|r| r.clone())
    }
    fn update(&self, id: &SessionId, f: &dyn Fn(&Record) -> Record) -> Option<Record> {
        let mut e = self.0.get_mut(id)?;
        *e = f(&e);
        Some(e.clone())
    }
    fn page(&self, after: Option<SessionId>, limit: usize, now: u64) -> Vec<(SessionId, Record)> {
        let mut live: Vec<(SessionId, Record)> = self
            .0
            .iter()
            .filter(|e| e.is_live(now) && after.is_none_or(|c| *e.key() > c))
            .map(|e| (*e.key(), e.value().clone()))
            .collect();
        live.sort_unstable_by_key(|(id, _)| *id);
        live.truncate(limit);
        live
    }
}

#[derive(Default)]
struct DashIndex {
    map: DashMap<SessionId, Record>,
    index: SkipSet<SessionId>,
}

impl Design for DashIndex {
    fn create(&self, id: SessionId, r: Record) -> bool {
        match self.map.entry(id) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(e) => {
                self.index.insert(id);
                e.insert(r);
                true
            }
        }
    }
    fn load(&self, id: &SessionId) -> Option<Record> {
        self.map.get(id).map(|r| r.clone())
    }
    fn update(&self, id: &SessionId, f: &dyn Fn(&Record) -> Record) -> Option<Record> {
        let mut e = self.map.get_mut(id)?;
        *e = f(&e);
        Some(e.clone())
    }
    fn page(&self, after: Option<SessionId>, limit: usize, now: u64) -> Vec<(SessionId, Record)> {
        let lower = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::with_capacity(limit);
        for e in self.index.range((lower, Bound::Unbounded)) {
            if out.len() == limit {
                break;
            }
            if let Some(r) = self.map.get(e.value()).filter(|r| r.is_live(now)) {
                out.push((*e.value(), r.clone()));
            }
        }
        out
    }
}

struct Skip {
    map: SkipMap<SessionId, Record>,
    stripes: Vec<Mutex<()>>,
}

impl Default for Skip {
    fn default() -> Self {
        Skip {
            map: SkipMap::new(),
            stripes: (0..256).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl Skip {
    fn stripe(&self, id: &SessionId) -> std::sync::MutexGuard<'_, ()> {
        let h = id
            .as_str()
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        self.stripes[h % self.stripes.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Design for Skip {
    fn create(&self, id: SessionId, r: Record) -> bool {
        let _g = self.stripe(&id);
        if self.map.contains_key(&id) {
            return false;
        }
        self.map.insert(id, r);
        true
    }
    fn load(&self, id: &SessionId) -> Option<Record> {
        self.map.get(id).map(|e| e.value().clone())
    }
    fn update(&self, id: &SessionId, f: &dyn Fn(&Record) -> Record) -> Option<Record> {
        let _g = self.stripe(id);
        let next = f(self.map.get(id)?.value());
        self.map.insert(*id, next.clone());
        Some(next)
    }
    fn page(&self, after: Option<SessionId>, limit: usize, now: u64) -> Vec<(SessionId, Record)> {
        let lower = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        self.map
            .range((lower, Bound::Unbounded))
            .filter(|e| e.value().is_live(now))
            .take(limit)
            .map(|e| (*e.key(), e.value().clone()))
            .collect()
    }
}

/// The base64url alphabet in byte order, so the shard of an id is the rank of its first byte.
const ORDERED: &[u8; 64] = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

/// 64 shards by the first character, or 4096 by the first two.
struct Btree {
    shards: Vec<RwLock<BTreeMap<SessionId, Record>>>,
    two: bool,
}

impl Btree {
    fn new(two: bool) -> Self {
        Btree {
            shards: (0..if two { 4096 } else { 64 })
                .map(|_| RwLock::new(BTreeMap::new()))
                .collect(),
            two,
        }
    }

    fn rank(&self, id: &SessionId) -> usize {
        let b = id.as_str().as_bytes();
        if self.two {
            usize::from(RANK[usize::from(b[0])]) * 64 + usize::from(RANK[usize::from(b[1])])
        } else {
            usize::from(RANK[usize::from(b[0])])
        }
    }
}

/// A byte's place in `ORDERED`.
const RANK: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 64 {
        t[ORDERED[i] as usize] = i as u8;
        i += 1;
    }
    t
};

impl Design for Btree {
    fn create(&self, id: SessionId, r: Record) -> bool {
        let mut s = self.shards[self.rank(&id)]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match s.entry(id) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(r);
                true
            }
        }
    }
    fn load(&self, id: &SessionId) -> Option<Record> {
        self.shards[self.rank(id)]
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
    fn update(&self, id: &SessionId, f: &dyn Fn(&Record) -> Record) -> Option<Record> {
        let mut s = self.shards[self.rank(id)]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let e = s.get_mut(id)?;
        *e = f(e);
        Some(e.clone())
    }
    fn page(&self, after: Option<SessionId>, limit: usize, now: u64) -> Vec<(SessionId, Record)> {
        let mut out = Vec::with_capacity(limit);
        let first = after.as_ref().map_or(0, |a| self.rank(a));
        for shard in &self.shards[first..] {
            let s = shard.read().unwrap_or_else(|p| p.into_inner());
            let lower = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            for (id, r) in s.range((lower, Bound::Unbounded)) {
                if out.len() == limit {
                    return out;
                }
                if r.is_live(now) {
                    out.push((*id, r.clone()));
                }
            }
        }
        out
    }
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`th id, the same every time: the benchmark needs no Vec of a million ids (which
/// would count in the RSS delta) to find them again.
fn id_of(i: u64) -> SessionId {
    let mut seed = i.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED;
    let mut text = [0u8; 32];
    let mut bits = 0u64;
    for (n, c) in text.iter_mut().enumerate() {
        if n % 10 == 0 {
            bits = splitmix(&mut seed);
        }
        *c = ORDERED[(bits & 63) as usize];
        bits >>= 6;
    }
    let text = std::str::from_utf8(&text).unwrap_or_default();
    SessionId::parse(text).unwrap_or_else(|| panic!("bad generated id {text}"))
}

fn data(i: u64, len: usize) -> String {
    let head = format!("{{\"visits\":{i},\"profile\":\"");
    let pad = len.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "p".repeat(pad))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let (mut design, mut sessions) = (String::from("dashmap+skipset"), 1_000_000u64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))?;
        match arg.as_str() {
            "--design" => design = value,
            "--sessions" => sessions = value.parse()?,
            _ => anyhow::bail!("usage: index_designs [--design NAME] [--sessions N]"),
        }
    }
    let store: Box<dyn Design> = match design.as_str() {
        "dashmap" => Box::<Dash>::default(),
        "dashmap+skipset" => Box::<DashIndex>::default(),
        "skipmap+stripes" => Box::<Skip>::default(),
        "sharded-btree" => Box::new(Btree::new(false)),
        "sharded-btree-4096" => Box::new(Btree::new(true)),
        other => anyhow::bail!("unknown design {other}"),
    };
    let now = now_ms();
    let before = rss_bytes()?;
    let start = Instant::now();
    for i in 0..sessions {
        let record = Record {
            data: Arc::from(data(i, 200)),
            created_at: now,
            updated_at: now,
            expires_at: now + 86_400_000,
            version: 1,
            meta: Default::default(),
        };
        anyhow::ensure!(store.create(id_of(i), record), "id collision at {i}");
    }
    let create_ns = start.elapsed().as_nanos() as f64 / sessions as f64;
    let per = rss_bytes()?.saturating_sub(before) as f64 / sessions as f64;

    // 200,000 ids spread over the whole set, in random order: lookups miss the cache as they
    // would in a proxy with a million clients.
    let mut seed = 7u64;
    let sample: Vec<SessionId> = (0..200_000)
        .map(|_| id_of(splitmix(&mut seed) % sessions))
        .collect();
    let start = Instant::now();
    let mut found = 0usize;
    for id in &sample {
        found += usize::from(store.load(id).is_some());
    }
    let load_ns = start.elapsed().as_nanos() as f64 / sample.len() as f64;
    anyhow::ensure!(found == sample.len(), "a load missed");
    let bump = |r: &Record| Record {
        version: r.version + 1,
        updated_at: r.updated_at + 1,
        ..r.clone()
    };
    let start = Instant::now();
    for id in &sample {
        anyhow::ensure!(store.update(id, &bump).is_some(), "an update missed");
    }
    let update_ns = start.elapsed().as_nanos() as f64 / sample.len() as f64;

    // Pages of 50 after cursors at the start, the middle and the end of the id space.
    let mut page_us = Vec::new();
    for prefix in ["", "V", "z"] {
        let after = (!prefix.is_empty()).then(|| {
            SessionId::parse(&format!("{prefix}{}", "-".repeat(31)))
                .unwrap_or_else(|| panic!("cursor"))
        });
        let times: Vec<f64> = (0..if design == "dashmap" { 3 } else { 200 })
            .map(|_| {
                let t = Instant::now();
                let page = store.page(after, 50, now);
                assert!(!page.is_empty());
                t.elapsed().as_nanos() as f64 / 1e3
            })
            .collect();
        page_us.push(median(times));
    }
    println!(
        "design={design}\tsessions={sessions}\tbytes_per_session={per:.1}\t\
         overhead_bytes={:.1}\tcreate_ns={create_ns:.0}\tload_ns={load_ns:.0}\t\
         update_ns={update_ns:.0}\tpage50_start_us={:.1}\tpage50_middle_us={:.1}\t\
         page50_end_us={:.1}",
        per - 200.0,
        page_us[0],
        page_us[1],
        page_us[2],
    );
    drop(store);
    Ok(())
}
