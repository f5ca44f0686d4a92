//! Agents on the reference plant: what they propose, and that every proposal passes the
//! guard's identity check (they sign with their own key and token).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::sync::Arc;

use agents::{Agent, Identity, Maintenance, Optimiser};
use detect::{Detection, Detectors};
use ed25519_dalek::SigningKey;
use guard::{Action, AgentRegistry, DEFAULT_POLICY, Decision, Guard, Policy};
use ingest::{Provenance, Sample};
use plant_model::Plant;
use plant_sim::{DEFAULT_START_MS, Fault, Sim};
use twin::{CusumConfig, DEFAULT_HISTORY, Twin};

struct World {
    sim: Sim,
    twin: Twin,
    det: Detectors,
    plant: Arc<Plant>,
    prov: Arc<Provenance>,
}

impl World {
    fn new(seed: u64, faults: &[&str]) -> World {
        World::with_conditions(seed, faults, plant_sim::Conditions::default())
    }

    fn with_conditions(seed: u64, faults: &[&str], conditions: plant_sim::Conditions) -> World {
        let plant = Arc::new(Plant::reference());
        let mut sim = Sim::with_conditions(&plant, seed, DEFAULT_START_MS, conditions).unwrap();
        for f in faults {
            sim.add_fault(Fault::parse(f).unwrap());
        }
        World {
            twin: Twin::new(plant.clone(), DEFAULT_HISTORY, CusumConfig::default()),
            det: Detectors::new(plant.clone()),
            sim,
            plant,
            prov: Arc::new(Provenance::verified_for_test("gw")),
        }
    }

    /// Advances a minute; returns the time.
    fn minute(&mut self) -> i64 {
        let mut t = 0;
        for _ in 0..60 {
            let tick = self.sim.step();
            t = tick.t_ms;
            for (i, s) in self.plant.signals.iter().enumerate() {
                let sample = Sample {
                    signal: s.id.as_str().into(),
                    t_ms: tick.t_ms,
                    value: tick.values[i],
                    provenance: self.prov.clone(),
                };
                self.twin.update(&sample);
                self.det.observe(&sample);
            }
        }
        t
    }
}

fn token(reg: &mut AgentRegistry, id: &mut Identity, now: i64, n: u64) {
    id.set_token(reg.issue_token(&id.name, format!("{n:064}"), now).unwrap());
}

#[test]
fn maintenance_proposes_maintenance_and_derate_hours_before_failure() {
    let mut w = World::new(3, &["wear:pump@0=8"]);
    let key = SigningKey::from_bytes(&[5u8; 32]);
    let mut agent = Maintenance::new(Identity::new("maintenance", key.clone()));
    let mut reg = AgentRegistry::default();
    reg.register("maintenance", key.verifying_key());
    let mut maintenance_at = None;
    let mut derate_at = None;
    let mut failed_at = None;
    for minute in 0..(16 * 60) {
        let now = w.minute();
        if agent.identity().needs_token(now, 300_000) {
            token(&mut reg, agent.identity(), now, minute);
        }
        let active: Vec<Detection> = w.det.active().cloned().collect();
        let refs: Vec<&Detection> = active.iter().collect();
        for sp in agent.observe(&w.twin, &refs, now) {
            // Every proposal carries a valid proof of the agent's identity.
            let p = reg.authenticate(&sp, now).unwrap();
            match p.action {
                Action::Maintenance { .. } => {
                    maintenance_at.get_or_insert(minute);
                }
                Action::SetSetpoint {
                    ref setpoint,
                    value,
                } => {
                    assert_eq!(setpoint, "pump.speed_sp");
                    assert!(value >= 1300.0);
                    derate_at.get_or_insert(minute);
                    w.sim
                        .apply(&plant_model::PlantCommand::SetSetpoint {
                            setpoint: setpoint.clone(),
                            value,
                        })
                        .unwrap();
                }
                Action::StopLine => {}
                Action::TakeOrder { .. } => panic!("the maintenance agent moved an order"),
            }
        }
        if w.sim.truth().pump_failed {
            failed_at = Some(minute);
            break;
        }
    }
    let failed_at = failed_at.unwrap_or(16 * 60);
    let m = maintenance_at.expect("no maintenance proposed");
    assert!(
        failed_at - m >= 4 * 60,
        "maintenance proposed only {} min before failure",
        failed_at - m
    );
    assert!(derate_at.is_some(), "no derate proposed");
}

#[test]
fn optimiser_cuts_recirculation_and_temperature_within_quality_limits() {
    let mut o = Optimised::new(World::new(1, &[]));
    let e0 = o.w.sim.truth();
    o.run(6);
    let twin = &o.w.twin;
    let last = twin.value("filler.recirc_flow").unwrap();
    assert!(last < 1.2, "recirculation still {last}");
    assert!(twin.value("filler.reject_rate").unwrap() < 2.0);
    assert!(twin.value("past.product_temp").unwrap() > 72.5);
    let temp_sp = o.guard.commanded("past.temp_sp").unwrap();
    assert!((73.0..75.0).contains(&temp_sp), "{temp_sp}");
    let e1 = o.w.sim.truth();
    assert!(e1.good_bottles > e0.good_bottles);
    assert_eq!(e1.quality_violation_s, 0);
    assert!(o.denied.is_empty(), "{:?}", o.denied);
}

