//! `[cookie]`: the session cookie's name and attributes, and its signing keys, derived once from
//! `cookie.secret` or `cookie.secret_file`. A secret is checked here (its length, a repeat) and
//! never kept or shown: an error names it by its position or its line.

use std::path::PathBuf;
use std::time::Duration;

use cookie::{Key, SameSite};
use time::OffsetDateTime;

use super::ConfigError;
use super::origin::Origin;
use super::raw::RawCookie;

#[derive(Clone)]
pub struct CookieConfig {
    pub name: String,
    pub max_age: Option<Duration>,
    pub expires: Option<OffsetDateTime>,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    /// The signing keys (HMAC-SHA256), in the configured order: the first signs, every one
    /// verifies; empty, cookies are not signed. As loaded at start: the keys in use, which a
    /// SIGHUP may replace, are the `SessionCookie`' `KeyRing`'s. Derived here, from secrets checked to be long
    /// enough, so the cookie code has no weak or missing key to fall back from.
    pub keys: Vec<::cookie::Key>,
    /// Where the secrets were read from (`cookie.secret_file`), if from a file: its mode is
    /// checked (world-readable is warned about) at start and on each reload.
    pub secret_file: Option<PathBuf>,
}

impl std::fmt::Debug for CookieConfig {
    /// Says whether cookies are signed, never with what.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new field cannot be left out of the output by accident.
        let CookieConfig {
            name,
            max_age,
            expires,
            path,
            domain,
            secure,
            http_only,
            same_site,
            keys,
            secret_file,
        } = self;
        f.debug_struct("CookieConfig")
            .field("name", name)
            .field("max_age", max_age)
            .field("expires", expires)
            .field("path", path)
            .field("domain", domain)
            .field("secure", secure)
            .field("http_only", http_only)
            .field("same_site", same_site)
            .field("signed", &!keys.is_empty())
            .field("keys", &keys.len())
            .field("secret_file", secret_file)
            .finish()
    }
}

pub(super) fn cookie(at: &Origin, c: RawCookie) -> Result<CookieConfig, ConfigError> {
    let name = c.name.unwrap_or_else(|| "session_id".to_owned());
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(at.bad(
            "cookie.name",
            format!("{name:?} is not a valid cookie name"),
        ));
    }
    let max_age = at.optional_duration("cookie.max_age", &c.max_age)?;
    let expires = c
        .expires
        .as_deref()
        .map(|t| {
            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).map_err(|e| {
                at.bad(
                    "cookie.expires",
                    format!("{t:?} is not an RFC 3339 date-time: {e}"),
                )
            })
        })
        .transpose()?;
    let path = c.path.unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') || path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
        return Err(at.bad(
            "cookie.path",
            format!("{path:?} must start with / and contain no ; or control characters"),
        ));
    }
    if let Some(d) = &c.domain
        && (d.is_empty()
            || d.bytes()
                .any(|b| b == b';' || b.is_ascii_whitespace() || b.is_ascii_control()))
    {
        return Err(at.bad("cookie.domain", format!("{d:?} is not a domain")));
    }
    let secure = c.secure.unwrap_or(false);
    let same_site = match c
        .same_site
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("lax") => SameSite::Lax,
        Some("strict") => SameSite::Strict,
        Some("none") => SameSite::None,
        Some(other) => {
            return Err(at.bad(
                "cookie.same_site",
                format!("{other:?} is not one of \"lax\", \"strict\", \"none\""),
            ));
        }
    };
    if same_site == SameSite::None && !secure {
        return Err(at.bad(
            "cookie.same_site",
            "\"none\" requires cookie.secure = true (browsers drop SameSite=None cookies that are not Secure)",
        ));
    }
    let keys = cookie_keys(at, c.secret, c.secret_file.as_deref())?;
    Ok(CookieConfig {
        name,
        max_age,
        expires,
        path,
        domain: c.domain,
        secure,
        http_only: c.http_only.unwrap_or(true),
        same_site,
        keys,
        secret_file: c.secret_file,
    })
}

