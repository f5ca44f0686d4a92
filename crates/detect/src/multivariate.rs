//! Multivariate statistical monitoring: PCA with Hotelling's T² and the squared prediction
//! error (SPE, or Q), with control limits estimated from the training data (the F
//! distribution for T², Jackson and Mudholkar's approximation for SPE), and a dynamic
//! variant that augments each observation with its `lags` predecessors (DPCA, for
//! autocorrelated processes). Every score comes with each variable's contribution.
//!
//! No I/O: rows go in, scores come out. The fitted model is plain data (serde), the
//! versioned artifact that `twinguard detect fit` writes.

use std::collections::VecDeque;

use nalgebra::{DMatrix, SymmetricEigen};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, FisherSnedecor, Normal};

pub use crate::EpisodeClass;

/// The artifact's format name and version, checked when a model is loaded.
pub const FORMAT: &str = "twinguard-detector";
pub const VERSION: u32 = 1;

/// How a model is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitOptions {
    /// Share of the variance the principal components keep (0 < f < 1).
    pub explained_variance: f64,
    /// Confidence of the control limits (for example 0.99).
    pub confidence: f64,
    /// Earlier observations appended to each one (0: static PCA).
    pub lags: usize,
    /// Observations whose scores are averaged before comparing with the limit (1: none).
    pub smoothing: usize,
    /// Cross-validation folds for the alarm threshold (0: the theoretical limits alone).
    /// With k folds, the model is refitted k times without one fold and scores it; the
    /// threshold is the `confidence` quantile of those out-of-sample scores. This keeps
    /// the false-alarm rate honest when many variables (or lags) meet few observations,
    /// where the theoretical limits are too tight.
    pub folds: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            explained_variance: 0.9,
            confidence: 0.99,
            lags: 0,
            smoothing: 1,
            folds: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("{rows} usable training rows for {vars} variables: at least {needed} are needed")]
    TooFewRows {
        rows: usize,
        vars: usize,
        needed: usize,
    },
    #[error("row {row} has {got} values, expected {expected}")]
    Width {
        row: usize,
        got: usize,
        expected: usize,
    },
    #[error("row {row}, column {column:?}: {value} is not a finite number")]
    NotFinite {
        row: usize,
        column: String,
        value: f64,
    },
    #[error("every column is constant in the training data: nothing to learn")]
    AllConstant,
    #[error("bad option: {0}")]
    Option(String),
}

/// A fitted PCA (or DPCA) model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcaModel {
    pub format: String,
    pub version: u32,
    /// The input columns, in order.
    pub columns: Vec<String>,
    /// Columns constant in the training data: left out of the model (named, not lost).
    pub constant_columns: Vec<String>,
    pub options: FitOptions,
    pub trained_rows: usize,
    /// Per model variable (used column × lag): mean and standard deviation.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Index into `columns` of each model variable, and its lag.
    pub variables: Vec<(usize, usize)>,
    /// The retained components (each of `variables.len()` loadings) and their variances.
    pub loadings: Vec<Vec<f64>>,
    pub eigenvalues: Vec<f64>,
    /// The variances of the discarded components (for the SPE limit).
    pub residual_eigenvalues: Vec<f64>,
    pub t2_limit: f64,
    pub spe_limit: f64,
    /// The alarm threshold on the score: 1 (the limits themselves), or cross-validated.
    #[serde(default = "one")]
    pub threshold: f64,
    /// Where the training data came from (filled in by whoever read it).
    #[serde(default)]
    pub training: TrainingInfo,
}

/// The training data's provenance, recorded in the model file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingInfo {
    /// The file's name as given.
    pub source: String,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// Rows left out for missing values.
    pub skipped_rows: usize,
}

fn one() -> f64 {
    1.0
}

/// One observation's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    pub t2: f64,
    pub spe: f64,
    /// max(T²/limit, SPE/limit), averaged over `smoothing` observations: above the
    /// model's threshold is an alarm.
    pub score: f64,
    pub flag: bool,
    /// Per input column, its share of the (limit-normalised) T² and SPE.
    pub contributions: Vec<f64>,
}

