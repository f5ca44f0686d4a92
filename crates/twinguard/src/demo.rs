//! `twinguard demo`: the whole loop on embedded defaults, over the real MQTT path.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use audit::{AuditStore, Entry, SqliteStore};
use guard::{AgentRegistry, DEFAULT_POLICY, Guard, Policy};
use ingest::mqtt::{BrokerEndpoint, MqttVersion, RawFrame};
use ingest::{Device, Verifier};
use plant_model::Plant;
use plant_sim::Fault;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::attack::{self, Attack, AttackReport};
use crate::core::{Core, CoreParts, SourceState};
use crate::datadir::DataDir;
use crate::gateway::{self, GatewayConfig, LevelRamp, PlantStats, SimClock, lock};
use twinguard_config::{Broker, Config};

/// How the demo's plant and twinguard talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Signed frames over MQTT (the embedded broker or `--broker`).
    Mqtt,
    /// The plant served as an OPC UA server; twinguard subscribes, writes and calls.
    Opcua,
}

/// How the demo's edge devices encode their frames' bodies (`docs/frame-format.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Body {
    /// JSON (envelope version 1): readable with any MQTT client.
    #[default]
    Json,
    /// The binary telemetry body (envelope version 2): a quarter of the bytes, for
    /// high-rate or constrained devices.
    Binary,
}

impl From<Body> for frames::BodyEncoding {
    fn from(b: Body) -> frames::BodyEncoding {
        match b {
            Body::Json => frames::BodyEncoding::Json,
            Body::Binary => frames::BodyEncoding::Binary,
        }
    }
}

pub struct DemoArgs {
    pub transport: Transport,
    pub config: Option<PathBuf>,
    /// Devices whose gateway cannot sign (legacy): their frames go out unsigned.
    pub legacy_devices: Vec<String>,
    /// How the edge devices encode their frames' bodies.
    pub body: Body,
    pub hours: f64,
    pub speed: f64,
    pub attack: Option<Attack>,
    pub seed: u64,
    pub data_dir: PathBuf,
    pub plant_file: Option<PathBuf>,
    pub faults: Vec<String>,
    pub broker: Option<String>,
    pub api_port: u16,
    pub quiet: bool,
    /// The agents run (false: the fixed-setpoint baseline, nothing proposed).
    pub agents: bool,
    /// Operating conditions drawn from the seed (climate, inlet temperature, production
    /// plan) instead of the reference conditions.
    pub vary_conditions: bool,
    /// The same seed's fixed-setpoint run's `kpi_series`, shown beside this run's on the
    /// page.
    pub baseline: Option<serde_json::Value>,
}

/// The broker endpoint (with that account's credentials) for an account name.
type EndpointFor = Arc<dyn Fn(&str, MqttVersion) -> BrokerEndpoint + Send + Sync>;

/// The configuration file, or the embedded default; every error with its location.
/// The audit log of a data directory as the running twinguard writes it: checkpointed as
/// the configuration says, appends through the append journal (a guard decision waits
/// for one `write`, not for SQLite's commit).
pub fn audit_store(
    dir: &DataDir,
    key: ed25519_dalek::SigningKey,
    config: &Config,
) -> Result<SqliteStore> {
    Ok(SqliteStore::open(&dir.audit_db(), key)?
        .with_checkpoints(audit::CheckpointPolicy {
            every: config.audit.checkpoint_every(),
            records: *config.audit.checkpoint_records.get_ref(),
        })
        .with_append_journal()?)
}

pub fn load_config(path: &Option<PathBuf>) -> Result<Config> {
    let (text, name) = match path {
        None => return Ok(Config::default_config()),
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read configuration {}", p.display()))?,
            p.display().to_string(),
        ),
    };
    Config::parse(&text).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("{name}:{}:{}: {}", e.line, e.column, e.message))
            .collect();
        anyhow::anyhow!("configuration is not valid:\n{}", lines.join("\n"))
    })
}

