//! `RawConfig` → `Config`: the only place a setting is checked, one function per section, so
//! each error can name the file and the key it is about.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};

use super::cookie::cookie;
use super::limits::limits;
use super::origin::{Origin, count};
use super::raw::{RawAdmin, RawAudit, RawTimeouts, RawTls};
use super::session::session;
use super::store::store;
use super::{
    AdminConfig, AuditConfig, Config, ConfigError, DEFAULT_LISTEN, DEFAULT_UPSTREAM, LogFormat,
    RawConfig, TlsConfig, TrustedProxies, UpstreamTimeouts,
};
use crate::tls::Certs;

impl RawConfig {
    /// Validates every value and applies defaults. `file` names the origin in errors.
    pub fn validate(self, file: &str) -> Result<Config, ConfigError> {
        let at = Origin(file);
        let cookie_secure_unset = self.cookie.secure.is_none();
        // Checked in the order of proxy.toml: of several bad keys, the first is reported.
        let mut config = Config {
            listen: listen(&at, self.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?,
            upstream: parse_upstream(self.upstream.as_deref().unwrap_or(DEFAULT_UPSTREAM))
                .map_err(|m| at.bad("upstream", m))?,
            shutdown_timeout: at.duration(
                "shutdown_timeout",
                &self.shutdown_timeout,
                Duration::from_secs(30),
            )?,
            trusted_proxies: trusted_proxies(
                &at,
                self.trusted_proxies,
                self.trust_forwarded_headers,
            )?,
            cookie: cookie(&at, self.cookie)?,
            session: session(&at, self.session)?,
            store: store(&at, self.store)?,
            upstream_timeouts: upstream_timeouts(&at, self.upstream_timeouts)?,
            tls: tls(&at, self.tls, cookie_secure_unset)?,
            admin: admin(&at, self.admin)?,
            limits: limits(&at, self.limits)?,
            log_format: match self.log.format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(at.bad(
                        "log.format",
                        format!("{other:?} is not one of \"text\", \"json\""),
                    ));
                }
            },
            audit: audit(&at, self.audit)?,
        };
        config.store.users = config.session.user_key.clone();
        Ok(config)
    }
}

/// `[audit]`: off without `path`. Whether the file can be opened is checked at start, where it
/// is opened (and by `check`).
fn audit(at: &Origin, a: RawAudit) -> Result<Option<AuditConfig>, ConfigError> {
    let Some(path) = a.path else {
        if a.queue.is_some() {
            return Err(at.bad("audit.queue", "has no effect without audit.path"));
        }
        return Ok(None);
    };
    if path.as_os_str().is_empty() {
        return Err(at.bad("audit.path", "must not be empty"));
    }
    let queue = count(at, "audit.queue", a.queue, 16_384, 1..=1_000_000)?;
    Ok(Some(AuditConfig {
        path,
        queue: usize::try_from(queue).unwrap_or(usize::MAX),
    }))
}

fn listen(at: &Origin, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|e| at.bad("listen", format!("{text:?} is not an ip:port address: {e}")))
}

/// `trusted_proxies`, and the key it replaced. `trust_forwarded_headers` trusted every peer or
/// none; whatever it was set to is refused with what to write instead, so that no upgrade
/// silently starts (or stops) believing a front proxy.
fn trusted_proxies(
    at: &Origin,
    list: Option<Vec<String>>,
    old: Option<toml::Value>,
) -> Result<TrustedProxies, ConfigError> {
    if let Some(old) = old {
        let instead = if old.as_bool() == Some(false) {
            "delete the line: without `trusted_proxies` no peer is trusted, as with false"
        } else {
            "list the addresses of your front proxies, e.g. trusted_proxies = [\"127.0.0.1\"]"
        };
        return Err(at.bad(
            "trust_forwarded_headers",
            format!("was replaced by `trusted_proxies`: {instead}"),
        ));
    }
    let nets = list
        .unwrap_or_default()
        .iter()
        .map(|entry| TrustedProxies::parse_entry(entry))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| at.bad("trusted_proxies", m))?;
    Ok(TrustedProxies::new(nets))
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

