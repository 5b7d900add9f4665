//! [`Sealer`]: session data encrypted at rest (`store.encryption_key`).
//!
//! Contract: every backend hands a record's data to [`Sealer::seal`] on its way into stored
//! bytes and to [`Sealer::open`] on its way back, so everything inside a backend (the merge of
//! `Update::apply`, the user index, Redis's compare-and-set by version) works on plaintext and
//! only the stored form is sealed. Off (no key), `seal` hands the data back as it is and `open`
//! passes a plain JSON object through: the off path is a branch.
//!
//! The stored form is `sp1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>`: AES-256-GCM (ring),
//! a fresh random 96-bit nonce per write, the session's handle as associated data (a record
//! moved under another handle fails to open), under a key derived by HKDF-SHA256 from each
//! configured secret; `kid` names the key (6 base64url characters of a labelled SHA-256 of the
//! secret), so a rotation needs no flag day: the first key seals, every key opens. It starts
//! with `s`, so it is never mistaken for a JSON object (plain records, written before the key
//! was set, start with `{`: they still read, and are sealed by their next write).
//!
//! A record that does not open (a key no longer configured, a tampered or moved record) is
//! unreadable: counted (`session_proxy_store_unreadable_total`), logged once per key id, and
//! treated as missing by the caller; it is never deleted for it.
//!
//! Replaced whole on SIGHUP ([`Sealer::replace`]); a reload never turns encryption on or off.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use prometheus_client::metrics::counter::Counter;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom as _, SystemRandom};
use sha2::{Digest as _, Sha256};

use super::{Result, StoreError};
use crate::session::Handle;

/// What every sealed value starts with: the format's version.
const PREFIX: &str = "sp1.";
/// Characters of a key id.
const KID_LEN: usize = 6;
/// AES-GCM's tag.
const TAG_LEN: usize = 16;
/// HKDF's salt: names this use of a secret, so the same text used elsewhere (a cookie secret)
/// gives an unrelated key.
const HKDF_SALT: &[u8] = b"session-proxy store encryption v1";
/// The label of the key id's hash: the id says which key, and nothing of the key itself.
const KID_LABEL: &[u8] = b"session-proxy store key id v1\0";

/// One key: its id and its AES-256-GCM key.
struct Key {
    kid: [u8; KID_LEN],
    aead: LessSafeKey,
}

impl Key {
    fn derive(secret: &[u8]) -> std::result::Result<Key, KeyError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
        // `expand` fails only for an output longer than 255 hashes; 32 bytes is one.
        let okm = prk
            .expand(&[b"aes-256-gcm"], &AES_256_GCM)
            .map_err(|_| KeyError::Derive)?;
        let aead = LessSafeKey::new(UnboundKey::from(okm));
        let mut hash = Sha256::new();
        hash.update(KID_LABEL);
        hash.update(secret);
        let digest = hash.finalize();
        let mut kid = [0u8; KID_LEN];
        // 6 characters are 36 bits: the first 5 bytes give 6 full characters and a partial one.
        let mut text = [0u8; 8];
        let _ = BASE64_URL_SAFE_NO_PAD.encode_slice(&digest[..6], &mut text);
        kid.copy_from_slice(&text[..KID_LEN]);
        Ok(Key { kid, aead })
    }

    fn kid(&self) -> &str {
        // Base64url by construction.
        std::str::from_utf8(&self.kid).unwrap_or_default()
    }
}

/// The keys in use at one moment: the first seals, each opens.
struct KeySet {
    keys: Vec<Key>,
}

/// The state of a sealer that is on: the keys (swapped whole by a reload), the counter of
/// unreadable records and the key ids already logged.
struct Shared {
    keys: ArcSwap<KeySet>,
    rng: SystemRandom,
    unreadable: Counter,
    logged: Mutex<HashSet<String>>,
}

/// Seals and opens session data for the stores (see the module). Cheap to clone: clones share
/// their keys, so a reload through one is seen by all. `Sealer::default()` is off.
#[derive(Clone, Default)]
pub struct Sealer {
    on: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Sealer {
    /// Says whether data is sealed and with how many keys, never the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.on.as_ref().map_or(0, |s| s.keys.load().keys.len());
        f.debug_struct("Sealer")
            .field("on", &self.is_on())
            .field("keys", &keys)
            .finish()
    }
}

