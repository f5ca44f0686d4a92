//! SKAB (Skoltech Anomaly Benchmark, v0.9): 34 labelled experiments on a water
//! circulation testbed. The leaderboard's protocol: each file is split chronologically,
//! the first 400 rows to fit, the rest to test; the outlier table counts points over all
//! test parts; the changepoint table is NAB with a 60 s window right of each changepoint,
//! predicted changepoints being |diff(prediction)|.

use std::path::{Path, PathBuf};

use detect::multivariate::{FitOptions, PcaModel};
use serde::Serialize;

use crate::DataError;
use crate::score::{Confusion, Nab, NabSeries, changepoints, nab};

/// Rows of each file used for fitting.
pub const TRAIN_ROWS: usize = 400;
/// The NAB window, seconds.
pub const WINDOW_S: i64 = 60;
/// The groups of labelled experiments.
pub const GROUPS: [&str; 3] = ["valve1", "valve2", "other"];

/// One experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    pub columns: Vec<String>,
    pub times_s: Vec<i64>,
    pub rows: Vec<Vec<f64>>,
    pub anomaly: Vec<bool>,
    pub changepoint: Vec<bool>,
}

/// Seconds since 1970 of "YYYY-MM-DD hh:mm:ss".
pub fn parse_datetime(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Reads one SKAB file (`;`-separated, `datetime` first, `anomaly` and `changepoint` last).
pub fn read(path: &Path) -> Result<Experiment, DataError> {
    let p = path.display().to_string();
    let file_err = |message: String| DataError::File {
        path: p.clone(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b';')
        .from_path(path)
        .map_err(|e| file_err(e.to_string()))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| file_err(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let find = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            file_err(format!(
                "no {name:?} column (columns: {})",
                header.join(", ")
            ))
        })
    };
    let (ti, ai, ci) = (find("datetime")?, find("anomaly")?, find("changepoint")?);
    let signals: Vec<usize> = (0..header.len())
        .filter(|i| ![ti, ai, ci].contains(i))
        .collect();
    let mut e = Experiment {
        name: path
            .parent()
            .and_then(Path::file_name)
            .map(|g| format!("{}/", g.to_string_lossy()))
            .unwrap_or_default()
            + &path
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default(),
        columns: signals
            .iter()
            .filter_map(|&i| header.get(i).cloned())
            .collect(),
        times_s: vec![],
        rows: vec![],
        anomaly: vec![],
        changepoint: vec![],
    };
    for (n, record) in reader.records().enumerate() {
        let line = n + 2;
        let at = |message: String| DataError::At {
            path: p.clone(),
            line,
            message,
        };
        let record = record.map_err(|e| at(e.to_string()))?;
        let cell = |i: usize| record.get(i).unwrap_or("").trim();
        let number = |i: usize| crate::number(&record, &header, i).map_err(at);
        let t = parse_datetime(cell(ti)).ok_or_else(|| {
            at(format!(
                "datetime {:?} is not YYYY-MM-DD hh:mm:ss",
                cell(ti)
            ))
        })?;
        e.times_s.push(t);
        e.anomaly.push(number(ai)? >= 0.5);
        e.changepoint.push(number(ci)? >= 0.5);
        e.rows.push(
            signals
                .iter()
                .map(|&i| number(i))
                .collect::<Result<_, _>>()?,
        );
    }
    if e.rows.len() <= TRAIN_ROWS {
        return Err(file_err(format!(
            "{} rows: more than {TRAIN_ROWS} are needed",
            e.rows.len()
        )));
    }
    Ok(e)
}

/// The labelled experiments under `dir` (valve1, valve2, other), in a stable order.
pub fn experiments(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for g in GROUPS {
        let group = dir.join(g);
        let entries = std::fs::read_dir(&group).map_err(|e| DataError::File {
            path: group.display().to_string(),
            message: format!("{e} (is --data the SKAB data folder?)"),
        })?;
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect();
        names.sort_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(u32::MAX)
        });
        files.extend(names);
    }
    Ok(files)
}

/// Our result on the whole protocol, with the per-file detail.
#[derive(Debug, Clone, Serialize)]
pub struct SkabResult {
    pub detector: String,
    pub files: usize,
    pub confusion: Confusion,
    pub f1: f64,
    pub far: f64,
    pub mar: f64,
    pub nab: Nab,
    pub per_file: Vec<FileResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    pub name: String,
    pub confusion: Confusion,
}

