//! `twinguard bench pump`: the RUL model family on the reference plant's pump. Seeded
//! runs of the simulated plant, each at its own pump speed and run until the bearing
//! fails, give run-to-failure histories (one "cycle" is ten simulated minutes of the
//! pump's signals, averaged); a model is fitted on some seeds and warns on others, and
//! the warning's lead time before each failure and the false warnings are counted.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use plant_model::{Plant, PlantCommand};
use plant_sim::{DEFAULT_START_MS, Sim};
use rul::cmapss::{SENSORS, SETTINGS, Unit};
use serde::Serialize;

/// Simulated seconds averaged into one cycle.
pub const CYCLE_S: u64 = 600;
/// The pump's signals, in the order they fill the sensor slots of a row.
pub const PUMP_SIGNALS: [&str; 7] = [
    "pump.vibration",
    "pump.bearing_temp",
    "pump.motor_current",
    "pump.power",
    "pump.speed",
    "pump.flow",
    "pump.discharge_pressure",
];
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
            let mut row = vec![0.0, 0.0, 100.0];
            row.extend(sums.iter().map(|s| s / n as f64));
            row.resize(SETTINGS + SENSORS, 0.0);
            rows.push(row);
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
    /// cap left.
    pub rmse_h: f64,
    pub fit_seconds: f64,
}

/// Fits on seeds `1..=train`, tests on the next `test`; a warning is the estimate at or
/// below `horizon_h` for two cycles in a row. Returns the model too.
pub fn bench(train: u64, test: u64, horizon_h: f64) -> Result<(PumpResult, rul::RulModel)> {
    let plant = Plant::reference();
    eprintln!("pump: simulating {train} runs to failure for training");
    let histories: Vec<Unit> = (1..=train)
        .map(|s| run_to_failure(&plant, s).map(|r| r.0))
        .collect::<Result<_>>()?;
    let options = rul::FitOptions {
        window: 12,
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
    for seed in train + 1..=train + test {
        eprint!("\rpump: test run {}/{test}", seed - train);
        let (unit, _) = run_to_failure(&plant, seed)?;
        let life = unit.rows.len();
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
        fit_seconds,
    };
    Ok((result, model))
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
        "estimate RMSE over the last {} h of each run: {:.2} h; fit {:.1} s",
        (125.0 / 6.0_f64).round(),
        r.rmse_h,
        r.fit_seconds
    );
    out
}

/// The pump's remaining life estimated live from the twin: every ten minutes of data, the
/// pump's signals averaged over those minutes become one cycle; the model estimates from
/// the cycles since the last bearing change. A warning is failure within the horizon
/// estimated likely (probability at least one half) for two cycles in a row.
pub struct PumpHealth {
    model: rul::RulModel,
    pub sha256: String,
    horizon_h: f64,
    rows: Vec<Vec<f64>>,
    next_cycle_ms: Option<i64>,
    likely: u32,
    warning: bool,
    warnings: u64,
    last: Option<Estimate>,
    /// The latest estimates, oldest first, for the page's plot.
    history: std::collections::VecDeque<Estimate>,
}

/// Estimates kept for the page: a day of ten-minute cycles.
const PLOT_CYCLES: usize = 144;

/// The latest estimate, in hours.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub t_ms: i64,
    pub rul_h: f64,
    pub rul_low_h: f64,
    pub rul_high_h: f64,
    /// Probability that the pump fails within the horizon (the interval read as a normal
    /// spread of errors).
    pub failure_probability: f64,
}

/// Cycles kept (the smoothing forgets much faster).
const KEEP_CYCLES: usize = 500;

impl PumpHealth {
    pub fn new(model: rul::RulModel, sha256: String, horizon_h: f64) -> PumpHealth {
        PumpHealth {
            model,
            sha256,
            horizon_h,
            rows: Vec::new(),
            next_cycle_ms: None,
            likely: 0,
            warning: false,
            warnings: 0,
            last: None,
            history: std::collections::VecDeque::new(),
        }
    }

    /// The bearing was changed: the history starts again.
    pub fn reset(&mut self) {
        self.rows.clear();
        self.likely = 0;
        self.warning = false;
    }

    /// At data time `t_ms`: a new cycle if ten minutes have passed. Returns the estimate
    /// when a warning starts.
    pub fn tick(&mut self, t_ms: i64, twin: &twin::Twin) -> Option<Estimate> {
        let cycle_ms = CYCLE_S as i64 * 1000;
        let due = *self.next_cycle_ms.get_or_insert(t_ms + cycle_ms);
        if t_ms < due {
            return None;
        }
        self.next_cycle_ms = Some(due + ((t_ms - due) / cycle_ms + 1) * cycle_ms);
        let mut row = vec![0.0, 0.0, 100.0];
        for s in PUMP_SIGNALS {
            let h = &twin.signal(s)?.history;
            let (sum, n) = h
                .iter()
                .rev()
                .take_while(|p| t_ms - p.t_ms < cycle_ms)
                .fold((0.0, 0usize), |(s, n), p| (s + p.value, n + 1));
            if n == 0 {
                return None;
            }
            row.push(sum / n as f64);
        }
        row.resize(SETTINGS + SENSORS, 0.0);
        self.rows.push(row);
        if self.rows.len() > KEEP_CYCLES {
            self.rows.remove(0);
        }
        let unit = Unit {
            id: 1,
            rows: self.rows.clone(),
        };
        let p = self.model.predict(std::slice::from_ref(&unit)).pop()?;
        let per_h = 3600.0 / CYCLE_S as f64;
        let sigma = ((p.rul_high - p.rul_low) / (2.0 * 1.645)).max(1e-9);
        let z = (self.horizon_h * per_h - p.rul) / sigma;
        let estimate = Estimate {
            t_ms,
            rul_h: p.rul / per_h,
            rul_low_h: p.rul_low / per_h,
            rul_high_h: p.rul_high / per_h,
            failure_probability: normal_cdf(z),
        };
        self.last = Some(estimate.clone());
        self.history.push_back(estimate.clone());
        if self.history.len() > PLOT_CYCLES {
            self.history.pop_front();
        }
        self.likely = if estimate.failure_probability >= 0.5 {
            self.likely + 1
        } else {
            0
        };
        let warn = self.likely >= 2;
        let started = warn && !self.warning;
        self.warning = warn;
        if started {
            self.warnings += 1;
        }
        started.then_some(estimate)
    }

    /// For the report.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "model_sha256": self.sha256,
            "horizon_h": self.horizon_h,
            "cycles": self.rows.len(),
            "estimate": self.last,
            "warning": self.warning,
            "warnings": self.warnings,
            "history": self.history.iter().map(|e| [e.t_ms as f64, e.rul_h, e.rul_low_h, e.rul_high_h]).collect::<Vec<_>>(),
        })
    }
}

/// The standard normal distribution function (Abramowitz and Stegun 26.2.17, error
/// below 1e-7).
fn normal_cdf(z: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.231_641_9 * z.abs());
    let d = (-z * z / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let p = d
        * t
        * (0.319_381_530
            + t * (-0.356_563_782
                + t * (1.781_477_937 + t * (-1.821_255_978 + t * 1.330_274_429))));
    if z >= 0.0 { 1.0 - p } else { p }
}
