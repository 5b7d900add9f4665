//! `[store]`: which store (`kind`) and its settings, and the one table of which keys belong to
//! which kind. The file's validation and the `--store` flag (`cli.rs`) both go by that table, so
//! a key set for another kind is refused by its own name, and a flag keeps only what applies.

use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use super::origin::Origin;
use super::raw::RawStore;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Upper bound on one store call made on behalf of a request.
    pub timeout: Duration,
    /// How often the background sweeper removes expired sessions (memory, fs and sqlite stores).
    pub sweep_interval: Duration,
    /// What a request gets while the store fails.
    pub on_error: OnStoreError,
    /// `session.user_key`, copied here so every opener of the store (the proxy, the CLI,
    /// `sessions copy`) keeps the same user index without passing it along.
    pub users: Option<crate::session::UserKey>,
    /// `store.encryption_key` (or `encryption_key_file`): the secrets session data is sealed
    /// with, checked like the cookie secrets (32 bytes or more, no repeat); the first seals,
    /// every one opens. Empty: data is stored as it is.
    pub encryption_keys: Vec<super::Secret>,
    /// Where the keys were read from (`store.encryption_key_file`), if from a file: its mode is
    /// checked at start and on each reload, like `cookie.secret_file`.
    pub encryption_key_file: Option<PathBuf>,
    /// `store.hash_users`: the user index holds a hash of each user (`UserKey::indexed`), not
    /// the user as the data names it. Needs `session.user_key`.
    pub hash_users: bool,
}

/// The store-down policy (`store.on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// A 503 with `Retry-After`; the app is not called when the session cannot be loaded.
    FailClosed,
    /// The request goes to the app without a session and with `X-Session-Unavailable: 1`; no
    /// cookie is set or cleared and nothing stored is written, so the session is intact when
    /// the store is back.
    FailOpen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Fs(FsConfig),
    Sqlite(SqliteConfig),
    Redis(RedisConfig),
    Postgres(PostgresConfig),
}

impl StoreKind {
    /// The kind's name, as `store.kind` writes it.
    pub fn name(&self) -> &'static str {
        match self {
            StoreKind::Memory => Kind::Memory,
            StoreKind::Fs(_) => Kind::Fs,
            StoreKind::Sqlite(_) => Kind::Sqlite,
            StoreKind::Redis(_) => Kind::Redis,
            StoreKind::Postgres(_) => Kind::Postgres,
        }
        .name()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    pub path: PathBuf,
    /// Contains exactly one `%s` and no path separator.
    pub filename_template: String,
    pub mode: u32,
    pub fsync: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// The database file; created (with `mode`) if missing. Its `-wal` and `-shm` files live
    /// beside it, so the directory must be writable.
    pub path: PathBuf,
    /// The mode a new database file is created with (SQLite gives its `-wal` and `-shm` files
    /// the same one); an existing file keeps its own.
    pub mode: u32,
    /// `true`: `synchronous = FULL`, a commit survives power loss. `false`: `NORMAL`, which in
    /// WAL mode may lose the last commits on power loss but never corrupts the file.
    pub fsync: bool,
    /// `store.timeout`: how long a write waits for another process's write lock (busy timeout).
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Connection URLs: one for a standalone server, one or more seed nodes for a cluster.
    pub urls: Vec<String>,
    /// `store.timeout`: the client's own connect and command timeouts are derived from it.
    pub timeout: Duration,
    pub key_prefix: String,
    pub cluster: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `store.url`: `postgres://user:pass@host:5432/db?sslmode=...`, checked for its scheme
    /// here; the store parses the rest (and `PGPASSWORD` / `PGSSLMODE` where the URL is silent).
    pub url: String,
    /// `store.pool_size`: the most connections one proxy holds open.
    pub pool_size: usize,
    /// `store.table`: the schema the store's tables live in, created on first start.
    pub schema: String,
    /// `store.timeout`: the connect timeout, and the pool's wait for a connection.
    pub timeout: Duration,
}

/// The store kinds, as `store.kind` and the `--store` flag name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sqlite,
    Fs,
    Memory,
    Redis,
    Postgres,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Sqlite,
        Kind::Fs,
        Kind::Memory,
        Kind::Redis,
        Kind::Postgres,
    ];
    /// The embedded store that survives restarts and needs nothing installed.
    const DEFAULT: Kind = Kind::Sqlite;

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Fs => "fs",
            Kind::Memory => "memory",
            Kind::Redis => "redis",
            Kind::Postgres => "postgres",
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// What a `[store]` key is to the `--store` flag, which names a kind and where the store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A setting of the kinds it applies to: a flag choosing one of them keeps the file's value.
    Setting,
    /// Says where the store is (which directory, server or cluster): the flag says that itself,
    /// so the file's value goes.
    Location,
}

