//! Session identity and the upstream's instructions.
//!
//! Owns the one way a [`SessionId`] comes into being: either [`SessionId::generate`] (the OS CSPRNG)
//! or [`SessionId::parse`] (werkzeug's `is_valid_key`). Store paths and keys are built only from a
//! `SessionId`, so a client-supplied value can never name a file or key of its choosing.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore as _;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// Random bytes per id: 192 bits, well past the 128 that makes guessing hopeless.
const ID_BYTES: usize = 24;
/// Length of the base64url text of the random bytes (a multiple of 3, so no padding and no spare bits).
pub const ID_LEN: usize = ID_BYTES / 3 * 4;
/// Length of a session's [handle](SessionId::handle): base64url, no padding, of 32 bytes.
pub const HANDLE_LEN: usize = 43;

/// A validated session id: exactly [`ID_LEN`] characters of the base64url alphabet.
///
/// The field is private: the only ways to get one are [`SessionId::generate`] and
/// [`SessionId::parse`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; ID_LEN]);

/// The operating system's random source failed; no id can be made safely.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct RandomError(String);

impl SessionId {
    /// A fresh id from the OS CSPRNG.
    pub fn generate() -> Result<Self, RandomError> {
        let mut raw = [0u8; ID_BYTES];
        rand::rngs::OsRng
            .try_fill_bytes(&mut raw)
            .map_err(|e| RandomError(e.to_string()))?;
        let mut text = [0u8; ID_LEN];
        let written = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut text)
            .map_err(|e| RandomError(e.to_string()))?;
        debug_assert_eq!(written, ID_LEN);
        Ok(SessionId(text))
    }

    /// werkzeug's `is_valid_key`: the right length and alphabet, nothing else accepted.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; ID_LEN] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            .then_some(SessionId(bytes))
    }

    /// The session's [`Handle`]: the name it goes by wherever the id may not.
    pub fn handle(&self) -> Handle {
        Handle::of(self)
    }

    pub fn as_str(&self) -> &str {
        // Every byte is ASCII by construction (generate/parse), so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Debug output shows only a prefix: an id is a bearer credential and must not end up in logs.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}…)", &self.as_str()[..6])
    }
}

/// The public name of a session: base64url (no padding) of the SHA-256 of its id's text,
/// [`HANDLE_LEN`] characters.
///
/// Every store keys a session by its handle, and every log line, audit line, metric and admin
/// response names it so, never by its id: the id is a bearer credential, the handle is not.
/// Anyone holding the id can compute the handle; nobody can go back from it to the id, so a
/// copy of the store or a look at the admin page gives no one a session. It is computed once
/// per request, from the cookie's id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle([u8; HANDLE_LEN]);

impl Handle {
    /// The handle of a fresh id that nobody holds: for tests and benchmarks of the stores,
    /// which see only handles.
    pub fn generate() -> Result<Handle, RandomError> {
        SessionId::generate().map(|id| id.handle())
    }

    /// The handle of `id`.
    pub fn of(id: &SessionId) -> Handle {
        let mut text = [0u8; HANDLE_LEN];
        // 32 bytes encode to exactly HANDLE_LEN characters, so this never fails.
        let _ = URL_SAFE_NO_PAD.encode_slice(Sha256::digest(id.0), &mut text);
        Handle(text)
    }

    /// A handle as text (an admin path, a stored key): exactly [`HANDLE_LEN`] characters that
    /// decode to 32 bytes and encode back the same, so each handle has one spelling.
    pub fn parse(text: &str) -> Option<Handle> {
        let bytes: [u8; HANDLE_LEN] = text.as_bytes().try_into().ok()?;
        let mut raw = [0u8; 33];
        let n = URL_SAFE_NO_PAD.decode_slice(bytes, &mut raw).ok()?;
        let mut again = [0u8; HANDLE_LEN];
        (n == 32
            && URL_SAFE_NO_PAD.encode_slice(&raw[..32], &mut again).ok() == Some(HANDLE_LEN)
            && again == bytes)
            .then_some(Handle(bytes))
    }

    /// The handle an operator names (an admin path, the CLI): its canonical text. A session
    /// id given instead is told apart ([`NotAHandle::AnId`]), so the caller can say where an id
    /// goes without repeating it: it is a bearer credential.
    pub fn named(text: &str) -> Result<Handle, NotAHandle> {
        match Handle::parse(text) {
            Some(handle) => Ok(handle),
            None if SessionId::parse(text).is_some() => Err(NotAHandle::AnId),
            None => Err(NotAHandle::Malformed),
        }
    }

