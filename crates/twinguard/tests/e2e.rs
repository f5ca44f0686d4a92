//! End to end over the real MQTT path: the twinguard binary runs the whole loop against its
//! embedded broker, with and without each attack, and its audit log is verified and
//! tampered with from outside, and a publisher in another language is checked against the
//! frame-format document.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twinguard");
const SIGNALS: u64 = 22;

fn demo(dir: &Path, hours: f64, extra: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(["demo", "--speed", "0", "--port", "0", "--json", "--hours"])
        .arg(hours.to_string())
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn sum(v: &Value) -> u64 {
    v.as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

fn assert_safe_and_audited(r: &Value) {
    assert_eq!(r["audit"]["verified"], Value::Bool(true), "{}", r["audit"]);
    assert!(r["audit"]["records"].as_u64().unwrap() > 0);
    assert_eq!(r["audit"]["head"].as_str().unwrap().len(), 64);
    assert_eq!(
        r["line_stops"], 0,
        "no line stop may be executed: {}",
        r["commands"]
    );
    // Everything the plant applied came from the guard, and nothing was refused by it.
    assert_eq!(r["plant"]["commands_applied"], r["proposals"]["executed"]);
    assert_eq!(sum(&r["plant"]["commands_refused"]), 0);
}

#[test]
fn normal_run_accepts_everything_and_the_optimiser_acts() {
    let dir = tempfile::tempdir().unwrap();
    let r = demo(dir.path(), 3.0, &[]);
    assert_eq!(r["samples"]["accepted"], 3 * 3600 * SIGNALS);
    assert_eq!(sum(&r["samples"]["rejected"]), 0);
    assert_eq!(sum(&r["detections"]), 0, "{}", r["detections"]);
    assert!(r["proposals"]["executed"].as_u64().unwrap() >= 2);
    assert!(
        r["actions_executed_by_agent"]["optimiser"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert_eq!(r["data_dir"], dir.path().display().to_string());
    assert_safe_and_audited(&r);
    // The same data directory verifies from the command line.
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The edge's devices send binary bodies (envelope version 2): every sample arrives, and
/// an intruder's replays of captured binary frames are refused as JSON ones are.
#[test]
fn binary_bodies_carry_the_whole_loop() {
    let dir = tempfile::tempdir().unwrap();
    let r = demo(dir.path(), 2.0, &["--body", "binary", "--attack", "replay"]);
    assert_eq!(r["samples"]["accepted"], 2 * 3600 * SIGNALS);
    let replays = r["frames"]["rejected"]["replay"].as_u64().unwrap_or(0);
    assert!(replays >= 5, "{}", r["frames"]);
    assert_eq!(replays, r["attack_report"]["attempts"].as_u64().unwrap());
    assert_eq!(sum(&r["frames"]["rejected"]), replays, "{}", r["frames"]);
    assert_eq!(sum(&r["detections"]), 0, "{}", r["detections"]);
    assert_safe_and_audited(&r);
}

#[test]
fn forged_frames_are_rejected_by_reason_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let r = demo(dir.path(), 2.0, &["--attack", "forged-frames"]);
    let rej = &r["frames"]["rejected"];
    for reason in ["bad_signature", "unsigned", "unknown_device", "malformed"] {
        assert!(rej[reason].as_u64().unwrap_or(0) >= 5, "{reason}: {rej}");
    }
    assert_eq!(sum(rej), r["attack_report"]["attempts"].as_u64().unwrap());
    // No legitimate sample was lost and no forged one got in (the forged level of 2.9 m
    // would have raised a limit detection).
    assert_eq!(r["samples"]["accepted"], 2 * 3600 * SIGNALS);
    assert_eq!(sum(&r["detections"]), 0);
    assert_safe_and_audited(&r);
    let conn = rusqlite::Connection::open(dir.path().join("audit.db")).unwrap();
    let q: i64 = conn
        .query_row("SELECT COUNT(*) FROM quarantine", [], |x| x.get(0))
        .unwrap();
    let audited: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE kind = 'frame_rejected'",
            [],
            |x| x.get(0),
        )
        .unwrap();
    assert_eq!(q as u64, sum(rej));
    assert_eq!(r["audit"]["quarantine_full"], 0);
    assert_eq!(audited as u64, sum(rej));
}

#[test]
fn replayed_frames_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let r = demo(dir.path(), 2.0, &["--attack", "replay"]);
    let replays = r["frames"]["rejected"]["replay"].as_u64().unwrap_or(0);
    assert!(replays >= 5, "{}", r["frames"]);
    assert_eq!(replays, r["attack_report"]["attempts"].as_u64().unwrap());
    assert_eq!(r["samples"]["accepted"], 2 * 3600 * SIGNALS);
    assert_safe_and_audited(&r);
}

#[test]
fn validly_signed_false_level_is_detected_by_physics_and_cannot_stop_the_line() {
    false_level_is_caught_by_physics(&[]);
}

#[test]
fn false_level_from_an_authenticated_opc_ua_server_is_caught_the_same_way() {
    false_level_is_caught_by_physics(&["--transport", "opcua"]);
}

fn false_level_is_caught_by_physics(transport: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--attack", "fdi-level"];
    args.extend_from_slice(transport);
    let r = demo(dir.path(), 5.0, &args);
    // Every value arrives validly signed (or over an authenticated session), so ingest
    // accepts all of it ...
    assert_eq!(sum(&r["samples"]["rejected"]), 0);
    // ... and only the mass balance gives the attack away.
    assert!(
        r["detections"]["physics"].as_u64().unwrap_or(0) >= 1,
        "{}",
        r["detections"]
    );
    // The false high level makes the maintenance agent ask for a stop; with the level
    // contradicted by physics that stop waits for a human.
    assert!(
        r["proposals"]["pending"].as_u64().unwrap() >= 1,
        "{}",
        r["proposals"]
    );
    assert_safe_and_audited(&r);
    let conn = rusqlite::Connection::open(dir.path().join("audit.db")).unwrap();
    let stop_outcome: String = conn
        .query_row(
            "SELECT json_extract(body, '$.outcome') FROM audit WHERE kind = 'decision' AND json_extract(body, '$.action.kind') = 'stop_line'",
            [],
            |x| x.get(0),
        )
        .unwrap();
    assert_eq!(stop_outcome, "pending");
}

#[test]
fn stolen_agent_token_is_worthless_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let r = demo(dir.path(), 2.0, &["--attack", "stolen-agent-token"]);
    assert_eq!(r["attack_report"]["attempts"], 2, "{}", r["attack_report"]);
    assert_eq!(r["attack_report"]["accepted"], 0, "{}", r["attack_report"]);
    assert_eq!(r["proposals"]["denied"]["token_without_key"], 2);
    assert_eq!(r["alerts"].as_array().unwrap().len(), 2);
    // The attacker asked for 1650 rpm; nothing of the kind was executed.
    for c in r["commands"].as_array().unwrap() {
        assert_ne!(c["command"]["value"], 1650.0, "{c}");
    }
    assert_safe_and_audited(&r);
}

fn verify_cli(dir: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn audit_verify_names_the_first_bad_record_after_tampering() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path(), 1.0, &["--attack", "forged-frames"]);
    let db = dir.path().join("audit.db");
    let pristine = std::fs::read(&db).unwrap();
    assert!(verify_cli(dir.path()).0);
    let cases = [
        (
            "UPDATE audit SET ts_ms = ts_ms + 1 WHERE seq = 3",
            "record 3",
        ),
        ("DELETE FROM audit WHERE seq = 4", "record 4"),
        (
            "UPDATE audit SET seq = -5 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = -5",
            "record 5",
        ),
        (
            "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",
            "missing",
        ),
    ];
    for (sql, expect) in cases {
        std::fs::write(&db, &pristine).unwrap();
        let _ = std::fs::remove_file(dir.path().join("audit.db-wal"));
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        let (ok, out) = verify_cli(dir.path());
        assert!(!ok, "tampering went unnoticed: {sql}");
        assert!(out.contains(expect), "{sql}: {out}");
    }
}

