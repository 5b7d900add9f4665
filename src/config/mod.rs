//! Configuration: `proxy.toml` and command-line flags, merged and validated once into [`Config`].
//!
//! Parsing goes low-level first ([`RawConfig`], the file as written, every field optional, unknown
//! keys refused), then flags overwrite raw fields, then [`RawConfig::validate`] turns the result
//! into the typed [`Config`] the rest of the proxy uses. Every error names the file and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cookie::SameSite;
use http::uri::{Authority, Scheme, Uri};
use serde::Deserialize;
use time::OffsetDateTime;

pub mod cli;

/// A config problem, always naming where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: `{key}`: {message}")]
    Invalid {
        file: String,
        key: &'static str,
        message: String,
    },
}

/// A duration as written by a person: `"500ms"`, `"30s"`, `"5m"`, `"24h"`, `"7d"`, or a whole
/// number of seconds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum DurationSpec {
    Seconds(u64),
    Text(String),
}

impl DurationSpec {
    fn parse(&self) -> Result<Duration, String> {
        match self {
            DurationSpec::Seconds(s) => Ok(Duration::from_secs(*s)),
            DurationSpec::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
                format!("{t:?} is not a duration like \"30s\", \"5m\", \"24h\" or \"7d\": {e}")
            }),
        }
    }
}

/// Parses a duration flag or config string (shared by the CLI).
pub fn parse_duration_arg(text: &str) -> Result<DurationSpec, String> {
    let spec = DurationSpec::Text(text.to_owned());
    spec.parse().map(|_| spec)
}

// ----- the file as written -----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub shutdown_timeout: Option<DurationSpec>,
    pub trust_forwarded_headers: Option<bool>,
    #[serde(default)]
    pub cookie: RawCookie,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub upstream_timeouts: RawTimeouts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCookie {
    pub name: Option<String>,
    pub max_age: Option<DurationSpec>,
    pub expires: Option<String>,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub secure: Option<bool>,
    pub http_only: Option<bool>,
    pub same_site: Option<String>,
    pub secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    pub header_prefix: Option<String>,
    pub renew_missing: Option<bool>,
    pub max_size: Option<u64>,
    pub idle_timeout: Option<DurationSpec>,
    pub absolute_timeout: Option<DurationSpec>,
    pub touch_interval: Option<DurationSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<String>,
    pub timeout: Option<DurationSpec>,
    pub sweep_interval: Option<DurationSpec>,
    // fs
    pub path: Option<PathBuf>,
    pub filename_template: Option<String>,
    pub mode: Option<u32>,
    pub fsync: Option<bool>,
    // redis
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    pub cluster: Option<bool>,
    pub nodes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<DurationSpec>,
    pub response: Option<DurationSpec>,
}

// ----- the validated form -----

/// The validated configuration. Nothing downstream re-checks these values.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Scheme and authority of the upstream (always `http`).
    pub upstream: Authority,
    pub shutdown_timeout: Duration,
    /// Keep a front proxy's `X-Forwarded-Proto`/`-Host` instead of overwriting them.
    pub trust_forwarded_headers: bool,
    pub cookie: CookieConfig,
    pub session: SessionConfig,
    pub store: StoreConfig,
    pub upstream_timeouts: UpstreamTimeouts,
}

#[derive(Debug, Clone)]
pub struct CookieConfig {
    pub name: String,
    pub max_age: Option<Duration>,
    pub expires: Option<OffsetDateTime>,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    /// At least 32 bytes; signs the cookie value (HMAC-SHA256) when set.
    pub secret: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub header_prefix: String,
    pub renew_missing: bool,
    /// Upper bound on the session's JSON text, in bytes.
    pub max_size: usize,
    pub lifetime: Lifetime,
}

/// How long sessions live. Expiry is a property of the record, checked on every load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifetime {
    pub idle_timeout: Duration,
    pub absolute_timeout: Option<Duration>,
    pub touch_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Upper bound on one store call made on behalf of a request.
    pub timeout: Duration,
    /// How often the background sweeper removes expired sessions (memory and fs stores).
    pub sweep_interval: Duration,
}

#[derive(Debug, Clone)]
pub enum StoreKind {
    Memory,
    Fs(FsConfig),
    Redis(RedisConfig),
}

