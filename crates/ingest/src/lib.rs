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
//! [`mqtt`] is the MQTT source that feeds frames to the verifier; [`seal`] verifies their
//! signatures ahead of it, on a task of its own. This module does no I/O and reads no
//! clock: the time is an argument.

pub mod mqtt;
pub mod seal;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use frames::{Alg, Envelope, FrameError, Kind, TelemetryView};
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
    /// Sealed with a key outside its validity window (rotated out, or not yet valid).
    RetiredKey,
    Replay,
    Stale,
    Future,
    UnknownSignal,
    UnauthorizedSignal,
    WrongUnit,
    NotFinite,
    OutOfRange,
    /// The source marked the value bad or uncertain (an OPC UA status code).
    BadStatus,
    /// A value with the same timestamp as the last one of its signal (re-sent after a
    /// reconnect, for instance).
    Duplicate,
    /// Sparkplug: data from an edge node or device that is not born (or has died).
    NotBorn,
    /// Sparkplug: a sequence number other than the one expected (a message lost,
    /// reordered or injected); the node is asked to rebirth.
    Sequence,
    /// Sparkplug: a death certificate from an earlier session.
    StaleDeath,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnknownDevice => "unknown_device",
            Reason::Unsigned => "unsigned",
            Reason::BadSignature => "bad_signature",
            Reason::UnauthorizedTopic => "unauthorized_topic",
            Reason::RetiredKey => "retired_key",
            Reason::Replay => "replay",
            Reason::Stale => "stale",
            Reason::Future => "future",
            Reason::UnknownSignal => "unknown_signal",
            Reason::UnauthorizedSignal => "unauthorized_signal",
            Reason::WrongUnit => "wrong_unit",
            Reason::NotFinite => "not_finite",
            Reason::OutOfRange => "out_of_range",
            Reason::BadStatus => "bad_status",
            Reason::Duplicate => "duplicate",
            Reason::NotBorn => "not_born",
            Reason::Sequence => "sequence",
            Reason::StaleDeath => "stale_death",
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
    /// Arrived without a verifiable signature (only where a source explicitly allows it),
    /// or over a channel that authenticates nobody (OPC UA security mode None).
    Untrusted,
    /// Arrived over a channel that authenticates its origin (an OPC UA server with a trusted
    /// certificate, Sign or SignAndEncrypt), without a signature of the device's own.
    Channel,
    /// Signed by a registered device key and passed every integrity check.
    Verified,
}

/// Where a value came from and how it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The signing device.
    pub device: String,
    /// The channel it arrived on (the MQTT topic).
    pub channel: String,
    /// The protocol of the source (`mqtt`, ...).
    pub transport: String,
    /// The source it arrived through, and that source's zone and transport security.
    #[serde(default)]
    pub source: Option<Arc<SourceInfo>>,
    pub signed: bool,
    /// The envelope's seal (`ed25519`, `hmac_sha256`) and the id of the device key that
    /// verified it.
    #[serde(default)]
    pub seal: Option<String>,
    pub seq: u64,
    pub received_ms: i64,
    pub trust: Trust,
}

impl Provenance {
    /// A value from `device`, signed and verified, on a test channel: for the tests of
    /// what comes after ingest.
    #[cfg(feature = "test-util")]
    pub fn verified_for_test(device: &str) -> Provenance {
        Provenance {
            device: device.into(),
            channel: "test".into(),
            transport: "test".into(),
            source: None,
            signed: true,
            seal: None,
            seq: 0,
            received_ms: 0,
            trust: Trust::Verified,
        }
    }
}

/// A source of frames and how it is secured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub id: String,
    pub protocol: String,
    /// Transport security: `none`, `tls`, `mtls`, or an OPC UA mode and policy.
    pub security: String,
    /// SHA-256 thumbprint of the peer's certificate, when the transport has one.
    pub peer_certificate: Option<String>,
    /// The IEC 62443 zone the source belongs to.
    pub zone: Option<String>,
    /// Accept unsigned frames from registered devices, as untrusted values (legacy devices).
    #[serde(default)]
    pub allow_unsigned: bool,
    /// The transport authenticates the data's origin itself (OPC UA Sign/SignAndEncrypt
    /// with a trusted server certificate): its values are [`Trust::Channel`].
    #[serde(default)]
    pub authenticated: bool,
}

