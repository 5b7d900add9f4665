//! The signed assertion of the session (`[assertion]`): a compact JWS (a JWT, `alg` `EdDSA`)
//! the proxy adds to every request it forwards with a session, so an app can check that the
//! session headers came from the proxy and belong together (Pomerium's
//! `X-Pomerium-Jwt-Assertion`, Cloud IAP's `x-goog-iap-jwt-assertion`).
//!
//! The key is an Ed25519 private key in a PKCS#8 v1 PEM file (`-----BEGIN PRIVATE KEY-----`,
//! what `openssl genpkey -algorithm ed25519` writes and `openssl pkey` reads), created with a
//! fresh key (mode 0600) if missing. [`Signer`] holds the key pair parsed once, its `kid` (the
//! RFC 7638 thumbprint of its public JWK) and its JWS header already encoded, behind an
//! `ArcSwap`: a request loads the set once, and [`Signer::reload`] (SIGHUP) swaps it whole,
//! keeping the replaced public key in the JWKS for `ttl` so tokens already sent still verify.
//!
//! The claims name the session by its handle ([`Handle`]), never by its id, and
//! bind the data: `sdh` is the SHA-256 of the exact `X-Session` value the app receives.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
};
use rand::TryRngCore as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::config::AssertionConfig;
use crate::session::{Handle, ms, now_ms};

/// The DER of a PKCS#8 v1 Ed25519 private key (RFC 8410 §7) up to its 32-byte seed:
/// `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }`.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why the key file could not be used. The key in use (if any) stays.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("assertion.key_file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("assertion.key_file {path}: cannot create: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "assertion.key_file {path}: not an Ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519` makes one): {reason}"
    )]
    Invalid { path: PathBuf, reason: String },
}

/// What an assertion says, besides who signed it. Borrowed from the request: nothing is copied
/// to build it but the handle.
#[derive(Debug, Serialize)]
pub struct Claims<'a> {
    /// The request id (`X-Request-Id`), so a token names the one request it came with.
    pub rid: &'a str,
    /// The session's [`Handle`], never its id.
    pub sid: &'a str,
    /// Whether the session starts with this request.
    pub new: bool,
    /// base64url (no padding) of the SHA-256 of the `X-Session` value sent with it.
    pub sdh: String,
    /// The user (`session.user_key`), when the session names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

impl<'a> Claims<'a> {
    /// The claims of the session `handle` whose `X-Session` value is `session_header`.
    pub fn new(
        rid: &'a str,
        handle: &'a Handle,
        new: bool,
        session_header: &[u8],
        sub: Option<String>,
    ) -> Self {
        Claims {
            rid,
            sid: handle.as_str(),
            new,
            sdh: URL_SAFE_NO_PAD.encode(Sha256::digest(session_header)),
            sub,
        }
    }
}

/// The registered claims and the session's, in the order they are written.
#[derive(Serialize)]
struct Payload<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    #[serde(flatten)]
    claims: &'a Claims<'a>,
}

/// One signing key: the pair parsed once, and what the tokens and the JWKS say about it.
struct SigningKey {
    pair: Ed25519KeyPair,
    /// The JWS header, `{"alg":"EdDSA","typ":"JWT","kid":…}`, base64url, then the `.`.
    header: String,
    jwk: Jwk,
}

impl SigningKey {
    fn from_pkcs8(der: &[u8], path: &Path) -> Result<SigningKey, KeyError> {
        // `maybe_unchecked` reads v1 (the seed only) as well as ring's own v2.
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| KeyError::Invalid {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        // RFC 7638: the SHA-256 of the required members, in lexicographic order, no spaces.
        let thumbprint = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumbprint.as_bytes()));
        let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#);
        let jwk = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                key_id: Some(kid),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x,
            }),
        };
        Ok(SigningKey {
            pair,
            header: format!("{}.", URL_SAFE_NO_PAD.encode(header)),
            jwk,
        })
    }

    fn kid(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap_or_default()
    }
}

/// The key that signs, and the public keys it replaced, each with the time (ms) it leaves the
/// JWKS.
struct SignerKeys {
    current: SigningKey,
    retired: Vec<(Jwk, u64)>,
}

/// Signs assertions; [`reload`](Self::reload) replaces the key (SIGHUP).
pub struct Signer {
    keys: ArcSwap<SignerKeys>,
    /// `[assertion]`'s file and claims, replaced whole by a reload.
    settings: ArcSwap<Settings>,
}

struct Settings {
    path: PathBuf,
    audience: String,
    issuer: String,
    /// Seconds.
    ttl: u64,
}

impl Settings {
    fn of(config: &AssertionConfig) -> Self {
        Settings {
            path: config.key_file.clone(),
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            ttl: config.ttl.as_secs(),
        }
    }
}

impl Signer {
    /// Reads the key file, or creates it with a fresh key when it does not exist.
    pub fn open(config: &AssertionConfig) -> Result<Signer, KeyError> {
        let current = load_or_create(&config.key_file)?;
        Ok(Signer {
            keys: ArcSwap::from_pointee(SignerKeys {
                current,
                retired: Vec::new(),
            }),
            settings: ArcSwap::from_pointee(Settings::of(config)),
        })
    }

