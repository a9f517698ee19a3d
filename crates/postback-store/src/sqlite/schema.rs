//! The schema: embedded migrations, versioned with `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use super::Db;
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

/// The schema version of the database.
pub(super) fn version(conn: &Connection) -> Result<i64, StoreError> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .db()
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
        what: "schema version (PRAGMA user_version)".to_owned(),
        detail: format!("{found} is negative"),
    })
}

/// Bring the schema up to date in one transaction (two processes opening a new file at once:
/// the second finds it migrated).
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .db()?;
    let from = check(version(&tx)?)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        tx.execute_batch(sql).db()?;
        let to = i64::try_from(i + 1).unwrap_or(i64::MAX);
        tx.pragma_update(None, "user_version", to).db()?;
    }
    tx.commit().db()
}
