//! `twinguard bench`: how fast the stages run on this machine, measured in one run so that
//! the numbers can be compared as ratios on a shared machine.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use frames::{BodyEncoding, Envelope, Kind, Seal, TelemetryBody, WireSample, encode, to_body};
use ingest::{Device, IngestConfig, Verifier};
use plant_model::Plant;
use plant_sim::{DEFAULT_START_MS, Sim};
use serde_json::{Value, json};

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        f64::INFINITY
    }
}

pub async fn run(hours: f64, data_dir: std::path::PathBuf) -> Result<Value> {
    let plant = Arc::new(Plant::reference());

    // 1. The simulator alone: one simulated day at 1 Hz.
    let mut sim = Sim::new(&plant, 1, DEFAULT_START_MS)?;
    let t = Instant::now();
    for _ in 0..86_400 {
        std::hint::black_box(sim.step());
    }
    let sim_day_s = t.elapsed().as_secs_f64();
    eprintln!("bench: simulator, 24 h at 1 Hz: {sim_day_s:.3} s");

    // 2. Envelope sign and ingest verification of the tank's 5-second frames.
    let key = frames::keys::generate()?;
    let topic = plant.telemetry_topic("tank");
    let n = 20_000u64;
    let mut frames_buf = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for seq in 1..=n {
        let ts = DEFAULT_START_MS + seq as i64 * 5000;
        let samples = (0..5)
            .flat_map(|k| {
                [
                    ("tank.level", "m", 1.6),
                    ("tank.inflow", "m3/h", 15.0),
                    ("tank.inlet_valve", "%", 50.0),
                ]
                .map(|(s, u, v)| WireSample {
                    signal: s.into(),
                    t_ms: ts - 4000 + k * 1000,
                    value: v,
                    unit: u.into(),
                })
            })
            .collect();
        let body = to_body(&TelemetryBody {
            seq,
            ts_ms: ts,
            samples,
        });
        frames_buf.push((
            ts,
            encode(Kind::Telemetry, &topic, "gw-tank", &body, Some(&key))?,
        ));
    }
    let sign_s = t.elapsed().as_secs_f64();
    let mut verifier = Verifier::new(
        plant.clone(),
        vec![Device::ed25519("gw-tank", "tank", key.verifying_key())],
        IngestConfig::default(),
    );
    let source = Arc::new(ingest::SourceInfo::mqtt_plain("bench"));
    let t = Instant::now();
    let mut accepted = 0u64;
    for (ts, f) in &frames_buf {
        accepted += verifier.check(&source, &topic, f, *ts).accepted.len() as u64;
    }
    let verify_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (_, f) in &frames_buf {
        let env = Envelope::decode(f)?;
        std::hint::black_box(env.verify(&topic, &key.verifying_key()).is_ok());
    }
    let sig_only_s = t.elapsed().as_secs_f64();
    eprintln!("bench: {n} frames signed in {sign_s:.3} s, ingested in {verify_s:.3} s");

    // 3. Verification plus twin update by frame size, seal and body encoding, one thread
    // (= per core).
    let mut by_size = Vec::new();
    for per_frame in [1usize, 10, 100] {
        for seal in ["ed25519", "hmac_sha256"] {
            for body in [BodyEncoding::Json, BodyEncoding::Binary] {
                let r = ingest_rate(&plant, per_frame, seal, body)?;
                let name = body_name(body);
                eprintln!(
                    "bench: {per_frame:>3} samples/frame, {seal:<11}, {name:<6} body: {r:>10.0} samples/s"
                );
                by_size.push(json!({
                    "samples_per_frame": per_frame,
                    "seal": seal,
                    "body": name,
                    "samples_per_s": r,
                }));
            }
        }
    }

    // 4. Plant size.
    let by_plant_size = by_plant_size()?;

    // 5. The whole loop over the embedded MQTT broker.
    let (e2e_s, e2e_frames, samples) = timed_loop(hours, data_dir, None).await?;
    let mosquitto = match mosquitto_bin() {
        Some(bin) => mosquitto_section(&bin, hours).await?,
        None => json!("mosquitto is not installed: apt-get install mosquitto mosquitto-clients"),
    };
    eprintln!("bench: {hours} simulated hours through the whole loop in {e2e_s:.2} s");

    Ok(json!({
        "mosquitto": mosquitto,
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "os": std::env::consts::OS, "arch": std::env::consts::ARCH },
        "simulator": { "simulated_day_s": sim_day_s, "ticks_per_s": rate(86_400, sim_day_s), "speedup_vs_real_time": 86_400.0 / sim_day_s },
        "envelope": {
            "frames": n,
            "sign_frames_per_s": rate(n, sign_s),
            "signature_verify_frames_per_s": rate(n, sig_only_s),
            "ingest_frames_per_s": rate(n, verify_s),
            "ingest_samples_per_s": rate(accepted, verify_s),
            "ingest_cost_over_signature_check": verify_s / sig_only_s,
        },
        "verify_and_apply_per_core": by_size,
        "by_plant_size": by_plant_size,
        "end_to_end": {
            "simulated_hours": hours,
            "wall_s": e2e_s,
            "samples": samples,
            "samples_per_s": rate(samples, e2e_s),
            "frames_per_s": rate(e2e_frames, e2e_s),
            "speedup_vs_real_time": hours * 3600.0 / e2e_s,
            "cost_over_simulator_alone": (e2e_s / (hours * 3600.0)) / (sim_day_s / 86_400.0),
        },
    }))
}

