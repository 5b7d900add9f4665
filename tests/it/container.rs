//! The image, built and run with podman: the Dockerfile's `counter` stage and its last stage,
//! as written there, from this test's own static build in place of the `build` stage (no base
//! image can be pulled on the test machine: everything is `FROM scratch`). One pod, as
//! compose.yaml lays it out: the example app and the proxy with the image's own configuration
//! (`upstream = "http://app:3000"`, `app` named by `--add-host`, so the static binary resolves a
//! name from /etc/hosts). Through the pod's published port on 127.0.0.1 the quickstart's curl
//! flow works: the counter rises, login regenerates the id, logout destroys the session. The
//! HEALTHCHECK passes, the sqlite store lives in /var/lib/session-proxy as the image's
//! non-root user, and `podman stop` (SIGTERM) ends the proxy with exit 0.
//!
//! A missing or broken podman fails the test, in CI and out of it (.ci/run installs podman and
//! runc).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::Browser;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The profile of the test's build (Cargo.toml): the dist profile's fat LTO would take most
/// of half an hour on the test machine.
const PROFILE: &str = "container-test";

/// What podman needs on the test machine, given to every podman command as its
/// `containers.conf` (`CONTAINERS_CONF`):
/// - `runc`: crun (Debian 12's 1.8) refuses to start any container on this host's hybrid
///   cgroups ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2");
/// - the limits: podman's rootful defaults (1048576 open files, 4194304 processes) are above
///   the host's hard limits, which a process without CAP_SYS_RESOURCE cannot raise ("setrlimit
///   `RLIMIT_NOFILE`: Operation not permitted"). The pod's infra container takes no `--ulimit`,
///   hence the file.
fn containers_conf(dir: &Path) -> PathBuf {
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    let nofile = hard.min(65536);
    let path = dir.join("containers.conf");
    std::fs::write(
        &path,
        format!(
            "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=4096:4096\"]\n\
             [engine]\nruntime = \"runc\"\n"
        ),
    )
    .unwrap();
    path
}

