//! The session cookie: finding it in a request (and taking it out of what the upstream sees),
//! checking its signature, and building the `Set-Cookie` that sets or expires it.

use cookie::{Cookie, CookieJar, Key};
use http::header::{COOKIE, HeaderMap, HeaderValue};

use crate::config::CookieConfig;
use crate::session::SessionId;

/// The configured cookie, with its signing key derived once.
pub struct Cookies {
    config: CookieConfig,
    key: Option<Key>,
}

impl std::fmt::Debug for Cookies {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cookies")
            .field("name", &self.config.name)
            .field("signed", &self.key.is_some())
            .finish()
    }
}

/// What the request's session cookie said.
#[derive(Debug, PartialEq)]
pub enum Presented {
    /// No session cookie at all.
    None,
    /// A cookie with a valid, correctly signed id.
    Valid(SessionId),
    /// A cookie was sent but no value was a valid (signed) id: possibly tampering.
    Invalid,
}

/// The name part of one `name=value` pair of a `Cookie` header.
fn cookie_name(pair: &[u8]) -> &[u8] {
    let name = pair
        .iter()
        .position(|b| *b == b'=')
        .map_or(pair, |i| &pair[..i]);
    name.trim_ascii()
}

impl Cookies {
    /// `config.secret`, when set, is at least 32 bytes (checked in `config.rs`).
    pub fn new(config: CookieConfig) -> Self {
        let key = config
            .secret
            .as_deref()
            .filter(|s| s.len() >= 32)
            .map(|s| Key::derive_from(s.as_bytes()));
        Cookies { config, key }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Removes every session cookie from the request's `Cookie` headers and returns what it
    /// presented. Other cookies pass to the upstream byte for byte, joined into one header
    /// (RFC 9113 §8.2.3 requires that when an HTTP/2 request goes on as HTTP/1.1).
    pub fn take(&self, headers: &mut HeaderMap) -> Presented {
        let name = self.config.name.as_bytes();
        let mut count = 0;
        let mut found = false;
        for header in headers.get_all(COOKIE) {
            count += 1;
            found = found
                || header
                    .as_bytes()
                    .split(|b| *b == b';')
                    .any(|pair| cookie_name(pair) == name);
        }
        // Untouched unless ours must come out or several headers must become one.
        if !found && count < 2 {
            return Presented::None;
        }
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut kept: Vec<u8> = Vec::new();
        for header in headers.get_all(COOKIE) {
            for pair in header.as_bytes().split(|b| *b == b';') {
                let pair = pair.trim_ascii();
                if pair.is_empty() {
                    continue;
                }
                if cookie_name(pair) == name {
                    let v = pair
                        .iter()
                        .position(|b| *b == b'=')
                        .map_or(&b""[..], |i| &pair[i + 1..]);
                    values.push(v.trim_ascii().to_vec());
                } else {
                    if !kept.is_empty() {
                        kept.extend_from_slice(b"; ");
                    }
                    kept.extend_from_slice(pair);
                }
            }
        }
        headers.remove(COOKIE);
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(&kept)
        {
            headers.insert(COOKIE, v);
        }
        if values.is_empty() {
            return Presented::None;
        }
        values
            .iter()
            .find_map(|v| self.verify(v))
            .map_or(Presented::Invalid, Presented::Valid)
    }

    fn verify(&self, value: &[u8]) -> Option<SessionId> {
        let value = std::str::from_utf8(value).ok()?;
        match &self.key {
            None => SessionId::parse(value),
            Some(key) => {
                let mut jar = CookieJar::new();
                jar.add_original(Cookie::new(self.config.name.clone(), value.to_owned()));
                let verified = jar.signed(key).get(&self.config.name)?;
                SessionId::parse(verified.value())
            }
        }
    }

    /// The cookie value for `id`: the id itself, or the id with its HMAC when signing.
    fn value(&self, id: &SessionId) -> String {
        match &self.key {
            None => id.to_string(),
            Some(key) => {
                let mut jar = CookieJar::new();
                jar.signed_mut(key)
                    .add(Cookie::new(self.config.name.clone(), id.to_string()));
                jar.get(&self.config.name)
                    .map_or_else(|| id.to_string(), |c| c.value().to_owned())
            }
        }
    }

    fn base(&self, value: String) -> cookie::CookieBuilder<'static> {
        let c = &self.config;
        let mut b = Cookie::build((c.name.clone(), value))
            .path(c.path.clone())
            .secure(c.secure)
            .http_only(c.http_only)
            .same_site(c.same_site);
        if let Some(domain) = &c.domain {
            b = b.domain(domain.clone());
        }
        b
    }

    /// `Set-Cookie` for `id`, with every configured attribute.
    pub fn set(&self, id: &SessionId) -> Option<HeaderValue> {
        let c = &self.config;
        let mut b = self.base(self.value(id));
        if let Some(max_age) = c.max_age
            && let Ok(age) = time::Duration::try_from(max_age)
        {
            b = b.max_age(age);
            // Max-Age wins where understood; Expires is for clients that predate it.
            if c.expires.is_none() {
                b = b.expires(time::OffsetDateTime::now_utc() + age);
            }
        }
        if let Some(expires) = c.expires {
            b = b.expires(expires);
        }
        HeaderValue::from_str(&b.build().to_string()).ok()
    }

    /// `Set-Cookie` that makes the browser drop the session cookie.
    pub fn expire(&self) -> Option<HeaderValue> {
        let mut cookie = self.base(String::new()).build();
        cookie.make_removal();
        HeaderValue::from_str(&cookie.to_string()).ok()
    }
}
