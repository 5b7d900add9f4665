//! The audit log (`[audit] path`) through the real proxy: a scripted sequence of requests and
//! admin calls leaves exactly the expected lines, in order, with no session id and no data value
//! in the file; SIGHUP after a `mv` continues in a new file (logrotate); SIGTERM loses no event
//! the proxy answered for; a tiny queue drops and counts instead of blocking; an unopenable path
//! is refused at start with exit 2.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::support::{
    App, Browser, ProxyProcess, Resp, TestProxy, counter, fs_store, get, request, write_config,
};

/// The audit name of an id (its handle, the assertion's `sid`), computed here independently of
/// the proxy's code.
fn hash(id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(id.as_bytes()))
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Polls until `path` holds `n` lines (the writer works in the background), then returns them.
async fn wait_lines(path: &Path, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let lines = read_lines(path);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} holds {} lines, not {n}: {lines:?}",
            path.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A line without its time (checked apart) and operator (a client port the test does not pick).
fn shape(line: &Value) -> Value {
    let mut line = line.clone();
    let obj = line.as_object_mut().unwrap();
    let time = obj.remove("time").unwrap();
    let time = time.as_str().unwrap();
    // RFC 3339, UTC, milliseconds: 2026-12-01T22:30:00.123Z
    assert_eq!(time.len(), 24, "{time}");
    assert!(
        time.ends_with('Z') && time.as_bytes()[10] == b'T' && time.as_bytes()[19] == b'.',
        "{time}"
    );
    if let Some(op) = obj.remove("operator") {
        let op: SocketAddr = op.as_str().unwrap().parse().unwrap();
        assert!(op.ip().is_loopback(), "{op}");
        obj.insert("operator".to_owned(), json!("<loopback>"));
    }
    line
}

/// One request of `b`'s with request id `rid`, the app answering with `headers`.
async fn step(b: &mut Browser, rid: &str, headers: &[(&str, &str)]) -> Resp {
    let r = b
        .get("/")
        .client_sends(&[("x-request-id", rid)])
        .app_responds_with(headers)
        .await;
    assert_eq!(r.status, 200);
    r
}

