//! The command line: flags that override `proxy.toml`, and the subcommands.
//!
//! Flags are applied to the raw config before validation, so a bad flag value gets the same
//! check (and the same kind of message) as a bad file value.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::store::Kind;
use crate::config::{
    Config, ConfigError, DurationSpec, RawConfig, RawStore, Secret, Secrets, StoreConfig,
    parse_duration_arg,
};

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
    /// Ask the admin listener's `/healthz` (or URL) and exit 0 when it answers 200, else 1:
    /// a container's HEALTHCHECK, where there is no curl. Plain HTTP, 5 s at most.
    Health {
        /// What to ask, e.g. http://127.0.0.1:9090/healthz; default `/healthz` on
        /// `admin.listen` (an unspecified address asked on loopback).
        url: Option<String>,
    },
    /// The signed assertion of the session (`[assertion]`).
    Assertion {
        #[command(subcommand)]
        command: AssertionCommand,
    },
    /// About the configuration itself.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the reference of every config key (type, default, flag, meaning) as Markdown: the
    /// page docs/src/configuration.md is this output. Reads no config file.
    Reference,
}

#[derive(Debug, Subcommand)]
pub enum AssertionCommand {
    /// Print the public keys as a JWKS (what the admin listener serves at
    /// /.well-known/jwks.json), for apps configured with a file. Creates the key file if
    /// missing, as a start does.
    Jwks,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Remove expired sessions now and print how many were removed (for cron users).
    Prune,
    /// Print live sessions as JSON lines: {"handle", "data", "created_at", "updated_at",
    /// "expires_at", "version"}. A handle is a session's public name (base64url of the SHA-256
    /// of its id); no store keeps the id itself.
    List {
        /// Stop after this many sessions.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Print one session as JSON (the same shape as a `list` line); exit 1 if it is unknown.
    Show {
        /// The session's handle (as `list` and the admin API show it).
        #[arg(
            required_unless_present = "id",
            conflicts_with = "id",
            allow_hyphen_values = true
        )]
        handle: Option<String>,
        /// Find the session from its id instead (the cookie's value, without a signature, as
        /// a user may paste it): hashed here into its handle, never sent anywhere.
        #[arg(long, value_name = "ID", allow_hyphen_values = true)]
        id: Option<String>,
    },
    /// Delete one session: its user's next request starts a fresh one. Exit 1 if unknown.
    Delete {
        /// The session's handle (as `list` and the admin API show it).
        #[arg(
            required_unless_present = "id",
            conflicts_with = "id",
            allow_hyphen_values = true
        )]
        handle: Option<String>,
        /// Name the session by its id instead (the cookie's value, without a signature).
        #[arg(long, value_name = "ID", allow_hyphen_values = true)]
        id: Option<String>,
    },
    /// Print the live sessions of one user (`session.user_key`) as JSON lines, oldest first.
    User {
        /// The user, as the session data names it.
        user: String,
    },
    /// Sign one user out everywhere: delete every live session of the user, print how many.
    Revoke {
        /// The user, as the session data names it.
        user: String,
    },
    /// Move what a release before handles left under session ids (Redis: keys named by the
    /// id, user-index members that are ids) under handles, print how many sessions moved,
    /// then mark the store migrated, so that proxies started afterwards stop looking for
    /// old keys. Safe while proxies run, and to run again. sqlite and fs migrate when the
    /// store is opened: nothing to do.
    Migrate,
    /// Copy every live session from one store to another, page by page, and print how many
    /// were copied. A session the destination already has is left alone, so a second run
    /// copies nothing new. The stores' other settings (timeout, fsync, ...) come from the
    /// config file's `[store]` where they apply.
    Copy {
        /// The store to read: `fs:<dir>`, `sqlite:<file>`, `redis://host:port/db` or
        /// `postgres://user@host:port/db`.
        #[arg(long, value_name = "STORE")]
        from: String,
        /// The store to write, in the same syntax.
        #[arg(long, value_name = "STORE")]
        to: String,
        /// The keys the source's data was encrypted with, one per line (as
        /// `store.encryption_key_file`); default: the configured keys. Unencrypted records read
        /// either way.
        #[arg(long, value_name = "FILE")]
        from_key_file: Option<PathBuf>,
        /// The keys to encrypt the destination's data with (the first encrypts); default: the
        /// configured keys. So a copy re-encrypts between stores with different keys.
        #[arg(long, value_name = "FILE", conflicts_with = "to_plain")]
        to_key_file: Option<PathBuf>,
        /// Write the destination unencrypted, whatever the configuration says (decrypts a
        /// store).
        #[arg(long)]
        to_plain: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// TOML config file; without it, built-in defaults (those shown in proxy.toml) apply.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Unix socket over which a running proxy hands its listeners to the next one (a restart
    /// or upgrade that refuses nothing; see docs/src/operations.md).
    #[arg(long, global = true, value_name = "PATH")]
    pub upgrade_socket: Option<PathBuf>,
    /// The app to proxy to, e.g. http://127.0.0.1:3000.
    #[arg(long, global = true, value_name = "URL")]
    pub upstream: Option<String>,
    /// Session store: `sqlite:<file>`, `fs:<dir>`, `memory`, `redis://host:port/db` (also
    /// rediss://), or `postgres://user@host:port/db`.
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
    /// Secret (>= 32 bytes) to sign the cookie with; prefer the environment variable or
    /// --cookie-secret-file. Repeat it (or put one secret per line in the variable) to rotate:
    /// the first signs, every one verifies.
    #[arg(
        long,
        global = true,
        env = "SESSION_PROXY_COOKIE_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        action = clap::ArgAction::Append,
        value_delimiter = '\n'
    )]
    pub cookie_secret: Vec<Secret>,
    /// File of cookie secrets, one per line (the first signs, every one verifies); re-read on
    /// SIGHUP.
    #[arg(long, global = true, value_name = "FILE")]
    pub cookie_secret_file: Option<PathBuf>,
    /// Key (>= 32 bytes) to encrypt session data in the store with; prefer the environment
    /// variable or --store-key-file. Repeat it (or put one key per line in the variable) to
    /// rotate: the first encrypts, every one decrypts.
    #[arg(
        long,
        global = true,
        env = "SESSION_PROXY_STORE_KEY",
        hide_env_values = true,
        value_name = "KEY",
        action = clap::ArgAction::Append,
        value_delimiter = '\n'
    )]
    pub store_key: Vec<Secret>,
    /// File of store encryption keys, one per line (the first encrypts, every one decrypts);
    /// re-read on SIGHUP.
    #[arg(long, global = true, value_name = "FILE")]
    pub store_key_file: Option<PathBuf>,
    /// Prefix of the protocol headers (default X-Session).
    #[arg(long, global = true, value_name = "PREFIX")]
    pub header_prefix: Option<String>,
    /// A session unused for this long dies (default 24h).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub idle_timeout: Option<DurationSpec>,
    /// A session dies this long after creation, however active (default: off).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub absolute_timeout: Option<DurationSpec>,
    /// An unmodified session is written to extend its life at most this often (default idle_timeout / 10).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub touch_interval: Option<DurationSpec>,
    /// Serve HTTPS: the PEM certificate chain (server certificate first); needs --tls-key.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, RSA or EC) of --tls-cert.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Log lines as `text` (key=value) or `json` (one object per line).
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Serve the admin API, page and metrics on this address, e.g. 127.0.0.1:9090.
    #[arg(long, global = true, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// File holding the admin token (needed when --admin-listen is not a loopback address).
    #[arg(long, global = true, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl Options {
    /// The file (or defaults) with the flags applied, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let (mut raw, origin) = self.raw()?;
        self.apply(&mut raw, &origin)?;
        raw.validate(&origin)
    }

    /// The store that `spec` (in the `--store` syntax) names, with the file's and the flags'
    /// other store settings where they apply to its kind: for `sessions copy`, which opens two.
    pub fn store_for(&self, spec: &str) -> Result<StoreConfig, ConfigError> {
        self.store_with_keys(spec, StoreKeys::Configured)
    }

    /// [`Options::store_for`], its encryption keys as `keys` says (`sessions copy`'s
    /// `--from-key-file`, `--to-key-file`, `--to-plain`); a bad key file is named by `keys`'
    /// flag.
    pub fn store_with_keys(&self, spec: &str, keys: StoreKeys) -> Result<StoreConfig, ConfigError> {
        let (mut raw, origin) = self.raw()?;
        self.apply(&mut raw, &origin)?;
        set_store(&mut raw.store, spec, &origin, "--from/--to")?;
        let flag = match keys {
            StoreKeys::Configured => None,
            StoreKeys::File(flag, file) => {
                raw.store.encryption_key = None;
                raw.store.encryption_key_file = Some(file.to_owned());
                Some(flag)
            }
            StoreKeys::Plain => {
                raw.store.encryption_key = None;
                raw.store.encryption_key_file = None;
                None
            }
        };
        raw.validate(&origin)
            .map(|c| c.store)
            .map_err(|e| match (e, flag) {
                (
                    ConfigError::Invalid {
                        file,
                        key: "store.encryption_key_file",
                        message,
                    },
                    Some(flag),
                ) => ConfigError::Invalid {
                    file,
                    key: flag,
                    message,
                },
                (e, _) => e,
            })
    }

    fn raw(&self) -> Result<(RawConfig, String), ConfigError> {
        Ok(match &self.config {
            Some(path) => (RawConfig::from_file(path)?, path.display().to_string()),
            None => (RawConfig::default(), "(defaults)".to_owned()),
        })
    }

    fn apply(&self, raw: &mut RawConfig, origin: &str) -> Result<(), ConfigError> {
        fn set<T: Clone>(slot: &mut Option<T>, flag: &Option<T>) {
            if let Some(v) = flag {
                *slot = Some(v.clone());
            }
        }
        set(&mut raw.listen, &self.listen);
        set(&mut raw.upstream, &self.upstream);
        set(&mut raw.upgrade_socket, &self.upgrade_socket);
        set(&mut raw.cookie.name, &self.cookie_name);
        set(&mut raw.cookie.max_age, &self.cookie_max_age);
        set(&mut raw.cookie.domain, &self.cookie_domain);
        set(&mut raw.cookie.path, &self.cookie_path);
        set(&mut raw.cookie.same_site, &self.cookie_same_site);
        // Either flag (or the variable) replaces whichever secrets the file configured.
        if let Some((secrets, file)) = secret_flags(
            origin,
            &self.cookie_secret,
            &self.cookie_secret_file,
            COOKIE_FLAGS,
        )? {
            raw.cookie.secret = secrets;
            raw.cookie.secret_file = file;
        }
        if let Some((secrets, file)) = secret_flags(
            origin,
            &self.store_key,
            &self.store_key_file,
            STORE_KEY_FLAGS,
        )? {
            raw.store.encryption_key = secrets;
            raw.store.encryption_key_file = file;
        }
        if self.cookie_secure {
            raw.cookie.secure = Some(true);
        }
        set(&mut raw.session.header_prefix, &self.header_prefix);
        set(&mut raw.session.idle_timeout, &self.idle_timeout);
        set(&mut raw.session.absolute_timeout, &self.absolute_timeout);
        set(&mut raw.session.touch_interval, &self.touch_interval);
        set(&mut raw.tls.cert, &self.tls_cert);
        set(&mut raw.tls.key, &self.tls_key);
        set(&mut raw.admin.listen, &self.admin_listen);
        set(&mut raw.log.format, &self.log_format);
        if let Some(file) = &self.admin_token_file {
            // The flag replaces whichever token the file configured.
            raw.admin.token = None;
            raw.admin.token_file = Some(file.clone());
        }
        if let Some(spec) = &self.store {
            set_store(&mut raw.store, spec, origin, "--store")?;
        }
        // The OpenTelemetry standard variables, over the file like every flag.
        let var = |name: &str| std::env::var(name).ok();
        if let Some(endpoint) = super::traces::endpoint_from_env(var) {
            raw.tracing.otlp_endpoint = Some(endpoint);
        }
        if let Some(name) = var("OTEL_SERVICE_NAME").filter(|n| !n.is_empty()) {
            raw.tracing.service_name = Some(name);
        }
        Ok(())
    }
}