/// Costs against the plant's size (the reference plant and 1,000 and 5,000 more
/// signals): verification plus twin update, the twin's memory per signal with its history
/// full, and frames through the whole core.
pub fn by_plant_size() -> Result<Vec<Value>> {
    let mut by_plant_size = Vec::new();
    for extra in [0usize, 1_000, 5_000] {
        let row = plant_size_row(extra)?;
        eprintln!(
            "bench: {} signals: {:.0} samples/s, the twin holds {:.1} KiB per signal; \
             the whole core {:.0} frames/s",
            row.signals,
            row.samples_per_s,
            row.bytes_per_signal / 1024.0,
            row.core_frames_per_s
        );
        by_plant_size.push(json!({
            "signals": row.signals,
            "samples_per_s": row.samples_per_s,
            "core_frames_per_s": row.core_frames_per_s,
            "twin_bytes_per_signal": row.bytes_per_signal,
            "history_points": twin::DEFAULT_HISTORY,
        }));
    }
    Ok(by_plant_size)
}

/// A frame and the topic it goes to.
type TopicFrame = (String, Vec<u8>);

fn body_name(body: BodyEncoding) -> &'static str {
    match body {
        BodyEncoding::Json => "json",
        BodyEncoding::Binary => "binary",
    }
}

/// `n_frames` sealed frames of `per_frame` samples each, their bodies in `body`, that
/// visit every signal of the tank in turn, with the device that sealed them.
fn tank_frames(
    plant: &Arc<Plant>,
    n_frames: usize,
    per_frame: usize,
    seal: &str,
    body: BodyEncoding,
) -> Result<(Vec<TopicFrame>, Device)> {
    let key = frames::keys::generate()?;
    let secret = vec![0x5au8; 32];
    let topic = plant.telemetry_topic("tank");
    // Every signal of the tank in turn, one second apart for each, at mid-range.
    let signals: Vec<(&str, &str, f64)> = plant
        .signals
        .iter()
        .filter(|s| s.asset == "tank")
        .map(|s| {
            (
                s.id.as_str(),
                s.unit.as_str(),
                (s.range[0] + s.range[1]) / 2.0,
            )
        })
        .collect();
    let n = signals.len().max(1);
    let mut frames_buf = Vec::with_capacity(n_frames);
    for f in 0..n_frames {
        let first = f * per_frame;
        let ts = DEFAULT_START_MS + ((first + per_frame) / n + 1) as i64 * 1000;
        let samples = (first..first + per_frame)
            .filter_map(|i| {
                let (id, unit, value) = *signals.get(i % n)?;
                Some(WireSample {
                    signal: id.into(),
                    t_ms: DEFAULT_START_MS + (i / n) as i64 * 1000,
                    value,
                    unit: unit.into(),
                })
            })
            .collect();
        let telemetry = TelemetryBody {
            seq: f as u64 + 1,
            ts_ms: ts,
            samples,
        };
        let sealed = if seal == "ed25519" {
            Seal::Ed25519(&key)
        } else {
            Seal::HmacSha256(&secret)
        };
        frames_buf.push((
            topic.clone(),
            frames::encode_telemetry(&topic, "gw-tank", &telemetry, body, sealed)?,
        ));
    }
    let material = if seal == "ed25519" {
        ingest::KeyMaterial::Ed25519(key.verifying_key())
    } else {
        ingest::KeyMaterial::HmacSha256(secret.clone())
    };
    let device = Device {
        id: "gw-tank".into(),
        asset: "tank".into(),
        keys: vec![ingest::DeviceKey {
            id: "k".into(),
            material,
            not_before_ms: None,
            not_after_ms: None,
        }],
    };
    Ok((frames_buf, device))
}