/// The static binaries the image stages expect, built once per test run (a no-op when current):
/// `crt-static` on the gnu target, as the Dockerfile builds them. Returns the output directory.
fn static_build() -> PathBuf {
    // The test binary is <target>/debug/deps/it-<hash>; the workspace's target directory is
    // where this build goes too, under <target>/<triple>/container-test.
    let target_dir: PathBuf = Path::new(env!("CARGO_BIN_EXE_session-proxy"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned();
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--locked", "--profile", PROFILE])
        .args([
            "--target",
            &triple,
            "--bin",
            "session-proxy",
            "--example",
            "counter",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(ROOT)
        .status()
        .unwrap();
    assert!(status.success(), "the static build failed");
    target_dir.join(triple).join(PROFILE)
}

/// The stage of the Dockerfile that starts with the line `from`, up to the next `FROM`, each
/// `COPY --from=build /x ...` turned into `COPY x ...`: the same instructions over a build
/// context that holds what `build` would have left at `/x`.
fn stage(dockerfile: &str, from: &str) -> String {
    let start = dockerfile
        .find(&format!("\n{from}\n"))
        .unwrap_or_else(|| panic!("the Dockerfile has no line {from:?}"))
        + 1;
    let rest = &dockerfile[start..];
    let end = rest[from.len()..]
        .find("\nFROM ")
        .map_or(rest.len(), |i| i + from.len() + 1);
    let mut copies = 0;
    let lines: Vec<String> = rest[..end]
        .lines()
        .map(|line| {
            if !(line.starts_with("COPY ") && line.contains(" --from=build ")) {
                return line.to_owned();
            }
            copies += 1;
            let mut source_seen = false;
            line.split(' ')
                .filter(|word| *word != "--from=build")
                .map(|word| match word.strip_prefix('/') {
                    Some(relative) if !source_seen => {
                        source_seen = true;
                        relative
                    }
                    _ => word,
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert!(copies > 0, "{from}: no COPY --from=build");
    lines.join("\n") + "\n"
}

/// Runs podman with the test's configuration; panics when it cannot be started at all.
fn podman(conf: &Path, args: &[&str]) -> Output {
    Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("podman cannot be run ({e}): install it (and runc) or run .ci/run")
        })
}

/// [`podman`] that must succeed; its stdout, trimmed.
fn podman_ok(conf: &Path, args: &[&str]) -> String {
    let out = podman(conf, args);
    assert!(
        out.status.success(),
        "podman {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The pod and the images, removed (by name) when the test ends, however it ends.
struct Cleanup {
    conf: PathBuf,
    pod: String,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(
            &self.conf,
            &["pod", "rm", "--force", "--time", "0", &self.pod],
        );
        for image in &self.images {
            let _ = podman(&self.conf, &["rmi", "--force", image]);
        }
    }
}

/// Waits until the container's output (stdout and stderr) has a line starting with `prefix`.
fn wait_for_line(conf: &Path, container: &str, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = podman(conf, &["logs", container]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.lines().any(|l| l.starts_with(prefix)) {
            return;
        }
        let state = podman_ok(
            conf,
            &["inspect", "--format", "{{.State.Status}}", container],
        );
        assert!(
            state == "running" && Instant::now() < deadline,
            "{container} ({state}) never wrote {prefix:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_serves_the_quickstart_from_scratch_as_a_non_root_user() {
    let dir = tempfile::tempdir().unwrap();
    let conf = containers_conf(dir.path());
    let built = tokio::task::spawn_blocking(static_build).await.unwrap();

    // The build context: what the Dockerfile's `build` stage leaves in /out/, /state/ (empty)
    // and /app/.
    let ctx = dir.path().join("context");
    let out = ctx.join("out");
    for d in ["etc/ssl/certs", "etc/session-proxy"] {
        std::fs::create_dir_all(out.join(d)).unwrap();
    }
    std::fs::create_dir_all(ctx.join("state")).unwrap();
    std::fs::create_dir_all(ctx.join("app")).unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    };
    copy(&built.join("session-proxy"), &out.join("session-proxy"));
    copy(&built.join("examples/counter"), &ctx.join("app/counter"));
    // Debian's ca-certificates bundle, the file the Dockerfile copies from its rust image.
    copy(
        Path::new("/etc/ssl/certs/ca-certificates.crt"),
        &out.join("etc/ssl/certs/ca-certificates.crt"),
    );
    let deploy = Path::new(ROOT).join("deploy/container");
    copy(
        &deploy.join("proxy.toml"),
        &out.join("etc/session-proxy/proxy.toml"),
    );
    copy(&deploy.join("passwd"), &out.join("etc/passwd"));
    copy(&deploy.join("group"), &out.join("etc/group"));

    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let last = dockerfile.rfind("\nFROM ").unwrap() + 1;
    let last_from = dockerfile[last..].lines().next().unwrap().to_owned();
    let stages = [
        ("counter", stage(&dockerfile, "FROM scratch AS counter")),
        ("proxy", stage(&dockerfile, &last_from)),
    ];
    let tag = std::process::id();
    let mut cleanup = Cleanup {
        conf: conf.clone(),
        pod: format!("session-proxy-test-{tag}"),
        images: Vec::new(),
    };
    for (name, text) in &stages {
        let file = dir.path().join(format!("Containerfile.{name}"));
        std::fs::write(&file, text).unwrap();
        let image = format!("localhost/session-proxy-test-{name}:{tag}");
        cleanup.images.push(image.clone());
        // The docker format keeps HEALTHCHECK (OCI images have no such field).
        podman_ok(
            &conf,
            &[
                "build",
                "--quiet",
                "--format",
                "docker",
                "--tag",
                &image,
                "--file",
                file.to_str().unwrap(),
                ctx.to_str().unwrap(),
            ],
        );
    }
    let [app_image, proxy_image] = [&cleanup.images[0], &cleanup.images[1]].map(String::as_str);
    let pod = cleanup.pod.clone();

    // The pod: one network namespace, `app` resolving to it, the proxy's port published on an
    // ephemeral port of 127.0.0.1.
    podman_ok(
        &conf,
        &[
            "pod",
            "create",
            "--name",
            &pod,
            "--add-host",
            "app:127.0.0.1",
            "--publish",
            "127.0.0.1::8080",
        ],
    );
    let app = format!("{pod}-app");
    let proxy = format!("{pod}-proxy");
    podman_ok(
        &conf,
        &["run", "--detach", "--pod", &pod, "--name", &app, app_image],
    );
    wait_for_line(&conf, &app, "example app on http://0.0.0.0:3000");
    // The image as shipped: its ENTRYPOINT, CMD (`run`) and configuration.
    podman_ok(
        &conf,
        &[
            "run",
            "--detach",
            "--pod",
            &pod,
            "--name",
            &proxy,
            "--env",
            "RUST_LOG=warn",
            proxy_image,
        ],
    );
    wait_for_line(
        &conf,
        &proxy,
        "session-proxy listening on http://0.0.0.0:8080 -> http://app:3000",
    );
    let published = podman_ok(&conf, &["port", &proxy, "8080/tcp"]);
    let addr: std::net::SocketAddr = published
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("podman port: {published:?}"));
    assert!(addr.ip().is_loopback(), "{addr}");

    // The README's quickstart, as `curl -c jar -b jar` does it.
    let mut client = Browser::new(addr, "session_id");
    let resp = client.get("/").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, "Hello, stranger. Visits in this session: 1\n");
    let first = client
        .cookie
        .clone()
        .expect("the first visit sets the cookie");
    let resp = client.get("/").await;
    assert_eq!(resp.body, "Hello, stranger. Visits in this session: 2\n");
    let resp = client.get("/login?user=ada").await;
    assert_eq!(resp.body, "Logged in as ada (new session id issued)\n");
    let second = client
        .cookie
        .clone()
        .expect("login sets the new id's cookie");
    assert_ne!(first, second, "login regenerates the id");
    let resp = client.get("/").await;
    assert_eq!(resp.body, "Hello, ada. Visits in this session: 3\n");

    // The default sqlite store, in the image's writable directory, read with the image's own
    // CLI inside the container; the process runs as the image's user.
    let listed = podman_ok(
        &conf,
        &[
            "exec",
            &proxy,
            "/session-proxy",
            "--config",
            "/etc/session-proxy/proxy.toml",
            "sessions",
            "list",
        ],
    );
    let sessions: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sessions.len(), 1, "{listed}");
    assert_eq!(sessions[0]["data"]["user"], "ada", "{listed}");
    assert_eq!(
        podman_ok(&conf, &["inspect", "--format", "{{.Config.User}}", &proxy]),
        "10001:10001"
    );
    let owner = podman_ok(&conf, &["top", &proxy, "user", "args"]);
    assert!(
        owner
            .lines()
            .skip(1)
            .all(|l| l.starts_with("10001 ") || l.starts_with("session-proxy ")),
        "{owner}"
    );

    // The HEALTHCHECK of the image: `session-proxy health` against the admin listener.
    podman_ok(&conf, &["healthcheck", "run", &proxy]);

    let resp = client.get("/logout").await;
    assert_eq!(resp.body, "Logged out; session destroyed\n");
    assert!(client.cookie.is_none(), "logout expires the cookie");
    let resp = client.get("/").await;
    assert_eq!(resp.body, "Hello, stranger. Visits in this session: 1\n");

    // SIGTERM drains and exits 0 (a SIGKILL after the 20 s would be 137).
    podman_ok(&conf, &["stop", "--time", "20", &proxy]);
    assert_eq!(
        podman_ok(
            &conf,
            &["inspect", "--format", "{{.State.ExitCode}}", &proxy]
        ),
        "0"
    );
    drop(cleanup);
}
