//! Who may create, edit, pause, resume, enable, delete and test-fire which postback: the complete permission
//! matrix driven through the `Gatekeeper`, and the audit trail of authorized changes.

use chrono::{DateTime, Utc};
use postback::access::{AccessError, Actor, AuditEntry, Gatekeeper, Operation, Settings};
use postback::model::{Level, ManagerId, OfferId, PartnerId, Postback, PostbackId, Status};
use postback::registry::{Registry, RegistryError, Resolution, Trigger};

const OWNER: PartnerId = PartnerId::new(7);
const OTHER: PartnerId = PartnerId::new(8);
const OFFER: OfferId = OfferId::new(42);
const ID: PostbackId = PostbackId::new(1);
const MANAGER: ManagerId = ManagerId::new(100);

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn disabled_automatically() -> Status {
    Status::Disabled {
        reason: "25 failed deliveries".to_owned(),
        at: DateTime::from_timestamp(1_699_000_000, 0).unwrap(),
    }
}

/// The postback under test at `level`: partner-global and specific ones belong to `OWNER`; an
/// offer-global one belongs to no partner.
fn target(level: Level) -> Postback {
    let b = Postback::builder(ID)
        .level(level)
        .url("https://t.example/pb?cid={sub1}");
    match level {
        Level::PartnerGlobal => b.partner(OWNER),
        Level::OfferGlobal => b.offer(OFFER),
        _ => b.partner(OWNER).offer(OFFER),
    }
    .build()
    .unwrap()
}

fn with_status(p: &Postback, status: Status) -> Postback {
    let mut p = p.clone();
    p.set_status(status);
    p
}

/// The same postback with a changed URL and description: an edit that keeps its scope.
fn edited(p: &Postback) -> Postback {
    p.to_builder()
        .url("https://t.example/pb2?cid={sub2}")
        .description("edited")
        .build()
        .unwrap()
}

