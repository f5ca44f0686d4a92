//! `twinguard rul fit|predict` and `twinguard bench cmapss`: remaining useful life from
//! run-to-failure histories in NASA's C-MAPSS format.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rul::{FitOptions, RulModel, cmapss};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::detect_cmd::{read_model, sha256_file};

/// Largest model file read, bytes.
pub const MAX_MODEL_BYTES: u64 = 256 << 20;

/// Progress on stderr: one line per network, rewritten each epoch.
fn progress(p: &rul::Progress) {
    eprint!(
        "\rrul: network {}/{} epoch {:>3}  held-out RMSE {:6.2}",
        p.member, p.of, p.epoch, p.validation_rmse
    );
}

/// Fits a model on a training file; records where it learnt.
pub fn fit_file(train: &Path, options: FitOptions) -> Result<RulModel> {
    let units = cmapss::read(train)?;
    let mut model = rul::fit(&units, options, progress)?;
    eprintln!();
    model.training.source = train.display().to_string();
    model.training.sha256 = sha256_file(train)?;
    Ok(model)
}

/// `rul fit`: writes the model, returns a summary.
pub fn fit(train: &Path, options: FitOptions, out: &Path) -> Result<Value> {
    let model = fit_file(train, options)?;
    let text = serde_json::to_string(&model)?;
    std::fs::write(out, &text).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(json!({
        "model": out.display().to_string(),
        "sha256": hex::encode(Sha256::digest(text.as_bytes())),
        "units": model.training.units,
        "rows": model.training.rows,
        "sensors": model.sensors.iter().map(|s| format!("s{}", s + 1)).collect::<Vec<_>>(),
        "conditions": model.conditions.len(),
        "validation_rmse": model.training.validation_rmse,
        "interval": model.interval,
    }))
}

/// Reads and checks a model file.
pub fn load_model(path: &Path) -> Result<RulModel> {
    let model: RulModel = read_model(path, MAX_MODEL_BYTES, "twinguard RUL model")?;
    let model = model.upgraded();
    model
        .check()
        .with_context(|| format!("model {}", path.display()))?;
    Ok(model)
}

/// Writes `unit,rul,rul_low,rul_high`, one line per unit.
fn write_predictions(predictions: &[rul::Prediction], out: &Path) -> Result<()> {
    let mut text = String::from("unit,rul,rul_low,rul_high\n");
    for p in predictions {
        let _ = writeln!(
            text,
            "{},{:.2},{:.2},{:.2}",
            p.unit, p.rul, p.rul_low, p.rul_high
        );
    }
    std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))
}

/// `rul predict`: one estimate per unit of the test file, at its last cycle.
pub fn predict(model_path: &Path, test: &Path, out: &Path) -> Result<Value> {
    let model = load_model(model_path)?;
    let units = cmapss::read(test)?;
    let predictions = model.predict(&units);
    write_predictions(&predictions, out)?;
    Ok(json!({
        "predictions": out.display().to_string(),
        "units": predictions.len(),
        "model_sha256": sha256_file(model_path)?,
        "interval_coverage": model.interval.coverage,
    }))
}

/// Fit options from a JSON file (fields left out take their defaults).
pub fn read_options(path: &Path) -> Result<FitOptions> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read options {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("options {}", path.display()))
}

/// The settings `bench cmapss` fits with.
pub fn bench_options() -> FitOptions {
    FitOptions::default()
}

/// Published FD001 rows (method, RMSE, score), from ../shared/data/cmapss/SOURCE.md (the
/// RF row there is marked unverified and left out).
pub const PUBLISHED_FD001: [(&str, f64, Option<f64>); 8] = [
    ("MLP (Babu et al. 2016)", 37.56, Some(17972.0)),
    ("SVR (Babu et al. 2016)", 20.96, Some(1381.5)),
    ("CNN (Babu et al. 2016)", 18.45, Some(1286.7)),
    ("MODBNE (Zhang et al. 2016)", 15.04, Some(334.2)),
    ("LSTM (Zheng et al. 2017)", 16.14, Some(338.0)),
    ("DCNN (Li et al. 2018)", 12.61, Some(273.7)),
    ("DAST (Zhang et al. 2022)", 11.43, None),
    ("STAR (Fan et al. 2024)", 10.61, Some(169.0)),
];