/// Why the store keys could not be put in use (a reload keeps the keys in use).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operator's: a reload may change the keys, not whether there are any.
    #[error(
        "store.encryption_key: a reload may change the keys, not turn encryption {0} (that takes a restart)"
    )]
    Toggled(&'static str),
    /// Ours: HKDF refused to derive a key (it never does for 32 bytes).
    #[error("store.encryption_key: HKDF-SHA256 could not derive a key")]
    Derive,
}

/// A record that did not open; already counted and logged, so the caller only treats it as
/// missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

impl Sealer {
    /// A sealer with `secrets` (config has checked each: 32 bytes or more, no repeat), the
    /// first sealing; off when there are none. Unreadable records count into `unreadable`.
    pub fn new<S: AsRef<[u8]>>(
        secrets: &[S],
        unreadable: Counter,
    ) -> std::result::Result<Sealer, KeyError> {
        if secrets.is_empty() {
            return Ok(Sealer::default());
        }
        Ok(Sealer {
            on: Some(Arc::new(Shared {
                keys: ArcSwap::from_pointee(KeySet::derive(secrets)?),
                rng: SystemRandom::new(),
                unreadable,
                logged: Mutex::default(),
            })),
        })
    }

    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// Whether [`replace`](Self::replace) would take `secrets`: not when they turn encryption
    /// on or off.
    pub fn check<S: AsRef<[u8]>>(&self, secrets: &[S]) -> std::result::Result<(), KeyError> {
        match (&self.on, secrets.is_empty()) {
            (None, false) => Err(KeyError::Toggled("on")),
            (Some(_), true) => Err(KeyError::Toggled("off")),
            _ => Ok(()),
        }
    }

    /// Puts `secrets` in use (the first seals from now on); returns how many. Refused, the
    /// keys in use kept, if it would turn sealing on or off.
    pub fn replace<S: AsRef<[u8]>>(&self, secrets: &[S]) -> std::result::Result<usize, KeyError> {
        match (&self.on, secrets.is_empty()) {
            (None, true) => Ok(0),
            (None, false) => Err(KeyError::Toggled("on")),
            (Some(_), true) => Err(KeyError::Toggled("off")),
            (Some(shared), false) => {
                shared.keys.store(Arc::new(KeySet::derive(secrets)?));
                Ok(secrets.len())
            }
        }
    }

    /// The id of the key that seals now (for a log line); `None` when off.
    pub fn sealing_kid(&self) -> Option<String> {
        let shared = self.on.as_ref()?;
        shared.keys.load().keys.first().map(|k| k.kid().to_owned())
    }

    /// Records that did not open, as counted so far.
    pub fn unreadable(&self) -> u64 {
        self.on.as_ref().map_or(0, |s| s.unreadable.get())
    }

    /// `data` (a JSON object's text) as it is stored for `id`: sealed, or itself when off.
    pub fn seal<'a>(&self, data: &'a str, id: &Handle) -> Result<Cow<'a, str>> {
        match &self.on {
            None => Ok(Cow::Borrowed(data)),
            Some(shared) => shared.seal(data, id, false).map(Cow::Owned),
        }
    }

    /// [`seal`](Self::seal) as a JSON value, for the record JSON of the fs and Redis stores:
    /// the object itself when off, else the sealed text as a JSON string (it holds no
    /// character that needs escaping).
    pub fn seal_json<'a>(&self, data: &'a str, id: &Handle) -> Result<Cow<'a, str>> {
        match &self.on {
            None => Ok(Cow::Borrowed(data)),
            Some(shared) => shared.seal(data, id, true).map(Cow::Owned),
        }
    }

    /// The data of `stored` (what [`seal`](Self::seal) wrote for `id`, or a plain JSON object's
    /// text, passed through unchecked): [`Unreadable`] if it is sealed and does not open.
    pub fn open<'a>(
        &self,
        stored: &'a str,
        id: &Handle,
    ) -> std::result::Result<Cow<'a, str>, Unreadable> {
        if !stored.starts_with(PREFIX) {
            return Ok(Cow::Borrowed(stored));
        }
        let Some(shared) = &self.on else {
            return Err(self.unreadable_now(kid_of(stored), "encryption is off"));
        };
        shared
            .open(stored, id)
            .map(Cow::Owned)
            .map_err(|why| self.unreadable_now(kid_of(stored), why))
    }

    /// [`open`](Self::open) of a record JSON's `data` value: a JSON object's text is passed
    /// through; a JSON string is sealed data (the sealed form needs no escape, so its text is
    /// the string's content).
    pub fn open_json<'a>(
        &self,
        value: &'a str,
        id: &Handle,
    ) -> std::result::Result<Cow<'a, str>, Unreadable> {
        match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(inner) if inner.starts_with(PREFIX) => self.open(inner, id),
            _ => self.open(value, id),
        }
    }

    /// Counts an unreadable record; logs the first of each key id.
    fn unreadable_now(&self, kid: &str, why: &'static str) -> Unreadable {
        static OFF_LOGGED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
        let first = match &self.on {
            Some(shared) => {
                shared.unreadable.inc();
                shared
                    .logged
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(kid.to_owned())
            }
            None => OFF_LOGGED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_default()
                .insert(kid.to_owned()),
        };
        if first {
            tracing::error!(
                kid,
                why,
                "a sealed session did not open and is treated as missing (logged once per key id; \
                 counted in session_proxy_store_unreadable_total); is its key still in \
                 store.encryption_key?"
            );
        }
        Unreadable
    }
}

