//! The PostgreSQL store (issue [postgres]) against a real PostgreSQL: several proxies on one
//! database, atomic merges across them, a regenerate racing updates, a database restart under
//! load (503 or `fail_open`, `/readyz`, back within the store timeout), start-up errors, the
//! schema's version, and `--store postgres://`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use session_proxy::Proxy;
use session_proxy::session::SessionId;

use crate::support::postgres::{PgDb, PgServer};
use crate::support::redis::free_port;
use crate::support::{App, Browser, TestProxy, config, get};

fn pg_toml(url: &str, extra: &str) -> String {
    format!("{extra}\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\n")
}

/// Two proxies (A and B) in front of one test app, sharing one store config.
async fn two_proxies(toml: &str) -> (App, TestProxy, TestProxy) {
    let app = App::start().await;
    let a = TestProxy::with_config(config(app.addr, toml)).await;
    let b = TestProxy::with_config(config(app.addr, toml)).await;
    (app, a, b)
}

/// The browser, pointed at another proxy but keeping its cookie.
fn via(browser: &Browser, proxy: &TestProxy) -> Browser {
    Browser {
        addr: proxy.addr,
        ..browser.clone()
    }
}

/// The rows of `sessions` under `id`'s handle (0 or 1), read behind the proxies' backs.
async fn rows_of(db: &PgDb, id: &str) -> i64 {
    let handle = SessionId::parse(id).unwrap().handle();
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM session_proxy.sessions WHERE handle = $1",
            &[&handle.as_str()],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_session_made_through_one_proxy_is_read_changed_and_destroyed_through_another() {
    let db = PgDb::new().await;
    let (_app, a, b) = two_proxies(&pg_toml(&db.url(), "")).await;
    let mut on_a = a.client();
    on_a.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"user":"ada"}"#)])
        .await;
    let id = on_a.cookie.clone().unwrap();
    assert_eq!(rows_of(&db, &id).await, 1, "one row, under the handle");

    let mut on_b = via(&on_a, &b);
    let seen = on_b.get("/").await.app_saw();
    assert!(!seen.is_new());
    assert_eq!(seen.session(), json!({"user":"ada"}));
    on_b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"n":2}"#)])
        .await;
    assert_eq!(
        on_a.get("/").await.app_saw().session(),
        json!({"user":"ada","n":2})
    );
    on_b.get("/")
        .app_responds_with(&[("X-Session-Destroy", "1")])
        .await;
    assert_eq!(rows_of(&db, &id).await, 0, "the row is gone");
    assert!(on_a.get("/").await.app_saw().is_new());
}

