//! A restart or upgrade that refuses nothing, through the real binary: a second proxy started
//! with the same `upgrade_socket` takes the first one's listening sockets while a client keeps
//! about 200 requests a second going (kept-alive and fresh connections, each request writing its
//! own key into one of 20 sessions), the first gets SIGTERM and drains; no request fails and
//! every written key is there at the end; one listening socket (one accept queue) throughout,
//! public and admin. On the sqlite store both processes share, and on Redis. Also: plain `SO_REUSEPORT` (two processes on one port without a handoff) and systemd
//! socket activation (`LISTEN_FDS`, through `systemd-socket-activate`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpStream;

use crate::support::app::{RESPOND_WITH, respond_with_value};
use crate::support::{App, ProxyProcess, get, write_config};

/// Sessions the load writes into.
const SESSIONS: usize = 20;
/// Client tasks, each one request at a time at its own pace: 8 × 25/s, about 200 a second.
const WORKERS: u64 = 8;
const EVERY: Duration = Duration::from_millis(40);

/// What the client saw, request by request.
#[derive(Default)]
struct Tally {
    sent: u64,
    /// Requests that got no response: refused, reset, closed under them.
    errors: Vec<String>,
    /// Responses other than 2xx.
    non_2xx: Vec<u16>,
    fresh: u64,
    /// How long the load ran: reported with the figures, never asserted.
    took: Duration,
    /// Per session, the keys whose write got a 200, with their values.
    kept: Vec<BTreeMap<String, u64>>,
}

/// One write: `key = n` into the session `cookie` names, the app's `X-Session-Update`. Over
/// the pooled (kept-alive) client, or over a connection of its own.
async fn write(
    addr: SocketAddr,
    pooled: &Client<HttpConnector, Full<Bytes>>,
    fresh: bool,
    cookie: &str,
    key: &str,
    n: u64,
) -> Result<StatusCode, String> {
    let patch = json!({ key: n }).to_string();
    let uri = if fresh {
        "/write".to_owned()
    } else {
        format!("http://{addr}/write")
    };
    let req = http::Request::post(uri)
        .header("host", addr.to_string())
        .header("cookie", cookie)
        .header(
            RESPOND_WITH,
            respond_with_value(&[("X-Session-Update", &patch)]),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = if fresh {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        send.send_request(req)
            .await
            .map_err(|e| format!("fresh connection: {e:?}"))?
    } else {
        pooled
            .request(req)
            .await
            .map_err(|e| format!("kept-alive connection: {e:?}"))?
    };
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?;
    Ok(status)
}

/// Writes from `WORKERS` tasks until `stop`, into the sessions of `cookies`, counting each
/// answered or failed request in `done`.
async fn load(
    addr: SocketAddr,
    cookies: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally {
        kept: vec![BTreeMap::new(); cookies.len()],
        ..Tally::default()
    }));
    let pooled: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let started = std::time::Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (cookies, stop, tally, pooled) =
            (cookies.clone(), stop.clone(), tally.clone(), pooled.clone());
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let mut pace = tokio::time::interval(EVERY);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = w;
            while !stop.load(Ordering::SeqCst) {
                pace.tick().await;
                let session = usize::try_from(n).unwrap() % cookies.len();
                let key = format!("k{n}");
                // Every other request of a worker opens a connection of its own.
                let fresh = (n / WORKERS) % 2 == 1;
                let result = write(addr, &pooled, fresh, &cookies[session], &key, n).await;
                let mut t = tally.lock().unwrap();
                t.sent += 1;
                t.fresh += u64::from(fresh);
                match result {
                    Ok(status) if status.is_success() => {
                        t.kept[session].insert(key, n);
                    }
                    Ok(status) => t.non_2xx.push(status.as_u16()),
                    Err(error) => t.errors.push(error),
                }
                done.fetch_add(1, Ordering::SeqCst);
                n += WORKERS;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let mut tally = Arc::try_unwrap(tally)
        .ok()
        .expect("every worker ended")
        .into_inner()
        .unwrap();
    tally.took = started.elapsed();
    tally
}

fn spawn(args: Vec<String>) -> tokio::task::JoinHandle<ProxyProcess> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ProxyProcess::spawn(&args)
    })
}

