use serde_json::json;

use crate::support::{App, Browser, TestProxy, get, handle};

const UPDATE: (&str, &str) = ("X-Session-Update", r#"{"a":1}"#);

async fn first_cookie(toml: &str) -> (App, TestProxy, Browser, String) {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, toml).await;
    let mut b = proxy.client();
    let r = b.get("/").app_responds_with(&[UPDATE]).await;
    let line = r
        .set_cookie(&proxy.config.cookie.name)
        .unwrap_or_else(|| panic!("no session cookie in {:?}", r.set_cookies()));
    (app, proxy, b, line)
}

fn attrs(line: &str) -> Vec<String> {
    line.split("; ").skip(1).map(str::to_owned).collect()
}

#[tokio::test]
async fn default_cookie_attributes() {
    let (_app, _p, b, line) = first_cookie("").await;
    let mut a = attrs(&line);
    a.sort();
    assert_eq!(a, vec!["HttpOnly", "Path=/", "SameSite=Lax"], "{line}");
    assert_eq!(b.cookie.unwrap().len(), 32);
}

#[tokio::test]
async fn every_cookie_option_is_honoured() {
    let (_app, _p, b, line) = first_cookie(
        "[cookie]\nname = \"sid\"\nmax_age = \"12h\"\npath = \"/app\"\ndomain = \"example.test\"\n\
         secure = true\nhttp_only = false\nsame_site = \"strict\"",
    )
    .await;
    assert!(line.starts_with("sid="), "{line}");
    let a = attrs(&line);
    for want in [
        "Max-Age=43200",
        "Path=/app",
        "Domain=example.test",
        "Secure",
        "SameSite=Strict",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} missing in {line}");
    }
    // Expires says the same as Max-Age, for clients that predate it: 12 h from now.
    let expires = a
        .iter()
        .find_map(|x| x.strip_prefix("Expires="))
        .unwrap_or_else(|| panic!("no Expires in {line}"));
    let at = httpdate::parse_http_date(expires).unwrap();
    let ahead = at.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        (43_100..=43_200).contains(&ahead.as_secs()),
        "Expires {expires} is {ahead:?} ahead"
    );
    assert!(!a.iter().any(|x| x == "HttpOnly"), "{line}");
    assert!(b.cookie.is_some());
}

#[tokio::test]
async fn a_max_age_past_year_9999_goes_out_without_expires() {
    // An HTTP date cannot say it; the proxy must neither panic nor drop the cookie.
    let (_app, _p, b, line) = first_cookie("[cookie]\nmax_age = \"10000years\"").await;
    let a = attrs(&line);
    assert!(a.iter().any(|x| x == "Max-Age=315576000000"), "{line}");
    assert!(!a.iter().any(|x| x.starts_with("Expires=")), "{line}");
    assert!(b.cookie.is_some());
}

#[tokio::test]
async fn same_site_none_and_fixed_expires() {
    let (_app, _p, _b, line) = first_cookie(
        "[cookie]\nsame_site = \"none\"\nsecure = true\nexpires = \"2031-02-03T04:05:06Z\"",
    )
    .await;
    let a = attrs(&line);
    assert!(a.iter().any(|x| x == "SameSite=None"), "{line}");
    assert!(
        a.iter()
            .any(|x| x == "Expires=Mon, 03 Feb 2031 04:05:06 GMT"),
        "{line}"
    );
    assert!(!a.iter().any(|x| x.starts_with("Max-Age")), "{line}");
}

#[tokio::test]
async fn destroy_expires_the_cookie_with_the_same_path_and_domain() {
    let (_app, _p, mut b, _) =
        first_cookie("[cookie]\npath = \"/app\"\ndomain = \"example.test\"").await;
    let r = b
        .get("/")
        .app_responds_with(&[("X-Session-Destroy", "1")])
        .await;
    let line = r.set_cookie("session_id").unwrap();
    assert!(line.starts_with("session_id=;"), "{line}");
    for want in ["Max-Age=0", "Path=/app", "Domain=example.test"] {
        assert!(
            attrs(&line).iter().any(|x| x == want),
            "{want} missing in {line}"
        );
    }
}