async fn admin_call(admin: SocketAddr, method: Method, path: &str, body: &str) -> u16 {
    request(admin, method, path)
        .body(bytes::Bytes::from(body.to_owned()))
        .await
        .status
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_sequence_leaves_exactly_the_expected_lines_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\n",
            path.display()
        ),
    )
    .await;
    let admin = proxy.admin_addr();
    // Every value is one no hex hash could contain by chance (it has letters past f).
    let values = [
        "quilla-name",
        "plum-pie-item",
        "midnight-theme",
        "gold-plan-tier",
        "roxy-other-user",
        "token-xyz-value",
        "operator-wrote-this",
    ];
    let mut b = proxy.client();
    // 1: a new session with two keys.
    let r = step(
        &mut b,
        "req-1",
        &[(
            "X-Session-Update",
            r#"{"cart":"plum-pie-item","user":"quilla-name"}"#,
        )],
    )
    .await;
    assert!(r.app_saw().is_new());
    let first = b.cookie.clone().unwrap();
    // 2: an update adding a key; 3: one removing a key.
    step(
        &mut b,
        "req-2",
        &[("X-Session-Update", r#"{"theme":"midnight-theme"}"#)],
    )
    .await;
    step(&mut b, "req-3", &[("X-Session-Update", r#"{"cart":null}"#)]).await;
    // 4: a replace.
    step(
        &mut b,
        "req-4",
        &[(
            "X-Session-Replace",
            r#"{"plan":"gold-plan-tier","user":"quilla-name"}"#,
        )],
    )
    .await;
    // 5: a regenerate (login).
    step(&mut b, "req-5", &[("X-Session-Regenerate", "1")]).await;
    let second = b.cookie.clone().unwrap();
    assert_ne!(first, second);
    // 6: the app destroys it (logout).
    step(&mut b, "req-6", &[("X-Session-Destroy", "1")]).await;
    assert!(b.cookie.is_none());
    // 7: another user's session, then the operator reads, lists, patches and deletes it.
    let mut other = proxy.client();
    step(
        &mut other,
        "req-7",
        &[(
            "X-Session-Update",
            r#"{"token":"token-xyz-value","user":"roxy-other-user"}"#,
        )],
    )
    .await;
    let third = other.cookie.clone().unwrap();
    let one = format!("/sessions/{}", hash(&third));
    assert_eq!(admin_call(admin, Method::GET, &one, "").await, 200);
    assert_eq!(admin_call(admin, Method::GET, "/sessions", "").await, 200);
    assert_eq!(
        admin_call(
            admin,
            Method::PATCH,
            &one,
            r#"{"note":"operator-wrote-this"}"#
        )
        .await,
        200
    );
    assert_eq!(admin_call(admin, Method::DELETE, &one, "").await, 204);
    // A delete of a session that is gone changes nothing, and is no line.
    assert_eq!(admin_call(admin, Method::DELETE, &one, "").await, 404);
    // 8: the deleted user comes back: a fresh session, untouched, is no line either.
    let r = step(&mut other, "req-8", &[]).await;
    assert!(r.app_saw().is_new());
    let metrics = get(admin, "/metrics").await;
    let metrics = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "session_proxy_audit_dropped_total 0"),
        "{metrics}"
    );
    // Stopping writes and fsyncs whatever is queued: the file is complete now.
    proxy.stop().await;

    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [&first, &second, &third] {
        assert!(
            !text.contains(secret.as_str()),
            "a session id in the log:\n{text}"
        );
    }
    for value in values {
        assert!(
            !text.contains(value),
            "the data value {value:?} in the log:\n{text}"
        );
    }
    let (h1, h2, h3) = (hash(&first), hash(&second), hash(&third));
    let got: Vec<Value> = read_lines(&path).iter().map(shape).collect();
    let want = vec![
        json!({"event":"created","sid":h1,"keys":["cart","user"],"request_id":"req-1"}),
        json!({"event":"updated","sid":h1,"keys":["theme"],"request_id":"req-2"}),
        json!({"event":"updated","sid":h1,"keys":["cart"],"request_id":"req-3"}),
        json!({"event":"replaced","sid":h1,"keys":["plan","user"],"request_id":"req-4"}),
        json!({"event":"regenerated","sid":h2,"old_sid":h1,"new_sid":h2,"keys":[],"request_id":"req-5"}),
        json!({"event":"destroyed","sid":h2,"reason":"app","request_id":"req-6"}),
        json!({"event":"created","sid":h3,"keys":["token","user"],"request_id":"req-7"}),
        json!({"event":"read","sid":h3,"operator":"<loopback>","action":"GET /sessions/{handle}"}),
        json!({"event":"read","operator":"<loopback>","action":"GET /sessions"}),
        json!({"event":"updated","sid":h3,"keys":["note"],"operator":"<loopback>","action":"PATCH /sessions/{handle}"}),
        json!({"event":"destroyed","sid":h3,"reason":"admin","operator":"<loopback>","action":"DELETE /sessions/{handle}"}),
    ];
    assert_eq!(got, want, "the audit log:\n{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the audit log is readable by others");
    }
}

/// The issue's `expired` event at load (`SessionStore::load_or_expired`), on the memory store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_loaded_after_its_idle_timeout_is_an_expired_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        &format!(
            "[session]\nidle_timeout = \"1s\"\n[audit]\npath = \"{}\"\n",
            path.display()
        ),
    )
    .await;
    let mut b = proxy.client();
    step(
        &mut b,
        "early",
        &[("X-Session-Update", r#"{"k":"short-lived-value"}"#)],
    )
    .await;
    let id = b.cookie.clone().unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = step(&mut b, "late", &[]).await;
    assert!(r.app_saw().is_new());
    proxy.stop().await;
    let got: Vec<Value> = read_lines(&path).iter().map(shape).collect();
    assert_eq!(
        got,
        vec![
            json!({"event":"created","sid":hash(&id),"keys":["k"],"request_id":"early"}),
            json!({"event":"expired","sid":hash(&id),"request_id":"late"}),
        ]
    );
}

/// logrotate's way: `mv` the file, SIGHUP, and the next lines go to a new file at the path;
/// lines written between the two stay in the moved file. SIGTERM right after a response loses
/// nothing: the binary writes and fsyncs the queue before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_after_a_move_continues_in_a_new_file_and_sigterm_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    let app = App::start().await;
    let config = write_config(
        dir.path(),
        "proxy.toml",
        &format!(
            "upstream = \"http://{}\"\n[store]\nkind = \"memory\"\n[audit]\npath = \"{}\"\n",
            app.addr,
            path.display()
        ),
    );
    let mut proxy = ProxyProcess::spawn(&["--config", &config]);
    let mut b = Browser::new(proxy.addr, "session_id");
    step(&mut b, "r1", &[("X-Session-Update", r#"{"n1":"value-1"}"#)]).await;
    wait_lines(&path, 1).await;
    std::fs::rename(&path, &rotated).unwrap();
    // Before the signal: still the open (moved) file.
    step(&mut b, "r2", &[("X-Session-Update", r#"{"n2":"value-2"}"#)]).await;
    wait_lines(&rotated, 2).await;
    proxy.signal("HUP");
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no new file after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    step(&mut b, "r3", &[("X-Session-Update", r#"{"n3":"value-3"}"#)]).await;
    wait_lines(&path, 1).await;
    // Answered, then at once SIGTERM: its line must be in the file when the process is gone.
    step(&mut b, "r4", &[("X-Session-Update", r#"{"n4":"value-4"}"#)]).await;
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));

    let old: Vec<Value> = read_lines(&rotated);
    let new: Vec<Value> = read_lines(&path);
    let ids = |lines: &[Value]| -> Vec<(String, String)> {
        lines
            .iter()
            .map(|l| {
                (
                    l["event"].as_str().unwrap().to_owned(),
                    l["request_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pair = |e: &str, r: &str| (e.to_owned(), r.to_owned());
    assert_eq!(ids(&old), [pair("created", "r1"), pair("updated", "r2")]);
    assert_eq!(ids(&new), [pair("updated", "r3"), pair("updated", "r4")]);
    let sid = hash(b.cookie.as_ref().unwrap());
    assert!(old.iter().chain(&new).all(|l| l["sid"] == sid.as_str()));
}

/// A queue of one, flooded by concurrent requests: every request is answered, and every event
/// is either a line in the file or counted in `audit_dropped_total`, never waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_and_never_blocks_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\nqueue = 1\n",
            path.display()
        ),
    )
    .await;
    let admin = proxy.admin_addr();
    let dropped = || counter(admin, "session_proxy_audit_dropped_total");
    let addr = proxy.addr;
    let mut sent = 0u64;
    // Rounds of 200 concurrent creates until some were dropped (the first round, in practice).
    for _ in 0..20 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            tasks.spawn(async move {
                get(addr, "/")
                    .app_responds_with(&[("X-Session-Update", &format!(r#"{{"i":{i}}}"#))])
                    .await
                    .status
            });
        }
        while let Some(status) = tasks.join_next().await {
            assert_eq!(
                status.unwrap(),
                200,
                "a request failed under a full audit queue"
            );
            sent += 1;
        }
        if dropped().await > 0 {
            break;
        }
    }
    let dropped = dropped().await;
    assert!(
        dropped > 0,
        "{sent} events through a queue of one, none dropped"
    );
    proxy.stop().await;
    let lines = read_lines(&path);
    assert!(lines.iter().all(|l| l["event"] == "created"));
    assert_eq!(
        lines.len() as u64 + dropped,
        sent,
        "every event is a line or counted as dropped"
    );
}

/// An audit path that cannot be opened is the operator's to fix: refused at start and by
/// `check`, exit 2, with the key and the path named.
#[test]
fn an_unopenable_audit_path_is_refused_at_start_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        dir.path().join("no-such-dir").join("audit.log"),
        // A directory, not a file.
        dir.path().to_path_buf(),
    ] {
        let config = write_config(
            dir.path(),
            "proxy.toml",
            &format!(
                "[store]\nkind = \"memory\"\n[audit]\npath = \"{}\"\n",
                bad.display()
            ),
        );
        for args in [
            vec!["--config", &config, "--listen", "127.0.0.1:0"],
            vec!["check", "--config", &config],
        ] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
                .args(&args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains("`audit.path`") && err.contains(&bad.display().to_string()),
                "{args:?}: {err}"
            );
        }
    }
}

/// With the user index, each line names the session's user, and sessions the app revokes or
/// `max_per_user` evicts are `destroyed` lines with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_evicted_sessions_are_destroyed_lines_with_their_user() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        &format!(
            "[session]\nuser_key = \"user\"\nmax_per_user = 2\n[audit]\npath = \"{}\"\n",
            path.display()
        ),
    )
    .await;
    let login = [("X-Session-Update", r#"{"user":"ada"}"#)];
    let (mut a, mut b, mut c) = (proxy.client(), proxy.client(), proxy.client());
    step(&mut a, "a", &login).await;
    step(&mut b, "b", &login).await;
    // The third sign-in evicts the least recently used other one: a's.
    step(&mut c, "c", &login).await;
    step(&mut c, "revoke", &[("X-Session-Revoke", "others")]).await;
    let (ida, idb, idc) = (
        a.cookie.clone().unwrap(),
        b.cookie.clone().unwrap(),
        c.cookie.clone().unwrap(),
    );
    let got: Vec<Value> = wait_lines(&path, 5).await.iter().map(shape).collect();
    let created = |id: &str, rid: &str| json!({"event": "created", "sid": hash(id), "keys": ["user"], "user": "ada", "request_id": rid});
    assert_eq!(
        got,
        vec![
            created(&ida, "a"),
            created(&idb, "b"),
            created(&idc, "c"),
            json!({"event": "destroyed", "sid": hash(&ida), "reason": "evicted", "user": "ada", "request_id": "c"}),
            json!({"event": "destroyed", "sid": hash(&idb), "reason": "revoked", "user": "ada", "request_id": "revoke"}),
        ]
    );
    proxy.stop().await;
}

/// A `[store]` table for `kind` and whatever keeps its backend alive (a directory, a server).
async fn store_for(kind: &str, dir: &Path) -> (String, Box<dyn std::any::Any + Send>) {
    match kind {
        "memory" => ("[store]\nkind = \"memory\"\n".to_owned(), Box::new(())),
        "fs" => (
            format!("{}\n", fs_store(&dir.join("sessions"))),
            Box::new(()),
        ),
        "sqlite" => (
            format!(
                "[store]\nkind = \"sqlite\"\npath = \"{}\"\nfsync = false\n",
                dir.join("sessions.db").display()
            ),
            Box::new(()),
        ),
        #[cfg(feature = "redis")]
        "redis" => {
            let server = crate::support::redis::RedisServer::start().await;
            (
                format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", server.url()),
                Box::new(server),
            )
        }
        #[cfg(feature = "postgres")]
        "postgres" => {
            let db = crate::support::postgres::PgDb::new().await;
            (
                format!("[store]\nkind = \"postgres\"\nurl = \"{}\"\n", db.url()),
                Box::new(db),
            )
        }
        #[cfg(feature = "redis")]
        "redis_cluster" => {
            let cluster = crate::support::redis::RedisCluster::start().await;
            let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
            (
                format!(
                    "[store]\nkind = \"redis\"\nnodes = [{}]\n",
                    nodes.join(", ")
                ),
                Box::new(cluster),
            )
        }
        other => panic!("no store {other}"),
    }
}

/// A config whose sessions expire after 1 s idle, indexed by `user`, audited to `path`, on
/// `store` (a `[store]` table from [`store_for`], which later lines may extend).
fn expiring_in_1s(path: &Path, store: &str) -> String {
    format!(
        "[session]\nidle_timeout = \"1s\"\nuser_key = \"user\"\n[audit]\npath = \"{}\"\n{store}",
        path.display()
    )
}

/// On `kind`, with the user index: a session found expired at its next request is one
/// `expired` line naming its user and that request; the same dead cookie again is no line (the
/// load that saw the expiry removed the session), and the app saw a new session both times.
async fn expired_at_load_is_one_line_with_its_user(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (store, _guard) = store_for(kind, dir.path()).await;
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &expiring_in_1s(&path, &store)).await;
    let mut b = proxy.client();
    step(
        &mut b,
        "early",
        &[("X-Session-Update", r#"{"user":"ada"}"#)],
    )
    .await;
    let id = b.cookie.clone().unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(step(&mut b, "late", &[]).await.app_saw().is_new());
    assert_eq!(
        b.cookie.as_deref(),
        Some(id.as_str()),
        "the dead cookie was replaced"
    );
    assert!(step(&mut b, "again", &[]).await.app_saw().is_new());
    proxy.stop().await;
    let got: Vec<Value> = read_lines(&path).iter().map(shape).collect();
    assert_eq!(
        got,
        vec![
            json!({"event":"created","sid":hash(&id),"keys":["user"],"user":"ada","request_id":"early"}),
            json!({"event":"expired","sid":hash(&id),"user":"ada","request_id":"late"}),
        ],
        "{kind}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_at_load_memory() {
    expired_at_load_is_one_line_with_its_user("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_at_load_fs() {
    expired_at_load_is_one_line_with_its_user("fs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_at_load_sqlite() {
    expired_at_load_is_one_line_with_its_user("sqlite").await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_at_load_redis() {
    expired_at_load_is_one_line_with_its_user("redis").await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_at_load_postgres() {
    expired_at_load_is_one_line_with_its_user("postgres").await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_at_load_redis_cluster() {
    expired_at_load_is_one_line_with_its_user("redis_cluster").await;
}

/// On `kind`, a session left to expire with no request: the sweeper removes it and writes one
/// `expired` line with its user and no request id; its cookie afterwards is no second line.
async fn the_sweeper_writes_one_expired_line(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (store, _guard) = store_for(kind, dir.path()).await;
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        &format!(
            "{}sweep_interval = \"200ms\"\n",
            expiring_in_1s(&path, &store)
        ),
    )
    .await;
    let mut b = proxy.client();
    step(
        &mut b,
        "early",
        &[("X-Session-Update", r#"{"user":"ada"}"#)],
    )
    .await;
    let id = b.cookie.clone().unwrap();
    let got: Vec<Value> = wait_lines(&path, 2).await.iter().map(shape).collect();
    assert_eq!(
        got[1],
        json!({"event":"expired","sid":hash(&id),"user":"ada"}),
        "{kind}"
    );
    assert!(step(&mut b, "late", &[]).await.app_saw().is_new());
    proxy.stop().await;
    assert_eq!(
        read_lines(&path).len(),
        2,
        "{kind}: {:?}",
        read_lines(&path)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_writes_expired_lines_memory() {
    the_sweeper_writes_one_expired_line("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_writes_expired_lines_fs() {
    the_sweeper_writes_one_expired_line("fs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_writes_expired_lines_sqlite() {
    the_sweeper_writes_one_expired_line("sqlite").await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_writes_expired_lines_postgres() {
    the_sweeper_writes_one_expired_line("postgres").await;
}

/// Two proxies on one store (an SQLite file, a Redis), each with its own audit log: one expired
/// cookie sent to both at once, many times, is exactly one `expired` line across the two logs.
/// With `sweep`, both proxies also sweep every 100 ms, racing the loads and each other.
async fn two_proxies_write_one_expired_line(kind: &str, sweep: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _guard) = store_for(kind, dir.path()).await;
    let app = App::start().await;
    let sweep = if sweep {
        "sweep_interval = \"100ms\"\n"
    } else {
        ""
    };
    let mut proxies = Vec::new();
    let mut logs = Vec::new();
    for n in 0..2 {
        let path = dir.path().join(format!("audit-{n}.log"));
        proxies.push(
            TestProxy::start(&app, &format!("{}{sweep}", expiring_in_1s(&path, &store))).await,
        );
        logs.push(path);
    }
    let mut b = proxies[0].client();
    step(
        &mut b,
        "early",
        &[("X-Session-Update", r#"{"user":"ada"}"#)],
    )
    .await;
    let id = b.cookie.clone().unwrap();
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..8 {
        for proxy in &proxies {
            let (addr, cookie) = (proxy.addr, format!("session_id={id}"));
            tasks.spawn(async move {
                get(addr, "/")
                    .client_sends(&[("cookie", &cookie), ("x-request-id", &format!("r{round}"))])
                    .await
                    .status
            });
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    for proxy in proxies {
        proxy.stop().await;
    }
    let expired: Vec<Value> = logs
        .iter()
        .flat_map(|l| read_lines(l))
        .filter(|l| l["event"] == "expired")
        .collect();
    assert_eq!(expired.len(), 1, "{kind}: {expired:?}");
    assert_eq!(expired[0]["sid"], hash(&id).as_str());
    assert_eq!(expired[0]["user"], "ada");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_on_one_sqlite_file_write_one_expired_line() {
    two_proxies_write_one_expired_line("sqlite", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweeping_proxies_on_one_sqlite_file_write_one_expired_line() {
    two_proxies_write_one_expired_line("sqlite", true).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweeping_proxies_on_one_postgres_write_one_expired_line() {
    two_proxies_write_one_expired_line("postgres", true).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_on_one_redis_write_one_expired_line() {
    two_proxies_write_one_expired_line("redis", false).await;
}

/// The same through the built binary, on the default store (sqlite): the `Timed` wrapper the
/// binary opens must forward `load_or_expired`, or the expiry would read as a missing session.
#[test]
fn the_binary_writes_an_expired_line_at_load_on_the_default_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(App::start());
    let config = write_config(
        dir.path(),
        "proxy.toml",
        &format!(
            "upstream = \"http://{}\"\n[session]\nidle_timeout = \"1s\"\n[store]\npath = \"{}\"\nfsync = false\n[audit]\npath = \"{}\"\n",
            app.addr,
            dir.path().join("sessions.db").display(),
            path.display()
        ),
    );
    let mut proxy = ProxyProcess::spawn(&["--config", &config]);
    let mut b = Browser::new(proxy.addr, "session_id");
    rt.block_on(async {
        step(&mut b, "early", &[("X-Session-Update", r#"{"k":1}"#)]).await;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(step(&mut b, "late", &[]).await.app_saw().is_new());
    });
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    let id = b.cookie.clone().unwrap();
    let got: Vec<Value> = read_lines(&path).iter().map(shape).collect();
    assert_eq!(
        got,
        vec![
            json!({"event":"created","sid":hash(&id),"keys":["k"],"request_id":"early"}),
            json!({"event":"expired","sid":hash(&id),"request_id":"late"}),
        ]
    );
}
