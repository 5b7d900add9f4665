//! The config loader: `proxy.toml` text in, a validated `Config` or an error naming the file out.
//!
//! Input: the TOML text. Properties:
//! - every error names the file, and a bad value names its key (`[a-z0-9_.]`, not empty);
//! - validation is deterministic (the same text gives the same outcome);
//! - a config the validator accepts keeps the limits docs/src/limits.md promises (the timeouts of
//!   slow clients positive and at most a minute, a URI no longer than a head, ...);
//! - and its cookie works: the `Set-Cookie` it builds and its removal are valid header values,
//!   and the cookie, presented back, reads as the same id (signed or not).
//!
//! A config naming an `admin.token_file` is not validated: that key reads a file, and the fuzzer must not
//! read whatever path it makes up.
#![no_main]

use std::time::Duration;

use http::header::{COOKIE, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use session_proxy::config::{Config, ConfigError, RawConfig};
use session_proxy::cookie::{Presented, SessionCookie};
use session_proxy::session::SessionId;

const FILE: &str = "fuzz.toml";

fn check_error(error: &ConfigError) {
    let shown = error.to_string();
    assert!(
        shown.starts_with("fuzz.toml: "),
        "{shown:?} does not name the file"
    );
    if let ConfigError::Invalid { key, message, .. } = error {
        assert!(!key.is_empty() && !message.is_empty(), "{shown:?}");
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'),
            "{key:?} is not a key"
        );
    }
}

/// `None` for a config naming a token file (see the module doc).
fn load(text: &str) -> Option<Result<Config, ConfigError>> {
    let raw = match RawConfig::from_toml(FILE, text) {
        Ok(raw) => raw,
        Err(e) => return Some(Err(e)),
    };
    if raw.admin.token_file.is_some() {
        return None;
    }
    Some(raw.validate(FILE))
}

fn check_limits(config: &Config) {
    let l = &config.limits;
    const MINUTE: Duration = Duration::from_secs(60);
    assert!(l.max_connections >= 1);
    for (name, t) in [
        ("handshake_timeout", l.handshake_timeout),
        ("header_read_timeout", l.header_read_timeout),
    ] {
        assert!(!t.is_zero() && t <= MINUTE, "{name} = {t:?}");
    }
    assert!(!l.keep_alive_timeout.is_zero());
    assert!((8192..=1024 * 1024).contains(&l.max_head_size));
    assert!(l.max_uri_length <= l.max_head_size);
}

fn check_cookie(config: &Config) {
    let cookies = SessionCookie::new(config.cookie.clone());
    let id = SessionId::generate().expect("the OS random source");
    let line = cookies
        .set(&id)
        .expect("a valid config builds a Set-Cookie");
    cookies.expire().expect("a valid config builds a removal");
    let text = line.to_str().expect("a Set-Cookie we build is ASCII");
    let pair = text.split(';').next().unwrap_or_default();
    assert!(
        pair.starts_with(&format!("{}=", config.cookie.name)),
        "{text:?} does not set {:?}",
        config.cookie.name
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        COOKIE,
        HeaderValue::from_str(pair).expect("the pair is part of a header value"),
    );
    assert_eq!(cookies.take(&mut headers), Presented::Valid(id));
    assert!(headers.get(COOKIE).is_none());
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(first) = load(text) else {
        return;
    };
    let second = load(text).expect("the same text names the same token file");
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "the same text validated differently"
    );
    match first {
        Err(error) => check_error(&error),
        Ok(config) => {
            check_limits(&config);
            check_cookie(&config);
        }
    }
});