/// The upgrade under load on the store `store_toml` names; returns the figures line.
async fn upgrade_under_load(what: &str, store_toml: &str) -> String {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let config = write_config(
        dir.path(),
        "proxy.toml",
        &format!(
            "upgrade_socket = \"{}\"\nshutdown_timeout = \"10s\"\n{store_toml}\n",
            socket.display()
        ),
    );
    let args: Vec<String> = [
        "--config",
        &config,
        "--upstream",
        &format!("http://{}", app.addr),
        "--admin-listen",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut old = spawn(args.clone()).await.unwrap();
    let addr = old.addr;
    let queue = listening_sockets(addr.port());
    assert_eq!(queue.len(), 1);
    assert!(holds(old.pid(), queue[0]));

    let mut cookies = Vec::new();
    for i in 0..SESSIONS {
        let r = get(addr, "/")
            .app_responds_with(&[("X-Session-Update", &json!({ "session": i }).to_string())])
            .await;
        let line = r.set_cookie("session_id").expect("a session was created");
        cookies.push(line.split(';').next().unwrap().to_owned());
    }
    let cookies = Arc::new(cookies);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let client = tokio::spawn(load(addr, cookies.clone(), stop.clone(), done.clone()));
    // Counted, not timed: the load's pace is whatever this machine gives it.
    let after = |n: u64| {
        let done = done.clone();
        async move {
            let until = done.load(Ordering::SeqCst) + n;
            while done.load(Ordering::SeqCst) < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    after(200).await;
    // The new process: same config, so the same upgrade_socket; it takes the old one's sockets.
    let new = spawn(args).await.unwrap();
    assert_eq!(new.addr, addr, "the new process serves the same port");
    // The same socket, so the same accept queue: still one listening socket on the port (plain
    // SO_REUSEPORT would make it two, each with its own queue), and the new process holds it.
    assert_eq!(listening_sockets(addr.port()), queue, "one accept queue");
    assert!(holds(new.pid(), queue[0]));
    // The admin listener is handed over too.
    let admin = new.admin.unwrap();
    assert_eq!(Some(admin), old.admin);
    assert_eq!(listening_sockets(admin.port()).len(), 1);
    after(50).await;
    old.signal("TERM");
    let code = tokio::task::spawn_blocking(move || old.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "the old process drained and exited");
    assert_eq!(
        get(admin, "/readyz").await.status,
        200,
        "the new process's probe"
    );
    after(200).await;
    stop.store(true, Ordering::SeqCst);
    let tally = client.await.unwrap();

    let figures = format!(
        "{what}: {} requests in {:.1} s ({} on fresh connections), {} connection errors, {} non-2xx",
        tally.sent,
        tally.took.as_secs_f64(),
        tally.fresh,
        tally.errors.len(),
        tally.non_2xx.len()
    );
    eprintln!("{figures}");
    assert!(tally.errors.is_empty(), "{figures}: {:?}", tally.errors);
    assert!(tally.non_2xx.is_empty(), "{figures}: {:?}", tally.non_2xx);

    // Every key that got a 200 is in its session, read back through the new process.
    for (i, cookie) in cookies.iter().enumerate() {
        let r = get(new.addr, "/").client_sends(&[("cookie", cookie)]).await;
        let data = r.app_saw().session();
        assert_eq!(data["session"], json!(i));
        for (key, n) in &tally.kept[i] {
            assert_eq!(data[key.as_str()], json!(n), "session {i} lost {key}");
        }
        let written = data.as_object().unwrap().len() - 1;
        assert_eq!(written, tally.kept[i].len(), "session {i}: {data}");
    }
    drop(new);
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_refuses_nothing_and_keeps_every_write_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\nkind = \"sqlite\"\npath = \"{}\"",
        dir.path().join("sessions.db").display()
    );
    upgrade_under_load("sqlite, shared by both processes", &store).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_refuses_nothing_and_keeps_every_write_on_redis() {
    let redis = crate::support::redis::RedisServer::start().await;
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{}\"", redis.url());
    upgrade_under_load("redis", &store).await;
}

/// The inodes of the sockets listening on 127.0.0.1:`port` (`/proc/net/tcp`, state `0A`).
fn listening_sockets(port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[1] == local && fields[3] == "0A").then(|| fields[9].parse().unwrap())
        })
        .collect()
}

