//! The store conformance suite against the PostgreSQL store, on the server at `POSTBACK_PG_URL`
//! (skipped without one), each store in a fresh schema; a restart drops the store and connects
//! again to the same schema.
#![cfg(feature = "postgres")]

mod support;

use postback_store::PostgresStore;
use postback_store::conformance::{Harness, run_all};

struct Postgres {
    url: String,
    schemas: Vec<String>,
}

impl Postgres {
    fn current(&self) -> &str {
        self.schemas.last().map(String::as_str).unwrap_or("public")
    }
}

impl Harness for Postgres {
    type Store = PostgresStore;
    fn fresh(&mut self) -> PostgresStore {
        self.schemas.push(support::schema_name());
        support::open(&self.url, self.current())
    }
    fn reopen(&mut self, old: PostgresStore) -> PostgresStore {
        let schema = old.schema().unwrap_or("public").to_owned();
        drop(old);
        support::open(&self.url, &schema)
    }
}

#[test]
fn the_postgres_store_passes_the_conformance_suite() {
    let Some(url) = support::url("the_postgres_store_passes_the_conformance_suite") else {
        return;
    };
    let mut h = Postgres {
        url,
        schemas: Vec::new(),
    };
    run_all(&mut h);
    support::drop_schemas(&h.url, &h.schemas);
}
