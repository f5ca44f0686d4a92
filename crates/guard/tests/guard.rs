//! The guard: identity, policy, envelopes, tiers and corroboration.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::sync::Arc;

use detect::{Detection, DetectionKind, EpisodeClass, Evidence};
use ed25519_dalek::SigningKey;
use guard::{
    Action, AgentRegistry, DEFAULT_POLICY, Decision, DenyReason, Guard, Policy, Proposal,
    sign_proposal,
};
use plant_model::{Plant, PlantCommand};
use proptest::prelude::*;

const T0: i64 = 1_767_225_600_000;

struct Setup {
    guard: Guard,
    key: SigningKey,
    token: String,
    nonce: u64,
}

fn setup() -> Setup {
    setup_on(Plant::reference())
}

fn setup_on(plant: Plant) -> Setup {
    let plant = Arc::new(plant);
    let policy = Policy::parse(DEFAULT_POLICY, "default", &plant).unwrap();
    let key = SigningKey::from_bytes(&[3u8; 32]);
    let mut reg = AgentRegistry::default();
    reg.register("optimiser", key.verifying_key());
    reg.register("maintenance", key.verifying_key());
    let token = reg
        .issue_token("optimiser", "a".repeat(64), T0)
        .unwrap()
        .value;
    Setup {
        guard: Guard::new(plant, reg, policy),
        key,
        token,
        nonce: 0,
    }
}

impl Setup {
    fn propose(
        &mut self,
        agent: &str,
        action: Action,
        evidence: Vec<u64>,
        active: &[&Detection],
        now: i64,
    ) -> Decision {
        self.propose_with(agent, action, evidence, active, &[], &normal(), now)
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "test helper mirroring the proposal fields"
    )]
    fn propose_with(
        &mut self,
        agent: &str,
        action: Action,
        evidence: Vec<u64>,
        active: &[&Detection],
        inputs: &[&str],
        trust: &guard::InputTrust,
        now: i64,
    ) -> Decision {
        self.nonce += 1;
        let token = if agent == "optimiser" {
            self.token.clone()
        } else {
            self.guard
                .agents()
                .issue_token(agent, format!("{:064}", self.nonce), now)
                .unwrap()
                .value
        };
        let p = Proposal {
            agent: agent.into(),
            action,
            reason: "test".into(),
            evidence,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            created_ms: now,
            nonce: format!("n{}", self.nonce),
        };
        let sp = sign_proposal(&p, &token, &self.key);
        self.guard.decide(&sp, active, trust, now).1
    }
}

/// Every input trusted, and the buffer tank at its usual level (the pump's precondition).
/// A person holding the approver role (and the roles below it).
fn approver(name: &str) -> guard::Human {
    guard::Human::new(name, &["viewer", "operator", "approver"])
}

/// Every input trusted and nothing detected, for a person's review.
fn now() -> guard::Situation<'static> {
    static TRUST: std::sync::LazyLock<guard::InputTrust> = std::sync::LazyLock::new(normal);
    guard::Situation {
        trust: &TRUST,
        active: &[],
    }
}

fn normal() -> guard::InputTrust {
    let mut t = guard::InputTrust::default();
    t.values.insert("tank.level".into(), 1.6);
    t
}

fn speed(v: f64) -> Action {
    Action::SetSetpoint {
        setpoint: "pump.speed_sp".into(),
        value: v,
    }
}

fn denied(d: &Decision) -> Option<DenyReason> {
    match d {
        Decision::Denied { reason, .. } => Some(*reason),
        _ => None,
    }
}