struct PlantSizeRow {
    signals: usize,
    samples_per_s: f64,
    bytes_per_signal: f64,
    /// 100-sample Ed25519 frames per second through the whole core.
    core_frames_per_s: f64,
}

/// The reference plant file with `extra` more level signals on the tank (so that one
/// device feeds them all), parsed and validated as any plant file is.
fn plant_with_extra_signals(extra: usize) -> Result<Plant> {
    use std::fmt::Write;
    let mut text = plant_model::REFERENCE_PLANT.to_string();
    for k in 0..extra {
        let _ = write!(
            text,
            "\n[[signals]]\nid = \"tank.level_{k:05}\"\nasset = \"tank\"\nunit = \"m\"\nrange = [0.0, 3.2]\nalarm = [0.4, 2.6]\nmax_rate = 0.02\n"
        );
    }
    Ok(Plant::parse(&text, "bench plant")?)
}

/// 100-sample Ed25519 frames that visit every tank signal in turn, checked in batches and
/// applied to the twin; then every signal's history is filled, and the twin's heap per
/// signal is read (`Twin::signal_memory_bytes`: the process's resident memory cannot tell
/// it, for the allocator reuses what earlier stages of the bench freed).
fn plant_size_row(extra: usize) -> Result<PlantSizeRow> {
    let plant = Arc::new(plant_with_extra_signals(extra)?);
    let (samples_per_s, mut twin, provenance) =
        verify_and_apply(&plant, 100, "ed25519", BodyEncoding::Json, 3_000)?;
    // Fill every signal's history, as an hour of 1 Hz data does.
    for s in &plant.signals {
        for k in 0..twin::DEFAULT_HISTORY as i64 {
            twin.update(&ingest::Sample {
                signal: s.id.as_str().into(),
                t_ms: DEFAULT_START_MS + 86_400_000 + k * 1000,
                value: 1.0,
                provenance: provenance.clone(),
            });
        }
    }
    Ok(PlantSizeRow {
        signals: plant.signals.len(),
        samples_per_s,
        bytes_per_signal: twin.signal_memory_bytes() as f64 / plant.signals.len() as f64,
        core_frames_per_s: core_frame_rate(&plant, 3_000)?,
    })
}

/// A sink for a core that sends no commands (the bench runs no agents).
struct NoCommands;

impl actuate::CommandSink for NoCommands {
    fn send(
        &mut self,
        approved: guard::Approved,
        _now_ms: i64,
    ) -> std::result::Result<actuate::Sent, actuate::ActuateError> {
        Err(actuate::ActuateError::Send {
            id: approved.command().id.clone(),
            topic: String::new(),
            message: "the bench's core sends no commands".into(),
        })
    }
}

