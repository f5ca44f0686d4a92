//! The guard: identity, policy, envelopes, tiers and corroboration.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::sync::Arc;

use detect::{Detection, DetectionKind, Evidence};
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
    let plant = Arc::new(Plant::reference());
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
    let d = s.guard.approve(id, "ana", &normal(), T0 + 1000).unwrap();
    match d {
        Decision::Execute(a) => {
            assert_eq!(a.command().command, PlantCommand::Maintenance);
            assert_eq!(a.command().approved_by, vec!["ana".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        s.guard.approve(id, "ana", &normal(), T0).is_err(),
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
        .approve(id, "ana", &normal(), T0 + 2 * 3_600_000)
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