#[derive(Debug, Serialize)]
pub struct SetCost {
    pub set: String,
    pub fit_peak_rss_kib: Option<u64>,
    pub model_bytes: usize,
    pub test_units: usize,
    pub predict_us_per_unit: f64,
}

#[derive(Debug, Serialize)]
pub struct CmapssResult {
    pub options: FitOptions,
    /// FD001's official test set, truth capped at the model's cap (the common protocol),
    /// and uncapped for reference.
    pub fd001: rul::Scores,
    pub fd001_uncapped_rmse: f64,
    pub fd001_validation_rmse: Vec<f64>,
    /// Per set, the networks' mean RMSE on the training engines each held out (every
    /// window, capped truth): the check available where the test truth is withheld.
    pub held_out_rmse: Vec<(String, f64)>,
    pub fit_seconds: Vec<(String, f64)>,
    /// Per set: the process's peak resident memory while reading the training set and
    /// fitting (KiB; None if the peak could not be reset or read), the model file's size
    /// (bytes) and the prediction cost per test engine (µs, median of five passes over
    /// the test set).
    pub costs: Vec<SetCost>,
    /// Test predictions written for the sets whose truth is withheld.
    pub written: Vec<String>,
    /// FD001's test engines: unit, capped truth, estimate, interval low and high.
    pub fd001_engines: Vec<(u32, f64, f64, f64, f64)>,
}

/// `bench cmapss`: fits on each training set, scores FD001's test set, writes FD002–FD004
/// test predictions to `out`.
pub fn bench(data: &Path, out: &Path, sets: &[&str], options: FitOptions) -> Result<CmapssResult> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let file = |stem: &str| -> Result<std::path::PathBuf> {
        let plain = data.join(format!("{stem}.txt"));
        let gz = data.join(format!("{stem}.txt.gz"));
        if plain.exists() {
            Ok(plain)
        } else if gz.exists() {
            Ok(gz)
        } else {
            bail!(
                "{}: no {stem}.txt or {stem}.txt.gz (is --data the C-MAPSS folder?)",
                data.display()
            )
        }
    };
    let mut result = CmapssResult {
        options: options.clone(),
        fd001: rul::Scores {
            rmse: f64::NAN,
            phm08: f64::NAN,
            coverage: f64::NAN,
        },
        fd001_uncapped_rmse: f64::NAN,
        fd001_validation_rmse: Vec::new(),
        held_out_rmse: Vec::new(),
        fit_seconds: Vec::new(),
        costs: Vec::new(),
        written: Vec::new(),
        fd001_engines: Vec::new(),
    };
    for set in sets {
        eprintln!("rul: {set}");
        let peak_reset = crate::bench_data::reset_peak_rss();
        let started = std::time::Instant::now();
        let model = fit_file(&file(&format!("train_{set}"))?, options.clone())?;
        result
            .fit_seconds
            .push((set.to_string(), started.elapsed().as_secs_f64()));
        let fit_peak_rss_kib = crate::bench_data::peak_rss_kib().filter(|_| peak_reset);
        let v = &model.training.validation_rmse;
        result.held_out_rmse.push((
            set.to_string(),
            v.iter().sum::<f64>() / v.len().max(1) as f64,
        ));
        let test = cmapss::read(&file(&format!("test_{set}"))?)?;
        let mut passes = Vec::new();
        let mut predictions = Vec::new();
        for _ in 0..5 {
            let started = std::time::Instant::now();
            predictions = model.predict(&test);
            passes.push(started.elapsed().as_secs_f64());
        }
        passes.sort_by(f64::total_cmp);
        let units = predictions.len();
        result.costs.push(SetCost {
            set: set.to_string(),
            fit_peak_rss_kib,
            model_bytes: serde_json::to_vec(&model).map_or(0, |v| v.len()),
            test_units: units,
            predict_us_per_unit: passes.get(2).copied().unwrap_or(f64::NAN) * 1e6
                / units.max(1) as f64,
        });
        let path = out.join(format!("pred_{set}.csv"));
        write_predictions(&predictions, &path)?;
        result.written.push(path.display().to_string());
        let truth_file = data.join(format!("RUL_{set}.txt"));
        if *set == "FD001" {
            let truth = rul::cmapss::read_rul(&truth_file)?;
            if truth.len() != predictions.len() {
                bail!(
                    "{}: {} values for {} test units",
                    truth_file.display(),
                    truth.len(),
                    predictions.len()
                );
            }
            let capped: Vec<f64> = truth.iter().map(|t| t.min(options.cap)).collect();
            result.fd001 = rul::score(&predictions, &capped);
            result.fd001_uncapped_rmse = rul::score(&predictions, &truth).rmse;
            result.fd001_validation_rmse = model.training.validation_rmse.clone();
            result.fd001_engines = predictions
                .iter()
                .zip(&capped)
                .map(|(p, t)| (p.unit, *t, p.rul, p.rul_low, p.rul_high))
                .collect();
        }
    }
    Ok(result)
}

