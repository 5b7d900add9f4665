//! [at-rest]: a sqlite file or fs directory written by the release before handles
//! (`tests/fixtures/previous`, by 27de363) migrates at the first start of this one with nothing
//! lost: every live session keeps working under its old cookie, with its data and its user
//! index; the expired one stays dead; and afterwards no file name or byte holds an id.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::{App, TestProxy, get, handle};

#[derive(Deserialize)]
struct Fixture {
    store: String,
    id: String,
    user: Option<String>,
    data: Value,
    expired: bool,
}

fn fixtures(store: &str) -> Vec<Fixture> {
    let text = std::fs::read_to_string(previous().join("sessions.json")).unwrap();
    let all: Vec<Fixture> = serde_json::from_str(&text).unwrap();
    all.into_iter().filter(|f| f.store == store).collect()
}

fn previous() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/previous")
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The old store, opened by this release behind the test app: what a client and the admin see.
async fn upgrades_with_nothing_lost(store: &str, toml: &str, dir: &Path) {
    let sessions = fixtures(store);
    assert_eq!(sessions.len(), 5);
    let app = App::start().await;
    let config = format!(
        "{toml}\n[session]\nuser_key = \"user\"\nidle_timeout = \"3650d\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n"
    );
    let proxy = TestProxy::start(&app, &config).await;
    // Before any request: the migration at open already re-keyed everything.
    let mut ada: Vec<String> = proxy
        .store
        .user_sessions("ada")
        .await
        .unwrap()
        .into_iter()
        .map(|(h, _)| h.to_string())
        .collect();
    ada.sort();
    let mut want: Vec<String> = sessions
        .iter()
        .filter(|s| s.user.as_deref() == Some("ada"))
        .map(|s| handle(&s.id))
        .collect();
    want.sort();
    assert_eq!(ada, want, "ada's user index");
    let admin = proxy.admin_addr();
    let listed = get(admin, "/users/bob/sessions").await.json();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1, "{listed}");

    for s in &sessions {
        let r = get(proxy.addr, "/")
            .client_sends(&[("cookie", &format!("session_id={}", s.id))])
            .await;
        let seen = r.app_saw();
        if s.expired {
            assert!(seen.is_new(), "the expired session came back");
            assert_eq!(seen.session(), json!({}));
        } else {
            assert!(!seen.is_new(), "{}: the session was lost", s.id);
            assert_eq!(seen.session_id(), s.id, "the cookie keeps its id");
            assert_eq!(seen.session(), s.data);
            assert_eq!(seen.header("x-session-handle"), Some(handle(&s.id)));
        }
    }
    // And a live one keeps taking changes.
    let first = &sessions[0];
    get(proxy.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={}", first.id))])
        .app_responds_with(&[("X-Session-Update", r#"{"n":9}"#)])
        .await;
    let again = get(proxy.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={}", first.id))])
        .await
        .app_saw()
        .session();
    assert_eq!(again["n"], 9);
    assert_eq!(proxy.sessions().await.len(), 4, "the four live ones");
    proxy.stop().await;

    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = path.display().to_string().into_bytes();
        // The store's threads may still be closing: a -wal or -shm removed meanwhile is gone.
        match std::fs::read(&path) {
            Ok(content) => bytes.extend(content),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        }
        for s in &sessions {
            assert!(
                !holds(&bytes, &s.id),
                "{} is still in {}",
                s.id,
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_of_the_previous_release_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    std::fs::copy(previous().join("sessions.db"), &db).unwrap();
    let version = |db: &Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&db), 2, "the fixture is the previous schema");
    let toml = format!("[store]\nkind = \"sqlite\"\npath = \"{}\"", db.display());
    upgrades_with_nothing_lost("sqlite", &toml, dir.path()).await;
    // 3: handles; 4: the aliases of `session.regenerate_grace`; 5: meta.
    assert_eq!(version(&db), 5);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (integrity, count, rows): (String, i64, i64) = (
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap(),
        conn.query_row("SELECT n FROM session_count", [], |r| r.get(0))
            .unwrap(),
        conn.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
            .unwrap(),
    );
    assert_eq!(integrity, "ok");
    assert_eq!(count, rows, "the row count follows the migration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fs_directory_of_the_previous_release_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    std::fs::create_dir(&sessions).unwrap();
    for entry in std::fs::read_dir(previous().join("fs")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, sessions.join(path.file_name().unwrap())).unwrap();
    }
    let toml = format!(
        "[store]\nkind = \"fs\"\npath = \"{}\"\nfsync = false",
        sessions.display()
    );
    upgrades_with_nothing_lost("fs", &toml, &sessions).await;
    let names: Vec<String> = std::fs::read_dir(&sessions)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for name in names {
        let handle = name
            .strip_prefix("session_")
            .and_then(|n| n.strip_suffix(".json"))
            .unwrap_or_else(|| panic!("{name}"));
        assert!(
            session_proxy::session::Handle::parse(handle).is_some(),
            "{name}"
        );
    }
}
