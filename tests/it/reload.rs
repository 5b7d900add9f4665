//! SIGHUP reloads the whole configuration in the running binary ([ops] part 2): the upstream,
//! the cookie, the skip rules, the session size, the limits and the timeouts change for new
//! requests while a request in flight finishes under the settings it began with; a setting that
//! takes a restart is named and kept; a file that fails validation changes nothing and is
//! refused with the same error `session-proxy check` gives.

use std::path::Path;

use bytes::Bytes;
use http::Method;

use crate::support::otlp::Collector;
use crate::support::{App, Browser, Resp, Running, get, handle, request};

const UPDATE: (&str, &str) = ("X-Session-Update", r#"{"a":1}"#);

/// The config the test starts with, and the one it reloads into, over the same sqlite file.
fn config(dir: &Path, upstream: &App, second: bool) -> String {
    let db = dir.join("sessions.db");
    let (name, skip, max_size, body, response, timeout) = if second {
        ("sid_two", "/assets/", 64, 10, "500ms", "3s")
    } else {
        ("sid_one", "/static/", 4096, 1_000_000, "30s", "2s")
    };
    // The one setting here that takes a restart.
    let upgrade = if second {
        format!("upgrade_socket = \"{}\"\n", dir.join("up.sock").display())
    } else {
        String::new()
    };
    format!(
        "upstream = \"http://{}\"\n{upgrade}\
         [cookie]\nname = \"{name}\"\n\
         [session]\nskip = [\"{skip}\"]\nmax_size = {max_size}\n\
         [store]\nkind = \"sqlite\"\npath = \"{}\"\ntimeout = \"{timeout}\"\n\
         [limits]\nmax_body_size = {body}\n\
         [upstream_timeouts]\nresponse = \"{response}\"\n",
        upstream.addr,
        db.display()
    )
}

fn cookie_named(r: &Resp) -> Option<String> {
    r.set_cookies()
        .iter()
        .find_map(|c| c.split('=').next().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_every_setting_for_new_requests_and_refuses_a_broken_file_whole() {
    let (one, two) = (App::start().await, App::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, config(dir.path(), &one, false)).unwrap();
    let file_arg = file.to_str().unwrap();
    let running = Running::spawn(&["--config", file_arg, "--admin-listen", "127.0.0.1:0"]);
    let addr = running.proxy.addr;

    let r = get(addr, "/").app_responds_with(&[UPDATE]).await;
    assert_eq!(cookie_named(&r).as_deref(), Some("sid_one"));
    let r = get(addr, "/static/x").app_responds_with(&[UPDATE]).await;
    assert_eq!(cookie_named(&r), None, "skipped");
    assert_eq!((one.hits(), two.hits()), (2, 0));

    // In flight across the reload: it finishes under the settings it began with.
    let in_flight = tokio::spawn(async move {
        get(addr, "/")
            .app_takes_ms(1500)
            .app_responds_with(&[UPDATE])
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    std::fs::write(&file, config(dir.path(), &two, true)).unwrap();
    let line = running.hangup_line("configuration reloaded").await;
    assert!(line.contains("restart=upgrade_socket"), "{line}");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(cookie_named(&r).as_deref(), Some("sid_one"));
    assert_eq!(one.hits(), 3);

    // New requests: the new app, cookie, skip rules, size, body limit and response timeout.
    let r = get(addr, "/").app_responds_with(&[UPDATE]).await;
    assert_eq!(cookie_named(&r).as_deref(), Some("sid_two"));
    assert_eq!((one.hits(), two.hits()), (3, 1));
    let r = get(addr, "/assets/x").app_responds_with(&[UPDATE]).await;
    assert_eq!(cookie_named(&r), None, "the new skip rule");
    let r = get(addr, "/static/x").app_responds_with(&[UPDATE]).await;
    assert_eq!(
        cookie_named(&r).as_deref(),
        Some("sid_two"),
        "no longer skipped"
    );
    let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(100));
    let r = get(addr, "/")
        .app_responds_with(&[("X-Session-Update", &big)])
        .await;
    assert_eq!(cookie_named(&r), None, "over the new session.max_size");
    let r = request(addr, Method::POST, "/")
        .body(Bytes::from(vec![b'x'; 100]))
        .await;
    assert_eq!(r.status, 413, "over the new limits.max_body_size");
    let r = get(addr, "/").app_takes_ms(1500).await;
    assert_eq!(r.status, 504, "over the new upstream_timeouts.response");

    // A file that fails validation: refused whole, named as `check` names it.
    let broken = config(dir.path(), &one, false).replace("max_size = 4096", "max_size = -1");
    std::fs::write(&file, &broken).unwrap();
    let line = running.hangup_line("configuration not reloaded").await;
    assert!(line.contains("session.max_size"), "{line}");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["-c", file_arg, "check"])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("session.max_size"),
        "{check:?}"
    );
    let r = get(addr, "/").app_responds_with(&[UPDATE]).await;
    assert_eq!(
        cookie_named(&r).as_deref(),
        Some("sid_two"),
        "nothing changed"
    );
    assert_eq!((one.hits(), two.hits()), (3, 6));
    running.stop();
}

/// The config of [`sighup_moves_the_audit_log_and_traces_and_switches_the_log_format`]: the
/// memory store (a reload keeps its sessions), and `extra` sections.
fn writers_config(upstream: &App, extra: &str) -> String {
    format!(
        "upstream = \"http://{}\"\n[store]\nkind = \"memory\"\n{extra}",
        upstream.addr
    )
}

/// The audit log's lines, `[]` while there is no file.
fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (10 s at most) until the audit log at `path` has `n` lines.
async fn audit_has(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let start = std::time::Instant::now();
    loop {
        let lines = audit_lines(path);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{} audit lines of {n} in {}",
            lines.len(),
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The writers a reload reopens while serving: the audit log turned on, moved to a new file
/// (the old one gets nothing more) and off; traces turned on and off; the log's format switched
/// both ways. A new audit path that cannot be opened refuses the reload whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_moves_the_audit_log_and_traces_and_switches_the_log_format() {
    let app = App::start().await;
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    let (first, second) = (dir.path().join("one.jsonl"), dir.path().join("two.jsonl"));
    std::fs::write(&file, writers_config(&app, "")).unwrap();
    let running = Running::spawn(&["--config", file.to_str().unwrap()]);
    let addr = running.proxy.addr;
    let mut browser = Browser::new(addr, "session_id");
    browser.get("/").app_responds_with(&[UPDATE]).await;
    assert!(browser.cookie.is_some());

    // On: the audit log, traces and JSON lines.
    let tracing = collector.section("");
    let on = format!(
        "[log]\nformat = \"json\"\n[audit]\npath = \"{}\"\n{tracing}",
        first.display()
    );
    std::fs::write(&file, writers_config(&app, &on)).unwrap();
    let line = running.hangup_line("configuration reloaded").await;
    let json: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(json["level"], "INFO", "{line}: nothing took a restart");
    let r = browser
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"b":2}"#)])
        .await;
    assert_eq!(r.status, 200);
    let lines = audit_has(&first, 1).await;
    assert_eq!(lines[0]["event"], "updated", "{lines:?}");
    assert_eq!(lines[0]["keys"], serde_json::json!(["b"]));
    let spans = collector.spans(1).await;
    assert!(spans.iter().any(|s| s.name == "GET"), "{spans:?}");
    let log = running.log();
    let access = log
        .lines()
        .rfind(|l| l.contains("\"status\":200"))
        .expect("a JSON access line");
    assert!(
        serde_json::from_str::<serde_json::Value>(access).is_ok(),
        "{access}"
    );

    // A new audit path in a directory that does not exist: refused whole, the log stays JSON
    // and the audit log stays in the first file.
    let refused = format!(
        "[audit]\npath = \"{}\"\n{tracing}",
        dir.path().join("missing/audit.jsonl").display()
    );
    std::fs::write(&file, writers_config(&app, &refused)).unwrap();
    let line = running.hangup_line("configuration not reloaded").await;
    assert!(line.contains("audit.path"), "{line}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_ok(),
        "{line}"
    );

    // Moved: to the second file, traces off, text lines again.
    let moved = format!("[audit]\npath = \"{}\"\n", second.display());
    std::fs::write(&file, writers_config(&app, &moved)).unwrap();
    let log = running.hangup_until("configuration reloaded", 2).await;
    let line = log
        .lines()
        .rfind(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(line.contains(" INFO ") && !line.starts_with('{'), "{line}");
    let spans_before = collector.got.lock().unwrap().spans.len();
    let r = browser
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"c":3}"#)])
        .await;
    assert_eq!(r.status, 200);
    let lines = audit_has(&second, 1).await;
    assert_eq!(lines[0]["keys"], serde_json::json!(["c"]));
    assert_eq!(
        audit_lines(&first).len(),
        1,
        "the first file gets nothing more"
    );

    // Off: no more lines anywhere.
    std::fs::write(&file, writers_config(&app, "")).unwrap();
    running.hangup_until("configuration reloaded", 3).await;
    let r = browser
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"d":4}"#)])
        .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(audit_lines(&second).len(), 1, "off");
    assert_eq!(audit_lines(&first).len(), 1, "off");
    assert_eq!(
        collector.got.lock().unwrap().spans.len(),
        spans_before,
        "no span after traces went off"
    );
    running.stop();
}

/// Reloads `running` with `toml` as its file and returns the report's line (the `n`th).
async fn reload_with(running: &Running, file: &Path, toml: &str, n: usize) -> String {
    std::fs::write(file, toml).unwrap();
    let log = running.hangup_until("SIGHUP: configuration", n).await;
    log.lines()
        .filter(|l| l.contains("SIGHUP: configuration"))
        .nth(n - 1)
        .unwrap()
        .to_owned()
}

/// A reload that changes the store's settings but not its place opens it again there: sqlite
/// turns its user index on (the file is reindexed, so the sessions already stored are the
/// user's), Redis moves new sessions under a new `key_prefix`, the memory store keeps its
/// sessions and indexes them; the sessions in use are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_opens_the_store_again_with_its_new_settings() {
    use redis::AsyncCommands as _;

    let app = App::start().await;
    let redis = crate::support::redis::RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    let upstream = format!("upstream = \"http://{}\"\n", app.addr);
    let sqlite = |settings: &str| {
        format!(
            "{upstream}[session]\n{settings}[store]\nkind = \"sqlite\"\npath = \"{}\"\n{}",
            dir.path().join("s.db").display(),
            if settings.is_empty() {
                ""
            } else {
                "fsync = false\n"
            }
        )
    };
    std::fs::write(&file, sqlite("")).unwrap();
    let running = Running::spawn(&[
        "-c",
        file.to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let (addr, admin) = (running.proxy.addr, running.proxy.admin.unwrap());
    let mut ada = [
        Browser::new(addr, "session_id"),
        Browser::new(addr, "session_id"),
    ];
    for b in &mut ada {
        b.get("/")
            .app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)])
            .await;
    }
    assert_ne!(
        get(admin, "/users/ada/sessions").await.status,
        200,
        "no user index yet"
    );

    let line = reload_with(&running, &file, &sqlite("user_key = \"user\"\n"), 1).await;
    assert!(
        line.contains(" INFO ") && !line.contains("restart="),
        "{line}"
    );
    assert!(running.log().contains("store: SIGHUP: opened again"));
    let r = get(admin, "/users/ada/sessions").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["sessions"].as_array().unwrap().len(),
        2,
        "reindexed"
    );
    assert_eq!(
        ada[0].get("/").await.app_saw().session()["user"],
        "ada",
        "kept"
    );
    running.stop();

    // Redis: new sessions under the new prefix; those stored before stay under the old one.
    let redis_toml = |prefix: &str| {
        format!(
            "{upstream}[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n",
            redis.url()
        )
    };
    std::fs::write(&file, redis_toml("one:")).unwrap();
    let running = Running::spawn(&["-c", file.to_str().unwrap()]);
    let addr = running.proxy.addr;
    let mut first = Browser::new(addr, "session_id");
    first.get("/").app_responds_with(&[UPDATE]).await;
    reload_with(&running, &file, &redis_toml("two:"), 1).await;
    let mut second = Browser::new(addr, "session_id");
    second.get("/").app_responds_with(&[UPDATE]).await;
    let mut conn = redis.conn().await;
    let under =
        |prefix: &str, b: &Browser| format!("{prefix}{}", handle(b.cookie.as_deref().unwrap()));
    let old: bool = conn.exists(under("one:", &first)).await.unwrap();
    let new: bool = conn.exists(under("two:", &second)).await.unwrap();
    assert!(old && new, "one:{old} two:{new}");
    running.stop();

    // Memory: opened again over the same sessions, their user index built from them.
    let memory =
        |settings: &str| format!("{upstream}[session]\n{settings}[store]\nkind = \"memory\"\n");
    std::fs::write(&file, memory("")).unwrap();
    let running = Running::spawn(&[
        "-c",
        file.to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = running.proxy.admin.unwrap();
    let mut b = Browser::new(running.proxy.addr, "session_id");
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"bob"}"#)])
        .await;
    let line = reload_with(&running, &file, &memory("user_key = \"user\"\n"), 1).await;
    assert!(!line.contains("restart="), "{line}");
    let r = get(admin, "/users/bob/sessions").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let listed = r.json()["sessions"].as_array().unwrap().len();
    assert_eq!(listed, 1, "the session stored before, indexed");
    assert_eq!(b.get("/").await.app_saw().session()["user"], "bob", "kept");
    running.stop();
}

/// The store a reload opened again is swept by a sweeper of its own: a session created after the
/// reload, left to expire, is removed with an `expired` audit line naming its user (the new
/// index's), with no request asking for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_a_reload_opened_again_is_swept() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, audit) = (
        dir.path().join("proxy.toml"),
        dir.path().join("audit.jsonl"),
    );
    let toml = |user_key: &str| {
        format!(
            "upstream = \"http://{}\"\n[session]\nidle_timeout = \"1s\"\n{user_key}\
             [store]\nkind = \"memory\"\nsweep_interval = \"200ms\"\n[audit]\npath = \"{}\"\n",
            app.addr,
            audit.display()
        )
    };
    std::fs::write(&file, toml("")).unwrap();
    let running = Running::spawn(&["-c", file.to_str().unwrap()]);
    reload_with(&running, &file, &toml("user_key = \"user\"\n"), 1).await;
    let mut b = Browser::new(running.proxy.addr, "session_id");
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"cy"}"#)])
        .await;
    let lines = audit_has(&audit, 2).await;
    let expired = lines.iter().find(|l| l["event"] == "expired");
    assert_eq!(expired.expect("swept")["user"], "cy", "{lines:?}");
    running.stop();
}