/// A secret's least length: `Key::derive_from` needs 32 bytes, and checking here, next to the
/// derivation, is the only check.
const MIN_SECRET: usize = 32;

/// The signing keys from `cookie.secret` (one or a list) or `cookie.secret_file` (see
/// [`secrets`]).
fn cookie_keys(
    at: &Origin,
    secret: Option<super::Secrets>,
    file: Option<&std::path::Path>,
) -> Result<Vec<Key>, ConfigError> {
    let secrets = secrets(at, &COOKIE_SECRETS, secret, file)?;
    Ok(secrets
        .iter()
        .map(|text| Key::derive_from(text.as_bytes()))
        .collect())
}

/// The two keys a list of secrets may come from, and what an empty list should say.
pub(super) struct SecretKeys {
    /// The key holding one secret or a list (`cookie.secret`).
    pub list: &'static str,
    /// The key naming a file of secrets (`cookie.secret_file`).
    pub file: &'static str,
    /// The end of the message for an empty list.
    pub none: &'static str,
}

const COOKIE_SECRETS: SecretKeys = SecretKeys {
    list: "cookie.secret",
    file: "cookie.secret_file",
    none: "remove the key to leave cookies unsigned",
};

/// The secrets from `keys.list` (one or a list) or `keys.file` (one secret a line; blank
/// lines and `#` comments skipped; each line trimmed), in order. Each secret is checked (at
/// least [`MIN_SECRET`] bytes, no repeat), and an error says which one (by position, or by
/// line) without showing it.
pub(super) fn secrets(
    at: &Origin,
    keys: &SecretKeys,
    secret: Option<super::Secrets>,
    file: Option<&std::path::Path>,
) -> Result<Vec<String>, ConfigError> {
    let (key, secrets): (&'static str, Vec<(String, String)>) = match (secret, file) {
        (None, None) => return Ok(Vec::new()),
        (Some(_), Some(_)) => {
            return Err(at.bad(
                keys.file,
                format!("give either {} or {}, not both", keys.list, keys.file),
            ));
        }
        (Some(secrets), None) => {
            let list = matches!(secrets, super::Secrets::Many(_));
            let secrets = secrets.into_vec();
            let n = secrets.len();
            let named = secrets.into_iter().enumerate().map(|(i, s)| {
                let name = if list {
                    format!("secret {i} (of {n}, counting from 0)")
                } else {
                    "the secret".to_owned()
                };
                (name, s.as_str().to_owned())
            });
            (keys.list, named.collect())
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| at.bad(keys.file, format!("cannot read {}: {e}", path.display())))?;
            let named = text.lines().enumerate().filter_map(|(i, line)| {
                let line = line.trim();
                (!line.is_empty() && !line.starts_with('#')).then(|| {
                    (
                        format!("{} line {}", path.display(), i + 1),
                        line.to_owned(),
                    )
                })
            });
            (keys.file, named.collect())
        }
    };
    if secrets.is_empty() {
        let why = match file {
            Some(path) => format!("{} holds no secret", path.display()),
            None => format!(
                "the list is empty: give at least one secret, or {}",
                keys.none
            ),
        };
        return Err(at.bad(key, why));
    }
    for (i, (name, text)) in secrets.iter().enumerate() {
        if text.len() < MIN_SECRET {
            return Err(at.bad(
                key,
                format!(
                    "{name}: must be at least {MIN_SECRET} bytes of random text, got {}",
                    text.len()
                ),
            ));
        }
        if let Some((first, _)) = secrets[..i].iter().find(|(_, t)| t == text) {
            // A repeat would make the per-key metric say an old key is still in use.
            return Err(at.bad(key, format!("{name} repeats {first}")));
        }
    }
    Ok(secrets.into_iter().map(|(_, text)| text).collect())
}

