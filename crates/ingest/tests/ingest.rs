//! Every integrity check of the ingest stage, one rejection reason at a time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use frames::{Kind, TelemetryBody, WireSample, encode, to_body};
use ingest::{Device, IngestConfig, Reason, Trust, Verifier};
use plant_model::Plant;

const NOW: i64 = 1_767_225_600_000;

struct Fixture {
    plant: Arc<Plant>,
    key: SigningKey,
    verifier: Verifier,
}

fn fixture() -> Fixture {
    let plant = Arc::new(Plant::reference());
    let key = SigningKey::from_bytes(&[1u8; 32]);
    let verifier = Verifier::new(
        plant.clone(),
        vec![Device {
            id: "gw-tank".into(),
            key: key.verifying_key(),
            asset: "tank".into(),
        }],
        IngestConfig::default(),
    );
    Fixture {
        plant,
        key,
        verifier,
    }
}

fn sample(signal: &str, value: f64, unit: &str) -> WireSample {
    WireSample {
        signal: signal.into(),
        t_ms: NOW,
        value,
        unit: unit.into(),
    }
}

fn frame(
    f: &Fixture,
    seq: u64,
    ts: i64,
    samples: Vec<WireSample>,
    key: Option<&SigningKey>,
) -> (String, Vec<u8>) {
    let topic = f.plant.telemetry_topic("tank");
    let body = to_body(&TelemetryBody {
        seq,
        ts_ms: ts,
        samples,
    });
    let bytes = encode(Kind::Telemetry, &topic, "gw-tank", &body, key).unwrap();
    (topic, bytes)
}

fn level(v: f64) -> Vec<WireSample> {
    vec![sample("tank.level", v, "m")]
}

#[test]
fn valid_frame_is_accepted_with_provenance() {
    let mut f = fixture();
    let (topic, bytes) = frame(&f, 1, NOW, level(1.5), Some(&f.key.clone()));
    let out = f.verifier.check(&topic, &bytes, NOW);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    let s = &out.accepted[0];
    assert_eq!(s.value, 1.5);
    assert_eq!(s.provenance.device, "gw-tank");
    assert_eq!(s.provenance.channel, topic);
    assert!(s.provenance.signed);
    assert_eq!(s.provenance.trust, Trust::Verified);
}

fn reason_of(f: &mut Fixture, topic: &str, bytes: &[u8], now: i64) -> Reason {
    let out = f.verifier.check(topic, bytes, now);
    assert!(out.accepted.is_empty(), "accepted {:?}", out.accepted);
    out.rejected[0].reason
}

#[test]
fn frame_level_rejections() {
    let mut f = fixture();
    let k = f.key.clone();
    let forger = SigningKey::from_bytes(&[9u8; 32]);
    let (t, b) = frame(&f, 1, NOW, level(1.5), Some(&forger));
    assert_eq!(reason_of(&mut f, &t, &b, NOW), Reason::BadSignature);
    let (t, b) = frame(&f, 2, NOW, level(1.5), None);
    assert_eq!(reason_of(&mut f, &t, &b, NOW), Reason::Unsigned);
    assert_eq!(
        reason_of(&mut f, &t, b"\x00garbage", NOW),
        Reason::Malformed
    );
    let rogue = encode(Kind::Telemetry, &t, "gw-rogue", b"{}", Some(&forger)).unwrap();
    assert_eq!(reason_of(&mut f, &t, &rogue, NOW), Reason::UnknownDevice);
    // Valid device signing for another asset's topic.
    let other = f.plant.telemetry_topic("pump");
    let body = to_body(&TelemetryBody {
        seq: 3,
        ts_ms: NOW,
        samples: level(1.5),
    });
    let b = encode(Kind::Telemetry, &other, "gw-tank", &body, Some(&k)).unwrap();
    assert_eq!(
        reason_of(&mut f, &other, &b, NOW),
        Reason::UnauthorizedTopic
    );
    // Stale and future.
    let (t, b) = frame(&f, 4, NOW - 120_000, level(1.5), Some(&k));
    assert_eq!(reason_of(&mut f, &t, &b, NOW), Reason::Stale);
    let (t, b) = frame(&f, 5, NOW + 60_000, level(1.5), Some(&k));
    assert_eq!(reason_of(&mut f, &t, &b, NOW), Reason::Future);
    let c = f.verifier.counters().clone();
    assert_eq!(c.frames_accepted, 0);
    assert_eq!(c.frames_rejected.values().sum::<u64>(), 7);
}

#[test]
fn replayed_frame_is_refused_even_when_fresh() {
    let mut f = fixture();
    let k = f.key.clone();
    let (t, b) = frame(&f, 10, NOW, level(1.5), Some(&k));
    assert!(f.verifier.check(&t, &b, NOW).rejected.is_empty());
    assert_eq!(reason_of(&mut f, &t, &b, NOW), Reason::Replay);
    let (t2, b2) = frame(&f, 200, NOW, level(1.5), Some(&k));
    assert!(f.verifier.check(&t2, &b2, NOW).rejected.is_empty());
    assert_eq!(
        reason_of(&mut f, &t, &b, NOW),
        Reason::Replay,
        "older than the window"
    );
}

#[test]
fn forged_frames_do_not_advance_the_replay_window() {
    let mut f = fixture();
    let k = f.key.clone();
    let forger = SigningKey::from_bytes(&[9u8; 32]);
    let (t, b) = frame(&f, 1_000_000, NOW, level(1.5), Some(&forger));
    assert_eq!(reason_of(&mut f, &t, &b, NOW), Reason::BadSignature);
    let (t, b) = frame(&f, 1, NOW, level(1.5), Some(&k));
    assert!(f.verifier.check(&t, &b, NOW).rejected.is_empty());
}

#[test]
fn sample_level_rejections_keep_the_good_samples() {
    let mut f = fixture();
    let k = f.key.clone();
    let samples = vec![
        sample("tank.level", 1.5, "m"),
        sample("tank.level", 1.5, "ft"),
        sample("tank.level", 99.0, "m"),
        sample("tank.levle", 1.0, "m"),
        sample("pump.flow", 10.0, "m3/h"),
        sample("tank.inflow", 12.0, "m3/h"),
    ];
    let (t, b) = frame(&f, 1, NOW, samples, Some(&k));
    let out = f.verifier.check(&t, &b, NOW);
    assert_eq!(out.accepted.len(), 2);
    let reasons: Vec<Reason> = out.rejected.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        vec![
            Reason::WrongUnit,
            Reason::OutOfRange,
            Reason::UnknownSignal,
            Reason::UnauthorizedSignal
        ]
    );
    assert!(
        out.rejected[1].detail.contains("99"),
        "{}",
        out.rejected[1].detail
    );
    let c = f.verifier.counters();
    assert_eq!(c.samples_accepted, 2);
    assert_eq!(c.samples_rejected.values().sum::<u64>(), 4);
}

#[test]
fn json_cannot_smuggle_non_numbers() {
    // JSON has no NaN: a publisher that writes null (as serde does for NaN) sends a
    // malformed frame, rejected whole.
    let mut f = fixture();
    let k = f.key.clone();
    let (t, b) = frame(
        &f,
        1,
        NOW,
        vec![sample("tank.inflow", f64::NAN, "m3/h")],
        Some(&k),
    );
    assert_eq!(reason_of(&mut f, &t, &b, NOW), Reason::Malformed);
}
