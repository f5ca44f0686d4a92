//! `twinguard bench skab` on a folder in SKAB's format, written here: the protocol's split,
//! the tables, and a clear error for a folder that is not SKAB's.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

use std::fmt::Write as _;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twinguard");

/// Deterministic noise, uniform in [-0.5, 0.5) (xorshift).
fn noise(seed: u64) -> impl FnMut() -> f64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

/// 600 rows of two related signals and two temperatures that start to drift, as the loop
/// warms, near the end of the 400 training rows; from row 500 the relation breaks (anomaly), with a changepoint at 500.
fn experiment(seed: u64) -> String {
    let mut s = String::from("datetime;A;B;C;Temperature;Thermocouple;anomaly;changepoint\n");
    let mut noise = noise(seed);
    // `a` wanders as an autocorrelated process, as sensor data at 1 Hz does.
    let mut a = 0.0;
    for i in 0..600 {
        a = 0.9 * a + 0.4 * noise();
        let broken = i >= 500;
        let b = 2.0 * a + 0.05 * noise() + if broken { 1.5 } else { 0.0 };
        let c = 0.2 * noise();
        let warming = (i as f64 - 390.0).max(0.0);
        let (t, tc) = (
            20.0 + 0.05 * warming + 0.02 * noise(),
            18.0 + 0.03 * warming + 0.02 * noise(),
        );
        let _ = writeln!(
            s,
            "2020-03-09 {:02}:{:02}:{:02};{a};{b};{c};{t};{tc};{};{}",
            10 + i / 3600,
            (i / 60) % 60,
            i % 60,
            if broken { "1.0" } else { "0.0" },
            if i == 500 { "1.0" } else { "0.0" },
        );
    }
    s
}

