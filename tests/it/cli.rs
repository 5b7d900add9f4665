//! The command line: `check`, config errors, `--help`.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_config() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("fs:{}", dir.path().display());
    let (code, out, err) = run(&["check", "--config", "proxy.toml", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration ok"));
}

#[test]
fn bad_config_names_the_file_and_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[cookie]\nsame_site = \"none\"\n", "`cookie.same_site`"),
        (
            "[session]\nidle_timeout = \"forever\"\n",
            "`session.idle_timeout`",
        ),
        ("[sesion]\n", "unknown field"),
        ("listen = 8080\n", "listen"),
    ];
    for (text, want) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(
            err.contains("bad.toml") && err.contains(want),
            "{text}: {err}"
        );
        // The proxy refuses to start with it too.
        let (code, _, _) = run(&["--config", path.to_str().unwrap()]);
        assert_eq!(code, 2);
    }
    let (code, _, err) = run(&["check", "--config", "/nonexistent/proxy.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/proxy.toml"), "{err}");
    let (code, _, err) = run(&["check", "--store", "mysql://x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--store"), "{err}");
}

#[test]
fn a_store_key_of_another_kind_is_named_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.toml");
    std::fs::write(&path, "[store]\nkind = \"memory\"\nmode = 0o600\n").unwrap();
    let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("memory.toml") && err.contains("`store.mode`"),
        "{err}"
    );
}

#[test]
fn flags_override_the_file() {
    let (code, _, err) = run(&[
        "check",
        "--config",
        "proxy.toml",
        "--store",
        "memory",
        "--cookie-same-site",
        "none",
    ]);
    assert_eq!(
        code, 2,
        "same_site=none without secure must be refused: {err}"
    );
    let (code, _, err) = run(&[
        "check",
        "--config",
        "proxy.toml",
        "--store",
        "memory",
        "--cookie-same-site",
        "none",
        "--cookie-secure",
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn help_documents_every_flag() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--listen",
        "--upstream",
        "--store",
        "--cookie-name",
        "--cookie-max-age",
        "--cookie-secure",
        "--cookie-secret",
        "--idle-timeout",
        "--absolute-timeout",
        "--touch-interval",
        "check",
        "sessions",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help");
    }
}

/// `config reference` prints the committed configuration page, whatever config is around: it
/// reads none (a broken file named by --config does not stop it).
#[test]
fn config_reference_prints_the_committed_page() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[sesion]\n").unwrap();
    let broken = broken.display().to_string();
    let (code, out, err) = run(&["config", "reference", "--config", &broken]);
    assert_eq!(code, 0, "{err}");
    let page = std::fs::read_to_string("docs/src/configuration.md").unwrap();
    assert_eq!(out, page);
    assert!(out.contains("| `session.idle_timeout` | duration | `\"24h\"` | `--idle-timeout` |"));
}
