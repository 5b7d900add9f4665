//! Regenerate under concurrency, through the proxy: of many concurrent regenerates of one
//! session exactly one new id survives (and only its response sets a cookie), and an update
//! racing a regenerate never hands the client an id that is dead.

use std::collections::BTreeSet;

use serde_json::json;
use tokio::task::JoinSet;

use crate::support::{App, Resp, TestProxy, fs_store, get, handle};

/// The session-cookie ids the responses set (cookie removals aside).
fn cookie_ids(responses: &[Resp]) -> Vec<String> {
    responses
        .iter()
        .filter_map(|r| r.set_cookie("session_id"))
        .filter(|line| !line.contains("Max-Age=0"))
        .map(|line| {
            line["session_id=".len()..]
                .split(';')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

async fn concurrent_regenerates_leave_one_session(store_toml: &str) {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, store_toml).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)])
        .await;
    let cookie = format!("session_id={}", b.cookie.clone().unwrap());
    let mut set = JoinSet::new();
    for _ in 0..12 {
        let (addr, cookie) = (proxy.addr, cookie.clone());
        set.spawn(async move {
            get(addr, "/login")
                .client_sends(&[("cookie", &cookie)])
                .app_takes_ms(50)
                .app_responds_with(&[("X-Session-Regenerate", "1")])
                .await
        });
    }
    let responses: Vec<Resp> = set.join_all().await;
    assert!(responses.iter().all(|r| r.status == 200));
    let sessions = proxy.sessions().await;
    assert_eq!(
        sessions.len(),
        1,
        "one session, not {}: {sessions:?}",
        sessions.len()
    );
    assert_eq!(sessions[0].1, json!({"user":"ada"}));
    assert_eq!(
        cookie_ids(&responses)
            .iter()
            .map(|id| handle(id))
            .collect::<Vec<_>>(),
        [sessions[0].0.clone()],
        "only the winner sets a cookie"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_concurrent_regenerates_leave_exactly_one_new_id() {
    concurrent_regenerates_leave_one_session("[store]\nkind = \"memory\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_concurrent_regenerates_leave_exactly_one_new_id() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_regenerates_leave_one_session(&fs_store(dir.path())).await;
}

/// Updates racing a regenerate (some save before it, some after): no response sets a cookie
/// for an id that is dead once they are all done, so whatever order the browser reads them in,
/// it never ends up holding a deleted id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_racing_a_regenerate_never_sets_a_dead_id() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"n":0}"#)])
        .await;
    let cookie = format!("session_id={}", b.cookie.clone().unwrap());
    let mut set = JoinSet::new();
    for i in 0..10u64 {
        let (addr, cookie) = (proxy.addr, cookie.clone());
        set.spawn(async move {
            let patch = json!({ format!("k{i}"): i }).to_string();
            get(addr, "/")
                .client_sends(&[("cookie", &cookie)])
                .app_takes_ms(i * 30)
                .app_responds_with(&[("X-Session-Update", &patch)])
                .await
        });
    }
    let (addr, regen_cookie) = (proxy.addr, cookie.clone());
    set.spawn(async move {
        get(addr, "/login")
            .client_sends(&[("cookie", &regen_cookie)])
            .app_takes_ms(140)
            .app_responds_with(&[("X-Session-Regenerate", "1")])
            .await
    });
    let responses: Vec<Resp> = set.join_all().await;
    let live: BTreeSet<String> = proxy
        .sessions()
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    for id in cookie_ids(&responses) {
        assert!(
            live.contains(&handle(&id)),
            "a response set the dead id {id}"
        );
    }
}
