//! `twinguard bench pump`: the RUL model family on the reference plant's pump. Seeded
//! runs of the simulated plant, each at its own pump speed and run until the bearing
//! fails, give run-to-failure histories (one "cycle" is ten simulated minutes of the
//! pump's signals, averaged); a model is fitted on some seeds and warns on others, and
//! the warning's lead time before each failure and the false warnings are counted.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use plant_model::{Plant, PlantCommand};
use plant_sim::{DEFAULT_START_MS, Sim};
use rul::cmapss::Unit;
use serde::Serialize;

use crate::pump_health::{CYCLE_S, PUMP_SIGNALS, cycle_row};

/// Longest run simulated, hours (the bearing's life at rated speed is 30 to 60 hours).
const MAX_HOURS: u64 = 200;

/// One seeded run until the pump fails: its cycles in the C-MAPSS row layout (settings
/// constant, the pump's signals in the first sensor slots, the rest 0) and the pump
/// speed it ran at.
pub fn run_to_failure(plant: &Plant, seed: u64) -> Result<(Unit, f64)> {
    let mut sim = Sim::new(plant, seed, DEFAULT_START_MS)?;
    // Each run at its own speed within the setpoint's envelope (1300 to 1700 rpm), and
    // with its own wear rate (one to six times the bearing's nominal rate).
    let mix = seed.wrapping_mul(2_654_435_761);
    let speed = 1300.0 + (mix % 401) as f64;
    let wear = 1.0 + ((mix >> 16) % 501) as f64 / 100.0;
    sim.add_fault(plant_sim::Fault {
        kind: plant_sim::FaultKind::Wear,
        target: "pump".into(),
        start_s: 0,
        duration_s: None,
        magnitude: wear,
    });
    sim.apply(&PlantCommand::SetSetpoint {
        setpoint: "pump.speed_sp".into(),
        value: speed,
    })?;
    let idx: Vec<usize> = PUMP_SIGNALS
        .iter()
        .map(|s| {
            sim.signal_index(s)
                .with_context(|| format!("the plant has no signal {s}"))
        })
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    let mut sums = vec![0.0; idx.len()];
    let mut n = 0u64;
    for _ in 0..MAX_HOURS * 3600 {
        let tick = sim.step();
        if sim.truth().pump_failed {
            break;
        }
        for (s, &i) in sums.iter_mut().zip(&idx) {
            *s += tick.values.get(i).copied().unwrap_or(0.0);
        }
        n += 1;
        if n == CYCLE_S {
            rows.push(cycle_row(sums.iter().map(|s| s / n as f64)));
            sums.iter_mut().for_each(|s| *s = 0.0);
            n = 0;
        }
    }
    Ok((
        Unit {
            id: seed as u32,
            rows,
        },
        speed,
    ))
}

#[derive(Debug, Serialize)]
pub struct PumpResult {
    pub training_runs: usize,
    pub test_runs: usize,
    pub horizon_h: f64,
    /// Per test run: hours from the first warning to the failure (None: no warning).
    pub lead_h: Vec<Option<f64>>,
    /// Share of failures warned at least `goal_lead_h` ahead.
    pub share_warned_in_time: f64,
    pub goal_lead_h: f64,
    /// Warnings raised while the pump had more than twice the horizon left, per 100
    /// simulated hours of operation.
    pub false_warnings_per_100h: f64,
    pub hours_simulated: f64,
    /// RMSE of the estimates (hours) over every cycle of the test runs with at most the
    /// cap left: their last `rmse_window_h` hours.
    pub rmse_h: f64,
    pub rmse_window_h: f64,
    pub fit_seconds: f64,
}

