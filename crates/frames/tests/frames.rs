//! Envelope encoding, decoding and verification, including hostile bytes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use frames::{
    Alg, Envelope, FrameError, Kind, TelemetryBody, TelemetryView, WireSample, encode, keys,
    to_body,
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

proptest! {
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
