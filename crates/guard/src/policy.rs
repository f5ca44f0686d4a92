//! The declarative policy: which agent may do which kind of action on which asset.
//! Deny unless a rule allows.

use serde::Deserialize;

/// The policy shipped with twinguard for the reference plant.
pub const DEFAULT_POLICY: &str = include_str!("../policy/default.toml");

const KINDS: [&str; 3] = ["set_setpoint", "stop_line", "maintenance"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub agent: String,
    pub kinds: Vec<String>,
    pub assets: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub allow: Vec<Rule>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {source_name}: {message}")]
    Syntax {
        source_name: String,
        message: String,
    },
    #[error("policy {source_name}: allow[{index}]: {message}")]
    Invalid {
        source_name: String,
        index: usize,
        message: String,
    },
}

impl Policy {
    /// Parses a policy; every kind must be known and every asset in `assets` (or "line").
    pub fn parse(text: &str, source_name: &str, assets: &[&str]) -> Result<Policy, PolicyError> {
        let p: Policy = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            source_name: source_name.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        for (index, r) in p.allow.iter().enumerate() {
            let bad = |message: String| PolicyError::Invalid {
                source_name: source_name.to_string(),
                index,
                message,
            };
            for k in &r.kinds {
                if !KINDS.contains(&k.as_str()) {
                    return Err(bad(format!(
                        "unknown action kind {k:?} (known: {})",
                        KINDS.join(", ")
                    )));
                }
            }
            for a in &r.assets {
                if a != "line" && !assets.contains(&a.as_str()) {
                    return Err(bad(format!("unknown asset {a:?}")));
                }
            }
        }
        Ok(p)
    }

    /// The rule that allows it, described for the audit log, or None (deny).
    pub fn allows(&self, agent: &str, kind: &str, asset: &str) -> Option<String> {
        self.allow.iter().enumerate().find_map(|(i, r)| {
            (r.agent == agent
                && r.kinds.iter().any(|k| k == kind)
                && r.assets.iter().any(|a| a == asset))
            .then(|| format!("allow[{i}]: {agent} may {kind} on {asset}"))
        })
    }
}
