//! The store conformance suite against the SQLite store, each store in a new file; a restart
//! drops the store and opens the same file again.
#![cfg(feature = "sqlite")]

use std::path::PathBuf;

use postback_store::SqliteStore;
use postback_store::conformance::{Harness, run_all};

struct Sqlite {
    dir: tempfile::TempDir,
    files: usize,
}

impl Sqlite {
    fn path(&self) -> PathBuf {
        self.dir.path().join(format!("store-{}.sqlite", self.files))
    }

    fn open(&self) -> SqliteStore {
        match SqliteStore::open(self.path()) {
            Ok(s) => s,
            Err(e) => panic!("opening {}: {e}", self.path().display()),
        }
    }
}

impl Harness for Sqlite {
    type Store = SqliteStore;
    fn fresh(&mut self) -> SqliteStore {
        self.files += 1;
        self.open()
    }
    fn reopen(&mut self, old: SqliteStore) -> SqliteStore {
        drop(old);
        self.open()
    }
}

#[test]
fn the_sqlite_store_passes_the_conformance_suite() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("a temporary directory: {e}"),
    };
    run_all(&mut Sqlite { dir, files: 0 });
}