#[derive(Debug, Clone)]
pub struct FsConfig {
    pub path: PathBuf,
    /// Contains exactly one `%s` and no path separator.
    pub filename_template: String,
    pub mode: u32,
    pub fsync: bool,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Connection URLs: one for a standalone server, one or more seed nodes for a cluster.
    pub urls: Vec<String>,
    /// `store.timeout`: the client's own connect and command timeouts are derived from it.
    pub timeout: Duration,
    pub key_prefix: String,
    pub cluster: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub response: Duration,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:3000";
const DEFAULT_MAX_SIZE: u64 = 16 * 1024;
const MAX_MAX_SIZE: u64 = 1024 * 1024;

impl RawConfig {
    /// Reads and parses a TOML file (no validation yet).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml(&file, &text)
    }

    pub fn from_toml(file: &str, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Validates every value and applies defaults. `file` names the origin in errors.
    pub fn validate(self, file: &str) -> Result<Config, ConfigError> {
        let bad = |key: &'static str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            message,
        };
        let dur = |key: &'static str, spec: &Option<DurationSpec>, default: Duration| {
            spec.as_ref()
                .map_or(Ok(default), DurationSpec::parse)
                .map_err(|m| bad(key, m))
        };

        let listen_text = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            bad(
                "listen",
                format!("{listen_text:?} is not an ip:port address: {e}"),
            )
        })?;
        let upstream = parse_upstream(self.upstream.as_deref().unwrap_or(DEFAULT_UPSTREAM))
            .map_err(|m| bad("upstream", m))?;
        let shutdown_timeout = dur(
            "shutdown_timeout",
            &self.shutdown_timeout,
            Duration::from_secs(30),
        )?;

        // [cookie]
        let c = self.cookie;
        let name = c.name.unwrap_or_else(|| "session_id".to_owned());
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(bad(
                "cookie.name",
                format!("{name:?} is not a valid cookie name"),
            ));
        }
        let max_age = c
            .max_age
            .as_ref()
            .map(DurationSpec::parse)
            .transpose()
            .map_err(|m| bad("cookie.max_age", m))?;
        let expires =
            c.expires
                .as_deref()
                .map(|t| {
                    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| {
                            bad(
                                "cookie.expires",
                                format!("{t:?} is not an RFC 3339 date-time: {e}"),
                            )
                        })
                })
                .transpose()?;
        let path = c.path.unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/') || path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
            return Err(bad(
                "cookie.path",
                format!("{path:?} must start with / and contain no ; or control characters"),
            ));
        }
        if let Some(d) = &c.domain
            && (d.is_empty()
                || d.bytes()
                    .any(|b| b == b';' || b.is_ascii_whitespace() || b.is_ascii_control()))
        {
            return Err(bad("cookie.domain", format!("{d:?} is not a domain")));
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
                return Err(bad(
                    "cookie.same_site",
                    format!("{other:?} is not one of \"lax\", \"strict\", \"none\""),
                ));
            }
        };
        if same_site == SameSite::None && !secure {
            return Err(bad(
                "cookie.same_site",
                "\"none\" requires cookie.secure = true (browsers drop SameSite=None cookies that are not Secure)".to_owned(),
            ));
        }
        if let Some(s) = &c.secret
            && s.len() < 32
        {
            return Err(bad(
                "cookie.secret",
                format!("must be at least 32 bytes of random text, got {}", s.len()),
            ));
        }
        let cookie = CookieConfig {
            name,
            max_age,
            expires,
            path,
            domain: c.domain,
            secure,
            http_only: c.http_only.unwrap_or(true),
            same_site,
            secret: c.secret,
        };

        // [session]
        let s = self.session;
        let header_prefix = s.header_prefix.unwrap_or_else(|| "X-Session".to_owned());
        crate::protocol::ProtocolHeaders::new(&header_prefix)
            .map_err(|e| bad("session.header_prefix", e.to_string()))?;
        if header_prefix
            .to_ascii_lowercase()
            .starts_with("x-forwarded")
        {
            return Err(bad(
                "session.header_prefix",
                "must not overlap the X-Forwarded-* headers".to_owned(),
            ));
        }
        let max_size = s.max_size.unwrap_or(DEFAULT_MAX_SIZE);
        if !(2..=MAX_MAX_SIZE).contains(&max_size) {
            return Err(bad(
                "session.max_size",
                format!("{max_size} is outside 2..={MAX_MAX_SIZE} bytes"),
            ));
        }
        let idle_timeout = dur(
            "session.idle_timeout",
            &s.idle_timeout,
            Duration::from_secs(24 * 3600),
        )?;
        if idle_timeout < Duration::from_secs(1) {
            return Err(bad(
                "session.idle_timeout",
                "must be at least 1s".to_owned(),
            ));
        }
        let absolute_timeout = s
            .absolute_timeout
            .as_ref()
            .map(DurationSpec::parse)
            .transpose()
            .map_err(|m| bad("session.absolute_timeout", m))?;
        if absolute_timeout.is_some_and(|a| a < Duration::from_secs(1)) {
            return Err(bad(
                "session.absolute_timeout",
                "must be at least 1s (leave it out to turn it off)".to_owned(),
            ));
        }
        let touch_interval = dur(
            "session.touch_interval",
            &s.touch_interval,
            idle_timeout / 10,
        )?;
        if touch_interval > idle_timeout {
            return Err(bad(
                "session.touch_interval",
                "must not exceed session.idle_timeout, or idle sessions would die while in use"
                    .to_owned(),
            ));
        }
        let session = SessionConfig {
            header_prefix,
            renew_missing: s.renew_missing.unwrap_or(true),
            max_size: max_size as usize,
            lifetime: Lifetime {
                idle_timeout,
                absolute_timeout,
                touch_interval,
            },
        };

        // [store]
        let st = self.store;
        let store_timeout = dur("store.timeout", &st.timeout, Duration::from_secs(2))?;
        let kind_name = st.kind.as_deref().unwrap_or("fs");
        let only = |kind: &str, key: &'static str, set: bool| {
            if set {
                Err(bad(key, format!("does not apply to store.kind = {kind:?}")))
            } else {
                Ok(())
            }
        };
        let fs_keys = st.path.is_some()
            || st.filename_template.is_some()
            || st.mode.is_some()
            || st.fsync.is_some();
        let redis_keys = st.url.is_some()
            || st.key_prefix.is_some()
            || st.cluster.is_some()
            || st.nodes.is_some();
        let kind = match kind_name {
            "memory" => {
                only("memory", "store.path", fs_keys)?;
                only("memory", "store.url", redis_keys)?;
                StoreKind::Memory
            }
            "fs" => {
                only("fs", "store.url", redis_keys)?;
                let filename_template = st
                    .filename_template
                    .unwrap_or_else(|| "session_%s.json".to_owned());
                if filename_template.matches("%s").count() != 1
                    || filename_template.contains(['/', '\\', '\0'])
                    || filename_template.starts_with('.')
                {
                    return Err(bad(
                        "store.filename_template",
                        format!(
                            "{filename_template:?} must contain %s exactly once, no path separator, and not start with a dot"
                        ),
                    ));
                }
                let mode = st.mode.unwrap_or(0o600);
                if mode > 0o777 || mode & 0o600 != 0o600 {
                    return Err(bad(
                        "store.mode",
                        format!(
                            "{mode:#o} must be a file mode within 0o777 that lets the owner read and write"
                        ),
                    ));
                }
                StoreKind::Fs(FsConfig {
                    path: st.path.unwrap_or_else(|| PathBuf::from("sessions")),
                    filename_template,
                    mode,
                    fsync: st.fsync.unwrap_or(true),
                })
            }
            "redis" => {
                only("redis", "store.path", fs_keys)?;
                if !cfg!(feature = "redis") {
                    return Err(bad(
                        "store.kind",
                        "this binary was built without the `redis` feature".to_owned(),
                    ));
                }
                let cluster = st.cluster.unwrap_or(false) || st.nodes.is_some();
                let urls = match (st.url, st.nodes) {
                    (Some(_), Some(_)) => {
                        return Err(bad(
                            "store.nodes",
                            "give either store.url or store.nodes, not both".to_owned(),
                        ));
                    }
                    (Some(u), None) => vec![u],
                    (None, Some(n)) if !n.is_empty() => n,
                    (None, Some(_)) => {
                        return Err(bad("store.nodes", "must list at least one node".to_owned()));
                    }
                    (None, None) => vec!["redis://127.0.0.1:6379/0".to_owned()],
                };
                for u in &urls {
                    if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                        return Err(bad(
                            "store.url",
                            format!("{u:?} must start with redis:// or rediss://"),
                        ));
                    }
                }
                StoreKind::Redis(RedisConfig {
                    urls,
                    timeout: store_timeout,
                    key_prefix: st.key_prefix.unwrap_or_else(|| "session:".to_owned()),
                    cluster,
                })
            }
            other => {
                return Err(bad(
                    "store.kind",
                    format!("{other:?} is not one of \"fs\", \"memory\", \"redis\""),
                ));
            }
        };
        let store = StoreConfig {
            kind,
            timeout: store_timeout,
            sweep_interval: dur(
                "store.sweep_interval",
                &st.sweep_interval,
                Duration::from_secs(300),
            )?,
        };
        if store.timeout.is_zero() || store.sweep_interval.is_zero() {
            return Err(bad(
                "store.timeout",
                "store.timeout and store.sweep_interval must be positive".to_owned(),
            ));
        }

        let t = self.upstream_timeouts;
        let upstream_timeouts = UpstreamTimeouts {
            connect: dur(
                "upstream_timeouts.connect",
                &t.connect,
                Duration::from_secs(5),
            )?,
            response: dur(
                "upstream_timeouts.response",
                &t.response,
                Duration::from_secs(60),
            )?,
        };
        if upstream_timeouts.connect.is_zero() || upstream_timeouts.response.is_zero() {
            return Err(bad(
                "upstream_timeouts",
                "timeouts must be positive".to_owned(),
            ));
        }

        Ok(Config {
            listen,
            upstream,
            shutdown_timeout,
            trust_forwarded_headers: self.trust_forwarded_headers.unwrap_or(false),
            cookie,
            session,
            store,
            upstream_timeouts,
        })
    }
}