/// One `[store]` key besides `kind`, with how to see and drop it in a [`RawStore`].
struct StoreKey {
    name: &'static str,
    kinds: &'static [Kind],
    role: Role,
    is_set: fn(&RawStore) -> bool,
    clear: fn(&mut RawStore),
}

/// The key's name comes from the field itself, so an error can never name a neighbour.
macro_rules! store_key {
    ($field:ident, $kinds:expr, $role:expr) => {
        StoreKey {
            name: concat!("store.", stringify!($field)),
            kinds: $kinds,
            role: $role,
            is_set: |s| s.$field.is_some(),
            clear: |s| s.$field = None,
        }
    };
}

/// Which `[store]` keys belong to which kind. File validation and the `--store` flag both go by
/// this one list, so a new kind or key is added here and nowhere else.
const STORE_KEYS: [StoreKey; 16] = [
    store_key!(timeout, &Kind::ALL, Role::Setting),
    store_key!(sweep_interval, &Kind::ALL, Role::Setting),
    store_key!(on_error, &Kind::ALL, Role::Setting),
    store_key!(path, &[Kind::Sqlite, Kind::Fs], Role::Location),
    store_key!(filename_template, &[Kind::Fs], Role::Setting),
    store_key!(mode, &[Kind::Sqlite, Kind::Fs], Role::Setting),
    store_key!(fsync, &[Kind::Sqlite, Kind::Fs], Role::Setting),
    store_key!(url, &[Kind::Redis, Kind::Postgres], Role::Location),
    store_key!(key_prefix, &[Kind::Redis], Role::Setting),
    store_key!(cluster, &[Kind::Redis], Role::Location),
    store_key!(nodes, &[Kind::Redis], Role::Location),
    store_key!(pool_size, &[Kind::Postgres], Role::Setting),
    store_key!(table, &[Kind::Postgres], Role::Setting),
    store_key!(encryption_key, &Kind::ALL, Role::Setting),
    store_key!(encryption_key_file, &Kind::ALL, Role::Setting),
    store_key!(hash_users, &Kind::ALL, Role::Setting),
];

/// Where the store's encryption keys come from.
const ENCRYPTION_KEYS: super::cookie::SecretKeys = super::cookie::SecretKeys {
    list: "store.encryption_key",
    file: "store.encryption_key_file",
    none: "remove the key to store session data unencrypted",
};

impl RawStore {
    /// Makes this a `kind` store for a `--store` flag, which chooses the store outright: the
    /// settings of other kinds and where the store was go, the settings of `kind` stay. The
    /// caller then sets where the store is, from the flag.
    pub(crate) fn choose(&mut self, kind: Kind) {
        self.kind = Some(kind.name().to_owned());
        for key in &STORE_KEYS {
            if key.role == Role::Location || !key.kinds.contains(&kind) {
                (key.clear)(self);
            }
        }
    }
}

