//! Remaining useful life from run-to-failure histories: a window of each engine's recent
//! cycles (sensors normalised per operating condition) goes through an ensemble of small
//! networks; the interval around the estimate comes from the errors the ensemble made on
//! engines it did not see while learning.
//!
//! No I/O except reading C-MAPSS files (`cmapss`); time is the cycle count.

pub mod cmapss;
pub mod mlp;

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::cmapss::{SENSORS, SETTINGS, Unit};
use crate::mlp::{Mlp, Rng, TrainOptions};

/// The model file's format name and version. Version 2 added the options `age` and
/// `baseline`; a version 1 file is read as a model with neither.
pub const FORMAT: &str = "twinguard-rul";
pub const VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RulError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    At {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Fit(String),
    #[error("model: {0}")]
    Model(String),
}

/// How a model is fitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitOptions {
    /// Cycles in each input window (earlier cycles of a short history repeat its first).
    pub window: usize,
    /// Remaining life above this counts as this (healthy engines are not told apart).
    pub cap: f64,
    /// Widths of the hidden layers.
    pub hidden: Vec<usize>,
    /// Networks in the ensemble; each holds out a different share of the engines to stop
    /// its training and to measure the errors the interval is made of.
    pub ensemble: usize,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub patience: usize,
    /// A sensor is used when its correlation with the (capped) remaining life, over the
    /// training cycles, is at least this in absolute value.
    pub min_correlation: f64,
    /// Share of the held-out errors the interval covers (for example 0.9).
    pub coverage: f64,
    /// Weight of the newest cycle in each sensor's exponential moving average (1: the raw
    /// values); the noise of single cycles says nothing about wear.
    pub smoothing: f64,
    /// Also give the networks the engine's age: cycles run so far, divided by the cap.
    pub age: bool,
    /// Also give the networks each sensor's mean over the engine's first this many
    /// cycles (fewer while it has run fewer; 0: not at all): engines start from different
    /// points, and wear is the distance from where this one started.
    pub baseline: usize,
    pub seed: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            window: 30,
            cap: 125.0,
            hidden: vec![32, 16],
            ensemble: 15,
            epochs: 80,
            batch: 256,
            learning_rate: 1e-3,
            patience: 10,
            min_correlation: 0.1,
            coverage: 0.9,
            smoothing: 0.3,
            age: true,
            baseline: 40,
            seed: 1,
        }
    }
}

/// One operating condition: its settings and the sensors' mean and deviation in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub settings: Vec<f64>,
    pub rows: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Condition {
    /// Sensor `k`'s value `v` standardised in this condition (0 for a sensor constant in
    /// it).
    fn z(&self, k: usize, v: f64) -> f64 {
        let m = self.mean.get(k).copied().unwrap_or(0.0);
        let sd = self.std.get(k).copied().unwrap_or(0.0);
        if sd > 1e-9 { (v - m) / sd } else { 0.0 }
    }
}

/// The interval added to an estimate: the `coverage` share of held-out errors (true
/// minus estimated) lay between `low` and `high`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interval {
    pub coverage: f64,
    pub low: f64,
    pub high: f64,
}

/// Where the model learnt, and how well it did on engines it had not seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingInfo {
    /// The training file's name as given, and SHA-256 of its bytes (filled in by whoever
    /// read it).
    pub source: String,
    pub sha256: String,
    pub units: usize,
    pub rows: usize,
    /// RMSE of each network on its held-out engines (every window, capped truth).
    pub validation_rmse: Vec<f64>,
}

/// A fitted model: a versioned, documented artifact (docs/rul-model.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulModel {
    pub format: String,
    pub version: u32,
    pub options: FitOptions,
    /// Sensors used (0-based among the 21), in input order.
    pub sensors: Vec<usize>,
    pub conditions: Vec<Condition>,
    pub nets: Vec<Mlp>,
    pub interval: Interval,
    pub training: TrainingInfo,
}

