//! Ingest: turns untrusted bytes from the plant into samples with provenance.
//!
//! [`Verifier::check`] runs every integrity check on one frame, in this order, and stops
//! at the first frame-level failure: structure, known device, signature present and valid,
//! topic allowed for the device, body schema, replay window, freshness. Then each sample is
//! checked (signal known and owned by the device's asset, unit, finite, instrument range,
//! sample time) and good samples are kept even when others in the frame are rejected.
//! Nothing is dropped silently: every rejection comes back with its reason so that the
//! caller counts it, quarantines the bytes and audits it.
//!
//! [`mqtt`] is the MQTT source that feeds frames to the verifier. This module does no I/O
//! and reads no clock: the time is an argument.

pub mod mqtt;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use frames::{Envelope, FrameError, Kind, TelemetryBody};
use plant_model::Plant;
use serde::{Deserialize, Serialize};

/// Why a frame or a sample was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Malformed,
    UnknownDevice,
    Unsigned,
    BadSignature,
    UnauthorizedTopic,
    Replay,
    Stale,
    Future,
    UnknownSignal,
    UnauthorizedSignal,
    WrongUnit,
    NotFinite,
    OutOfRange,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnknownDevice => "unknown_device",
            Reason::Unsigned => "unsigned",
            Reason::BadSignature => "bad_signature",
            Reason::UnauthorizedTopic => "unauthorized_topic",
            Reason::Replay => "replay",
            Reason::Stale => "stale",
            Reason::Future => "future",
            Reason::UnknownSignal => "unknown_signal",
            Reason::UnauthorizedSignal => "unauthorized_signal",
            Reason::WrongUnit => "wrong_unit",
            Reason::NotFinite => "not_finite",
            Reason::OutOfRange => "out_of_range",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a value may be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// Arrived without a verifiable signature (only where a source explicitly allows it).
    Untrusted,
    /// Signed by a registered device key and passed every integrity check.
    Verified,
}

/// Where a value came from and how it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub device: String,
    /// The channel it arrived on (the MQTT topic).
    pub channel: String,
    pub transport: String,
    pub signed: bool,
    pub seq: u64,
    pub received_ms: i64,
    pub trust: Trust,
}

/// An accepted value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub signal: String,
    pub t_ms: i64,
    pub value: f64,
    pub provenance: Arc<Provenance>,
}

/// A rejected frame or sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
    /// The claimed device, when the envelope was readable.
    pub device: Option<String>,
    /// The sample's signal for sample-level rejections.
    pub signal: Option<String>,
    /// Samples this rejection covers (the frame's count for frame-level rejections).
    pub samples: u64,
    /// True when the whole frame was rejected.
    pub whole_frame: bool,
}

/// The result of checking one frame.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: Vec<Sample>,
    pub rejected: Vec<Rejection>,
}

/// A registered edge device.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub key: VerifyingKey,
    pub asset: String,
}

/// Integrity limits. Clock skew tolerance is configured, never assumed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// A frame or sample older than this (by its timestamp) is stale.
    pub max_age_ms: i64,
    /// A timestamp ahead of our clock by more than this is refused.
    pub max_future_ms: i64,
    /// Sequence numbers older than the newest by this many are refused outright.
    pub replay_window: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_age_ms: 60_000,
            max_future_ms: 2_000,
            replay_window: 64,
        }
    }
}

/// Running totals, by reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub frames_accepted: u64,
    pub samples_accepted: u64,
    pub frames_rejected: BTreeMap<Reason, u64>,
    pub samples_rejected: BTreeMap<Reason, u64>,
}

/// Sliding replay window over sequence numbers (as in IPsec): the newest seen and a bitmap
/// of the `width` before it.
#[derive(Debug, Clone, Default)]
struct ReplayWindow {
    newest: Option<u64>,
    seen: u128,
}

