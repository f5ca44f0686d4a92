//! `twinguard detect fit|score` on CSV files written here: the scores file's shape, a
//! sensor fault found and named, missing values handled as documented, clear errors.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twinguard");

/// Deterministic noise, uniform in [0, 1) (xorshift).
fn uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut x = seed.max(1);
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Rows of a pump: flow follows speed, power follows both; `label` is a column to leave
/// out. From `fault_from` on, the flow sensor reads 20 % high.
fn history(seed: u64, rows: usize, fault_from: usize, sep: char) -> String {
    let mut u = uniform(seed);
    let mut noise = move || u() - 0.5;
    let mut s = format!("time{sep}speed{sep}flow{sep}power{sep}label\n");
    for i in 0..rows {
        let speed = 1500.0 + 200.0 * (i as f64 / 40.0).sin() + 10.0 * noise();
        let mut flow = speed / 50.0 + 0.3 * noise();
        let power = 0.002 * speed + 0.1 * flow + 0.05 * noise();
        if i >= fault_from {
            flow *= 1.2;
        }
        let _ = writeln!(
            s,
            "2026-11-26T{:02}:{:02}:00{sep}{speed:.3}{sep}{flow:.4}{sep}{power:.4}{sep}x",
            i / 60 % 24,
            i % 60
        );
    }
    s
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(out: Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn fit_then_score_finds_and_names_a_failing_sensor() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
    let (model, scores, plot) = (
        dir.path().join("model.json"),
        dir.path().join("scores.csv"),
        dir.path().join("plot.svg"),
    );
    std::fs::write(&train, history(1, 1000, usize::MAX, ';')).unwrap();
    // Test data: row 101 has a missing flow; the flow sensor drifts from row 200.
    let mut t = history(2, 300, 200, ';');
    let lines: Vec<String> = t.lines().map(String::from).collect();
    let mut cells: Vec<&str> = lines[101].split(';').collect();
    cells[2] = "";
    let broken = cells.join(";");
    t = lines
        .iter()
        .enumerate()
        .map(|(i, l)| if i == 101 { broken.clone() } else { l.clone() } + "\n")
        .collect();
    std::fs::write(&test, t).unwrap();

    let fitted = ok(run(&[
        "detect",
        "fit",
        "--csv",
        p(&train),
        "--sep",
        ";",
        "--exclude",
        "label",
        "--out",
        p(&model),
    ]));
    assert_eq!(
        fitted["columns"],
        serde_json::json!(["speed", "flow", "power"])
    );
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    assert_eq!(
        (file["format"].as_str(), file["version"].as_u64()),
        (Some("twinguard-detector"), Some(1))
    );
    assert_eq!(file["training"]["sha256"].as_str().unwrap().len(), 64);

    let summary = ok(run(&[
        "detect",
        "score",
        "--model",
        p(&model),
        "--csv",
        p(&test),
        "--sep",
        ";",
        "--out",
        p(&scores),
        "--plot",
        p(&plot),
    ]));
    assert_eq!(summary["rows"], 300);
    assert_eq!(summary["rows_with_missing_values"], 1);
    let text = std::fs::read_to_string(&scores).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0], ["time", "score", "flag", "contributors", "class"]);
    assert_eq!(rows.len(), 301, "one line per row, none lost");
    assert_eq!(rows[101][0], "2026-11-26T01:40:00");
    assert_eq!(&rows[101][1..], ["", "0", "missing:flow", "missing_data"]);
    let before = rows[1..200].iter().filter(|r| r[2] == "1").count();
    let during: Vec<&Vec<&str>> = rows[201..].iter().collect();
    assert!(before <= 6, "{before} false alarms of 199");
    assert!(
        during.iter().all(|r| r[2] == "1"),
        "the drift is flagged throughout"
    );
    assert!(
        during
            .iter()
            .all(|r| r[3].starts_with("flow") && r[4] == "sensor_fault"),
        "{:?}",
        during[0]
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>") && svg.contains("<polyline")
    );
}

