//! `twinguard bench detect`: what the multivariate detector costs as plants grow: fit
//! time, scoring time per sample and the model's memory at 8, 52 and 500 signals, for PCA
//! and dynamic PCA (one lag). The data is synthetic and seeded: a few slow latent
//! processes mixed into every signal, plus independent noise, the structure PCA models.
//! Scoring is timed twice: on fresh normal rows of the same process (the steady state:
//! few alarms), and on the same rows with one sensor reading high (every row an alarm,
//! which also pays for isolating the faulty column).

use std::time::Instant;

use anyhow::Result;
use detect::multivariate::{FitOptions, PcaModel};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct DetectBench {
    pub rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub signals: usize,
    pub lags: usize,
    pub components: usize,
    pub fit_rows: usize,
    pub fit_s: f64,
    pub scored: usize,
    /// Median over five passes of the mean time per sample, on normal rows.
    pub score_us: f64,
    /// Share of those rows flagged.
    pub flagged: f64,
    /// The same, on rows with one sensor off by ten of its units: every row an alarm.
    pub alarm_score_us: f64,
    pub alarm_flagged: f64,
    /// The fitted model's numbers, as f64 (loadings, means, deviations, eigenvalues).
    pub model_bytes: usize,
    /// The model as the JSON artifact `detect fit` writes.
    pub artifact_bytes: usize,
}

/// SplitMix64, as a uniform in [-0.5, 0.5).
fn uniform(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

/// `rows` rows of `n` signals driven by `n / 10 + 2` latent AR(1) processes, mixed into
/// the signals as the process `n` mixes them; `seed` draws the latent paths and noise.
fn data(n: usize, rows: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut mix_rng = 7 + n as u64;
    let k = n / 10 + 2;
    let mixing: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..k).map(|_| 2.0 * uniform(&mut mix_rng)).collect())
        .collect();
    let mut rng = seed;
    let mut latent = vec![0.0; k];
    (0..rows)
        .map(|_| {
            for f in &mut latent {
                *f = 0.95 * *f + uniform(&mut rng);
            }
            mixing
                .iter()
                .map(|m| {
                    m.iter().zip(&latent).map(|(a, f)| a * f).sum::<f64>()
                        + 0.05 * uniform(&mut rng)
                })
                .collect()
        })
        .collect()
}

pub fn run(widths: &[usize]) -> Result<DetectBench> {
    let mut out = Vec::new();
    for &n in widths {
        for lags in [0usize, 1] {
            let fit_rows = (4 * n * (lags + 1)).max(2000);
            let scored = if n >= 200 { 5_000 } else { 50_000 };
            eprintln!("bench detect: {n} signals, {lags} lag(s): fitting on {fit_rows} rows");
            let columns: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
            let train = data(n, fit_rows, 7 + n as u64);
            let options = FitOptions {
                lags,
                folds: 0,
                ridge: 0.0,
                fold_block_rows: 0,
                ..FitOptions::default()
            };
            let t = Instant::now();
            let model = PcaModel::fit(&columns, &train, options)
                .map_err(|e| anyhow::anyhow!("{n} signals: {e}"))?;
            let fit_s = t.elapsed().as_secs_f64();
            let test = data(n, scored, 1000 + n as u64);
            let (score_us, flagged) = time_scoring(&model, &test);
            let mut faulty = test;
            for row in &mut faulty {
                if let Some(v) = row.first_mut() {
                    *v += 10.0;
                }
            }
            let (alarm_score_us, alarm_flagged) = time_scoring(&model, &faulty);
            let floats = model.loadings.iter().map(Vec::len).sum::<usize>()
                + model.mean.len()
                + model.std.len()
                + model.eigenvalues.len()
                + model.residual_eigenvalues.len();
            out.push(Row {
                signals: n,
                lags,
                components: model.eigenvalues.len(),
                fit_rows,
                fit_s,
                scored,
                score_us,
                flagged,
                alarm_score_us,
                alarm_flagged,
                model_bytes: floats * 8,
                artifact_bytes: serde_json::to_vec(&model)?.len(),
            });
        }
    }
    Ok(DetectBench { rows: out })
}

/// The median over five passes of the mean time `model` takes per row of `rows`, and the
/// share of rows it flags.
fn time_scoring(model: &PcaModel, rows: &[Vec<f64>]) -> (f64, f64) {
    let mut passes = Vec::new();
    let mut flagged = 0usize;
    for _ in 0..5 {
        flagged = 0;
        let mut scorer = model.scorer();
        let t = Instant::now();
        for row in rows {
            if let Some(s) = scorer.push(row) {
                flagged += usize::from(s.flag);
            }
        }
        passes.push(t.elapsed().as_secs_f64() * 1e6 / rows.len().max(1) as f64);
    }
    passes.sort_by(f64::total_cmp);
    (
        passes.get(2).copied().unwrap_or(f64::NAN),
        flagged as f64 / rows.len().max(1) as f64,
    )
}

pub fn table(r: &DetectBench) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8} {:>5} {:>11} {:>9} {:>9} {:>16} {:>9} {:>15} {:>12} {:>14}",
        "signals",
        "lags",
        "components",
        "fit rows",
        "fit s",
        "score µs/sample",
        "flagged",
        "alarm µs/sample",
        "model KiB",
        "artifact KiB"
    );
    for row in &r.rows {
        let _ = writeln!(
            out,
            "{:>8} {:>5} {:>11} {:>9} {:>9.3} {:>16.3} {:>8.1}% {:>15.3} {:>12.1} {:>14.1}",
            row.signals,
            row.lags,
            row.components,
            row.fit_rows,
            row.fit_s,
            row.score_us,
            100.0 * row.flagged,
            row.alarm_score_us,
            row.model_bytes as f64 / 1024.0,
            row.artifact_bytes as f64 / 1024.0
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    #[test]
    fn the_benchmark_fits_and_scores_every_width_and_its_data_has_the_latent_structure() {
        let r = run(&[8]).unwrap();
        assert_eq!(r.rows.len(), 2);
        for row in &r.rows {
            // Two latent processes drive eight signals: PCA keeps about that many.
            assert!((2..=4).contains(&row.components), "{row:?}");
            assert!(row.score_us.is_finite() && row.score_us > 0.0);
            // Fresh rows of the process it learnt are normal (few alarms); with a
            // sensor ten units off, every row is an alarm.
            assert!(row.flagged < 0.05, "{row:?}");
            assert!(row.alarm_flagged > 0.99, "{row:?}");
            assert!(row.alarm_score_us.is_finite() && row.alarm_score_us > 0.0);
            assert!(row.artifact_bytes > row.model_bytes / 4);
        }
        assert!(table(&r).contains("score µs/sample"));
    }
}
