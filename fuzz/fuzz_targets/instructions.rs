//! The instruction decoder: what the app sends back (`X-Session-Update`/`-Replace`/`-Destroy`/
//! `-Regenerate`), and the `X-Session` encoding the app reads.
//!
//! Input: one flag byte (bit 0: a Destroy header, bit 1: Regenerate, bit 2: no Update,
//! bit 3: no Replace), then the Update value and the Replace value split at the first `\n`.
//! Properties:
//! - `decode_session(encode_session(s)) == s`, and a value `decode_session` accepts is the one
//!   encoding of its text (no second spelling of the same session);
//! - an object `parse_object` accepts reads back the same from its JSON text and from both
//!   base64 spellings (`decode(encode(x)) == x`), and only objects are accepted;
//! - the headers an upstream response carries come out as the same instructions
//!   (`take_instructions`), none of the reserved namespace is left for the client, and
//!   precedence holds: Destroy beats everything, Replace beats Update;
//! - a merge patch is idempotent, and the stored-text fast path (`apply_to_text`) gives the
//!   same data as parse-merge-print (`apply_to`).
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use session_proxy::protocol::codec::parse_object;
use session_proxy::protocol::{
    ProtocolHeaders, decode_session, encode_session, parse_instructions,
};
use session_proxy::session::DataChange;

fn check_session_codec(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert_eq!(
        decode_session(encode_session(&text).as_bytes()).as_deref(),
        Some(&*text)
    );
    if let Some(decoded) = decode_session(bytes) {
        let again = if bytes.ends_with(b"=") {
            URL_SAFE.encode(decoded.as_bytes())
        } else {
            encode_session(&decoded)
        };
        assert_eq!(again.as_bytes(), bytes, "a second spelling of {decoded:?}");
    }
}

fn check_object(value: &[u8]) -> Option<Map<String, Value>> {
    let map = parse_object("update", value).ok()?;
    let text = serde_json::to_string(&map).expect("a map prints");
    assert_eq!(parse_object("update", text.as_bytes()).as_ref(), Ok(&map));
    let unpadded = URL_SAFE_NO_PAD.encode(text.as_bytes());
    assert_eq!(
        parse_object("update", unpadded.as_bytes()).as_ref(),
        Ok(&map)
    );
    let padded = URL_SAFE.encode(text.as_bytes());
    assert_eq!(parse_object("update", padded.as_bytes()).as_ref(), Ok(&map));
    Some(map)
}

fn check_changes(patch: &Map<String, Value>, data: &Map<String, Value>) {
    let change = DataChange::Patch(patch.clone());
    let mut once = Value::Object(data.clone());
    change.apply_to(&mut once);
    let mut twice = once.clone();
    change.apply_to(&mut twice);
    assert_eq!(once, twice, "a merge patch applied twice changed more");

    let stored = serde_json::to_string(data).expect("a map prints");
    let text = change
        .apply_to_text(&stored)
        .expect("a patch applies to stored object text");
    let from_text: Value = serde_json::from_str(&text).expect("apply_to_text prints JSON");
    assert_eq!(from_text, once, "apply_to_text and apply_to disagree");

    let replace = DataChange::Replace(patch.clone());
    let text = replace.apply_to_text(&stored).expect("a replace prints");
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("JSON"),
        Value::Object(patch.clone())
    );
}

fn check_headers(flags: u8, update: &[u8], replace: &[u8]) {
    let names = ProtocolHeaders::new("X-Session").expect("the default prefix");
    let mut headers = HeaderMap::new();
    let add = |headers: &mut HeaderMap, name: &'static str, value: &[u8]| -> bool {
        match HeaderValue::from_bytes(value) {
            Ok(v) => {
                headers.append(HeaderName::from_static(name), v);
                true
            }
            Err(_) => false,
        }
    };
    headers.append("content-type", HeaderValue::from_static("text/html"));
    let destroy = flags & 1 != 0 && add(&mut headers, "x-session-destroy", b"1");
    let regenerate = flags & 2 != 0 && add(&mut headers, "x-session-regenerate", b"1");
    let update_sent = flags & 4 == 0 && add(&mut headers, "x-session-update", update);
    let replace_sent = flags & 8 == 0 && add(&mut headers, "x-session-replace", replace);
    // Spellings that app servers read as the same header must go as well.
    headers.append("x_session_id", HeaderValue::from_static("forged"));

    let raw = names.take_instructions(&mut headers);
    assert!(
        headers.keys().all(|n| !names.reserved(n)),
        "reserved headers left: {headers:?}"
    );
    assert_eq!(
        headers.len(),
        1,
        "a header outside the namespace went: {headers:?}"
    );
    assert_eq!(raw.destroy, destroy);
    assert_eq!(raw.regenerate, regenerate);
    assert_eq!(raw.update.is_some(), update_sent);
    assert_eq!(raw.replace.is_some(), replace_sent);

    let (got, errors) = parse_instructions(&raw);
    if destroy {
        assert!(got.destroy && !got.regenerate && got.change.is_none() && errors.is_empty());
        return;
    }
    assert_eq!(got.regenerate, regenerate);
    let replace_ok = raw
        .replace
        .as_deref()
        .and_then(|v| parse_object("replace", v).ok());
    let update_ok = raw
        .update
        .as_deref()
        .and_then(|v| parse_object("update", v).ok());
    let want = match (replace_ok, update_ok) {
        (Some(r), _) => Some(DataChange::Replace(r)),
        (None, Some(u)) => Some(DataChange::Patch(u)),
        (None, None) => None,
    };
    assert_eq!(got.change, want);
    assert_eq!(got.modifies(), regenerate || got.change.is_some());
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (update, replace) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b""[..]),
    };
    check_session_codec(rest);
    let patch = check_object(update);
    let data = check_object(replace);
    if let (Some(patch), Some(data)) = (&patch, &data) {
        check_changes(patch, data);
    }
    if let Some(patch) = &patch {
        check_changes(patch, &Map::new());
    }
    check_headers(flags, update, replace);
});
