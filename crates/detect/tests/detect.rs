//! Twin physics and detectors on the reference plant: quiet in normal operation, and each
//! fault or attack caught by the detector that should catch it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::sync::Arc;

use detect::{DetectionKind, Detectors, EpisodeClass, Event};
use ingest::{Provenance, Sample};
use plant_model::Plant;
use plant_sim::{DEFAULT_START_MS, Fault, Sim};
use twin::{CusumConfig, DEFAULT_HISTORY, Twin};

struct Run {
    /// (second, kind, signals, class when raised)
    raised: Vec<(u64, DetectionKind, String, EpisodeClass)>,
    /// Each episode's latest class, by id, as `Event::Reclassified` revised it.
    latest: std::collections::BTreeMap<u64, (DetectionKind, String, EpisodeClass)>,
    /// The detectors at the end, with their active episodes.
    det: Detectors,
}

impl Run {
    /// The class of the first episode of `kind`, when raised.
    fn raised_class(&self, kind: DetectionKind) -> Option<EpisodeClass> {
        self.raised.iter().find(|d| d.1 == kind).map(|d| d.3)
    }

    /// The class of the active episode of `kind` at the end.
    fn active_class(&self, kind: DetectionKind) -> Option<EpisodeClass> {
        self.det.active().find(|d| d.kind == kind).map(|d| d.class)
    }
}

/// Runs the plant for `hours`, optionally adding `offset(t_s)` to the tank level as a
/// compromised gateway would, and feeds twin and detectors.
fn run(seed: u64, hours: u64, faults: &[&str], level_offset: impl Fn(u64) -> f64) -> Run {
    run_with(seed, hours, faults, level_offset, None)
}

/// [`run`], with frames of device "gw" refused for integrity from second `forged_from`.
fn run_with(
    seed: u64,
    hours: u64,
    faults: &[&str],
    level_offset: impl Fn(u64) -> f64,
    forged_from: Option<u64>,
) -> Run {
    let plant = Arc::new(Plant::reference());
    let mut sim = Sim::new(&plant, seed, DEFAULT_START_MS).unwrap();
    for f in faults {
        sim.add_fault(Fault::parse(f).unwrap());
    }
    let mut twin = Twin::new(plant.clone(), DEFAULT_HISTORY, CusumConfig::default());
    let mut det = Detectors::new(plant.clone());
    let prov = Arc::new(Provenance::verified_for_test("gw"));
    let level_idx = sim.signal_index("tank.level").unwrap();
    let mut raised = Vec::new();
    let mut latest = std::collections::BTreeMap::new();
    let mut note = |t_s: u64, e: Event| match e {
        Event::Raised(d) => {
            let signals = d.evidence.signals.join(",");
            raised.push((t_s, d.kind, signals.clone(), d.class));
            latest.insert(d.id, (d.kind, signals, d.class));
        }
        Event::Reclassified { id, class, .. } => {
            if let Some(l) = latest.get_mut(&id) {
                l.2 = class;
            }
        }
        Event::Cleared { .. } => {}
    };
    for t_s in 1..=(hours * 3600) {
        let mut tick = sim.step();
        if forged_from.is_some_and(|f| t_s >= f && t_s % 60 == 0) {
            for e in det.note_integrity_failure("gw", tick.t_ms) {
                note(t_s, e);
            }
        }
        tick.values[level_idx] += level_offset(t_s);
        for (i, sig) in plant.signals.iter().enumerate() {
            let s = Sample {
                signal: sig.id.as_str().into(),
                t_ms: tick.t_ms,
                value: tick.values[i],
                provenance: prov.clone(),
            };
            twin.update(&s);
            for e in det.observe(&s) {
                note(t_s, e);
            }
        }
        for r in twin.evaluate_relations() {
            for e in det.observe_residual(&r, vec!["gw".into()]) {
                note(t_s, e);
            }
        }
    }
    Run {
        raised,
        latest,
        det,
    }
}

#[test]
fn normal_operation_is_quiet() {
    for seed in [1, 2, 3] {
        let r = run(seed, 6, &[], |_| 0.0);
        assert!(r.raised.is_empty(), "seed {seed}: {:?}", r.raised);
    }
}

