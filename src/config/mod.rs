//! Configuration: `proxy.toml` and command-line flags, merged and validated once into [`Config`].
//!
//! Parsing goes low-level first ([`RawConfig`], the file as written, every field optional, unknown
//! keys refused), then flags overwrite raw fields, then [`RawConfig::validate`] turns the result
//! into the typed [`Config`] the rest of the proxy uses. Every error names the file and the key.
//!
//! `raw.rs` holds the file as written and `cli.rs` the flags. Each section has one file with its
//! validated type, its rule and their tests: `listeners.rs` (`listen`, `upstream`,
//! `trusted_proxies`, `[upstream_timeouts]`, `[tls]`, `[admin]`), `cookie.rs`, `session.rs`,
//! `store.rs`, `limits.rs`, `audit.rs`, `assertion.rs`, `traces.rs`; `origin.rs` the helpers they share to name file and key.
//! `validate.rs` calls them in turn; `reference/` describes every key (the generated
//! configuration page). This module is what the rest of the crate sees: every type
//! is re-exported here, so its path is `crate::config::Name` wherever it lives.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Authority;
use serde::Deserialize;

pub mod cli;
pub mod reference;

mod assertion;
mod audit;
mod cookie;
mod limits;
mod listeners;
mod origin;
mod raw;
mod restart;
mod session;
mod store;
mod traces;
mod validate;

pub use self::assertion::{AssertionConfig, DEFAULT_ISSUER};
pub use self::audit::AuditConfig;
pub use self::cookie::CookieConfig;
pub use self::limits::{Limits, Rate};
pub use self::listeners::{
    AdminConfig, DEFAULT_LISTEN, DEFAULT_UPSTREAM, TlsConfig, TrustedProxies, UpstreamTimeouts,
};
pub use self::session::{OnStaleUse, SessionConfig, SkipRules};
pub use self::store::{
    FsConfig, OnStoreError, PostgresConfig, RedisConfig, SqliteConfig, StoreConfig, StoreKind,
};
pub use self::traces::{DEFAULT_SERVICE_NAME, TracingConfig};
/// Lives with the session rules it drives; configured here.
pub use crate::session::Lifetime;
#[cfg(test)]
pub(crate) use raw::KEYS;
pub use raw::{
    RawAssertion, RawAudit, RawConfig, RawCookie, RawLimits, RawSession, RawStore, RawTimeouts,
    RawTls, RawTracing, Secret, Secrets,
};

/// A config problem, always naming where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a section of the wrong type: toml's message says where.
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    /// A bad value, of the wrong type or refused by validation.
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
#[serde(
    untagged,
    expecting = "expected a duration like \"30s\", \"5m\", \"24h\" or \"7d\", or whole seconds"
)]
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

/// The validated configuration. Nothing downstream re-checks these values.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Scheme and authority of the upstream (always `http`).
    pub upstream: Authority,
    pub shutdown_timeout: Duration,
    /// `upgrade_socket`: the Unix socket over which a running proxy hands its listeners to
    /// the next one (docs/src/operations.md); `None`: no handoff.
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// The peers whose forwarding headers are believed (`trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
    pub cookie: CookieConfig,
    pub session: SessionConfig,
    pub store: StoreConfig,
    pub upstream_timeouts: UpstreamTimeouts,
    /// TLS on the client listener; `None` (no `[tls]`) serves plain HTTP.
    pub tls: Option<TlsConfig>,
    /// The admin listener; `None` (no `[admin] listen`) means there is none.
    pub admin: Option<AdminConfig>,
    pub limits: Limits,
    /// How log lines are written (`[log] format`).
    pub log_format: LogFormat,
    /// The audit log of session events; `None` (no `[audit] path`) means off.
    pub audit: Option<AuditConfig>,
    /// The signed assertion of the session sent to the app; `None` (no `[assertion]
    /// key_file`) means off.
    pub assertion: Option<AssertionConfig>,
    /// OpenTelemetry traces; `None` (no `[tracing] otlp_endpoint`, nor the standard
    /// variables) means off.
    pub tracing: Option<TracingConfig>,
}

/// `text` (`key=value`, for people) or `json` (one object per line, for collectors): the same
/// events and fields either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
