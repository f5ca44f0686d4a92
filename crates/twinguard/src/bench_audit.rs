//! `twinguard bench audit`: the Merkle log's append rate with checkpoints (records per
//! second, committed in batches of 1 to 1,000), then, at a log of `--records` records,
//! reopening it, inclusion and consistency proofs (made and checked), and verifying the
//! whole log. The proofs are timed one by one and given as p50 and p99.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use audit::{AuditStore, CheckpointPolicy, Entry, Proof, SqliteStore, check_proof};
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Serialize)]
pub struct AppendRow {
    pub batch: usize,
    pub records: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub checkpoints: u64,
}

#[derive(Debug, Serialize)]
pub struct Timing {
    pub n: usize,
    pub p50_us: f64,
    pub p99_us: f64,
}

#[derive(Debug, Serialize)]
pub struct AuditBench {
    pub append: Vec<AppendRow>,
    pub records: u64,
    pub fill_records_per_s: f64,
    pub database_bytes: u64,
    pub reopen_s: f64,
    pub inclusion_prove: Timing,
    pub inclusion_check: Timing,
    pub consistency_prove: Timing,
    pub consistency_check: Timing,
    pub verify_s: f64,
    pub verify_records_per_s: f64,
}

/// A record the size of a guard decision.
fn entry(i: u64) -> Entry {
    Entry::new(
        1_764_000_000_000 + i as i64,
        "decision",
        json!({
            "proposal_id": i,
            "agent": "optimiser",
            "action": { "kind": "set_setpoint", "setpoint": "pump.speed_sp", "value": 1450.0 + (i % 100) as f64 },
            "outcome": "execute",
            "policy": ["optimiser-setpoints"],
            "tier": "low",
            "reasons": [],
            "evidence": ["pump.speed", "tank.level", "filler.recirc_flow"],
        }),
    )
}

fn timing(mut us: Vec<f64>) -> Timing {
    us.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let i = ((us.len() as f64 - 1.0) * p).round() as usize;
        us.get(i).copied().unwrap_or(f64::NAN)
    };
    Timing {
        n: us.len(),
        p50_us: at(0.5),
        p99_us: at(0.99),
    }
}

/// SplitMix64: which records and checkpoints get proved.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn progress(what: &str, done: u64, total: u64) {
    eprint!("\rtwinguard bench audit: {what} {done}/{total}   ");
    let _ = std::io::stderr().flush();
}

pub fn run(dir: &Path, records: u64) -> Result<AuditBench> {
    std::fs::create_dir_all(dir)?;
    let key = frames::keys::generate()?;
    let public = key.verifying_key();
    // Append rate by batch size, each on a fresh log, checkpointed every second.
    let mut append = Vec::new();
    for (batch, n) in [
        (1usize, 20_000u64),
        (10, 100_000),
        (100, 300_000),
        (1000, 300_000),
    ] {
        let path = dir.join(format!("append-{batch}.db"));
        let mut store = SqliteStore::open(&path, key.clone())?;
        let entries: Vec<Entry> = (0..batch as u64).map(entry).collect();
        let t = Instant::now();
        let mut done = 0u64;
        while done < n {
            store.append(&entries)?;
            done += batch as u64;
        }
        store.checkpoint()?;
        let seconds = t.elapsed().as_secs_f64();
        let v = store.verify(&public)?;
        append.push(AppendRow {
            batch,
            records: done,
            seconds,
            records_per_s: done as f64 / seconds,
            checkpoints: v.checkpoints,
        });
        drop(store);
        let _ = std::fs::remove_file(&path);
        progress("append, batch", batch as u64, 1000);
    }
    // A large log, checkpointed every 100,000 records.
    let path = dir.join("large.db");
    let mut store = SqliteStore::open(&path, key.clone())?.with_checkpoints(CheckpointPolicy {
        every: Duration::from_secs(3600),
        records: 100_000,
    });
    let t = Instant::now();
    let mut done = 0u64;
    while done < records {
        let n = 1000.min(records - done);
        let entries: Vec<Entry> = (done..done + n).map(entry).collect();
        store.append(&entries)?;
        done += n;
        if done.is_multiple_of(100_000) {
            progress("filling", done, records);
        }
    }
    store.checkpoint()?;
    let fill_records_per_s = done as f64 / t.elapsed().as_secs_f64();
    drop(store);
    let t = Instant::now();
    let mut store = SqliteStore::open(&path, key.clone())?;
    let reopen_s = t.elapsed().as_secs_f64();
    let mut rng = 7u64;
    let (mut prove, mut check) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        let seq = next(&mut rng) % records + 1;
        let t = Instant::now();
        let p = Proof::Inclusion(store.prove_inclusion(seq, None)?);
        prove.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        check_proof(&p, &public)?;
        check.push(t.elapsed().as_secs_f64() * 1e6);
    }
    // Consistency from stored checkpoints (drawn at random) to the newest.
    let mut sizes = store.checkpoint_sizes()?;
    sizes.pop();
    let (mut cprove, mut ccheck) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let Some(size) = sizes.get((next(&mut rng) % sizes.len().max(1) as u64) as usize) else {
            break;
        };
        let Some(note) = store.checkpoint_note(Some(*size))? else {
            continue;
        };
        let t = Instant::now();
        let p = Proof::Consistency(store.prove_consistency(&note)?);
        cprove.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        check_proof(&p, &public)?;
        ccheck.push(t.elapsed().as_secs_f64() * 1e6);
    }
    progress("verifying", 0, 1);
    let t = Instant::now();
    let v = store.verify(&public)?;
    let verify_s = t.elapsed().as_secs_f64();
    if let Some(p) = v.problem {
        anyhow::bail!("the benchmark's own log does not verify: {}", p.what);
    }
    let database_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    drop(store);
    eprintln!();
    let _ = std::fs::remove_dir_all(dir);
    Ok(AuditBench {
        append,
        records,
        fill_records_per_s,
        database_bytes,
        reopen_s,
        inclusion_prove: timing(prove),
        inclusion_check: timing(check),
        consistency_prove: timing(cprove),
        consistency_check: timing(ccheck),
        verify_s,
        verify_records_per_s: records as f64 / verify_s,
    })
}