#[test]
fn validly_signed_false_level_is_caught_by_physics_alone() {
    // +0.3 m per hour from t = 1 h: slow enough for every plausibility check.
    let start = 3600;
    let r = run(4, 3, &[], |t| {
        if t > start {
            0.3 * (t - start) as f64 / 3600.0
        } else {
            0.0
        }
    });
    let physics: Vec<_> = r
        .raised
        .iter()
        .filter(|d| d.1 == DetectionKind::Physics)
        .collect();
    assert!(!physics.is_empty(), "{:?}", r.raised);
    let delay = physics[0].0 - start;
    assert!(delay < 20 * 60, "detected after {delay} s");
    assert!(physics[0].2.contains("tank.level"));
    assert!(
        !r.raised.iter().any(|d| d.1 == DetectionKind::Rate),
        "a slow ramp must pass the rate check: {:?}",
        r.raised
    );
}

#[test]
fn stuck_sensor_is_flagged_as_stuck() {
    let r = run(5, 2, &["stuck:pump.vibration@1800"], |_| 0.0);
    assert!(
        r.raised
            .iter()
            .any(|d| d.1 == DetectionKind::Stuck && d.2 == "pump.vibration"),
        "{:?}",
        r.raised
    );
}

#[test]
fn spikes_are_flagged_as_rate_violations() {
    let r = run(6, 1, &["spike:pump.discharge_pressure@600=4"], |_| 0.0);
    assert!(
        r.raised
            .iter()
            .any(|d| d.1 == DetectionKind::Rate && d.2 == "pump.discharge_pressure"),
        "{:?}",
        r.raised
    );
}

#[test]
fn biased_level_sensor_breaks_the_mass_balance() {
    // A step bias is a rate violation and a broken balance at once.
    let r = run(7, 2, &["bias:tank.level@3600=0.15"], |_| 0.0);
    assert!(
        r.raised.iter().any(|d| d.1 == DetectionKind::Physics),
        "{:?}",
        r.raised
    );
}

#[test]
fn gaps_are_raised_when_data_stops_and_cleared_when_it_returns() {
    let plant = Arc::new(Plant::reference());
    let mut det = Detectors::new(plant);
    let dev = || Some((0i64, "gw"));
    let at = |t: i64| Some((t, "gw"));
    // Data starts at 0; "b" has never been seen, "a" is current.
    assert!(
        det.check_gaps([("a", dev()), ("b", None)].into_iter(), 0, 30_000)
            .is_empty()
    );
    let ev = det.check_gaps([("a", at(40_000)), ("b", None)].into_iter(), 40_000, 30_000);
    assert_eq!(ev.len(), 1);
    let Event::Raised(d) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(d.kind, DetectionKind::Gap);
    assert_eq!(d.evidence.signals, vec!["b".to_string()]);
    assert!(!d.evidence.trusted);
    assert!(d.message.contains("since data started"), "{}", d.message);
    // "a" falls behind, "b" arrives.
    let ev = det.check_gaps(
        [("a", at(40_000)), ("b", at(80_000))].into_iter(),
        80_000,
        30_000,
    );
    assert!(
        ev.iter().any(|e| matches!(e, Event::Cleared { .. })),
        "{ev:?}"
    );
    // Its message stays true however long the gap lasts.
    assert!(
        ev.iter().any(|e| matches!(e, Event::Raised(d)
            if d.evidence.signals == vec!["a".to_string()]
                && d.message == "no data for a for more than 30 s")),
        "{ev:?}"
    );
}

