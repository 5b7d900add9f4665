//! The golden protocol fixtures in `tests/fixtures/protocol/` (see the README there), run
//! through the real proxy in front of the test app. The same files serve other implementations
//! of the protocol (an app-side adapter's tests), so the bytes in them are the contract: every
//! base64url value was computed outside this crate, and the test app decodes `X-Session` with its
//! own decoder, so a bug shared by the crate's encoder and decoder cannot pass.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::app::decode_x_session;
use crate::support::{App, TestProxy, get, handle};

/// One case of `session_headers.json`: session data, its stored JSON text, its `X-Session`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionHeader {
    name: String,
    data: Value,
    json: String,
    x_session: String,
}

/// One case of `instructions.json`: the app answers a request on a session holding
/// `stored_before` with `headers`; then the session holds `stored_after` (`None`: no session).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Instruction {
    name: String,
    stored_before: Value,
    headers: Vec<(String, String)>,
    stored_after: Option<Value>,
}

fn fixture<T: for<'de> Deserialize<'de>>(file: &str) -> Vec<T> {
    let path = format!(
        "{}/tests/fixtures/protocol/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `value` as an app might write it: keys in reverse order, a space after every `:` and `,`, and
/// non-ASCII escaped as `\uXXXX` (a header value is ASCII). So whatever the proxy sends on is
/// its own normalised text, not an echo of the app's.
fn as_an_app_writes_it(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let members: Vec<String> = map
                .iter()
                .rev()
                .map(|(k, v)| format!("{}: {}", ascii(&json!(k)), as_an_app_writes_it(v)))
                .collect();
            format!("{{{}}}", members.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(as_an_app_writes_it).collect();
            format!("[{}]", items.join(", "))
        }
        scalar => ascii(scalar),
    }
}

/// A JSON scalar with every non-ASCII character written as a `\u` escape (UTF-16, as JSON has it).
fn ascii(scalar: &Value) -> String {
    let mut out = String::new();
    for c in scalar.to_string().chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[test]
fn the_session_header_fixtures_are_consistent_and_cover_the_alphabet_and_every_length() {
    let cases: Vec<SessionHeader> = fixture("session_headers.json");
    for case in &cases {
        let text = URL_SAFE_NO_PAD
            .decode(&case.x_session)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(
            String::from_utf8(text).unwrap(),
            case.json,
            "{}: x_session is not base64url of json",
            case.name
        );
        assert_eq!(
            serde_json::from_str::<Value>(&case.json).unwrap(),
            case.data,
            "{}: json is not data",
            case.name
        );
        assert_eq!(
            decode_x_session(case.x_session.as_bytes()).as_ref(),
            Ok(&case.data),
            "{}: the test app decodes it",
            case.name
        );
    }
    let lengths: std::collections::BTreeSet<usize> =
        cases.iter().map(|c| c.json.len() % 3).collect();
    assert_eq!(
        lengths,
        [0, 1, 2].into(),
        "every unpadded tail length is covered"
    );
    assert!(
        cases
            .iter()
            .any(|c| c.x_session.contains('-') && c.x_session.contains('_')),
        "the URL-safe alphabet is covered"
    );
}

#[tokio::test]
async fn the_app_receives_exactly_the_x_session_of_each_fixture() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    for case in fixture::<SessionHeader>("session_headers.json") {
        // The app stores the data as raw JSON in its own style, then as the fixture's base64url.
        for replace in [as_an_app_writes_it(&case.data), case.x_session.clone()] {
            let mut b = proxy.client();
            b.get("/")
                .app_responds_with(&[("X-Session-Replace", &replace)])
                .await;
            assert!(
                b.cookie.is_some(),
                "{}: no session for {replace}",
                case.name
            );
            let seen = b.get("/").await.app_saw();
            assert_eq!(
                seen.headers("x-session"),
                vec![case.x_session.clone()],
                "{}: after Replace {replace}",
                case.name
            );
            assert_eq!(seen.session(), case.data, "{}", case.name);
        }
    }
}

#[tokio::test]
async fn each_instruction_fixture_leaves_the_session_as_stored_after() {
    let app = App::start().await;
    for case in fixture::<Instruction>("instructions.json") {
        let name = &case.name;
        let proxy = TestProxy::start(&app, "").await;
        let mut b = proxy.client();
        b.get("/")
            .app_responds_with(&[(
                "X-Session-Replace",
                &as_an_app_writes_it(&case.stored_before),
            )])
            .await;
        let before = b.cookie.clone().unwrap();
        let seen = b.get("/").await.app_saw();
        assert!(!seen.is_new(), "{name}: stored_before was not stored");
        assert_eq!(seen.session(), case.stored_before, "{name}: stored_before");

        let headers: Vec<(&str, &str)> = case
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = b.get("/").app_responds_with(&headers).await;
        assert_eq!(r.status, 200, "{name}");

        let stored = proxy.sessions().await;
        match &case.stored_after {
            Some(after) => {
                let seen = b.get("/").await.app_saw();
                assert!(!seen.is_new(), "{name}: the session is gone");
                assert_eq!(&seen.session(), after, "{name}: what the app gets next");
                assert_eq!(
                    stored,
                    vec![(handle(&seen.session_id()), after.clone())],
                    "{name}: the store"
                );
            }
            None => {
                assert!(b.cookie.is_none(), "{name}: the cookie was not expired");
                assert!(stored.is_empty(), "{name}: the store kept {stored:?}");
                // The old cookie, replayed, finds nothing.
                let seen = get(proxy.addr, "/")
                    .client_sends(&[("cookie", &format!("session_id={before}"))])
                    .await
                    .app_saw();
                assert!(seen.is_new(), "{name}: the session survived");
                assert_eq!(seen.session(), json!({}), "{name}");
            }
        }
    }
}