#[test]
fn optimiser_stays_quiet_while_detections_are_open() {
    let mut w = World::new(1, &[]);
    let mut agent = Optimiser::new(
        Identity::new("optimiser", SigningKey::from_bytes(&[6u8; 32])),
        w.plant.clone(),
    );
    let now = (0..30).map(|_| w.minute()).last().unwrap();
    let d = Detection {
        id: 1,
        kind: detect::DetectionKind::Stuck,
        raised_ms: now,
        value: 0.0,
        limit: 0.0,
        message: String::new(),
        evidence: detect::Evidence {
            signals: vec!["tank.level".into()],
            relation: None,
            devices: vec![],
            trusted: true,
        },
        class: detect::EpisodeClass::SensorFault,
    };
    assert!(agent.observe(&w.twin, &[&d], now).is_empty());
    assert!(!agent.observe(&w.twin, &[], now + 16 * 60_000).is_empty());
}

/// The optimiser on a plant, its proposals through the guard, executed ones applied.
struct Optimised {
    w: World,
    agent: Optimiser,
    guard: Guard,
    minutes: u64,
    /// What the guard refused, and why.
    denied: Vec<String>,
}

impl Optimised {
    fn new(w: World) -> Optimised {
        let key = SigningKey::from_bytes(&[6u8; 32]);
        let plant = w.plant.clone();
        let mut reg = AgentRegistry::default();
        reg.register("optimiser", key.verifying_key());
        Optimised {
            agent: Optimiser::new(Identity::new("optimiser", key), plant.clone()),
            guard: Guard::new(
                plant.clone(),
                reg,
                Policy::parse(DEFAULT_POLICY, "default", &plant).unwrap(),
            ),
            w,
            minutes: 0,
            denied: Vec::new(),
        }
    }

    fn run(&mut self, hours: u64) {
        for _ in 0..(hours * 60) {
            let now = self.w.minute();
            self.minutes += 1;
            if self.agent.identity().needs_token(now, 300_000) {
                let t = self
                    .guard
                    .agents()
                    .issue_token("optimiser", format!("{:064}", self.minutes), now)
                    .unwrap();
                self.agent.identity().set_token(t);
            }
            for sp in self.agent.observe(&self.w.twin, &[], now) {
                let mut trust = guard::InputTrust::default();
                for (id, st) in self.w.twin.signals() {
                    if let Some(p) = &st.last {
                        trust.values.insert(id.clone(), p.value);
                    }
                }
                match self.guard.decide(&sp, &[], &trust, now) {
                    (_, Decision::Execute(a), _) => {
                        self.w.sim.apply(&a.command().command).unwrap();
                        if let plant_model::PlantCommand::SetSetpoint { setpoint, value } =
                            &a.command().command
                        {
                            self.agent.set_known_setpoint(setpoint, *value);
                        }
                    }
                    (_, other, _) => self.denied.push(format!("{other:?}")),
                }
            }
        }
    }
}

#[test]
fn the_lookahead_follows_the_production_plan_without_starving_the_filler() {
    // 400 bottles a minute for three hours, then 600: the optimiser first slows the pump
    // to what 400 need, then must speed it up again, seeing only a starved filler.
    let conditions = plant_sim::Conditions {
        plan: vec![
            plant_sim::PlanStep {
                at_s: 0,
                filler_speed: 400.0,
            },
            plant_sim::PlanStep {
                at_s: 3 * 3600,
                filler_speed: 600.0,
            },
        ],
        ..plant_sim::Conditions::default()
    };
    let mut o = Optimised::new(World::with_conditions(2, &[], conditions));
    o.run(3);
    let slowed = o.guard.commanded("pump.speed_sp").unwrap();
    assert!(
        slowed < 1300.0,
        "pump still at {slowed} rpm for 400 bottles a minute"
    );
    o.run(3);
    let bpm = o.w.twin.value("filler.bpm").unwrap();
    assert!(bpm > 590.0, "the filler is starved: {bpm} bottles a minute");
    assert_eq!(o.w.sim.truth().quality_violation_s, 0);
    // It knows the envelope's rates, slews and budgets: the guard refused nothing.
    assert!(o.denied.is_empty(), "{:?}", o.denied);
    let sped = o.guard.commanded("pump.speed_sp").unwrap();
    assert!(sped > slowed + 200.0, "{slowed} -> {sped}");
    let look = o.agent.last.as_ref().unwrap();
    assert!(look.candidates.len() >= 9, "{}", look.candidates.len());
    assert!(look.chosen.is_some());
}

#[test]
fn the_optimiser_estimates_the_fixed_setpoint_baseline_it_is_measured_against() {
    // The optimiser's plant, and the same seed left at its initial setpoints.
    let mut o = Optimised::new(World::new(3, &[]));
    let mut fixed = World::new(3, &[]);
    let mut truth = Vec::new();
    for _ in 0..(6 * 60) {
        fixed.minute();
        truth.push(fixed.sim.truth());
    }
    o.run(6);
    assert!(o.denied.is_empty(), "{:?}", o.denied);
    let kpi = *o.agent.kpis.back().unwrap();
    // What the fixed plant used over the same last ten minutes.
    let (a, b) = (truth[truth.len() - 11], truth[truth.len() - 1]);
    let real_fixed = (b.energy_kwh - a.energy_kwh) * 1000.0 / (b.good_bottles - a.good_bottles);
    let estimated = kpi.fixed_setpoints_wh.unwrap();
    assert!(
        (estimated - real_fixed).abs() / real_fixed < 0.03,
        "fixed setpoints: estimated {estimated} Wh per good bottle, the plant used {real_fixed}"
    );
    let measured = kpi.measured_wh.unwrap();
    assert!(
        measured < 0.9 * real_fixed,
        "the optimised plant uses {measured} Wh per good bottle, fixed {real_fixed}"
    );
    assert!(o.agent.kpis.len() >= 30, "{}", o.agent.kpis.len());
}
