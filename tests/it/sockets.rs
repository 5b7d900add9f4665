//! Issue [sessions-2] part 3: a WebSocket ends with its session. Real tokio-tungstenite clients
//! through the proxy to the test app's `/ws` echo: every way a session ends on this proxy (the
//! app's destroy, regenerate and revoke, an eviction, the admin's delete and revoke) closes the
//! socket within a second, on memory, sqlite and Redis; an end on another proxy sharing the
//! store closes it within `session.socket_recheck`; an expiry closes it; and traffic on the
//! socket keeps its session alive past the idle timeout.

use std::any::Any;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::support::{App, Browser, TestProxy, get, handle, request};
use crate::upgrade::{Ws, ends_within, open_ws, say};

const USERS: &str = "[session]\nuser_key = \"user\"\n";
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Sqlite,
    #[cfg(feature = "redis")]
    Redis,
}

/// The `[store]` table of `kind`, and what keeps its backend alive. Two calls with the same
/// guard's path or server would share it; each call makes a new one.
async fn store(kind: Kind) -> (String, Box<dyn Any + Send>) {
    match kind {
        Kind::Memory => ("[store]\nkind = \"memory\"\n".to_owned(), Box::new(())),
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let toml = format!(
                "[store]\nkind = \"sqlite\"\npath = \"{}\"\nfsync = false\n",
                dir.path().join("sessions.db").display()
            );
            (toml, Box::new(dir))
        }
        #[cfg(feature = "redis")]
        Kind::Redis => {
            let server = crate::support::redis::RedisServer::start().await;
            let toml = format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", server.url());
            (toml, Box::new(server))
        }
    }
}

/// A browser signed in as `user` on `proxy`.
async fn signed_in(proxy: &TestProxy, user: &str) -> Browser {
    let mut b = proxy.client();
    let update = json!({ "user": user }).to_string();
    b.get("/login")
        .app_responds_with(&[("X-Session-Update", &update)])
        .await;
    assert!(b.cookie.is_some());
    b
}