#[allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexing yields Null, it never panics"
)]
pub async fn run(args: DemoArgs) -> Result<Value> {
    if !(args.hours > 0.0 && args.hours <= 24.0 * 365.0) {
        bail!(
            "--hours must be more than 0 and at most one year, got {}",
            args.hours
        );
    }
    if !(args.speed >= 0.0 && args.speed.is_finite()) {
        bail!(
            "--speed must be 0 (as fast as possible) or a positive number, got {}",
            args.speed
        );
    }
    let faults = args
        .faults
        .iter()
        .map(|f| Fault::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    let plant = Arc::new(crate::policy_cmd::load_plant(args.plant_file.as_deref())?);
    let conditions = if args.vary_conditions {
        plant_sim::Conditions::varied(args.seed, args.hours)
    } else {
        plant_sim::Conditions::default()
    };
    let dir = DataDir::open(&args.data_dir)?;
    // Simulated time starts now (to the second), so that records are dated today and key
    // validity windows in the registry mean the same to the plant and to twinguard.
    let start_ms = wall_clock_ms() / 1000 * 1000;

    // Per-install keys and secrets.
    let audit_key = dir.key("audit")?;
    let actuation_key = dir.key("actuation")?;
    dir.enrol_edge_devices(&plant)?;
    let operator_token = dir.operator_token()?;
    let maintenance_key = dir.key("agent-maintenance")?;
    let optimiser_key = dir.key("agent-optimiser")?;

    // Configuration: zones, the source and its conduit, ingest limits.
    let config = load_config(&args.config)?;
    let [source_cfg] = config.sources.as_slice() else {
        bail!(
            "the demo runs exactly one source; the configuration declares {}",
            config.sources.len()
        );
    };
    let link = match args.transport {
        Transport::Mqtt => {
            mqtt_link(&args, &config, source_cfg, &dir, &plant, &actuation_key).await?
        }
        Transport::Opcua => opcua_link(&args, &config, source_cfg, &dir, &plant).await?,
    };
    let broker_desc = link.desc.clone();
    // Audit log first: if it cannot be opened, nothing runs.
    let mut store = audit_store(&dir, audit_key.clone(), &config)?;
    store.append(&[Entry::new(
        start_ms,
        "run_started",
        json!({ "seed": args.seed, "hours": args.hours, "attack": args.attack, "faults": args.faults, "conditions": conditions, "plant": plant.plant.id, "broker": broker_desc }),
    )])?;

    // The retired-key attack: the tank's key was rotated out just now, and somebody kept it.
    let retired = if args.attack == Some(Attack::RetiredKey) {
        let (old, new_id) = dir.rotate_device_key("gw-tank", start_ms, 0)?;
        store.append(&[Entry::new(
            start_ms,
            "device_key_rotated",
            json!({ "device": "gw-tank", "new_key": new_id, "overlap_ms": 0 }),
        )])?;
        Some(old)
    } else {
        None
    };
    let registry: Vec<Device> = dir.registry()?;
    let verifier = Verifier::new(plant.clone(), registry, config.ingest.clone());
    let guard = guard_with_agents(
        &plant,
        &config,
        args.config.as_deref(),
        &maintenance_key,
        &optimiser_key,
    )?;

    // API and page.
    let snapshot = Arc::new(RwLock::new(api::Snapshot::default()));
    let (api_addr, ops_rx) =
        start_api(args.api_port, snapshot.clone(), &operator_token, &dir).await?;
    eprintln!(
        "twinguard: {broker_desc}; data in {}",
        args.data_dir.display()
    );
    eprintln!("twinguard: live twin at http://{api_addr}/#token={operator_token}");

    let clock = SimClock::default();
    let (progress_tx, progress_rx) = watch::channel(gateway::Progress::default());
    let token_leak =
        (args.attack == Some(Attack::StolenAgentToken)).then(|| Arc::new(Mutex::new(None)));
    let Link {
        source,
        sink,
        frames_rx,
        ua_rx,
        plant_side,
        sparkplug,
        broker_refusals,
        ..
    } = link;
    let (sparkplug_group, sparkplug) = match sparkplug {
        Some((g, s)) => (Some(g), Some(s)),
        None => (None, None),
    };
    if sparkplug_group.is_some() && args.body != Body::Json {
        bail!(
            "--body is for twinguard's own frames; the configured source takes Sparkplug B payloads"
        );
    }
    let signals = plant.signals.iter().map(|s| s.id.clone()).collect();
    let (multivariate, multivariate_ref, shadow) =
        crate::model_cmd::core_detector(&config, args.config.as_deref(), &dir, &plant)?;
    let (pump_health, pump_shadow) =
        crate::model_cmd::core_pump_health(&config, args.config.as_deref(), &dir)?;
    let mut core = Core::new(CoreParts {
        plant: plant.clone(),
        verifier,
        sources: vec![SourceState::new(source, signals)],
        min_trust: config.min_trust(),
        guard,
        maintenance_key,
        optimiser_key,
        sink,
        audit: Box::new(store),
        audit_public: audit_key.verifying_key(),
        audit_retention_ms: config.audit.retention_ms(),
        clock: clock.clone(),
        snapshot: snapshot.clone(),
        progress: progress_tx,
        token_leak: token_leak.clone(),
        sparkplug,
        agents_file: Some(dir.agents_path()),
        devices_file: Some(dir.registry_path()),
        policy_file: policy_path(&config, args.config.as_deref()),
        multivariate,
        multivariate_ref,
        shadow,
        pump_health,
        pump_shadow,
        agents: args.agents,
        baseline: args.baseline.clone(),
    })?;
    core.publish_snapshot(true);
    let (stop_tx, stop_rx) = oneshot::channel();
    let core_task = tokio::spawn(core.run(frames_rx, ua_rx, ops_rx, stop_rx));
    // The plant's OPC UA server outlives twinguard's session to it (dropped after `core`).
    let _plant_server = match &plant_side {
        PlantSide::Opcua { server, .. } => Some(server.clone()),
        PlantSide::Mqtt(_) => None,
    };
    let intruder = match &plant_side {
        PlantSide::Mqtt(endpoint_for) => Some(endpoint_for("intruder", MqttVersion::V311)),
        PlantSide::Opcua { .. } => None,
    };

    // Attacks.
    let end_ms = start_ms + (args.hours * 3_600_000.0) as i64;
    let attack_report = Arc::new(Mutex::new(AttackReport::default()));
    let attack_task = args.attack.map(|a| {
        let w = attack::Window {
            clock: clock.clone(),
            t0: start_ms,
            end: end_ms,
            report: attack_report.clone(),
        };
        let (p, intruder, dir, leak) = (
            plant.clone(),
            intruder.clone(),
            args.data_dir.clone(),
            token_leak.clone(),
        );
        let api = api_addr.to_string();
        tokio::spawn(async move {
            match (a, leak, intruder) {
                (Attack::ForgedFrames, _, Some(intruder)) => {
                    attack::forged_frames(p, intruder, w).await
                }
                (Attack::Replay, _, Some(intruder)) => attack::replay(p, intruder, w).await,
                (Attack::StolenAgentToken, Some(leak), _) => {
                    attack::stolen_token(api, leak, dir, w).await
                }
                (Attack::RetiredKey, _, Some(intruder)) => match retired {
                    Some(old) => attack::retired_key(p, intruder, old, w).await,
                    None => Ok(()),
                },
                // Attacks on signed MQTT frames need the MQTT transport (refused earlier).
                (Attack::ForgedFrames | Attack::Replay | Attack::RetiredKey, _, None) => Ok(()),
                // fdi-level and delayed-frames are done by the gateway (LevelRamp, Delay).
                (Attack::StolenAgentToken, None, _)
                | (Attack::FdiLevel, _, _)
                | (Attack::DelayedFrames, _, _) => Ok(()),
            }
        })
    });

    // The plant.
    let plant_stats = Arc::new(Mutex::new(PlantStats::default()));
    let mut device_keys = HashMap::new();
    for a in &plant.assets {
        device_keys.insert(a.device.clone(), dir.edge_key(&a.device)?);
    }
    let gw = GatewayConfig {
        plant: plant.clone(),
        seed: args.seed,
        start_ms,
        hours: args.hours,
        speed: args.speed,
        batch: 5,
        lead_ms: 10_000,
        faults,
        conditions: conditions.clone(),
        level_ramp: (args.attack == Some(Attack::FdiLevel)).then_some(LevelRamp {
            start_s: 3600,
            metres_per_hour: 0.3,
        }),
        delay: (args.attack == Some(Attack::DelayedFrames)).then(|| gateway::Delay {
            asset: "tank".into(),
            start_s: 3600,
            duration_s: 600,
            delay_s: 120,
        }),
        unsigned_devices: args.legacy_devices.clone(),
        body: args.body.into(),
        sparkplug: sparkplug_group,
        endpoint: match &plant_side {
            PlantSide::Mqtt(endpoint_for) => Some(endpoint_for("edge-gateway", MqttVersion::V311)),
            PlantSide::Opcua { .. } => None,
        },
        device_keys,
        key_dir: Some(args.data_dir.join("edge")),
        actuation_key: actuation_key.verifying_key(),
    };
    let progress_task = (!args.quiet).then(|| {
        let mut rx = progress_rx.clone();
        let snapshot = snapshot.clone();
        let hours = args.hours;
        tokio::spawn(async move {
            let mut next_h = 1.0;
            while rx.changed().await.is_ok() {
                let t = rx.borrow().t_ms;
                let h = (t - start_ms) as f64 / 3_600_000.0;
                if h >= next_h {
                    next_h = h.floor() + 1.0;
                    let r = snapshot.read().map(|s| s.report.clone()).unwrap_or_default();
                    eprintln!(
                        "[{h:5.1}/{hours} h] samples accepted {} · frames rejected {} · detections {} · executed {} · pending {}",
                        r["samples"]["accepted"],
                        r["frames"]["rejected"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>()),
                        r["detections"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>()),
                        r["proposals"]["executed"],
                        r["proposals"]["pending"],
                    );
                }
            }
        })
    });
    let plant_run = async {
        match plant_side {
            PlantSide::Mqtt(_) => {
                gateway::run(gw, clock.clone(), progress_rx, plant_stats.clone()).await
            }
            PlantSide::Opcua { server, writes } => {
                gateway::run_opcua(
                    gw,
                    clock.clone(),
                    progress_rx,
                    plant_stats.clone(),
                    server,
                    writes,
                )
                .await
            }
        }
    };
    let gateway_result = tokio::select! {
        r = plant_run => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("twinguard: interrupted; finishing the report");
            Ok(())
        }
    };
    if let Some(t) = attack_task {
        match tokio::time::timeout(Duration::from_secs(30), t).await {
            Ok(Ok(Err(e))) => lock(&attack_report)
                .notes
                .push(format!("attack failed: {e:#}")),
            Err(_) => lock(&attack_report)
                .notes
                .push("attack did not finish within 30 s".into()),
            _ => {}
        }
    }
    // Let the last frames and commands land, then stop the core.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(());
    let mut core = core_task.await.context("the core task failed")?;
    if let Some(p) = progress_task {
        p.abort();
    }
    gateway_result?;

    let mut report = core.report();
    let finished = Entry::new(clock.now_ms(), "run_finished", report.clone());
    core.audit.append(&[finished])?;
    core.audit.checkpoint()?;
    let verification = core.verify_audit()?;
    let head = core.audit.head();
    report["audit"] = json!({
        "records": core.audit.records(),
        "head": head.as_ref().map(|h| h.hash_hex()),
        "head_seq": head.as_ref().map(|h| h.seq),
        "checkpoints": verification.checkpoints,
        "checkpoint": verification.latest.as_ref().map(|c| json!({ "size": c.size, "root": c.root_hex() })),
        "verified": verification.problem.is_none(),
        "problem": verification.problem,
        "failure": core.audit_failure,
        "quarantine_full": core.quarantine_full,
    });
    report["data_dir"] = json!(args.data_dir.display().to_string());
    report["seed"] = json!(args.seed);
    report["start_ms"] = json!(start_ms);
    report["hours"] = json!(args.hours);
    report["attack"] = json!(args.attack);
    report["attack_report"] = json!(*lock(&attack_report));
    report["plant"] = json!(*lock(&plant_stats));
    report["api"] = json!(format!("http://{api_addr}"));
    if let Some(r) = &broker_refusals {
        report["broker_refusals"] = json!(*lock(r));
    }
    core.publish_snapshot(true);
    Ok(report)
}

