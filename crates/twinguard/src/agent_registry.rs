//! External agents: `twinguard agent add|list|revoke`, and applying the registry file to
//! the guard (at start, and again whenever the file changes while twinguard runs, so a
//! revocation takes effect within a second).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use guard::{AgentRegistry, Scope};
use plant_model::Plant;
use serde_json::{Value, json};

use crate::datadir::{AgentEntry, BUILT_IN_AGENTS, DataDir};

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Checks an entry against the plant: kinds the guard knows, assets the plant has.
fn check_entry(name: &str, e: &AgentEntry, plant: &Plant) -> Result<ed25519_dalek::VerifyingKey> {
    if !name_ok(name) {
        bail!("agent name {name:?} must be 1 to 64 characters of a-z, 0-9, - and _");
    }
    if BUILT_IN_AGENTS.contains(&name) {
        bail!("agent name {name:?} is taken by a built-in agent");
    }
    for k in &e.kinds {
        if !guard::KINDS.contains(&k.as_str()) {
            bail!(
                "agent {name}: unknown action kind {k:?} (known: {})",
                guard::KINDS.join(", ")
            );
        }
    }
    for a in &e.assets {
        if a != "line" && plant.asset(a).is_none() {
            bail!(
                "agent {name}: unknown asset {a:?} (plant {})",
                plant.plant.id
            );
        }
    }
    if e.kinds.is_empty() || e.assets.is_empty() {
        bail!("agent {name}: needs at least one kind and one asset");
    }
    Ok(frames::keys::parse_public(
        &e.public_key,
        &format!("agent {name}: public_key"),
    )?)
}

/// Applies the registry file's agents to the guard's registry; an agent no longer in the
/// file is revoked. Returns what changed, for the audit log.
pub fn apply(
    registry: &mut AgentRegistry,
    entries: &BTreeMap<String, AgentEntry>,
    plant: &Plant,
) -> Vec<Value> {
    let mut changes = Vec::new();
    for (name, e) in entries {
        match check_entry(name, e, plant) {
            Ok(key) => {
                let before = registry.scope(name).cloned();
                let was_revoked = registry.agents().any(|(n, r)| n == name && r);
                let scope = Scope {
                    kinds: e.kinds.clone(),
                    assets: e.assets.clone(),
                };
                registry.register_scoped(name, key, scope.clone(), e.revoked);
                if e.revoked && !was_revoked {
                    registry.revoke(name);
                    changes.push(json!({ "agent": name, "change": "revoked" }));
                } else if before.as_ref() != Some(&scope) {
                    changes.push(json!({ "agent": name, "change": "registered", "scope": scope }));
                }
            }
            Err(e) => {
                // A bad entry is not half-applied: the agent gets nothing.
                tracing::error!(agent = %name, error = %e, "agent registry entry refused");
                if registry.revoke(name) {
                    changes
                        .push(json!({ "agent": name, "change": "revoked", "why": e.to_string() }));
                }
            }
        }
    }
    let gone: Vec<String> = registry
        .agents()
        .filter(|(n, revoked)| {
            !revoked && !entries.contains_key(*n) && !BUILT_IN_AGENTS.contains(&n.as_str())
        })
        .map(|(n, _)| n.clone())
        .collect();
    for name in gone {
        registry.revoke(&name);
        changes.push(json!({ "agent": name, "change": "removed from the registry: revoked" }));
    }
    changes
}

/// `twinguard agent add`: registers an agent with its public key (given, or generated here
/// with the private key written to `generate_key`, mode 0600) and scope.
pub fn add(
    dir: &DataDir,
    plant: &Plant,
    name: &str,
    public_key: Option<&str>,
    generate_key: Option<&Path>,
    kinds: Vec<String>,
    assets: Vec<String>,
) -> Result<Value> {
    let mut agents = dir.agents()?;
    if agents.contains_key(name) {
        bail!("agent {name} is already registered (revoke it and add it under a new name)");
    }
    let public_key = match (public_key, generate_key) {
        (Some(k), None) => k.trim().to_string(),
        (None, Some(path)) => {
            if path.exists() {
                bail!("{} exists; not overwriting a key", path.display());
            }
            let key = frames::keys::load_or_create(path)?;
            frames::keys::public_hex(&key.verifying_key())
        }
        _ => bail!("give exactly one of --public-key HEX or --generate-key FILE"),
    };
    let entry = AgentEntry {
        public_key,
        kinds,
        assets,
        revoked: false,
    };
    check_entry(name, &entry, plant)?;
    agents.insert(name.to_string(), entry.clone());
    dir.write_agents(&agents)?;
    Ok(json!({ "agent": name, "registered": entry }))
}

pub fn list(dir: &DataDir) -> Result<Value> {
    Ok(json!(dir.agents()?))
}

/// `twinguard agent revoke`: marks the agent revoked; a running twinguard drops its tokens
/// within a second.
pub fn revoke(dir: &DataDir, name: &str) -> Result<Value> {
    let mut agents = dir.agents()?;
    let entry = agents
        .get_mut(name)
        .with_context(|| format!("agent {name} is not registered"))?;
    entry.revoked = true;
    dir.write_agents(&agents)?;
    Ok(json!({ "agent": name, "revoked": true }))
}