/// Fits on seeds `1..=train`, tests on the next `test`; a warning is the estimate at or
/// below `horizon_h` for two cycles in a row. Returns the model too.
pub fn bench(
    train: u64,
    test: u64,
    horizon_h: f64,
) -> Result<(PumpResult, rul::RulModel, Vec<Unit>)> {
    let plant = Plant::reference();
    eprintln!("pump: simulating {train} runs to failure for training");
    let histories: Vec<Unit> = (1..=train)
        .map(|s| run_to_failure(&plant, s).map(|r| r.0))
        .collect::<Result<_>>()?;
    // Not the engine's age or starting point: the twin may first see a pump well into
    // its bearing's life, and keeps a bounded history (the settings of the rows in
    // docs/benchmarks.md).
    let options = rul::FitOptions {
        window: 12,
        hidden: vec![64, 32],
        ensemble: 5,
        age: false,
        baseline: 0,
        ..rul::FitOptions::default()
    };
    let started = std::time::Instant::now();
    let mut model = rul::fit(&histories, options, |p| {
        eprint!(
            "\rpump: network {}/{} epoch {:>3}  held-out RMSE {:6.2} cycles",
            p.member, p.of, p.epoch, p.validation_rmse
        );
    })?;
    eprintln!();
    model.training.source = format!(
        "twinguard bench pump: reference plant, seeds 1-{train} run to bearing failure, {CYCLE_S} s cycles of {}",
        PUMP_SIGNALS.join(", ")
    );
    let fit_seconds = started.elapsed().as_secs_f64();
    let cycles_per_h = 3600.0 / CYCLE_S as f64;
    let horizon = horizon_h * cycles_per_h;
    let (mut lead_h, mut false_warnings, mut cycles_total) = (Vec::new(), 0u64, 0usize);
    let (mut se, mut counted) = (0.0, 0usize);
    let mut tests = Vec::new();
    for seed in train + 1..=train + test {
        eprint!("\rpump: test run {}/{test}", seed - train);
        let (unit, _) = run_to_failure(&plant, seed)?;
        let life = unit.rows.len();
        tests.push(unit.clone());
        cycles_total += life;
        let mut below = 0;
        let mut warned_at = None;
        let mut warning_on = false;
        for end in 1..=life {
            let prefix = Unit {
                id: unit.id,
                rows: unit.rows.get(..end).unwrap_or_default().to_vec(),
            };
            let Some(p) = model.predict(std::slice::from_ref(&prefix)).pop() else {
                continue;
            };
            let left = (life - end) as f64;
            if left <= model.options.cap {
                se += ((p.rul - left) / cycles_per_h).powi(2);
                counted += 1;
            }
            below = if p.rul <= horizon { below + 1 } else { 0 };
            let warn = below >= 2;
            if warn && !warning_on {
                if left > 2.0 * horizon {
                    false_warnings += 1;
                } else if warned_at.is_none() {
                    warned_at = Some(end);
                }
            }
            warning_on = warn;
        }
        lead_h.push(warned_at.map(|w| (life - w) as f64 / cycles_per_h));
    }
    eprintln!();
    let goal = 4.0;
    let in_time = lead_h
        .iter()
        .filter(|l| l.is_some_and(|l| l >= goal))
        .count();
    let hours = cycles_total as f64 / cycles_per_h;
    let result = PumpResult {
        training_runs: train as usize,
        test_runs: test as usize,
        horizon_h,
        share_warned_in_time: in_time as f64 / lead_h.len().max(1) as f64,
        lead_h,
        goal_lead_h: goal,
        false_warnings_per_100h: false_warnings as f64 / hours.max(1e-9) * 100.0,
        hours_simulated: hours,
        rmse_h: (se / counted.max(1) as f64).sqrt(),
        rmse_window_h: model.options.cap / cycles_per_h,
        fit_seconds,
    };
    Ok((result, model, tests))
}

/// A golden data set for admitting the pump's RUL model (`twinguard model admit`): each
/// test run cut at a point between half and nine tenths of its life, in C-MAPSS test
/// format (`golden_test.txt`), and the cycles each had left (`golden_rul.txt`).
pub fn write_golden(units: &[Unit], dir: &std::path::Path) -> Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (mut test, mut truth) = (String::new(), String::new());
    for (k, u) in units.iter().enumerate() {
        let life = u.rows.len();
        // A fixed spread of cut points: 0.5, 0.9, 0.7, 0.6, 0.8, …
        let share = 0.5 + 0.4 * ((k as f64 * 0.618_034) % 1.0);
        let end = ((life as f64 * share) as usize).clamp(1, life);
        for (cycle, row) in u.rows.iter().take(end).enumerate() {
            let _ = write!(test, "{} {}", k + 1, cycle + 1);
            for v in row {
                let _ = write!(test, " {v:.6}");
            }
            test.push('\n');
        }
        let _ = writeln!(truth, "{}", life - end);
    }
    for (name, text) in [("golden_test.txt", test), ("golden_rul.txt", truth)] {
        std::fs::write(dir.join(name), text)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))?;
    }
    Ok(())
}

pub fn table(r: &PumpResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Pump failure warnings: fitted on {} seeded runs to failure, tested on {} others",
        r.training_runs, r.test_runs
    );
    let _ = writeln!(
        out,
        "warning: estimated remaining life at or below {} h for two 10-minute cycles in a row\n",
        r.horizon_h
    );
    let leads: Vec<String> = r
        .lead_h
        .iter()
        .map(|l| l.map_or("none".to_string(), |l| format!("{l:.1}")))
        .collect();
    let _ = writeln!(out, "lead time before each failure, h: {}", leads.join(" "));
    let _ = writeln!(
        out,
        "warned at least {} h ahead: {:.0} % of failures (goal: 90 %)",
        r.goal_lead_h,
        r.share_warned_in_time * 100.0
    );
    let _ = writeln!(
        out,
        "false warnings (more than twice the horizon left): {:.2} per 100 h over {:.0} simulated hours",
        r.false_warnings_per_100h, r.hours_simulated
    );
    let _ = writeln!(
        out,
        "estimate RMSE over the last {:.0} h of each run: {:.2} h; fit {:.1} s",
        r.rmse_window_h, r.rmse_h, r.fit_seconds
    );
    out
}
