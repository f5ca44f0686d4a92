//! The reference plant's physics, determinism, commands and faults.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use plant_model::Plant;
use plant_sim::{DEFAULT_START_MS, Fault, PlantCommand, Sim};

fn sim(seed: u64) -> (Plant, Sim) {
    let plant = Plant::reference();
    let sim = Sim::new(&plant, seed, DEFAULT_START_MS).unwrap();
    (plant, sim)
}

fn value(sim: &Sim, tick: &plant_sim::Tick, id: &str) -> f64 {
    tick.values[sim.signal_index(id).unwrap()]
}

#[test]
fn same_seed_gives_the_same_plant() {
    let (_, mut a) = sim(3);
    let (_, mut b) = sim(3);
    let (_, mut c) = sim(4);
    let mut differs = false;
    for _ in 0..600 {
        let (ta, tb, tc) = (a.step(), b.step(), c.step());
        assert_eq!(ta.values, tb.values);
        differs |= ta.values != tc.values;
    }
    assert!(differs);
}

#[test]
fn steady_state_is_physical() {
    let (plant, mut s) = sim(1);
    let mut last = None;
    for _ in 0..3600 {
        last = Some(s.step());
    }
    let t = last.unwrap();
    for (i, sig) in plant.signals.iter().enumerate() {
        let v = t.values[i];
        assert!(
            v >= sig.range[0] && v <= sig.range[1],
            "{} = {v} outside instrument range",
            sig.id
        );
        assert!(
            v >= sig.alarm[0] && v <= sig.alarm[1],
            "{} = {v} outside alarm limits at steady state",
            sig.id
        );
    }
    assert!((value(&s, &t, "tank.level") - 1.6).abs() < 0.05);
    assert!((value(&s, &t, "past.product_temp") - 75.0).abs() < 0.5);
    let bpm = value(&s, &t, "filler.bpm");
    assert!((bpm - 500.0).abs() < 5.0, "bpm {bpm}");
    assert!(value(&s, &t, "filler.recirc_flow") > 1.0);
}

#[test]
fn level_follows_the_mass_balance() {
    let (_, mut s) = sim(2);
    // Close the inflow by sticking the valve, then check dL = (in + recirc - out)/A dt.
    let t0 = s.step();
    let l0 = value(&s, &t0, "tank.level");
    let mut integral = 0.0;
    let mut last = t0;
    for _ in 0..600 {
        let t = s.step();
        integral += (value(&s, &t, "tank.inflow") + value(&s, &t, "filler.recirc_flow")
            - value(&s, &t, "pump.flow"))
            / 3600.0
            / 2.0;
        last = t;
    }
    let dl = value(&s, &last, "tank.level") - l0;
    assert!(
        (dl - integral).abs() < 0.02,
        "measured {dl}, balance {integral}"
    );
}

#[test]
fn a_day_simulates_in_well_under_real_time_and_the_bearing_wears() {
    let (_, mut s) = sim(5);
    let w0 = s.truth().bearing_wear;
    for _ in 0..86_400 {
        s.step();
    }
    let truth = s.truth();
    assert!(truth.bearing_wear > w0 + 0.05, "{truth:?}");
    assert!(truth.good_bottles > 500.0 * 60.0 * 20.0, "{truth:?}");
}

#[test]
fn bearing_fails_after_tens_of_hours_with_rising_vibration() {
    let (_, mut s) = sim(11);
    let mut first_vib = None;
    let mut failed_at = None;
    for i in 0..(80 * 3600) {
        let t = s.step();
        let v = value(&s, &t, "pump.vibration");
        first_vib.get_or_insert(v);
        if s.truth().pump_failed {
            failed_at = Some(i);
            break;
        }
    }
    let failed_at = failed_at.expect("bearing never failed in 80 h");
    let hours = failed_at as f64 / 3600.0;
    assert!((20.0..80.0).contains(&hours), "failed after {hours} h");
    // After the trip the pump is stopped.
    let t = s.step();
    assert!(value(&s, &t, "pump.speed") < 1700.0);
}

#[test]
fn derating_the_pump_extends_bearing_life() {
    let (_, mut fast) = sim(21);
    let (_, mut slow) = sim(21);
    slow.apply(&PlantCommand::SetSetpoint {
        setpoint: "pump.speed_sp".into(),
        value: 1300.0,
    })
    .unwrap();
    for _ in 0..(10 * 3600) {
        fast.step();
        slow.step();
    }
    assert!(slow.truth().bearing_wear < fast.truth().bearing_wear * 0.8);
}

