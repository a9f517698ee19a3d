//! The reference store: everything in one process's memory, behind one lock. It passes the
//! conformance suite like the durable stores, so tests and embedders can use it in their place;
//! it loses everything when the process ends.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};

use postback::access::{Actor, AuditEntry, Settings};
use postback::delivery::{
    Attempt, Delivery, DeliveryId, DisablePolicy, Health, Progress, State, on_operation,
};
use postback::model::{DeliveryKey, PostbackId};
use postback::registry::{Registry, Trigger};
use postback::template::MacroValues;

use crate::apply;
use crate::store::{
    Claimed, Completion, Counts, Enqueued, Filter, Manage, Managed, Notification, Replay, Rules,
    Store, StoreError, Token,
};

/// A stored delivery and its projections.
#[derive(Debug, Clone)]
struct Row {
    d: Delivery,
    claims: i64,
    settled: i64,
    /// Attempts already in the attempts table.
    written: usize,
    /// When it is due: its scheduled time, or the end of its lease.
    due: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct Inner {
    registry: Registry,
    /// By key, so a trigger's revisions to one postback sit side by side (the key's order).
    rows: BTreeMap<DeliveryKey, Row>,
    due: BTreeSet<(DateTime<Utc>, DeliveryKey)>,
    next_id: u64,
    attempts: BTreeMap<DeliveryKey, Vec<Attempt>>,
    health: HashMap<PostbackId, Health>,
    audit: Vec<AuditEntry>,
    notifications: Vec<(Notification, Option<DateTime<Utc>>)>,
}

impl Inner {
    /// Whether a later revision of `key`'s trigger to its postback went out (claimed at least
    /// once, or finished).
    fn later(&self, key: &DeliveryKey) -> bool {
        let last = DeliveryKey::new(key.trigger(), key.postback(), key.purpose(), u32::MAX);
        self.rows
            .range((
                std::ops::Bound::Excluded(*key),
                std::ops::Bound::Included(last),
            ))
            .any(|(_, r)| r.claims > 0 || r.d.is_finished())
    }

    /// Whether `key` must wait: an earlier revision of it is unfinished
    /// ([`DeliveryKey::waits_behind`]).
    fn waits(&self, key: &DeliveryKey) -> bool {
        key.is_correction()
            && self
                .rows
                .range(key.original()..*key)
                .any(|(k, r)| key.waits_behind(k) && !r.d.is_finished())
    }

    fn next_id(&mut self) -> Result<DeliveryId, StoreError> {
        self.next_id = self
            .next_id
            .checked_add(1)
            .ok_or(postback::plan::FireError::IdsExhausted)?;
        Ok(DeliveryId::new(self.next_id))
    }

    /// Write a row, keeping the due index and the attempts table in step.
    fn put(&mut self, mut row: Row) {
        let key = *row.d.key();
        if let Some(old) = self.rows.get(&key).and_then(|r| r.due) {
            self.due.remove(&(old, key));
        }
        if !matches!(row.d.state(), State::Scheduled { .. }) {
            row.due = None;
        }
        if let Some(at) = row.due {
            self.due.insert((at, key));
        }
        let new = apply::new_attempts(&row.d, row.written);
        if !new.is_empty() {
            self.attempts.entry(key).or_default().extend_from_slice(new);
        }
        row.written = row.d.attempts().len();
        self.rows.insert(key, row);
    }

    fn insert(&mut self, d: Delivery) {
        let due = d.due();
        self.put(Row {
            d,
            claims: 0,
            settled: 0,
            written: 0,
            due,
        });
    }

    fn keys_of(&self, postback: PostbackId) -> Vec<DeliveryKey> {
        self.rows
            .keys()
            .filter(|k| k.postback() == postback)
            .copied()
            .collect()
    }

