//! `twinguard bench episodes`: the whole loop with one fault or attack per run, the first
//! alarm episode after it scored against what was injected.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twinguard");

fn tg(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A frozen flow transmitter reads as its sensor; a bearing wearing out is never
/// dismissed as a sensor; forged frames stop at ingest; a quiet plant raises nothing. The
/// matrix and the plot say so.
#[test]
fn each_injected_fault_is_read_for_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("episodes.svg");
    let data = dir.path().join("runs");
    let (ok, out, err) = tg(&[
        "bench",
        "episodes",
        "--only",
        "stuck-flow,bearing-wear,forged-frames,normal",
        "--seeds",
        "1",
        "--hours",
        "6",
        "--data-dir",
        data.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{out}{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let run = |name: &str| {
        r["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["scenario"] == name)
            .unwrap()
            .clone()
    };
    let stuck = run("stuck-flow");
    assert_eq!(stuck["verdict"], "sensor_fault", "{stuck}");
    assert_eq!(stuck["first"]["signals"][0], "pump.flow", "{stuck}");
    assert_eq!(stuck["outcome"], "correct");
    let wear = run("bearing-wear");
    assert!(
        wear["verdict"] == "process_upset" || wear["verdict"] == "unknown",
        "{wear}"
    );
    assert_eq!(wear["first"]["signals"][0], "pump.vibration", "{wear}");
    let forged = run("forged-frames");
    assert_eq!(forged["verdict"], "refused_at_ingest", "{forged}");
    assert!(forged["frames_refused"].as_u64().unwrap() > 0);
    assert_eq!(run("normal")["verdict"], "nothing_seen");
    assert_eq!(r["confusion"]["sensor_fault"]["sensor_fault"], 1);
    assert_eq!(r["actionable_episodes_in_attacks"], 0);
    assert_eq!(r["line_stops"], 0);

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    assert!(svg.contains("1 (100 %)"), "{svg}");

    // The table, from the same kind of run.
    let (ok, table, err) = tg(&[
        "bench",
        "episodes",
        "--only",
        "bias-level",
        "--seeds",
        "1",
        "--hours",
        "4.2",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{table}{err}");
    assert!(table.contains("sensor fault   correct 1/1"), "{table}");
}

#[test]
fn unknown_scenarios_and_runs_too_short_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (ok, _, err) = tg(&["bench", "episodes", "--only", "meteor", "--data-dir", data]);
    assert!(!ok);
    assert!(
        err.contains("no scenario \"meteor\"") && err.contains("stuck-flow"),
        "{err}"
    );
    let (ok, _, err) = tg(&[
        "bench",
        "episodes",
        "--only",
        "stuck-flow",
        "--hours",
        "3",
        "--data-dir",
        data,
    ]);
    assert!(!ok);
    assert!(err.contains("stuck-flow starts at 4 h"), "{err}");
}
