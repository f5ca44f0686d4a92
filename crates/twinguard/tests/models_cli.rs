//! The model lifecycle from the command line: a publisher signs, the plant trusts it,
//! admission checks signature, scanner and golden run, the model runs in shadow until an
//! approver promotes it, rollback is one command, and every step is in the audit log.
//! Planted bad models are refused, each with its reason.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_twinguard");

fn tg<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let (ok, out) = tg(args);
    assert!(ok, "twinguard {args:?} failed: {out}");
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A pump's speed, flow and power, with a 0/1 label; from `fault_from` on the flow sensor
/// reads 20 % high and the label is 1.
fn history(seed: u64, rows: usize, fault_from: usize) -> String {
    let mut x = seed;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let mut s = String::from("time,speed,flow,power,label\n");
    for i in 0..rows {
        let speed = 1500.0 + 200.0 * (i as f64 / 40.0).sin() + 10.0 * noise();
        let mut flow = speed / 50.0 + 0.3 * noise();
        let power = 0.002 * speed + 0.1 * flow + 0.05 * noise();
        if i >= fault_from {
            flow *= 1.2;
        }
        let _ = writeln!(
            s,
            "{i},{speed:.3},{flow:.4},{power:.4},{}",
            u8::from(i >= fault_from)
        );
    }
    s
}

struct Lab {
    root: tempfile::TempDir,
}

impl Lab {
    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Adds ana, an approver whose password is in `pw`, to the data directory `data`.
    fn add_approver(&self) {
        std::fs::write(self.path("pw"), "correct horse battery staple\n").unwrap();
        ok(&[
            "user",
            "add",
            "ana",
            "--role",
            "approver",
            "--password-file",
            p(&self.path("pw")),
            "--data-dir",
            p(&self.path("data")),
        ]);
    }

    /// A lab whose data directory (`data`) trusts acme-ml's key (`acme.key`, made here)
    /// for `kinds`, and has an approver, ana (password in `pw`).
    fn trusting(kinds: &str) -> Lab {
        let lab = Lab {
            root: tempfile::tempdir().unwrap(),
        };
        let data = lab.path("data");
        ok(&["model", "keygen", "--out", p(&lab.path("acme.key"))]);
        ok(&[
            "model",
            "trust",
            "--name",
            "acme-ml",
            "--key",
            p(&lab.path("acme.key.pub")),
            "--kinds",
            kinds,
            "--data-dir",
            p(&data),
        ]);
        lab.add_approver();
        lab
    }

    /// A configuration (`twinguard.toml`) whose twin watches with the registry's
    /// plant-anomaly detector.
    fn registry_config(&self) -> PathBuf {
        let config = ok(&["default-config"]).replace(
            "multivariate = false",
            "multivariate = false\nregistry_model = \"plant-anomaly\"",
        );
        let path = self.path("twinguard.toml");
        std::fs::write(&path, config).unwrap();
        path
    }

    /// The arguments of ana promoting `name` `version` in the lab's data directory.
    fn promote(&self, name: &str, version: &str) -> Vec<String> {
        [
            "model",
            "promote",
            name,
            version,
            "--approver",
            "ana",
            "--password-file",
            p(&self.path("pw")),
            "--data-dir",
            p(&self.path("data")),
        ]
        .map(String::from)
        .to_vec()
    }

    /// A detector model directory: the model fitted on normal data, golden data with a
    /// fault from row 200, and the manifest (with `golden` thresholds).
    fn detector(&self, name: &str, version: &str, thresholds: Value) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let train = self.path(&format!("{name}-train.csv"));
        std::fs::write(&train, history(1, 1000, usize::MAX)).unwrap();
        ok(&[
            "detect",
            "fit",
            "--csv",
            p(&train),
            "--exclude",
            "label",
            "--out",
            p(&dir.join("detector.json")),
        ]);
        std::fs::write(dir.join("golden.csv"), history(2, 400, 200)).unwrap();
        let manifest = json!({
            "name": "pump-anomaly", "version": version, "kind": "detector",
            "publisher": "acme-ml", "entry": "detector.json",
            "intended_use": "flag abnormal pump behaviour for an operator to review",
            "limitations": "one pump type; speeds 1300 to 1700 rpm",
            "training_data": { "description": "pump history, seed 1", "sha256": "cd".repeat(32) },
            "metrics": { "f1": 0.9 },
            "golden": { "data": "golden.csv", "thresholds": thresholds },
        });
        let m = self.path(&format!("{name}-manifest.json"));
        std::fs::write(&m, manifest.to_string()).unwrap();
        ok(&[
            "model",
            "sign",
            p(&dir),
            "--manifest",
            p(&m),
            "--key",
            p(&self.path("acme.key")),
        ]);
        dir
    }
}