/// Runs the protocol with a PCA detector fitted per file; `progress` is told each file.
/// Runs the protocol with the model fitted on every column but those in `exclude`.
pub fn run(
    dir: &Path,
    options: FitOptions,
    exclude: &[String],
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<SkabResult, DataError> {
    let files = experiments(dir)?;
    let mut total = Confusion::default();
    let mut series = Vec::new();
    let mut per_file = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let mut e = read(path)?;
        progress(i + 1, files.len(), &e.name);
        if let Some(unknown) = exclude.iter().find(|x| !e.columns.contains(x)) {
            return Err(DataError::File {
                path: path.display().to_string(),
                message: format!(
                    "no column {unknown:?} to leave out (columns: {})",
                    e.columns.join(", ")
                ),
            });
        }
        let keep: Vec<bool> = e.columns.iter().map(|c| !exclude.contains(c)).collect();
        let pick = |row: &Vec<f64>| -> Vec<f64> {
            row.iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(v, _)| *v)
                .collect()
        };
        e.rows = e.rows.iter().map(pick).collect();
        e.columns.retain(|c| !exclude.contains(c));
        let (train, test) = e.rows.split_at(TRAIN_ROWS);
        let model = PcaModel::fit(&e.columns, train, options).map_err(|err| DataError::File {
            path: path.display().to_string(),
            message: format!("fitting the first {TRAIN_ROWS} rows: {err}"),
        })?;
        // The scorer sees the training rows first, so that lags and smoothing start warm.
        let mut scorer = model.scorer();
        for row in train {
            scorer.push(row);
        }
        let predicted: Vec<bool> = test
            .iter()
            .map(|r| scorer.push(r).is_some_and(|s| s.flag))
            .collect();
        let truth = e.anomaly.get(TRAIN_ROWS..).unwrap_or_default();
        let c = Confusion::of(truth, &predicted);
        total.add(c);
        per_file.push(FileResult {
            name: e.name.clone(),
            confusion: c,
        });
        series.push(NabSeries {
            times_s: e.times_s.get(TRAIN_ROWS..).unwrap_or_default().to_vec(),
            truth: e.changepoint.get(TRAIN_ROWS..).unwrap_or_default().to_vec(),
            predicted: changepoints(&predicted),
        });
    }
    Ok(SkabResult {
        detector: format!(
            "twinguard PCA T²+SPE (explained variance {}, confidence {}, lags {}, smoothing {}{})",
            options.explained_variance,
            options.confidence,
            options.lags,
            options.smoothing,
            if exclude.is_empty() {
                String::new()
            } else {
                format!("; without {}", exclude.join(", "))
            }
        ),
        files: files.len(),
        confusion: total,
        f1: total.f1(),
        far: total.far(),
        mar: total.mar(),
        nab: nab(&series, WINDOW_S),
        per_file,
    })
}

/// The leaderboard's outlier rows (algorithm, F1, FAR %, MAR %), from SKAB's README.
pub const PUBLISHED_OUTLIER: [(&str, f64, f64, f64); 10] = [
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T-squared+Q (PCA-based)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T-squared", 0.66, 19.21, 42.6),
    ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla LSTM", 0.54, 12.54, 59.53),
    ("MSCRED", 0.36, 49.94, 69.88),
    ("Vanilla AE", 0.39, 2.59, 75.15),
    ("Isolation forest", 0.29, 2.56, 82.89),
];

/// The leaderboard's changepoint rows (algorithm, NAB standard, LowFP, LowFN).
pub const PUBLISHED_NAB: [(&str, f64, f64, f64); 10] = [
    ("MSCRED", 32.42, 16.53, 40.28),
    ("Isolation forest", 26.16, 19.5, 30.82),
    ("T-squared+Q (PCA-based)", 25.35, 14.51, 31.33),
    ("Conv-AE", 23.61, 21.54, 27.55),
    ("LSTM-AE", 23.51, 20.11, 25.91),
    ("T-squared", 19.54, 10.2, 24.31),
    ("MSET", 13.84, 10.22, 17.37),
    ("Vanilla AE", 11.41, 6.53, 13.91),
    ("Vanilla LSTM", 11.31, -3.8, 17.25),
    ("ArimaFD", -0.09, -0.17, -0.06),
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn datetimes_parse_to_seconds() {
        assert_eq!(parse_datetime("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_datetime("2020-03-09 10:14:33"), Some(1_583_748_873));
        assert_eq!(parse_datetime("2020-13-09 10:14:33"), None);
        assert_eq!(parse_datetime("yesterday"), None);
    }

    #[test]
    fn a_bad_cell_is_named_with_its_file_line_and_column() {
        let dir = std::env::temp_dir().join(format!("skab-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("1.csv");
        std::fs::write(&path, "datetime;A;anomaly;changepoint\n2020-03-09 10:14:33;1.5;0.0;0.0\n2020-03-09 10:14:34;x;0.0;0.0\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(
            e.ends_with("1.csv, line 3: column \"A\": \"x\" is not a number"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
