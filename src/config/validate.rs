//! `RawConfig` → `Config`: each section's rule (in the section's own file, beside its type and
//! tests) called in the order of proxy.toml, so of several bad keys the first is reported. Here
//! too: the tests that cross sections (every key's error names it, the defaults, the shipped
//! proxy.toml), and the `check` helper every section's tests use.

use std::time::Duration;

use super::assertion::assertion;
use super::audit::audit;
use super::cookie::cookie;
use super::limits::limits;
use super::listeners::{
    DEFAULT_LISTEN, DEFAULT_UPSTREAM, admin, listen, parse_upstream, tls, trusted_proxies,
    upgrade_socket, upstream_timeouts,
};
use super::origin::Origin;
use super::session::session;
use super::store::store;
use super::traces::tracing;
use super::{Config, ConfigError, LogFormat, RawConfig};

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
            upgrade_socket: upgrade_socket(&at, self.upgrade_socket)?,
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
            assertion: None,
            tracing: tracing(&at, self.tracing)?,
        };
        config.assertion = assertion(&at, self.assertion, &config.upstream)?;
        if config.store.hash_users {
            let Some(key) = config.session.user_key.take() else {
                return Err(at.bad(
                    "store.hash_users",
                    "needs session.user_key: without it there is no user index to hash",
                ));
            };
            config.session.user_key = Some(key.hashing());
        }
        config.store.users = config.session.user_key.clone();
        Ok(config)
    }
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
        assert_eq!(c.session.socket_recheck, Duration::from_secs(30));
        let life = c.session.lifetime;
        assert_eq!(life.remember_max, Duration::from_secs(90 * 86400));
        assert_eq!(life.remember_absolute, None);
        assert_eq!(life.first_lifetime, Some(Duration::from_secs(600)));
        assert!(!c.session.devices_path.matches("/"));
        // remember_absolute follows absolute_timeout unless set; 0 turns it and
        // first_lifetime off.
        let c = check("[session]\nabsolute_timeout = \"7d\"\ndevices_path = [\"/me/\"]").unwrap();
        assert_eq!(
            c.session.lifetime.remember_absolute,
            Some(Duration::from_secs(7 * 86400))
        );
        assert!(c.session.devices_path.matches("/me/sessions"));
        let c = check(
            "[session]\nabsolute_timeout = \"7d\"\nremember_absolute = 0\nfirst_lifetime = 0",
        )
        .unwrap();
        assert_eq!(c.session.lifetime.remember_absolute, None);
        assert_eq!(c.session.lifetime.first_lifetime, None);
        let c = check("[session]\nsocket_recheck = \"500ms\"").unwrap();
        assert_eq!(c.session.socket_recheck, Duration::from_millis(500));
        assert_eq!(c.session.regenerate_grace, Duration::from_secs(10));
        assert_eq!(c.session.on_stale_use, crate::config::OnStaleUse::Ignore);
        let c = check("[session]\nregenerate_grace = \"0\"").unwrap();
        assert!(c.session.regenerate_grace.is_zero());
        let c = check("[session]\nuser_key = \"u\"\non_stale_use = \"revoke\"").unwrap();
        assert_eq!(c.session.on_stale_use, crate::config::OnStaleUse::Revoke);
        // Besides "revoke" without user_key (below, with every key): an unknown value, and
        // "revoke" with no grace (nothing could be stale).
        for text in [
            "[session]\nuser_key = \"u\"\non_stale_use = \"log\"",
            "[session]\nuser_key = \"u\"\nregenerate_grace = \"0\"\non_stale_use = \"revoke\"",
        ] {
            let shown = check(text).unwrap_err();
            assert!(shown.contains("`session.on_stale_use`"), "{shown}");
        }
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
            ("upgrade_socket", "upgrade_socket = \"\""),
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
            (
                "session.socket_recheck",
                "[session]\nsocket_recheck = \"0s\"",
            ),
            (
                "session.regenerate_grace",
                "[session]\nregenerate_grace = \"a while\"",
            ),
            (
                "session.on_stale_use",
                "[session]\non_stale_use = \"revoke\"",
            ),
            ("session.remember_max", "[session]\nremember_max = \"0s\""),
            (
                "session.remember_absolute",
                "[session]\nremember_absolute = \"forever\"",
            ),
            (
                "session.first_lifetime",
                "[session]\nfirst_lifetime = \"soon\"",
            ),
            ("session.devices_path", "[session]\ndevices_path = [\"me\"]"),
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
                "store.pool_size",
                "[store]\nkind = \"postgres\"\npool_size = 0",
            ),
            (
                "store.table",
                "[store]\nkind = \"postgres\"\ntable = \"no-dash\"",
            ),
            (
                "store.encryption_key",
                "[store]\nencryption_key = \"short\"",
            ),
            (
                "store.encryption_key_file",
                "[store]\nencryption_key_file = \"/nonexistent/keys\"",
            ),
            ("store.hash_users", "[store]\nhash_users = true"),
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
                "limits.request_buffer",
                "[limits]\nrequest_buffer = 2000000000",
            ),
            (
                "limits.request_buffer_total",
                "[limits]\nrequest_buffer = 4096\nrequest_buffer_total = 1024",
            ),
            ("limits.body_min_rate", "[limits]\nbody_min_rate = -1"),
            (
                "limits.body_min_rate_grace",
                "[limits]\nbody_min_rate_grace = \"0s\"",
            ),
            ("limits.max_body_size", "[limits]\nmax_body_size = 0"),
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
            (
                "limits.new_sessions_per_ip",
                "[limits]\nnew_sessions_per_ip = \"120/week\"",
            ),
            ("log.format", "[log]\nformat = \"xml\""),
            ("audit.path", "[audit]\npath = \"\""),
            ("audit.queue", "[audit]\npath = \"a.log\"\nqueue = 0"),
            ("assertion.key_file", "[assertion]\nkey_file = 1"),
            (
                "assertion.audience",
                "[assertion]\nkey_file = \"k\"\naudience = \"\"",
            ),
            ("assertion.issuer", "[assertion]\nissuer = \"x\""),
            (
                "assertion.ttl",
                "[assertion]\nkey_file = \"k\"\nttl = \"0s\"",
            ),
            (
                "tracing.otlp_endpoint",
                "[tracing]\notlp_endpoint = \"ftp://c\"",
            ),
            ("tracing.service_name", "[tracing]\nservice_name = \"x\""),
            (
                "tracing.sample_ratio",
                "[tracing]\notlp_endpoint = \"http://c\"\nsample_ratio = 2.0",
            ),
            (
                "tracing.queue",
                "[tracing]\notlp_endpoint = \"http://c\"\nqueue = 0",
            ),
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
        if cfg!(feature = "postgres") {
            cases.push((
                "[store]\nkind = \"postgres\"\nurl = \"redis://x\"",
                "store.url",
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
    fn the_shipped_proxy_toml_is_the_defaults() {
        let text = include_str!("../../proxy.toml");
        let shipped = check(text).unwrap();
        let defaults = check("").unwrap();
        assert_eq!(format!("{shipped:?}"), format!("{defaults:?}"));
    }
}
