//! SIGHUP reloads the whole configuration in the running binary ([ops] part 2): the upstream,
//! the cookie, the skip rules, the session size, the limits and the timeouts change for new
//! requests while a request in flight finishes under the settings it began with; a setting that
//! takes a restart is named and kept; a file that fails validation changes nothing and is
//! refused with the same error `session-proxy check` gives.

use std::path::Path;

use bytes::Bytes;
use http::Method;

use crate::support::{App, Resp, Running, get, request};

const UPDATE: (&str, &str) = ("X-Session-Update", r#"{"a":1}"#);

/// The config the test starts with, and the one it reloads into, over the same sqlite file.
fn config(dir: &Path, upstream: &App, second: bool) -> String {
    let db = dir.join("sessions.db");
    let (name, skip, max_size, body, response, timeout) = if second {
        ("sid_two", "/assets/", 64, 10, "500ms", "3s")
    } else {
        ("sid_one", "/static/", 4096, 1_000_000, "30s", "2s")
    };
    let log = if second {
        "[log]\nformat = \"json\"\n"
    } else {
        ""
    };
    format!(
        "upstream = \"http://{}\"\n\
         [cookie]\nname = \"{name}\"\n\
         [session]\nskip = [\"{skip}\"]\nmax_size = {max_size}\n\
         [store]\nkind = \"sqlite\"\npath = \"{}\"\ntimeout = \"{timeout}\"\n\
         [limits]\nmax_body_size = {body}\n\
         [upstream_timeouts]\nresponse = \"{response}\"\n{log}",
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
    assert!(line.contains("restart=log.format"), "{line}");
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