fn audit_kinds(data: &Path) -> Vec<(String, Value)> {
    let conn = rusqlite::Connection::open(data.join("audit.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT kind, body FROM audit ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (k, b) = r.unwrap();
            (k, serde_json::from_str(&b).unwrap())
        })
        .collect()
}

#[test]
fn a_model_is_signed_admitted_shadowed_promoted_and_rolled_back_and_bad_ones_are_refused() {
    let lab = Lab {
        root: tempfile::tempdir().unwrap(),
    };
    let data = lab.path("data");
    let d = p(&data);
    ok(&["model", "keygen", "--out", p(&lab.path("acme.key"))]);
    ok(&["model", "keygen", "--out", p(&lab.path("mallory.key"))]);
    let good_thresholds = json!({ "f1": { "min": 0.8 }, "far": { "max": 0.1 } });
    let v1 = lab.detector("v1", "1.0.0", good_thresholds.clone());

    // Nothing is admitted before its publisher is trusted.
    let (admitted, out) = tg(&["model", "admit", p(&v1), "--data-dir", d]);
    assert!(!admitted && out.contains("no trusted publisher"), "{out}");
    ok(&[
        "model",
        "trust",
        "--name",
        "acme-ml",
        "--key",
        p(&lab.path("acme.key.pub")),
        "--kinds",
        "detector,rul",
        "--data-dir",
        d,
    ]);
    let out = ok(&["model", "admit", p(&v1), "--data-dir", d]);
    assert!(out.contains("admitted, in shadow"), "{out}");
    let out = ok(&["model", "list", "--data-dir", d]);
    assert!(out.contains("1.0.0") && out.contains("shadow"), "{out}");

    // Promotion takes an approver with their password.
    lab.add_approver();
    std::fs::write(lab.path("wrong"), "not the password at all\n").unwrap();
    ok(&[
        "user",
        "add",
        "otto",
        "--role",
        "operator",
        "--password-file",
        p(&lab.path("pw")),
        "--data-dir",
        d,
    ]);
    // `promote_as(person, password file, version)`.
    let promote_as = |who: &str, pw: &str, version: &str| {
        tg(&[
            "model",
            "promote",
            "pump-anomaly",
            version,
            "--approver",
            who,
            "--password-file",
            p(&lab.path(pw)),
            "--data-dir",
            d,
        ])
    };
    let (done, out) = promote_as("otto", "pw", "1.0.0");
    assert!(!done && out.contains("takes an approver"), "{out}");
    let (done, out) = promote_as("ana", "wrong", "1.0.0");
    assert!(!done && out.contains("wrong password"), "{out}");
    let promote = |version: &str| {
        let (done, out) = promote_as("ana", "pw", version);
        assert!(done, "promote {version}: {out}");
        out
    };
    promote("1.0.0");
    let v2 = lab.detector("v2", "2.0.0", good_thresholds.clone());
    ok(&["model", "admit", p(&v2), "--data-dir", d]);
    assert!(promote("2.0.0").contains("1.0.0 retired"));
    let out = ok(&[
        "model",
        "rollback",
        "pump-anomaly",
        "--approver",
        "ana",
        "--password-file",
        p(&lab.path("pw")),
        "--data-dir",
        d,
    ]);
    assert!(out.contains("2.0.0 retired, 1.0.0 active again"), "{out}");
    let registry: Value =
        serde_json::from_str(&ok(&["model", "list", "--json", "--data-dir", d])).unwrap();
    let states: Vec<(String, String)> = registry["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["version"].as_str().unwrap().into(),
                m["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("1.0.0".into(), "active".into()),
            ("2.0.0".into(), "retired".into())
        ]
    );
    assert!(registry["models"][0]["golden"]["f1"].as_f64().unwrap() >= 0.8);

    // Planted bad models, one per refusal reason.
    let refused = |model: &Path, expect: &str| {
        let (admitted, out) = tg(&["model", "admit", p(model), "--data-dir", d]);
        assert!(!admitted, "{} was admitted: {out}", model.display());
        assert!(
            out.contains("REFUSED") && out.contains(expect),
            "{}: expected {expect:?} in {out}",
            model.display()
        );
    };
    // Altered after signing: one byte of the model file flipped.
    let flipped = lab.detector("flipped", "3.0.0", good_thresholds.clone());
    let mut bytes = std::fs::read(flipped.join("detector.json")).unwrap();
    let i = bytes.iter().position(|b| b.is_ascii_digit()).unwrap();
    bytes[i] = if bytes[i] == b'9' { b'8' } else { bytes[i] + 1 };
    std::fs::write(flipped.join("detector.json"), bytes).unwrap();
    refused(&flipped, "altered after signing");
    // Signed by a key the plant does not trust.
    let untrusted = lab.detector("untrusted", "3.0.1", good_thresholds.clone());
    let m = lab.path("untrusted-manifest.json");
    ok(&[
        "model",
        "sign",
        p(&untrusted),
        "--manifest",
        p(&m),
        "--key",
        p(&lab.path("mallory.key")),
    ]);
    refused(&untrusted, "no trusted publisher");
    // Below its golden thresholds: it cannot reach the F1 declared.
    let weak = lab.detector(
        "weak",
        "3.0.2",
        json!({ "f1": { "min": 0.999 }, "far": { "max": 0.0 } }),
    );
    refused(&weak, "golden");
    // A cloud key hidden in a file of the model, signed and all.
    let leaky = lab.detector("leaky", "3.0.3", good_thresholds.clone());
    std::fs::write(
        leaky.join("README.txt"),
        "contact ops; aws_key AKIAIOSFODNN7EXAMPLE\n",
    )
    .unwrap();
    ok(&[
        "model",
        "sign",
        p(&leaky),
        "--manifest",
        p(&lab.path("leaky-manifest.json")),
        "--key",
        p(&lab.path("acme.key")),
    ]);
    refused(&leaky, "AWS access key");
    // A publisher trusted for detectors ships an ONNX model.
    let onnx = lab.path("onnx-model");
    std::fs::create_dir_all(&onnx).unwrap();
    std::fs::write(onnx.join("model.onnx"), b"\x08\x08").unwrap();
    let manifest = json!({
        "name": "pump-onnx", "version": "1", "kind": "onnx", "publisher": "acme-ml",
        "entry": "model.onnx", "intended_use": "x", "limitations": "y",
        "training_data": { "description": "z", "sha256": "ab".repeat(32) },
        "onnx": { "role": "detector", "columns": ["speed"], "output": "score", "threshold": 1.0 },
    });
    std::fs::write(lab.path("onnx-manifest.json"), manifest.to_string()).unwrap();
    ok(&[
        "model",
        "sign",
        p(&onnx),
        "--manifest",
        p(&lab.path("onnx-manifest.json")),
        "--key",
        p(&lab.path("acme.key")),
    ]);
    refused(&onnx, "may ship detector, rul, not onnx");
    // None of them reached the registry; every step is in the audit log.
    let out = ok(&["model", "list", "--data-dir", d]);
    assert!(!out.contains("3.0."), "{out}");
    let records = audit_kinds(&data);
    let count = |k: &str| records.iter().filter(|(kind, _)| kind == k).count();
    assert_eq!(
        (
            count("model_admitted"),
            count("model_promoted"),
            count("model_rolled_back")
        ),
        (2, 2, 1)
    );
    assert_eq!(count("model_refused"), 6, "{records:?}");
    let admitted = &records
        .iter()
        .find(|(k, _)| k == "model_admitted")
        .unwrap()
        .1;
    assert_eq!(admitted["digest"].as_str().unwrap().len(), 64);
    assert_eq!(
        records
            .iter()
            .find(|(k, _)| k == "model_promoted")
            .unwrap()
            .1["by"],
        "ana"
    );
    let (verified, out) = tg(&["audit", "verify", "--data-dir", d]);
    assert!(verified, "{out}");

    // The ML-BOM names both models with their digests, data and metrics, and the
    // dependencies twinguard was built with.
    ok(&[
        "model",
        "bom",
        "--out",
        p(&lab.path("bom.json")),
        "--data-dir",
        d,
    ]);
    let bom: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path("bom.json")).unwrap()).unwrap();
    assert_eq!(
        (bom["bomFormat"].as_str(), bom["specVersion"].as_str()),
        (Some("CycloneDX"), Some("1.6"))
    );
    let components = bom["components"].as_array().unwrap();
    let models: Vec<&Value> = components
        .iter()
        .filter(|c| c["type"] == "machine-learning-model")
        .collect();
    assert_eq!(models.len(), 2);
    assert_eq!(
        models[0]["hashes"][0]["content"],
        registry["models"][0]["digest"]
    );
    assert!(
        models[0]["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["type"] == "far" && m["slice"] == "golden run at admission")
    );
    assert!(components.iter().any(|c| c["type"] == "data"));
    assert!(components.iter().filter(|c| c["type"] == "library").count() > 100);
    assert!(components.iter().any(|c| c["name"] == "ed25519-dalek"));
}

