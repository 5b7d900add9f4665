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

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use cookie::Key;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac as _};
use prometheus_client::metrics::counter::Counter;
use sha2::Sha256;

use crate::config::CookieConfig;
use crate::metrics::CookieMetrics;

/// One key and the counter of cookies it verified.
///
/// Why an HMAC of our own rather than the cookie crate's `SignedJar` (issue shape-2, measured;
/// bench/PROFILE.md, "shape-2: the signed cookie's HMAC"): `SECRET=1 bench/instructions.sh`,
/// memory store, two runs each on one machine within twenty minutes, instructions per request:
///
/// | mix | this code | `SignedJar`, one per key (commit e15ad0e) |
/// |---|---:|---:|
/// | write (verify + sign) | 75,720; 75,809 | 92,659; 92,791 |
/// | read (verify; 10 % sign) | 60,156; 60,035 | 68,708; 68,909 |
///
/// That is 16,850 to 17,071 (write) and 8,552 to 8,874 (read) saved, against the bar of
/// 1,000. Most of it is SHA-256 blocks (two per cookie for `SignedJar`'s key setup), counted
/// under callgrind at ~3,546 instructions each: valgrind hides the CPU's SHA extensions, so
/// `sha2` runs its portable code there, while outside valgrind this machine's CPU has them and
/// `sha2` uses them (not counted). Without `sha2::compress256` the saving is still 2,662 to
/// 2,885 (write) and 842 to 1,104 (read): the jar, its `Cookie`s and `String`s, the digest
/// decoded into a `Vec`. Criterion (`benches/signed_cookie.rs`, a loaded machine, medians of
/// three runs each): `set` signed 568 to 616 ns here against 933 to 1,101 ns; `take` with an
/// old key 1.08 to 1.56 µs against 1.55 to 2.03 µs; `take` with the signing key 807 ns to
/// 1.08 µs against 683 ns to 1.15 µs (no difference seen).
struct Slot {
    key: Key,
    /// HMAC-SHA256 keyed with the key's signing half, set up once: a request clones this state
    /// instead of hashing the key's two pads again for every cookie it signs or checks.
    mac: Hmac<Sha256>,
    verified: Counter,
}

/// Length of the base64 (standard, padded) HMAC-SHA256 that starts a signed value.
const DIGEST_B64_LEN: usize = 44;

impl Slot {
    fn new(key: Key, verified: Counter) -> Self {
        // HMAC pads a key shorter than SHA-256's 64-byte block with zeros, so this keyed state
        // is the one `Hmac::new_from_slice(key.signing())` (the cookie crate's) makes, without
        // its `Result`. The signing half is 32 bytes.
        let signing = key.signing();
        let mut block = hmac::digest::Key::<Hmac<Sha256>>::default();
        let n = signing.len().min(block.len());
        block[..n].copy_from_slice(&signing[..n]);
        Slot {
            mac: <Hmac<Sha256> as KeyInit>::new(&block),
            key,
            verified,
        }
    }
}

/// The keys in use at one moment: the first signs, each verifies, in order.
pub struct KeySet {
    slots: Vec<Slot>,
    failed: Counter,
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
    /// the first key that verifies it (not counted: see [`count`](Self::count)).
    ///
    /// The cookie crate's signed format, `base64(HMAC-SHA256(value)) + value` (its `SignedJar`
    /// made every cookie already out there), checked the way it checks it: the digest decoded
    /// with the same engine, compared in constant time (`verify_slice`).
    pub fn verify<'v>(&self, signed: &'v str) -> Option<(&'v str, usize)> {
        if !signed.is_char_boundary(DIGEST_B64_LEN) {
            return None;
        }
        let (digest_b64, value) = signed.split_at(DIGEST_B64_LEN);
        let mut digest = [0u8; 48];
        let n = BASE64_STANDARD.decode_slice(digest_b64, &mut digest).ok()?;
        let digest = digest.get(..n)?;
        self.slots.iter().enumerate().find_map(|(i, slot)| {
            let mut mac = slot.mac.clone();
            mac.update(value.as_bytes());
            mac.verify_slice(digest).ok().map(|()| (value, i))
        })
    }

    /// Appends `value` signed with the signing key to `out`, as the cookie crate's `SignedJar`
    /// signs it; `false` (and nothing appended) when cookies are not signed.
    pub fn sign_into(&self, value: &str, out: &mut String) -> bool {
        let Some(slot) = self.slots.first() else {
            return false;
        };
        let mut mac = slot.mac.clone();
        mac.update(value.as_bytes());
        BASE64_STANDARD.encode_string(mac.finalize().into_bytes(), out);
        out.push_str(value);
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
                .map(|(i, key)| Slot::new(key, metrics.key(i)))
                .collect(),
            failed: metrics.failed(),
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
        self.check(&keys)?;
        let n = keys.len();
        let set = Arc::new(Self::set(keys, &self.metrics));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = set;
        Ok(n)
    }

    /// Whether [`replace`](Self::replace) would take `keys`: not when they turn signing on or off.
    pub fn check(&self, keys: &[Key]) -> Result<(), SigningToggled> {
        let signed = self.current().is_signed();
        if signed == keys.is_empty() {
            let word = |on: bool| if on { "on" } else { "off" };
            return Err(SigningToggled {
                now: word(signed),
                wanted: word(!signed),
            });
        }
        Ok(())
    }

    /// Counts a reload, applied or refused, in `cookie_reloads_total`.
    pub fn count_reload(&self, applied: bool) {
        self.metrics.reload(applied);
    }
}

/// Warns when the secrets file can be read by every user of the machine: whoever reads it can
/// sign a cookie for any session id.
pub fn warn_if_world_readable(cookie: &CookieConfig) {
    if let Some(path) = cookie.secret_file.as_deref() {
        warn_if_file_world_readable(path, "cookie.secret_file");
    }
}

/// [`warn_if_world_readable`] for `store.encryption_key_file`.
pub fn warn_if_store_keys_world_readable(store: &crate::config::StoreConfig) {
    if let Some(path) = store.encryption_key_file.as_deref() {
        warn_if_file_world_readable(path, "store.encryption_key_file");
    }
}

fn warn_if_file_world_readable(path: &std::path::Path, key: &'static str) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "{key} is readable by every user of this machine: chmod o-r it"
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
