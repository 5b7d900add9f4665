//! [`Meta`], what a record keeps about its session besides the data and the times: the app's
//! "keep me signed in" choice, whether its client ever sent the cookie back, and the device
//! (addresses, user agent, last use). Stored as one JSON object (the `"meta"` key of a record's
//! JSON, the sqlite `meta` column), sealed like the data when the store seals: addresses and
//! user agents are personal data. Absent, it is the default, so records written before read fine.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Result, StoreError};

/// The longest user agent a record keeps, in bytes.
pub const USER_AGENT_MAX: usize = 256;

/// A session's metadata. Cloning it never allocates (the user agent is shared).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// `X-Session-Remember`, in milliseconds (capped by `session.remember_max`); 0: not
    /// remembered, the configured lifetime applies.
    #[serde(skip_serializing_if = "is_zero")]
    pub remember: u64,
    /// The client sent the cookie back at least once (until then `session.first_lifetime`
    /// bounds the session).
    #[serde(skip_serializing_if = "is_false")]
    pub returned: bool,
    /// The last write on the client's behalf (an update or a touch), unix milliseconds.
    #[serde(skip_serializing_if = "is_zero")]
    pub last_seen: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ip: Option<IpAddr>,
    /// The first [`USER_AGENT_MAX`] bytes of the `User-Agent` that created the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Arc<str>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Meta {
    /// Nothing to store: the record's JSON leaves `meta` out.
    pub fn is_empty(&self) -> bool {
        *self == Meta::default()
    }

    /// The JSON object stored for it.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// Reads what [`Meta::to_json`] wrote; unknown keys (a later version's) are ignored.
    pub fn from_json(text: &str) -> Result<Meta> {
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("meta: {e}")))
    }

    /// A `User-Agent` value as a record keeps it: its first [`USER_AGENT_MAX`] bytes (cut at a
    /// character), invalid UTF-8 replaced.
    pub fn user_agent(value: &[u8]) -> Arc<str> {
        let text = String::from_utf8_lossy(&value[..value.len().min(USER_AGENT_MAX + 3)]);
        let mut end = text.len().min(USER_AGENT_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Arc::from(&text[..end])
    }
}

/// The request a write is made for, when a client made it (not the admin, not a socket):
/// what [`Update::apply`](super::Update::apply) and [`Update::create`](super::Update::create)
/// note in [`Meta`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Visit {
    /// The client's address, as the forwarding rules trust it.
    pub ip: Option<IpAddr>,
    /// Its user agent ([`Meta::user_agent`]); read only when the session is created.
    pub user_agent: Option<Arc<str>>,
    /// `X-Session-Remember`: `Some(ms)` (capped) to remember, `Some(0)` back to the defaults.
    pub remember: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_json_round_trip_and_default() {
        assert_eq!(Meta::default().to_json().unwrap(), "{}");
        let m = Meta {
            remember: 1000,
            returned: true,
            last_seen: 5,
            created_ip: Some("192.0.2.1".parse().unwrap()),
            last_ip: Some("2001:db8::1".parse().unwrap()),
            user_agent: Some(Arc::from("curl/8 \"é\"")),
        };
        assert_eq!(Meta::from_json(&m.to_json().unwrap()).unwrap(), m);
        assert_eq!(Meta::from_json(r#"{"later":1}"#).unwrap(), Meta::default());
        assert!(Meta::from_json("1").is_err());
    }

    #[test]
    fn a_user_agent_is_cut_at_256_bytes_on_a_character() {
        let long = "é".repeat(200);
        let kept = Meta::user_agent(long.as_bytes());
        assert_eq!(kept.len(), 256);
        assert_eq!(&*Meta::user_agent(b"Mozilla/5.0"), "Mozilla/5.0");
        let odd = Meta::user_agent(&[b'a'; 300]);
        assert_eq!(odd.len(), 256);
    }
}
