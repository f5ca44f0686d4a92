//! The plant side of the demo: the reference simulator behind its edge gateway.
//!
//! The gateway signs each asset's samples with that asset's device key and publishes them
//! in batches to the asset's telemetry topic. It accepts commands only in envelopes signed
//! by twinguard's actuation key, fresh and never repeated; anything else is refused and
//! counted. It runs in lockstep with twinguard's pipeline (never more than `lead_ms` of
//! simulated time ahead of what twinguard has processed) so that simulated time can run
//! much faster than real time without the freshness checks losing meaning.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ed25519_dalek::{SigningKey, VerifyingKey};
use frames::{CommandBody, Envelope, Kind, Seal, TelemetryBody, WireSample};
use ingest::mqtt::BrokerEndpoint;
use plant_model::Plant;
use plant_sim::{Fault, Sim, Truth};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde::Serialize;
use tokio::sync::watch;

/// How far twinguard has got, for the demo's lockstep: the newest time it has fully
/// processed and the number of commands it has sent to the plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub t_ms: i64,
    pub commands_sent: u64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            t_ms: i64::MIN,
            commands_sent: 0,
        }
    }
}

/// The simulated world's clock, shared by the plant and twinguard in the demo.
#[derive(Clone, Default)]
pub struct SimClock(Arc<AtomicI64>);

impl SimClock {
    pub fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    pub(crate) fn set(&self, t: i64) {
        self.0.store(t, Ordering::SeqCst);
    }
}

/// A compromised gateway that adds a slow ramp to the tank level it reports, after signing
/// keys and all: validly signed, false data.
#[derive(Debug, Clone, Copy)]
pub struct LevelRamp {
    pub start_s: u64,
    pub metres_per_hour: f64,
}

/// A link that holds an asset's frames back: frames produced in `[start_s, start_s +
/// duration_s)` are published `delay_s` late (an attacker delaying traffic, or a congested
/// uplink).
#[derive(Debug, Clone)]
pub struct Delay {
    pub asset: String,
    pub start_s: u64,
    pub duration_s: u64,
    pub delay_s: u64,
}

pub struct GatewayConfig {
    pub plant: Arc<Plant>,
    pub seed: u64,
    pub start_ms: i64,
    pub hours: f64,
    /// Simulated seconds per wall second; 0 runs as fast as the pipeline allows.
    pub speed: f64,
    /// Ticks (seconds) per frame.
    pub batch: u32,
    pub lead_ms: i64,
    pub faults: Vec<Fault>,
    pub conditions: plant_sim::Conditions,
    pub level_ramp: Option<LevelRamp>,
    pub delay: Option<Delay>,
    /// Devices that publish unsigned frames (legacy devices without keys).
    pub unsigned_devices: Vec<String>,
    /// How the devices encode their frames' bodies.
    pub body: frames::BodyEncoding,
    /// Publish Sparkplug B (this group) instead of signed frames: one edge node per
    /// device, one Sparkplug device per asset, metrics named like the signals.
    pub sparkplug: Option<String>,
    /// The broker, for the MQTT plant (None when the plant is served over OPC UA).
    pub endpoint: Option<BrokerEndpoint>,
    pub device_keys: HashMap<String, SigningKey>,
    /// Where the devices' key files are (`DEVICE.key`): re-read when they change, as a
    /// provisioning tool would hand a device its new key after `twinguard device rotate`.
    pub key_dir: Option<std::path::PathBuf>,
    pub actuation_key: VerifyingKey,
}

/// How old a changed key file must be before the edge takes it up.
const KEY_SETTLE: Duration = Duration::from_secs(2);

/// The devices' signing keys, re-read from their files when these change.
struct EdgeKeys {
    keys: HashMap<String, SigningKey>,
    dir: Option<std::path::PathBuf>,
    seen: HashMap<String, Option<std::time::SystemTime>>,
    checked: Instant,
}

impl EdgeKeys {
    fn new(keys: HashMap<String, SigningKey>, dir: Option<std::path::PathBuf>) -> EdgeKeys {
        let mut k = EdgeKeys {
            keys,
            dir,
            seen: HashMap::new(),
            checked: Instant::now(),
        };
        let devices: Vec<String> = k.keys.keys().cloned().collect();
        for d in devices {
            let m = k.modified(&d);
            k.seen.insert(d, m);
        }
        k
    }

