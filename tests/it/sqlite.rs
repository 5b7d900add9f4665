//! The sqlite store through the real binary: the default store, a SIGKILL in a storm of writes
//! (and the same storm for the fs store),
//! a schema from a newer binary, two processes on one file, unwritable paths, a full disk, and
//! the sweeper and `sessions prune`. The database is checked with the rusqlite crate directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};

use crate::support::{App, ProxyProcess, TestProxy, app, get};

fn binary(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(args)
        .output()
        .unwrap()
}

fn sqlite_flag(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

/// `PRAGMA integrity_check` and the number of rows, read by the rusqlite crate itself.
fn inspect(path: &Path) -> (String, i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    (check, rows)
}

/// One request that may fail (the proxy may be killed under it): the status and the session
/// cookie set, once the whole response has arrived; `None` if the connection failed.
async fn try_update(
    addr: SocketAddr,
    cookie: Option<&str>,
    update: &str,
) -> Option<(u16, Option<String>)> {
    let mut req = Request::get(format!("http://{addr}/")).header(
        app::RESPOND_WITH,
        app::respond_with_value(&[("X-Session-Update", update)]),
    );
    if let Some(c) = cookie {
        req = req.header("cookie", format!("session_id={c}"));
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.strip_prefix("session_id="))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .next();
    resp.into_body().collect().await.ok()?;
    Some((status, cookie))
}

/// The session a cookie names, as the app sees it through `proxy`.
async fn seen(addr: SocketAddr, cookie: &str) -> (bool, Value) {
    let r = get(addr, "/")
        .client_sends(&[("cookie", &format!("session_id={cookie}"))])
        .await;
    (r.app_saw().is_new(), r.app_saw().session())
}

/// With no config and no flag the store is sqlite, in `sessions.db` of the working directory.
#[test]
fn the_default_store_is_sqlite_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = dir.path().join("sessions.db");
    assert_eq!(inspect(&db), ("ok".to_owned(), 0));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the database holds every session: owner only");
}

/// Clients in a storm of updates, each to its own session, one request at a time.
const CLIENTS: usize = 32;

/// What a storm left: each client's cookie and the last update answered 200 to it.
struct Storm {
    cookies: Vec<String>,
    acked: Vec<u64>,
    answered: u64,
}

/// Starts the binary with `args`, makes a session per client, sends a storm of concurrent
/// updates, and SIGKILLs the proxy once 500 were answered.
async fn storm_then_sigkill(args: &[&str]) -> Storm {
    let proxy = ProxyProcess::spawn(args);
    let mut cookies = Vec::new();
    for c in 0..CLIENTS {
        let (status, cookie) = try_update(proxy.addr, None, &json!({"c": c, "n": 0}).to_string())
            .await
            .unwrap();
        assert_eq!(status, 200);
        cookies.push(cookie.unwrap());
    }
    // Each client remembers the last update answered 200: that one was stored before the
    // answer left the proxy.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let total = Arc::new(AtomicU64::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let mut storm = Vec::new();
    for (c, cookie) in cookies.iter().cloned().enumerate() {
        let (acked, total, dead, addr) = (acked.clone(), total.clone(), dead.clone(), proxy.addr);
        storm.push(tokio::spawn(async move {
            for n in 1..100_000u64 {
                let update = json!({"n": n, format!("k{}", n % 7): n}).to_string();
                match try_update(addr, Some(&cookie), &update).await {
                    Some((200, _)) => {
                        acked[c].store(n, Ordering::SeqCst);
                        total.fetch_add(1, Ordering::SeqCst);
                    }
                    Some((status, _)) => panic!("client {c}: status {status} before the kill"),
                    None => {
                        assert!(
                            dead.load(Ordering::SeqCst),
                            "a request failed before the kill"
                        );
                        return;
                    }
                }
            }
        }));
    }
    while total.load(Ordering::SeqCst) < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dead.store(true, Ordering::SeqCst);
    proxy.signal("KILL");
    for client in storm {
        client.await.unwrap();
    }
    drop(proxy);
    Storm {
        cookies,
        acked: acked.iter().map(|a| a.load(Ordering::SeqCst)).collect(),
        answered: total.load(Ordering::SeqCst),
    }
}

/// Restarts the binary with `args`: every session is there, holding its last answered update
/// (or the one in flight at the kill).
async fn every_answered_write_survived(args: &[&str], storm: &Storm) {
    let proxy = ProxyProcess::spawn(args);
    for (c, cookie) in storm.cookies.iter().enumerate() {
        let (new, data) = seen(proxy.addr, cookie).await;
        assert!(!new, "client {c}: its session is gone");
        let n = data["n"].as_u64().unwrap();
        let last = storm.acked[c];
        assert!(
            n == last || n == last + 1,
            "client {c}: stored n={n}, but the last answered update was n={last} \
             ({} updates were answered in all)",
            storm.answered
        );
        assert_eq!(data["c"], c, "client {c}: another session's data");
    }
}

