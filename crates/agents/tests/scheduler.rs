//! The scheduler: which orders it moves and where, when it proposes maintenance, and what
//! each line's guard makes of its proposals.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::sync::Arc;

use agents::{LineStatus, QueuedJob, SCHEDULER, Scheduler};
use ed25519_dalek::SigningKey;
use guard::{
    Action, AgentRegistry, DEFAULT_POLICY, Decision, DenyReason, Guard, InputTrust, Policy,
    Proposal, SITE_POLICY, SignedProposal,
};
use plant_model::{Plant, PlantCommand};

const T0: i64 = 1_767_225_600_000;
const H: i64 = 3_600_000;

fn line(id: &str, running: bool, vibration: Option<f64>) -> LineStatus {
    LineStatus {
        id: id.into(),
        running,
        vibration,
        rate_bph: 30_000.0,
    }
}

fn job(line: &str, order: &str, remaining: f64, due_h: f64, started: bool) -> QueuedJob {
    QueuedJob {
        line: line.into(),
        order: order.into(),
        remaining,
        due_ms: T0 + (due_h * H as f64) as i64,
        started,
    }
}

/// The line deciding takes `order` from line `from`.
fn take(order: &str, from: &str) -> Action {
    Action::TakeOrder {
        order: order.into(),
        from_line: from.into(),
    }
}

