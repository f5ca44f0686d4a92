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
use guard::{
    Action, AgentRegistry, DEFAULT_POLICY, Decision, Guard, Policy, Proposal, SignedProposal,
};
use ingest::{Provenance, Sample, Trust};
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
        let plant = Arc::new(Plant::reference());
        let mut sim = Sim::new(&plant, seed, DEFAULT_START_MS).unwrap();
        for f in faults {
            sim.add_fault(Fault::parse(f).unwrap());
        }
        World {
            twin: Twin::new(plant.clone(), DEFAULT_HISTORY, CusumConfig::default()),
            det: Detectors::new(plant.clone()),
            sim,
            plant,
            prov: Arc::new(Provenance {
                device: "gw".into(),
                channel: "test".into(),
                transport: "test".into(),
                source: None,
                signed: true,
                seal: None,
                seq: 0,
                received_ms: 0,
                trust: Trust::Verified,
            }),
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
                    signal: s.id.clone(),
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

fn proposal(sp: &SignedProposal) -> Proposal {
    serde_json::from_str(&sp.body).unwrap()
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
    let mut w = World::new(1, &[]);
    let key = SigningKey::from_bytes(&[6u8; 32]);
    let mut agent = Optimiser::new(Identity::new("optimiser", key.clone()));
    let plant = w.plant.clone();
    let mut reg = AgentRegistry::default();
    reg.register("optimiser", key.verifying_key());
    let mut guard = Guard::new(
        plant.clone(),
        reg,
        Policy::parse(DEFAULT_POLICY, "default", &plant).unwrap(),
    );
    let e0 = w.sim.truth();
    for minute in 0..(6 * 60) {
        let now = w.minute();
        if agent.identity().needs_token(now, 300_000) {
            let t = guard
                .agents()
                .issue_token("optimiser", format!("{minute:064}"), now)
                .unwrap();
            agent.identity().set_token(t);
        }
        for sp in agent.observe(&w.twin, &[], now) {
            let p = proposal(&sp);
            if let Action::SetSetpoint { setpoint, value } = &p.action
                && setpoint == "past.temp_sp"
            {
                assert!(*value >= 73.0, "{value}");
            }
            let mut trust = guard::InputTrust::default();
            for (id, st) in w.twin.signals() {
                if let Some(p) = &st.last {
                    trust.values.insert(id.clone(), p.value);
                }
            }
            if let (_, Decision::Execute(a), _) = guard.decide(&sp, &[], &trust, now) {
                w.sim.apply(&a.command().command).unwrap();
                if let plant_model::PlantCommand::SetSetpoint { setpoint, value } =
                    &a.command().command
                    && setpoint == "past.temp_sp"
                {
                    agent.set_known_temp_sp(*value);
                }
            }
        }
    }
    let last = w.twin.value("filler.recirc_flow").unwrap();
    assert!(last < 1.2, "recirculation still {last}");
    assert!(w.twin.value("filler.reject_rate").unwrap() < 2.0);
    assert!(w.twin.value("past.product_temp").unwrap() > 72.5);
    assert!(guard.commanded("past.temp_sp").unwrap() < 75.0);
    let e1 = w.sim.truth();
    assert!(e1.good_bottles > e0.good_bottles);
}

#[test]
fn optimiser_stays_quiet_while_detections_are_open() {
    let mut w = World::new(1, &[]);
    let mut agent = Optimiser::new(Identity::new(
        "optimiser",
        SigningKey::from_bytes(&[6u8; 32]),
    ));
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
