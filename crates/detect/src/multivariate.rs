//! Multivariate statistical monitoring: PCA with Hotelling's T² and the squared prediction
//! error (SPE, or Q), with control limits estimated from the training data (the F
//! distribution for T², Jackson and Mudholkar's approximation for SPE), and a dynamic
//! variant that augments each observation with its `lags` predecessors (DPCA, for
//! autocorrelated processes). Every score comes with each variable's contribution.
//!
//! No I/O: rows go in, scores come out. The fitted model is plain data (serde), the
//! versioned artifact that `twinguard detect fit` writes.

use std::collections::VecDeque;
use std::sync::OnceLock;

use nalgebra::{DMatrix, SymmetricEigen};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, FisherSnedecor, Normal};

use crate::gated::{self, GatedRelation, SwitchBand};

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
    /// Ridge penalty of a learned one-step predictor (0: none). With a penalty, the model
    /// first learns to predict each column's next value from the previous row (ridge
    /// regression on standardised columns), and PCA monitors the prediction errors (the
    /// innovations) instead of the values: what the process's own dynamics explain is
    /// taken out before monitoring, and a break in them (a replayed or frozen signal that
    /// no longer follows the others) stands out.
    pub ridge: f64,
    /// How the cross-validation folds are cut: 0, each fold one contiguous stretch of the
    /// training rows (the honest estimate when the future may differ from every part of
    /// the past); n, blocks of n rows dealt to the folds in turn, so that each held-out
    /// block has training rows from the same period around it (for learning from a plant
    /// that moved between operating points it keeps visiting).
    pub fold_block_rows: usize,
    /// Relations that hold while a switch is on (`gated`: a pump's flow while it runs,
    /// from the pressures around it) are learnt when this is above 0, and a row whose
    /// gated value strays from its relation by more than this share of the value's mean
    /// while on is an alarm at once (0.05: five per cent). 0: none.
    pub relation_tolerance: f64,
    /// Alarm off-delay, in observations (0: none): once raised, an alarm stays raised
    /// until the score has stayed at or below the threshold for this many observations
    /// more (the off-delay of ISA-18.2 alarm management). An attack or fault whose score
    /// dips for an hour or two then reads as one alarm, not several; the alarm ends that
    /// many observations after its evidence does.
    pub off_delay: usize,
    /// Hold the columns that were constant in the training data to their value: a row
    /// in which one departs from it (by more than a millionth of its magnitude, or of 1
    /// for values under 1) is an alarm at once, blamed on that column. A pump never run,
    /// a valve never moved, a setpoint never changed in all of the plant's history is
    /// worth a look the first time it does. Off: such columns are left out unseen.
    pub hold_constants: bool,
}

/// The longest off-delay a model may have, in observations.
pub const MAX_OFF_DELAY: usize = 10_000;

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            explained_variance: 0.9,
            confidence: 0.99,
            lags: 0,
            smoothing: 1,
            folds: 0,
            ridge: 0.0,
            fold_block_rows: 0,
            relation_tolerance: 0.0,
            off_delay: 0,
            hold_constants: false,
        }
    }
}

/// What a broken rule (a switch contradicted, a constant that departed) counts for: the
/// row's score is raised to this many times the threshold, and this is added to each
/// column it involves.
pub const RULE_EXCESS: f64 = 2.0;

/// A held constant departs when it moves by more than this share of its magnitude (or
/// of 1, for magnitudes under 1).
const HOLD_TOLERANCE: f64 = 1e-6;

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
    /// The learned one-step predictor whose errors the PCA monitors (`options.ridge`
    /// above 0), absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictor: Option<Predictor>,
    /// The relations that hold while a switch is on (`options.relation_tolerance` above
    /// 0; there may be none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relations: Vec<GatedRelation>,
    /// What each switch says of the value it gates (learnt with the relations, for every
    /// gated column).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub switch_bands: Vec<SwitchBand>,
    /// The columns constant in the training data, each with its value (index into
    /// `columns`), held to it (`options.hold_constants`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_constant: Vec<(usize, f64)>,
    /// What isolating a column costs to set up, worked out from the loadings the first
    /// time a row is flagged (not part of the artifact).
    #[serde(skip)]
    isolation: IsolationCache,
}

/// Per model column: its variables (its lags) and the inverse of the residual projector
/// (I − P Pᵀ) restricted to them, row-major; None for a column that cannot be isolated
/// (too many lags, or a projector that is singular there). It depends on the loadings and
/// variables alone, so it is worked out once per model; a clone starts without it.
#[derive(Default)]
struct IsolationCache(OnceLock<Vec<Option<ColumnIsolation>>>);

/// One column's variables and the inverse of the residual projector restricted to them.
struct ColumnIsolation {
    vars: Vec<usize>,
    /// Row-major, `vars.len()` squared.
    inverse: Vec<f64>,
}

impl Clone for IsolationCache {
    fn clone(&self) -> Self {
        IsolationCache::default()
    }
}

impl PartialEq for IsolationCache {
    /// A cache says nothing about the model: any two are equal.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for IsolationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IsolationCache")
    }
}

/// A one-step predictor learned by ridge regression: each used column's next value,
/// standardised, from the previous row's standardised used columns and an intercept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predictor {
    /// Index into the model's `columns` of each column it predicts from and predicts.
    pub used: Vec<usize>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Per used column: its coefficients on the previous row's used columns, then the
    /// intercept.
    pub weights: Vec<Vec<f64>>,
}

