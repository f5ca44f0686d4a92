//! Attacks the demo can run against itself, each from outside twinguard's process or
//! connection, over the same real paths an attacker would use.
//!
//! - `forged-frames`: an intruder on the broker publishes frames for the tank signed with
//!   a key not in the registry, unsigned frames, frames from an unknown device and garbage.
//! - `replay`: an intruder captures a valid tank frame and re-sends it, at once and later.
//! - `fdi-level`: the tank's gateway is compromised and reports a slowly rising level,
//!   validly signed (implemented in the gateway: see `gateway::LevelRamp`).
//! - `stolen-agent-token`: another process copies the optimiser's token and presents it to
//!   the agent API without the optimiser's key.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use frames::{Kind, TelemetryBody, WireSample, encode, to_body};
use ingest::mqtt::BrokerEndpoint;
use plant_model::Plant;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde::Serialize;
use serde_json::{Value, json};

use crate::gateway::{SimClock, lock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    ForgedFrames,
    Replay,
    FdiLevel,
    StolenAgentToken,
    /// The tank's frames are held back two minutes on their way (they arrive stale).
    DelayedFrames,
    /// The tank's key was rotated out; whoever kept the old key signs frames with it.
    RetiredKey,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AttackReport {
    /// Messages or requests the attacker sent.
    pub attempts: u64,
    /// Of those, how many twinguard accepted (for frames: cannot be seen by the attacker
    /// and stays 0; the verdicts are in `samples.rejected`).
    pub accepted: u64,
    pub notes: Vec<String>,
}

const START_MS: i64 = 30 * 60 * 1000;
const EVERY_MS: i64 = 10 * 60 * 1000;

async fn wait_until(clock: &SimClock, t: i64, end: i64) -> bool {
    while clock.now_ms() < t {
        if clock.now_ms() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clock.now_ms() < end
}

/// The first frame an intruder captured: topic and bytes.
type Captured = Arc<Mutex<Option<(String, Vec<u8>)>>>;

/// Waits until `slot` holds a value, or the run ends (None).
async fn wait_for_slot<T: Clone>(slot: &Mutex<Option<T>>, clock: &SimClock, end: i64) -> Option<T> {
    loop {
        if let Some(v) = lock(slot).clone() {
            return Some(v);
        }
        if clock.now_ms() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// When an attack runs and where it reports.
#[derive(Clone)]
pub struct Window {
    pub clock: SimClock,
    /// Start of the run (simulated ms).
    pub t0: i64,
    /// End of the run (simulated ms).
    pub end: i64,
    pub report: Arc<Mutex<AttackReport>>,
}

fn spawn_poll(mut ev: rumqttc::EventLoop, captured: Option<Captured>) {
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(c) = &captured {
                        let mut slot = lock(c);
                        if slot.is_none() {
                            *slot = Some((p.topic.clone(), p.payload.to_vec()));
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
}

/// A tank frame claiming a dangerously high level, as an intruder would send it.
fn false_level_body(seq: u64, now: i64) -> Vec<u8> {
    to_body(&TelemetryBody {
        seq,
        ts_ms: now,
        samples: vec![WireSample {
            signal: "tank.level".into(),
            t_ms: now,
            value: 2.9,
            unit: "m".into(),
        }],
    })
}

/// Every ten simulated minutes from half an hour in, publishes on the tank's topic what
/// `make(seq, now)` builds, counting each message as an attempt.
async fn every_ten_minutes(
    plant: &Plant,
    endpoint: BrokerEndpoint,
    client_id: &str,
    w: Window,
    mut make: impl FnMut(u64, i64) -> Result<Vec<Vec<u8>>>,
) -> Result<()> {
    let (client, ev) = AsyncClient::new(endpoint.options(client_id), 64);
    spawn_poll(ev, None);
    let topic = plant.telemetry_topic("tank");
    let mut t = w.t0 + START_MS;
    let mut seq = 1_000_000_000u64;
    while wait_until(&w.clock, t, w.end).await {
        seq += 1;
        for f in make(seq, w.clock.now_ms())? {
            client
                .publish(topic.clone(), QoS::AtLeastOnce, false, f)
                .await?;
            lock(&w.report).attempts += 1;
        }
        t += EVERY_MS;
    }
    Ok(())
}

/// Forged, unsigned, unknown-device and garbage frames on the tank's topic.
pub async fn forged_frames(plant: Arc<Plant>, endpoint: BrokerEndpoint, w: Window) -> Result<()> {
    let forger = frames::keys::generate()?;
    let topic = plant.telemetry_topic("tank");
    every_ten_minutes(&plant, endpoint, "intruder-forger", w, |seq, now| {
        let body = false_level_body(seq, now);
        Ok(vec![
            encode(Kind::Telemetry, &topic, "gw-tank", &body, Some(&forger))?,
            encode(Kind::Telemetry, &topic, "gw-tank", &body, None)?,
            encode(Kind::Telemetry, &topic, "gw-rogue", &body, Some(&forger))?,
            b"TGF1\x01\x01\xff garbage that claims a 255-byte signer".to_vec(),
        ])
    })
    .await
}

/// Frames for the tank signed with its rotated-out key, with fresh timestamps.
pub async fn retired_key(
    plant: Arc<Plant>,
    endpoint: BrokerEndpoint,
    old: ed25519_dalek::SigningKey,
    w: Window,
) -> Result<()> {
    let topic = plant.telemetry_topic("tank");
    every_ten_minutes(&plant, endpoint, "intruder-old-key", w, |seq, now| {
        Ok(vec![encode(
            Kind::Telemetry,
            &topic,
            "gw-tank",
            &false_level_body(seq, now),
            Some(&old),
        )?])
    })
    .await
}

/// Captures one valid tank frame and replays it immediately and every ten minutes.
pub async fn replay(plant: Arc<Plant>, endpoint: BrokerEndpoint, w: Window) -> Result<()> {
    let Window {
        clock,
        t0,
        end,
        report,
    } = w;
    let (client, ev) = AsyncClient::new(endpoint.options("intruder-replayer"), 64);
    let captured = Arc::new(Mutex::new(None));
    spawn_poll(ev, Some(captured.clone()));
    let topic = plant.telemetry_topic("tank");
    if !wait_until(&clock, t0 + START_MS, end).await {
        return Ok(());
    }
    client.subscribe(topic.clone(), QoS::AtLeastOnce).await?;
    let Some(frame) = wait_for_slot(&captured, &clock, end).await else {
        return Ok(());
    };
    client.unsubscribe(topic).await?;
    lock(&report).notes.push(format!(
        "captured a {}-byte frame on {}",
        frame.1.len(),
        frame.0
    ));
    let mut t = clock.now_ms();
    while wait_until(&clock, t, end).await {
        client
            .publish(frame.0.clone(), QoS::AtLeastOnce, false, frame.1.clone())
            .await?;
        lock(&report).attempts += 1;
        t = clock.now_ms().max(t) + EVERY_MS;
    }
    Ok(())
}

/// Runs the thief as a separate process with the copied token.
#[allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexing yields Null, it never panics"
)]
pub async fn stolen_token(
    api: String,
    leak: Arc<Mutex<Option<String>>>,
    dir: PathBuf,
    w: Window,
) -> Result<()> {
    let Window {
        clock,
        t0,
        end,
        report,
    } = w;
    if !wait_until(&clock, t0 + 2 * START_MS, end).await {
        return Ok(());
    }
    let Some(token) = wait_for_slot(&leak, &clock, end).await else {
        return Ok(());
    };
    let token_file = dir.join("stolen-optimiser.token");
    std::fs::write(&token_file, &token)
        .with_context(|| format!("cannot write {}", token_file.display()))?;
    let exe = std::env::current_exe().context("cannot find twinguard's own executable")?;
    let out = tokio::process::Command::new(exe)
        .args([
            "attack-agent",
            "--api",
            &api,
            "--agent",
            "optimiser",
            "--token-file",
        ])
        .arg(&token_file)
        .args(["--now-ms", &clock.now_ms().to_string()])
        .output()
        .await
        .context("cannot start the thief process")?;
    let _ = std::fs::remove_file(&token_file);
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "thief process printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let mut r = lock(&report);
    for resp in v["responses"].as_array().into_iter().flatten() {
        r.attempts += 1;
        let outcome = resp["body"]["outcome"].as_str().unwrap_or("");
        if outcome == "executed" || outcome == "pending" {
            r.accepted += 1;
        }
        r.notes
            .push(format!("HTTP {}: {}", resp["status"], resp["body"]));
    }
    Ok(())
}

/// The thief: presents a copied token with proposals it signs with its own key, or with
/// no signature at all. Prints what the API answered, as JSON.
pub async fn thief(api: &str, agent: &str, token: &str, now_ms: i64) -> Result<Value> {
    let own_key = frames::keys::generate()?;
    let proposal = guard::Proposal {
        agent: agent.to_string(),
        action: guard::Action::SetSetpoint {
            setpoint: "pump.speed_sp".into(),
            value: 1650.0,
        },
        reason: "attacker".into(),
        evidence: vec![],
        inputs: vec![],
        created_ms: now_ms,
        nonce: format!("thief-{now_ms}"),
    };
    let signed = guard::sign_proposal(&proposal, token, &own_key);
    let mut unsigned = signed.clone();
    unsigned.signature = String::new();
    let mut responses = Vec::new();
    for sp in [signed, unsigned] {
        let (status, body) = post_json(api, "/api/v1/agent/proposals", &json!(sp)).await?;
        responses.push(json!({ "status": status, "body": body }));
    }
    Ok(json!({ "responses": responses }))
}

/// A minimal HTTP/1.1 POST over loopback TCP.
pub async fn post_json(addr: &str, path: &str, body: &Value) -> Result<(u16, Value)> {
    post_json_as(addr, path, body, None).await
}

/// [`post_json`] with `Authorization: Bearer <bearer>`.
pub async fn post_json_as(
    addr: &str,
    path: &str,
    body: &Value,
    bearer: Option<&str>,
) -> Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let payload = serde_json::to_vec(body)?;
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&payload).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        s.take(1 << 20).read_to_end(&mut buf),
    )
    .await
    .context("no answer within 10 s")??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("response has no status line")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
    ))
}