/// Episodes of different kinds on one signal open and close on their own, each raised once
/// however long it lasts: the level reads the same for minutes (stuck), climbs slowly over
/// its operating limit and stays there (limit high), then comes back.
#[test]
fn episodes_on_one_signal_open_once_and_close_on_their_own() {
    let plant = Arc::new(Plant::reference());
    let mut det = Detectors::new(plant);
    let provenance = Arc::new(Provenance::verified_for_test("gw"));
    let mut raised = Vec::new();
    let mut cleared = 0;
    let mut feed = |det: &mut Detectors, t_s: i64, value: f64| {
        for e in det.observe(&Sample {
            signal: "tank.level".into(),
            t_ms: t_s * 1000,
            value,
            provenance: provenance.clone(),
        }) {
            match e {
                Event::Raised(d) => raised.push((t_s, d.kind)),
                Event::Cleared { .. } => cleared += 1,
                Event::Reclassified { .. } => {}
            }
        }
    };
    // Stuck at 1.6 m for 200 s (its limit: 120 s).
    for t in 0..200 {
        feed(&mut det, t, 1.6);
    }
    // Up at 0.01 m/s (plausible: 0.02) to 2.8 m, over the 2.6 m limit.
    for t in 200..320 {
        feed(&mut det, t, 1.6 + 0.01 * (t - 199) as f64);
    }
    // Held there, moving a millimetre each second.
    for t in 320..400 {
        feed(&mut det, t, 2.8 + 0.001 * (t % 2) as f64);
    }
    assert_eq!(
        det.active().map(|d| d.kind).collect::<Vec<_>>(),
        vec![DetectionKind::LimitHigh]
    );
    // Back down to 1.6 m, and normal.
    for t in 400..520 {
        feed(&mut det, t, 2.8 - 0.01 * (t - 399) as f64);
    }
    for t in 520..600 {
        feed(&mut det, t, 1.6 + 0.001 * (t % 2) as f64);
    }
    let kinds: Vec<DetectionKind> = raised.iter().map(|r| r.1).collect();
    assert_eq!(
        kinds,
        vec![DetectionKind::Stuck, DetectionKind::LimitHigh],
        "{raised:?}"
    );
    assert_eq!(cleared, 2);
    assert_eq!(det.active().count(), 0);
}

#[test]
fn a_lost_source_is_a_gap_until_restored() {
    let mut det = detect::Detectors::new(std::sync::Arc::new(plant_model::Plant::reference()));
    let ev = det.source_lost("plc", vec!["tank.level".into()], 1_000, "BadServerHalted");
    let [detect::Event::Raised(d)] = ev.as_slice() else {
        panic!("{ev:?}");
    };
    assert_eq!(d.kind, detect::DetectionKind::Gap);
    assert!(!d.evidence.trusted);
    assert!(d.message.contains("plc") && d.message.contains("BadServerHalted"));
    assert_eq!(det.active().count(), 1);
    // Raised once, however often it is reported.
    assert!(det.source_lost("plc", vec![], 2_000, "again").is_empty());
    let ev = det.source_restored("plc", 3_000);
    assert!(matches!(
        ev.as_slice(),
        [detect::Event::Cleared { t_ms: 3_000, .. }]
    ));
    assert_eq!(det.active().count(), 0);
}

/// Each episode is classified by what it rests on: a signal's own signature is a sensor
/// fault, a relation broken with no sensor to blame is unknown, and data from a device
/// whose frames fail integrity makes an episode a suspected attack.
#[test]
fn episodes_are_classified_by_their_evidence() {
    let stuck = run(5, 2, &["stuck:pump.vibration@1800"], |_| 0.0);
    assert_eq!(
        stuck.active_class(DetectionKind::Stuck),
        Some(EpisodeClass::SensorFault)
    );
    // A step bias on the level: its jump is the sensor's own signature, so the broken
    // mass balance is blamed on the sensor.
    let biased = run(7, 2, &["bias:tank.level@3600=0.15"], |_| 0.0);
    assert_eq!(
        biased.raised_class(DetectionKind::Physics),
        Some(EpisodeClass::SensorFault),
        "{:?}",
        biased.raised
    );
    // A slow, plausible false level: only physics sees it, nothing says which.
    let ramp = |t: u64| {
        if t > 3600 {
            0.3 * (t - 3600) as f64 / 3600.0
        } else {
            0.0
        }
    };
    let fdi = run(4, 3, &[], ramp);
    assert_eq!(
        fdi.raised_class(DetectionKind::Physics),
        Some(EpisodeClass::Unknown)
    );
    assert_eq!(
        fdi.active_class(DetectionKind::Physics),
        Some(EpisodeClass::Unknown)
    );
    // The same while the device's frames are being forged: a suspected attack.
    let attacked = run_with(4, 3, &[], ramp, Some(3000));
    assert_eq!(
        attacked.raised_class(DetectionKind::Physics),
        Some(EpisodeClass::SuspectedAttack)
    );
}