impl SourceInfo {
    /// An MQTT source without transport security (the embedded broker on loopback).
    pub fn mqtt_plain(id: &str) -> SourceInfo {
        SourceInfo {
            id: id.to_string(),
            protocol: "mqtt".into(),
            security: "none".into(),
            peer_certificate: None,
            zone: None,
            allow_unsigned: false,
            authenticated: false,
        }
    }
}

/// A value from a source that carries no device signature (OPC UA): as trusted as the
/// channel it came over.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelValue {
    pub signal: String,
    /// Where it was read (the OPC UA NodeId).
    pub channel: String,
    pub unit: String,
    pub value: Option<f64>,
    /// The source's own quality verdict, and its name (`Good`, `BadSensorFailure`, ...).
    pub good: bool,
    pub status: String,
    /// The source timestamp (else the server's); None when the source gave neither.
    pub t_ms: Option<i64>,
}

/// An accepted value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The signal's id, shared with the plant's index of signals (see
    /// [`Plant::signal_named`]): accepting a sample copies no string.
    pub signal: Arc<str>,
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

/// Key material of a device.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    Ed25519(VerifyingKey),
    /// Shared secret for HMAC-SHA256 (at least 32 bytes). Never printed.
    HmacSha256(Vec<u8>),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::Ed25519(k) => write!(f, "Ed25519({})", hex_short(k.as_bytes())),
            KeyMaterial::HmacSha256(_) => f.write_str("HmacSha256(<secret>)"),
        }
    }
}

fn hex_short(b: &[u8]) -> String {
    b.iter().take(6).map(|x| format!("{x:02x}")).collect()
}

/// One key of a device, with the window in which frames sealed with it are accepted
/// (by the frame's own timestamp). Rotation registers the new key and ends the old one's
/// window a little later, so that frames in flight during the switch are still accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    pub id: String,
    pub material: KeyMaterial,
    pub not_before_ms: Option<i64>,
    pub not_after_ms: Option<i64>,
}

impl DeviceKey {
    fn alg(&self) -> Alg {
        match self.material {
            KeyMaterial::Ed25519(_) => Alg::Ed25519,
            KeyMaterial::HmacSha256(_) => Alg::HmacSha256,
        }
    }

    fn valid_at(&self, t_ms: i64) -> bool {
        self.not_before_ms.is_none_or(|t| t_ms >= t) && self.not_after_ms.is_none_or(|t| t_ms <= t)
    }
}

/// A registered edge device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub asset: String,
    pub keys: Vec<DeviceKey>,
}

impl Device {
    /// A device with one Ed25519 key, valid forever.
    pub fn ed25519(id: &str, asset: &str, key: VerifyingKey) -> Device {
        Device {
            id: id.to_string(),
            asset: asset.to_string(),
            keys: vec![DeviceKey {
                id: format!("{id}#1"),
                material: KeyMaterial::Ed25519(key),
                not_before_ms: None,
                not_after_ms: None,
            }],
        }
    }
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

/// A frame whose seal, or whose source's allowance for unsigned frames, has been checked.
struct Sealed<'a> {
    source: &'a Arc<SourceInfo>,
    topic: &'a str,
    device: String,
    asset: String,
    /// Key of the replay window the frame's sequence number belongs to.
    window: String,
    trust: Trust,
    /// `alg:key-id` of the seal that verified; None for unsigned frames.
    seal: Option<String>,
}

/// The registered devices and their keys, as one verifier checks seals against them. A
/// registry never changes: a new list of devices makes a new one
/// ([`Verifier::set_devices`]), so that a seal verified ahead under one registry
/// ([`seal::SealedBatch`]) is never taken on trust under another.
#[derive(Debug, Default)]
pub struct Registry {
    devices: HashMap<String, Device>,
}

impl Registry {
    fn new(devices: Vec<Device>) -> Registry {
        Registry {
            devices: devices.into_iter().map(|d| (d.id.clone(), d)).collect(),
        }
    }

    fn device(&self, id: &str) -> Option<&Device> {
        self.devices.get(id)
    }
}

/// Checks frames against the device registry, the plant file and the integrity limits.
pub struct Verifier {
    plant: Arc<Plant>,
    /// The registry in force. `published` holds the same one; this copy spares every frame
    /// the watch channel's lock.
    registry: Arc<Registry>,
    /// Hands the current registry to the seal stages ([`Verifier::seal_stage`]).
    published: tokio::sync::watch::Sender<Arc<Registry>>,
    config: IngestConfig,
    windows: HashMap<String, ReplayWindow>,
    /// Newest time per (source, signal) of channel values, for ordering.
    channel_newest: HashMap<(String, String), i64>,
    counters: Counters,
}