/// How twinguard reaches the plant: what it reads, where commands go, and the plant's side.
struct Link {
    desc: String,
    source: Arc<ingest::SourceInfo>,
    sink: Box<dyn actuate::CommandSink>,
    frames_rx: mpsc::Receiver<RawFrame>,
    ua_rx: mpsc::Receiver<(usize, opcua_link::UaEvent)>,
    plant_side: PlantSide,
    /// Sparkplug B payloads: the group, and the host state for the core.
    sparkplug: Option<(String, crate::core::SparkplugIn)>,
    /// The embedded broker's topic-permission refusals.
    broker_refusals: Option<crate::mqtt_acl::Refusals>,
}

enum PlantSide {
    Mqtt(EndpointFor),
    Opcua {
        server: Arc<opcua_link::server::PlantServer>,
        writes: mpsc::UnboundedReceiver<opcua_link::server::PlantWrite>,
    },
}

/// The MQTT link: the configured (or embedded) broker, the ingest subscription and the
/// actuation publisher.
async fn mqtt_link(
    args: &DemoArgs,
    config: &Config,
    source_cfg: &twinguard_config::Source,
    dir: &DataDir,
    plant: &Arc<Plant>,
    actuation_key: &ed25519_dalek::SigningKey,
) -> Result<Link> {
    // `--broker` overrides the configured broker (credentials from the environment).
    let (broker, env_creds) = match &args.broker {
        Some(addr) => {
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
                .with_context(|| format!("--broker {addr:?} is not HOST:PORT"))?;
            (Broker::External { host, port }, true)
        }
        None => (source_cfg.broker().map_err(anyhow::Error::msg)?, false),
    };
    // twinguard's own clients speak the source's protocol version; the simulated edge
    // gateway speaks MQTT 3.1.1, as most plant devices do; the broker relays between them.
    let twinguard_version = if source_cfg.mqtt5() {
        MqttVersion::V5
    } else {
        MqttVersion::V311
    };
    let embedded = matches!(broker, Broker::Embedded);
    let mut broker_refusals = None;
    let (endpoint_for, broker_desc): (EndpointFor, String) = match broker {
        Broker::Embedded => {
            // Accounts for twinguard, the simulated edge gateway (which fronts every
            // device of the line), each device (for devices that connect on their own),
            // and the intruder of the attack demos; each may use only its topics.
            let mut accounts: Vec<&str> = vec!["twinguard", "edge-gateway", "intruder"];
            accounts.extend(plant.assets.iter().map(|a| a.device.as_str()));
            let secrets = dir.mqtt_secrets(&accounts)?;
            let started = crate::broker::start(
                secrets.users.clone().into_iter().collect(),
                crate::broker::acl(plant, source_cfg.sparkplug()),
            )?;
            let (port, port_v5) = (started.port, started.port_v5);
            broker_refusals = Some(started.refusals);
            crate::broker::wait_ready(port).await?;
            crate::broker::wait_ready(port_v5).await?;
            let users = secrets.users;
            (
                Arc::new(move |user: &str, version: MqttVersion| BrokerEndpoint {
                    host: "127.0.0.1".into(),
                    port: if version == MqttVersion::V5 {
                        port_v5
                    } else {
                        port
                    },
                    username: Some(user.to_string()),
                    password: users.get(user).cloned(),
                    tls: None,
                    version,
                    persistent_session: false,
                }),
                format!("embedded MQTT broker on 127.0.0.1:{port}"),
            )
        }
        Broker::External { host, port } => {
            let (username, password) = if env_creds {
                (
                    std::env::var("TWINGUARD_MQTT_USERNAME").ok(),
                    std::env::var("TWINGUARD_MQTT_PASSWORD").ok(),
                )
            } else {
                let password = match &source_cfg.password_file {
                    Some(f) => {
                        let base = args
                            .config
                            .as_ref()
                            .and_then(|c| c.parent())
                            .unwrap_or(std::path::Path::new("."));
                        let path = base.join(f.get_ref());
                        Some(
                            std::fs::read_to_string(&path)
                                .with_context(|| {
                                    format!(
                                        "cannot read the broker password file {}",
                                        path.display()
                                    )
                                })?
                                .trim()
                                .to_string(),
                        )
                    }
                    None => None,
                };
                (source_cfg.username.clone(), password)
            };
            let base = args
                .config
                .as_ref()
                .and_then(|c| c.parent())
                .unwrap_or(std::path::Path::new("."));
            let tls = match &source_cfg.tls {
                None => None,
                Some(t) => {
                    let read = |f: &str| -> Result<Vec<u8>> {
                        let path = base.join(f);
                        std::fs::read(&path)
                            .with_context(|| format!("cannot read TLS file {}", path.display()))
                    };
                    let client = match (&t.cert_file, &t.key_file) {
                        (Some(c), Some(k)) => Some((read(c.get_ref())?, read(k.get_ref())?)),
                        _ => None,
                    };
                    Some(ingest::mqtt::TlsFiles::new(
                        read(t.ca_file.get_ref())?,
                        client,
                    ))
                }
            };
            let security = match &tls {
                None => "",
                Some(t) if t.client.is_some() => " over mutual TLS",
                Some(_) => " over TLS",
            };
            let desc = format!("external MQTT broker at {host}:{port}{security}");
            (
                Arc::new(move |_user: &str, version: MqttVersion| BrokerEndpoint {
                    host: host.clone(),
                    port,
                    username: username.clone(),
                    password: password.clone(),
                    tls: tls.clone(),
                    version,
                    persistent_session: false,
                }),
                desc,
            )
        }
    };
    let broker_desc = if twinguard_version == MqttVersion::V5 {
        format!("{broker_desc} (twinguard speaks MQTT 5)")
    } else {
        broker_desc
    };
    // Actuation client.
    let act_client = ingest::mqtt::Publisher::connect(
        &endpoint_for("twinguard", twinguard_version),
        "twinguard-actuation",
    );
    let sink = actuate::MqttSink::new(plant.clone(), act_client, actuation_key.clone(), 0);

    // Ingest subscription, ready before the plant starts publishing.
    let (frames_tx, frames_rx) = mpsc::channel::<RawFrame>(1024);
    let (ready_tx, ready_rx) = oneshot::channel();
    let last_error = ingest::mqtt::LastError::default();
    // A persistent session at an external broker (the embedded one lives and dies with
    // this process): frames published while twinguard is away are kept for it.
    let mut ingest_endpoint = endpoint_for("twinguard", twinguard_version);
    ingest_endpoint.persistent_session = source_cfg.persistent_session && !embedded;
    let peer = ingest_endpoint.tls.as_ref().map(|t| t.peer.clone());
    tokio::spawn(ingest::mqtt::run_subscriber(
        ingest_endpoint,
        format!("twinguard-ingest-{}", source_cfg.id.get_ref()),
        vec![match source_cfg.sparkplug() {
            Some(group) => format!("spBv1.0/{group}/#"),
            None => format!("twinguard/{}/+/telemetry", plant.plant.id),
        }],
        frames_tx,
        Some(ready_tx),
        last_error.clone(),
    ));
    if tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .is_err()
    {
        let why = last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "no answer".into());
        bail!("could not subscribe at the {broker_desc} within 10 s: {why}");
    }

    let source = Arc::new(ingest::SourceInfo {
        id: source_cfg.id.get_ref().clone(),
        protocol: format!(
            "{}/{}{}",
            source_cfg.protocol.get_ref(),
            if twinguard_version == MqttVersion::V5 {
                "5"
            } else {
                "3.1.1"
            },
            if source_cfg.sparkplug().is_some() {
                "+sparkplug-b"
            } else {
                ""
            }
        ),
        security: endpoint_for("twinguard", twinguard_version)
            .security()
            .into(),
        // The broker certificate the ingest connection verified (TLS only).
        peer_certificate: peer
            .as_ref()
            .and_then(|p| p.lock().ok().and_then(|g| g.clone())),
        zone: Some(config.zone_of(source_cfg)),
        allow_unsigned: source_cfg.allow_unsigned,
        authenticated: false,
    });

    // Sparkplug B: twinguard is the host application; it asks edge nodes to rebirth.
    let sparkplug = source_cfg.sparkplug().map(|group| {
        let control = ingest::mqtt::Publisher::connect(
            &endpoint_for("twinguard", twinguard_version),
            "twinguard-sparkplug-host",
        );
        (
            group.to_string(),
            crate::core::SparkplugIn {
                host: sparkplug::Host::new(group),
                control,
                rebirths: 0,
            },
        )
    });
    let (_, ua_rx) = mpsc::channel(1);
    Ok(Link {
        desc: broker_desc,
        source,
        sink: Box::new(sink),
        frames_rx,
        ua_rx,
        plant_side: PlantSide::Mqtt(endpoint_for),
        sparkplug,
        broker_refusals,
    })
}