#[test]
fn stop_drives_to_safe_state_and_start_restores() {
    let (_, mut s) = sim(6);
    s.apply(&PlantCommand::StopLine).unwrap();
    let mut t = s.step();
    for _ in 0..300 {
        t = s.step();
    }
    assert!(s.truth().line_stopped);
    assert!(value(&s, &t, "filler.bpm") < 4.0);
    assert!(value(&s, &t, "pump.speed") < 5.0);
    s.apply(&PlantCommand::StartLine).unwrap();
    for _ in 0..600 {
        t = s.step();
    }
    assert!(value(&s, &t, "filler.bpm") > 400.0);
}

#[test]
fn maintenance_resets_wear() {
    let (_, mut s) = sim(8);
    for _ in 0..(5 * 3600) {
        s.step();
    }
    assert!(s.truth().bearing_wear > 0.0);
    s.apply(&PlantCommand::Maintenance).unwrap();
    for _ in 0..(2 * 3600 + 10) {
        s.step();
    }
    assert!(s.truth().bearing_wear < 0.01, "{:?}", s.truth());
}

#[test]
fn unknown_setpoint_and_nan_are_refused() {
    let (_, mut s) = sim(1);
    assert!(
        s.apply(&PlantCommand::SetSetpoint {
            setpoint: "nope".into(),
            value: 1.0
        })
        .is_err()
    );
    assert!(
        s.apply(&PlantCommand::SetSetpoint {
            setpoint: "pump.speed_sp".into(),
            value: f64::NAN
        })
        .is_err()
    );
}