/// RFC 6265 cookie-name is an RFC 2616 token.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_upstream(text: &str) -> Result<Authority, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(format!(
            "{text:?} must be an http:// URL (TLS to the upstream is not supported)"
        ));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(format!(
            "{text:?} must not have a path: requests keep their own path"
        ));
    }
    uri.authority()
        .cloned()
        .ok_or_else(|| format!("{text:?} has no host"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, String> {
        RawConfig::from_toml("t.toml", text)
            .and_then(|r| r.validate("t.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = check("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.cookie.name, "session_id");
        assert!(c.cookie.http_only);
        assert_eq!(c.session.max_size, 16384);
        assert_eq!(c.session.lifetime.touch_interval, Duration::from_secs(8640));
        assert!(matches!(c.store.kind, StoreKind::Fs(ref f) if f.mode == 0o600 && f.fsync));
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases = [
            ("bogus = 1", "unknown field"),
            ("[cookie]\nsame_site = \"none\"", "`cookie.same_site`"),
            ("[cookie]\nsame_site = \"sometimes\"", "`cookie.same_site`"),
            ("[cookie]\nsecret = \"short\"", "`cookie.secret`"),
            ("[cookie]\nmax_age = \"12 parsecs\"", "`cookie.max_age`"),
            (
                "[session]\nidle_timeout = \"soon\"",
                "`session.idle_timeout`",
            ),
            ("[session]\nmax_size = 0", "`session.max_size`"),
            ("[store]\nkind = \"tape\"", "`store.kind`"),
            (
                "[store]\nfilename_template = \"../%s\"",
                "`store.filename_template`",
            ),
            ("[store]\nkind = \"memory\"\npath = \"x\"", "`store.path`"),
            ("[store]\nmode = 0o1777", "`store.mode`"),
            ("listen = \"nowhere\"", "`listen`"),
            ("upstream = \"https://x\"", "`upstream`"),
            ("upstream = \"http://x/app\"", "`upstream`"),
            (
                "[upstream_timeouts]\nconnect = \"0s\"",
                "`upstream_timeouts`",
            ),
        ];
        for (text, want) in cases {
            let err = check(text).unwrap_err();
            assert!(err.starts_with("t.toml"), "{err}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn durations_and_options() {
        let c = check(
            "[cookie]\nmax_age = \"12h\"\nsame_site = \"none\"\nsecure = true\nexpires = \"2030-01-01T00:00:00Z\"\n\
             [session]\nidle_timeout = \"7d\"\nabsolute_timeout = 60\ntouch_interval = \"500ms\"",
        )
        .unwrap();
        assert_eq!(c.cookie.max_age, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(
            c.session.lifetime.idle_timeout,
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(
            c.session.lifetime.absolute_timeout,
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            c.session.lifetime.touch_interval,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn the_shipped_proxy_toml_is_the_defaults() {
        let text = include_str!("../../proxy.toml");
        let shipped = check(text).unwrap();
        let defaults = check("").unwrap();
        assert_eq!(format!("{shipped:?}"), format!("{defaults:?}"));
    }
}