#[test]
fn bad_input_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let (train, model) = (dir.path().join("train.csv"), dir.path().join("model.json"));
    std::fs::write(&train, history(3, 200, usize::MAX, ',')).unwrap();
    let err = |out: Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = err(run(&[
        "detect",
        "fit",
        "--csv",
        p(&train),
        "--exclude",
        "lable",
        "--out",
        p(&model),
    ]));
    assert!(e.contains("no column \"lable\" (--exclude)"), "{e}");
    let e = err(run(&[
        "detect",
        "fit",
        "--csv",
        p(&train),
        "--sep",
        "::",
        "--out",
        p(&model),
    ]));
    assert!(e.contains("--sep must be one ASCII character"), "{e}");
    let e = err(run(&[
        "detect",
        "fit",
        "--csv",
        p(&train),
        "--exclude",
        "label",
        "--off-delay",
        "20000",
        "--out",
        p(&model),
    ]));
    assert!(
        e.contains("off_delay must be at most 10000 observations, got 20000"),
        "{e}"
    );
    assert!(!model.exists(), "no model is written");
    // The label column is text: not a number, with its line and column.
    let e = err(run(&[
        "detect",
        "fit",
        "--csv",
        p(&train),
        "--out",
        p(&model),
    ]));
    assert!(
        e.contains("line 2, column \"label\": \"x\" is not a number"),
        "{e}"
    );
    ok(run(&[
        "detect",
        "fit",
        "--csv",
        p(&train),
        "--exclude",
        "label",
        "--out",
        p(&model),
    ]));
    // Scoring a file without a column the model needs.
    let other = dir.path().join("other.csv");
    std::fs::write(&other, "time,speed,power\n1,2,3\n").unwrap();
    let e = err(run(&[
        "detect",
        "score",
        "--model",
        p(&model),
        "--csv",
        p(&other),
        "--out",
        p(&dir.path().join("s.csv")),
    ]));
    assert!(e.contains("the model needs column \"flow\""), "{e}");
    // A file that is not a model.
    let e = err(run(&[
        "detect",
        "score",
        "--model",
        p(&train),
        "--csv",
        p(&other),
        "--out",
        p(&dir.path().join("s.csv")),
    ]));
    assert!(e.contains("is not a twinguard detector file"), "{e}");
}

/// Hours of a pumping station: suction and discharge pressure, the pump's status (on and
/// off in spells) and flow (on its curve while on, 0 while off). From `slowed_from` on,
/// the pump runs at 90 % speed.
fn station(seed: u64, rows: usize, slowed_from: usize) -> String {
    let mut u = uniform(seed);
    let mut s = String::from("time,p_in,p_out,pump,flow\n");
    let mut on = 1.0;
    for i in 0..rows {
        if u() < 0.15 {
            on = if u() < 0.7 { 1.0 } else { 0.0 };
        }
        let (p_in, p_out) = (2.0 + u(), 30.0 + 10.0 * u());
        let k = if i >= slowed_from { 0.9 } else { 1.0 };
        let head = p_out - p_in;
        let flow = on * (k * 80.0 - 0.02 * head * head / k) + 0.05 * (u() - 0.5);
        let _ = writeln!(
            s,
            "2026-{:02}-{:02}T{:02}:00:00,{p_in:.3},{p_out:.3},{on},{flow:.3}",
            i / 24 / 28 % 12 + 1,
            i / 24 % 28 + 1,
            i % 24
        );
    }
    s
}

/// `detect score` of `csv` with `model`, written to `out`: its rows, split into cells,
/// without the header.
fn scored(model: &Path, csv: &Path, out: &Path) -> Vec<Vec<String>> {
    ok(run(&[
        "detect",
        "score",
        "--model",
        p(model),
        "--csv",
        p(csv),
        "--out",
        p(out),
    ]));
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
fn a_pump_running_off_its_curve_is_flagged_from_its_first_hour() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
    let (model, scores) = (dir.path().join("model.json"), dir.path().join("scores.csv"));
    std::fs::write(&train, station(1, 3000, usize::MAX)).unwrap();
    std::fs::write(&test, station(2, 300, 200)).unwrap();
    // The defaults learn the relation (and none for a column that is not gated).
    let fitted = ok(run(&[
        "detect",
        "fit",
        "--csv",
        p(&train),
        "--out",
        p(&model),
    ]));
    let relations = fitted["relations"].as_array().unwrap();
    assert_eq!(relations.len(), 1, "{fitted}");
    let described = relations[0].as_str().unwrap();
    assert!(
        described.starts_with("flow from ") && described.contains("while pump is on"),
        "{described}"
    );
    let rows = scored(&model, &test, &scores);
    let test_rows: Vec<Vec<String>> = station(2, 300, 200)
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    // Every hour the slowed pump runs is flagged, blamed on the flow first.
    let running_slow: Vec<usize> = (200..300).filter(|&i| test_rows[i][3] == "1").collect();
    assert!(running_slow.len() > 20);
    for &i in &running_slow {
        assert_eq!(rows[i][2], "1", "hour {i}: {:?}", rows[i]);
        assert!(rows[i][3].starts_with("flow"), "hour {i}: {:?}", rows[i]);
    }
    // Before the pump slowed, nothing is flagged by the relation (at most the usual
    // statistical false alarms, with someone else to blame).
    let before = rows[..200].iter().filter(|r| r[2] == "1").count();
    assert!(before <= 6, "{before} false alarms of 200");
    // Switched off, the relation is gone from the model.
    let plain = dir.path().join("plain.json");
    let fitted = ok(run(&[
        "detect",
        "fit",
        "--csv",
        p(&train),
        "--relation-tolerance",
        "0",
        "--out",
        p(&plain),
    ]));
    assert_eq!(fitted["relations"], serde_json::json!([]));
}

