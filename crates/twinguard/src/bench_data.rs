//! `twinguard bench <data set>`: public benchmarks run by their own protocols, our row
//! printed beside the published ones.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use benchmarks::skab::{self, PUBLISHED_NAB, PUBLISHED_OUTLIER, SkabResult};
use detect::multivariate::FitOptions;

/// The detector settings the SKAB row is measured with.
pub const SKAB_OPTIONS: FitOptions = FitOptions {
    explained_variance: 0.85,
    confidence: 0.99,
    lags: 0,
    smoothing: 10,
};

pub fn skab(data: &Path, options: FitOptions) -> Result<SkabResult> {
    let r = skab::run(data, options, |i, n, name| {
        eprint!("\rskab: {i}/{n} {name:<16}");
        if i == n {
            eprintln!();
        }
    })?;
    Ok(r)
}

/// Both leaderboard tables with our row in its place.
pub fn skab_tables(r: &SkabResult) -> String {
    let mut out = String::new();
    let ours = "twinguard (this run)";
    let _ = writeln!(
        out,
        "SKAB v0.9, {} files, first {} rows of each to fit, the rest to test",
        r.files,
        skab::TRAIN_ROWS
    );
    let _ = writeln!(out, "{}\n", r.detector);
    let _ = writeln!(out, "Outlier detection (point-wise over all test parts)");
    let _ = writeln!(
        out,
        "{:<28} {:>6} {:>8} {:>8}",
        "Algorithm", "F1", "FAR, %", "MAR, %"
    );
    let mut rows: Vec<(String, f64, f64, f64)> = PUBLISHED_OUTLIER
        .iter()
        .map(|&(n, f, a, m)| (n.to_string(), f, a, m))
        .collect();
    rows.push((ours.to_string(), r.f1, r.far, r.mar));
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (n, f, a, m) in rows {
        let _ = writeln!(out, "{n:<28} {f:>6.2} {a:>8.2} {m:>8.2}");
    }
    let _ = writeln!(
        out,
        "\nChangepoint detection (NAB, {} s window right of each changepoint)",
        skab::WINDOW_S
    );
    let _ = writeln!(
        out,
        "{:<28} {:>9} {:>9} {:>9}",
        "Algorithm", "Standard", "LowFP", "LowFN"
    );
    let mut rows: Vec<(String, f64, f64, f64)> = PUBLISHED_NAB
        .iter()
        .map(|&(n, s, p, f)| (n.to_string(), s, p, f))
        .collect();
    rows.push((ours.to_string(), r.nab.standard, r.nab.low_fp, r.nab.low_fn));
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (n, s, p, f) in rows {
        let _ = writeln!(out, "{n:<28} {s:>9.2} {p:>9.2} {f:>9.2}");
    }
    let _ = writeln!(
        out,
        "\nours: {} missed changepoints, {} false positives (TP {} TN {} FP {} FN {})",
        r.nab.missed,
        r.nab.false_positives,
        r.confusion.tp,
        r.confusion.tn,
        r.confusion.fp,
        r.confusion.fn_
    );
    out
}
