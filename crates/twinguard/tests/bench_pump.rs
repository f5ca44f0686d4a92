//! `twinguard bench pump`: the RUL model warns of the simulated pump's bearing failures.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twinguard");

#[test]
fn bench_pump_warns_before_each_failure_and_counts_false_warnings() {
    let out = Command::new(BIN)
        .args(["bench", "pump", "--train", "20", "--test", "3", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["training_runs"], 20);
    let leads = r["lead_h"].as_array().unwrap();
    assert_eq!(leads.len(), 3);
    // Every failure is warned of, within about the horizon (6 h) and not absurdly early.
    for l in leads {
        let l = l.as_f64().unwrap();
        assert!((2.0..=12.0).contains(&l), "{r}");
    }
    assert!(r["hours_simulated"].as_f64().unwrap() > 60.0, "{r}");
    assert!(r["false_warnings_per_100h"].as_f64().unwrap() >= 0.0);
    let bad = Command::new(BIN)
        .args(["bench", "pump", "--train", "2"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--train at least 10"));
}
