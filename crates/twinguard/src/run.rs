//! `twinguard run`: the twin on a real plant. The configured OPC UA sources (one per server:
//! a line's PLCs, a historian gateway) feed the core (ingest checks → twin → detectors →
//! agents → guard), approved commands go back as OPC UA Write/Call on the configured nodes
//! of the server each belongs to, the page and API serve on 127.0.0.1, and everything lands
//! in the audit log. Time is the wall clock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use audit::{AuditStore, Entry};
use ingest::Verifier;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::{Core, CoreParts, SourceState};
use crate::datadir::DataDir;
use crate::demo::{load_config, wall_clock_ms};
use crate::gateway::{self, SimClock};

pub struct RunArgs {
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub plant_file: Option<PathBuf>,
    pub api_port: u16,
    /// Stop after this long (None: until interrupted).
    pub seconds: Option<f64>,
}

#[allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexing yields Null or inserts, it never panics"
)]
pub async fn run(args: RunArgs) -> Result<Value> {
    let config = load_config(&Some(args.config.clone()))?;
    let plant = Arc::new(crate::policy_cmd::load_plant(args.plant_file.as_deref())?);
    if config.sources.is_empty() {
        bail!("{} declares no source", args.config.display());
    }
    let mut written_by: BTreeMap<&str, &str> = BTreeMap::new();
    for source_cfg in &config.sources {
        let id = source_cfg.id.get_ref();
        if source_cfg.protocol.get_ref() != "opcua" {
            bail!(
                "run connects to OPC UA sources; source {id:?} is {} (MQTT sources run with `demo --config`)",
                source_cfg.protocol.get_ref()
            );
        }
        for n in &source_cfg.nodes {
            if plant.signal(n.signal.get_ref()).is_none() {
                bail!(
                    "source {id:?} maps signal {:?}, which is not in plant {}",
                    n.signal.get_ref(),
                    plant.plant.id
                );
            }
        }
        for w in &source_cfg.writes {
            let sp = w.setpoint.get_ref().as_str();
            if plant.setpoint(sp).is_none() {
                bail!(
                    "source {id:?} writes setpoint {sp:?}, which is not in plant {}",
                    plant.plant.id
                );
            }
            if let Some(other) = written_by.insert(sp, id) {
                bail!(
                    "setpoint {sp:?} is written by two sources ({other:?} and {id:?}); a setpoint belongs to one server"
                );
            }
        }
    }

    let dir = DataDir::open(&args.data_dir)?;
    let audit_key = dir.key("audit")?;
    let operator_token = dir.operator_token()?;
    let maintenance_key = dir.key("agent-maintenance")?;
    let optimiser_key = dir.key("agent-optimiser")?;
    let mut store = crate::demo::audit_store(&dir, audit_key.clone(), &config)?;

    let (ua_tx, ua_rx) = mpsc::channel(65_536);
    let mut sources = Vec::new();
    let mut links = Vec::new();
    for (i, source_cfg) in config.sources.iter().enumerate() {
        let ua = crate::watch::ua_source(source_cfg, &args.config, &args.data_dir)?;
        let conn = crate::watch::connect_tagged(&ua, i, ua_tx.clone()).await?;
        let info = Arc::new(crate::watch::ua_source_info(
            source_cfg.id.get_ref().clone(),
            &conn,
            Some(config.zone_of(source_cfg)),
        ));
        eprintln!(
            "twinguard: OPC UA source {} at {} ({})",
            info.id, ua.url, info.security
        );
        let mut targets = actuate::OpcUaTargets::default();
        for w in &source_cfg.writes {
            targets.setpoints.insert(
                w.setpoint.get_ref().clone(),
                crate::watch::ua_node(twinguard_config::node_ref(w.node.get_ref())),
            );
        }
        for c in &source_cfg.calls {
            targets.calls.insert(
                c.command.get_ref().clone(),
                (
                    crate::watch::ua_node(twinguard_config::node_ref(c.object.get_ref())),
                    crate::watch::ua_node(twinguard_config::node_ref(c.method.get_ref())),
                ),
            );
        }
        let signals = source_cfg
            .nodes
            .iter()
            .map(|n| n.signal.get_ref().clone())
            .collect();
        sources.push(SourceState::new(info.clone(), signals));
        links.push(actuate::OpcUaLink {
            source: info.id.clone(),
            conn,
            targets,
        });
    }
    drop(ua_tx);
    let now = wall_clock_ms();
    let started: Vec<&ingest::SourceInfo> = sources.iter().map(|s| &*s.info).collect();
    store.append(&[Entry::new(
        now,
        "run_started",
        json!({ "mode": "run", "plant": plant.plant.id, "sources": started }),
    )])?;

    let guard = crate::demo::guard_with_agents(
        &plant,
        &config,
        Some(&args.config),
        &maintenance_key,
        &optimiser_key,
    )?;
    let snapshot = Arc::new(RwLock::new(api::Snapshot::default()));
    let (api_addr, ops_rx) =
        crate::demo::start_api(args.api_port, snapshot.clone(), &operator_token, &dir).await?;
    eprintln!("twinguard: data in {}", args.data_dir.display());
    eprintln!("twinguard: live twin at http://{api_addr}/#token={operator_token}");

    // Wall-clock time for the core (the same clock type the demo drives by simulation).
    let clock = SimClock::default();
    clock.set(now);
    let ticker = {
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                clock.set(wall_clock_ms());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let (progress_tx, _progress_rx) = watch::channel(gateway::Progress::default());
    let (multivariate, multivariate_ref, shadow) =
        crate::model_cmd::core_detector(&config, Some(&args.config), &dir, &plant)?;
    let (pump_health, pump_shadow) =
        crate::model_cmd::core_pump_health(&config, Some(&args.config), &dir)?;
    let mut core = Core::new(CoreParts {
        plant: plant.clone(),
        verifier: Verifier::new(plant.clone(), vec![], config.ingest.clone()),
        sources,
        min_trust: config.min_trust(),
        guard,
        maintenance_key,
        optimiser_key,
        sink: Box::new(actuate::OpcUaSink::new(links, &plant)),
        audit: Box::new(store),
        audit_public: audit_key.verifying_key(),
        audit_retention_ms: config.audit.retention_ms(),
        clock: clock.clone(),
        snapshot: snapshot.clone(),
        progress: progress_tx,
        token_leak: None,
        sparkplug: None,
        agents_file: Some(dir.agents_path()),
        // OPC UA sources only: no device signs frames here.
        devices_file: None,
        policy_file: crate::demo::policy_path(&config, Some(&args.config)),
        multivariate,
        multivariate_ref,
        shadow,
        pump_health,
        pump_shadow,
        agents: true,
        baseline: None,
    })?;
    core.publish_snapshot(true);
    let (stop_tx, stop_rx) = oneshot::channel();
    let (_frames_tx, frames_rx) = mpsc::channel(1);
    let core_task = tokio::spawn(core.run(frames_rx, ua_rx, ops_rx, stop_rx));
    match args.seconds {
        Some(s) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(s)) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    eprintln!("twinguard: stopping; finishing the report");
    let _ = stop_tx.send(());
    let mut core = core_task.await.context("the core task failed")?;
    ticker.abort();
    let mut report = core.report();
    core.audit
        .append(&[Entry::new(wall_clock_ms(), "run_finished", report.clone())])?;
    core.audit.checkpoint()?;
    let verification = core.verify_audit()?;
    report["audit"] = json!({
        "records": core.audit.records(),
        "checkpoints": verification.checkpoints,
        "checkpoint": verification.latest.as_ref().map(|c| json!({ "size": c.size, "root": c.root_hex() })),
        "verified": verification.problem.is_none(),
        "problem": verification.problem,
        "failure": core.audit_failure,
    });
    report["api"] = json!(format!("http://{api_addr}"));
    Ok(report)
}
