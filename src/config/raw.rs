//! The config file as written: every field optional, unknown keys refused. Flags overwrite these
//! fields before validation, so a flag and a file value get the same checks.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, DurationSpec};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub shutdown_timeout: Option<DurationSpec>,
    pub upgrade_socket: Option<PathBuf>,
    pub trusted_proxies: Option<Vec<String>>,
    /// Replaced by `trusted_proxies`: kept only so that any value of it is refused with the
    /// migration, rather than as an unknown key.
    pub trust_forwarded_headers: Option<toml::Value>,
    #[serde(default)]
    pub cookie: RawCookie,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub upstream_timeouts: RawTimeouts,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub assertion: RawAssertion,
    #[serde(default)]
    pub tracing: RawTracing,
}

/// `[tracing]`: OpenTelemetry traces over OTLP/HTTP; off without `otlp_endpoint`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
    pub queue: Option<u64>,
}

/// `[assertion]`: the signed assertion of the session; off without `key_file`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssertion {
    pub key_file: Option<PathBuf>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub ttl: Option<DurationSpec>,
}

/// `[audit]`: the audit log of session events; off without `path`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: Option<PathBuf>,
    pub queue: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
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
    pub secret: Option<Secrets>,
    pub secret_file: Option<PathBuf>,
}

/// `cookie.secret` as written: one secret, or a list of them (the first signs, all verify).
#[derive(Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a secret (a string) or a list of secrets (strings), the first of which signs"
)]
pub enum Secrets {
    One(Secret),
    Many(Vec<Secret>),
}

impl Secrets {
    /// The secrets in order: the first signs.
    pub fn into_vec(self) -> Vec<Secret> {
        match self {
            Secrets::One(s) => vec![s],
            Secrets::Many(list) => list,
        }
    }
}

impl From<Secret> for Secrets {
    fn from(secret: Secret) -> Self {
        Secrets::One(secret)
    }
}

impl From<String> for Secrets {
    fn from(text: String) -> Self {
        Secrets::One(Secret(text))
    }
}

impl std::fmt::Debug for Secrets {
    /// Never prints a secret, nor how many there are of each length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The cookie secret as given: it signs every cookie, so `Debug` never shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Secret(text)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    pub header_prefix: Option<String>,
    pub renew_missing: Option<bool>,
    pub max_size: Option<u64>,
    pub idle_timeout: Option<DurationSpec>,
    pub absolute_timeout: Option<DurationSpec>,
    pub touch_interval: Option<DurationSpec>,
    pub skip: Option<Vec<String>>,
    pub user_key: Option<String>,
    pub max_per_user: Option<u64>,
    pub socket_recheck: Option<DurationSpec>,
    pub regenerate_grace: Option<DurationSpec>,
    pub on_stale_use: Option<String>,
    pub remember_max: Option<DurationSpec>,
    pub remember_absolute: Option<DurationSpec>,
    pub first_lifetime: Option<DurationSpec>,
    pub devices_path: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<String>,
    pub timeout: Option<DurationSpec>,
    pub sweep_interval: Option<DurationSpec>,
    pub on_error: Option<String>,
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
    // postgres (and `url`)
    pub pool_size: Option<u32>,
    pub table: Option<String>,
    // every kind: session data encrypted at rest
    pub encryption_key: Option<Secrets>,
    pub encryption_key_file: Option<PathBuf>,
    // every kind, with session.user_key: the user index holds hashes of users
    pub hash_users: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<DurationSpec>,
    pub response: Option<DurationSpec>,
}

/// `[tls]`: TLS on the client listener; both files or neither.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
}

/// `[limits]`: what one client may cost the proxy (connections, time, bytes).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<u64>,
    pub handshake_timeout: Option<DurationSpec>,
    pub header_read_timeout: Option<DurationSpec>,
    pub keep_alive_timeout: Option<DurationSpec>,
    pub max_head_size: Option<u64>,
    pub max_uri_length: Option<u64>,
    pub max_headers: Option<u64>,
    pub body_idle_timeout: Option<DurationSpec>,
    pub body_timeout: Option<DurationSpec>,
    pub request_buffer: Option<u64>,
    pub request_buffer_total: Option<u64>,
    pub body_min_rate: Option<u64>,
    pub body_min_rate_grace: Option<DurationSpec>,
    pub max_body_size: Option<u64>,
    pub h2_max_concurrent_streams: Option<u64>,
    pub h2_keep_alive_interval: Option<DurationSpec>,
    pub h2_keep_alive_timeout: Option<DurationSpec>,
    pub upgrade_idle_timeout: Option<DurationSpec>,
    pub new_sessions_per_ip: Option<String>,
}