/// A spare pump that never ran in all the training history is held still by default: the
/// hour it starts is flagged and blamed on it, and a pump's status that says off while
/// its flow says it runs is flagged and blamed on both. `--hold-constants false` lets
/// the spare pass unseen, as the model file documents.
#[test]
fn a_spare_pump_that_never_ran_and_a_status_against_its_flow_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let with_spare = |csv: String, started: Option<usize>| {
        csv.lines()
            .enumerate()
            .map(|(i, l)| match i {
                0 => format!("{l},spare\n"),
                _ => format!("{l},{}\n", u8::from(started == Some(i - 1))),
            })
            .collect::<String>()
    };
    let (train, test) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
    std::fs::write(&train, with_spare(station(1, 3000, usize::MAX), None)).unwrap();
    // Hour 150: the spare starts; hour 250, a running pump's status reads off.
    let mut test_csv = with_spare(station(3, 300, usize::MAX), Some(150));
    let mut lines: Vec<String> = test_csv.lines().map(String::from).collect();
    let running = (240..300)
        .find(|&i| lines[i + 1].split(',').nth(3) == Some("1"))
        .unwrap();
    let mut cells: Vec<String> = lines[running + 1].split(',').map(String::from).collect();
    cells[3] = "0".into();
    lines[running + 1] = cells.join(",");
    test_csv = lines.join("\n") + "\n";
    std::fs::write(&test, &test_csv).unwrap();
    let score = |extra: &[&str]| {
        let (model, scores) = (dir.path().join("m.json"), dir.path().join("s.csv"));
        let mut args = vec!["detect", "fit", "--csv", p(&train), "--out", p(&model)];
        args.extend(extra);
        let fitted = ok(run(&args));
        (fitted, scored(&model, &test, &scores))
    };
    let (fitted, rows) = score(&[]);
    assert_eq!(fitted["held_constant"], serde_json::json!(["spare = 0"]));
    assert_eq!(
        fitted["switch_bands"],
        serde_json::json!(["pump bounds flow"])
    );
    assert_eq!(rows[150][2], "1", "{:?}", rows[150]);
    assert!(rows[150][3].starts_with("spare"), "{:?}", rows[150]);
    assert_eq!(rows[running][2], "1", "{:?}", rows[running]);
    let named: Vec<&str> = rows[running][3].split(';').take(2).collect();
    assert!(
        named.contains(&"pump") && named.contains(&"flow"),
        "{:?}",
        rows[running]
    );
    let (fitted, rows) = score(&["--hold-constants", "false"]);
    assert_eq!(fitted["held_constant"], serde_json::json!([]));
    assert!(!rows[150][3].contains("spare"), "{:?}", rows[150]);
}

/// Hours of an autocorrelated process (a level that wanders, a flow that follows it an
/// hour late); `gaps` rows, every 50, have an empty level (a historian outage), and
/// each gap spans 950 hours of the process, so the rows either side of it are far apart.
fn wandering(rows: usize, gaps: bool) -> String {
    let mut u = uniform(9);
    let mut noise = move || u() - 0.5;
    let mut s = String::from("time,level,flow\n");
    let mut level = 0.0;
    let mut written = 0;
    let mut hour = 0usize;
    while written < rows {
        let before = level;
        level = 0.95 * level + noise();
        let flow = 2.0 + before + 0.05 * noise();
        hour += 1;
        if gaps && written % 50 == 49 {
            // The outage: one row with the level missing, then 950 hours unrecorded.
            let _ = writeln!(s, "{hour},,{flow:.4}");
            for _ in 0..950 {
                level = 0.95 * level + noise();
            }
            written += 1;
            continue;
        }
        let _ = writeln!(s, "{hour},{level:.4},{flow:.4}");
        written += 1;
    }
    s
}

/// Rows left out for a missing value split the history: the rows either side are not
/// taken for consecutive, so the jumps across outages do not inflate the threshold of a
/// model with a predictor and lags.
#[test]
fn fit_does_not_take_rows_either_side_of_a_missing_one_for_consecutive() {
    let dir = tempfile::tempdir().unwrap();
    let threshold = |csv: String| {
        let (data, model) = (dir.path().join("h.csv"), dir.path().join("m.json"));
        std::fs::write(&data, csv).unwrap();
        let fitted = ok(run(&[
            "detect",
            "fit",
            "--csv",
            p(&data),
            "--ridge",
            "1",
            "--lags",
            "1",
            "--smoothing",
            "5",
            "--out",
            p(&model),
        ]));
        fitted["threshold"].as_f64().unwrap()
    };
    let whole = threshold(wandering(2000, false));
    let with_outages = threshold(wandering(2040, true));
    assert!(
        with_outages < 1.5 * whole,
        "{with_outages} against {whole} without outages"
    );
}
