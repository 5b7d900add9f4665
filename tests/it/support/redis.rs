//! Real `redis-server` processes for the Redis store tests: one server ([`RedisServer`]) or a
//! three-node Redis Cluster ([`RedisCluster`]) on free ports of 127.0.0.1, each with its own
//! temporary directory and no persistence. Every child is killed by its PID when its guard drops.
//!
//! A missing `redis-server` fails the test with instructions; these tests never skip.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;

/// How long a server may take to answer its first PING, or a cluster to reach `cluster_state:ok`.
const READY_LIMIT: Duration = Duration::from_secs(20);

pub use super::free_port;

fn require(program: &str) {
    match Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) => panic!(
            "`{program}` cannot be run ({e}). The Redis store tests need a real Redis: \
             install it (`apt-get install -y redis-server`, which also brings redis-cli) \
             or run `.ci/run`, which installs it. These tests never skip."
        ),
    }
}

/// One `redis-server` child on 127.0.0.1.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A fresh server on a free port, ready (it answered PING).
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments (e.g. `--user ...`).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        require("redis-server");
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        // The port can be taken between choosing and binding it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(port, dir.path(), &extra);
            if wait_ready(&mut child, port, None).await {
                return RedisServer {
                    port,
                    child: Some(child),
                    extra,
                    dir,
                };
            }
            kill(&mut child);
        }
        panic!(
            "redis-server did not start after 5 tries; see {}",
            log_hint(dir.path())
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, by PID): to the proxy, Redis just vanished.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub async fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        // The old socket may linger for a moment; retry until the port is ours again.
        while start.elapsed() < READY_LIMIT {
            let mut child = spawn(self.port, self.dir.path(), &self.extra);
            if wait_ready(&mut child, self.port, None).await {
                self.child = Some(child);
                return;
            }
            kill(&mut child);
        }
        panic!(
            "redis-server did not restart on port {}; see {}",
            self.port,
            log_hint(self.dir.path())
        );
    }

    /// A plain client connection (for looking at keys behind the proxy's back).
    pub async fn conn(&self) -> MultiplexedConnection {
        ::redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three `redis-server` primaries joined into a Redis Cluster by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        require("redis-server");
        require("redis-cli");
        // Built first, so a failure half-way still kills the nodes already started.
        let mut cluster = RedisCluster {
            ports: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        for n in 0..3 {
            let node_dir = cluster.dir.path().join(format!("node{n}"));
            std::fs::create_dir(&node_dir).unwrap();
            let mut started = false;
            for _ in 0..5 {
                let (port, bus) = (free_port(), free_port());
                if port == bus {
                    continue;
                }
                let args = [
                    "--cluster-enabled".to_owned(),
                    "yes".to_owned(),
                    "--cluster-config-file".to_owned(),
                    "nodes.conf".to_owned(),
                    "--cluster-port".to_owned(),
                    bus.to_string(),
                    "--cluster-node-timeout".to_owned(),
                    "5000".to_owned(),
                ];
                let mut child = spawn(port, &node_dir, &args);
                if wait_ready(&mut child, port, None).await {
                    cluster.ports.push(port);
                    cluster.children.push(child);
                    started = true;
                    break;
                }
                kill(&mut child);
                let _ = std::fs::remove_file(node_dir.join("nodes.conf"));
            }
            assert!(
                started,
                "cluster node {n} did not start; see {}",
                log_hint(&node_dir)
            );
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every node must agree before the proxy connects, or it may learn a partial slot map.
        let start = Instant::now();
        for (child, port) in cluster.children.iter_mut().zip(&cluster.ports) {
            let remaining = READY_LIMIT.saturating_sub(start.elapsed());
            assert!(
                wait_ready(child, *port, Some(remaining)).await && cluster_ok(*port).await,
                "cluster node 127.0.0.1:{port} did not reach cluster_state:ok"
            );
        }
        cluster
    }

    /// The seed URLs, as `store.nodes` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            kill(child);
        }
    }
}

fn spawn(port: u16, dir: &Path, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", "redis.log"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill(child: &mut Child) {
    // `Child::kill` is SIGKILL to this PID only.
    let _ = child.kill();
    let _ = child.wait();
}

fn log_hint(dir: &Path) -> String {
    dir.join("redis.log").display().to_string()
}

/// Polls until the server on `port` answers PING (true), or the child exits or `limit`
/// (default [`READY_LIMIT`]) passes (false).
async fn wait_ready(child: &mut Child, port: u16, limit: Option<Duration>) -> bool {
    let limit = limit.unwrap_or(READY_LIMIT);
    let start = Instant::now();
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        // Any answer means it is serving; a server that requires a password says NOAUTH.
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && match ::redis::cmd("PING").query_async::<String>(&mut conn).await {
                Ok(pong) => pong == "PONG",
                Err(e) => e.code() == Some("NOAUTH"),
            }
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Polls `CLUSTER INFO` on `port` until it reports `cluster_state:ok`.
async fn cluster_ok(port: u16) -> bool {
    let start = Instant::now();
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    while start.elapsed() < READY_LIMIT {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && let Ok(info) = ::redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async::<String>(&mut conn)
                .await
            && info.contains("cluster_state:ok")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
