//! Relations that hold while a switch is on: a pump's flow, while its status says it
//! runs, follows the pressures around it (its curve). Learnt from normal data without
//! being told which columns are switches: a column that is only ever 0 or 1 is a gate; a
//! column that sits at zero whenever a gate is off, and away from it while the gate is
//! on, is gated by it; while its gate is on, a gated column is regressed (ridge, on
//! standardised columns and their squares) on at most four columns that are neither
//! gates nor gated, chosen one at a time by how much each lowers the error on held-out
//! stretches of the training data. A relation is kept only if it predicts those
//! stretches to within a quarter of the tolerance it will be judged by.
//!
//! A slowed or sabotaged pump, or a spoofed flow reading, moves the flow off its curve
//! at once, where a statistical monitor of all signals needs hours of accumulated
//! evidence.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

/// Share of rows a gate must be on (and off) in, at least.
const MIN_GATE_SHARE: f64 = 0.01;
/// A gated column is within this share of its largest magnitude while its gate is off...
const OFF_NEAR_ZERO: f64 = 0.01;
/// ...in at least this share of those rows...
const OFF_ROWS: f64 = 0.99;
/// ...and its mean magnitude while on is at least this share of its largest.
const ON_AWAY: f64 = 0.1;
/// Folds (contiguous stretches) that judge whether a relation holds out of sample.
const FOLDS: usize = 5;
/// Quantile of the held-out errors compared with the tolerance.
const HELD_OUT_QUANTILE: f64 = 0.999;
/// The held-out errors must stay within this share of the tolerance.
const HELD_OUT_SHARE: f64 = 0.25;
/// Ridge penalty on the standardised features.
const RIDGE: f64 = 1.0;
/// Regressors of one relation, at most.
const MAX_REGRESSORS: usize = 4;
/// Candidates tried for each relation, at most (those most correlated with its target).
const MAX_CANDIDATES: usize = 12;
/// A regressor is added only if it lowers the held-out error by at least this share.
const MIN_GAIN: f64 = 0.2;

/// One learnt relation: `target` while `gate` is on, from `regressors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatedRelation {
    /// Indices into the model's columns.
    pub gate: usize,
    pub target: usize,
    pub regressors: Vec<usize>,
    /// Mean and standard deviation of each regressor while the gate is on.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Coefficients: each standardised regressor, then its square, then the intercept.
    pub weights: Vec<f64>,
    /// Mean magnitude of the target while the gate is on: the tolerance is a share of it.
    pub on_mean: f64,
    /// The 99.9 % quantile of the errors on held-out stretches of the training data.
    pub held_out_error: f64,
}

impl GatedRelation {
    /// The target's expected value in `row` while the gate is on.
    fn expected(&self, row: &[f64]) -> f64 {
        let z: Vec<f64> = self
            .regressors
            .iter()
            .zip(self.mean.iter().zip(&self.std))
            .map(|(&c, (m, s))| (row.get(c).copied().unwrap_or(*m) - m) / s)
            .collect();
        features(&z)
            .iter()
            .zip(&self.weights)
            .map(|(x, w)| x * w)
            .sum()
    }

    /// How far `row` strays from the relation, in units of the allowed deviation
    /// (`tolerance` times the target's mean magnitude while on): above 1 is broken. None
    /// while the gate is off.
    pub fn excess(&self, row: &[f64], tolerance: f64) -> Option<f64> {
        if row.get(self.gate).copied().unwrap_or(0.0) < 0.5 {
            return None;
        }
        let y = row.get(self.target).copied()?;
        Some((y - self.expected(row)).abs() / (tolerance * self.on_mean))
    }

    pub(crate) fn consistent(&self, columns: usize) -> bool {
        let r = self.regressors.len();
        self.gate < columns
            && self.target < columns
            && self.regressors.iter().all(|c| *c < columns)
            && self.mean.len() == r
            && self.std.len() == r
            && self.weights.len() == 2 * r + 1
            && self.std.iter().all(|s| *s > 0.0)
            && self.on_mean > 0.0
            && self
                .weights
                .iter()
                .chain(&self.mean)
                .chain([&self.held_out_error])
                .all(|v| v.is_finite())
    }
}

