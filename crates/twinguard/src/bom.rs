//! A CycloneDX 1.6 ML-BOM of the running system: twinguard itself, every admitted model
//! (a `machine-learning-model` component with its hashes, state, publisher, and model
//! card: intended use, limitations, the publisher's metrics and the golden run's), the
//! training data each names (a `data` component by digest), and twinguard's own
//! dependencies from the Cargo.lock it was built with.

use anyhow::{Context, Result};
use models::Registry;
use serde_json::{Value, json};

/// The lock file this binary was built from.
const CARGO_LOCK: &str = include_str!("../../../Cargo.lock");

#[derive(serde::Deserialize)]
struct Lock {
    package: Vec<LockPackage>,
}

#[derive(serde::Deserialize)]
struct LockPackage {
    name: String,
    version: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    checksum: Option<String>,
}

fn uuid_v4() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| anyhow::anyhow!("no randomness for the BOM serial: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&b[0..4]),
        hex::encode(&b[4..6]),
        hex::encode(&b[6..8]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    ))
}

fn metrics(values: &std::collections::BTreeMap<String, f64>, slice: &str) -> Vec<Value> {
    values
        .iter()
        .map(|(k, v)| json!({ "type": k, "value": v.to_string(), "slice": slice }))
        .collect()
}

pub fn cyclonedx(registry: &Registry) -> Result<Value> {
    let version = env!("CARGO_PKG_VERSION");
    let mut components = Vec::new();
    let mut model_refs = Vec::new();
    for e in &registry.models {
        let model_ref = format!("model:{}@{}", e.name, e.version);
        let data_ref = format!("data:{}", e.training_data_sha256);
        model_refs.push(model_ref.clone());
        let mut performance = metrics(&e.metrics, "declared by the publisher");
        performance.extend(metrics(&e.golden, "golden run at admission"));
        components.push(json!({
            "type": "machine-learning-model",
            "bom-ref": model_ref,
            "name": e.name,
            "version": e.version,
            "publisher": e.publisher,
            "hashes": [{ "alg": "SHA-256", "content": e.digest }],
            "properties": [
                { "name": "twinguard:kind", "value": e.kind },
                { "name": "twinguard:state", "value": format!("{:?}", e.state).to_lowercase() },
                { "name": "twinguard:digest-of", "value": "signed in-toto statement (manifest and every file)" },
                { "name": "twinguard:admitted", "value": crate::core::format_time(e.admitted_ms) },
            ],
            "modelCard": {
                "modelParameters": {
                    "task": e.kind,
                    "datasets": [{ "ref": data_ref }],
                },
                "quantitativeAnalysis": { "performanceMetrics": performance },
                "considerations": {
                    "useCases": [e.intended_use],
                    "technicalLimitations": [e.limitations],
                },
            },
        }));
        if !components
            .iter()
            .any(|c| c["bom-ref"] == Value::String(data_ref.clone()))
        {
            components.push(json!({
                "type": "data",
                "bom-ref": data_ref,
                "name": format!("training data of {} {}", e.name, e.version),
                "hashes": [{ "alg": "SHA-256", "content": e.training_data_sha256 }],
                "data": [{ "type": "dataset", "name": format!("training data of {}", e.name) }],
            }));
        }
    }
    let lock: Lock = toml::from_str(CARGO_LOCK).context("the embedded Cargo.lock")?;
    let mut libs = Vec::new();
    for p in lock.package.iter().filter(|p| p.source.is_some()) {
        let r = format!("pkg:cargo/{}@{}", p.name, p.version);
        libs.push(r.clone());
        let hashes: Vec<Value> = p
            .checksum
            .iter()
            .map(|sum| json!({ "alg": "SHA-256", "content": sum }))
            .collect();
        components.push(json!({
            "type": "library",
            "bom-ref": r,
            "name": p.name,
            "version": p.version,
            "purl": r,
            "hashes": hashes,
        }));
    }
    let mut depends = model_refs;
    depends.extend(libs);
    let now = crate::core::format_time(crate::demo::wall_clock_ms()).replace(' ', "T") + "Z";
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", uuid_v4()?),
        "version": 1,
        "metadata": {
            "timestamp": now,
            "tools": { "components": [{ "type": "application", "name": "twinguard", "version": version }] },
            "component": { "type": "application", "bom-ref": "twinguard", "name": "twinguard", "version": version },
        },
        "components": components,
        "dependencies": [{ "ref": "twinguard", "dependsOn": depends }],
    }))
}
