//! The store's schema (`store.table`, a PostgreSQL schema of its own): created on first start,
//! versioned in its `schema_info` row like the sqlite file's `user_version` (an older schema
//! is migrated, a newer one refused), and the user index rebuilt when `session.user_key`
//! changed. Every change runs in one transaction under an advisory lock, so proxies starting
//! together against a new database create it once.

use deadpool_postgres::{GenericClient, Object};

use super::PgError;
use crate::session::{Handle, UserKey};
use crate::store::{Result, Sealer, StoreError};

/// `MIGRATIONS[v]` brings a schema from version `v` to `v + 1`; the version this binary writes
/// is their count. Only ever appended to. `{s}` is the schema's name.
const MIGRATIONS: [&str; 1] = [
    // 0 → 1: sessions keyed by handle (never by id), byte-ordered ("C") for the listing's
    // keyset; expiry-indexed for the sweeper; the user index a column of the row, indexed only
    // where set. Aliases a table apart, so no listing, count or user index meets one.
    "CREATE TABLE {s}.sessions (
        handle text COLLATE \"C\" PRIMARY KEY,
        data text NOT NULL,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        expires_at bigint NOT NULL,
        version bigint NOT NULL,
        meta text,
        user_name text
    );
    CREATE INDEX sessions_expires_at ON {s}.sessions (expires_at);
    CREATE INDEX sessions_user_name ON {s}.sessions (user_name) WHERE user_name IS NOT NULL;
    CREATE TABLE {s}.aliases (
        old text COLLATE \"C\" PRIMARY KEY,
        new text NOT NULL,
        sealed text NOT NULL,
        grace_until bigint NOT NULL,
        expires_at bigint NOT NULL
    );
    CREATE INDEX aliases_expires_at ON {s}.aliases (expires_at);",
];

/// The schema version this binary reads and writes.
pub(super) const VERSION: i32 = MIGRATIONS.len() as i32;

/// The version recorded in `schema_info`, or 0 when there is none yet (a new database).
async fn version(client: &impl GenericClient, schema: &str) -> Result<i32, tokio_postgres::Error> {
    let exists = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.schema_info")],
        )
        .await?
        .get::<_, bool>(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_opt(&format!("SELECT version FROM {schema}.schema_info"), &[])
        .await?
        .map_or(0, |row| row.get(0)))
}

fn check(version: i32, shown: &str, schema: &str) -> Result<()> {
    if (0..=VERSION).contains(&version) {
        return Ok(());
    }
    Err(StoreError::Unexpected(format!(
        "postgres at {shown}: schema {schema} is at version {version}, which this binary does \
         not know ({VERSION}); run the session-proxy that wrote it (or a newer one), or set \
         store.table to another schema"
    )))
}

/// Creates or migrates the schema, and makes its user index follow `users`. The common start
/// (up to date, same user key) costs two reads and takes no lock.
pub(super) async fn prepare(
    client: &mut Object,
    schema: &str,
    users: Option<&UserKey>,
    sealer: &Sealer,
    shown: &str,
) -> Result<()> {
    let err = |doing: &'static str| move |e| PgError::wrap(doing, e);
    let found = version(client, schema)
        .await
        .map_err(err("reading the schema version"))?;
    check(found, shown, schema)?;
    let index_id = users.map(UserKey::index_id);
    if found == VERSION && indexed_by(client, schema).await? == index_id {
        return Ok(());
    }
    let tx = client
        .transaction()
        .await
        .map_err(err("starting the schema migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("session-proxy schema {schema}")],
    )
    .await
    .map_err(err("locking for the schema migration"))?;
    // Read again under the lock: another proxy may have migrated meanwhile.
    let found = version(&tx, schema).await;
    let found = found.map_err(err("reading the schema version"))?;
    check(found, shown, schema)?;
    if found == 0 {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE {schema}.schema_info (version integer NOT NULL, user_index text);
             INSERT INTO {schema}.schema_info (version) VALUES (0);"
        ))
        .await
        .map_err(err("creating the schema"))?;
    }
    for (step, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(&migration.replace("{s}", schema))
            .await
            .map_err(err("migrating the schema"))?;
        tracing::info!(
            schema,
            to = step + 1,
            "migrated the postgres session schema"
        );
    }
    tx.execute(
        &format!("UPDATE {schema}.schema_info SET version = $1"),
        &[&VERSION],
    )
    .await
    .map_err(err("writing the schema version"))?;
    let stored: Option<String> = tx
        .query_one(&format!("SELECT user_index FROM {schema}.schema_info"), &[])
        .await
        .map_err(err("reading the user index's key"))?
        .get(0);
    if stored != index_id {
        let n = reindex(&tx, schema, users, sealer).await?;
        tx.execute(
            &format!("UPDATE {schema}.schema_info SET user_index = $1"),
            &[&index_id],
        )
        .await
        .map_err(err("recording the user index's key"))?;
        tracing::info!(schema, sessions = n, "rebuilt the user index");
    }
    tx.commit()
        .await
        .map_err(err("committing the schema migration"))
}

async fn indexed_by(client: &Object, schema: &str) -> Result<Option<String>> {
    client
        .query_one(&format!("SELECT user_index FROM {schema}.schema_info"), &[])
        .await
        .map(|row| row.get(0))
        .map_err(|e| PgError::wrap("reading the user index's key", e))
}

/// Sets every row's `user_name` for `users` (or clears it): each row opened and its user found
/// in Rust, by the same rule as every write ([`UserKey::user_of`]).
async fn reindex(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    users: Option<&UserKey>,
    sealer: &Sealer,
) -> Result<u64> {
    let err = |e| PgError::wrap("rebuilding the user index", e);
    let Some(users) = users else {
        return tx
            .execute(
                &format!("UPDATE {schema}.sessions SET user_name = NULL"),
                &[],
            )
            .await
            .map_err(err);
    };
    let rows = tx
        .query(&format!("SELECT handle, data FROM {schema}.sessions"), &[])
        .await
        .map_err(err)?;
    let set = tx
        .prepare(&format!(
            "UPDATE {schema}.sessions SET user_name = $2 WHERE handle = $1"
        ))
        .await
        .map_err(err)?;
    for row in &rows {
        let (handle, data): (&str, &str) = (row.get(0), row.get(1));
        let user = Handle::parse(handle)
            .and_then(|id| sealer.open(data, &id).ok())
            .and_then(|data| users.user_of(&data));
        tx.execute(&set, &[&handle, &user]).await.map_err(err)?;
    }
    Ok(rows.len() as u64)
}
