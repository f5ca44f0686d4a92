//! Envelope encoding, decoding and verification, including hostile bytes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use frames::{
    Alg, BodyEncoding, Envelope, FrameError, Kind, Seal, TelemetryBody, TelemetryView, WireSample,
    encode, encode_sealed, encode_telemetry, keys, to_body,
};
use proptest::prelude::*;
use std::borrow::Cow;

const TOPIC: &str = "twinguard/line1/tank/telemetry";

fn body() -> Vec<u8> {
    to_body(&TelemetryBody {
        seq: 7,
        ts_ms: 1_000,
        samples: vec![WireSample {
            signal: "tank.level".into(),
            t_ms: 1_000,
            value: 1.5,
            unit: "m".into(),
        }],
    })
}

#[test]
fn signed_round_trip() {
    let key = keys::generate().unwrap();
    let bytes = encode(Kind::Telemetry, TOPIC, "gw-tank", &body(), Some(&key)).unwrap();
    let env = Envelope::decode(&bytes).unwrap();
    assert_eq!(env.kind, Kind::Telemetry);
    assert_eq!(env.alg, Alg::Ed25519);
    assert_eq!(env.signer, "gw-tank");
    env.verify(TOPIC, &key.verifying_key()).unwrap();
    let parsed = TelemetryBody::parse(env.body).unwrap();
    assert_eq!(parsed.seq, 7);
}

#[test]
fn wrong_key_wrong_topic_and_flipped_bits_fail() {
    let key = keys::generate().unwrap();
    let other = keys::generate().unwrap();
    let bytes = encode(Kind::Telemetry, TOPIC, "gw-tank", &body(), Some(&key)).unwrap();
    let env = Envelope::decode(&bytes).unwrap();
    assert_eq!(
        env.verify(TOPIC, &other.verifying_key()),
        Err(FrameError::BadSignature)
    );
    assert_eq!(
        env.verify("twinguard/line1/pump/telemetry", &key.verifying_key()),
        Err(FrameError::BadSignature)
    );
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        if let Ok(env) = Envelope::decode(&b) {
            assert!(
                env.verify(TOPIC, &key.verifying_key()).is_err(),
                "bit flip at {i} verified"
            );
        }
    }
}

#[test]
fn unsigned_envelope_is_reported_as_unsigned() {
    let key = keys::generate().unwrap();
    let bytes = encode(Kind::Telemetry, TOPIC, "gw-tank", &body(), None).unwrap();
    let env = Envelope::decode(&bytes).unwrap();
    assert_eq!(env.alg, Alg::None);
    assert_eq!(
        env.verify(TOPIC, &key.verifying_key()),
        Err(FrameError::Unsigned)
    );
}

#[test]
fn structural_errors_are_named() {
    let key = keys::generate().unwrap();
    let good = encode(Kind::Telemetry, TOPIC, "gw-tank", &body(), Some(&key)).unwrap();
    assert!(matches!(
        Envelope::decode(b"TG"),
        Err(FrameError::Truncated("magic"))
    ));
    assert!(matches!(
        Envelope::decode(b"XXXX\x01\x01\x01a"),
        Err(FrameError::BadMagic(_))
    ));
    let mut v = good.clone();
    v[4] = 9;
    assert_eq!(Envelope::decode(&v), Err(FrameError::BadVersion(9)));
    let mut t = good.clone();
    t.push(0);
    assert_eq!(Envelope::decode(&t), Err(FrameError::TrailingBytes(1)));
    assert_eq!(
        Envelope::decode(&good[..good.len() - 1]),
        Err(FrameError::Truncated("signature"))
    );
    assert!(matches!(
        encode(Kind::Telemetry, TOPIC, "bad id!", b"{}", None),
        Err(FrameError::BadSigner)
    ));
}