/// FD001's test engines, ordered by their true remaining life: the truth as a line, each
/// estimate as a dot with its interval.
pub fn svg(r: &CmapssResult) -> String {
    let (w, h, left, right, top, bottom) = (1000.0, 480.0, 60.0, 20.0, 50.0, 50.0);
    let mut engines = r.fd001_engines.clone();
    engines.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let n = engines.len().max(2) as f64;
    let top_value = engines
        .iter()
        .map(|e| e.4.max(e.1))
        .fold(r.options.cap, f64::max)
        .ceil();
    let x = |i: usize| left + (w - left - right) * i as f64 / (n - 1.0);
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v / top_value);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        out,
        "<text x=\"{left}\" y=\"22\" font-size=\"15\">C-MAPSS FD001 test engines by true remaining life: RMSE {:.2}, score {:.1}, {:.0} % inside the {:.0} % intervals</text>",
        r.fd001.rmse,
        r.fd001.phm08,
        r.fd001.coverage * 100.0,
        r.options.coverage * 100.0
    );
    for v in (0..=top_value as usize).step_by(25) {
        let yv = y(v as f64);
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yv:.1}\" y2=\"{yv:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>",
            w - right,
            left - 6.0,
            yv + 4.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">remaining cycles</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">test engine (by true remaining life)</text>",
        h / 2.0,
        h / 2.0,
        (left + w - right) / 2.0,
        h - 14.0
    );
    for (i, e) in engines.iter().enumerate() {
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"#9ecae1\" stroke-width=\"3\"/>",
            x(i),
            y(e.3),
            y(e.4)
        );
    }
    let truth: Vec<String> = engines
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{:.1},{:.1}", x(i), y(e.1)))
        .collect();
    let _ = writeln!(
        out,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"black\" stroke-width=\"2\"/>",
        truth.join(" ")
    );
    for (i, e) in engines.iter().enumerate() {
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#d62728\"><title>engine {}: true {:.0}, estimate {:.1} ({:.1} to {:.1})</title></circle>",
            x(i),
            y(e.2),
            e.0,
            e.1,
            e.2,
            e.3,
            e.4
        );
    }
    let _ = writeln!(
        out,
        "<g transform=\"translate({:.1},{top})\"><line x1=\"0\" x2=\"24\" y1=\"6\" y2=\"6\" stroke=\"black\" stroke-width=\"2\"/><text x=\"30\" y=\"10\">true (capped at {})</text><circle cx=\"12\" cy=\"26\" r=\"3.5\" fill=\"#d62728\"/><text x=\"30\" y=\"30\">estimate</text><line x1=\"12\" x2=\"12\" y1=\"38\" y2=\"54\" stroke=\"#9ecae1\" stroke-width=\"3\"/><text x=\"30\" y=\"50\">interval</text></g>",
        left + 20.0,
        r.options.cap
    );
    out += "</svg>\n";
    out
}