/// What a switch says of the value it gates, whatever the relation between them: a pump
/// that is off moves no water, a pump that runs moves some. Each side is held only where
/// the training data never contradicted it, by more than the tolerance: while the switch
/// is off, the value stays within the largest magnitude it had while off; while on, it
/// stays out of that band (unless some training row ran inside it). A status reading
/// spoofed against its flow, or a flow spoofed against its status, contradicts it at
/// once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchBand {
    /// Indices into the model's columns.
    pub gate: usize,
    pub target: usize,
    /// The target's largest magnitude while the gate was off in training.
    pub off_max: f64,
    /// Its smallest magnitude while the gate was on.
    pub on_min: f64,
    /// Its mean magnitude while on: the tolerance is a share of it.
    pub on_mean: f64,
}

impl SwitchBand {
    /// Whether `row` contradicts the switch, beyond `tolerance` times the target's mean
    /// magnitude while on.
    pub fn contradicted(&self, row: &[f64], tolerance: f64) -> bool {
        let (Some(gate), Some(y)) = (row.get(self.gate), row.get(self.target)) else {
            return false;
        };
        let edge = self.off_max + tolerance * self.on_mean;
        if *gate < 0.5 {
            y.abs() > edge
        } else {
            self.on_min > edge && y.abs() <= edge
        }
    }

    pub(crate) fn consistent(&self, columns: usize) -> bool {
        self.gate < columns
            && self.target < columns
            && self.gate != self.target
            && self.on_mean > 0.0
            && [self.off_max, self.on_min, self.on_mean]
                .iter()
                .all(|v| v.is_finite() && *v >= 0.0)
    }
}

/// Each standardised value, then its square, then 1.
fn features(z: &[f64]) -> Vec<f64> {
    z.iter()
        .copied()
        .chain(z.iter().map(|v| v * v))
        .chain(std::iter::once(1.0))
        .collect()
}

/// The relations that hold in `rows` (normal operation, checked finite and
/// `width` wide) to within a quarter of `tolerance` out of sample, and the band of every
/// gated column (whether or not a relation was found for it).
pub fn discover(
    rows: &[Vec<f64>],
    width: usize,
    tolerance: f64,
) -> (Vec<GatedRelation>, Vec<SwitchBand>) {
    let cols: Vec<Vec<f64>> = (0..width)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).copied().unwrap_or(0.0))
                .collect()
        })
        .collect();
    let col = |c: usize| -> &[f64] { cols.get(c).map_or(&[], Vec::as_slice) };
    let n = rows.len() as f64;
    let gates: Vec<usize> = (0..width)
        .filter(|&c| {
            let v = col(c);
            let on = v.iter().filter(|x| **x == 1.0).count() as f64;
            v.iter().all(|x| *x == 0.0 || *x == 1.0)
                && on >= MIN_GATE_SHARE * n
                && on <= (1.0 - MIN_GATE_SHARE) * n
        })
        .collect();
    // Each gated column with the first gate that gates it.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for c in (0..width).filter(|c| !gates.contains(c)) {
        let v = col(c);
        let largest = v.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        if largest <= 0.0 {
            continue;
        }
        let gate = gates.iter().copied().find(|&g| {
            let (mut off, mut off_zero, mut on, mut on_sum) = (0usize, 0usize, 0usize, 0.0);
            for (r, y) in rows.iter().zip(v) {
                if r.get(g).copied().unwrap_or(0.0) < 0.5 {
                    off += 1;
                    if y.abs() <= OFF_NEAR_ZERO * largest {
                        off_zero += 1;
                    }
                } else {
                    on += 1;
                    on_sum += y.abs();
                }
            }
            off > 0
                && off_zero as f64 >= OFF_ROWS * off as f64
                && on_sum / on.max(1) as f64 >= ON_AWAY * largest
        });
        if let Some(g) = gate {
            pairs.push((g, c));
        }
    }
    let bands = pairs
        .iter()
        .map(|&(gate, target)| {
            let (mut off_max, mut on_min, mut on_sum, mut on) =
                (0.0f64, f64::INFINITY, 0.0, 0usize);
            for (r, y) in rows.iter().zip(col(target)) {
                if r.get(gate).copied().unwrap_or(0.0) < 0.5 {
                    off_max = off_max.max(y.abs());
                } else {
                    on_min = on_min.min(y.abs());
                    on_sum += y.abs();
                    on += 1;
                }
            }
            SwitchBand {
                gate,
                target,
                off_max,
                on_min,
                on_mean: on_sum / on.max(1) as f64,
            }
        })
        .filter(|b| b.on_min.is_finite() && b.on_mean > 0.0)
        .collect();
    let candidates: Vec<usize> = (0..width)
        .filter(|c| !gates.contains(c) && !pairs.iter().any(|(_, t)| t == c))
        .filter(|&c| {
            let v = col(c);
            v.iter().any(|x| Some(x) != v.first())
        })
        .collect();
    let relations = pairs
        .into_iter()
        .filter_map(|(gate, target)| {
            let on: Vec<&Vec<f64>> = rows
                .iter()
                .filter(|r| r.get(gate).copied().unwrap_or(0.0) >= 0.5)
                .collect();
            let relation = select(&on, gate, target, &candidates)?;
            (relation.held_out_error <= HELD_OUT_SHARE * tolerance * relation.on_mean)
                .then_some(relation)
        })
        .collect();
    (relations, bands)
}