/// Where a store of `sessions copy` takes its encryption keys from.
#[derive(Debug, Clone, Copy)]
pub enum StoreKeys<'a> {
    /// The configuration's (`store.encryption_key`, the flags, the variable).
    Configured,
    /// A key file given by the named flag.
    File(&'static str, &'a std::path::Path),
    /// None: data is written unencrypted.
    Plain,
}

/// The names a pair of secret flags goes by in errors: the list flag, its variable, the file
/// flag.
struct SecretFlags {
    list: &'static str,
    env: &'static str,
    file: &'static str,
}

const COOKIE_FLAGS: SecretFlags = SecretFlags {
    list: "--cookie-secret",
    env: "SESSION_PROXY_COOKIE_SECRET",
    file: "--cookie-secret-file",
};

const STORE_KEY_FLAGS: SecretFlags = SecretFlags {
    list: "--store-key",
    env: "SESSION_PROXY_STORE_KEY",
    file: "--store-key-file",
};

/// The secrets a section takes from its flags: the list, or the file.
type SecretChoice = (Option<Secrets>, Option<PathBuf>);

/// What a list flag of secrets (or its variable) and its file flag make of the file's two
/// keys: `None` when neither is given (the file's stand), else the list and the file to use.
fn secret_flags(
    origin: &str,
    list: &[Secret],
    file: &Option<PathBuf>,
    names: SecretFlags,
) -> Result<Option<SecretChoice>, ConfigError> {
    match (list, file) {
        ([], None) => Ok(None),
        ([_, ..], Some(_)) => Err(ConfigError::Invalid {
            file: origin.to_owned(),
            key: names.file,
            message: format!(
                "give either {} (or {}) or {}, not both",
                names.list, names.env, names.file
            ),
        }),
        (secrets, None) => {
            // Lines of the variable are trimmed like the lines of a file, so a trailing
            // newline (`$(cat file)` keeps none, `export` of a heredoc does) is no secret.
            let secrets: Vec<Secret> = secrets
                .iter()
                .map(|s| s.as_str().trim())
                .filter(|s| !s.is_empty())
                .map(|s| Secret::from(s.to_owned()))
                .collect();
            if secrets.is_empty() {
                return Err(ConfigError::Invalid {
                    file: origin.to_owned(),
                    key: names.list,
                    message: format!("holds no secret (is {} empty?)", names.env),
                });
            }
            Ok(Some((Some(Secrets::Many(secrets)), None)))
        }
        ([], Some(file)) => Ok(Some((None, Some(file.clone())))),
    }
}