fn tg(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn the_audit_log_proves_its_records_and_that_it_was_never_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let file = |name: &str| dir.path().join(name).display().to_string();
    let r = demo(dir.path(), 1.0, &[]);
    assert_eq!(
        r["audit"]["checkpoint"]["size"], r["audit"]["records"],
        "the last record is under a checkpoint: {}",
        r["audit"]
    );
    // An auditor keeps today's checkpoint.
    let (ok, _, err) = tg(&[
        "audit",
        "checkpoint",
        "--data-dir",
        d,
        "--out",
        &file("held.cp"),
    ]);
    assert!(ok, "{err}");
    // The plant runs on; the log grows and still extends what the auditor holds.
    demo(dir.path(), 1.0, &[]);
    let (ok, out, _) = tg(&[
        "audit",
        "verify",
        "--data-dir",
        d,
        "--checkpoint",
        &file("held.cp"),
    ]);
    assert!(ok && out.contains("verified"), "{out}");
    let (ok, _, err) = tg(&[
        "audit",
        "prove",
        "--data-dir",
        d,
        "--from-checkpoint",
        &file("held.cp"),
        "--out",
        &file("cons.json"),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = tg(&[
        "audit",
        "prove",
        "--data-dir",
        d,
        "--seq",
        "3",
        "--out",
        &file("incl.json"),
    ]);
    assert!(ok, "{err}");
    // Anyone with the public key alone checks both proofs.
    let key = file("keys/audit.pub");
    for proof in ["cons.json", "incl.json"] {
        let (ok, out, _) = tg(&["audit", "check-proof", &file(proof), "--key", &key]);
        assert!(ok && out.contains("proof holds"), "{proof}: {out}");
    }
    // A proof edited to show other contents fails.
    let text = std::fs::read_to_string(file("incl.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let body = v["record"]["body"].as_str().unwrap().replacen('1', "2", 1);
    v["record"]["body"] = Value::String(body);
    std::fs::write(file("forged.json"), v.to_string()).unwrap();
    let (ok, out, _) = tg(&["audit", "check-proof", &file("forged.json"), "--key", &key]);
    assert!(!ok && out.contains("FAILS"), "{out}");
    // The export verifies offline with the key alone, and shows an edit.
    let (ok, _, err) = tg(&[
        "audit",
        "export",
        "--data-dir",
        d,
        "--out",
        &file("log.jsonl"),
    ]);
    assert!(ok, "{err}");
    let elsewhere = tempfile::tempdir().unwrap();
    let (ok, out, _) = tg(&[
        "audit",
        "verify",
        "--data-dir",
        elsewhere.path().to_str().unwrap(),
        "--export",
        &file("log.jsonl"),
        "--key",
        &key,
    ]);
    assert!(ok && out.contains("verified"), "{out}");
    let export = std::fs::read_to_string(file("log.jsonl")).unwrap();
    std::fs::write(
        file("edited.jsonl"),
        export.replacen("\"kind\":\"run_started\"", "\"kind\":\"run_startet\"", 1),
    )
    .unwrap();
    let (ok, out, _) = tg(&[
        "audit",
        "verify",
        "--export",
        &file("edited.jsonl"),
        "--key",
        &key,
    ]);
    assert!(
        !ok && out.contains("FAILED verification at record 1"),
        "{out}"
    );
    // Someone with write access but without the key rewrites record 3, recomputes its
    // leaf and removes every stored checkpoint: the held checkpoint still catches it.
    let db = dir.path().join("audit.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (ts, kind): (i64, String) = conn
        .query_row("SELECT ts_ms, kind FROM audit WHERE seq = 3", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let hash = audit::record_leaf(3, ts, &kind, "{}");
    conn.execute(
        "UPDATE audit SET body = '{}', leaf = ?1 WHERE seq = 3",
        [&hash[..]],
    )
    .unwrap();
    conn.execute_batch("DELETE FROM checkpoint").unwrap();
    drop(conn);
    let (ok, out, _) = tg(&[
        "audit",
        "verify",
        "--data-dir",
        d,
        "--checkpoint",
        &file("held.cp"),
    ]);
    assert!(!ok && out.contains("held.cp"), "{out}");
    let (ok, _, err) = tg(&[
        "audit",
        "prove",
        "--data-dir",
        d,
        "--from-checkpoint",
        &file("held.cp"),
        "--out",
        &file("cons2.json"),
    ]);
    assert!(!ok, "{err}");
}

#[test]
fn the_compliance_report_is_made_from_a_real_run_and_links_each_claim_to_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let file = |name: &str| dir.path().join(name).display().to_string();
    demo(dir.path(), 2.0, &["--attack", "forged-frames"]);
    let (ok, config, _) = tg(&["default-config"]);
    assert!(ok);
    std::fs::write(file("twinguard.toml"), config).unwrap();
    std::fs::write(
        file("tests.log"),
        "test audit_verify_names_the_first_bad_record_after_tampering ... ok\ntest forged_frames_are_rejected_by_reason_and_quarantined ... ok\n",
    )
    .unwrap();
    let (ok, out, err) = tg(&[
        "compliance",
        "report",
        "--out",
        &file("evidence"),
        "--data-dir",
        d,
        "--config",
        &file("twinguard.toml"),
        "--tests",
        &file("tests.log"),
    ]);
    assert!(ok, "{out}{err}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(file("evidence/report.json")).unwrap())
            .unwrap();
    assert_eq!(r["audit"]["verified"], true);
    let claims = r["claims"].as_array().unwrap();
    let claim = |standard: &str, clause: &str| {
        claims
            .iter()
            .find(|c| c["standard"] == standard && c["clause"] == clause)
            .unwrap_or_else(|| panic!("no claim {standard} {clause}"))
    };
    for (standard, clause) in [
        ("IEC 62443-3-3", "SR 3.9"),
        ("EU AI Act", "Article 9"),
        ("EU AI Act", "Article 12"),
        ("EU AI Act", "Article 13"),
        ("EU AI Act", "Article 14"),
        ("EU AI Act", "Article 15"),
        ("NIST AI RMF 1.0", "GOVERN"),
        ("NIST AI RMF 1.0", "MAP"),
        ("NIST AI RMF 1.0", "MEASURE"),
        ("NIST AI RMF 1.0", "MANAGE"),
    ] {
        assert!(
            !claim(standard, clause)["evidence"]
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
    // The log's protection is shown by a proof an outsider can check, and by the tests.
    let sr39 = claim("IEC 62443-3-3", "SR 3.9");
    assert_eq!(sr39["status"], "met", "{sr39}");
    let evidence = sr39["evidence"].as_array().unwrap();
    assert!(
        evidence.iter().any(|e| e["value"]["holds"] == true),
        "{sr39}"
    );
    assert!(
        evidence.iter().any(
            |e| e["value"]["audit_verify_names_the_first_bad_record_after_tampering"] == "passed"
        ),
        "{sr39}"
    );
    // Counts come from the log: the forged frames were refused and recorded.
    let sr35 = claim("IEC 62443-3-3", "SR 3.5");
    assert!(
        sr35["evidence"][0]["value"]["frame_rejected"]
            .as_u64()
            .unwrap()
            >= 20,
        "{sr35}"
    );
    // Nobody approved anything and no model was admitted: said, not claimed.
    assert_ne!(claim("EU AI Act", "Article 14")["status"], "met");
    assert_ne!(claim("EU AI Act", "Article 13")["status"], "met");
    assert!(
        !claim("EU AI Act", "Article 13")["gaps"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(r["not_covered"].as_array().unwrap().len() >= 5);
    assert_eq!(r["paraphrased_from"].as_array().unwrap().len(), 3);
    let html = std::fs::read_to_string(file("evidence/report.html")).unwrap();
    for needle in [
        "SR 3.9",
        "Article 14",
        "MANAGE",
        "Not covered",
        "paraphrased",
    ] {
        assert!(html.contains(needle), "{needle}");
    }
}

fn http(port: u16, method: &str, path: &str, token: &str) -> (u16, Value) {
    http_body(port, method, path, token, "")
}

fn http_body(port: u16, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A demo running in the background, and what it printed when it started.
struct Running {
    child: std::process::Child,
    api_port: u16,
    token: String,
    broker_port: Option<u16>,
}

impl Running {
    fn start(args: &[&str], data_dir: &Path) -> Running {
        Running::spawn("demo", args, data_dir)
    }

    fn spawn(command: &str, args: &[&str], data_dir: &Path) -> Running {
        let mut child = Command::new(BIN)
            .args([command, "--port", "0", "--json"])
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut broker_port = None;
        let url = loop {
            let line = lines
                .next()
                .expect("twinguard ended before serving its page")
                .unwrap();
            if let Some(rest) = line.split("broker on 127.0.0.1:").nth(1) {
                broker_port = rest.split(';').next().and_then(|p| p.parse().ok());
            }
            if let Some(rest) = line.split("live twin at ").nth(1) {
                break rest.to_string();
            }
        };
        // Keep draining stderr so the demo never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let api_port = url
            .split(':')
            .nth(2)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let token = url.split("#token=").nth(1).unwrap().to_string();
        Running {
            child,
            api_port,
            token,
            broker_port,
        }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        http(self.api_port, "GET", path, &self.token)
    }

    /// The simulated plant's clock, as twinguard last saw it.
    fn sim_now(&self) -> i64 {
        loop {
            if let Some(t) = self.get("/api/v1/state").1["t_ms"].as_i64() {
                return t;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks it to stop, as Ctrl-C would.
    fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the run to end and returns its report.
    fn finish(mut self) -> Value {
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(self.child.wait().unwrap().success());
        serde_json::from_str(&out).unwrap()
    }
}

#[test]
fn a_human_approves_maintenance_through_the_api_and_the_plant_carries_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(
        &[
            "--speed",
            "2000",
            "--hours",
            "12",
            "--seed",
            "3",
            "--fault",
            "wear:pump@0=8",
        ],
        dir.path(),
    );
    // Reads need the operator token.
    assert_eq!(http(run.api_port, "GET", "/api/v1/state", "wrong").0, 401);
    let started = Instant::now();
    let mut approved = None;
    while started.elapsed() < Duration::from_secs(60) {
        let (status, p) = run.get("/api/v1/proposals");
        assert_eq!(status, 200);
        let Some(pending) = p["pending"].as_array() else {
            // A response cut short under load: ask again.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if let Some(m) = pending
            .iter()
            .find(|x| x["proposal"]["action"]["kind"] == "maintenance")
        {
            let id = m["id"].as_u64().unwrap();
            let (status, body) = http(
                run.api_port,
                "POST",
                &format!("/api/v1/proposals/{id}/approve"),
                &run.token,
            );
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["execution"]["executed"], true, "{body}");
            approved = Some(id);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(approved.is_some(), "no maintenance proposal appeared");
    let r = run.finish();
    // The bearing was replaced before it failed.
    assert_eq!(r["plant"]["truth"]["pump_failures"], 0, "{}", r["plant"]);
    assert!(
        r["plant"]["truth"]["bearing_wear"].as_f64().unwrap() < 0.5,
        "{}",
        r["plant"]
    );
    assert!(
        r["actions_executed_by_agent"]["maintenance"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_safe_and_audited(&r);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["demo", "--hourz", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("--hourz"), "{err}");

    let plant = dir.path().join("plant.toml");
    std::fs::write(&plant, "[plant]\nid = \"x\"\nname = \"y\"\nassets = 3\n").unwrap();
    let (code, err) = run(&["plant", "check", plant.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("plant.toml") && err.contains("line"), "{err}");

    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("audit.db"), vec![0x42u8; 4096]).unwrap();
    let (code, err) = run(&[
        "demo",
        "--hours",
        "0.1",
        "--speed",
        "0",
        "--port",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("audit.db"), "{err}");
    assert_eq!(
        std::fs::read(data.join("audit.db")).unwrap(),
        vec![0x42u8; 4096],
        "the corrupt file is left as it was"
    );

    let (code, err) = run(&[
        "demo",
        "--hours",
        "1",
        "--fault",
        "melt:pump@1",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown fault kind"), "{err}");

    let (code, err) = run(&["demo", "--body", "cbor"]);
    assert_eq!(code, 2);
    assert!(err.contains("--body") && err.contains("binary"), "{err}");
    let (code, err) = run(&[
        "demo",
        "--transport",
        "opcua",
        "--body",
        "binary",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--body are for --transport mqtt"), "{err}");
}

/// What a run of 0.05 simulated hours shows after one `python_publish`: the device's
/// signed frames accepted beside the plant's (its NaN sample refused), its unsigned and
/// tampered frames refused.
fn assert_python_device_frames(r: &Value) {
    // Three JSON frames of one sample, three binary frames of two, and the good sample
    // of the binary frame that also carries a NaN.
    assert_eq!(
        r["samples"]["accepted"],
        180 * SIGNALS + 3 + 3 * 2 + 1,
        "{}",
        r["frames"]
    );
    assert_eq!(
        r["samples"]["rejected"]["not_finite"], 1,
        "{}",
        r["samples"]
    );
    assert_eq!(r["frames"]["rejected"]["unsigned"], 1, "{}", r["frames"]);
    assert_eq!(
        r["frames"]["rejected"]["bad_signature"], 1,
        "{}",
        r["frames"]
    );
}

/// A device key made with Python's `cryptography` package (the key stays with the device),
/// enrolled for `asset` in the device registry of `data_dir` (only the public key). Needs
/// python3 with `cryptography` and `paho-mqtt` (`.ci/run` installs them).
fn python_device(key: &Path, data_dir: &Path, device: &str, asset: &str) {
    let check = Command::new("python3")
        .args(["-c", "import cryptography, paho.mqtt"])
        .output()
        .expect("python3 is needed");
    assert!(
        check.status.success(),
        "python3 needs the packages cryptography and paho-mqtt (pip install cryptography paho-mqtt): {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let keygen = Command::new("python3")
        .args([
            "-c",
            "import sys; from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey as K; from cryptography.hazmat.primitives import serialization as s; k=K.generate(); open(sys.argv[1],'w').write(k.private_bytes(s.Encoding.Raw,s.PrivateFormat.Raw,s.NoEncryption()).hex()); print(k.public_key().public_bytes(s.Encoding.Raw,s.PublicFormat.Raw).hex())",
        ])
        .arg(key)
        .output()
        .unwrap();
    assert!(
        keygen.status.success(),
        "{}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    let public = String::from_utf8(keygen.stdout).unwrap();
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(
        data_dir.join("devices.toml"),
        format!(
            "[devices.{device}]\nasset = \"{asset}\"\npublic_key = \"{}\"\n",
            public.trim()
        ),
    )
    .unwrap();
}

/// Runs the Python publisher: 3 signed frames of `energy.ambient_temp` at `now`, then one
/// unsigned and one tampered frame. `tls` is (CA, client certificate, client key).
fn python_publish(
    broker_port: u16,
    auth: (&str, &str),
    key: &Path,
    topic: &str,
    now: i64,
    tls: Option<[&Path; 3]>,
) {
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/publisher.py"
    ))
    .args(["127.0.0.1", &broker_port.to_string(), auth.0, auth.1])
    .arg(key)
    .args(["gw-lab", topic, "energy.ambient_temp", "degC", "21.5"])
    .arg(now.to_string())
    .arg("3");
    if let Some([ca, cert, k]) = tls {
        cmd.env("TG_CA", ca).env("TG_CERT", cert).env("TG_KEY", k);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A publisher written in Python from `docs/frame-format.md` alone is accepted over MQTT,
/// its JSON and its binary bodies, and its unsigned and tampered frames are refused.
#[test]
fn python_publisher_from_the_spec_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("lab.key");
    python_device(&key, dir.path(), "gw-lab", "energy");
    let run = Running::start(&["--speed", "10", "--hours", "0.05"], dir.path());
    let secrets: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.path().join("secrets/mqtt.toml")).unwrap())
            .unwrap();
    let password = secrets["users"]["edge-gateway"]
        .as_str()
        .unwrap()
        .to_string();
    let now = run.sim_now();
    python_publish(
        run.broker_port.unwrap(),
        ("edge-gateway", &password),
        &key,
        "twinguard/line1/energy/telemetry",
        now,
        None,
    );
    let r = run.finish();
    assert_python_device_frames(&r);
}

/// `--broker` points twinguard at a broker it did not start (here a separate rumqttd with
/// its own credentials, run by the test); everything else is the same loop.
#[test]
fn external_broker_is_used_when_configured() {
    use std::collections::HashMap;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut users = HashMap::new();
    users.insert("plant-user".to_string(), "s3cret-for-test".to_string());
    let mut v4 = HashMap::new();
    v4.insert(
        "1".to_string(),
        rumqttd::ServerSettings {
            name: "external".into(),
            listen: ([127, 0, 0, 1], port).into(),
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 1 << 17,
                max_inflight_count: 500,
                auth: Some(users),
                external_auth: None,
                dynamic_filters: true,
            },
        },
    );
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 32,
            max_outgoing_packet_count: 500,
            max_segment_size: 1 << 24,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        ..Default::default()
    };
    std::thread::spawn(move || {
        if let Err(e) = rumqttd::Broker::new(config).start() {
            eprintln!("test broker stopped: {e}");
        }
    });
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "test broker did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let dir = tempfile::tempdir().unwrap();
    let run = |password: &str| {
        Command::new(BIN)
            .args([
                "demo", "--speed", "0", "--port", "0", "--json", "--hours", "0.5", "--broker",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path())
            .env("TWINGUARD_MQTT_USERNAME", "plant-user")
            .env("TWINGUARD_MQTT_PASSWORD", password)
            .output()
            .unwrap()
    };
    let out = run("s3cret-for-test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["samples"]["accepted"], 1800 * SIGNALS);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("external MQTT broker at 127.0.0.1:{port}"))
    );
    assert_safe_and_audited(&r);
    // A wrong password is a clear error, not a hang.
    let out = run("wrong");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not subscribe"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn frames_delayed_past_freshness_are_rejected_as_stale() {
    let dir = tempfile::tempdir().unwrap();
    let r = demo(dir.path(), 1.5, &["--attack", "delayed-frames"]);
    // Ten minutes of the tank's frames (5-second frames of 3 signals) arrive two minutes late.
    assert_eq!(r["plant"]["frames_delayed"], 120);
    assert_eq!(r["frames"]["rejected"]["stale"], 120, "{}", r["frames"]);
    // The hole in the tank's data is reported as such, one gap per signal.
    assert_eq!(r["detections"]["gap"], 3, "{}", r["detections"]);
    assert_eq!(r["samples"]["rejected"]["stale"], 120 * 5 * 3);
    assert_eq!(
        r["samples"]["accepted"],
        (1.5 * 3600.0) as u64 * SIGNALS - 120 * 5 * 3
    );
    assert_safe_and_audited(&r);
}

#[test]
fn a_rotated_out_key_is_refused_and_the_new_one_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let r = demo(dir.path(), 1.5, &["--attack", "retired-key"]);
    let n = r["attack_report"]["attempts"].as_u64().unwrap();
    assert!(n >= 5, "{}", r["attack_report"]);
    assert_eq!(r["frames"]["rejected"]["retired_key"], n, "{}", r["frames"]);
    // The gateway's frames, sealed with the new key, are all accepted.
    assert_eq!(r["samples"]["accepted"], (1.5 * 3600.0) as u64 * SIGNALS);
    assert_safe_and_audited(&r);
}

/// `twinguard device ARGS --data-dir DIR`: its exit code, stdout and stderr.
fn device_cli(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("device")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn device_rotate_keeps_data_flowing_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    demo(d, 0.1, &[]);
    let (code, out, err) = device_cli(d, &["rotate", "gw-pump", "--overlap-s", "0"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("gw-pump#2"), "{out}");
    let (_, list, _) = device_cli(d, &["list"]);
    assert!(
        list.contains("gw-pump#1") && list.contains("gw-pump#2"),
        "{list}"
    );
    // The old key is revoked outright; the last key cannot be, a key it lacks is named.
    let (code, _, err) = device_cli(d, &["revoke", "gw-pump", "--key", "gw-pump#1"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = device_cli(d, &["revoke", "gw-pump", "--key", "gw-pump#2"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("only key of device gw-pump"), "{err}");
    let (code, _, err) = device_cli(d, &["revoke", "gw-pump", "--key", "gw-pump#7"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("its keys: gw-pump#2"), "{err}");
    let (_, list, _) = device_cli(d, &["list"]);
    assert!(
        !list.contains("gw-pump#1") && list.contains("gw-pump#2"),
        "{list}"
    );
    // The pump's edge now seals with the new key; nothing is lost.
    let r = demo(d, 0.5, &[]);
    assert_eq!(r["samples"]["accepted"], 1800 * SIGNALS);
    assert_eq!(sum(&r["samples"]["rejected"]), 0);
    let conn = rusqlite::Connection::open(d.join("audit.db")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE kind IN ('device_key_rotated', 'device_revoked')",
            [],
            |x| x.get(0),
        )
        .unwrap();
    assert_eq!(n, 2);
    let (code, _, err) = device_cli(d, &["rotate", "gw-nope"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("gw-nope"), "{err}");
}

/// The device registry changes while twinguard runs: a key rotated (the edge takes up
/// its new key, frames sealed with the old one in the overlap are still accepted, nothing
/// is lost), the file broken (the registry in force stays, the reason is reported), a
/// device removed (its frames are refused from then on). Each change is audited.
#[test]
fn the_device_registry_changes_while_twinguard_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(&["--speed", "60", "--hours", "0.3"], dir.path());
    let t0 = run.sim_now();
    let registry = dir.path().join("devices.toml");
    let wait_sim = |s: i64| {
        while run.sim_now() < t0 + s * 1000 {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_sim(120);
    let (code, _, err) = device_cli(dir.path(), &["rotate", "gw-pump", "--overlap-s", "3600"]);
    assert_eq!(code, Some(0), "{err}");
    let rotated = std::fs::read_to_string(&registry).unwrap();
    wait_sim(400);
    // The pump's values now come sealed with its new key.
    let (_, state) = run.get("/api/v1/state");
    let seals: Vec<&str> = state["assets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["signals"].as_array().unwrap())
        .filter(|s| s["provenance"]["device"] == "gw-pump")
        .filter_map(|s| s["provenance"]["seal"].as_str())
        .collect();
    assert!(
        !seals.is_empty() && seals.iter().all(|s| *s == "ed25519:gw-pump#2"),
        "{seals:?}"
    );
    std::fs::write(&registry, "[devices.gw-pump\nasset = ").unwrap();
    wait_sim(600);
    let (_, state) = run.get("/api/v1/report");
    let failure = state["devices"]["registry_failure"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    std::fs::write(&registry, &rotated).unwrap();
    let (code, out, err) = device_cli(dir.path(), &["revoke", "gw-energy"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("gw-energy#1"), "{out}");
    let r = run.finish();

    assert!(failure.contains("devices.toml"), "{state}");
    assert_eq!(r["devices"]["registry_failure"], Value::Null);
    assert_eq!(r["devices"]["registered"], 4);
    // Only the removed device's frames were refused; the rotated one lost nothing.
    let refused = r["frames"]["rejected"]["unknown_device"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused > 0, "{}", r["frames"]);
    assert_eq!(sum(&r["frames"]["rejected"]), refused, "{}", r["frames"]);
    assert_eq!(
        r["samples"]["accepted"].as_u64().unwrap() + sum(&r["samples"]["rejected"]),
        1080 * SIGNALS
    );
    let conn = rusqlite::Connection::open(dir.path().join("audit.db")).unwrap();
    let kinds = |kind: &str| -> Vec<String> {
        let mut q = conn
            .prepare("SELECT body FROM audit WHERE kind = ?1 ORDER BY seq")
            .unwrap();
        q.query_map([kind], |x| x.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let changed = kinds("devices_changed");
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(
        changed[0].contains("gw-pump#2") && changed[0].contains("\"changed\""),
        "{}",
        changed[0]
    );
    assert!(
        changed[1].contains("gw-energy") && changed[1].contains("\"removed\""),
        "{}",
        changed[1]
    );
    assert!(
        !changed[0]
            .contains(&std::fs::read_to_string(dir.path().join("edge/gw-pump.key")).unwrap())
    );
    assert_eq!(kinds("devices_unreadable").len(), 1);
}

/// A legacy device that cannot sign: refused by default; with the source's
/// `allow_unsigned = true` its values are shown but never drive an action.
#[test]
fn values_from_an_unsigned_source_are_shown_but_never_drive_actuation() {
    let dir = tempfile::tempdir().unwrap();
    let default = Command::new(BIN).arg("default-config").output().unwrap();
    let text = String::from_utf8(default.stdout).unwrap();
    assert!(text.contains("allow_unsigned = false"));
    let legacy = dir.path().join("legacy.toml");
    std::fs::write(
        &legacy,
        text.replace("allow_unsigned = false", "allow_unsigned = true"),
    )
    .unwrap();

    // Default configuration: the filler's unsigned frames are refused.
    let r = demo(
        &dir.path().join("a"),
        1.0,
        &["--legacy-device", "gw-filler"],
    );
    assert_eq!(r["frames"]["rejected"]["unsigned"], 720, "{}", r["frames"]);
    assert_eq!(r["proposals"]["executed"], 0);
    assert_safe_and_audited(&r);

    // Allowed as untrusted: accepted, but the optimiser (whose decisions rest on filler
    // values) is denied every time, while nothing else changes.
    let r = demo(
        &dir.path().join("b"),
        2.0,
        &[
            "--legacy-device",
            "gw-filler",
            "--config",
            legacy.to_str().unwrap(),
        ],
    );
    assert_eq!(r["samples"]["accepted"], 2 * 3600 * SIGNALS);
    assert!(
        r["proposals"]["denied"]["untrusted_input"]
            .as_u64()
            .unwrap()
            >= 2,
        "{}",
        r["proposals"]
    );
    assert_eq!(r["proposals"]["executed"], 0);
    assert_safe_and_audited(&r);
    let conn = rusqlite::Connection::open(dir.path().join("b").join("audit.db")).unwrap();
    let detail: String = conn
        .query_row(
            "SELECT json_extract(body, '$.detail') FROM audit WHERE kind = 'decision' AND json_extract(body, '$.reason') = 'untrusted_input' LIMIT 1",
            [],
            |x| x.get(0),
        )
        .unwrap();
    assert!(
        detail.contains("filler.") && detail.contains("unsigned"),
        "{detail}"
    );
}

#[test]
fn check_config_explains_every_error_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let text = String::from_utf8(
        Command::new(BIN)
            .arg("default-config")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &text).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        text.replace("zone = \"cell\"", "zone = \"cel\"")
            .replace("broker = \"embedded\"", "broker = \"nowhere\""),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let zone_line = text.lines().position(|l| l == "zone = \"cell\"").unwrap() + 1;
    assert!(
        stdout.contains(&format!(
            "bad.toml:{zone_line}:8: source \"line-mqtt\": zone \"cel\" is not declared"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("\"nowhere\" is neither"), "{stdout}");
    assert!(stdout.contains("2 error(s)"), "{stdout}");

    // The demo refuses to start on it, with the same explanations.
    let out = Command::new(BIN)
        .args([
            "demo", "--hours", "0.1", "--speed", "0", "--port", "0", "--config",
        ])
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not declared"));
}

/// Debian's mosquitto, started by the test on loopback (`.ci/run` installs it).
struct Mosquitto {
    child: KillOnDrop,
    port: u16,
}

impl Mosquitto {
    /// Stops it the way an operator would (SIGTERM), so that it saves its persistence file.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.0.id().to_string()])
            .status();
        let _ = self.child.0.wait();
    }
}

fn mosquitto(dir: &Path, conf_extra: &str) -> Mosquitto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    mosquitto_at(dir, port, conf_extra)
}

fn mosquitto_at(dir: &Path, port: u16, conf_extra: &str) -> Mosquitto {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is needed: apt-get install mosquitto (.ci/run installs it)");
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("user root\nlistener {port} 127.0.0.1\n{conf_extra}\n"),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Mosquitto {
        child: KillOnDrop(child),
        port,
    }
}

/// A CA, a broker certificate for 127.0.0.1, and one client certificate per common name, as
/// PEM files `{prefix}-ca.pem`, `{prefix}-server.*` and `{prefix}-{cn}.*`.
fn test_pki(dir: &Path, prefix: &str, clients: &[&str]) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{prefix} test CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join(format!("{prefix}-ca.pem")), ca.pem()).unwrap();
    let mut certs = vec![(
        "server",
        vec!["127.0.0.1".to_string(), "localhost".to_string()],
        "broker",
    )];
    certs.extend(clients.iter().map(|cn| (*cn, vec![], *cn)));
    for (name, sans, cn) in certs {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{prefix}-{name}.pem")), cert.pem()).unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-{name}.key")),
            key.serialize_pem(),
        )
        .unwrap();
    }
}

fn mtls_broker(d: &Path, acl: &str) -> Mosquitto {
    std::fs::write(d.join("acl"), acl).unwrap();
    mosquitto(
        d,
        &format!(
            "cafile {0}/good-ca.pem\ncertfile {0}/good-server.pem\nkeyfile {0}/good-server.key\nrequire_certificate true\nuse_identity_as_username true\nacl_file {0}/acl",
            d.display()
        ),
    )
}

/// The default configuration pointed at a TLS broker with the given CA and client identity.
fn tls_config(d: &Path, port: u16, ca: &str, client: &str) -> std::path::PathBuf {
    let text = String::from_utf8(
        Command::new(BIN)
            .arg("default-config")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let c = text.replace(
        "broker = \"embedded\"",
        &format!(
            "broker = \"127.0.0.1:{port}\"\ntls = {{ ca_file = \"{ca}-ca.pem\", cert_file = \"{client}.pem\", key_file = \"{client}.key\" }}"
        ),
    );
    let path = d.join(format!("{ca}-{client}.toml"));
    std::fs::write(&path, c).unwrap();
    path
}

#[test]
fn mqtt_over_mutual_tls_with_mosquitto_and_its_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    test_pki(d, "good", &["twinguard"]);
    test_pki(d, "rogue", &["twinguard"]);
    let broker = mtls_broker(d, "user twinguard\ntopic readwrite twinguard/#\n");
    let config =
        |ca: &str, client: &str| tls_config(d, broker.port, ca, &format!("{client}-twinguard"));
    let run = |cfg: &Path, data: &str| {
        Command::new(BIN)
            .args([
                "demo", "--speed", "0", "--port", "0", "--json", "--hours", "0.5", "--config",
            ])
            .arg(cfg)
            .arg("--data-dir")
            .arg(d.join(data))
            .output()
            .unwrap()
    };

    let good = config("good", "good");
    let check = Command::new(BIN)
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let out = run(&good, "ok");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("over mutual TLS"), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["samples"]["accepted"], 1800 * SIGNALS);
    assert_safe_and_audited(&r);
    // Provenance names the broker certificate the connection verified.
    let broker_der = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_file(d.join("good-server.pem")).unwrap()
    };
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(broker_der.as_ref()))
    };
    assert_eq!(r["sources"][0]["security"], "mtls");
    assert_eq!(
        r["sources"][0]["peer_certificate"],
        sha.as_str(),
        "{}",
        r["sources"][0]
    );

    // A client certificate from another CA is refused by the broker ...
    let out = run(&config("good", "rogue"), "rogue-client");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not subscribe"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and a broker whose certificate our CA did not sign is refused by twinguard.
    let out = run(&config("rogue", "good"), "rogue-server");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not subscribe") && stderr.contains("certificate"),
        "{stderr}"
    );
}

/// A Python device (paho-mqtt, written from the frame-format document) publishes over
/// mutual TLS to mosquitto with its own certificate; mosquitto's ACL lets it publish only on
/// its asset's topic; twinguard takes its signed frames and refuses its unsigned and
/// tampered ones.
#[test]
fn python_device_over_mosquitto_mutual_tls_with_a_per_device_acl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    test_pki(d, "good", &["twinguard", "gw-lab"]);
    let broker = mtls_broker(
        d,
        "user twinguard\ntopic readwrite twinguard/#\n\nuser gw-lab\ntopic write twinguard/line1/energy/telemetry\n",
    );
    let cfg = tls_config(d, broker.port, "good", "good-twinguard");
    let data = d.join("data");
    let key = d.join("lab.key");
    python_device(&key, &data, "gw-lab", "energy");
    let run = Running::start(
        &[
            "--speed",
            "10",
            "--hours",
            "0.05",
            "--config",
            cfg.to_str().unwrap(),
        ],
        &data,
    );
    let now = run.sim_now();
    let tls = [
        d.join("good-ca.pem"),
        d.join("good-gw-lab.pem"),
        d.join("good-gw-lab.key"),
    ];
    let tls = Some([tls[0].as_path(), tls[1].as_path(), tls[2].as_path()]);
    python_publish(
        broker.port,
        ("-", "-"),
        &key,
        "twinguard/line1/energy/telemetry",
        now,
        tls,
    );
    // The broker's ACL drops what the device publishes on another asset's topic.
    python_publish(
        broker.port,
        ("-", "-"),
        &key,
        "twinguard/line1/tank/telemetry",
        now,
        tls,
    );
    let r = run.finish();
    assert_python_device_frames(&r);
    assert!(
        r["frames"]["rejected"].get("unauthorized_topic").is_none(),
        "{}",
        r["frames"]
    );
}

/// twinguard's own clients speak MQTT 5 (the simulated plant keeps MQTT 3.1.1): on the
/// embedded broker, and on mosquitto over mutual TLS.
#[test]
fn mqtt5_on_the_embedded_broker_and_on_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = String::from_utf8(
        Command::new(BIN)
            .arg("default-config")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let v5 = |t: &str| {
        t.replace(
            "allow_unsigned = false",
            "allow_unsigned = false\nmqtt_version = \"5\"",
        )
    };
    let embedded = d.join("v5.toml");
    std::fs::write(&embedded, v5(&text)).unwrap();
    let out = Command::new(BIN)
        .args([
            "demo", "--speed", "0", "--port", "0", "--json", "--hours", "0.5", "--config",
        ])
        .arg(&embedded)
        .arg("--data-dir")
        .arg(d.join("a"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("speaks MQTT 5"));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["samples"]["accepted"], 1800 * SIGNALS);
    assert!(
        r["proposals"]["executed"].as_u64().unwrap() >= 1,
        "commands must travel over MQTT 5 too"
    );
    assert_safe_and_audited(&r);

    test_pki(d, "good", &["twinguard"]);
    let broker = mtls_broker(d, "user twinguard\ntopic readwrite twinguard/#\n");
    let cfg = tls_config(d, broker.port, "good", "good-twinguard");
    std::fs::write(&cfg, v5(&std::fs::read_to_string(&cfg).unwrap())).unwrap();
    let out = Command::new(BIN)
        .args([
            "demo", "--speed", "0", "--port", "0", "--json", "--hours", "0.5", "--config",
        ])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(d.join("b"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("mutual TLS") && stderr.contains("MQTT 5"),
        "{stderr}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["samples"]["accepted"], 1800 * SIGNALS);
    assert_safe_and_audited(&r);

    let bad = d.join("bad.toml");
    std::fs::write(
        &bad,
        text.replace(
            "allow_unsigned = false",
            "allow_unsigned = false\nmqtt_version = \"4\"",
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mqtt_version \"4\""));
}

#[test]
fn the_whole_loop_runs_over_opc_ua_with_sign_and_encrypt() {
    let dir = tempfile::tempdir().unwrap();
    let r = demo(dir.path(), 2.0, &["--transport", "opcua"]);
    // Every sample of every signal, each second, through subscriptions.
    assert_eq!(
        r["samples"]["accepted"],
        2 * 3600 * SIGNALS,
        "{}",
        r["samples"]
    );
    assert_eq!(sum(&r["samples"]["rejected"]), 0, "{}", r["samples"]);
    assert_eq!(r["sources"][0]["protocol"], "opcua");
    assert_eq!(r["sources"][0]["security"], "SignAndEncrypt/Basic256Sha256");
    assert_eq!(
        r["sources"][0]["peer_certificate"].as_str().unwrap().len(),
        64,
        "the server certificate's SHA-256 is recorded"
    );
    // The optimiser's setpoint changes reached the plant as OPC UA Writes.
    assert!(
        r["proposals"]["executed"].as_u64().unwrap() >= 2,
        "{}",
        r["proposals"]
    );
    assert_safe_and_audited(&r);
    // The trust list: the plant server's certificate is trusted, twinguard's own is listed.
    let out = Command::new(BIN)
        .args(["pki", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("trusted") && text.contains("own"), "{text}");
    // The provenance of an OPC UA value names its node, channel security and trust.
    let conn = rusqlite::Connection::open(dir.path().join("audit.db")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE kind = 'actuation'",
            [],
            |x| x.get(0),
        )
        .unwrap();
    assert_eq!(n as u64, r["proposals"]["executed"].as_u64().unwrap());
}

#[test]
fn opc_ua_values_drive_nothing_when_policy_demands_device_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let default = Command::new(BIN).arg("default-config").output().unwrap();
    let text = String::from_utf8(default.stdout).unwrap();
    assert!(text.contains("min_trust = \"channel\""));
    let strict = dir.path().join("strict.toml");
    std::fs::write(
        &strict,
        text.replace("min_trust = \"channel\"", "min_trust = \"verified\""),
    )
    .unwrap();
    let r = demo(
        &dir.path().join("run"),
        2.0,
        &["--transport", "opcua", "--config", strict.to_str().unwrap()],
    );
    assert_eq!(r["samples"]["accepted"], 2 * 3600 * SIGNALS);
    assert_eq!(r["proposals"]["executed"], 0, "{}", r["proposals"]);
    assert!(
        r["proposals"]["denied"]["untrusted_input"]
            .as_u64()
            .unwrap()
            >= 2,
        "{}",
        r["proposals"]
    );
    assert_safe_and_audited(&r);
    // Attacks on signed MQTT frames are refused for this transport, with the reason.
    let out = Command::new(BIN)
        .args([
            "demo",
            "--transport",
            "opcua",
            "--attack",
            "replay",
            "--hours",
            "0.1",
            "--port",
            "0",
            "--data-dir",
        ])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--transport mqtt"));
}

/// FreeOpcUa's asyncua server (tests/python/opcua_server.py), killed on drop.
struct AsyncuaServer {
    /// Held for its `Drop`: the server is killed with this value.
    _child: KillOnDrop,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl AsyncuaServer {
    fn start(dir: &Path, password: &str, allow_none: bool) -> AsyncuaServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        AsyncuaServer::start_at(dir, password, allow_none, port)
    }

    fn start_at(dir: &Path, password: &str, allow_none: bool, port: u16) -> AsyncuaServer {
        let check = Command::new("python3")
            .args(["-c", "import asyncua"])
            .output()
            .expect("python3 is needed");
        assert!(
            check.status.success(),
            "python3 needs asyncua (pip install asyncua==2.1.0): {}",
            String::from_utf8_lossy(&check.stderr)
        );
        std::fs::create_dir_all(dir).unwrap();
        let pw = dir.join("password");
        std::fs::write(&pw, password).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/opcua_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir)
            .arg("--password-file")
            .arg(&pw)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if allow_none {
            cmd.arg("--allow-none");
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let s = AsyncuaServer {
            _child: KillOnDrop(child),
            port,
            lines,
        };
        let ready = s.wait_for("READY", 30);
        assert!(ready.is_some(), "the asyncua server did not start");
        s
    }

    fn wait_for(&self, prefix: &str, seconds: u64) -> Option<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

fn ua_config(dir: &Path, port: u16, security: &str) -> std::path::PathBuf {
    let path = dir.join("twinguard.toml");
    std::fs::write(dir.join("ua-password"), "a-long-test-password\n").unwrap();
    std::fs::write(
        &path,
        format!(
            r#"[twinguard]
zone = "operations"

[[zones]]
id = "cell"
security_level = 2

[[zones]]
id = "operations"
security_level = 3

[[sources]]
id = "line1-plc"
protocol = "opcua"
zone = "cell"
endpoint = "opc.tcp://127.0.0.1:{port}/"
username = "twinguard"
password_file = "ua-password"
{security}

[[sources.nodes]]
signal = "tank.level"
unit = "m"
browse_path = "/2:line1/2:tank/2:tank&.level"

[[sources.nodes]]
signal = "pump.speed"
unit = "rpm"
node_id = "ns=2;s=pump.speed"
sampling_ms = 100

[[conduits]]
id = "cell-to-operations"
from = "cell"
to = "operations"
protocols = ["opcua"]
"#
        ),
    )
    .unwrap();
    path
}

fn watch(config: &Path, data: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["watch", "--seconds", "2", "--json", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

#[test]
fn asyncua_server_is_refused_until_trusted_then_watched_and_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = AsyncuaServer::start(&dir.path().join("plc"), "a-long-test-password", false);
    let config = ua_config(dir.path(), server.port, "");
    let data = dir.path().join("data");
    let check = Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // Unknown server certificate: refused, with the command that trusts it.
    let out = watch(&config, &data);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let thumb = err
        .split("twinguard pki trust ")
        .nth(1)
        .and_then(|t| t.split('`').next())
        .unwrap_or_else(|| panic!("no trust hint in: {err}"))
        .to_string();
    let list = Command::new(BIN)
        .args(["pki", "list", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(list.contains("rejected") && list.contains(&thumb), "{list}");
    let trust = Command::new(BIN)
        .args(["pki", "trust", &thumb, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        trust.status.success(),
        "{}",
        String::from_utf8_lossy(&trust.stderr)
    );

    // Trusted: values arrive over SignAndEncrypt, checked, with their provenance.
    let out = watch(&config, &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["samples"]["accepted"].as_u64().unwrap() >= 10, "{r}");
    assert_eq!(sum(&r["samples"]["rejected"]), 0, "{r}");
    let p = &r["signals"]["tank.level"]["provenance"];
    assert_eq!(p["trust"], "channel");
    let server = run_against_asyncua(dir.path(), &config, &data, server);
    assert_eq!(p["channel"], "ns=2;s=tank.level");
    assert_eq!(p["source"]["security"], "SignAndEncrypt/Basic256Sha256");
    assert_eq!(p["source"]["zone"], "cell");
    assert_eq!(p["source"]["peer_certificate"].as_str().unwrap().len(), 64);

    // Actuation path: a Write to the server's writable setpoint arrives at the server.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = opcua_link::SourceConfig::new(
            "line1-plc",
            &format!("opc.tcp://127.0.0.1:{}/", server.port),
            opcua_link::Policy::Basic256Sha256,
            opcua_link::Mode::SignAndEncrypt,
            data.join("opcua").join("pki"),
        );
        cfg.identity = opcua_link::UserIdentity::UserName {
            user: "twinguard".into(),
            password: "a-long-test-password".into(),
        };
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let mut conn = opcua_link::Connection::connect(&cfg, tx).await.unwrap();
        conn.write(
            &opcua_link::NodeRef::Id("ns=2;s=pump.speed_sp".into()),
            1650.0,
        )
        .await
        .unwrap();
        conn.close().await;
    });
    let w = server.wait_for("WRITE", 10);
    assert_eq!(w.as_deref(), Some("WRITE pump.speed_sp 1650.0"));

    // A wrong password is refused by the server.
    std::fs::write(dir.path().join("ua-password"), "wrong\n").unwrap();
    let out = watch(&config, &data);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Bad"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn security_none_is_refused_unless_allowed_and_then_untrusted() {
    let dir = tempfile::tempdir().unwrap();
    let server = AsyncuaServer::start(&dir.path().join("plc"), "a-long-test-password", true);
    let config = ua_config(
        dir.path(),
        server.port,
        "security_policy = \"None\"\nsecurity_mode = \"None\"",
    );
    let check = Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let text = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        text.contains("allow_security_none") && text.contains(":20:17:"),
        "{text}"
    );
    let config = ua_config(
        dir.path(),
        server.port,
        "security_policy = \"None\"\nsecurity_mode = \"None\"\nallow_security_none = true",
    );
    let out = watch(&config, &dir.path().join("data"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["samples"]["accepted"].as_u64().unwrap() >= 10, "{r}");
    let p = &r["signals"]["tank.level"]["provenance"];
    assert_eq!(
        p["trust"], "untrusted",
        "values over security None are untrusted"
    );
    assert_eq!(p["source"]["security"], "None/None");
}

#[test]
fn qos1_frames_for_a_persistent_session_survive_a_broker_restart() {
    use ingest::mqtt::{BrokerEndpoint, MqttVersion, RawFrame, run_subscriber};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let conf = format!(
        "allow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 10000",
        store.display()
    );
    let broker = mosquitto(dir.path(), &conf);
    let port = broker.port;
    let endpoint = |version| BrokerEndpoint {
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: None,
        tls: None,
        version,
        persistent_session: true,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    const N: usize = 300;
    let broker = rt.block_on(async {
        // twinguard subscribes once (the broker now keeps its session), then goes away.
        for (version, id) in [
            (MqttVersion::V311, "tg-ingest-311"),
            (MqttVersion::V5, "tg-ingest-5"),
        ] {
            let (tx, rx) = tokio::sync::mpsc::channel::<RawFrame>(8);
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(run_subscriber(
                endpoint(version),
                id.into(),
                vec!["plant/#".into()],
                tx,
                Some(ready_tx),
                Default::default(),
            ));
            tokio::time::timeout(Duration::from_secs(10), ready_rx)
                .await
                .expect("subscribed")
                .unwrap();
            task.abort();
            drop(rx);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Frames published with QoS 1 while it is away: the broker acknowledges each.
        let mut opts = rumqttc::MqttOptions::new("device", "127.0.0.1", port);
        opts.set_clean_session(true);
        let (client, mut ev) = rumqttc::AsyncClient::new(opts, 1024);
        for i in 0..N {
            client
                .publish(
                    "plant/tank",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    i.to_string(),
                )
                .await
                .unwrap();
        }
        let mut acked = 0;
        while acked < N {
            match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                other => panic!("publisher: {other:?} after {acked} acks"),
            }
        }
        broker
    });
    // The broker restarts (and reloads the sessions it saved).
    broker.stop();
    let _broker = mosquitto_at(dir.path(), port, &conf);
    rt.block_on(async {
        // twinguard comes back with the same client ids: everything is delivered, in order,
        // through a bounded queue (8 frames) that a slow consumer drains.
        for (version, id) in [
            (MqttVersion::V311, "tg-ingest-311"),
            (MqttVersion::V5, "tg-ingest-5"),
        ] {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<RawFrame>(8);
            let task = tokio::spawn(run_subscriber(
                endpoint(version),
                id.into(),
                vec!["plant/#".into()],
                tx,
                None,
                Default::default(),
            ));
            let mut got = Vec::new();
            while got.len() < N {
                match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                    Ok(Some(f)) => {
                        got.push(
                            String::from_utf8(f.payload)
                                .unwrap()
                                .parse::<usize>()
                                .unwrap(),
                        );
                        if got.len() % 50 == 0 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    other => panic!(
                        "{version:?}: {} of {N} delivered, then {other:?}",
                        got.len()
                    ),
                }
            }
            got.dedup();
            assert_eq!(got, (0..N).collect::<Vec<_>>(), "{version:?}");
            task.abort();
        }
    });
}

#[test]
fn sparkplug_b_payloads_are_followed_through_births_gaps_and_rebirths() {
    let dir = tempfile::tempdir().unwrap();
    let default = Command::new(BIN).arg("default-config").output().unwrap();
    let text = String::from_utf8(default.stdout).unwrap();
    let config = dir.path().join("sparkplug.toml");
    std::fs::write(
        &config,
        text.replace(
            "allow_unsigned = false",
            "allow_unsigned = false\npayload = \"sparkplug\"\nsparkplug_group = \"bottling\"",
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    // Every signal arrives through the edge nodes' births and data; unsigned, so nothing
    // it says may drive an action.
    let r = demo(&dir.path().join("a"), 1.0, &["--config", cfg]);
    assert_eq!(r["samples"]["accepted"], 3600 * SIGNALS, "{}", r["samples"]);
    assert_eq!(sum(&r["samples"]["rejected"]), 0);
    assert_eq!(sum(&r["frames"]["rejected"]), 0);
    assert_eq!(r["sources"][0]["protocol"], "mqtt/3.1.1+sparkplug-b");
    assert_eq!(r["plant"]["sparkplug_births"], 5, "one birth per edge node");
    assert_eq!(r["proposals"]["executed"], 0);
    assert!(
        r["proposals"]["denied"]["untrusted_input"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_safe_and_audited(&r);

    // The tank's messages are held back for ten minutes: the host sees a sequence gap,
    // refuses what it cannot place, asks for a rebirth, and data flows again after it.
    let r = demo(
        &dir.path().join("b"),
        2.0,
        &["--config", cfg, "--attack", "delayed-frames"],
    );
    assert!(
        r["frames"]["rejected"]["sequence"].as_u64().unwrap() >= 1,
        "{}",
        r["frames"]
    );
    let rebirths = r["sources"][0]["sparkplug_rebirths"].as_u64().unwrap();
    assert!(rebirths >= 1, "{}", r["sources"][0]);
    assert!(
        rebirths < 20,
        "rebirth requests are not repeated for every message: {rebirths}"
    );
    assert!(
        r["plant"]["sparkplug_births"].as_u64().unwrap() > 5,
        "{}",
        r["plant"]
    );
    // After the window, the tank's data is accepted again: most of the run's samples are.
    assert!(
        r["samples"]["accepted"].as_u64().unwrap() > 2 * 3600 * SIGNALS * 9 / 10,
        "{}",
        r["samples"]
    );
    assert_safe_and_audited(&r);
    let conn = rusqlite::Connection::open(dir.path().join("b").join("audit.db")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE kind = 'sparkplug_rebirth_requested'",
            [],
            |x| x.get(0),
        )
        .unwrap();
    assert_eq!(n as u64, rebirths);
}

/// `twinguard run` on the asyncua PLC: values flow into the twin, and the operator's stop
/// button reaches the PLC as a call of its StopLine method, through the guard.
fn run_against_asyncua(
    dir: &Path,
    config: &Path,
    data: &Path,
    server: AsyncuaServer,
) -> AsyncuaServer {
    let text = std::fs::read_to_string(config).unwrap();
    let with_actuation = dir.join("run.toml");
    std::fs::write(
        &with_actuation,
        format!(
            "{text}\n[[sources.writes]]\nsetpoint = \"pump.speed_sp\"\nnode = \"ns=2;s=pump.speed_sp\"\n\n[[sources.calls]]\ncommand = \"stop_line\"\nobject = \"/2:line1\"\nmethod = \"ns=2;s=line1.StopLine\"\n"
        ),
    )
    .unwrap();
    let run = Running::spawn(
        "run",
        &[
            "--seconds",
            "60",
            "--config",
            with_actuation.to_str().unwrap(),
        ],
        data,
    );
    // Values arrive at the twin.
    let started = Instant::now();
    loop {
        let (_, state) = run.get("/api/v1/state");
        let level = state["assets"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|a| {
                a["signals"]
                    .as_array()?
                    .iter()
                    .find(|s| s["id"] == "tank.level")
                    .cloned()
            });
        if level.is_some_and(|l| l["value"].is_number() && l["provenance"]["trust"] == "channel") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no value reached the twin: {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = http(run.api_port, "POST", "/api/v1/stop", &run.token);
    assert_eq!(status, 200, "{body}");
    assert!(
        server.wait_for("CALL StopLine", 10).is_some(),
        "the stop did not reach the PLC"
    );
    // The PLC goes away: the twin shows a gap for its source at once ...
    let port = server.port;
    drop(server);
    let gap = |run: &Running| {
        run.get("/api/v1/alerts").1.as_array().is_some_and(|a| {
            a.iter().any(|d| {
                d["kind"] == "gap"
                    && d["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("connection to source"))
            })
        })
    };
    let started = Instant::now();
    while !gap(&run) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no gap alert after the PLC stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... and when it is back (same certificate, same port) the session and subscription
    // are restored and the gap clears.
    let server = AsyncuaServer::start_at(&dir.join("plc"), "a-long-test-password", false, port);
    let started = Instant::now();
    while gap(&run) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the gap did not clear after the PLC came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Values flow again on the restored subscription.
    let accepted = |run: &Running| run.get("/api/v1/report").1["samples"]["accepted"].as_u64();
    let before = accepted(&run).unwrap_or(0);
    let started = Instant::now();
    while accepted(&run).unwrap_or(0) < before + 5 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no values after the PLC came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    run.interrupt();
    let r = run.finish();
    assert!(
        r["samples"]["accepted"].as_u64().unwrap() >= before + 5,
        "{}",
        r["samples"]
    );
    assert_eq!(r["line_stops"], 1, "{r}");
    assert_eq!(r["audit"]["verified"], true);
    assert!(
        r["sources"][0]["events"]["lost"].as_u64().unwrap() >= 1,
        "{}",
        r["sources"][0]
    );
    assert!(
        r["sources"][0]["events"]["restored"].as_u64().unwrap() >= 1,
        "{}",
        r["sources"][0]
    );
    server
}

#[test]
fn the_embedded_broker_confines_each_account_to_its_topics() {
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(&["--speed", "150", "--hours", "0.5"], dir.path());
    let port = run.broker_port.expect("the demo names its broker port");
    let secrets: toml::Value = toml::from_str(
        &std::fs::read_to_string(dir.path().join("secrets").join("mqtt.toml")).unwrap(),
    )
    .unwrap();
    let password = secrets["users"]["gw-tank"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The tank's device account: its own topic is fine, the pump's is not.
    let outcome = |topic: &'static str| {
        let password = password.clone();
        rt.block_on(async move {
            let mut o =
                rumqttc::MqttOptions::new(format!("probe-{}", topic.len()), "127.0.0.1", port);
            o.set_credentials("gw-tank", password);
            let (client, mut ev) = rumqttc::AsyncClient::new(o, 16);
            client
                .publish(
                    topic,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    b"not a frame".to_vec(),
                )
                .await
                .unwrap();
            loop {
                match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => {
                        return "accepted";
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return "disconnected",
                    Err(_) => return "no answer",
                }
            }
        })
    };
    assert_eq!(outcome("twinguard/line1/tank/telemetry"), "accepted");
    assert_eq!(outcome("twinguard/line1/pump/telemetry"), "disconnected");
    let r = run.finish();
    let refusals = r["broker_refusals"].as_array().unwrap();
    assert!(
        refusals
            .iter()
            .any(|x| x == "gw-tank: publish to twinguard/line1/pump/telemetry"),
        "{refusals:?}"
    );
    // What the account may publish still has to pass ingest: not a frame.
    assert!(
        r["frames"]["rejected"]["malformed"].as_u64().unwrap() >= 1,
        "{}",
        r["frames"]
    );
    assert_safe_and_audited(&r);
}

/// Runs `watch` until it connects, trusting each server certificate it is refused with
/// (through `twinguard pki trust`, as an engineer would).
fn trust_every_server(config: &Path, data: &Path, servers: usize) {
    for _ in 0..=servers {
        let out = watch(config, data);
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let thumb = err
            .split("twinguard pki trust ")
            .nth(1)
            .and_then(|t| t.split('`').next())
            .unwrap_or_else(|| panic!("no trust hint in: {err}"))
            .to_string();
        let trust = Command::new(BIN)
            .args(["pki", "trust", &thumb, "--data-dir"])
            .arg(data)
            .output()
            .unwrap();
        assert!(trust.status.success());
    }
    panic!("watch still fails after trusting {servers} servers");
}

/// `twinguard run` on two PLCs at once: each source's values carry their own provenance,
/// a line stop reaches both, one PLC going away is a gap in its signals only, and a
/// setpoint claimed by both is refused before anything connects.
#[test]
fn run_follows_two_plcs_and_a_stop_reaches_both() {
    let dir = tempfile::tempdir().unwrap();
    let filler = AsyncuaServer::start(&dir.path().join("filler"), "a-long-test-password", false);
    let pumps = AsyncuaServer::start(&dir.path().join("pumps"), "a-long-test-password", false);
    std::fs::write(dir.path().join("ua-password"), "a-long-test-password\n").unwrap();
    let source = |id: &str, port: u16, signal: &str, unit: &str, writes: &str| {
        format!(
            r#"
[[sources]]
id = "{id}"
protocol = "opcua"
zone = "cell"
endpoint = "opc.tcp://127.0.0.1:{port}/"
username = "twinguard"
password_file = "ua-password"

[[sources.nodes]]
signal = "{signal}"
unit = "{unit}"
node_id = "ns=2;s={signal}"
{writes}
[[sources.calls]]
command = "stop_line"
object = "ns=2;s=line1"
method = "ns=2;s=line1.StopLine"
"#
        )
    };
    let config = dir.path().join("two-plcs.toml");
    std::fs::write(
        &config,
        format!(
            r#"[twinguard]
zone = "operations"

[[zones]]
id = "cell"
security_level = 2

[[zones]]
id = "operations"
security_level = 3
{}{}
[[conduits]]
id = "cell-to-operations"
from = "cell"
to = "operations"
protocols = ["opcua"]
"#,
            source("filler-plc", filler.port, "tank.level", "m", ""),
            source(
                "pump-plc",
                pumps.port,
                "pump.speed",
                "rpm",
                "\n[[sources.writes]]\nsetpoint = \"pump.speed_sp\"\nnode = \"ns=2;s=pump.speed_sp\"\n"
            ),
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let twice = dir.path().join("twice.toml");
    std::fs::write(
        &twice,
        std::fs::read_to_string(&config).unwrap().replacen(
            "[[sources.calls]]",
            "[[sources.writes]]\nsetpoint = \"pump.speed_sp\"\nnode = \"ns=2;s=pump.speed_sp\"\n\n[[sources.calls]]",
            1,
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--seconds", "1", "--config"])
        .arg(&twice)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("setpoint \"pump.speed_sp\" is written by two sources"),
        "{err}"
    );
    trust_every_server(&config, &data, 2);

    let run = Running::spawn(
        "run",
        &["--seconds", "60", "--config", config.to_str().unwrap()],
        &data,
    );
    // Both PLCs' values reach the twin, each with its own source in its provenance.
    let source_of = |run: &Running, signal: &str| {
        let (_, state) = run.get("/api/v1/state");
        state["assets"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|a| {
                a["signals"]
                    .as_array()?
                    .iter()
                    .find(|s| s["id"] == signal && s["value"].is_number())
                    .map(|s| s["provenance"]["source"]["id"].clone())
            })
    };
    let started = Instant::now();
    loop {
        if source_of(&run, "tank.level").is_some() && source_of(&run, "pump.speed").is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "values of both PLCs did not reach the twin"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(source_of(&run, "tank.level").unwrap(), "filler-plc");
    assert_eq!(source_of(&run, "pump.speed").unwrap(), "pump-plc");

    // The operator's stop reaches both PLCs.
    let (status, body) = http(run.api_port, "POST", "/api/v1/stop", &run.token);
    assert_eq!(status, 200, "{body}");
    assert!(
        filler.wait_for("CALL StopLine", 10).is_some(),
        "the stop did not reach the filler PLC"
    );
    assert!(
        pumps.wait_for("CALL StopLine", 10).is_some(),
        "the stop did not reach the pump PLC"
    );

    // The pump PLC goes away: a gap for its source, none for the filler's.
    drop(pumps);
    let gaps = |run: &Running| -> Vec<String> {
        run.get("/api/v1/alerts")
            .1
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["kind"] == "gap")
            .filter_map(|d| d["message"].as_str().map(str::to_string))
            .collect()
    };
    let started = Instant::now();
    while !gaps(&run)
        .iter()
        .any(|m| m.contains("connection to source pump-plc"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no gap alert after the pump PLC stopped: {:?}",
            gaps(&run)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !gaps(&run).iter().any(|m| m.contains("filler-plc")),
        "{:?}",
        gaps(&run)
    );
    run.interrupt();
    let r = run.finish();
    assert_eq!(
        r["sources"].as_array().unwrap().len(),
        2,
        "{}",
        r["sources"]
    );
    assert_eq!(r["sources"][0]["id"], "filler-plc");
    assert_eq!(r["sources"][0]["events"]["lost"], 0, "{}", r["sources"]);
    assert!(
        r["sources"][1]["events"]["lost"].as_u64().unwrap() >= 1,
        "{}",
        r["sources"]
    );
    assert_eq!(r["line_stops"], 1, "{r}");
    let sent = r["commands"].to_string();
    assert!(
        sent.contains("filler-plc: ns=2;s=line1.StopLine")
            && sent.contains("pump-plc: ns=2;s=line1.StopLine"),
        "{sent}"
    );
    assert_eq!(r["audit"]["verified"], true);
}

/// `twinguard policy`: a policy file is validated with its errors located; a configuration
/// names its policy file, and check-config checks it too; `policy check` explains what the
/// guard would decide; and the configured policy is the one a run lives by.
#[test]
fn policy_files_are_validated_explained_and_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    };
    // The built-in policy validates and lists its policies by id.
    let default = cmd(&["policy", "default"]);
    std::fs::write(dir.path().join("default.cedar"), &default.stdout).unwrap();
    let out = cmd(&["policy", "validate", "default.cedar"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("optimiser-setpoints: "),
        "{}",
        text(&out)
    );
    // A misspelt attribute is refused with its line and column.
    std::fs::write(
        dir.path().join("typo.cedar"),
        "@id(\"a\")\npermit (principal, action, resource)\nwhen { context.line_runing };\n",
    )
    .unwrap();
    let out = cmd(&["policy", "validate", "typo.cedar"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("typo.cedar:3:"), "{}", text(&out));
    // ... and so is a configuration that names it.
    let config = String::from_utf8(cmd(&["default-config"]).stdout).unwrap();
    let with = |policy: &str| {
        config.replace(
            "# policy_file = \"policy.cedar\"",
            &format!("policy_file = \"{policy}\""),
        )
    };
    std::fs::write(dir.path().join("typo.toml"), with("typo.cedar")).unwrap();
    let out = cmd(&["check-config", "typo.toml"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("typo.cedar:3:"), "{}", text(&out));

    // `policy check` explains.
    let check = |proposal: Value| {
        std::fs::write(dir.path().join("p.json"), proposal.to_string()).unwrap();
        let out = cmd(&["policy", "check", "--proposal", "p.json"]);
        assert!(out.status.success(), "{}", text(&out));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        r["assessment"]["outcome"].as_str().unwrap().to_string()
    };
    let speed = |v: f64| serde_json::json!({ "kind": "set_setpoint", "setpoint": "pump.speed_sp", "value": v });
    let o = check(
        serde_json::json!({ "agent": "optimiser", "action": speed(1550.0), "values": { "tank.level": 1.6 } }),
    );
    assert!(
        o.starts_with("executed: permitted by optimiser-setpoints: "),
        "{o}"
    );
    let o = check(serde_json::json!({ "agent": "optimiser", "action": { "kind": "stop_line" } }));
    assert_eq!(o, "denied (policy): no policy permits it");
    let o = check(
        serde_json::json!({ "agent": "optimiser", "action": speed(1550.0), "context": { "inputs_trusted": false }, "values": { "tank.level": 1.6 } }),
    );
    assert!(
        o.starts_with("denied (policy): forbidden by no-setpoint-change-on-untrusted-data"),
        "{o}"
    );
    let o = check(
        serde_json::json!({ "agent": "optimiser", "action": speed(900.0), "values": { "tank.level": 1.6 } }),
    );
    assert!(
        o.starts_with("denied (envelope: pump.speed_sp = 900 is outside"),
        "{o}"
    );
    let o = check(
        serde_json::json!({ "agent": "optimiser", "action": speed(1550.0), "values": { "tank.level": 0.1 } }),
    );
    assert!(o.starts_with("denied (precondition: "), "{o}");
    let o = check(
        serde_json::json!({ "agent": "maintenance", "action": { "kind": "maintenance", "asset": "pump" } }),
    );
    assert!(
        o.starts_with("waits for one human approval: permitted by maintenance-pump"),
        "{o}"
    );
    // A malformed proposal file is an error that says where.
    std::fs::write(
        dir.path().join("bad.json"),
        "{ \"agent\": \"optimiser\", \"action\": 3 }",
    )
    .unwrap();
    let out = cmd(&["policy", "check", "--proposal", "bad.json"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("bad.json:1:"), "{}", text(&out));

    // A run lives by the configured policy: here the optimiser is permitted nothing.
    let strict = String::from_utf8(default.stdout)
        .unwrap()
        .replace(
            "@id(\"optimiser-setpoints\")",
            "@id(\"optimiser-setpoints\")\n// disabled for this test",
        )
        .replace(
            "permit (\n  principal == Twinguard::Agent::\"optimiser\"",
            "forbid (\n  principal == Twinguard::Agent::\"optimiser\"",
        );
    std::fs::write(dir.path().join("strict.cedar"), strict).unwrap();
    std::fs::write(dir.path().join("strict.toml"), with("strict.cedar")).unwrap();
    let config_path = dir.path().join("strict.toml");
    let r = demo(
        &dir.path().join("data"),
        2.0,
        &["--config", config_path.to_str().unwrap()],
    );
    assert!(
        r["proposals"]["denied"]["policy"].as_u64().unwrap_or(0) >= 1,
        "{}",
        r["proposals"]
    );
    assert!(
        r["actions_executed_by_agent"].get("optimiser").is_none(),
        "{}",
        r["actions_executed_by_agent"]
    );
}

/// The policy that lets the external scheduler plan pump maintenance (a human approves).
const SCHEDULER_MAINTENANCE: &str = "@id(\"scheduler-maintenance\")\n@reason(\"the scheduler may plan pump maintenance\")\npermit (principal == Twinguard::Agent::\"scheduler\", action == Twinguard::Action::\"maintenance\", resource == Twinguard::Asset::\"pump\");";

/// A data directory with external agent `agent` registered for `kinds` on `assets` (its
/// key generated at `dir/<agent>.key`), the default policy plus `permit` as
/// `dir/policy.cedar`, and the default configuration using it with `edits` applied.
/// Returns the data directory, the agent's key file and the configuration file.
fn external_agent_setup(
    dir: &Path,
    agent: &str,
    kinds: &str,
    assets: &str,
    permit: &str,
    edits: &[(&str, &str)],
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("data");
    let key = dir.join(format!("{agent}.key"));
    let out = Command::new(BIN)
        .args(["agent", "add", agent, "--generate-key"])
        .arg(&key)
        .args(["--kinds", kinds, "--assets", assets, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains(&format!("\"{agent}\"")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = |args: &[&str]| {
        String::from_utf8(Command::new(BIN).args(args).output().unwrap().stdout).unwrap()
    };
    std::fs::write(
        dir.join("policy.cedar"),
        stdout(&["policy", "default"]) + "\n" + permit + "\n",
    )
    .unwrap();
    let mut config = stdout(&["default-config"]).replace(
        "# policy_file = \"policy.cedar\"",
        "policy_file = \"policy.cedar\"",
    );
    for (old, new) in edits {
        assert!(config.contains(old), "{old}");
        config = config.replace(old, new);
    }
    let config_path = dir.join("twinguard.toml");
    std::fs::write(&config_path, config).unwrap();
    (data, key, config_path)
}

/// Runs tests/python/agent.py (written from docs/agent-api.md) against the API on `port`.
/// The Python scheduler agent proposes maintenance of the pump (the request it signed is
/// kept at `request`).
fn propose_maintenance(port: u16, key: &str, token: &str, request: &Path) -> Value {
    python_agent(port, &maintenance_proposal(key, token, request))
}

/// tests/python/agent.py's arguments for [`propose_maintenance`].
fn maintenance_proposal<'a>(key: &'a str, token: &'a str, request: &'a Path) -> [&'a str; 6] {
    [
        "scheduler",
        key,
        "propose",
        token,
        r#"{"kind": "maintenance", "asset": "pump"}"#,
        request.to_str().unwrap(),
    ]
}

fn python_agent(port: u16, args: &[&str]) -> Value {
    let out = python_agent_run(port, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs tests/python/agent.py with `args`, whatever comes of it.
fn python_agent_run(port: u16, args: &[&str]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/agent.py");
    Command::new("python3")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .args(args)
        .output()
        .unwrap()
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An external agent written in Python from `docs/agent-api.md` alone: registered with
/// `twinguard agent add`, it gets a token by proving its key and proposes through the API;
/// a replayed request, an action outside its scope and its token in a thief's hands are
/// refused; `twinguard agent revoke` stops it within seconds.
#[test]
fn an_external_agent_from_the_protocol_document_is_held_to_its_key_and_scope() {
    let dir = tempfile::tempdir().unwrap();
    // The policy permits the scheduler maintenance on the pump (a human approves it).
    let (data, key, config_path) = external_agent_setup(
        dir.path(),
        "scheduler",
        "maintenance",
        "pump",
        SCHEDULER_MAINTENANCE,
        &[],
    );
    let bin = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Bad registrations are refused with the reason.
    let out = Command::new(BIN)
        .args([
            "agent",
            "add",
            "optimiser",
            "--public-key",
            &"ab".repeat(32),
            "--kinds",
            "maintenance",
            "--assets",
            "pump",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("built-in"));
    let out = Command::new(BIN)
        .args([
            "agent",
            "add",
            "x",
            "--generate-key",
            dir.path().join("x.key").to_str().unwrap(),
            "--kinds",
            "fly",
            "--assets",
            "pump",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown action kind \"fly\""));

    let run = Running::start(
        &[
            "--speed",
            "30",
            "--hours",
            "1",
            "--config",
            config_path.to_str().unwrap(),
        ],
        &data,
    );
    let agent = |args: &[&str]| python_agent(run.api_port, args);
    let key_s = key.to_str().unwrap();
    let t = agent(&["scheduler", key_s, "token"]);
    assert_eq!(t["status"], 200, "{t}");
    assert_eq!(t["scope"]["kinds"][0], "maintenance");
    let token = t["token"].as_str().unwrap().to_string();

    let request = dir.path().join("request.json");
    let maintenance = r#"{"kind": "maintenance", "asset": "pump"}"#;
    let d = agent(&[
        "scheduler",
        key_s,
        "propose",
        &token,
        maintenance,
        request.to_str().unwrap(),
    ]);
    assert_eq!(d["status"], 200, "{d}");
    assert_eq!(d["outcome"], "pending", "{d}");
    assert!(
        d["rule"]
            .as_str()
            .unwrap()
            .contains("scheduler-maintenance"),
        "{d}"
    );
    // The same signed request again: a replay.
    let d = agent(&["-", "-", "replay", request.to_str().unwrap()]);
    assert_eq!(d["reason"], "replay", "{d}");
    // Outside its scope.
    let d = agent(&[
        "scheduler",
        key_s,
        "propose",
        &token,
        r#"{"kind": "stop_line"}"#,
        request.to_str().unwrap(),
    ]);
    assert_eq!(d["reason"], "scope", "{d}");
    // The token without the key.
    let d = agent(&["scheduler", "-", "steal", &token, maintenance]);
    assert_eq!(d["reason"], "token_without_key", "{d}");
    // Rotation: a second token while the first is live; both work.
    let t2 = agent(&["scheduler", key_s, "token"]);
    assert_eq!(t2["status"], 200, "{t2}");
    assert_ne!(t2["token"], t["token"]);

    // Revocation takes effect while twinguard runs.
    bin(&["agent", "revoke", "scheduler"]);
    let started = Instant::now();
    loop {
        // Until the registry is reloaded, tokens are still issued (up to the live-token
        // limit, then refused for that); after it, refused because the agent is revoked.
        let t = agent(&["scheduler", key_s, "token"]);
        if t["status"] == 401 && t["error"].as_str().unwrap_or("").contains("revoked") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still issuing tokens after revoke: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let d = agent(&[
        "scheduler",
        key_s,
        "propose",
        t2["token"].as_str().unwrap(),
        maintenance,
        request.to_str().unwrap(),
    ]);
    assert_eq!(d["outcome"], "denied", "{d}");
    assert_eq!(d["reason"], "identity", "{d}");
    assert!(d["detail"].as_str().unwrap().contains("revoked"), "{d}");

    run.interrupt();
    let r = run.finish();
    assert!(
        r["alerts"]
            .to_string()
            .contains("token of agent scheduler presented without its key"),
        "{}",
        r["alerts"]
    );
    assert_eq!(r["audit"]["verified"], true);
}

/// People over the real API: accounts with roles (token or Argon2id password login), a
/// dual-approval change that needs two different approvers (the same one twice is
/// refused, a viewer may not approve), the stop button pressed by an operator and the line
/// resumed only by an approver.
#[test]
fn people_approve_by_role_and_a_dual_approval_needs_two_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bin = |args: &[&str]| -> Value {
        let out = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let token_of = |v: Value| v["token"].as_str().unwrap().to_string();
    let ana = token_of(bin(&[
        "user", "add", "ana", "--role", "approver", "--token",
    ]));
    let vi = token_of(bin(&["user", "add", "vi", "--role", "viewer", "--token"]));
    let op = token_of(bin(&["user", "add", "op", "--role", "operator", "--token"]));
    let cy = token_of(bin(&["user", "add", "cy", "--role", "approver", "--token"]));
    std::fs::write(dir.path().join("bo.pw"), "a long passphrase for bo\n").unwrap();
    let bo_pw = dir.path().join("bo.pw");
    bin(&[
        "user",
        "add",
        "bo",
        "--role",
        "approver",
        "--password-file",
        bo_pw.to_str().unwrap(),
    ]);
    let listed = bin(&["user", "list"]).to_string();
    assert!(
        listed.contains("\"bo\"") && !listed.contains("argon2"),
        "{listed}"
    );
    let users = std::fs::read_to_string(data.join("users.toml")).unwrap();
    assert!(
        users.contains("$argon2id$")
            && !users.contains("a long passphrase")
            && !users.contains(&ana)
    );

    // An external scheduler may propose filler speeds (a dual-approval setpoint).
    let (_, key, config_path) = external_agent_setup(
        dir.path(),
        "scheduler",
        "set_setpoint",
        "filler",
        "@id(\"scheduler-filler\")\n@reason(\"the scheduler may propose filler speeds\")\npermit (principal == Twinguard::Agent::\"scheduler\", action == Twinguard::Action::\"set_setpoint\", resource == Twinguard::Asset::\"filler\");\n@id(\"cy-not-filler\")\n@reason(\"cy is not trained on the filler\")\nforbid (principal == Twinguard::Human::\"cy\", action == Twinguard::Action::\"approve\", resource == Twinguard::Asset::\"filler\");",
        &[],
    );
    let run = Running::start(
        &[
            "--speed",
            "30",
            "--hours",
            "1",
            "--config",
            config_path.to_str().unwrap(),
        ],
        &data,
    );
    let port = run.api_port;

    // Password login (a wrong password is refused), and who is who.
    let (s, _) = http_body(
        port,
        "POST",
        "/api/v1/login",
        "",
        r#"{"user": "bo", "password": "wrong password!"}"#,
    );
    assert_eq!(s, 401);
    let (s, v) = http_body(
        port,
        "POST",
        "/api/v1/login",
        "",
        r#"{"user": "bo", "password": "a long passphrase for bo"}"#,
    );
    assert_eq!(s, 200, "{v}");
    let bo = v["token"].as_str().unwrap().to_string();
    assert_eq!(
        http(port, "GET", "/api/v1/whoami", &bo).1["role"],
        "approver"
    );
    assert_eq!(http(port, "GET", "/api/v1/whoami", &vi).1["role"], "viewer");
    assert_eq!(http(port, "GET", "/api/v1/state", "not-a-token").0, 401);

    // The scheduler proposes; it waits for two approvers.
    let agent = |args: &[&str]| python_agent(port, args);
    let t = agent(&["scheduler", key.to_str().unwrap(), "token"]);
    let request = dir.path().join("request.json");
    let d = agent(&[
        "scheduler",
        key.to_str().unwrap(),
        "propose",
        t["token"].as_str().unwrap(),
        r#"{"kind": "set_setpoint", "setpoint": "filler.speed_sp", "value": 480.0}"#,
        request.to_str().unwrap(),
    ]);
    assert_eq!(d["outcome"], "pending", "{d}");
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .contains("two different humans"),
        "{d}"
    );
    let id = d["proposal_id"].as_u64().unwrap();
    let approve = format!("/api/v1/proposals/{id}/approve");

    let (s, v) = http(port, "POST", &approve, &vi);
    assert_eq!(s, 403, "a viewer may not approve: {v}");
    assert!(v["error"].as_str().unwrap().contains("approver"), "{v}");
    // An approver the plant's policy does not let approve filler changes is refused by
    // that policy, and the proposal waits on.
    let (s, v) = http(port, "POST", &approve, &cy);
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("cy may not approve proposal")
            && v["error"]
                .as_str()
                .unwrap()
                .contains("forbidden by cy-not-filler: cy is not trained on the filler"),
        "{v}"
    );
    let (s, v) = http(port, "POST", &approve, &ana);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["decision"]["outcome"], "pending", "{v}");
    let (s, v) = http(port, "POST", &approve, &ana);
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("different person"),
        "{v}"
    );
    let (s, v) = http(port, "POST", &approve, &bo);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["decision"]["outcome"], "executed", "{v}");

    // The stop button: an operator presses it; resuming takes an approver.
    let (s, v) = http(port, "POST", "/api/v1/stop", &vi);
    assert_eq!(s, 403, "{v}");
    let (s, v) = http(port, "POST", "/api/v1/stop", &op);
    assert_eq!(s, 200, "{v}");
    let (s, _) = http(port, "POST", "/api/v1/start", &op);
    assert_eq!(s, 403);
    let (s, v) = http(port, "POST", "/api/v1/start", &ana);
    assert_eq!(s, 200, "{v}");

    // A removed account stops working at once.
    bin(&["user", "remove", "vi"]);
    let started = Instant::now();
    while http(port, "GET", "/api/v1/whoami", &vi).0 != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a removed account still works"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run.interrupt();
    let r = run.finish();
    let commands = r["commands"].to_string();
    assert!(
        commands.contains("filler.speed_sp")
            && commands.contains("\"ana\"")
            && commands.contains("\"bo\""),
        "{commands}"
    );
    assert!(r["line_stops"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["audit"]["verified"], true);
}

/// Expiry over the real API, with the lifetimes configured short: a token used after it
/// expired is refused though its key signs the request, and an approval given after the
/// proposal expired executes nothing and says why.
#[test]
fn an_expired_token_and_a_late_approval_are_refused_over_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key, config_path) = external_agent_setup(
        dir.path(),
        "scheduler",
        "maintenance",
        "pump",
        SCHEDULER_MAINTENANCE,
        &[
            ("token_ttl_min = 15", "token_ttl_min = 1"),
            ("approval_ttl_min = 60", "approval_ttl_min = 2"),
        ],
    );
    // One simulated minute a second.
    let run = Running::start(
        &[
            "--speed",
            "60",
            "--hours",
            "1",
            "--config",
            config_path.to_str().unwrap(),
        ],
        &data,
    );
    let key = key.to_str().unwrap();
    let agent = |args: &[&str]| python_agent(run.api_port, args);
    let request = dir.path().join("request.json");
    let maintenance = r#"{"kind": "maintenance", "asset": "pump"}"#;
    let propose = |token: &str| {
        agent(&[
            "scheduler",
            key,
            "propose",
            token,
            maintenance,
            request.to_str().unwrap(),
        ])
    };
    let wait_until = |t_ms: i64| {
        let started = Instant::now();
        while run.sim_now() <= t_ms {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the clock stands still"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let t = agent(&["scheduler", key, "token"]);
    assert_eq!(t["status"], 200, "{t}");
    let token = t["token"].as_str().unwrap().to_string();
    let d = propose(&token);
    assert_eq!(d["outcome"], "pending", "{d}");
    let id = d["proposal_id"].as_u64().unwrap();
    let pending = run.get("/api/v1/proposals").1;
    let expires = pending["pending"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"].as_u64() == Some(id))
        .map(|p| p["expires_ms"].as_i64().unwrap())
        .unwrap_or_else(|| panic!("{pending}"));

    wait_until(t["expires_ms"].as_i64().unwrap());
    let d = propose(&token);
    assert_eq!(d["outcome"], "denied", "{d}");
    assert_eq!(d["reason"], "identity", "{d}");
    assert!(d["detail"].as_str().unwrap().contains("expired"), "{d}");

    wait_until(expires + 2 * 60_000);
    let (s, v) = http(
        run.api_port,
        "POST",
        &format!("/api/v1/proposals/{id}/approve"),
        &run.token,
    );
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&format!("approval {id} expired at {expires}")),
        "{v}"
    );
    run.interrupt();
    let r = run.finish();
    assert!(
        !r["commands"].to_string().contains("maintenance"),
        "{}",
        r["commands"]
    );
    assert!(
        r["proposals"]["denied"]["expired"].as_u64().unwrap() >= 1,
        "{}",
        r["proposals"]
    );
    assert_eq!(r["audit"]["verified"], true);
}

/// When the audit log cannot be written (another process holds its write lock), nothing
/// executes, not even an approved command, the health check and the report say why, and
/// the stop button still drives the line to its safe state.
#[test]
fn nothing_executes_while_the_audit_log_is_unavailable_but_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key, config_path) = external_agent_setup(
        dir.path(),
        "scheduler",
        "maintenance",
        "pump",
        SCHEDULER_MAINTENANCE,
        &[],
    );
    let run = Running::start(
        &[
            "--speed",
            "30",
            "--hours",
            "1",
            "--config",
            config_path.to_str().unwrap(),
        ],
        &data,
    );
    let key = key.to_str().unwrap();
    let t = python_agent(run.api_port, &["scheduler", key, "token"]);
    let request = dir.path().join("request.json");
    let token = t["token"].as_str().unwrap();
    let d = propose_maintenance(run.api_port, key, token, &request);
    assert_eq!(d["outcome"], "pending", "{d}");
    let id = d["proposal_id"].as_u64().unwrap();
    let (s, v) = http(run.api_port, "GET", "/healthz", "");
    assert_eq!(s, 200, "{v}");

    // Another process takes the log's write lock and keeps it (killed, whatever happens,
    // when the test ends; its output is not the test's, so that nothing waits on it).
    let mut locker = KillOnDrop(
        Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(600)",
            ])
            .arg(data.join("audit.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(locker.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    // The running twinguard's appends go to its append journal first; copying them into
    // SQLite fails once the lock outlasts its patience, and from then on nothing executes.
    // Its own agents and ticks append; another proposal is something more to copy, made
    // while the health check still says 200 (the agent asks it the time first), and
    // refused or not depending on whether the failure showed in between.
    let mut proposed = false;
    let start = Instant::now();
    loop {
        let (s, health) = http(run.api_port, "GET", "/healthz", "");
        if s == 503 {
            break;
        }
        if !proposed {
            proposed = true;
            let token = token.to_string();
            let (port, key, request) = (run.api_port, key.to_string(), request.clone());
            std::thread::spawn(move || {
                python_agent_run(port, &maintenance_proposal(&key, &token, &request))
            });
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the audit log's failure never showed: {health}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The approval is taken, but the command is not sent: its decision cannot be recorded.
    let (s, v) = http(
        run.api_port,
        "POST",
        &format!("/api/v1/proposals/{id}/approve"),
        &run.token,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["execution"]["executed"], false, "{v}");
    assert!(
        v["execution"]["error"]
            .as_str()
            .unwrap()
            .contains("audit log is unavailable"),
        "{v}"
    );
    let (s, health) = http(run.api_port, "GET", "/healthz", "");
    assert_eq!(s, 503, "{health}");
    assert!(
        health["reason"]
            .as_str()
            .unwrap()
            .contains("nothing executes"),
        "{health}"
    );
    // The stop button still reaches the plant.
    let (s, v) = http(run.api_port, "POST", "/api/v1/stop", &run.token);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["executed"], true, "{v}");
    let r = run.get("/api/v1/report").1;
    let commands = r["commands"].to_string();
    assert!(
        !commands.contains("maintenance") && commands.contains("stop_line"),
        "{commands}"
    );
    assert!(
        r["audit"]["failure"].as_str().unwrap().contains("locked"),
        "{}",
        r["audit"]
    );

    drop(locker);
    run.interrupt();
    let r = run.finish();
    assert!(r["audit"]["failure"].is_string(), "{}", r["audit"]);
    assert_eq!(r["audit"]["verified"], true);
}

/// Breakers over the real API: integrity failures (the forged-frames attack) past the
/// configured limit put the agents in advisory mode, which the report shows; only an
/// approver can reset them.
#[test]
fn breakers_trip_on_integrity_failures_and_an_approver_resets_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = String::from_utf8(
        Command::new(BIN)
            .arg("default-config")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .replace(
        "integrity_failures_per_hour = 30",
        "integrity_failures_per_hour = 3",
    );
    let config_path = dir.path().join("twinguard.toml");
    std::fs::write(&config_path, config).unwrap();
    let out = Command::new(BIN)
        .args([
            "user",
            "add",
            "vi",
            "--role",
            "viewer",
            "--token",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let vi: Value = serde_json::from_slice(&out.stdout).unwrap();
    let vi = vi["token"].as_str().unwrap().to_string();
    let run = Running::start(
        &[
            "--speed",
            "120",
            "--hours",
            "2",
            "--attack",
            "forged-frames",
            "--config",
            config_path.to_str().unwrap(),
        ],
        &data,
    );
    let started = Instant::now();
    loop {
        let (_, r) = run.get("/api/v1/report");
        if r["breakers"]["advisory"].is_object() {
            assert!(
                r["breakers"]["advisory"]["why"]
                    .as_str()
                    .unwrap()
                    .contains("integrity failures"),
                "{}",
                r["breakers"]
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the breakers did not trip: {}",
            r["breakers"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (s, _) = http(run.api_port, "POST", "/api/v1/breakers/reset", &vi);
    assert_eq!(s, 403, "a viewer may not reset the breakers");
    let (s, v) = http(run.api_port, "POST", "/api/v1/breakers/reset", &run.token);
    assert_eq!(s, 200, "{v}");
    assert!(
        v["reset"].as_str().unwrap().contains("reset by operator"),
        "{v}"
    );
    // The stop button and resuming from the command line, with the installer's token
    // (the default) or a viewer's (refused, with the reason).
    let api = format!("127.0.0.1:{}", run.api_port);
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--api", &api, "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = cli(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run.get("/api/v1/state").1["line_stopped"], true);
    std::fs::write(dir.path().join("vi.token"), &vi).unwrap();
    let vi_file = dir.path().join("vi.token");
    let out = cli(&["resume", "--token-file", vi_file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run.interrupt();
    let r = run.finish();
    assert!(
        r["breakers"]["trips"].as_u64().unwrap() >= 1,
        "{}",
        r["breakers"]
    );
    assert_eq!(r["audit"]["verified"], true);
}

/// The policy file is watched: a new policy is in force within seconds (a pending
/// approval is reviewed under it), and a file that stops validating leaves no policy in
/// force, so that nothing executes but a stop and the health check says why, until it is
/// fixed.
#[test]
fn an_edited_policy_is_in_force_at_once_and_a_broken_one_stops_everything_but_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key, config_path) = external_agent_setup(
        dir.path(),
        "scheduler",
        "maintenance",
        "pump",
        SCHEDULER_MAINTENANCE,
        &[],
    );
    let policy_file = dir.path().join("policy.cedar");
    let with_scheduler = std::fs::read_to_string(&policy_file).unwrap();
    let run = Running::start(
        &[
            "--speed",
            "30",
            "--hours",
            "1",
            "--config",
            config_path.to_str().unwrap(),
        ],
        &data,
    );
    let key = key.to_str().unwrap();
    let request = dir.path().join("request.json");
    let propose = || {
        let t = python_agent(run.api_port, &["scheduler", key, "token"]);
        propose_maintenance(run.api_port, key, t["token"].as_str().unwrap(), &request)
    };
    let d = propose();
    assert_eq!(d["outcome"], "pending", "{d}");
    let id = d["proposal_id"].as_u64().unwrap();
    let policies = |run: &Running| run.get("/api/v1/report").1["policy"].clone();
    let before = policies(&run)["policies"].as_u64().unwrap();

    // The scheduler's permit is taken out of the file.
    let without = with_scheduler.replace(SCHEDULER_MAINTENANCE, "");
    assert_ne!(without, with_scheduler);
    std::fs::write(&policy_file, &without).unwrap();
    let started = Instant::now();
    while policies(&run)["policies"].as_u64() != Some(before - 1) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the edited policy was not taken up: {}",
            policies(&run)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The pending proposal is reviewed under the policy now in force, and a new one is
    // denied by it.
    let (s, v) = http(
        run.api_port,
        "POST",
        &format!("/api/v1/proposals/{id}/approve"),
        &run.token,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["decision"]["outcome"], "denied", "{v}");
    assert!(
        v["decision"]["detail"]
            .as_str()
            .unwrap()
            .contains("agent scheduler may no longer maintenance on pump: no policy permits it"),
        "{v}"
    );
    let d = propose();
    assert_eq!(d["outcome"], "denied", "{d}");
    assert_eq!(d["reason"], "policy", "{d}");

    // A broken edit: no policy is in force, and the health check says where it broke
    // (agents written from the protocol document wait while it is not healthy).
    std::fs::write(
        &policy_file,
        format!("{with_scheduler}\npermit (principal, action,"),
    )
    .unwrap();
    let started = Instant::now();
    let health = loop {
        let (s, v) = http(run.api_port, "GET", "/healthz", "");
        if s == 503 {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still healthy: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let reason = health["reason"].as_str().unwrap();
    assert!(
        reason.contains("no policy is in force, so nothing executes")
            && reason.contains("policy.cedar:"),
        "{health}"
    );
    // The stop button still reaches the plant; resuming is a review, which no policy
    // permits now.
    let (s, v) = http(run.api_port, "POST", "/api/v1/stop", &run.token);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["executed"], true, "{v}");
    let (s, v) = http(run.api_port, "POST", "/api/v1/start", &run.token);
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("the policy store is unavailable"),
        "{v}"
    );

    // Fixed: healthy again, and the scheduler's permit is back.
    std::fs::write(&policy_file, &with_scheduler).unwrap();
    let started = Instant::now();
    while http(run.api_port, "GET", "/healthz", "").0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the fixed policy was not taken up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (s, v) = http(run.api_port, "POST", "/api/v1/start", &run.token);
    assert_eq!(s, 200, "{v}");
    assert_eq!(propose()["outcome"], "pending");
    run.interrupt();
    let r = run.finish();
    assert!(r["policy"]["failure"].is_null(), "{}", r["policy"]);
    assert_eq!(r["audit"]["verified"], true);
}

/// The audit records of `kind`, oldest first, as JSON bodies.
fn audit_records(data: &Path, kind: &str) -> Vec<Value> {
    let db = rusqlite::Connection::open(data.join("audit.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT body FROM audit WHERE kind = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([kind], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|b| serde_json::from_str(&b.unwrap()).unwrap())
        .collect()
}

/// The multivariate model runs in the twin: it learns the plant's normal behaviour from
/// the first hours, is quiet on normal operation, and catches a pressure sensor drifting
/// inside its limits (which no per-signal limit or physics relation sees), naming the
/// sensor first and calling it a sensor fault; every detection names the model by its
/// digest, which the audit log records when it was fitted.
#[test]
fn the_learnt_multivariate_model_catches_a_drifting_sensor_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = String::from_utf8(
        Command::new(BIN)
            .arg("default-config")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .replace("multivariate = false", "multivariate = true");
    let config_path = dir.path().join("twinguard.toml");
    std::fs::write(&config_path, config).unwrap();
    let config_arg = config_path.to_str().unwrap();

    let normal = dir.path().join("normal");
    let r = demo(&normal, 12.0, &["--config", config_arg]);
    let status = &r["multivariate"]["status"];
    assert_eq!(status["phase"], "watching", "{status}");
    assert_eq!(status["rows_learnt"], 2 * 3600 / 5, "{status}");
    assert!(status["rows_scored"].as_u64().unwrap() > 7000, "{status}");
    assert_eq!(sum(&r["detections"]), 0, "{}", r["detections"]);
    let fitted = audit_records(&normal, "multivariate_model_fitted");
    assert_eq!(fitted.len(), 1);
    assert_eq!(fitted[0]["sha256"], r["multivariate"]["sha256"]);
    assert!(
        !fitted[0]["columns"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("energy.total")),
        "counters are excluded by default"
    );

    let drift = dir.path().join("drift");
    let r = demo(
        &drift,
        8.0,
        &[
            "--config",
            config_arg,
            "--fault",
            "drift:pump.discharge_pressure@14400=0.5",
        ],
    );
    assert_eq!(
        r["detections"],
        serde_json::json!({ "multivariate": 1 }),
        "{}",
        r["detections"]
    );
    let d = &audit_records(&drift, "detection_raised")[0];
    assert_eq!(
        d["evidence"]["signals"][0], "pump.discharge_pressure",
        "{d}"
    );
    assert_eq!(d["class"], "sensor_fault", "{d}");
    let sha = r["multivariate"]["sha256"].as_str().unwrap();
    assert_eq!(
        d["evidence"]["relation"],
        format!("learnt model {}", &sha[..12]),
        "{d}"
    );
    assert_safe_and_audited(&r);
}

/// The pump's remaining life is estimated live in the twin with a model fitted on the
/// simulator's runs to failure (`bench pump --model-out`): a pump wearing four times
/// faster than nominal is warned of, audited with the estimate and the model's digest,
/// before its vibration reaches the danger zone, and hours before it fails.
#[test]
fn the_pump_is_warned_of_before_its_bearing_fails() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("pump-model");
    let data = d.join("data");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    // The model is fitted, signed by its publisher, admitted (its golden run on three
    // runs to failure cut short) and promoted before it runs.
    let key = path(&d.join("acme.key"));
    let run = |args: &[&str]| {
        let (ok, out, err) = tg(args);
        assert!(ok, "twinguard {args:?}: {out}{err}");
        out
    };
    run(&["model", "keygen", "--out", &key]);
    run(&[
        "bench",
        "pump",
        "--train",
        "40",
        "--test",
        "3",
        "--json",
        "--model-out",
        &path(&model.join("pump-rul.json")),
        "--golden-out",
        &path(&model),
    ]);
    let manifest = serde_json::json!({
        "name": "pump-rul", "version": "1.0.0", "kind": "rul", "publisher": "acme-ml",
        "entry": "pump-rul.json",
        "intended_use": "warn of the reference pump's bearing failure hours ahead",
        "limitations": "the reference plant's pump; ten-minute cycles",
        "training_data": { "description": "bench pump seeds 1-40", "sha256": "12".repeat(32) },
        "golden": { "data": "golden_test.txt", "truth": "golden_rul.txt",
                    "thresholds": { "rmse": { "max": 30.0 }, "coverage": { "min": 0.6 } } },
    });
    std::fs::write(d.join("manifest.json"), manifest.to_string()).unwrap();
    run(&[
        "model",
        "sign",
        &path(&model),
        "--manifest",
        &path(&d.join("manifest.json")),
        "--key",
        &key,
    ]);
    let dd = path(&data);
    run(&[
        "model",
        "trust",
        "--name",
        "acme-ml",
        "--key",
        &format!("{key}.pub"),
        "--kinds",
        "rul",
        "--data-dir",
        &dd,
    ]);
    run(&["model", "admit", &path(&model), "--data-dir", &dd]);
    std::fs::write(d.join("pw"), "correct horse battery staple\n").unwrap();
    run(&[
        "user",
        "add",
        "ana",
        "--role",
        "approver",
        "--password-file",
        &path(&d.join("pw")),
        "--data-dir",
        &dd,
    ]);
    run(&[
        "model",
        "promote",
        "pump-rul",
        "1.0.0",
        "--approver",
        "ana",
        "--password-file",
        &path(&d.join("pw")),
        "--data-dir",
        &dd,
    ]);
    // Its successor (the same files, signed again as 1.1.0) runs in shadow beside it.
    let successor = d.join("pump-model-1.1.0");
    std::fs::create_dir_all(&successor).unwrap();
    for f in std::fs::read_dir(&model).unwrap() {
        let f = f.unwrap();
        if f.file_name() != "model.sig.json" {
            std::fs::copy(f.path(), successor.join(f.file_name())).unwrap();
        }
    }
    let mut next = manifest.clone();
    next["version"] = "1.1.0".into();
    std::fs::write(d.join("manifest-1.1.0.json"), next.to_string()).unwrap();
    run(&[
        "model",
        "sign",
        &path(&successor),
        "--manifest",
        &path(&d.join("manifest-1.1.0.json")),
        "--key",
        &key,
    ]);
    run(&["model", "admit", &path(&successor), "--data-dir", &dd]);
    let registry: Value =
        serde_json::from_str(&run(&["model", "list", "--json", "--data-dir", &dd])).unwrap();
    let digest_of = |version: &str| {
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
    let digest = digest_of("1.0.0");
    let default_config = String::from_utf8(
        Command::new(BIN)
            .arg("default-config")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let config = default_config.replace(
        "# registry_model = \"pump-rul\"",
        "registry_model = \"pump-rul\"",
    );
    assert_ne!(config, default_config);
    let config_path = d.join("twinguard.toml");
    std::fs::write(&config_path, config).unwrap();
    let r = demo(
        &data,
        30.0,
        &[
            "--config",
            config_path.to_str().unwrap(),
            "--fault",
            "wear:pump@0=4",
        ],
    );
    assert_eq!(r["plant"]["truth"]["pump_failures"], 1, "{}", r["plant"]);
    let health = &r["pump_health"];
    assert!(health["warnings"].as_u64().unwrap() >= 1, "{health}");
    let warnings = audit_records(&data, "failure_warning");
    let first = &warnings[0];
    assert_eq!(first["asset"], "pump");
    assert_eq!(first["model_sha256"], health["model_sha256"]);
    // The warning names the admitted model by the digest of its signed statement.
    assert_eq!(first["model_sha256"], digest.as_str());
    assert_eq!(health["admitted"]["version"], "1.0.0", "{health}");
    let warned_ms = first["estimate"]["t_ms"].as_i64().unwrap();
    assert!(first["estimate"]["failure_probability"].as_f64().unwrap() >= 0.5);
    // The vibration's danger zone (ISO 10816 zone D) comes later, and the failure (the
    // vibration collapsing as the pump stops) later still.
    let vibration: Vec<Value> = audit_records(&data, "detection_raised")
        .into_iter()
        .filter(|d| d["evidence"]["signals"][0] == "pump.vibration")
        .collect();
    let danger = vibration
        .iter()
        .find(|d| d["kind"] == "limit_high")
        .unwrap();
    assert!(
        danger["raised_ms"].as_i64().unwrap() > warned_ms,
        "warned at {warned_ms}, danger at {}",
        danger["raised_ms"]
    );
    let failed = vibration.iter().find(|d| d["kind"] == "rate").unwrap();
    let lead_h = (failed["raised_ms"].as_i64().unwrap() - warned_ms) as f64 / 3_600_000.0;
    assert!(lead_h >= 4.0, "warned {lead_h:.1} h before the failure");
    // The shadow estimated from the same cycles (the same model: the same estimates), and
    // its warning is recorded under its own digest, acted on nowhere.
    let shadow = &r["pump_shadow"];
    assert_eq!(shadow["model"]["version"], "1.1.0", "{shadow}");
    assert!(shadow["cycles_compared"].as_u64().unwrap() > 10, "{shadow}");
    assert_eq!(shadow["mean_abs_difference_h"], 0.0, "{shadow}");
    assert_eq!(shadow["warning_agreement"], 1.0, "{shadow}");
    let shadowed = audit_records(&data, "shadow_failure_warning");
    assert_eq!(shadowed.len(), warnings.len(), "{shadowed:?}");
    assert_eq!(shadowed[0]["digest"], digest_of("1.1.0").as_str());
    assert_eq!(shadowed[0]["active_warning"], true);
    assert_eq!(shadowed[0]["estimate"], first["estimate"]);

    // A model file that was not admitted runs only when allowed, and one that is not a
    // model is refused before anything runs.
    let unadmitted = default_config.replace(
        "# pump_model = \"pump-rul.json\"\n# allow_unadmitted_model = false",
        "pump_model = \"pump-rul.json\"\nallow_unadmitted_model = true",
    );
    assert_ne!(unadmitted, default_config);
    std::fs::write(&config_path, unadmitted).unwrap();
    std::fs::write(d.join("pump-rul.json"), "{}").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is not a twinguard RUL model"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `demo --compare-baseline` runs the same seeded plant (here in conditions drawn from
/// the seed) with the agents and with fixed setpoints: the agents' changes cut the energy
/// per good bottle without leaving the quality limits, and the baseline executes nothing.
#[test]
fn the_agents_are_compared_with_fixed_setpoints_on_the_same_plant() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "demo",
            "--speed",
            "0",
            "--port",
            "0",
            "--hours",
            "2",
            "--vary-conditions",
            "--compare-baseline",
            "--plot",
            dir.path().join("comparison.svg").to_str().unwrap(),
            "--json",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (with, fixed) = (&r["with_agents"], &r["fixed_setpoints"]);
    assert!(with["actions_executed"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(fixed["actions_executed"], 0, "{r}");
    assert_eq!(with["quality_violation_s"], 0, "{r}");
    let energy = r["change_pct"]["energy_per_good_bottle_wh"]
        .as_f64()
        .unwrap();
    assert!(energy < -5.0, "{r}");
    // Throughput is kept.
    assert!(
        r["change_pct"]["good_bottles_per_h"]
            .as_f64()
            .unwrap()
            .abs()
            < 1.0,
        "{r}"
    );
    assert!(
        !r["conditions"]["filler_speeds"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{r}"
    );
    let svg = std::fs::read_to_string(dir.path().join("comparison.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("seed 1"), "{svg}");
    // The run with the agents carried the fixed-setpoint run's measured KPIs (every ten
    // minutes: time, energy meter, good bottles) for its page, and measured its own.
    let series = &r["series"];
    assert_eq!(series["baseline_on_page"], series["fixed_setpoints"], "{r}");
    for run in ["with_agents", "fixed_setpoints"] {
        let points = series[run].as_array().unwrap();
        assert!(points.len() >= 11, "{run}: {r}");
        let (first, last) = (&points[0], &points[points.len() - 1]);
        let hours = (last[0].as_f64().unwrap() - first[0].as_f64().unwrap()) / 3.6e6;
        assert!((1.6..=2.0).contains(&hours), "{run}: {hours}");
        // Energy and bottles only grow.
        for k in [1, 2] {
            assert!(
                last[k].as_f64().unwrap() > first[k].as_f64().unwrap(),
                "{run}"
            );
        }
    }
    // The measured energy per good bottle tells the same story as the plant's truth.
    let per_bottle = |run: &str| {
        let p = series[run].as_array().unwrap();
        let (a, b) = (&p[0], &p[p.len() - 1]);
        (b[1].as_f64().unwrap() - a[1].as_f64().unwrap())
            / (b[2].as_f64().unwrap() - a[2].as_f64().unwrap())
    };
    assert!(
        per_bottle("with_agents") < 0.95 * per_bottle("fixed_setpoints"),
        "{r}"
    );
    // Each run has its own verified data directory.
    for sub in ["with-agents", "fixed-setpoints"] {
        let out = Command::new(BIN)
            .args(["audit", "verify", "--data-dir"])
            .arg(dir.path().join(sub))
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub}");
    }
}

/// A pasteuriser fouling 5 % an hour (twenty times the normal) is seen by the twin's
/// heat balance within 40 minutes, long before its steam valve runs out of travel: the
/// alarm names the trend and forecasts the valve's end, goes to a human as `unknown`
/// (fouling and a drifting measurement look alike in the balance), and the report shows
/// the exchanger's effectiveness live. Nothing is raised before the fouling starts.
#[test]
fn a_fouling_heat_exchanger_is_seen_by_its_energy_balance() {
    let dir = tempfile::tempdir().unwrap();
    let r = demo(dir.path(), 5.0, &["--fault", "fouling:past@7200=0.05"]);
    let raised = audit_records(dir.path(), "detection_raised");
    let first = raised.first().expect("a detection");
    let onset_ms = r["start_ms"].as_i64().unwrap() + 7_200_000;
    let at = first["raised_ms"].as_i64().unwrap();
    assert!(
        at > onset_ms && at <= onset_ms + 40 * 60_000,
        "raised {} min after the onset: {first}",
        (at - onset_ms) / 60_000
    );
    assert_eq!(
        first["evidence"]["relation"], "past.heat_balance",
        "{first}"
    );
    assert_eq!(first["class"], "unknown", "{first}");
    let message = first["message"].as_str().unwrap();
    assert!(
        message.contains("falling") && message.contains("past.steam_valve reaches the end"),
        "{message}"
    );
    let balance = r["relations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "past.heat_balance")
        .unwrap_or_else(|| panic!("{}", r["relations"]));
    // Three hours at 5 % an hour: about 0.85 of its reference, the trend near -5 %/h.
    let e = balance["estimate"].as_f64().unwrap();
    assert!((0.8..0.9).contains(&e), "{balance}");
    let slope = balance["residual"].as_f64().unwrap();
    assert!((-0.06..-0.04).contains(&slope), "{balance}");
    assert!(balance["alarm"].as_bool().unwrap(), "{balance}");
    assert!(
        balance["actuator_end_in_h"].as_f64().unwrap() > 1.0,
        "{balance}"
    );
    // The page plots the effectiveness: every window's estimate, oldest first, the
    // latest the one above.
    let history = balance["history"].as_array().unwrap();
    assert!(history.len() > 30, "{balance}");
    let last = history.last().unwrap();
    assert_eq!(last[1].as_f64(), Some(e), "{balance}");
    assert!(
        history.first().unwrap()[1].as_f64().unwrap() > 0.98,
        "{balance}"
    );
    assert_eq!(r["line_stops"], 0);
    assert_safe_and_audited(&r);
}

/// Fouling four times faster still (20 % an hour) outruns the temperature loop: the heat
/// balance's episode, raised as `unknown`, is revised to a process upset once the loop
/// misses its setpoint with the steam valve wide open, and the audit log records the
/// revision (`detection_reclassified`, with the class it had). When the product then
/// falls below its pasteurisation temperature and is diverted, the reject rate's jump is
/// the plant reacting, not its sensor's fault: no episode of the run blames a sensor.
#[test]
fn a_class_revision_is_audited_when_fouling_outruns_its_loop() {
    let dir = tempfile::tempdir().unwrap();
    let r = demo(dir.path(), 5.0, &["--fault", "fouling:past@3600=0.2"]);
    let raised = audit_records(dir.path(), "detection_raised");
    let balance = raised
        .iter()
        .find(|d| d["evidence"]["relation"] == "past.heat_balance")
        .unwrap_or_else(|| panic!("{raised:?}"));
    assert_eq!(balance["class"], "unknown", "{balance}");
    let revised = audit_records(dir.path(), "detection_reclassified");
    assert!(
        revised.iter().any(|x| x["id"] == balance["id"]
            && x["was"] == "unknown"
            && x["class"] == "process_upset"),
        "{revised:?}"
    );
    let episodes = r["episodes"].as_array().unwrap();
    let e = episodes
        .iter()
        .find(|e| e["id"] == balance["id"])
        .unwrap_or_else(|| panic!("{episodes:?}"));
    assert_eq!(e["first_class"], "unknown", "{e}");
    assert_eq!(e["class"], "process_upset", "{e}");
    assert!(
        episodes
            .iter()
            .any(|e| e["kind"] == "rate" && e["signals"][0] == "filler.reject_rate"),
        "{episodes:?}"
    );
    assert!(
        episodes.iter().all(|e| e["class"] != "sensor_fault"),
        "{episodes:?}"
    );
    assert_eq!(r["line_stops"], 0);
    assert_safe_and_audited(&r);
}