fn body(sp: &SignedProposal) -> Proposal {
    serde_json::from_str(&sp.body).unwrap()
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

/// The guard of line `id` with the scheduler (and the optimiser, same key) registered;
/// the scheduler's identity for that line gets a token from it.
fn guard_for(id: &str, s: &mut Scheduler) -> Guard {
    let mut p = Plant::reference();
    p.plant.id = id.into();
    let p = Arc::new(p);
    let mut reg = AgentRegistry::default();
    reg.register(SCHEDULER, key().verifying_key());
    reg.register("optimiser", key().verifying_key());
    let token = reg
        .issue_token(SCHEDULER, format!("{id:0>64}"), T0)
        .unwrap();
    s.identity(id).unwrap().set_token(token);
    let policy = Policy::parse(&format!("{DEFAULT_POLICY}\n{SITE_POLICY}"), "site", &p).unwrap();
    Guard::new(p, reg, policy)
}

#[test]
fn a_stopped_line_sends_its_orders_where_they_fill_sooner_and_started_ones_too() {
    let mut s = Scheduler::new(&key(), &["line1", "line2"]);
    let lines = [
        line("line1", true, Some(2.0)),
        line("line2", true, Some(2.0)),
    ];
    let jobs = [
        job("line1", "a", 20_000.0, 3.0, true),
        job("line1", "b", 30_000.0, 4.0, false),
        job("line1", "c", 30_000.0, 20.0, false),
        job("line2", "d", 15_000.0, 2.0, true),
    ];
    // Both running: nothing to move, nobody late.
    assert!(s.observe(&lines, &jobs, T0).is_empty());
    // line1 stops (six hours expected): its orders go to line2 in due order, the started
    // one included, as long as each fills sooner there.
    let down = [line("line1", false, None), line("line2", true, Some(2.0))];
    let out = s.observe(&down, &jobs, T0 + 60_000);
    let moved: Vec<(String, String)> = out
        .iter()
        .map(|(l, sp)| match body(sp).action {
            Action::TakeOrder { order, from_line } => {
                assert_eq!(from_line, "line1");
                (l.clone(), order)
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let orders: Vec<&str> = moved.iter().map(|(_, o)| o.as_str()).collect();
    assert!(moved.iter().all(|(l, _)| l == "line2"), "{moved:?}");
    assert_eq!(&orders[..2], ["a", "b"], "{moved:?}");
    // "c" is due in 20 h: on line2 behind a, b and d it still fills sooner than after six
    // hours of repair, so it moves too.
    assert_eq!(orders.len(), 3, "{moved:?}");
    let p = body(&out[0].1);
    assert_eq!(p.agent, SCHEDULER);
    assert!(p.reason.contains("line1 is down"), "{}", p.reason);
    assert_eq!(p.inputs, ["pump.vibration", "pump.speed", "filler.bpm"]);
    // Nothing moves onto a line that is down, and the outlook says why.
    let both_down = [line("line1", false, None), line("line2", false, None)];
    assert!(s.observe(&both_down, &jobs, T0 + 2 * 60_000).is_empty());
    assert!(
        s.outlook
            .iter()
            .all(|o| !o.running && o.unavailable_h > 0.0)
    );
}

#[test]
fn a_rising_vibration_trend_brings_one_maintenance_window_and_moves_orders_off_the_line() {
    let mut s = Scheduler::new(&key(), &["line1", "line2"]);
    s.risk_horizon_h = 10.0;
    // Due late enough that neither line is late: only the risk moves anything.
    let mut jobs = vec![
        job("line1", "a", 25_000.0, 8.0, true),
        job("line1", "b", 40_000.0, 9.0, false),
        job("line2", "c", 10_000.0, 9.0, true),
    ];
    let mut maintenance = Vec::new();
    let mut moves = Vec::new();
    // Ten-minute means: line1 rises 0.3 mm/s an hour from 3.0 (about 13 h to 7.1 at
    // first, under 10 h after an hour or so); line2 steady.
    for k in 0..24 {
        let t = T0 + k * 10 * 60_000;
        let v1 = 3.0 + 0.3 * (k as f64 / 6.0);
        let lines = [
            line("line1", true, Some(v1)),
            line("line2", true, Some(2.0)),
        ];
        for (l, sp) in s.observe(&lines, &jobs, t) {
            match body(&sp).action {
                Action::Maintenance { asset } => maintenance.push((k, l, asset)),
                Action::TakeOrder { order, .. } => {
                    // The site applies it.
                    for j in jobs.iter_mut().filter(|j| j.order == order) {
                        j.line = l.clone();
                        j.started = false;
                    }
                    moves.push((k, l, order));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(maintenance.len(), 1, "{maintenance:?}");
    let (k, l, asset) = &maintenance[0];
    assert_eq!((l.as_str(), asset.as_str()), ("line1", "pump"));
    // Not while more than ten hours remain (3.0 + 0.05 k mm/s reaches 7.1 in (82 - k) / 6
    // hours: under ten from k = 23).
    assert_eq!(*k, 23, "{maintenance:?}");
    // b (not started) moves to line2 when line1 is due for its bearing change; a, started
    // on a running line, stays.
    assert_eq!(moves, [(23, "line2".to_string(), "b".to_string())]);

    // With maintenance windows off, no maintenance; with rerouting off, no moves.
    for (maintain, reroute) in [(false, true), (true, false)] {
        let mut s = Scheduler::new(&key(), &["line1", "line2"]);
        s.risk_horizon_h = 10.0;
        s.maintain = maintain;
        s.reroute = reroute;
        let mut kinds = Vec::new();
        for k in 0..24 {
            let v1 = 3.0 + 0.3 * (k as f64 / 6.0);
            let lines = [line("line1", true, Some(v1)), line("line2", false, None)];
            for (_, sp) in s.observe(&lines, &jobs, T0 + k * 10 * 60_000) {
                kinds.push(body(&sp).action.kind());
            }
        }
        assert_eq!(kinds.contains(&"maintenance"), maintain, "{kinds:?}");
        assert_eq!(kinds.contains(&"take_order"), reroute, "{kinds:?}");
    }
}

#[test]
fn each_lines_guard_executes_moves_onto_its_line_and_refuses_what_the_policy_does_not_allow() {
    let mut s = Scheduler::new(&key(), &["line1", "line2"]);
    let mut g2 = guard_for("line2", &mut s);
    let mut g1 = guard_for("line1", &mut s);
    let jobs = [job("line1", "a", 20_000.0, 3.0, false)];
    let down = [line("line1", false, None), line("line2", true, Some(2.0))];
    let out = s.observe(&down, &jobs, T0 + 60_000);
    assert_eq!(out.len(), 1);
    let (l, sp) = &out[0];
    assert_eq!(l, "line2");
    let trust = InputTrust::default();
    let (_, d, record) = g2.decide(sp, &[], &trust, T0 + 60_000);
    let Decision::Execute(a) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        a.command().command,
        PlantCommand::TakeOrder {
            order: "a".into(),
            from_line: "line1".into()
        }
    );
    assert_eq!(a.command().asset, "line");
    assert!(
        format!("{record:?}").contains("scheduler-orders"),
        "{record:?}"
    );
    // The same signed proposal again: a replay.
    let (_, again, _) = g2.decide(sp, &[], &trust, T0 + 61_000);
    assert!(
        matches!(
            again,
            Decision::Denied {
                reason: DenyReason::Replay,
                ..
            }
        ),
        "{again:?}"
    );
    // The proposal sent to line1's guard: line1 cannot take an order from itself... it
    // carries line2's token, which line1's guard never issued.
    let (_, wrong, _) = g1.decide(sp, &[], &trust, T0 + 60_000);
    assert!(matches!(wrong, Decision::Denied { .. }), "{wrong:?}");

    // Proposals signed by hand: an order "from" the deciding line itself, a malformed
    // order name, and another agent trying to move orders.
    let propose = |g1: &mut Guard, agent: &str, action: Action, n: u32| {
        let token = g1
            .agents()
            .issue_token(agent, format!("{n:0>64}"), T0)
            .unwrap();
        let p = Proposal {
            agent: agent.into(),
            action,
            reason: "test".into(),
            evidence: vec![],
            inputs: vec![],
            created_ms: T0,
            nonce: format!("n{n}"),
        };
        let sp = guard::sign_proposal(&p, &token.value, &key());
        g1.decide(&sp, &[], &trust, T0).1
    };
    let own = propose(&mut g1, SCHEDULER, take("b", "line1"), 1);
    assert!(
        matches!(&own, Decision::Denied { reason: DenyReason::UnknownTarget, detail } if detail.contains("already on line line1")),
        "{own:?}"
    );
    let malformed = propose(&mut g1, SCHEDULER, take("b; drop", "line2"), 2);
    assert!(
        matches!(&malformed, Decision::Denied { reason: DenyReason::UnknownTarget, detail } if detail.contains("1 to 64 letters")),
        "{malformed:?}"
    );
    let optimiser = propose(&mut g1, "optimiser", take("b", "line2"), 3);
    assert!(
        matches!(
            optimiser,
            Decision::Denied {
                reason: DenyReason::Policy,
                ..
            }
        ),
        "{optimiser:?}"
    );
    // Maintenance from the scheduler waits for a human.
    let m = propose(
        &mut g1,
        SCHEDULER,
        Action::Maintenance {
            asset: "pump".into(),
        },
        4,
    );
    assert!(matches!(m, Decision::Pending { .. }), "{m:?}");
    // The default policy alone grants the scheduler nothing.
    g1.set_policy(Policy::parse(DEFAULT_POLICY, "default", &Plant::reference()).unwrap());
    let default_only = propose(&mut g1, SCHEDULER, take("b", "line2"), 6);
    assert!(
        matches!(&default_only, Decision::Denied { reason: DenyReason::Policy, detail } if detail.contains("no policy permits")),
        "{default_only:?}"
    );
    let site = Plant::reference();
    g1.set_policy(
        Policy::parse(&format!("{DEFAULT_POLICY}\n{SITE_POLICY}"), "site", &site).unwrap(),
    );
    // A stopped line takes no orders.
    g1.human_stop("ana", T0);
    let stopped = propose(&mut g1, SCHEDULER, take("b", "line2"), 5);
    assert!(
        matches!(
            stopped,
            Decision::Denied {
                reason: DenyReason::LineStopped,
                ..
            }
        ),
        "{stopped:?}"
    );
}