/// Regressors chosen one at a time, each the candidate that most lowers the held-out
/// error, while it lowers it by at least a fifth: few regressors, each earning its
/// place, so that a relation rests on physics (a pump's suction and discharge
/// pressure) rather than on whatever happened to move with it in the training data.
fn select(
    on: &[&Vec<f64>],
    gate: usize,
    target: usize,
    candidates: &[usize],
) -> Option<GatedRelation> {
    if on.len() < (3 * (2 * MAX_REGRESSORS + 1)).max(50) {
        return None;
    }
    // The search is bounded on wide data: only the candidates that move most with the
    // target (correlation with it, or with their square) are tried.
    let value = |r: &Vec<f64>, c: usize| r.get(c).copied().unwrap_or(0.0);
    let y: Vec<f64> = on.iter().map(|r| value(r, target)).collect();
    let mut ranked: Vec<(f64, usize)> = candidates
        .iter()
        .map(|&c| {
            let x: Vec<f64> = on.iter().map(|r| value(r, c)).collect();
            let m = x.iter().sum::<f64>() / x.len().max(1) as f64;
            let sq: Vec<f64> = x.iter().map(|v| (v - m).powi(2)).collect();
            (correlation(&x, &y).abs().max(correlation(&sq, &y).abs()), c)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let candidates: Vec<usize> = ranked.iter().take(MAX_CANDIDATES).map(|r| r.1).collect();
    let mut chosen: Vec<usize> = Vec::new();
    let mut best = held_out_error(on, target, &chosen)?;
    while chosen.len() < MAX_REGRESSORS {
        let Some((error, c)) = candidates
            .iter()
            .filter(|c| !chosen.contains(c))
            .filter_map(|&c| {
                let mut trial = chosen.clone();
                trial.push(c);
                held_out_error(on, target, &trial).map(|e| (e, c))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
        else {
            break;
        };
        if error > (1.0 - MIN_GAIN) * best {
            break;
        }
        chosen.push(c);
        best = error;
    }
    if chosen.is_empty() {
        return None;
    }
    let mut relation = solve(on, target, &chosen)?;
    relation.gate = gate;
    relation.on_mean = on
        .iter()
        .map(|r| r.get(target).copied().unwrap_or(0.0).abs())
        .sum::<f64>()
        / on.len() as f64;
    relation.held_out_error = best;
    Some(relation)
}

/// Pearson correlation (0 when either side is constant).
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    if saa > 0.0 && sbb > 0.0 {
        sab / (saa * sbb).sqrt()
    } else {
        0.0
    }
}

/// The `HELD_OUT_QUANTILE` quantile of the errors on each contiguous fifth of `on`
/// predicted by a fit on the rest.
fn held_out_error(on: &[&Vec<f64>], target: usize, regressors: &[usize]) -> Option<f64> {
    let value = |r: &Vec<f64>| r.get(target).copied().unwrap_or(0.0);
    let mut errors = Vec::with_capacity(on.len());
    for f in 0..FOLDS {
        let (a, b) = (on.len() * f / FOLDS, on.len() * (f + 1) / FOLDS);
        let train: Vec<&Vec<f64>> = on
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < a || *i >= b)
            .map(|(_, r)| *r)
            .collect();
        let part = solve(&train, target, regressors)?;
        for r in on.get(a..b).unwrap_or_default() {
            errors.push((value(r) - part.expected(r)).abs());
        }
    }
    errors.sort_by(f64::total_cmp);
    let at = ((errors.len() as f64 - 1.0) * HELD_OUT_QUANTILE).round() as usize;
    errors.get(at).copied()
}

/// Ridge regression of `target` on `regressors` (standardised, and their squares) over
/// `rows`; the gate, mean while on and held-out error are left for the caller. None when
/// the equations are singular.
fn solve(rows: &[&Vec<f64>], target: usize, regressors: &[usize]) -> Option<GatedRelation> {
    let p = 2 * regressors.len() + 1;
    let value = |r: &Vec<f64>, c: usize| r.get(c).copied().unwrap_or(0.0);
    let k = rows.len().max(2) as f64;
    let (mean, std): (Vec<f64>, Vec<f64>) = regressors
        .iter()
        .map(|&c| {
            let m = rows.iter().map(|r| value(r, c)).sum::<f64>() / k;
            let v = rows.iter().map(|r| (value(r, c) - m).powi(2)).sum::<f64>() / (k - 1.0);
            (m, v.sqrt().max(1e-9))
        })
        .unzip();
    let mut x = DMatrix::zeros(rows.len(), p);
    for (i, r) in rows.iter().enumerate() {
        let z: Vec<f64> = regressors
            .iter()
            .zip(mean.iter().zip(&std))
            .map(|(&c, (m, s))| (value(r, c) - m) / s)
            .collect();
        for (j, f) in features(&z).into_iter().enumerate() {
            if let Some(slot) = x.get_mut((i, j)) {
                *slot = f;
            }
        }
    }
    let y = DVector::from_iterator(rows.len(), rows.iter().map(|r| value(r, target)));
    let mut a = x.transpose() * &x;
    for d in 0..p - 1 {
        if let Some(v) = a.get_mut((d, d)) {
            *v += RIDGE;
        }
    }
    let w = a.cholesky()?.solve(&(x.transpose() * y));
    Some(GatedRelation {
        gate: 0,
        target,
        regressors: regressors.to_vec(),
        mean,
        std,
        weights: w.iter().copied().collect(),
        on_mean: 0.0,
        held_out_error: 0.0,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;
    use crate::multivariate::{FitOptions, PcaModel};

    /// A deterministic uniform generator for the tests.
    fn uniform(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Hourly rows of a pumping station: suction and discharge pressure, a tank level,
    /// the pump's status (on about two thirds of the time) and flow (on its curve while
    /// on, 0 while off; `speed` scales the curve from row `slowed_from` on), and a valve
    /// flow that is 0 while its valve is shut and otherwise follows nothing measured.
    fn station(n: usize, seed: u64, slowed_from: usize, speed: f64) -> Vec<Vec<f64>> {
        let mut s = seed;
        let mut on = 1.0;
        (0..n)
            .map(|t| {
                if uniform(&mut s) < 0.2 {
                    on = if uniform(&mut s) < 0.67 { 1.0 } else { 0.0 };
                }
                let suction = 2.0 + uniform(&mut s);
                let discharge = 30.0 + 10.0 * uniform(&mut s);
                let level = 1.0 + 4.0 * uniform(&mut s);
                let head = discharge - suction;
                let k = if t >= slowed_from { speed } else { 1.0 };
                let flow =
                    on * (k * 80.0 - 0.02 * head * head / k) + 0.05 * (uniform(&mut s) - 0.5);
                let valve = if uniform(&mut s) < 0.5 { 1.0 } else { 0.0 };
                let valve_flow = valve * (20.0 + 15.0 * uniform(&mut s));
                vec![suction, discharge, level, on, flow, valve, valve_flow]
            })
            .collect()
    }

    fn columns() -> Vec<String> {
        ["P_in", "P_out", "L_T", "S_PU", "F_PU", "S_V", "F_V"]
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    /// The station's model with relations at 5 %, 6 h smoothing and a cross-validated
    /// threshold, checked.
    fn station_model() -> (FitOptions, PcaModel) {
        let options = FitOptions {
            relation_tolerance: 0.05,
            smoothing: 6,
            folds: 5,
            ..FitOptions::default()
        };
        let model = PcaModel::fit(&columns(), &station(3000, 1, usize::MAX, 1.0), options).unwrap();
        model.check().unwrap();
        (options, model)
    }

    #[test]
    fn a_pump_curve_is_found_and_a_noisy_valve_flow_is_not() {
        let rows = station(2000, 1, usize::MAX, 1.0);
        let (found, bands) = discover(&rows, 7, 0.05);
        assert_eq!(found.len(), 1, "{found:?}");
        let r = &found[0];
        assert_eq!((r.gate, r.target), (3, 4));
        // The two pressures (discharge first: it moves the flow most), not the level,
        // which has nothing to do with it, nor the gates or gated columns.
        assert_eq!(r.regressors, vec![1, 0]);
        assert!(r.held_out_error < 0.25 * 0.05 * r.on_mean, "{r:?}");
        assert!(r.consistent(7));
        assert!(!r.consistent(4));
        // Both switches bound their flows, the valve's too (for which no relation holds):
        // off is (nearly) zero, on is far from it.
        assert_eq!(
            bands.iter().map(|b| (b.gate, b.target)).collect::<Vec<_>>(),
            vec![(3, 4), (5, 6)]
        );
        assert!(
            bands[0].off_max < 0.03 && bands[0].on_min > 10.0,
            "{bands:?}"
        );
        assert_eq!(bands[1].off_max, 0.0);
        assert!(bands.iter().all(|b| b.consistent(7) && !b.consistent(4)));
        // Nothing to learn without a switch.
        let no_gates: Vec<Vec<f64>> = rows.iter().map(|r| r[..3].to_vec()).collect();
        let (found, bands_found) = discover(&no_gates, 3, 0.05);
        assert!(found.is_empty() && bands_found.is_empty());
    }

    #[test]
    fn a_slowed_pump_is_an_alarm_at_once_and_blamed_on_its_flow() {
        let (options, model) = station_model();
        assert_eq!(model.relations.len(), 1);
        // Fresh normal hours raise nothing from the relation...
        let mut scorer = model.scorer();
        let normal = station(500, 2, usize::MAX, 1.0);
        let relation_alarms = normal
            .iter()
            .filter(|r| model.relations[0].excess(r, 0.05).is_some_and(|e| e > 1.0))
            .count();
        assert_eq!(relation_alarms, 0);
        for r in &normal {
            scorer.push(r);
        }
        // ...and the first hour the pump runs at 90 % speed is flagged, with its flow
        // as the top contributor.
        let slowed = station(50, 3, 0, 0.9);
        let first_on = slowed.iter().position(|r| r[3] == 1.0).unwrap();
        let mut flagged = None;
        for (i, r) in slowed.iter().enumerate() {
            let s = scorer.push(r).unwrap();
            if i == first_on {
                flagged = Some(s);
            }
        }
        let s = flagged.unwrap();
        assert!(s.flag, "{s:?}");
        let top = (0..7)
            .max_by(|&a, &b| s.contributions[a].total_cmp(&s.contributions[b]))
            .unwrap();
        assert_eq!(top, 4);
        // Without a tolerance, no relation is learnt.
        let plain = PcaModel::fit(
            &columns(),
            &station(3000, 1, usize::MAX, 1.0),
            FitOptions {
                relation_tolerance: 0.0,
                ..options
            },
        )
        .unwrap();
        assert!(plain.relations.is_empty());
    }

    /// A status spoofed against its flow, or a flow against its status, is an alarm at
    /// once, blamed on both; a valve without a relation is bound by its band all the
    /// same; fresh normal rows contradict nothing.
    #[test]
    fn a_switch_contradicted_by_its_flow_is_an_alarm_at_once() {
        let (_, model) = station_model();
        assert_eq!(model.switch_bands.len(), 2);
        let normal = station(2000, 7, usize::MAX, 1.0);
        let contradicted = normal
            .iter()
            .filter(|r| model.switch_bands.iter().any(|b| b.contradicted(r, 0.05)))
            .count();
        assert_eq!(contradicted, 0);
        let mut scorer = model.scorer();
        for r in &normal[..100] {
            scorer.push(r);
        }
        let top_two = |c: &[f64]| {
            let mut order: Vec<usize> = (0..c.len()).collect();
            order.sort_by(|&a, &b| c[b].total_cmp(&c[a]));
            let mut two = order[..2].to_vec();
            two.sort_unstable();
            two
        };
        // The pump's status says off while its flow says it runs...
        let mut row = normal[100].clone();
        (row[3], row[4]) = (0.0, 60.0);
        let s = scorer.push(&row).unwrap();
        assert!(s.flag && top_two(&s.contributions) == vec![3, 4], "{s:?}");
        // ...the valve's status says open while nothing flows through it...
        let mut row = normal[101].clone();
        (row[5], row[6]) = (1.0, 0.0);
        let s = scorer.push(&row).unwrap();
        assert!(s.flag && top_two(&s.contributions) == vec![5, 6], "{s:?}");
        // ...and either way round. A flow within the tolerance of zero while off is not.
        let b = &model.switch_bands[1];
        let mut row = normal[102].clone();
        (row[5], row[6]) = (0.0, 0.04 * b.on_mean);
        assert!(!b.contradicted(&row, 0.05));
        row[6] = 0.06 * b.on_mean;
        assert!(b.contradicted(&row, 0.05));
        // A side the training data contradicted is not held: had the valve run dry
        // while open, its open side says nothing.
        let lax = SwitchBand {
            on_min: 0.0,
            ..b.clone()
        };
        (row[5], row[6]) = (1.0, 0.0);
        assert!(b.contradicted(&row, 0.05) && !lax.contradicted(&row, 0.05));
        // Bands need a tolerance, and must name columns the model has.
        let mut bad = model.clone();
        bad.switch_bands[0].target = 7;
        assert!(bad.check().is_err());
        let mut bad = model;
        bad.options.relation_tolerance = 0.0;
        bad.relations.clear();
        assert!(bad.check().is_err());
    }

    #[test]
    fn relations_round_trip_and_a_broken_one_is_refused() {
        let options = FitOptions {
            relation_tolerance: 0.05,
            ..FitOptions::default()
        };
        let model = PcaModel::fit(&columns(), &station(1000, 4, usize::MAX, 1.0), options).unwrap();
        let text = serde_json::to_string(&model).unwrap();
        let back: PcaModel = serde_json::from_str(&text).unwrap();
        back.check().unwrap();
        assert_eq!(back.relations.len(), 1);
        for r in station(20, 5, 10, 0.8) {
            let (a, b) = (
                back.relations[0].excess(&r, 0.05),
                model.relations[0].excess(&r, 0.05),
            );
            assert_eq!(a.is_some(), b.is_some());
            assert!((a.unwrap_or(0.0) - b.unwrap_or(0.0)).abs() < 1e-9);
        }
        let mut broken = model.clone();
        broken.relations[0].weights.pop();
        assert!(broken.check().is_err());
        let mut off = model.clone();
        off.options.relation_tolerance = 0.0;
        assert!(off.check().is_err(), "relations without a tolerance");
        let e = PcaModel::fit(
            &columns(),
            &station(100, 4, usize::MAX, 1.0),
            FitOptions {
                relation_tolerance: 1.5,
                ..FitOptions::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("relation_tolerance"), "{e}");
    }
}
