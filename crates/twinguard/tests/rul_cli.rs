//! `twinguard rul fit|predict` and `twinguard bench cmapss` on files in C-MAPSS's format,
//! written here: engines whose sensors wear towards failure.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twinguard");

/// Deterministic noise, uniform in [-0.5, 0.5) (xorshift).
fn noise(seed: u64) -> impl FnMut() -> f64 {
    let mut x = seed.max(1);
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

/// `units` engines; each runs `life` cycles, or is cut `cut` cycles before its end.
/// Returns the file's text and each unit's remaining life at its last row.
fn engines(units: usize, seed: u64, cut: bool) -> (String, Vec<usize>) {
    let mut n = noise(seed);
    let mut text = String::new();
    let mut left = Vec::new();
    for u in 1..=units {
        let life = 120 + ((n() + 0.5) * 120.0) as usize;
        let rul = if cut {
            5 + ((n() + 0.5) * 100.0) as usize
        } else {
            0
        };
        for t in 1..=(life - rul) {
            let wear = (t as f64 / life as f64).powi(2);
            let _ = write!(text, "{u} {t} 0.0001 0.0002 100.0");
            for s in 0..21 {
                let v = match s {
                    2 => 1590.0 + 12.0 * wear + n(),
                    7 => 2388.0 + 0.3 * wear + 0.05 * n(),
                    11 => 522.0 - 3.0 * wear + 0.3 * n(),
                    _ => 100.0 + n(),
                };
                let _ = write!(text, " {v:.4}");
            }
            text.push_str("  \n");
        }
        left.push(rul);
    }
    (text, left)
}

fn run(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn rul_fit_then_predict_estimates_each_engine_with_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (train, _) = engines(40, 1, false);
    std::fs::write(d.join("train.txt"), train).unwrap();
    let (test, truth) = engines(20, 2, true);
    std::fs::write(d.join("test.txt"), test).unwrap();
    // A small ensemble on short windows of train.txt, written to `out`; the summary.
    let fit = |out: &str, extra: &[&str]| -> Value {
        let mut args = vec![
            "rul",
            "fit",
            "--train",
            "train.txt",
            "--out",
            out,
            "--ensemble",
            "3",
            "--window",
            "10",
        ];
        args.extend(extra);
        let o = run(&args, d);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let summary = fit("model.json", &[]);
    assert_eq!(summary["units"], 40);
    assert_eq!(summary["sensors"], serde_json::json!(["s3", "s8", "s12"]));
    let model: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("model.json")).unwrap()).unwrap();
    assert_eq!(model["format"], "twinguard-rul");
    assert_eq!(model["training"]["source"], "train.txt");
    assert_eq!(model["training"]["sha256"].as_str().unwrap().len(), 64);

    let out = run(
        &[
            "rul",
            "predict",
            "--model",
            "model.json",
            "--test",
            "test.txt",
            "--out",
            "pred.csv",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pred = std::fs::read_to_string(d.join("pred.csv")).unwrap();
    let mut lines = pred.lines();
    assert_eq!(lines.next(), Some("unit,rul,rul_low,rul_high"));
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 20);
    let mut se = 0.0;
    for (r, t) in rows.iter().zip(&truth) {
        assert!(r[2] <= r[1] && r[1] <= r[3], "{r:?}");
        se += (r[1] - (*t as f64).min(125.0)).powi(2);
    }
    let rmse = (se / 20.0).sqrt();
    assert!(rmse < 30.0, "RMSE {rmse}");
    assert_eq!(
        (
            &model["version"],
            &model["options"]["age"],
            &model["options"]["baseline"]
        ),
        (&Value::from(2), &Value::from(true), &Value::from(40))
    );

    // Without age or first cycles (a pump watched from mid-life); written the way
    // version 1 wrote it, the same model is still read and predicts the same.
    let predict = |model: &str, out: &str| {
        let o = run(
            &[
                "rul", "predict", "--model", model, "--test", "test.txt", "--out", out,
            ],
            d,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(d.join(out)).unwrap()
    };
    fit("plain.json", &["--no-age", "--baseline", "0"]);
    let mut plain: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("plain.json")).unwrap()).unwrap();
    assert_eq!(
        (&plain["options"]["age"], &plain["options"]["baseline"]),
        (&Value::from(false), &Value::from(0))
    );
    let now = predict("plain.json", "plain.csv");
    plain["version"] = 1.into();
    let options = plain["options"].as_object_mut().unwrap();
    options.remove("age");
    options.remove("baseline");
    std::fs::write(d.join("v1.json"), plain.to_string()).unwrap();
    assert_eq!(predict("v1.json", "v1.csv"), now);

    // Bad input: a short line, a model that is not one, an unknown format.
    std::fs::write(d.join("bad.txt"), "1 1 0 0 100\n").unwrap();
    let out = run(&["rul", "fit", "--train", "bad.txt", "--out", "m2.json"], d);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.txt:1: 5 values, expected 26"), "{err}");
    let out = run(
        &[
            "rul", "predict", "--model", "test.txt", "--test", "test.txt", "--out", "p.csv",
        ],
        d,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a twinguard RUL model"));
    let out = run(
        &[
            "rul",
            "fit",
            "--train",
            "train.txt",
            "--format",
            "csv",
            "--out",
            "m3.json",
        ],
        d,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only \"cmapss\""));
}