    pub fn as_str(&self) -> &str {
        // Every byte is base64url by construction (of/parse), so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Why [`Handle::named`] refused a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAHandle {
    /// A session id: the caller names where an id may go instead, and never echoes it.
    AnId,
    /// Neither a handle nor an id.
    Malformed,
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({})", self.as_str())
    }
}

/// A change to the session data asked for by the upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum DataChange {
    /// `X-Session-Update`: an RFC 7396 JSON merge patch, applied to the data as stored when saving.
    Patch(Map<String, Value>),
    /// `X-Session-Replace`: the whole new data.
    Replace(Map<String, Value>),
}

impl DataChange {
    /// Applies the change to `data` (a JSON object) in place.
    pub fn apply_to(&self, data: &mut Value) {
        match self {
            DataChange::Patch(patch) => {
                // A merge patch onto a non-object replaces it; our data is always an object.
                if !data.is_object() {
                    *data = Value::Object(Map::new());
                }
                json_patch::merge(data, &Value::Object(patch.clone()));
            }
            DataChange::Replace(map) => *data = Value::Object(map.clone()),
        }
    }

    /// [`apply_to`](Self::apply_to) on the stored JSON text of an object, giving the new text.
    ///
    /// Why not parse, merge and print: every write does this, and a session mostly changes in a
    /// member or two. Only the top level is split here; the members the patch does not name are
    /// copied as text, never parsed or re-escaped, and the keys are borrowed from the text
    /// (unless one has an escape). A value the patch sets is written straight from the patch; a
    /// member the patch merges into is parsed alone. Members come out sorted by key, as
    /// `serde_json::Map` prints them.
    pub fn apply_to_text(&self, data: &str) -> Result<String, serde_json::Error> {
        let patch = match self {
            DataChange::Replace(map) => return serde_json::to_string(map),
            DataChange::Patch(patch) => patch,
        };
        let owned: BTreeMap<String, Member<'_>>;
        let mut members: BTreeMap<&str, Member<'_>> = match serde_json::from_str(data) {
            Ok(members) => members,
            // A key with an escape cannot be borrowed: its unescaped text is made once here.
            Err(_) => {
                owned = serde_json::from_str(data)?;
                owned.iter().map(|(k, v)| (k.as_str(), v.clone())).collect()
            }
        };
        for (key, change) in patch {
            match change {
                Value::Null => {
                    members.remove(key.as_str());
                }
                Value::Object(_) => {
                    // RFC 7396: an object merges into the member (into `{}` if it is not one).
                    let mut member = match members.get(key.as_str()) {
                        Some(Member::Stored(raw)) => serde_json::from_str(raw.get())?,
                        Some(Member::Set(value)) => (*value).clone(),
                        Some(Member::Merged(value)) => value.clone(),
                        None => Value::Null,
                    };
                    json_patch::merge(&mut member, change);
                    members.insert(key, Member::Merged(member));
                }
                _ => {
                    members.insert(key, Member::Set(change));
                }
            }
        }
        let mut out = Vec::with_capacity(data.len() + 16);
        serde_json::to_writer(&mut out, &members)?;
        String::from_utf8(out).map_err(serde::ser::Error::custom)
    }
}

/// One top-level member in [`DataChange::apply_to_text`].
#[derive(Clone)]
enum Member<'a> {
    /// As stored, copied as text.
    Stored(&'a RawValue),
    /// Set by the patch, written from it.
    Set(&'a Value),
    /// The stored member with the patch's object merged in.
    Merged(Value),
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Member<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'de RawValue>::deserialize(d).map(Member::Stored)
    }
}

impl serde::Serialize for Member<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Member::Stored(raw) => raw.serialize(s),
            Member::Set(value) => value.serialize(s),
            Member::Merged(value) => value.serialize(s),
        }
    }
}

/// How long sessions live. Expiry is a property of the record, checked on every load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifetime {
    pub idle_timeout: Duration,
    pub absolute_timeout: Option<Duration>,
    pub touch_interval: Duration,
    /// `session.remember_max`: the longest `X-Session-Remember` the app may ask for.
    pub remember_max: Duration,
    /// `session.remember_absolute`: the absolute timeout of a remembered session.
    pub remember_absolute: Option<Duration>,
    /// `session.first_lifetime`: how long a session lives until its client returns its
    /// cookie once (`None`: as long as any other).
    pub first_lifetime: Option<Duration>,
}