impl Predictor {
    /// Fits on `rows` (already checked: `width` finite values each), consecutive except
    /// across `breaks` (see [`PcaModel::fit_segments`]).
    fn fit(
        rows: &[Vec<f64>],
        breaks: &[usize],
        width: usize,
        ridge: f64,
    ) -> Result<Predictor, FitError> {
        let used = varying_columns(rows, width);
        let u = used.len();
        let pairs = consecutive_pairs(rows.len(), breaks);
        let n = pairs.len();
        if u == 0 {
            return Err(FitError::AllConstant);
        }
        if n < u + 2 || n < 10 {
            return Err(FitError::TooFewRows {
                rows: n,
                vars: u,
                needed: (u + 2).max(10),
            });
        }
        let value = |r: usize, c: usize| rows.get(r).and_then(|row| row.get(c)).copied();
        let mut mean = vec![0.0; u];
        let mut std = vec![0.0; u];
        for (j, &c) in used.iter().enumerate() {
            let vals: Vec<f64> = (0..rows.len()).filter_map(|r| value(r, c)).collect();
            let mu = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
            let var =
                vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / (vals.len().max(2) - 1) as f64;
            if let (Some(m), Some(s)) = (mean.get_mut(j), std.get_mut(j)) {
                *m = mu;
                *s = var.sqrt().max(1e-12);
            }
        }
        let z = |r: usize, j: usize| {
            let c = used.get(j).copied().unwrap_or(0);
            (value(r, c).unwrap_or(0.0) - mean.get(j).copied().unwrap_or(0.0))
                / std.get(j).copied().unwrap_or(1.0)
        };
        // Normal equations with the penalty on the slopes, not the intercept.
        let at = |i: usize| pairs.get(i).copied().unwrap_or(0);
        let x = DMatrix::from_fn(n, u + 1, |i, j| if j < u { z(at(i), j) } else { 1.0 });
        let y = DMatrix::from_fn(n, u, |i, j| z(at(i) + 1, j));
        let mut a = x.transpose() * &x;
        for d in 0..u {
            if let Some(v) = a.get_mut((d, d)) {
                *v += ridge;
            }
        }
        let b = x.transpose() * y;
        let w = a.cholesky().map(|c| c.solve(&b)).ok_or_else(|| {
            FitError::Option(format!(
                "ridge {ridge}: the predictor's equations are singular"
            ))
        })?;
        Ok(Predictor {
            weights: (0..u)
                .map(|j| w.column(j).iter().copied().collect())
                .collect(),
            used,
            mean,
            std,
        })
    }

    /// The prediction errors of `row` given `previous`, standardised, in the model's
    /// column layout (zero for the columns it does not use).
    pub fn innovation(&self, previous: &[f64], row: &[f64]) -> Vec<f64> {
        let standard = |r: &[f64], j: usize, c: usize| {
            (r.get(c).copied().unwrap_or(0.0) - self.mean.get(j).copied().unwrap_or(0.0))
                / self.std.get(j).copied().unwrap_or(1.0)
        };
        let before: Vec<f64> = self
            .used
            .iter()
            .enumerate()
            .map(|(j, &c)| standard(previous, j, c))
            .chain(std::iter::once(1.0))
            .collect();
        let mut out = vec![0.0; row.len()];
        for ((j, &c), w) in self.used.iter().enumerate().zip(&self.weights) {
            let predicted: f64 = w.iter().zip(&before).map(|(a, b)| a * b).sum();
            if let Some(slot) = out.get_mut(c) {
                *slot = standard(row, j, c) - predicted;
            }
        }
        out
    }

    fn consistent(&self, columns: usize) -> bool {
        let u = self.used.len();
        u > 0
            && self.mean.len() == u
            && self.std.len() == u
            && self.weights.len() == u
            && self.weights.iter().all(|w| w.len() == u + 1)
            && self.used.iter().all(|c| *c < columns)
            && self.std.iter().all(|s| *s > 0.0)
            && self
                .weights
                .iter()
                .flatten()
                .chain(&self.mean)
                .all(|v| v.is_finite())
    }
}

/// The rows r whose successor r + 1 follows them in time (is not across a break).
fn consecutive_pairs(rows: usize, breaks: &[usize]) -> Vec<usize> {
    (0..rows.saturating_sub(1))
        .filter(|r| breaks.binary_search(&(r + 1)).is_err())
        .collect()
}

/// Whether rows `a..=b` follow one another in time (no break after `a` up to `b`).
fn same_segment(breaks: &[usize], a: usize, b: usize) -> bool {
    let first_after = breaks.partition_point(|&s| s <= a);
    breaks.get(first_after).is_none_or(|&s| s > b)
}

/// The columns that vary in `rows` (constant ones carry no information about normal
/// variation).
fn varying_columns(rows: &[Vec<f64>], width: usize) -> Vec<usize> {
    (0..width)
        .filter(|&c| {
            let first = rows.first().and_then(|r| r.get(c)).copied().unwrap_or(0.0);
            rows.iter()
                .any(|r| r.get(c).is_some_and(|v| (v - first).abs() > 1e-12))
        })
        .collect()
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
    /// An alarm: the score is above the threshold, or was within the model's off-delay.
    pub flag: bool,
    /// Per input column, its share of the (limit-normalised) T² and SPE.
    pub contributions: Vec<f64>,
    /// For a flagged PCA score: the one column that, reconstructed from the others,
    /// removes the most SPE, and the SPE left after it. A single faulty sensor leaves
    /// the rest within the SPE limit; a process that moved leaves more.
    pub isolated: Option<Isolated>,
}

