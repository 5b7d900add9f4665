//! Configuration: `proxy.toml` and command-line flags, merged and validated once into [`Config`].
//!
//! Parsing goes low-level first ([`RawConfig`], the file as written, every field optional, unknown
//! keys refused), then flags overwrite raw fields, then [`RawConfig::validate`] turns the result
//! into the typed [`Config`] the rest of the proxy uses. Every error names the file and the key.
//!
//! `raw.rs` holds the file as written, `validate.rs` the checks (one function per section),
//! `cli.rs` the flags; this module is what the rest of the crate sees.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use serde::Deserialize;

use crate::tls::Certs;

pub mod cli;

/// Lives with the session rules it drives; configured here.
pub use crate::session::Lifetime;
mod cookie;
mod limits;
mod origin;
mod raw;
mod session;
mod store;
mod validate;

pub use self::cookie::CookieConfig;
pub use self::limits::Limits;
pub use self::session::{SessionConfig, SkipRules};
pub use self::store::{FsConfig, OnStoreError, RedisConfig, SqliteConfig, StoreConfig, StoreKind};
#[cfg(test)]
pub(crate) use raw::KEYS;
pub use raw::{
    RawAudit, RawConfig, RawCookie, RawLimits, RawSession, RawStore, RawTimeouts, RawTls, Secret,
    Secrets,
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
}

/// `[audit]`: where the audit log goes and how many events may wait for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Appended to; created with mode 0600; reopened on SIGHUP.
    pub path: PathBuf,
    /// Events queued for the writer at most; one more is dropped and counted, never waited for.
    pub queue: usize,
}

/// The networks of the front proxies whose forwarding headers (`X-Forwarded-*`, `Forwarded`,
/// `X-Real-IP`, …) are passed on and extended; from any other peer they are replaced. Matched
/// once per connection, against the peer's address with an IPv4-mapped IPv6 address read as
/// the IPv4 address it is (a dual-stack listener reports IPv4 clients that way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Parses one entry: a network (`10.0.0.0/8`, `fd00::/8`) or a bare address (a /32 or a
    /// /128). A network with host bits set (`10.0.0.1/8`) is refused: it is more often a typo
    /// for one address than a wish to trust the whole network.
    pub fn parse_entry(text: &str) -> Result<ipnet::IpNet, String> {
        let text = text.trim();
        if let Ok(ip) = text.parse::<std::net::IpAddr>() {
            return Ok(ipnet::IpNet::from(ip.to_canonical()));
        }
        let net: ipnet::IpNet = text.parse().map_err(|_| {
            format!("{text:?} is not an IP address or a network like \"10.0.0.0/8\"")
        })?;
        if net.trunc() != net {
            return Err(format!(
                "{text:?} has host bits set: write the network ({:?}) or the address alone",
                net.trunc().to_string()
            ));
        }
        // Peers are matched as IPv4 when they are IPv4-mapped, so a mapped network must be too.
        if let ipnet::IpNet::V6(v6) = net
            && let Some(v4) = v6.network().to_ipv4_mapped()
            && v6.prefix_len() >= 96
            && let Ok(v4) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
        {
            return Ok(ipnet::IpNet::V4(v4));
        }
        Ok(net)
    }

    pub fn new(nets: Vec<ipnet::IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a peer at `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// `text` (`key=value`, for people) or `json` (one object per line, for collectors): the same
/// events and fields either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[tls]`: the files were read and checked during validation, so a bad certificate or a key
/// that does not match it stops the start (exit 2) instead of failing every handshake.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The certificate in use, shared with the listener and swapped on SIGHUP.
    pub certs: Arc<Certs>,
    /// The listener's rustls config, built once over `certs`.
    pub server: Arc<rustls::ServerConfig>,
    /// `cookie.secure` was left out (its default is `false`): warned about at start, since the
    /// session cookie would then also go out over plain HTTP to the same host.
    pub cookie_secure_unset: bool,
}

/// The admin listener: its own address, and the token its routes require.
#[derive(Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Required as `Authorization: Bearer` when set. Without one, `listen` is a loopback
    /// address (checked here): only this machine's users reach it.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub response: Duration,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:3000";
