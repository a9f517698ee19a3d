//! What the PostgreSQL tests share: the server's URL from `POSTBACK_PG_URL`, and a fresh schema
//! per store so tests (and test runs) never see each other's rows.
#![allow(dead_code, reason = "each test crate uses part of it")]

use std::sync::atomic::{AtomicUsize, Ordering};

use postback_store::PostgresStore;

/// The server's URL, or `None` (and a line saying the test was skipped) without one.
pub fn url(test: &str) -> Option<String> {
    match std::env::var("POSTBACK_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            println!("skipped {test}: set POSTBACK_PG_URL to a PostgreSQL server to run it");
            None
        }
    }
}

/// A schema name no other store uses: the process, a counter, and the time.
pub fn schema_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    #[allow(clippy::disallowed_methods, reason = "a unique name in a test")]
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "pb_test_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The store in `schema` at `url` (created if missing).
pub fn open(url: &str, schema: &str) -> PostgresStore {
    match PostgresStore::builder(url)
        .schema(schema)
        .max_connections(4)
        .open()
    {
        Ok(s) => s,
        Err(e) => panic!("opening the store in schema {schema}: {e}"),
    }
}

/// Drop the schemas (the end of a test that passed; a failed one leaves them to look at).
pub fn drop_schemas(url: &str, schemas: &[String]) {
    let mut client = match postgres::Client::connect(url, postgres::NoTls) {
        Ok(c) => c,
        Err(e) => panic!("connecting to drop the test schemas: {e}"),
    };
    for s in schemas {
        if let Err(e) = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE")) {
            panic!("dropping schema {s}: {e}");
        }
    }
}
