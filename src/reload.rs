//! What a running proxy re-reads on SIGHUP: the cookie keys, the store's encryption keys, the
//! TLS certificate and the assertion key. Every other setting takes a restart.
//!
//! Both listeners are registered by `main.rs` before the proxy announces its port, so a SIGHUP is
//! never the signal's default action (which ends the process). A reload that fails is logged at
//! `error` with its reason and leaves what is in use as it was: a half-written file never takes
//! the listener or the sessions down.

use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::assertion::Signer;
use crate::config::ConfigError;
use crate::config::cli::Options;
use crate::secrets::{
    KeyRing, SigningToggled, warn_if_store_keys_world_readable, warn_if_world_readable,
};
use crate::store::Sealer;
use crate::store::seal::KeyError;
use crate::tls::Certs;

/// Why a reload left the cookie keys as they were.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The operator's: the config file, the secrets file or a flag is refused, with the reason.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The operator's: a reload may change the keys, not whether there are any.
    #[error(transparent)]
    SigningToggled(#[from] SigningToggled),
    /// The operator's (a reload may not turn encryption on or off), or ours.
    #[error(transparent)]
    StoreKeys(#[from] KeyError),
    /// Ours: the task that read the files did not finish.
    #[error("the reload did not finish: {0}")]
    Aborted(#[source] tokio::task::JoinError),
}

/// Reads the configuration again as the start did (`options`: the same file and flags, so a new
/// set of keys gets exactly the checks the first one got) and puts its cookie keys in use. The
/// files are read on the blocking pool. Returns how many keys are in use now.
pub async fn cookie_keys(ring: &KeyRing, options: Arc<Options>) -> Result<usize, ReloadError> {
    let config = tokio::task::spawn_blocking(move || options.load())
        .await
        .map_err(ReloadError::Aborted)??;
    warn_if_world_readable(&config.cookie);
    Ok(ring.replace(config.cookie.keys)?)
}

/// Reloads the cookie keys on every SIGHUP that `hangup` receives, until the process exits.
pub async fn cookie_keys_on_hangup(mut hangup: Signal, options: Options, ring: Arc<KeyRing>) {
    let options = Arc::new(options);
    while hangup.recv().await.is_some() {
        match cookie_keys(&ring, options.clone()).await {
            Ok(keys) => {
                ring.count_reload(true);
                tracing::info!(keys, "SIGHUP: cookie keys reloaded");
            }
            Err(ReloadError::Config(ConfigError::Parse { file, .. })) => {
                // toml's message quotes the line it stopped at, which may hold a secret.
                ring.count_reload(false);
                tracing::error!(
                    %file,
                    "SIGHUP: the config file is not valid TOML (`session-proxy check` shows where); the cookie keys in use are kept"
                );
            }
            Err(error) => {
                ring.count_reload(false);
                tracing::error!(%error, "SIGHUP: cookie keys not reloaded; the keys in use are kept");
            }
        }
    }
}

/// Reads the configuration again as the start did and puts its store encryption keys in use
/// (`store.encryption_key` or `encryption_key_file`, or the flag or variable): the first seals
/// from now on, every one opens. Returns how many keys are in use now.
pub async fn store_keys(sealer: &Sealer, options: Arc<Options>) -> Result<usize, ReloadError> {
    let config = tokio::task::spawn_blocking(move || options.load())
        .await
        .map_err(ReloadError::Aborted)??;
    warn_if_store_keys_world_readable(&config.store);
    let secrets: Vec<&[u8]> = config
        .store
        .encryption_keys
        .iter()
        .map(|s| s.as_str().as_bytes())
        .collect();
    Ok(sealer.replace(&secrets)?)
}

/// Reloads the store's encryption keys on every SIGHUP, for as long as the runtime runs. A
/// reload that fails (a bad file, or one that would turn encryption on or off) is logged and
/// the keys in use kept.
pub fn store_keys_on_hangup(options: Options, sealer: Sealer) -> std::io::Result<()> {
    let mut hangups = signal(SignalKind::hangup())?;
    let options = Arc::new(options);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match store_keys(&sealer, options.clone()).await {
                Ok(0) => tracing::debug!("SIGHUP: the store is not encrypted"),
                Ok(keys) => tracing::info!(
                    keys,
                    kid = sealer.sealing_kid().unwrap_or_default(),
                    "SIGHUP: store encryption keys reloaded"
                ),
                Err(ReloadError::Config(ConfigError::Parse { file, .. })) => tracing::error!(
                    %file,
                    "SIGHUP: the config file is not valid TOML (`session-proxy check` shows where); the store keys in use are kept"
                ),
                Err(error) => tracing::error!(
                    %error,
                    "SIGHUP: store encryption keys not reloaded; the keys in use are kept"
                ),
            }
        }
    });
    Ok(())
}

/// Reloads `certs` on every SIGHUP, for as long as the runtime runs: new handshakes get the new
/// certificate, connections already established keep theirs.
pub fn certificate_on_hangup(certs: Arc<Certs>) -> std::io::Result<()> {
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let reloading = certs.clone();
            let (cert, key) = (certs.cert_path().display(), certs.key_path().display());
            match tokio::task::spawn_blocking(move || reloading.reload()).await {
                Ok(Ok(())) => {
                    tracing::info!(%cert, %key, "tls: SIGHUP: certificate and key reloaded")
                }
                Ok(Err(error)) => tracing::error!(
                    %error,
                    "tls: SIGHUP: reload failed; still serving the previous certificate"
                ),
                Err(error) => tracing::error!(
                    %error,
                    "tls: SIGHUP: reload failed; still serving the previous certificate"
                ),
            }
        }
    });
    Ok(())
}

/// Reads the assertion key file again on every SIGHUP, for as long as the runtime runs: a new key
/// signs from then on, and the replaced public key stays in the JWKS for `ttl`. A key file that
/// cannot be used is logged and the key in use kept.
pub fn assertion_key_on_hangup(signer: Arc<Signer>) -> std::io::Result<()> {
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let reloading = signer.clone();
            match tokio::task::spawn_blocking(move || reloading.reload()).await {
                Ok(Ok(true)) => {
                    tracing::info!(kid = %signer.kid(), "assertion: SIGHUP: new key in use")
                }
                Ok(Ok(false)) => tracing::debug!("assertion: SIGHUP: the key is unchanged"),
                Ok(Err(error)) => tracing::error!(
                    %error,
                    "assertion: SIGHUP: key not reloaded; the key in use is kept"
                ),
                Err(error) => tracing::error!(
                    %error,
                    "assertion: SIGHUP: key not reloaded; the key in use is kept"
                ),
            }
        }
    });
    Ok(())
}