/// Every key of the file, as errors name it: what a value of the wrong type is reported against
/// (a test holds this list to the structs' fields).
pub(crate) const KEYS: [&str; 86] = [
    "listen",
    "upstream",
    "shutdown_timeout",
    "upgrade_socket",
    "trusted_proxies",
    "trust_forwarded_headers",
    "cookie.name",
    "cookie.max_age",
    "cookie.expires",
    "cookie.path",
    "cookie.domain",
    "cookie.secure",
    "cookie.http_only",
    "cookie.same_site",
    "cookie.secret",
    "cookie.secret_file",
    "session.header_prefix",
    "session.renew_missing",
    "session.max_size",
    "session.idle_timeout",
    "session.absolute_timeout",
    "session.touch_interval",
    "session.skip",
    "session.user_key",
    "session.max_per_user",
    "session.socket_recheck",
    "session.regenerate_grace",
    "session.on_stale_use",
    "session.remember_max",
    "session.remember_absolute",
    "session.first_lifetime",
    "session.devices_path",
    "store.kind",
    "store.timeout",
    "store.sweep_interval",
    "store.on_error",
    "store.path",
    "store.filename_template",
    "store.mode",
    "store.fsync",
    "store.url",
    "store.key_prefix",
    "store.cluster",
    "store.nodes",
    "store.pool_size",
    "store.table",
    "store.encryption_key",
    "store.encryption_key_file",
    "store.hash_users",
    "upstream_timeouts.connect",
    "upstream_timeouts.response",
    "tls.cert",
    "tls.key",
    "admin.listen",
    "admin.token",
    "admin.token_file",
    "limits.max_connections",
    "limits.handshake_timeout",
    "limits.header_read_timeout",
    "limits.keep_alive_timeout",
    "limits.max_head_size",
    "limits.max_uri_length",
    "limits.max_headers",
    "limits.body_idle_timeout",
    "limits.body_timeout",
    "limits.request_buffer",
    "limits.request_buffer_total",
    "limits.body_min_rate",
    "limits.body_min_rate_grace",
    "limits.max_body_size",
    "limits.h2_max_concurrent_streams",
    "limits.h2_keep_alive_interval",
    "limits.h2_keep_alive_timeout",
    "limits.upgrade_idle_timeout",
    "limits.new_sessions_per_ip",
    "log.format",
    "audit.path",
    "audit.queue",
    "assertion.key_file",
    "assertion.audience",
    "assertion.issuer",
    "assertion.ttl",
    "tracing.otlp_endpoint",
    "tracing.service_name",
    "tracing.sample_ratio",
    "tracing.queue",
];

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
        toml::from_str(text).map_err(|e| match key_of(&e, text) {
            // A value of the wrong type is a bad value like any other: name its key.
            Some((key, at)) => ConfigError::Invalid {
                file: file.to_owned(),
                key,
                message: format!("{} ({at})", e.message().trim_end()),
            },
            None => ConfigError::Parse {
                file: file.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            },
        })
    }
}

/// The key (one of [`KEYS`]) whose value `error` is about, and where it is. toml reports a wrong
/// type by position only, so the position is looked up in the document's spans.
fn key_of(error: &toml::de::Error, text: &str) -> Option<(&'static str, String)> {
    let span = error.span()?;
    let document = toml::de::DeTable::parse(text).ok()?;
    let path = key_at(document.get_ref(), &span, "")?;
    let key = KEYS.into_iter().find(|k| *k == path)?;
    let before = text.get(..span.start)?;
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((key, format!("line {line}, column {column}")))
}

/// The dotted path of the innermost key whose name or value contains `span`.
fn key_at(table: &toml::de::DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<String> {
    let contains = |outer: Range<usize>| outer.start <= span.start && span.end <= outer.end;
    table.iter().find_map(|(key, value)| {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if let toml::de::DeValue::Table(inner) = value.get_ref()
            && let Some(found) = key_at(inner, span, &path)
        {
            return Some(found);
        }
        (contains(key.span()) || contains(value.span())).then_some(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of a struct's fields, from a pattern without `..`: a field added to the
    /// struct and not here fails to compile.
    macro_rules! fields {
        ($ty:ident $prefix:literal { $($field:ident),* } $(sections { $($section:ident),* })?) => {{
            let $ty { $($field: _,)* $($($section: _,)*)? } = $ty::default();
            [$(concat!($prefix, stringify!($field))),*]
        }};
    }

    #[test]
    fn keys_lists_every_field_of_the_file() {
        let every: Vec<&str> = [
            &fields!(RawConfig "" {
                listen, upstream, shutdown_timeout, upgrade_socket, trusted_proxies,
                trust_forwarded_headers
            } sections {
                cookie, session, store, upstream_timeouts, tls, admin, limits, log, audit,
                assertion, tracing
            })[..],
            &fields!(RawCookie "cookie." {
                name, max_age, expires, path, domain, secure, http_only, same_site, secret,
                secret_file
            }),
            &fields!(RawSession "session." {
                header_prefix, renew_missing, max_size, idle_timeout, absolute_timeout,
                touch_interval, skip, user_key, max_per_user, socket_recheck, regenerate_grace,
                on_stale_use, remember_max, remember_absolute, first_lifetime, devices_path
            }),
            &fields!(RawStore "store." {
                kind, timeout, sweep_interval, on_error, path, filename_template, mode, fsync,
                url, key_prefix, cluster, nodes, pool_size, table, encryption_key, encryption_key_file, hash_users
            }),
            &fields!(RawTimeouts "upstream_timeouts." { connect, response }),
            &fields!(RawTls "tls." { cert, key }),
            &fields!(RawAdmin "admin." { listen, token, token_file }),
            &fields!(RawLimits "limits." {
                max_connections, handshake_timeout, header_read_timeout, keep_alive_timeout,
                max_head_size, max_uri_length, max_headers, body_idle_timeout, body_timeout,
                request_buffer, request_buffer_total, body_min_rate, body_min_rate_grace,
                max_body_size, h2_max_concurrent_streams, h2_keep_alive_interval, h2_keep_alive_timeout,
                upgrade_idle_timeout, new_sessions_per_ip
            }),
            &fields!(RawLog "log." { format }),
            &fields!(RawAudit "audit." { path, queue }),
            &fields!(RawAssertion "assertion." { key_file, audience, issuer, ttl }),
            &fields!(RawTracing "tracing." { otlp_endpoint, service_name, sample_ratio, queue }),
        ]
        .concat();
        assert_eq!(every, KEYS);
    }
}
