//! The command line: flags that override `proxy.toml`, and the subcommands.
//!
//! Flags are applied to the raw config before validation, so a bad flag value gets the same
//! check (and the same kind of message) as a bad file value.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DurationSpec, RawConfig, parse_duration_arg};

/// An HTTP reverse proxy that gives server-side sessions to a web app that has none.
///
/// Every flag overrides the same setting in the config file; see proxy.toml for all settings
/// and their defaults.
#[derive(Debug, Parser)]
#[command(name = "session-proxy", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default when no subcommand is given).
    Run,
    /// Validate the configuration and exit: 0 if valid, 2 with the reason if not.
    Check,
    /// Inspect and maintain the session store.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Remove expired sessions now and print how many were removed (for cron users).
    Prune,
    /// Print live sessions as JSON lines: {"id", "data", "created_at", ...}.
    List {
        /// Stop after this many sessions.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Debug, clap::Args)]
pub struct Options {
    /// TOML config file; without it, built-in defaults (those shown in proxy.toml) apply.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The app to proxy to, e.g. http://127.0.0.1:3000.
    #[arg(long, global = true, value_name = "URL")]
    pub upstream: Option<String>,
    /// Session store: `memory`, `fs:<dir>`, or `redis://host:port/db` (also rediss://).
    #[arg(long, global = true, value_name = "STORE")]
    pub store: Option<String>,
    /// Session cookie name.
    #[arg(long, global = true, value_name = "NAME")]
    pub cookie_name: Option<String>,
    /// Cookie Max-Age, e.g. 12h (without it the cookie lasts for the browser session).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub cookie_max_age: Option<DurationSpec>,
    /// Cookie Domain attribute.
    #[arg(long, global = true, value_name = "DOMAIN")]
    pub cookie_domain: Option<String>,
    /// Cookie Path attribute.
    #[arg(long, global = true, value_name = "PATH")]
    pub cookie_path: Option<String>,
    /// Mark the cookie Secure (sent over HTTPS only).
    #[arg(long, global = true)]
    pub cookie_secure: bool,
    /// Cookie SameSite: lax, strict or none (none needs --cookie-secure).
    #[arg(long, global = true, value_name = "MODE")]
    pub cookie_same_site: Option<String>,
    /// Secret (>= 32 bytes) to sign the cookie with; prefer the environment variable.
    #[arg(
        long,
        global = true,
        env = "SESSION_PROXY_COOKIE_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub cookie_secret: Option<String>,
    /// Prefix of the protocol headers (default X-Session).
    #[arg(long, global = true, value_name = "PREFIX")]
    pub header_prefix: Option<String>,
    /// A session unused for this long dies (default 24h).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub idle_timeout: Option<DurationSpec>,
    /// A session dies this long after creation, however active (default: off).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub absolute_timeout: Option<DurationSpec>,
    /// An unmodified session is written to extend its life at most this often (default idle/10).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub touch_interval: Option<DurationSpec>,
}

impl Options {
    /// The file (or defaults) with the flags applied, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let (mut raw, origin) = match &self.config {
            Some(path) => (RawConfig::from_file(path)?, path.display().to_string()),
            None => (RawConfig::default(), "(defaults)".to_owned()),
        };
        self.apply(&mut raw, &origin)?;
        raw.validate(&origin)
    }

    fn apply(&self, raw: &mut RawConfig, origin: &str) -> Result<(), ConfigError> {
        fn set<T: Clone>(slot: &mut Option<T>, flag: &Option<T>) {
            if let Some(v) = flag {
                *slot = Some(v.clone());
            }
        }
        set(&mut raw.listen, &self.listen);
        set(&mut raw.upstream, &self.upstream);
        set(&mut raw.cookie.name, &self.cookie_name);
        set(&mut raw.cookie.max_age, &self.cookie_max_age);
        set(&mut raw.cookie.domain, &self.cookie_domain);
        set(&mut raw.cookie.path, &self.cookie_path);
        set(&mut raw.cookie.same_site, &self.cookie_same_site);
        set(&mut raw.cookie.secret, &self.cookie_secret);
        if self.cookie_secure {
            raw.cookie.secure = Some(true);
        }
        set(&mut raw.session.header_prefix, &self.header_prefix);
        set(&mut raw.session.idle_timeout, &self.idle_timeout);
        set(&mut raw.session.absolute_timeout, &self.absolute_timeout);
        set(&mut raw.session.touch_interval, &self.touch_interval);
        if let Some(spec) = &self.store {
            let st = &mut raw.store;
            // The flag chooses the store outright: settings of other kinds from the file go.
            let keep_timeouts = (st.timeout.take(), st.sweep_interval.take());
            let mut fresh = crate::config::RawStore {
                timeout: keep_timeouts.0,
                sweep_interval: keep_timeouts.1,
                ..Default::default()
            };
            if spec == "memory" {
                fresh.kind = Some("memory".to_owned());
            } else if let Some(dir) = spec.strip_prefix("fs:") {
                fresh.kind = Some("fs".to_owned());
                fresh.path = Some(PathBuf::from(dir));
                fresh.filename_template = st.filename_template.take();
                fresh.mode = st.mode.take();
                fresh.fsync = st.fsync.take();
            } else if spec.starts_with("redis://") || spec.starts_with("rediss://") {
                fresh.kind = Some("redis".to_owned());
                fresh.url = Some(spec.clone());
                fresh.key_prefix = st.key_prefix.take();
            } else {
                return Err(ConfigError::Invalid {
                    file: origin.to_owned(),
                    key: "--store",
                    message: format!("{spec:?} is not `memory`, `fs:<dir>` or `redis://...`"),
                });
            }
            *st = fresh;
        }
        Ok(())
    }
}
