//! The `SessionStore` contract, one set of tests expanded for every store (tower-sessions-stores'
//! per-backend test macro is the model). Each store is opened the way the proxy opens it
//! (`store::open`, so through `Timed`), on a real backend: memory, an fs directory, an SQLite
//! file, a real `redis-server`, a three-node Redis Cluster, and a real PostgreSQL.
//!
//! A store added later gets the whole contract by one more `contract!` line.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};
use session_proxy::config::RawConfig;
use session_proxy::session::{DataChange, Handle};
use session_proxy::store::{
    self, Blame, ExpiredSink, Loaded, Record, SessionStore, StoreError, Update, now_ms,
};

/// An open store plus whatever keeps its backend alive (a directory, a server).
pub struct Opened {
    pub store: Arc<dyn SessionStore>,
    /// Whether `list` walks in id order and lists each live session exactly once. Redis `SCAN`
    /// lists each at least once, in no order.
    pub ordered: bool,
    pub expires_by_itself: bool,
    _guard: Box<dyn std::any::Any + Send>,
}

pub async fn open(store_toml: &str, guard: Box<dyn std::any::Any + Send>) -> Opened {
    let raw = RawConfig::from_toml("contract.toml", store_toml).unwrap();
    let config = raw.validate("contract.toml").unwrap();
    let opened = store::open(&config.store).await.unwrap();
    let caps = opened.store.capabilities();
    Opened {
        ordered: caps.lists_in_order,
        expires_by_itself: caps.expires_by_itself,
        store: opened.store,
        _guard: guard,
    }
}

/// Every contract store keeps a user index on `user`; the rest of the suite runs without one.
const USERS: &str = "[session]\nuser_key = \"user\"\n";

/// The `[store]` line that turns on encryption at rest, for the sealed expansions.
pub const SEALED: &str = "encryption_key = \"a-store-key-for-the-contract-tests-0123456789\"";

pub async fn memory() -> Opened {
    memory_with("").await
}

pub async fn memory_with(extra: &str) -> Opened {
    open(
        &format!("{USERS}[store]\nkind = \"memory\"\n{extra}"),
        Box::new(()),
    )
    .await
}

pub async fn fs() -> Opened {
    fs_with("").await
}

/// An fs store in a fresh directory with `extra` in `[store]`.
pub async fn fs_with(extra: &str) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{USERS}[store]\nkind = \"fs\"\npath = \"{}\"\nfsync = false\n{extra}",
        dir.path().display()
    );
    open(&toml, Box::new(dir)).await
}

pub async fn sqlite() -> Opened {
    sqlite_with("").await
}

/// An SQLite store in a fresh directory (file `sessions.db`) with `extra` in `[store]`.
pub async fn sqlite_with(extra: &str) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{USERS}[store]\nkind = \"sqlite\"\npath = \"{}\"\nfsync = false\n{extra}",
        dir.path().join("sessions.db").display()
    );
    open(&toml, Box::new(dir)).await
}

#[cfg(feature = "redis")]
pub async fn redis() -> Opened {
    redis_with("").await
}

#[cfg(feature = "redis")]
pub async fn redis_with(extra: &str) -> Opened {
    let server = crate::support::redis::RedisServer::start().await;
    let toml = format!(
        "{USERS}[store]\nkind = \"redis\"\nurl = \"{}\"\n{extra}",
        server.url()
    );
    open(&toml, Box::new(server)).await
}

#[cfg(feature = "redis")]
pub async fn redis_cluster() -> Opened {
    redis_cluster_with("").await
}

#[cfg(feature = "redis")]
pub async fn redis_cluster_with(extra: &str) -> Opened {
    let cluster = crate::support::redis::RedisCluster::start().await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    let toml = format!(
        "{USERS}[store]\nkind = \"redis\"\nnodes = [{}]\n{extra}",
        nodes.join(", ")
    );
    open(&toml, Box::new(cluster)).await
}

#[cfg(feature = "postgres")]
pub async fn postgres() -> Opened {
    postgres_with("").await
}

