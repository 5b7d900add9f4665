//! `session-proxy sessions copy --from STORE --to STORE` between every pair of persistent
//! stores CI has: every live session arrives with its record unchanged, expired ones stay
//! behind, a second run copies nothing new, and the memory store is refused.

use std::path::Path;
use std::sync::Arc;

use session_proxy::session::Handle;
use session_proxy::store::{Record, now_ms};

use crate::store_contract::{Opened, open};

/// Crosses the command's page size (500) twice.
const LIVE: usize = 1203;
const EXPIRED: usize = 4;

/// A store given in the `--store` syntax, opened in this process too.
struct Side {
    flag: String,
    /// The `[store]` section, to open the store again (the fs store's index is built at open,
    /// so it lists files another process wrote only once reopened).
    toml: String,
    store: Opened,
}

async fn sqlite(dir: &Path) -> Side {
    let path = dir.join("copy.db");
    let toml = format!("[store]\nkind = \"sqlite\"\npath = \"{}\"", path.display());
    Side {
        flag: format!("sqlite:{}", path.display()),
        store: open(&toml, Box::new(())).await,
        toml,
    }
}

async fn fs(dir: &Path) -> Side {
    let path = dir.join("copy-fs");
    let toml = format!(
        "[store]\nkind = \"fs\"\npath = \"{}\"\nfsync = false",
        path.display()
    );
    Side {
        flag: format!("fs:{}", path.display()),
        store: open(&toml, Box::new(())).await,
        toml,
    }
}

#[cfg(feature = "redis")]
async fn redis() -> Side {
    let server = crate::support::redis::RedisServer::start().await;
    let toml = format!("[store]\nkind = \"redis\"\nurl = \"{}\"", server.url());
    Side {
        flag: server.url(),
        store: open(&toml, Box::new(server)).await,
        toml,
    }
}

#[cfg(feature = "postgres")]
async fn postgres() -> Side {
    let db = crate::support::postgres::PgDb::new().await;
    let toml = format!("[store]\nkind = \"postgres\"\nurl = \"{}\"", db.url());
    Side {
        flag: db.url(),
        store: open(&toml, Box::new(db)).await,
        toml,
    }
}

/// Fills `side` with LIVE live sessions (distinct times and versions) and EXPIRED dead ones.
async fn fill(side: &Side) -> Vec<(Handle, Record)> {
    let now = now_ms();
    let mut live = Vec::new();
    for i in 0..LIVE + EXPIRED {
        let id = Handle::generate().unwrap();
        let record = Record {
            data: Arc::from(format!(r#"{{"i":{i},"user":"u{i}"}}"#)),
            created_at: now - 1000 - i as u64,
            updated_at: now - 500 - i as u64,
            expires_at: if i < LIVE {
                now + 3_600_000 + i as u64
            } else {
                now - 1
            },
            version: 1 + i as u64 % 5,
            meta: Default::default(),
        };
        assert!(side.store.store.create(&id, &record).await.unwrap());
        if i < LIVE {
            live.push((id, record));
        }
    }
    live
}

fn copy(from: &str, to: &str) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["sessions", "copy", "--from", from, "--to", to])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn copies(from: Side, to: Side) {
    let sessions = fill(&from).await;
    // One session is at the destination already, with other data: it is left alone.
    let (kept_id, kept) = &sessions[0];
    let other = Record {
        data: Arc::from(r#"{"already":"there"}"#),
        ..kept.clone()
    };
    assert!(to.store.store.create(kept_id, &other).await.unwrap());

    let (code, out, err) = copy(&from.flag, &to.flag);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!("copied {} sessions (1 already there)", LIVE - 1)
    );
    for (id, record) in &sessions[1..] {
        let got = to.store.store.load(id).await.unwrap();
        assert_eq!(
            got.as_ref(),
            Some(record),
            "{id:?} did not arrive unchanged"
        );
    }
    assert_eq!(to.store.store.load(kept_id).await.unwrap(), Some(other));
    let mut listed = 0;
    let mut cursor = None;
    let reopened = open(&to.toml, Box::new(())).await;
    loop {
        let page = reopened.store.list(cursor.as_deref(), 1000).await.unwrap();
        listed += page.sessions.len();
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if to.store.ordered {
        assert_eq!(listed, LIVE, "an expired session was copied");
    }

    let (code, out, err) = copy(&from.flag, &to.flag);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("copied 0 sessions ({LIVE} already there)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_to_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    copies(fs(dir.path()).await, sqlite(dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_fs() {
    let dir = tempfile::tempdir().unwrap();
    copies(sqlite(dir.path()).await, fs(dir.path()).await).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_redis() {
    let dir = tempfile::tempdir().unwrap();
    copies(sqlite(dir.path()).await, redis().await).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_to_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    copies(redis().await, sqlite(dir.path()).await).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_to_redis() {
    let dir = tempfile::tempdir().unwrap();
    copies(fs(dir.path()).await, redis().await).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_to_fs() {
    let dir = tempfile::tempdir().unwrap();
    copies(redis().await, fs(dir.path()).await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres() {
    let dir = tempfile::tempdir().unwrap();
    copies(sqlite(dir.path()).await, postgres().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_fs() {
    let dir = tempfile::tempdir().unwrap();
    copies(postgres().await, fs(dir.path()).await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres() {
    copies(postgres().await, postgres().await).await;
}

/// One kind to the same kind elsewhere: moving a database file's sessions into another file
/// (or one Redis into another) is a copy like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_sqlite() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    copies(sqlite(a.path()).await, sqlite(b.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_to_fs() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    copies(fs(a.path()).await, fs(b.path()).await).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_to_redis() {
    copies(redis().await, redis().await).await;
}

/// The memory store of a new process is empty, and what goes into it dies with the command:
/// refused on either side, as a command-line error (exit 2), before any store is opened.
#[test]
fn the_memory_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("x.db").display());
    let (code, _, err) = copy("memory", &db);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--from memory") && err.contains("nothing to copy"),
        "{err}"
    );
    let (code, _, err) = copy(&db, "memory");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--to memory"), "{err}");
    let (code, _, err) = copy("mysql://x", &db);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--from/--to"), "{err}");
    assert!(!dir.path().join("x.db").exists(), "a store was opened");
}