/// SIGKILL in the middle of a storm of concurrent updates: after a restart, every update whose
/// response reached its client is there (the one in flight may be too), and the file is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_storm_keeps_every_answered_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let app = App::start().await;
    let upstream = format!("http://{}", app.addr);
    let store = sqlite_flag(&db);
    let args = ["--store", store.as_str(), "--upstream", upstream.as_str()];
    let storm = storm_then_sigkill(&args).await;

    let (check, rows) = tokio::task::spawn_blocking({
        let db = db.clone();
        move || inspect(&db)
    })
    .await
    .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(rows, CLIENTS as i64);
    every_answered_write_survived(&args, &storm).await;
}

/// The same for the fs store (fsync on, its default): after the kill every session file
/// parses (temp + fsync + rename never leaves a torn one) and no answered write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_storm_on_the_fs_store_keeps_every_answered_write() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start().await;
    let upstream = format!("http://{}", app.addr);
    let store = format!("fs:{}", dir.path().display());
    let args = ["--store", store.as_str(), "--upstream", upstream.as_str()];
    let storm = storm_then_sigkill(&args).await;

    let mut sessions = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("session_") {
            let bytes = std::fs::read(&path).unwrap();
            session_proxy::store::Record::from_json(&bytes)
                .unwrap_or_else(|e| panic!("{name} is torn: {e}"));
            sessions += 1;
        }
    }
    assert_eq!(sessions, CLIENTS, "one file per session");
    every_answered_write_survived(&args, &storm).await;
}

/// A file whose schema is newer than the binary knows is refused at start, with the reason.
#[test]
fn a_newer_schema_version_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA user_version = 999").unwrap();
    drop(conn);
    let store = sqlite_flag(&db);
    for args in [
        vec!["check", "--store", &store],
        vec!["--store", &store, "--listen", "127.0.0.1:0"],
    ] {
        let out = binary(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("schema version 999 is newer than this binary knows")
                && err.contains(&db.display().to_string()),
            "{err}"
        );
    }
    // Nothing was written to it.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 999);
}

/// Two proxy processes on one file: concurrent changes to one session through both are all
/// kept (each update is a read-merge-write under SQLite's write lock), and a destroy through
/// one is seen by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let app = App::start().await;
    let upstream = format!("http://{}", app.addr);
    let store = sqlite_flag(&db);
    let args = ["--store", store.as_str(), "--upstream", upstream.as_str()];
    let (a, b) = (ProxyProcess::spawn(&args), ProxyProcess::spawn(&args));

    let (status, cookie) = try_update(a.addr, None, r#"{"base":0}"#).await.unwrap();
    assert_eq!(status, 200);
    let cookie = cookie.unwrap();
    let mut writes = Vec::new();
    for i in 0..40 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let cookie = cookie.clone();
        writes.push(tokio::spawn(async move {
            try_update(
                addr,
                Some(&cookie),
                &json!({ format!("k{i}"): i }).to_string(),
            )
            .await
        }));
    }
    for w in writes {
        assert_eq!(w.await.unwrap().map(|(s, _)| s), Some(200));
    }
    let mut want = json!({"base": 0});
    for i in 0..40 {
        want[format!("k{i}")] = json!(i);
    }
    for proxy in [&a, &b] {
        assert_eq!(seen(proxy.addr, &cookie).await, (false, want.clone()));
    }
    let r = get(a.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={cookie}"))])
        .app_responds_with(&[("X-Session-Destroy", "1")])
        .await;
    assert_eq!(r.status, 200);
    assert!(
        seen(b.addr, &cookie).await.0,
        "destroyed through A, alive through B"
    );
    drop((a, b));
    assert_eq!(inspect(&db).0, "ok");
}

