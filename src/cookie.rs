//! The session cookie: finding it in a request (and taking it out of what the upstream sees),
//! checking its signature, and building the `Set-Cookie` that sets or expires it.

use std::sync::Arc;

use cookie::Cookie;
use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};

use crate::config::CookieConfig;
use crate::metrics::{CookieMetrics, Metrics};
use crate::secrets::{KeyRing, KeySet};
use crate::session::SessionId;

/// The configured cookie, with its `Set-Cookie` attributes rendered once: a proxy sets this
/// cookie on every write, so only the value and a max-age-based `Expires` are formatted per
/// response. The keys (derived once, by the config) live in a [`KeyRing`], replaceable while
/// serving.
pub struct SessionCookie {
    config: CookieConfig,
    keys: Arc<KeyRing>,
    /// `name=`, then everything after the value that never changes: `; Path=/; HttpOnly; ...`.
    prefix: String,
    suffix: String,
    /// The attributes without `Max-Age` and `Expires`: a remembered session's cookie adds its own.
    plain_suffix: String,
    /// `Some` when `Expires` is `now + max_age`, computed per response.
    rolling_expiry: Option<std::time::Duration>,
}

impl std::fmt::Debug for SessionCookie {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCookie")
            .field("name", &self.config.name)
            .field("signed", &self.keys.current().is_signed())
            .finish()
    }
}

/// What the request's session cookie said.
#[derive(Debug, PartialEq)]
pub enum Presented {
    /// No session cookie at all.
    Absent,
    /// A cookie with a valid id, signed with the key that signs (or not signed, when cookies
    /// are not).
    Valid(SessionId),
    /// A cookie with a valid id signed with an older key, still accepted (key rotation): the
    /// response re-sets it, signed with the current key.
    OldKey(SessionId),
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

/// The `name=value` part of a `Set-Cookie` line (before the first `;`).
fn set_cookie_pair(line: &[u8]) -> &[u8] {
    line.split(|b| *b == b';').next().unwrap_or(line)
}

/// `now + age`, if an HTTP date can say it (up to the end of year 9999); a longer `max_age`
/// goes out with `Max-Age` alone.
fn expires_at(age: std::time::Duration) -> Option<std::time::SystemTime> {
    const LAST_HTTP_DATE: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let at = std::time::SystemTime::now().checked_add(age)?;
    let secs = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    (secs <= LAST_HTTP_DATE).then_some(at)
}

impl SessionCookie {
    /// The cookie, its verifications counted nowhere (for tests and tools).
    pub fn new(config: CookieConfig) -> Self {
        Self::with_metrics(config, CookieMetrics::default())
    }

    /// The cookie, counting its verifications per key into the proxy's metrics.
    pub fn metered(config: CookieConfig, metrics: &Metrics) -> Self {
        Self::with_metrics(config, metrics.cookie())
    }

    fn with_metrics(config: CookieConfig, metrics: CookieMetrics) -> Self {
        let keys = Arc::new(KeyRing::new(config.keys.clone(), metrics));
        Self::over(config, keys)
    }

    /// The cookie `config` describes, verified and signed by this one's key ring (a reload
    /// replaces the ring's keys itself, so that requests in flight see the new keys too).
    pub fn reconfigured(&self, config: CookieConfig) -> Self {
        Self::over(config, self.keys.clone())
    }

