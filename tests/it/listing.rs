//! The fs store's listing index (issue [admin], "Listing at scale"): the index is built from
//! the directory at open and kept by the store's own writes, so these check what happens
//! around it: files removed behind the store's back, and a store reopened on a full directory.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use session_proxy::session::Handle;
use session_proxy::store::{Record, SessionStore, now_ms};

const HOUR: u64 = 3_600_000;

fn record(n: u64, expires_at: u64) -> Record {
    let now = now_ms();
    Record {
        data: Arc::from(json!({ "n": n }).to_string()),
        created_at: now,
        updated_at: now,
        expires_at,
        version: 1,
        meta: Default::default(),
    }
}

async fn open(dir: &Path) -> Arc<dyn SessionStore> {
    let toml = format!(
        "[store]\nkind = \"fs\"\npath = \"{}\"\nfsync = false",
        dir.display()
    );
    crate::store_contract::open(&toml, Box::new(())).await.store
}

/// The file the store keeps for `id` under the default `filename_template`.
fn file(dir: &Path, id: &Handle) -> std::path::PathBuf {
    dir.join(format!("session_{id}.json"))
}

/// Every id a walk with pages of `limit` returns, checking each page's size and the order.
async fn walk(store: &dyn SessionStore, limit: usize) -> Vec<Handle> {
    let mut seen: Vec<Handle> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let page = store.list(cursor.as_deref(), limit).await.unwrap();
        assert!(page.sessions.len() <= limit);
        for (id, _) in page.sessions {
            assert!(
                seen.last().is_none_or(|l| *l < id),
                "out of order or repeated"
            );
            seen.push(id);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return seen,
        }
    }
    panic!("the walk did not end");
}

async fn create_sorted(store: &dyn SessionStore, n: u64) -> Vec<Handle> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = Handle::generate().unwrap();
        assert!(
            store
                .create(&id, &record(i, now_ms() + HOUR))
                .await
                .unwrap()
        );
        ids.push(id);
    }
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_file_removed_behind_the_stores_back_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ids = create_sorted(&*store, 13).await;
    // The first, the last, two neighbours (a batch can find several gone) and one that will be
    // a page's last id, i.e. the next page's cursor.
    let cursor_of_second_page = ids[3];
    let gone = [ids[0], ids[5], ids[6], ids[12]];
    for id in gone {
        std::fs::remove_file(file(dir.path(), &id)).unwrap();
    }
    let want: Vec<Handle> = ids
        .iter()
        .filter(|id| !gone.contains(id))
        .copied()
        .collect();
    assert_eq!(walk(&*store, 4).await, want);
    // Again, now that the index has dropped them; and with other page sizes.
    for limit in [1, 3, 4, 100] {
        assert_eq!(walk(&*store, limit).await, want, "pages of {limit}");
    }

    // A cursor whose own session is removed between pages still continues after it.
    let first = store.list(None, 3).await.unwrap();
    assert_eq!(first.next.as_deref(), Some(cursor_of_second_page.as_str()));
    std::fs::remove_file(file(dir.path(), &cursor_of_second_page)).unwrap();
    let second = store.list(first.next.as_deref(), 3).await.unwrap();
    let got: Vec<Handle> = second.sessions.iter().map(|(id, _)| *id).collect();
    assert_eq!(got, want[3..6]);

    // The store's own operations on a removed session behave as for any missing one.
    assert!(store.load(&ids[5]).await.unwrap().is_none());
    assert!(!store.delete(&ids[5]).await.unwrap());
    assert!(
        store
            .create(&ids[5], &record(5, now_ms() + HOUR))
            .await
            .unwrap()
    );
    assert!(
        walk(&*store, 4).await.contains(&ids[5]),
        "a re-created id is listed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_store_lists_the_sessions_it_finds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut want = create_sorted(&*store, 10).await;
    let dead = Handle::generate().unwrap();
    store
        .create(&dead, &record(99, now_ms() - 1))
        .await
        .unwrap();
    drop(store);

    // Written while no store had the directory open: found by the next open's scan.
    let outside = Handle::generate().unwrap();
    let r = record(7, now_ms() + HOUR);
    std::fs::write(file(dir.path(), &outside), r.to_json().unwrap()).unwrap();
    want.push(outside);
    want.sort();
    // Not sessions: ignored by the scan.
    std::fs::write(dir.path().join("README"), "not a session").unwrap();
    std::fs::write(dir.path().join(".tmp-0123456789abcdef"), "{").unwrap();

    let store = open(dir.path()).await;
    for limit in [1, 4, 11, 50] {
        assert_eq!(walk(&*store, limit).await, want, "pages of {limit}");
    }
    // The index goes on being kept by the reopened store's writes.
    assert!(store.delete(&want[2]).await.unwrap());
    let removed = want.remove(2);
    assert_eq!(store.prune(now_ms()).await.unwrap(), 1, "the dead session");
    assert_eq!(walk(&*store, 4).await, want);
    assert!(!walk(&*store, 100).await.contains(&removed));
}
