//! `[assertion]`: the signed assertion of the session sent to the app (`X-Session-Assertion`);
//! off unless `key_file` is set. Only the values are checked here: the key file is read (or
//! created) at start, where the signer is built (`assertion.rs`).

use std::path::PathBuf;
use std::time::Duration;

use http::uri::Authority;

use super::ConfigError;
use super::origin::Origin;
use super::raw::RawAssertion;

/// The default `issuer`.
pub const DEFAULT_ISSUER: &str = "session-proxy";
/// The longest `ttl`: a token can be replayed for as long as it lives.
const MAX_TTL: Duration = Duration::from_secs(3600);

/// `[assertion]`: how the assertion is signed and what it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionConfig {
    /// An Ed25519 private key, PKCS#8 PEM; created (mode 0600) with a fresh key if missing,
    /// read again on SIGHUP.
    pub key_file: PathBuf,
    /// The `aud` claim: by default the upstream URL (`http://host:port`).
    pub audience: String,
    /// The `iss` claim.
    pub issuer: String,
    /// `exp` = `iat` + this; a replaced key stays in the key set this long.
    pub ttl: Duration,
}

/// `[assertion]`: off without `key_file`; the other keys are refused without it.
pub(super) fn assertion(
    at: &Origin,
    a: RawAssertion,
    upstream: &Authority,
) -> Result<Option<AssertionConfig>, ConfigError> {
    let Some(key_file) = a.key_file else {
        for (key, set) in [
            ("assertion.audience", a.audience.is_some()),
            ("assertion.issuer", a.issuer.is_some()),
            ("assertion.ttl", a.ttl.is_some()),
        ] {
            if set {
                return Err(at.bad(key, "has no effect without assertion.key_file"));
            }
        }
        return Ok(None);
    };
    if key_file.as_os_str().is_empty() {
        return Err(at.bad("assertion.key_file", "must not be empty"));
    }
    let text = |key: &'static str, value: Option<String>, default: String| {
        let value = value.unwrap_or(default);
        if value.is_empty() {
            return Err(at.bad(key, "must not be empty"));
        }
        Ok(value)
    };
    let audience = text(
        "assertion.audience",
        a.audience,
        format!("http://{upstream}"),
    )?;
    let issuer = text("assertion.issuer", a.issuer, DEFAULT_ISSUER.to_owned())?;
    let ttl = at.duration("assertion.ttl", &a.ttl, Duration::from_secs(60))?;
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        return Err(at.bad(
            "assertion.ttl",
            "must be between 1s and 1h (the claims count whole seconds; a token can be replayed while it lives)",
        ));
    }
    Ok(Some(AssertionConfig {
        key_file,
        audience,
        issuer,
        ttl,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::validate::check;
    use super::*;

    #[test]
    fn off_without_key_file_and_defaults_with_it() {
        assert_eq!(check("").unwrap().assertion, None);
        let c = check("upstream = \"http://127.0.0.1:9000\"\n[assertion]\nkey_file = \"k.pem\"")
            .unwrap()
            .assertion
            .unwrap();
        assert_eq!(c.key_file, PathBuf::from("k.pem"));
        assert_eq!(c.audience, "http://127.0.0.1:9000");
        assert_eq!(c.issuer, "session-proxy");
        assert_eq!(c.ttl, Duration::from_secs(60));
        let c = check(
            "[assertion]\nkey_file = \"k.pem\"\naudience = \"app\"\nissuer = \"edge\"\nttl = \"5m\"",
        )
        .unwrap()
        .assertion
        .unwrap();
        assert_eq!(
            (c.audience.as_str(), c.issuer.as_str(), c.ttl),
            ("app", "edge", Duration::from_secs(300))
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (toml, key) in [
            ("[assertion]\nttl = \"5s\"", "`assertion.ttl`"),
            ("[assertion]\naudience = \"x\"", "`assertion.audience`"),
            ("[assertion]\nissuer = \"x\"", "`assertion.issuer`"),
            ("[assertion]\nkey_file = \"\"", "`assertion.key_file`"),
            (
                "[assertion]\nkey_file = \"k\"\nttl = \"0s\"",
                "`assertion.ttl`",
            ),
            (
                "[assertion]\nkey_file = \"k\"\nttl = \"2h\"",
                "`assertion.ttl`",
            ),
            (
                "[assertion]\nkey_file = \"k\"\nissuer = \"\"",
                "`assertion.issuer`",
            ),
            ("[assertion]\nkey_file = \"k\"\nbogus = 1", "unknown field"),
        ] {
            let e = check(toml).unwrap_err();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }
}