/// Clears the immutable flag it set, even when the test fails, so the directory can go.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let ok = Command::new("chattr").arg("+i").arg(path).status().unwrap();
        assert!(ok.success(), "chattr +i {} failed", path.display());
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// A path the proxy cannot write is refused at start (exit 1, the path in the message), never
/// found out on the first request. Tests run as root, whom permission bits do not stop, so:
/// a path under a regular file (no directory can be made there), a directory with the
/// immutable flag (`chattr +i`: not even root may create the file in it), and an existing
/// database file with that flag (SQLite would quietly open it read-only).
#[test]
fn an_unwritable_path_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "not a directory").unwrap();
    let locked_dir = dir.path().join("locked");
    std::fs::create_dir(&locked_dir).unwrap();
    let locked_file = dir.path().join("locked.db");
    let made = binary(&["check", "--store", &sqlite_flag(&locked_file)]);
    assert!(made.status.success());

    let under_file = file.join("sessions.db");
    let in_locked_dir = locked_dir.join("sessions.db");
    let _guards = (Immutable::set(&locked_dir), Immutable::set(&locked_file));
    for (db, want) in [
        (&under_file, "is not a directory"),
        (&in_locked_dir, "Operation not permitted"),
        (&locked_file, "not writable"),
    ] {
        let out = binary(&["--store", &sqlite_flag(db), "--listen", "127.0.0.1:0"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", db.display());
        assert!(
            err.contains(&db.display().to_string()) && err.contains(want),
            "{}: {err}",
            db.display()
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    }
}

/// Unmounts the tmpfs it mounted, even when the test fails.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The disk fills up mid-run (a 1 MiB tmpfs): writes fail with 503 and a log line that says
/// so; the sessions written before stay readable, and the file passes `integrity_check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_corrupts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs needs root");
    let _unmount = Tmpfs(disk.clone());
    let db = disk.join("sessions.db");
    let log = dir.path().join("proxy.log");
    let app = App::start().await;
    let upstream = format!("http://{}", app.addr);
    let store = sqlite_flag(&db);
    let proxy = ProxyProcess::spawn_logging(
        &["--store", &store, "--upstream", &upstream],
        "warn",
        std::fs::File::create(&log).unwrap(),
    );

    let mut early = Vec::new();
    for i in 0..5 {
        let data = json!({"early": i});
        let (status, cookie) = try_update(proxy.addr, None, &data.to_string())
            .await
            .unwrap();
        assert_eq!(status, 200);
        let cookie = cookie.unwrap();
        // Its first return is a write (session.first_lifetime): made before the disk fills.
        assert_eq!(seen(proxy.addr, &cookie).await, (false, data.clone()));
        early.push((cookie, data));
    }
    // New sessions of 12 KiB each until the disk is full: 1 MiB holds fewer than 90. Once it
    // is, writes fail with 503; one may still succeed now and then, when a checkpoint let SQLite
    // reuse the WAL's space, so the test counts both until it has seen several 503s.
    let big = "x".repeat(12 * 1024);
    let (mut stored, mut refused) = (0i64, 0);
    for i in 0..400 {
        let (status, _) = try_update(proxy.addr, None, &json!({"big": big, "i": i}).to_string())
            .await
            .unwrap();
        match status {
            200 => stored += 1,
            503 => refused += 1,
            other => panic!("status {other} on a full disk"),
        }
        if refused == 5 {
            break;
        }
    }
    assert_eq!(
        refused, 5,
        "1 MiB never filled up ({stored} sessions stored)"
    );
    assert!(stored > 0);
    for (cookie, data) in &early {
        assert_eq!(seen(proxy.addr, cookie).await, (false, data.clone()));
    }
    drop(proxy);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("sqlite write batch failed")
                && l.contains("database or disk is full")),
        "no log line says the disk is full:\n{text}"
    );
    let (check, rows) = inspect(&db);
    assert_eq!(check, "ok");
    assert_eq!(
        rows,
        5 + stored,
        "a failed write left a row, or an answered one is missing"
    );
}

/// The sweeper and `sessions prune` remove expired sessions from the file through the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_and_sessions_prune_work_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let app = App::start().await;
    let store = format!(
        "[session]\nidle_timeout = \"1s\"\n[store]\nkind = \"sqlite\"\npath = \"{}\"\n\
         sweep_interval = \"300ms\"",
        db.display()
    );
    let proxy = TestProxy::start(&app, &store).await;
    for _ in 0..3 {
        let mut b = proxy.client();
        b.get("/")
            .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
            .await;
    }
    assert_eq!(inspect(&db).1, 3);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(inspect(&db).1, 0, "the sweeper left expired rows");
    proxy.stop().await;

    // Expired rows written by someone else (a proxy that was stopped before its sweep).
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "INSERT INTO sessions (handle, data, created_at, updated_at, expires_at, version) VALUES ('AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', '{}', 1, 1, 2, 1);
         INSERT INTO sessions (handle, data, created_at, updated_at, expires_at, version) VALUES ('BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA', '{}', 1, 1, 2, 1);",
    )
    .unwrap();
    drop(conn);
    let out = binary(&["sessions", "prune", "--store", &sqlite_flag(&db)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "removed 2 expired sessions"
    );
    assert_eq!(inspect(&db), ("ok".to_owned(), 0));
}