#[test]
fn bench_cmapss_scores_fd001_and_writes_the_other_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (train, _) = engines(30, 3, false);
    let (test, truth) = engines(15, 4, true);
    std::fs::write(d.join("train_FD001.txt"), &train).unwrap();
    std::fs::write(d.join("test_FD001.txt"), &test).unwrap();
    let mut rul = String::new();
    for t in &truth {
        let _ = writeln!(rul, "{t}");
    }
    std::fs::write(d.join("RUL_FD001.txt"), rul).unwrap();
    // FD002 as the distribution ships it, gzipped, and with its truth withheld.
    let gz = Command::new("gzip")
        .arg("-c")
        .arg(d.join("train_FD001.txt"))
        .output()
        .unwrap();
    std::fs::write(d.join("train_FD002.txt.gz"), gz.stdout).unwrap();
    std::fs::write(d.join("test_FD002.txt"), &test).unwrap();
    std::fs::write(
        d.join("options.json"),
        r#"{"window": 10, "hidden": [16], "ensemble": 2, "epochs": 30}"#,
    )
    .unwrap();
    let out = run(
        &[
            "bench",
            "cmapss",
            "--data",
            ".",
            "--sets",
            "FD001,FD002",
            "--out",
            "preds",
            "--options",
            "options.json",
            "--plot",
            "--json",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["fd001"]["rmse"].as_f64().unwrap() < 35.0, "{r}");
    assert!(r["fd001"]["phm08"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["written"].as_array().unwrap().len(), 2);
    // The plot: the truth as one line, an estimate and an interval per test engine.
    assert_eq!(r["fd001_engines"].as_array().unwrap().len(), 15);
    let svg = std::fs::read_to_string(d.join("preds/fd001.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 1);
    assert_eq!(
        svg.matches("<circle").count(),
        15 + 1,
        "one per engine and the key's"
    );
    let fd002 = std::fs::read_to_string(d.join("preds/pred_FD002.csv")).unwrap();
    assert_eq!(fd002.lines().count(), 16);
    // The table puts our row among the published ones.
    let out = run(
        &[
            "bench",
            "cmapss",
            "--data",
            ".",
            "--sets",
            "FD001",
            "--out",
            "preds",
            "--options",
            "options.json",
        ],
        d,
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("twinguard (this run)") && table.contains("DCNN (Li et al. 2018)"),
        "{table}"
    );
    // A plot of FD001 needs FD001.
    let out = run(
        &[
            "bench",
            "cmapss",
            "--data",
            ".",
            "--sets",
            "FD002",
            "--out",
            "preds",
            "--options",
            "options.json",
            "--plot",
        ],
        d,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("add FD001 to --sets"));
    let out = run(
        &["bench", "cmapss", "--data", "nowhere", "--sets", "FD001"],
        d,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is --data the C-MAPSS folder?"));
}