/// One engine's estimate after its last cycle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub unit: u32,
    pub rul: f64,
    pub rul_low: f64,
    pub rul_high: f64,
}

/// The operating condition a row of settings belongs to, by rounding (C-MAPSS settings
/// sit at a few discrete points with small noise).
fn condition_key(settings: &[f64]) -> (i64, i64, i64) {
    let s = |i: usize| settings.get(i).copied().unwrap_or(0.0);
    (
        s(0).round() as i64,
        (s(1) * 100.0).round() as i64,
        s(2).round() as i64,
    )
}

/// Index of the condition nearest `settings` (each setting scaled by its spread).
fn nearest(conditions: &[Condition], settings: &[f64], scale: &[f64]) -> usize {
    let d = |c: &Condition| -> f64 {
        c.settings
            .iter()
            .zip(settings)
            .zip(scale)
            .map(|((a, b), s)| ((a - b) / s).powi(2))
            .sum()
    };
    (0..conditions.len())
        .min_by(|&a, &b| {
            let (da, db) = (
                conditions.get(a).map_or(f64::INFINITY, d),
                conditions.get(b).map_or(f64::INFINITY, d),
            );
            da.total_cmp(&db)
        })
        .unwrap_or(0)
}

impl RulModel {
    fn setting_scale(&self) -> Vec<f64> {
        setting_scale(&self.conditions)
    }

    /// Every row of `unit`, normalised (the used sensors, per their condition) and
    /// smoothed.
    fn normalise(&self, unit: &Unit) -> Vec<Vec<f32>> {
        let scale = self.setting_scale();
        let alpha = self.options.smoothing.clamp(0.0, 1.0) as f32;
        let mut ema: Option<Vec<f32>> = None;
        unit.rows
            .iter()
            .map(|row| {
                let settings = row.get(..SETTINGS).unwrap_or_default();
                let c = self
                    .conditions
                    .get(nearest(&self.conditions, settings, &scale));
                self.sensors
                    .iter()
                    .enumerate()
                    .map(|(k, &s)| {
                        let v = row.get(SETTINGS + s).copied().unwrap_or(0.0);
                        c.map_or(v, |c| c.z(k, v)) as f32
                    })
                    .collect::<Vec<f32>>()
            })
            .map(|z| {
                let next: Vec<f32> = match &ema {
                    Some(prev) => prev
                        .iter()
                        .zip(&z)
                        .map(|(p, v)| alpha * v + (1.0 - alpha) * p)
                        .collect(),
                    None => z,
                };
                ema = Some(next.clone());
                next
            })
            .collect()
    }

    /// The ensemble's estimate for windows (columns of `x`), in cycles, within [0, cap].
    fn estimate(&self, x: &DMatrix<f32>) -> Vec<f64> {
        let n = self.nets.len().max(1) as f64;
        let mut sum = vec![0.0; x.ncols()];
        for net in &self.nets {
            for (s, p) in sum.iter_mut().zip(net.predict(x)) {
                *s += f64::from(p);
            }
        }
        sum.iter()
            .map(|s| (s / n * self.options.cap).clamp(0.0, self.options.cap))
            .collect()
    }

    /// Each unit's remaining life after its last cycle, with the interval.
    pub fn predict(&self, units: &[Unit]) -> Vec<Prediction> {
        let cols: Vec<Vec<f32>> = units
            .iter()
            .map(|u| {
                let rows = self.normalise(u);
                self.input(&rows, rows.len().saturating_sub(1))
            })
            .collect();
        let x = to_matrix(&cols, self.input_width());
        let est = self.estimate(&x);
        units
            .iter()
            .zip(est)
            .map(|(u, rul)| Prediction {
                unit: u.id,
                rul,
                rul_low: (rul + self.interval.low).max(0.0),
                rul_high: (rul + self.interval.high).max(0.0),
            })
            .collect()
    }

    fn input_width(&self) -> usize {
        let n = self.sensors.len();
        self.options.window * n
            + usize::from(self.options.age)
            + if self.options.baseline > 0 { n } else { 0 }
    }