    /// Apply `change` to each of a postback's deliveries; write the ones it changed.
    fn change_all(
        &mut self,
        postback: PostbackId,
        skip_leased_at: Option<DateTime<Utc>>,
        mut change: impl FnMut(&mut Delivery) -> bool,
    ) -> usize {
        let mut n = 0;
        for key in self.keys_of(postback) {
            let Some(mut row) = self.rows.get(&key).cloned() else {
                continue;
            };
            // Out under a live lease: its claimant's completion settles it.
            let leased = |now| row.claims > row.settled && row.due.is_some_and(|d| d > now);
            if skip_leased_at.is_some_and(leased) {
                continue;
            }
            if change(&mut row.d) {
                row.due = row.d.due();
                self.put(row);
                n += 1;
            }
        }
        n
    }
}

/// The in-memory [`Store`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A store holding these postbacks (not audited: for setting up).
    pub fn with_registry(registry: Registry) -> MemoryStore {
        let s = MemoryStore::default();
        s.lock().registry = registry;
        s
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent state (every write is one `put`).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn registry_get(&self) -> Result<Registry, StoreError> {
        Ok(self.lock().registry.clone())
    }

    fn postback_manage(
        &self,
        now: DateTime<Utc>,
        actor: Actor,
        op: Manage,
        access: &Settings,
    ) -> Result<Managed, StoreError> {
        let mut g = self.lock();
        let mut registry = g.registry.clone();
        let (audit, operation) = apply::manage(&mut registry, now, actor, op, access)?;
        g.registry = registry;
        let pid = audit.postback;
        let skip = (operation == postback::access::Operation::Pause).then_some(now);
        let deliveries = g.change_all(pid, skip, |d| on_operation(operation, now, d));
        let old = g.health.remove(&pid);
        match apply::health_after(operation, old.clone()) {
            Some(Some(h)) => {
                g.health.insert(pid, h);
            }
            Some(None) => {}
            None => {
                if let Some(h) = old {
                    g.health.insert(pid, h);
                }
            }
        }
        g.audit.push(audit.clone());
        Ok(Managed { audit, deliveries })
    }

    fn trigger_enqueue(
        &self,
        now: DateTime<Utc>,
        trigger: &Trigger,
        values: &dyn MacroValues,
        rules: &Rules,
    ) -> Result<Enqueued, StoreError> {
        let mut g = self.lock();
        let g = &mut *g;
        let mut next = g.next_id;
        let (out, rows) = apply::enqueue(
            &g.registry,
            now,
            trigger,
            values,
            rules,
            |ask| {
                Ok(match ask {
                    apply::Ask::Exists(k) => g.rows.contains_key(k),
                    apply::Ask::Later(k) => g.later(k),
                })
            },
            || {
                next = next
                    .checked_add(1)
                    .ok_or(postback::plan::FireError::IdsExhausted)?;
                Ok(DeliveryId::new(next))
            },
        )?;
        g.next_id = next;
        for d in rows {
            g.insert(d);
        }
        Ok(out)
    }

    fn test_fire_enqueue(
        &self,
        now: DateTime<Utc>,
        actor: Actor,
        postback: PostbackId,
        values: &dyn MacroValues,
        rules: &Rules,
        access: &Settings,
    ) -> Result<(DeliveryKey, AuditEntry), StoreError> {
        let mut g = self.lock();
        let id = g.next_id()?;
        let (d, audit) =
            apply::test_fire(&g.registry, now, actor, postback, values, rules, access, id)?;
        let key = *d.key();
        g.insert(d);
        g.audit.push(audit.clone());
        Ok((key, audit))
    }

    fn deliveries_claim(
        &self,
        now: DateTime<Utc>,
        _owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut g = self.lock();
        // A postback that is off has nothing claimed: a delivery left scheduled for it (out under
        // a lease when it went off) waits until it is on again.
        let on = |k: &DeliveryKey| {
            k.purpose() == postback::model::Purpose::Test
                || g.registry
                    .get(k.postback())
                    .is_some_and(|p| p.status().is_active())
        };
        let due: Vec<DeliveryKey> = g
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter(|(_, k)| on(k) && !g.waits(k))
            .take(limit)
            .map(|(_, k)| *k)
            .collect();
        let until = chrono::Duration::from_std(lease)
            .ok()
            .and_then(|l| now.checked_add_signed(l))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut out = Vec::with_capacity(due.len());
        for key in due {
            let Some(mut row) = g.rows.get(&key).cloned() else {
                continue;
            };
            let interrupted = u32::try_from(row.claims - row.settled).unwrap_or(u32::MAX);
            row.claims += 1;
            row.due = Some(until);
            let token = Token(row.claims);
            let delivery = row.d.clone();
            g.put(row);
            out.push(Claimed {
                postback: g.registry.get(key.postback()).cloned(),
                delivery,
                token,
                interrupted,
            });
        }
        Ok(out)
    }

    fn delivery_complete(
        &self,
        now: DateTime<Utc>,
        token: Token,
        mut delivery: Delivery,
        progress: Progress,
        disable: &DisablePolicy,
    ) -> Result<Completion, StoreError> {
        let mut g = self.lock();
        let key = *delivery.key();
        // Gone (pruned after another claimant finished it): this claim was lost long ago.
        let Some(row) = g.rows.get(&key) else {
            return Ok(Completion::LeaseLost);
        };
        if row.claims != token.0 {
            return Ok(Completion::LeaseLost);
        }
        let (claims, written) = (row.claims, row.written);
        let pid = key.postback();
        let mut health = g.health.get(&pid).cloned().unwrap_or_default();
        let pb = g.registry.get(pid).cloned();
        let outcome = apply::complete(
            now,
            &mut delivery,
            progress,
            pb.as_ref(),
            &mut health,
            disable,
        );
        if pb.is_some() && !delivery.is_test() {
            g.health.insert(pid, health);
        }
        let mut disabled = false;
        if let Some(reason) = outcome.disable {
            if matches!(
                g.registry.disable_automatically(pid, reason.clone(), now),
                Ok(true)
            ) {
                disabled = true;
                let id = i64::try_from(g.notifications.len()).unwrap_or(i64::MAX) + 1;
                g.notifications.push((
                    Notification {
                        id,
                        postback: pid,
                        partner: pb.as_ref().and_then(|p| p.partner()),
                        reason,
                        at: now,
                        attempts: delivery.attempts().to_vec(),
                    },
                    None,
                ));
                g.change_all(pid, Some(now), |d| {
                    d.key() != &key && on_operation(postback::access::Operation::Pause, now, d)
                });
            }
        }
        let due = delivery.due();
        g.put(Row {
            d: delivery,
            claims,
            // Every claim up to this one is resolved: the earlier ones were recorded as
            // interrupted by this claimant.
            settled: claims,
            written,
            due,
        });
        Ok(Completion::Completed {
            next: outcome.next,
            disabled,
        })
    }

    fn delivery_unclaim(
        &self,
        now: DateTime<Utc>,
        key: &DeliveryKey,
        token: Token,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let Some(mut row) = g.rows.get(key).cloned() else {
            return Err(StoreError::UnknownDelivery(*key));
        };
        if row.claims != token.0 {
            return Ok(false);
        }
        // This claim only: earlier interrupted ones stay to be recorded by the next claimant.
        row.settled += 1;
        row.due = Some(now);
        g.put(row);
        Ok(true)
    }

    fn deliveries_next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let g = self.lock();
        Ok(g.due.iter().find(|(_, k)| !g.waits(k)).map(|(at, _)| *at))
    }