pub fn table(r: &AuditBench) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "append (checkpoint every second)");
    let _ = writeln!(
        out,
        "{:>8} {:>10} {:>9} {:>14} {:>12}",
        "batch", "records", "seconds", "records/s", "checkpoints"
    );
    for a in &r.append {
        let _ = writeln!(
            out,
            "{:>8} {:>10} {:>9.2} {:>14.0} {:>12}",
            a.batch, a.records, a.seconds, a.records_per_s, a.checkpoints
        );
    }
    let _ = writeln!(
        out,
        "\nlog of {} records ({:.0} MB), filled at {:.0} records/s; reopened in {:.3} s; verified in {:.1} s ({:.0} records/s)",
        r.records,
        r.database_bytes as f64 / 1e6,
        r.fill_records_per_s,
        r.reopen_s,
        r.verify_s,
        r.verify_records_per_s
    );
    let _ = writeln!(out, "{:<22} {:>6} {:>10} {:>10}", "µs", "n", "p50", "p99");
    for (name, t) in [
        ("inclusion: prove", &r.inclusion_prove),
        ("inclusion: check", &r.inclusion_check),
        ("consistency: prove", &r.consistency_prove),
        ("consistency: check", &r.consistency_check),
    ] {
        let _ = writeln!(
            out,
            "{name:<22} {:>6} {:>10.1} {:>10.1}",
            t.n, t.p50_us, t.p99_us
        );
    }
    out
}

#[derive(Debug, Serialize)]
pub struct ScanBench {
    pub files: Vec<ScanRow>,
}

#[derive(Debug, Serialize)]
pub struct ScanRow {
    pub what: &'static str,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub findings: usize,
    /// By kind, with their text (in random bytes, what a scanner can mistake for text).
    pub found: Vec<String>,
}

/// The model scanner's speed on three kinds of model file of `mb` megabytes each: random
/// bytes (weights), JSON text of numbers (twinguard's own model files) and an ONNX model
/// (a graph with one large initializer).
pub fn scan(dir: &Path, mb: u64) -> Result<ScanBench> {
    use prost::Message;
    std::fs::create_dir_all(dir)?;
    let n = (mb * 1_000_000) as usize;
    let mut rng = 11u64;
    let mut random = vec![0u8; n];
    for chunk in random.chunks_mut(8) {
        let v = next(&mut rng).to_le_bytes();
        for (c, b) in chunk.iter_mut().zip(v) {
            *c = b;
        }
    }
    let mut json_text = String::with_capacity(n + 32);
    json_text.push_str("{\"weights\":[");
    while json_text.len() < n {
        let v = (next(&mut rng) % 2_000_000) as f64 / 1e6 - 1.0;
        json_text.push_str(&format!("{v:.6},"));
    }
    json_text.push_str("0]}");
    let onnx = models::onnx::ModelProto {
        ir_version: 8,
        graph: Some(models::onnx::GraphProto {
            node: vec![models::onnx::NodeProto {
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                op_type: "MatMul".into(),
                ..Default::default()
            }],
            name: "g".into(),
            initializer: vec![models::onnx::TensorProto {
                dims: vec![(n / 4) as i64],
                data_type: 1,
                name: "w".into(),
                raw_data: random.clone(),
                ..Default::default()
            }],
        }),
        opset_import: vec![models::onnx::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let mut files = Vec::new();
    for (what, name, bytes) in [
        ("random bytes (weights)", "weights.bin", random),
        ("JSON numbers", "model.json", json_text.into_bytes()),
        ("ONNX, one large initializer", "model.onnx", onnx),
    ] {
        let model = dir.join(name.replace('.', "-"));
        std::fs::create_dir_all(&model)?;
        std::fs::write(model.join(name), &bytes)?;
        let t = Instant::now();
        let report = models::scan::scan(&model, &[])?;
        let seconds = t.elapsed().as_secs_f64();
        files.push(ScanRow {
            what,
            bytes: report.bytes,
            seconds,
            mb_per_s: report.bytes as f64 / 1e6 / seconds,
            findings: report.findings.len(),
            found: report
                .findings
                .iter()
                .map(|f| format!("{}: {}", f.what, f.detail))
                .collect(),
        });
        let _ = std::fs::remove_dir_all(&model);
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(ScanBench { files })
}

pub fn scan_table(r: &ScanBench) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<30} {:>12} {:>9} {:>9} {:>9}",
        "file", "bytes", "seconds", "MB/s", "findings"
    );
    for f in &r.files {
        let _ = writeln!(
            out,
            "{:<30} {:>12} {:>9.3} {:>9.1} {:>9}",
            f.what, f.bytes, f.seconds, f.mb_per_s, f.findings
        );
    }
    out
}
