//! The alias a regenerate leaves under the old id's handle (`session.regenerate_grace`): which
//! session the old id moved to, until when it still resolves there, and the new id, sealed so
//! that only a holder of the old id can read it.
//!
//! No store holds a session id. The new id is sealed with AES-256-GCM under a key derived from
//! the *old id* (HMAC-SHA256 of the id under a label of its own, not the handle's derivation),
//! the old handle as associated data; a store dump holds the old handle, not the old id, and
//! cannot open it. The request that presents the old id derives the key and gets the new id,
//! which is then checked against the alias's new handle.
//!
//! An alias is not a session: every backend keeps it apart (memory a map, fs `alias.*` files,
//! sqlite the `aliases` table, Redis `{prefix}alias:{handle}`), so listings, counts, the user
//! index never meet one. It expires with the session it names as of the regenerate
//! (`expires_at`, never refreshed: the tombstone may die before a session kept alive longer),
//! and the sweeper (or Redis's TTL) removes it.

use base64::Engine as _;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{Result, StoreError};
use crate::session::{Handle, SessionId};

/// The label of the key derivation: distinct from every other use of an id's bytes.
const LABEL: &[u8] = b"session-proxy alias key v1";

/// What a regenerate under a grace leaves under the old handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The old id's handle: the key the alias is kept under.
    pub old: Handle,
    /// The handle of the session the old id moved to.
    pub new: Handle,
    /// The new id, sealed under the old id (base64url of nonce ‖ ciphertext ‖ tag).
    pub sealed: String,
    /// Unix ms: until then the old id resolves to `new`; from then on a use is stale.
    pub grace_until: u64,
    /// Unix ms: the alias (then a tombstone) is dropped. A regenerate sets it to the new
    /// record's `expires_at` (or `grace_until`, if later) as it writes the alias.
    pub expires_at: u64,
}

fn key_of(old: &SessionId) -> Result<LessSafeKey> {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, old.as_str().as_bytes()),
        LABEL,
    );
    let key = UnboundKey::new(&AES_256_GCM, tag.as_ref())
        .map_err(|_| StoreError::Unexpected("alias key".to_owned()))?;
    Ok(LessSafeKey::new(key))
}

impl Alias {
    /// The alias of `old` → `new` (its expiry left for the regenerate to set).
    pub fn new(old: &SessionId, new: &SessionId, grace_until: u64) -> Result<Alias> {
        let old_handle = old.handle();
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| StoreError::Unexpected("the random source failed".to_owned()))?;
        let mut buf = new.as_str().as_bytes().to_vec();
        key_of(old)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(old_handle.as_str().as_bytes()),
                &mut buf,
            )
            .map_err(|_| StoreError::Unexpected("alias seal".to_owned()))?;
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&buf);
        Ok(Alias {
            old: old_handle,
            new: new.handle(),
            sealed: BASE64_URL_SAFE_NO_PAD.encode(raw),
            grace_until,
            expires_at: grace_until,
        })
    }

    /// This alias as written next to a new record expiring at `expires_at`.
    pub fn expiring(&self, expires_at: u64) -> Alias {
        Alias {
            expires_at: expires_at.max(self.grace_until),
            ..self.clone()
        }
    }

    /// The new id, opened with `old` (the id the request presented); `None` if it does not
    /// open or does not name [`new`](Self::new).
    pub fn open(&self, old: &SessionId) -> Option<SessionId> {
        let raw = BASE64_URL_SAFE_NO_PAD.decode(&self.sealed).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let mut buf = rest.to_vec();
        let plain = key_of(old)
            .ok()?
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(self.old.as_str().as_bytes()),
                &mut buf,
            )
            .ok()?;
        let id = SessionId::parse(std::str::from_utf8(plain).ok()?)?;
        (id.handle() == self.new).then_some(id)
    }

    /// Whether the old id still resolves (`now` before `grace_until`).
    pub fn in_grace(&self, now: u64) -> bool {
        now < self.grace_until
    }

    /// Whether the alias is still kept (`now` before `expires_at`).
    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires_at
    }

    /// The stored form (fs, Redis): JSON, holding handles and the sealed id only.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(&Stored {
            old: self.old.as_str(),
            new: self.new.as_str(),
            sealed: &self.sealed,
            grace_until: self.grace_until,
            expires_at: self.expires_at,
        })
        .map_err(|e| StoreError::Unexpected(e.to_string()))
    }

    /// [`to_json`](Self::to_json) back; `None` for anything else.
    pub fn from_json(bytes: &[u8]) -> Option<Alias> {
        let s: Stored<'_> = serde_json::from_slice(bytes).ok()?;
        Some(Alias {
            old: Handle::parse(s.old)?,
            new: Handle::parse(s.new)?,
            sealed: s.sealed.to_owned(),
            grace_until: s.grace_until,
            expires_at: s.expires_at,
        })
    }
}

/// The JSON of an alias.
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    old: &'a str,
    new: &'a str,
    sealed: &'a str,
    grace_until: u64,
    expires_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_old_id_opens_the_new_one() {
        let (old, new) = (
            SessionId::generate().unwrap(),
            SessionId::generate().unwrap(),
        );
        let alias = Alias::new(&old, &new, 5).unwrap();
        assert_eq!(alias.open(&old), Some(new));
        assert_eq!(alias.open(&SessionId::generate().unwrap()), None);
        let json = alias.to_json().unwrap();
        assert!(!json.contains(old.as_str()) && !json.contains(new.as_str()));
        assert_eq!(Alias::from_json(json.as_bytes()), Some(alias.clone()));
        let moved = Alias {
            new: Handle::generate().unwrap(),
            ..alias.clone()
        };
        assert_eq!(moved.open(&old), None, "a new handle that is not the id's");
        assert_eq!(alias.expiring(9).expires_at, 9);
        assert!(alias.in_grace(4) && !alias.in_grace(5));
    }
}