#[cfg(test)]
impl Lifetime {
    /// A lifetime in milliseconds, for tests that step the clock by hand.
    pub(crate) fn in_ms(idle: u64, absolute: Option<u64>, touch: u64) -> Self {
        Lifetime {
            idle_timeout: Duration::from_millis(idle),
            absolute_timeout: absolute.map(Duration::from_millis),
            touch_interval: Duration::from_millis(touch),
            remember_max: Duration::from_secs(90 * 86400),
            remember_absolute: absolute.map(Duration::from_millis),
            first_lifetime: None,
        }
    }
}

/// Milliseconds since the Unix epoch: the clock every record uses.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `d` in whole milliseconds, saturating.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Lifetime {
    /// When a session created at `created_at` and used at `now` dies.
    pub fn expiry(&self, created_at: u64, now: u64) -> u64 {
        let idle = now.saturating_add(ms(self.idle_timeout));
        match self.absolute_timeout {
            Some(abs) => idle.min(created_at.saturating_add(ms(abs))),
            None => idle,
        }
    }

    /// [`Lifetime::expiry`] of a session the app chose to remember for `remember` ms (0: not
    /// remembered), whose client has (`returned`) or has not yet sent its cookie back.
    pub fn expiry_of(&self, created_at: u64, now: u64, remember: u64, returned: bool) -> u64 {
        let at = if remember == 0 {
            self.expiry(created_at, now)
        } else {
            let idle = now.saturating_add(remember);
            match self.remember_absolute {
                Some(abs) => idle.min(created_at.saturating_add(ms(abs))),
                None => idle,
            }
        };
        match self.first_lifetime {
            Some(first) if !returned => at.min(created_at.saturating_add(ms(first))),
            _ => at,
        }
    }

    /// `remember` as a session keeps it: in ms, capped by `remember_max`; `0` for none.
    pub fn remember_ms(&self, remember: Duration) -> u64 {
        ms(remember.min(self.remember_max))
    }
}

/// `session.user_key`: the top-level key of the session data that names its user.
#[derive(Clone, PartialEq, Eq)]
pub struct UserKey {
    key: Arc<str>,
    /// `store.hash_users`: the index holds each user as [`UserKey::indexed`], not as written.
    hashed: bool,
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserKey({:?}, hashed: {})", &*self.key, self.hashed)
    }
}

/// Logged once per process: a session whose user key holds something else than a string or
/// an integer is an app's bug, not worth a line per request.
static NOT_INDEXED: AtomicBool = AtomicBool::new(false);

impl UserKey {
    pub fn new(key: &str) -> Self {
        UserKey {
            key: Arc::from(key),
            hashed: false,
        }
    }

    /// This key with `store.hash_users`: the user index holds a hash of each user.
    pub fn hashing(self) -> Self {
        UserKey {
            hashed: true,
            ..self
        }
    }

    pub fn name(&self) -> &str {
        &self.key
    }

    /// What a store records about the index it built from this key, so that opening it with
    /// another key, or switching `store.hash_users`, rebuilds it.
    pub fn index_id(&self) -> String {
        if self.hashed {
            format!("sha256:{}", self.key)
        } else {
            self.key.to_string()
        }
    }

    pub fn is_hashed(&self) -> bool {
        self.hashed
    }

    /// How the user index names `user`: as written, or with `store.hash_users` base64url of the
    /// SHA-256 of a label and the user (43 characters). The hash has no key: it keeps names out
    /// of sight in a copy of the store, not from a guess (a list of likely user names hashes
    /// just as well).
    pub fn indexed(&self, user: &str) -> String {
        if !self.hashed {
            return user.to_owned();
        }
        let mut digest = Sha256::new();
        digest.update(b"session-proxy user\0");
        digest.update(user.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.finalize())
    }

    /// The user `data` (a JSON object's text) belongs to, as the user index names it
    /// ([`UserKey::indexed`]): every store, the revoke and the audit log use this form.
    pub fn user_of(&self, data: &str) -> Option<String> {
        let user = self.plain_user_of(data)?;
        Some(if self.hashed {
            self.indexed(&user)
        } else {
            user
        })
    }

    /// The user `data` (a JSON object's text) belongs to, as written: the value of the key, when
    /// it is a non-empty string or an integer (as its decimal text: `42` and `"42"` are one
    /// user). Anything else (absent, null, a float, an object) is no user. One pass over the
    /// text; only the key's value is materialised. With the key repeated, the last one counts,
    /// as in every other reading of the data. For what shows the user (the admin's listing,
    /// the assertion's `sub`); the index uses [`UserKey::user_of`].
    pub fn plain_user_of(&self, data: &str) -> Option<String> {
        let mut de = serde_json::Deserializer::from_str(data);
        match Find(&self.key).deserialize(&mut de) {
            Ok(Found::User(user)) => Some(user),
            Ok(Found::Absent) => None,
            Ok(Found::Other) | Err(_) => {
                if !NOT_INDEXED.swap(true, Ordering::Relaxed) {
                    tracing::debug!(
                        key = &*self.key,
                        "a session's user key is not a string or an integer: not indexed (logged once)"
                    );
                }
                None
            }
        }
    }
}

