//! The files in `deploy/` are checked as their tools check them: the systemd units (the
//! service, the socket, the handoff's template) with `systemd-analyze verify`, the nginx
//! snippet with `nginx -t`. No file ships unchecked.

use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command, what: &str) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{what} cannot be run ({e}): install it or run .ci/run"))
}

/// Copies the units `files` of deploy/ into a directory, pointed at the binary just built
/// (what `cargo install` would put at /usr/local/bin), and runs `systemd-analyze verify` on
/// `units` there: it must pass without a word.
fn verify_units(files: &[&str], units: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let installed = "ExecStart=/usr/local/bin/session-proxy ";
    for file in files {
        let unit = std::fs::read_to_string(format!("{ROOT}/deploy/{file}")).unwrap();
        let here = if file.ends_with(".service") {
            assert!(unit.contains(installed), "{file}");
            unit.replace(
                installed,
                &format!("ExecStart={} ", env!("CARGO_BIN_EXE_session-proxy")),
            )
        } else {
            unit
        };
        std::fs::write(dir.path().join(file), here).unwrap();
    }
    let out = run(
        Command::new("systemd-analyze")
            .arg("verify")
            .args(units.iter().map(|u| dir.path().join(u))),
        "systemd-analyze (Debian's systemd package)",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // An unknown or misspelt key is only a warning: any output at all fails the check.
    assert!(stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    verify_units(&["session-proxy.service"], &["session-proxy.service"]);
}

/// Socket activation: the socket unit with the service it starts.
#[test]
fn the_socket_unit_verifies_with_its_service() {
    verify_units(
        &["session-proxy.socket", "session-proxy.service"],
        &["session-proxy.socket", "session-proxy.service"],
    );
}

/// The handoff recipe: the template unit, verified as the instances it is started as.
#[test]
fn the_handoff_template_unit_verifies_as_its_instances() {
    let unit = std::fs::read_to_string(format!("{ROOT}/deploy/session-proxy@.service")).unwrap();
    assert!(unit.contains("--upgrade-socket /run/session-proxy/upgrade.sock"));
    assert!(unit.contains("RuntimeDirectoryPreserve=yes"));
    verify_units(
        &["session-proxy@.service"],
        &["session-proxy@a.service", "session-proxy@b.service"],
    );
}

#[test]
fn the_nginx_snippet_passes_nginx_t() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = run(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=app.example.com", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snippet = std::fs::read_to_string(format!("{ROOT}/deploy/nginx-tls-front.conf"))
        .unwrap()
        .replace(
            "/etc/ssl/certs/app.example.com.pem",
            &cert.display().to_string(),
        )
        .replace(
            "/etc/ssl/private/app.example.com.key",
            &key.display().to_string(),
        );
    let include = dir.path().join("session-proxy.conf");
    std::fs::write(&include, snippet).unwrap();
    let main = dir.path().join("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "pid {pid};\nerror_log stderr;\nevents {{}}\nhttp {{\n  access_log off;\n  include {inc};\n}}\n",
            pid = dir.path().join("nginx.pid").display(),
            inc = include.display()
        ),
    )
    .unwrap();
    let out = run(
        Command::new("nginx")
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&main),
        "nginx (Debian's nginx package)",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("test is successful"), "{stderr}");
    assert!(!stderr.contains("[warn]"), "{stderr}");
}
