//! `twinguard policy`: the Cedar schema and built-in policy, validation of a policy file,
//! and what the guard would decide on a proposal file, explained.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use guard::{Action, AgentRegistry, Guard, Policy, ProcessContext, Proposal};
use plant_model::Plant;
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest proposal file read.
const MAX_PROPOSAL_FILE: u64 = 64 * 1024;

/// A proposal to assess: what an agent would sign, plus the situation to assess it in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposalFile {
    agent: String,
    action: Action,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    context: Option<ContextFile>,
    /// Current signal values (for setpoints' preconditions).
    #[serde(default)]
    values: HashMap<String, f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextFile {
    #[serde(default = "yes")]
    line_running: bool,
    #[serde(default = "yes")]
    inputs_trusted: bool,
    #[serde(default)]
    anomaly_kinds: Vec<String>,
    #[serde(default)]
    anomalies: Option<i64>,
}

fn yes() -> bool {
    true
}

/// The plant file at `path`, or the embedded reference plant.
pub fn load_plant(path: Option<&Path>) -> Result<Plant> {
    match path {
        None => Ok(Plant::reference()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read plant file {}", p.display()))?;
            Ok(Plant::parse(&text, &p.display().to_string())?)
        }
    }
}

/// Parses and validates a policy file for the plant; the error names its line and column.
pub fn validate(file: &Path, plant: &Plant) -> Result<Policy> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read policy file {}", file.display()))?;
    Ok(Policy::parse(&text, &file.display().to_string(), plant)?)
}

/// What the guard, with the configured (or built-in) policy and limits, would decide on
/// the proposal in `proposal_file`.
pub fn check(
    proposal_file: &Path,
    config: Option<&PathBuf>,
    plant_file: Option<&Path>,
) -> Result<Value> {
    let plant = Arc::new(load_plant(plant_file)?);
    let cfg = crate::demo::load_config(&config.cloned())?;
    let policy = crate::demo::load_policy(&cfg, config.map(PathBuf::as_path), &plant)?;
    let guard = Guard::new(plant.clone(), AgentRegistry::default(), policy)
        .with_limits(crate::demo::guard_limits(&cfg));
    let size = std::fs::metadata(proposal_file)
        .with_context(|| format!("cannot read proposal file {}", proposal_file.display()))?
        .len();
    if size > MAX_PROPOSAL_FILE {
        bail!(
            "proposal file {} is {size} bytes; at most {MAX_PROPOSAL_FILE} are read",
            proposal_file.display()
        );
    }
    let text = std::fs::read_to_string(proposal_file)
        .with_context(|| format!("cannot read proposal file {}", proposal_file.display()))?;
    let file: ProposalFile = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "proposal file {}:{}:{}: {e}",
            proposal_file.display(),
            e.line(),
            e.column()
        )
    })?;
    let context = match &file.context {
        None => ProcessContext {
            line_running: true,
            inputs_trusted: true,
            anomalies: 0,
            anomaly_kinds: vec![],
        },
        Some(c) => ProcessContext {
            line_running: c.line_running,
            inputs_trusted: c.inputs_trusted,
            anomalies: c.anomalies.unwrap_or(c.anomaly_kinds.len() as i64),
            anomaly_kinds: c.anomaly_kinds.clone(),
        },
    };
    let now = plant_sim::DEFAULT_START_MS;
    let proposal = Proposal {
        agent: file.agent.clone(),
        action: file.action.clone(),
        reason: file.reason.clone(),
        evidence: vec![],
        inputs: vec![],
        created_ms: now,
        nonce: "policy-check".into(),
    };
    let assessment = guard.assess(&proposal, &context, &file.values, now);
    Ok(json!({
        "proposal": { "agent": file.agent, "action": file.action },
        "context": context,
        "assessment": assessment,
    }))
}