enum Found {
    Absent,
    User(String),
    Other,
}

struct Find<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for Find<'_> {
    type Value = Found;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Find<'_> {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut found = Found::Absent;
        while let Some(is_key) = map.next_key_seed(KeyIs(self.0))? {
            if !is_key {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            found = match map.next_value::<Value>()? {
                Value::String(s) if !s.is_empty() => Found::User(s),
                Value::Number(n) if n.is_i64() || n.is_u64() => Found::User(n.to_string()),
                Value::Null => Found::Absent,
                _ => Found::Other,
            };
        }
        Ok(found)
    }
}

/// Compares an object key with the user key without keeping it.
struct KeyIs<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    fn lifetime(idle: u64, abs: Option<u64>, touch: u64) -> Lifetime {
        Lifetime::in_ms(idle, abs, touch)
    }

    /// The handle is base64url of SHA-256 of the id's text, as `printf %s "$ID" | openssl dgst
    /// -sha256 -binary | basenc --base64url | tr -d =` prints it.
    #[test]
    fn the_handle_is_the_base64url_sha256_of_the_id() {
        let id = SessionId::parse("abcdefghijklmnopqrstuvwxyzABCDEF").unwrap();
        assert_eq!(
            id.handle().as_str(),
            "z9Lx-tdaGXjaCkRIg9tyUUFLE58x9aBHBMKR_bDhdeY"
        );
        assert_eq!(id.handle().as_str().len(), HANDLE_LEN);
        let other = SessionId::generate().unwrap();
        assert_ne!(other.handle(), id.handle());
        assert!(!other.handle().as_str().contains(other.as_str()));
    }

    /// `store.hash_users`: the index names a user by a labelled SHA-256, the plain reading
    /// stays; without it both are the user as written.
    #[test]
    fn a_hashing_user_key_indexes_a_hash_and_still_reads_the_name() {
        let data = r#"{"user":"ada","n":1}"#;
        let plain = UserKey::new("user");
        assert_eq!(plain.user_of(data).as_deref(), Some("ada"));
        assert_eq!(plain.indexed("ada"), "ada");
        let hashed = UserKey::new("user").hashing();
        let h = hashed.user_of(data).unwrap();
        assert_eq!(h.len(), HANDLE_LEN);
        assert_ne!(h, "ada");
        assert_eq!(h, hashed.indexed("ada"));
        assert_eq!(hashed.plain_user_of(data).as_deref(), Some("ada"));
        assert_ne!(hashed.indexed("ada"), hashed.indexed("bob"));
        assert_ne!(plain.index_id(), hashed.index_id());
        assert_eq!(hashed.user_of(r#"{"n":1}"#), None);
    }

    /// What an operator typed: a handle, an id (told apart, to be refused without an echo),
    /// or neither.
    #[test]
    fn a_named_handle_tells_an_id_from_garbage() {
        let id = SessionId::generate().unwrap();
        assert_eq!(Handle::named(id.handle().as_str()), Ok(id.handle()));
        assert_eq!(Handle::named(id.as_str()), Err(NotAHandle::AnId));
        assert_eq!(Handle::named("nope"), Err(NotAHandle::Malformed));
    }

    /// A handle parses back from its text, and from nothing else: not an id, not a
    /// non-canonical spelling of the same bytes (the last character carries 2 spare bits).
    #[test]
    fn a_handle_has_one_spelling() {
        let handle = SessionId::generate().unwrap().handle();
        assert_eq!(Handle::parse(handle.as_str()), Some(handle));
        let text = "z9Lx-tdaGXjaCkRIg9tyUUFLE58x9aBHBMKR_bDhdeY";
        assert!(Handle::parse(text).is_some());
        for bad in [
            "z9Lx-tdaGXjaCkRIg9tyUUFLE58x9aBHBMKR_bDhdeZ",
            "z9Lx-tdaGXjaCkRIg9tyUUFLE58x9aBHBMKR_bDhde",
            "z9Lx-tdaGXjaCkRIg9tyUUFLE58x9aBHBMKR_bDhdeY=",
            "z9Lx+tdaGXjaCkRIg9tyUUFLE58x9aBHBMKR_bDhdeY",
            "abcdefghijklmnopqrstuvwxyzABCDEF",
            "",
        ] {
            assert_eq!(Handle::parse(bad), None, "{bad}");
        }
    }

    /// Stored keys with escapes (which cannot be borrowed from the text) merge as parsed keys.
    #[test]
    fn escaped_stored_keys_merge_like_values() {
        let data = r#"{"a\"b":1,"\u0063":2,"z":{"y":1},"n":3}"#;
        let patch = json!({"c": 4, "z": {"x": 2}, "n": null, "new": [1]});
        let change = DataChange::Patch(patch.as_object().unwrap().clone());
        let mut expected: Value = serde_json::from_str(data).unwrap();
        change.apply_to(&mut expected);
        let text = change.apply_to_text(data).unwrap();
        assert_eq!(text, serde_json::to_string(&expected).unwrap());
        assert_eq!(text, r#"{"a\"b":1,"c":4,"new":[1],"z":{"x":2,"y":1}}"#);
        assert!(change.apply_to_text("{not json").is_err());
        assert!(change.apply_to_text("[1]").is_err());
    }

    #[test]
    fn merge_patch_semantics() {
        let mut data = json!({"a":1,"b":{"c":1,"d":2}});
        let patch = json!({"a":null,"b":{"c":null,"e":3},"f":[1]});
        DataChange::Patch(patch.as_object().unwrap().clone()).apply_to(&mut data);
        assert_eq!(data, json!({"b":{"d":2,"e":3},"f":[1]}));
    }

    #[test]
    fn expiry() {
        let l = lifetime(1000, Some(5000), 100);
        assert_eq!(l.expiry(0, 0), 1000);
        assert_eq!(l.expiry(0, 4500), 5000);
    }

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), ID_LEN);
        assert_eq!(SessionId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn parse_rejects_bad_keys() {
        let good = "A".repeat(ID_LEN);
        assert!(SessionId::parse(&good).is_some());
        for bad in [
            String::new(),
            "A".repeat(ID_LEN - 1),
            "A".repeat(ID_LEN + 1),
            format!("../{}", "A".repeat(ID_LEN - 3)),
            format!("{}=", "A".repeat(ID_LEN - 1)),
            format!("{}é", "A".repeat(ID_LEN - 2)),
        ] {
            assert!(SessionId::parse(&bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn debug_hides_the_id() {
        let id = SessionId::generate().unwrap();
        assert!(!format!("{id:?}").contains(id.as_str()));
    }
}

/// Properties of the one parser of client-supplied ids.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn well_formed(text: &str) -> bool {
        text.len() == ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_well_formed(text in ".{0,40}") {
            let parsed = SessionId::parse(&text);
            prop_assert_eq!(parsed.is_some(), well_formed(&text));
            if let Some(id) = parsed {
                prop_assert_eq!(id.as_str(), text.as_str());
            }
        }

        #[test]
        fn every_id_of_the_alphabet_parses_back_to_itself(text in "[A-Za-z0-9_-]{32}") {
            let id = SessionId::parse(&text).unwrap();
            prop_assert_eq!(id.to_string(), text);
        }

        #[test]
        fn near_misses_are_refused(text in "[A-Za-z0-9_-]{31}", bad in "[^A-Za-z0-9_-]") {
            let refused = [
                text.clone(),
                format!("{text}{bad}"),
                format!("{bad}{text}"),
                format!("{text}AA"),
            ];
            for candidate in refused {
                prop_assert!(SessionId::parse(&candidate).is_none(), "{candidate:?}");
            }
        }
    }

    #[test]
    fn the_user_is_a_string_or_an_integer_at_the_top() {
        let key = UserKey::new("user");
        for (data, want) in [
            (r#"{"user":"ada"}"#, Some("ada")),
            (r#"{"a":[1,{"user":"x"}],"user":42}"#, Some("42")),
            (r#"{"user":-7}"#, Some("-7")),
            (r#"{"us\u0065r":"esc"}"#, Some("esc")),
            (r#"{"user":"a","user":"b"}"#, Some("b")),
            (r#"{"user":""}"#, None),
            (r#"{"user":null}"#, None),
            (r#"{"user":1.5}"#, None),
            (r#"{"user":{"id":1}}"#, None),
            (r#"{"user":true}"#, None),
            (r#"{"other":{"user":"x"}}"#, None),
            ("{}", None),
            ("not json", None),
        ] {
            assert_eq!(key.user_of(data).as_deref(), want, "{data}");
        }
    }
}
