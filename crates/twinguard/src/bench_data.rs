//! `twinguard bench <data set>`: public benchmarks run by their own protocols, our row
//! printed beside the published ones.

use std::fmt::Write as _;
use std::path::Path;

use std::process::ExitCode;

use anyhow::Result;
use benchmarks::batadal::{self, BatadalResult};
use benchmarks::skab::{self, PUBLISHED_NAB, PUBLISHED_OUTLIER, SkabResult};
use benchmarks::tep::{self, HARD_FAULTS, RECALLED_MISSED, TepResult};
use detect::multivariate::FitOptions;

/// The detector settings the SKAB row is measured with: dynamic PCA with one lag, as for
/// Tennessee Eastman (1 Hz sensor data is autocorrelated).
pub const SKAB_OPTIONS: FitOptions = FitOptions {
    explained_variance: 0.85,
    confidence: 0.99,
    lags: 1,
    smoothing: 10,
    folds: 5,
    ridge: 0.0,
    fold_block_rows: 0,
    relation_tolerance: 0.0,
    off_delay: 0,
    hold_constants: false,
};

/// Prints a benchmark's result as JSON or as its table.
pub fn print<T: serde::Serialize>(json: bool, r: &T, table: fn(&T) -> String) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print!("{}", table(r));
    }
    Ok(ExitCode::SUCCESS)
}

/// Appends `rows` (a name and three numbers) under `header`, highest first by the first
/// number.
fn ranked(out: &mut String, header: [&str; 4], mut rows: Vec<(String, f64, f64, f64)>) {
    let [name, a, b, c] = header;
    let _ = writeln!(out, "{name:<28} {a:>9} {b:>9} {c:>9}");
    rows.sort_by(|x, y| y.1.total_cmp(&x.1));
    for (n, a, b, c) in rows {
        let _ = writeln!(out, "{n:<28} {a:>9.2} {b:>9.2} {c:>9.2}");
    }
}

