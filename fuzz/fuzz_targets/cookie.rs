//! The session cookie and id parsers: what any client can put in a `Cookie` header.
//!
//! Input: one byte choosing the config (bit 0: signed), then the `Cookie` header text (lines
//! split on `\n` become separate `Cookie` headers). Properties, for both configs:
//! - `SessionId::parse` accepts exactly 32 base64url characters, and gives back the same text;
//! - `SessionCookie::take` takes out every pair with our name and keeps every other pair, in order
//!   (the header untouched when there is nothing to take out and nothing to join);
//! - a `Set-Cookie` we build, presented back, reads as the same id (the signed round trip);
//! - that value changed in any one byte never reads as the id it was made for, and when signed
//!   never reads as any id at all.
#![no_main]

use std::sync::OnceLock;

use http::header::{COOKIE, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use session_proxy::config::RawConfig;
use session_proxy::cookie::{Presented, SessionCookie};
use session_proxy::session::{ID_LEN, SessionId};

const NAME: &str = "session_id";
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn cookies(signed: bool) -> &'static SessionCookie {
    static PLAIN: OnceLock<SessionCookie> = OnceLock::new();
    static SIGNED: OnceLock<SessionCookie> = OnceLock::new();
    let (cell, toml) = if signed {
        (
            &SIGNED,
            "[cookie]\nsecret = \"fuzz-secret-fuzz-secret-fuzz-secret!\"\n",
        )
    } else {
        (&PLAIN, "")
    };
    cell.get_or_init(|| {
        let raw = RawConfig::from_toml("fuzz.toml", toml).expect("the fixed config parses");
        SessionCookie::new(
            raw.validate("fuzz.toml")
                .expect("the fixed config is valid")
                .cookie,
        )
    })
}

/// The name part of one `name=value` pair, as RFC 6265 §5.2 reads it (trimmed).
fn pair_name(pair: &[u8]) -> &[u8] {
    let end = pair.iter().position(|b| *b == b'=').unwrap_or(pair.len());
    pair[..end].trim_ascii()
}

/// What the upstream must see of `lines` after ours come out: every other non-empty pair,
/// trimmed, in order, joined with `; ` into one header.
fn expected_rest(lines: &[&[u8]]) -> Vec<u8> {
    let mut kept = Vec::new();
    for line in lines {
        for pair in line.split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() || pair_name(pair) == NAME.as_bytes() {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
    }
    kept
}

fn check_id_parser(text: &[u8]) {
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let well_formed = text.len() == ID_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match SessionId::parse(text) {
        Some(id) => {
            assert!(well_formed, "accepted {text:?}");
            assert_eq!(id.as_str(), text);
            assert_eq!(SessionId::parse(id.as_str()), Some(id));
        }
        None => assert!(!well_formed, "refused {text:?}"),
    }
}

fn check_take(cookies: &SessionCookie, header: &[u8]) {
    let lines: Vec<&[u8]> = header.split(|b| *b == b'\n').collect();
    let mut headers = HeaderMap::new();
    for line in &lines {
        // A value no HTTP parser would have let through is not the proxy's input.
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, v);
        }
    }
    let sent: Vec<Vec<u8>> = headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    let sent_refs: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    let ours = sent_refs.iter().any(|l| {
        l.split(|b| *b == b';')
            .any(|p| pair_name(p) == NAME.as_bytes())
    });

    let presented = cookies.take(&mut headers);

    let left: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if !ours && sent.len() < 2 {
        assert_eq!(presented, Presented::Absent);
        assert_eq!(left, sent_refs, "a header with nothing to take was changed");
        return;
    }
    assert_eq!(
        ours,
        presented != Presented::Absent,
        "{presented:?} for {sent:?}"
    );
    let rest = expected_rest(&sent_refs);
    if rest.is_empty() {
        assert!(left.is_empty(), "left {left:?}");
    } else {
        assert_eq!(left, vec![rest.as_slice()]);
    }
    // What the upstream sees never carries the session cookie.
    for l in &left {
        assert!(
            !l.split(|b| *b == b';')
                .any(|p| pair_name(p) == NAME.as_bytes())
        );
    }
}

/// The value part of our `Set-Cookie` line.
fn set_cookie_value(line: &HeaderValue) -> String {
    let text = line.to_str().expect("a Set-Cookie we build is ASCII");
    let pair = text.split(';').next().unwrap_or_default();
    let value = pair
        .strip_prefix(NAME)
        .and_then(|r| r.strip_prefix('='))
        .expect("the line starts with our name");
    value.to_owned()
}

fn present(cookies: &SessionCookie, value: &[u8]) -> Option<Presented> {
    let mut line = format!("{NAME}=").into_bytes();
    line.extend_from_slice(value);
    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, HeaderValue::from_bytes(&line).ok()?);
    Some(cookies.take(&mut headers))
}

fn check_round_trip(cookies: &SessionCookie, signed: bool, data: &[u8]) {
    // An id made of the input's bytes (so the fuzzer steers it), valid by construction.
    let id_text: String = (0..ID_LEN)
        .map(|i| ALPHABET[usize::from(data.get(i).copied().unwrap_or(0)) % 64] as char)
        .collect();
    let id = SessionId::parse(&id_text).expect("built from the alphabet");
    let line = cookies.set(&id).expect("a Set-Cookie for a valid id");
    let value = set_cookie_value(&line);
    assert_eq!(
        present(cookies, value.as_bytes()),
        Some(Presented::Valid(id)),
        "our own cookie {value:?} did not come back"
    );

    // One byte changed, to another byte.
    let Some((&last, _)) = data.split_last() else {
        return;
    };
    let mut tampered = value.clone().into_bytes();
    let at = data.len() % tampered.len();
    let to = data.get(data.len() / 2).copied().unwrap_or(0) ^ last;
    if to == tampered[at] {
        return;
    }
    tampered[at] = to;
    match present(cookies, &tampered) {
        None => {} // Not a header value any more: never reaches the proxy.
        Some(Presented::Valid(other)) => {
            assert!(!signed, "a tampered signed cookie verified: {tampered:?}");
            assert_ne!(other, id, "a changed value read as the same id");
        }
        Some(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let signed = flags & 1 == 1;
    let cookies = cookies(signed);
    check_id_parser(rest);
    check_take(cookies, rest);
    check_round_trip(cookies, signed, rest);
});