#[test]
fn a_body_read_in_place_borrows_its_strings_and_unescapes_them_when_it_must() {
    let plain = br#"{"seq":1,"ts_ms":5,"samples":[{"signal":"tank.level","t_ms":5,"value":1.5,"unit":"m"}]}"#;
    let v = TelemetryView::parse(plain).unwrap();
    let s = &v.samples[0];
    assert!(matches!(s.signal, Cow::Borrowed("tank.level")), "{s:?}");
    assert!(matches!(s.unit, Cow::Borrowed("m")), "{s:?}");
    // Any JSON encoder may escape characters; the names are then unescaped copies.
    let escaped = br#"{"seq":1,"ts_ms":5,"samples":[{"signal":"tank\u002elevel","t_ms":5,"value":1.5,"unit":"m\/s"}]}"#;
    let v = TelemetryView::parse(escaped).unwrap();
    assert_eq!(
        (&*v.samples[0].signal, &*v.samples[0].unit),
        ("tank.level", "m/s")
    );
    let owned = TelemetryBody::parse(escaped).unwrap();
    assert_eq!(owned.samples[0], WireSample::from(v.samples[0].clone()));
    assert!(TelemetryView::parse(br#"{"seq":1,"ts_ms":1,"samples":[{"signal":"a","t_ms":1,"value":1,"unit":"m","x":0}]}"#).is_err());
}

#[test]
fn body_with_unknown_field_or_too_many_samples_is_refused() {
    assert!(TelemetryBody::parse(br#"{"seq":1,"ts_ms":1,"samples":[],"x":1}"#).is_err());
    let many = TelemetryBody {
        seq: 1,
        ts_ms: 1,
        samples: vec![
            WireSample {
                signal: "a".into(),
                t_ms: 1,
                value: 1.0,
                unit: "m".into()
            };
            frames::MAX_SAMPLES + 1
        ],
    };
    let e = TelemetryBody::parse(&to_body(&many)).unwrap_err();
    assert!(e.to_string().contains("more than the limit"), "{e}");
}

#[test]
fn key_files_round_trip_with_private_mode() {
    let dir = std::env::temp_dir().join(format!("tg-keys-{}", std::process::id()));
    let path = dir.join("k.key");
    let _ = std::fs::remove_dir_all(&dir);
    let k1 = keys::load_or_create(&path).unwrap();
    let k2 = keys::load_or_create(&path).unwrap();
    assert_eq!(k1.to_bytes(), k2.to_bytes());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    std::fs::write(&path, "nothex").unwrap();
    assert!(
        keys::load(&path)
            .unwrap_err()
            .to_string()
            .contains("64 hex")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn sample(signal: &str, t_ms: i64, value: f64, unit: &str) -> WireSample {
    WireSample {
        signal: signal.into(),
        t_ms,
        value,
        unit: unit.into(),
    }
}

/// The worked example of docs/frame-format.md, byte for byte.
#[test]
fn the_binary_body_of_the_spec_example_is_exactly_its_bytes() {
    let body = TelemetryBody {
        seq: 1,
        ts_ms: 1000,
        samples: vec![
            sample("tank.level", 1000, 1.5, "m"),
            sample("tank.inflow", 1000, -2.0, "m3/h"),
            sample("tank.level", 999, 1.25, "m"),
        ],
    };
    let bytes = body.to_bytes(BodyEncoding::Binary).unwrap();
    let expected = concat!(
        "0000000000000001", // seq
        "00000000000003e8", // ts_ms
        "02",               // two table entries
        "0a",
        "74616e6b2e6c6576656c",
        "01",
        "6d", // "tank.level", "m"
        "0b",
        "74616e6b2e696e666c6f77",
        "04",
        "6d332f68", // "tank.inflow", "m3/h"
        "0003",     // three samples
        "00",
        "00000000000003e8",
        "3ff8000000000000", // entry 0, t 1000, 1.5
        "01",
        "00000000000003e8",
        "c000000000000000", // entry 1, t 1000, -2.0
        "00",
        "00000000000003e7",
        "3ff4000000000000", // entry 0, t 999, 1.25
    );
    assert_eq!(hex::encode(&bytes), expected);
    let view = TelemetryView::parse_binary(&bytes).unwrap();
    assert!(matches!(
        view.samples[1].signal,
        Cow::Borrowed("tank.inflow")
    ));
    assert_eq!(TelemetryBody::from(view), body);
}

#[test]
fn the_version_byte_names_the_body_encoding_and_is_signed() {
    let key = keys::generate().unwrap();
    let body = TelemetryBody {
        seq: 3,
        ts_ms: 5,
        samples: vec![sample("tank.level", 5, 1.5, "m")],
    };
    let bin = encode_telemetry(
        TOPIC,
        "gw-tank",
        &body,
        BodyEncoding::Binary,
        Seal::Ed25519(&key),
    )
    .unwrap();
    let json = encode_telemetry(
        TOPIC,
        "gw-tank",
        &body,
        BodyEncoding::Json,
        Seal::Ed25519(&key),
    )
    .unwrap();
    assert_eq!((bin[4], json[4]), (2, 1));
    assert!(bin.len() < json.len());
    for bytes in [&bin, &json] {
        let env = Envelope::decode(bytes).unwrap();
        env.verify(TOPIC, &key.verifying_key()).unwrap();
        assert_eq!(TelemetryBody::read(&env).unwrap(), body);
    }
    // A binary body relabelled as JSON (or the reverse) no longer verifies, and does not
    // parse as the other encoding either.
    let mut relabelled = bin.clone();
    relabelled[4] = 1;
    let env = Envelope::decode(&relabelled).unwrap();
    assert_eq!(env.encoding, BodyEncoding::Json);
    assert_eq!(
        env.verify(TOPIC, &key.verifying_key()),
        Err(FrameError::BadSignature)
    );
    assert!(TelemetryView::read(&env).is_err());
    // Commands have JSON bodies only.
    let mut command = encode(Kind::Command, TOPIC, "twinguard", b"{}", Some(&key)).unwrap();
    command[4] = 2;
    assert_eq!(
        Envelope::decode(&command),
        Err(FrameError::CommandVersion(2))
    );
    assert_eq!(
        encode_sealed(Kind::Command, TOPIC, "twinguard", b"{}", Seal::None).map(|b| b[4]),
        Ok(1)
    );
    let mut three = json.clone();
    three[4] = 3;
    let e = Envelope::decode(&three).unwrap_err();
    assert_eq!(e, FrameError::BadVersion(3));
    assert!(e.to_string().contains("binary telemetry body"), "{e}");
}

#[test]
fn hostile_binary_bodies_are_refused_with_their_cause() {
    let good = TelemetryBody {
        seq: 1,
        ts_ms: 1000,
        samples: vec![
            sample("tank.level", 1000, 1.5, "m"),
            sample("b", 1, 2.0, ""),
        ],
    }
    .to_bytes(BodyEncoding::Binary)
    .unwrap();
    // Every truncation, and every extra byte, is an error, never a panic.
    for n in 0..good.len() {
        assert!(
            TelemetryView::parse_binary(&good[..n]).is_err(),
            "truncated at {n}"
        );
    }
    let mut long = good.clone();
    long.push(0);
    let e = TelemetryView::parse_binary(&long).unwrap_err().to_string();
    assert!(
        e.contains("2 samples take 34 bytes, the body has 35"),
        "{e}"
    );
    // The table offset: seq 8, ts 8, entry count 1.
    let first_entry = 17;
    let mut empty_id = good.clone();
    empty_id[first_entry] = 0;
    let e = TelemetryView::parse_binary(&empty_id)
        .unwrap_err()
        .to_string();
    assert!(e.contains("entry 0 has an empty signal id"), "{e}");
    let mut not_utf8 = good.clone();
    not_utf8[first_entry + 1] = 0xff;
    let e = TelemetryView::parse_binary(&not_utf8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("entry 0: the signal id is not UTF-8"), "{e}");
    // The second sample names entry 1; make it name entry 7.
    let mut index = good.clone();
    let at = good.len() - frames::SAMPLE_BYTES;
    index[at] = 7;
    let e = TelemetryView::parse_binary(&index).unwrap_err().to_string();
    assert!(
        e.contains("sample 1 names table entry 7, the table has 2"),
        "{e}"
    );
    // A sample count above the limit is refused before anything is allocated for it.
    let mut count = good[..good.len() - 2 * frames::SAMPLE_BYTES - 2].to_vec();
    count.extend_from_slice(&(frames::MAX_SAMPLES as u16 + 1).to_be_bytes());
    let e = TelemetryView::parse_binary(&count).unwrap_err().to_string();
    assert!(e.contains("more than the limit of 2048"), "{e}");
    // Values JSON cannot carry are read as they are; ingest refuses them as not_finite.
    let nan = TelemetryBody {
        seq: 1,
        ts_ms: 1,
        samples: vec![
            sample("a", 1, f64::NAN, "m"),
            sample("a", 1, f64::INFINITY, "m"),
        ],
    };
    let nan = nan.to_bytes(BodyEncoding::Binary).unwrap();
    let v = TelemetryView::parse_binary(&nan).unwrap();
    assert!(v.samples[0].value.is_nan() && v.samples[1].value.is_infinite());
}

#[test]
fn bodies_the_binary_table_cannot_hold_are_refused_when_written() {
    let signals = |n: usize| TelemetryBody {
        seq: 1,
        ts_ms: 1,
        samples: (0..n)
            .map(|i| sample(&format!("s{i}"), 1, 1.0, "m"))
            .collect(),
    };
    assert!(
        signals(frames::MAX_TABLE)
            .to_bytes(BodyEncoding::Binary)
            .is_ok()
    );
    let e = signals(frames::MAX_TABLE + 1)
        .to_bytes(BodyEncoding::Binary)
        .unwrap_err();
    assert!(e.to_string().contains("more than 255 distinct"), "{e}");
    let (long_id, long_unit) = ("x".repeat(256), "u".repeat(256));
    for (signal, unit) in [
        ("", "m"),
        (long_id.as_str(), "m"),
        ("a", long_unit.as_str()),
    ] {
        let body = TelemetryBody {
            seq: 1,
            ts_ms: 1,
            samples: vec![sample(signal, 1, 1.0, unit)],
        };
        assert!(
            body.to_bytes(BodyEncoding::Binary).is_err(),
            "{signal:?} {unit:?}"
        );
    }
    let many = TelemetryBody {
        seq: 1,
        ts_ms: 1,
        samples: vec![sample("a", 1, 1.0, "m"); frames::MAX_SAMPLES + 1],
    };
    assert!(many.to_bytes(BodyEncoding::Binary).is_err());
}

/// Samples over few enough names that entries repeat, and any values, NaN included.
fn arb_sample() -> impl Strategy<Value = WireSample> {
    (
        "[a-c]\\.[a-cé_]{1,2}",
        any::<i64>(),
        any::<f64>(),
        "(m|°C|)",
    )
        .prop_map(|(signal, t_ms, value, unit)| WireSample {
            signal,
            t_ms,
            value,
            unit,
        })
}

proptest! {
    #[test]
    fn binary_bodies_round_trip_bit_for_bit(
        seq in any::<u64>(),
        ts_ms in any::<i64>(),
        samples in proptest::collection::vec(arb_sample(), 0..400),
    ) {
        let body = TelemetryBody { seq, ts_ms, samples };
        let bytes = body.to_bytes(BodyEncoding::Binary).unwrap();
        let back = TelemetryBody::from(TelemetryView::parse_binary(&bytes).unwrap());
        prop_assert_eq!(back.seq, seq);
        prop_assert_eq!(back.ts_ms, ts_ms);
        prop_assert_eq!(back.samples.len(), body.samples.len());
        for (a, b) in back.samples.iter().zip(&body.samples) {
            prop_assert_eq!((&a.signal, a.t_ms, a.value.to_bits(), &a.unit), (&b.signal, b.t_ms, b.value.to_bits(), &b.unit));
        }
    }

    #[test]
    fn binary_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = TelemetryView::parse_binary(&bytes);
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn decode_inverts_encode(signer in "[a-z0-9_.-]{1,64}", body in proptest::collection::vec(any::<u8>(), 0..2048), signed in any::<bool>()) {
        let key = keys::generate().unwrap();
        let bytes = encode(Kind::Command, TOPIC, &signer, &body, signed.then_some(&key)).unwrap();
        let env = Envelope::decode(&bytes).unwrap();
        prop_assert_eq!(env.signer, signer.as_str());
        prop_assert_eq!(env.body, &body[..]);
        prop_assert_eq!(env.verify(TOPIC, &key.verifying_key()).is_ok(), signed);
    }
}
