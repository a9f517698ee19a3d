//! Property: any interleaving of triggers, claims, completions, lost leases, crashes and restarts
//! over a store ends with the same delivered (and given-up) set as the in-memory engine fed the
//! same triggers against the same partner; nothing is lost, and a conversion is sent again only
//! when a claim of it was lost (a crash or an expired lease). Status changes (corrections) mixed
//! in: none is lost, and none is ever sent while an earlier revision of its conversion is
//! unfinished, so they arrive in order. Run on the memory and SQLite stores.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use postback::access::{Actor, Settings};
use postback::delivery::{Action, Delivery, DisablePolicy, Progress, RetryPolicy, State};
use postback::engine::{Engine, EngineConfig};
use postback::model::{
    ConversionStatus, Corrections, DeliveryKey, ManagerId, OfferId, PartnerId, Postback, PostbackId,
};
use postback::net::NetPolicy;
use postback::registry::{Registry, Trigger};
use postback::template::{Macro, ValueMap};
use postback_store::conformance::Harness;
use postback_store::{
    Claimed, Completion, Manage, MemoryStore, Rules, Store, record_interruptions, send_context,
};

const PB: PostbackId = PostbackId::new(1);
const PARTNER: PartnerId = PartnerId::new(7);
const LEASE: Duration = Duration::from_secs(60);

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).expect("valid")
}

fn postback() -> Postback {
    Postback::builder(PB)
        .partner(PARTNER)
        .url("https://partner.example/pb?cid={sub1}&status={conversion_status}")
        .corrections(Corrections::all())
        .build()
        .expect("valid")
}

fn retry() -> RetryPolicy {
    RetryPolicy::default().jitter(0, 0).max_attempts(4)
}

fn trigger(id: u64) -> Trigger {
    Trigger::conversion(id, PARTNER, OfferId::new(42))
}

/// Revision `revision` of conversion `id`, its status chosen by the revision.
fn correction(id: u64, revision: u32) -> Trigger {
    let status = ConversionStatus::ALL[revision as usize % ConversionStatus::ALL.len()];
    let revision = std::num::NonZeroU32::new(revision).expect("above 0");
    trigger(id).corrected(revision, status)
}

fn values(id: u64) -> ValueMap {
    ValueMap::new().with(Macro::SUB1, format!("click-{id}").as_str())
}

/// The partner: its answer depends on the conversion and how many counted failures came
/// before, so interruptions (never counted) do not change what it says.
fn status(key: &DeliveryKey, failures: u32, salt: u64) -> u16 {
    let h = key
        .to_text()
        .bytes()
        .fold(salt ^ u64::from(failures).wrapping_mul(0x9e37), |h, b| {
            h.wrapping_mul(31).wrapping_add(u64::from(b))
        });
    if h % 3 == 0 { 200 } else { 500 }
}

#[derive(Debug, Clone)]
enum Op {
    Trigger(u64),
    /// The conversion's next status change.
    Correct(u64),
    Claim(usize),
    Complete(usize),
    Crash,
    Advance(u32),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..12).prop_map(Op::Trigger),
        2 => (0u64..4).prop_map(Op::Correct),
        3 => (1usize..4).prop_map(Op::Claim),
        4 => (0usize..4).prop_map(Op::Complete),
        1 => Just(Op::Crash),
        2 => (1u32..200).prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

/// What the store side saw.
#[derive(Default)]
struct Seen {
    /// 200 answers per key.
    accepted: BTreeMap<DeliveryKey, u32>,
    /// Claims that never completed (crashes, restarts) or completed too late.
    lost: u32,
}

struct Driver<H: Harness> {
    h: H,
    store: Option<H::Store>,
    out: Vec<(Claimed, Delivery, Progress)>,
    now: DateTime<Utc>,
    salt: u64,
    seen: Seen,
    /// The last revision handed out per conversion.
    revisions: BTreeMap<u64, u32>,
    /// Every trigger and correction, in order, for the engine.
    fed: Vec<Trigger>,
}

impl<H: Harness> Driver<H> {
    fn store(&self) -> &H::Store {
        self.store.as_ref().expect("open")
    }

