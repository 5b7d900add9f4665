//! The cookie keys in use, and their replacement while serving (SIGHUP).
//!
//! [`KeyRing`] holds the current [`KeySet`] behind a lock that a request holds only to clone an
//! `Arc`, so a reload swaps the whole set at once: a request verifies and signs with one set,
//! old or new, never a mix (`reload.rs` reads the new set on SIGHUP). A reload never turns signing on or off:
//! either would end every session at once (unsigned ids no longer verify) or accept unsigned ids
//! (a downgrade no one should get by a typo), so both take a restart.
//!
//! What this module must not do: log or `Debug`-print a secret or a key, or touch anything but
//! the cookie keys (other settings in a re-read file are ignored until a restart).

use std::sync::{Arc, PoisonError, RwLock};

use cookie::{Cookie, CookieJar, Key};
use prometheus_client::metrics::counter::Counter;

use crate::config::CookieConfig;
use crate::metrics::CookieMetrics;

/// One key and the counter of cookies it verified.
struct Slot {
    key: Key,
    verified: Counter,
}

/// Length of the base64 (standard, padded) HMAC-SHA256 that starts a signed value.
const DIGEST_B64_LEN: usize = 44;

/// The keys in use at one moment: the first signs, each verifies, in order.
///
/// Signing and checking are the cookie crate's `SignedJar`, one per key, as it made every
/// signed cookie already out there.
pub struct KeySet {
    slots: Vec<Slot>,
    failed: Counter,
    /// The parent of each key's `SignedJar` when checking a cookie: its `verify` reads nothing
    /// from the jar, so one empty jar serves every key.
    jar: CookieJar,
}

impl KeySet {
    /// The key that signs new cookies; `None` when cookies are not signed.
    pub fn signing(&self) -> Option<&Key> {
        self.slots.first().map(|s| &s.key)
    }

    pub fn is_signed(&self) -> bool {
        !self.slots.is_empty()
    }

    /// The value inside `signed` (a cookie value signed with one of the keys) and the index of
    /// the first key that verifies it (not counted: see [`count`](Self::count)): each key's
    /// `SignedJar` tries it, in order.
    pub fn verify<'v>(&self, signed: &'v str) -> Option<(&'v str, usize)> {
        let index = self.slots.iter().position(|slot| {
            let cookie = Cookie::new("", signed.to_owned());
            self.jar.signed(&slot.key).verify(cookie).is_some()
        })?;
        // What verified is `base64(HMAC-SHA256(value)) + value`; the value is the rest.
        Some((signed.get(DIGEST_B64_LEN..)?, index))
    }

    /// Appends `value` signed with the signing key (by its `SignedJar`) to `out`; `false` (and
    /// nothing appended) when cookies are not signed.
    pub fn sign_into(&self, value: &str, out: &mut String) -> bool {
        let Some(slot) = self.slots.first() else {
            return false;
        };
        let mut jar = CookieJar::new();
        jar.signed_mut(&slot.key)
            .add(Cookie::new("", value.to_owned()));
        // The jar holds the cookie just added; were it missing, an empty value (refused when it
        // comes back) is still not an unsigned one.
        if let Some(cookie) = jar.get("") {
            out.push_str(cookie.value());
        }
        true
    }

    /// Counts what one request's session cookie came to: verified by the key at `index`, or
    /// refused (`None`).
    pub fn count(&self, index: Option<usize>) {
        match index.and_then(|i| self.slots.get(i)) {
            Some(slot) => slot.verified.inc(),
            None => self.failed.inc(),
        };
    }
}

impl std::fmt::Debug for KeySet {
    /// How many keys, never which.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.slots.len())
            .finish()
    }
}

/// Why a new set of keys was refused: a reload may change the keys, not whether there are any
/// (the operator's; it takes a restart).
#[derive(Debug, thiserror::Error)]
#[error(
    "cookie signing is {now} and the new configuration would turn it {wanted}: that takes a restart"
)]
pub struct SigningToggled {
    now: &'static str,
    wanted: &'static str,
}

/// The cookie keys, replaceable while serving: see the module doc.
pub struct KeyRing {
    current: RwLock<Arc<KeySet>>,
    metrics: CookieMetrics,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &*self.current())
            .finish()
    }
}

impl KeyRing {
    /// The ring for `keys`, counting into `metrics` (one child per key, resolved here).
    pub fn new(keys: Vec<Key>, metrics: CookieMetrics) -> Self {
        let set = Self::set(keys, &metrics);
        KeyRing {
            current: RwLock::new(Arc::new(set)),
            metrics,
        }
    }

    fn set(keys: Vec<Key>, metrics: &CookieMetrics) -> KeySet {
        KeySet {
            slots: keys
                .into_iter()
                .enumerate()
                .map(|(i, key)| Slot {
                    key,
                    verified: metrics.key(i),
                })
                .collect(),
            failed: metrics.failed(),
            jar: CookieJar::new(),
        }
    }