impl PcaModel {
    /// Fits the model to `rows` (each `columns.len()` wide) of normal operation.
    pub fn fit(
        columns: &[String],
        rows: &[Vec<f64>],
        options: FitOptions,
    ) -> Result<PcaModel, FitError> {
        if !(options.explained_variance > 0.0 && options.explained_variance < 1.0) {
            return Err(FitError::Option(format!(
                "explained_variance must be between 0 and 1, got {}",
                options.explained_variance
            )));
        }
        if !(options.confidence > 0.5 && options.confidence < 1.0) {
            return Err(FitError::Option(format!(
                "confidence must be between 0.5 and 1, got {}",
                options.confidence
            )));
        }
        if options.smoothing == 0 || options.lags > 64 || options.folds == 1 || options.folds > 20 {
            return Err(FitError::Option(format!(
                "smoothing must be at least 1, lags at most 64 and folds 0 or 2 to 20, got {}, {} and {}",
                options.smoothing, options.lags, options.folds
            )));
        }
        let width = columns.len();
        for (r, row) in rows.iter().enumerate() {
            if row.len() != width {
                return Err(FitError::Width {
                    row: r,
                    got: row.len(),
                    expected: width,
                });
            }
            if let Some((c, v)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(FitError::NotFinite {
                    row: r,
                    column: columns.get(c).cloned().unwrap_or_default(),
                    value: *v,
                });
            }
        }
        // Constant columns carry no information about normal variation.
        let used: Vec<usize> = (0..width)
            .filter(|&c| {
                let first = rows.first().and_then(|r| r.get(c)).copied().unwrap_or(0.0);
                rows.iter()
                    .any(|r| r.get(c).is_some_and(|v| (v - first).abs() > 1e-12))
            })
            .collect();
        if used.is_empty() {
            return Err(FitError::AllConstant);
        }
        let variables: Vec<(usize, usize)> = (0..=options.lags)
            .flat_map(|lag| used.iter().map(move |&c| (c, lag)))
            .collect();
        let m = variables.len();
        let n = rows.len().saturating_sub(options.lags);
        if n < m + 2 || n < 10 {
            return Err(FitError::TooFewRows {
                rows: n,
                vars: m,
                needed: (m + 2).max(10),
            });
        }
        let augmented = |t: usize| -> Vec<f64> {
            variables
                .iter()
                .map(|&(c, lag)| {
                    rows.get(t - lag)
                        .and_then(|r| r.get(c))
                        .copied()
                        .unwrap_or(0.0)
                })
                .collect()
        };
        let data: Vec<Vec<f64>> = (options.lags..rows.len()).map(augmented).collect();
        let mut mean = vec![0.0; m];
        for row in &data {
            for (s, v) in mean.iter_mut().zip(row) {
                *s += v;
            }
        }
        mean.iter_mut().for_each(|s| *s /= n as f64);
        let mut std = vec![0.0; m];
        for row in &data {
            for ((s, v), mu) in std.iter_mut().zip(row).zip(&mean) {
                *s += (v - mu).powi(2);
            }
        }
        std.iter_mut()
            .for_each(|s| *s = (*s / (n as f64 - 1.0)).sqrt().max(1e-12));
        let z = DMatrix::from_fn(n, m, |i, j| {
            let v = data.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0.0);
            (v - mean.get(j).copied().unwrap_or(0.0)) / std.get(j).copied().unwrap_or(1.0)
        });
        let cov = (z.transpose() * &z) / (n as f64 - 1.0);
        let eig = SymmetricEigen::new(cov);
        let value = |i: usize| eig.eigenvalues.get(i).copied().unwrap_or(0.0);
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&a, &b| value(b).total_cmp(&value(a)));
        let values: Vec<f64> = order.iter().map(|&i| value(i).max(0.0)).collect();
        let total: f64 = values.iter().sum();
        let mut k = 0;
        let mut kept = 0.0;
        while k < m - 1 && kept < options.explained_variance * total {
            kept += values.get(k).copied().unwrap_or(0.0);
            k += 1;
        }
        let k = k.max(1);
        let loadings: Vec<Vec<f64>> = order
            .iter()
            .take(k)
            .map(|&i| eig.eigenvectors.column(i).iter().copied().collect())
            .collect();
        let eigenvalues: Vec<f64> = values.iter().take(k).map(|v| v.max(1e-12)).collect();
        let residual_eigenvalues: Vec<f64> = values.iter().skip(k).copied().collect();
        let t2_limit = t2_limit(k, n, options.confidence);
        let spe_limit = spe_limit(&residual_eigenvalues, options.confidence);
        let threshold = if options.folds >= 2 {
            cross_validated_threshold(columns, rows, options)?
        } else {
            1.0
        };
        Ok(PcaModel {
            format: FORMAT.to_string(),
            version: VERSION,
            columns: columns.to_vec(),
            constant_columns: (0..width)
                .filter(|c| !used.contains(c))
                .filter_map(|c| columns.get(c).cloned())
                .collect(),
            options,
            trained_rows: rows.len(),
            mean,
            std,
            variables,
            loadings,
            eigenvalues,
            residual_eigenvalues,
            t2_limit,
            spe_limit,
            threshold,
            training: TrainingInfo::default(),
        })
    }

    /// Checks a loaded model's format, version and internal consistency.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT || self.version != VERSION {
            return Err(format!(
                "model format {:?} version {} is not {FORMAT:?} version {VERSION}",
                self.format, self.version
            ));
        }
        let m = self.variables.len();
        let consistent = self.mean.len() == m
            && self.std.len() == m
            && self.loadings.len() == self.eigenvalues.len()
            && self.loadings.iter().all(|l| l.len() == m)
            && self
                .variables
                .iter()
                .all(|&(c, lag)| c < self.columns.len() && lag <= self.options.lags)
            && self.std.iter().chain(&self.eigenvalues).all(|v| *v > 0.0)
            && self.t2_limit > 0.0
            && self.spe_limit > 0.0
            && self.threshold > 0.0
            && self.options.smoothing >= 1;
        if consistent {
            Ok(())
        } else {
            Err("the model's arrays do not fit together".to_string())
        }
    }

    /// A streaming scorer for this model.
    pub fn scorer(&self) -> Scorer<'_> {
        Scorer {
            model: self,
            stream: Stream::default(),
        }
    }
}