    /// The networks' input after cycle `end` (0-based) of normalised `rows`.
    fn input(&self, rows: &[Vec<f32>], end: usize) -> Vec<f32> {
        let mut x = window(rows, end, self.options.window);
        if self.options.age {
            x.push(((end + 1) as f64 / self.options.cap) as f32);
        }
        if self.options.baseline > 0 {
            let first = rows
                .get(..(end + 1).min(self.options.baseline))
                .unwrap_or_default();
            let width = self.sensors.len();
            let n = first.len().max(1) as f32;
            x.extend((0..width).map(|k| first.iter().filter_map(|r| r.get(k)).sum::<f32>() / n));
        }
        x
    }

    /// A model read from a file of an earlier version, as this version reads it: version
    /// 1 had no `age` or `baseline` (whatever defaults filled them in are undone).
    pub fn upgraded(mut self) -> RulModel {
        if self.format == FORMAT && self.version == 1 {
            self.options.age = false;
            self.options.baseline = 0;
            self.version = VERSION;
        }
        self
    }

    /// Whether a model read from a file (and `upgraded`) is whole and of this version.
    pub fn check(&self) -> Result<(), RulError> {
        let bad = |m: String| Err(RulError::Model(m));
        if self.format != FORMAT || self.version != VERSION {
            return bad(format!(
                "format {:?} version {} is not {FORMAT:?} version {VERSION} (or 1)",
                self.format, self.version
            ));
        }
        if self.options.baseline > MAX_BASELINE {
            return bad(format!("baseline must be at most {MAX_BASELINE} cycles"));
        }
        if self.sensors.is_empty() || self.sensors.iter().any(|&s| s >= SENSORS) {
            return bad("sensors must be indices among the 21".into());
        }
        if self.options.window == 0 || !positive(self.options.cap) {
            return bad("window and cap must be positive".into());
        }
        if self.conditions.is_empty()
            || self.conditions.iter().any(|c| {
                c.settings.len() != SETTINGS
                    || c.mean.len() != self.sensors.len()
                    || c.std.len() != self.sensors.len()
                    || c.std.iter().any(|s| !positive(*s))
            })
        {
            return bad(
                "every condition needs 3 settings and a mean and positive deviation per sensor"
                    .into(),
            );
        }
        if self.nets.is_empty() {
            return bad("no networks".into());
        }
        for (i, n) in self.nets.iter().enumerate() {
            n.check(self.input_width())
                .map_err(|e| RulError::Model(format!("network {i}: {e}")))?;
        }
        Ok(())
    }
}