#[tokio::test]
async fn renew_missing_gives_unknown_and_malformed_ids_a_fresh_one() {
    let (_app, proxy, _b, _) = first_cookie("").await;
    let unknown = "B".repeat(32);
    for cookie in [
        format!("session_id={unknown}"),
        "session_id=../../etc/passwd".to_owned(),
        "session_id=".to_owned(),
        "session_id".to_owned(),
        format!("session_id={}", "C".repeat(31)),
        format!("session_id={}%00", "C".repeat(32)),
    ] {
        let r = get(proxy.addr, "/")
            .client_sends(&[("cookie", &cookie)])
            .app_responds_with(&[UPDATE])
            .await;
        assert_eq!(r.status, 200, "{cookie}");
        let seen = r.app_saw();
        assert!(seen.is_new(), "{cookie}");
        assert_ne!(
            seen.session_id(),
            unknown,
            "a client chose its own id with {cookie}"
        );
        assert_eq!(seen.session(), json!({}));
        let set = r.set_cookie("session_id").unwrap();
        assert!(
            set.starts_with(&format!("session_id={}", seen.session_id())),
            "{set}"
        );
    }
}

#[tokio::test]
async fn renew_missing_false_adopts_a_well_formed_unknown_id() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "[session]\nrenew_missing = false").await;
    let chosen = "D".repeat(32);
    let r = get(proxy.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={chosen}"))])
        .app_responds_with(&[UPDATE])
        .await;
    assert_eq!(r.app_saw().session_id(), chosen);
    assert!(r.app_saw().is_new());
    assert_eq!(
        proxy.sessions().await,
        vec![(handle(&chosen), json!({"a":1}))]
    );
    // Regenerate never keeps a client-chosen id.
    let other = "E".repeat(32);
    let r = get(proxy.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={other}"))])
        .app_responds_with(&[("X-Session-Regenerate", "1")])
        .await;
    let set = r.set_cookie("session_id").unwrap();
    assert!(!set.contains(&other), "{set}");
    // A malformed id is still never adopted.
    let r = get(proxy.addr, "/")
        .client_sends(&[("cookie", "session_id=short")])
        .await;
    assert_ne!(r.app_saw().session_id(), "short");
}

#[tokio::test]
async fn signed_cookies_reject_bare_and_tampered_values() {
    let secret = "s".repeat(40);
    let (_app, proxy, mut b, line) =
        first_cookie(&format!("[cookie]\nsecret = \"{secret}\"")).await;
    let value = b.cookie.clone().unwrap();
    let stored = proxy.sessions().await[0].0.clone();
    // The signed value is the signature followed by the id.
    let id = value[value.len() - 32..].to_owned();
    assert_eq!(handle(&id), stored, "{line}");
    assert_ne!(
        value, id,
        "the cookie must carry a signature, not the bare id"
    );
    assert!(value.ends_with(&id), "{line}");

    // The signed cookie works.
    assert_eq!(b.get("/").await.app_saw().session(), json!({"a":1}));
    // The bare id (no signature) does not.
    let r = get(proxy.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={id}"))])
        .await;
    assert!(r.app_saw().is_new());
    // Neither does a tampered signature.
    let mut forged = value.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let r = get(proxy.addr, "/")
        .client_sends(&[("cookie", &format!("session_id={forged}"))])
        .await;
    assert!(r.app_saw().is_new());
    assert_ne!(r.app_saw().session_id(), id);
}

#[tokio::test]
async fn the_first_valid_of_several_session_cookies_wins() {
    let (_app, proxy, b, _) = first_cookie("").await;
    let good = b.cookie.clone().unwrap();
    let r = get(proxy.addr, "/")
        .client_sends(&[("cookie", &format!("session_id=garbage; session_id={good}"))])
        .await;
    assert_eq!(r.app_saw().session_id(), good);
    assert!(!r.app_saw().is_new());
}