/// The OPC UA link: the plant served over OPC UA on 127.0.0.1 (SignAndEncrypt,
/// Basic256Sha256, user name and password, certificates exchanged by the demo as an
/// installer would), twinguard's subscription to every signal, and actuation by Write/Call.
async fn opcua_link(
    args: &DemoArgs,
    config: &Config,
    source_cfg: &twinguard_config::Source,
    dir: &DataDir,
    plant: &Arc<Plant>,
) -> Result<Link> {
    if let Some(a) = args.attack.filter(|a| {
        matches!(
            a,
            Attack::ForgedFrames | Attack::Replay | Attack::RetiredKey | Attack::DelayedFrames
        )
    }) {
        bail!(
            "--attack {} attacks signed MQTT frames; run it with --transport mqtt",
            serde_json::to_value(a)?.as_str().unwrap_or("?")
        );
    }
    if args.broker.is_some() || !args.legacy_devices.is_empty() || args.body != Body::Json {
        bail!("--broker, --legacy-device and --body are for --transport mqtt");
    }
    // The conduit from the source's zone must allow OPC UA.
    let zone = config.zone_of(source_cfg);
    if !config.conduits.iter().any(|c| {
        c.from.get_ref() == &zone
            && c.to.get_ref() == config.twinguard.zone.get_ref()
            && c.protocols.get_ref().iter().any(|p| p == "opcua")
    }) {
        bail!(
            "no conduit from zone {zone:?} to {:?} allows protocol \"opcua\"",
            config.twinguard.zone.get_ref()
        );
    }
    let password = dir
        .mqtt_secrets(&["opcua-twinguard"])?
        .users
        .get("opcua-twinguard")
        .cloned()
        .context("no OPC UA password")?;
    let (writes_tx, writes) = mpsc::unbounded_channel();
    let server_pki = args.data_dir.join("opcua").join("plant-pki");
    let server = opcua_link::server::PlantServer::start(
        plant.clone(),
        opcua_link::server::PlantServerConfig {
            host: "127.0.0.1".into(),
            port: 0,
            pki_dir: server_pki.clone(),
            users: vec![("twinguard".into(), password.clone())],
            certificate_users: vec![],
            allow_none: false,
        },
        writes_tx,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let ns = server.namespace();
    let id = format!("{}-opcua", plant.plant.id);
    let mut ua = opcua_link::SourceConfig::new(
        &id,
        &server.url,
        opcua_link::Policy::Basic256Sha256,
        opcua_link::Mode::SignAndEncrypt,
        args.data_dir.join("opcua").join("pki"),
    );
    ua.identity = opcua_link::UserIdentity::UserName {
        user: "twinguard".into(),
        password,
    };
    ua.publishing_ms = 20;
    ua.subscribe = plant
        .signals
        .iter()
        .map(|s| opcua_link::Subscribe {
            signal: s.id.clone(),
            node: opcua_link::NodeRef::Id(format!("ns={ns};s={}", s.id)),
            unit: s.unit.clone(),
            sampling_ms: 0.0,
            deadband: None,
            queue_size: 1_000,
        })
        .collect();
    // The demo is its own installer: each side trusts the other's certificate.
    let own = opcua_link::client::own_certificate(&ua)?;
    opcua_link::pki::add_trusted(&server_pki, &own)?;
    let server_cert = opcua_link::pki::add_trusted(&ua.pki_dir, &server.certificate()?)?;
    let (ua_tx, ua_rx) = mpsc::channel(ua.queue);
    let conn = crate::watch::connect_tagged(&ua, 0, ua_tx).await?;
    let source = Arc::new(crate::watch::ua_source_info(id.clone(), &conn, Some(zone)));
    let mut targets = actuate::OpcUaTargets::default();
    for sp in &plant.setpoints {
        targets.setpoints.insert(
            sp.id.clone(),
            opcua_link::NodeRef::Id(format!("ns={ns};s={}", sp.id)),
        );
    }
    let object = opcua_link::NodeRef::Id(format!("ns={ns};s={}", plant.plant.id));
    for (command, method) in [
        ("stop_line", "StopLine"),
        ("start_line", "StartLine"),
        ("maintenance", "Maintenance"),
    ] {
        targets.calls.insert(
            command.into(),
            (
                object.clone(),
                opcua_link::NodeRef::Id(format!("ns={ns};s={}.{method}", plant.plant.id)),
            ),
        );
    }
    let desc = format!(
        "embedded OPC UA plant server at {} ({}, server certificate {})",
        server.url, conn.security, server_cert.thumbprint
    );
    let (_, frames_rx) = mpsc::channel(1);
    Ok(Link {
        desc,
        source,
        sink: Box::new(actuate::OpcUaSink::new(
            vec![actuate::OpcUaLink {
                source: id.clone(),
                conn,
                targets,
            }],
            plant,
        )),
        frames_rx,
        ua_rx,
        plant_side: PlantSide::Opcua {
            server: Arc::new(server),
            writes,
        },
        sparkplug: None,
        broker_refusals: None,
    })
}

/// The configured Cedar policy (`[guard] policy_file`, relative to the configuration
/// file `config_path`), or the built-in one.
pub(crate) fn load_policy(
    config: &Config,
    config_path: Option<&std::path::Path>,
    plant: &Plant,
) -> Result<Policy> {
    match policy_path(config, config_path) {
        None => Ok(Policy::parse(DEFAULT_POLICY, "<built-in policy>", plant)?),
        Some(path) => Ok(read_policy(&path, plant)?),
    }
}

/// The multivariate model of `[detect]`: watching with a model file, learning from the
/// first hours of data, or none.
/// How the live multivariate model reads the twin (`[detect]`).
pub(crate) fn live_options(config: &Config) -> detect::live::LiveOptions {
    let d = &config.detect;
    let period_ms = i64::from(*d.period_s.get_ref()) * 1000;
    let learn_rows = (d.learn_hours.get_ref() * 3_600_000.0 / period_ms as f64).round() as usize;
    detect::live::LiveOptions {
        period_ms,
        learn_rows,
        fit: detect::multivariate::FitOptions {
            explained_variance: 0.9,
            confidence: *d.confidence.get_ref(),
            lags: 0,
            smoothing: *d.smoothing.get_ref() as usize,
            folds: 5,
            ridge: 0.0,
            // Ten-minute blocks (at least two per fold): the plant the twin learns from
            // moves between operating points (the agents act meanwhile) that it keeps
            // visiting.
            fold_block_rows: ((600_000 / period_ms.max(1)).max(1) as usize)
                .min((learn_rows / 10).max(1)),
            relation_tolerance: 0.0,
            off_delay: 0,
            hold_constants: false,
        },
        // A value a few rows old is missing (its device stopped sending).
        max_age_ms: 3 * period_ms + 10_000,
    }
}

/// A detector model's columns must be signals of the plant (the twin reads them by name).
pub(crate) fn check_columns(
    columns: &[String],
    path: &std::path::Path,
    plant: &Plant,
) -> Result<()> {
    let unknown: Vec<&String> = columns
        .iter()
        .filter(|c| plant.signal(c).is_none())
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "model {}: its columns {unknown:?} are not signals of plant {:?}; a model for the twin reads the plant's signals by name",
            path.display(),
            plant.plant.id
        );
    }
    Ok(())
}