fn setting_scale(conditions: &[Condition]) -> Vec<f64> {
    (0..SETTINGS)
        .map(|i| {
            let v: Vec<f64> = conditions
                .iter()
                .filter_map(|c| c.settings.get(i).copied())
                .collect();
            let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
            let sd =
                (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt();
            if sd > 1e-9 { sd } else { 1.0 }
        })
        .collect()
}

/// The window of `rows` ending at `end` (inclusive), flattened cycle by cycle; before the
/// first cycle the first repeats.
fn window(rows: &[Vec<f32>], end: usize, len: usize) -> Vec<f32> {
    let width = rows.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(len * width);
    for k in 0..len {
        let i = (end + k + 1).saturating_sub(len);
        match rows.get(i) {
            Some(r) => out.extend_from_slice(r),
            None => out.extend(std::iter::repeat_n(0.0, width)),
        }
    }
    out
}

fn to_matrix(cols: &[Vec<f32>], width: usize) -> DMatrix<f32> {
    DMatrix::from_fn(width, cols.len(), |r, c| {
        cols.get(c).and_then(|v| v.get(r)).copied().unwrap_or(0.0)
    })
}

/// A training sample: the unit it comes from, its window, its scaled target.
type Sample = (usize, Vec<f32>, f32);

/// What `fit` reports as it goes: network `member` of `of` finished `epoch` with the
/// validation RMSE in cycles.
pub struct Progress {
    pub member: usize,
    pub of: usize,
    pub epoch: usize,
    pub validation_rmse: f64,
}

/// Fits a model to run-to-failure `units` (every unit's last cycle is its failure).
pub fn fit(
    units: &[Unit],
    options: FitOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<RulModel, RulError> {
    let o = &options;
    if o.window == 0
        || o.window > 500
        || !positive(o.cap)
        || o.ensemble == 0
        || o.ensemble > 20
        || o.baseline > MAX_BASELINE
    {
        return Err(RulError::Fit(format!(
            "window must be 1 to 500, cap positive, ensemble 1 to 20, baseline 0 to {MAX_BASELINE}"
        )));
    }
    if !(positive(o.coverage) && o.coverage < 1.0)
        || o.hidden.is_empty()
        || o.hidden.contains(&0)
        || !(positive(o.smoothing) && o.smoothing <= 1.0)
    {
        return Err(RulError::Fit(
            "coverage must be between 0 and 1, smoothing more than 0 and at most 1, and every hidden layer at least 1 wide".into(),
        ));
    }
    if units.len() < 2 * o.ensemble.max(2) {
        return Err(RulError::Fit(format!(
            "{} engines; at least {} are needed to hold some out",
            units.len(),
            2 * o.ensemble.max(2)
        )));
    }
    // Operating conditions and per-condition sensor statistics.
    let mut keys: Vec<(i64, i64, i64)> = Vec::new();
    let mut members: Vec<Vec<&Vec<f64>>> = Vec::new();
    for row in units.iter().flat_map(|u| &u.rows) {
        let k = condition_key(row.get(..SETTINGS).unwrap_or_default());
        match keys.iter().position(|x| *x == k) {
            Some(i) => {
                if let Some(m) = members.get_mut(i) {
                    m.push(row);
                }
            }
            None => {
                keys.push(k);
                members.push(vec![row]);
            }
        }
    }
    let stats = |rows: &[&Vec<f64>], col: usize| -> (f64, f64) {
        let n = rows.len().max(1) as f64;
        let m = rows
            .iter()
            .map(|r| r.get(col).copied().unwrap_or(0.0))
            .sum::<f64>()
            / n;
        let v = rows
            .iter()
            .map(|r| (r.get(col).copied().unwrap_or(0.0) - m).powi(2))
            .sum::<f64>()
            / n;
        (m, v.sqrt())
    };
    let all_sensors: Vec<usize> = (0..SENSORS).collect();
    let mut conditions: Vec<Condition> = members
        .iter()
        .map(|rows| Condition {
            settings: (0..SETTINGS).map(|i| stats(rows, i).0).collect(),
            rows: rows.len(),
            mean: all_sensors
                .iter()
                .map(|&s| stats(rows, SETTINGS + s).0)
                .collect(),
            std: all_sensors
                .iter()
                .map(|&s| stats(rows, SETTINGS + s).1)
                .collect(),
        })
        .collect();
    // Sensors: not constant in every condition, and related to the remaining life.
    let cap = o.cap;
    let target = |u: &Unit, i: usize| ((u.rows.len() - 1 - i) as f64).min(cap);
    let scale = setting_scale(&conditions);
    let mut z_by_sensor: Vec<Vec<f64>> = vec![Vec::new(); SENSORS];
    let mut targets = Vec::new();
    for u in units {
        for (i, row) in u.rows.iter().enumerate() {
            let c = conditions.get(nearest(
                &conditions,
                row.get(..SETTINGS).unwrap_or_default(),
                &scale,
            ));
            for (s, z) in z_by_sensor.iter_mut().enumerate() {
                let v = row.get(SETTINGS + s).copied().unwrap_or(0.0);
                z.push(c.map_or(0.0, |c| c.z(s, v)));
            }
            targets.push(target(u, i));
        }
    }
    let sensors: Vec<usize> = (0..SENSORS)
        .filter(|&s| {
            z_by_sensor
                .get(s)
                .is_some_and(|z| correlation(z, &targets).abs() >= o.min_correlation)
        })
        .collect();
    if sensors.is_empty() {
        return Err(RulError::Fit(format!(
            "no sensor correlates with the remaining life by at least {}",
            o.min_correlation
        )));
    }
    for c in &mut conditions {
        c.mean = sensors
            .iter()
            .map(|&s| c.mean.get(s).copied().unwrap_or(0.0))
            .collect();
        c.std = sensors
            .iter()
            .map(|&s| c.std.get(s).copied().filter(|v| *v > 1e-9).unwrap_or(1.0))
            .collect();
    }
    let mut model = RulModel {
        format: FORMAT.into(),
        version: VERSION,
        options: options.clone(),
        sensors,
        conditions,
        nets: Vec::new(),
        interval: Interval {
            coverage: o.coverage,
            low: 0.0,
            high: 0.0,
        },
        training: TrainingInfo {
            units: units.len(),
            rows: units.iter().map(|u| u.rows.len()).sum(),
            ..TrainingInfo::default()
        },
    };
    // Every window of every unit, with its capped target.
    let width = model.input_width();
    let windows: Vec<Sample> = units
        .iter()
        .enumerate()
        .flat_map(|(ui, u)| {
            let rows = model.normalise(u);
            (0..rows.len())
                .map(|i| (ui, model.input(&rows, i), (target(u, i) / cap) as f32))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut rng = Rng::new(o.seed);
    let order = rng.permutation(units.len());
    let fold_of: Vec<usize> = {
        let mut f = vec![0; units.len()];
        for (pos, &u) in order.iter().enumerate() {
            if let Some(slot) = f.get_mut(u) {
                *slot = pos % o.ensemble.max(2);
            }
        }
        f
    };
    let mut residuals = Vec::new();
    for member in 0..o.ensemble {
        let held = |ui: usize| fold_of.get(ui).copied() == Some(member % o.ensemble.max(2));
        let (train, valid): (Vec<&Sample>, Vec<&Sample>) =
            windows.iter().partition(|(ui, _, _)| !held(*ui));
        let x = to_matrix(
            &train.iter().map(|w| w.1.clone()).collect::<Vec<_>>(),
            width,
        );
        let y: Vec<f32> = train.iter().map(|w| w.2).collect();
        let vx = to_matrix(
            &valid.iter().map(|w| w.1.clone()).collect::<Vec<_>>(),
            width,
        );
        let vy: Vec<f32> = valid.iter().map(|w| w.2).collect();
        let mut sizes = vec![width];
        sizes.extend(&o.hidden);
        sizes.push(1);
        let mut net = Mlp::new(&sizes, &mut rng);
        let train_options = TrainOptions {
            epochs: o.epochs,
            batch: o.batch,
            learning_rate: o.learning_rate,
            patience: o.patience,
        };
        let of = o.ensemble;
        let best = net.train(&x, &y, (&vx, &vy), train_options, &mut rng, |epoch, mse| {
            progress(&Progress {
                member: member + 1,
                of,
                epoch,
                validation_rmse: mse.sqrt() * cap,
            })
        });
        model.training.validation_rmse.push(best.sqrt() * cap);
        for (p, t) in net.predict(&vx).iter().zip(&vy) {
            residuals.push(f64::from(*t - p.clamp(0.0, 1.0)) * cap);
        }
        model.nets.push(net);
    }
    residuals.sort_by(f64::total_cmp);
    let q = |p: f64| -> f64 {
        let i = ((residuals.len() as f64 - 1.0) * p).round() as usize;
        residuals.get(i).copied().unwrap_or(0.0)
    };
    let tail = (1.0 - o.coverage) / 2.0;
    model.interval.low = q(tail);
    model.interval.high = q(1.0 - tail);
    Ok(model)
}

/// Longest baseline, cycles.
pub const MAX_BASELINE: usize = 1000;

/// Greater than zero (false for NaN).
fn positive(x: f64) -> bool {
    x > 0.0
}

/// Pearson correlation (0 when either side is constant).
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// RMSE and the PHM08 score of estimates against the truth (both as given).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    pub rmse: f64,
    /// Σ exp(−d/13) − 1 for d < 0, exp(d/10) − 1 for d ≥ 0, with d = estimate − truth
    /// (late estimates cost more).
    pub phm08: f64,
    /// Share of the truths inside the interval.
    pub coverage: f64,
}

pub fn score(predictions: &[Prediction], truth: &[f64]) -> Scores {
    let n = predictions.len().min(truth.len()).max(1) as f64;
    let (mut se, mut s, mut inside) = (0.0, 0.0, 0.0);
    for (p, t) in predictions.iter().zip(truth) {
        let d = p.rul - t;
        se += d * d;
        s += if d < 0.0 {
            (-d / 13.0).exp() - 1.0
        } else {
            (d / 10.0).exp() - 1.0
        };
        if (p.rul_low..=p.rul_high).contains(t) {
            inside += 1.0;
        }
    }
    Scores {
        rmse: (se / n).sqrt(),
        phm08: s,
        coverage: inside / n,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    /// Engines whose two informative sensors degrade, in two operating conditions, with
    /// noise and a sensor that says nothing.
    pub fn synthetic(n: usize, seed: u64) -> Vec<Unit> {
        synthetic_spread(n, seed, 0.0)
    }

    /// As `synthetic`, each engine's informative sensors starting `spread` (standard
    /// deviation) away from the fleet's.
    fn synthetic_spread(n: usize, seed: u64, spread: f64) -> Vec<Unit> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|u| {
                let start = spread * rng.normal();
                let life = 120 + (rng.unit() * 150.0) as usize;
                let rows = (0..life)
                    .map(|t| {
                        let wear = (t as f64 / life as f64).powi(2);
                        let cond = (rng.unit() * 2.0) as usize;
                        let (s1, offset) = if cond == 0 { (0.0, 0.0) } else { (20.0, 50.0) };
                        let mut row = vec![s1, 0.25 * cond as f64, 100.0];
                        for s in 0..SENSORS {
                            let v = match s {
                                1 => offset + start + 10.0 * wear + rng.normal(),
                                6 => 2.0 * offset - start - 8.0 * wear + rng.normal(),
                                9 => 7.0,
                                _ => offset + rng.normal(),
                            };
                            row.push(v);
                        }
                        row
                    })
                    .collect();
                Unit {
                    id: u as u32 + 1,
                    rows,
                }
            })
            .collect()
    }

    fn quick() -> FitOptions {
        FitOptions {
            window: 10,
            hidden: vec![16],
            ensemble: 3,
            epochs: 40,
            batch: 64,
            learning_rate: 3e-3,
            patience: 8,
            ..FitOptions::default()
        }
    }

    #[test]
    fn it_learns_wear_and_says_how_sure_it_is() {
        let train = synthetic(60, 1);
        let model = fit(&train, quick(), |_| {}).unwrap();
        model.check().unwrap();
        // Only the informative sensors, normalised per condition.
        assert_eq!(model.sensors, vec![1, 6]);
        assert_eq!(model.conditions.len(), 2);
        // Cut fresh engines short and estimate what is left.
        let mut test = synthetic(40, 2);
        let mut truth = Vec::new();
        let mut rng = Rng::new(3);
        for u in &mut test {
            let keep = 20 + (rng.unit() * (u.rows.len() - 20) as f64) as usize;
            truth.push(((u.rows.len() - keep) as f64).min(125.0));
            u.rows.truncate(keep);
        }
        let p = model.predict(&test);
        let s = score(&p, &truth);
        assert!(s.rmse < 25.0, "{s:?}");
        assert!(s.coverage >= 0.7, "{s:?}");
        assert!(p.iter().all(|p| p.rul_low <= p.rul && p.rul <= p.rul_high));
        // It round-trips as JSON and predicts the same.
        let back: RulModel = serde_json::from_str(&serde_json::to_string(&model).unwrap()).unwrap();
        back.check().unwrap();
        for (a, b) in back.predict(&test).iter().zip(&p) {
            assert!((a.rul - b.rul).abs() < 1e-6 && (a.rul_high - b.rul_high).abs() < 1e-6);
        }
    }

    /// Test engines cut short at random, and their true (capped) remaining life.
    fn cut(mut test: Vec<Unit>, seed: u64) -> (Vec<Unit>, Vec<f64>) {
        let mut truth = Vec::new();
        let mut rng = Rng::new(seed);
        for u in &mut test {
            let keep = 20 + (rng.unit() * (u.rows.len() - 20) as f64) as usize;
            truth.push(((u.rows.len() - keep) as f64).min(125.0));
            u.rows.truncate(keep);
        }
        (test, truth)
    }

    #[test]
    fn where_an_engine_started_tells_its_wear_from_its_making() {
        // Engines differ from the start by as much as wear moves them in a lifetime.
        let train = synthetic_spread(60, 1, 4.0);
        let (test, truth) = cut(synthetic_spread(40, 2, 4.0), 3);
        let rmse = |age: bool, baseline: usize| {
            let options = FitOptions {
                age,
                baseline,
                ..quick()
            };
            let model = fit(&train, options, |_| {}).unwrap();
            model.check().unwrap();
            score(&model.predict(&test), &truth).rmse
        };
        let without = rmse(false, 0);
        let with = rmse(true, 20);
        assert!(with < 0.8 * without, "with {with:.2}, without {without:.2}");
    }

    #[test]
    fn a_version_1_file_is_read_as_a_model_without_age_or_baseline() {
        let train = synthetic(12, 1);
        let options = FitOptions {
            epochs: 3,
            age: false,
            baseline: 0,
            ..quick()
        };
        let model = fit(&train, options, |_| {}).unwrap();
        // Version 1 as written then: no `age`, no `baseline`.
        let mut v1 = serde_json::to_value(&model).unwrap();
        v1["version"] = 1.into();
        let o = v1["options"].as_object_mut().unwrap();
        o.remove("age").unwrap();
        o.remove("baseline").unwrap();
        let read: RulModel = serde_json::from_value(v1).unwrap();
        assert!(
            read.check().is_err(),
            "read as is, the defaults fill in age"
        );
        let read = read.upgraded();
        read.check().unwrap();
        assert_eq!(read, model);
        // A version this build does not know is refused by name.
        let mut v9 = serde_json::to_value(&model).unwrap();
        v9["version"] = 9.into();
        let read: RulModel = serde_json::from_value(v9).unwrap();
        let e = read.upgraded().check().unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }

    #[test]
    fn bad_options_and_broken_models_are_refused() {
        let train = synthetic(10, 1);
        let e = fit(
            &train,
            FitOptions {
                window: 0,
                ..quick()
            },
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
        let e = fit(&train[..3], quick(), |_| {}).unwrap_err();
        assert!(e.to_string().contains("engines"), "{e}");
        let e = fit(
            &train,
            FitOptions {
                baseline: MAX_BASELINE + 1,
                ..quick()
            },
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("baseline"), "{e}");
        let mut model = fit(
            &synthetic(12, 1),
            FitOptions {
                epochs: 2,
                ..quick()
            },
            |_| {},
        )
        .unwrap();
        model.nets[0].layers[0].weights.pop();
        assert!(model.check().unwrap_err().to_string().contains("network 0"));
    }

    #[test]
    fn scores_follow_the_phm08_definition() {
        let p = |rul: f64| Prediction {
            unit: 1,
            rul,
            rul_low: rul - 5.0,
            rul_high: rul + 5.0,
        };
        let s = score(&[p(110.0), p(90.0)], &[100.0, 100.0]);
        assert!((s.rmse - 10.0).abs() < 1e-12);
        let expected = (1.0f64).exp() - 1.0 + (10.0f64 / 13.0).exp() - 1.0;
        assert!((s.phm08 - expected).abs() < 1e-12);
        assert_eq!(s.coverage, 0.0);
    }
}