/// Scores observations one at a time (it keeps the lags and the smoothing window).
#[derive(Debug, Clone)]
pub struct Scorer<'a> {
    model: &'a PcaModel,
    stream: Stream,
}

impl Scorer<'_> {
    /// The score of `row` (one value per model column). None until `lags` earlier rows
    /// have been seen. Non-finite values must be handled by the caller.
    pub fn push(&mut self, row: &[f64]) -> Option<Score> {
        self.stream.push(self.model, row)
    }
}

/// What scoring a stream of observations remembers (the lags and the smoothing window),
/// apart from the model: for an owner that keeps the model beside it.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    history: VecDeque<Vec<f64>>,
    recent: VecDeque<f64>,
}

impl Stream {
    /// See [`Scorer::push`].
    pub fn push(&mut self, m: &PcaModel, row: &[f64]) -> Option<Score> {
        self.history.push_front(row.to_vec());
        self.history.truncate(m.options.lags + 1);
        if self.history.len() <= m.options.lags {
            return None;
        }
        let z: Vec<f64> = m
            .variables
            .iter()
            .zip(m.mean.iter().zip(&m.std))
            .map(|(&(c, lag), (mu, sd))| {
                let v = self
                    .history
                    .get(lag)
                    .and_then(|r| r.get(c))
                    .copied()
                    .unwrap_or(*mu);
                (v - mu) / sd
            })
            .collect();
        let t: Vec<f64> = m
            .loadings
            .iter()
            .map(|p| p.iter().zip(&z).map(|(a, b)| a * b).sum())
            .collect();
        let t2: f64 = t
            .iter()
            .zip(&m.eigenvalues)
            .map(|(ti, l)| ti * ti / l)
            .sum();
        let mut residual = z.clone();
        for (p, ti) in m.loadings.iter().zip(&t) {
            for (r, pj) in residual.iter_mut().zip(p) {
                *r -= pj * ti;
            }
        }
        let spe: f64 = residual.iter().map(|e| e * e).sum();
        // Contributions: SPE's squared residuals; T²'s complete decomposition
        // z_j * sum_i p_ij t_i / lambda_i (they sum to T²), each over its limit.
        let mut contributions = vec![0.0; m.columns.len()];
        for (j, &(c, _)) in m.variables.iter().enumerate() {
            let zj = z.get(j).copied().unwrap_or(0.0);
            let t2c: f64 = m
                .loadings
                .iter()
                .zip(&t)
                .zip(&m.eigenvalues)
                .map(|((p, ti), l)| p.get(j).copied().unwrap_or(0.0) * ti / l)
                .sum::<f64>()
                * zj;
            let e = residual.get(j).copied().unwrap_or(0.0);
            if let Some(slot) = contributions.get_mut(c) {
                *slot += t2c.max(0.0) / m.t2_limit + e * e / m.spe_limit;
            }
        }
        let raw = (t2 / m.t2_limit).max(spe / m.spe_limit);
        self.recent.push_back(raw);
        if self.recent.len() > m.options.smoothing {
            self.recent.pop_front();
        }
        let score = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        Some(Score {
            t2,
            spe,
            score,
            flag: score > m.threshold,
            contributions,
        })
    }
}

