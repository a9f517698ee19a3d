//! [`OpsStats`]: what an operator's page or a CLI shows of a store in one call
//! ([`Store::stats`](crate::Store::stats)): per postback and per partner host, the work pending,
//! held and exhausted, the last success, the last failure with its class, and the stuck work
//! (deliveries whose lease expired more than once).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use postback::delivery::{Attempt, FailureClass, Health};
use postback::model::{DeliveryKey, PartnerId, PostbackId, Status};
use postback::registry::Registry;

/// A delivery counts as stuck once this many of its leases expired without a completion.
pub const STUCK_AFTER: u32 = 2;

/// Counts of unfinished and exhausted work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkCounts {
    /// Scheduled (due now or later, or out under a lease).
    pub pending: u64,
    /// Held until the postback is enabled or resumed.
    pub held: u64,
    /// Gave up (status `gave_up`): attempts used, a terminal failure, local refusals, a failed
    /// test fire, or (in [`OpsStats::total`] only) a deleted postback. All but the last two can
    /// be replayed.
    pub exhausted: u64,
    /// Of the pending, those whose lease expired [`STUCK_AFTER`] times or more without a
    /// completion (their sender crashes or hangs on them).
    pub stuck: u64,
}

impl WorkCounts {
    fn add(&mut self, o: &WorkCounts) {
        self.pending += o.pending;
        self.held += o.held;
        self.exhausted += o.exhausted;
        self.stuck += o.stuck;
    }
}

/// The latest failed attempt of a postback (from the attempts table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LastFailure {
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// Why it failed.
    pub class: FailureClass,
    /// Whether it counted toward the limits.
    pub counted: bool,
    /// The delivery it was an attempt of.
    pub delivery: DeliveryKey,
}

impl LastFailure {
    /// The failure of an attempt, if it failed.
    pub fn of(delivery: DeliveryKey, a: &Attempt) -> Option<LastFailure> {
        Some(LastFailure {
            at: a.at,
            class: a.failure?,
            counted: a.counted,
            delivery,
        })
    }

    /// The later of two.
    fn later(a: Option<LastFailure>, b: Option<&LastFailure>) -> Option<LastFailure> {
        match (a, b) {
            (Some(a), Some(b)) if b.at > a.at => Some(b.clone()),
            (None, b) => b.cloned(),
            (a, _) => a,
        }
    }
}

/// A postback's line of [`OpsStats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PostbackStats {
    /// The postback.
    pub postback: PostbackId,
    /// Its partner, if it has one.
    pub partner: Option<PartnerId>,
    /// Its partner host: the template's origin (`scheme://host[:port]`; empty for HTML code).
    pub host: String,
    /// Its status.
    pub status: Status,
    /// Its deliveries by where they stand.
    pub counts: WorkCounts,
    /// Its last success (from its health).
    pub last_success: Option<DateTime<Utc>>,
    /// Its latest failed attempt still in the attempts table.
    pub last_failure: Option<LastFailure>,
}

/// A partner host's line of [`OpsStats`]: its postbacks' lines added up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostStats {
    /// The origin, `scheme://host[:port]`.
    pub host: String,
    /// How many postbacks send to it.
    pub postbacks: usize,
    /// Their deliveries by where they stand.
    pub counts: WorkCounts,
    /// The latest of their last successes.
    pub last_success: Option<DateTime<Utc>>,
    /// The latest of their last failures.
    pub last_failure: Option<LastFailure>,
}

/// A delivery whose lease expired [`STUCK_AFTER`] times or more without a completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StuckDelivery {
    /// The delivery.
    pub key: DeliveryKey,
    /// Leases of it that expired without a completion (claims not yet settled, less one still
    /// running).
    pub expired_leases: u32,
    /// Whether it is out under a live lease now.
    pub leased_now: bool,
}

/// What a store holds, for operators: [`Store::stats`](crate::Store::stats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OpsStats {
    /// The time it was read at.
    pub at: DateTime<Utc>,
    /// One line per postback in the registry, by id.
    pub postbacks: Vec<PostbackStats>,
    /// One line per partner host, by origin (HTML code postbacks, which have none, left out).
    pub hosts: Vec<HostStats>,
    /// The stuck deliveries, by key.
    pub stuck: Vec<StuckDelivery>,
    /// Every postback's lines added up (deliveries of postbacks no longer in the registry too).
    pub total: WorkCounts,
}

impl OpsStats {
    /// A postback's line.
    pub fn postback(&self, id: PostbackId) -> Option<&PostbackStats> {
        self.postbacks.iter().find(|p| p.postback == id)
    }

    /// A host's line.
    pub fn host(&self, origin: &str) -> Option<&HostStats> {
        self.hosts.iter().find(|h| h.host == origin)
    }
}

/// What a store reads for [`OpsStats`]; [`assemble`] does the rest.
#[derive(Debug, Default)]
pub(crate) struct Raw {
    /// Counts by postback (stuck filled in by `assemble` from `stuck`).
    pub counts: HashMap<PostbackId, WorkCounts>,
    /// Pending deliveries with unsettled claims: (key, claims - settled, lease still running).
    pub unsettled: Vec<(DeliveryKey, i64, bool)>,
    /// Last failures by postback.
    pub failures: HashMap<PostbackId, LastFailure>,
    /// Healths by postback.
    pub health: HashMap<PostbackId, Health>,
}

