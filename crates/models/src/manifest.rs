//! The manifest a publisher writes for a model, and the files a model is made of.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// The kinds of model twinguard knows: its own detector and RUL files, and ONNX graphs.
pub const KINDS: [&str; 3] = ["detector", "rul", "onnx"];
/// The signature's file name inside a model directory (a single-file model's signature is
/// `<file>.sig.json` beside it).
pub const SIGNATURE_FILE: &str = "model.sig.json";
/// Most files in one model directory.
pub const MAX_FILES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `[a-z0-9._-]`, 1 to 64 characters.
    pub name: String,
    pub version: String,
    /// One of [`KINDS`].
    pub kind: String,
    pub publisher: String,
    /// The file that is the model proper, relative to the model (for a single file, its
    /// name).
    pub entry: String,
    pub intended_use: String,
    pub limitations: String,
    pub training_data: TrainingData,
    /// What the publisher measured, by name (`f1`, `rmse`, …).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// URLs and host names the model's files are documented to contain; any other the
    /// scanner finds refuses the model.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The golden data set admission runs the model on, and the thresholds it must meet.
    #[serde(default)]
    pub golden: Option<Golden>,
    /// What an ONNX graph is to the twin (kind `onnx` only): which signals go in, what
    /// comes out, and when that is an alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<OnnxInterface>,
}

/// The roles an ONNX graph can have in the twin.
pub const ONNX_ROLES: [&str; 1] = ["detector"];
/// What an ONNX detector's output is.
pub const ONNX_OUTPUTS: [&str; 2] = ["reconstruction", "score"];
/// Most signals one ONNX graph reads.
pub const MAX_ONNX_COLUMNS: usize = 4096;

/// An ONNX graph's contract with the twin. The graph takes one float tensor of shape
/// `[1, columns.len()]`: the signals' newest values, in this order, in their units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxInterface {
    /// One of [`ONNX_ROLES`].
    pub role: String,
    /// The twin signals the graph reads, in input order.
    pub columns: Vec<String>,
    /// `reconstruction`: the first output is the input reconstructed (as wide as the
    /// input); the score is the sum of squared, scaled reconstruction errors, each
    /// signal's term its contribution. `score`: the first output's first element is the
    /// score itself.
    pub output: String,
    /// Per column, the unit its reconstruction error is measured in (for example its
    /// standard deviation in training); 1 when left out.
    #[serde(default)]
    pub scale: Option<Vec<f64>>,
    /// A (smoothed) score above this is an alarm.
    pub threshold: f64,
    /// Scores averaged over this many rows.
    #[serde(default = "one_row")]
    pub smoothing: usize,
}

fn one_row() -> usize {
    1
}