/// A model made outside this crate (an admitted ONNX graph) that scores one row at a
/// time: its raw score and each column's contribution to it. Its scores are smoothed and
/// compared with its threshold by [`RowStream`].
pub trait RowModel: Send + std::fmt::Debug {
    /// The input columns, in order.
    fn columns(&self) -> &[String];
    /// A smoothed score above this is an alarm.
    fn threshold(&self) -> f64;
    /// Scores averaged over this many rows (at least 1).
    fn smoothing(&self) -> usize;
    /// One row's raw score and per-column contributions (`columns().len()` of them).
    fn score(&self, row: &[f64]) -> Result<(f64, Vec<f64>), String>;
}

/// The smoothing window of a [`RowModel`]'s scores.
#[derive(Debug, Clone, Default)]
pub struct RowStream {
    recent: VecDeque<f64>,
}

impl RowStream {
    /// The verdict on `row`. The raw score is reported as the SPE (a model's own
    /// measure of how far a row is from normal), and T² is zero.
    pub fn push(&mut self, m: &dyn RowModel, row: &[f64]) -> Result<Score, String> {
        let (raw, contributions) = m.score(row)?;
        if !raw.is_finite() {
            return Err(format!("the model's score is {raw}"));
        }
        self.recent.push_back(raw);
        if self.recent.len() > m.smoothing().max(1) {
            self.recent.pop_front();
        }
        let score = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        Ok(Score {
            t2: 0.0,
            spe: raw,
            score,
            flag: score > m.threshold(),
            contributions,
        })
    }
}

/// Follows alarm episodes (runs of flagged observations) and classifies each from its
/// accumulated evidence so far.
#[derive(Debug, Clone, Default)]
pub struct Episodes {
    contributions: Vec<f64>,
    t2: f64,
    spe: f64,
}

/// Share of the contributions one signal must carry for a sensor fault.
const SENSOR_SHARE: f64 = 0.6;

impl Episodes {
    /// The class of the episode `score` belongs to, and its top contributors (at most
    /// three, largest first, as indices into the model's columns).
    pub fn push(&mut self, model: &PcaModel, score: &Score) -> (EpisodeClass, Vec<usize>) {
        self.push_limits(model.t2_limit, model.spe_limit, score)
    }

    /// [`Episodes::push`] for a score whose T² and SPE are measured against these limits
    /// (a model with no T² gives an infinite limit).
    pub fn push_limits(
        &mut self,
        t2_limit: f64,
        spe_limit: f64,
        score: &Score,
    ) -> (EpisodeClass, Vec<usize>) {
        if !score.flag {
            *self = Episodes::default();
            return (EpisodeClass::Normal, Vec::new());
        }
        if self.contributions.len() != score.contributions.len() {
            self.contributions = vec![0.0; score.contributions.len()];
        }
        for (a, c) in self.contributions.iter_mut().zip(&score.contributions) {
            *a += c;
        }
        self.t2 += score.t2 / t2_limit;
        self.spe += score.spe / spe_limit;
        let at = |i: usize| self.contributions.get(i).copied().unwrap_or(0.0);
        // Only signals that contributed are named (a model that gives no contributions
        // names none).
        let mut order: Vec<usize> = (0..self.contributions.len())
            .filter(|&i| at(i) > 0.0)
            .collect();
        order.sort_by(|&a, &b| at(b).total_cmp(&at(a)));
        let total: f64 = self.contributions.iter().sum();
        let top_share = order
            .first()
            .map_or(0.0, |&i| at(i) / total.max(f64::MIN_POSITIVE));
        let class = if self.spe >= self.t2 && top_share >= SENSOR_SHARE {
            EpisodeClass::SensorFault
        } else if self.t2 > self.spe {
            EpisodeClass::ProcessUpset
        } else {
            EpisodeClass::Unknown
        };
        order.truncate(3);
        (class, order)
    }
}