#[test]
fn the_scanner_reports_with_locations_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("weights.pkl"), [0x80u8, 0x04, 0x95]).unwrap();
    std::fs::write(
        m.join("cfg.json"),
        "{\"upload\": \"https://collect.example.com/x\"}",
    )
    .unwrap();
    let (clean, out) = tg(&["model", "scan", p(&m)]);
    assert!(!clean, "{out}");
    assert!(
        out.contains("weights.pkl") && out.contains("pickle"),
        "{out}"
    );
    assert!(
        out.contains("cfg.json @12") && out.contains("collect.example.com"),
        "{out}"
    );
    let (clean, out) = tg(&[
        "model",
        "scan",
        p(&m),
        "--endpoint",
        "https://collect.example.com/",
        "--json",
    ]);
    assert!(!clean, "the pickle still refuses it: {out}");
    let report: Value = serde_json::from_str(&out[..out.rfind('}').unwrap() + 1]).unwrap();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["what"] == "url" && f["severity"] == "info")
    );
}

/// A detector model of the reference plant, fitted on `plant simulate` data of `seed`,
/// with golden data (a drifting discharge-pressure sensor, labelled), signed.
fn plant_detector(lab: &Lab, version: &str, seed: &str) -> PathBuf {
    let dir = lab.path(&format!("plant-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    let normal = normal_data(lab, seed);
    ok(&[
        "detect",
        "fit",
        "--csv",
        p(&normal),
        "--exclude",
        "label,energy.total,filler.good_bottles",
        "--out",
        p(&dir.join("detector.json")),
    ]);
    sign_plant_model(
        lab,
        &dir,
        json!({
            "version": version, "kind": "detector", "entry": "detector.json",
            "limitations": "the reference plant; fitted on twelve normal hours",
            "training_data": { "description": format!("plant simulate, seed {seed}, 12 h"), "sha256": "ef".repeat(32) },
        }),
    );
    dir
}

/// Writes the golden data of a detector of the reference plant (eight hours, a drifting
/// discharge-pressure sensor from the fourth, labelled) into `dir`, and signs `dir` with
/// the lab's key under a manifest of `fields` and what every plant detector shares.
fn sign_plant_model(lab: &Lab, dir: &Path, fields: Value) {
    ok(&[
        "plant",
        "simulate",
        "--hours",
        "8",
        "--seed",
        "9",
        "--fault",
        "drift:pump.discharge_pressure@14400=0.5",
        "--out",
        p(&dir.join("golden.csv")),
    ]);
    let mut manifest = json!({
        "name": "plant-anomaly", "publisher": "acme-ml",
        "intended_use": "flag abnormal behaviour of the bottling line for review",
        "golden": { "data": "golden.csv", "thresholds": { "f1": { "min": 0.9 }, "far": { "max": 0.05 } } },
    });
    for (k, v) in fields.as_object().unwrap() {
        manifest[k] = v.clone();
    }
    let m = lab.path(&format!(
        "{}.manifest.json",
        dir.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&m, manifest.to_string()).unwrap();
    ok(&[
        "model",
        "sign",
        p(dir),
        "--manifest",
        p(&m),
        "--key",
        p(&lab.path("acme.key")),
    ]);
}

#[test]
fn an_admitted_model_watches_the_twin_and_its_successor_runs_in_shadow() {
    let lab = Lab::trusting("detector");
    let data = lab.path("data");
    let d = p(&data);
    let v1 = plant_detector(&lab, "1.0.0", "1");
    let v2 = plant_detector(&lab, "2.0.0", "3");
    ok(&["model", "admit", p(&v1), "--data-dir", d]);
    ok(&["model", "admit", p(&v2), "--data-dir", d]);
    ok(&lab.promote("plant-anomaly", "1.0.0"));
    let registry: Value =
        serde_json::from_str(&ok(&["model", "list", "--json", "--data-dir", d])).unwrap();
    let digest = |v: usize| {
        registry["models"][v]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let config_path = lab.registry_config();
    let r = demo(&config_path, d, "8");
    // The active model caught the drift, and the record names it by its digest.
    assert_eq!(
        r["detections"],
        json!({ "multivariate": 1 }),
        "{}",
        r["detections"]
    );
    assert_eq!(r["multivariate"]["model"]["version"], "1.0.0");
    let records = audit_kinds(&data);
    let raised = &records
        .iter()
        .find(|(k, _)| k == "detection_raised")
        .unwrap()
        .1;
    assert_eq!(
        raised["evidence"]["relation"],
        format!("model plant-anomaly 1.0.0 ({})", &digest(0)[..12]),
        "{raised}"
    );
    // The shadow saw the same drift; it is recorded under its own digest, and acted on
    // nowhere (one detection, from the active model).
    let shadow = &r["shadow"];
    assert_eq!(shadow["model"]["version"], "2.0.0", "{shadow}");
    assert!(shadow["episodes"].as_u64().unwrap() >= 1, "{shadow}");
    assert!(shadow["agreement"].as_f64().unwrap() > 0.9, "{shadow}");
    let shadowed: Vec<&Value> = records
        .iter()
        .filter(|(k, _)| k == "shadow_detection")
        .map(|(_, b)| b)
        .collect();
    assert!(!shadowed.is_empty());
    assert!(
        shadowed.iter().all(|b| b["digest"] == digest(1).as_str()),
        "{shadowed:?}"
    );
    assert_eq!(shadowed[0]["state"], "start");
    // An admitted copy altered on disk is refused at the next start.
    let stored = data.join("models/store/plant-anomaly/1.0.0/detector.json");
    let text = std::fs::read_to_string(&stored)
        .unwrap()
        .replacen('1', "2", 1);
    std::fs::write(&stored, text).unwrap();
    let out = Command::new(BIN)
        .args([
            "demo", "--speed", "0", "--port", "0", "--json", "--hours", "1", "--config",
        ])
        .arg(&config_path)
        .args(["--data-dir", d])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("altered after signing"), "{err}");
}

/// Normal data of the reference plant for `seed` (twelve hours), made once per lab.
fn normal_data(lab: &Lab, seed: &str) -> PathBuf {
    let normal = lab.path(&format!("normal-{seed}.csv"));
    if !normal.exists() {
        ok(&[
            "plant",
            "simulate",
            "--hours",
            "12",
            "--seed",
            seed,
            "--out",
            p(&normal),
        ]);
    }
    normal
}

/// A vendor's ONNX detector of the reference plant: a PCA reconstruction fitted with
/// numpy on `plant simulate` data of `seed` and written by the `onnx` package
/// (`onnx_detector.py`, with `options`), its golden data a drifting discharge-pressure
/// sensor, signed.
fn onnx_plant_detector(lab: &Lab, version: &str, seed: &str, options: &[&str]) -> PathBuf {
    let dir = lab.path(&format!("onnx-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    let normal = normal_data(lab, seed);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx_detector.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&normal)
        .arg(dir.join("detector.onnx"))
        .args(["--exclude", "label,energy.total,filler.good_bottles"])
        .args(options)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onnx_detector.py (needs numpy and onnx, which .ci/run installs): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let interface: Value = serde_json::from_slice(&out.stdout).unwrap();
    sign_plant_model(
        lab,
        &dir,
        json!({
            "version": version, "kind": "onnx", "entry": "detector.onnx",
            "limitations": "the reference plant; a linear reconstruction of twelve normal hours",
            "training_data": { "description": format!("plant simulate, seed {seed}, 12 h"), "sha256": "cd".repeat(32) },
            "onnx": interface,
        }),
    );
    dir
}

fn demo(config: &Path, data: &str, hours: &str) -> Value {
    let out = Command::new(BIN)
        .args([
            "demo", "--speed", "0", "--port", "0", "--json", "--hours", hours, "--config",
        ])
        .arg(config)
        .args([
            "--fault",
            "drift:pump.discharge_pressure@14400=0.5",
            "--data-dir",
            data,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_vendors_onnx_detector_runs_in_shadow_beside_the_incumbent_then_watches_the_twin() {
    let lab = Lab::trusting("detector,onnx");
    let data = lab.path("data");
    let d = p(&data);
    // An ONNX graph whose threshold never flags the drift fails its golden run.
    let blind = onnx_plant_detector(&lab, "0.9.0", "1", &["--threshold", "1e9"]);
    let (admitted, out) = tg(&["model", "admit", p(&blind), "--data-dir", d]);
    assert!(!admitted, "{out}");
    assert!(out.contains("REFUSED: golden f1"), "{out}");

    let incumbent = plant_detector(&lab, "1.0.0", "1");
    let vendor = onnx_plant_detector(&lab, "2.0.0", "1", &[]);
    ok(&["model", "admit", p(&incumbent), "--data-dir", d]);
    let out = ok(&["model", "admit", p(&vendor), "--data-dir", d]);
    assert!(out.contains("f1"), "{out}");
    let promote = |version: &str| ok(&lab.promote("plant-anomaly", version));
    promote("1.0.0");
    let registry: Value =
        serde_json::from_str(&ok(&["model", "list", "--json", "--data-dir", d])).unwrap();
    let digest = |version: &str| {
        registry["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["version"] == version)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let config_path = lab.registry_config();

    // In shadow, the ONNX graph sees the live data and its episodes are recorded under
    // its digest; only the incumbent's detection is acted on.
    let r = demo(&config_path, d, "8");
    assert_eq!(r["multivariate"]["model"]["version"], "1.0.0", "{r}");
    let shadow = &r["shadow"];
    assert_eq!(shadow["model"]["version"], "2.0.0", "{shadow}");
    assert!(shadow["episodes"].as_u64().unwrap() >= 1, "{shadow}");
    assert!(shadow["agreement"].as_f64().unwrap() > 0.9, "{shadow}");
    let records = audit_kinds(&data);
    let shadowed: Vec<&Value> = records
        .iter()
        .filter(|(k, _)| k == "shadow_detection")
        .map(|(_, b)| b)
        .collect();
    assert!(!shadowed.is_empty());
    assert!(
        shadowed
            .iter()
            .all(|b| b["digest"] == digest("2.0.0").as_str()),
        "{shadowed:?}"
    );
    // The graph's reconstruction errors name the signals it blames (a linear
    // reconstruction spreads one sensor's drift over the signals it correlates with, so
    // which ones is the vendor model's reading, not checked here).
    assert_eq!(
        shadowed[0]["contributors"].as_array().unwrap().len(),
        3,
        "{shadowed:?}"
    );
    assert!(shadowed[0]["score"].as_f64().unwrap() > shadowed[0]["threshold"].as_f64().unwrap());

    // Promoted, it watches the twin: the drift is caught and the record names the ONNX
    // model by its digest.
    promote("2.0.0");
    let r = demo(&config_path, d, "8");
    assert_eq!(r["multivariate"]["model"]["version"], "2.0.0", "{r}");
    // The model's one detection. (Under a loaded CI machine the tank's mass balance has
    // once raised a physics detection as well, in a run whose optimiser stepped the pump:
    // the commands reach the simulated plant at a second that depends on load. It is not
    // what this test is about, so only the model's detections are counted.)
    assert_eq!(r["detections"]["multivariate"], 1, "{r}");
    let records = audit_kinds(&data);
    let raised: Vec<&Value> = records
        .iter()
        .filter(|(k, b)| {
            k == "detection_raised"
                && b["evidence"]["relation"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("model "))
        })
        .map(|(_, b)| b)
        .collect();
    let last = raised.last().unwrap();
    assert_eq!(
        last["evidence"]["relation"],
        format!("model plant-anomaly 2.0.0 ({})", &digest("2.0.0")[..12]),
        "{last}"
    );
    let (verified, out) = tg(&["audit", "verify", "--data-dir", d]);
    assert!(verified, "{out}");

    // The registry edited by hand (the incumbent made active again without an approver)
    // runs nothing, and says why; so does one the log never saw written.
    let path = data.join("models/registry.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text
        .replace("\"active\"", "\"was_active\"")
        .replace("\"retired\"", "\"active\"")
        .replace("\"was_active\"", "\"retired\"");
    assert_ne!(edited, text);
    std::fs::write(&path, &edited).unwrap();
    let out = Command::new(BIN)
        .args([
            "demo", "--speed", "0", "--port", "0", "--json", "--hours", "1", "--config",
        ])
        .arg(&config_path)
        .args(["--data-dir", d])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was changed outside twinguard"), "{err}");
    let (_, listed) = tg(&["model", "list", "--data-dir", d]);
    assert!(
        listed.contains("WARNING") && listed.contains("nothing in it will run"),
        "{listed}"
    );
    let (promoted, out) = tg(&lab.promote("plant-anomaly", "1.0.0"));
    assert!(
        !promoted && out.contains("was changed outside twinguard"),
        "{out}"
    );
    // Put back, it runs again.
    std::fs::write(&path, &text).unwrap();
    ok(&["model", "list", "--data-dir", d]);
}
