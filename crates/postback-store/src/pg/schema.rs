//! The schema: embedded migrations, versioned in a `schema_version` table of the store's schema.

use postgres::Client;

use super::Fail;
use crate::store::StoreError;

/// Every migration, in order: migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_corrections.sql"),
];

/// The newest schema version this build knows.
pub(super) fn known() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Refuse a schema newer than this build knows.
pub(super) fn check(found: i64) -> Result<usize, StoreError> {
    if found > known() {
        return Err(StoreError::SchemaTooNew {
            found,
            known: known(),
        });
    }
    usize::try_from(found).map_err(|_| StoreError::Corrupt {
        what: "schema version (the schema_version table)".to_owned(),
        detail: format!("{found} is negative"),
    })
}

/// `name` quoted as an SQL identifier.
pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Create the schema `schema` (if given) and bring the store's tables in it (or in the
/// connection's search path) up to date, in one transaction under a lock: processes opening a
/// new database at once wait for the first, and find it migrated. A schema newer than this
/// build is refused before anything is changed.
pub(super) fn migrate(client: &mut Client, schema: Option<&str>) -> Result<(), Fail> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('postback_store_migrate'))",
        &[],
    )?;
    if let Some(s) = schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(s)))?;
    }
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let found: Option<i64> = tx
        .query_opt("SELECT version FROM schema_version", &[])?
        .map(|r| r.try_get(0))
        .transpose()?;
    if found.is_none() {
        tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])?;
    }
    let from = check(found.unwrap_or(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        tx.batch_execute(sql)?;
        let to = i64::try_from(i + 1).unwrap_or(i64::MAX);
        tx.execute("UPDATE schema_version SET version = $1", &[&to])?;
    }
    tx.commit()?;
    Ok(())
}
