//! The cookie keys in use, and their replacement while serving (SIGHUP).
//!
//! [`KeyRing`] holds the current [`KeySet`] behind a lock that a request holds only to clone an
//! `Arc`, so a reload swaps the whole set at once: a request verifies and signs with one set,
//! old or new, never a mix. A reload re-runs the same load as the start ([`Options::load`]: the
//! config file, then the flags), so a new set gets exactly the checks the first one got; a set
//! that fails them is refused and the old one stays. A reload never turns signing on or off:
//! either would end every session at once (unsigned ids no longer verify) or accept unsigned ids
//! (a downgrade no one should get by a typo), so both take a restart.
//!
//! What this module must not do: log or `Debug`-print a secret or a key, or touch anything but
//! the cookie keys (other settings in a re-read file are ignored until a restart).

use std::sync::{Arc, PoisonError, RwLock};

use cookie::{Cookie, CookieJar, Key};
use prometheus_client::metrics::counter::Counter;

use crate::config::cli::Options;
use crate::config::{ConfigError, CookieConfig};
use crate::metrics::CookieMetrics;

/// One key and the counter of cookies it verified.
struct Slot {
    key: Key,
    verified: Counter,
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

    /// The value of the cookie `name` signed with one of the keys, and the index of the first
    /// key that verifies it (not counted: see [`count`](Self::count)).
    pub fn verify(&self, name: &str, value: &str) -> Option<(String, usize)> {
        let jar = CookieJar::new();
        self.slots.iter().enumerate().find_map(|(i, slot)| {
            let cookie = Cookie::new(name.to_owned(), value.to_owned());
            jar.signed(&slot.key)
                .verify(cookie)
                .map(|plain| (plain.value().to_owned(), i))
        })
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

/// Why a reload left the keys as they were.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The operator's: the config file, the secrets file or a flag is refused, with the reason.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The operator's: a reload may change the keys, not whether there are any.
    #[error(
        "cookie signing is {now} and the new configuration would turn it {wanted}: that takes a restart"
    )]
    SigningToggled {
        now: &'static str,
        wanted: &'static str,
    },
    /// Ours: the task that read the files did not finish.
    #[error("the reload did not finish: {0}")]
    Aborted(#[source] tokio::task::JoinError),
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
    pub fn replace(&self, keys: Vec<Key>) -> Result<usize, ReloadError> {
        let signed = self.current().is_signed();
        if signed == keys.is_empty() {
            let word = |on: bool| if on { "on" } else { "off" };
            return Err(ReloadError::SigningToggled {
                now: word(signed),
                wanted: word(!signed),
            });
        }
        let n = keys.len();
        let set = Arc::new(Self::set(keys, &self.metrics));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = set;
        Ok(n)
    }

    /// Reads the configuration again as the start did (`options`: the same file and flags) and
    /// puts its cookie keys in use. The files are read on the blocking pool.
    pub async fn reload(&self, options: Arc<Options>) -> Result<usize, ReloadError> {
        let config = tokio::task::spawn_blocking(move || options.load())
            .await
            .map_err(ReloadError::Aborted)??;
        warn_if_world_readable(&config.cookie);
        self.replace(config.cookie.keys)
    }
}

/// Reloads the cookie keys on every SIGHUP that `hangup` receives, until the process exits.
/// The caller registers `hangup` before it serves, so a SIGHUP is never the signal's default
/// action (which ends the process). A refused reload is logged at `error`, with the reason,
/// and the keys in use stay.
pub async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    options: Options,
    ring: Arc<KeyRing>,
) {
    let options = Arc::new(options);
    while hangup.recv().await.is_some() {
        match ring.reload(options.clone()).await {
            Ok(keys) => {
                ring.metrics.reload(true);
                tracing::info!(keys, "SIGHUP: cookie keys reloaded");
            }
            Err(ReloadError::Config(ConfigError::Parse { file, .. })) => {
                // toml's message quotes the line it stopped at, which may hold a secret.
                ring.metrics.reload(false);
                tracing::error!(
                    %file,
                    "SIGHUP: the config file is not valid TOML (`session-proxy check` shows where); the cookie keys in use are kept"
                );
            }
            Err(error) => {
                ring.metrics.reload(false);
                tracing::error!(%error, "SIGHUP: cookie keys not reloaded; the keys in use are kept");
            }
        }
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
