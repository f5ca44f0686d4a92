//! The core: ingest -> twin -> detectors -> agents -> guard -> actuation, with every step
//! that matters written to the audit log. One task owns all of it, so decisions are made
//! in one place and in order. The HTTP API reads a published snapshot and sends writes
//! here as operations. The one piece of work done ahead of it, on a task of its own, is
//! verifying the signatures of MQTT frames ([`ingest::seal`]); the core takes those
//! verdicts only under the device registry it holds itself.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actuate::CommandSink;
use agents::{Agent, Maintenance, Optimiser};
use api::{Op, Snapshot};
use audit::{AuditStore, Entry, Quarantined};
use detect::{Detection, Detectors, Event};
use ed25519_dalek::VerifyingKey;
use guard::{Decision, DecisionRecord, Guard, SignedProposal};
use ingest::mqtt::RawFrame;
use ingest::seal::SealedBatch;
use ingest::{Device, SourceInfo, Verifier};
use opcua_link::UaEvent;
use plant_model::{Plant, PlantCommand};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use twin::Twin;

use crate::gateway::{Progress, SimClock};

/// A signal this far behind the newest data is reported as a gap.
const GAP_MS: i64 = 30_000;
/// Gaps are looked for once per this much data time, not in every frame: the check visits
/// every signal of the plant.
const GAP_CHECK_MS: i64 = 1_000;
/// Most frames verified in one batch.
const BATCH: usize = 64;
/// Sealed batches waiting between the seal stage and the core.
const SEALED_QUEUE: usize = 4;
/// Most OPC UA values checked in one batch.
const UA_BATCH: usize = 1024;
/// How often agents look at the plant (data time).
const AGENT_PERIOD_MS: i64 = 60_000;
/// Least time between two snapshots for the page and the API (wall clock).
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(250);
/// Points per signal in the page's plots.
const PLOT_POINTS: usize = 120;
/// Episodes the report lists (the latest).
const EPISODES_KEPT: usize = 1_000;

/// One alarm episode as the report lists it: its class when raised and now (or when it
/// cleared).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct EpisodeSummary {
    pub id: u64,
    pub kind: &'static str,
    pub raised_ms: i64,
    pub cleared_ms: Option<i64>,
    pub first_class: &'static str,
    pub class: &'static str,
    /// The evidence's signals, at most three.
    pub signals: Vec<String>,
}

pub struct Core {
    pub plant: Arc<Plant>,
    pub verifier: Verifier,
    /// The sources values arrive through: the demo's one MQTT or OPC UA source, or the OPC
    /// UA sources of `run`. MQTT frames come through the first.
    pub(crate) sources: Vec<SourceState>,
    /// Values below this trust may be shown but never drive actuation (`min_trust`).
    pub min_trust: ingest::Trust,
    pub twin: Twin,
    pub detectors: Detectors,
    pub guard: Guard,
    pub maintenance: Maintenance,
    pub optimiser: Optimiser,
    pub sink: Box<dyn CommandSink>,
    pub audit: Box<dyn AuditStore>,
    pub audit_public: VerifyingKey,
    /// Records older than this (by the core's clock) lose their bodies.
    pub audit_retention_ms: i64,
    pub clock: SimClock,
    pub snapshot: Arc<RwLock<Snapshot>>,
    pub progress: watch::Sender<Progress>,
    /// Where a thief could copy the optimiser's token from (only set in the stolen-token demo).
    pub token_leak: Option<Arc<std::sync::Mutex<Option<String>>>>,
    pub(crate) next_agent_ms: Option<i64>,
    /// Data time of the next look for gaps.
    next_gap_check_ms: i64,
    pub(crate) recent: VecDeque<Arc<Value>>,
    pub(crate) commands: VecDeque<Value>,
    pub(crate) audit_failure: Option<String>,
    /// When retention last ran.
    last_prune: Option<Instant>,
    pub(crate) last_snapshot: Option<Instant>,
    /// How long the latest snapshot took to make: the next waits at least ten times that.
    snapshot_cost: Duration,
    pub(crate) detections_by_kind: BTreeMap<String, u64>,
    /// The latest episodes (at most [`EPISODES_KEPT`]), oldest first, for the report.
    pub(crate) episodes: VecDeque<EpisodeSummary>,
    /// Rejected frames recorded without their bytes because the quarantine was full.
    pub(crate) quarantine_full: u64,
    /// The source carries Sparkplug B payloads: the host's view of its edge nodes, and
    /// the client that publishes rebirth requests.
    pub sparkplug: Option<SparkplugIn>,
    /// The external agents' registry file, and when it last changed.
    agents_file: Option<std::path::PathBuf>,
    agents_modified: Option<std::time::SystemTime>,
    /// The device registry file, when it was last read, and why it could not be read
    /// since (the registry in force stays meanwhile).
    devices_file: Option<std::path::PathBuf>,
    devices_modified: Option<std::time::SystemTime>,
    pub(crate) devices_failure: Option<String>,
    /// The configured policy file (none: the built-in policy), and its last seen
    /// modification time and length.
    policy_file: Option<std::path::PathBuf>,
    policy_seen: Option<(std::time::SystemTime, u64)>,
    /// Why no policy is in force, while none is.
    pub(crate) policy_failure: Option<String>,
    /// The multivariate model in the twin, and the SHA-256 of the model it watches with
    /// (for an admitted model, the digest of its signed statement).
    multivariate: Option<detect::live::Live>,
    multivariate_sha256: Option<String>,
    /// The admitted model watching, when it comes from the registry.
    multivariate_ref: Option<ModelRef>,
    /// The active model's flag at its last scored row (for the shadow's agreement).
    multivariate_flag: Option<bool>,
    /// A model in shadow: it scores what the active one scores, its episodes are
    /// recorded, nothing it says is acted on.
    shadow: Option<ShadowModel>,
    /// The pump's remaining life, estimated live (`[predict]`).
    pump_health: Option<crate::pump_health::PumpHealth>,
    pump_shadow: Option<PumpShadow>,
    agents_enabled: bool,
    /// Every ten minutes of data: [t_ms, energy meter kWh, good-bottle counter], the
    /// plant's own measured KPIs.
    kpi_series: VecDeque<[f64; 3]>,
    next_kpi_ms: Option<i64>,
    baseline: Option<Value>,
    /// Each physics relation's latest evaluation (a heat balance's effectiveness and
    /// forecast among them), for the report and the page.
    relations_latest: BTreeMap<String, twin::Residual>,
    /// What each relation that estimates something (a heat balance's effectiveness) has
    /// estimated, the latest [`RELATION_HISTORY`] windows: `[t_ms, estimate]`.
    relations_history: BTreeMap<String, VecDeque<[f64; 2]>>,
}

/// Estimates kept per relation for the page's plot (a day of five-minute windows).
const RELATION_HISTORY: usize = 288;

/// An admitted model, as every record of what it did names it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
    /// SHA-256 of its signed statement.
    pub digest: String,
}

/// A model in shadow beside the active one.
pub struct ShadowModel {
    pub live: detect::live::Live,
    pub model: ModelRef,
    flagged: bool,
    rows: u64,
    flagged_rows: u64,
    episodes: u64,
    compared: u64,
    agreed: u64,
}

impl ShadowModel {
    pub fn new(live: detect::live::Live, model: ModelRef) -> ShadowModel {
        ShadowModel {
            live,
            model,
            flagged: false,
            rows: 0,
            flagged_rows: 0,
            episodes: 0,
            compared: 0,
            agreed: 0,
        }
    }
}

/// A RUL model in shadow beside the active one: it estimates from the same cycles, its
/// warnings are recorded under its digest and never acted on, and its estimates are
/// compared with the active model's.
pub struct PumpShadow {
    pub health: crate::pump_health::PumpHealth,
    pub model: ModelRef,
    cycles_compared: u64,
    abs_difference_h: f64,
    agreed_warning: u64,
}

impl PumpShadow {
    pub fn new(health: crate::pump_health::PumpHealth, model: ModelRef) -> PumpShadow {
        PumpShadow {
            health,
            model,
            cycles_compared: 0,
            abs_difference_h: 0.0,
            agreed_warning: 0,
        }
    }

    fn status(&self) -> Value {
        let n = self.cycles_compared;
        json!({
            "model": self.model,
            "status": self.health.status(),
            "cycles_compared": n,
            "mean_abs_difference_h": (n > 0).then(|| self.abs_difference_h / n as f64),
            "warning_agreement": (n > 0).then(|| self.agreed_warning as f64 / n as f64),
        })
    }
}