pub(super) fn store(at: &Origin, st: RawStore) -> Result<StoreConfig, ConfigError> {
    let store_timeout = at.duration("store.timeout", &st.timeout, Duration::from_secs(2))?;
    at.positive("store.timeout", store_timeout)?;
    let kind_name = st.kind.as_deref().unwrap_or(Kind::DEFAULT.name());
    let Some(kind) = Kind::from_name(kind_name) else {
        let names: Vec<String> = Kind::ALL
            .iter()
            .map(|k| format!("{:?}", k.name()))
            .collect();
        return Err(at.bad(
            "store.kind",
            format!("{kind_name:?} is not one of {}", names.join(", ")),
        ));
    };
    if let Some(key) = STORE_KEYS
        .iter()
        .find(|key| (key.is_set)(&st) && !key.kinds.contains(&kind))
    {
        return Err(at.bad(
            key.name,
            format!("does not apply to store.kind = {:?}", kind.name()),
        ));
    }
    let mode = st.mode.unwrap_or(0o600);
    if mode > 0o777 || mode & 0o600 != 0o600 {
        return Err(at.bad(
            "store.mode",
            format!(
                "{mode:#o} must be a file mode within 0o777 that lets the owner read and write"
            ),
        ));
    }
    let encryption_keys = super::cookie::secrets(
        at,
        &ENCRYPTION_KEYS,
        st.encryption_key,
        st.encryption_key_file.as_deref(),
    )?
    .into_iter()
    .map(super::Secret::from)
    .collect();
    let kind = match kind {
        Kind::Memory => StoreKind::Memory,
        Kind::Sqlite => StoreKind::Sqlite(SqliteConfig {
            path: st.path.unwrap_or_else(|| PathBuf::from("sessions.db")),
            mode,
            fsync: st.fsync.unwrap_or(true),
            timeout: store_timeout,
        }),
        Kind::Fs => {
            let filename_template = st
                .filename_template
                .unwrap_or_else(|| "session_%s.json".to_owned());
            if filename_template.matches("%s").count() != 1
                || filename_template.contains(['/', '\\', '\0'])
                || filename_template.starts_with('.')
            {
                return Err(at.bad(
                    "store.filename_template",
                    format!(
                        "{filename_template:?} must contain %s exactly once, no path separator, and not start with a dot"
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
        Kind::Redis => {
            if !cfg!(feature = "redis") {
                return Err(at.bad(
                    "store.kind",
                    "this binary was built without the `redis` feature",
                ));
            }
            let cluster = st.cluster.unwrap_or(false) || st.nodes.is_some();
            // The key the URLs came from, for an error about one of them.
            let (urls_key, urls) = match (st.url, st.nodes) {
                (Some(_), Some(_)) => {
                    return Err(at.bad(
                        "store.nodes",
                        "give either store.url or store.nodes, not both",
                    ));
                }
                (Some(u), None) => ("store.url", vec![u]),
                (None, Some(n)) if !n.is_empty() => ("store.nodes", n),
                (None, Some(_)) => {
                    return Err(at.bad("store.nodes", "must list at least one node"));
                }
                (None, None) => ("store.url", vec!["redis://127.0.0.1:6379/0".to_owned()]),
            };
            for u in &urls {
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    return Err(at.bad(
                        urls_key,
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
        Kind::Postgres => postgres(at, st.url, st.pool_size, st.table, store_timeout)?,
    };
    let sweep_interval = at.duration(
        "store.sweep_interval",
        &st.sweep_interval,
        Duration::from_secs(300),
    )?;
    at.positive("store.sweep_interval", sweep_interval)?;
    let on_error = match st.on_error.as_deref() {
        None | Some("fail_closed") => OnStoreError::FailClosed,
        Some("fail_open") => OnStoreError::FailOpen,
        Some(other) => {
            return Err(at.bad(
                "store.on_error",
                format!("{other:?} is not one of \"fail_closed\", \"fail_open\""),
            ));
        }
    };
    Ok(StoreConfig {
        kind,
        timeout: store_timeout,
        sweep_interval,
        on_error,
        users: None,
        encryption_keys,
        encryption_key_file: st.encryption_key_file,
        hash_users: st.hash_users.unwrap_or(false),
    })
}

/// `[store]` of `kind = "postgres"`: the URL's scheme, the pool's size and the schema's name
/// (an SQL identifier the store can write unquoted).
fn postgres(
    at: &Origin,
    url: Option<String>,
    pool_size: Option<u32>,
    table: Option<String>,
    timeout: Duration,
) -> Result<StoreKind, ConfigError> {
    if !cfg!(feature = "postgres") {
        return Err(at.bad(
            "store.kind",
            "this binary was built without the `postgres` feature",
        ));
    }
    let url = url.unwrap_or_else(|| "postgres://127.0.0.1:5432/postgres".to_owned());
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(at.bad(
            "store.url",
            "must start with postgres:// or postgresql:// (the password is not shown here)",
        ));
    }
    let pool_size = pool_size.unwrap_or(16);
    if !(1..=1024).contains(&pool_size) {
        return Err(at.bad(
            "store.pool_size",
            format!("{pool_size} must be between 1 and 1024"),
        ));
    }
    let schema = table.unwrap_or_else(|| "session_proxy".to_owned());
    let first_ok = schema
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !first_ok || !rest_ok || schema.len() > 63 {
        return Err(at.bad(
            "store.table",
            format!(
                "{schema:?} must be 1 to 63 of a-z, 0-9 and _, not starting with a digit (a PostgreSQL schema name)"
            ),
        ));
    }
    Ok(StoreKind::Postgres(PostgresConfig {
        url,
        pool_size: pool_size as usize,
        schema,
        timeout,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::validate::check;

    /// The key that is set where it does not belong, not some other key of its kind.
    #[test]
    fn a_key_of_another_store_kind_names_itself() {
        let cases = [
            ("memory", "path = \"x\"", "store.path"),
            (
                "memory",
                "filename_template = \"s_%s\"",
                "store.filename_template",
            ),
            ("memory", "mode = 0o600", "store.mode"),
            ("memory", "fsync = true", "store.fsync"),
            ("memory", "url = \"redis://x\"", "store.url"),
            ("memory", "key_prefix = \"s:\"", "store.key_prefix"),
            ("memory", "cluster = true", "store.cluster"),
            ("memory", "nodes = [\"redis://x\"]", "store.nodes"),
            (
                "sqlite",
                "filename_template = \"s_%s\"",
                "store.filename_template",
            ),
            ("sqlite", "url = \"redis://x\"", "store.url"),
            ("sqlite", "key_prefix = \"s:\"", "store.key_prefix"),
            ("sqlite", "cluster = false", "store.cluster"),
            ("sqlite", "nodes = [\"redis://x\"]", "store.nodes"),
            ("fs", "url = \"redis://x\"", "store.url"),
            ("fs", "key_prefix = \"s:\"", "store.key_prefix"),
            ("fs", "cluster = false", "store.cluster"),
            ("fs", "nodes = [\"redis://x\"]", "store.nodes"),
            ("redis", "path = \"x\"", "store.path"),
            (
                "redis",
                "filename_template = \"s_%s\"",
                "store.filename_template",
            ),
            ("redis", "mode = 0o600", "store.mode"),
            ("redis", "fsync = false", "store.fsync"),
        ];
        for (kind, line, want) in cases {
            let text = format!("[store]\nkind = \"{kind}\"\n{line}\n");
            let err = check(&text).unwrap_err();
            assert_eq!(
                err,
                format!("t.toml: `{want}`: does not apply to store.kind = \"{kind}\""),
                "{text}"
            );
        }
    }

    /// The store's keys are checked like the cookie secrets, by the same code: each one named
    /// by its position or line, never shown; a list, a file, and the two refused together.
    #[test]
    fn store_encryption_keys_as_a_list_or_a_file() {
        let (a, b) = ("a".repeat(32), "b".repeat(40));
        let c = check(&format!("[store]\nencryption_key = [\"{a}\", \"{b}\"]")).unwrap();
        let keys: Vec<&str> = c.store.encryption_keys.iter().map(|s| s.as_str()).collect();
        assert_eq!(keys, [a.as_str(), b.as_str()]);
        assert!(!format!("{c:?}").contains(&a));
        assert!(check("").unwrap().store.encryption_keys.is_empty());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, format!("# newest first\n{b}\n\n{a}\n")).unwrap();
        let text = format!("[store]\nencryption_key_file = \"{}\"", file.display());
        let c = check(&text).unwrap();
        let keys: Vec<&str> = c.store.encryption_keys.iter().map(|s| s.as_str()).collect();
        assert_eq!(keys, [b.as_str(), a.as_str()]);
        assert_eq!(c.store.encryption_key_file.as_deref(), Some(file.as_path()));

        let short = "s".repeat(31);
        std::fs::write(&file, format!("{a}\n{short}\n")).unwrap();
        assert_eq!(
            check(&text).unwrap_err(),
            format!(
                "t.toml: `store.encryption_key_file`: {} line 2: must be at least 32 bytes of random text, got 31",
                file.display()
            )
        );
        for (text, want) in [
            (
                format!("[store]\nencryption_key = [\"{a}\", \"{short}\"]"),
                "t.toml: `store.encryption_key`: secret 1 (of 2, counting from 0): must be at least 32 bytes of random text, got 31".to_owned(),
            ),
            (
                "[store]\nencryption_key = []".to_owned(),
                "t.toml: `store.encryption_key`: the list is empty: give at least one secret, or remove the key to store session data unencrypted".to_owned(),
            ),
            (
                format!("[store]\nencryption_key = [\"{a}\", \"{a}\"]"),
                "t.toml: `store.encryption_key`: secret 1 (of 2, counting from 0) repeats secret 0 (of 2, counting from 0)".to_owned(),
            ),
            (
                format!(
                    "[store]\nencryption_key = \"{a}\"\nencryption_key_file = \"{}\"",
                    file.display()
                ),
                "t.toml: `store.encryption_key_file`: give either store.encryption_key or store.encryption_key_file, not both".to_owned(),
            ),
        ] {
            assert_eq!(check(&text).unwrap_err(), want, "{text}");
        }
    }
}