/// The key id of a sealed value (or `?` if it has none).
fn kid_of(stored: &str) -> &str {
    stored
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.get(..KID_LEN))
        .filter(|kid| {
            kid.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or("?")
}

impl KeySet {
    fn derive<S: AsRef<[u8]>>(secrets: &[S]) -> std::result::Result<KeySet, KeyError> {
        Ok(KeySet {
            keys: secrets
                .iter()
                .map(|s| Key::derive(s.as_ref()))
                .collect::<std::result::Result<_, _>>()?,
        })
    }
}

impl Shared {
    fn seal(&self, data: &str, id: &Handle, quoted: bool) -> Result<String> {
        let keys = self.keys.load();
        let Some(key) = keys.keys.first() else {
            return Err(StoreError::Unexpected("no sealing key".to_owned()));
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StoreError::Unexpected("the system random source failed".to_owned()))?;
        let mut buf = Vec::with_capacity(NONCE_LEN + data.len() + TAG_LEN);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(data.as_bytes());
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_str().as_bytes()),
                &mut buf[NONCE_LEN..],
            )
            .map_err(|_| StoreError::Unexpected("session data too large to seal".to_owned()))?;
        buf.extend_from_slice(tag.as_ref());
        let quote = usize::from(quoted);
        let mut out = String::with_capacity(
            2 * quote + PREFIX.len() + KID_LEN + 1 + buf.len().div_ceil(3) * 4,
        );
        if quoted {
            out.push('"');
        }
        out.push_str(PREFIX);
        out.push_str(key.kid());
        out.push('.');
        BASE64_URL_SAFE_NO_PAD.encode_string(&buf, &mut out);
        if quoted {
            out.push('"');
        }
        Ok(out)
    }

    fn open(&self, stored: &str, id: &Handle) -> std::result::Result<String, &'static str> {
        let rest = &stored[PREFIX.len()..];
        let (kid, body) = rest.split_once('.').ok_or("no key id")?;
        let mut buf = BASE64_URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| "not base64url")?;
        if buf.len() < NONCE_LEN + TAG_LEN {
            return Err("too short");
        }
        let nonce: [u8; NONCE_LEN] = buf[..NONCE_LEN].try_into().map_err(|_| "too short")?;
        let keys = self.keys.load();
        let mut candidates = keys.keys.iter().filter(|k| k.kid() == kid).peekable();
        let known = candidates.peek().is_some();
        while let Some(key) = candidates.next() {
            // A failed open leaves the buffer overwritten: a key that shares its id with a
            // later one (36 bits: all but never) works on a copy.
            let mut copy;
            let work = if candidates.peek().is_some() {
                copy = buf.clone();
                &mut copy
            } else {
                &mut buf
            };
            if let Ok(plain) = key.aead.open_within(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_str().as_bytes()),
                work,
                NONCE_LEN..,
            ) {
                let n = plain.len();
                let mut plain = std::mem::take(work);
                plain.truncate(n);
                return String::from_utf8(plain).map_err(|_| "not UTF-8");
            }
        }
        Err(if known {
            "it does not open with its key (tampered with, or moved from another handle)"
        } else {
            "its key is not configured"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secrets: &[&str]) -> Sealer {
        Sealer::new(secrets, Counter::default()).unwrap()
    }

    const A: &str = "a-secret-of-at-least-32-bytes-aaaa";
    const B: &str = "b-secret-of-at-least-32-bytes-bbbb";
    const DATA: &str = r#"{"user":"ada","cart":[1,2]}"#;

    #[test]
    fn seals_and_opens_with_the_handle_as_associated_data() {
        let s = sealer(&[A]);
        let id = Handle::generate().unwrap();
        let sealed = s.seal(DATA, &id).unwrap();
        assert!(
            sealed.starts_with("sp1.") && !sealed.contains("ada"),
            "{sealed}"
        );
        assert_eq!(s.open(&sealed, &id).unwrap(), DATA);
        // A fresh nonce each time.
        assert_ne!(s.seal(DATA, &id).unwrap(), sealed);
        // Moved under another handle: does not open, counted, never a panic.
        let other = Handle::generate().unwrap();
        assert_eq!(s.open(&sealed, &other), Err(Unreadable));
        assert_eq!(s.unreadable(), 1);
        // As a JSON string in the record JSON.
        let json = s.seal_json(DATA, &id).unwrap();
        assert!(json.starts_with("\"sp1.") && json.ends_with('"'));
        assert_eq!(
            serde_json::from_str::<String>(&json).unwrap().len() + 2,
            json.len()
        );
        assert_eq!(s.open_json(&json, &id).unwrap(), DATA);
    }

    #[test]
    fn rotation_the_first_seals_and_every_key_opens() {
        let id = Handle::generate().unwrap();
        let old = sealer(&[A]).seal(DATA, &id).unwrap().into_owned();
        let rotated = sealer(&[B, A]);
        assert_eq!(rotated.open(&old, &id).unwrap(), DATA);
        let new = rotated.seal(DATA, &id).unwrap();
        assert_eq!(kid_of(&new), rotated.sealing_kid().unwrap());
        assert_eq!(sealer(&[B]).open(&new, &id).unwrap(), DATA);
        assert_ne!(kid_of(&new), kid_of(&old));
        // The old key alone cannot open what the new one sealed.
        assert_eq!(sealer(&[A]).open(&new, &id), Err(Unreadable));
        // A reload swaps the keys for every clone.
        let s = sealer(&[A]);
        let clone = s.clone();
        assert_eq!(s.replace(&[B]).unwrap(), 1);
        assert_eq!(clone.open(&old, &id), Err(Unreadable));
        assert_eq!(clone.open(&new, &id).unwrap(), DATA);
        assert!(
            s.replace::<&str>(&[]).is_err(),
            "a reload turned sealing off"
        );
        assert!(
            Sealer::default().replace(&[A]).is_err(),
            "a reload turned sealing on"
        );
    }

    #[test]
    fn an_unknown_key_or_a_tampered_record_is_unreadable() {
        let id = Handle::generate().unwrap();
        let s = sealer(&[A]);
        let sealed = sealer(&[B]).seal(DATA, &id).unwrap().into_owned();
        assert_eq!(s.open(&sealed, &id), Err(Unreadable));
        let good = s.seal(DATA, &id).unwrap().into_owned();
        let mut bytes = good.clone().into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(s.open(&tampered, &id), Err(Unreadable));
        for bad in ["sp1.", "sp1.abcdef", "sp1.abcdef.!!!", "sp1.abcdef.AAAA"] {
            assert_eq!(s.open(bad, &id), Err(Unreadable), "{bad}");
        }
        assert_eq!(s.unreadable(), 6);
        // Sealed data with sealing off is unreadable too, never passed through.
        assert_eq!(Sealer::default().open(&good, &id), Err(Unreadable));
    }

    #[test]
    fn plain_json_passes_through_and_off_is_a_no_op() {
        let id = Handle::generate().unwrap();
        for s in [sealer(&[A]), Sealer::default()] {
            assert!(matches!(s.open(DATA, &id), Ok(Cow::Borrowed(DATA))));
            assert!(matches!(s.open_json(DATA, &id), Ok(Cow::Borrowed(DATA))));
        }
        let off = Sealer::default();
        assert!(matches!(off.seal(DATA, &id), Ok(Cow::Borrowed(DATA))));
        assert!(matches!(off.seal_json(DATA, &id), Ok(Cow::Borrowed(DATA))));
        assert!(!format!("{:?}", sealer(&[A])).contains(A));
    }
}