#[test]
fn in_envelope_change_executes_and_out_of_envelope_is_denied_not_clamped() {
    let mut s = setup();
    match s.propose("optimiser", speed(1500.0), vec![], &[], T0) {
        Decision::Execute(a) => assert_eq!(
            a.command().command,
            PlantCommand::SetSetpoint {
                setpoint: "pump.speed_sp".into(),
                value: 1500.0
            }
        ),
        other => panic!("{other:?}"),
    }
    let d = s.propose("optimiser", speed(900.0), vec![], &[], T0);
    match &d {
        Decision::Denied { reason, detail } => {
            assert_eq!(*reason, DenyReason::Envelope);
            assert!(detail.contains("[1100, 1750]"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    let d = s.propose("optimiser", speed(1300.0), vec![], &[], T0);
    assert_eq!(denied(&d), Some(DenyReason::Envelope), "step of 200 > 100");
    assert_eq!(s.guard.commanded("pump.speed_sp"), Some(1500.0));
}

#[test]
fn changes_per_hour_are_limited() {
    let mut s = setup();
    let mut v = 1600.0;
    for i in 0..6 {
        v -= 50.0;
        assert!(matches!(
            s.propose("optimiser", speed(v), vec![], &[], T0 + i * 60_000),
            Decision::Execute(_)
        ));
    }
    let d = s.propose("optimiser", speed(v - 50.0), vec![], &[], T0 + 400_000);
    assert_eq!(denied(&d), Some(DenyReason::RateLimit));
    let later = T0 + 3_600_000 + 60_000;
    s.token = s
        .guard
        .agents()
        .issue_token("optimiser", "b".repeat(64), later)
        .unwrap()
        .value;
    assert!(
        matches!(
            s.propose("optimiser", speed(v - 50.0), vec![], &[], later),
            Decision::Execute(_)
        ),
        "window slides"
    );
}

#[test]
fn a_clock_stepped_back_loses_no_change_from_the_limits() {
    // Without a slew limit, which alone refuses every change until the clock is past the
    // newest one again.
    let mut plant = Plant::reference();
    for sp in &mut plant.setpoints {
        sp.max_slew_per_min = None;
    }
    let mut s = setup_on(plant);
    let reissue = |s: &mut Setup, at: i64, n: char| {
        s.token = s
            .guard
            .agents()
            .issue_token("optimiser", n.to_string().repeat(64), at)
            .unwrap()
            .value;
    };
    let start = T0 + 50 * 60_000;
    reissue(&mut s, start, 'b');
    let mut v = 1600.0;
    for i in 0..5 {
        v -= 50.0;
        let d = s.propose("optimiser", speed(v), vec![], &[], start + i * 60_000);
        assert!(matches!(d, Decision::Execute(_)), "{d:?}");
    }
    // The clock steps back 54 minutes: the sixth change is kept as the newest, not as an
    // hour-old one that the window would already have let go.
    reissue(&mut s, T0, 'c');
    v -= 50.0;
    let d = s.propose("optimiser", speed(v), vec![], &[], T0);
    assert!(matches!(d, Decision::Execute(_)), "{d:?}");
    let later = T0 + 62 * 60_000;
    reissue(&mut s, later, 'd');
    let d = s.propose("optimiser", speed(v - 50.0), vec![], &[], later);
    assert_eq!(denied(&d), Some(DenyReason::RateLimit), "{d:?}");
}

#[test]
fn policy_denies_what_it_does_not_allow() {
    let mut s = setup();
    let d = s.propose(
        "optimiser",
        Action::SetSetpoint {
            setpoint: "filler.speed_sp".into(),
            value: 500.0,
        },
        vec![],
        &[],
        T0,
    );
    assert_eq!(denied(&d), Some(DenyReason::Policy));
    let d = s.propose("optimiser", Action::StopLine, vec![], &[], T0);
    assert_eq!(denied(&d), Some(DenyReason::Policy));
}

#[test]
fn stolen_token_without_key_is_refused_and_alerts() {
    let mut s = setup();
    let thief = SigningKey::from_bytes(&[66u8; 32]);
    let p = Proposal {
        agent: "optimiser".into(),
        action: speed(1550.0),
        reason: "x".into(),
        evidence: vec![],
        inputs: vec![],
        created_ms: T0,
        nonce: "thief-1".into(),
    };
    let mut sp = sign_proposal(&p, &s.token, &thief);
    let (_, d, rec) = s.guard.decide(&sp, &[], &normal(), T0);
    assert_eq!(denied(&d), Some(DenyReason::TokenWithoutKey));
    assert_eq!(rec.outcome, "denied");
    sp.signature = String::new();
    let (_, d, _) = s.guard.decide(&sp, &[], &normal(), T0);
    assert_eq!(denied(&d), Some(DenyReason::TokenWithoutKey));
    assert_eq!(s.guard.stats().alerts.len(), 2);
}

#[test]
fn replayed_signed_request_is_refused() {
    let mut s = setup();
    let p = Proposal {
        agent: "optimiser".into(),
        action: speed(1550.0),
        reason: "x".into(),
        evidence: vec![],
        inputs: vec![],
        created_ms: T0,
        nonce: "once".into(),
    };
    let sp = sign_proposal(&p, &s.token, &s.key);
    assert!(matches!(
        s.guard.decide(&sp, &[], &normal(), T0).1,
        Decision::Execute(_)
    ));
    assert_eq!(
        denied(&s.guard.decide(&sp, &[], &normal(), T0 + 1).1),
        Some(DenyReason::Replay)
    );
}

#[test]
fn revocation_and_expiry_take_effect_at_once() {
    let mut s = setup();
    s.guard.agents().revoke("optimiser");
    assert_eq!(
        denied(&s.propose("optimiser", speed(1550.0), vec![], &[], T0)),
        Some(DenyReason::Identity)
    );
    let mut s = setup();
    let late = T0 + 16 * 60 * 1000;
    assert_eq!(
        denied(&s.propose("optimiser", speed(1550.0), vec![], &[], late)),
        Some(DenyReason::Identity)
    );
}

fn detection(id: u64, signals: &[&str], trusted: bool) -> Detection {
    Detection {
        id,
        kind: DetectionKind::LimitHigh,
        raised_ms: T0,
        value: 1.0,
        limit: 0.0,
        message: String::new(),
        evidence: Evidence {
            signals: signals.iter().map(|s| s.to_string()).collect(),
            relation: None,
            devices: vec![],
            trusted,
        },
        class: detect::EpisodeClass::ProcessUpset,
    }
}

#[test]
fn line_stop_needs_two_independent_trusted_detections_or_a_human() {
    let vib = detection(1, &["pump.vibration"], true);
    let temp = detection(2, &["pump.bearing_temp"], true);
    let vib_again = detection(3, &["pump.vibration"], true);
    let suspect = detection(4, &["tank.level"], false);

    let mut s = setup();
    let d = s.propose("maintenance", Action::StopLine, vec![1], &[&vib], T0);
    assert!(
        matches!(d, Decision::Pending { .. }),
        "one detection: {d:?}"
    );
    let d = s.propose(
        "maintenance",
        Action::StopLine,
        vec![1, 3],
        &[&vib, &vib_again],
        T0,
    );
    assert!(
        matches!(d, Decision::Pending { .. }),
        "same signal twice is not independent"
    );
    let d = s.propose(
        "maintenance",
        Action::StopLine,
        vec![1, 4],
        &[&vib, &suspect],
        T0,
    );
    assert!(
        matches!(d, Decision::Pending { .. }),
        "untrusted evidence does not count"
    );
    let d = s.propose("maintenance", Action::StopLine, vec![1, 2], &[&vib], T0);
    assert!(
        matches!(d, Decision::Pending { .. }),
        "cited evidence must be active"
    );
    let d = s.propose(
        "maintenance",
        Action::StopLine,
        vec![1, 2],
        &[&vib, &temp],
        T0,
    );
    assert!(matches!(d, Decision::Execute(_)), "{d:?}");
    assert!(s.guard.line_stopped());
    assert_eq!(s.guard.stats().line_stops, 1);
    // Nothing automatic while stopped.
    assert_eq!(
        denied(&s.propose("optimiser", speed(1550.0), vec![], &[], T0)),
        Some(DenyReason::LineStopped)
    );
}

/// Two independent trusted detections, but one is classified unknown or a suspected
/// attack: the stop goes to a human, saying why.
#[test]
fn an_episode_nobody_can_explain_never_stops_the_line_by_itself() {
    let vib = detection(1, &["pump.vibration"], true);
    for class in [EpisodeClass::Unknown, EpisodeClass::SuspectedAttack] {
        let mut temp = detection(2, &["pump.bearing_temp"], true);
        temp.class = class;
        let mut s = setup();
        let d = s.propose(
            "maintenance",
            Action::StopLine,
            vec![1, 2],
            &[&vib, &temp],
            T0,
        );
        match d {
            Decision::Pending { why, .. } => assert!(
                why.contains(&format!(
                    "detection 2, classified {}",
                    class.as_str().replace('_', " ")
                )),
                "{why}"
            ),
            other => panic!("{class:?}: {other:?}"),
        }
        assert!(!s.guard.line_stopped());
    }
}

#[test]
fn human_approval_executes_and_rechecks_the_envelope() {
    let mut s = setup();
    let d = s.propose(
        "maintenance",
        Action::Maintenance {
            asset: "pump".into(),
        },
        vec![],
        &[],
        T0,
    );
    let Decision::Pending { id, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(s.guard.pending().count(), 1);
    let d = s
        .guard
        .approve(id, &approver("ana"), &now(), T0 + 1000)
        .unwrap();
    match d {
        Decision::Execute(a) => {
            assert_eq!(a.command().command, PlantCommand::Maintenance);
            assert_eq!(a.command().approved_by, vec!["ana".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        s.guard.approve(id, &approver("ana"), &now(), T0).is_err(),
        "approved twice"
    );
    let d = s.propose(
        "maintenance",
        Action::Maintenance {
            asset: "pump".into(),
        },
        vec![],
        &[],
        T0,
    );
    let Decision::Pending { id, .. } = d else {
        panic!()
    };
    let d = s
        .guard
        .approve(id, &approver("ana"), &now(), T0 + 2 * 3_600_000)
        .unwrap();
    assert_eq!(denied(&d), Some(DenyReason::Expired));
}

proptest! {
    /// Whatever an agent proposes, in whatever order, no executed setpoint command leaves
    /// its envelope, steps further than max_step, or exceeds the hourly change budget.
    #[test]
    fn nothing_outside_the_envelope_is_ever_approved(
        steps in proptest::collection::vec((900.0f64..2000.0, 0i64..600_000), 1..60)
    ) {
        let mut s = setup();
        let mut now = T0;
        let mut last = 1600.0;
        let mut executed: Vec<i64> = Vec::new();
        for (value, dt) in steps {
            now += dt;
            if now - T0 > 10 * 60 * 1000 {
                // keep the token valid
                s.token = s.guard.agents().issue_token("optimiser", format!("{:064}", now), now).unwrap().value;
            }
            if let Decision::Execute(a) = s.propose("optimiser", speed(value), vec![], &[], now) {
                let PlantCommand::SetSetpoint { value, .. } = a.command().command else { panic!() };
                prop_assert!((1100.0..=1750.0).contains(&value));
                prop_assert!((value - last).abs() <= 100.0 + 1e-9);
                executed.retain(|t| now - t < 3_600_000);
                prop_assert!(executed.len() < 6);
                executed.push(now);
                last = value;
            }
        }
    }
}

proptest! {
    /// However many detections there are, if they all rest on one signal (one faulty
    /// sensor), a line stop never executes without a human.
    #[test]
    fn one_faulty_sensor_never_stops_the_line_on_its_own(
        signal in proptest::sample::select(vec!["tank.level", "pump.vibration", "pump.bearing_temp", "past.product_temp"]),
        trusted in proptest::collection::vec(any::<bool>(), 1..8),
    ) {
        let mut s = setup();
        let dets: Vec<Detection> = trusted.iter().enumerate().map(|(i, t)| detection(i as u64 + 1, &[signal], *t)).collect();
        let refs: Vec<&Detection> = dets.iter().collect();
        let ids: Vec<u64> = dets.iter().map(|d| d.id).collect();
        let d = s.propose("maintenance", Action::StopLine, ids, &refs, T0);
        prop_assert!(matches!(d, Decision::Pending { .. }), "{:?}", d);
        prop_assert!(!s.guard.line_stopped());
    }
}

#[test]
fn values_below_the_required_trust_never_drive_actuation() {
    let mut s = setup();
    let mut trust = normal();
    trust.below.insert(
        "filler.recirc_flow".into(),
        "arrived unsigned from gw-legacy".into(),
    );
    let d = s.propose_with(
        "optimiser",
        speed(1550.0),
        vec![],
        &[],
        &["filler.recirc_flow", "pump.speed"],
        &trust,
        T0,
    );
    match &d {
        Decision::Denied { reason, detail } => {
            assert_eq!(*reason, DenyReason::UntrustedInput);
            assert!(
                detail.contains("filler.recirc_flow (arrived unsigned from gw-legacy)"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The same proposal on trusted inputs executes.
    let d = s.propose_with(
        "optimiser",
        speed(1550.0),
        vec![],
        &[],
        &["pump.speed"],
        &trust,
        T0,
    );
    assert!(matches!(d, Decision::Execute(_)), "{d:?}");
    // A stop resting on doubtful data is not denied: it goes to a human.
    let vib = detection(1, &["pump.vibration"], false);
    trust
        .below
        .insert("pump.vibration".into(), "contradicted by physics".into());
    let d = s.propose_with(
        "maintenance",
        Action::StopLine,
        vec![1],
        &[&vib],
        &["pump.vibration"],
        &trust,
        T0,
    );
    assert!(matches!(d, Decision::Pending { .. }), "{d:?}");
}

#[test]
fn slew_budget_and_preconditions_deny_with_the_limit_broken() {
    let mut s = setup();
    assert!(matches!(
        s.propose("optimiser", speed(1550.0), vec![], &[], T0),
        Decision::Execute(_)
    ));
    // 100 rpm/min: 80 rpm half a minute later is too fast ...
    let d = s.propose("optimiser", speed(1470.0), vec![], &[], T0 + 30_000);
    match &d {
        Decision::Denied { reason, detail } => {
            assert_eq!(*reason, DenyReason::Envelope);
            assert!(detail.contains("slew limit of 100"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // ... and fine a minute later.
    assert!(matches!(
        s.propose("optimiser", speed(1470.0), vec![], &[], T0 + 60_000),
        Decision::Execute(_)
    ));
    // Budget: 400 rpm of change per hour. 50 + 80 used; two more changes of 100 = 330,
    // then 100 more would make 430.
    let mut v = 1470.0;
    for k in 0..2 {
        v += if k % 2 == 0 { 100.0 } else { -100.0 };
        let d = s.propose("optimiser", speed(v), vec![], &[], T0 + (k + 2) * 60_000);
        assert!(matches!(d, Decision::Execute(_)), "{d:?}");
    }
    let d = s.propose("optimiser", speed(v + 100.0), vec![], &[], T0 + 5 * 60_000);
    match &d {
        Decision::Denied { reason, detail } => {
            assert_eq!(*reason, DenyReason::Budget);
            assert!(detail.contains("exceeds the budget of 400"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // Preconditions: no pump change while the buffer tank is nearly empty, or unknown.
    let mut s = setup();
    let mut low = normal();
    low.values.insert("tank.level".into(), 0.2);
    let d = s.propose_with("optimiser", speed(1550.0), vec![], &[], &[], &low, T0);
    match &d {
        Decision::Denied { reason, detail } => {
            assert_eq!(*reason, DenyReason::Precondition);
            assert!(
                detail.contains("tank.level is within [0.3, inf]; it is 0.2"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    let d = s.propose_with(
        "optimiser",
        speed(1550.0),
        vec![],
        &[],
        &[],
        &guard::InputTrust::default(),
        T0,
    );
    assert_eq!(denied(&d), Some(DenyReason::Precondition));
    assert_eq!(
        s.guard.commanded("pump.speed_sp"),
        Some(1600.0),
        "nothing moved"
    );
}

fn filler(v: f64) -> Action {
    Action::SetSetpoint {
        setpoint: "filler.speed_sp".into(),
        value: v,
    }
}

/// A setup whose policy also lets the optimiser propose filler speed changes (a dual-
/// approval setpoint in the reference plant).
fn setup_with_filler() -> Setup {
    let mut s = setup();
    let plant = Arc::new(Plant::reference());
    let text = format!(
        "{DEFAULT_POLICY}\n@id(\"optimiser-filler\")\n@reason(\"the optimiser may propose filler speeds\")\npermit (principal == Twinguard::Agent::\"optimiser\", action == Twinguard::Action::\"set_setpoint\", resource == Twinguard::Asset::\"filler\");\n"
    );
    let policy = Policy::parse(&text, "test", &plant).unwrap();
    let reg = s.guard.agents().clone();
    s.guard = Guard::new(plant, reg, policy);
    s
}

#[test]
fn dual_approval_needs_two_different_people() {
    let mut s = setup_with_filler();
    let d = s.propose("optimiser", filler(480.0), vec![], &[], T0);
    let Decision::Pending { id, why } = d else {
        panic!("{d:?}")
    };
    assert!(why.contains("two different humans"), "{why}");
    // The first approval leaves it pending ...
    let d = s
        .guard
        .approve(id, &approver("ana"), &now(), T0 + 1000)
        .unwrap();
    assert!(matches!(d, Decision::Pending { .. }), "{d:?}");
    // ... the same person again is refused, and it stays pending ...
    let e = s
        .guard
        .approve(id, &approver("ana"), &now(), T0 + 2000)
        .unwrap_err();
    assert!(e.contains("different person"), "{e}");
    assert_eq!(s.guard.pending().count(), 1);
    // ... a second person executes it, both on record.
    match s
        .guard
        .approve(id, &approver("bo"), &now(), T0 + 3000)
        .unwrap()
    {
        Decision::Execute(a) => assert_eq!(
            a.command().approved_by,
            vec!["ana".to_string(), "bo".to_string()]
        ),
        other => panic!("{other:?}"),
    }
    // An approval after expiry executes nothing, even with two people.
    let d = s.propose("optimiser", filler(470.0), vec![], &[], T0 + 4000);
    let Decision::Pending { id, .. } = d else {
        panic!("{d:?}")
    };
    s.guard
        .approve(id, &approver("ana"), &now(), T0 + 5000)
        .unwrap();
    let late = T0 + 4000 + guard::APPROVAL_TTL_MS + 1;
    let d = s.guard.approve(id, &approver("bo"), &now(), late).unwrap();
    assert_eq!(denied(&d), Some(DenyReason::Expired));
}

/// Who may approve, reject, resume and reset is the policy's decision: a person the
/// policy does not allow is refused with the policy named, and the proposal stays
/// pending for someone it does allow.
#[test]
fn people_review_only_what_the_policy_allows_them() {
    let mut s = setup();
    let plant = Arc::new(Plant::reference());
    let text = format!(
        "{DEFAULT_POLICY}\n@id(\"qa-maintenance\")\n@reason(\"only the maintenance lead approves maintenance\")\nforbid (principal, action == Twinguard::Action::\"approve\", resource)\nwhen {{ context.kind == \"maintenance\" }}\nunless {{ principal == Twinguard::Human::\"lead\" }};"
    );
    let reg = s.guard.agents().clone();
    s.guard = Guard::new(
        plant,
        reg,
        Policy::parse(&text, "plant.cedar", &Plant::reference()).unwrap(),
    );
    let maintenance = || Action::Maintenance {
        asset: "pump".into(),
    };
    let Decision::Pending { id, .. } = s.propose("maintenance", maintenance(), vec![], &[], T0)
    else {
        panic!()
    };
    // An operator is not an approver; an approver other than the lead is forbidden.
    let olga = guard::Human::new("olga", &["viewer", "operator"]);
    let e = s.guard.approve(id, &olga, &now(), T0 + 1).unwrap_err();
    assert!(
        e.starts_with(
            "olga may not approve proposal 1 (maintenance on pump, by agent maintenance): "
        ),
        "{e}"
    );
    let e = s
        .guard
        .approve(id, &approver("ana"), &now(), T0 + 2)
        .unwrap_err();
    assert!(
        e.contains("forbidden by qa-maintenance: only the maintenance lead"),
        "{e}"
    );
    assert_eq!(s.guard.pending().count(), 1, "still pending");
    let e = s.guard.reject(id, &olga, &now()).unwrap_err();
    assert!(e.starts_with("olga may not reject"), "{e}");
    // The lead approves; anyone with the approver role may reject.
    assert!(matches!(
        s.guard
            .approve(id, &approver("lead"), &now(), T0 + 3)
            .unwrap(),
        Decision::Execute(_)
    ));
    let Decision::Pending { id, .. } = s.propose("maintenance", maintenance(), vec![], &[], T0 + 4)
    else {
        panic!()
    };
    assert!(matches!(
        s.guard.reject(id, &approver("ana"), &now()),
        Ok(Decision::Denied { .. })
    ));
    // Resuming after a stop: an operator may stop but not resume.
    s.guard.human_stop("olga", T0 + 5);
    let e = s.guard.human_start(&olga, &now()).unwrap_err();
    assert!(e.starts_with("olga may not resume the line"), "{e}");
    assert!(s.guard.line_stopped());
    assert!(s.guard.human_start(&approver("ana"), &now()).is_ok());
    assert!(!s.guard.line_stopped());
}

#[test]
fn agents_are_rate_limited_overall_and_per_asset() {
    let mut s = setup();
    let plant = Arc::new(Plant::reference());
    let reg = s.guard.agents().clone();
    s.guard = Guard::new(
        plant.clone(),
        reg,
        Policy::parse(DEFAULT_POLICY, "default", &plant).unwrap(),
    )
    .with_limits(guard::GuardLimits {
        agent_actions_per_hour: 3,
        agent_asset_actions_per_hour: 2,
        ..Default::default()
    });
    let mut temp = 75.0;
    for k in 0..2 {
        temp -= 0.5;
        let t = Action::SetSetpoint {
            setpoint: "past.temp_sp".into(),
            value: temp,
        };
        assert!(matches!(
            s.propose("optimiser", t, vec![], &[], T0 + k * 60_000),
            Decision::Execute(_)
        ));
    }
    let t = Action::SetSetpoint {
        setpoint: "past.temp_sp".into(),
        value: temp - 0.5,
    };
    let d = s.propose("optimiser", t, vec![], &[], T0 + 3 * 60_000);
    match &d {
        Decision::Denied { reason, detail } => {
            assert_eq!(*reason, DenyReason::RateLimit);
            assert!(detail.contains("actions on past"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.propose("optimiser", speed(1550.0), vec![], &[], T0 + 4 * 60_000),
        Decision::Execute(_)
    ));
    let d = s.propose("optimiser", speed(1500.0), vec![], &[], T0 + 6 * 60_000);
    match &d {
        Decision::Denied { reason, detail } => {
            assert_eq!(*reason, DenyReason::RateLimit);
            assert!(
                detail.contains("3 actions accepted in the last hour"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A small reference guard for setpoint changes, written straight from the plant file's
/// rules with no state beyond the list of executed changes: whether the change is allowed.
struct Reference {
    plant: Plant,
    /// (time, setpoint, value) of every executed change, oldest first.
    executed: Vec<(i64, String, f64)>,
    /// (time, asset) of every accepted proposal.
    accepted: Vec<(i64, String)>,
    limits: guard::GuardLimits,
}

impl Reference {
    fn current(&self, setpoint: &str) -> f64 {
        self.executed
            .iter()
            .rev()
            .find(|(_, s, _)| s == setpoint)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| self.plant.setpoint(setpoint).unwrap().initial)
    }

    /// Whether `setpoint := value` at `now` (tank level `level`) is allowed.
    fn allows(&self, setpoint: &str, value: f64, now: i64, level: f64) -> bool {
        let sp = self.plant.setpoint(setpoint).unwrap();
        let in_last = |ms: i64| {
            self.executed
                .iter()
                .filter(move |(t, s, _)| s == setpoint && now - t < ms)
        };
        // Absolute change of every executed change of this setpoint.
        let mut prev = sp.initial;
        let mut deltas = Vec::new();
        for (t, s, v) in &self.executed {
            if s == setpoint {
                deltas.push((*t, (v - prev).abs()));
                prev = *v;
            }
        }
        let step = (value - self.current(setpoint)).abs();
        let slew_ok = match (sp.max_slew_per_min, deltas.last()) {
            (Some(slew), Some((t, _))) => step <= slew * (now - t) as f64 / 60_000.0 + 1e-9,
            _ => true,
        };
        let budget_ok = sp.budget.is_none_or(|b| {
            let window = (b.window_min * 60_000.0) as i64;
            let used: f64 = deltas
                .iter()
                .filter(|(t, _)| now - t < window)
                .map(|(_, d)| d)
                .sum();
            used + step <= b.max_total + 1e-9
        });
        let pre_ok = sp
            .preconditions
            .iter()
            .all(|c| c.min.is_none_or(|m| level >= m) && c.max.is_none_or(|m| level <= m));
        let agent_recent: Vec<&(i64, String)> = self
            .accepted
            .iter()
            .filter(|(t, _)| now - t < 3_600_000)
            .collect();
        let rate_ok = (agent_recent.len() as u32) < self.limits.agent_actions_per_hour
            && (agent_recent.iter().filter(|(_, a)| *a == sp.asset).count() as u32)
                < self.limits.agent_asset_actions_per_hour;
        value >= sp.min
            && value <= sp.max
            && step <= sp.max_step + 1e-9
            && (in_last(3_600_000).count() as u32) < sp.max_changes_per_hour
            && slew_ok
            && budget_ok
            && pre_ok
            && rate_ok
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Differential: on random proposals (values, timing, tank level), the guard executes
    /// a setpoint change exactly when the reference guard allows it; and every executed
    /// command lies inside its envelope, step, rate, slew, budget and preconditions.
    #[test]
    fn the_guard_agrees_with_a_reference_on_random_proposals(
        steps in proptest::collection::vec(
            (any::<bool>(), -150.0f64..150.0, 0i64..240_000, prop_oneof![9 => Just(1.6f64), 1 => Just(0.2f64)]),
            1..80,
        )
    ) {
        let mut s = setup();
        let plant = Plant::reference();
        let mut reference = Reference {
            plant: plant.clone(),
            executed: vec![],
            accepted: vec![],
            limits: s.guard.limits(),
        };
        let mut now = T0;
        for (pump, delta, dt, level) in steps {
            now += dt;
            s.token = s.guard.agents().issue_token("optimiser", format!("{:064}", s.nonce + 1_000_000), now).unwrap().value;
            let (setpoint, scale) = if pump { ("pump.speed_sp", 1.0) } else { ("past.temp_sp", 0.01) };
            let value = reference.current(setpoint) + delta * scale;
            let expected = reference.allows(setpoint, value, now, level);
            let mut trust = normal();
            trust.values.insert("tank.level".into(), level);
            let action = Action::SetSetpoint { setpoint: setpoint.into(), value };
            let d = s.propose_with("optimiser", action, vec![], &[], &[], &trust, now);
            let executed = matches!(d, Decision::Execute(_));
            prop_assert_eq!(executed, expected, "{} := {} at +{} ms, level {}: {:?}", setpoint, value, now - T0, level, d);
            if executed {
                let asset = plant.setpoint(setpoint).unwrap().asset.clone();
                reference.executed.push((now, setpoint.to_string(), value));
                reference.accepted.push((now, asset));
            }
        }
    }
}

#[test]
fn token_requests_prove_the_key_and_rotate_without_a_gap() {
    use guard::{Scope, sign_token_request};
    let mut reg = AgentRegistry::default();
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let scope = Scope {
        kinds: vec!["maintenance".into()],
        assets: vec!["pump".into()],
    };
    reg.register_scoped("scheduler", key.verifying_key(), scope.clone(), false);
    let t1 = reg
        .issue_for_request(
            &sign_token_request("scheduler", T0, "n1", &key),
            "1".repeat(64),
            T0,
        )
        .unwrap();
    assert_eq!(t1.scope.as_ref(), Some(&scope));
    // The same request again is a replay; a request signed by another key is refused.
    let again = reg.issue_for_request(
        &sign_token_request("scheduler", T0, "n1", &key),
        "2".repeat(64),
        T0,
    );
    assert!(
        matches!(again, Err(guard::IdentityError::Replay { .. })),
        "{again:?}"
    );
    let other = SigningKey::from_bytes(&[8u8; 32]);
    let forged = reg.issue_for_request(
        &sign_token_request("scheduler", T0, "n2", &other),
        "3".repeat(64),
        T0,
    );
    assert!(
        matches!(forged, Err(guard::IdentityError::TokenWithoutKey { .. })),
        "{forged:?}"
    );
    // A stale request is refused.
    let stale = reg.issue_for_request(
        &sign_token_request("scheduler", T0 - 600_000, "n3", &key),
        "4".repeat(64),
        T0,
    );
    assert!(
        matches!(stale, Err(guard::IdentityError::Stale { .. })),
        "{stale:?}"
    );
    // Rotation: a second token before the first expires; both are live, and a fifth
    // live token is refused.
    let t2 = reg
        .issue_for_request(
            &sign_token_request("scheduler", T0 + 60_000, "n4", &key),
            "5".repeat(64),
            T0 + 60_000,
        )
        .unwrap();
    assert!(t2.expires_ms > t1.expires_ms);
    for (v, n) in [("a", "n5"), ("b", "n6")] {
        reg.issue_for_request(
            &sign_token_request("scheduler", T0, n, &key),
            v.repeat(64),
            T0,
        )
        .unwrap();
    }
    let fifth = reg.issue_for_request(
        &sign_token_request("scheduler", T0, "n7", &key),
        "7".repeat(64),
        T0,
    );
    assert!(
        matches!(fifth, Err(guard::IdentityError::TooManyTokens { .. })),
        "{fifth:?}"
    );
    // A proposal with the first token is accepted until it expires, then refused.
    let p = |nonce: &str, t: i64| Proposal {
        agent: "scheduler".into(),
        action: Action::Maintenance {
            asset: "pump".into(),
        },
        reason: "r".into(),
        evidence: vec![],
        inputs: vec![],
        created_ms: t,
        nonce: nonce.into(),
    };
    assert!(
        reg.authenticate(&sign_proposal(&p("p1", T0), &t1.value, &key), T0)
            .is_ok()
    );
    let late = t1.expires_ms + 1;
    let expired = reg.authenticate(&sign_proposal(&p("p2", late), &t1.value, &key), late);
    assert!(
        matches!(expired, Err(guard::IdentityError::BadToken { .. })),
        "{expired:?}"
    );
    // Revocation: every token stops at once.
    reg.revoke("scheduler");
    let revoked = reg.authenticate(&sign_proposal(&p("p3", T0), &t2.value, &key), T0);
    assert!(
        matches!(revoked, Err(guard::IdentityError::Revoked { .. })),
        "{revoked:?}"
    );
}

#[test]
fn breakers_put_agents_in_advisory_mode_until_an_approver_resets_them() {
    let mut s = setup();
    let plant = Arc::new(Plant::reference());
    let reg = s.guard.agents().clone();
    s.guard = Guard::new(
        plant.clone(),
        reg,
        Policy::parse(DEFAULT_POLICY, "default", &plant).unwrap(),
    )
    .with_breakers(guard::BreakerLimits {
        integrity_failures_per_hour: 5,
        ..Default::default()
    });
    assert!(matches!(
        s.propose("optimiser", speed(1550.0), vec![], &[], T0),
        Decision::Execute(_)
    ));
    // Integrity failures past the limit trip the breakers.
    s.guard.note_integrity_failures(T0 + 1000, 6);
    let tripped = s.guard.advisory().unwrap().why.clone();
    assert!(tripped.contains("6 integrity failures"), "{tripped}");
    assert_eq!(s.guard.take_breaker_events().len(), 1);
    // An automatic action is recorded, not executed ...
    let d = s.propose("optimiser", speed(1500.0), vec![], &[], T0 + 120_000);
    match &d {
        Decision::Denied { reason, detail } => {
            assert_eq!(*reason, DenyReason::Advisory);
            assert!(detail.contains("integrity failures"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.guard.commanded("pump.speed_sp"), Some(1550.0));
    // ... and a corroborated stop goes to a human instead of running by itself.
    let a = detection(1, &["pump.vibration"], true);
    let b = detection(2, &["pump.bearing_temp"], true);
    let d = s.propose(
        "maintenance",
        Action::StopLine,
        vec![1, 2],
        &[&a, &b],
        T0 + 130_000,
    );
    assert!(matches!(d, Decision::Pending { .. }), "{d:?}");
    assert!(!s.guard.line_stopped());
    // An approver resets; agents act again (the counts start afresh).
    let msg = s
        .guard
        .reset_breakers(&approver("ana"), &now(), T0 + 200_000)
        .unwrap();
    assert!(msg.contains("reset by ana"), "{msg}");
    assert!(s.guard.advisory().is_none());
    assert!(
        s.guard
            .reset_breakers(&approver("ana"), &now(), T0 + 200_000)
            .is_err(),
        "nothing to reset"
    );
    assert!(matches!(
        s.propose("optimiser", speed(1500.0), vec![], &[], T0 + 240_000),
        Decision::Execute(_)
    ));
    assert_eq!(s.guard.breaker_trips(), 1);

    // Alarm density, actuation rate and model disagreement trip them too.
    for (limits, feed) in [
        (
            guard::BreakerLimits {
                alarms_per_hour: 3,
                ..Default::default()
            },
            (4, false),
        ),
        (
            guard::BreakerLimits {
                model_disagreements_per_hour: 1,
                ..Default::default()
            },
            (2, true),
        ),
    ] {
        let mut g = Guard::new(
            plant.clone(),
            AgentRegistry::default(),
            Policy::parse(DEFAULT_POLICY, "default", &plant).unwrap(),
        )
        .with_breakers(limits);
        for k in 0..feed.0 {
            g.note_alarm(T0 + k, feed.1);
        }
        assert!(g.advisory().is_some(), "{limits:?}");
    }
    let mut s = setup();
    let reg = s.guard.agents().clone();
    s.guard = Guard::new(
        plant.clone(),
        reg,
        Policy::parse(DEFAULT_POLICY, "default", &plant).unwrap(),
    )
    .with_breakers(guard::BreakerLimits {
        actions_per_10_min: 1,
        ..Default::default()
    });
    assert!(matches!(
        s.propose("optimiser", speed(1550.0), vec![], &[], T0),
        Decision::Execute(_)
    ));
    assert!(matches!(
        s.propose("optimiser", speed(1500.0), vec![], &[], T0 + 60_000),
        Decision::Execute(_)
    ));
    let why = s.guard.advisory().unwrap().why.clone();
    assert!(why.contains("agent commands executed"), "{why}");
}
