//! Randomised inputs for every parser that sees bytes from a client, the app or a config file.
//! Seeded, so a failure reproduces; the property is only "never panics, never yields something
//! invalid". (Test-only module.)

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::config::RawConfig;
use crate::cookie::{Presented, SessionCookie};
use crate::protocol::{RawInstructions, codec, parse_instructions};
use crate::session::SessionId;

const CASES: usize = 20_000;

/// Random bytes biased towards the characters these parsers care about.
fn input(rng: &mut StdRng) -> Vec<u8> {
    const INTERESTING: &[u8] = b"{}[]\":,;= \t\\/-_%+\0\xff\xc3\xa9AZaz09nulltrue";
    let len = rng.random_range(0..64);
    (0..len)
        .map(|_| {
            if rng.random_bool(0.7) {
                INTERESTING[rng.random_range(0..INTERESTING.len())]
            } else {
                rng.random()
            }
        })
        .collect()
}

/// A random JSON object, `depth` levels deep at most.
fn json_object(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for i in 0..rng.random_range(0..4) {
        let value = match rng.random_range(0..6) {
            0 => serde_json::Value::Null,
            1 => serde_json::Value::Bool(rng.random()),
            2 => serde_json::json!(rng.random::<i64>()),
            3 => serde_json::Value::String(String::from_utf8_lossy(&input(rng)).into_owned()),
            4 if depth > 0 => json_object(rng, depth - 1),
            _ => serde_json::json!([rng.random::<u8>(), null]),
        };
        map.insert(format!("k{i}\u{e9}"), value);
    }
    serde_json::Value::Object(map)
}

fn cookies(secret: Option<&str>) -> SessionCookie {
    let mut raw = RawConfig::default();
    raw.cookie.secret = secret.map(|s| s.to_owned().into());
    let config = raw.validate("test").map(|c| c.cookie);
    SessionCookie::new(config.unwrap_or_else(|e| panic!("{e}")))
}

#[test]
fn parsers_never_panic_on_random_input() {
    let mut rng = StdRng::seed_from_u64(0x5e55_1011);
    let plain = cookies(None);
    let signed = cookies(Some(&"k".repeat(40)));
    let valid = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
    let (mut found, mut parsed) = (0, 0);
    for _ in 0..CASES {
        let bytes = input(&mut rng);

        // Cookie headers: ours mixed with noise, plain and signed.
        let mut header = bytes.clone();
        if rng.random_bool(0.5) {
            header.extend_from_slice(format!("; session_id={valid}").as_bytes());
        }
        if let Ok(value) = http::HeaderValue::from_bytes(&header) {
            for jar in [&plain, &signed] {
                let mut headers = http::HeaderMap::new();
                headers.append(http::header::COOKIE, value.clone());
                if let Presented::Valid(id) = jar.take(&mut headers) {
                    assert_eq!(SessionId::parse(id.as_str()), Some(id));
                    found += 1;
                }
                // What is left for the app never contains our cookie.
                for rest in headers.get_all(http::header::COOKIE) {
                    let rest = String::from_utf8_lossy(rest.as_bytes());
                    assert!(!rest.split(';').any(|p| p.trim().starts_with("session_id=")));
                }
            }
        }

        // Instruction values from the app.
        if let Ok(map) = codec::parse_object("update", &bytes) {
            assert!(serde_json::to_string(&map).is_ok());
            parsed += 1;
        }
        // A real object, sometimes damaged, sometimes base64url-encoded.
        let mut object = serde_json::to_vec(&json_object(&mut rng, 3)).unwrap_or_default();
        match rng.random_range(0..4) {
            0 => {
                let at = rng.random_range(0..object.len());
                object[at] = rng.random();
            }
            1 => object.truncate(rng.random_range(0..object.len())),
            2 => {
                use base64::Engine as _;
                object = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(&object)
                    .into_bytes();
            }
            _ => {}
        }
        if let Ok(map) = codec::parse_object("update", &object) {
            let mut data = serde_json::json!({"kept": 1});
            crate::session::DataChange::Patch(map).apply_to(&mut data);
            assert!(data.is_object());
            parsed += 1;
        }
        let raw = RawInstructions {
            update: Some(bytes.clone()),
            replace: rng.random_bool(0.5).then(|| input(&mut rng)),
            destroy: rng.random_bool(0.1),
            regenerate: rng.random_bool(0.1),
            revoke: rng.random_bool(0.2).then(|| input(&mut rng)),
            remember: None,
        };
        let _ = parse_instructions(&raw);

        // Ids and the session header.
        if let Some(id) = std::str::from_utf8(&bytes).ok().and_then(SessionId::parse) {
            assert_eq!(id.as_str().len(), crate::session::ID_LEN);
        }
        let _ = codec::decode_session(&bytes);

        // Config files.
        if let Ok(text) = std::str::from_utf8(&bytes)
            && let Ok(raw) = RawConfig::from_toml("fuzz.toml", text)
        {
            let _ = raw.validate("fuzz.toml");
        }
    }
    // The inputs reached the interesting paths, not only the error branches.
    assert!(found > 1000, "only {found} valid cookies found");
    assert!(
        parsed > CASES / 4,
        "only {parsed} instruction values parsed"
    );
}

#[test]
fn config_values_of_the_wrong_type_are_errors_not_panics() {
    let values = [
        "\"\"",
        "-1",
        "0",
        "18446744073709551615",
        "1e999",
        "true",
        "[]",
        "{}",
        "\"%s%s\"",
        "\"\\u0000\"",
    ];
    for key in crate::config::KEYS {
        for value in values {
            let text = match key.split_once('.') {
                Some((table, k)) => format!("[{table}]\n{k} = {value}\n"),
                None => format!("{key} = {value}\n"),
            };
            if let Ok(raw) = RawConfig::from_toml("t.toml", &text) {
                let _ = raw.validate("t.toml");
            }
        }
    }
}

/// The store merges on text ([`DataChange::apply_to_text`]) for speed; it must give exactly
/// what merging the parsed values gives ([`DataChange::apply_to`], RFC 7396), byte for byte.
#[test]
fn merging_stored_text_equals_merging_values() {
    use crate::session::DataChange;
    let mut rng = StdRng::seed_from_u64(0x7e47_0001);
    let (mut nested, mut removed) = (0, 0);
    for _ in 0..CASES {
        let data = json_object(&mut rng, 3);
        let serde_json::Value::Object(patch) = json_object(&mut rng, 3) else {
            unreachable!("json_object makes objects")
        };
        nested += patch.values().filter(|v| v.is_object()).count();
        removed += patch.values().filter(|v| v.is_null()).count();
        for change in [DataChange::Patch(patch.clone()), DataChange::Replace(patch)] {
            let mut expected = data.clone();
            change.apply_to(&mut expected);
            let compact = serde_json::to_string(&data).unwrap_or_default();
            let text = change
                .apply_to_text(&compact)
                .unwrap_or_else(|e| panic!("{compact}: {e}"));
            assert_eq!(text, serde_json::to_string(&expected).unwrap_or_default());
            // Stored text edited by hand (whitespace) still merges to the same value.
            let pretty = serde_json::to_string_pretty(&data).unwrap_or_default();
            let text = change
                .apply_to_text(&pretty)
                .unwrap_or_else(|e| panic!("{pretty}: {e}"));
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(value, expected);
        }
    }
    // The cases reach the branches: nested merges and removals, not only plain sets.
    assert!(
        nested > 1000 && removed > 1000,
        "{nested} nested, {removed} removed"
    );
}
