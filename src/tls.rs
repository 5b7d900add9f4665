//! TLS termination (`[tls]`): the certificate chain and key read from PEM files, the rustls
//! server config (ring, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`), and [`Certs::reload`], which
//! `reload.rs` calls on SIGHUP. A leaf: it imports nothing of the crate.
//!
//! The certificate in use sits in an [`ArcSwap`] that the resolver reads on every handshake. A
//! reload swaps it: new handshakes get the new certificate, connections already established
//! carry on (a TLS connection never looks at the certificate again after its handshake). A
//! reload that fails keeps the old one, so a half-copied file never takes the listener down.
//!
//! Nothing here is on the request path: the handshake runs in the connection's own task, under
//! the accept loop's handshake deadline (`downstream/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The protocols offered in ALPN, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate or key could not be used. Always the operator's: each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        which: Which,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a PEM file: {message}", path.display())]
    Pem {
        which: Which,
        path: PathBuf,
        message: String,
    },
    #[error("{}: no certificate in the file (expected PEM `BEGIN CERTIFICATE` blocks: the server's certificate first, then its chain)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key in the file (expected one PEM `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` block)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: the private key cannot be used: {message}", path.display())]
    BadKey { path: PathBuf, message: String },
    #[error("{}: the private key does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: {message}", cert.display())]
    Config { cert: PathBuf, message: String },
}

/// Which of the two files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

impl TlsError {
    /// The config key of the file at fault, for the config error that reports this.
    pub fn key(&self) -> &'static str {
        let which = match self {
            TlsError::Read { which, .. } | TlsError::Pem { which, .. } => *which,
            TlsError::NoCertificate { .. } | TlsError::Config { .. } => Which::Cert,
            TlsError::NoKey { .. } | TlsError::BadKey { .. } | TlsError::Mismatch { .. } => {
                Which::Key
            }
        };
        match which {
            Which::Cert => "tls.cert",
            Which::Key => "tls.key",
        }
    }
}

/// The one crypto provider: the server's config names it instead of relying on a process-wide
/// default, which another crate (redis-rs's rediss://) may install or expect.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the chain and the key, and checks that the key belongs to the chain's first
/// certificate (a mismatch would fail every handshake, long after start).
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |which, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            which,
            path: path.to_owned(),
            source,
        })
    };
    let pem_error = |which, path: &Path, e: pem::Error| TlsError::Pem {
        which,
        path: path.to_owned(),
        message: e.to_string(),
    };
    let cert_pem = read(Which::Cert, cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(Which::Cert, cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_pem = read(Which::Key, key)?;
    let private = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key.to_owned(),
            });
        }
        Err(e) => return Err(pem_error(Which::Key, key, e)),
    };
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::BadKey {
            path: key.to_owned(),
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // ring's keys all know their public half; a key that cannot say is not refused.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })
        }
        Err(e) => Err(TlsError::Config {
            cert: cert.to_owned(),
            message: format!("the first certificate cannot be parsed: {e}"),
        }),
    }
}

/// The certificate the listener presents, and the files it was read from (and is re-read from
/// on SIGHUP).
pub struct Certs {
    /// The certificate chain's file and the key's, which a reload may point elsewhere.
    files: ArcSwap<(PathBuf, PathBuf)>,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for Certs {
    /// The paths only: the key's material stays out of every log and `Debug` dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files = self.files.load();
        f.debug_struct("Certs")
            .field("cert", &files.0)
            .field("key", &files.1)
            .finish_non_exhaustive()
    }
}

impl Certs {
    /// Reads and checks both files now, so a bad one stops the start (exit 2), not a handshake.
    pub fn open(cert: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
        let current = ArcSwap::from_pointee(load(&cert, &key)?);
        Ok(Certs {
            files: ArcSwap::from_pointee((cert, key)),
            current,
        })
    }

    /// Re-reads both files; the new certificate serves every handshake from now on. On an
    /// error the one in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let files = self.files.load();
        let fresh = load(&files.0, &files.1)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }

    /// Serves `other`'s certificate from now on, and reads `other`'s files on the next reload
    /// (a reloaded configuration's `[tls]`, opened and checked when it was validated).
    pub fn adopt(&self, other: &Certs) {
        self.files.store(other.files.load_full());
        self.current.store(other.current.load_full());
    }

    pub fn cert_path(&self) -> PathBuf {
        self.files.load().0.clone()
    }

    pub fn key_path(&self) -> PathBuf {
        self.files.load().1.clone()
    }

    /// The rustls config of the listener: these certificates, ALPN `h2` then `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config {
                cert: self.cert_path(),
                message: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Whether the client and the server agreed on HTTP/2 in ALPN (anything else is HTTP/1.1).
pub fn chose_h2(conn: &rustls::ServerConnection) -> bool {
    conn.alpn_protocol() == Some(ALPN[0])
}