pub fn skab(data: &Path, options: FitOptions, exclude: &[String]) -> Result<SkabResult> {
    let r = skab::run(data, options, exclude, |i, n, name| {
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
    let mut rows: Vec<(String, f64, f64, f64)> = PUBLISHED_OUTLIER
        .iter()
        .map(|&(n, f, a, m)| (n.to_string(), f, a, m))
        .collect();
    rows.push((ours.to_string(), r.f1, r.far, r.mar));
    ranked(&mut out, ["Algorithm", "F1", "FAR, %", "MAR, %"], rows);
    let _ = writeln!(
        out,
        "\nChangepoint detection (NAB, {} s window right of each changepoint)",
        skab::WINDOW_S
    );
    let mut rows: Vec<(String, f64, f64, f64)> = PUBLISHED_NAB
        .iter()
        .map(|&(n, s, p, f)| (n.to_string(), s, p, f))
        .collect();
    rows.push((ours.to_string(), r.nab.standard, r.nab.low_fp, r.nab.low_fn));
    ranked(&mut out, ["Algorithm", "Standard", "LowFP", "LowFN"], rows);
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

/// The baseline of the Tennessee Eastman table: static PCA, 99 % limits.
pub const TEP_BASELINE: FitOptions = FitOptions {
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
};

/// Our detector on Tennessee Eastman: dynamic PCA (one lag), the score averaged over 20
/// observations (an hour), its threshold the 95 % quantile of cross-validated scores on
/// the normal training run (so a 5 % false-alarm budget, by construction).
pub const TEP_OPTIONS: FitOptions = FitOptions {
    explained_variance: 0.9,
    confidence: 0.95,
    lags: 1,
    smoothing: 20,
    folds: 5,
    ridge: 0.0,
    fold_block_rows: 0,
    relation_tolerance: 0.0,
    off_delay: 0,
    hold_constants: false,
};

pub fn tep(data: &Path, ours: FitOptions) -> Result<TepResult> {
    Ok(tep::run(data, TEP_BASELINE, ours, |i, n| {
        eprint!("\rtep: fault {i}/{n}");
        if i == n {
            eprintln!();
        }
    })?)
}

/// Detection rates per fault, ours beside PCA T² and Q computed by the same code (and
/// the recalled literature's, unverified, for orientation).
pub fn tep_table(r: &TepResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Tennessee Eastman (Braatz data): detection rate of the 800 faulty observations per fault"
    );
    let _ = writeln!(
        out,
        "PCA baseline: {} components (90 % of the variance), 99 % limits; twinguard: {}\n",
        r.baseline_components, r.ours
    );
    let names: Vec<&str> = r.detectors.iter().map(|d| d.name.as_str()).collect();
    let _ = write!(out, "{:>5}", "fault");
    for n in &names {
        let _ = write!(out, " {n:>10}");
    }
    let _ = writeln!(out, "   {:>22}", "recalled T² / Q (unverified)");
    for f in 0..21 {
        let _ = write!(out, "{:>5}", f + 1);
        for d in &r.detectors {
            let _ = write!(
                out,
                " {:>10.3}",
                d.detection.get(f).copied().unwrap_or(f64::NAN)
            );
        }
        let (t2, q) = RECALLED_MISSED
            .get(f)
            .copied()
            .unwrap_or((f64::NAN, f64::NAN));
        let hard = if HARD_FAULTS.contains(&(f + 1)) {
            " (hard)"
        } else {
            ""
        };
        let _ = writeln!(out, "   {:>10.3} / {:.3}{hard}", 1.0 - t2, 1.0 - q);
    }
    let _ = write!(out, "{:>5}", "mean");
    for d in &r.detectors {
        let _ = write!(out, " {:>10.3}", d.mean_detection_18);
    }
    let _ = writeln!(out, "   (18 faults: all but 3, 9, 15)");
    let _ = write!(out, "{:>5}", "FAR");
    for d in &r.detectors {
        let _ = write!(out, " {:>10.3}", d.false_alarm_d00);
    }
    let _ = writeln!(out, "   (d00_te.dat)");
    let _ = write!(out, "{:>5}", "FAR'");
    for d in &r.detectors {
        let _ = write!(out, " {:>10.3}", d.false_alarm_before_faults);
    }
    let _ = writeln!(out, "   (first 160 observations of every test run)");
    let _ = writeln!(
        out,
        "\ntwinguard's fit on d00.dat (cross-validation included): {:.0} ms; model file {:.1} KiB",
        r.ours_fit_s * 1e3,
        r.ours_model_bytes as f64 / 1024.0
    );
    out
}

/// Peak resident memory of this process since the last [`reset_peak_rss`], KiB (Linux's
/// `VmHWM`; None where the kernel does not tell).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Starts measuring peak resident memory afresh (Linux: `clear_refs` 5 resets `VmHWM`);
/// false where that is not possible, and the peak then counts from the process start.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Our detector on BATADAL: a learned one-step predictor (ridge 10) whose errors dynamic
/// PCA (one lag) monitors, the score averaged over 6 hours, the threshold the 99 %
/// quantile of cross-validated scores on training data set 1.
pub const BATADAL_OPTIONS: FitOptions = FitOptions {
    explained_variance: 0.9,
    confidence: 0.99,
    lags: 1,
    smoothing: 6,
    folds: 5,
    ridge: 10.0,
    fold_block_rows: 0,
    relation_tolerance: 0.05,
    off_delay: 5,
    hold_constants: true,
};

/// Our scores on training data set 2, beside the competition's scoreboard (which is on
/// the withheld test set: orientation, not a comparison).
pub fn batadal_table(r: &BatadalResult) -> String {
    let mut out = String::new();
    let s = &r.score;
    let _ = writeln!(
        out,
        "BATADAL, training data set 2 (7 attacks), fitted on training data set 1"
    );
    let _ = writeln!(out, "{}\n", r.detector);
    let _ = writeln!(
        out,
        "S {:.4}   S_TTD {:.4}   S_CM {:.4}   (TPR {:.3}, TNR {:.3}; attacks detected {}/{})",
        s.s, s.s_ttd, s.s_cm, s.tpr, s.tnr, s.detected, s.attacks
    );
    let ttd: Vec<String> = r
        .per_attack_ttd_hours
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "#{}: {}",
                i + 1,
                t.map_or("missed".to_string(), |h| format!("{h} h"))
            )
        })
        .collect();
    let _ = writeln!(out, "time to detection: {}", ttd.join(", "));
    let relations: Vec<String> = r
        .relations
        .iter()
        .map(|x| {
            format!(
                "{} from {} while {} is on (held out to {:.2}, alarm beyond {:.2})",
                x.value,
                x.from.join(", "),
                x.while_on,
                x.held_out_error,
                x.alarm_beyond
            )
        })
        .collect();
    let listed = |items: &[String]| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join("; ")
        }
    };
    let _ = writeln!(out, "relations learnt: {}", listed(&relations));
    let _ = writeln!(
        out,
        "switches bounding a value: {}",
        listed(&r.switch_bands)
    );
    let _ = writeln!(
        out,
        "held to their value in set 1: {}",
        listed(&r.held_constant)
    );
    let t = &r.model_for_test_on_set_2;
    let _ = writeln!(
        out,
        "model for the official test set (set 1 and set 2's hours outside the attacks, in {} segments): threshold {:.2} (set 1's: {:.2}); on set 2, whose normal hours it was fitted on: S {:.4} (TPR {:.3}, TNR {:.3}; attacks detected {}/{})\n",
        r.model_for_test_segments,
        r.model_for_test_threshold,
        r.threshold,
        t.s,
        t.tpr,
        t.tnr,
        t.detected,
        t.attacks
    );
    let _ = writeln!(
        out,
        "The competition's scoreboard (official test set, scored independently of this run):"
    );
    for (team, detected, score) in batadal::PUBLISHED {
        let _ = writeln!(out, "  {team:<20} {detected}/7  S {score:.3}");
    }
    out
}