/// What a core is built from; the rest of its state starts empty.
pub struct CoreParts {
    pub plant: Arc<Plant>,
    pub verifier: Verifier,
    pub sources: Vec<SourceState>,
    pub min_trust: ingest::Trust,
    pub guard: Guard,
    pub maintenance_key: ed25519_dalek::SigningKey,
    pub optimiser_key: ed25519_dalek::SigningKey,
    pub sink: Box<dyn CommandSink>,
    pub audit: Box<dyn AuditStore>,
    pub audit_public: VerifyingKey,
    /// Records older than this (by the core's clock) lose their bodies.
    pub audit_retention_ms: i64,
    pub clock: SimClock,
    pub snapshot: Arc<RwLock<Snapshot>>,
    pub progress: watch::Sender<Progress>,
    pub token_leak: Option<Arc<std::sync::Mutex<Option<String>>>>,
    pub sparkplug: Option<SparkplugIn>,
    /// The external agents' registry file (`agents.toml` in the data directory).
    pub agents_file: Option<std::path::PathBuf>,
    /// The device registry file (`devices.toml`), watched for changes: a key rotated or a
    /// device removed takes effect within a second. None: the verifier's devices stay.
    pub devices_file: Option<std::path::PathBuf>,
    /// The policy file the guard's policy was read from, watched for changes (none for
    /// the built-in policy).
    pub policy_file: Option<std::path::PathBuf>,
    /// The multivariate model in the twin (`[detect]`), learning or watching.
    pub multivariate: Option<detect::live::Live>,
    /// Which admitted model `multivariate` is, when it comes from the registry.
    pub multivariate_ref: Option<ModelRef>,
    pub shadow: Option<ShadowModel>,
    /// The pump's live remaining-life estimate (`[predict]`).
    pub pump_health: Option<crate::pump_health::PumpHealth>,
    /// The registry's RUL model in shadow, if one is admitted.
    pub pump_shadow: Option<PumpShadow>,
    /// The built-in agents run (false: the fixed-setpoint baseline).
    pub agents: bool,
    /// The same seeded plant's fixed-setpoint run's `kpi_series`, for the page's
    /// comparison (`demo --compare-baseline`).
    pub baseline: Option<Value>,
}

/// A source the core reads, and its connection history.
pub struct SourceState {
    pub info: Arc<SourceInfo>,
    /// The signals it delivers: a lost connection is a gap in these.
    pub signals: Vec<String>,
    pub events: SourceEvents,
}

impl SourceState {
    /// A connected source delivering `signals`.
    pub fn new(info: Arc<SourceInfo>, signals: Vec<String>) -> SourceState {
        SourceState {
            info,
            signals,
            events: SourceEvents {
                connected: true,
                ..Default::default()
            },
        }
    }
}

pub struct SparkplugIn {
    pub host: sparkplug::Host,
    pub control: ingest::mqtt::Publisher,
    pub rebirths: u64,
}

/// Connection history of a session-based source.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceEvents {
    pub connected: bool,
    pub lost: u64,
    pub restored: u64,
}

fn random_token() -> String {
    frames::keys::random_hex(32).unwrap_or_default()
}

impl Core {
    /// A core reading `parts.sources` (at least one).
    pub fn new(parts: CoreParts) -> anyhow::Result<Core> {
        if parts.sources.is_empty() {
            anyhow::bail!("the core needs at least one source");
        }
        let CoreParts {
            plant,
            verifier,
            sources,
            min_trust,
            guard,
            maintenance_key,
            optimiser_key,
            sink,
            audit,
            audit_public,
            audit_retention_ms,
            clock,
            snapshot,
            progress,
            token_leak,
            sparkplug,
            agents_file,
            devices_file,
            policy_file,
            multivariate,
            multivariate_ref,
            shadow,
            pump_health,
            pump_shadow,
            agents: agents_enabled,
            baseline,
        } = parts;
        let multivariate_sha256 = match &multivariate_ref {
            Some(r) => Some(r.digest.clone()),
            None => multivariate
                .as_ref()
                .and_then(|m| m.model())
                .map(model_sha256),
        };
        let policy_seen = policy_file.as_deref().and_then(file_seen);
        Ok(Core {
            twin: Twin::new(
                plant.clone(),
                twin::DEFAULT_HISTORY,
                twin::CusumConfig::default(),
            ),
            detectors: Detectors::new(plant.clone()),
            maintenance: Maintenance::new(agents::Identity::new("maintenance", maintenance_key)),
            optimiser: Optimiser::new(
                agents::Identity::new("optimiser", optimiser_key),
                plant.clone(),
            ),
            plant,
            verifier,
            sources,
            min_trust,
            guard,
            sink,
            audit,
            audit_public,
            audit_retention_ms,
            clock,
            snapshot,
            progress,
            token_leak,
            next_agent_ms: None,
            next_gap_check_ms: i64::MIN,
            recent: VecDeque::new(),
            commands: VecDeque::new(),
            audit_failure: None,
            last_prune: None,
            last_snapshot: None,
            snapshot_cost: Duration::ZERO,
            detections_by_kind: BTreeMap::new(),
            episodes: VecDeque::new(),
            quarantine_full: 0,
            sparkplug,
            agents_file,
            agents_modified: None,
            devices_file,
            devices_modified: None,
            devices_failure: None,
            policy_file,
            policy_seen,
            policy_failure: None,
            multivariate,
            multivariate_sha256,
            multivariate_ref,
            multivariate_flag: None,
            shadow,
            pump_health,
            pump_shadow,
            agents_enabled,
            kpi_series: VecDeque::new(),
            next_kpi_ms: None,
            baseline,
            relations_latest: BTreeMap::new(),
            relations_history: BTreeMap::new(),
        })
    }

    /// The source MQTT frames arrive through (the first).
    fn frame_source(&self) -> Option<Arc<SourceInfo>> {
        self.sources.first().map(|s| s.info.clone())
    }