/// Frames per second through the whole core (`Core::handle_frames`: verification in
/// batches of 64, the twin, the per-signal detectors, the physics relations, data gaps,
/// how far every signal's data reaches, the page's snapshot) for `n_frames` 100-sample
/// Ed25519 tank frames. Only the tank's signals get data, so no time is complete and the
/// models' and agents' ticks do not run: this is the cost of the frames.
fn core_frame_rate(plant: &Arc<Plant>, n_frames: usize) -> Result<f64> {
    use crate::core::{Core, CoreParts, SourceState};
    let (frames_buf, device) = tank_frames(plant, n_frames, 100, "ed25519", BodyEncoding::Json)?;
    let dir = std::env::temp_dir().join(format!(
        "twinguard-bench-core-{}-{}",
        std::process::id(),
        plant.signals.len()
    ));
    std::fs::create_dir_all(&dir)?;
    let audit_key = frames::keys::generate()?;
    let maintenance_key = frames::keys::generate()?;
    let optimiser_key = frames::keys::generate()?;
    let config = twinguard_config::Config::default_config();
    let guard =
        crate::demo::guard_with_agents(plant, &config, None, &maintenance_key, &optimiser_key)?;
    let store = audit::SqliteStore::open(&dir.join("audit.db"), audit_key.clone())?;
    let clock = crate::gateway::SimClock::default();
    let (progress, _progress_rx) = tokio::sync::watch::channel(crate::gateway::Progress::default());
    let source = Arc::new(ingest::SourceInfo::mqtt_plain("bench"));
    let signals = plant.signals.iter().map(|s| s.id.clone()).collect();
    let mut core = Core::new(CoreParts {
        plant: plant.clone(),
        verifier: Verifier::new(plant.clone(), vec![device], bench_ingest_config()),
        sources: vec![SourceState::new(source, signals)],
        min_trust: config.min_trust(),
        guard,
        maintenance_key,
        optimiser_key,
        sink: Box::new(NoCommands),
        audit: Box::new(store),
        audit_public: audit_key.verifying_key(),
        audit_retention_ms: config.audit.retention_ms(),
        clock: clock.clone(),
        snapshot: Arc::new(std::sync::RwLock::new(api::Snapshot::default())),
        progress,
        token_leak: None,
        sparkplug: None,
        agents_file: None,
        devices_file: None,
        policy_file: None,
        multivariate: None,
        multivariate_ref: None,
        shadow: None,
        pump_health: None,
        pump_shadow: None,
        agents: false,
        baseline: None,
    })?;
    // Each batch arrives when its newest frame was sent.
    let batches: Vec<(i64, Vec<ingest::mqtt::RawFrame>)> = frames_buf
        .chunks(64)
        .map(|chunk| {
            let newest = chunk
                .iter()
                .filter_map(|(_, b)| Envelope::decode(b).ok())
                .filter_map(|e| TelemetryBody::read(&e).ok())
                .map(|b| b.ts_ms)
                .max()
                .unwrap_or(DEFAULT_START_MS);
            let frames = chunk
                .iter()
                .map(|(topic, payload)| ingest::mqtt::RawFrame {
                    topic: topic.clone(),
                    payload: payload.clone(),
                })
                .collect();
            (newest, frames)
        })
        .collect();
    let t = Instant::now();
    for (newest, frames) in batches {
        clock.set(newest);
        core.handle_frames(frames);
    }
    let secs = t.elapsed().as_secs_f64();
    let accepted = core
        .report()
        .pointer("/samples/accepted")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    drop(core);
    let _ = std::fs::remove_dir_all(&dir);
    if accepted != (n_frames * 100) as u64 {
        anyhow::bail!(
            "bench: the core at {} signals accepted {accepted} of {} samples",
            plant.signals.len(),
            n_frames * 100
        );
    }
    Ok(rate(n_frames as u64, secs))
}

/// Limits that let the bench's pre-dated frames through.
fn bench_ingest_config() -> IngestConfig {
    IngestConfig {
        max_age_ms: i64::MAX / 4,
        max_future_ms: i64::MAX / 4,
        replay_window: 64,
    }
}

fn ingest_rate(
    plant: &Arc<Plant>,
    per_frame: usize,
    seal: &str,
    body: BodyEncoding,
) -> Result<f64> {
    verify_and_apply(plant, per_frame, seal, body, 300_000 / per_frame).map(|r| r.0)
}

