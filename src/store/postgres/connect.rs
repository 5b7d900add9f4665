//! Where the database is and how to reach it: `store.url` read as libpq reads a URL (with
//! `PGUSER`, `PGPASSWORD` and `PGSSLMODE` where the URL is silent), TLS over the tree's rustls
//! (ring, no OpenSSL), and the connection pool.
//!
//! `sslmode` keeps libpq's meanings: `disable` plain; `prefer` (libpq's default) and `require`
//! encrypt without checking the certificate; `verify-ca` checks it against the roots;
//! `verify-full` checks the roots and the host name. The roots are `sslrootcert` (a PEM file)
//! if given, else the Mozilla roots (webpki-roots). tokio-postgres itself knows only the first
//! three, so both parameters are taken out of the URL before it parses the rest.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

use crate::config::PostgresConfig;
use crate::store::{Result, StoreError};

/// libpq's `sslmode`, all five of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tls {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Tls {
    fn parse(text: &str) -> Option<Tls> {
        Some(match text {
            "disable" => Tls::Disable,
            "prefer" => Tls::Prefer,
            "require" => Tls::Require,
            "verify-ca" => Tls::VerifyCa,
            "verify-full" => Tls::VerifyFull,
            _ => return None,
        })
    }

    fn mode(self) -> SslMode {
        match self {
            Tls::Disable => SslMode::Disable,
            Tls::Prefer => SslMode::Prefer,
            Tls::Require | Tls::VerifyCa | Tls::VerifyFull => SslMode::Require,
        }
    }
}

/// A connection failure, naming the server (never the password).
#[derive(Debug, thiserror::Error)]
#[error("postgres at {shown}: {doing}: {source}")]
pub(super) struct ConnectError {
    shown: String,
    doing: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn fail(
    shown: &str,
    doing: &'static str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    StoreError::Backend(Box::new(ConnectError {
        shown: shown.to_owned(),
        doing,
        source: source.into(),
    }))
}

/// `url` with its password replaced by `***`, for messages.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(a URL that does not parse)".to_owned();
    };
    let (auth, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match auth.rsplit_once('@') {
        Some((userinfo, host)) => {
            let tail = tail.split_once('?').map_or(tail, |(t, _)| t);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
                None => format!("{scheme}://{userinfo}@{host}{tail}"),
            }
        }
        None => {
            let tail = tail.split_once('?').map_or(tail, |(t, _)| t);
            format!("{scheme}://{auth}{tail}")
        }
    }
}

/// What the URL and the environment say, read into tokio-postgres's config.
pub(super) struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
    pub root_cert: Option<String>,
    /// The URL, password hidden, for every message.
    pub shown: String,
}

/// Reads `url`; `env` is the environment (a parameter so tests need not set the process's).
pub(super) fn target(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<Target> {
    let shown = redact(url);
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut tls, mut root_cert) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => {
                tls = Some(Tls::parse(v).ok_or_else(|| {
                    fail(
                        &shown,
                        "reading sslmode",
                        format!(
                            "{v:?} is not one of disable, prefer, require, verify-ca, verify-full"
                        ),
                    )
                })?);
            }
            Some(("sslrootcert", v)) => root_cert = Some(v.to_owned()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| fail(&shown, "reading store.url", e))?;
    if config.get_user().is_none()
        && let Some(user) = env("PGUSER")
    {
        config.user(user);
    }
    if config.get_password().is_none()
        && let Some(password) = env("PGPASSWORD")
    {
        config.password(password);
    }
    let tls = match tls {
        Some(tls) => tls,
        None => match env("PGSSLMODE") {
            Some(v) => Tls::parse(&v).ok_or_else(|| {
                fail(
                    &shown,
                    "reading PGSSLMODE",
                    format!("{v:?} is not one of disable, prefer, require, verify-ca, verify-full"),
                )
            })?,
            None => Tls::Prefer,
        },
    };
    config.ssl_mode(tls.mode());
    if config.get_application_name().is_none() {
        config.application_name("session-proxy");
    }
    Ok(Target {
        config,
        tls,
        root_cert: root_cert.or_else(|| env("PGSSLROOTCERT")),
        shown,
    })
}

/// The pool for `target`: at most `pool_size` connections, each made within `timeout`, a
/// caller waiting at most `timeout` for one. A connection the server closed (a restart) is
/// found closed when next taken and replaced: the pool reconnects by itself.
pub(super) fn pool(target: Target, config: &PostgresConfig) -> Result<Pool> {
    let Target {
        config: mut pg,
        tls,
        root_cert,
        shown,
    } = target;
    pg.connect_timeout(config.timeout);
    pg.keepalives_idle(Duration::from_secs(30));
    let manager = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls {
        Tls::Disable => Manager::from_config(pg, tokio_postgres::NoTls, manager),
        _ => {
            let client = client_config(tls, root_cert.as_deref(), &shown)?;
            let connect = tokio_postgres_rustls::MakeRustlsConnect::new(client);
            Manager::from_config(pg, connect, manager)
        }
    };
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.timeout))
        .create_timeout(Some(config.timeout))
        .recycle_timeout(Some(config.timeout))
        .build()
        .map_err(|e| fail(&shown, "building the connection pool", e))
}

fn client_config(tls: Tls, root_cert: Option<&str>, shown: &str) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(shown, "setting up TLS", e))?;
    let verifier: Arc<dyn ServerCertVerifier> = match tls {
        Tls::Prefer | Tls::Require | Tls::Disable => Arc::new(Lenient {
            provider,
            chain: None,
        }),
        Tls::VerifyCa | Tls::VerifyFull => {
            let roots = roots(root_cert, shown)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| fail(shown, "setting up TLS", e))?;
            if tls == Tls::VerifyFull {
                webpki
            } else {
                Arc::new(Lenient {
                    provider,
                    chain: Some(webpki),
                })
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn roots(root_cert: Option<&str>, shown: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(shown, "reading sslrootcert", e))?
            {
                let cert = cert.map_err(|e| fail(shown, "reading sslrootcert", e))?;
                roots
                    .add(cert)
                    .map_err(|e| fail(shown, "reading sslrootcert", e))?;
            }
        }
    }
    Ok(roots)
}

/// `prefer` and `require` (no `chain`): encrypted, the certificate taken as it comes (libpq's
/// meaning; use `verify-full` against an active attacker). `verify-ca`: the chain must lead to
/// a root, the name in the certificate is not compared. Handshake signatures are checked
/// either way.
#[derive(Debug)]
struct Lenient {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x?sslmode=require"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact("postgres://u@db/x?a=b"), "postgres://u@db/x");
    }

    #[test]
    fn the_environment_fills_what_the_url_leaves_out() {
        let env = |k: &str| match k {
            "PGPASSWORD" => Some("pw".to_owned()),
            "PGSSLMODE" => Some("verify-full".to_owned()),
            "PGUSER" => Some("me".to_owned()),
            _ => None,
        };
        let t = target("postgres://db:5432/x", env).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(t.config.get_user(), Some("me"));
        assert_eq!(t.tls, Tls::VerifyFull);
        let t = target("postgres://u:url@db/x?sslmode=disable", env).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"url"[..]));
        assert_eq!(t.config.get_user(), Some("u"));
        assert_eq!(t.tls, Tls::Disable);
        let err = target("postgres://u:pw@db/x?sslmode=maybe", |_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("sslmode") && !err.contains("pw@"), "{err}");
    }
}