    /// Runs until `stop` fires, then returns itself for the final report.
    /// Frames come from MQTT on `frames_rx`, values and connection events from OPC UA on
    /// `ua_rx` (tagged with the index of their source in `sources`); the loop ends at
    /// `stop` or when every input has closed. MQTT frames pass a seal stage on a task of
    /// its own first, which verifies their signatures while the core works on the frames
    /// before them.
    pub async fn run(
        mut self,
        frames_rx: mpsc::Receiver<RawFrame>,
        mut ua_rx: mpsc::Receiver<(usize, UaEvent)>,
        mut ops_rx: mpsc::Receiver<Op>,
        stop: oneshot::Receiver<()>,
    ) -> Core {
        let mut stop = stop;
        self.reload_agents();
        self.reload_devices();
        let (sealed_tx, mut sealed_rx) = mpsc::channel::<SealedBatch>(SEALED_QUEUE);
        let (finish_tx, finish_rx) = oneshot::channel();
        let stage = tokio::spawn(ingest::seal::run(
            self.verifier.seal_stage(),
            frames_rx,
            sealed_tx,
            finish_rx,
            BATCH,
        ));
        let mut registry_check = tokio::time::interval(std::time::Duration::from_secs(1));
        registry_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                Some(op) = ops_rx.recv() => self.handle_op(op),
                _ = registry_check.tick() => {
                    self.reload_agents();
                    self.reload_devices();
                    if self.reload_policy() {
                        self.publish_snapshot(true);
                    }
                    self.checkpoint_audit(false);
                    self.apply_retention();
                }
                Some(batch) = sealed_rx.recv() => self.handle_sealed(batch),
                Some(e) = ua_rx.recv() => {
                    let mut batch = vec![e];
                    while batch.len() < UA_BATCH {
                        match ua_rx.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    self.handle_ua(batch);
                }
                else => break,
            }
        }
        // Drain what is already queued: nothing accepted by the broker is left unprocessed.
        // The seal stage seals what it holds and what is queued for it, then ends.
        let _ = finish_tx.send(());
        while let Some(batch) = sealed_rx.recv().await {
            self.handle_sealed(batch);
        }
        if let Err(e) = stage.await {
            tracing::error!(error = %e, "the seal stage failed");
        }
        while let Ok(e) = ua_rx.try_recv() {
            self.handle_ua(vec![e]);
        }
        while let Ok(op) = ops_rx.try_recv() {
            self.handle_op(op);
        }
        self.checkpoint_audit(true);
        self.publish_snapshot(true);
        self
    }

    /// Once an hour: records older than the retention period lose their bodies (their
    /// leaves stay, so every proof stays checkable); the pruning itself is recorded.
    fn apply_retention(&mut self) {
        if self
            .last_prune
            .is_some_and(|t| t.elapsed() < Duration::from_secs(3600))
        {
            return;
        }
        self.last_prune = Some(Instant::now());
        let before_ms = self.clock.now_ms() - self.audit_retention_ms;
        match self.audit.prune(before_ms) {
            Ok(0) => {}
            Ok(n) => {
                let t = self.clock.now_ms();
                self.audit(vec![Entry::new(
                    t,
                    "audit_pruned",
                    json!({ "records": n, "older_than_ms": before_ms }),
                )]);
            }
            Err(e) => {
                tracing::error!(error = %e, "audit retention failed: nothing will execute");
                self.audit_failure = Some(e.to_string());
            }
        }
    }

    /// The shadow model scores the twin's values as the active one does; an episode's
    /// start and end are recorded (`shadow_detection`, with the model's digest), and
    /// nothing else happens: no alert, no proposal.
    fn tick_shadow(&mut self, t: i64) {
        use detect::live::Output;
        let Some(shadow) = self.shadow.as_mut() else {
            return;
        };
        let twin = &self.twin;
        let out = shadow.live.tick(t, |c| {
            twin.signal(c)
                .and_then(|st| st.last)
                .map(|p| (p.t_ms, p.value))
        });
        let Output::Scored {
            score,
            class,
            contributors,
        } = out
        else {
            return;
        };
        shadow.rows += 1;
        shadow.flagged_rows += u64::from(score.flag);
        if let Some(active) = self.multivariate_flag {
            shadow.compared += 1;
            shadow.agreed += u64::from(active == score.flag);
        }
        if score.flag == shadow.flagged {
            return;
        }
        shadow.flagged = score.flag;
        shadow.episodes += u64::from(score.flag);
        let entry = json!({
            "model": shadow.model.name,
            "version": shadow.model.version,
            "digest": shadow.model.digest,
            "state": if score.flag { "start" } else { "end" },
            "score": score.score,
            "threshold": shadow.live.threshold(),
            "class": class.as_str(),
            "contributors": contributors,
            "active_flag": self.multivariate_flag,
        });
        self.audit(vec![Entry::new(t, "shadow_detection", entry)]);
    }

    /// Signs an audit checkpoint when one is due (or now, with `force`); a log that cannot
    /// be checkpointed is an audit failure like any other (nothing executes).
    pub fn checkpoint_audit(&mut self, force: bool) {
        let r = if force {
            self.audit.checkpoint()
        } else {
            self.audit.checkpoint_if_due()
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "audit log cannot be checkpointed: nothing will execute");
            self.audit_failure = Some(e.to_string());
        }
        // A log that writes behind its appends may have failed since the last one.
        if self.audit_failure.is_none()
            && let Some(why) = self.audit.unavailable()
        {
            tracing::error!(error = %why, "audit log unavailable: nothing will execute");
            self.audit_failure = Some(why);
        }
    }

    /// Appends to the audit log; on failure the core stops executing anything (fail safe).
    fn audit(&mut self, entries: Vec<Entry>) -> Option<u64> {
        if entries.is_empty() {
            return self.audit.head().map(|h| h.seq);
        }
        match self.audit.append(&entries) {
            Ok(h) => Some(h.seq),
            Err(e) => {
                tracing::error!(error = %e, "audit log unavailable: nothing will execute");
                self.audit_failure = Some(e.to_string());
                None
            }
        }
    }

    /// Checks a batch of frames (signatures verified together) and applies each in order.
    pub fn handle_frames(&mut self, frames: Vec<RawFrame>) {
        let sealed = self.verifier.seal(frames);
        self.handle_sealed(sealed);
    }

    /// Checks a batch of frames whose signatures the seal stage verified, and applies each
    /// in order.
    fn handle_sealed(&mut self, batch: SealedBatch) {
        if self.sparkplug.is_some() {
            for f in batch.into_frames() {
                self.handle_sparkplug(f);
            }
            return;
        }
        let now = self.clock.now_ms();
        let Some(source) = self.frame_source() else {
            return;
        };
        for (f, out) in self.verifier.check_sealed(&source, batch, now) {
            self.apply_outcome(f, out, now);
        }
    }

    /// A Sparkplug B message: the host resolves it against the births it has seen; its
    /// metrics named like plant signals (on the device named like the signal's asset)
    /// become values as trustworthy as their unsigned path (untrusted); a sequence gap or
    /// data before a birth is refused and answered with a rebirth request.
    fn handle_sparkplug(&mut self, f: RawFrame) {
        let now = self.clock.now_ms();
        let Some(sp) = self.sparkplug.as_mut() else {
            return;
        };
        let out = sp.host.handle(&f.topic, &f.payload);
        let mut rejected: Vec<ingest::Rejection> = out
            .refused
            .iter()
            .map(|(r, detail)| ingest::Rejection {
                reason: match r {
                    sparkplug::Refusal::Malformed => ingest::Reason::Malformed,
                    sparkplug::Refusal::NotBorn => ingest::Reason::NotBorn,
                    sparkplug::Refusal::Sequence => ingest::Reason::Sequence,
                    sparkplug::Refusal::UnknownMetric => ingest::Reason::UnknownSignal,
                    sparkplug::Refusal::StaleDeath => ingest::Reason::StaleDeath,
                },
                detail: detail.clone(),
                device: None,
                signal: None,
                samples: 1,
                whole_frame: !matches!(r, sparkplug::Refusal::UnknownMetric),
            })
            .collect();
        let mut audit = Vec::new();
        if let Some((topic, payload)) = out.rebirth {
            match sp.control.try_publish(topic.clone(), payload) {
                Ok(()) => {
                    sp.rebirths += 1;
                    audit.push(Entry::new(
                        now,
                        "sparkplug_rebirth_requested",
                        json!({ "topic": topic }),
                    ));
                }
                Err(e) => tracing::warn!(error = %e, "cannot request a Sparkplug rebirth"),
            }
        }
        if let Some(who) = &out.offline {
            audit.push(Entry::new(
                now,
                "sparkplug_offline",
                json!({ "node": who, "topic": f.topic }),
            ));
        }
        self.audit(audit);
        let mut values = Vec::new();
        for s in out.samples {
            // A null metric (declared in a birth without a current value) is no sample.
            if s.value.is_none() {
                continue;
            }
            let device = s.device.clone().unwrap_or_default();
            match self.plant.signal(&s.metric) {
                Some(sig) if sig.asset == device => values.push(ingest::ChannelValue {
                    channel: format!("{}/{device}/{}", s.node, s.metric),
                    unit: sig.unit.clone(),
                    signal: s.metric,
                    value: s.value,
                    good: s.value.is_some(),
                    status: if s.value.is_some() {
                        "Good".into()
                    } else {
                        "null".into()
                    },
                    t_ms: s.t_ms,
                }),
                _ => rejected.push(ingest::Rejection {
                    reason: ingest::Reason::UnknownSignal,
                    detail: format!(
                        "metric {} of {}/{device} is not a signal of that asset",
                        s.metric, s.node
                    ),
                    device: Some(s.node.clone()),
                    signal: Some(s.metric.clone()),
                    samples: 1,
                    whole_frame: false,
                }),
            }
        }
        self.verifier.record_rejected(&rejected);
        let Some(source) = self.frame_source() else {
            return;
        };
        let mut outcome = self.verifier.check_values(&source, values, now);
        outcome.rejected.extend(rejected);
        self.apply_outcome(f, outcome, now);
    }

    /// OPC UA data changes become checked samples; a lost connection is audited and shown
    /// as a gap in the signals of its source, not papered over.
    pub fn handle_ua(&mut self, events: Vec<(usize, UaEvent)>) {
        let now = self.clock.now_ms();
        let mut values: BTreeMap<usize, Vec<ingest::ChannelValue>> = BTreeMap::new();
        let mut connection_event = false;
        for (i, e) in events {
            let Some(source) = self.sources.get_mut(i) else {
                tracing::warn!(index = i, "OPC UA event from an unknown source: ignored");
                continue;
            };
            let id = source.info.id.clone();
            match e {
                UaEvent::Value(v) => values.entry(i).or_default().push(ingest::ChannelValue {
                    signal: v.signal,
                    channel: v.node,
                    unit: v.unit,
                    value: v.value,
                    good: v.good,
                    status: v.status,
                    t_ms: v.source_ms.or(v.server_ms),
                }),
                UaEvent::Lost { reason } => {
                    connection_event = true;
                    source.events.lost += 1;
                    source.events.connected = false;
                    let signals = source.signals.clone();
                    tracing::warn!(source = %id, %reason, "OPC UA connection lost; data gap until it is restored");
                    self.audit(vec![Entry::new(
                        now,
                        "source_lost",
                        json!({ "source": id, "reason": reason }),
                    )]);
                    let events = self.detectors.source_lost(&id, signals, now, &reason);
                    self.record_detections(events);
                }
                UaEvent::Restored { new_session } => {
                    connection_event = true;
                    source.events.restored += 1;
                    source.events.connected = true;
                    self.audit(vec![Entry::new(
                        now,
                        "source_restored",
                        json!({ "source": id, "new_session": new_session }),
                    )]);
                    let events = self.detectors.source_restored(&id, now);
                    self.record_detections(events);
                }
            }
        }
        if values.is_empty() && connection_event {
            // A connection event may be the last thing for a while: show it now.
            self.publish_snapshot(true);
        }
        for (i, values) in values {
            let Some(source) = self.sources.get(i).map(|s| s.info.clone()) else {
                continue;
            };
            let out = self.verifier.check_values(&source, values, now);
            let rejected: Vec<Value> = out
                .rejected
                .iter()
                .map(|r| json!({ "signal": r.signal, "reason": r.reason, "detail": r.detail }))
                .collect();
            let raw = RawFrame {
                topic: format!("opcua:{}", source.id),
                payload: if rejected.is_empty() {
                    Vec::new()
                } else {
                    serde_json::to_vec(&rejected).unwrap_or_default()
                },
            };
            self.apply_outcome(raw, out, now);
        }
    }

    fn apply_outcome(&mut self, f: RawFrame, out: ingest::Outcome, now: i64) {
        use ingest::Reason as R;
        let failures: Vec<&ingest::Rejection> = out
            .rejected
            .iter()
            .filter(|r| {
                matches!(
                    r.reason,
                    R::UnknownDevice
                        | R::Unsigned
                        | R::BadSignature
                        | R::UnauthorizedTopic
                        | R::RetiredKey
                        | R::Replay
                        | R::UnauthorizedSignal
                )
            })
            .collect();
        // Episodes on the data of a device whose frames fail integrity are suspect.
        let mut reclassified = Vec::new();
        for device in failures.iter().filter_map(|r| r.device.as_deref()) {
            reclassified.extend(self.detectors.note_integrity_failure(device, now));
        }
        if !reclassified.is_empty() {
            self.record_detections(reclassified);
        }
        let integrity = failures.len() as u64;
        if integrity > 0 {
            self.guard.note_integrity_failures(now, integrity);
            self.record_breaker_events();
        }
        if !out.rejected.is_empty() {
            let entries: Vec<Entry> = out
                .rejected
                .iter()
                .map(|r| {
                    Entry::new(
                        now,
                        if r.whole_frame { "frame_rejected" } else { "sample_rejected" },
                        json!({ "topic": f.topic, "reason": r.reason, "detail": r.detail, "device": r.device, "signal": r.signal, "samples": r.samples }),
                    )
                })
                .collect();
            if let Some(seq) = self.audit(entries) {
                let reasons: Vec<&str> = out.rejected.iter().map(|r| r.reason.as_str()).collect();
                let q = Quarantined {
                    ts_ms: now,
                    topic: f.topic.clone(),
                    reason: reasons.join(","),
                    detail: out
                        .rejected
                        .first()
                        .map(|r| r.detail.clone())
                        .unwrap_or_default(),
                    bytes: f.payload.clone(),
                };
                match self.audit.quarantine(&q, seq) {
                    Ok(true) => {}
                    Ok(false) => self.quarantine_full += 1,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot quarantine a rejected frame");
                        self.audit_failure = Some(e.to_string());
                    }
                }
            }
        }
        let mut events = Vec::new();
        for s in &out.accepted {
            if self.twin.update(s) {
                events.extend(self.detectors.observe(s));
            }
        }
        for r in self.twin.evaluate_relations() {
            let devices: Vec<String> = r
                .signals
                .iter()
                .filter_map(|s| {
                    self.twin
                        .signal(s)
                        .and_then(|st| st.provenance.as_ref())
                        .map(|p| p.device.clone())
                })
                .collect();
            events.extend(self.detectors.observe_residual(&r, devices));
            if let Some(e) = r.estimate {
                let h = self
                    .relations_history
                    .entry(r.relation.clone())
                    .or_default();
                if h.len() == RELATION_HISTORY {
                    h.pop_front();
                }
                h.push_back([r.t_ms as f64, e]);
            }
            self.relations_latest.insert(r.relation.clone(), r);
        }
        self.record_detections(events);
        if let Some(t) = self.twin.complete_until() {
            self.tick_multivariate(t);
            self.tick_pump_health(t);
            self.tick_kpis(t);
            let due = *self.next_agent_ms.get_or_insert(t + AGENT_PERIOD_MS);
            if t >= due {
                self.next_agent_ms = Some(t + AGENT_PERIOD_MS);
                self.run_agents(t);
            }
            for id in self.guard.expire(t) {
                self.audit(vec![Entry::new(
                    t,
                    "approval_expired",
                    json!({ "proposal_id": id }),
                )]);
            }
        }
        // Progress for the plant's lockstep: the newest data processed, even while one
        // device lags (its late frames are then judged stale, as they would be).
        if let Some(newest) = out.accepted.iter().map(|s| s.t_ms).max() {
            self.progress.send_modify(|p| p.t_ms = p.t_ms.max(newest));
            let now_data = self.progress.borrow().t_ms;
            if now_data >= self.next_gap_check_ms {
                self.next_gap_check_ms = now_data.saturating_add(GAP_CHECK_MS);
                let twin = &self.twin;
                let last = self.plant.signals.iter().map(|sig| {
                    let newest = twin.signal(&sig.id).and_then(|st| {
                        Some((st.last?.t_ms, st.provenance.as_ref()?.device.as_str()))
                    });
                    (sig.id.as_str(), newest)
                });
                let events = self.detectors.check_gaps(last, now_data, GAP_MS);
                self.record_detections(events);
            }
        }
        self.publish_snapshot(false);
    }

    /// The multivariate model's turn at `t`, the time every signal has data up to: a row
    /// of the signals' newest values is learnt or scored, once a period.
    /// The active model, then the shadow one on the same values.
    fn tick_multivariate(&mut self, t: i64) {
        self.tick_active_model(t);
        self.tick_shadow(t);
    }

    fn tick_active_model(&mut self, t: i64) {
        use detect::live::Output;
        let Some(live) = self.multivariate.as_mut() else {
            return;
        };
        let twin = &self.twin;
        let out = live.tick(t, |c| {
            twin.signal(c)
                .and_then(|st| st.last)
                .map(|p| (p.t_ms, p.value))
        });
        match out {
            Output::Fitted => {
                let Some(model) = live.model() else {
                    return;
                };
                let sha = model_sha256(model);
                tracing::info!(sha256 = %sha, rows = model.trained_rows, "multivariate model fitted; watching");
                let entry = json!({
                    "sha256": sha,
                    "rows": model.trained_rows,
                    "columns": model.columns,
                    "constant_columns": model.constant_columns,
                    "components": model.eigenvalues.len(),
                    "threshold": model.threshold,
                });
                self.multivariate_sha256 = Some(sha);
                self.audit(vec![Entry::new(t, "multivariate_model_fitted", entry)]);
            }
            Output::FitFailed(why) => {
                tracing::warn!(%why, "multivariate model not fitted; nothing is watched by it");
                self.audit(vec![Entry::new(
                    t,
                    "multivariate_model_failed",
                    json!({ "why": why }),
                )]);
            }
            Output::Scored {
                score,
                class,
                contributors,
            } => {
                let threshold = live.threshold().unwrap_or(1.0);
                self.multivariate_flag = Some(score.flag);
                let sha12 = self
                    .multivariate_sha256
                    .as_deref()
                    .and_then(|s| s.get(..12))
                    .unwrap_or("?");
                let model = match &self.multivariate_ref {
                    Some(r) => format!("model {} {} ({sha12})", r.name, r.version),
                    None => format!("learnt model {sha12}"),
                };
                let below = self.input_trust().below;
                let trusted = contributors.iter().all(|c| !below.contains_key(c));
                let devices = contributors
                    .iter()
                    .filter_map(|c| {
                        self.twin
                            .signal(c)
                            .and_then(|st| st.provenance.as_ref())
                            .map(|p| p.device.clone())
                    })
                    .collect();
                let events = self.detectors.observe_multivariate(
                    t,
                    &score,
                    threshold,
                    class,
                    &model,
                    contributors,
                    devices,
                    trusted,
                );
                self.record_detections(events);
            }
            Output::Nothing | Output::Learnt { .. } => {}
        }
    }

    /// The pump's remaining life at `t`, once per cycle of data; the start of a warning is
    /// audited with the estimate and the model that made it.
    fn tick_pump_health(&mut self, t: i64) {
        let mut entries = Vec::new();
        let mut active_cycle = None;
        if let Some(ph) = self.pump_health.as_mut() {
            let before = ph.last().map(|e| e.t_ms);
            if let Some(e) = ph.tick(t, &self.twin) {
                tracing::warn!(
                    rul_h = e.rul_h,
                    p = e.failure_probability,
                    "pump failure warning"
                );
                entries.push(Entry::new(
                    t,
                    "failure_warning",
                    json!({ "asset": "pump", "estimate": e, "model_sha256": ph.sha256 }),
                ));
            }
            active_cycle = ph
                .last()
                .filter(|e| Some(e.t_ms) != before)
                .map(|e| (e.clone(), ph.warning()));
        }
        if let Some(shadow) = self.pump_shadow.as_mut() {
            let before = shadow.health.last().map(|e| e.t_ms);
            if let Some(e) = shadow.health.tick(t, &self.twin) {
                // Recorded under the shadow's digest; nothing acts on it.
                entries.push(Entry::new(
                    t,
                    "shadow_failure_warning",
                    json!({
                        "asset": "pump",
                        "model": shadow.model.name,
                        "version": shadow.model.version,
                        "digest": shadow.model.digest,
                        "estimate": e,
                        "active_warning": active_cycle.as_ref().map(|(_, w)| *w),
                    }),
                ));
            }
            if let (Some(s), Some((a, active_warning))) = (
                shadow.health.last().filter(|e| Some(e.t_ms) != before),
                &active_cycle,
            ) {
                shadow.cycles_compared += 1;
                shadow.abs_difference_h += (s.rul_h - a.rul_h).abs();
                shadow.agreed_warning += u64::from(shadow.health.warning() == *active_warning);
            }
        }
        self.audit(entries);
    }

    fn record_detections(&mut self, events: Vec<Event>) {
        let entries: Vec<Entry> = events
            .iter()
            .map(|e| match e {
                Event::Raised(d) => {
                    *self
                        .detections_by_kind
                        .entry(d.kind.as_str().to_string())
                        .or_default() += 1;
                    self.guard
                        .note_alarm(d.raised_ms, d.kind == detect::DetectionKind::Physics);
                    if self.episodes.len() >= EPISODES_KEPT {
                        self.episodes.pop_front();
                    }
                    self.episodes.push_back(EpisodeSummary {
                        id: d.id,
                        kind: d.kind.as_str(),
                        raised_ms: d.raised_ms,
                        cleared_ms: None,
                        first_class: d.class.as_str(),
                        class: d.class.as_str(),
                        signals: d.evidence.signals.iter().take(3).cloned().collect(),
                    });
                    Entry::new(d.raised_ms, "detection_raised", json!(d))
                }
                Event::Cleared { id, t_ms } => {
                    if let Some(e) = self.episodes.iter_mut().rev().find(|e| e.id == *id) {
                        e.cleared_ms = Some(*t_ms);
                    }
                    Entry::new(*t_ms, "detection_cleared", json!({ "id": id }))
                }
                Event::Reclassified {
                    id,
                    t_ms,
                    class,
                    was,
                } => {
                    if let Some(e) = self.episodes.iter_mut().rev().find(|e| e.id == *id) {
                        e.class = class.as_str();
                    }
                    Entry::new(
                        *t_ms,
                        "detection_reclassified",
                        json!({ "id": id, "class": class, "was": was }),
                    )
                }
            })
            .collect();
        self.audit(entries);
        self.record_breaker_events();
    }

    /// Breaker trips and resets go to the audit log.
    fn record_breaker_events(&mut self) {
        let now = self.clock.now_ms();
        let entries: Vec<Entry> = self
            .guard
            .take_breaker_events()
            .into_iter()
            .map(|what| {
                tracing::warn!(%what, "breakers");
                Entry::new(now, "breakers", json!({ "what": what }))
            })
            .collect();
        self.audit(entries);
    }

    /// Every ten minutes of data, the energy meter and the good-bottle counter as they
    /// read (for the page's comparison with a fixed-setpoint run of the same plant).
    fn tick_kpis(&mut self, t: i64) {
        const PERIOD_MS: i64 = 10 * 60 * 1000;
        /// Thirty days of ten-minute points.
        const KEEP: usize = 30 * 144;
        let due = *self.next_kpi_ms.get_or_insert(t);
        if t < due {
            return;
        }
        self.next_kpi_ms = Some(due + ((t - due) / PERIOD_MS + 1) * PERIOD_MS);
        let (Some(kwh), Some(good)) = (
            self.twin.value("energy.total"),
            self.twin.value("filler.good_bottles"),
        ) else {
            return;
        };
        self.kpi_series.push_back([t as f64, kwh, good]);
        while self.kpi_series.len() > KEEP {
            self.kpi_series.pop_front();
        }
    }

    fn run_agents(&mut self, now: i64) {
        if !self.agents_enabled {
            return;
        }
        let margin = 5 * 60 * 1000;
        let mut proposals = Vec::new();
        let active: Vec<Detection> = self.detectors.active().cloned().collect();
        let refs: Vec<&Detection> = active.iter().collect();
        for agent in [
            &mut self.maintenance as &mut dyn Agent,
            &mut self.optimiser as &mut dyn Agent,
        ] {
            let id = agent.identity();
            if id.needs_token(now, margin) {
                match self
                    .guard
                    .agents()
                    .issue_token(&id.name, random_token(), now)
                {
                    Ok(t) => id.set_token(t),
                    Err(e) => tracing::warn!(agent = %id.name, error = %e, "no token issued"),
                }
            }
            proposals.extend(agent.observe(&self.twin, &refs, now));
        }
        if let Some(leak) = &self.token_leak
            && let Some(t) = self.optimiser.identity().token_value()
        {
            *crate::gateway::lock(leak) = Some(t.to_string());
        }
        for sp in proposals {
            self.submit(&sp, now);
        }
    }

    /// The detections active now.
    fn active(&self) -> Vec<Detection> {
        self.detectors.active().cloned().collect()
    }

    /// Runs a person's request on the guard with the process as it is now (what the
    /// policy deciding their review sees).
    fn review<R>(&mut self, f: impl FnOnce(&mut Guard, &guard::Situation<'_>) -> R) -> R {
        let (trust, active) = (self.input_trust(), self.active());
        let refs: Vec<&Detection> = active.iter().collect();
        let situation = guard::Situation {
            trust: &trust,
            active: &refs,
        };
        f(&mut self.guard, &situation)
    }

    /// Puts a signed proposal through the guard and carries out the decision.
    fn submit(&mut self, sp: &SignedProposal, now: i64) -> DecisionRecord {
        let active = self.active();
        let refs: Vec<&Detection> = active.iter().collect();
        let trust = self.input_trust();
        let (id, decision, rec) = self.guard.decide(sp, &refs, &trust, now);
        let proposal: Value = serde_json::from_str(&sp.body).unwrap_or(Value::Null);
        self.audit(decision_entries(now, id, &proposal, &rec));
        self.remember(
            json!({ "proposal_id": id, "t_ms": now, "proposal": proposal, "decision": rec }),
        );
        if let Decision::Execute(approved) = decision {
            self.execute(approved, now);
        }
        self.record_breaker_events();
        rec
    }

    /// Signals whose current values may be shown but may not drive actuation: values that
    /// arrived without a verified seal, and values a physics relation contradicts.
    fn input_trust(&self) -> guard::InputTrust {
        let suspect = self.detectors.suspect_signals();
        let mut below = std::collections::HashMap::new();
        let mut values = std::collections::HashMap::new();
        for (id, st) in self.twin.signals() {
            if let Some(p) = &st.last {
                values.insert(id.clone(), p.value);
            }
            match &st.provenance {
                Some(p) if p.trust < self.min_trust => {
                    let how = match (p.trust, p.signed) {
                        (ingest::Trust::Channel, _) => format!(
                            "over an authenticated {} channel but without a device signature",
                            p.transport
                        ),
                        (_, true) => "with an unverified seal".to_string(),
                        (_, false) if p.transport.starts_with("opcua") => {
                            "over OPC UA without security".to_string()
                        }
                        (_, false) => "unsigned".to_string(),
                    };
                    below.insert(id.clone(), format!("arrived {how} from {}", p.device));
                }
                None => {
                    below.insert(id.clone(), "no value yet".to_string());
                }
                _ => {}
            }
            if suspect.contains(id.as_str()) {
                below.insert(id.clone(), "contradicted by the twin's physics".to_string());
            }
        }
        guard::InputTrust { below, values }
    }

    /// Sends an approved command, after its decision is on record. Fails safe: while the
    /// audit log is unavailable nothing executes but a stop to the safe state.
    fn execute(&mut self, approved: guard::Approved, now: i64) -> Value {
        // A stop only drives the line to its safe state: it goes out even unrecorded.
        let stop = approved.command().command == PlantCommand::StopLine;
        if let Some(why) = self.failure().filter(|_| !stop) {
            let msg = format!("not executed: {why}");
            tracing::error!("{msg}");
            return json!({ "executed": false, "error": msg });
        }
        if let PlantCommand::SetSetpoint { setpoint, value } = &approved.command().command {
            self.optimiser.set_known_setpoint(setpoint, *value);
        }
        let maintenance = approved.command().command == PlantCommand::Maintenance;
        let command = approved.command().command.clone();
        match self.sink.send(approved, now) {
            Ok(sent) => {
                // The twin's control loops settle from here.
                self.twin.note_command(&command, now);
                if maintenance {
                    // A new bearing: its life starts again, for the shadow too.
                    if let Some(ph) = self.pump_health.as_mut() {
                        ph.reset();
                    }
                    if let Some(s) = self.pump_shadow.as_mut() {
                        s.health.reset();
                    }
                }
                self.progress.send_modify(|p| p.commands_sent += 1);
                let v = json!(sent);
                self.audit(vec![Entry::new(now, "actuation", v.clone())]);
                self.commands.push_back(v.clone());
                while self.commands.len() > 50 {
                    self.commands.pop_front();
                }
                json!({ "executed": true, "sent": v })
            }
            Err(e) => {
                self.audit(vec![Entry::new(
                    now,
                    "actuation_failed",
                    json!({ "error": e.to_string() }),
                )]);
                json!({ "executed": false, "error": e.to_string() })
            }
        }
    }

    fn remember(&mut self, v: Value) {
        self.recent.push_back(Arc::new(v));
        while self.recent.len() > 50 {
            self.recent.pop_front();
        }
    }

    pub fn handle_op(&mut self, op: Op) {
        let now = self.clock.now_ms();
        let agent_request = matches!(op, Op::AgentProposal { .. } | Op::AgentToken { .. });
        let sent_before = self.progress.borrow().commands_sent;
        let (reply, answer) = match op {
            Op::Approve { id, by, reply } => {
                let who = human(&by);
                let r = self
                    .review(|g, now_is| g.approve(id, &who, now_is, now))
                    .map(|d| self.after_human(d, id, &who.name, "approved", now));
                let r = self.refused(r, &who, "approve", now);
                (reply, r)
            }
            Op::Reject { id, by, reply } => {
                let who = human(&by);
                let r = self
                    .review(|g, now_is| g.reject(id, &who, now_is))
                    .map(|d| self.after_human(d, id, &who.name, "rejected", now));
                let r = self.refused(r, &who, "reject", now);
                (reply, r)
            }
            Op::Stop { by, reply } => {
                let approved = self.guard.human_stop(&by.name, now);
                self.audit(vec![Entry::new(
                    now,
                    "stop_button",
                    json!({ "by": by.name }),
                )]);
                let r = self.execute(approved, now);
                (reply, Ok(r))
            }
            Op::Start { by, reply } => {
                let who = human(&by);
                let r = match self.review(|g, now_is| g.human_start(&who, now_is)) {
                    Ok(approved) => {
                        self.audit(vec![Entry::new(now, "restart", json!({ "by": who.name }))]);
                        Ok(self.execute(approved, now))
                    }
                    Err(why) => Err(why),
                };
                let r = self.refused(r, &who, "resume", now);
                (reply, r)
            }
            Op::AgentProposal { body, reply } => {
                let r = match serde_json::from_value::<SignedProposal>(body) {
                    Ok(sp) => Ok(json!(self.submit(&sp, now))),
                    Err(e) => Err(format!("not a signed proposal: {e}")),
                };
                (reply, r)
            }
            Op::ResetBreakers { by, reply } => {
                let who = human(&by);
                let r = self
                    .review(|g, now_is| g.reset_breakers(&who, now_is, now))
                    .map(|m| json!({ "reset": m }));
                self.record_breaker_events();
                let r = self.refused(r, &who, "reset_breakers", now);
                (reply, r)
            }
            Op::AgentToken { body, reply } => {
                let r = match serde_json::from_value::<guard::TokenRequest>(body) {
                    Ok(req) => self.issue_agent_token(&req, now),
                    Err(e) => Err(format!("not a token request: {e}")),
                };
                (reply, r)
            }
        };
        // An agent's request that sent nothing to the plant changed only the decisions.
        // Published before the answer goes out: whoever is answered then reads the state
        // their request made.
        if agent_request && self.progress.borrow().commands_sent == sent_before {
            self.publish_decisions();
        } else {
            self.publish_snapshot(true);
        }
        let _ = reply.send(answer);
    }

    /// Publishes what an agent's request that executed nothing changes (proposals, the
    /// report, the audit head), keeping the rest of the last snapshot: the plant's state
    /// and its history are the expensive part, and such a request does not change them.
    fn publish_decisions(&mut self) {
        let proposals = self.proposals();
        let report = self.report();
        let audit_head = self.audit_head();
        let now_ms = self.clock.now_ms();
        let failure = self.failure();
        if let Ok(mut s) = self.snapshot.write() {
            s.proposals = proposals;
            s.report = report;
            s.audit_head = audit_head;
            s.now_ms = now_ms;
            s.failure = failure;
        }
    }

    fn proposals(&self) -> api::Proposals {
        api::Proposals {
            pending: json!(self.guard.pending().collect::<Vec<_>>()),
            recent: self.recent.iter().cloned().collect(),
        }
    }

    /// Why nothing but a stop executes, while something the guard relies on is
    /// unavailable: the audit log, or the policy.
    fn failure(&self) -> Option<String> {
        self.audit_failure
            .clone()
            .or_else(|| self.audit.unavailable())
            .map(|why| format!("the audit log is unavailable, so nothing executes: {why}"))
            .or_else(|| {
                self.policy_failure
                    .as_ref()
                    .map(|why| format!("no policy is in force, so nothing executes: {why}"))
            })
    }

    /// A token for an external agent that proved its key; audited either way (never the
    /// token itself).
    fn issue_agent_token(&mut self, req: &guard::TokenRequest, now: i64) -> Result<Value, String> {
        match self
            .guard
            .agents()
            .issue_for_request(req, random_token(), now)
        {
            Ok(t) => {
                self.audit(vec![Entry::new(
                    now,
                    "agent_token_issued",
                    json!({ "agent": t.agent, "expires_ms": t.expires_ms, "scope": t.scope }),
                )]);
                Ok(json!({
                    "agent": t.agent,
                    "token": t.value,
                    "expires_ms": t.expires_ms,
                    "scope": t.scope,
                    "now_ms": now,
                }))
            }
            Err(e) => {
                tracing::warn!(agent = %req.agent, error = %e, "agent token refused");
                self.audit(vec![Entry::new(
                    now,
                    "agent_token_refused",
                    json!({ "agent": req.agent, "reason": e.to_string() }),
                )]);
                Err(e.to_string())
            }
        }
    }

    /// Re-reads the external agents' registry when its file changed (a revocation takes
    /// effect within a second of `twinguard agent revoke`).
    fn reload_agents(&mut self) {
        let Some(path) = self.agents_file.clone() else {
            return;
        };
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified == self.agents_modified {
            return;
        }
        self.agents_modified = modified;
        let dir = match crate::datadir::DataDir::open(path.parent().unwrap_or(&path)) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the data directory for the agent registry");
                return;
            }
        };
        let entries = match dir.agents() {
            Ok(e) => e,
            Err(e) => {
                // An unreadable registry admits nobody new and keeps revocations.
                tracing::error!(error = %e, "agent registry unreadable: external agents revoked");
                std::collections::BTreeMap::new()
            }
        };
        let now = self.clock.now_ms();
        let changes = crate::agent_registry::apply(self.guard.agents(), &entries, &self.plant);
        if !changes.is_empty() {
            self.audit(vec![Entry::new(
                now,
                "agents_changed",
                json!({ "changes": changes }),
            )]);
        }
    }

    /// Re-reads the device registry when its file changed: a key rotated or a device
    /// removed takes effect within a second, for frames whose seals were verified before
    /// too (the verifier verifies them again). A file that cannot be read or does not
    /// validate leaves the registry in force as it was, is read again at the next tick, and
    /// the reason is logged, audited and reported.
    fn reload_devices(&mut self) {
        let Some(path) = self.devices_file.clone() else {
            return;
        };
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified == self.devices_modified && self.devices_failure.is_none() {
            return;
        }
        let now = self.clock.now_ms();
        let loaded = crate::datadir::DataDir::open(path.parent().unwrap_or(&path))
            .and_then(|d| d.registry());
        match loaded {
            Ok(devices) => {
                self.devices_modified = modified;
                self.devices_failure = None;
                let changes = device_changes(&self.verifier.devices(), &devices);
                if changes.is_empty() {
                    return;
                }
                tracing::info!(changes = changes.len(), "device registry reloaded");
                self.verifier.set_devices(devices);
                self.audit(vec![Entry::new(
                    now,
                    "devices_changed",
                    json!({ "file": path.display().to_string(), "changes": changes }),
                )]);
            }
            Err(e) => {
                let why = format!("{e:#}");
                if self.devices_failure.as_deref() != Some(why.as_str()) {
                    tracing::error!(error = %why, "device registry unreadable: the registry in force stays");
                    self.audit(vec![Entry::new(
                        now,
                        "devices_unreadable",
                        json!({ "file": path.display().to_string(), "error": why }),
                    )]);
                    self.devices_failure = Some(why);
                }
            }
        }
    }

    /// Records a person's refused request (a review the policy does not allow them, a
    /// proposal no longer pending, ...) before the refusal is answered.
    fn refused(
        &mut self,
        r: Result<Value, String>,
        who: &guard::Human,
        action: &str,
        now: i64,
    ) -> Result<Value, String> {
        if let Err(why) = &r {
            self.audit(vec![Entry::new(
                now,
                "human_refused",
                json!({ "by": who.name, "action": action, "why": why }),
            )]);
        }
        r
    }

    /// Re-reads the policy file when it changed; true when the policy in force changed.
    /// A policy that validates is put in force at once (pending approvals are reviewed
    /// under it). A file that cannot be read or does not validate leaves no policy in
    /// force: every proposal and review is denied with the reason, nothing executes but
    /// a stop, and `/healthz` says why, until the file is fixed.
    fn reload_policy(&mut self) -> bool {
        let Some(path) = self.policy_file.clone() else {
            return false;
        };
        let seen = file_seen(&path);
        if seen == self.policy_seen && (seen.is_some() || self.policy_failure.is_some()) {
            return false;
        }
        self.policy_seen = seen;
        let now = self.clock.now_ms();
        let source = path.display().to_string();
        let loaded = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read policy file {source}: {e}"))
            .and_then(|text| {
                let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&text));
                guard::Policy::parse(&text, &source, &self.plant)
                    .map(|p| (p, digest))
                    .map_err(|e| e.to_string())
            });
        match loaded {
            Ok((policy, digest)) => {
                let ids: Vec<&String> = policy.policies().keys().collect();
                tracing::info!(file = %source, policies = ids.len(), "policy reloaded");
                self.audit(vec![Entry::new(
                    now,
                    "policy_loaded",
                    json!({ "file": source, "sha256": digest, "policies": ids }),
                )]);
                self.guard.set_policy(policy);
                self.policy_failure = None;
            }
            Err(why) => {
                tracing::error!(error = %why, "no policy in force: nothing executes");
                self.audit(vec![Entry::new(
                    now,
                    "policy_unavailable",
                    json!({ "file": source, "error": why }),
                )]);
                match guard::Policy::unavailable(&source, &why, &self.plant) {
                    Ok(p) => self.guard.set_policy(p),
                    Err(e) => tracing::error!(error = %e, "cannot build the deny-all policy"),
                }
                self.policy_failure = Some(why);
            }
        }
        true
    }

    fn after_human(&mut self, d: Decision, id: u64, by: &str, verb: &str, now: i64) -> Value {
        let rec = d.record(id, by, None, None);
        self.audit(vec![Entry::new(
            now,
            "approval",
            json!({ "proposal_id": id, "by": by, "verb": verb, "decision": rec }),
        )]);
        self.remember(json!({ "proposal_id": id, "t_ms": now, "human": by, "decision": rec }));
        let executed = match d {
            Decision::Execute(a) => self.execute(a, now),
            _ => Value::Null,
        };
        json!({ "decision": rec, "execution": executed })
    }

    pub fn report(&self) -> Value {
        let c = self.verifier.counters();
        let g = self.guard.stats();
        let head = self.audit.head();
        json!({
            "samples": { "accepted": c.samples_accepted, "rejected": c.samples_rejected, "out_of_order": self.twin.out_of_order() },
            "frames": { "accepted": c.frames_accepted, "rejected": c.frames_rejected },
            "devices": {
                "registered": self.verifier.device_count(),
                "registry_failure": self.devices_failure,
            },
            "sources": self.sources.iter().enumerate().map(|(i, s)| json!({
                "id": s.info.id,
                "protocol": s.info.protocol,
                "security": s.info.security,
                "peer_certificate": s.info.peer_certificate,
                "zone": s.info.zone,
                "events": s.events,
                "sparkplug_rebirths": if i == 0 { self.sparkplug.as_ref().map(|s| s.rebirths) } else { None },
            })).collect::<Vec<_>>(),
            "detections": self.detections_by_kind,
            "episodes": self.episodes,
            "proposals": { "executed": g.executed, "pending": g.pending, "denied": g.denied },
            "actions_executed_by_agent": g.executed_by_agent,
            "line_stops": g.line_stops,
            "breakers": { "advisory": self.guard.advisory(), "trips": self.guard.breaker_trips() },
            "alerts": g.alerts,
            "pump_health": self.pump_health.as_ref().map(|p| p.status()),
            "relations": self.relations_latest.values().map(|r| json!({
                "id": r.relation,
                "t_ms": r.t_ms,
                "residual": r.residual,
                "z": r.z,
                "alarm": r.alarm,
                "estimate": r.estimate,
                "actuator_end_in_h": r.actuator_end_in_h,
                "history": self.relations_history.get(&r.relation),
            })).collect::<Vec<_>>(),
            "pump_shadow": self.pump_shadow.as_ref().map(PumpShadow::status),
            "optimiser": self.optimiser.last.as_ref().map(|l| json!({
                "at_ms": l.at_ms,
                "horizon_s": self.optimiser.horizon_s,
                "candidates": l.candidates,
                "chosen": l.chosen,
                "hold": l.hold,
                "history": self.optimiser.history,
                "kpis": self.optimiser.kpis,
            })),
            "kpi_series": self.kpi_series,
            "baseline_series": self.baseline,
            "multivariate": self.multivariate.as_ref().map(|m| {
                json!({ "status": m.status(), "sha256": self.multivariate_sha256, "model": self.multivariate_ref })
            }),
            "shadow": self.shadow.as_ref().map(|s| json!({
                "model": s.model,
                "status": s.live.status(),
                "rows": s.rows,
                "flagged_rows": s.flagged_rows,
                "episodes": s.episodes,
                "agreement": (s.compared > 0).then(|| s.agreed as f64 / s.compared as f64),
            })),
            "policy": {
                "source": self.guard.policy().source_name(),
                "policies": self.guard.policy().policies().len(),
                "failure": self.policy_failure,
            },
            "commands": self.commands,
            "audit": {
                "records": self.audit.records(),
                "head": head.as_ref().map(|h| h.hash_hex()),
                "head_seq": head.as_ref().map(|h| h.seq),
                "checkpoint": self.audit.latest_checkpoint().map(|c| json!({
                    "size": c.size,
                    "root": c.root_hex(),
                })),
                "failure": self.audit_failure,
                "quarantine_full": self.quarantine_full,
            },
        })
    }

    /// The plant's state for the page, as of `t`, the time every signal has data up to:
    /// each signal's newest value, provenance and a plot of its history.
    fn state_view(&self, t: Option<i64>) -> StateView<'_> {
        let mut by_asset: HashMap<&str, Vec<SignalView<'_>>> = HashMap::new();
        for s in &self.plant.signals {
            let st = self.twin.signal(&s.id);
            by_asset
                .entry(s.asset.as_str())
                .or_default()
                .push(SignalView {
                    id: &s.id,
                    unit: &s.unit,
                    value: st.and_then(|s| s.last).map(|p| p.value),
                    t_ms: st.and_then(|s| s.last).map(|p| p.t_ms),
                    provenance: st.and_then(|s| s.provenance.as_deref()),
                    history: Plot(st.map(|st| &st.history)),
                });
        }
        StateView {
            plant: &self.plant.plant.name,
            t_ms: t,
            time: t.map(format_time),
            line_stopped: self.guard.line_stopped(),
            setpoints: self
                .plant
                .setpoints
                .iter()
                .map(|s| (s.id.as_str(), self.guard.commanded(&s.id)))
                .collect(),
            assets: self
                .plant
                .assets
                .iter()
                .map(|a| AssetView {
                    id: &a.id,
                    name: &a.name,
                    signals: by_asset.remove(a.id.as_str()).unwrap_or_default(),
                })
                .collect(),
        }
    }

    pub fn publish_snapshot(&mut self, force: bool) {
        // Readers see the core at most four times a second, and the periodic snapshots never
        // take more than a tenth of the core's time, however large the plant.
        let interval = SNAPSHOT_INTERVAL.max(self.snapshot_cost * 10);
        if !force && self.last_snapshot.is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        let started = Instant::now();
        self.last_snapshot = Some(started);
        let complete = self.twin.complete_until();
        let document = |what: &str, json: Result<api::Document, serde_json::Error>| {
            json.unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot write the {what} for the page");
                api::Document::default()
            })
        };
        let state = document(
            "plant's state",
            api::Document::of(&self.state_view(complete)),
        );
        let alerts = document(
            "active alarms",
            api::Document::of(&self.detectors.active().collect::<Vec<_>>()),
        );
        let snap = Snapshot {
            state,
            alerts,
            proposals: self.proposals(),
            report: self.report(),
            audit_head: self.audit_head(),
            now_ms: self.clock.now_ms(),
            failure: self.failure(),
        };
        if let Ok(mut s) = self.snapshot.write() {
            *s = snap;
        }
        self.snapshot_cost = started.elapsed();
    }

    /// The log's size and root, and its newest signed checkpoint.
    fn audit_head(&self) -> Value {
        json!(self.audit.head().map(|h| json!({
            "seq": h.seq,
            "hash": h.hash_hex(),
            "checkpoint": self.audit.latest_checkpoint().map(|c| json!({
                "size": c.size,
                "root": c.root_hex(),
                "timestamp_ms": c.timestamp_ms,
            })),
        })))
    }

    pub fn verify_audit(&self) -> Result<audit::Verification, audit::AuditError> {
        self.audit.verify(&self.audit_public)
    }
}

