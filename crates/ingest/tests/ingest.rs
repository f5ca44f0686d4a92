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
use frames::{
    BodyEncoding, Kind, Seal, TelemetryBody, WireSample, encode, encode_body, encode_sealed,
    encode_telemetry, to_body,
};
use ingest::mqtt::RawFrame;
use ingest::{Device, DeviceKey, IngestConfig, KeyMaterial, Reason, SourceInfo, Trust, Verifier};
use plant_model::Plant;

const NOW: i64 = 1_767_225_600_000;

struct Fixture {
    plant: Arc<Plant>,
    key: SigningKey,
    verifier: Verifier,
    src: Arc<SourceInfo>,
}

fn fixture() -> Fixture {
    let plant = Arc::new(Plant::reference());
    let key = SigningKey::from_bytes(&[1u8; 32]);
    let verifier = Verifier::new(
        plant.clone(),
        vec![Device::ed25519("gw-tank", "tank", key.verifying_key())],
        IngestConfig::default(),
    );
    Fixture {
        plant,
        key,
        verifier,
        src: Arc::new(SourceInfo::mqtt_plain("test-source")),
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

/// A tank frame of `samples` from gw-tank, its body in `encoding`.
fn frame_in(
    f: &Fixture,
    seq: u64,
    ts: i64,
    samples: Vec<WireSample>,
    seal: Seal<'_>,
    encoding: BodyEncoding,
) -> (String, Vec<u8>) {
    let topic = f.plant.telemetry_topic("tank");
    let body = TelemetryBody {
        seq,
        ts_ms: ts,
        samples,
    };
    let bytes = encode_telemetry(&topic, "gw-tank", &body, encoding, seal).unwrap();
    (topic, bytes)
}

/// A tank frame with a JSON body, signed with `key` or unsigned.
fn frame(
    f: &Fixture,
    seq: u64,
    ts: i64,
    samples: Vec<WireSample>,
    key: Option<&SigningKey>,
) -> (String, Vec<u8>) {
    let seal = key.map_or(Seal::None, Seal::Ed25519);
    frame_in(f, seq, ts, samples, seal, BodyEncoding::Json)
}

/// The same frame with the binary body (envelope version 2).
fn binary_frame(
    f: &Fixture,
    seq: u64,
    ts: i64,
    samples: Vec<WireSample>,
    key: &SigningKey,
) -> (String, Vec<u8>) {
    frame_in(
        f,
        seq,
        ts,
        samples,
        Seal::Ed25519(key),
        BodyEncoding::Binary,
    )
}

fn level(v: f64) -> Vec<WireSample> {
    vec![sample("tank.level", v, "m")]
}

#[test]
fn valid_frame_is_accepted_with_provenance() {
    let mut f = fixture();
    let (topic, bytes) = frame(&f, 1, NOW, level(1.5), Some(&f.key.clone()));
    let out = f.verifier.check(&f.src, &topic, &bytes, NOW);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    let s = &out.accepted[0];
    assert_eq!(s.value, 1.5);
    assert_eq!(s.provenance.device, "gw-tank");
    assert_eq!(s.provenance.channel, topic);
    assert!(s.provenance.signed);
    assert_eq!(s.provenance.trust, Trust::Verified);
}

fn reason_of(f: &mut Fixture, topic: &str, bytes: &[u8], now: i64) -> Reason {
    let out = f.verifier.check(&f.src, topic, bytes, now);
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
    assert!(f.verifier.check(&f.src, &t, &b, NOW).rejected.is_empty());
    assert_eq!(reason_of(&mut f, &t, &b, NOW), Reason::Replay);
    let (t2, b2) = frame(&f, 200, NOW, level(1.5), Some(&k));
    assert!(f.verifier.check(&f.src, &t2, &b2, NOW).rejected.is_empty());
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
    assert!(f.verifier.check(&f.src, &t, &b, NOW).rejected.is_empty());
}

/// Two good samples among one of each sample-level fault: wrong unit, out of range,
/// unknown signal, another asset's signal.
fn mixed_samples() -> Vec<WireSample> {
    vec![
        sample("tank.level", 1.5, "m"),
        sample("tank.level", 1.5, "ft"),
        sample("tank.level", 99.0, "m"),
        sample("tank.levle", 1.0, "m"),
        sample("pump.flow", 10.0, "m3/h"),
        sample("tank.inflow", 12.0, "m3/h"),
    ]
}

#[test]
fn sample_level_rejections_keep_the_good_samples() {
    let mut f = fixture();
    let k = f.key.clone();
    let samples = mixed_samples();
    let (t, b) = frame(&f, 1, NOW, samples, Some(&k));
    let out = f.verifier.check(&f.src, &t, &b, NOW);
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

/// A binary body gets the verdicts a JSON body gets, sample by sample; the values JSON
/// cannot carry arrive and are refused as not finite, the other samples kept.
#[test]
fn binary_bodies_are_checked_like_json_bodies() {
    let mut f = fixture();
    let k = f.key.clone();
    let samples = mixed_samples();
    let (t, json) = frame(&f, 1, NOW, samples.clone(), Some(&k));
    let (_, bin) = binary_frame(&f, 2, NOW, samples, &k);
    let a = f.verifier.check(&f.src, &t, &json, NOW);
    let b = f.verifier.check(&f.src, &t, &bin, NOW);
    let reasons = |o: &ingest::Outcome| o.rejected.iter().map(|r| r.reason).collect::<Vec<_>>();
    assert_eq!(reasons(&a), reasons(&b));
    assert_eq!(b.accepted.len(), 2);
    assert_eq!(
        b.accepted.iter().map(|s| s.value).collect::<Vec<_>>(),
        vec![1.5, 12.0]
    );
    // Replay and signature checks are the same too: the seq was taken, a forger's seal
    // does not verify.
    assert_eq!(reason_of(&mut f, &t, &bin, NOW), Reason::Replay);
    let forger = SigningKey::from_bytes(&[9u8; 32]);
    let (_, forged) = binary_frame(&f, 3, NOW, level(1.5), &forger);
    assert_eq!(reason_of(&mut f, &t, &forged, NOW), Reason::BadSignature);
    let (_, nan) = binary_frame(
        &f,
        4,
        NOW,
        vec![
            sample("tank.inflow", f64::NAN, "m3/h"),
            sample("tank.level", f64::INFINITY, "m"),
            sample("tank.level", 1.25, "m"),
        ],
        &k,
    );
    let out = f.verifier.check(&f.src, &t, &nan, NOW);
    assert_eq!(reasons(&out), vec![Reason::NotFinite, Reason::NotFinite]);
    assert_eq!(out.accepted.len(), 1);
    // A body that is not the binary layout is malformed, after its signature verified.
    let json_body = to_body(&TelemetryBody {
        seq: 5,
        ts_ms: NOW,
        samples: level(1.5),
    });
    let relabelled = encode_body(
        Kind::Telemetry,
        BodyEncoding::Binary,
        &t,
        "gw-tank",
        &json_body,
        Seal::Ed25519(&k),
    )
    .unwrap();
    assert_eq!(reason_of(&mut f, &t, &relabelled, NOW), Reason::Malformed);
}

#[test]
fn provenance_names_source_seal_and_key() {
    let mut f = fixture();
    let k = f.key.clone();
    let (t, b) = frame(&f, 1, NOW, level(1.5), Some(&k));
    let out = f.verifier.check(&f.src, &t, &b, NOW);
    let p = &out.accepted[0].provenance;
    assert_eq!(p.source.as_ref().unwrap().id, "test-source");
    assert_eq!(p.seal.as_deref(), Some("ed25519:gw-tank#1"));
}

fn rotated_device(old: &SigningKey, new: &SigningKey, switch: i64, overlap: i64) -> Device {
    Device {
        id: "gw-tank".into(),
        asset: "tank".into(),
        keys: vec![
            DeviceKey {
                id: "old".into(),
                material: KeyMaterial::Ed25519(old.verifying_key()),
                not_before_ms: None,
                not_after_ms: Some(switch + overlap),
            },
            DeviceKey {
                id: "new".into(),
                material: KeyMaterial::Ed25519(new.verifying_key()),
                not_before_ms: Some(switch),
                not_after_ms: None,
            },
        ],
    }
}

#[test]
fn key_rotation_overlaps_then_retires_the_old_key() {
    let plant = Arc::new(Plant::reference());
    let old = SigningKey::from_bytes(&[1u8; 32]);
    let new = SigningKey::from_bytes(&[2u8; 32]);
    let switch = NOW;
    let overlap = 60_000;
    let mut v = Verifier::new(
        plant.clone(),
        vec![rotated_device(&old, &new, switch, overlap)],
        IngestConfig::default(),
    );
    let src = Arc::new(SourceInfo::mqtt_plain("s"));
    let topic = plant.telemetry_topic("tank");
    let mk = |seq: u64, ts: i64, key: &SigningKey| {
        let body = to_body(&TelemetryBody {
            seq,
            ts_ms: ts,
            samples: vec![WireSample {
                signal: "tank.level".into(),
                t_ms: ts,
                value: 1.5,
                unit: "m".into(),
            }],
        });
        encode(Kind::Telemetry, &topic, "gw-tank", &body, Some(key)).unwrap()
    };
    // Before the switch only the old key is valid; in the overlap both; after it only the new.
    assert!(
        v.check(&src, &topic, &mk(1, switch - 1000, &old), switch - 1000)
            .rejected
            .is_empty()
    );
    assert_eq!(
        v.check(&src, &topic, &mk(2, switch - 1000, &new), switch - 1000)
            .rejected[0]
            .reason,
        Reason::RetiredKey
    );
    assert!(
        v.check(&src, &topic, &mk(3, switch + 1000, &old), switch + 1000)
            .rejected
            .is_empty()
    );
    assert!(
        v.check(&src, &topic, &mk(4, switch + 2000, &new), switch + 2000)
            .rejected
            .is_empty()
    );
    let late = switch + overlap + 1000;
    let out = v.check(&src, &topic, &mk(5, late, &old), late);
    assert_eq!(
        out.rejected[0].reason,
        Reason::RetiredKey,
        "{:?}",
        out.rejected
    );
    assert!(out.rejected[0].detail.contains("old"));
    assert!(
        v.check(&src, &topic, &mk(6, late, &new), late)
            .rejected
            .is_empty()
    );
}

#[test]
fn hmac_sealed_frames_from_constrained_devices() {
    let plant = Arc::new(Plant::reference());
    let secret = vec![7u8; 32];
    let dev = Device {
        id: "gw-tank".into(),
        asset: "tank".into(),
        keys: vec![DeviceKey {
            id: "h1".into(),
            material: KeyMaterial::HmacSha256(secret.clone()),
            not_before_ms: None,
            not_after_ms: None,
        }],
    };
    assert!(
        !format!("{dev:?}").contains("07070707"),
        "secrets are not printed"
    );
    let mut v = Verifier::new(plant.clone(), vec![dev], IngestConfig::default());
    let src = Arc::new(SourceInfo::mqtt_plain("s"));
    let topic = plant.telemetry_topic("tank");
    let body = to_body(&TelemetryBody {
        seq: 1,
        ts_ms: NOW,
        samples: level(1.5),
    });
    let good = encode_sealed(
        Kind::Telemetry,
        &topic,
        "gw-tank",
        &body,
        Seal::HmacSha256(&secret),
    )
    .unwrap();
    let out = v.check(&src, &topic, &good, NOW);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(
        out.accepted[0].provenance.seal.as_deref(),
        Some("hmac_sha256:h1")
    );
    let body = to_body(&TelemetryBody {
        seq: 2,
        ts_ms: NOW,
        samples: level(1.5),
    });
    let wrong = encode_sealed(
        Kind::Telemetry,
        &topic,
        "gw-tank",
        &body,
        Seal::HmacSha256(&[8u8; 32]),
    )
    .unwrap();
    assert_eq!(
        v.check(&src, &topic, &wrong, NOW).rejected[0].reason,
        Reason::BadSignature
    );
    // An Ed25519 frame for a device that only has an HMAC secret does not verify either.
    let ed = encode(
        Kind::Telemetry,
        &topic,
        "gw-tank",
        &body,
        Some(&SigningKey::from_bytes(&[1u8; 32])),
    )
    .unwrap();
    assert_eq!(
        v.check(&src, &topic, &ed, NOW).rejected[0].reason,
        Reason::BadSignature
    );
    assert!(
        encode_sealed(
            Kind::Telemetry,
            &topic,
            "gw-tank",
            &body,
            Seal::HmacSha256(&[1u8; 16])
        )
        .is_err(),
        "short secrets are refused"
    );
}

#[test]
fn per_signal_freshness_is_tighter_than_the_frame_limit() {
    let text = plant_model::REFERENCE_PLANT.replacen(
        "stuck_after_s = 120",
        "stuck_after_s = 120\nmax_age_s = 5",
        1,
    );
    let plant = Arc::new(Plant::parse(&text, "p").unwrap());
    let key = SigningKey::from_bytes(&[1u8; 32]);
    let mut v = Verifier::new(
        plant.clone(),
        vec![Device::ed25519("gw-tank", "tank", key.verifying_key())],
        IngestConfig::default(),
    );
    let src = Arc::new(SourceInfo::mqtt_plain("s"));
    let topic = plant.telemetry_topic("tank");
    let t = NOW - 10_000;
    let body = to_body(&TelemetryBody {
        seq: 1,
        ts_ms: t,
        samples: vec![
            WireSample {
                signal: "tank.level".into(),
                t_ms: t,
                value: 1.5,
                unit: "m".into(),
            },
            WireSample {
                signal: "tank.inflow".into(),
                t_ms: t,
                value: 12.0,
                unit: "m3/h".into(),
            },
        ],
    });
    let b = encode(Kind::Telemetry, &topic, "gw-tank", &body, Some(&key)).unwrap();
    let out = v.check(&src, &topic, &b, NOW);
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(&*out.accepted[0].signal, "tank.inflow");
    assert_eq!(out.rejected[0].reason, Reason::Stale);
    assert_eq!(out.rejected[0].signal.as_deref(), Some("tank.level"));
}

proptest::proptest! {
    /// Batch verification gives exactly the verdicts of checking frames one by one.
    #[test]
    fn batch_verdicts_equal_single_verdicts(kinds in proptest::collection::vec(0u8..6, 1..20)) {
        let f = fixture();
        let forger = SigningKey::from_bytes(&[9u8; 32]);
        let frames: Vec<(String, Vec<u8>)> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let seq = (i as u64 % 7) + 1; // repeats make replays
                match k {
                    0 | 1 => frame(&f, seq, NOW, level(1.5), Some(&f.key)),
                    2 => frame(&f, seq, NOW, level(1.5), Some(&forger)),
                    3 => frame(&f, seq, NOW, level(99.0), Some(&f.key)),
                    4 => binary_frame(&f, seq, NOW, level(1.5), &f.key),
                    _ => binary_frame(&f, seq, NOW, level(1.5), &forger),
                }
            })
            .collect();
        let mut single = fixture();
        let mut batched = fixture();
        let one: Vec<Vec<Reason>> = frames.iter().map(|(t, b)| single.verifier.check(&single.src, t, b, NOW).rejected.iter().map(|r| r.reason).collect()).collect();
        let src = batched.src.clone();
        let many: Vec<Vec<Reason>> = batched.verifier.check_batch(&src, &frames, NOW).iter().map(|o| o.rejected.iter().map(|r| r.reason).collect()).collect();
        proptest::prop_assert_eq!(&one, &many);
        proptest::prop_assert_eq!(single.verifier.counters().samples_accepted, batched.verifier.counters().samples_accepted);
        // So does the seal stage ahead of the verifier, with the frames in the same order.
        let mut staged = fixture();
        let sealed = staged.verifier.seal_stage().seal(raw(&frames));
        let src = staged.src.clone();
        let checked = staged.verifier.check_sealed(&src, sealed, NOW);
        let topics: Vec<&[u8]> = checked.iter().map(|(f, _)| f.payload.as_slice()).collect();
        let sent: Vec<&[u8]> = frames.iter().map(|(_, b)| b.as_slice()).collect();
        proptest::prop_assert_eq!(topics, sent);
        let staged_reasons: Vec<Vec<Reason>> = checked.iter().map(|(_, o)| o.rejected.iter().map(|r| r.reason).collect()).collect();
        proptest::prop_assert_eq!(one, staged_reasons);
        proptest::prop_assert_eq!(single.verifier.counters().samples_accepted, staged.verifier.counters().samples_accepted);
    }
}

fn raw(frames: &[(String, Vec<u8>)]) -> Vec<RawFrame> {
    frames
        .iter()
        .map(|(topic, payload)| RawFrame {
            topic: topic.clone(),
            payload: payload.clone(),
        })
        .collect()
}

fn reasons(checked: &[(RawFrame, ingest::Outcome)]) -> Vec<Option<Reason>> {
    checked
        .iter()
        .map(|(_, o)| o.rejected.first().map(|r| r.reason))
        .collect()
}

/// A device rotated or revoked between the seal stage and the verifier: the stage's
/// verdicts were reached under the old registry, so the verifier verifies again under the
/// new one, in both directions.
#[test]
fn seals_verified_before_the_registry_changed_are_verified_again() {
    let mut f = fixture();
    let old = f.key.clone();
    let new = SigningKey::from_bytes(&[2u8; 32]);
    let stage = f.verifier.seal_stage();
    let by_old: Vec<_> = (1..=3)
        .map(|seq| frame(&f, seq, NOW, level(1.5), Some(&old)))
        .collect();
    let by_new: Vec<_> = (4..=6)
        .map(|seq| frame(&f, seq, NOW, level(1.5), Some(&new)))
        .collect();
    // Sealed under the registry that knows only the old key.
    let old_sealed = stage.seal(raw(&by_old));
    let new_sealed = stage.seal(raw(&by_new));

    // Rotated in flight, with an overlap: the old key's frames are verified again and
    // still accepted (named by the key that verified them), the new key's frames, which
    // the stage refused, are verified again and accepted.
    f.verifier
        .set_devices(vec![rotated_device(&old, &new, NOW - 1000, 60_000)]);
    let src = f.src.clone();
    let out = f.verifier.check_sealed(&src, old_sealed, NOW);
    assert_eq!(reasons(&out), vec![None, None, None]);
    assert_eq!(
        out[0].1.accepted[0].provenance.seal.as_deref(),
        Some("ed25519:old")
    );
    let out = f.verifier.check_sealed(&src, new_sealed, NOW);
    assert_eq!(reasons(&out), vec![None, None, None]);
    assert_eq!(
        out[0].1.accepted[0].provenance.seal.as_deref(),
        Some("ed25519:new")
    );

    // Revoked in flight: sealed (and verified) while the old key was registered, checked
    // after it was removed.
    let late: Vec<_> = (7..=8)
        .map(|seq| frame(&f, seq, NOW, level(1.5), Some(&old)))
        .collect();
    let sealed = stage.seal(raw(&late));
    f.verifier.set_devices(vec![Device::ed25519(
        "gw-tank",
        "tank",
        new.verifying_key(),
    )]);
    let out = f.verifier.check_sealed(&src, sealed, NOW);
    assert_eq!(
        reasons(&out),
        vec![Some(Reason::BadSignature), Some(Reason::BadSignature)]
    );
    // The device removed altogether.
    let sealed = stage.seal(raw(&[frame(&f, 9, NOW, level(1.5), Some(&new))]));
    f.verifier.set_devices(vec![]);
    let out = f.verifier.check_sealed(&src, sealed, NOW);
    assert_eq!(reasons(&out), vec![Some(Reason::UnknownDevice)]);
    // A stage made before a change seals later batches under the new registry.
    f.verifier.set_devices(vec![Device::ed25519(
        "gw-tank",
        "tank",
        new.verifying_key(),
    )]);
    let sealed = stage.seal(raw(&[frame(&f, 10, NOW, level(1.5), Some(&new))]));
    let out = f.verifier.check_sealed(&src, sealed, NOW);
    assert_eq!(reasons(&out), vec![None]);
}

/// Verdicts reached by another verifier's stage, under a registry with the forger's key,
/// are not taken on trust.
#[test]
fn seals_from_another_registry_are_not_trusted() {
    let mut f = fixture();
    let forger = SigningKey::from_bytes(&[9u8; 32]);
    let other = Verifier::new(
        f.plant.clone(),
        vec![Device::ed25519("gw-tank", "tank", forger.verifying_key())],
        IngestConfig::default(),
    );
    let forged: Vec<_> = (1..=3)
        .map(|seq| frame(&f, seq, NOW, level(1.5), Some(&forger)))
        .collect();
    let sealed = other.seal_stage().seal(raw(&forged));
    let src = f.src.clone();
    let out = f.verifier.check_sealed(&src, sealed, NOW);
    assert_eq!(reasons(&out), vec![Some(Reason::BadSignature); 3]);
    assert_eq!(f.verifier.counters().frames_accepted, 0);
}

/// The stage task hands on every frame in order, and when told to finish it seals what is
/// already queued, refuses new frames and ends.
#[tokio::test]
async fn the_seal_stage_keeps_order_and_finishes_what_is_queued() {
    let mut f = fixture();
    let frames: Vec<_> = (1..=200)
        .map(|seq| frame(&f, seq, NOW, level(1.5), Some(&f.key)))
        .collect();
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(1024);
    for r in raw(&frames) {
        in_tx.send(r).await.unwrap();
    }
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(2);
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel();
    let stage = tokio::spawn(ingest::seal::run(
        f.verifier.seal_stage(),
        in_rx,
        out_tx,
        finish_rx,
        64,
    ));
    // The first batch is sealed before finish; the rest were queued before it.
    let first = out_rx.recv().await.unwrap();
    assert!(!first.is_empty() && first.len() <= 64);
    finish_tx.send(()).unwrap();
    let mut batches = vec![first];
    while let Some(b) = out_rx.recv().await {
        batches.push(b);
    }
    stage.await.unwrap();
    assert!(in_tx.send(raw(&frames[..1])[0].clone()).await.is_err());
    let src = f.src.clone();
    let mut seqs = Vec::new();
    for b in batches {
        for (_, out) in f.verifier.check_sealed(&src, b, NOW) {
            assert!(out.rejected.is_empty(), "{:?}", out.rejected);
            seqs.push(out.accepted[0].provenance.seq);
        }
    }
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
}

#[test]
fn unsigned_frames_from_an_allowing_source_are_untrusted_and_cannot_push_out_signed_ones() {
    let mut f = fixture();
    let k = f.key.clone();
    let mut legacy = SourceInfo::mqtt_plain("legacy");
    legacy.allow_unsigned = true;
    let legacy = Arc::new(legacy);
    let (t, b) = frame(&f, 1_000_000_000, NOW, level(1.5), None);
    let out = f.verifier.check(&legacy, &t, &b, NOW);
    assert_eq!(out.accepted.len(), 1, "{:?}", out.rejected);
    assert_eq!(out.accepted[0].provenance.trust, Trust::Untrusted);
    assert!(!out.accepted[0].provenance.signed);
    // The device's signed frames keep their own replay window.
    let (t, b) = frame(&f, 1, NOW, level(1.5), Some(&k));
    let out = f.verifier.check(&legacy, &t, &b, NOW);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(out.accepted[0].provenance.trust, Trust::Verified);
    // The same unsigned frame on a source that does not allow them is refused.
    let (t, b) = frame(&f, 2, NOW, level(1.5), None);
    assert_eq!(reason_of(&mut f, &t, &b, NOW), Reason::Unsigned);
}