pub(crate) fn multivariate(
    config: &Config,
    config_path: Option<&std::path::Path>,
    plant: &Plant,
) -> Result<Option<detect::live::Live>> {
    let d = &config.detect;
    let options = live_options(config);
    if let Some(f) = &d.model_file {
        let base = config_path
            .and_then(std::path::Path::parent)
            .unwrap_or(std::path::Path::new("."));
        let path = base.join(f.get_ref());
        let model = crate::detect_cmd::load_model(&path)?;
        check_columns(&model.columns, &path, plant)?;
        let live = detect::live::Live::watching(model, options)
            .map_err(|e| anyhow::anyhow!("model {}: {e}", path.display()))?;
        return Ok(Some(live));
    }
    if !d.multivariate {
        return Ok(None);
    }
    for x in &d.exclude {
        if plant.signal(x.get_ref()).is_none() {
            anyhow::bail!(
                "detect.exclude names {:?}, which is not a signal of plant {:?}",
                x.get_ref(),
                plant.plant.id
            );
        }
    }
    let columns = plant
        .signals
        .iter()
        .map(|s| s.id.clone())
        .filter(|id| !d.exclude.iter().any(|x| x.get_ref() == id))
        .collect();
    Ok(Some(detect::live::Live::learning(columns, options)))
}

