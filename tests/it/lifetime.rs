//! Session lifetime: idle and absolute timeouts, coalesced touches, the sweeper and `prune`.
//! Timeouts here are a second or two; the assertions are about what the client sees, not time.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::support::{App, Browser, TestProxy, fs_store};

const UPDATE: (&str, &str) = ("X-Session-Update", r#"{"user":"ada"}"#);

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test]
async fn an_idle_session_dies_after_idle_timeout() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "[session]\nidle_timeout = \"1s\"").await;
    let mut b = proxy.client();
    b.get("/").app_responds_with(&[UPDATE]).await;
    let id = b.cookie.clone().unwrap();
    sleep_ms(1300).await;
    let r = b.get("/").await;
    assert!(
        r.app_saw().is_new(),
        "an idle session outlived idle_timeout"
    );
    assert_ne!(r.app_saw().session_id(), id);
    assert_eq!(
        r.app_saw().session(),
        json!({}),
        "nothing of the dead session leaks"
    );
}

#[tokio::test]
async fn an_active_session_lives_past_idle_timeout() {
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        "[session]\nidle_timeout = \"1s\"\ntouch_interval = \"200ms\"",
    )
    .await;
    let mut b = proxy.client();
    b.get("/").app_responds_with(&[UPDATE]).await;
    let id = b.cookie.clone().unwrap();
    // 2.4 s of read-only use, a request every 300 ms: well past the 1 s idle timeout.
    for _ in 0..8 {
        sleep_ms(300).await;
        let r = b.get("/").await;
        assert!(!r.app_saw().is_new(), "an active session died");
        assert_eq!(r.app_saw().session_id(), id);
    }
    assert_eq!(b.get("/").await.app_saw().session(), json!({"user":"ada"}));
}

#[tokio::test]
async fn absolute_timeout_ends_even_an_active_session() {
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        "[session]\nidle_timeout = \"1h\"\nabsolute_timeout = \"1s\"\ntouch_interval = \"100ms\"",
    )
    .await;
    let mut b = proxy.client();
    b.get("/").app_responds_with(&[UPDATE]).await;
    let mut died = false;
    for _ in 0..10 {
        sleep_ms(200).await;
        let r = b
            .get("/")
            .app_responds_with(&[("X-Session-Update", r#"{"busy":true}"#)])
            .await;
        if r.app_saw().is_new() {
            died = true;
            break;
        }
    }
    assert!(died, "an active session outlived absolute_timeout");
}

fn version_on_disk(dir: &Path) -> u64 {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("session_"))
        .collect();
    assert_eq!(files.len(), 1);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files[0].path()).unwrap()).unwrap();
    record["version"].as_u64().unwrap()
}

#[tokio::test]
async fn read_only_traffic_writes_at_most_once_per_touch_interval() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let toml = format!(
        "[session]\nidle_timeout = \"1h\"\ntouch_interval = \"1s\"\n{}",
        fs_store(dir.path())
    );
    let proxy = TestProxy::start(&app, &toml).await;
    let mut b = proxy.client();
    b.get("/").app_responds_with(&[UPDATE]).await;
    assert_eq!(version_on_disk(dir.path()), 1);
    // The first return of the cookie is one write (the session is marked returned, so
    // session.first_lifetime no longer bounds it).
    b.get("/").await;
    assert_eq!(
        version_on_disk(dir.path()),
        2,
        "the first return writes once"
    );

    // 100 reads inside one touch interval: no write at all.
    for _ in 0..100 {
        let r = b.get("/").await;
        assert!(r.set_cookie("session_id").is_none(), "no touch, no cookie");
    }
    assert_eq!(
        version_on_disk(dir.path()),
        2,
        "read-only requests wrote to the store"
    );

    // Past the interval, the next read touches once, then the writes stop again.
    sleep_ms(1100).await;
    for _ in 0..50 {
        b.get("/").await;
    }
    assert_eq!(
        version_on_disk(dir.path()),
        3,
        "exactly one touch per interval"
    );
}

#[tokio::test]
async fn the_cookie_is_resent_on_touch_so_the_browser_expiry_slides() {
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        "[cookie]\nmax_age = \"1h\"\n[session]\nidle_timeout = \"1h\"\ntouch_interval = \"300ms\"",
    )
    .await;
    let mut b = proxy.client();
    let first = b
        .get("/")
        .app_responds_with(&[UPDATE])
        .await
        .set_cookie("session_id")
        .unwrap();
    assert!(first.contains("Max-Age=3600"));
    // The first return is a write (the session is marked returned), which slides the cookie.
    assert!(b.get("/").await.set_cookie("session_id").is_some());
    assert!(b.get("/").await.set_cookie("session_id").is_none());
    sleep_ms(400).await;
    let touched = b.get("/").await.set_cookie("session_id");
    assert!(
        touched.is_some_and(|c| c.contains("Max-Age=3600")),
        "touch must re-send the cookie"
    );
}