    fn over(config: CookieConfig, keys: Arc<KeyRing>) -> Self {
        // The cookie crate renders the attributes (so their syntax is its, not ours), once.
        let attributes = |rendered: String| {
            // The attributes start at the first `;`: the value is empty and a validated name has none.
            rendered
                .find(';')
                .map_or("", |at| &rendered[at..])
                .to_owned()
        };
        let plain_suffix = attributes(Self::base(&config, String::new()).build().to_string());
        let mut fixed = Self::base(&config, String::new());
        if let Some(age) = config
            .max_age
            .and_then(|a| time::Duration::try_from(a).ok())
        {
            fixed = fixed.max_age(age);
        }
        if let Some(expires) = config.expires {
            fixed = fixed.expires(expires);
        }
        let suffix = attributes(fixed.build().to_string());
        let prefix = format!("{}=", config.name);
        // Max-Age wins where understood; Expires is for clients that predate it.
        let rolling_expiry = config.max_age.filter(|_| config.expires.is_none());
        SessionCookie {
            config,
            keys,
            prefix,
            suffix,
            plain_suffix,
            rolling_expiry,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The keys, for whoever reloads them (the binary, on SIGHUP).
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.clone()
    }

    /// Removes every session cookie from the request's `Cookie` headers and returns what it
    /// presented. Other cookies pass to the upstream byte for byte, joined into one header
    /// (RFC 9113 §8.2.3 requires that when an HTTP/2 request goes on as HTTP/1.1).
    pub fn take(&self, headers: &mut HeaderMap) -> Presented {
        let name = self.config.name.as_bytes();
        let mut count = 0;
        let mut found = false;
        // One pass: the first of our values that verifies wins (checked as it is met, so
        // nothing is copied); the other cookies are kept in order. One key set for the request,
        // even if a reload swaps it meanwhile, taken when a session cookie is met.
        let mut keys = None;
        let mut presented = Presented::Absent;
        let mut verified_by = None;
        let mut kept: Vec<u8> = Vec::new();
        for header in headers.get_all(COOKIE) {
            count += 1;
            for pair in header.as_bytes().split(|b| *b == b';') {
                let pair = pair.trim_ascii();
                if pair.is_empty() {
                    continue;
                }
                if cookie_name(pair) == name {
                    found = true;
                    if !matches!(presented, Presented::Valid(_) | Presented::OldKey(_)) {
                        let v = pair
                            .iter()
                            .position(|b| *b == b'=')
                            .map_or(&b""[..], |i| &pair[i + 1..]);
                        let keys = keys.get_or_insert_with(|| self.keys.current());
                        let verified = self.verify(keys, v.trim_ascii());
                        verified_by = verified.as_ref().and_then(|(_, i)| *i);
                        presented = match verified {
                            None => Presented::Invalid,
                            Some((id, None | Some(0))) => Presented::Valid(id),
                            Some((id, Some(_))) => Presented::OldKey(id),
                        };
                    }
                } else {
                    if !kept.is_empty() {
                        kept.extend_from_slice(b"; ");
                    }
                    kept.extend_from_slice(pair);
                }
            }
        }
        // Untouched unless ours must come out or several headers must become one.
        if !found && count < 2 {
            return Presented::Absent;
        }
        if let Some(keys) = &keys {
            match presented {
                Presented::Invalid => keys.count(None),
                Presented::Valid(_) | Presented::OldKey(_) if verified_by.is_some() => {
                    keys.count(verified_by);
                }
                _ => {}
            }
        }
        headers.remove(COOKIE);
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(kept))
        {
            headers.insert(COOKIE, v);
        }
        presented
    }