/// A WebSocket opened with `b`'s cookie on `addr`, checked to carry `b`'s user.
async fn socket(addr: SocketAddr, b: &Browser, user: &str) -> Ws {
    let cookie = format!("{}={}", b.cookie_name, b.cookie.as_deref().unwrap());
    let (mut ws, handshake) = open_ws(addr, "/ws", &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(handshake.status(), 101);
    assert_eq!(say(&mut ws, "hi").await, format!("{user}: hi"));
    ws
}

fn handle_of(b: &Browser) -> String {
    handle(b.cookie.as_deref().unwrap())
}

/// `session_proxy_sockets_closed_total{reason="..."}` on the admin listener.
async fn closed_total(admin: SocketAddr, reason: &str) -> u64 {
    let text = String::from_utf8(get(admin, "/metrics").await.body.to_vec()).unwrap();
    let prefix = format!("session_proxy_sockets_closed_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}: {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Asserts that `ws` closes within a second of now (the end was just answered).
async fn closes_within_a_second(ws: &mut Ws, what: &str) {
    let start = Instant::now();
    assert!(
        ends_within(ws, Duration::from_secs(1)).await,
        "{what}: the socket was still open after a second"
    );
    assert!(start.elapsed() < Duration::from_secs(1), "{what}");
}

/// Every end this proxy makes closes the socket of that session within a second, and no other
/// socket; each is counted under its reason.
async fn every_end_on_this_proxy_closes_the_socket(kind: Kind) {
    let (store_toml, _guard) = store(kind).await;
    let app = App::start().await;
    let proxy = TestProxy::start(
        &app,
        &format!("{USERS}max_per_user = 2\nregenerate_grace = \"400ms\"\n{ADMIN}{store_toml}"),
    )
    .await;
    let (addr, admin) = (proxy.addr, proxy.admin_addr());
    // A bystander whose socket must outlive every other session's end.
    let bystander = signed_in(&proxy, "grace").await;
    let mut kept = socket(addr, &bystander, "grace").await;

    // The app destroys the session (a logout) on another request.
    let mut ada = signed_in(&proxy, "ada").await;
    let mut ws = socket(addr, &ada, "ada").await;
    let r = ada
        .get("/logout")
        .app_responds_with(&[("X-Session-Destroy", "1")])
        .await;
    assert_eq!(r.status, 200);
    closes_within_a_second(&mut ws, &format!("{kind:?} destroy")).await;

    // The app regenerates it: the old id lives on for `regenerate_grace` (400ms), then is dead,
    // and so is its socket.
    let mut ada = signed_in(&proxy, "ada").await;
    let mut ws = socket(addr, &ada, "ada").await;
    ada.get("/rotate")
        .app_responds_with(&[("X-Session-Regenerate", "1")])
        .await;
    assert!(
        !ends_within(&mut ws, Duration::from_millis(150)).await,
        "{kind:?} regenerate: the socket closed within the grace"
    );
    closes_within_a_second(&mut ws, &format!("{kind:?} regenerate")).await;
    // A socket opened under the new id lives on.
    let mut renewed = socket(addr, &ada, "ada").await;

    // The app revokes the user's other sessions from one of them.
    let mut other = signed_in(&proxy, "ada").await;
    other
        .get("/password")
        .app_responds_with(&[("X-Session-Revoke", "others")])
        .await;
    closes_within_a_second(&mut renewed, &format!("{kind:?} revoke")).await;
    let mut ws = socket(addr, &other, "ada").await;

    // The admin deletes it.
    let r = request(
        admin,
        Method::DELETE,
        &format!("/sessions/{}", handle_of(&other)),
    )
    .body(Bytes::new())
    .await;
    assert_eq!(r.status, 204);
    closes_within_a_second(&mut ws, &format!("{kind:?} admin delete")).await;

    // The admin signs the user out everywhere.
    let ada = signed_in(&proxy, "ada").await;
    let mut ws = socket(addr, &ada, "ada").await;
    let r = request(admin, Method::DELETE, "/users/ada/sessions")
        .body(Bytes::new())
        .await;
    assert_eq!(r.status, 200);
    closes_within_a_second(&mut ws, &format!("{kind:?} admin revoke")).await;

    // max_per_user = 2: a third sign-in evicts the least recently used.
    let first = signed_in(&proxy, "ada").await;
    let mut ws = socket(addr, &first, "ada").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _second = signed_in(&proxy, "ada").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _third = signed_in(&proxy, "ada").await;
    closes_within_a_second(&mut ws, &format!("{kind:?} eviction")).await;

    // The bystander's socket saw none of it.
    assert_eq!(say(&mut kept, "still here").await, "grace: still here");
    for (reason, want) in [
        ("destroyed", 1),
        ("regenerated", 1),
        ("revoked", 2),
        ("admin", 1),
        ("evicted", 1),
        ("expired", 0),
        ("gone", 0),
    ] {
        assert_eq!(closed_total(admin, reason).await, want, "{kind:?} {reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_on_this_proxy_closes_the_socket_on_memory() {
    every_end_on_this_proxy_closes_the_socket(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_on_this_proxy_closes_the_socket_on_sqlite() {
    every_end_on_this_proxy_closes_the_socket(Kind::Sqlite).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_on_this_proxy_closes_the_socket_on_redis() {
    every_end_on_this_proxy_closes_the_socket(Kind::Redis).await;
}

/// Two proxies on one store: a logout through B closes A's socket within A's recheck.
async fn a_logout_on_another_proxy_closes_the_socket_within_the_recheck(kind: Kind) {
    let (store_toml, _guard) = store(kind).await;
    let app = App::start().await;
    let toml = format!("[session]\nsocket_recheck = \"500ms\"\n{ADMIN}{store_toml}");
    let (a, b) = (
        TestProxy::start(&app, &toml).await,
        TestProxy::start(&app, &toml).await,
    );
    let on_a = signed_in(&a, "ada").await;
    let mut ws = socket(a.addr, &on_a, "ada").await;
    let mut on_b = Browser {
        addr: b.addr,
        ..on_a.clone()
    };
    let r = on_b
        .get("/logout")
        .app_responds_with(&[("X-Session-Destroy", "1")])
        .await;
    assert_eq!(r.status, 200);
    let start = Instant::now();
    assert!(
        ends_within(&mut ws, Duration::from_secs(3)).await,
        "{kind:?}: the socket outlived its session"
    );
    // The recheck's interval, plus a margin for a loaded machine.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{kind:?}: {:?}",
        start.elapsed()
    );
    assert_eq!(closed_total(a.admin_addr(), "gone").await, 1);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_another_proxy_closes_the_socket_within_the_recheck_on_redis() {
    a_logout_on_another_proxy_closes_the_socket_within_the_recheck(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_another_proxy_closes_the_socket_within_the_recheck_on_sqlite() {
    a_logout_on_another_proxy_closes_the_socket_within_the_recheck(Kind::Sqlite).await;
}

/// The short lifetime of the next two tests: idle for 2 s ends a session; a touch is due every
/// 200 ms of use; sockets are rechecked every 500 ms.
const SHORT: &str =
    "[session]\nidle_timeout = \"2s\"\ntouch_interval = \"200ms\"\nsocket_recheck = \"500ms\"\n";

async fn a_socket_closes_when_its_session_expires(kind: Kind) {
    let (store_toml, _guard) = store(kind).await;
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &format!("{SHORT}{ADMIN}{store_toml}")).await;
    let ada = signed_in(&proxy, "ada").await;
    let start = Instant::now();
    let mut ws = socket(proxy.addr, &ada, "ada").await;
    // No traffic: the session dies at its idle deadline, found by the next recheck.
    assert!(
        ends_within(&mut ws, Duration::from_secs(6)).await,
        "{kind:?}: the socket outlived its expired session"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(4000),
        "{kind:?}: closed after {took:?}"
    );
    let admin = proxy.admin_addr();
    let counted = closed_total(admin, "gone").await + closed_total(admin, "expired").await;
    assert_eq!(counted, 1, "{kind:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closes_when_its_session_expires_on_memory() {
    a_socket_closes_when_its_session_expires(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closes_when_its_session_expires_on_sqlite() {
    a_socket_closes_when_its_session_expires(Kind::Sqlite).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closes_when_its_session_expires_on_redis() {
    a_socket_closes_when_its_session_expires(Kind::Redis).await;
}

/// A user active only on a socket is not logged out: its traffic touches the session.
async fn socket_traffic_keeps_the_session_alive(kind: Kind) {
    let (store_toml, _guard) = store(kind).await;
    let app = App::start().await;
    let proxy = TestProxy::start(&app, &format!("{SHORT}{store_toml}")).await;
    let mut ada = signed_in(&proxy, "ada").await;
    let mut ws = socket(proxy.addr, &ada, "ada").await;
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        n += 1;
        assert_eq!(
            say(&mut ws, &format!("m{n}")).await,
            format!("ada: m{n}"),
            "{kind:?}: the socket closed after {:?}",
            start.elapsed()
        );
    }
    // Twice the idle timeout has passed since the last request: the session lives on, and the
    // cookie still works.
    let seen = ada.get("/echo").await.app_saw();
    assert!(!seen.is_new(), "{kind:?}: the session expired");
    assert_eq!(seen.session(), json!({ "user": "ada" }));
    assert_eq!(say(&mut ws, "after").await, "ada: after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_traffic_keeps_the_session_alive_on_memory() {
    socket_traffic_keeps_the_session_alive(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_traffic_keeps_the_session_alive_on_sqlite() {
    socket_traffic_keeps_the_session_alive(Kind::Sqlite).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_traffic_keeps_the_session_alive_on_redis() {
    socket_traffic_keeps_the_session_alive(Kind::Redis).await;
}