/// The pump's live remaining-life estimate of `[predict]`, if a model is configured.
pub(crate) fn pump_health(
    config: &Config,
    config_path: Option<&std::path::Path>,
) -> Result<Option<crate::pump_health::PumpHealth>> {
    let Some(f) = &config.predict.pump_model else {
        return Ok(None);
    };
    let base = config_path
        .and_then(std::path::Path::parent)
        .unwrap_or(std::path::Path::new("."));
    let path = base.join(f.get_ref());
    let model = crate::rul_cmd::load_model(&path)?;
    crate::pump_health::check_model(&model)
        .map_err(|e| anyhow::anyhow!("predict.pump_model {}: {e}", path.display()))?;
    let sha = crate::detect_cmd::sha256_file(&path)?;
    Ok(Some(crate::pump_health::PumpHealth::new(
        model,
        sha,
        *config.predict.horizon_h.get_ref(),
    )))
}

/// Where the configured policy file is (relative to the configuration file), if one is.
pub(crate) fn policy_path(
    config: &Config,
    config_path: Option<&std::path::Path>,
) -> Option<std::path::PathBuf> {
    let f = config.guard.policy_file.as_ref()?;
    let base = config_path
        .and_then(std::path::Path::parent)
        .unwrap_or(std::path::Path::new("."));
    Some(base.join(f.get_ref()))
}

