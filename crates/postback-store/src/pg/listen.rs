//! Wake-ups over LISTEN/NOTIFY: a thread of the store's own, on a connection of its own, waits
//! for `postback_store_wake` notifications naming the store's schema and passes each on to a
//! [`Notify`] the [`Worker`](crate::Worker) waits on besides its poll interval.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use postgres::Config;
use postgres::fallible_iterator::FallibleIterator;
use tokio::sync::Notify;

/// How often the listening thread looks whether its store is gone.
const TICK: Duration = Duration::from_millis(500);
/// How long starting it waits for its first LISTEN.
const FIRST_LISTEN: Duration = Duration::from_secs(10);
/// How long it waits before connecting again after losing its connection.
const RECONNECT: Duration = Duration::from_secs(1);

/// The listening thread of a store, stopped when dropped.
pub(super) struct Listener {
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    /// Start listening for wake-ups of the store in `schema` (the connection's default if none).
    pub(super) fn start(config: &Config, schema: Option<&str>) -> Listener {
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (config, schema) = (config.clone(), schema.map(str::to_owned));
        let (n, s) = (Arc::clone(&notify), Arc::clone(&stop));
        let (ready, listening) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("postback-store-listen".to_owned())
            .spawn(move || run(&config, schema.as_deref(), &n, &s, &ready));
        match spawned {
            // Back once the first LISTEN is in place (or the first connection failed), so a
            // change committed after this returns wakes the listener.
            Ok(_) => {
                let _ = listening.recv_timeout(FIRST_LISTEN);
            }
            // No thread: the Worker's poll interval still finds the work.
            Err(_) => stop.store(true, Ordering::Relaxed),
        }
        Listener { notify, stop }
    }

    /// What the Worker waits on.
    pub(super) fn notify(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "the store's own listening thread, not the core: it pauses before reconnecting"
)]
fn run(
    config: &Config,
    schema: Option<&str>,
    notify: &Notify,
    stop: &AtomicBool,
    ready: &mpsc::Sender<()>,
) {
    while !stop.load(Ordering::Relaxed) {
        // Any error: connect again after a pause (the poll interval covers the gap). A wake-up
        // after reconnecting covers what was missed while disconnected.
        if listen(config, schema, notify, stop, ready).is_err() {
            let _ = ready.send(());
            notify.notify_one();
            std::thread::sleep(RECONNECT);
        }
    }
}

fn listen(
    config: &Config,
    schema: Option<&str>,
    notify: &Notify,
    stop: &AtomicBool,
    ready: &mpsc::Sender<()>,
) -> Result<(), crate::StoreError> {
    let mut client = super::connect(config, schema)?;
    let db = super::db;
    let name: String = client
        .query_one("SELECT current_schema()", &[])
        .and_then(|r| r.try_get(0))
        .map_err(db)?;
    client
        .batch_execute("LISTEN postback_store_wake")
        .map_err(db)?;
    let _ = ready.send(());
    while !stop.load(Ordering::Relaxed) {
        let mut n = client.notifications();
        let mut due = n.timeout_iter(TICK);
        while let Some(note) = due.next().map_err(db)? {
            if note.payload() == name {
                notify.notify_one();
            }
        }
    }
    Ok(())
}