#[test]
fn sensor_faults_change_only_their_signal() {
    let (_, mut clean) = sim(9);
    let (_, mut faulty) = sim(9);
    faulty.add_fault(Fault::parse("bias:pump.bearing_temp@100=10").unwrap());
    faulty.add_fault(Fault::parse("stuck:tank.level@100").unwrap());
    let li = clean.signal_index("tank.level").unwrap();
    let bi = clean.signal_index("pump.bearing_temp").unwrap();
    let fi = clean.signal_index("pump.flow").unwrap();
    let mut stuck_vals = Vec::new();
    for i in 0..300 {
        let a = clean.step();
        let b = faulty.step();
        if i >= 100 {
            assert!((b.values[bi] - a.values[bi] - 10.0).abs() < 1e-9);
            stuck_vals.push(b.values[li]);
            assert_eq!(a.values[fi], b.values[fi]);
        }
    }
    assert!(stuck_vals.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn fouling_makes_the_steam_valve_open_further() {
    let (_, mut clean) = sim(10);
    let (_, mut fouled) = sim(10);
    fouled.add_fault(Fault::parse("fouling:past@0=0.1").unwrap());
    let vi = clean.signal_index("past.steam_valve").unwrap();
    let (mut a, mut b) = (clean.step(), fouled.step());
    for _ in 0..(3 * 3600) {
        a = clean.step();
        b = fouled.step();
    }
    assert!(
        b.values[vi] > a.values[vi] + 5.0,
        "{} vs {}",
        b.values[vi],
        a.values[vi]
    );
}

/// Five-minute means of every signal, and the setpoints the plant holds, as a twin
/// would observe them.
fn observe(plant: &Plant, s: &mut Sim, setpoints: &[(&str, f64)]) -> plant_sim::Observed {
    let ticks: Vec<plant_sim::Tick> = (0..300).map(|_| s.step()).collect();
    let mut observed = plant_sim::Observed::means(plant, &ticks);
    observed.setpoints = setpoints
        .iter()
        .map(|(id, v)| (id.to_string(), *v))
        .collect();
    observed
}

#[test]
fn the_lookahead_model_predicts_the_next_hour_of_the_plant() {
    // A fouled, worn plant in conditions of its own, 6 hours in; then the same setpoint
    // changes applied to the plant and to a look-ahead model started from observations.
    let plant = Plant::reference();
    let conditions = plant_sim::Conditions::varied(7, 24.0);
    let mut real = Sim::with_conditions(&plant, 7, DEFAULT_START_MS, conditions.clone()).unwrap();
    real.add_fault(Fault::parse("fouling:past@0=0.02").unwrap());
    for _ in 0..(6 * 3600 - 300) {
        real.step();
    }
    let filler = conditions
        .plan
        .iter()
        .take_while(|p| p.at_s <= 6 * 3600)
        .last()
        .unwrap()
        .filler_speed;
    let held = [
        ("tank.level_sp", 1.6),
        ("pump.speed_sp", 1600.0),
        ("past.temp_sp", 75.0),
        ("filler.speed_sp", filler),
    ];
    let obs = observe(&plant, &mut real, &held);
    let mut model = Sim::lookahead(&plant, &obs).unwrap();
    let changes = [("pump.speed_sp", 1450.0), ("past.temp_sp", 74.0)];
    for (id, v) in changes {
        let cmd = PlantCommand::SetSetpoint {
            setpoint: id.into(),
            value: v,
        };
        real.apply(&cmd).unwrap();
        model.apply(&cmd).unwrap();
    }
    let before = real.truth();
    let predicted = model.forecast(3600);
    let mut min_temp = f64::INFINITY;
    let ti = real.signal_index("past.product_temp").unwrap();
    for _ in 0..3600 {
        min_temp = min_temp.min(real.step().values[ti]);
    }
    let after = real.truth();
    let energy = after.energy_kwh - before.energy_kwh;
    let good = after.good_bottles - before.good_bottles;
    let rel = |p: f64, a: f64| (p - a).abs() / a;
    assert!(
        rel(predicted.energy_kwh, energy) < 0.02,
        "energy {} predicted, {energy} real",
        predicted.energy_kwh
    );
    assert!(
        rel(predicted.good_bottles, good) < 0.01,
        "good bottles {} predicted, {good} real",
        predicted.good_bottles
    );
    assert!(
        (predicted.min_product_temp - min_temp).abs() < 0.3,
        "lowest product temperature {} predicted, {min_temp} measured",
        predicted.min_product_temp
    );
}

#[test]
fn the_lookahead_needs_the_signals_it_starts_from() {
    let (plant, mut s) = sim(1);
    let mut obs = observe(&plant, &mut s, &[]);
    obs.values.remove("past.heat_duty");
    let e = Sim::lookahead(&plant, &obs).unwrap_err();
    assert!(e.to_string().contains("past.heat_duty"), "{e}");
    obs.values.insert("past.heat_duty".into(), f64::NAN);
    assert!(Sim::lookahead(&plant, &obs).is_err());
}

#[test]
fn varied_conditions_change_the_climate_and_the_plan() {
    let plant = Plant::reference();
    let a = plant_sim::Conditions::varied(3, 48.0);
    assert_eq!(a, plant_sim::Conditions::varied(3, 48.0));
    assert_ne!(a, plant_sim::Conditions::varied(4, 48.0));
    assert!(a.plan.len() >= 7 && a.plan[0].at_s == 0, "{a:?}");
    assert!(
        a.plan
            .iter()
            .all(|p| (350.0..=600.0).contains(&p.filler_speed))
    );
    // The filler follows the plan: its first speed, then the first different one.
    let first = a.plan[0].filler_speed;
    let change = *a.plan.iter().find(|p| p.filler_speed != first).unwrap();
    let mut s = Sim::with_conditions(&plant, 3, DEFAULT_START_MS, a.clone()).unwrap();
    let bpm = s.signal_index("filler.bpm").unwrap();
    let amb = s.signal_index("energy.ambient_temp").unwrap();
    let mut ambient = Vec::new();
    for t in 1..=(change.at_s + 600) {
        let tick = s.step();
        if t % 600 == 0 {
            ambient.push(tick.values[amb]);
        }
        if t == change.at_s - 1 {
            assert!(
                (tick.values[bpm] - first).abs() < 10.0,
                "{}",
                tick.values[bpm]
            );
        }
        if t == change.at_s + 600 {
            assert!(
                (tick.values[bpm] - change.filler_speed).abs() < 10.0,
                "{} after the plan set {}",
                tick.values[bpm],
                change.filler_speed
            );
        }
    }
    let mean = ambient.iter().sum::<f64>() / ambient.len() as f64;
    assert!(
        (mean - a.ambient_mean_c).abs() < a.ambient_swing_c + 1.0,
        "{mean} vs {}",
        a.ambient_mean_c
    );
}