    /// Claim and send (the answer is decided now, kept until completed).
    fn claim(&mut self, n: usize) {
        let claimed = self
            .store()
            .deliveries_claim(self.now, "w", n, LEASE)
            .expect("claim");
        let rules = Rules::default();
        for c in claimed {
            // The order rule: nothing is claimed while an earlier revision is unfinished.
            let key = *c.delivery.key();
            for earlier in 0..key.revision() {
                let k = DeliveryKey::new(key.trigger(), key.postback(), key.purpose(), earlier);
                if let Some(e) = self.store().delivery_get(&k).expect("get") {
                    assert!(
                        matches!(e.state(), State::Delivered { .. } | State::GaveUp { .. }),
                        "{key} claimed while {k} is {:?}",
                        e.state()
                    );
                }
            }
            let pb = c.postback.clone().expect("never deleted here");
            let ctx = send_context(&pb, &rules);
            let mut d = c.delivery.clone();
            if let Some(done) =
                record_interruptions(self.now, &mut d, c.interrupted, &ctx, &retry())
            {
                self.out.push((c, d, done));
                continue;
            }
            assert!(matches!(d.poll(self.now, &ctx), Action::Send(_)));
            let s = status(d.key(), d.failures(), self.salt);
            if s == 200 {
                *self.seen.accepted.entry(*d.key()).or_default() += 1;
            }
            let resp = http::Response::builder()
                .status(s)
                .body(Vec::new())
                .expect("valid");
            let p = d
                .handle_response(self.now, Ok(resp), &retry())
                .expect("in flight");
            self.out.push((c, d, p));
        }
    }

    fn complete(&mut self, i: usize) {
        if self.out.is_empty() {
            return;
        }
        let (c, d, p) = self.out.remove(i % self.out.len());
        let done = self
            .store()
            .delivery_complete(self.now, c.token, d, p, &DisablePolicy::Never)
            .expect("complete");
        if done == Completion::LeaseLost {
            self.seen.lost += 1;
        }
    }

    fn crash(&mut self) {
        self.seen.lost += u32::try_from(self.out.len()).unwrap_or(u32::MAX);
        self.out.clear();
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Trigger(id) => self.feed(trigger(id), id),
            Op::Correct(id) => {
                let revision = self.revisions.entry(id).or_default();
                *revision += 1;
                let t = correction(id, *revision);
                self.feed(t, id);
            }
            Op::Claim(n) => self.claim(n),
            Op::Complete(i) => self.complete(i),
            Op::Crash => self.crash(),
            Op::Advance(s) => self.now += chrono::Duration::seconds(i64::from(s)),
            Op::Restart => {
                self.crash();
                let old = self.store.take().expect("open");
                self.store = Some(self.h.reopen(old));
            }
        }
    }

    fn feed(&mut self, t: Trigger, id: u64) {
        let _ = self
            .store()
            .trigger_enqueue(self.now, &t, &values(id), &Rules::default())
            .expect("trigger");
        self.fed.push(t);
    }

    /// Run the store to idle: complete what is out, then claim whatever comes due.
    fn drain(&mut self) {
        for _ in 0..10_000 {
            while !self.out.is_empty() {
                self.complete(0);
            }
            match self.store().deliveries_next_due().expect("next due") {
                None => return,
                Some(at) => {
                    self.now = self.now.max(at);
                    self.claim(16);
                }
            }
        }
        panic!("the store did not become idle");
    }
}

