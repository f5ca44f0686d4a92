//! `twinguard bench`: how fast the stages run on this machine, measured in one run so that
//! the numbers can be compared as ratios on a shared machine.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use frames::{Envelope, Kind, TelemetryBody, WireSample, encode, to_body};
use ingest::{Device, IngestConfig, Verifier};
use plant_model::Plant;
use plant_sim::{DEFAULT_START_MS, Sim};
use serde_json::{Value, json};

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        f64::INFINITY
    }
}

pub async fn run(hours: f64, data_dir: std::path::PathBuf) -> Result<Value> {
    let plant = Arc::new(Plant::reference());

    // 1. The simulator alone: one simulated day at 1 Hz.
    let mut sim = Sim::new(&plant, 1, DEFAULT_START_MS)?;
    let t = Instant::now();
    for _ in 0..86_400 {
        std::hint::black_box(sim.step());
    }
    let sim_day_s = t.elapsed().as_secs_f64();
    eprintln!("bench: simulator, 24 h at 1 Hz: {sim_day_s:.3} s");

    // 2. Envelope sign and ingest verification of the tank's 5-second frames.
    let key = frames::keys::generate()?;
    let topic = plant.telemetry_topic("tank");
    let n = 20_000u64;
    let mut frames_buf = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for seq in 1..=n {
        let ts = DEFAULT_START_MS + seq as i64 * 5000;
        let samples = (0..5)
            .flat_map(|k| {
                [
                    ("tank.level", "m", 1.6),
                    ("tank.inflow", "m3/h", 15.0),
                    ("tank.inlet_valve", "%", 50.0),
                ]
                .map(|(s, u, v)| WireSample {
                    signal: s.into(),
                    t_ms: ts - 4000 + k * 1000,
                    value: v,
                    unit: u.into(),
                })
            })
            .collect();
        let body = to_body(&TelemetryBody {
            seq,
            ts_ms: ts,
            samples,
        });
        frames_buf.push((
            ts,
            encode(Kind::Telemetry, &topic, "gw-tank", &body, Some(&key))?,
        ));
    }
    let sign_s = t.elapsed().as_secs_f64();
    let mut verifier = Verifier::new(
        plant.clone(),
        vec![Device::ed25519("gw-tank", "tank", key.verifying_key())],
        IngestConfig::default(),
    );
    let source = Arc::new(ingest::SourceInfo::mqtt_plain("bench"));
    let t = Instant::now();
    let mut accepted = 0u64;
    for (ts, f) in &frames_buf {
        accepted += verifier.check(&source, &topic, f, *ts).accepted.len() as u64;
    }
    let verify_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (_, f) in &frames_buf {
        let env = Envelope::decode(f)?;
        std::hint::black_box(env.verify(&topic, &key.verifying_key()).is_ok());
    }
    let sig_only_s = t.elapsed().as_secs_f64();
    eprintln!("bench: {n} frames signed in {sign_s:.3} s, ingested in {verify_s:.3} s");

    // 3. The whole loop over the embedded MQTT broker.
    let t = Instant::now();
    let report = crate::demo::run(crate::demo::DemoArgs {
        hours,
        speed: 0.0,
        attack: None,
        seed: 1,
        data_dir,
        plant_file: None,
        faults: vec![],
        broker: None,
        api_port: 0,
        quiet: true,
    })
    .await?;
    let e2e_s = t.elapsed().as_secs_f64();
    let samples = report
        .get("samples")
        .and_then(|s| s.get("accepted"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    eprintln!("bench: {hours} simulated hours through the whole loop in {e2e_s:.2} s");

    Ok(json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "os": std::env::consts::OS, "arch": std::env::consts::ARCH },
        "simulator": { "simulated_day_s": sim_day_s, "ticks_per_s": rate(86_400, sim_day_s), "speedup_vs_real_time": 86_400.0 / sim_day_s },
        "envelope": {
            "frames": n,
            "sign_frames_per_s": rate(n, sign_s),
            "signature_verify_frames_per_s": rate(n, sig_only_s),
            "ingest_frames_per_s": rate(n, verify_s),
            "ingest_samples_per_s": rate(accepted, verify_s),
            "ingest_cost_over_signature_check": verify_s / sig_only_s,
        },
        "end_to_end": {
            "simulated_hours": hours,
            "wall_s": e2e_s,
            "samples": samples,
            "samples_per_s": rate(samples, e2e_s),
            "speedup_vs_real_time": hours * 3600.0 / e2e_s,
            "cost_over_simulator_alone": (e2e_s / (hours * 3600.0)) / (sim_day_s / 86_400.0),
        },
    }))
}