/// Whether process `pid` has the socket `inode` open.
fn holds(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == want))
}

/// Without `upgrade_socket`, `SO_REUSEPORT` alone lets a second process bind the port the first
/// one serves (no "address in use"): both answer on it until the first is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_bind_one_port_with_so_reuseport() {
    let app = App::start().await;
    let port = crate::support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "proxy.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\nupstream = \"http://{}\"\n[store]\nkind = \"memory\"\n",
            app.addr
        ),
    );
    let start = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_session-proxy"));
        command
            .args(["--config", &config])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit());
        ProxyProcess::launch(&mut command, false, "http")
    };
    let first = start();
    let second = start();
    assert_eq!(first.addr.port(), port);
    assert_eq!(second.addr.port(), port);
    assert_ne!(first.pid(), second.pid());
    // Two sockets, each with its own queue: what the handoff avoids.
    let sockets = listening_sockets(port);
    assert_eq!(sockets.len(), 2, "{sockets:?}");
    assert!(holds(first.pid(), sockets[0]) != holds(first.pid(), sockets[1]));
    let r = get(first.addr, "/").await;
    assert_eq!(r.status, 200);
    drop(first);
    let r = get(second.addr, "/").await;
    assert_eq!(r.status, 200, "the second process serves the port alone");
}

/// systemd socket activation: `systemd-socket-activate` binds the public and admin sockets,
/// names them (`LISTEN_FDNAMES`), and execs the proxy on the first connection with
/// `LISTEN_FDS=2` and `LISTEN_PID` its own pid. The proxy serves on those sockets, not on the
/// `listen` of its config, and the first client (which started it) is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_socket_activation_serves_the_passed_sockets() {
    let app = App::start().await;
    let (public, admin) = (crate::support::free_port(), crate::support::free_port());
    if let Err(e) = Command::new("systemd-socket-activate")
        .arg("--help")
        .stdout(Stdio::null())
        .status()
    {
        panic!(
            "systemd-socket-activate cannot be run ({e}): install Debian's systemd package or \
             run .ci/run. This test never skips."
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let upgrade = dir.path().join("upgrade.sock");
    let mut command = Command::new("systemd-socket-activate");
    command
        .args(["-l", &format!("127.0.0.1:{public}")])
        .args(["-l", &format!("127.0.0.1:{admin}")])
        .arg("--fdname=public:admin")
        .arg(env!("CARGO_BIN_EXE_session-proxy"))
        .args([
            "--store",
            "memory",
            "--upstream",
            &format!("http://{}", app.addr),
        ])
        // Not what the proxy serves on: the sockets systemd passed are.
        .args(["--listen", "127.0.0.1:1"])
        .args(["--admin-listen", "127.0.0.1:2"])
        // Not used under systemd, which holds the sockets across restarts.
        .arg("--upgrade-socket")
        .arg(&upgrade)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null());
    let addr: SocketAddr = format!("127.0.0.1:{public}").parse().unwrap();
    // The first connection starts the proxy: it waits in the socket's queue meanwhile.
    let first = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect(addr).await {
                Ok(_) => break,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("systemd-socket-activate never listened: {e}"),
            }
        }
        get(addr, "/")
            .app_responds_with(&[("X-Session-Update", r#"{"via":"systemd"}"#)])
            .await
    });
    let proxy =
        tokio::task::spawn_blocking(move || ProxyProcess::launch(&mut command, true, "http"))
            .await
            .unwrap();
    assert_eq!(proxy.addr, addr, "the public socket systemd passed");
    assert_eq!(
        proxy.admin.unwrap().port(),
        admin,
        "the admin socket systemd passed"
    );
    let r = first.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.set_cookie("session_id").is_some());
    let health = get(proxy.admin.unwrap(), "/healthz").await;
    assert_eq!(health.status, 200, "{:?}", health.body);
    assert!(
        !upgrade.exists(),
        "nothing is offered on upgrade_socket under systemd"
    );
    proxy.signal("TERM");
    let mut proxy = proxy;
    let code = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}