impl OnnxInterface {
    /// Everything the interface must be, named.
    pub fn check(&self) -> Result<(), String> {
        if !ONNX_ROLES.contains(&self.role.as_str()) {
            return Err(format!(
                "onnx.role {:?} is not one this build runs ({})",
                self.role,
                ONNX_ROLES.join(", ")
            ));
        }
        if !ONNX_OUTPUTS.contains(&self.output.as_str()) {
            return Err(format!(
                "onnx.output {:?} is not one of {}",
                self.output,
                ONNX_OUTPUTS.join(", ")
            ));
        }
        if self.columns.is_empty() || self.columns.len() > MAX_ONNX_COLUMNS {
            return Err(format!(
                "onnx.columns names {} signals: 1 to {MAX_ONNX_COLUMNS} are needed",
                self.columns.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.columns {
            if c.trim().is_empty() || !seen.insert(c.as_str()) {
                return Err(format!("onnx.columns: {c:?} is empty or named twice"));
            }
        }
        if let Some(scale) = &self.scale {
            if scale.len() != self.columns.len() {
                return Err(format!(
                    "onnx.scale has {} values for {} columns",
                    scale.len(),
                    self.columns.len()
                ));
            }
            if let Some((i, v)) = scale
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_finite() && **v > 0.0))
            {
                return Err(format!(
                    "onnx.scale[{i}] is {v}: every scale must be positive and finite"
                ));
            }
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(format!(
                "onnx.threshold is {}: it must be positive and finite",
                self.threshold
            ));
        }
        if !(1..=10_000).contains(&self.smoothing) {
            return Err(format!(
                "onnx.smoothing is {}: 1 to 10000 rows",
                self.smoothing
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingData {
    pub description: String,
    /// SHA-256 of the training data (as the publisher computed it), hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    /// A file of the model: CSV of the model's columns plus a 0/1 `label` column
    /// (detector), or a C-MAPSS-format test file (rul).
    pub data: String,
    /// For rul: the file of true remaining lives, one per unit.
    #[serde(default)]
    pub truth: Option<String>,
    /// Metric name → bounds: detector `f1`, `precision`, `recall`, `far`; rul `rmse`,
    /// `score`.
    pub thresholds: BTreeMap<String, Bound>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

impl Bound {
    /// `None` when `value` is within the bound, else what it breaks.
    pub fn broken_by(&self, value: f64) -> Option<String> {
        if !value.is_finite() {
            return Some(format!("is {value}"));
        }
        if let Some(min) = self.min
            && value < min
        {
            return Some(format!("{value:.4} is below the minimum {min}"));
        }
        if let Some(max) = self.max
            && value > max
        {
            return Some(format!("{value:.4} is above the maximum {max}"));
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Manifest {
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest, ModelError> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| ModelError::invalid(path, format!("is not a model manifest: {e}")))?;
        m.check().map_err(|e| ModelError::invalid(path, e))?;
        Ok(m)
    }

    /// Everything a manifest must be, named.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        };
        if !name_ok(&self.name) {
            return Err(format!(
                "name {:?} must be 1 to 64 of a-z, 0-9, '.', '_', '-'",
                self.name
            ));
        }
        if self.version.is_empty()
            || self.version.len() > 32
            || !self
                .version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        {
            return Err(format!(
                "version {:?} must be 1 to 32 of letters, digits, '.', '_', '+', '-'",
                self.version
            ));
        }
        if !KINDS.contains(&self.kind.as_str()) {
            return Err(format!(
                "kind {:?} is not one of {}",
                self.kind,
                KINDS.join(", ")
            ));
        }
        if self.publisher.trim().is_empty() {
            return Err("publisher is empty".into());
        }
        if self.intended_use.trim().is_empty() || self.limitations.trim().is_empty() {
            return Err("intended_use and limitations must be stated".into());
        }
        if !is_hex64(&self.training_data.sha256) {
            return Err(format!(
                "training_data.sha256 {:?} is not 64 hex digits",
                self.training_data.sha256
            ));
        }
        if let Some(g) = &self.golden
            && g.thresholds.is_empty()
        {
            return Err("golden.thresholds is empty".into());
        }
        for (k, v) in &self.metrics {
            if !v.is_finite() {
                return Err(format!("metrics.{k} is {v}"));
            }
        }
        match (&self.onnx, self.kind.as_str()) {
            (Some(i), "onnx") => i.check()?,
            (None, "onnx") => {
                return Err(
                    "an onnx model needs its interface (onnx: role, columns, output, threshold)"
                        .into(),
                );
            }
            (Some(_), kind) => {
                return Err(format!("onnx: a {kind} model has no ONNX interface"));
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// The model's files the manifest must name: its entry and golden data.
    pub fn named_files(&self) -> Vec<&str> {
        let mut v = vec![self.entry.as_str()];
        if let Some(g) = &self.golden {
            v.push(g.data.as_str());
            if let Some(t) = &g.truth {
                v.push(t.as_str());
            }
        }
        v
    }
}

/// Where a model's signature lives.
pub fn signature_path(model: &Path) -> PathBuf {
    if model.is_dir() {
        model.join(SIGNATURE_FILE)
    } else {
        let mut name = model
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".sig.json");
        model.with_file_name(name)
    }
}

/// The files a model is made of, by their names relative to it ('/'-separated), sorted;
/// the signature is not one of them. Symbolic links are refused: a signed model cannot
/// point outside itself.
pub fn model_files(model: &Path) -> Result<Vec<(String, PathBuf)>, ModelError> {
    let meta = std::fs::symlink_metadata(model).map_err(|e| ModelError::io(model, e))?;
    if meta.file_type().is_symlink() {
        return Err(ModelError::invalid(model, "is a symbolic link"));
    }
    if meta.is_file() {
        let name = model
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .ok_or_else(|| ModelError::invalid(model, "has no file name"))?;
        return Ok(vec![(name, model.to_path_buf())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), model.to_path_buf())];
    while let Some((prefix, dir)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| ModelError::io(&dir, e))?;
        for e in entries {
            let e = e.map_err(|e| ModelError::io(&dir, e))?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let ft = e.file_type().map_err(|e| ModelError::io(&path, e))?;
            if ft.is_symlink() {
                return Err(ModelError::invalid(
                    &path,
                    "is a symbolic link inside a model",
                ));
            } else if ft.is_dir() {
                stack.push((rel, path));
            } else if rel != SIGNATURE_FILE {
                out.push((rel, path));
            }
            if out.len() > MAX_FILES {
                return Err(ModelError::invalid(
                    model,
                    format!("holds more than {MAX_FILES} files"),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every file of a model with its digest and size.
pub fn digests(model: &Path) -> Result<Vec<FileDigest>, ModelError> {
    model_files(model)?
        .into_iter()
        .map(|(name, path)| {
            let size = std::fs::metadata(&path)
                .map_err(|e| ModelError::io(&path, e))?
                .len();
            Ok(FileDigest {
                name,
                sha256: crate::file_sha256(&path)?,
                size,
            })
        })
        .collect()
}