impl ReplayWindow {
    /// Records `seq` if new; returns false for a replay or a sequence too old to judge.
    fn accept(&mut self, seq: u64, width: u64) -> bool {
        let width = width.clamp(1, 128);
        let Some(newest) = self.newest else {
            self.newest = Some(seq);
            self.seen = 1;
            return true;
        };
        if seq > newest {
            let shift = seq - newest;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.newest = Some(seq);
            true
        } else {
            let back = newest - seq;
            if back >= width {
                return false;
            }
            let bit = 1u128 << back;
            if self.seen & bit != 0 {
                return false;
            }
            self.seen |= bit;
            true
        }
    }
}

/// Checks frames against the device registry, the plant file and the integrity limits.
pub struct Verifier {
    plant: Arc<Plant>,
    devices: HashMap<String, Device>,
    config: IngestConfig,
    windows: HashMap<String, ReplayWindow>,
    counters: Counters,
}

impl Verifier {
    pub fn new(plant: Arc<Plant>, devices: Vec<Device>, config: IngestConfig) -> Verifier {
        Verifier {
            plant,
            devices: devices.into_iter().map(|d| (d.id.clone(), d)).collect(),
            config,
            windows: HashMap::new(),
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Checks one frame that arrived on `topic` at `now_ms`.
    pub fn check(&mut self, topic: &str, bytes: &[u8], now_ms: i64) -> Outcome {
        let mut out = Outcome::default();
        match self.check_frame(topic, bytes, now_ms, &mut out) {
            Ok(()) => self.counters.frames_accepted += 1,
            Err(rejection) => {
                *self
                    .counters
                    .frames_rejected
                    .entry(rejection.reason)
                    .or_default() += 1;
                out.rejected.push(rejection);
            }
        }
        self.counters.samples_accepted += out.accepted.len() as u64;
        for r in &out.rejected {
            *self.counters.samples_rejected.entry(r.reason).or_default() += r.samples;
        }
        out
    }

    fn check_frame(
        &mut self,
        topic: &str,
        bytes: &[u8],
        now_ms: i64,
        out: &mut Outcome,
    ) -> Result<(), Rejection> {
        let frame_err = |reason: Reason, detail: String, device: Option<&str>| Rejection {
            reason,
            detail,
            device: device.map(str::to_string),
            signal: None,
            samples: claimed_samples(bytes),
            whole_frame: true,
        };
        let env = Envelope::decode(bytes)
            .map_err(|e| frame_err(Reason::Malformed, e.to_string(), None))?;
        if env.kind != Kind::Telemetry {
            return Err(frame_err(
                Reason::Malformed,
                "not a telemetry envelope".into(),
                Some(env.signer),
            ));
        }
        let device = self.devices.get(env.signer).ok_or_else(|| {
            frame_err(
                Reason::UnknownDevice,
                format!("device {:?} is not in the registry", env.signer),
                Some(env.signer),
            )
        })?;
        env.verify(topic, &device.key).map_err(|e| match e {
            FrameError::Unsigned => frame_err(
                Reason::Unsigned,
                "unsigned frames are refused".into(),
                Some(env.signer),
            ),
            other => frame_err(
                Reason::BadSignature,
                format!("{other} with the registered key of {}", device.id),
                Some(env.signer),
            ),
        })?;
        let allowed_topic = self.plant.telemetry_topic(&device.asset);
        if topic != allowed_topic {
            return Err(frame_err(
                Reason::UnauthorizedTopic,
                format!("device {} may publish only on {allowed_topic}", device.id),
                Some(env.signer),
            ));
        }
        let body = TelemetryBody::parse(env.body)
            .map_err(|e| frame_err(Reason::Malformed, e.to_string(), Some(env.signer)))?;
        let window = self.windows.entry(device.id.clone()).or_default();
        if !window.accept(body.seq, self.config.replay_window) {
            return Err(frame_err(
                Reason::Replay,
                format!(
                    "sequence {} already seen or older than the window (newest {})",
                    body.seq,
                    window.newest.unwrap_or(0)
                ),
                Some(env.signer),
            ));
        }
        if now_ms - body.ts_ms > self.config.max_age_ms {
            return Err(frame_err(
                Reason::Stale,
                format!(
                    "frame is {} ms old, limit {}",
                    now_ms - body.ts_ms,
                    self.config.max_age_ms
                ),
                Some(env.signer),
            ));
        }
        if body.ts_ms - now_ms > self.config.max_future_ms {
            return Err(frame_err(
                Reason::Future,
                format!(
                    "frame is {} ms ahead of the clock, tolerance {}",
                    body.ts_ms - now_ms,
                    self.config.max_future_ms
                ),
                Some(env.signer),
            ));
        }
        let provenance = Arc::new(Provenance {
            device: device.id.clone(),
            channel: topic.to_string(),
            transport: "mqtt".into(),
            signed: true,
            seq: body.seq,
            received_ms: now_ms,
            trust: Trust::Verified,
        });
        for s in body.samples {
            match self.check_sample(device, &s, body.ts_ms, now_ms) {
                Ok(()) => out.accepted.push(Sample {
                    signal: s.signal,
                    t_ms: s.t_ms,
                    value: s.value,
                    provenance: provenance.clone(),
                }),
                Err((reason, detail)) => out.rejected.push(Rejection {
                    reason,
                    detail,
                    device: Some(device.id.clone()),
                    signal: Some(s.signal),
                    samples: 1,
                    whole_frame: false,
                }),
            }
        }
        Ok(())
    }

    fn check_sample(
        &self,
        device: &Device,
        s: &frames::WireSample,
        frame_ts: i64,
        now_ms: i64,
    ) -> Result<(), (Reason, String)> {
        let signal = self.plant.signal(&s.signal).ok_or_else(|| {
            (
                Reason::UnknownSignal,
                format!("signal {:?} is not in the plant file", s.signal),
            )
        })?;
        if signal.asset != device.asset {
            return Err((
                Reason::UnauthorizedSignal,
                format!(
                    "device {} may not publish {} (asset {})",
                    device.id, s.signal, signal.asset
                ),
            ));
        }
        if s.unit != signal.unit {
            return Err((
                Reason::WrongUnit,
                format!("{} in {:?}, expected {:?}", s.signal, s.unit, signal.unit),
            ));
        }
        if !s.value.is_finite() {
            return Err((
                Reason::NotFinite,
                format!("{} is not a finite number", s.signal),
            ));
        }
        if s.value < signal.range[0] || s.value > signal.range[1] {
            return Err((
                Reason::OutOfRange,
                format!(
                    "{} = {} outside the instrument range [{}, {}]",
                    s.signal, s.value, signal.range[0], signal.range[1]
                ),
            ));
        }
        if s.t_ms > frame_ts || now_ms - s.t_ms > self.config.max_age_ms {
            return Err((
                Reason::Stale,
                format!(
                    "{} sample time {} is after its frame or older than the freshness limit",
                    s.signal, s.t_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Sample count claimed by a frame's body, for counting rejections only (never trusted).
fn claimed_samples(bytes: &[u8]) -> u64 {
    Envelope::decode(bytes)
        .ok()
        .and_then(|e| TelemetryBody::parse(e.body).ok())
        .map_or(1, |b| (b.samples.len() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::ReplayWindow;

    #[test]
    fn replay_window_accepts_reordering_and_refuses_repeats() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(10, 64));
        assert!(w.accept(12, 64));
        assert!(w.accept(11, 64), "reordered within window");
        assert!(!w.accept(11, 64), "repeat");
        assert!(!w.accept(12, 64), "repeat of newest");
        assert!(w.accept(200, 64));
        assert!(!w.accept(100, 64), "older than the window");
        assert!(w.accept(150, 64));
    }
}
