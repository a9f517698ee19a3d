//! Durable deliveries for [`postback`]: the [`Store`] where deliveries, postbacks, health,
//! attempts, the audit trail and the manager's notifications live, and the [`Worker`] that runs
//! delivery as a service over it.
//!
//! The core decides (which deliveries a trigger creates, what a response means, when a postback
//! is disabled, what is held and released); a store applies those decisions inside its
//! transactions and writes what they return, so the rules live once. Deliveries are claimed
//! under a lease (never a transaction held across an HTTP call) and completed in one
//! transaction fenced by the claim's token: a worker killed mid-send loses its lease, the next
//! claimant sends again with the same key, and a crash of ours never counts toward disabling a
//! partner's postback.
//!
//! Stores: [`MemoryStore`] (the reference, in memory) and [`SqliteStore`] (feature `sqlite`, on
//! by default: one SQLite file). Every store passes [`conformance::run_all`].

mod apply;
mod clock;
pub mod conformance;
mod handle;
mod memory;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
pub mod stats;
mod store;
pub mod telemetry;
mod worker;

pub use apply::{record_interruptions, send_context};
pub use clock::{Clock, ManualClock, Sleep, SystemClock};
pub use handle::{Stats, TestFire, WorkerError, WorkerHandle};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use pg::{PostgresStore, PostgresStoreBuilder};
/// The blocking PostgreSQL client the [`PostgresStore`] is built on, for
/// [`PostgresStore::trigger_enqueue_in`] (the caller's own transaction).
#[cfg(feature = "postgres")]
pub use postgres;
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteStore};
pub use stats::{HostStats, LastFailure, OpsStats, PostbackStats, StuckDelivery, WorkCounts};
pub use store::{
    Claimed, Completion, Counts, Enqueued, Filter, Manage, Managed, Notification, Replay, Rules,
    Store, StoreError, Token,
};
pub use worker::{ConfigError, NotificationSink, Worker, WorkerConfig};