/// What a refusal must leave untouched: every postback, and the index (through a resolution).
fn snapshot(reg: &Registry) -> (Vec<Postback>, Resolution) {
    let mut all: Vec<Postback> = reg.iter().cloned().collect();
    all.sort_by_key(Postback::id);
    (all, reg.resolve(&Trigger::conversion(1, OWNER, OFFER)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// A network manager.
    Network,
    /// `OWNER`, the partner of the partner-global and specific target.
    Owner,
    /// `OTHER`, another partner.
    Other,
}

impl Who {
    fn actor(self) -> Actor {
        match self {
            Who::Network => Actor::Network(MANAGER),
            Who::Owner => Actor::Partner(OWNER),
            Who::Other => Actor::Partner(OTHER),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Allowed: the change is made and audited.
    Ok,
    /// `AccessError::PartnerEditingOff`.
    EditingOff,
    /// `AccessError::NetworkOnly`.
    NetworkOnly,
    /// `AccessError::NotOwner`.
    NotOwner,
}

use Expect::{EditingOff, NetworkOnly, NotOwner, Ok};
use Level::{OfferGlobal, PartnerGlobal, Specific};
use Who::{Network, Other, Owner};

/// Every cell of the matrix. Columns follow `Operation::ALL`:
/// create, edit, pause, resume, enable, delete, test-fire.
#[rustfmt::skip]
const MATRIX: [(Who, Level, bool, [Expect; 7]); 18] = [
    // actor    level          partners   create       edit         pause        resume       enable       delete       test-fire
    //                         may edit
    (Network, PartnerGlobal, true,  [Ok         , Ok         , Ok         , Ok         , Ok         , Ok         , Ok         ]),
    (Network, PartnerGlobal, false, [Ok         , Ok         , Ok         , Ok         , Ok         , Ok         , Ok         ]),
    (Network, OfferGlobal,   true,  [Ok         , Ok         , Ok         , Ok         , Ok         , Ok         , Ok         ]),
    (Network, OfferGlobal,   false, [Ok         , Ok         , Ok         , Ok         , Ok         , Ok         , Ok         ]),
    (Network, Specific,      true,  [Ok         , Ok         , Ok         , Ok         , Ok         , Ok         , Ok         ]),
    (Network, Specific,      false, [Ok         , Ok         , Ok         , Ok         , Ok         , Ok         , Ok         ]),
    (Owner,   PartnerGlobal, true,  [Ok         , Ok         , Ok         , Ok         , Ok         , Ok         , Ok         ]),
    (Owner,   PartnerGlobal, false, [EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff ]),
    (Owner,   OfferGlobal,   true,  [NetworkOnly, NetworkOnly, NetworkOnly, NetworkOnly, NetworkOnly, NetworkOnly, NetworkOnly]),
    (Owner,   OfferGlobal,   false, [EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff ]),
    (Owner,   Specific,      true,  [Ok         , Ok         , Ok         , Ok         , Ok         , Ok         , Ok         ]),
    (Owner,   Specific,      false, [EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff ]),
    (Other,   PartnerGlobal, true,  [NotOwner   , NotOwner   , NotOwner   , NotOwner   , NotOwner   , NotOwner   , NotOwner   ]),
    (Other,   PartnerGlobal, false, [EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff ]),
    (Other,   OfferGlobal,   true,  [NetworkOnly, NetworkOnly, NetworkOnly, NetworkOnly, NetworkOnly, NetworkOnly, NetworkOnly]),
    (Other,   OfferGlobal,   false, [EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff ]),
    (Other,   Specific,      true,  [NotOwner   , NotOwner   , NotOwner   , NotOwner   , NotOwner   , NotOwner   , NotOwner   ]),
    (Other,   Specific,      false, [EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff , EditingOff ]),
];

/// The status of a postback switched off after delivery failures.
fn disabled_status() -> Status {
    Status::Disabled {
        reason: "25 failed attempts".to_owned(),
        at: now(),
    }
}

/// Run one cell against a fresh registry and check the exact outcome.
fn check_cell(who: Who, level: Level, may_edit: bool, op: Operation, expect: Expect) {
    let cell = format!("{who:?} / {level} / partners_may_edit={may_edit} / {op}");
    let gate = Gatekeeper::new(Settings::partners_may_edit(may_edit));
    let actor = who.actor();
    let original = target(level);
    let mut reg = Registry::new();

    // The registry before the operation, the operation's result, and the audit entry and
    // stored postback an allowed operation must produce.
    let (result, before, after) = match op {
        Operation::Create => {
            let r = gate.create(&mut reg, actor, now(), original.clone());
            (r, None, Some(original.clone()))
        }
        Operation::Edit => {
            reg.insert(original.clone()).unwrap();
            let new = edited(&original);
            let before_op = snapshot(&reg);
            let r = gate.edit(&mut reg, actor, now(), new.clone());
            if r.is_err() {
                assert_eq!(snapshot(&reg), before_op, "{cell}: registry changed");
            }
            (r, Some(original.clone()), Some(new))
        }
        Operation::Resume => {
            let paused = with_status(&original, Status::Paused);
            reg.insert(paused.clone()).unwrap();
            let r = gate.resume(&mut reg, actor, now(), ID);
            (
                r,
                Some(paused),
                Some(with_status(&original, Status::Active)),
            )
        }
        Operation::Enable => {
            let disabled = with_status(&original, disabled_status());
            reg.insert(disabled.clone()).unwrap();
            let r = gate.enable(&mut reg, actor, now(), ID);
            (
                r,
                Some(disabled),
                Some(with_status(&original, Status::Active)),
            )
        }
        Operation::Pause => {
            reg.insert(original.clone()).unwrap();
            let r = gate.pause(&mut reg, actor, now(), ID);
            (
                r,
                Some(original.clone()),
                Some(with_status(&original, Status::Paused)),
            )
        }
        Operation::Delete => {
            reg.insert(original.clone()).unwrap();
            let r = gate.delete(&mut reg, actor, now(), ID);
            (r, Some(original.clone()), None)
        }
        Operation::TestFire => {
            reg.insert(original.clone()).unwrap();
            let r = gate.test_fire(&reg, actor, now(), ID);
            (r, Some(original.clone()), Some(original.clone()))
        }
        _ => unreachable!("Operation::ALL has seven operations"),
    };

    match expect {
        Ok => {
            assert_eq!(
                result,
                Result::Ok(AuditEntry {
                    actor,
                    operation: op,
                    postback: ID,
                    at: now(),
                    before,
                    after: after.clone(),
                }),
                "{cell}"
            );
            assert_eq!(reg.get(ID), after.as_ref(), "{cell}: stored postback");
            assert_eq!(reg.len(), usize::from(after.is_some()), "{cell}");
        }
        refused => {
            let error = match refused {
                EditingOff => AccessError::PartnerEditingOff(op),
                NetworkOnly => AccessError::NetworkOnly(op),
                NotOwner => AccessError::NotOwner {
                    actor: OTHER,
                    owner: "partner 7".to_owned(),
                    postback: ID,
                    operation: op,
                },
                Ok => unreachable!(),
            };
            assert_eq!(result, Err(error), "{cell}");
            // Unchanged: exactly what was there before the operation.
            let unchanged = match op {
                Operation::Create => None,
                Operation::Resume => Some(with_status(&original, Status::Paused)),
                Operation::Enable => Some(with_status(&original, disabled_status())),
                _ => Some(original.clone()),
            };
            assert_eq!(reg.get(ID), unchanged.as_ref(), "{cell}: registry changed");
            assert_eq!(reg.len(), usize::from(unchanged.is_some()), "{cell}");
            let resolved = reg.resolve(&Trigger::conversion(1, OWNER, OFFER));
            let expected_firing: Vec<PostbackId> = match &unchanged {
                Some(p) if p.status().is_active() => vec![ID],
                _ => vec![],
            };
            assert_eq!(
                resolved.firing().collect::<Vec<_>>(),
                expected_firing,
                "{cell}: index changed"
            );
        }
    }
}

#[test]
fn the_permission_matrix_covers_every_actor_level_and_setting_exactly_once() {
    for who in [Network, Owner, Other] {
        for level in Level::BY_PRECEDENCE {
            for may_edit in [true, false] {
                let rows = MATRIX
                    .iter()
                    .filter(|(w, l, m, _)| (*w, *l, *m) == (who, level, may_edit))
                    .count();
                assert_eq!(rows, 1, "{who:?} / {level} / {may_edit}");
            }
        }
    }
    assert_eq!(
        Operation::ALL,
        [
            Operation::Create,
            Operation::Edit,
            Operation::Pause,
            Operation::Resume,
            Operation::Enable,
            Operation::Delete,
            Operation::TestFire,
        ],
        "the matrix columns follow Operation::ALL"
    );
}

#[test]
fn every_cell_of_the_permission_matrix_has_its_exact_outcome() {
    let mut cells = 0;
    for (who, level, may_edit, row) in MATRIX {
        for (op, expect) in Operation::ALL.into_iter().zip(row) {
            check_cell(who, level, may_edit, op, expect);
            cells += 1;
        }
    }
    assert_eq!(cells, 3 * 3 * 2 * 7);
}

#[test]
fn a_network_manager_may_do_everything_whatever_the_setting() {
    for level in Level::BY_PRECEDENCE {
        for may_edit in [true, false] {
            for op in Operation::ALL {
                check_cell(Network, level, may_edit, op, Ok);
            }
        }
    }
}

#[test]
fn a_partner_may_not_edit_its_postback_into_another_partners() {
    let gate = Gatekeeper::default();
    for level in [PartnerGlobal, Specific] {
        let mut reg = Registry::new();
        let original = target(level);
        reg.insert(original.clone()).unwrap();
        let before = snapshot(&reg);
        let handed_over = original.to_builder().partner(OTHER).build().unwrap();
        assert_eq!(
            gate.edit(&mut reg, Actor::Partner(OWNER), now(), handed_over),
            Err(AccessError::NotOwner {
                actor: OWNER,
                owner: "partner 8".to_owned(),
                postback: ID,
                operation: Operation::Edit,
            }),
            "{level}"
        );
        assert_eq!(snapshot(&reg), before, "{level}");
        assert_eq!(reg.get(ID), Some(&original));
    }
}

#[test]
fn a_partner_may_not_edit_its_postback_into_an_offer_global_one() {
    let gate = Gatekeeper::default();
    for level in [PartnerGlobal, Specific] {
        let mut reg = Registry::new();
        let original = target(level);
        reg.insert(original.clone()).unwrap();
        let before = snapshot(&reg);
        let offer_global = original
            .to_builder()
            .no_partner()
            .offer(OFFER)
            .level(OfferGlobal)
            .build()
            .unwrap();
        assert_eq!(
            gate.edit(&mut reg, Actor::Partner(OWNER), now(), offer_global),
            Err(AccessError::NetworkOnly(Operation::Edit)),
            "{level}"
        );
        assert_eq!(snapshot(&reg), before, "{level}");
        assert_eq!(reg.get(ID), Some(&original));
    }
}

#[test]
fn a_partner_may_edit_its_postback_between_its_own_levels() {
    let gate = Gatekeeper::default();
    let mut reg = Registry::new();
    let original = target(PartnerGlobal);
    reg.insert(original.clone()).unwrap();
    let specific = original
        .to_builder()
        .offer(OFFER)
        .level(Specific)
        .build()
        .unwrap();
    let entry = gate
        .edit(&mut reg, Actor::Partner(OWNER), now(), specific.clone())
        .unwrap();
    assert_eq!(entry.before, Some(original));
    assert_eq!(entry.after, Some(specific.clone()));
    assert_eq!(reg.get(ID), Some(&specific));
    assert_eq!(
        reg.resolve(&Trigger::conversion(1, OWNER, OFFER))
            .decision(ID)
            .map(|d| d.level),
        Some(Specific)
    );
}

#[test]
fn a_network_manager_may_move_a_postback_to_another_partner() {
    let gate = Gatekeeper::new(Settings::partners_may_edit(false));
    let mut reg = Registry::new();
    let original = target(Specific);
    reg.insert(original.clone()).unwrap();
    let moved = original.to_builder().partner(OTHER).build().unwrap();
    let entry = gate
        .edit(&mut reg, Actor::Network(MANAGER), now(), moved.clone())
        .unwrap();
    assert_eq!(
        entry,
        AuditEntry {
            actor: Actor::Network(MANAGER),
            operation: Operation::Edit,
            postback: ID,
            at: now(),
            before: Some(original),
            after: Some(moved),
        }
    );
    assert_eq!(
        reg.resolve(&Trigger::conversion(1, OWNER, OFFER)).decisions,
        []
    );
    assert_eq!(
        reg.resolve(&Trigger::conversion(1, OTHER, OFFER))
            .firing()
            .collect::<Vec<_>>(),
        [ID]
    );
}

#[test]
fn audit_entries_carry_the_postback_before_and_after_each_change() {
    let gate = Gatekeeper::default();
    let actor = Actor::Partner(OWNER);
    let at = |s: i64| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
    let mut reg = Registry::new();
    let created = target(Specific);
    let changed = edited(&created);
    let paused = with_status(&changed, Status::Paused);

    let trail = vec![
        gate.create(&mut reg, actor, at(0), created.clone())
            .unwrap(),
        gate.edit(&mut reg, actor, at(1), changed.clone()).unwrap(),
        gate.pause(&mut reg, actor, at(2), ID).unwrap(),
        gate.resume(&mut reg, actor, at(3), ID).unwrap(),
        gate.delete(&mut reg, actor, at(4), ID).unwrap(),
    ];
    let entry = |operation, s, before: Option<&Postback>, after: Option<&Postback>| AuditEntry {
        actor,
        operation,
        postback: ID,
        at: at(s),
        before: before.cloned(),
        after: after.cloned(),
    };
    assert_eq!(
        trail,
        [
            entry(Operation::Create, 0, None, Some(&created)),
            entry(Operation::Edit, 1, Some(&created), Some(&changed)),
            entry(Operation::Pause, 2, Some(&changed), Some(&paused)),
            entry(Operation::Resume, 3, Some(&paused), Some(&changed)),
            entry(Operation::Delete, 4, Some(&changed), None),
        ]
    );
    assert!(reg.is_empty());
}

#[test]
fn audit_entries_serialize_with_serde_json_and_round_trip() {
    let gate = Gatekeeper::default();
    let mut reg = Registry::new();
    let entry = gate
        .create(&mut reg, Actor::Partner(OWNER), now(), target(Specific))
        .unwrap();
    let json = serde_json::to_value(&entry).unwrap();
    assert_eq!(
        json["actor"],
        serde_json::json!({ "type": "partner", "id": 7 })
    );
    assert_eq!(json["operation"], "create");
    assert_eq!(json["postback"], 1);
    assert_eq!(json["at"], "2023-11-14T22:13:20Z");
    assert_eq!(json["before"], serde_json::Value::Null);
    assert_eq!(json["after"]["level"], "specific");
    assert_eq!(serde_json::from_value::<AuditEntry>(json).unwrap(), entry);
}

#[test]
fn enabling_an_automatically_disabled_postback_makes_it_active() {
    let gate = Gatekeeper::default();
    let mut reg = Registry::new();
    let original = target(Specific);
    reg.insert(original.clone()).unwrap();
    reg.disable_automatically(ID, "25 failed deliveries", disabled_at())
        .unwrap();
    let trigger = Trigger::conversion(1, OWNER, OFFER);
    assert_eq!(reg.resolve(&trigger).firing().count(), 0);

    let entry = gate
        .enable(&mut reg, Actor::Partner(OWNER), now(), ID)
        .unwrap();
    assert_eq!(
        entry,
        AuditEntry {
            actor: Actor::Partner(OWNER),
            operation: Operation::Enable,
            postback: ID,
            at: now(),
            before: Some(with_status(&original, disabled_automatically())),
            after: Some(with_status(&original, Status::Active)),
        }
    );
    assert_eq!(reg.get(ID).unwrap().status(), &Status::Active);
    assert_eq!(reg.resolve(&trigger).firing().collect::<Vec<_>>(), [ID]);
}

fn disabled_at() -> DateTime<Utc> {
    match disabled_automatically() {
        Status::Disabled { at, .. } => at,
        _ => unreachable!(),
    }
}

#[test]
fn operations_on_a_missing_postback_report_not_found() {
    let gate = Gatekeeper::default();
    let mut reg = Registry::new();
    let missing = AccessError::Registry(RegistryError::NotFound(ID));
    for actor in [Actor::Network(MANAGER), Actor::Partner(OWNER)] {
        assert_eq!(
            gate.edit(&mut reg, actor, now(), target(Specific)),
            Err(missing.clone())
        );
        assert_eq!(
            gate.enable(&mut reg, actor, now(), ID),
            Err(missing.clone())
        );
        assert_eq!(gate.pause(&mut reg, actor, now(), ID), Err(missing.clone()));
        assert_eq!(
            gate.resume(&mut reg, actor, now(), ID),
            Err(missing.clone())
        );
        assert_eq!(gate.test_fire(&reg, actor, now(), ID), Err(missing.clone()));
        assert_eq!(
            gate.delete(&mut reg, actor, now(), ID),
            Err(missing.clone())
        );
    }
    assert!(reg.is_empty());
}

#[test]
fn creating_a_postback_with_a_taken_id_is_refused_and_changes_nothing() {
    let gate = Gatekeeper::default();
    let mut reg = Registry::new();
    reg.insert(target(Specific)).unwrap();
    let before = snapshot(&reg);
    assert_eq!(
        gate.create(
            &mut reg,
            Actor::Network(MANAGER),
            now(),
            target(PartnerGlobal)
        ),
        Err(AccessError::Registry(RegistryError::Duplicate(ID)))
    );
    assert_eq!(snapshot(&reg), before);
}

#[test]
fn access_error_messages_are_lowercase_led_and_say_who_may_do_it() {
    let cases = [
        (
            AccessError::PartnerEditingOff(Operation::Edit),
            "partners may not edit postbacks on this network: ask a network manager",
        ),
        (
            AccessError::NetworkOnly(Operation::Delete),
            "only a network manager may delete an offer-global postback",
        ),
        (
            AccessError::NotOwner {
                actor: OTHER,
                owner: "partner 7".to_owned(),
                postback: ID,
                operation: Operation::Pause,
            },
            "postback 1 belongs to partner 7, not partner 8: only its owner or a network manager may \
             pause it",
        ),
    ];
    for (err, expected) in cases {
        let msg = err.to_string();
        assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
        assert!(
            msg.starts_with(expected),
            "{msg:?} does not start with {expected:?}"
        );
    }
}