    /// Puts a reload's `[assertion]` in force: its claims for the assertions signed from now
    /// on, and its key file read as [`reload`](Self::reload) reads it (the replaced public key
    /// stays in the JWKS). A key file that cannot be used changes nothing.
    pub fn reconfigure(&self, config: &AssertionConfig) -> Result<bool, KeyError> {
        let old = self.settings.swap(Arc::new(Settings::of(config)));
        self.reload().inspect_err(|_| self.settings.store(old))
    }

    /// The compact JWS of `claims`, issued now: `header.payload.signature`, base64url each.
    pub fn sign(&self, claims: &Claims<'_>) -> http::HeaderValue {
        self.sign_at(claims, now_ms() / 1000)
    }

    fn sign_at(&self, claims: &Claims<'_>, iat: u64) -> http::HeaderValue {
        let keys = self.keys.load();
        let key = &keys.current;
        let settings = self.settings.load();
        let payload = Payload {
            iss: &settings.issuer,
            aud: &settings.audience,
            iat,
            exp: iat.saturating_add(settings.ttl),
            claims,
        };
        // Writing these plain structs of strings, numbers and a bool cannot fail.
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        let mut token = String::with_capacity(key.header.len() + json.len() * 4 / 3 + 90);
        token.push_str(&key.header);
        URL_SAFE_NO_PAD.encode_string(&json, &mut token);
        let signature = key.pair.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        // base64url and dots: always a valid header value.
        http::HeaderValue::try_from(token)
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
    }

    /// The `kid` of the key that signs now.
    pub fn kid(&self) -> String {
        self.keys.load().current.kid().to_owned()
    }

    /// The public keys as a JWKS (RFC 7517): the one that signs, then those it replaced less
    /// than `ttl` ago.
    pub fn jwks(&self) -> String {
        let keys = self.keys.load();
        let now = now_ms();
        let set = JwkSet {
            keys: std::iter::once(keys.current.jwk.clone())
                .chain(
                    keys.retired
                        .iter()
                        .filter(|(_, until)| *until > now)
                        .map(|(jwk, _)| jwk.clone()),
                )
                .collect(),
        };
        serde_json::to_string(&set).unwrap_or_default()
    }

    /// Reads the key file again (creating a fresh key if it is gone) and signs with its key from
    /// now on; the replaced public key stays in the JWKS for `ttl`. Returns whether the key
    /// changed. On an error the key in use stays.
    pub fn reload(&self) -> Result<bool, KeyError> {
        let settings = self.settings.load();
        let key = load_or_create(&settings.path)?;
        let now = now_ms();
        let old = self.keys.load();
        if key.kid() == old.current.kid() {
            return Ok(false);
        }
        let until = now.saturating_add(ms(std::time::Duration::from_secs(settings.ttl)));
        let mut retired: Vec<(Jwk, u64)> = old
            .retired
            .iter()
            .filter(|(jwk, t)| *t > now && jwk.common.key_id.as_deref() != Some(key.kid()))
            .cloned()
            .collect();
        retired.insert(0, (old.current.jwk.clone(), until));
        self.keys.store(Arc::new(SignerKeys {
            current: key,
            retired,
        }));
        Ok(true)
    }
}

