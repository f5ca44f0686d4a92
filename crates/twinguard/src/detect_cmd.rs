//! `twinguard detect fit|score`: learn normal behaviour from a CSV of plant history, then
//! score another CSV row by row (time, score, flag, top contributors, episode class).
//!
//! Cells: numbers; empty, `NA`, `NaN` and `null` are missing. In `fit`, a row with a
//! missing value is left out (the count is reported and kept in the model file), and the
//! rows either side of it are not taken for consecutive (no lag or prediction spans it). In
//! `score`, such a row is written with an empty score, flag 0, the missing columns as
//! contributors (`missing:COL`) and class `missing_data`; it does not enter the lags or the
//! smoothing. Any other non-numeric cell is an error naming its line and column.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use detect::multivariate::{Episodes, FitOptions, PcaModel, TrainingInfo};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// `detect fit`'s detector settings unless given.
pub const DEFAULTS: FitOptions = FitOptions {
    explained_variance: 0.9,
    confidence: 0.99,
    lags: 0,
    smoothing: 1,
    folds: 5,
    ridge: 0.0,
    fold_block_rows: 0,
    relation_tolerance: 0.05,
    off_delay: 0,
    hold_constants: true,
};

/// Rows `fit` holds in memory at most.
pub const MAX_FIT_ROWS: usize = 2_000_000;
/// The largest model file read.
pub const MAX_MODEL_BYTES: u64 = 64 << 20;
/// Points a plot draws per series at most.
const PLOT_POINTS: usize = 2000;

/// How a CSV file is read.
#[derive(Debug, Clone)]
pub struct CsvSpec {
    pub path: PathBuf,
    /// The time column; none: the first column if its name says time, else row numbers.
    pub time_col: Option<String>,
    pub sep: u8,
    pub exclude: Vec<String>,
}

/// The separator from `--sep`: one character, or `tab`.
pub fn separator(s: &str) -> Result<u8> {
    match s {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        _ if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes().first().copied().unwrap_or(b',')),
        _ => bail!("--sep must be one ASCII character or \"tab\", got {s:?}"),
    }
}

/// An open CSV file: its header resolved into the time column and the value columns.
struct Table {
    reader: csv::Reader<std::fs::File>,
    time: Option<usize>,
    /// (index in the record, name) of each value column.
    columns: Vec<(usize, String)>,
    path: String,
}

fn is_missing(cell: &str) -> bool {
    matches!(cell, "" | "NA" | "NaN" | "nan" | "null" | "NULL")
}

impl Table {
    /// Opens `spec`'s file; its value columns are `only` (in that order) when given,
    /// else every column but the time column and the excluded ones.
    fn open(spec: &CsvSpec, only: Option<&[String]>) -> Result<Table> {
        let path = spec.path.display().to_string();
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(spec.sep)
            .from_path(&spec.path)
            .with_context(|| format!("cannot read {path}"))?;
        let header: Vec<String> = reader
            .headers()
            .with_context(|| format!("{path}: cannot read the header line"))?
            .iter()
            .map(|h| h.trim().to_string())
            .collect();
        let find = |name: &str, what: &str| {
            header.iter().position(|h| h == name).with_context(|| {
                format!(
                    "{path}: no column {name:?} ({what}); the columns are {}",
                    header.join(", ")
                )
            })
        };
        let time = match &spec.time_col {
            Some(c) => Some(find(c, "--time-col")?),
            None => header
                .first()
                .filter(|h| {
                    matches!(
                        h.to_ascii_lowercase().as_str(),
                        "time" | "datetime" | "timestamp" | "date"
                    )
                })
                .map(|_| 0),
        };
        for e in &spec.exclude {
            find(e, "--exclude")?;
        }
        let columns: Vec<(usize, String)> = match only {
            Some(names) => names
                .iter()
                .map(|c| {
                    header.iter().position(|h| h == c).map(|i| (i, c.clone())).with_context(|| {
                        format!("{path}: the model needs column {c:?}, which this file does not have")
                    })
                })
                .collect::<Result<_>>()?,
            None => header
                .iter()
                .enumerate()
                .filter(|(i, h)| Some(*i) != time && !spec.exclude.contains(h))
                .map(|(i, h)| (i, h.clone()))
                .collect(),
        };
        if columns.is_empty() {
            bail!("{path}: no value columns left");
        }
        Ok(Table {
            reader,
            time,
            columns,
            path,
        })
    }