/// Reconstruction-based isolation of a score's SPE (Dunia and Qin, 1998): replace one
/// column's values (every lag of it) by what the model's other variables say they should
/// be, and see how much SPE remains.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Isolated {
    /// Index into the model's columns.
    pub column: usize,
    /// The SPE once that column is reconstructed.
    pub spe_left: f64,
}

impl PcaModel {
    /// Fits the model to `rows` (each `columns.len()` wide) of normal operation, one
    /// after the other in time.
    pub fn fit(
        columns: &[String],
        rows: &[Vec<f64>],
        options: FitOptions,
    ) -> Result<PcaModel, FitError> {
        PcaModel::fit_segments(columns, rows, &[], options)
    }

    /// [`PcaModel::fit`] on rows in segments: `breaks` are the indices of the rows that
    /// do not follow the row before them (the first row after a gap in the history, or
    /// after hours left out). No lag, prediction or smoothing window reaches across a
    /// break: a jump between two segments is not taken for the process's dynamics.
    pub fn fit_segments(
        columns: &[String],
        rows: &[Vec<f64>],
        breaks: &[usize],
        options: FitOptions,
    ) -> Result<PcaModel, FitError> {
        let mut breaks: Vec<usize> = breaks
            .iter()
            .copied()
            .filter(|&b| b > 0 && b < rows.len())
            .collect();
        breaks.sort_unstable();
        breaks.dedup();
        if options.off_delay > MAX_OFF_DELAY {
            return Err(FitError::Option(format!(
                "off_delay must be at most {MAX_OFF_DELAY} observations, got {}",
                options.off_delay
            )));
        }
        let tolerance = options.relation_tolerance;
        if !(0.0..1.0).contains(&tolerance) {
            return Err(FitError::Option(format!(
                "relation_tolerance must be 0 (none) or between 0 and 1, got {tolerance}"
            )));
        }
        let mut model = PcaModel::fit_pca(
            columns,
            rows,
            &breaks,
            FitOptions {
                relation_tolerance: 0.0,
                ..options
            },
        )?;
        model.options.relation_tolerance = tolerance;
        if tolerance > 0.0 {
            (model.relations, model.switch_bands) = gated::discover(rows, columns.len(), tolerance);
        }
        if options.hold_constants {
            let varying = varying_columns(rows, columns.len());
            model.held_constant = (0..columns.len())
                .filter(|c| !varying.contains(c))
                .filter_map(|c| rows.first().and_then(|r| r.get(c)).map(|v| (c, *v)))
                .collect();
        }
        Ok(model)
    }