/// A PostgreSQL store in a database of its own on the shared test cluster.
#[cfg(feature = "postgres")]
pub async fn postgres_with(extra: &str) -> Opened {
    let db = crate::support::postgres::PgDb::new().await;
    let toml = format!(
        "{USERS}[store]\nkind = \"postgres\"\nurl = \"{}\"\n{extra}",
        db.url()
    );
    open(&toml, Box::new(db)).await
}

/// The contract stores with session data encrypted at rest (`store.encryption_key`).
pub mod sealed {
    use super::{Opened, SEALED};

    pub async fn memory() -> Opened {
        super::memory_with(SEALED).await
    }
    pub async fn fs() -> Opened {
        super::fs_with(SEALED).await
    }
    pub async fn sqlite() -> Opened {
        super::sqlite_with(SEALED).await
    }
    #[cfg(feature = "redis")]
    pub async fn redis() -> Opened {
        super::redis_with(SEALED).await
    }
    #[cfg(feature = "redis")]
    pub async fn redis_cluster() -> Opened {
        super::redis_cluster_with(SEALED).await
    }
    #[cfg(feature = "postgres")]
    pub async fn postgres() -> Opened {
        super::postgres_with(SEALED).await
    }
}

const HOUR: u64 = 3_600_000;

fn id() -> Handle {
    Handle::generate().unwrap()
}

fn record(data: Value, expires_at: u64) -> Record {
    let now = now_ms();
    Record {
        data: Arc::from(data.to_string()),
        created_at: now,
        updated_at: now,
        expires_at,
        version: 1,
        meta: Default::default(),
    }
}

fn live(data: Value) -> Record {
    record(data, now_ms() + HOUR)
}

fn patch(v: Value) -> Update {
    Update {
        change: Some(DataChange::Patch(v.as_object().unwrap().clone())),
        base: None,
        now: now_ms(),
        lifetime: session_proxy::config::Lifetime {
            idle_timeout: std::time::Duration::from_secs(3600),
            absolute_timeout: None,
            touch_interval: std::time::Duration::from_secs(360),
            remember_max: std::time::Duration::from_secs(90 * 86400),
            remember_absolute: None,
            first_lifetime: None,
        },
        max_size: 16 * 1024,
        extends: true,
        visit: None,
    }
}

fn data(r: &Record) -> Value {
    serde_json::from_str(&r.data).unwrap()
}

pub async fn create_is_create_if_absent(s: Opened) {
    let (a, store) = (id(), &s.store);
    assert!(store.create(&a, &live(json!({"n":1}))).await.unwrap());
    assert!(!store.create(&a, &live(json!({"n":2}))).await.unwrap());
    assert_eq!(
        data(&store.load(&a).await.unwrap().unwrap()),
        json!({"n":1})
    );
    // A dead session's id is free again.
    let b = id();
    assert!(
        store
            .create(&b, &record(json!({"old":1}), now_ms() - 1))
            .await
            .unwrap()
    );
    assert!(store.create(&b, &live(json!({"new":1}))).await.unwrap());
    assert_eq!(
        data(&store.load(&b).await.unwrap().unwrap()),
        json!({"new":1})
    );
}

pub async fn load_never_returns_an_expired_record(s: Opened) {
    let (a, store) = (id(), &s.store);
    assert!(store.load(&a).await.unwrap().is_none());
    store
        .create(&a, &record(json!({"x":1}), now_ms() + 300))
        .await
        .unwrap();
    assert!(store.load(&a).await.unwrap().is_some());
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        store.load(&a).await.unwrap().is_none(),
        "expired record loaded"
    );
    assert!(
        store
            .update(&a, &patch(json!({"y":1})))
            .await
            .unwrap()
            .is_none(),
        "an expired session was updated"
    );
    assert!(store.load(&a).await.unwrap().is_none());
}