    /// The next row: (line, time, values). Values follow `columns`; `None` is missing.
    fn rows(&mut self) -> impl Iterator<Item = Result<(usize, String, Vec<Option<f64>>)>> + '_ {
        let (time, columns, path) = (self.time, self.columns.clone(), self.path.clone());
        self.reader.records().enumerate().map(move |(n, record)| {
            let line = n + 2;
            let record = record.with_context(|| format!("{path}, line {line}"))?;
            let t = time
                .and_then(|i| record.get(i))
                .map_or_else(|| (line - 1).to_string(), |s| s.trim().to_string());
            let values = columns
                .iter()
                .map(|(i, name)| {
                    let cell = record.get(*i).unwrap_or("").trim();
                    if is_missing(cell) {
                        return Ok(None);
                    }
                    match cell.parse::<f64>() {
                        Ok(v) if v.is_finite() => Ok(Some(v)),
                        _ => {
                            bail!("{path}, line {line}, column {name:?}: {cell:?} is not a number")
                        }
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((line, t, values))
        })
    }
}

/// SHA-256 of a file's bytes, hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// `detect fit`: the model file, and a summary.
pub fn fit(spec: &CsvSpec, options: FitOptions, out: &Path) -> Result<Value> {
    let mut table = Table::open(spec, None)?;
    let columns: Vec<String> = table.columns.iter().map(|(_, n)| n.clone()).collect();
    let mut rows = Vec::new();
    let mut skipped = 0usize;
    // A row kept after rows left out does not follow the one kept before it.
    let mut breaks = Vec::new();
    let mut gap = false;
    for row in table.rows() {
        let (line, _, values) = row?;
        match values.into_iter().collect::<Option<Vec<f64>>>() {
            Some(v) => {
                if std::mem::take(&mut gap) && !rows.is_empty() {
                    breaks.push(rows.len());
                }
                rows.push(v);
            }
            None => {
                skipped += 1;
                gap = true;
            }
        }
        if rows.len() > MAX_FIT_ROWS {
            bail!(
                "{}: more than {MAX_FIT_ROWS} rows by line {line}; fit on a sample",
                spec.path.display()
            );
        }
        if (rows.len() + skipped).is_multiple_of(100_000) {
            eprint!("\rdetect fit: {} rows read", rows.len() + skipped);
        }
    }
    eprintln!(
        "\rdetect fit: {} rows read, {skipped} left out for missing values",
        rows.len() + skipped
    );
    let mut model = PcaModel::fit_segments(&columns, &rows, &breaks, options)
        .map_err(|e| anyhow::anyhow!("{}: {e}", spec.path.display()))?;
    model.training = TrainingInfo {
        source: spec.path.display().to_string(),
        sha256: sha256_file(&spec.path)?,
        skipped_rows: skipped,
    };
    let text = serde_json::to_string_pretty(&model)?;
    std::fs::write(out, text + "\n").with_context(|| format!("cannot write {}", out.display()))?;
    let (switch_bands, held_constant) = model.rules_described();
    Ok(json!({
        "model": out.display().to_string(),
        "columns": model.columns,
        "constant_columns": model.constant_columns,
        "rows": rows.len(),
        "skipped_rows": skipped,
        "components": model.eigenvalues.len(),
        "t2_limit": model.t2_limit,
        "spe_limit": model.spe_limit,
        "threshold": model.threshold,
        "relations": relations(&model),
        "switch_bands": switch_bands,
        "held_constant": held_constant,
    }))
}

/// The gated relations a model learnt, in words: "flow from p_in, p_out while pump is
/// on (alarm beyond 2.5)".
pub fn relations(model: &PcaModel) -> Vec<String> {
    let name = |c: usize| model.columns.get(c).cloned().unwrap_or_default();
    model
        .relations
        .iter()
        .map(|r| {
            format!(
                "{} from {} while {} is on (alarm beyond {:.3})",
                name(r.target),
                r.regressors
                    .iter()
                    .map(|&c| name(c))
                    .collect::<Vec<_>>()
                    .join(", "),
                name(r.gate),
                model.options.relation_tolerance * r.on_mean
            )
        })
        .collect()
}

/// A model file's JSON, read only up to `max` bytes; `what` names the kind of model in
/// the error when it does not parse.
pub(crate) fn read_model<T: serde::de::DeserializeOwned>(
    path: &Path,
    max: u64,
    what: &str,
) -> Result<T> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read model {}", path.display()))?
        .len();
    if size > max {
        bail!(
            "model {} is {size} bytes; at most {max} are read",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read model {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("model {} is not a {what}", path.display()))
}

/// Reads and checks a model file.
pub fn load_model(path: &Path) -> Result<PcaModel> {
    let model: PcaModel = read_model(path, MAX_MODEL_BYTES, "twinguard detector file")?;
    model
        .check()
        .map_err(|e| anyhow::anyhow!("model {}: {e}", path.display()))?;
    Ok(model)
}

/// `detect score`: writes `time,score,flag,contributors,class` per row; returns a summary.
pub fn score(model_path: &Path, spec: &CsvSpec, out: &Path, plot: Option<&Path>) -> Result<Value> {
    let model = load_model(model_path)?;
    let mut table = Table::open(spec, Some(&model.columns))?;
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
    w.write_record(["time", "score", "flag", "contributors", "class"])?;
    let mut scorer = model.scorer();
    let mut episodes = Episodes::default();
    let (mut rows, mut flagged, mut missing) = (0usize, 0usize, 0usize);
    let mut classes = std::collections::BTreeMap::<&str, usize>::new();
    let mut previous = "normal";
    let mut series: Vec<(f64, bool, Vec<f64>)> = Vec::new();
    for row in table.rows() {
        let (_, time, values) = row?;
        rows += 1;
        let Some(full) = values.iter().copied().collect::<Option<Vec<f64>>>() else {
            missing += 1;
            let names: Vec<String> = values
                .iter()
                .zip(&model.columns)
                .filter(|(v, _)| v.is_none())
                .map(|(_, c)| format!("missing:{c}"))
                .collect();
            w.write_record([time.as_str(), "", "0", &names.join(";"), "missing_data"])?;
            continue;
        };
        let Some(s) = scorer.push(&full) else {
            w.write_record([time.as_str(), "", "0", "", "warming_up"])?;
            continue;
        };
        let (class, top) = episodes.push(&model, &s);
        flagged += usize::from(s.flag);
        if class.as_str() != previous && s.flag {
            *classes.entry(class.as_str()).or_default() += 1;
        }
        previous = if s.flag { class.as_str() } else { "normal" };
        let contributors: Vec<&str> = top
            .iter()
            .filter_map(|&i| model.columns.get(i).map(String::as_str))
            .collect();
        w.write_record([
            time.as_str(),
            &format!("{:.6}", s.score),
            if s.flag { "1" } else { "0" },
            &contributors.join(";"),
            class.as_str(),
        ])?;
        if plot.is_some() {
            series.push((s.score, s.flag, full));
        }
        if rows.is_multiple_of(100_000) {
            eprint!("\rdetect score: {rows} rows");
        }
    }
    w.flush()?;
    eprintln!("\rdetect score: {rows} rows, {flagged} flagged, {missing} with missing values");
    if let Some(p) = plot {
        std::fs::write(p, svg_plot(&model, &series))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(json!({
        "scores": out.display().to_string(),
        "rows": rows,
        "flagged": flagged,
        "rows_with_missing_values": missing,
        "episodes_by_class": classes,
        "threshold": model.threshold,
    }))
}

/// An SVG of the first five signals (each scaled to its own range), the score with its
/// threshold, and the flagged spans shaded.
pub fn svg_plot(model: &PcaModel, series: &[(f64, bool, Vec<f64>)]) -> String {
    let (w, h, pad) = (1000.0, 560.0, 40.0);
    let (sig_h, score_top) = (300.0, 360.0);
    let n = series.len().max(2);
    let step = n.div_ceil(PLOT_POINTS).max(1);
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1) as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
    );
    // Flagged spans.
    let mut start = None;
    for (i, (_, flag, _)) in series
        .iter()
        .enumerate()
        .chain(std::iter::once((n, &(0.0, false, vec![]))))
    {
        match (start, *flag) {
            (None, true) => start = Some(i),
            (Some(a), false) => {
                out += &format!(
                    "<rect x=\"{:.1}\" y=\"{pad}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f4c7c3\"/>\n",
                    x(a),
                    (x(i.min(n - 1)) - x(a)).max(1.0),
                    h - 2.0 * pad
                );
                start = None;
            }
            _ => {}
        }
    }
    let colours = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf"];
    for (c, colour) in colours.iter().enumerate().take(model.columns.len()) {
        let values: Vec<f64> = series
            .iter()
            .map(|s| s.2.get(c).copied().unwrap_or(0.0))
            .collect();
        let (lo, hi) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
        let span = (hi - lo).max(1e-12);
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), pad + sig_h * (1.0 - (v - lo) / span)))
            .collect();
        out += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1\" points=\"{}\"/>\n",
            points.join(" ")
        );
        let name = model.columns.get(c).map(String::as_str).unwrap_or("");
        out += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{}</text>\n",
            pad + 160.0 * c as f64,
            pad - 8.0,
            xml_escape(name)
        );
    }
    let max_score = series
        .iter()
        .map(|s| s.0)
        .fold(model.threshold * 2.0, f64::max);
    let sy = |v: f64| score_top + (h - pad - score_top) * (1.0 - v / max_score);
    let points: Vec<String> = series
        .iter()
        .enumerate()
        .step_by(step)
        .map(|(i, s)| format!("{:.1},{:.1}", x(i), sy(s.0)))
        .collect();
    out += &format!(
        "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"1\" points=\"{}\"/>\n",
        points.join(" ")
    );
    out += &format!(
        "<line x1=\"{pad}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-dasharray=\"4 3\"/>\n<text x=\"{pad}\" y=\"{:.1}\">score (threshold {:.3} dashed; flagged rows shaded)</text>\n</svg>\n",
        w - pad,
        sy(model.threshold),
        sy(model.threshold),
        score_top - 6.0,
        model.threshold
    );
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Writes `v` as pretty JSON to stdout.
pub fn print(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

/// The golden run of a detector model at admission: every row of `data` (the model's
/// columns and a 0/1 `label`) scored; precision, recall, F1 and false-alarm rate of the
/// flags against the labels, over the rows scored.
pub fn golden(model_path: &Path, data: &Path) -> Result<std::collections::BTreeMap<String, f64>> {
    let model = load_model(model_path)?;
    let mut scorer = model.scorer();
    golden_rows(&model.columns, data, |row| {
        Ok(scorer.push(row).map(|s| s.flag))
    })
}

/// The golden run of an admitted ONNX detector: the same data set and metrics as a
/// twinguard detector's.
pub fn golden_onnx(
    model_path: &Path,
    interface: &models::OnnxInterface,
    data: &Path,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let model = OnnxRows::load(model_path, interface)?;
    let mut stream = detect::multivariate::RowStream::default();
    golden_rows(&interface.columns, data, |row| {
        stream
            .push(&model, row)
            .map(|s| Some(s.flag))
            .map_err(|e| anyhow::anyhow!("{}: {e}", model_path.display()))
    })
}

/// An admitted ONNX graph as a row model of the live detector.
#[derive(Debug)]
pub struct OnnxRows(models::runtime::OnnxDetector);

impl OnnxRows {
    pub fn load(path: &Path, interface: &models::OnnxInterface) -> Result<OnnxRows> {
        Ok(OnnxRows(models::runtime::OnnxDetector::load(
            path, interface,
        )?))
    }
}

impl detect::multivariate::RowModel for OnnxRows {
    fn columns(&self) -> &[String] {
        &self.0.interface().columns
    }
    fn threshold(&self) -> f64 {
        self.0.interface().threshold
    }
    fn smoothing(&self) -> usize {
        self.0.interface().smoothing
    }
    fn score(&self, row: &[f64]) -> Result<(f64, Vec<f64>), String> {
        self.0.score(row)
    }
}

/// Scores every labelled row of `data` (CSV of `columns` plus a 0/1 `label`) with
/// `flag` (None while the model warms up) and measures the flags against the labels.
fn golden_rows(
    columns: &[String],
    data: &Path,
    mut flag: impl FnMut(&[f64]) -> Result<Option<bool>>,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut columns = columns.to_vec();
    columns.push("label".into());
    let spec = CsvSpec {
        path: data.to_path_buf(),
        time_col: None,
        sep: b',',
        exclude: vec![],
    };
    let mut table = Table::open(&spec, Some(&columns))?;
    let (mut tp, mut fp, mut tn, mut fneg) = (0u64, 0u64, 0u64, 0u64);
    for row in table.rows() {
        let (_, time, mut values) = row?;
        let label = values.pop().flatten();
        let Some(full) = values.into_iter().collect::<Option<Vec<f64>>>() else {
            continue;
        };
        let Some(label) = label else {
            bail!("{}: row {time} has no label", data.display());
        };
        let Some(flag) = flag(&full)? else {
            continue;
        };
        match (flag, label > 0.5) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fneg += 1,
        }
    }
    let rows = tp + fp + tn + fneg;
    if rows == 0 {
        bail!("{}: no row could be scored", data.display());
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fneg);
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    Ok(std::collections::BTreeMap::from([
        ("rows".to_string(), rows as f64),
        ("precision".to_string(), precision),
        ("recall".to_string(), recall),
        ("f1".to_string(), f1),
        ("far".to_string(), ratio(fp, fp + tn)),
    ]))
}
