//! `twinguard bench reroute`: the scheduler on two lines sharing orders, against no agent.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twinguard");

#[test]
fn the_scheduler_cuts_late_orders_and_failures_against_no_agent_on_the_same_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("reroute.svg");
    let out = Command::new(BIN)
        .args([
            "bench", "reroute", "--seeds", "4", "--hours", "36", "--json", "--plot",
        ])
        .arg(&plot)
        .arg("--data-dir")
        .arg(dir.path().join("runs"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let total = |mode: &str, k: &str| r[mode][k].as_f64().unwrap();
    // Without an agent the fast-wearing pumps fail and orders are late.
    assert!(total("no_rerouting", "failures") >= 4.0, "{r}");
    assert!(total("no_rerouting", "orders_late") >= 2.0, "{r}");
    // The scheduler's maintenance windows come before every failure...
    for mode in ["with_scheduler", "maintenance_only"] {
        assert_eq!(total(mode, "failures"), 0.0, "{mode}: {r}");
        assert_eq!(total(mode, "unplanned_down_h"), 0.0, "{mode}: {r}");
        assert!(total(mode, "planned_maintenance") >= 4.0, "{mode}: {r}");
    }
    // ... and its rerouting alone, with the same failures, cuts the hours late.
    assert_eq!(
        total("reroute_only", "failures"),
        total("no_rerouting", "failures")
    );
    assert!(
        total("reroute_only", "lateness_h") < 0.5 * total("no_rerouting", "lateness_h"),
        "{r}"
    );
    assert!(
        total("with_scheduler", "orders_late") < total("no_rerouting", "orders_late"),
        "{r}"
    );
    assert!(
        total("with_scheduler", "lateness_h") <= total("maintenance_only", "lateness_h"),
        "{r}"
    );
    // Every proposal went through a guard: moves executed, maintenance approved, none
    // refused; the no-agent runs proposed nothing.
    for run in r["runs"].as_array().unwrap() {
        let s = &run["with_scheduler"];
        let n = |k: &str| s[k].as_u64().unwrap();
        let waits = s["log"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l.as_str().unwrap().contains("waits for approval"))
            .count() as u64;
        assert_eq!(n("denied"), 0, "{s}");
        assert_eq!(n("proposals"), n("executed") + waits, "{s}");
        assert!(n("approved") >= 1 && n("approved") <= waits, "{s}");
        // Proposal and decision for each, an approval and a command for each approved,
        // a command for each executed at once.
        assert_eq!(
            n("audit_records"),
            2 * n("proposals") + 2 * n("approved") + n("executed"),
            "{s}"
        );
        assert_eq!(run["no_rerouting"]["audit_records"], 0);
        assert_eq!(run["no_rerouting"]["proposals"], 0);
        assert_eq!(
            run["orders"],
            run["no_rerouting"]["kpis"]["orders_released"]
        );
    }
    // The runs' audit logs verify against their own keys.
    let verify = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path().join("runs/seed-3/scheduler"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && said.contains("verified"),
        "{said}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("seed 4") && svg.contains("hours late"));

    let bad = Command::new(BIN)
        .args(["bench", "reroute", "--seeds", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--seeds 1 to 100"));
}