/// The key in `path`; a missing file is created first with a fresh key, mode 0600, never
/// overwriting one that appeared meanwhile.
fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path)?,
        Err(source) => {
            return Err(KeyError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| KeyError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    SigningKey::from_pkcs8(der.secret_pkcs8_der(), path)
}

/// Writes a fresh key to `path` as PKCS#8 v1 PEM (mode 0600) and returns the text written; if
/// the file appeared meanwhile, reads that one instead.
fn create(path: &Path) -> Result<Vec<u8>, KeyError> {
    let err = |source| KeyError::Create {
        path: path.to_owned(),
        source,
    };
    let mut der = PKCS8_V1_PREFIX.to_vec();
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
    der.extend_from_slice(&seed);
    // 48 bytes are 64 base64 characters: exactly one PEM line.
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(&der)
    );
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return std::fs::read(path).map_err(|source| KeyError::Read {
                path: path.to_owned(),
                source,
            });
        }
        Err(e) => return Err(err(e)),
    };
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    tracing::info!(path = %path.display(), "assertion: created a new Ed25519 key");
    Ok(pem.into_bytes())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
    use serde_json::Value;

    use super::*;

    fn config(dir: &Path) -> AssertionConfig {
        AssertionConfig {
            key_file: dir.join("assertion.pem"),
            audience: "http://127.0.0.1:9000".into(),
            issuer: "session-proxy".into(),
            ttl: Duration::from_secs(60),
        }
    }

    /// Verifies `token` with jsonwebtoken against `jwks`, as an app would.
    fn verify(token: &str, jwks: &str) -> Result<Value, jsonwebtoken::errors::Error> {
        let set: JwkSet = serde_json::from_str(jwks).unwrap();
        let kid = decode_header(token)?.kid.unwrap();
        let jwk = set
            .find(&kid)
            .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["http://127.0.0.1:9000"]);
        v.set_issuer(&["session-proxy"]);
        Ok(decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &v)?.claims)
    }

    #[test]
    fn a_created_key_is_pkcs8_v1_mode_0600_and_signs_verifiable_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::open(&config(dir.path())).unwrap();
        let path = dir.path().join("assertion.pem");
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let der = PrivatePkcs8KeyDer::from_pem_file(&path).unwrap();
        assert_eq!(der.secret_pkcs8_der().len(), 48);
        assert_eq!(der.secret_pkcs8_der()[..16], PKCS8_V1_PREFIX);

        let id = crate::session::SessionId::generate().unwrap();
        let handle = id.handle();
        let claims = Claims::new("req-1", &handle, true, b"e30", Some("ada".into()));
        let token = signer.sign(&claims);
        let token = token.to_str().unwrap();
        assert!(!token.contains(id.as_str()), "the id never goes in a token");
        let got = verify(token, &signer.jwks()).unwrap();
        assert_eq!(got["sid"], handle.as_str());
        assert_eq!(got["rid"], "req-1");
        assert_eq!(got["new"], true);
        assert_eq!(got["sub"], "ada");
        assert_eq!(got["sdh"], URL_SAFE_NO_PAD.encode(Sha256::digest(b"e30")));
        assert_eq!(
            got["exp"].as_u64().unwrap(),
            got["iat"].as_u64().unwrap() + 60
        );
        assert_eq!(decode_header(token).unwrap().kid.unwrap(), signer.kid());

        // The same file is the same key on the next start.
        let again = Signer::open(&config(dir.path())).unwrap();
        assert_eq!(again.kid(), signer.kid());
        // A tampered payload does not verify.
        let parts: Vec<&str> = token.split('.').collect();
        let other = signer.sign(&Claims::new("req-2", &handle, false, b"e30", None));
        let other_payload = other
            .to_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap()
            .to_owned();
        let forged = format!("{}.{}.{}", parts[0], other_payload, parts[2]);
        assert!(verify(&forged, &signer.jwks()).is_err());
    }

    #[test]
    fn a_reload_signs_with_the_new_key_and_keeps_the_old_one_for_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::open(&config(dir.path())).unwrap();
        let id = Handle::generate().unwrap();
        let before = signer.sign(&Claims::new("r", &id, false, b"e30", None));
        assert!(!signer.reload().unwrap(), "the same file is no change");
        std::fs::remove_file(dir.path().join("assertion.pem")).unwrap();
        let old_kid = signer.kid();
        assert!(signer.reload().unwrap());
        assert_ne!(signer.kid(), old_kid);
        let after = signer.sign(&Claims::new("r", &id, false, b"e30", None));
        let jwks = signer.jwks();
        let set: JwkSet = serde_json::from_str(&jwks).unwrap();
        assert_eq!(set.keys.len(), 2);
        verify(before.to_str().unwrap(), &jwks).unwrap();
        verify(after.to_str().unwrap(), &jwks).unwrap();
        // Once `ttl` has passed, the old key is gone from the set.
        signer.keys.rcu(|set| SignerKeys {
            current: SigningKey::from_pkcs8(
                &{
                    let pem = std::fs::read(dir.path().join("assertion.pem")).unwrap();
                    PrivatePkcs8KeyDer::from_pem_slice(&pem)
                        .unwrap()
                        .secret_pkcs8_der()
                        .to_vec()
                },
                dir.path(),
            )
            .unwrap(),
            retired: set.retired.iter().map(|(j, _)| (j.clone(), 0)).collect(),
        });
        let jwks = signer.jwks();
        assert!(verify(before.to_str().unwrap(), &jwks).is_err());
        verify(after.to_str().unwrap(), &jwks).unwrap();
    }

    #[test]
    fn an_openssl_key_is_read_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("assertion.pem");
        // `openssl genpkey -algorithm ed25519`'s output for a fixed seed (RFC 8032 test 1).
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\n\
             MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n\
             -----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let signer = Signer::open(&config(dir.path())).unwrap();
        let jwks: Value = serde_json::from_str(&signer.jwks()).unwrap();
        // RFC 8032 §7.1 test 1's public key.
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwks["keys"][0]["x"].as_str().unwrap())
                .unwrap(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        assert_eq!(jwks["keys"][0]["kty"], "OKP");
        assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
        assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
        assert_eq!(jwks["keys"][0]["use"], "sig");
        std::fs::write(&path, "not a key").unwrap();
        let e = Signer::open(&config(dir.path())).err().unwrap().to_string();
        assert!(e.contains("not an Ed25519 private key"), "{e}");
        // A reload that fails keeps the key in use.
        assert!(signer.reload().is_err());
        assert!(
            signer
                .jwks()
                .contains(jwks["keys"][0]["x"].as_str().unwrap())
        );
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