/// Samples per second through `Verifier::check_batch` (in batches of 64 frames) and the
/// twin's update, single-threaded, for `n_frames` tank frames of `per_frame` samples; with
/// the twin afterwards and the provenance of the last frame.
fn verify_and_apply(
    plant: &Arc<Plant>,
    per_frame: usize,
    seal: &str,
    body: BodyEncoding,
    n_frames: usize,
) -> Result<(f64, twin::Twin, Arc<ingest::Provenance>)> {
    let (frames_buf, device) = tank_frames(plant, n_frames, per_frame, seal, body)?;
    let mut verifier = Verifier::new(plant.clone(), vec![device], bench_ingest_config());
    let mut twin = twin::Twin::new(
        plant.clone(),
        twin::DEFAULT_HISTORY,
        twin::CusumConfig::default(),
    );
    let source = Arc::new(ingest::SourceInfo::mqtt_plain("bench"));
    let t = Instant::now();
    let mut applied = 0usize;
    let mut provenance = None;
    for chunk in frames_buf.chunks(64) {
        for out in verifier.check_batch(&source, chunk, DEFAULT_START_MS) {
            for s in &out.accepted {
                applied += usize::from(twin.update(s));
            }
            if let Some(s) = out.accepted.last() {
                provenance = Some(s.provenance.clone());
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if applied != n_frames * per_frame {
        anyhow::bail!(
            "bench: {} signals, {per_frame}-sample {seal} frames: applied {applied} of {} samples",
            plant.signals.len(),
            n_frames * per_frame
        );
    }
    let provenance = provenance.context("bench: no frame was accepted")?;
    Ok((rate(applied as u64, secs), twin, provenance))
}

fn mosquitto_bin() -> Option<std::path::PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

/// Only the MQTT rows through Debian's mosquitto (`twinguard bench --mqtt-only`).
pub async fn mosquitto_only(hours: f64) -> Result<Value> {
    let bin = mosquitto_bin()
        .context("bench --mqtt-only needs Debian's mosquitto (apt-get install mosquitto)")?;
    mosquitto_section(&bin, hours).await
}

/// Kills the broker when the bench is done.
struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same loop through Debian's mosquitto on loopback, beside mosquitto's own rate with
/// its own clients (mosquitto_pub piping lines, mosquitto_sub counting them, QoS 1).
async fn mosquitto_section(bin: &std::path::Path, hours: f64) -> Result<Value> {
    let dir =
        std::env::temp_dir().join(format!("twinguard-bench-mosquitto-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = crate::broker::free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
        ),
    )?;
    let _broker = Broker(
        std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    crate::broker::wait_ready(port).await?;

    // twinguard's ingest alone, by frame size and seal, each beside mosquitto's own
    // clients relaying messages of the same size.
    let mut ingest_rows = Vec::new();
    for (per_frame, seal, body, n) in [
        (15usize, "ed25519", BodyEncoding::Json, 50_000usize),
        (15, "hmac_sha256", BodyEncoding::Json, 50_000),
        (100, "ed25519", BodyEncoding::Json, 20_000),
        (100, "hmac_sha256", BodyEncoding::Json, 20_000),
        (100, "ed25519", BodyEncoding::Binary, 20_000),
        (100, "hmac_sha256", BodyEncoding::Binary, 20_000),
    ] {
        let (frames_per_s, bytes_each) =
            ingest_over_mqtt(port, n, per_frame, seal, body, Consumer::Ingest).await?;
        let (received_per_s, _) =
            ingest_over_mqtt(port, n, per_frame, seal, body, Consumer::Count).await?;
        // mosquitto's own clients vary from run to run more than twinguard does: the median
        // of three runs.
        let mut own_runs = Vec::new();
        for _ in 0..3 {
            if let Some(o) = mosquitto_own(port, n, bytes_each).await? {
                own_runs.push(o);
            }
        }
        own_runs.sort_by(f64::total_cmp);
        let own = own_runs.get(own_runs.len() / 2).copied();
        let body = body_name(body);
        eprintln!(
            "bench: {per_frame} samples/frame {seal} {body} ({bytes_each} bytes) through mosquitto: \
             twinguard ingest {frames_per_s:.0} frames/s, the same client only receiving \
             {received_per_s:.0} frames/s, mosquitto's own clients {} msgs/s",
            own.map_or("-".to_string(), |o| format!(
                "{o:.0} (median of {:.0?})",
                own_runs
            ))
        );
        ingest_rows.push(json!({
            "samples_per_frame": per_frame,
            "seal": seal,
            "body": body,
            "frames": n,
            "bytes_each": bytes_each,
            "twinguard_frames_per_s": frames_per_s,
            "twinguard_samples_per_s": frames_per_s * per_frame as f64,
            "same_client_receiving_only_frames_per_s": received_per_s,
            "mosquitto_own_messages_per_s": own,
            "mosquitto_own_runs_messages_per_s": own_runs,
            "share_of_mosquitto_own": own.map(|o| frames_per_s / o),
        }));
    }

    let data = dir.join("data");
    let (secs, frames, samples) =
        timed_loop(hours, data, Some(format!("127.0.0.1:{port}"))).await?;
    eprintln!("bench: {hours} simulated hours through mosquitto in {secs:.2} s");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "ingest_beside_own_clients": ingest_rows,
        "twinguard_loop": {
            "wall_s": secs,
            "samples_per_s": rate(samples, secs),
            "frames_per_s": rate(frames, secs),
        },
    }))
}

/// mosquitto's own rate on the broker at `port`: `n` messages of `size` bytes piped into
/// `mosquitto_pub -l` and counted by `mosquitto_sub -C`, QoS 1. `None` without
/// mosquitto-clients.
async fn mosquitto_own(port: u16, n: usize, size: usize) -> Result<Option<f64>> {
    let (Some(pub_bin), Some(sub_bin)) = (which("mosquitto_pub"), which("mosquitto_sub")) else {
        return Ok(None);
    };
    let port = port.to_string();
    // Both clients: the broker, the topic, QoS 1.
    let common = ["-h", "127.0.0.1", "-p", &port, "-t", "bench", "-q", "1"];
    let mut sub = tokio::process::Command::new(sub_bin)
        .args(common)
        .arg("-C")
        .arg(n.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let payload = "x".repeat(size);
    let t = Instant::now();
    let mut publisher = tokio::process::Command::new(pub_bin)
        .args(common)
        .arg("-l")
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = publisher.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let mut lines = String::with_capacity(n * (payload.len() + 1));
        for _ in 0..n {
            lines.push_str(&payload);
            lines.push('\n');
        }
        stdin.write_all(lines.as_bytes()).await?;
    }
    let finished = tokio::time::timeout(std::time::Duration::from_secs(120), sub.wait()).await;
    let secs = t.elapsed().as_secs_f64();
    let _ = publisher.kill().await;
    if finished.is_err() {
        let _ = sub.kill().await;
        anyhow::bail!(
            "bench: mosquitto_sub did not receive {n} messages of {size} bytes within 120 s"
        );
    }
    Ok(Some(rate(n as u64, secs)))
}

/// What [`ingest_over_mqtt`] does with the frames it receives.
#[derive(Clone, Copy, PartialEq)]
enum Consumer {
    /// Verifies their seals in batches on a task of its own (the seal stage), then checks
    /// them and applies them to the twin, as the core does.
    Ingest,
    /// Only counts them: what the broker and the client deliver to twinguard.
    Count,
}

/// twinguard's MQTT ingest alone: `n` signed frames of `per_frame` samples published as fast as a
/// client can (QoS 1) through the broker at `port`, received by the same subscriber the
/// core uses and handed to the consumer `mode` says. Returns frames per second and the mean frame size
/// in bytes.
async fn ingest_over_mqtt(
    port: u16,
    n: usize,
    per_frame: usize,
    seal: &str,
    body: BodyEncoding,
    mode: Consumer,
) -> Result<(f64, usize)> {
    use ingest::mqtt::{BrokerEndpoint, MqttVersion, RawFrame};
    let plant = Arc::new(Plant::reference());
    let (frames_buf, device) = tank_frames(&plant, n, per_frame, seal, body)?;
    let bytes_each = frames_buf.iter().map(|(_, b)| b.len()).sum::<usize>() / n.max(1);
    let endpoint = BrokerEndpoint {
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: None,
        tls: None,
        version: MqttVersion::V311,
        persistent_session: false,
    };
    // Client ids of their own for each run: a broker hands an id over to its newest
    // connection.
    let id_suffix = format!(
        "{per_frame}-{seal}-{}-{}",
        body_name(body),
        if mode == Consumer::Count {
            "count"
        } else {
            "ingest"
        }
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RawFrame>(1024);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sub = tokio::spawn(ingest::mqtt::run_subscriber(
        endpoint.clone(),
        format!("bench-ingest-{id_suffix}"),
        vec![plant.telemetry_topic("tank")],
        tx,
        Some(ready_tx),
        Default::default(),
    ));
    tokio::time::timeout(std::time::Duration::from_secs(10), ready_rx)
        .await
        .context("the bench subscriber did not subscribe")??;
    // The core's path: the seal stage verifies signatures on a task of its own, and the
    // consumer checks and applies the sealed frames, as `Core::run` does.
    let consumer = match mode {
        Consumer::Count => tokio::task::spawn_blocking(move || {
            let mut frames = 0usize;
            while frames < n {
                let Some(_) = rx.blocking_recv() else { break };
                frames += 1;
            }
            frames
        }),
        Consumer::Ingest => {
            let mut verifier = Verifier::new(plant.clone(), vec![device], bench_ingest_config());
            let (sealed_tx, mut sealed_rx) = tokio::sync::mpsc::channel(4);
            let (finish_tx, finish_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(ingest::seal::run(
                verifier.seal_stage(),
                rx,
                sealed_tx,
                finish_rx,
                64,
            ));
            let plant = plant.clone();
            tokio::task::spawn_blocking(move || {
                let mut twin = twin::Twin::new(
                    plant.clone(),
                    twin::DEFAULT_HISTORY,
                    twin::CusumConfig::default(),
                );
                let source = Arc::new(ingest::SourceInfo::mqtt_plain("bench"));
                let mut frames = 0usize;
                while frames < n {
                    let Some(batch) = sealed_rx.blocking_recv() else {
                        break;
                    };
                    for (_, out) in verifier.check_sealed(&source, batch, DEFAULT_START_MS) {
                        if !out.accepted.is_empty() {
                            frames += 1;
                        }
                        for s in &out.accepted {
                            twin.update(s);
                        }
                    }
                }
                drop(finish_tx);
                frames
            })
        }
    };
    let t = Instant::now();
    let publisher =
        ingest::mqtt::Publisher::connect(&endpoint, &format!("bench-device-{id_suffix}"));
    for (topic, bytes) in frames_buf {
        loop {
            match publisher.try_publish(topic.clone(), bytes.clone()) {
                Ok(()) => break,
                // The client's queue is full: let it drain.
                Err(_) => tokio::time::sleep(std::time::Duration::from_micros(200)).await,
            }
        }
    }
    let frames = tokio::time::timeout(std::time::Duration::from_secs(120), consumer)
        .await
        .context("the bench consumer did not finish within 120 s")??;
    let secs = t.elapsed().as_secs_f64();
    sub.abort();
    if frames != n {
        anyhow::bail!("bench: {frames} of {n} frames arrived");
    }
    Ok((rate(n as u64, secs), bytes_each))
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
}

/// Runs the whole demo loop as fast as it goes; returns wall seconds, accepted frames and
/// accepted samples.
async fn timed_loop(
    hours: f64,
    data_dir: std::path::PathBuf,
    broker: Option<String>,
) -> Result<(f64, u64, u64)> {
    let t = Instant::now();
    let report = crate::demo::run(crate::demo::DemoArgs {
        transport: crate::demo::Transport::Mqtt,
        config: None,
        legacy_devices: vec![],
        body: Default::default(),
        hours,
        speed: 0.0,
        attack: None,
        seed: 1,
        data_dir,
        plant_file: None,
        faults: vec![],
        broker,
        api_port: 0,
        quiet: true,
        agents: true,
        vary_conditions: false,
        baseline: None,
    })
    .await?;
    let secs = t.elapsed().as_secs_f64();
    let accepted = |what: &str| {
        report
            .get(what)
            .and_then(|s| s.get("accepted"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok((secs, accepted("frames"), accepted("samples")))
}