/// Makes `st` the store `spec` names (the `--store` syntax); `flag` names the flag in errors.
fn set_store(
    st: &mut RawStore,
    spec: &str,
    origin: &str,
    flag: &'static str,
) -> Result<(), ConfigError> {
    if spec == "memory" {
        st.choose(Kind::Memory);
    } else if let Some(file) = spec.strip_prefix("sqlite:") {
        st.choose(Kind::Sqlite);
        st.path = Some(PathBuf::from(file));
    } else if let Some(dir) = spec.strip_prefix("fs:") {
        st.choose(Kind::Fs);
        st.path = Some(PathBuf::from(dir));
    } else if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        st.choose(Kind::Redis);
        st.url = Some(spec.to_owned());
    } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        st.choose(Kind::Postgres);
        st.url = Some(spec.to_owned());
    } else {
        return Err(ConfigError::Invalid {
            file: origin.to_owned(),
            key: flag,
            message: format!(
                "{spec:?} is not `sqlite:<file>`, `fs:<dir>`, `memory`, `redis://...` or `postgres://...`"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::StoreKind;

    /// `[store]` of the file after the `--store` flag, and the validated result.
    fn with_flag(file: &str, flag: &str) -> (crate::config::RawStore, Result<Config, String>) {
        let cli = Cli::try_parse_from(["session-proxy", "--store", flag]).unwrap();
        let mut raw = RawConfig::from_toml("t.toml", file).unwrap();
        cli.options.apply(&mut raw, "t.toml").unwrap();
        let store = raw.store.clone();
        (store, raw.validate("t.toml").map_err(|e| e.to_string()))
    }

    const FS_FILE: &str = "[store]\nkind = \"fs\"\ntimeout = \"3s\"\nsweep_interval = \"1m\"\n\
        path = \"a\"\nfilename_template = \"s_%s\"\nmode = 0o640\nfsync = false\n";
    const REDIS_FILE: &str = "[store]\nkind = \"redis\"\ntimeout = \"3s\"\nsweep_interval = \"1m\"\n\
        key_prefix = \"p:\"\ncluster = true\nnodes = [\"redis://n1\", \"redis://n2\"]\n";

    #[test]
    fn the_secret_flag_never_shows_in_debug_output() {
        let secret = "0123456789abcdef0123456789abcdef-flag";
        let cli = Cli::try_parse_from(["session-proxy", "--cookie-secret", secret]).unwrap();
        assert!(!format!("{cli:?}").contains(secret), "{cli:?}");
        let mut raw = RawConfig::default();
        cli.options.apply(&mut raw, "t.toml").unwrap();
        let given: Vec<String> = raw
            .cookie
            .secret
            .clone()
            .unwrap()
            .into_vec()
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        assert_eq!(given, [secret]);
        assert!(!format!("{raw:?}").contains(secret), "{raw:?}");
        assert_eq!(raw.validate("t.toml").unwrap().cookie.keys.len(), 1);
    }

    /// Repeated, the flag is a list (the first signs); either secrets flag replaces what the
    /// file configured, and both at once are refused.
    #[test]
    fn the_secret_flags_replace_the_files_secrets() {
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        let file = "[cookie]\nsecret_file = \"/nonexistent\"";
        let cli = Cli::try_parse_from([
            "session-proxy",
            "--cookie-secret",
            &a,
            "--cookie-secret",
            &b,
        ])
        .unwrap();
        let mut raw = RawConfig::from_toml("t.toml", file).unwrap();
        cli.options.apply(&mut raw, "t.toml").unwrap();
        let keys = raw.validate("t.toml").unwrap().cookie.keys;
        assert!(
            keys == [
                cookie::Key::derive_from(a.as_bytes()),
                cookie::Key::derive_from(b.as_bytes())
            ]
        );

        // One value with a secret per line, as the environment variable holds them.
        let lines = format!("{a}\n{b}\n");
        let cli = Cli::try_parse_from(["session-proxy", "--cookie-secret", &lines]).unwrap();
        let mut raw = RawConfig::default();
        cli.options.apply(&mut raw, "t.toml").unwrap();
        assert_eq!(raw.validate("t.toml").unwrap().cookie.keys.len(), 2);

        let cli =
            Cli::try_parse_from(["session-proxy", "--cookie-secret-file", "/nonexistent"]).unwrap();
        let mut raw =
            RawConfig::from_toml("t.toml", &format!("[cookie]\nsecret = \"{a}\"")).unwrap();
        cli.options.apply(&mut raw, "t.toml").unwrap();
        assert!(raw.cookie.secret.is_none());
        let err = raw.validate("t.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("t.toml: `cookie.secret_file`: cannot read /nonexistent"),
            "{err}"
        );

        let cli = Cli::try_parse_from([
            "session-proxy",
            "--cookie-secret",
            &a,
            "--cookie-secret-file",
            "/x",
        ])
        .unwrap();
        let err = cli
            .options
            .apply(&mut RawConfig::default(), "t.toml")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("t.toml: `--cookie-secret-file`: give either"),
            "{err}"
        );

        let cli = Cli::try_parse_from(["session-proxy", "--cookie-secret", "\n \n"]).unwrap();
        let err = cli
            .options
            .apply(&mut RawConfig::default(), "t.toml")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("t.toml: `--cookie-secret`: holds no secret"),
            "{err}"
        );
    }

    /// The store's keys take the cookie secrets' flags' rules: the list flag (or
    /// SESSION_PROXY_STORE_KEY, one key a line) or the file flag replaces the file's keys; both
    /// at once, or an empty variable, are refused by the flag's name.
    #[test]
    fn store_key_flags_replace_the_files_keys() {
        let (a, b) = ("a".repeat(32), "b".repeat(40));
        let lines = format!("{a}\n{b}\n");
        let cli = Cli::try_parse_from(["session-proxy", "--store-key", &lines]).unwrap();
        let mut raw =
            RawConfig::from_toml("t.toml", "[store]\nencryption_key_file = \"/x\"").unwrap();
        cli.options.apply(&mut raw, "t.toml").unwrap();
        let keys = raw.validate("t.toml").unwrap().store.encryption_keys;
        let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        assert_eq!(keys, [a.as_str(), b.as_str()]);

        let cli =
            Cli::try_parse_from(["session-proxy", "--store-key-file", "/nonexistent"]).unwrap();
        let mut raw =
            RawConfig::from_toml("t.toml", &format!("[store]\nencryption_key = \"{a}\"")).unwrap();
        cli.options.apply(&mut raw, "t.toml").unwrap();
        let err = raw.validate("t.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("t.toml: `store.encryption_key_file`: cannot read /nonexistent"),
            "{err}"
        );

        for (args, want) in [
            (
                vec!["--store-key", a.as_str(), "--store-key-file", "/x"],
                "t.toml: `--store-key-file`: give either --store-key (or SESSION_PROXY_STORE_KEY) or --store-key-file, not both",
            ),
            (
                vec!["--store-key", "\n \n"],
                "t.toml: `--store-key`: holds no secret (is SESSION_PROXY_STORE_KEY empty?)",
            ),
        ] {
            let cli = Cli::try_parse_from(["session-proxy"].into_iter().chain(args)).unwrap();
            let err = cli
                .options
                .apply(&mut RawConfig::default(), "t.toml")
                .unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }

    /// The flag chooses the store outright: the file's settings of other kinds, and where its
    /// store was, go; settings of the chosen kind and the timeouts stay.
    #[test]
    fn the_store_flag_keeps_only_settings_of_its_kind() {
        let (st, config) = with_flag(FS_FILE, "fs:/b");
        assert_eq!(st.path.as_deref(), Some(std::path::Path::new("/b")));
        assert_eq!(
            (st.filename_template.as_deref(), st.mode, st.fsync),
            (Some("s_%s"), Some(0o640), Some(false))
        );
        let config = config.unwrap();
        assert_eq!(config.store.timeout, std::time::Duration::from_secs(3));
        assert_eq!(
            config.store.sweep_interval,
            std::time::Duration::from_secs(60)
        );

        let (st, config) = with_flag(FS_FILE, "memory");
        assert_eq!(st.kind.as_deref(), Some("memory"));
        assert!(st.timeout.is_some() && st.sweep_interval.is_some());
        assert!(st.path.is_none() && st.filename_template.is_none());
        assert!(st.mode.is_none() && st.fsync.is_none());
        assert!(matches!(config.unwrap().store.kind, StoreKind::Memory));

        let (st, config) = with_flag(REDIS_FILE, "fs:/b");
        assert_eq!(st.kind.as_deref(), Some("fs"));
        assert!(st.key_prefix.is_none() && st.cluster.is_none() && st.nodes.is_none());
        assert!(st.timeout.is_some() && st.sweep_interval.is_some());
        assert!(matches!(config.unwrap().store.kind, StoreKind::Fs(_)));

        // fs and sqlite share fsync and mode; the directory goes, sqlite's file comes.
        let (st, config) = with_flag(FS_FILE, "sqlite:/c.db");
        assert_eq!(st.kind.as_deref(), Some("sqlite"));
        assert_eq!(st.path.as_deref(), Some(std::path::Path::new("/c.db")));
        assert_eq!((st.mode, st.fsync), (Some(0o640), Some(false)));
        assert!(st.filename_template.is_none());
        match config.unwrap().store.kind {
            StoreKind::Sqlite(s) => {
                assert_eq!(s.path, std::path::Path::new("/c.db"));
                assert!(!s.fsync);
                assert_eq!(s.timeout, std::time::Duration::from_secs(3));
            }
            other => panic!("{other:?}"),
        }

        let (st, _) = with_flag(FS_FILE, "redis://h");
        assert_eq!(st.kind.as_deref(), Some("redis"));
        assert_eq!(st.url.as_deref(), Some("redis://h"));
        assert!(st.path.is_none() && st.filename_template.is_none());
        assert!(st.mode.is_none() && st.fsync.is_none());

        // The flag's URL replaces the file's nodes (and the cluster switch); the prefix stays.
        let (st, config) = with_flag(REDIS_FILE, "rediss://h");
        assert_eq!(st.url.as_deref(), Some("rediss://h"));
        assert_eq!(st.key_prefix.as_deref(), Some("p:"));
        assert!(st.cluster.is_none() && st.nodes.is_none());
        if cfg!(feature = "redis") {
            match config.unwrap().store.kind {
                StoreKind::Redis(r) => {
                    assert_eq!(r.urls, ["rediss://h"]);
                    assert!(!r.cluster);
                    assert_eq!(r.key_prefix, "p:");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// An id or a handle may start with `-` (it is base64url): `show` and `delete` take it as
    /// the value it is, not as a flag.
    #[test]
    fn an_id_or_handle_starting_with_a_dash_is_a_value() {
        let id = format!("-{}", "a".repeat(31));
        let handle = format!("-{}A", "b".repeat(41));
        for args in [
            ["session-proxy", "sessions", "show", "--id", id.as_str()],
            ["session-proxy", "sessions", "delete", "--id", id.as_str()],
            ["session-proxy", "sessions", "show", "--", handle.as_str()],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Some(Command::Sessions { command }) = cli.command else {
                panic!("{args:?}")
            };
            match command {
                SessionsCommand::Show { handle: h, id: i }
                | SessionsCommand::Delete { handle: h, id: i } => {
                    assert!(
                        h.as_deref() == Some(handle.as_str()) || i.as_deref() == Some(id.as_str())
                    );
                }
                _ => panic!("{args:?}"),
            }
        }
        let cli = Cli::try_parse_from(["session-proxy", "sessions", "show", handle.as_str()])
            .unwrap_or_else(|e| panic!("{e}"));
        let Some(Command::Sessions {
            command: SessionsCommand::Show { handle: h, .. },
        }) = cli.command
        else {
            panic!("not a show")
        };
        assert_eq!(h.as_deref(), Some(handle.as_str()));
    }
}