fn upstream_timeouts(at: &Origin, t: RawTimeouts) -> Result<UpstreamTimeouts, ConfigError> {
    let connect = at.duration(
        "upstream_timeouts.connect",
        &t.connect,
        Duration::from_secs(5),
    )?;
    at.positive("upstream_timeouts.connect", connect)?;
    let response = at.duration(
        "upstream_timeouts.response",
        &t.response,
        Duration::from_secs(60),
    )?;
    at.positive("upstream_timeouts.response", response)?;
    Ok(UpstreamTimeouts { connect, response })
}

/// Both files or neither; both are read and checked now (see [`Certs::open`]).
fn tls(
    at: &Origin,
    t: RawTls,
    cookie_secure_unset: bool,
) -> Result<Option<TlsConfig>, ConfigError> {
    let (cert, key) = match (t.cert, t.key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            return Err(at.bad(
                "tls.key",
                "is required with tls.cert: the PEM file of the certificate's private key",
            ));
        }
        (None, Some(_)) => {
            return Err(at.bad(
                "tls.cert",
                "is required with tls.key: the PEM file of the certificate chain",
            ));
        }
    };
    let bad = |e: crate::tls::TlsError| at.bad(e.key(), e.to_string());
    let certs = std::sync::Arc::new(Certs::open(cert, key).map_err(bad)?);
    let server = certs.server_config().map_err(bad)?;
    Ok(Some(TlsConfig {
        certs,
        server,
        cookie_secure_unset,
    }))
}

/// Shortest token accepted: a guessable token on a network-facing admin listener would hand
/// every session to whoever guesses it.
const MIN_TOKEN: usize = 16;

fn admin(at: &Origin, a: RawAdmin) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(text) = a.listen else {
        if a.token.is_some() || a.token_file.is_some() {
            let key = if a.token.is_some() {
                "admin.token"
            } else {
                "admin.token_file"
            };
            return Err(at.bad(key, "has no effect without admin.listen"));
        }
        return Ok(None);
    };
    let listen: SocketAddr = text.parse().map_err(|e| {
        at.bad(
            "admin.listen",
            format!("{text:?} is not an ip:port address: {e}"),
        )
    })?;
    let token = match (a.token, a.token_file) {
        (Some(_), Some(_)) => {
            return Err(at.bad(
                "admin.token_file",
                "give either admin.token or admin.token_file, not both",
            ));
        }
        (Some(t), None) => Some(("admin.token", t.as_str().to_owned())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                at.bad(
                    "admin.token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(("admin.token_file", text.trim().to_owned()))
        }
        (None, None) => None,
    };
    if let Some((key, t)) = &token
        && (t.len() < MIN_TOKEN || t.bytes().any(|b| !b.is_ascii_graphic()))
    {
        return Err(at.bad(
            key,
            format!(
                "the token must be at least {MIN_TOKEN} printable characters without spaces, got {}",
                t.len()
            ),
        ));
    }
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(at.bad(
            "admin.listen",
            format!(
                "{listen} is not a loopback address: an admin listener reachable from the network needs admin.token or admin.token_file"
            ),
        ));
    }
    Ok(Some(AdminConfig {
        listen,
        token: token.map(|(_, t)| t),
    }))
}

