//! The pump's remaining useful life, estimated live in the twin with a model of the RUL
//! family (`crates/rul`) fitted on the simulator's runs to failure (`bench pump`).

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

/// One cycle in the C-MAPSS row layout the RUL model reads: constant settings (one
/// operating condition), the pump's signals in the first sensor slots, the rest 0.
pub fn cycle_row(means: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut row = vec![0.0, 0.0, 100.0];
    row.extend(means);
    row.resize(SETTINGS + SENSORS, 0.0);
    row
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
    /// Set when the model came from the registry.
    admitted: Option<crate::core::ModelRef>,
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

/// Whether `model` can estimate live: the twin may first see a pump well into its
/// bearing's life and keeps a bounded history, so a model that reads the unit's age or
/// its first cycles (`age`, `baseline`) would be told wrong ones.
pub fn check_model(model: &rul::RulModel) -> Result<(), String> {
    if model.options.age || model.options.baseline > 0 {
        return Err(format!(
            "this RUL model reads the unit's age (age = {}) or its first {} cycles (baseline), which the twin does not know for a pump it may first see mid-life; fit the pump's model with \"age\": false and \"baseline\": 0 (as `twinguard bench pump --model-out` does)",
            model.options.age, model.options.baseline
        ));
    }
    Ok(())
}

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
            admitted: None,
        }
    }

    /// The admitted model this is (registry name, version, digest).
    pub fn admitted(mut self, model: crate::core::ModelRef) -> PumpHealth {
        self.admitted = Some(model);
        self
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
        let mut means = Vec::with_capacity(PUMP_SIGNALS.len());
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
            means.push(sum / n as f64);
        }
        self.rows.push(cycle_row(means));
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

    /// The latest estimate.
    pub fn last(&self) -> Option<&Estimate> {
        self.last.as_ref()
    }

    /// Whether a warning is on.
    pub fn warning(&self) -> bool {
        self.warning
    }

    /// For the report.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "model_sha256": self.sha256,
            "admitted": self.admitted,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_that_reads_age_or_first_cycles_is_refused_for_the_live_pump() {
        let model = |age: bool, baseline: usize| rul::RulModel {
            format: rul::FORMAT.into(),
            version: rul::VERSION,
            options: rul::FitOptions {
                age,
                baseline,
                ..rul::FitOptions::default()
            },
            sensors: vec![0],
            conditions: Vec::new(),
            nets: Vec::new(),
            interval: rul::Interval {
                coverage: 0.9,
                low: 0.0,
                high: 0.0,
            },
            training: rul::TrainingInfo::default(),
        };
        assert!(check_model(&model(false, 0)).is_ok());
        for (age, baseline) in [(true, 0), (false, 40), (true, 40)] {
            let e = check_model(&model(age, baseline)).unwrap_err();
            assert!(e.contains("\"age\": false"), "{e}");
        }
    }

    #[test]
    fn the_normal_distribution_function_matches_its_table() {
        for (z, p) in [
            (0.0, 0.5),
            (1.0, 0.841_344_7),
            (-1.644_853_6, 0.05),
            (2.326_347_9, 0.99),
        ] {
            assert!((normal_cdf(z) - p).abs() < 1e-6, "{z}: {}", normal_cdf(z));
        }
    }

    #[test]
    fn a_cycle_row_has_the_layout_the_model_reads() {
        let row = cycle_row([1.0, 2.0]);
        assert_eq!(row.len(), SETTINGS + SENSORS);
        assert_eq!(row.get(..5), Some(&[0.0, 0.0, 100.0, 1.0, 2.0][..]));
        assert!(row.iter().skip(5).all(|v| *v == 0.0));
    }
}