/// The `confidence` quantile of out-of-fold scores (see [`FitOptions::folds`]).
fn cross_validated_threshold(
    columns: &[String],
    rows: &[Vec<f64>],
    options: FitOptions,
) -> Result<f64, FitError> {
    let n = rows.len();
    let folds = options.folds;
    let warm = options.lags + options.smoothing;
    let mut scores = Vec::with_capacity(n);
    for f in 0..folds {
        let (a, b) = (n * f / folds, n * (f + 1) / folds);
        let train: Vec<Vec<f64>> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < a || *i >= b)
            .map(|(_, r)| r.clone())
            .collect();
        let model = PcaModel::fit(
            columns,
            &train,
            FitOptions {
                folds: 0,
                ..options
            },
        )?;
        let mut scorer = model.scorer();
        // Lags and smoothing start from the observations just before the fold.
        for r in rows.get(a.saturating_sub(warm)..a).unwrap_or_default() {
            scorer.push(r);
        }
        for r in rows.get(a..b).unwrap_or_default() {
            if let Some(s) = scorer.push(r) {
                scores.push(s.score);
            }
        }
    }
    scores.sort_by(f64::total_cmp);
    let at = ((scores.len() as f64 - 1.0) * options.confidence).round() as usize;
    Ok(scores.get(at).copied().filter(|t| *t > 0.0).unwrap_or(1.0))
}

/// Hotelling's T² limit for `k` components from `n` observations:
/// k (n-1)(n+1) / (n (n-k)) F(k, n-k).
fn t2_limit(k: usize, n: usize, confidence: f64) -> f64 {
    let (kf, nf) = (k as f64, n as f64);
    let f = FisherSnedecor::new(kf, nf - kf)
        .map(|d| d.inverse_cdf(confidence))
        .unwrap_or(f64::NAN);
    let limit = kf * (nf - 1.0) * (nf + 1.0) / (nf * (nf - kf)) * f;
    if limit.is_finite() && limit > 0.0 {
        limit
    } else {
        kf * 10.0
    }
}

