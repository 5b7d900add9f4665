//! Numbers are kept exactly as the app wrote them: an integer beyond 64 bits or a long decimal
//! survives Update, Replace and the trip back to the app digit for digit.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::support::{App, TestProxy};

const BIG: &str = "123456789012345678901234567890";
const LONG: &str = "0.10000000000000000000000000000000000001";
const NEGATIVE: &str = "-98765432109876543210987654321";

/// The session JSON as the app receives it: the raw text of `X-Session`, not re-parsed.
fn session_text(seen: &crate::support::Seen) -> String {
    let raw = seen.header("x-session").unwrap();
    String::from_utf8(URL_SAFE_NO_PAD.decode(raw).unwrap()).unwrap()
}

#[tokio::test]
async fn big_integers_and_long_decimals_survive_update_and_replace_exactly() {
    let app = App::start().await;
    let proxy = TestProxy::start(&app, "").await;
    let mut b = proxy.client();
    b.get("/")
        .app_responds_with(&[(
            "X-Session-Update",
            &format!(r#"{{"big":{BIG},"nested":{{"long":{LONG}}}}}"#),
        )])
        .await;
    // A later patch that merges into the nested object and touches nothing else.
    b.get("/")
        .app_responds_with(&[(
            "X-Session-Update",
            &format!(r#"{{"nested":{{"neg":{NEGATIVE}}}}}"#),
        )])
        .await;
    let text = session_text(&b.get("/").await.app_saw());
    for digits in [BIG, LONG, NEGATIVE] {
        assert!(text.contains(digits), "{digits} changed: {text}");
    }
    let stored = proxy.store.list(None, 10).await.unwrap().sessions[0]
        .1
        .data
        .to_string();
    assert!(stored.contains(BIG) && stored.contains(LONG), "{stored}");

    b.get("/")
        .app_responds_with(&[("X-Session-Replace", &format!(r#"{{"only":{BIG}}}"#))])
        .await;
    let text = session_text(&b.get("/").await.app_saw());
    assert_eq!(text, format!(r#"{{"only":{BIG}}}"#));
}
