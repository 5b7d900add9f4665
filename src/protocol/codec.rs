//! The wire encoding of the header protocol, and nothing else: pure functions, no IO.
//!
//! Session data travels to the upstream as base64url (no padding) of its UTF-8 JSON text.
//! Update and Replace instructions come back either as raw JSON (when the value starts with `{`)
//! or as base64url JSON (padding tolerated). Which instruction wins is `instructions.rs`'s.

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

/// Why an instruction header was refused. The proxy logs it and ignores the instruction.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("{header}: value is neither JSON nor base64url")]
    Base64 { header: &'static str },
    #[error("{header}: not valid JSON: {reason}")]
    Json {
        header: &'static str,
        reason: String,
    },
    #[error("{header}: must be a JSON object")]
    NotObject { header: &'static str },
}

/// base64url (no padding) of the session's JSON text, as sent in `X-Session`.
pub fn encode_session(json: &str) -> String {
    URL_SAFE_NO_PAD.encode(json.as_bytes())
}

/// The `X-Session` header value of the session's JSON text: [`encode_session`]'s bytes, put
/// straight into the value (no `String` to check for UTF-8 first). `None` never happens:
/// base64url is always a valid header value, and `HeaderValue` still checks.
pub fn session_header(json: &str) -> Option<http::HeaderValue> {
    let mut out = vec![0; base64::encoded_len(json.len(), false)?];
    let written = URL_SAFE_NO_PAD
        .encode_slice(json.as_bytes(), &mut out)
        .ok()?;
    out.truncate(written);
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
}

/// Decodes an `X-Session` value back to JSON text; the inverse of [`encode_session`].
pub fn decode_session(value: &[u8]) -> Option<String> {
    let bytes = decode_b64(value)?;
    String::from_utf8(bytes).ok()
}

fn decode_b64(value: &[u8]) -> Option<Vec<u8>> {
    if value.ends_with(b"=") {
        URL_SAFE.decode(value).ok()
    } else {
        URL_SAFE_NO_PAD.decode(value).ok()
    }
}

/// Parses one Update/Replace value: raw JSON object, or base64url of one.
pub fn parse_object(header: &'static str, value: &[u8]) -> Result<Map<String, Value>, CodecError> {
    let trimmed = value.trim_ascii();
    let json: Value = if trimmed.first() == Some(&b'{') {
        serde_json::from_slice(trimmed)
    } else {
        let bytes = decode_b64(trimmed).ok_or(CodecError::Base64 { header })?;
        serde_json::from_slice(&bytes)
    }
    .map_err(|e| CodecError::Json {
        header,
        reason: e.to_string(),
    })?;
    match json {
        Value::Object(map) => Ok(map),
        _ => Err(CodecError::NotObject { header }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn session_round_trip() {
        assert_eq!(encode_session("{}"), "e30");
        for text in ["{}", r#"{"a":1,"é":"ü"}"#, r#"{"n":[1,2,{"x":null}]}"#] {
            assert_eq!(
                decode_session(encode_session(text).as_bytes()).as_deref(),
                Some(text)
            );
        }
    }

    #[test]
    fn the_session_header_is_the_encoded_session() {
        for text in ["", "{}", r#"{"a":1,"é":"ü"}"#, &"x".repeat(1000)] {
            let value = session_header(text).unwrap();
            assert_eq!(value.as_bytes(), encode_session(text).as_bytes());
        }
    }

    #[test]
    fn parse_object_table() {
        let b64 = URL_SAFE_NO_PAD.encode(br#"{"a":1}"#);
        let b64_padded = URL_SAFE.encode(br#"{"ab":1}"#);
        let cases: Vec<(&[u8], Result<Value, &str>)> = vec![
            (br#"{"a":1}"#, Ok(json!({"a":1}))),
            (br#"  {"a":null}  "#, Ok(json!({"a":null}))),
            (b64.as_bytes(), Ok(json!({"a":1}))),
            (b64_padded.as_bytes(), Ok(json!({"ab":1}))),
            (b"{not json", Err("json")),
            (b"[1,2]", Err("base64")),
            (b"WzEsMl0", Err("object")), // base64url of [1,2]
            (b"", Err("json")),
            (b"!!!", Err("base64")),
        ];
        for (input, expect) in cases {
            let got = parse_object("update", input);
            match (got, expect) {
                (Ok(m), Ok(v)) => assert_eq!(Value::Object(m), v),
                (Err(CodecError::Json { .. }), Err("json"))
                | (Err(CodecError::Base64 { .. }), Err("base64"))
                | (Err(CodecError::NotObject { .. }), Err("object")) => {}
                (got, expect) => panic!("{:?}: got {got:?}, want {expect:?}", input),
            }
        }
    }
}

/// Properties over generated input: whatever a client or an app sends, the codec neither panics
/// nor accepts anything but an object, and what it encodes it decodes back exactly.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// JSON values of every kind, numbers beyond 64 bits among them.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[1-9][0-9]{0,60}".prop_map(|d| serde_json::from_str(&d).unwrap_or(Value::Null)),
            "-?0\\.[0-9]{1,40}".prop_map(|d| serde_json::from_str(&d).unwrap_or(Value::Null)),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map(".{0,8}", value(), 0..8).prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn what_is_encoded_decodes_back_exactly(text in ".*") {
            prop_assert_eq!(decode_session(encode_session(&text).as_bytes()), Some(text));
        }

        #[test]
        fn an_object_reads_the_same_raw_and_in_either_base64(map in object()) {
            let text = serde_json::to_string(&map).unwrap();
            let raw = parse_object("X-Session-Update", text.as_bytes());
            prop_assert_eq!(raw.as_ref(), Ok(&map));
            let unpadded = URL_SAFE_NO_PAD.encode(text.as_bytes());
            let from_unpadded = parse_object("X-Session-Update", unpadded.as_bytes());
            prop_assert_eq!(from_unpadded.as_ref(), Ok(&map));
            let padded = URL_SAFE.encode(text.as_bytes());
            let from_padded = parse_object("X-Session-Update", padded.as_bytes());
            prop_assert_eq!(from_padded.as_ref(), Ok(&map));
            // And its text survives a round trip digit for digit.
            prop_assert_eq!(serde_json::to_string(&raw.unwrap()).unwrap(), text);
        }

        #[test]
        fn any_bytes_are_an_object_or_an_error_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_object("X-Session-Replace", &bytes);
            let _ = decode_session(&bytes);
        }

        #[test]
        fn only_objects_are_accepted(v in value()) {
            let text = serde_json::to_string(&v).unwrap();
            let parsed = parse_object("X-Session-Replace", text.as_bytes());
            prop_assert_eq!(parsed.is_ok(), v.is_object());
        }
    }
}