/// Reads and validates the policy file at `path`.
pub(crate) fn read_policy(path: &std::path::Path, plant: &Plant) -> Result<Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy file {}", path.display()))?;
    Ok(Policy::parse(&text, &path.display().to_string(), plant)?)
}

/// The guard with the built-in agents registered, the configured policy and limits.
pub(crate) fn guard_with_agents(
    plant: &Arc<Plant>,
    config: &Config,
    config_path: Option<&std::path::Path>,
    maintenance_key: &ed25519_dalek::SigningKey,
    optimiser_key: &ed25519_dalek::SigningKey,
) -> Result<Guard> {
    let mut agents = AgentRegistry::default();
    agents.register("maintenance", maintenance_key.verifying_key());
    agents.register("optimiser", optimiser_key.verifying_key());
    let policy = load_policy(config, config_path, plant)?;
    let b = &config.guard.breakers;
    Ok(Guard::new(plant.clone(), agents, policy)
        .with_limits(guard_limits(config))
        .with_breakers(guard::BreakerLimits {
            alarms_per_hour: b.alarms_per_hour,
            actions_per_10_min: b.actions_per_10_min,
            integrity_failures_per_hour: b.integrity_failures_per_hour,
            model_disagreements_per_hour: b.model_disagreements_per_hour,
        }))
}

/// The guard's limits from the configuration.
pub(crate) fn guard_limits(config: &Config) -> guard::GuardLimits {
    let g = &config.guard;
    guard::GuardLimits {
        agent_actions_per_hour: *g.agent_actions_per_hour.get_ref(),
        agent_asset_actions_per_hour: *g.agent_asset_actions_per_hour.get_ref(),
        token_ttl_ms: i64::from(*g.token_ttl_min.get_ref()) * 60_000,
        approval_ttl_ms: i64::from(*g.approval_ttl_min.get_ref()) * 60_000,
    }
}

