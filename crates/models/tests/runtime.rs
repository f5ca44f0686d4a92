//! The ONNX runtime against ONNX Runtime: graphs built by the `onnx` package and run by
//! ONNX Runtime in Python (`onnx_reference.py`), then run here on the same rows.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::path::Path;
use std::process::Command;

use models::OnnxInterface;
use models::runtime::{Graph, OnnxDetector};
use serde_json::Value;

fn reference(dir: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx_reference.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "onnx_reference.py failed (it needs the onnx and onnxruntime packages, which .ci/run installs): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap()
}

fn interface(output: &str, columns: usize) -> OnnxInterface {
    OnnxInterface {
        role: "detector".into(),
        columns: (0..columns).map(|i| format!("s{i}")).collect(),
        output: output.into(),
        scale: None,
        threshold: 1.0,
        smoothing: 1,
    }
}

#[test]
fn graphs_made_by_the_onnx_package_give_onnx_runtimes_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let cases = reference(dir.path());
    for name in ["mlp", "score"] {
        let inputs = cases[name]["inputs"].as_array().unwrap();
        let outputs = cases[name]["outputs"].as_array().unwrap();
        assert_eq!(inputs.len(), 40);
        let graph = Graph::load(&dir.path().join(format!("{name}.onnx")), 6).unwrap();
        assert_eq!(graph.outputs(), outputs[0].as_array().unwrap().len());
        for (row, expected) in inputs.iter().zip(outputs) {
            let row: Vec<f32> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let got = graph.run(&row).unwrap();
            let expected = expected.as_array().unwrap();
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(expected) {
                let e = e.as_f64().unwrap();
                assert!(
                    (f64::from(*g) - e).abs() <= 1e-4 * e.abs().max(1.0),
                    "{name}: {g} where ONNX Runtime gives {e} (row {row:?})"
                );
            }
        }
    }

    // The detector reads the outputs as its interface says: a score graph's first output
    // is the score; a reconstruction's squared errors are scaled and summed.
    let score = OnnxDetector::load(&dir.path().join("score.onnx"), &interface("score", 6)).unwrap();
    let row0: Vec<f64> = cases["score"]["inputs"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (s, contributions) = score.score(&row0).unwrap();
    let expected = cases["score"]["outputs"][0][0].as_f64().unwrap();
    assert!((s - expected).abs() <= 1e-4 * expected.abs().max(1.0));
    assert_eq!(contributions, vec![0.0; 6]);

    let mut scaled = interface("reconstruction", 6);
    scaled.scale = Some(vec![2.0; 6]);
    let mlp = OnnxDetector::load(&dir.path().join("mlp.onnx"), &scaled).unwrap();
    let row: Vec<f64> = cases["mlp"]["inputs"][3]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let y: Vec<f64> = cases["mlp"]["outputs"][3]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (s, terms) = mlp.score(&row).unwrap();
    let expected: f64 = row
        .iter()
        .zip(&y)
        .map(|(x, y)| ((x - y) / 2.0).powi(2))
        .sum();
    assert!(
        (s - expected).abs() <= 1e-3 * expected.max(1.0),
        "{s} vs {expected}"
    );
    assert!((terms.iter().sum::<f64>() - s).abs() < 1e-9);
}

#[test]
fn a_graph_that_does_not_fit_its_interface_or_is_not_onnx_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    reference(dir.path());
    // A score graph (one output) cannot be read as a reconstruction of six inputs.
    let err = OnnxDetector::load(
        &dir.path().join("score.onnx"),
        &interface("reconstruction", 6),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("score.onnx") && err.contains("needs as many"),
        "{err}"
    );
    // A graph fed the wrong number of signals fails at load, not in the twin.
    let err = Graph::load(&dir.path().join("mlp.onnx"), 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tract cannot run this ONNX graph"), "{err}");
    // Bytes that are not ONNX.
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x08\x07not a model at all").unwrap();
    let err = Graph::load(&junk, 6).unwrap_err().to_string();
    assert!(
        err.contains("junk.onnx") && err.contains("tract cannot run"),
        "{err}"
    );
    // A row of the wrong width is an error, not a panic.
    let graph = Graph::load(&dir.path().join("mlp.onnx"), 6).unwrap();
    assert!(
        graph
            .run(&[1.0; 5])
            .unwrap_err()
            .contains("a row of 5 values")
    );
    // An interface that breaks its own rules never loads a graph.
    let mut bad = interface("reconstruction", 6);
    bad.threshold = f64::NAN;
    let err = OnnxDetector::load(&dir.path().join("mlp.onnx"), &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("onnx.threshold"), "{err}");
}
