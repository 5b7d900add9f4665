//! Real PostgreSQL clusters for the PostgreSQL store tests: `initdb` in a temporary directory,
//! `postgres` on a free port of 127.0.0.1 (its unix socket in that directory too), run as an
//! unprivileged user when the tests run as root (initdb refuses root). Stopped by its PID
//! (SIGQUIT: PostgreSQL's immediate shutdown, which takes its children with it) when its guard
//! drops.
//!
//! Most tests share one cluster per test binary, a database of their own each ([`PgDb::new`]):
//! the cluster lives while any of them holds it. A test that stops or restarts the server
//! starts its own ([`PgServer::start`]).
//!
//! A missing PostgreSQL fails the test with instructions; these tests never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::redis::free_port;

/// How long a new cluster may take to accept its first connection.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// The PostgreSQL program `name`: on the PATH, else in Debian's versioned directory.
fn program(name: &str) -> PathBuf {
    if Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
    {
        return PathBuf::from(name);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "`{name}` cannot be found (not on the PATH, nor in /usr/lib/postgresql/*/bin). The \
             PostgreSQL store tests need a real PostgreSQL: install it (`apt-get install -y \
             postgresql`) or run `.ci/run`, which installs it. These tests never skip."
        )
    })
}

/// Whether this process runs as root (the owner of `/proc/self`).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program` with `args`, as `nobody` when we are root.
fn command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// One PostgreSQL cluster of its own.
pub struct PgServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// More `-c name=value` settings for `postgres`.
    settings: Vec<String>,
}

impl PgServer {
    /// A fresh cluster, initialised and accepting connections.
    pub async fn start() -> PgServer {
        Self::start_with(|_| Vec::new()).await
    }

    /// A cluster that speaks TLS with `cert` and `key` (PEM; the chain and its key), plain
    /// connections still allowed.
    pub async fn start_tls(cert: &str, key: &str) -> PgServer {
        let (cert, key) = (cert.to_owned(), key.to_owned());
        Self::start_with(move |dir| {
            let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&c, &cert).unwrap();
            std::fs::write(&k, &key).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
            if is_root() {
                for f in [&c, &k] {
                    std::os::unix::fs::chown(f, Some(65534), Some(65534)).unwrap();
                }
            }
            vec![
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", c.display()),
                format!("ssl_key_file={}", k.display()),
            ]
        })
        .await
    }

    /// [`PgServer::start`], with the settings `setup` returns after it prepared the cluster's
    /// directory (it gets the directory).
    async fn start_with(setup: impl FnOnce(&Path) -> Vec<String>) -> PgServer {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            // nobody must own what it writes, and reach it.
            let nobody = 65534;
            std::os::unix::fs::chown(dir.path(), Some(nobody), Some(nobody)).unwrap();
        }
        let data = dir.path().join("data");
        let out = command(&program("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let settings = setup(dir.path());
        let mut server = PgServer {
            port: 0,
            child: None,
            dir,
            settings,
        };
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn().await {
                return server;
            }
        }
        panic!(
            "postgres did not start after 5 tries; see {}",
            server.log().display()
        );
    }

    /// The cluster's data directory (its tables' files and its WAL).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts `postgres` on `self.port`; true once it accepts connections.
    async fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        if is_root() {
            std::os::unix::fs::chown(self.log(), Some(65534), Some(65534)).unwrap();
        }
        let mut child = command(&program("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Nothing survives the machine's crash, but every commit survives the server's
            // (an immediate stop, as the restart tests do): synchronous_commit stays on.
            .args(["-c", "fsync=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "max_connections=300"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < READY_LIMIT {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if let Ok((client, conn)) =
                tokio_postgres::connect(&self.url_of("postgres"), tokio_postgres::NoTls).await
            {
                drop(client);
                drop(conn);
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop(&mut child);
        false
    }

    /// The URL of database `db`, as `store.url` takes it.
    pub fn url_of(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server at once (immediate shutdown, by PID): to the proxy, the database just
    /// went away.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }

    /// Starts the server again on the same port, its data kept.
    pub async fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        while start.elapsed() < READY_LIMIT {
            if self.spawn().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "postgres did not restart on port {}; see {}",
            self.port,
            self.log().display()
        );
    }

    /// A new database on this server, for one test.
    pub async fn create_db(&self) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (client, conn) =
            tokio_postgres::connect(&self.url_of("postgres"), tokio_postgres::NoTls)
                .await
                .unwrap();
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
        name
    }

    /// A client of database `db`, for looking at rows behind the proxy's back.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url_of(db), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGQUIT to the postmaster's PID (it ends its children), then SIGKILL if it lingers.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-QUIT", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The cluster this test binary's [`PgDb`]s share, while any of them lives.
static SHARED: tokio::sync::Mutex<Weak<PgServer>> = tokio::sync::Mutex::const_new(Weak::new());

/// A database of its own on the shared cluster.
pub struct PgDb {
    pub server: Arc<PgServer>,
    pub name: String,
}

impl PgDb {
    pub async fn new() -> PgDb {
        let server = {
            let mut shared = SHARED.lock().await;
            match shared.upgrade() {
                Some(server) => server,
                None => {
                    let server = Arc::new(PgServer::start().await);
                    *shared = Arc::downgrade(&server);
                    server
                }
            }
        };
        let name = server.create_db().await;
        PgDb { server, name }
    }

    pub fn url(&self) -> String {
        self.server.url_of(&self.name)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        self.server.client(&self.name).await
    }
}