    fn delivery_get(&self, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError> {
        Ok(self.lock().rows.get(key).map(|r| r.d.clone()))
    }

    fn deliveries_of(
        &self,
        postback: PostbackId,
        filter: Filter,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let g = self.lock();
        let mut out: Vec<Delivery> = g
            .rows
            .values()
            .filter(|r| r.d.postback() == postback && apply::matches(&r.d, filter))
            .filter(|r| filter != Filter::Leased || r.claims > r.settled)
            .map(|r| r.d.clone())
            .collect();
        out.sort_by_key(|d| std::cmp::Reverse((d.created(), d.id())));
        out.truncate(limit);
        Ok(out)
    }

    fn deliveries_count(&self) -> Result<Counts, StoreError> {
        let g = self.lock();
        let mut c = Counts::default();
        for r in g.rows.values() {
            match apply::status_of(&r.d) {
                "held" => c.held += 1,
                "delivered" => c.delivered += 1,
                "gave_up" => c.gave_up += 1,
                _ => {
                    c.pending += 1;
                    if r.claims > r.settled {
                        c.leased += 1;
                    }
                }
            }
        }
        Ok(c)
    }

    fn attempts_of(&self, key: &DeliveryKey) -> Result<Vec<Attempt>, StoreError> {
        Ok(self.lock().attempts.get(key).cloned().unwrap_or_default())
    }

    fn deliveries_replay(&self, now: DateTime<Utc>, which: &Replay) -> Result<usize, StoreError> {
        let mut g = self.lock();
        let keys: Vec<DeliveryKey> = match which {
            Replay::Delivery(k) => {
                let row = g.rows.get(k).ok_or(StoreError::UnknownDelivery(*k))?;
                // A single replay says why it cannot be.
                row.d.clone().replay(now)?;
                vec![*k]
            }
            Replay::Postback { postback, from, to } => g
                .rows
                .values()
                .filter(|r| {
                    r.d.postback() == *postback
                        && r.d.created() >= *from
                        && r.d.created() < *to
                        && apply::is_replayable(&r.d)
                })
                .map(|r| *r.d.key())
                .collect(),
        };
        let mut n = 0;
        for k in keys {
            let Some(mut row) = g.rows.get(&k).cloned() else {
                continue;
            };
            if row.d.replay(now).is_ok() {
                row.due = row.d.due();
                g.put(row);
                n += 1;
            }
        }
        Ok(n)
    }

    fn health_get(&self, postback: PostbackId) -> Result<Option<Health>, StoreError> {
        Ok(self.lock().health.get(&postback).cloned())
    }

    fn audit_of(&self, postback: PostbackId) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self
            .lock()
            .audit
            .iter()
            .filter(|a| a.postback == postback)
            .cloned()
            .collect())
    }

    fn notifications_pending(&self) -> Result<Vec<Notification>, StoreError> {
        Ok(self
            .lock()
            .notifications
            .iter()
            .filter(|(_, done)| done.is_none())
            .map(|(n, _)| n.clone())
            .collect())
    }

    fn notification_done(&self, now: DateTime<Utc>, id: i64) -> Result<bool, StoreError> {
        let mut g = self.lock();
        Ok(match g.notifications.iter_mut().find(|(n, _)| n.id == id) {
            Some((_, done @ None)) => {
                *done = Some(now);
                true
            }
            _ => false,
        })
    }

    fn attempts_prune(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut g = self.lock();
        let mut n = 0;
        for list in g.attempts.values_mut() {
            let len = list.len();
            list.retain(|a| a.at >= before);
            n += len - list.len();
        }
        g.attempts.retain(|_, l| !l.is_empty());
        Ok(n)
    }

    fn stats(&self, now: DateTime<Utc>) -> Result<crate::stats::OpsStats, StoreError> {
        let g = self.lock();
        let mut raw = crate::stats::Raw {
            health: g.health.clone(),
            ..Default::default()
        };
        for r in g.rows.values() {
            let status = apply::status_of(&r.d);
            raw.count(r.d.postback(), status, 1);
            if status == "scheduled" && r.claims > r.settled {
                let live = r.due.is_some_and(|d| d > now);
                raw.unsettled.push((*r.d.key(), r.claims - r.settled, live));
            }
        }
        for (key, list) in &g.attempts {
            if let Some(f) = list
                .iter()
                .rev()
                .find_map(|a| crate::stats::LastFailure::of(*key, a))
            {
                raw.failure(key.postback(), f);
            }
        }
        Ok(crate::stats::assemble(now, &g.registry, raw))
    }

    fn deliveries_prune(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut g = self.lock();
        let old: Vec<DeliveryKey> = g
            .rows
            .values()
            .filter(|r| matches!(r.d.state(), State::Delivered { at } if *at < before))
            .map(|r| *r.d.key())
            .collect();
        for k in &old {
            g.rows.remove(k);
        }
        Ok(old.len())
    }
}