/// What `/api/v1/state` returns, written from the core's own state without copying it.
#[derive(serde::Serialize)]
struct StateView<'a> {
    plant: &'a str,
    t_ms: Option<i64>,
    time: Option<String>,
    line_stopped: bool,
    setpoints: BTreeMap<&'a str, Option<f64>>,
    assets: Vec<AssetView<'a>>,
}

#[derive(serde::Serialize)]
struct AssetView<'a> {
    id: &'a str,
    name: &'a str,
    signals: Vec<SignalView<'a>>,
}

#[derive(serde::Serialize)]
struct SignalView<'a> {
    id: &'a str,
    unit: &'a str,
    value: Option<f64>,
    t_ms: Option<i64>,
    provenance: Option<&'a ingest::Provenance>,
    history: Plot<'a>,
}

/// A signal's history as at most [`PLOT_POINTS`] `[t_ms, value]` pairs, evenly spaced
/// over it.
struct Plot<'a>(Option<&'a VecDeque<twin::Point>>);

impl serde::Serialize for Plot<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let Some(h) = self.0 else {
            return s.serialize_seq(Some(0))?.end();
        };
        let step = h.len().div_ceil(PLOT_POINTS).max(1);
        let mut seq = s.serialize_seq(Some(h.len().div_ceil(step)))?;
        for p in h.iter().step_by(step) {
            seq.serialize_element(&[p.t_ms as f64, p.value])?;
        }
        seq.end()
    }
}