/// Two proxies on one fs directory: `short` (idle 1 s; `short_store` adds store settings) has
/// made three sessions, `long` (idle 1 h) one, whose browser comes back as the third value.
async fn three_short_one_long(
    app: &App,
    dir: &Path,
    short_store: &str,
) -> (TestProxy, TestProxy, Browser) {
    let store = fs_store(dir);
    let short = TestProxy::start(
        app,
        &format!("[session]\nidle_timeout = \"1s\"\n{store}\n{short_store}"),
    )
    .await;
    let long = TestProxy::start(app, &format!("[session]\nidle_timeout = \"1h\"\n{store}")).await;
    for _ in 0..3 {
        short.client().get("/").app_responds_with(&[UPDATE]).await;
    }
    let mut keeper = long.client();
    keeper.get("/").app_responds_with(&[UPDATE]).await;
    (short, long, keeper)
}

fn session_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("session_"))
        .count()
}

#[tokio::test]
async fn the_sweeper_removes_expired_fs_sessions_and_keeps_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let (_short, _long, mut keeper) =
        three_short_one_long(&app, dir.path(), "sweep_interval = \"300ms\"").await;
    assert_eq!(session_files(dir.path()), 4);

    let mut left = 4;
    for _ in 0..40 {
        sleep_ms(100).await;
        left = session_files(dir.path());
        if left == 1 {
            break;
        }
    }
    assert_eq!(left, 1, "the sweeper left expired sessions behind");
    assert_eq!(
        keeper.get("/").await.app_saw().session(),
        json!({"user":"ada"})
    );
}

#[tokio::test]
async fn the_sweeper_cleans_the_memory_store() {
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        "[session]\nidle_timeout = \"1s\"\n[store]\nkind = \"memory\"\nsweep_interval = \"300ms\"",
    )
    .await;
    for _ in 0..5 {
        proxy.client().get("/").app_responds_with(&[UPDATE]).await;
    }
    sleep_ms(1700).await;
    // Nothing expired is left for `prune` to find: the sweeper already took it.
    assert_eq!(
        proxy
            .store
            .prune(session_proxy::store::now_ms())
            .await
            .unwrap(),
        0
    );
    assert!(proxy.sessions().await.is_empty());
}

#[tokio::test]
async fn sessions_prune_removes_expired_sessions_and_reports_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let (short, _long, mut keeper) = three_short_one_long(&app, dir.path(), "").await;
    short.stop().await;
    sleep_ms(1200).await;

    let config = crate::support::write_config(dir.path(), "prune.toml", &fs_store(dir.path()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["sessions", "prune", "--config", &config])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "removed 3 expired sessions"
    );
    assert_eq!(session_files(dir.path()), 1);
    assert_eq!(
        keeper.get("/").await.app_saw().session(),
        json!({"user":"ada"})
    );

    // `sessions list` shows the live one.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["sessions", "list", "--config", &config])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let cookie = keeper.cookie.clone().unwrap();
    assert_eq!(line["handle"], crate::support::handle(&cookie));
    assert!(!text.contains(&cookie), "a listing holds the id");
    // The shape `sessions list --help` promises: the handle beside the record's own fields.
    assert_eq!(line["data"], json!({"user":"ada"}));
    for field in ["created_at", "updated_at", "expires_at", "version"] {
        assert!(line[field].is_u64(), "{field} missing: {line}");
    }
}

#[tokio::test]
async fn a_session_that_expires_during_a_slow_request_is_not_revived_by_its_save() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "[session]\nidle_timeout = \"1s\"").await;
    let mut b = proxy.client();
    b.get("/").app_responds_with(&[UPDATE]).await;
    let cookie = format!("session_id={}", b.cookie.clone().unwrap());
    // Loaded while live; the app takes longer than the session has left.
    let r = crate::support::get(proxy.addr, "/")
        .client_sends(&[("cookie", &cookie)])
        .app_takes_ms(1500)
        .app_responds_with(&[("X-Session-Update", r#"{"late":true}"#)])
        .await;
    assert!(!r.app_saw().is_new(), "the session was live when loaded");
    assert!(
        r.set_cookie("session_id").is_none(),
        "a dead session got a cookie"
    );
    assert!(
        proxy.sessions().await.is_empty(),
        "the save revived an expired session"
    );
}