/// Our FD001 row among the published ones, sorted by RMSE.
pub fn tables(r: &CmapssResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "C-MAPSS FD001, official test set (100 engines, one estimate each at its last cycle; truth capped at {})",
        r.options.cap
    );
    let _ = writeln!(
        out,
        "twinguard: ensemble of {} networks (hidden {:?}) on {}-cycle windows\n",
        r.options.ensemble, r.options.hidden, r.options.window
    );
    let mut rows: Vec<(String, f64, Option<f64>)> = crate::rul_cmd::PUBLISHED_FD001
        .iter()
        .map(|(m, rmse, s)| (m.to_string(), *rmse, *s))
        .collect();
    if r.fd001.rmse.is_finite() {
        rows.push((
            "twinguard (this run)".into(),
            r.fd001.rmse,
            Some(r.fd001.phm08),
        ));
    }
    rows.sort_by(|a, b| a.1.total_cmp(&b.1));
    let _ = writeln!(out, "{:<30} {:>8} {:>10}", "Method", "RMSE", "score");
    for (m, rmse, s) in rows {
        let s = s.map_or("-".to_string(), |s| format!("{s:.1}"));
        let _ = writeln!(out, "{m:<30} {rmse:>8.2} {s:>10}");
    }
    if r.fd001.rmse.is_finite() {
        let _ = writeln!(
            out,
            "\nours: uncapped-truth RMSE {:.2}; {:.0} % of true values inside the {:.0} % interval; held-out RMSE per network {:?}",
            r.fd001_uncapped_rmse,
            r.fd001.coverage * 100.0,
            r.options.coverage * 100.0,
            r.fd001_validation_rmse
                .iter()
                .map(|v| (v * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    }
    for ((set, s), (_, v)) in r.fit_seconds.iter().zip(&r.held_out_rmse) {
        let _ = writeln!(
            out,
            "{set}: fitted in {s:.1} s; held-out training engines RMSE {v:.2}"
        );
    }
    for c in &r.costs {
        let _ = writeln!(
            out,
            "{}: peak memory while fitting {}; model file {:.0} KiB; prediction {:.1} µs per engine ({} engines)",
            c.set,
            c.fit_peak_rss_kib
                .map_or("unknown".to_string(), |k| format!(
                    "{:.1} MiB",
                    k as f64 / 1024.0
                )),
            c.model_bytes as f64 / 1024.0,
            c.predict_us_per_unit,
            c.test_units
        );
    }
    for w in &r.written {
        let _ = writeln!(out, "wrote {w}");
    }
    out
}

/// The golden run of a RUL model at admission: RMSE, PHM08 score and interval coverage on
/// a C-MAPSS-format test file against its true remaining lives.
pub fn golden(
    model_path: &Path,
    test: &Path,
    truth: &Path,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let model = load_model(model_path)?;
    let units = cmapss::read(test)?;
    let truth_values = cmapss::read_rul(truth)?;
    if truth_values.len() != units.len() {
        anyhow::bail!(
            "{} has {} units and {} gives {} true lives",
            test.display(),
            units.len(),
            truth.display(),
            truth_values.len()
        );
    }
    let s = rul::score(&model.predict(&units), &truth_values);
    Ok(std::collections::BTreeMap::from([
        ("units".to_string(), units.len() as f64),
        ("rmse".to_string(), s.rmse),
        ("score".to_string(), s.phm08),
        ("coverage".to_string(), s.coverage),
    ]))
}
