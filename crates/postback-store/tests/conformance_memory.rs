//! The store conformance suite against the in-memory reference store.

use postback_store::MemoryStore;
use postback_store::conformance::{Harness, run_all};

struct Memory;

impl Harness for Memory {
    type Store = MemoryStore;
    fn fresh(&mut self) -> MemoryStore {
        MemoryStore::new()
    }
    fn reopen(&mut self, old: MemoryStore) -> MemoryStore {
        old
    }
}

#[test]
fn the_memory_store_passes_the_conformance_suite() {
    run_all(&mut Memory);
}