/// A pump whose bearing fails moves its flow, the filler and the vibration within
/// seconds of each other: each jump is implausibly fast for its signal, but together they
/// are the process, not several sensors failing at once. A spiking sensor jumps alone and
/// stays a sensor fault.
#[test]
fn signals_jumping_together_are_the_process_and_one_jumping_alone_is_its_sensor() {
    let failed = run(8, 4, &["wear:pump@0=40"], |_| 0.0);
    let jumps: Vec<_> = failed
        .latest
        .values()
        .filter(|l| l.0 == DetectionKind::Rate)
        .collect();
    assert!(jumps.len() >= 2, "{:?}", failed.raised);
    assert!(
        jumps.iter().all(|l| l.2 == EpisodeClass::ProcessUpset),
        "{jumps:?}"
    );
    // The first to jump was raised as its sensor's fault, and revised when the next came.
    assert!(
        failed
            .raised
            .iter()
            .any(|d| d.1 == DetectionKind::Rate && d.3 == EpisodeClass::SensorFault),
        "{:?}",
        failed.raised
    );

    let spiking = run(6, 1, &["spike:pump.discharge_pressure@600=4"], |_| 0.0);
    assert!(!spiking.latest.is_empty());
    assert!(
        spiking
            .latest
            .values()
            .all(|l| l.0 == DetectionKind::Rate && l.2 == EpisodeClass::SensorFault),
        "{:?}",
        spiking.latest
    );
}

/// A control loop that cannot hold its setpoint: with its steam valve wide open (the heat
/// exchanger fouled beyond its reach) the process has moved, a process upset; with the
/// valve where it always is and the reading drifting away (the loop sees another value),
/// the data alone cannot say which, and a human judges. The heat balance sees the fouling
/// first, as unknown (a drifting temperature reading moves the balance too); once the loop
/// on its outlet can no longer hold, valve wide open, the two agree: the process.
#[test]
fn a_loop_missing_its_setpoint_is_the_process_only_with_its_actuator_at_the_end() {
    let fouled = run(9, 5, &["fouling:past@3600=0.2"], |_| 0.0);
    let physics = |r: &Run, prefix: &str| -> Vec<(DetectionKind, String, EpisodeClass)> {
        r.latest
            .values()
            .filter(|l| l.0 == DetectionKind::Physics && l.1.starts_with(prefix))
            .cloned()
            .collect()
    };
    let lp = physics(&fouled, "past.product_temp");
    assert!(!lp.is_empty(), "{:?}", fouled.raised);
    assert!(
        lp.iter().all(|l| l.2 == EpisodeClass::ProcessUpset),
        "{lp:?}"
    );
    let balance = physics(&fouled, "past.heat_duty");
    assert!(
        !balance.is_empty() && balance.iter().all(|l| l.2 == EpisodeClass::ProcessUpset),
        "{balance:?}"
    );
    // Below 72 degC the product is diverted: the reject rate's jump follows the
    // temperature crossing its limit, the plant reacting, not the reject sensor's fault.
    assert!(
        fouled
            .latest
            .values()
            .any(|l| l.0 == DetectionKind::Rate && l.1 == "filler.reject_rate"),
        "{:?}",
        fouled.latest
    );
    assert!(
        fouled
            .latest
            .values()
            .all(|l| l.2 != EpisodeClass::SensorFault),
        "{:?}",
        fouled.latest
    );
    let first = fouled
        .raised
        .iter()
        .find(|d| d.1 == DetectionKind::Physics)
        .unwrap();
    assert!(
        first.2.starts_with("past.heat_duty") && first.3 == EpisodeClass::Unknown,
        "{first:?}"
    );
    let drifting = run(9, 3, &["drift:past.product_temp@3600=1"], |_| 0.0);
    let lp: Vec<_> = drifting
        .raised
        .iter()
        .filter(|d| d.1 == DetectionKind::Physics)
        .collect();
    assert!(!lp.is_empty(), "{:?}", drifting.raised);
    assert!(lp.iter().all(|d| d.3 == EpisodeClass::Unknown), "{lp:?}");
    assert!(
        lp.iter().any(|d| d.2.starts_with("past.product_temp")),
        "{lp:?}"
    );
}