/// RFC 6265 cookie-name is an RFC 2616 token.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;
    use crate::config::validate::check;

    /// The secret signs every cookie: logging a config must not leak it.
    #[test]
    fn the_cookie_secret_never_shows_in_debug_output() {
        let secret = "0123456789abcdef0123456789abcdef-secret";
        let old = "0123456789abcdef0123456789abcdef-old";
        let text = format!("[cookie]\nsecret = [\"{secret}\", \"{old}\"]");
        let raw = RawConfig::from_toml("t.toml", &text).unwrap();
        let shown = format!("{raw:?}");
        assert!(!shown.contains(secret) && !shown.contains(old), "{shown}");
        let config = raw.validate("t.toml").unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains(secret) && !shown.contains(old), "{shown}");
        assert!(shown.contains("signed: true, keys: 2"), "{shown}");
        assert!(format!("{:?}", check("").unwrap()).contains("signed: false"));
    }

    /// A list of secrets and a secrets file give the same keys, in order; every bad secret
    /// is named by its position (or line) and key, never shown.
    #[test]
    fn cookie_secrets_as_a_list_or_a_file() {
        let (a, b) = ("a".repeat(32), "b".repeat(40));
        let c = check(&format!("[cookie]\nsecret = [\"{a}\", \"{b}\"]")).unwrap();
        let want = [
            Key::derive_from(a.as_bytes()),
            Key::derive_from(b.as_bytes()),
        ];
        assert!(c.cookie.keys == want);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets");
        std::fs::write(&file, format!("# newest first\n{a}\n\n  {b}  \n")).unwrap();
        let text = format!("[cookie]\nsecret_file = \"{}\"", file.display());
        let c = check(&text).unwrap();
        assert!(c.cookie.keys == want);
        assert_eq!(c.cookie.secret_file.as_deref(), Some(file.as_path()));
        assert!(!format!("{c:?}").contains(&a), "{c:?}");

        let short = "s".repeat(31);
        std::fs::write(&file, format!("{a}\n{short}\n")).unwrap();
        let err = check(&text).unwrap_err();
        let where_ = format!("{} line 2", file.display());
        assert_eq!(
            err,
            format!(
                "t.toml: `cookie.secret_file`: {where_}: must be at least 32 bytes of random text, got 31"
            )
        );
        std::fs::write(&file, "# only a comment\n\n").unwrap();
        let err = check(&text).unwrap_err();
        assert_eq!(
            err,
            format!(
                "t.toml: `cookie.secret_file`: {} holds no secret",
                file.display()
            )
        );

        let cases = [
            (
                format!("[cookie]\nsecret = [\"{a}\", \"{short}\"]"),
                "t.toml: `cookie.secret`: secret 1 (of 2, counting from 0): must be at least 32 bytes of random text, got 31".to_owned(),
            ),
            (
                format!("[cookie]\nsecret = \"{short}\""),
                "t.toml: `cookie.secret`: the secret: must be at least 32 bytes of random text, got 31".to_owned(),
            ),
            (
                "[cookie]\nsecret = []".to_owned(),
                "t.toml: `cookie.secret`: the list is empty: give at least one secret, or remove the key to leave cookies unsigned".to_owned(),
            ),
            (
                format!("[cookie]\nsecret = [\"{a}\", \"{b}\", \"{a}\"]"),
                "t.toml: `cookie.secret`: secret 2 (of 3, counting from 0) repeats secret 0 (of 3, counting from 0)".to_owned(),
            ),
            (
                format!("[cookie]\nsecret = \"{a}\"\nsecret_file = \"{}\"", file.display()),
                "t.toml: `cookie.secret_file`: give either cookie.secret or cookie.secret_file, not both".to_owned(),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(check(&text).unwrap_err(), want, "{text}");
        }
        // Not a string nor a list of strings: the key, and no value, in the message.
        let err = check("[cookie]\nsecret = [1]").unwrap_err();
        assert!(
            err.starts_with("t.toml: `cookie.secret`: expected a secret"),
            "{err}"
        );
    }
}