/// `text` as the file `t.toml`, parsed and validated; the error as a user sees it. Every
/// section's tests go through it, as a user's file does.
#[cfg(test)]
pub(super) fn check(text: &str) -> Result<Config, String> {
    RawConfig::from_toml("t.toml", text)
        .and_then(|r| r.validate("t.toml"))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use cookie::Key;

    use super::*;
    use crate::config::KEYS;
    use crate::config::StoreKind;

    #[test]
    fn defaults() {
        let c = check("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.cookie.name, "session_id");
        assert!(c.cookie.http_only);
        assert_eq!(c.session.max_size, 16384);
        assert_eq!(c.session.lifetime.touch_interval, Duration::from_secs(8640));
        assert!(matches!(
            c.store.kind,
            StoreKind::Sqlite(ref s) if s.path == std::path::Path::new("sessions.db")
                && s.mode == 0o600 && s.fsync
        ));
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
                "[store]\nkind = \"fs\"\nfilename_template = \"../%s\"",
                "`store.filename_template`",
            ),
            ("[store]\nkind = \"memory\"\npath = \"x\"", "`store.path`"),
            ("[store]\nmode = 0o1777", "`store.mode`"),
            ("listen = \"nowhere\"", "`listen`"),
            ("upstream = \"https://x\"", "`upstream`"),
            ("upstream = \"http://x/app\"", "`upstream`"),
            (
                "[upstream_timeouts]\nconnect = \"0s\"",
                "`upstream_timeouts.connect`",
            ),
        ];
        for (text, want) in cases {
            let err = check(text).unwrap_err();
            assert!(err.starts_with("t.toml"), "{err}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    /// The README's promise: a bad value of any key is refused with an error naming that key.
    #[test]
    fn a_bad_value_of_every_key_names_that_key() {
        let cases = [
            ("listen", "listen = \"nowhere\""),
            ("upstream", "upstream = \"https://x\""),
            ("shutdown_timeout", "shutdown_timeout = \"soon\""),
            ("trusted_proxies", "trusted_proxies = [\"10.0.0.0/33\"]"),
            ("trust_forwarded_headers", "trust_forwarded_headers = true"),
            ("cookie.name", "[cookie]\nname = \"a b\""),
            ("cookie.max_age", "[cookie]\nmax_age = true"),
            ("cookie.expires", "[cookie]\nexpires = \"tomorrow\""),
            ("cookie.path", "[cookie]\npath = \"app\""),
            ("cookie.domain", "[cookie]\ndomain = \"\""),
            ("cookie.secure", "[cookie]\nsecure = 1"),
            ("cookie.http_only", "[cookie]\nhttp_only = \"no\""),
            ("cookie.same_site", "[cookie]\nsame_site = \"sometimes\""),
            ("cookie.secret", "[cookie]\nsecret = \"short\""),
            (
                "cookie.secret_file",
                "[cookie]\nsecret_file = \"/nonexistent/secrets\"",
            ),
            (
                "session.header_prefix",
                "[session]\nheader_prefix = \"X Session\"",
            ),
            (
                "session.renew_missing",
                "[session]\nrenew_missing = \"yes\"",
            ),
            ("session.max_size", "[session]\nmax_size = 0"),
            ("session.idle_timeout", "[session]\nidle_timeout = \"soon\""),
            (
                "session.absolute_timeout",
                "[session]\nabsolute_timeout = \"0s\"",
            ),
            (
                "session.touch_interval",
                "[session]\nidle_timeout = \"1h\"\ntouch_interval = \"2h\"",
            ),
            ("session.skip", "[session]\nskip = [\"static/\"]"),
            ("session.user_key", "[session]\nuser_key = \"\""),
            (
                "session.max_per_user",
                "[session]\nuser_key = \"user\"\nmax_per_user = 0",
            ),
            ("store.kind", "[store]\nkind = \"tape\""),
            ("store.timeout", "[store]\ntimeout = \"0s\""),
            ("store.sweep_interval", "[store]\nsweep_interval = \"0s\""),
            ("store.on_error", "[store]\non_error = \"fail_sometimes\""),
            ("store.path", "[store]\nkind = \"memory\"\npath = \"x\""),
            (
                "store.filename_template",
                "[store]\nkind = \"fs\"\nfilename_template = \"../%s\"",
            ),
            ("store.mode", "[store]\nmode = 0o1777"),
            ("store.fsync", "[store]\nfsync = \"always\""),
            ("store.url", "[store]\nurl = 6379"),
            (
                "store.key_prefix",
                "[store]\nkind = \"fs\"\nkey_prefix = \"s:\"",
            ),
            ("store.cluster", "[store]\ncluster = \"yes\""),
            ("store.nodes", "[store]\nnodes = \"redis://x\""),
            (
                "upstream_timeouts.connect",
                "[upstream_timeouts]\nconnect = \"0s\"",
            ),
            (
                "upstream_timeouts.response",
                "[upstream_timeouts]\nresponse = \"soon\"",
            ),
            ("tls.cert", "[tls]\nkey = \"key.pem\""),
            ("tls.key", "[tls]\ncert = \"cert.pem\""),
            ("admin.listen", "[admin]\nlisten = \"0.0.0.0:9090\""),
            (
                "admin.token",
                "[admin]\nlisten = \"127.0.0.1:9090\"\ntoken = \"short\"",
            ),
            (
                "admin.token_file",
                "[admin]\nlisten = \"127.0.0.1:9090\"\ntoken_file = \"/nonexistent/token\"",
            ),
            ("limits.max_connections", "[limits]\nmax_connections = 0"),
            (
                "limits.handshake_timeout",
                "[limits]\nhandshake_timeout = \"0s\"",
            ),
            (
                "limits.header_read_timeout",
                "[limits]\nheader_read_timeout = \"2m\"",
            ),
            (
                "limits.keep_alive_timeout",
                "[limits]\nkeep_alive_timeout = \"soon\"",
            ),
            ("limits.max_head_size", "[limits]\nmax_head_size = 100"),
            ("limits.max_uri_length", "[limits]\nmax_uri_length = 1"),
            ("limits.max_headers", "[limits]\nmax_headers = -1"),
            (
                "limits.body_idle_timeout",
                "[limits]\nbody_idle_timeout = \"0s\"",
            ),
            ("limits.body_timeout", "[limits]\nbody_timeout = true"),
            (
                "limits.h2_max_concurrent_streams",
                "[limits]\nh2_max_concurrent_streams = 0",
            ),
            (
                "limits.h2_keep_alive_interval",
                "[limits]\nh2_keep_alive_interval = \"0s\"",
            ),
            (
                "limits.h2_keep_alive_timeout",
                "[limits]\nh2_keep_alive_timeout = \"never\"",
            ),
            (
                "limits.upgrade_idle_timeout",
                "[limits]\nupgrade_idle_timeout = \"0s\"",
            ),
            ("log.format", "[log]\nformat = \"xml\""),
            ("audit.path", "[audit]\npath = \"\""),
            ("audit.queue", "[audit]\npath = \"a.log\"\nqueue = 0"),
        ];
        let covered: Vec<&str> = cases.iter().map(|(key, _)| *key).collect();
        assert_eq!(covered, KEYS, "one case per key, in file order");
        for (want, text) in cases {
            let err = RawConfig::from_toml("t.toml", text)
                .and_then(|r| r.validate("t.toml"))
                .unwrap_err();
            let shown = err.to_string();
            match err {
                ConfigError::Invalid { file, key, .. } => {
                    assert_eq!((file.as_str(), key), ("t.toml", want), "{text}: {shown}");
                }
                other => panic!("{text}: not an error about `{want}`: {other}"),
            }
            assert!(shown.starts_with(&format!("t.toml: `{want}`: ")), "{shown}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_and_where_it_is() {
        let cases = [
            (
                "[cookie]\nsecure = 1",
                "t.toml: `cookie.secure`: invalid type: integer `1`, expected a boolean (line 2, column 10)",
            ),
            (
                "cookie = { max_age = true }",
                "t.toml: `cookie.max_age`: expected a duration like \"30s\", \"5m\", \"24h\" or \"7d\", or whole seconds (line 1, column 22)",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(check(text).unwrap_err(), want);
        }
        // Not a key's value: toml's own message, with the line shown.
        let err = check("cookie = 3").unwrap_err();
        assert!(
            err.starts_with("t.toml: TOML parse error at line 1"),
            "{err}"
        );
    }

    /// Checks that look at two keys blame the one that is wrong.
    #[test]
    fn a_check_of_two_keys_names_the_bad_one() {
        let mut cases = vec![
            ("[store]\ntimeout = \"0s\"", "store.timeout"),
            ("[store]\nsweep_interval = \"0s\"", "store.sweep_interval"),
            (
                "[upstream_timeouts]\nconnect = \"0s\"",
                "upstream_timeouts.connect",
            ),
            (
                "[upstream_timeouts]\nresponse = \"0s\"",
                "upstream_timeouts.response",
            ),
        ];
        if cfg!(feature = "redis") {
            cases.push(("[store]\nkind = \"redis\"\nurl = \"http://x\"", "store.url"));
            cases.push((
                "[store]\nkind = \"redis\"\nnodes = [\"redis://a\", \"http://b\"]",
                "store.nodes",
            ));
        }
        for (text, want) in cases {
            let err = check(text).unwrap_err();
            assert!(
                err.starts_with(&format!("t.toml: `{want}`: ")),
                "{text}: {err}"
            );
        }
    }

    /// What later code would otherwise rebuild per use is built once, here.
    #[test]
    fn the_signing_key_and_the_header_names_are_built_once() {
        let secret = "k".repeat(32);
        let c = check(&format!(
            "[cookie]\nsecret = \"{secret}\"\n[session]\nheader_prefix = \"X-App\""
        ))
        .unwrap();
        assert!(c.cookie.keys == [Key::derive_from(secret.as_bytes())]);
        assert_eq!(c.session.headers.session, "x-app");
        assert_eq!(c.session.headers.id, "x-app-id");
        let c = check("").unwrap();
        assert!(c.cookie.keys.is_empty());
        assert_eq!(c.session.headers.session, "x-session");
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
    fn trusted_proxies_match_networks_and_bare_addresses() {
        let c = check(
            "trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"::1\", \"fd00::/8\", \"::ffff:198.51.100.0/120\"]",
        )
        .unwrap();
        let trusted = |ip: &str| c.trusted_proxies.contains(ip.parse().unwrap());
        for ip in [
            "10.0.0.1",
            "10.255.255.255",
            "192.0.2.7",
            "::1",
            "fd12:3456::1",
            // IPv4-mapped peers (a dual-stack listener) are the IPv4 address they carry.
            "::ffff:10.1.2.3",
            "::ffff:192.0.2.7",
            // A mapped network is an IPv4 one.
            "198.51.100.9",
            "::ffff:198.51.100.200",
        ] {
            assert!(trusted(ip), "{ip}");
        }
        for ip in [
            "11.0.0.1",
            "192.0.2.8",
            "127.0.0.1",
            "::2",
            "fe80::1",
            "::ffff:11.0.0.1",
            "198.51.101.1",
        ] {
            assert!(!trusted(ip), "{ip}");
        }
        assert!(check("").unwrap().trusted_proxies.is_empty());
        assert!(
            !check("")
                .unwrap()
                .trusted_proxies
                .contains("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn a_bad_trusted_proxy_names_the_key_and_the_value() {
        for (entry, want) in [
            (
                "10.0.0.0/33",
                "\"10.0.0.0/33\" is not an IP address or a network",
            ),
            (
                "localhost",
                "\"localhost\" is not an IP address or a network",
            ),
            (
                "10.0.0.1/8",
                "\"10.0.0.1/8\" has host bits set: write the network (\"10.0.0.0/8\")",
            ),
            ("", "\"\" is not an IP address"),
        ] {
            let err =
                check(&format!("trusted_proxies = [\"127.0.0.1\", \"{entry}\"]")).unwrap_err();
            assert!(err.starts_with("t.toml: `trusted_proxies`: "), "{err}");
            assert!(err.contains(want), "{entry:?}: {err}");
        }
        let err = check("trusted_proxies = \"10.0.0.0/8\"").unwrap_err();
        assert!(err.starts_with("t.toml: `trusted_proxies`: "), "{err}");
    }

    /// The old all-or-nothing key is refused, whatever its value, with what to write instead.
    #[test]
    fn trust_forwarded_headers_is_refused_with_its_replacement() {
        assert_eq!(
            check("trust_forwarded_headers = true").unwrap_err(),
            "t.toml: `trust_forwarded_headers`: was replaced by `trusted_proxies`: list the \
             addresses of your front proxies, e.g. trusted_proxies = [\"127.0.0.1\"]"
        );
        assert_eq!(
            check("trust_forwarded_headers = false").unwrap_err(),
            "t.toml: `trust_forwarded_headers`: was replaced by `trusted_proxies`: delete the \
             line: without `trusted_proxies` no peer is trusted, as with false"
        );
        let err =
            check("trust_forwarded_headers = \"yes\"\ntrusted_proxies = [\"::1\"]").unwrap_err();
        assert!(
            err.starts_with(
                "t.toml: `trust_forwarded_headers`: was replaced by `trusted_proxies`: list"
            ),
            "{err}"
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
