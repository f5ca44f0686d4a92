//! A publisher written in Python from `docs/frame-format.md` alone is accepted by twinguard
//! over MQTT, and its unsigned and tampered frames are refused.
//! Needs python3 with `cryptography` and `paho-mqtt` (`.ci/run` installs them).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twinguard");

fn get(port: u16, path: &str, token: &str) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    serde_json::from_str(buf.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[test]
fn python_publisher_from_the_spec_is_accepted() {
    let check = Command::new("python3")
        .args(["-c", "import cryptography, paho.mqtt"])
        .output()
        .expect("python3 is needed");
    assert!(
        check.status.success(),
        "python3 needs the packages cryptography and paho-mqtt (pip install cryptography paho-mqtt): {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    // Enrol a new device for the energy asset: its key lives with the device, only the
    // public key goes to twinguard's registry.
    let key = dir.path().join("lab.key");
    let keygen = Command::new("python3")
        .args([
            "-c",
            "import sys; from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey as K; from cryptography.hazmat.primitives import serialization as s; k=K.generate(); open(sys.argv[1],'w').write(k.private_bytes(s.Encoding.Raw,s.PrivateFormat.Raw,s.NoEncryption()).hex()); print(k.public_key().public_bytes(s.Encoding.Raw,s.PublicFormat.Raw).hex())",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        keygen.status.success(),
        "{}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    let public = String::from_utf8(keygen.stdout).unwrap();
    std::fs::write(
        dir.path().join("devices.toml"),
        format!(
            "[devices.gw-lab]\nasset = \"energy\"\npublic_key = \"{}\"\n",
            public.trim()
        ),
    )
    .unwrap();

    let mut child = Command::new(BIN)
        .args([
            "demo", "--speed", "10", "--port", "0", "--json", "--hours", "0.05",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut broker_port, mut api) = (0u16, String::new());
    while api.is_empty() {
        let line = lines.next().unwrap().unwrap();
        if let Some(rest) = line.split("broker on 127.0.0.1:").nth(1) {
            broker_port = rest.split(';').next().unwrap().parse().unwrap();
        }
        if let Some(rest) = line.split("live twin at ").nth(1) {
            api = rest.to_string();
        }
    }
    let port: u16 = api
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let token = api.split("#token=").nth(1).unwrap().to_string();
    let secrets: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.path().join("secrets/mqtt.toml")).unwrap())
            .unwrap();
    let password = secrets["users"]["edge-gateway"]
        .as_str()
        .unwrap()
        .to_string();
    // The simulated plant's clock, as twinguard last saw it.
    let mut now = Value::Null;
    while now.is_null() {
        now = get(port, "/api/v1/state", &token)["t_ms"].clone();
    }
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/publisher.py"
        ))
        .args([
            "127.0.0.1",
            &broker_port.to_string(),
            "edge-gateway",
            &password,
        ])
        .arg(&key)
        .args([
            "gw-lab",
            "twinguard/line1/energy/telemetry",
            "energy.ambient_temp",
            "degC",
            "21.5",
        ])
        .arg(now.as_i64().unwrap().to_string())
        .arg("3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let expected = 180 * 22;
    assert_eq!(r["samples"]["accepted"], expected + 3, "{}", r["frames"]);
    assert_eq!(r["frames"]["rejected"]["unsigned"], 1, "{}", r["frames"]);
    assert_eq!(
        r["frames"]["rejected"]["bad_signature"], 1,
        "{}",
        r["frames"]
    );
}