impl Verifier {
    pub fn new(plant: Arc<Plant>, devices: Vec<Device>, config: IngestConfig) -> Verifier {
        let registry = Arc::new(Registry::new(devices));
        Verifier {
            plant,
            published: tokio::sync::watch::Sender::new(registry.clone()),
            registry,
            config,
            windows: HashMap::new(),
            channel_newest: HashMap::new(),
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The registered devices, by id.
    pub fn devices(&self) -> Vec<&Device> {
        let mut d: Vec<&Device> = self.registry.devices.values().collect();
        d.sort_by(|a, b| a.id.cmp(&b.id));
        d
    }

    pub fn device_count(&self) -> usize {
        self.registry.devices.len()
    }

    /// Replaces the registered devices (a key rotated or revoked, a device enrolled or
    /// removed) from the next frame on. Seals verified ahead under the previous registry
    /// are no longer trusted: those frames are verified again under this one. Replay
    /// windows stay, so a device's old frames cannot come back as new.
    pub fn set_devices(&mut self, devices: Vec<Device>) {
        self.registry = Arc::new(Registry::new(devices));
        self.published.send_replace(self.registry.clone());
    }

    /// Verifies the seals of `frames` here and now, as a seal stage would, for
    /// [`Verifier::check_sealed`].
    pub fn seal(&self, frames: Vec<mqtt::RawFrame>) -> seal::SealedBatch {
        seal::SealedBatch::new(self.registry.clone(), frames)
    }

    /// A seal stage that verifies frames' seals ahead of this verifier, on another task,
    /// against whatever registry this verifier has at the time.
    pub fn seal_stage(&self) -> seal::SealStage {
        seal::SealStage::new(self.published.subscribe())
    }

    /// Counts rejections decided outside the verifier (a Sparkplug host's refusals).
    pub fn record_rejected(&mut self, rejected: &[Rejection]) {
        for r in rejected {
            let map = if r.whole_frame {
                &mut self.counters.frames_rejected
            } else {
                &mut self.counters.samples_rejected
            };
            *map.entry(r.reason).or_default() += 1;
        }
    }

    /// Checks values from a source without device signatures (OPC UA), one by one: status,
    /// order per signal (a value older than the newest of its signal is a replay, one as
    /// old is a duplicate), then the same sample checks as for frames (known signal, unit,
    /// finite, instrument range, freshness, not in the future). A value without a
    /// timestamp is dated `now_ms`.
    pub fn check_values(
        &mut self,
        source: &Arc<SourceInfo>,
        values: Vec<ChannelValue>,
        now_ms: i64,
    ) -> Outcome {
        let trust = if source.authenticated {
            Trust::Channel
        } else {
            Trust::Untrusted
        };
        let mut out = Outcome::default();
        for v in values {
            let t_ms = v.t_ms.unwrap_or(now_ms);
            match self.check_channel_value(source, &v, t_ms, now_ms) {
                Ok((value, signal)) => out.accepted.push(Sample {
                    provenance: Arc::new(Provenance {
                        device: source.id.clone(),
                        channel: v.channel,
                        transport: source.protocol.clone(),
                        source: Some(source.clone()),
                        signed: false,
                        seal: None,
                        seq: 0,
                        received_ms: now_ms,
                        trust,
                    }),
                    signal,
                    t_ms,
                    value,
                }),
                Err((reason, detail)) => out.rejected.push(Rejection {
                    reason,
                    detail,
                    device: Some(source.id.clone()),
                    signal: Some(v.signal),
                    samples: 1,
                    whole_frame: false,
                }),
            }
        }
        self.counters.samples_accepted += out.accepted.len() as u64;
        for r in &out.rejected {
            *self.counters.samples_rejected.entry(r.reason).or_default() += 1;
        }
        out
    }

    fn check_channel_value(
        &mut self,
        source: &SourceInfo,
        v: &ChannelValue,
        t_ms: i64,
        now_ms: i64,
    ) -> Result<(f64, Arc<str>), (Reason, String)> {
        if !v.good {
            return Err((
                Reason::BadStatus,
                format!("{} at {} has status {}", v.signal, v.channel, v.status),
            ));
        }
        let value = v.value.ok_or_else(|| {
            (
                Reason::Malformed,
                format!("{} at {} is not a number", v.signal, v.channel),
            )
        })?;
        if t_ms - now_ms > self.config.max_future_ms {
            return Err((
                Reason::Future,
                format!(
                    "{} is {} ms ahead of the clock, tolerance {}",
                    v.signal,
                    t_ms - now_ms,
                    self.config.max_future_ms
                ),
            ));
        }
        let sample = frames::SampleView {
            signal: Cow::Borrowed(&v.signal),
            t_ms,
            value,
            unit: Cow::Borrowed(&v.unit),
        };
        let name = self.check_sample(None, &sample, t_ms, now_ms)?;
        let key = (source.id.clone(), v.signal.clone());
        if let Some(newest) = self.channel_newest.get(&key) {
            if t_ms < *newest {
                return Err((
                    Reason::Replay,
                    format!(
                        "{} at {t_ms} is older than the newest value of its signal ({newest})",
                        v.signal
                    ),
                ));
            }
            if t_ms == *newest {
                return Err((
                    Reason::Duplicate,
                    format!("{} at {t_ms} was already received", v.signal),
                ));
            }
        }
        self.channel_newest.insert(key, t_ms);
        Ok((value, name))
    }

    /// Checks one frame that arrived from `source` on `topic` at `now_ms`.
    pub fn check(
        &mut self,
        source: &Arc<SourceInfo>,
        topic: &str,
        bytes: &[u8],
        now_ms: i64,
    ) -> Outcome {
        self.check_one(source, topic, bytes, now_ms, seal::Seal::Unchecked)
    }

    /// Checks several frames, verifying their Ed25519 signatures in one batch first. If the
    /// batch fails (a bad signature among them), every frame is verified on its own, so the
    /// verdicts are exactly those of [`Verifier::check`].
    pub fn check_batch(
        &mut self,
        source: &Arc<SourceInfo>,
        frames: &[(String, Vec<u8>)],
        now_ms: i64,
    ) -> Vec<Outcome> {
        let seals = seal::seal_frames(
            &self.registry,
            frames.iter().map(|(t, b)| (t.as_str(), b.as_slice())),
        );
        frames
            .iter()
            .zip(seals)
            .map(|((topic, bytes), seal)| self.check_one(source, topic, bytes, now_ms, seal))
            .collect()
    }

    /// Checks a batch whose seals a [`seal::SealStage`] verified ahead. The stage's verdicts
    /// are taken only if it reached them under the registry this verifier holds now;
    /// otherwise (the registry changed in between) every frame is verified again. Returns
    /// each frame with its outcome, in the order they arrived.
    pub fn check_sealed(
        &mut self,
        source: &Arc<SourceInfo>,
        batch: seal::SealedBatch,
        now_ms: i64,
    ) -> Vec<(mqtt::RawFrame, Outcome)> {
        let current = Arc::ptr_eq(&batch.registry, &self.registry);
        batch
            .frames
            .into_iter()
            .zip(batch.seals)
            .map(|(f, seal)| {
                let seal = if current { seal } else { seal::Seal::Unchecked };
                let out = self.check_one(source, &f.topic, &f.payload, now_ms, seal);
                (f, out)
            })
            .collect()
    }

    fn check_one(
        &mut self,
        source: &Arc<SourceInfo>,
        topic: &str,
        bytes: &[u8],
        now_ms: i64,
        seal: seal::Seal,
    ) -> Outcome {
        let mut out = Outcome::default();
        match self.check_frame(source, topic, bytes, now_ms, seal, &mut out) {
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

    /// The index of the device key that verifies the envelope.
    pub(crate) fn verify_seal(
        env: &Envelope<'_>,
        topic: &str,
        device: &Device,
    ) -> Result<usize, FrameError> {
        if env.alg == Alg::None {
            return Err(FrameError::Unsigned);
        }
        let mut last = FrameError::BadSignature;
        for (k, key) in device
            .keys
            .iter()
            .enumerate()
            .filter(|(_, key)| key.alg() == env.alg)
        {
            let r = match &key.material {
                KeyMaterial::Ed25519(v) => env.verify(topic, v),
                KeyMaterial::HmacSha256(secret) => env.verify_hmac(topic, secret),
            };
            match r {
                Ok(()) => return Ok(k),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn check_frame(
        &mut self,
        source: &Arc<SourceInfo>,
        topic: &str,
        bytes: &[u8],
        now_ms: i64,
        seal: seal::Seal,
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
        let device = self.registry.device(env.signer).ok_or_else(|| {
            frame_err(
                Reason::UnknownDevice,
                format!("device {:?} is not in the registry", env.signer),
                Some(env.signer),
            )
        })?;
        // An unsigned frame is refused, unless its source allows them (legacy devices):
        // then it is checked like any other, its values are untrusted, and its sequence
        // numbers have a window of their own so that unauthenticated frames cannot push the
        // device's signed frames out as replays.
        let unsigned_allowed = env.alg == Alg::None && source.allow_unsigned;
        let key_index = match (unsigned_allowed, seal) {
            (true, _) => None,
            (false, seal) => Some(seal.or_verify(&env, topic, device).map_err(|e| match e {
                FrameError::Unsigned => frame_err(
                    Reason::Unsigned,
                    "unsigned frames are refused".into(),
                    Some(env.signer),
                ),
                other => frame_err(
                    Reason::BadSignature,
                    format!("{other} with the registered keys of {}", device.id),
                    Some(env.signer),
                ),
            })?),
        };
        let allowed_topic = self.plant.telemetry_topic(&device.asset);
        if topic != allowed_topic {
            return Err(frame_err(
                Reason::UnauthorizedTopic,
                format!("device {} may publish only on {allowed_topic}", device.id),
                Some(env.signer),
            ));
        }
        let body = TelemetryView::read(&env)
            .map_err(|e| frame_err(Reason::Malformed, e.to_string(), Some(env.signer)))?;
        let sealed = match key_index {
            None => Sealed {
                source,
                topic,
                device: device.id.clone(),
                asset: device.asset.clone(),
                window: format!("{}/unsigned", device.id),
                trust: Trust::Untrusted,
                seal: None,
            },
            Some(k) => {
                let Some(key) = device.keys.get(k) else {
                    return Err(frame_err(
                        Reason::BadSignature,
                        "no such key".into(),
                        Some(env.signer),
                    ));
                };
                if !key.valid_at(body.ts_ms) {
                    return Err(frame_err(
                        Reason::RetiredKey,
                        format!(
                            "key {} of {} is valid from {:?} to {:?}, the frame is dated {}",
                            key.id, device.id, key.not_before_ms, key.not_after_ms, body.ts_ms
                        ),
                        Some(env.signer),
                    ));
                }
                Sealed {
                    source,
                    topic,
                    device: device.id.clone(),
                    asset: device.asset.clone(),
                    window: device.id.clone(),
                    trust: Trust::Verified,
                    seal: Some(format!("{}:{}", alg_name(env.alg), key.id)),
                }
            }
        };
        self.accept_body(sealed, body, now_ms, out, &frame_err)
    }

    /// Replay window, freshness and the samples of a frame whose seal (or whose source's
    /// allowance for unsigned frames) has been checked.
    fn accept_body(
        &mut self,
        f: Sealed<'_>,
        body: TelemetryView<'_>,
        now_ms: i64,
        out: &mut Outcome,
        frame_err: &dyn Fn(Reason, String, Option<&str>) -> Rejection,
    ) -> Result<(), Rejection> {
        let window = self.windows.entry(f.window).or_default();
        if !window.accept(body.seq, self.config.replay_window) {
            return Err(frame_err(
                Reason::Replay,
                format!(
                    "sequence {} already seen or older than the window (newest {})",
                    body.seq,
                    window.newest.unwrap_or(0)
                ),
                Some(&f.device),
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
                Some(&f.device),
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
                Some(&f.device),
            ));
        }
        let provenance = Arc::new(Provenance {
            device: f.device.clone(),
            channel: f.topic.to_string(),
            transport: f.source.protocol.clone(),
            source: Some(f.source.clone()),
            signed: f.seal.is_some(),
            seal: f.seal,
            seq: body.seq,
            received_ms: now_ms,
            trust: f.trust,
        });
        out.accepted.reserve(body.samples.len());
        for s in body.samples {
            match self.check_sample(Some((&f.device, &f.asset)), &s, body.ts_ms, now_ms) {
                Ok(signal) => out.accepted.push(Sample {
                    signal,
                    t_ms: s.t_ms,
                    value: s.value,
                    provenance: provenance.clone(),
                }),
                Err((reason, detail)) => out.rejected.push(Rejection {
                    reason,
                    detail,
                    device: Some(f.device.clone()),
                    signal: Some(s.signal.into_owned()),
                    samples: 1,
                    whole_frame: false,
                }),
            }
        }
        Ok(())
    }

    /// `owner` is the frame's device and its asset; channel values have none (their
    /// mapping to signals is the operator's configuration).
    fn check_sample(
        &self,
        owner: Option<(&str, &str)>,
        s: &frames::SampleView<'_>,
        frame_ts: i64,
        now_ms: i64,
    ) -> Result<Arc<str>, (Reason, String)> {
        let (name, signal) = self.plant.signal_named(&s.signal).ok_or_else(|| {
            (
                Reason::UnknownSignal,
                format!("signal {:?} is not in the plant file", s.signal),
            )
        })?;
        if let Some((device, asset)) = owner
            && signal.asset != asset
        {
            return Err((
                Reason::UnauthorizedSignal,
                format!(
                    "device {} may not publish {} (asset {})",
                    device, s.signal, signal.asset
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
        let limit = signal
            .max_age_s
            .map_or(self.config.max_age_ms, |s| i64::from(s) * 1000);
        if s.t_ms > frame_ts || now_ms - s.t_ms > limit {
            return Err((
                Reason::Stale,
                format!(
                    "{} sample time {} is after its frame or older than its freshness limit of {limit} ms",
                    s.signal, s.t_ms
                ),
            ));
        }
        Ok(name)
    }
}

fn alg_name(a: Alg) -> &'static str {
    match a {
        Alg::None => "none",
        Alg::Ed25519 => "ed25519",
        Alg::HmacSha256 => "hmac_sha256",
    }
}

/// Sample count claimed by a frame's body, for counting rejections only (never trusted).
fn claimed_samples(bytes: &[u8]) -> u64 {
    Envelope::decode(bytes)
        .ok()
        .and_then(|e| TelemetryView::read(&e).ok())
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

    use super::{ChannelValue, IngestConfig, Reason, SourceInfo, Trust, Verifier};
    use std::sync::Arc;

    fn value(signal: &str, unit: &str, v: f64, t: i64) -> ChannelValue {
        ChannelValue {
            signal: signal.into(),
            channel: format!("ns=2;s={signal}"),
            unit: unit.into(),
            value: Some(v),
            good: true,
            status: "Good".into(),
            t_ms: Some(t),
        }
    }

    #[test]
    fn channel_values_are_checked_ordered_and_as_trusted_as_their_channel() {
        let plant = Arc::new(plant_model::Plant::reference());
        let mut v = Verifier::new(plant, vec![], IngestConfig::default());
        let mut src = SourceInfo::mqtt_plain("plc");
        src.protocol = "opcua".into();
        src.security = "SignAndEncrypt/Basic256Sha256".into();
        src.authenticated = true;
        let src = Arc::new(src);
        let now = 1_000_000;
        let mut bad = value("tank.level", "m", 1.0, now - 500);
        bad.good = false;
        bad.status = "BadSensorFailure".into();
        let out = v.check_values(
            &src,
            vec![
                value("tank.level", "m", 1.0, now - 2000),
                value("tank.level", "m", 1.1, now - 1000),
                value("tank.level", "m", 1.2, now - 1500),
                value("tank.level", "m", 1.3, now - 1000),
                value("tank.level", "ft", 3.0, now - 900),
                value("no.such", "m", 1.0, now - 900),
                value("tank.level", "m", 1.0, now + 60_000),
                value("tank.level", "m", 1.0, now - 600_000),
                bad,
            ],
            now,
        );
        assert_eq!(out.accepted.len(), 2);
        assert!(
            out.accepted
                .iter()
                .all(|s| s.provenance.trust == Trust::Channel)
        );
        assert_eq!(out.accepted[0].provenance.channel, "ns=2;s=tank.level");
        let reasons: Vec<Reason> = out.rejected.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            vec![
                Reason::Replay,
                Reason::Duplicate,
                Reason::WrongUnit,
                Reason::UnknownSignal,
                Reason::Future,
                Reason::Stale,
                Reason::BadStatus,
            ]
        );
        assert_eq!(v.counters().samples_rejected.values().sum::<u64>(), 7);
        // The same values over a channel that authenticates nobody are untrusted.
        let mut open = (*src).clone();
        open.id = "plc2".into();
        open.authenticated = false;
        let out = v.check_values(
            &Arc::new(open),
            vec![value("tank.level", "m", 1.0, now)],
            now,
        );
        assert_eq!(out.accepted[0].provenance.trust, Trust::Untrusted);
    }
}
