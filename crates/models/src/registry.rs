//! Which models a plant runs: every admitted model with its state (shadow, active,
//! retired), kept as `models/registry.json` in the data directory and changed only through
//! admission, promotion and rollback, each of which the binary records in the audit log.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{MAX_META, ModelError, read_bounded};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Admitted: sees live data beside the active model, its output recorded, never acted on.
    Shadow,
    /// The model in use for its name.
    Active,
    /// Was active, replaced or rolled back.
    Retired,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub publisher: String,
    /// SHA-256 of the signed statement.
    pub digest: String,
    /// Where the admitted copy lives, relative to the data directory.
    pub path: String,
    /// The file run, relative to `path`.
    pub entry: String,
    pub state: State,
    pub admitted_ms: i64,
    #[serde(default)]
    pub promoted_ms: Option<i64>,
    #[serde(default)]
    pub promoted_by: Option<String>,
    /// The version that was active when this one was promoted: where a rollback from
    /// this one goes.
    #[serde(default)]
    pub replaced: Option<String>,
    /// The golden run's results, by metric.
    #[serde(default)]
    pub golden: std::collections::BTreeMap<String, f64>,
    pub intended_use: String,
    pub limitations: String,
    pub training_data_sha256: String,
    #[serde(default)]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Registry {
    pub models: Vec<Entry>,
}

impl Registry {
    pub fn load(path: &Path) -> Result<Registry, ModelError> {
        if !path.exists() {
            return Ok(Registry::default());
        }
        let bytes = read_bounded(path, MAX_META)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ModelError::invalid(path, format!("is not a model registry: {e}")))
    }

    /// Writes the registry whole (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| ModelError::invalid(path, e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| ModelError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
    }

    pub fn find(&self, name: &str, version: &str) -> Option<&Entry> {
        self.models
            .iter()
            .find(|e| e.name == name && e.version == version)
    }

    pub fn active(&self, name: &str) -> Option<&Entry> {
        self.models
            .iter()
            .find(|e| e.name == name && e.state == State::Active)
    }

    /// The model in shadow for a name (the newest admitted).
    pub fn shadow(&self, name: &str) -> Option<&Entry> {
        self.models
            .iter()
            .filter(|e| e.name == name && e.state == State::Shadow)
            .max_by_key(|e| e.admitted_ms)
    }

    /// Adds an admitted model, in shadow. A version admitted before is refused.
    pub fn admit(&mut self, entry: Entry) -> Result<(), String> {
        if let Some(e) = self.find(&entry.name, &entry.version) {
            return Err(if e.digest == entry.digest {
                format!(
                    "{} {} is already admitted ({:?})",
                    e.name, e.version, e.state
                )
            } else {
                format!(
                    "{} {} was admitted before with another digest ({}): a version is never replaced, publish a new one",
                    e.name, e.version, e.digest
                )
            });
        }
        self.models.push(entry);
        Ok(())
    }

    /// Makes a shadow model the active one for its name; the one it replaces retires.
    /// Returns the replaced version.
    pub fn promote(
        &mut self,
        name: &str,
        version: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<String>, String> {
        let state = self
            .find(name, version)
            .map(|e| e.state)
            .ok_or_else(|| format!("{name} {version} is not admitted"))?;
        if state != State::Shadow {
            return Err(format!(
                "{name} {version} is {state:?}: only a model in shadow is promoted"
            ));
        }
        let mut replaced = None;
        for e in &mut self.models {
            if e.name == name && e.state == State::Active {
                e.state = State::Retired;
                replaced = Some(e.version.clone());
            }
        }
        for e in &mut self.models {
            if e.name == name && e.version == version {
                e.state = State::Active;
                e.promoted_ms = Some(now_ms);
                e.promoted_by = Some(by.to_string());
                e.replaced.clone_from(&replaced);
            }
        }
        Ok(replaced)
    }

    /// Puts back the model the current one replaced when it was promoted; the current
    /// retires. Rolling back again goes one further back, down to the first version
    /// promoted. Returns (from, to) versions.
    pub fn rollback(
        &mut self,
        name: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<(String, String), String> {
        let current = self
            .active(name)
            .cloned()
            .ok_or_else(|| format!("no {name} model is active"))?;
        let previous = current
            .replaced
            .as_deref()
            .and_then(|v| self.find(name, v))
            .filter(|e| e.state == State::Retired)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "{name} {} has no earlier active version to roll back to",
                    current.version
                )
            })?;
        for e in &mut self.models {
            if e.name == name && e.version == current.version {
                e.state = State::Retired;
            }
            if e.name == name && e.version == previous.version {
                e.state = State::Active;
                e.promoted_ms = Some(now_ms);
                e.promoted_by = Some(by.to_string());
            }
        }
        Ok((current.version, previous.version))
    }
}