    /// [`PcaModel::fit_segments`] without the gated relations (`breaks` sorted, each
    /// within the rows).
    fn fit_pca(
        columns: &[String],
        rows: &[Vec<f64>],
        breaks: &[usize],
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
        if !(options.ridge >= 0.0 && options.ridge.is_finite()) {
            return Err(FitError::Option(format!(
                "ridge must be 0 (no predictor) or a positive number, got {}",
                options.ridge
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
        if options.ridge > 0.0 {
            let predictor = Predictor::fit(rows, breaks, width, options.ridge)?;
            let pairs = consecutive_pairs(rows.len(), breaks);
            let innovations: Vec<Vec<f64>> = pairs
                .iter()
                .filter_map(|&r| Some(predictor.innovation(rows.get(r)?, rows.get(r + 1)?)))
                .collect();
            // The innovations break where their pairs do not follow one another.
            let innovation_breaks: Vec<usize> = (1..pairs.len())
                .filter(|&j| pairs.get(j) != pairs.get(j - 1).map(|p| p + 1).as_ref())
                .collect();
            let mut model = PcaModel::fit_pca(
                columns,
                &innovations,
                &innovation_breaks,
                FitOptions {
                    ridge: 0.0,
                    folds: 0,
                    ..options
                },
            )?;
            model.options = options;
            model.trained_rows = rows.len();
            model.constant_columns = (0..width)
                .filter(|c| !predictor.used.contains(c))
                .filter_map(|c| columns.get(c).cloned())
                .collect();
            model.predictor = Some(predictor);
            if options.folds >= 2 {
                model.threshold = cross_validated_threshold(columns, rows, breaks, options)?;
            }
            return Ok(model);
        }
        // Constant columns carry no information about normal variation.
        let used = varying_columns(rows, width);
        if used.is_empty() {
            return Err(FitError::AllConstant);
        }
        let variables: Vec<(usize, usize)> = (0..=options.lags)
            .flat_map(|lag| used.iter().map(move |&c| (c, lag)))
            .collect();
        let m = variables.len();
        // The observations whose lags lie in their own segment.
        let observed: Vec<usize> = (options.lags..rows.len())
            .filter(|&t| same_segment(breaks, t - options.lags, t))
            .collect();
        let n = observed.len();
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
        let data: Vec<Vec<f64>> = observed.into_iter().map(augmented).collect();
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
            cross_validated_threshold(columns, rows, breaks, options)?
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
            predictor: None,
            relations: Vec::new(),
            switch_bands: Vec::new(),
            held_constant: Vec::new(),
            isolation: IsolationCache::default(),
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
            && self.options.smoothing >= 1
            && self.options.off_delay <= MAX_OFF_DELAY
            && match &self.predictor {
                Some(p) => self.options.ridge > 0.0 && p.consistent(self.columns.len()),
                None => self.options.ridge == 0.0,
            }
            && (self.options.relation_tolerance > 0.0 && self.options.relation_tolerance < 1.0
                || self.options.relation_tolerance == 0.0
                    && self.relations.is_empty()
                    && self.switch_bands.is_empty())
            && self
                .relations
                .iter()
                .all(|r| r.consistent(self.columns.len()))
            && self
                .switch_bands
                .iter()
                .all(|b| b.consistent(self.columns.len()))
            && (self.options.hold_constants || self.held_constant.is_empty())
            && self
                .held_constant
                .iter()
                .all(|(c, v)| *c < self.columns.len() && v.is_finite());
        if consistent {
            Ok(())
        } else {
            Err("the model's arrays do not fit together".to_string())
        }
    }

    /// The rules in words: each switch band ("pump bounds flow") and each held constant
    /// ("spare = 0"), as `detect fit` and `bench batadal` report them.
    pub fn rules_described(&self) -> (Vec<String>, Vec<String>) {
        let name = |c: usize| self.columns.get(c).cloned().unwrap_or_default();
        (
            self.switch_bands
                .iter()
                .map(|b| format!("{} bounds {}", name(b.gate), name(b.target)))
                .collect(),
            self.held_constant
                .iter()
                .map(|(c, v)| format!("{} = {v}", name(*c)))
                .collect(),
        )
    }

    /// Rows a scorer needs before its scores are fully formed: the lags, the predictor's
    /// previous row and the smoothing window.
    pub fn warm_up(&self) -> usize {
        self.options.lags + usize::from(self.predictor.is_some()) + self.options.smoothing
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
    /// (one more with a predictor) have been seen. Non-finite values must be handled by
    /// the caller.
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
    /// The previous row, for a model with a predictor.
    previous: Option<Vec<f64>>,
    /// Observations the raised alarm still holds after its score fell (the off-delay).
    holding: usize,
}

impl Stream {
    /// See [`Scorer::push`].
    pub fn push(&mut self, m: &PcaModel, row: &[f64]) -> Option<Score> {
        // The gated relations and the rules judge the row as it came (before any
        // predictor).
        let tolerance = m.options.relation_tolerance;
        let mut broken: Vec<(usize, f64)> = m
            .relations
            .iter()
            .filter_map(|r| {
                r.excess(row, tolerance)
                    .filter(|e| *e > 1.0)
                    .map(|e| (r.target, e))
            })
            .collect();
        for b in m
            .switch_bands
            .iter()
            .filter(|b| b.contradicted(row, tolerance))
        {
            broken.extend([(b.target, RULE_EXCESS), (b.gate, RULE_EXCESS)]);
        }
        for &(c, held) in &m.held_constant {
            if row
                .get(c)
                .is_some_and(|v| (v - held).abs() > HOLD_TOLERANCE * held.abs().max(1.0))
            {
                broken.push((c, RULE_EXCESS));
            }
        }
        let row = match &m.predictor {
            Some(p) => {
                let previous = self.previous.replace(row.to_vec())?;
                p.innovation(&previous, row)
            }
            None => row.to_vec(),
        };
        self.history.push_front(row);
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
        let mut score = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        // A broken relation or rule is an alarm at once, blamed on the values involved.
        for (target, excess) in broken {
            score = score.max(m.threshold * excess);
            if let Some(slot) = contributions.get_mut(target) {
                *slot += excess;
            }
        }
        let above = score > m.threshold;
        let flag = if above {
            self.holding = m.options.off_delay;
            true
        } else if self.holding > 0 {
            self.holding -= 1;
            true
        } else {
            false
        };
        Some(Score {
            t2,
            spe,
            score,
            flag,
            contributions,
            isolated: if above {
                isolate(m, &residual, spe)
            } else {
                None
            },
        })
    }
}

/// Largest system [`isolate`] solves: one column's lags.
const MAX_ISOLATION_DIM: usize = 8;

/// The column whose reconstruction removes the most of `spe` (whose residual vector is
/// `residual`), and the SPE left. For the variables S of a column (its lags), the SPE
/// removed is r_S' (I - P P')_SS⁻¹ r_S, with r the residual and P the loadings; the
/// inverses are the model's, worked out on first use.
fn isolate(m: &PcaModel, residual: &[f64], spe: f64) -> Option<Isolated> {
    let inverses = m.isolation.0.get_or_init(|| isolation_inverses(m));
    let mut best: Option<(usize, f64)> = None;
    for (c, entry) in inverses.iter().enumerate() {
        let Some(ColumnIsolation { vars, inverse }) = entry else {
            continue;
        };
        let n = vars.len();
        let r = |i: usize| {
            vars.get(i)
                .and_then(|&j| residual.get(j))
                .copied()
                .unwrap_or(0.0)
        };
        let removed: f64 = (0..n)
            .map(|i| {
                r(i) * (0..n)
                    .map(|k| inverse.get(i * n + k).copied().unwrap_or(0.0) * r(k))
                    .sum::<f64>()
            })
            .sum();
        if removed.is_finite() && best.is_none_or(|(_, b)| removed > b) {
            best = Some((c, removed));
        }
    }
    best.map(|(column, removed)| Isolated {
        column,
        spe_left: (spe - removed).max(0.0),
    })
}

/// See [`IsolationCache`].
fn isolation_inverses(m: &PcaModel) -> Vec<Option<ColumnIsolation>> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); m.columns.len()];
    for (j, &(c, _)) in m.variables.iter().enumerate() {
        if let Some(g) = groups.get_mut(c) {
            g.push(j);
        }
    }
    groups
        .into_iter()
        .map(|vars| {
            if vars.is_empty() || vars.len() > MAX_ISOLATION_DIM {
                return None;
            }
            let n = vars.len();
            let projector: Vec<Vec<f64>> = vars
                .iter()
                .enumerate()
                .map(|(i, &ja)| {
                    vars.iter()
                        .enumerate()
                        .map(|(k, &jb)| {
                            let pp: f64 = m
                                .loadings
                                .iter()
                                .map(|p| {
                                    p.get(ja).copied().unwrap_or(0.0)
                                        * p.get(jb).copied().unwrap_or(0.0)
                                })
                                .sum();
                            f64::from(u8::from(i == k)) - pp
                        })
                        .collect()
                })
                .collect();
            // Column k of the inverse solves the system for the k-th unit vector.
            let mut inverse = vec![0.0; n * n];
            for k in 0..n {
                let mut a: Vec<Vec<f64>> = projector
                    .iter()
                    .enumerate()
                    .map(|(i, row)| {
                        let mut row = row.clone();
                        row.push(f64::from(u8::from(i == k)));
                        row
                    })
                    .collect();
                let x = solve(&mut a, n)?;
                for (i, v) in x.into_iter().enumerate() {
                    *inverse.get_mut(i * n + k)? = v;
                }
            }
            Some(ColumnIsolation { vars, inverse })
        })
        .collect()
}

/// Solves the n×n system in `a` (each row augmented with its right-hand side) by
/// Gaussian elimination with partial pivoting; None when it is (nearly) singular, as for
/// a column the retained components already reproduce exactly.
fn solve(a: &mut [Vec<f64>], n: usize) -> Option<Vec<f64>> {
    for col in 0..n {
        let pivot = (col..n).max_by(|&x, &y| {
            let ax = a.get(x).and_then(|r| r.get(col)).map_or(0.0, |v| v.abs());
            let ay = a.get(y).and_then(|r| r.get(col)).map_or(0.0, |v| v.abs());
            ax.total_cmp(&ay)
        })?;
        a.swap(col, pivot);
        let p = a.get(col).and_then(|r| r.get(col)).copied()?;
        if p.abs() < 1e-9 {
            return None;
        }
        let pivot_row = a.get(col)?.clone();
        for (r, row) in a.iter_mut().enumerate().take(n) {
            if r == col {
                continue;
            }
            let f = row.get(col).copied().unwrap_or(0.0) / p;
            for (v, pv) in row.iter_mut().zip(&pivot_row) {
                *v -= f * pv;
            }
        }
    }
    (0..n)
        .map(|i| {
            let row = a.get(i)?;
            Some(row.get(n)? / row.get(i)?)
        })
        .collect()
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
            isolated: None,
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
    /// Sum over the episode's rows of the SPE left (over its limit) once the row's
    /// isolated column is reconstructed.
    spe_left: f64,
    isolated_rows: u32,
}

/// Share of the contributions one signal must carry for a sensor fault.
const SENSOR_SHARE: f64 = 0.6;

impl Episodes {
    /// The class of the episode `score` belongs to, and its top contributors (at most
    /// three, largest first, as indices into the model's columns).
    pub fn push(&mut self, model: &PcaModel, score: &Score) -> (EpisodeClass, Vec<usize>) {
        self.push_with(
            model.t2_limit,
            model.spe_limit,
            model.threshold.max(1.0),
            score,
        )
    }

    /// [`Episodes::push`] for a score whose T² and SPE are measured against these limits
    /// (a model with no T² gives an infinite limit).
    pub fn push_limits(
        &mut self,
        t2_limit: f64,
        spe_limit: f64,
        score: &Score,
    ) -> (EpisodeClass, Vec<usize>) {
        self.push_with(t2_limit, spe_limit, 1.0, score)
    }

    /// `normal_left`: the SPE (over its limit) that normal rows reach, which the rest of
    /// a single faulty sensor's episode stays within once it is reconstructed.
    fn push_with(
        &mut self,
        t2_limit: f64,
        spe_limit: f64,
        normal_left: f64,
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
        if let Some(iso) = score.isolated {
            self.spe_left += iso.spe_left / spe_limit;
            self.isolated_rows += 1;
        }
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
        // The sensor reading: one column carries the SPE. With reconstruction (a PCA
        // model), reconstructing one column per row must take the SPE back to what normal
        // rows reach (the alarm threshold), on average over the episode: a sensor that
        // strayed alone. Without it (a model from outside), its share of the contributions
        // must be large. The contributors keep their order by contribution (a relation
        // broken while a switch is on blames its own value, which reconstruction does not
        // see).
        let single_sensor = if self.isolated_rows > 0 {
            self.spe_left / f64::from(self.isolated_rows) <= normal_left
        } else {
            top_share >= SENSOR_SHARE
        };
        let class = if self.spe >= self.t2 && single_sensor {
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
    breaks: &[usize],
    options: FitOptions,
) -> Result<f64, FitError> {
    let n = rows.len();
    let folds = options.folds;
    let warm = options.lags + options.smoothing + usize::from(options.ridge > 0.0);
    if options.fold_block_rows > 0 && n.div_ceil(options.fold_block_rows) < folds {
        return Err(FitError::Option(format!(
            "fold_block_rows {} cuts {n} rows into fewer blocks than the {folds} folds",
            options.fold_block_rows
        )));
    }
    let mut scores = Vec::with_capacity(n);
    // Each fold's held-out segments: one contiguous stretch, or every `folds`-th block.
    let segments = |f: usize| -> Vec<(usize, usize)> {
        match options.fold_block_rows {
            0 => vec![(n * f / folds, n * (f + 1) / folds)],
            block => (0..n.div_ceil(block))
                .filter(|b| b % folds == f)
                .map(|b| (b * block, ((b + 1) * block).min(n)))
                .collect(),
        }
    };
    for f in 0..folds {
        let held = segments(f);
        // The rest, with a break wherever rows were held out between two kept ones, and
        // wherever the data had one.
        let mut train: Vec<Vec<f64>> = Vec::with_capacity(n);
        let mut train_breaks: Vec<usize> = Vec::new();
        let mut last: Option<usize> = None;
        for (i, r) in rows.iter().enumerate() {
            if held.iter().any(|(a, b)| i >= *a && i < *b) {
                continue;
            }
            if last.is_some_and(|l| !same_segment(breaks, l, i) || l + 1 != i) {
                train_breaks.push(train.len());
            }
            train.push(r.clone());
            last = Some(i);
        }
        let model = PcaModel::fit_pca(
            columns,
            &train,
            &train_breaks,
            FitOptions {
                folds: 0,
                relation_tolerance: 0.0,
                ..options
            },
        )?;
        for (a, b) in held {
            let mut scorer = model.scorer();
            // Lags and smoothing start from the observations just before the held-out
            // rows, in their segment; a break starts them afresh.
            let from = (a.saturating_sub(warm)..a)
                .find(|&w| same_segment(breaks, w, a))
                .unwrap_or(a);
            for r in rows.get(from..a).unwrap_or_default() {
                scorer.push(r);
            }
            for (i, r) in rows.iter().enumerate().take(b).skip(a) {
                if i > a && breaks.binary_search(&i).is_ok() {
                    scorer = model.scorer();
                }
                if let Some(s) = scorer.push(r) {
                    scores.push(s.score);
                }
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

    /// A dynamic process: `x` is autoregressive, `y` follows `x` one step late, `w`
    /// follows `x` at once; plus a constant.
    fn dynamic(seed: u64, n: usize) -> Vec<Vec<f64>> {
        let e = normals(seed, n * 3);
        let mut x = 0.0;
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let before = x;
            x = 0.95 * x + 0.3 * e[3 * i];
            rows.push(vec![
                x,
                2.0 + before + 0.05 * e[3 * i + 1],
                -1.0 + 0.5 * x + 0.05 * e[3 * i + 2],
                4.0,
            ]);
        }
        rows
    }

    fn dynamic_cols() -> Vec<String> {
        ["x", "y", "w", "constant"].map(String::from).to_vec()
    }

    #[test]
    fn a_learned_predictor_catches_a_replayed_signal() {
        let options = FitOptions {
            ridge: 1.0,
            smoothing: 5,
            ..FitOptions::default()
        };
        let model = PcaModel::fit(&dynamic_cols(), &dynamic(3, 3000), options).unwrap();
        model.check().unwrap();
        let p = model.predictor.as_ref().unwrap();
        assert_eq!(p.used, vec![0, 1, 2]);
        assert_eq!(model.constant_columns, vec!["constant".to_string()]);
        // y is x one step late: its prediction leans on the previous x, not on itself.
        assert!(p.weights[1][0] > 0.8, "{:?}", p.weights[1]);
        let mut test = dynamic(4, 6000);
        // Rows 4000..4500: y replays its own recording from rows 1000..1500, normal in
        // range and variance, no longer following x.
        for i in 4000..4500 {
            test[i][1] = test[i - 3000][1];
        }
        let mut scorer = model.scorer();
        assert!(
            scorer.push(&test[0]).is_none(),
            "the first row has no predecessor"
        );
        let flags: Vec<bool> = test[1..]
            .iter()
            .map(|r| scorer.push(r).unwrap().flag)
            .collect();
        let rate = |a: usize, b: usize| {
            flags[a - 1..b - 1].iter().filter(|f| **f).count() as f64 / (b - a) as f64
        };
        assert!(
            rate(4010, 4500) > 0.95,
            "replay caught at {}",
            rate(4010, 4500)
        );
        assert!(rate(100, 4000) < 0.05, "false alarms {}", rate(100, 4000));
        // The signal named is the replayed one.
        let mut s = model.scorer();
        let mut top = vec![0.0; 4];
        for r in &test[..4200] {
            if let Some(score) = s.push(r)
                && score.flag
            {
                for (t, c) in top.iter_mut().zip(&score.contributions) {
                    *t += c;
                }
            }
        }
        assert!(top[1] > top[0] && top[1] > top[2], "{top:?}");
    }

    /// History in stretches (hours left out between them): the jumps between stretches
    /// are not the process's dynamics. Fitted as one run, they inflate the
    /// cross-validated threshold; fitted in segments, the threshold is that of a
    /// history without gaps.
    #[test]
    fn segments_keep_the_jumps_between_them_out_of_the_model() {
        let options = FitOptions {
            ridge: 1.0,
            lags: 1,
            smoothing: 5,
            folds: 5,
            ..FitOptions::default()
        };
        let long = dynamic(3, 40_000);
        // Forty stretches of 50 rows, each 1,000 rows after the one before.
        let stitched: Vec<Vec<f64>> = (0..40)
            .flat_map(|k| long[1000 * k..1000 * k + 50].to_vec())
            .collect();
        let breaks: Vec<usize> = (1..40).map(|k| 50 * k).collect();
        let whole = PcaModel::fit(&dynamic_cols(), &long[..2000], options).unwrap();
        let segmented =
            PcaModel::fit_segments(&dynamic_cols(), &stitched, &breaks, options).unwrap();
        let as_one = PcaModel::fit(&dynamic_cols(), &stitched, options).unwrap();
        segmented.check().unwrap();
        assert!(
            segmented.threshold < 1.5 * whole.threshold,
            "{} against {}",
            segmented.threshold,
            whole.threshold
        );
        assert!(
            as_one.threshold > 2.0 * whole.threshold,
            "{} against {}",
            as_one.threshold,
            whole.threshold
        );
        // Breaks out of order, repeated, at 0 or past the end change nothing.
        let mut messy = breaks.clone();
        messy.reverse();
        messy.extend([0, 50, 2000, 5000]);
        let again = PcaModel::fit_segments(&dynamic_cols(), &stitched, &messy, options).unwrap();
        assert_eq!(again.threshold, segmented.threshold);
        // Segments too short for a lag and a prediction leave nothing to learn from.
        let every: Vec<usize> = (1..stitched.len()).collect();
        assert!(matches!(
            PcaModel::fit_segments(&dynamic_cols(), &stitched, &every, options),
            Err(FitError::TooFewRows { .. })
        ));
    }

    #[test]
    fn a_predictor_model_is_versioned_data_and_checked() {
        let options = FitOptions {
            ridge: 10.0,
            folds: 3,
            ..FitOptions::default()
        };
        let model = PcaModel::fit(&dynamic_cols(), &dynamic(5, 1000), options).unwrap();
        assert!(model.threshold > 0.0);
        let text = serde_json::to_string(&model).unwrap();
        let back: PcaModel = serde_json::from_str(&text).unwrap();
        back.check().unwrap();
        assert_eq!(back.predictor.as_ref().unwrap().used, vec![0, 1, 2]);
        let (mut a, mut b) = (model.scorer(), back.scorer());
        for r in &dynamic(6, 200) {
            match (a.push(r), b.push(r)) {
                (Some(x), Some(y)) => assert!((x.score - y.score).abs() < 1e-9),
                (x, y) => assert_eq!(x.is_none(), y.is_none()),
            }
        }
        let mut broken = model.clone();
        broken.predictor.as_mut().unwrap().weights[0].pop();
        assert!(broken.check().is_err());
        let mut missing = model.clone();
        missing.predictor = None;
        assert!(missing.check().is_err(), "ridge set but no predictor");
        // A model without a predictor writes no predictor field (older readers load it).
        let plain =
            PcaModel::fit(&dynamic_cols(), &dynamic(5, 1000), FitOptions::default()).unwrap();
        assert!(!serde_json::to_string(&plain).unwrap().contains("predictor"));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let e = PcaModel::fit(
                &dynamic_cols(),
                &dynamic(5, 1000),
                FitOptions {
                    ridge: bad,
                    ..FitOptions::default()
                },
            )
            .unwrap_err();
            assert!(e.to_string().contains("ridge"), "{e}");
        }
    }

    #[test]
    fn blocked_folds_keep_the_threshold_sane_when_the_plant_moved_while_learning() {
        // The plant ran at one operating point for the first fifth of the learning
        // window, then at another (factor a four higher), where it stays.
        let shift = |r: &mut Vec<f64>| {
            r[0] += 4.0;
            r[1] += 4.0;
            r[2] += 8.0;
        };
        let mut rows = process(11, 2000);
        rows.iter_mut().skip(400).for_each(shift);
        let options = |fold_block_rows| FitOptions {
            folds: 5,
            smoothing: 5,
            fold_block_rows,
            ..FitOptions::default()
        };
        let e = PcaModel::fit(&cols(), &rows, options(500)).unwrap_err();
        assert!(
            e.to_string().contains("fewer blocks than the 5 folds"),
            "{e}"
        );
        let contiguous = PcaModel::fit(&cols(), &rows, options(0)).unwrap();
        let blocked = PcaModel::fit(&cols(), &rows, options(50)).unwrap();
        assert!(
            contiguous.threshold > 2.0 * blocked.threshold,
            "{} vs {}",
            contiguous.threshold,
            blocked.threshold
        );
        // At the operating point it stays at, the blocked model is quiet and sees a fault.
        let mut fresh = process(12, 3000);
        for (i, r) in fresh.iter_mut().enumerate() {
            shift(r);
            if i >= 2000 {
                r[1] += 0.5;
            }
        }
        let mut s = blocked.scorer();
        let flags: Vec<bool> = fresh.iter().map(|r| s.push(r).unwrap().flag).collect();
        let rate =
            |a: usize, b: usize| flags[a..b].iter().filter(|f| **f).count() as f64 / (b - a) as f64;
        assert!(rate(0, 2000) < 0.05, "false alarms {}", rate(0, 2000));
        assert!(
            rate(2010, 3000) > 0.9,
            "fault seen at {} (threshold {} vs {}, {} components)",
            rate(2010, 3000),
            blocked.threshold,
            contiguous.threshold,
            blocked.eigenvalues.len()
        );
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

    /// A column constant in all the training data is held to its value when asked: the
    /// first row in which it moves is an alarm, blamed on it; a value equal to within
    /// rounding is not; without the option the move goes unseen, as documented.
    #[test]
    fn a_held_constant_that_moves_is_an_alarm_at_once() {
        let rows = process(5, 1000);
        let held = PcaModel::fit(
            &cols(),
            &rows,
            FitOptions {
                hold_constants: true,
                smoothing: 6,
                ..FitOptions::default()
            },
        )
        .unwrap();
        held.check().unwrap();
        assert_eq!(held.held_constant, vec![(5, 7.0)]);
        let plain = PcaModel::fit(
            &cols(),
            &rows,
            FitOptions {
                smoothing: 6,
                ..FitOptions::default()
            },
        )
        .unwrap();
        assert!(plain.held_constant.is_empty());
        let mut test = process(6, 20);
        test[10][5] = 8.0;
        test[12][5] = 7.0 + 1e-9;
        let run = |m: &PcaModel| {
            let mut s = m.scorer();
            test.iter().map(|r| s.push(r).unwrap()).collect::<Vec<_>>()
        };
        let h = run(&held);
        let p = run(&plain);
        assert!(h[10].flag && !p[10].flag, "{:?} {:?}", h[10], p[10]);
        assert!(h[10].score >= RULE_EXCESS * held.threshold);
        let top = (0..6)
            .max_by(|&x, &y| h[10].contributions[x].total_cmp(&h[10].contributions[y]))
            .unwrap();
        assert_eq!(top, 5, "{:?}", h[10]);
        // Only the row that moved: the smoothing window carries no memory of it, and a
        // difference of rounding is not a move.
        for (i, (a, b)) in h.iter().zip(&p).enumerate().filter(|(i, _)| *i != 10) {
            assert_eq!(a, b, "row {i}");
        }
        // The model file keeps the held values; one that names a column it has not, or
        // holds values without the option, is refused.
        let back: PcaModel = serde_json::from_str(&serde_json::to_string(&held).unwrap()).unwrap();
        assert_eq!(
            (&back.held_constant, back.options),
            (&held.held_constant, held.options)
        );
        let mut bad = held.clone();
        bad.held_constant = vec![(6, 7.0)];
        assert!(bad.check().is_err());
        let mut bad = held.clone();
        bad.options.hold_constants = false;
        assert!(bad.check().is_err());
        let mut bad = held;
        bad.held_constant = vec![(5, f64::NAN)];
        assert!(bad.check().is_err());
    }

    /// An alarm with an off-delay of 3 stays raised for the 3 rows after its score last
    /// crossed the threshold, through a dip, and ends 3 rows after the evidence does.
    #[test]
    fn an_off_delay_holds_an_alarm_through_a_dip_and_ends_after_its_evidence() {
        let rows = process(3, 1000);
        let held = PcaModel::fit(
            &cols(),
            &rows,
            FitOptions {
                off_delay: 3,
                ..FitOptions::default()
            },
        )
        .unwrap();
        let plain = PcaModel::fit(&cols(), &rows, FitOptions::default()).unwrap();
        // Normal rows, a2 broken, one normal row, a2 broken again, then normal rows.
        let mut test = process(4, 12);
        for i in [2, 4] {
            test[i][1] += 0.5;
        }
        let flags = |m: &PcaModel| {
            let mut s = m.scorer();
            test.iter()
                .map(|r| s.push(r).unwrap().flag)
                .collect::<Vec<_>>()
        };
        let p = flags(&plain);
        let h = flags(&held);
        assert_eq!(
            &p[..8],
            &[false, false, true, false, true, false, false, false]
        );
        assert_eq!(
            &h[..9],
            &[false, false, true, true, true, true, true, true, false]
        );
        // The off-delay never lowers a score nor hides an alarm.
        assert!(p.iter().zip(&h).all(|(a, b)| !a || *b));
        // An older model file, without the field, has none; an absurd one is refused.
        let mut json: serde_json::Value = serde_json::to_value(&plain).unwrap();
        json["options"].as_object_mut().unwrap().remove("off_delay");
        let back: PcaModel = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.options.off_delay, 0);
        json["options"]["off_delay"] = serde_json::json!(MAX_OFF_DELAY + 1);
        let absurd: PcaModel = serde_json::from_value(json).unwrap();
        assert!(absurd.check().is_err());
        let e = PcaModel::fit(
            &cols(),
            &rows,
            FitOptions {
                off_delay: MAX_OFF_DELAY + 1,
                ..FitOptions::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("off_delay"), "{e}");
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

    /// b1 and b2 measure the same thing: a bias on one leaves equal residuals on both,
    /// so neither carries most of the contributions (smearing); reconstructing either one
    /// from the others takes the SPE back to normal, which says one sensor. Two sensors
    /// of different factors off at once do not reconstruct away.
    #[test]
    fn reconstruction_finds_a_single_sensor_that_contribution_shares_smear() {
        let model = PcaModel::fit(&cols(), &process(14, 2000), FitOptions::default()).unwrap();
        let mut s = model.scorer();
        let mut episodes = Episodes::default();
        let (mut class, mut top, mut score) = (EpisodeClass::Normal, vec![], None);
        for mut row in process(15, 20) {
            row[3] += 0.6;
            let sc = s.push(&row).unwrap();
            (class, top) = episodes.push(&model, &sc);
            score = Some(sc);
        }
        let score = score.unwrap();
        let total: f64 = score.contributions.iter().sum();
        assert!(
            score.contributions[3] / total < SENSOR_SHARE,
            "smeared: {:?}",
            score.contributions
        );
        let iso = score.isolated.unwrap();
        assert!(iso.column == 3 || iso.column == 4, "{iso:?}");
        assert!(iso.spe_left < score.spe * 0.05, "{iso:?} of {}", score.spe);
        assert_eq!(class, EpisodeClass::SensorFault);
        assert!(top[0] == 3 || top[0] == 4, "{top:?}");

        let mut episodes = Episodes::default();
        for mut row in process(16, 20) {
            row[3] += 0.6;
            row[0] += 0.6;
            let sc = s.push(&row).unwrap();
            (class, _) = episodes.push(&model, &sc);
            let iso = sc.isolated.unwrap();
            assert!(iso.spe_left > model.spe_limit * model.threshold, "{iso:?}");
        }
        assert_eq!(class, EpisodeClass::Unknown);
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