    fn modified(&self, device: &str) -> Option<std::time::SystemTime> {
        let path = self.dir.as_ref()?.join(format!("{device}.key"));
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }

    /// Once a second (wall clock): takes up the key files that changed, once they are
    /// [`KEY_SETTLE`] old (by then a running twinguard has re-read its registry, which
    /// `device rotate` writes first). A file that is missing or unreadable (mid-rotation)
    /// keeps the key in use and is read again later.
    fn refresh(&mut self) {
        if self.checked.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.checked = Instant::now();
        let Some(dir) = self.dir.clone() else {
            return;
        };
        let devices: Vec<String> = self.keys.keys().cloned().collect();
        for d in devices {
            let m = self.modified(&d);
            if self.seen.get(&d) == Some(&m)
                || m.is_none_or(|t| t.elapsed().unwrap_or_default() < KEY_SETTLE)
            {
                continue;
            }
            if let Ok(key) = frames::keys::load(&dir.join(format!("{d}.key"))) {
                tracing::info!(device = %d, "edge device takes up its new key");
                self.keys.insert(d.clone(), key);
                self.seen.insert(d, m);
            }
        }
    }

    fn get(&self, device: &str) -> Option<&SigningKey> {
        self.keys.get(device)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PlantStats {
    pub frames_published: u64,
    /// Sparkplug B births published (at start and on rebirth requests).
    pub sparkplug_births: u64,
    /// Frames held back by a `Delay`.
    pub frames_delayed: u64,
    pub commands_applied: u64,
    pub commands_refused: HashMap<String, u64>,
    pub truth: Option<TruthReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TruthReport {
    pub bearing_wear: f64,
    pub pump_failures: u32,
    pub line_stopped: bool,
    pub in_maintenance: bool,
    pub good_bottles: f64,
    pub energy_kwh: f64,
    pub energy_per_good_bottle_wh: Option<f64>,
    /// Rejected share of the filled bottles, %.
    pub reject_pct: Option<f64>,
    /// Seconds outside the quality limits (under-pasteurised, or rejects above 5 %).
    pub quality_violation_s: u64,
}

impl From<Truth> for TruthReport {
    fn from(t: Truth) -> Self {
        TruthReport {
            bearing_wear: t.bearing_wear,
            pump_failures: t.failures,
            line_stopped: t.line_stopped,
            in_maintenance: t.in_maintenance,
            good_bottles: t.good_bottles.floor(),
            energy_kwh: t.energy_kwh,
            energy_per_good_bottle_wh: (t.good_bottles > 0.0)
                .then(|| t.energy_kwh * 1000.0 / t.good_bottles),
            reject_pct: (t.filled_bottles > 0.0)
                .then(|| 100.0 * (1.0 - t.good_bottles / t.filled_bottles)),
            quality_violation_s: t.quality_violation_s,
        }
    }
}

/// Checks command envelopes on the plant side.
pub struct CommandCheck {
    key: VerifyingKey,
    last_seq: u64,
    max_age_ms: i64,
}

impl CommandCheck {
    pub fn new(key: VerifyingKey) -> CommandCheck {
        CommandCheck {
            key,
            last_seq: 0,
            max_age_ms: 60_000,
        }
    }

    /// The command, or the reason it is refused.
    pub fn check(
        &mut self,
        topic: &str,
        bytes: &[u8],
        now_ms: i64,
    ) -> Result<CommandBody, &'static str> {
        let env = Envelope::decode(bytes).map_err(|_| "malformed")?;
        if env.kind != Kind::Command {
            return Err("malformed");
        }
        if env.signer != actuate::SIGNER {
            return Err("unknown_signer");
        }
        env.verify(topic, &self.key).map_err(|e| match e {
            frames::FrameError::Unsigned => "unsigned",
            _ => "bad_signature",
        })?;
        let body = CommandBody::parse(env.body).map_err(|_| "malformed")?;
        if body.seq <= self.last_seq {
            return Err("replay");
        }
        if (now_ms - body.ts_ms).abs() > self.max_age_ms {
            return Err("stale");
        }
        self.last_seq = body.seq;
        Ok(body)
    }
}

/// Runs the plant for the configured hours. `progress` is the newest time twinguard has
/// fully processed.
pub async fn run(
    cfg: GatewayConfig,
    clock: SimClock,
    mut progress: watch::Receiver<Progress>,
    stats: Arc<Mutex<PlantStats>>,
) -> Result<()> {
    let plant = cfg.plant.clone();
    let mut sim = start_sim(&cfg, &clock)?;
    let endpoint = cfg
        .endpoint
        .as_ref()
        .context("the MQTT plant needs a broker endpoint")?;
    let (client, mut eventloop) = AsyncClient::new(endpoint.options("edge-gateway"), 512);
    client
        .subscribe(
            format!("twinguard/{}/+/cmd", plant.plant.id),
            QoS::AtLeastOnce,
        )
        .await
        .context("cannot subscribe to command topics")?;
    if let Some(group) = &cfg.sparkplug {
        client
            .subscribe(format!("spBv1.0/{group}/NCMD/+"), QoS::AtLeastOnce)
            .await
            .context("cannot subscribe to Sparkplug node commands")?;
    }
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if cmd_tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "edge gateway connection error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });

    // Device, topic and signal indices per asset.
    struct Out {
        asset: String,
        device: String,
        topic: String,
        signals: Vec<(usize, String, String)>,
        seq: u64,
    }
    let mut outs: Vec<Out> = plant
        .assets
        .iter()
        .map(|a| Out {
            asset: a.id.clone(),
            device: a.device.clone(),
            topic: plant.telemetry_topic(&a.id),
            signals: plant
                .signals
                .iter()
                .enumerate()
                .filter(|(_, s)| s.asset == a.id)
                .map(|(i, s)| (i, s.id.clone(), s.unit.clone()))
                .collect(),
            seq: 0,
        })
        .collect();
    let level_idx = sim.signal_index("tank.level");
    let mut check = CommandCheck::new(cfg.actuation_key);
    let total_s = (cfg.hours * 3600.0).round() as u64;
    let started = Instant::now();
    let mut t_s = 0u64;
    let mut received = 0u64;
    let mut held: std::collections::VecDeque<(u64, String, Vec<u8>)> =
        std::collections::VecDeque::new();
    // Sparkplug B edge nodes, born before their first data and again on request.
    let mut edges: Vec<sparkplug::EdgeNode> = match &cfg.sparkplug {
        Some(group) => outs
            .iter()
            .map(|o| sparkplug::EdgeNode::new(group, &o.device))
            .collect(),
        None => Vec::new(),
    };
    let mut unborn: Vec<bool> = vec![true; edges.len()];
    let mut keys = EdgeKeys::new(cfg.device_keys.clone(), cfg.key_dir.clone());
    while t_s < total_s {
        keys.refresh();
        // Every command twinguard has sent so far is applied before the plant moves on,
        // as it would be within a second in real time.
        let sent = progress.borrow().commands_sent;
        while received < sent {
            match tokio::time::timeout(Duration::from_secs(10), cmd_rx.recv()).await {
                Ok(Some((topic, bytes))) if topic.starts_with("spBv1.0/") => {
                    rebirth_requested(&edges, &mut unborn, &topic, &bytes, &stats);
                }
                Ok(Some((topic, bytes))) => {
                    received += 1;
                    apply_command(&mut sim, &mut check, &topic, &bytes, &stats);
                }
                _ => anyhow::bail!(
                    "{} of {sent} commands sent by twinguard did not reach the plant within 10 s",
                    sent - received
                ),
            }
        }
        while let Ok((topic, bytes)) = cmd_rx.try_recv() {
            if topic.starts_with("spBv1.0/") {
                rebirth_requested(&edges, &mut unborn, &topic, &bytes, &stats);
                continue;
            }
            received += 1;
            apply_command(&mut sim, &mut check, &topic, &bytes, &stats);
        }
        // Births (all metrics declared, values to follow) for nodes not yet born or asked
        // to rebirth.
        for ((edge, o), unborn) in edges.iter_mut().zip(&outs).zip(unborn.iter_mut()) {
            if !*unborn {
                continue;
            }
            *unborn = false;
            let metrics: Vec<(String, Option<f64>)> = o
                .signals
                .iter()
                .map(|(_, id, _)| (id.clone(), None))
                .collect();
            for (topic, bytes) in edge.births(sim.now_ms() as u64, &[(o.asset.clone(), metrics)]) {
                client
                    .publish(topic, QoS::AtLeastOnce, false, bytes)
                    .await
                    .context("cannot publish a Sparkplug birth")?;
            }
            lock(&stats).sparkplug_births += 1;
        }
        let n = u64::from(cfg.batch).min(total_s - t_s);
        let mut samples: Vec<Vec<WireSample>> = vec![Vec::new(); outs.len()];
        for _ in 0..n {
            let mut tick = sim.step();
            t_s += 1;
            if let (Some(r), Some(i)) = (cfg.level_ramp, level_idx)
                && t_s > r.start_s
                && let Some(v) = tick.values.get_mut(i)
            {
                *v += r.metres_per_hour * (t_s - r.start_s) as f64 / 3600.0;
            }
            for (o, buf) in outs.iter().zip(samples.iter_mut()) {
                for (i, id, unit) in &o.signals {
                    if let Some(v) = tick.values.get(*i) {
                        buf.push(WireSample {
                            signal: id.clone(),
                            t_ms: tick.t_ms,
                            value: *v,
                            unit: unit.clone(),
                        });
                    }
                }
            }
        }
        let now = sim.now_ms();
        clock.set(now);
        for (i, (o, buf)) in outs.iter_mut().zip(samples).enumerate() {
            o.seq += 1;
            let sparkplug_frame = edges.get_mut(i).and_then(|edge| {
                let samples: Vec<(String, u64, f64)> = buf
                    .iter()
                    .map(|s| (s.signal.clone(), s.t_ms as u64, s.value))
                    .collect();
                edge.data(&o.asset, &samples)
            });
            let (topic, bytes) = match sparkplug_frame {
                Some(f) => f,
                None => {
                    let body = TelemetryBody {
                        seq: o.seq,
                        ts_ms: now,
                        samples: buf,
                    };
                    let key = keys
                        .get(&o.device)
                        .with_context(|| format!("no key for device {}", o.device))?;
                    let seal = if cfg.unsigned_devices.contains(&o.device) {
                        Seal::None
                    } else {
                        Seal::Ed25519(key)
                    };
                    (
                        o.topic.clone(),
                        frames::encode_telemetry(&o.topic, &o.device, &body, cfg.body, seal)?,
                    )
                }
            };
            if let Some(d) = cfg.delay.as_ref().filter(|d| {
                d.asset == o.asset && t_s >= d.start_s && t_s < d.start_s + d.duration_s
            }) {
                held.push_back((t_s + d.delay_s, topic, bytes));
                lock(&stats).frames_delayed += 1;
                continue;
            }
            client
                .publish(topic, QoS::AtLeastOnce, false, bytes)
                .await
                .context("cannot publish telemetry")?;
        }
        while held.front().is_some_and(|(due, _, _)| *due <= t_s) {
            if let Some((_, topic, bytes)) = held.pop_front() {
                client
                    .publish(topic, QoS::AtLeastOnce, false, bytes)
                    .await
                    .context("cannot publish delayed telemetry")?;
            }
        }
        lock(&stats).frames_published += outs.len() as u64;
        keep_step(&mut progress, &cfg, now, t_s, started).await?;
    }
    finish(&mut progress, &sim, &stats).await;
    let _ = client.disconnect().await;
    Ok(())
}

/// The simulated plant with its faults, and the shared clock set to its start.
fn start_sim(cfg: &GatewayConfig, clock: &SimClock) -> Result<Sim> {
    let mut sim = Sim::with_conditions(&cfg.plant, cfg.seed, cfg.start_ms, cfg.conditions.clone())
        .context("cannot build the reference plant")?;
    for f in &cfg.faults {
        sim.add_fault(f.clone());
    }
    clock.set(sim.now_ms());
    Ok(sim)
}

/// Lockstep: stay within `lead_ms` of what twinguard has processed, then keep to the
/// configured speed.
async fn keep_step(
    progress: &mut watch::Receiver<Progress>,
    cfg: &GatewayConfig,
    now: i64,
    t_s: u64,
    started: Instant,
) -> Result<()> {
    let wait_for = now - cfg.lead_ms;
    if tokio::time::timeout(
        Duration::from_secs(30),
        progress.wait_for(|p| p.t_ms >= wait_for),
    )
    .await
    .is_err()
    {
        anyhow::bail!("twinguard's pipeline made no progress for 30 s at simulated time {now}");
    }
    if cfg.speed > 0.0 {
        let due = Duration::from_secs_f64(t_s as f64 / cfg.speed);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(())
}

/// The end of a run: twinguard processes what is left, and the plant's truth is recorded.
async fn finish(progress: &mut watch::Receiver<Progress>, sim: &Sim, stats: &Mutex<PlantStats>) {
    let end = sim.now_ms();
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        progress.wait_for(|p| p.t_ms >= end),
    )
    .await;
    lock(stats).truth = Some(sim.truth().into());
}

/// The plant served over OPC UA: each simulated second's values are set on the plant
/// server's nodes (with their simulated source timestamps), so that subscribed clients
/// receive every sample; writes and calls that the server accepted from an authenticated,
/// authorised client are applied. Same lockstep as [`run`].
pub async fn run_opcua(
    cfg: GatewayConfig,
    clock: SimClock,
    mut progress: watch::Receiver<Progress>,
    stats: Arc<Mutex<PlantStats>>,
    server: Arc<opcua_link::server::PlantServer>,
    mut writes: tokio::sync::mpsc::UnboundedReceiver<opcua_link::server::PlantWrite>,
) -> Result<()> {
    let mut sim = start_sim(&cfg, &clock)?;
    let level_idx = sim.signal_index("tank.level");
    let total_s = (cfg.hours * 3600.0).round() as u64;
    let started = Instant::now();
    let mut t_s = 0u64;
    let mut received = 0u64;
    // A command the server accepted is applied, and the setpoint nodes show the result.
    let apply = |sim: &mut Sim, w: opcua_link::server::PlantWrite| match sim.apply(&w.command) {
        Ok(()) => {
            lock(&stats).commands_applied += 1;
            if let Err(e) = server.show_setpoints(sim.now_ms(), |sp| sim.setpoint(sp)) {
                tracing::warn!(error = %e, "cannot show the plant's setpoints");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "plant refused a command");
            *lock(&stats)
                .commands_refused
                .entry("invalid".into())
                .or_default() += 1;
        }
    };
    while t_s < total_s {
        let sent = progress.borrow().commands_sent;
        while received < sent {
            match tokio::time::timeout(Duration::from_secs(10), writes.recv()).await {
                Ok(Some(w)) => {
                    received += 1;
                    apply(&mut sim, w);
                }
                _ => anyhow::bail!(
                    "{} of {sent} commands sent by twinguard did not reach the plant within 10 s",
                    sent - received
                ),
            }
        }
        while let Ok(w) = writes.try_recv() {
            received += 1;
            apply(&mut sim, w);
        }
        let n = u64::from(cfg.batch).min(total_s - t_s);
        for _ in 0..n {
            let mut tick = sim.step();
            t_s += 1;
            if let (Some(r), Some(i)) = (cfg.level_ramp, level_idx)
                && t_s > r.start_s
                && let Some(v) = tick.values.get_mut(i)
            {
                *v += r.metres_per_hour * (t_s - r.start_s) as f64 / 3600.0;
            }
            server
                .publish(tick.t_ms, &tick.values)
                .map_err(anyhow::Error::msg)?;
        }
        let now = sim.now_ms();
        clock.set(now);
        lock(&stats).frames_published += n;
        keep_step(&mut progress, &cfg, now, t_s, started).await?;
    }
    finish(&mut progress, &sim, &stats).await;
    Ok(())
}

/// A Sparkplug rebirth request (NCMD `Node Control/Rebirth`) for one of our edge nodes.
fn rebirth_requested(
    edges: &[sparkplug::EdgeNode],
    unborn: &mut [bool],
    topic: &str,
    bytes: &[u8],
    stats: &Mutex<PlantStats>,
) {
    for (e, u) in edges.iter().zip(unborn.iter_mut()) {
        if e.is_rebirth_request(topic, bytes) {
            *u = true;
            return;
        }
    }
    *lock(stats)
        .commands_refused
        .entry("not_a_rebirth_request".into())
        .or_default() += 1;
}

fn apply_command(
    sim: &mut Sim,
    check: &mut CommandCheck,
    topic: &str,
    bytes: &[u8],
    stats: &Mutex<PlantStats>,
) {
    match check.check(topic, bytes, sim.now_ms()) {
        Ok(body) => match sim.apply(&body.command) {
            Ok(()) => lock(stats).commands_applied += 1,
            Err(e) => {
                tracing::warn!(error = %e, "plant refused a command");
                *lock(stats)
                    .commands_refused
                    .entry("invalid".into())
                    .or_default() += 1;
            }
        },
        Err(reason) => {
            *lock(stats)
                .commands_refused
                .entry(reason.into())
                .or_default() += 1
        }
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ed25519_dalek::SigningKey;
    use guard::{
        Action, AgentRegistry, DEFAULT_POLICY, Decision, Guard, Policy, Proposal, sign_proposal,
    };
    use plant_model::{Plant, PlantCommand};

    use super::CommandCheck;

    const T: i64 = 1_767_225_600_000;

    /// An approved command, as only the guard can make one.
    fn approved(plant: &Arc<Plant>, value: f64, nonce: &str) -> guard::Approved {
        let agent = SigningKey::from_bytes(&[2u8; 32]);
        let mut reg = AgentRegistry::default();
        reg.register("optimiser", agent.verifying_key());
        let token = reg
            .issue_token("optimiser", "t".repeat(64), T)
            .unwrap()
            .value;
        let mut guard = Guard::new(
            plant.clone(),
            reg,
            Policy::parse(DEFAULT_POLICY, "p", plant).unwrap(),
        );
        let p = Proposal {
            agent: "optimiser".into(),
            action: Action::SetSetpoint {
                setpoint: "pump.speed_sp".into(),
                value,
            },
            reason: "test".into(),
            evidence: vec![],
            inputs: vec![],
            created_ms: T,
            nonce: nonce.into(),
        };
        let mut trust = guard::InputTrust::default();
        trust.values.insert("tank.level".into(), 1.6);
        match guard
            .decide(&sign_proposal(&p, &token, &agent), &[], &trust, T)
            .1
        {
            Decision::Execute(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plant_accepts_only_fresh_commands_signed_by_twinguard() {
        let plant = Arc::new(Plant::reference());
        let key = SigningKey::from_bytes(&[8u8; 32]);
        let a = approved(&plant, 1550.0, "a");
        let (topic, bytes) = actuate::envelope(&plant, &key, &a, 1, T).unwrap();
        let mut check = CommandCheck::new(key.verifying_key());
        let body = check.check(&topic, &bytes, T).unwrap();
        assert_eq!(
            body.command,
            PlantCommand::SetSetpoint {
                setpoint: "pump.speed_sp".into(),
                value: 1550.0
            }
        );
        assert_eq!(check.check(&topic, &bytes, T), Err("replay"));

        let forger = SigningKey::from_bytes(&[9u8; 32]);
        let (topic, forged) = actuate::envelope(&plant, &forger, &a, 2, T).unwrap();
        assert_eq!(check.check(&topic, &forged, T), Err("bad_signature"));

        // Same bytes unsigned: rebuild the envelope without a key.
        let env = frames::Envelope::decode(&bytes).unwrap();
        let unsigned = frames::encode(
            frames::Kind::Command,
            &topic,
            actuate::SIGNER,
            env.body,
            None,
        )
        .unwrap();
        assert_eq!(check.check(&topic, &unsigned, T), Err("unsigned"));

        let (topic, old) = actuate::envelope(&plant, &key, &a, 3, T - 120_000).unwrap();
        assert_eq!(check.check(&topic, &old, T), Err("stale"));

        let mut flipped = actuate::envelope(&plant, &key, &a, 4, T).unwrap().1;
        let n = flipped.len();
        flipped[n - 70] ^= 1;
        assert!(check.check(&topic, &flipped, T).is_err());
        assert_eq!(check.check(&topic, b"junk", T), Err("malformed"));
    }
}
