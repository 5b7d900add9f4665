//! The lost-update problem werkzeug's middleware has: many requests on one session, each
//! changing a different key, must all keep their change.

use std::collections::BTreeSet;

use serde_json::json;
use tokio::task::JoinSet;

use crate::support::{App, TestProxy, get};

const REQUESTS: usize = 200;

async fn concurrent_updates_all_survive(store_toml: &str) {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, store_toml).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"seed":true}"#)])
        .await;
    let cookie = format!("session_id={}", b.cookie.clone().unwrap());

    let mut set = JoinSet::new();
    for i in 0..REQUESTS {
        let (addr, cookie) = (proxy.addr, cookie.clone());
        set.spawn(async move {
            let patch = json!({ format!("k{i}"): i }).to_string();
            // A small delay widens the window between load and save, as a slow app would.
            let r = get(addr, "/")
                .client_sends(&[("cookie", &cookie)])
                .app_takes_ms(i as u64 % 5 * 10)
                .app_responds_with(&[("X-Session-Update", &patch)])
                .await;
            assert_eq!(r.status, 200);
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let data = b.get("/").await.app_saw().session();
    let keys: BTreeSet<String> = data.as_object().unwrap().keys().cloned().collect();
    let missing: Vec<usize> = (0..REQUESTS)
        .filter(|i| !keys.contains(&format!("k{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "lost updates for {} keys: {missing:?}",
        missing.len()
    );
    assert_eq!(data["seed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_keeps_every_concurrent_update() {
    concurrent_updates_all_survive("[store]\nkind = \"memory\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_store_keeps_every_concurrent_update() {
    let dir = tempfile::tempdir().unwrap();
    // Durable writes (fsync on) to one session queue behind each other by design; on a busy
    // machine the last of 200 may wait longer than the 2 s default store timeout. This test is
    // about atomicity, so it gives the queue room.
    concurrent_updates_all_survive(&format!(
        "[store]\nkind = \"fs\"\ntimeout = \"30s\"\npath = \"{}\"",
        dir.path().display()
    ))
    .await;
}
