//! The SQL of the store, in `sql/<table>.sql` files of named sections (`-- name: claim`),
//! embedded at build time.

/// Statements over `meta`.
pub(super) const META: &str = include_str!("sql/meta.sql");
/// Statements over `deliveries`.
pub(super) const DELIVERIES: &str = include_str!("sql/deliveries.sql");
/// Statements over `attempts`.
pub(super) const ATTEMPTS: &str = include_str!("sql/attempts.sql");
/// Statements over `postbacks`.
pub(super) const POSTBACKS: &str = include_str!("sql/postbacks.sql");
/// Statements over `health`.
pub(super) const HEALTH: &str = include_str!("sql/health.sql");
/// Statements over `audit`.
pub(super) const AUDIT: &str = include_str!("sql/audit.sql");
/// Statements over `notifications`.
pub(super) const NOTIFICATIONS: &str = include_str!("sql/notifications.sql");

pub(super) use crate::sql::q;
#[cfg(test)]
use crate::sql::sections;

#[cfg(test)]
mod tests {
    use super::*;

    const FILES: [&str; 7] = [
        META,
        DELIVERIES,
        ATTEMPTS,
        POSTBACKS,
        HEALTH,
        AUDIT,
        NOTIFICATIONS,
    ];

    #[test]
    fn every_statement_prepares_against_the_current_schema() {
        let mut conn = match rusqlite::Connection::open_in_memory() {
            Ok(c) => c,
            Err(e) => panic!("an in-memory database: {e}"),
        };
        if let Err(e) = super::super::schema::migrate(&mut conn) {
            panic!("migrating: {e}");
        }
        let mut n = 0;
        for file in FILES {
            for (name, sql) in sections(file) {
                if let Err(e) = conn.prepare(sql) {
                    panic!("{name}: {e}");
                }
                n += 1;
            }
        }
        assert!(n > 20, "found the sections ({n})");
    }

    #[test]
    fn no_statement_is_prepared_again_when_bound_again() {
        let store = match super::super::SqliteStore::open_in_memory() {
            Ok(s) => s,
            Err(e) => panic!("an in-memory store: {e}"),
        };
        let g = store.lock();
        for file in FILES {
            for (name, sql) in sections(file) {
                let mut stmt = match g.conn.prepare(sql) {
                    Ok(s) => s,
                    Err(e) => panic!("{name}: {e}"),
                };
                for _ in 0..2 {
                    for i in 1..=stmt.parameter_count() {
                        if let Err(e) = stmt.raw_bind_parameter(i, 1) {
                            panic!("{name}: {e}");
                        }
                    }
                    // Whether it runs does not matter (a value of the wrong type fails): a step
                    // re-prepares an expired statement before anything else.
                    let mut rows = stmt.raw_query();
                    while let Ok(Some(_)) = rows.next() {}
                }
                let n = stmt.get_status(rusqlite::StatementStatus::RePrepare);
                assert_eq!(n, 0, "{name} is prepared again on every run");
            }
        }
    }

    #[test]
    fn a_missing_statement_is_an_error_not_a_panic() {
        assert!(q(META, "no_such_statement").is_err());
        assert!(q(META, "get").is_ok_and(|s| s.starts_with("SELECT")));
    }
}