impl Raw {
    /// Count a delivery by its `status` column.
    pub(crate) fn count(&mut self, postback: PostbackId, status: &str, n: u64) {
        let c = self.counts.entry(postback).or_default();
        match status {
            "scheduled" => c.pending += n,
            "held" => c.held += n,
            "gave_up" => c.exhausted += n,
            _ => {}
        }
    }

    /// Keep the later failure of a postback.
    pub(crate) fn failure(&mut self, postback: PostbackId, f: LastFailure) {
        let old = self.failures.remove(&postback);
        if let Some(f) = LastFailure::later(old, Some(&f)) {
            self.failures.insert(postback, f);
        }
    }
}

/// Leases of a delivery that expired without a completion: its unsettled claims, less the one
/// running now.
pub(crate) fn expired_leases(unsettled: i64, leased_now: bool) -> u32 {
    let n = unsettled - i64::from(leased_now);
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// Put a store's reads together.
pub(crate) fn assemble(now: DateTime<Utc>, registry: &Registry, mut raw: Raw) -> OpsStats {
    let mut stuck: Vec<StuckDelivery> = raw
        .unsettled
        .iter()
        .map(|(key, n, live)| StuckDelivery {
            key: *key,
            expired_leases: expired_leases(*n, *live),
            leased_now: *live,
        })
        .filter(|s| s.expired_leases >= STUCK_AFTER)
        .collect();
    stuck.sort_by_key(|s| s.key.to_text());
    for s in &stuck {
        raw.counts.entry(s.key.postback()).or_default().stuck += 1;
    }
    let mut total = WorkCounts::default();
    for c in raw.counts.values() {
        total.add(c);
    }
    let mut postbacks: Vec<PostbackStats> = registry
        .iter()
        .map(|p| PostbackStats {
            postback: p.id(),
            partner: p.partner(),
            host: p.template().origin().to_owned(),
            status: p.status().clone(),
            counts: raw.counts.get(&p.id()).copied().unwrap_or_default(),
            last_success: raw.health.get(&p.id()).and_then(|h| h.last_success),
            last_failure: raw.failures.get(&p.id()).cloned(),
        })
        .collect();
    postbacks.sort_by_key(|p| p.postback);
    let mut hosts: BTreeMap<&str, HostStats> = BTreeMap::new();
    for p in postbacks.iter().filter(|p| !p.host.is_empty()) {
        let h = hosts.entry(&p.host).or_insert_with(|| HostStats {
            host: p.host.clone(),
            postbacks: 0,
            counts: WorkCounts::default(),
            last_success: None,
            last_failure: None,
        });
        h.postbacks += 1;
        h.counts.add(&p.counts);
        h.last_success = h.last_success.max(p.last_success);
        h.last_failure = LastFailure::later(h.last_failure.take(), p.last_failure.as_ref());
    }
    OpsStats {
        at: now,
        hosts: hosts.into_values().collect(),
        postbacks,
        stuck,
        total,
    }
}

fn status_word(s: &Status) -> &'static str {
    match s {
        Status::Active => "active",
        Status::Paused => "paused",
        Status::Disabled { .. } => "disabled",
        _ => "other",
    }
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

fn failure(f: Option<&LastFailure>) -> String {
    f.map_or_else(
        || "-".to_owned(),
        |f| {
            let counted = if f.counted { "" } else { ", not counted" };
            format!("{} ({}{counted})", when(Some(f.at)), f.class)
        },
    )
}

/// A small table: one line per postback, one per host, then the stuck deliveries.
impl fmt::Display for OpsStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<9} {:<8} {:<9} {:>7} {:>5} {:>9} {:>5}  {:<20}  last failure",
            "postback",
            "partner",
            "status",
            "pending",
            "held",
            "exhausted",
            "stuck",
            "last success"
        )?;
        for p in &self.postbacks {
            let partner = p.partner.map_or_else(|| "-".to_owned(), |x| x.to_string());
            writeln!(
                f,
                "{:<9} {:<8} {:<9} {:>7} {:>5} {:>9} {:>5}  {:<20}  {}",
                p.postback.to_string(),
                partner,
                status_word(&p.status),
                p.counts.pending,
                p.counts.held,
                p.counts.exhausted,
                p.counts.stuck,
                when(p.last_success),
                failure(p.last_failure.as_ref()),
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<32} {:>9} {:>7} {:>5} {:>9} {:>5}  {:<20}  last failure",
            "host", "postbacks", "pending", "held", "exhausted", "stuck", "last success"
        )?;
        for h in &self.hosts {
            writeln!(
                f,
                "{:<32} {:>9} {:>7} {:>5} {:>9} {:>5}  {:<20}  {}",
                h.host,
                h.postbacks,
                h.counts.pending,
                h.counts.held,
                h.counts.exhausted,
                h.counts.stuck,
                when(h.last_success),
                failure(h.last_failure.as_ref()),
            )?;
        }
        if self.stuck.is_empty() {
            write!(f, "\nstuck: none")
        } else {
            write!(f, "\nstuck:")?;
            for s in &self.stuck {
                let live = if s.leased_now { ", out now" } else { "" };
                write!(
                    f,
                    "\n  {} ({} leases expired{live})",
                    s.key, s.expired_leases
                )?;
            }
            Ok(())
        }
    }
}