    /// Removes every `Set-Cookie` (from the app's response) that sets the session cookie;
    /// `true` if there was one. Other `Set-Cookie` lines stay, in order. Allocates only when
    /// there is something to remove.
    pub fn strip_set_cookie(&self, headers: &mut HeaderMap) -> bool {
        let name = self.config.name.as_bytes();
        let ours = |v: &HeaderValue| cookie_name(set_cookie_pair(v.as_bytes())) == name;
        if !headers.get_all(SET_COOKIE).iter().any(ours) {
            return false;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(SET_COOKIE)
            .iter()
            .filter(|v| !ours(v))
            .cloned()
            .collect();
        headers.remove(SET_COOKIE);
        for v in kept {
            headers.append(SET_COOKIE, v);
        }
        true
    }

    /// Whether a write that keeps the id must re-send the cookie: only when the browser's
    /// expiry slides with it (`max_age`). Otherwise the client already holds exactly this
    /// cookie, and re-sending it could undo a concurrent Regenerate's new one in the browser.
    pub fn resend_on_write(&self) -> bool {
        self.rolling_expiry.is_some()
    }

    /// The id `value` carries, and the index of the key that verified it (`None`: unsigned).
    fn verify(&self, keys: &KeySet, value: &[u8]) -> Option<(SessionId, Option<usize>)> {
        let value = std::str::from_utf8(value).ok()?;
        if !keys.is_signed() {
            return SessionId::parse(value).map(|id| (id, None));
        }
        let (plain, index) = keys.verify(value)?;
        SessionId::parse(plain).map(|id| (id, Some(index)))
    }

    fn base(c: &CookieConfig, value: String) -> cookie::CookieBuilder<'static> {
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
    /// The value is the id itself, or the id with its HMAC when signing.
    pub fn set(&self, id: &SessionId) -> Option<HeaderValue> {
        self.line(id, &self.suffix, self.rolling_expiry, false)
    }

    /// `Set-Cookie` for `id` of a session the app chose to remember (`X-Session-Remember`):
    /// persistent for `age` (`Max-Age` and `Expires`), whatever `max_age` says.
    pub fn set_remembered(&self, id: &SessionId, age: std::time::Duration) -> Option<HeaderValue> {
        self.line(id, &self.plain_suffix, Some(age), true)
    }

    /// The `Set-Cookie` line: the value, `suffix`, then `Max-Age` (when `max_age`) and
    /// `Expires` for `expiry`.
    fn line(
        &self,
        id: &SessionId,
        suffix: &str,
        expiry: Option<std::time::Duration>,
        max_age: bool,
    ) -> Option<HeaderValue> {
        let mut line =
            String::with_capacity(self.prefix.len() + 44 + id.as_str().len() + suffix.len() + 60);
        line.push_str(&self.prefix);
        if !self.keys.current().sign_into(id.as_str(), &mut line) {
            line.push_str(id.as_str());
        }
        line.push_str(suffix);
        if let Some(age) = expiry.filter(|_| max_age) {
            line.push_str("; Max-Age=");
            line.push_str(itoa::Buffer::new().format(age.as_secs()));
        }
        if let Some(at) = expiry.and_then(expires_at) {
            line.push_str("; Expires=");
            line.push_str(&httpdate::fmt_http_date(at));
        }
        // Checked, as `from_str` would, but not copied again.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(line)).ok()
    }

    /// `Set-Cookie` that makes the browser drop the session cookie.
    pub fn expire(&self) -> Option<HeaderValue> {
        let mut cookie = Self::base(&self.config, String::new()).build();
        cookie.make_removal();
        HeaderValue::from_str(&cookie.to_string()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    fn cookies(toml: &str) -> SessionCookie {
        let raw = RawConfig::from_toml("t.toml", toml).unwrap();
        SessionCookie::new(raw.validate("t.toml").unwrap().cookie)
    }

    fn presented(cookies: &SessionCookie, value: &str) -> Presented {
        let mut headers = HeaderMap::new();
        let line = format!("session_id={value}");
        headers.insert(COOKIE, HeaderValue::from_str(&line).unwrap());
        cookies.take(&mut headers)
    }

    /// The value the `Set-Cookie` for `id` carries.
    fn set_value(cookies: &SessionCookie, id: &SessionId) -> String {
        let line = cookies.set(id).unwrap();
        let line = line.to_str().unwrap();
        line["session_id=".len()..line.find(';').unwrap()].to_owned()
    }

    #[test]
    fn only_the_session_cookie_is_dropped_from_the_apps_set_cookie() {
        let c = cookies("");
        let mut h = HeaderMap::new();
        for line in [
            "a=1; Path=/",
            " session_id=EVIL; Path=/",
            "session_idx=2",
            "b=3",
        ] {
            h.append(SET_COOKIE, HeaderValue::from_static(line));
        }
        assert!(c.strip_set_cookie(&mut h));
        let left: Vec<&str> = h
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["a=1; Path=/", "session_idx=2", "b=3"]);
        assert!(!c.strip_set_cookie(&mut h));
    }

    /// The first key signs; a value signed with a later one is accepted as an old key's; a
    /// key removed from the list no longer verifies. Each verification counts for its key.
    #[test]
    fn the_first_key_signs_and_every_key_verifies() {
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        let id = SessionId::generate().unwrap();
        let old = cookies(&format!("[cookie]\nsecret = \"{a}\""));
        let by_a = set_value(&old, &id);
        let metrics = CookieMetrics::default();
        let raw = RawConfig::from_toml("t.toml", &format!("[cookie]\nsecret = [\"{b}\", \"{a}\"]"))
            .unwrap();
        let rotated =
            SessionCookie::with_metrics(raw.validate("t.toml").unwrap().cookie, metrics.clone());
        let by_b = set_value(&rotated, &id);
        assert_ne!(by_a, by_b);
        assert_eq!(presented(&rotated, &by_b), Presented::Valid(id));
        assert_eq!(presented(&rotated, &by_a), Presented::OldKey(id));
        assert_eq!(presented(&rotated, &by_a), Presented::OldKey(id));
        assert_eq!(presented(&rotated, "garbage"), Presented::Invalid);
        assert_eq!((metrics.key(0).get(), metrics.key(1).get()), (1, 2));
        assert_eq!(metrics.failed().get(), 1);

        // After a reload to [b] alone, a's signature is refused.
        rotated
            .keys()
            .replace(vec![cookie::Key::derive_from(b.as_bytes())])
            .unwrap();
        assert_eq!(presented(&rotated, &by_a), Presented::Invalid);
        assert_eq!(presented(&rotated, &by_b), Presented::Valid(id));
        assert_eq!(set_value(&rotated, &id), by_b);
    }

    #[test]
    fn signs_with_the_configured_key_and_accepts_only_its_own_signature() {
        let id = SessionId::generate().unwrap();
        let signed = cookies(&format!("[cookie]\nsecret = \"{}\"", "a".repeat(32)));
        let value = set_value(&signed, &id);
        assert_ne!(value, id.as_str());
        assert_eq!(presented(&signed, &value), Presented::Valid(id));
        // Unsigned, or signed with another key: refused, never taken as a plain id.
        assert_eq!(presented(&signed, id.as_str()), Presented::Invalid);
        let other = cookies(&format!("[cookie]\nsecret = \"{}\"", "b".repeat(32)));
        assert_eq!(presented(&other, &value), Presented::Invalid);

        let plain = cookies("");
        assert_eq!(set_value(&plain, &id), id.as_str());
        assert_eq!(presented(&plain, id.as_str()), Presented::Valid(id));
        assert_eq!(
            format!("{plain:?}"),
            "SessionCookie { name: \"session_id\", signed: false }"
        );
    }
}

/// Properties of the cookie parser over generated `Cookie` headers.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::config::RawConfig;
    use proptest::prelude::*;

    fn cookies(toml: &str) -> SessionCookie {
        let raw = RawConfig::from_toml("t.toml", toml).unwrap();
        SessionCookie::new(raw.validate("t.toml").unwrap().cookie)
    }

    /// Any visible ASCII and spaces: every byte a `Cookie` header value can hold as text.
    fn header_text() -> impl Strategy<Value = String> {
        "[ -~]{0,120}"
    }

    proptest! {
        #[test]
        fn take_never_panics_and_leaves_no_session_cookie(text in header_text(), other in header_text()) {
            let c = cookies("");
            let mut h = HeaderMap::new();
            h.append(COOKIE, HeaderValue::from_str(&text).unwrap());
            h.append(COOKIE, HeaderValue::from_str(&other).unwrap());
            let presented = c.take(&mut h);
            // What is left for the app never holds a session cookie.
            for v in h.get_all(COOKIE) {
                prop_assert!(
                    !v.as_bytes().split(|b| *b == b';').any(|p| cookie_name(p) == b"session_id"),
                    "{v:?}"
                );
            }
            // A valid presentation is exactly a well-formed id the client sent.
            if let Presented::Valid(id) = presented {
                let sent = format!("{text};{other}");
                prop_assert!(sent.contains(id.as_str()), "{:?} not in {:?}", id, sent);
            }
        }

        #[test]
        fn what_is_set_is_taken_back(signed in any::<bool>()) {
            let id = SessionId::generate().unwrap();
            let c = if signed {
                cookies(&format!("[cookie]\nsecret = \"{}\"", "s".repeat(32)))
            } else {
                cookies("")
            };
            let line = c.set(&id).unwrap();
            let pair = line.to_str().unwrap().split(';').next().unwrap().to_owned();
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_str(&format!("a=1; {pair}; b=2")).unwrap());
            prop_assert_eq!(c.take(&mut h), Presented::Valid(id));
            prop_assert_eq!(h.get(COOKIE).unwrap(), "a=1; b=2");
        }

        #[test]
        fn a_tampered_signed_value_is_never_valid(flip in 0usize..64) {
            let c = cookies(&format!("[cookie]\nsecret = \"{}\"", "s".repeat(32)));
            let id = SessionId::generate().unwrap();
            let line = c.set(&id).unwrap();
            let value = line.to_str().unwrap()["session_id=".len()..].split(';').next().unwrap().to_owned();
            let mut bytes = value.into_bytes();
            let at = flip % bytes.len();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_str(&format!("session_id={tampered}")).unwrap());
            prop_assert_eq!(c.take(&mut h), Presented::Invalid);
        }
    }
}
