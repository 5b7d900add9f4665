//! Session data encrypted at rest (`store.encryption_key`), on real backends and through the
//! binary: the stored bytes (the SQLite file read by rusqlite, the fs files, every Redis key
//! and value read by a Redis connection of its own, every PostgreSQL row) hold no data value; records stored before
//! a key was set still read and are sealed by their next write; a record whose key is gone
//! reads as missing, counted, and stays where it is; sessions survive a restart, a rotation
//! and a SIGHUP reload; `sessions copy` re-encrypts and decrypts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use session_proxy::config::RawConfig;
use session_proxy::session::{DataChange, Handle};
use session_proxy::store::{self, Record, SessionStore, Update, now_ms};

use crate::support::{App, ProxyProcess, Running, app, get, write_config};

const KEY_A: &str = "store-key-a-0123456789abcdef-0123456789";
const KEY_B: &str = "store-key-b-0123456789abcdef-0123456789";
/// What no stored byte may hold once sealed: a data value, and a data key.
const SECRET: &str = "SECRET-VALUE-0042";
const SECRET_KEY: &str = "card_number_key";

/// The store `[store]` toml names (with a user index on `user`), opened as the proxy opens it.
async fn open(store: &str) -> store::Opened {
    let toml = format!("[session]\nuser_key = \"user\"\n{store}");
    let config = RawConfig::from_toml("t.toml", &toml)
        .unwrap()
        .validate("t.toml")
        .unwrap();
    store::open(&config.store).await.unwrap()
}

fn key(k: &str) -> String {
    format!("encryption_key = \"{k}\"\n")
}

fn live(data: Value) -> Record {
    let now = now_ms();
    Record {
        data: Arc::from(data.to_string()),
        created_at: now,
        updated_at: now,
        expires_at: now + 3_600_000,
        version: 1,
        meta: Default::default(),
    }
}

fn patch(v: Value) -> Update {
    Update {
        change: Some(DataChange::Patch(v.as_object().unwrap().clone())),
        base: None,
        now: now_ms(),
        lifetime: session_proxy::config::Lifetime {
            idle_timeout: Duration::from_secs(3600),
            absolute_timeout: None,
            touch_interval: Duration::from_secs(360),
            remember_max: std::time::Duration::from_secs(90 * 86400),
            remember_absolute: None,
            first_lifetime: None,
        },
        max_size: 16 * 1024,
        extends: true,
        visit: None,
    }
}

fn data(r: &Record) -> Value {
    serde_json::from_str(&r.data).unwrap()
}

/// Create, update, regenerate, list and the user index through a sealed store: each works on
/// the plain data. Returns the live handles.
async fn exercise(store: &dyn SessionStore) -> Vec<Handle> {
    let (a, b, c) = (
        Handle::generate().unwrap(),
        Handle::generate().unwrap(),
        Handle::generate().unwrap(),
    );
    assert!(
        store
            .create(&a, &live(json!({"user": "ada", "s": SECRET})))
            .await
            .unwrap()
    );
    let updated = store
        .update(&a, &patch(json!({ SECRET_KEY: SECRET })))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        data(&updated),
        json!({"user": "ada", "s": SECRET, SECRET_KEY: SECRET})
    );
    let moved = store
        .regenerate(&a, &b, &patch(json!({"n": 1})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data(&moved)["n"], 1);
    assert!(store.load(&a).await.unwrap().is_none());
    assert_eq!(
        data(&store.load(&b).await.unwrap().unwrap())[SECRET_KEY],
        SECRET
    );
    assert!(
        store
            .create(&c, &live(json!({"user": "bob", "s": SECRET})))
            .await
            .unwrap()
    );
    let mut listed: Vec<Handle> = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list(cursor.as_deref(), 1).await.unwrap();
        for (id, r) in &page.sessions {
            assert_eq!(data(r)["s"], SECRET, "a listing shows the opened data");
            listed.push(*id);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    listed.sort();
    listed.dedup();
    let mut want = vec![b, c];
    want.sort();
    assert_eq!(listed, want);
    let ada = store.user_sessions("ada").await.unwrap();
    assert_eq!(ada.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [b]);
    want
}

/// What the stored bytes must show: sealed data, and no value or key of it.
fn assert_sealed(raw: &[u8], what: &str) {
    let text = String::from_utf8_lossy(raw);
    assert!(text.contains("sp1."), "{what}: nothing sealed in {text}");
    for hidden in [SECRET, SECRET_KEY] {
        assert!(!text.contains(hidden), "{what}: {hidden} stored in {text}");
    }
}

/// Every `data` column of the file, as rusqlite reads it.
fn sqlite_data(path: &Path) -> Vec<String> {
    sqlite_column(path, "data")
}

/// Every non-null value of `column` of the sessions table.
fn sqlite_column(path: &Path, column: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {column} FROM sessions WHERE {column} IS NOT NULL"
        ))
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The whole file, WAL included, after the store's writes.
fn sqlite_bytes(path: &Path) -> Vec<u8> {
    let mut all = std::fs::read(path).unwrap();
    if let Ok(wal) = std::fs::read(path.with_extension("db-wal")) {
        all.extend(wal);
    }
    all
}