/// Jackson and Mudholkar's limit for the SPE, from the discarded variances.
fn spe_limit(residual: &[f64], confidence: f64) -> f64 {
    let theta = |i: i32| residual.iter().map(|l| l.powi(i)).sum::<f64>();
    let (t1, t2, t3) = (theta(1), theta(2), theta(3));
    if t1 <= 1e-12 || t2 <= 0.0 {
        return 1e-6;
    }
    let h0 = 1.0 - 2.0 * t1 * t3 / (3.0 * t2 * t2);
    let c = Normal::standard().inverse_cdf(confidence);
    let limit = t1
        * (c * (2.0 * t2 * h0 * h0).sqrt() / t1 + 1.0 + t2 * h0 * (h0 - 1.0) / (t1 * t1))
            .powf(1.0 / h0);
    if limit.is_finite() && limit > 0.0 {
        limit
    } else {
        t1 * 3.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    /// A deterministic pseudo-random normal stream (no RNG dependency in the library).
    fn normals(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed;
        let mut uniform = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (uniform().max(1e-300), uniform());
                (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
            })
            .collect()
    }

    /// Five correlated signals driven by two latent factors, plus noise, and a constant.
    fn process(seed: u64, n: usize) -> Vec<Vec<f64>> {
        let e = normals(seed, n * 7);
        (0..n)
            .map(|i| {
                let e = &e[7 * i..7 * i + 7];
                let (a, b) = (e[0], e[1]);
                vec![
                    10.0 + a + 0.05 * e[2],
                    5.0 + a + 0.05 * e[3],
                    -2.0 + 2.0 * a + 0.05 * e[4],
                    b + 0.05 * e[5],
                    3.0 - b + 0.05 * e[6],
                    7.0,
                ]
            })
            .collect()
    }

    fn cols() -> Vec<String> {
        ["a1", "a2", "a3", "b1", "b2", "constant"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn limits_hold_their_confidence_on_fresh_normal_data() {
        let model = PcaModel::fit(&cols(), &process(1, 2000), FitOptions::default()).unwrap();
        assert_eq!(model.constant_columns, vec!["constant".to_string()]);
        assert_eq!(model.eigenvalues.len(), 2, "two latent factors");
        let mut s = model.scorer();
        let test = process(2, 20_000);
        let alarms = test.iter().filter(|r| s.push(r).unwrap().flag).count();
        let rate = alarms as f64 / test.len() as f64;
        // Two statistics at 99% each: at most about 2% false alarms.
        assert!(rate > 0.002 && rate < 0.03, "false alarm rate {rate}");
    }

    #[test]
    fn a_broken_relation_is_flagged_and_blamed_on_its_signal() {
        let model = PcaModel::fit(&cols(), &process(3, 1000), FitOptions::default()).unwrap();
        let mut s = model.scorer();
        let mut row = process(4, 1).remove(0);
        // Signal a2 drifts away from what a1 and a3 say it must be.
        row[1] += 0.5;
        let score = s.push(&row).unwrap();
        assert!(score.flag, "{score:?}");
        let top = (0..6)
            .max_by(|&x, &y| score.contributions[x].total_cmp(&score.contributions[y]))
            .unwrap();
        assert_eq!(top, 1, "{score:?}");
        assert!(score.spe > model.spe_limit, "{score:?}");
    }

    #[test]
    fn dynamic_pca_waits_for_its_lags_and_round_trips_as_json() {
        let options = FitOptions {
            lags: 2,
            ..FitOptions::default()
        };
        let model = PcaModel::fit(&cols(), &process(5, 500), options).unwrap();
        assert_eq!(model.variables.len(), 15);
        let text = serde_json::to_string(&model).unwrap();
        let back: PcaModel = serde_json::from_str(&text).unwrap();
        back.check().unwrap();
        let mut s = back.scorer();
        let rows = process(6, 3);
        assert!(s.push(&rows[0]).is_none() && s.push(&rows[1]).is_none());
        assert!(s.push(&rows[2]).is_some());
    }

    /// With many lags on few observations the theoretical limits are too tight; the
    /// cross-validated threshold restores the false-alarm rate on fresh normal data.
    #[test]
    fn a_cross_validated_threshold_keeps_false_alarms_honest() {
        let rows = process(8, 150);
        let fresh = process(9, 5000);
        let rate = |model: &PcaModel| {
            let mut s = model.scorer();
            let flags: Vec<bool> = fresh
                .iter()
                .filter_map(|r| s.push(r))
                .map(|s| s.flag)
                .collect();
            flags.iter().filter(|f| **f).count() as f64 / flags.len() as f64
        };
        let tight = FitOptions {
            lags: 4,
            ..FitOptions::default()
        };
        let theoretical = PcaModel::fit(&cols(), &rows, tight).unwrap();
        let validated = PcaModel::fit(&cols(), &rows, FitOptions { folds: 5, ..tight }).unwrap();
        assert_eq!(theoretical.threshold, 1.0);
        assert!(validated.threshold > 1.0, "{}", validated.threshold);
        let (before, after) = (rate(&theoretical), rate(&validated));
        assert!(after < before && after < 0.03, "{before} -> {after}");
    }

    #[test]
    fn episodes_tell_a_sensor_fault_from_a_process_upset() {
        let model = PcaModel::fit(&cols(), &process(10, 1000), FitOptions::default()).unwrap();
        let mut s = model.scorer();
        let mut episodes = Episodes::default();
        // One sensor reads off: only it breaks the relations.
        let mut row = process(11, 1).remove(0);
        row[1] += 0.5;
        let (class, top) = episodes.push(&model, &s.push(&row).unwrap());
        assert_eq!(
            (class, top.first().copied()),
            (EpisodeClass::SensorFault, Some(1))
        );
        // The process moves along its own structure, far beyond its range: every signal
        // of factor a agrees.
        let mut episodes = Episodes::default();
        let mut row = process(12, 1).remove(0);
        for (i, k) in [(0, 1.0), (1, 1.0), (2, 2.0)] {
            row[i] += 6.0 * k;
        }
        let (class, _) = episodes.push(&model, &s.push(&row).unwrap());
        assert_eq!(class, EpisodeClass::ProcessUpset);
        let normal = process(13, 1).remove(0);
        let score = s.push(&normal).unwrap();
        assert_eq!(
            episodes.push(&model, &score).0,
            EpisodeClass::Normal,
            "{score:?}"
        );
    }

    #[test]
    fn bad_training_data_is_refused_with_the_reason() {
        let mut rows = process(7, 100);
        rows[5][1] = f64::NAN;
        let e = PcaModel::fit(&cols(), &rows, FitOptions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "row 5, column \"a2\": NaN is not a finite number"
        );
        let e = PcaModel::fit(&cols(), &process(7, 5), FitOptions::default()).unwrap_err();
        assert!(matches!(e, FitError::TooFewRows { .. }), "{e}");
        let e = PcaModel::fit(&cols(), &vec![vec![1.0; 3]; 20], FitOptions::default()).unwrap_err();
        assert!(
            matches!(
                e,
                FitError::Width {
                    row: 0,
                    got: 3,
                    expected: 6
                }
            ),
            "{e}"
        );
    }
}