    /// The keys in use now; a request uses this one set for its whole life.
    pub fn current(&self) -> Arc<KeySet> {
        // A panic cannot happen while the lock is held (it guards one `Arc` swap), but if it
        // did, the set inside is still whole: use it.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `keys` in use, unless that would turn signing on or off. Returns how many keys are
    /// in use now.
    pub fn replace(&self, keys: Vec<Key>) -> Result<usize, SigningToggled> {
        let signed = self.current().is_signed();
        if signed == keys.is_empty() {
            let word = |on: bool| if on { "on" } else { "off" };
            return Err(SigningToggled {
                now: word(signed),
                wanted: word(!signed),
            });
        }
        let n = keys.len();
        let set = Arc::new(Self::set(keys, &self.metrics));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = set;
        Ok(n)
    }

    /// Counts a reload, applied or refused, in `cookie_reloads_total`.
    pub fn count_reload(&self, applied: bool) {
        self.metrics.reload(applied);
    }
}

/// Warns when the secrets file can be read by every user of the machine: whoever reads it can
/// sign a cookie for any session id.
pub fn warn_if_world_readable(cookie: &CookieConfig) {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(path) = cookie.secret_file.as_deref() else {
        return;
    };
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "cookie.secret_file is readable by every user of this machine: chmod o-r it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> Key {
        Key::derive_from(c.to_string().repeat(32).as_bytes())
    }

    /// Every cookie signed so far was signed by the cookie crate's `SignedJar`: what ours signs
    /// it accepts, and what it signs ours verifies, for several keys and values; a changed
    /// digest or value, another key or a cut value is refused.
    #[test]
    fn signs_and_verifies_as_the_cookie_crates_signed_jar() {
        use cookie::{Cookie, CookieJar};
        for c in ['a', 'b', 'z'] {
            let k = key(c);
            let set = KeyRing::new(vec![key('q'), k.clone()], CookieMetrics::default()).current();
            let only = KeyRing::new(vec![k.clone()], CookieMetrics::default()).current();
            for value in [
                "",
                "x",
                "abcdefghijklmnopqrstuvwxyz012345",
                "é ü;=",
                &"v".repeat(300),
            ] {
                let mut jar = CookieJar::new();
                jar.signed_mut(&k).add(Cookie::new("n", value.to_owned()));
                let theirs = jar.get("n").unwrap().value().to_owned();
                let mut ours = String::from("prefix=");
                assert!(only.sign_into(value, &mut ours));
                assert_eq!(ours["prefix=".len()..], theirs);
                assert_eq!(only.verify(&theirs), Some((value, 0)));
                // The second key of a set verifies, as an old key.
                assert_eq!(set.verify(&theirs), Some((value, 1)));
                let mut back = CookieJar::new();
                back.add_original(Cookie::new("n", ours["prefix=".len()..].to_owned()));
                let got = back.signed(&k).get("n").map(|c| c.value().to_owned());
                assert_eq!(got.as_deref(), Some(value));

                let mut flipped = theirs.clone().into_bytes();
                flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
                assert_eq!(only.verify(std::str::from_utf8(&flipped).unwrap()), None);
                let longer = format!("{theirs}x");
                assert_eq!(only.verify(&longer), None);
                assert_eq!(only.verify(&theirs[..theirs.len() - 1]), None);
                assert_eq!(only.verify(&theirs[..43]), None);
                let other = KeyRing::new(vec![key('q')], CookieMetrics::default()).current();
                assert_eq!(other.verify(&theirs), None);
            }
            // A multi-byte character across the digest's end is refused, not a panic.
            assert_eq!(only.verify(&format!("{}é", "A".repeat(43))), None);
        }
        let unsigned = KeyRing::new(Vec::new(), CookieMetrics::default()).current();
        let mut out = String::new();
        assert!(!unsigned.sign_into("x", &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn a_reload_replaces_the_keys_but_never_turns_signing_on_or_off() {
        let signed = KeyRing::new(vec![key('a')], CookieMetrics::default());
        assert_eq!(signed.replace(vec![key('b'), key('a')]).unwrap(), 2);
        assert!(signed.current().signing() == Some(&key('b')));
        let err = signed.replace(Vec::new()).unwrap_err().to_string();
        assert!(
            err.contains("is on") && err.contains("turn it off"),
            "{err}"
        );
        assert!(signed.current().signing() == Some(&key('b')));

        let unsigned = KeyRing::new(Vec::new(), CookieMetrics::default());
        let err = unsigned.replace(vec![key('a')]).unwrap_err().to_string();
        assert!(
            err.contains("is off") && err.contains("turn it on"),
            "{err}"
        );
        assert!(!unsigned.current().is_signed());
        // The Debug output says how many, never which.
        assert_eq!(
            format!("{signed:?}"),
            "KeyRing { current: KeySet { keys: 2 } }"
        );
    }
}