/// `2026-01-01 06:30:00` from milliseconds since the epoch (UTC).
pub fn format_time(ms: i64) -> String {
    audit::format_utc(ms)
}

/// A person as the guard's policy sees them, from how the API authenticated them.
fn human(p: &api::accounts::Person) -> guard::Human {
    guard::Human::new(&p.name, &p.role.held())
}

/// A file's modification time and length, to notice that it changed.
fn file_seen(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// SHA-256 of a multivariate model's JSON, hex: the name every detection of it carries.
fn model_sha256(model: &detect::multivariate::PcaModel) -> String {
    let bytes = serde_json::to_vec(model).unwrap_or_default();
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
}

/// What changed between two device registries, for the audit log: devices added and
/// removed, and devices whose asset or keys changed, with their key ids and validity
/// windows (never key material).
fn device_changes(old: &[&Device], new: &[Device]) -> Vec<Value> {
    let keys = |d: &Device| {
        d.keys
            .iter()
            .map(|k| json!({ "id": k.id, "not_before_ms": k.not_before_ms, "not_after_ms": k.not_after_ms }))
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for d in new {
        match old.iter().find(|o| o.id == d.id) {
            None => out.push(
                json!({ "device": d.id, "change": "added", "asset": d.asset, "keys": keys(d) }),
            ),
            Some(o) if *o != d => out.push(
                json!({ "device": d.id, "change": "changed", "asset": d.asset, "keys": keys(d) }),
            ),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|d| d.id == o.id) {
            out.push(json!({ "device": o.id, "change": "removed" }));
        }
    }
    out
}

/// The audit records of one guard decision: the proposal as the agent sent it, and the
/// decision. Written straight to JSON text: building a `serde_json::Value` of each first
/// was one of the costs of the append a decision waits for.
pub(crate) fn decision_entries<P: serde::Serialize>(
    now: i64,
    id: u64,
    proposal: &P,
    rec: &DecisionRecord,
) -> Vec<Entry> {
    #[derive(serde::Serialize)]
    struct ProposalBody<'a, P> {
        proposal_id: u64,
        proposal: &'a P,
    }
    let body = ProposalBody {
        proposal_id: id,
        proposal,
    };
    vec![
        Entry::of(now, "proposal", &body).unwrap_or_else(|e| {
            Entry::new(
                now,
                "proposal",
                json!({ "proposal_id": id, "error": e.to_string() }),
            )
        }),
        Entry::of(now, "decision", rec).unwrap_or_else(|e| {
            Entry::new(
                now,
                "decision",
                json!({ "proposal_id": id, "error": e.to_string() }),
            )
        }),
    ]
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]
mod tests {
    use super::*;

    fn device(id: &str, keys: &[(&str, u8, Option<i64>)]) -> Device {
        Device {
            id: id.into(),
            asset: "tank".into(),
            keys: keys
                .iter()
                .map(|&(kid, seed, not_after_ms)| ingest::DeviceKey {
                    id: kid.into(),
                    material: ingest::KeyMaterial::HmacSha256(vec![seed; 32]),
                    not_before_ms: None,
                    not_after_ms,
                })
                .collect(),
        }
    }

    /// Added, changed (a window, or the secret behind the same key id) and removed devices
    /// are named; unchanged ones are not; no key material is written.
    #[test]
    fn device_changes_name_what_changed_and_never_the_keys() {
        let a = device("gw-a", &[("a#1", 1, None)]);
        let b = device("gw-b", &[("b#1", 2, None)]);
        let c = device("gw-c", &[("c#1", 3, None)]);
        let old = [&a, &b, &c];
        let new = vec![
            a.clone(),
            device("gw-b", &[("b#1", 2, Some(5)), ("b#2", 4, None)]),
            device("gw-d", &[("d#1", 5, None)]),
        ];
        let changes = device_changes(&old, &new);
        let text = serde_json::to_string(&changes).unwrap();
        assert_eq!(changes.len(), 3, "{text}");
        assert_eq!(changes[0]["device"], "gw-b");
        assert_eq!(changes[0]["change"], "changed");
        assert_eq!(changes[0]["keys"][0]["not_after_ms"], 5);
        assert_eq!(changes[1]["device"], "gw-d");
        assert_eq!(changes[1]["change"], "added");
        assert_eq!(changes[2]["device"], "gw-c");
        assert_eq!(changes[2]["change"], "removed");
        // The same key id with another secret is a change too.
        let swapped = vec![device("gw-a", &[("a#1", 9, None)]), b.clone(), c.clone()];
        let changes = device_changes(&old, &swapped);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0]["device"], "gw-a");
        assert!(!text.contains("0202") && !text.contains("[2,2"), "{text}");
        assert!(device_changes(&old, &[a.clone(), b.clone(), c.clone()]).is_empty());
    }
}