pub async fn update_is_atomic_against_the_stored_record(s: Opened) {
    let a = id();
    s.store.create(&a, &live(json!({"base":0}))).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = s.store.clone();
            tokio::spawn(async move {
                store
                    .update(&a, &patch(json!({ format!("k{i}"): i })))
                    .await
                    .unwrap()
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let got = data(&s.store.load(&a).await.unwrap().unwrap());
    let mut want = json!({"base":0});
    for i in 0..32 {
        want[format!("k{i}")] = json!(i);
    }
    assert_eq!(got, want, "a concurrent change was lost");
}

pub async fn update_never_resurrects_a_deleted_session(s: Opened) {
    let (a, store) = (id(), &s.store);
    store
        .create(&a, &live(json!({"user":"ada"})))
        .await
        .unwrap();
    assert!(store.delete(&a).await.unwrap());
    assert!(!store.delete(&a).await.unwrap(), "deleted twice");
    assert!(
        store
            .update(&a, &patch(json!({"late":1})))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.load(&a).await.unwrap().is_none(), "resurrected");
    assert!(store.list(None, 100).await.unwrap().sessions.is_empty());
}

pub async fn update_applies_the_change_and_bumps_the_version(s: Opened) {
    let (a, store) = (id(), &s.store);
    store
        .create(&a, &live(json!({"a":1,"b":{"c":1}})))
        .await
        .unwrap();
    let next = store
        .update(&a, &patch(json!({"a":null,"b":{"d":2}})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data(&next), json!({"b":{"c":1,"d":2}}));
    assert_eq!(next.version, 2);
    assert_eq!(store.load(&a).await.unwrap().unwrap(), next);
    // Over the size limit: refused as the caller's fault, nothing written.
    let mut big = patch(json!({"x": "y".repeat(100)}));
    big.max_size = 64;
    let err = store.update(&a, &big).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    assert_eq!(err.blame(), Blame::Caller);
    assert_eq!(store.load(&a).await.unwrap().unwrap(), next);
}

pub async fn regenerate_moves_the_data_and_kills_the_old_id(s: Opened) {
    let (old, new, store) = (id(), id(), &s.store);
    store
        .create(&old, &live(json!({"user":"ada"})))
        .await
        .unwrap();
    let moved = store
        .regenerate(&old, &new, &patch(json!({"role":"admin"})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data(&moved), json!({"user":"ada","role":"admin"}));
    assert!(store.load(&old).await.unwrap().is_none(), "old id alive");
    assert_eq!(
        data(&store.load(&new).await.unwrap().unwrap()),
        json!({"user":"ada","role":"admin"})
    );
    // A session that is gone is not regenerated into existence.
    let (gone, other) = (id(), id());
    assert!(
        store
            .regenerate(&gone, &other, &patch(json!({})))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.load(&other).await.unwrap().is_none());
}

/// Twelve regenerates of one session at once (a login submitted from several tabs): exactly one
/// moves the session; every other finds it gone, and leaves no copy under its new id.
pub async fn concurrent_regenerates_leave_one_new_id(s: Opened) {
    let old = id();
    s.store
        .create(&old, &live(json!({"user":"ada"})))
        .await
        .unwrap();
    let news: Vec<Handle> = (0..12).map(|_| id()).collect();
    let tasks: Vec<_> = news
        .iter()
        .map(|new| {
            let (store, new) = (s.store.clone(), *new);
            tokio::spawn(async move {
                store
                    .regenerate(&old, &new, &patch(json!({"role":"admin"})))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut winners = Vec::new();
    for (new, task) in news.iter().zip(tasks) {
        if let Some(record) = task.await.unwrap() {
            assert_eq!(data(&record), json!({"user":"ada","role":"admin"}));
            winners.push(*new);
        }
    }
    assert_eq!(winners.len(), 1, "{} regenerates succeeded", winners.len());
    let mut alive = Vec::new();
    for new in &news {
        if s.store.load(new).await.unwrap().is_some() {
            alive.push(*new);
        }
    }
    assert_eq!(alive, winners, "copies left under the losers' ids");
    assert!(s.store.load(&old).await.unwrap().is_none(), "old id alive");
}

pub async fn list_pages_through_every_live_session(s: Opened) {
    let store = &s.store;
    let mut want = BTreeSet::new();
    for i in 0..23 {
        let a = id();
        store.create(&a, &live(json!({"i": i}))).await.unwrap();
        want.insert(a.to_string());
    }
    for _ in 0..3 {
        store
            .create(&id(), &record(json!({}), now_ms() - 1))
            .await
            .unwrap();
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let page = store.list(cursor.as_deref(), 5).await.unwrap();
        assert!(page.sessions.len() <= 5);
        seen.extend(page.sessions.iter().map(|(id, _)| id.to_string()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let distinct: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        distinct, want,
        "not every live session listed, or a dead one listed"
    );
    if s.ordered {
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen, sorted, "not exactly once in id order");
    } else {
        assert!(
            seen.len() <= want.len() * 2,
            "too many repeats: {}",
            seen.len()
        );
    }
    assert!(store.list(None, 0).await.unwrap().sessions.is_empty());
}

pub async fn a_bad_cursor_is_the_callers_fault(s: Opened) {
    for cursor in ["not a cursor", "", "../../etc", "9999999999.0.x"] {
        let err = s.store.list(Some(cursor), 10).await.unwrap_err();
        assert!(matches!(err, StoreError::BadCursor(_)), "{cursor:?}: {err}");
        assert_eq!(err.blame(), Blame::Caller);
    }
}

pub async fn prune_removes_only_expired_sessions(s: Opened) {
    let store = &s.store;
    let keep: Vec<Handle> = (0..4).map(|_| id()).collect();
    for a in &keep {
        store.create(a, &live(json!({"keep":true}))).await.unwrap();
    }
    for _ in 0..3 {
        store
            .create(&id(), &record(json!({}), now_ms() - 1))
            .await
            .unwrap();
    }
    let removed = store.prune(now_ms()).await.unwrap();
    // A store that expires by itself has nothing left to prune.
    assert_eq!(removed, if s.expires_by_itself { 0 } else { 3 });
    assert_eq!(store.prune(now_ms()).await.unwrap(), 0);
    for a in &keep {
        assert!(
            store.load(a).await.unwrap().is_some(),
            "a live session was pruned"
        );
    }
}

/// The ids `user_sessions` returns for `user`, sorted.
async fn of(store: &dyn SessionStore, user: &str) -> Vec<Handle> {
    let mut ids: Vec<Handle> = store
        .user_sessions(user)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<Handle>) -> Vec<Handle> {
    ids.sort();
    ids
}

fn replace(v: Value) -> Update {
    Update {
        change: Some(DataChange::Replace(v.as_object().unwrap().clone())),
        ..patch(json!({}))
    }
}

/// The index follows create, an update that sets, changes or removes the key, a replace, and
/// an update that leaves the key alone; a string and an integer are users, anything else not.
pub async fn the_user_index_follows_every_change_of_the_key(s: Opened) {
    let store = &*s.store;
    let (a, b) = (id(), id());
    assert!(
        store
            .create(&a, &live(json!({"user":"ada"})))
            .await
            .unwrap()
    );
    assert!(
        store
            .create(&b, &live(json!({"user":"ada","n":1})))
            .await
            .unwrap()
    );
    assert_eq!(of(store, "ada").await, sorted(vec![a, b]));
    assert!(of(store, "bob").await.is_empty());

    store
        .update(&a, &patch(json!({"user":"bob"})))
        .await
        .unwrap();
    assert_eq!(of(store, "ada").await, vec![b]);
    assert_eq!(of(store, "bob").await, vec![a]);

    // A change of another key, and a touch, keep the user.
    store.update(&a, &patch(json!({"cart":[1]}))).await.unwrap();
    store
        .update(
            &a,
            &Update {
                change: None,
                ..patch(json!({}))
            },
        )
        .await
        .unwrap();
    assert_eq!(of(store, "bob").await, vec![a]);

    store
        .update(&a, &patch(json!({"user":null})))
        .await
        .unwrap();
    assert!(of(store, "bob").await.is_empty());

    store.update(&a, &patch(json!({"user":42}))).await.unwrap();
    assert_eq!(of(store, "42").await, vec![a]);
    store
        .update(&a, &patch(json!({"user":{"id":42}})))
        .await
        .unwrap();
    assert!(of(store, "42").await.is_empty());

    store
        .update(&b, &replace(json!({"other":"ada"})))
        .await
        .unwrap();
    assert!(of(store, "ada").await.is_empty());
    store
        .update(&b, &replace(json!({"user":"ada"})))
        .await
        .unwrap();
    assert_eq!(of(store, "ada").await, vec![b]);
}

/// Regenerate moves the index entry to the new id; destroy removes it; a dead id's slot taken
/// by a create leaves the old user's index.
pub async fn the_user_index_follows_regenerate_and_destroy(s: Opened) {
    let store = &*s.store;
    let (old, new) = (id(), id());
    store
        .create(&old, &live(json!({"user":"ada"})))
        .await
        .unwrap();
    let moved = store
        .regenerate(&old, &new, &patch(json!({"user":"ada","mfa":true})))
        .await
        .unwrap();
    assert!(moved.is_some());
    assert_eq!(of(store, "ada").await, vec![new]);
    assert!(store.delete(&new).await.unwrap());
    assert!(of(store, "ada").await.is_empty());

    // Regenerate at login: the session gets its user on the way to the new id.
    let (anon, signed) = (id(), id());
    store
        .create(&anon, &live(json!({"cart":[]})))
        .await
        .unwrap();
    store
        .regenerate(&anon, &signed, &patch(json!({"user":"bob"})))
        .await
        .unwrap();
    assert_eq!(of(store, "bob").await, vec![signed]);

    let c = id();
    store
        .create(&c, &record(json!({"user":"eve"}), now_ms() - 1))
        .await
        .unwrap();
    assert!(
        of(store, "eve").await.is_empty(),
        "a dead session was listed"
    );
    store
        .create(&c, &live(json!({"user":"mallory"})))
        .await
        .unwrap();
    assert!(of(store, "eve").await.is_empty());
    assert_eq!(of(store, "mallory").await, vec![c]);
}

/// An expired session is never listed, from the instant it expires, whether or not anything
/// swept it yet; and a sweep (or the TTL) leaves the live ones listed.
pub async fn the_user_index_never_lists_an_expired_session(s: Opened) {
    let store = &*s.store;
    let (short, long) = (id(), id());
    store
        .create(&short, &record(json!({"user":"ada"}), now_ms() + 400))
        .await
        .unwrap();
    store
        .create(&long, &live(json!({"user":"ada"})))
        .await
        .unwrap();
    assert_eq!(of(store, "ada").await, sorted(vec![short, long]));
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(of(store, "ada").await, vec![long]);
    store.prune(now_ms()).await.unwrap();
    assert_eq!(of(store, "ada").await, vec![long]);
    assert!(store.delete(&long).await.unwrap());
    assert!(of(store, "ada").await.is_empty());
}

/// `load_or_expired` tells the three apart: a missing id, a live session (the record `load`
/// returns), and one found past its expiry, which that call removes and reports with its user,
/// so the next call, `load`, the listing and the user index all find nothing, and the id is
/// free again.
pub async fn load_or_expired_tells_an_expired_session_from_a_missing_one(s: Opened) {
    let store = &*s.store;
    let (gone, a, b) = (id(), id(), id());
    assert_eq!(store.load_or_expired(&gone).await.unwrap(), Loaded::Missing);
    store
        .create(&a, &live(json!({"user":"ada"})))
        .await
        .unwrap();
    let loaded = store.load(&a).await.unwrap().unwrap();
    assert_eq!(
        store.load_or_expired(&a).await.unwrap(),
        Loaded::Live(loaded)
    );
    store
        .create(&b, &record(json!({"user":"bob"}), now_ms() + 300))
        .await
        .unwrap();
    let anon = id();
    store
        .create(&anon, &record(json!({"n":1}), now_ms() + 300))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        store.load_or_expired(&b).await.unwrap(),
        Loaded::Expired {
            user: Some("bob".to_owned())
        }
    );
    assert_eq!(
        store.load_or_expired(&anon).await.unwrap(),
        Loaded::Expired { user: None }
    );
    assert_eq!(
        store.load_or_expired(&b).await.unwrap(),
        Loaded::Missing,
        "an expiry reported twice"
    );
    assert!(store.load(&b).await.unwrap().is_none());
    assert!(
        !store.delete(&b).await.unwrap(),
        "an expired session deleted"
    );
    assert!(of(store, "bob").await.is_empty());
    let listed: Vec<Handle> = store
        .list(None, 100)
        .await
        .unwrap()
        .sessions
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, vec![a]);
    assert!(
        store
            .create(&b, &live(json!({"user":"eve"})))
            .await
            .unwrap()
    );
    assert_eq!(of(store, "eve").await, vec![b]);
    assert!(of(store, "bob").await.is_empty());
}

/// Twelve loads of one expired session at once (a page's parallel requests): exactly one is
/// told it expired.
pub async fn concurrent_loads_see_one_expiry(s: Opened) {
    let a = id();
    s.store
        .create(&a, &record(json!({"user":"ada"}), now_ms() + 300))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let store = s.store.clone();
            tokio::spawn(async move { store.load_or_expired(&a).await.unwrap() })
        })
        .collect();
    let mut expired = 0;
    for task in tasks {
        match task.await.unwrap() {
            Loaded::Expired { user } => {
                assert_eq!(user.as_deref(), Some("ada"));
                expired += 1;
            }
            Loaded::Missing => {}
            Loaded::Live(_) => panic!("an expired session loaded"),
        }
    }
    assert_eq!(expired, 1, "one expiry seen {expired} times");
}

/// `prune_reporting` reports each session it removed, with its user, once; the live ones stay.
/// A store that expires by itself removes (and reports) nothing.
pub async fn prune_reports_each_session_it_removed(s: Opened) {
    let store = &*s.store;
    let keep = id();
    store
        .create(&keep, &live(json!({"user":"ada"})))
        .await
        .unwrap();
    let mut dead = Vec::new();
    for user in [json!("ada"), json!("bob"), json!(null)] {
        let a = id();
        store
            .create(&a, &record(json!({ "user": user }), now_ms() - 1))
            .await
            .unwrap();
        dead.push((a, user.as_str().map(str::to_owned)));
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink: ExpiredSink = {
        let seen = seen.clone();
        Arc::new(move |id: &Handle, user: Option<&str>| {
            seen.lock().unwrap().push((*id, user.map(str::to_owned)))
        })
    };
    let removed = store.prune_reporting(now_ms(), Some(&sink)).await.unwrap();
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    dead.sort();
    if s.expires_by_itself {
        assert_eq!((removed, got), (0, vec![]));
    } else {
        assert_eq!(removed, 3);
        assert_eq!(got, dead);
    }
    seen.lock().unwrap().clear();
    assert_eq!(
        store.prune_reporting(now_ms(), Some(&sink)).await.unwrap(),
        0
    );
    assert!(seen.lock().unwrap().is_empty(), "a session reported twice");
    assert!(store.load(&keep).await.unwrap().is_some());
}

pub async fn live_among_answers_for_each_handle_in_order(s: Opened) {
    let store = &s.store;
    assert!(store.live_among(&[]).await.unwrap().is_empty());
    let (a, gone, dead, b, never) = (id(), id(), id(), id(), id());
    store.create(&a, &live(json!({"n":1}))).await.unwrap();
    store.create(&gone, &live(json!({"n":2}))).await.unwrap();
    store
        .create(&dead, &record(json!({"n":3}), now_ms() + 300))
        .await
        .unwrap();
    store.create(&b, &live(json!({"n":4}))).await.unwrap();
    assert!(store.delete(&gone).await.unwrap());
    let asked = [a, gone, dead, never, b, a];
    assert_eq!(
        store.live_among(&asked).await.unwrap(),
        [true, false, true, false, true, true]
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        store.live_among(&asked).await.unwrap(),
        [true, false, false, false, true, true],
        "an expired session counted as live"
    );
    // Many at once: one call.
    let many: Vec<Handle> = (0..600).map(|_| id()).collect();
    for h in many.iter().step_by(3) {
        store.create(h, &live(json!({}))).await.unwrap();
    }
    let got = store.live_among(&many).await.unwrap();
    let want: Vec<bool> = (0..600).map(|i| i % 3 == 0).collect();
    assert_eq!(got, want);
}

/// Expands every contract test for one store: `contract!(name, opener)`.
macro_rules! contract {
    ($store:ident, $open:path) => {
        mod $store {
            contract!(@tests $open;
                create_is_create_if_absent,
                load_never_returns_an_expired_record,
                update_is_atomic_against_the_stored_record,
                update_never_resurrects_a_deleted_session,
                update_applies_the_change_and_bumps_the_version,
                regenerate_moves_the_data_and_kills_the_old_id,
                concurrent_regenerates_leave_one_new_id,
                list_pages_through_every_live_session,
                a_bad_cursor_is_the_callers_fault,
                prune_removes_only_expired_sessions,
                the_user_index_follows_every_change_of_the_key,
                the_user_index_follows_regenerate_and_destroy,
                the_user_index_never_lists_an_expired_session,
                load_or_expired_tells_an_expired_session_from_a_missing_one,
                concurrent_loads_see_one_expiry,
                prune_reports_each_session_it_removed,
                live_among_answers_for_each_handle_in_order,
            );
        }
    };
    (@tests $open:path; $($test:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test($open().await).await;
            }
        )*
    };
}

contract!(memory, super::memory);
contract!(fs, super::fs);
contract!(sqlite, super::sqlite);
#[cfg(feature = "redis")]
contract!(redis, super::redis);
#[cfg(feature = "redis")]
contract!(redis_cluster, super::redis_cluster);
#[cfg(feature = "postgres")]
contract!(postgres, super::postgres);
contract!(memory_sealed, super::sealed::memory);
contract!(fs_sealed, super::sealed::fs);
contract!(sqlite_sealed, super::sealed::sqlite);
#[cfg(feature = "redis")]
contract!(redis_sealed, super::sealed::redis);
#[cfg(feature = "redis")]
contract!(redis_cluster_sealed, super::sealed::redis_cluster);
#[cfg(feature = "postgres")]
contract!(postgres_sealed, super::sealed::postgres);

/// Every call is bounded, whoever makes it: a Redis that stops answering (SIGSTOP) costs a
/// store-side error within about `store.timeout`, not a hang, for a direct caller like the CLI
/// or the admin API. (Which timer fires first, the client's or `Timed`'s, is not the point;
/// `Timed`'s own is tested in `store/timed.rs`.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_store_fails_fast_for_every_caller() {
    let server = crate::support::redis::RedisServer::start().await;
    let toml = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"300ms\"",
        server.url()
    );
    let s = open(&toml, Box::new(())).await;
    let a = id();
    s.store.create(&a, &live(json!({}))).await.unwrap();
    let pid = server.pid().unwrap().to_string();
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    signal("-STOP");
    let started = std::time::Instant::now();
    let load = s.store.load(&a).await.map(|_| ());
    let list = s.store.list(None, 10).await.map(|_| ());
    let elapsed = started.elapsed();
    signal("-CONT");
    for result in [load, list] {
        let err = result.unwrap_err();
        assert_eq!(err.blame(), Blame::Store, "{err}");
    }
    assert!(elapsed < std::time::Duration::from_secs(3), "{elapsed:?}");
    drop(server);
}