/// Serves the page and API on 127.0.0.1:`port` (a free port when it is busy); returns the
/// address and the operations the API sends to the core.
pub(crate) async fn start_api(
    port: u16,
    snapshot: Arc<RwLock<api::Snapshot>>,
    operator_token: &str,
    dir: &DataDir,
) -> Result<(std::net::SocketAddr, mpsc::Receiver<api::Op>)> {
    let (ops_tx, ops_rx) = mpsc::channel(64);
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) if port != 0 => {
            eprintln!("port {port} is busy ({e}); using a free port instead");
            tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?
        }
        Err(e) => return Err(e.into()),
    };
    let api_addr = listener.local_addr()?;
    // People's accounts, re-read within a second whenever `twinguard user` changes them.
    let accounts = Arc::new(std::sync::Mutex::new(api::accounts::Accounts::new(
        dir.users()?.into_iter().collect(),
    )));
    {
        let accounts = accounts.clone();
        let root = dir.root.clone();
        tokio::spawn(async move {
            let dir = DataDir { root };
            let mut seen = std::fs::metadata(dir.users_path())
                .and_then(|m| m.modified())
                .ok();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let now = std::fs::metadata(dir.users_path())
                    .and_then(|m| m.modified())
                    .ok();
                if now == seen {
                    continue;
                }
                seen = now;
                let users = dir.users().unwrap_or_else(|e| {
                    // An unreadable file admits nobody: only the installer's token works.
                    tracing::error!(error = %e, "user accounts unreadable: accounts disabled");
                    Default::default()
                });
                if let Ok(mut a) = accounts.lock() {
                    a.replace(users.into_iter().collect());
                }
            }
        });
    }
    let api_state =
        api::ApiState::new(snapshot, ops_tx, "operator", operator_token).with_accounts(accounts);
    tokio::spawn(async move {
        if let Err(e) = api::serve(listener, api_state).await {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    });
    Ok((api_addr, ops_rx))
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The human-readable summary.
#[allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexing yields Null, it never panics"
)]
pub fn summary(r: &Value) -> String {
    let obj = |v: &Value| -> String {
        match v.as_object() {
            Some(m) if !m.is_empty() => m
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "none".into(),
        }
    };
    let plant = &r["plant"]["truth"];
    let mut s = String::new();
    s.push_str(&format!(
        "twinguard demo: {} simulated hours, seed {}, attack {}\n",
        r["hours"], r["seed"], r["attack"]
    ));
    s.push_str(&format!(
        "  samples accepted   {}\n",
        r["samples"]["accepted"]
    ));
    s.push_str(&format!(
        "  samples rejected   {}\n",
        obj(&r["samples"]["rejected"])
    ));
    s.push_str(&format!("  detections         {}\n", obj(&r["detections"])));
    s.push_str(&format!(
        "  proposals          executed {}, pending {}, denied: {}\n",
        r["proposals"]["executed"],
        r["proposals"]["pending"],
        obj(&r["proposals"]["denied"])
    ));
    s.push_str(&format!(
        "  executed by agent  {}\n",
        obj(&r["actions_executed_by_agent"])
    ));
    s.push_str(&format!("  line stops         {}\n", r["line_stops"]));
    if let Some(a) = r["alerts"].as_array().filter(|a| !a.is_empty()) {
        s.push_str(&format!("  alerts             {}\n", a.len()));
    }
    s.push_str(&format!(
        "  plant              good bottles {:.0}, energy {:.1} kWh ({:.2} Wh per good bottle), bearing wear {:.2}, pump failures {}\n",
        plant["good_bottles"].as_f64().unwrap_or(0.0),
        plant["energy_kwh"].as_f64().unwrap_or(0.0),
        plant["energy_per_good_bottle_wh"].as_f64().unwrap_or(0.0),
        plant["bearing_wear"].as_f64().unwrap_or(0.0),
        plant["pump_failures"]
    ));
    s.push_str(&format!(
        "  audit              {} records, head {}, {}\n",
        r["audit"]["records"],
        r["audit"]["head"].as_str().unwrap_or("-"),
        if r["audit"]["verified"] == json!(true) {
            "verified"
        } else {
            "NOT VERIFIED"
        }
    ));
    s.push_str(&format!(
        "  data directory     {}\n",
        r["data_dir"].as_str().unwrap_or("")
    ));
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    /// The configuration's guard defaults are the guard's own (the config crate does not
    /// depend on the guard, so they are written twice).
    #[test]
    fn configuration_defaults_match_the_guard() {
        let c = twinguard_config::Config::default_config();
        let b = &c.guard.breakers;
        let g = guard::BreakerLimits::default();
        assert_eq!(
            (
                b.alarms_per_hour,
                b.actions_per_10_min,
                b.integrity_failures_per_hour,
                b.model_disagreements_per_hour
            ),
            (
                g.alarms_per_hour,
                g.actions_per_10_min,
                g.integrity_failures_per_hour,
                g.model_disagreements_per_hour
            )
        );
        assert_eq!(super::guard_limits(&c), guard::GuardLimits::default());
    }
}