fn dir_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        all.extend(path.display().to_string().into_bytes());
        all.extend(std::fs::read(&path).unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_no_data_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let opened = open(&format!(
        "[store]\nkind = \"sqlite\"\npath = \"{}\"\n{}",
        path.display(),
        key(KEY_A)
    ))
    .await;
    exercise(&*opened.store).await;
    for d in sqlite_data(&path) {
        assert!(d.starts_with("sp1."), "{d}");
        assert_sealed(d.as_bytes(), "a data column");
    }
    drop(opened);
    // The whole file too: no page, free or live, in the database or its WAL, holds a value.
    let raw = sqlite_bytes(&path);
    for hidden in [SECRET, SECRET_KEY] {
        assert!(
            !String::from_utf8_lossy(&raw).contains(hidden),
            "{hidden} in the file"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_stores_no_data_value() {
    let dir = tempfile::tempdir().unwrap();
    let opened = open(&format!(
        "[store]\nkind = \"fs\"\npath = \"{}\"\nfsync = false\n{}",
        dir.path().display(),
        key(KEY_A)
    ))
    .await;
    exercise(&*opened.store).await;
    assert_sealed(&dir_bytes(dir.path()), "the fs files");
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(text.starts_with("{\"data\":\"sp1."), "{text}");
    }
}

/// Every key of every node, with its fields, members and values, as one Redis connection per
/// node reads them.
#[cfg(feature = "redis")]
async fn redis_bytes(urls: &[String]) -> Vec<u8> {
    let mut all = Vec::new();
    for url in urls {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        for k in keys {
            all.extend(k.as_bytes());
            let kind: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .unwrap();
            let values: Vec<Vec<u8>> = match kind.as_str() {
                "hash" => redis::cmd("HGETALL").arg(&k).query_async(&mut conn).await,
                "set" => redis::cmd("SMEMBERS").arg(&k).query_async(&mut conn).await,
                "zset" => {
                    redis::cmd("ZRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                }
                "string" => redis::cmd("GET")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .map(|v: Vec<u8>| vec![v]),
                other => panic!("a {other} key {k}"),
            }
            .unwrap();
            for v in values {
                all.extend(v);
            }
        }
    }
    all
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stores_no_data_value() {
    let server = crate::support::redis::RedisServer::start().await;
    let opened = open(&format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\n{}",
        server.url(),
        key(KEY_A)
    ))
    .await;
    exercise(&*opened.store).await;
    assert_sealed(&redis_bytes(&[server.url()]).await, "redis");
}

/// Every row of the store's tables, as PostgreSQL prints them.
#[cfg(feature = "postgres")]
async fn postgres_bytes(url: &str) -> Vec<u8> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut all = Vec::new();
    for table in ["sessions", "aliases"] {
        for row in client
            .query(&format!("SELECT t::text FROM session_proxy.{table} t"), &[])
            .await
            .unwrap()
        {
            all.extend_from_slice(row.get::<_, &str>(0).as_bytes());
            all.push(b'\n');
        }
    }
    all
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_no_data_value() {
    let db = crate::support::postgres::PgDb::new().await;
    let opened = open(&format!(
        "[store]\nkind = \"postgres\"\nurl = \"{}\"\n{}",
        db.url(),
        key(KEY_A)
    ))
    .await;
    exercise(&*opened.store).await;
    assert_sealed(&postgres_bytes(&db.url()).await, "postgres");
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_plain_records_read_and_removed_keys_are_unreadable() {
    let db = crate::support::postgres::PgDb::new().await;
    let url = db.url();
    let store = format!("[store]\nkind = \"postgres\"\nurl = \"{url}\"\n");
    let raw = || {
        let url = url.clone();
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(postgres_bytes(&url))
        })
        .join()
        .unwrap()
    };
    plain_then_sealed_then_unreadable(&store, raw).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_stores_no_data_value() {
    let cluster = crate::support::redis::RedisCluster::start().await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    let opened = open(&format!(
        "[store]\nkind = \"redis\"\nnodes = [{}]\n{}",
        nodes.join(", "),
        key(KEY_A)
    ))
    .await;
    exercise(&*opened.store).await;
    assert_sealed(&redis_bytes(&cluster.urls()).await, "redis cluster");
}

/// A store written before encryption was turned on keeps its sessions: each reads as it was
/// and is sealed by its next write. A key that is then removed leaves its records unreadable:
/// missing to every reader, counted, and never deleted.
async fn plain_then_sealed_then_unreadable(store: &str, raw: impl Fn() -> Vec<u8>) {
    let a = Handle::generate().unwrap();
    let plain = open(store).await;
    plain
        .store
        .create(&a, &live(json!({"user": "ada", "s": SECRET})))
        .await
        .unwrap();
    drop(plain);
    assert!(String::from_utf8_lossy(&raw()).contains(SECRET));

    let sealed = open(&format!("{store}{}", key(KEY_A))).await;
    let r = sealed.store.load(&a).await.unwrap().unwrap();
    assert_eq!(data(&r)["s"], SECRET, "a plain record reads with a key set");
    assert_eq!(sealed.store.user_sessions("ada").await.unwrap().len(), 1);
    sealed
        .store
        .update(&a, &patch(json!({"n": 1})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sealed.metrics.unreadable.get(), 0);
    drop(sealed);

    // Rotated: the new key first, the old one still opening.
    let rotated = open(&format!(
        "{store}encryption_key = [\"{KEY_B}\", \"{KEY_A}\"]\n"
    ))
    .await;
    assert_eq!(
        data(&rotated.store.load(&a).await.unwrap().unwrap())["n"],
        1
    );
    drop(rotated);

    // The old key removed: the record (still sealed under it) is missing, counted, kept.
    let b_only = open(&format!("{store}{}", key(KEY_B))).await;
    let before = raw();
    assert!(b_only.store.load(&a).await.unwrap().is_none());
    assert!(matches!(
        b_only.store.load_or_expired(&a).await.unwrap(),
        store::Loaded::Missing
    ));
    assert!(
        b_only
            .store
            .update(&a, &patch(json!({"x": 1})))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b_only
            .store
            .list(None, 10)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
    assert!(b_only.metrics.unreadable.get() >= 3);
    assert_eq!(b_only.sealer.unreadable(), b_only.metrics.unreadable.get());
    drop(b_only);
    let after = raw();
    assert!(
        String::from_utf8_lossy(&after).contains("sp1.")
            && String::from_utf8_lossy(&before).contains("sp1."),
        "the unreadable record was removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_plain_records_read_and_removed_keys_are_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = format!(
        "[store]\nkind = \"sqlite\"\npath = \"{}\"\n",
        path.display()
    );
    plain_then_sealed_then_unreadable(&store, || sqlite_data(&path).join("\n").into_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_plain_records_read_and_removed_keys_are_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\nkind = \"fs\"\npath = \"{}\"\nfsync = false\n",
        dir.path().display()
    );
    plain_then_sealed_then_unreadable(&store, || dir_bytes(dir.path())).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_plain_records_read_and_removed_keys_are_unreadable() {
    let server = crate::support::redis::RedisServer::start().await;
    let url = server.url();
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{url}\"\n");
    let raw = || {
        let url = url.clone();
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(redis_bytes(&[url]))
        })
        .join()
        .unwrap()
    };
    plain_then_sealed_then_unreadable(&store, raw).await;
}

/// A sqlite file whose user index was built from another key is rebuilt at open; sealed rows
/// are opened in Rust for it (SQL's json_each cannot read them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rebuilds_the_user_index_of_sealed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = format!(
        "[store]\nkind = \"sqlite\"\npath = \"{}\"\n{}",
        path.display(),
        key(KEY_A)
    );
    rebuilds_the_user_index_of_sealed_rows(&store).await;
}

/// The postgres store rebuilds its `user_name` column in Rust too, row by row, at open.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rebuilds_the_user_index_of_sealed_rows() {
    let db = crate::support::postgres::PgDb::new().await;
    let store = format!(
        "[store]\nkind = \"postgres\"\nurl = \"{}\"\n{}",
        db.url(),
        key(KEY_A)
    );
    rebuilds_the_user_index_of_sealed_rows(&store).await;
}

/// Sessions sealed under `store` with the user index on `user`, then the store opened with
/// `user_key = "login"`: the index follows the new key.
async fn rebuilds_the_user_index_of_sealed_rows(store: &str) {
    let a = Handle::generate().unwrap();
    let opened = open(store).await;
    opened
        .store
        .create(&a, &live(json!({"user": "ada", "login": "grace"})))
        .await
        .unwrap();
    drop(opened);
    let by_login = format!("[session]\nuser_key = \"login\"\n{store}");
    let config = RawConfig::from_toml("t.toml", &by_login)
        .unwrap()
        .validate("t.toml")
        .unwrap();
    let reopened = store::open(&config.store).await.unwrap();
    let found = reopened.store.user_sessions("grace").await.unwrap();
    assert_eq!(found.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [a]);
    assert!(
        reopened
            .store
            .user_sessions("ada")
            .await
            .unwrap()
            .is_empty()
    );
}

fn write_keys(path: &Path, keys: &[&str]) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("# the first encrypts\n{}\n", keys.join("\n"))).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A request with the session cookie `cookie` (or none); the app answers with `respond`.
/// Returns whether the session was new, its data, and the cookie set (if any).
async fn visit(
    proxy: &ProxyProcess,
    cookie: Option<&str>,
    respond: &[(&str, &str)],
) -> (bool, Value, Option<String>) {
    let mut headers = vec![(
        app::RESPOND_WITH.to_owned(),
        app::respond_with_value(respond),
    )];
    if let Some(c) = cookie {
        headers.push(("cookie".to_owned(), format!("session_id={c}")));
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = get(proxy.addr, "/").client_sends(&headers).await;
    assert_eq!(r.status, 200);
    let cookie = r.set_cookie("session_id").map(|c| {
        c.trim_start_matches("session_id=")
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    });
    (r.app_saw().is_new(), r.app_saw().session(), cookie)
}

async fn unreadable_metric(proxy: &ProxyProcess) -> String {
    let r = get(proxy.admin.unwrap(), "/metrics").await;
    String::from_utf8_lossy(&r.body)
        .lines()
        .find(|l| l.starts_with("session_proxy_store_unreadable_total"))
        .unwrap_or_default()
        .to_owned()
}

/// Through the binary on sqlite: sessions survive a restart and a key rotation (new key first,
/// old second); a SIGHUP that drops the old key leaves a session still sealed under it
/// missing (a fresh session for its client, counted, logged once, its row kept), and one
/// that would turn encryption off is refused with the keys kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sessions_survive_restart_and_rotation_and_a_removed_key_reads_as_missing() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("store-keys");
    let db = dir.path().join("sessions.db");
    write_keys(&keys, &[KEY_A]);
    let config = write_config(
        dir.path(),
        "proxy.toml",
        &format!(
            "upstream = \"http://{}\"\n[store]\nkind = \"sqlite\"\npath = \"{}\"\nencryption_key_file = \"{}\"\n",
            app.addr,
            db.display(),
            keys.display()
        ),
    );
    let update = format!(r#"{{"secret":"{SECRET}"}}"#);
    let running = Running::spawn(&["--config", &config, "--admin-listen", "127.0.0.1:0"]);
    let (new, _, one) = visit(&running.proxy, None, &[("X-Session-Update", &update)]).await;
    assert!(new);
    let one = one.unwrap();
    let (_, _, two) = visit(
        &running.proxy,
        None,
        &[("X-Session-Update", r#"{"two":2}"#)],
    )
    .await;
    let two = two.unwrap();
    // Its first return (a write: it is marked returned) under the same key.
    visit(&running.proxy, Some(&two), &[]).await;
    for d in sqlite_data(&db) {
        assert_sealed(d.as_bytes(), "sqlite");
    }
    // The device (addresses, user agent) is personal data: sealed like the data.
    let metas = sqlite_column(&db, "meta");
    assert_eq!(metas.len(), 2);
    for m in metas {
        assert_sealed(m.as_bytes(), "sqlite meta");
        assert!(!m.contains("127.0.0.1"), "{m}");
    }
    running.stop();

    // Restarted with the keys rotated: both sessions read; a write seals `one` under the new
    // key, `two` stays under the old one.
    write_keys(&keys, &[KEY_B, KEY_A]);
    let running = Running::spawn(&["--config", &config, "--admin-listen", "127.0.0.1:0"]);
    let (new, data, _) = visit(
        &running.proxy,
        Some(&one),
        &[("X-Session-Update", r#"{"n":1}"#)],
    )
    .await;
    assert!(!new, "a session was lost across the restart and rotation");
    assert_eq!(data, json!({"secret": SECRET}));
    let (new, data, _) = visit(&running.proxy, Some(&two), &[]).await;
    assert!(!new);
    assert_eq!(data, json!({"two": 2}));
    let kids: std::collections::BTreeSet<String> = sqlite_data(&db)
        .iter()
        .map(|d| d.split('.').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(kids.len(), 2, "one session under each key");

    // SIGHUP with the old key gone: `two` is missing (its client gets a fresh session), `one`
    // still reads; counted once per read, logged once per key id; the row stays.
    write_keys(&keys, &[KEY_B]);
    running.hangup_until("configuration reloaded", 1).await;
    let (new, data, _) = visit(&running.proxy, Some(&one), &[]).await;
    assert!(!new);
    assert_eq!(data, json!({"secret": SECRET, "n": 1}));
    let two_handle = session_proxy::session::SessionId::parse(&two)
        .unwrap()
        .handle();
    let row_of_two = || -> i64 {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sessions WHERE handle = ?1",
                [two_handle.as_str()],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(row_of_two(), 1);
    for _ in 0..2 {
        let (new, data, _) = visit(&running.proxy, Some(&two), &[]).await;
        assert!(new, "a session whose key was removed was read");
        assert_eq!(data, json!({}));
    }
    assert_eq!(
        unreadable_metric(&running.proxy).await,
        "session_proxy_store_unreadable_total 2"
    );
    assert_eq!(row_of_two(), 1, "the unreadable row was removed");
    assert_eq!(
        running
            .log()
            .matches("a sealed session did not open")
            .count(),
        1,
        "{}",
        running.log()
    );

    // A reload that would turn encryption off is refused; the keys in use are kept.
    std::fs::write(
        &config,
        format!(
            "upstream = \"http://{}\"\n[store]\nkind = \"sqlite\"\npath = \"{}\"\n",
            app.addr,
            db.display()
        ),
    )
    .unwrap();
    running.hangup_until("configuration not reloaded", 1).await;
    let (new, data, _) = visit(&running.proxy, Some(&one), &[]).await;
    assert!(!new);
    assert_eq!(data["secret"], SECRET);
    running.stop();
}

/// `SESSION_PROXY_STORE_KEY` sets the key, as the cookie secret's variable does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_key_from_the_environment() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let store = format!("sqlite:{}", db.display());
    let upstream = format!("http://{}", app.addr);
    let keys = format!("{KEY_B}\n{KEY_A}\n");
    let proxy = ProxyProcess::start(
        &["--upstream", &upstream, "--store", &store],
        "warn",
        std::process::Stdio::inherit(),
        &[("SESSION_PROXY_STORE_KEY", &keys)],
        "http",
    );
    let update = format!(r#"{{"secret":"{SECRET}"}}"#);
    let (_, _, cookie) = visit(&proxy, None, &[("X-Session-Update", &update)]).await;
    let (new, data, _) = visit(&proxy, cookie.as_deref(), &[]).await;
    assert!(!new);
    assert_eq!(data["secret"], SECRET);
    drop(proxy);
    for d in sqlite_data(&db) {
        assert_sealed(d.as_bytes(), "sqlite");
    }
    // The key that encrypted is the variable's first.
    let b_only = open(&format!(
        "[store]\nkind = \"sqlite\"\npath = \"{}\"\n{}",
        db.display(),
        key(KEY_B)
    ))
    .await;
    assert_eq!(b_only.store.list(None, 10).await.unwrap().sessions.len(), 1);
}

fn copy(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["sessions", "copy"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sessions copy` re-encrypts between stores with different keys (the configured key reads
/// the source, `--to-key-file`'s first key seals the destination) and decrypts with
/// `--to-plain`; a bad key file is named by its flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_re_encrypts_and_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, plain) = (
        dir.path().join("a.db"),
        dir.path().join("b-fs"),
        dir.path().join("plain.db"),
    );
    let source = open(&format!(
        "[store]\nkind = \"sqlite\"\npath = \"{}\"\n{}",
        src.display(),
        key(KEY_A)
    ))
    .await;
    let live_ids = exercise(&*source.store).await;
    drop(source);
    let config = write_config(
        dir.path(),
        "proxy.toml",
        &format!("[store]\n{}", key(KEY_A)),
    );
    let b_file = dir.path().join("b-keys");
    write_keys(&b_file, &[KEY_B]);
    let (from, to) = (
        format!("sqlite:{}", src.display()),
        format!("fs:{}", dst.display()),
    );
    let b = b_file.display().to_string();
    let (code, out, err) = copy(&[
        "--config",
        &config,
        "--from",
        &from,
        "--to",
        &to,
        "--to-key-file",
        &b,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "copied 2 sessions (0 already there)");
    assert_sealed(&dir_bytes(&dst), "the copy");
    let under_b = open(&format!(
        "[store]\nkind = \"fs\"\npath = \"{}\"\n{}",
        dst.display(),
        key(KEY_B)
    ))
    .await;
    for id in &live_ids {
        let r = under_b.store.load(id).await.unwrap().unwrap();
        assert_eq!(data(&r)["s"], SECRET);
    }
    assert_eq!(under_b.store.user_sessions("ada").await.unwrap().len(), 1);
    drop(under_b);
    let under_a = open(&format!(
        "[store]\nkind = \"fs\"\npath = \"{}\"\n{}",
        dst.display(),
        key(KEY_A)
    ))
    .await;
    assert!(under_a.store.load(&live_ids[0]).await.unwrap().is_none());
    drop(under_a);

    // From the fs copy (read with --from-key-file) to a plain file.
    let to_plain = format!("sqlite:{}", plain.display());
    let (code, out, err) = copy(&[
        "--config",
        &config,
        "--from",
        &to,
        "--from-key-file",
        &b,
        "--to",
        &to_plain,
        "--to-plain",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "copied 2 sessions (0 already there)");
    let rows = sqlite_data(&plain);
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|d| d.starts_with('{') && d.contains(SECRET)),
        "{rows:?}"
    );

    let short = dir.path().join("short-keys");
    write_keys(&short, &["too short"]);
    let (code, _, err) = copy(&[
        "--config",
        &config,
        "--from",
        &from,
        "--to",
        &to,
        "--to-key-file",
        &short.display().to_string(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`--to-key-file`") && err.contains("must be at least 32 bytes"),
        "{err}"
    );
}

/// A record whose key is gone still expires: the sweeper removes it by its times, which stay
/// outside the ciphertext (fs and sqlite; Redis drops it by its TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_is_still_swept_when_it_expires() {
    for kind in ["fs", "sqlite"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = format!(
            "[store]\nkind = \"{kind}\"\npath = \"{}\"\nfsync = false\n",
            path.display()
        );
        let a = Handle::generate().unwrap();
        let sealed = open(&format!("{store}{}", key(KEY_A))).await;
        let mut r = live(json!({"user": "ada"}));
        r.expires_at = now_ms() + 200;
        assert!(sealed.store.create(&a, &r).await.unwrap());
        drop(sealed);
        let b_only = open(&format!("{store}{}", key(KEY_B))).await;
        assert!(b_only.store.load(&a).await.unwrap().is_none());
        assert_eq!(b_only.store.prune(now_ms()).await.unwrap(), 0, "{kind}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(b_only.store.prune(now_ms()).await.unwrap(), 1, "{kind}");
        assert_eq!(b_only.store.prune(now_ms()).await.unwrap(), 0, "{kind}");
    }
}
