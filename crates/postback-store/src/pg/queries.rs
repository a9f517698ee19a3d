//! The SQL of the store, in `sql/<table>.sql` files of named sections (`-- name: claim`),
//! embedded at build time.

/// Statements over `registry_meta` and the sequences.
pub(super) const META: &str = include_str!("sql/meta.sql");
/// Statements over `deliveries`.
pub(super) const DELIVERIES: &str = include_str!("sql/deliveries.sql");
/// Statements over `attempts`.
pub(super) const ATTEMPTS: &str = include_str!("sql/attempts.sql");
/// Statements over `postbacks`.
pub(super) const POSTBACKS: &str = include_str!("sql/postbacks.sql");
/// Statements over `health` (and the postback's lock).
pub(super) const HEALTH: &str = include_str!("sql/health.sql");
/// Statements over `audit`.
pub(super) const AUDIT: &str = include_str!("sql/audit.sql");
/// Statements over `notifications`.
pub(super) const NOTIFICATIONS: &str = include_str!("sql/notifications.sql");

/// Every file, for the test that prepares each statement.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) const FILES: [&str; 7] = [
    META,
    DELIVERIES,
    ATTEMPTS,
    POSTBACKS,
    HEALTH,
    AUDIT,
    NOTIFICATIONS,
];

pub(super) use crate::sql::q;
#[cfg(test)]
use crate::sql::sections;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_statement_is_an_error_not_a_panic() {
        assert!(q(META, "no_such_statement").is_err());
        assert!(q(META, "version").is_ok_and(|s| s.starts_with("SELECT")));
        let n: usize = FILES.iter().map(|f| sections(f).count()).sum();
        assert!(n > 25, "found the sections ({n})");
    }
}
