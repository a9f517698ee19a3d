//! Per-host limits on requests in flight: neither client caps the connections it opens to one
//! host (their pools cap only idle connections), so a burst of postbacks to one partner would
//! open as many connections as there are requests.

#![allow(dead_code)] // each half is used by one transport

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use postback::delivery::Failure;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn no_slot(key: &str, max: usize, waited: Duration) -> Failure {
    Failure::Local(format!(
        "no free connection slot for {key} within {waited:?} ({max} in flight): raise \
         max_connections_per_host or lower the driver's concurrency"
    ))
}

/// Slots per host for a blocking transport: a thread waits on a condition variable.
#[derive(Debug)]
pub(crate) struct BlockingSlots {
    max: usize,
    state: Mutex<Busy>,
    freed: Condvar,
}

/// Requests in flight per host, and how many threads wait for a slot. The map holds one small
/// entry per host ever sent to (partner hosts, a bounded set), kept at zero so that a send to a
/// known host allocates nothing.
#[derive(Debug, Default)]
struct Busy {
    /// Per host: its key, shared with the slots held, and the requests in flight.
    hosts: HashMap<Box<str>, (Arc<str>, usize)>,
    waiting: usize,
}

/// A held slot; freed on drop.
pub(crate) struct BlockingSlot<'a> {
    slots: &'a BlockingSlots,
    key: Arc<str>,
}

impl BlockingSlots {
    pub(crate) fn new(max: usize) -> BlockingSlots {
        BlockingSlots {
            max: max.max(1),
            state: Mutex::new(Busy::default()),
            freed: Condvar::new(),
        }
    }

    /// Take a slot for `key`, waiting up to `wait` for one.
    pub(crate) fn acquire(&self, key: &str, wait: Duration) -> Result<BlockingSlot<'_>, Failure> {
        let mut state = lock(&self.state);
        // A known host with a slot free: one look-up.
        if let Some((k, n)) = state.hosts.get_mut(key) {
            if *n < self.max {
                *n += 1;
                let key = Arc::clone(k);
                return Ok(BlockingSlot { slots: self, key });
            }
        }
        let full = |b: &mut Busy| b.hosts.get(key).is_some_and(|(_, n)| *n >= self.max);
        if full(&mut state) {
            state.waiting += 1;
            state = self
                .freed
                .wait_timeout_while(state, wait, full)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.waiting -= 1;
            if full(&mut state) {
                return Err(no_slot(key, self.max, wait));
            }
        }
        let (k, n) = state
            .hosts
            .entry(key.into())
            .or_insert_with(|| (key.into(), 0));
        *n += 1;
        let key = Arc::clone(k);
        Ok(BlockingSlot { slots: self, key })
    }
}

impl Drop for BlockingSlot<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.slots.state);
        if let Some((_, n)) = state.hosts.get_mut(&*self.key) {
            *n = n.saturating_sub(1);
        }
        let waiting = state.waiting > 0;
        drop(state);
        if waiting {
            self.slots.freed.notify_all();
        }
    }
}

/// Slots per host for an async transport: one semaphore per host.
#[cfg(feature = "reqwest")]
#[derive(Debug)]
pub(crate) struct AsyncSlots {
    max: usize,
    hosts: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

#[cfg(feature = "reqwest")]
impl AsyncSlots {
    pub(crate) fn new(max: usize) -> AsyncSlots {
        AsyncSlots {
            max: max.max(1),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Take a slot for `key`, waiting up to `wait` for one.
    pub(crate) async fn acquire(
        &self,
        key: &str,
        wait: Duration,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Failure> {
        let semaphore = {
            let mut hosts = lock(&self.hosts);
            // The map holds one small entry per host ever sent to: partner hosts, a bounded set.
            // A known host's is found without allocating its key.
            match hosts.get(key) {
                Some(s) => Arc::clone(s),
                None => Arc::clone(
                    hosts
                        .entry(key.to_owned())
                        .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.max))),
                ),
            }
        };
        // A free slot is taken at once, without arming a timer.
        let semaphore = match Arc::clone(&semaphore).try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(Failure::Local(format!(
                    "the connection slots for {key} were closed"
                )));
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => semaphore,
        };
        match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Failure::Local(format!(
                "the connection slots for {key} were closed"
            ))),
            Err(_) => Err(no_slot(key, self.max, wait)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_with_every_slot_taken_is_refused_as_our_own_error_and_others_are_not_held_up() {
        let slots = BlockingSlots::new(2);
        let a = slots.acquire("http://a:80", Duration::ZERO).unwrap();
        let _b = slots.acquire("http://a:80", Duration::ZERO).unwrap();
        let third = slots.acquire("http://a:80", Duration::ZERO);
        assert!(matches!(third, Err(Failure::Local(_))));
        assert!(slots.acquire("http://b:80", Duration::ZERO).is_ok());
        drop(a);
        assert!(slots.acquire("http://a:80", Duration::ZERO).is_ok());
    }
}