/// The engine fed the same triggers, run to idle against the same partner.
fn engine_outcome(
    triggers: &[Trigger],
    salt: u64,
) -> (BTreeSet<DeliveryKey>, BTreeSet<DeliveryKey>) {
    let mut reg = Registry::new();
    reg.insert(postback()).expect("unique");
    let config = EngineConfig::default()
        .retry(retry())
        .disable(DisablePolicy::Never)
        .net(NetPolicy::default());
    let mut e = Engine::new(config, reg);
    let mut now = t0();
    for t in triggers {
        let id: u64 = t.id.as_str().parse().expect("numeric ids");
        let _ = e.handle_trigger(now, t, &values(id));
    }
    let mut delivered = BTreeSet::new();
    let mut gave_up = BTreeSet::new();
    while let Some(at) = e.poll_timeout() {
        now = now.max(at);
        while let Some(tx) = e.poll_transmit(now) {
            let failures = e.delivery(tx.delivery).map_or(0, |d| d.failures());
            let s = status(&tx.key, failures, salt);
            let resp = http::Response::builder()
                .status(s)
                .body(Vec::new())
                .expect("valid");
            e.handle_response(now, tx.delivery, Ok(resp))
                .expect("in flight");
        }
        while let Some(ev) = e.poll_event() {
            match ev {
                postback::engine::Event::Delivered { record } => {
                    delivered.insert(*record.key());
                }
                postback::engine::Event::GaveUp { record } => {
                    gave_up.insert(*record.key());
                }
                _ => {}
            }
        }
    }
    (delivered, gave_up)
}

/// Run `ops` against a store from `h`; compare with the engine.
fn check<H: Harness>(mut h: H, ops: &[Op], salt: u64) {
    let store = h.fresh();
    store
        .postback_manage(
            t0(),
            Actor::Network(ManagerId::new(1)),
            Manage::Create(postback()),
            &Settings::default(),
        )
        .expect("create");
    let mut d = Driver {
        h,
        store: Some(store),
        out: Vec::new(),
        now: t0(),
        salt,
        seen: Seen::default(),
        revisions: BTreeMap::new(),
        fed: Vec::new(),
    };
    for op in ops {
        d.apply(op);
    }
    d.drain();
    let (delivered, gave_up) = engine_outcome(&d.fed, salt);
    let mut got_delivered = BTreeSet::new();
    let mut got_gave_up = BTreeSet::new();
    for d in d
        .store()
        .deliveries_of(PB, postback_store::Filter::All, usize::MAX)
        .expect("all")
    {
        match d.state() {
            State::Delivered { .. } => got_delivered.insert(*d.key()),
            State::GaveUp { .. } => got_gave_up.insert(*d.key()),
            other => panic!("{} left {other:?}: lost", d.key()),
        };
    }
    assert_eq!(
        got_delivered, delivered,
        "the same delivered set as the engine"
    );
    assert_eq!(got_gave_up, gave_up, "the same given-up set as the engine");
    let extra: u32 = d.seen.accepted.values().map(|n| n - 1).sum();
    assert!(
        extra <= d.seen.lost,
        "{extra} duplicate sends with only {} lost claims",
        d.seen.lost
    );
    assert!(
        d.seen.accepted.keys().all(|k| delivered.contains(k)),
        "whatever the partner accepted is recorded delivered"
    );
}

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

/// A new SQLite file per store; a restart opens the same file again.
#[cfg(feature = "sqlite")]
struct Sqlite {
    dir: tempfile::TempDir,
    files: usize,
}

#[cfg(feature = "sqlite")]
impl Sqlite {
    fn new() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().expect("a temporary directory"),
            files: 0,
        }
    }
    fn open(&self) -> postback_store::SqliteStore {
        let path = self.dir.path().join(format!("s-{}.sqlite", self.files));
        postback_store::SqliteStore::open(path).expect("open")
    }
}

#[cfg(feature = "sqlite")]
impl Harness for Sqlite {
    type Store = postback_store::SqliteStore;
    fn fresh(&mut self) -> Self::Store {
        self.files += 1;
        self.open()
    }
    fn reopen(&mut self, old: Self::Store) -> Self::Store {
        drop(old);
        self.open()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_interleaving_on_the_memory_store_delivers_what_the_engine_delivers(
        ops in proptest::collection::vec(op(), 1..60),
        salt in any::<u64>(),
    ) {
        check(Memory, &ops, salt);
    }
}

#[cfg(feature = "sqlite")]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_interleaving_on_the_sqlite_store_delivers_what_the_engine_delivers(
        ops in proptest::collection::vec(op(), 1..60),
        salt in any::<u64>(),
    ) {
        check(Sqlite::new(), &ops, salt);
    }
}