/// Concurrent `X-Session-Update`s to different keys of one session, through two proxies on one
/// database, all survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_through_two_proxies_keep_every_key() {
    let db = PgDb::new().await;
    let (_app, a, b) = two_proxies(&pg_toml(&db.url(), "")).await;
    let mut browser = a.client();
    browser
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"start":true}"#)])
        .await;
    let id = browser.cookie.clone().unwrap();
    let requests = 120;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..requests {
        let mut client = via(&browser, if i % 2 == 0 { &a } else { &b });
        tasks.spawn(async move {
            let change = json!({ format!("k{i}"): i }).to_string();
            let r = client
                .get("/")
                .app_responds_with(&[("X-Session-Update", &change)])
                .await;
            (r.status, client.cookie)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (status, cookie) = done.unwrap();
        assert_eq!(status, 200);
        assert_eq!(cookie.as_deref(), Some(id.as_str()));
    }
    let session = via(&browser, &b).get("/").await.app_saw().session();
    let mut want = Map::new();
    want.insert("start".to_owned(), json!(true));
    for i in 0..requests {
        want.insert(format!("k{i}"), json!(i));
    }
    assert_eq!(session, Value::Object(want));
}

/// A regenerate through A while B updates the same session under the old cookie, many times
/// over: the old id never comes back (no row under its handle, the old cookie a new session),
/// and the new session holds what the regenerate wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regenerate_on_one_proxy_and_updates_on_the_other_never_resurrect_the_old_id() {
    let db = PgDb::new().await;
    let grace = "[session]\nregenerate_grace = \"0\"";
    let (_app, a, b) = two_proxies(&pg_toml(&db.url(), grace)).await;
    for round in 0..10 {
        let mut on_a = a.client();
        on_a.get("/")
            .app_responds_with(&[("X-Session-Update", r#"{"cart":[1]}"#)])
            .await;
        let old = on_a.cookie.clone().unwrap();
        let mut updates = tokio::task::JoinSet::new();
        for i in 0..8 {
            let mut on_b = via(&on_a, &b);
            updates.spawn(async move {
                let change = json!({ format!("b{i}"): i }).to_string();
                on_b.get("/")
                    .app_responds_with(&[("X-Session-Update", &change)])
                    .await
                    .status
            });
        }
        let r = on_a
            .get("/login")
            .app_responds_with(&[
                ("X-Session-Regenerate", "1"),
                ("X-Session-Update", r#"{"user":"ada"}"#),
            ])
            .await;
        assert_eq!(r.status, 200);
        let new = on_a.cookie.clone().unwrap();
        assert_ne!(new, old);
        while let Some(status) = updates.join_next().await {
            assert_eq!(status.unwrap(), 200);
        }
        assert_eq!(
            rows_of(&db, &old).await,
            0,
            "round {round}: the old id is back"
        );
        let r = get(b.addr, "/")
            .client_sends(&[("cookie", &format!("session_id={old}"))])
            .await;
        assert!(r.app_saw().is_new(), "round {round}");
        let seen = via(&on_a, &b).get("/").await.app_saw();
        assert_eq!(seen.session()["user"], "ada", "round {round}");
        assert_eq!(seen.session()["cart"], json!([1]), "round {round}");
    }
}

/// A database restart in the middle of a load: every request during the outage is a 503
/// within the store timeout (or, with `fail_open`, reaches the app without a session),
/// `/readyz` says so, and once the database accepts connections again the proxy serves the
/// same sessions within the store timeout: the pool reconnects by itself.
async fn a_restart_under_load(on_error: &str) {
    let mut server = PgServer::start().await;
    let db = server.create_db().await;
    let timeout = Duration::from_millis(1000);
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[store]\nkind = \"postgres\"\nurl = \"{}\"\n\
         timeout = \"1s\"\n{on_error}",
        server.url_of(&db)
    );
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &toml).await;
    let admin = proxy.admin_addr();
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    let cookie = b.cookie.clone().unwrap();
    assert_eq!(get(admin, "/readyz").await.status, 200);

    // The load: clients with the cookie, one request after another, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (mut c, stop) = (b.clone(), stop.clone());
        load.spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = tokio::time::timeout(Duration::from_secs(10), c.get("/"))
                    .await
                    .expect("a request hung");
                seen.push(r.status.as_u16());
            }
            seen
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();
    for _ in 0..3 {
        let start = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), b.clone().get("/"))
            .await
            .expect("a request hung while the database was down");
        assert!(start.elapsed() < timeout * 3, "{:?}", start.elapsed());
        if on_error.is_empty() {
            assert_eq!(r.status, 503);
            assert_eq!(r.headers["retry-after"], "1");
        } else {
            assert_eq!(r.status, 200);
            assert_eq!(
                r.app_saw().headers("x-session-unavailable"),
                vec!["1".to_owned()]
            );
            assert!(r.set_cookies().is_empty(), "no cookie set or cleared");
        }
    }
    assert_eq!(get(admin, "/readyz").await.status, 503);

    server.restart().await;
    let back = Instant::now();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), b.get("/"))
            .await
            .expect("a request hung after the database came back");
        if r.status == 200 && !r.app_saw().has_header("x-session-unavailable") {
            assert_eq!(
                r.app_saw().session(),
                json!({"a":1}),
                "the session survived"
            );
            break;
        }
        assert!(
            back.elapsed() < timeout,
            "not served within store.timeout of the database's return: {:?}",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(admin, "/readyz").await.status, 200);
    assert_eq!(b.cookie.as_deref(), Some(cookie.as_str()));
    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    while let Some(seen) = load.join_next().await {
        statuses.extend(seen.unwrap());
    }
    let allowed: &[u16] = if on_error.is_empty() {
        &[200, 503]
    } else {
        &[200]
    };
    assert!(statuses.iter().all(|s| allowed.contains(s)), "{statuses:?}");
    assert!(statuses.contains(&200));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_is_503s_then_service_within_the_timeout() {
    a_restart_under_load("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_with_fail_open_passes_requests_through() {
    a_restart_under_load("on_error = \"fail_open\"").await;
}

/// The error a proxy with `toml` fails to start with; opening may not hang.
async fn start_error(app: &App, toml: &str, why: &str) -> String {
    let err = tokio::time::timeout(Duration::from_secs(10), Proxy::open(config(app.addr, toml)))
        .await
        .unwrap_or_else(|_| panic!("opening the store hung: {why}"))
        .err()
        .unwrap_or_else(|| panic!("{why}"));
    format!("{err:#}")
}

#[tokio::test]
async fn a_wrong_port_fails_at_start_naming_the_server_without_the_password() {
    let app = App::start().await;
    let port = free_port();
    let url = format!("postgres://ada:hunter2@127.0.0.1:{port}/db?sslmode=disable");
    let text = start_error(&app, &pg_toml(&url, ""), "a closed port must fail").await;
    assert!(
        text.contains(&format!("postgres://ada:***@127.0.0.1:{port}/db")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
}

/// A schema written by a newer binary is refused, naming its version; `store.table` keeps
/// another proxy's sessions in a schema of their own.
#[tokio::test]
async fn a_newer_schema_is_refused_and_table_names_the_schema() {
    let db = PgDb::new().await;
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &pg_toml(&db.url(), "")).await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    proxy.stop().await;

    let toml = format!("{}table = \"other_proxy\"\n", pg_toml(&db.url(), ""));
    let other = TestProxy::start(&app, &toml).await;
    let r = via(&b, &other).get("/").await;
    assert!(r.app_saw().is_new(), "another schema, other sessions");
    other.stop().await;

    db.client()
        .await
        .batch_execute("UPDATE session_proxy.schema_info SET version = 99")
        .await
        .unwrap();
    let text = start_error(&app, &pg_toml(&db.url(), ""), "a newer schema must fail").await;
    assert!(
        text.contains("schema session_proxy is at version 99"),
        "{text}"
    );
}

#[tokio::test]
async fn store_flag_takes_a_postgres_url() {
    let db = PgDb::new().await;
    let run = |store: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .args(["check", "--config", "proxy.toml", "--store", &store])
            .output()
            .unwrap()
    };
    let out = run(db.url());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
    let out = run(format!(
        "postgres://postgres@127.0.0.1:{}/x?sslmode=disable",
        free_port()
    ));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to postgres://"), "{err}");
}

/// TLS over rustls with libpq's `sslmode`s: `verify-full` against the server's CA connects
/// (and the server sees an encrypted connection); against another CA it fails at start;
/// `require` encrypts without checking the certificate, as libpq does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_verify_full_checks_the_certificate_and_require_encrypts() {
    use crate::support::tls::TestCa;
    let ca = TestCa::new();
    let leaf = ca.leaf("postgres test server");
    let server =
        PgServer::start_tls(&format!("{}{}", leaf.cert_pem, ca.pem()), &leaf.key_pem).await;
    let db = server.create_db().await;
    let dir = tempfile::tempdir().unwrap();
    let (ours, other) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&ours, ca.pem()).unwrap();
    std::fs::write(&other, TestCa::new().pem()).unwrap();
    let url = |mode: &str, root: &Path| {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode={mode}&sslrootcert={}",
            server.port,
            root.display()
        )
    };
    let app = App::start().await;
    let client = server.client(&db).await;
    let encrypted = || async {
        client
            .query_one("SELECT count(*) FROM pg_stat_ssl WHERE ssl", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(encrypted().await, 0);
    for (mode, root) in [("verify-full", &ours), ("require", &other)] {
        let proxy = TestProxy::start(&app, &pg_toml(&url(mode, root), "")).await;
        let mut b = proxy.client();
        b.get("/")
            .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
            .await;
        assert_eq!(
            b.get("/").await.app_saw().session(),
            json!({"a":1}),
            "{mode}"
        );
        assert!(encrypted().await > 0, "{mode}: no encrypted connection");
        proxy.stop().await;
    }
    let text = start_error(
        &app,
        &pg_toml(&url("verify-full", &other), ""),
        "a certificate from another CA must fail verify-full",
    )
    .await;
    assert!(text.contains("cannot connect to postgres://"), "{text}");
}

/// A reload that changes `store.table` and `pool_size` opens the store again on the same
/// database: new sessions go to the new schema (created on the way), and the reload is not one
/// that names a setting as taking a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_opens_the_store_again_in_a_new_table() {
    let db = PgDb::new().await;
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    let toml = |extra: &str| {
        format!(
            "upstream = \"http://{}\"\n{}{extra}",
            app.addr,
            pg_toml(&db.url(), "")
        )
    };
    std::fs::write(&file, toml("")).unwrap();
    let running = crate::support::Running::spawn(&["-c", file.to_str().unwrap()]);
    let mut first = Browser::new(running.proxy.addr, "session_id");
    first
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"a":1}"#)])
        .await;
    std::fs::write(&file, toml("table = \"elsewhere\"\npool_size = 3\n")).unwrap();
    let line = running.hangup_line("SIGHUP: configuration").await;
    assert!(
        line.contains("configuration reloaded") && !line.contains("restart="),
        "{line}"
    );
    let mut second = Browser::new(running.proxy.addr, "session_id");
    second
        .get("/")
        .app_responds_with(&[("X-Session-Update", r#"{"b":2}"#)])
        .await;
    let handle = SessionId::parse(second.cookie.as_deref().unwrap())
        .unwrap()
        .handle();
    let rows: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM elsewhere.sessions WHERE handle = $1",
            &[&handle.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the new session is in the new table");
    assert_eq!(rows_of(&db, first.cookie.as_deref().unwrap()).await, 1);
    running.stop();
}