#[test]
fn bench_skab_follows_the_protocol_on_a_folder_in_its_format() {
    let dir = tempfile::tempdir().unwrap();
    for (g, seed) in [("valve1", 1), ("valve2", 2), ("other", 3)] {
        std::fs::create_dir_all(dir.path().join(g)).unwrap();
        std::fs::write(dir.path().join(g).join("0.csv"), experiment(seed)).unwrap();
    }
    let out = Command::new(BIN)
        .args(["bench", "skab", "--json", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["files"], 3);
    // Only the 200 rows after the first 400 of each file are scored.
    let c = &r["confusion"];
    let scored: u64 = ["tp", "tn", "fp", "fn_"]
        .iter()
        .map(|k| c[k].as_u64().unwrap())
        .sum();
    assert_eq!(scored, 3 * 200);
    assert!(r["f1"].as_f64().unwrap() > 0.9, "{r}");
    assert!(r["nab"]["standard"].as_f64().unwrap() > 50.0, "{r}");
    assert_eq!(r["nab"]["missed"], 0, "{r}");
    // The temperatures are left out by default: with them, their drift past the 400
    // training rows is an alarm on every normal test row.
    let run = |exclude: &str| {
        Command::new(BIN)
            .args(["bench", "skab", "--json", "--exclude", exclude, "--data"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let with = run("");
    assert!(with.status.success());
    let with: Value = serde_json::from_slice(&with.stdout).unwrap();
    assert!(with["far"].as_f64().unwrap() > 50.0, "{with}");
    assert!(r["far"].as_f64().unwrap() < 10.0, "{r}");
    let bad = run("Pressure");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no column \"Pressure\" to leave out"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let tables = Command::new(BIN)
        .args(["bench", "skab", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8(tables.stdout).unwrap();
    assert!(
        text.contains("Conv-AE") && text.contains("twinguard (this run)"),
        "{text}"
    );

    let out = Command::new(BIN)
        .args(["bench", "skab", "--data"])
        .arg(dir.path().join("valve1"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is --data the SKAB data folder?"), "{err}");
}

/// 52 variables driven by 5 latent factors with noise; from observation `fault_at` on,
/// variable `fault % 52` is offset (a broken relation). Its factors carry equal variance,
/// so the tests keep 99 % of it (at 90 % a whole factor would fall in the residual).
fn tep_run(seed: u64, rows: usize, fault: Option<usize>, fault_at: usize) -> Vec<Vec<f64>> {
    let mut noise = noise(seed);
    (0..rows)
        .map(|i| {
            let latent: Vec<f64> = (0..5).map(|_| noise()).collect();
            (0..52)
                .map(|v| {
                    let mut value = latent[v % 5] * (1.0 + v as f64 / 52.0) + 0.05 * noise();
                    if fault.is_some_and(|f| f % 52 == v) && i >= fault_at {
                        value += 0.5;
                    }
                    value
                })
                .collect()
        })
        .collect()
}

fn write_matrix(path: &std::path::Path, rows: &[Vec<f64>]) {
    let mut text = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().map(|v| format!("{v:.7e}")).collect();
        let _ = writeln!(text, "  {}", cells.join("   "));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn bench_tep_reports_rates_per_fault_beside_pca() {
    let dir = tempfile::tempdir().unwrap();
    let train = tep_run(1, 500, None, 0);
    // d00.dat is stored transposed, as in Braatz's data.
    let transposed: Vec<Vec<f64>> = (0..52)
        .map(|v| train.iter().map(|r| r[v]).collect())
        .collect();
    write_matrix(&dir.path().join("d00.dat"), &transposed);
    write_matrix(&dir.path().join("d00_te.dat"), &tep_run(2, 960, None, 0));
    for fault in 1..=21 {
        write_matrix(
            &dir.path().join(format!("d{fault:02}_te.dat")),
            &tep_run(10 + fault as u64, 960, Some(fault), 160),
        );
    }
    let out = Command::new(BIN)
        .args([
            "bench",
            "tep",
            "--json",
            "--explained-variance",
            "0.99",
            "--data",
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
    let names: Vec<&str> = r["detectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["PCA T²", "PCA Q", "twinguard"]);
    let ours = &r["detectors"][2];
    assert_eq!(ours["detection"].as_array().unwrap().len(), 21);
    assert!(ours["mean_detection_18"].as_f64().unwrap() > 0.9, "{r}");
    assert!(ours["false_alarm_d00"].as_f64().unwrap() < 0.05, "{ours}");

    let out = Command::new(BIN)
        .args(["bench", "tep", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("mean") && table.contains("(hard)"),
        "{table}"
    );
    std::fs::remove_file(dir.path().join("d07_te.dat")).unwrap();
    let out = Command::new(BIN)
        .args(["bench", "tep", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("d07_te.dat"));
}

/// Hourly rows in BATADAL's format: two tanks filled by two pumps; during an attack tank
/// T2's level reads constant while its pump runs on.
fn batadal_rows(
    seed: u64,
    from_hour: i64,
    hours: usize,
    attack: Option<(usize, usize)>,
    flag: bool,
) -> String {
    let mut noise = noise(seed);
    let mut s = String::from(if flag {
        "DATETIME, L_T1, L_T2, F_PU1, S_PU1, F_PU2, ATT_FLAG\n"
    } else {
        "DATETIME,L_T1,L_T2,F_PU1,S_PU1,F_PU2\n"
    });
    for i in 0..hours {
        let h = from_hour + i as i64;
        let (day, hour) = (h / 24, h % 24);
        let demand = (hour as f64 / 24.0 * std::f64::consts::TAU).sin();
        let f1 = 90.0 + 10.0 * demand + noise();
        let f2 = 40.0 + 5.0 * demand + 0.5 * noise();
        let l1 = 3.0 + 0.02 * f1 + 0.05 * noise();
        let mut l2 = 2.0 + 0.04 * f2 + 0.05 * noise();
        let under = attack.is_some_and(|(a, b)| i >= a && i <= b);
        if under {
            l2 = 2.0;
        }
        let _ = write!(
            s,
            "{:02}/{:02}/16 {hour:02}, {l1:.2}, {l2:.2}, {f1:.2}, 1.00, {f2:.2}",
            day % 28 + 1,
            day / 28 % 12 + 1
        );
        if flag {
            let _ = write!(s, ", {}", if under { "1" } else { "-999" });
        }
        s.push('\n');
    }
    s
}

#[test]
fn bench_batadal_scores_training_set_2_and_its_model_scores_any_batadal_csv() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("BATADAL_dataset03.csv"),
        batadal_rows(1, 0, 2000, None, false),
    )
    .unwrap();
    // Set 2 starts on 01/03/16 00 (day 56 of the synthetic calendar): one attack of 48 h
    // from hour 500 (21/03/16 20; months have 28 days in this calendar).
    std::fs::write(
        dir.path().join("BATADAL_dataset04.csv"),
        batadal_rows(2, 56 * 24, 1000, Some((500, 547)), true),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("attacks_training_dataset2.csv"),
        "attack_id,start,end,duration_hours,labeled_hours,description,scada_concealment\n1,2016-03-21 20:00,2016-03-23 19:00,48,48,\"T2 level constant\",\"\"\n",
    )
    .unwrap();
    let model = dir.path().join("batadal.json");
    let out = Command::new(BIN)
        .args(["bench", "batadal", "--json", "--data"])
        .arg(dir.path())
        .arg("--model-out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &r["score"];
    assert_eq!(
        (s["detected"].as_u64(), s["attacks"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert!(s["s"].as_f64().unwrap() > 0.8, "{r}");
    // The model for the test set is fitted on set 1 and set 2's hours before and after
    // the attack, three segments, and still finds the attack it never saw.
    assert_eq!(r["model_for_test_segments"], 3, "{r}");
    let t = &r["model_for_test_on_set_2"];
    assert_eq!(t["detected"], 1, "{r}");
    assert!(t["s"].as_f64().unwrap() > 0.8, "{r}");
    // The model keeps the benchmark's settings, the alarm off-delay among them.
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    assert_eq!(m["options"]["off_delay"], 5, "{}", m["options"]);
    // The model fitted on both sets scores a file in BATADAL's format hour by hour.
    let scores = dir.path().join("scores.csv");
    let out = Command::new(BIN)
        .args(["detect", "score", "--model"])
        .arg(&model)
        .arg("--csv")
        .arg(dir.path().join("BATADAL_dataset04.csv"))
        .arg("--out")
        .arg(&scores)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&scores).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1001);
    assert!(lines[1].starts_with("01/03/16 00,"), "{}", lines[1]);
    // A data set that is not BATADAL's is refused with the reason.
    std::fs::write(dir.path().join("BATADAL_dataset03.csv"), "time,a\n1,2\n").unwrap();
    let out = Command::new(BIN)
        .args(["bench", "batadal", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the first column is not DATETIME"));
}
