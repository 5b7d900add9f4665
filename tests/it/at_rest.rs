//! [at-rest]: a session id is a bearer credential, so after a run of logins through the real
//! binary no id, as the client read it from `Set-Cookie`, is anywhere but in the client's hands:
//! not in the store's files, keys or values, the log (at `debug`), the audit log, `/metrics`, or
//! any admin API answer; the login's regenerates run under the default `regenerate_grace`, so
//! the aliases they leave (the new id sealed under the old) are searched too. Run on every
//! backend.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Method;
use redis::AsyncCommands as _;
use serde_json::Value;

use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::{App, Browser, ProxyProcess, handle, request, write_config};

/// Everything the admin API and the proxy said during the run, for the search.
#[derive(Default)]
struct Seen {
    /// Every session id a `Set-Cookie` handed out.
    ids: Vec<String>,
    /// Every admin answer's body.
    admin: String,
}

impl Seen {
    fn keep(&mut self, b: &Browser) {
        if let Some(id) = &b.cookie
            && !self.ids.contains(id)
        {
            self.ids.push(id.clone());
        }
    }

    async fn admin(&mut self, admin: SocketAddr, method: Method, path: &str, body: &str) -> Value {
        let r = request(admin, method, path)
            .body(bytes::Bytes::from(body.to_owned()))
            .await;
        let text = String::from_utf8_lossy(&r.body).into_owned();
        self.admin.push_str(&text);
        self.admin.push('\n');
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

/// Logins, updates, a regenerate, a revoke, a destroy and every admin route, through the
/// binary configured by `store` (a `[store]` section). Returns what was seen, the log and the
/// audit log.
async fn a_run_of_logins(store: &str, dir: &Path) -> (Seen, String, String) {
    let app = App::start().await;
    let audit = dir.join("audit.log");
    let toml = format!(
        "upstream = \"http://{}\"\n{store}\n[session]\nuser_key = \"user\"\n[audit]\npath = \"{}\"\n",
        app.addr,
        audit.display()
    );
    let config = write_config(dir, "proxy.toml", &toml);
    let log_path = dir.join("proxy.log");
    let mut proxy = ProxyProcess::spawn_logging(
        &["--config", &config, "--admin-listen", "127.0.0.1:0"],
        "debug",
        std::fs::File::create(&log_path).unwrap(),
    );
    let admin = proxy.admin.unwrap();
    let mut seen = Seen::default();
    let mut browsers = Vec::new();
    for user in ["ada", "ada", "bob", "cyd"] {
        let mut b = Browser::new(proxy.addr, "session_id");
        b.get("/")
            .app_responds_with(&[("X-Session-Update", r#"{"cart":[1]}"#)])
            .await;
        seen.keep(&b);
        let before = b.clone();
        // Login: a new id, the user named.
        b.get("/login")
            .app_responds_with(&[
                ("X-Session-Regenerate", "1"),
                ("X-Session-Update", &format!(r#"{{"user":"{user}"}}"#)),
            ])
            .await;
        seen.keep(&b);
        // The pre-login cookie within `session.regenerate_grace` (default 10s): the alias the
        // regenerate left, holding the new id sealed, is read and followed.
        let mut late = before;
        late.get("/xhr").await;
        assert_eq!(
            late.cookie, b.cookie,
            "the old cookie was handed the new one"
        );
        b.get("/").await;
        browsers.push(b);
    }
    // Ada signs out her other session; cyd logs out.
    browsers[0]
        .get("/")
        .app_responds_with(&[("X-Session-Revoke", "others")])
        .await;
    browsers[3]
        .get("/logout")
        .app_responds_with(&[("X-Session-Destroy", "1")])
        .await;
    // The operator: lists, shows, patches and deletes; a user's sessions; the metrics.
    let page = seen.admin(admin, Method::GET, "/sessions", "").await;
    let handles: Vec<String> = page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["handle"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(handles.len(), 2, "ada's and bob's: {page}");
    for h in &handles {
        seen.admin(admin, Method::GET, &format!("/sessions/{h}"), "")
            .await;
        seen.admin(
            admin,
            Method::PATCH,
            &format!("/sessions/{h}"),
            r#"{"seen":1}"#,
        )
        .await;
    }
    seen.admin(admin, Method::GET, "/users/ada/sessions", "")
        .await;
    let bob = handle(browsers[2].cookie.as_deref().unwrap());
    assert!(handles.contains(&bob));
    seen.admin(admin, Method::DELETE, &format!("/sessions/{bob}"), "")
        .await;
    let metrics = request(admin, Method::GET, "/metrics").await;
    seen.admin.push_str(&String::from_utf8_lossy(&metrics.body));
    assert_eq!(
        browsers[0].get("/").await.app_saw().session()["user"],
        "ada"
    );
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(seen.ids.len() >= 8, "{} ids", seen.ids.len());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(audit.lines().count() >= 10, "{audit}");
    (seen, log, audit)
}

/// No id in any of `places` (named, for the message).
fn assert_no_id(ids: &[String], places: &[(&str, &[u8])]) {
    for id in ids {
        for (name, bytes) in places {
            assert!(
                !bytes.windows(id.len()).any(|w| w == id.as_bytes()),
                "a session id is in {name}"
            );
        }
    }
}

/// Every file under `dir` (names and contents), for the search.
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_of(&path));
        } else {
            let name = path.display().to_string();
            out.push((name.clone(), name.into_bytes()));
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// Everything a Redis holds: every key, and every value (strings, hashes, sets).
async fn redis_dump(mut conn: impl redis::aio::ConnectionLike + Send + Sync) -> Vec<u8> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    for key in keys {
        out.extend_from_slice(key.as_bytes());
        out.push(b'\n');
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![conn.get(&key).await.unwrap()],
            "hash" => conn.hgetall::<_, Vec<Vec<u8>>>(&key).await.unwrap(),
            "set" => conn.smembers(&key).await.unwrap(),
            other => panic!("a {other} key {key}"),
        };
        for v in values {
            out.extend_from_slice(&v);
            out.push(b'\n');
        }
    }
    out
}

fn check(seen: &Seen, log: &str, audit: &str, store: &[(String, Vec<u8>)]) {
    let mut places: Vec<(&str, &[u8])> = vec![
        ("the log", log.as_bytes()),
        ("the audit log", audit.as_bytes()),
        ("an admin answer or /metrics", seen.admin.as_bytes()),
    ];
    for (name, bytes) in store {
        places.push((name, bytes));
    }
    assert_no_id(&seen.ids, &places);
    // The audit log did name the sessions, by handle: the search looked where they are.
    assert!(audit.contains(&handle(&seen.ids[1])), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_at_rest_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir(&db).unwrap();
    let store = format!(
        "[store]\nkind = \"sqlite\"\npath = \"{}\"",
        db.join("sessions.db").display()
    );
    let (seen, log, audit) = a_run_of_logins(&store, dir.path()).await;
    let files = files_of(&db);
    assert!(files.iter().any(|(n, _)| n.ends_with("sessions.db")));
    check(&seen, &log, &audit, &files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_at_rest_on_fs() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    let store = format!(
        "[store]\nkind = \"fs\"\npath = \"{}\"\nfsync = false",
        sessions.display()
    );
    let (seen, log, audit) = a_run_of_logins(&store, dir.path()).await;
    let files = files_of(&sessions);
    assert!(files.len() >= 2, "no session files");
    check(&seen, &log, &audit, &files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_at_rest_on_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (seen, log, audit) = a_run_of_logins("[store]\nkind = \"memory\"", dir.path()).await;
    check(&seen, &log, &audit, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_at_rest_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().await;
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{}\"", redis.url());
    let (seen, log, audit) = a_run_of_logins(&store, dir.path()).await;
    let dump = redis_dump(redis.conn().await).await;
    assert!(!dump.is_empty());
    check(&seen, &log, &audit, &[("redis".to_owned(), dump)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_at_rest_on_redis_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisCluster::start().await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let store = format!("[store]\nkind = \"redis\"\nnodes = [{}]", nodes.join(", "));
    let (seen, log, audit) = a_run_of_logins(&store, dir.path()).await;
    let mut dumps = Vec::new();
    for url in cluster.urls() {
        // Each primary on its own: KEYS on one node lists that node's keys.
        let client = redis::Client::open(url.as_str()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        dumps.push((url.clone(), redis_dump(conn).await));
    }
    assert!(dumps.iter().any(|(_, d)| !d.is_empty()));
    check(&seen, &log, &audit, &dumps);
}

/// Every file of the cluster's data directory (the tables, their indexes and the WAL, which
/// holds every row image written), and the tables as text.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_at_rest_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::postgres::PgServer::start().await;
    let db = server.create_db().await;
    let store = format!(
        "[store]\nkind = \"postgres\"\nurl = \"{}\"",
        server.url_of(&db)
    );
    let (seen, log, audit) = a_run_of_logins(&store, dir.path()).await;
    let client = server.client(&db).await;
    let mut tables = Vec::new();
    for table in ["sessions", "aliases", "schema_info"] {
        for row in client
            .query(&format!("SELECT t::text FROM session_proxy.{table} t"), &[])
            .await
            .unwrap()
        {
            tables.extend_from_slice(row.get::<_, &str>(0).as_bytes());
            tables.push(b'\n');
        }
    }
    assert!(!tables.is_empty());
    let mut places = files_of(&server.data_dir());
    places.push(("the tables".to_owned(), tables));
    check(&seen, &log, &audit, &places);
}
