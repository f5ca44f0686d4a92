//! Comparing runs: the same seeded plant with the agents and with fixed setpoints
//! (`demo --compare-baseline`, `bench optimiser`).
#![allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexing yields Null, it never panics"
)]

use anyhow::Result;
use serde_json::{Value, json};

use crate::demo::{DemoArgs, Transport};

/// The key figures of a demo report, for comparing runs.
pub fn kpis(report: &Value, hours: f64) -> Value {
    let t = &report["plant"]["truth"];
    let good = t["good_bottles"].as_f64().unwrap_or(0.0);
    json!({
        "energy_per_good_bottle_wh": t["energy_per_good_bottle_wh"],
        "good_bottles_per_h": good / hours,
        "reject_pct": t["reject_pct"],
        "quality_violation_s": t["quality_violation_s"],
        "energy_kwh": t["energy_kwh"],
        "pump_failures": t["pump_failures"],
        "line_stops": report["line_stops"],
        "actions_executed": report["proposals"]["executed"],
    })
}

/// The operating conditions `--vary-conditions` draws for `seed`, as a comparison
/// reports them: climate, inlet offset, and the filler speeds the plan sets within
/// `hours`.
pub fn conditions(seed: u64, hours: f64) -> Value {
    let c = plant_sim::Conditions::varied(seed, hours);
    json!({
        "ambient_mean_c": c.ambient_mean_c,
        "ambient_swing_c": c.ambient_swing_c,
        "inlet_offset_c": c.inlet_offset_c,
        "filler_speeds": c.plan.iter().filter(|p| (p.at_s as f64) < hours * 3600.0).map(|p| p.filler_speed).collect::<Vec<_>>(),
    })
}

/// `bench optimiser`: the agents against fixed setpoints on seeds 1 to `seeds`.
pub async fn bench_optimiser(
    seeds: u64,
    hours: f64,
    data_dir: &std::path::Path,
    vary_conditions: bool,
) -> Result<Value> {
    let mut runs = Vec::new();
    for seed in 1..=seeds {
        let mut pair_kpis = Vec::new();
        for (agents, sub) in [(true, "with-agents"), (false, "fixed-setpoints")] {
            eprint!("\roptimiser: seed {seed}/{seeds} {sub:<16}");
            let report = crate::demo::run(DemoArgs {
                transport: Transport::Mqtt,
                config: None,
                legacy_devices: vec![],
                body: Default::default(),
                hours,
                speed: 0.0,
                attack: None,
                seed,
                data_dir: data_dir.join(format!("seed-{seed}")).join(sub),
                plant_file: None,
                faults: vec![],
                broker: None,
                api_port: 0,
                quiet: true,
                agents,
                vary_conditions,
                baseline: None,
            })
            .await?;
            pair_kpis.push(kpis(&report, hours));
        }
        eprintln!();
        let mut run = pair(seed, hours, pair_kpis)?;
        if vary_conditions {
            run["conditions"] = conditions(seed, hours);
        }
        runs.push(run);
    }
    let stats = |f: &dyn Fn(&Value) -> Option<f64>| -> Value {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        json!({ "mean": mean, "sd": sd, "min": min, "max": max })
    };
    Ok(json!({
        "seeds": seeds,
        "hours": hours,
        "conditions": if vary_conditions { "varied" } else { "reference" },
        "energy_per_good_bottle_change_pct": stats(&|r| r["change_pct"]["energy_per_good_bottle_wh"].as_f64()),
        "good_bottles_per_h_change_pct": stats(&|r| r["change_pct"]["good_bottles_per_h"].as_f64()),
        "reject_pct_with_agents": stats(&|r| r["with_agents"]["reject_pct"].as_f64()),
        "quality_violation_s_with_agents": stats(&|r| r["with_agents"]["quality_violation_s"].as_f64()),
        "quality_violation_s_fixed": stats(&|r| r["fixed_setpoints"]["quality_violation_s"].as_f64()),
        "runs": runs,
    }))
}

pub fn optimiser_table(r: &Value) -> String {
    let f = |k: &str| {
        let s = &r[k];
        format!(
            "{:+.1} (sd {:.1}, {:+.1} to {:+.1})",
            s["mean"].as_f64().unwrap_or(f64::NAN),
            s["sd"].as_f64().unwrap_or(f64::NAN),
            s["min"].as_f64().unwrap_or(f64::NAN),
            s["max"].as_f64().unwrap_or(f64::NAN)
        )
    };
    let mut s = format!(
        "The agents against fixed setpoints, seeds 1 to {}, {} simulated hours each, {} conditions\n\n",
        r["seeds"],
        r["hours"],
        r["conditions"].as_str().unwrap_or("reference")
    );
    s.push_str(&format!(
        "energy per good bottle, % change   {}\n",
        f("energy_per_good_bottle_change_pct")
    ));
    s.push_str(&format!(
        "good bottles per hour, % change    {}\n",
        f("good_bottles_per_h_change_pct")
    ));
    s.push_str(&format!(
        "seconds outside quality limits     with agents {}, fixed {}\n",
        r["quality_violation_s_with_agents"]["max"], r["quality_violation_s_fixed"]["max"]
    ));
    s.push_str(&format!(
        "rejects with agents, %             {}\n\n",
        f("reject_pct_with_agents").replace('+', "")
    ));
    for run in r["runs"].as_array().into_iter().flatten() {
        let c = &run["conditions"];
        let conditions = if c.is_object() {
            format!(
                "  ambient {:.1} ± {:.1} degC, inlet {:+.1} degC, filler {}",
                c["ambient_mean_c"].as_f64().unwrap_or(f64::NAN),
                c["ambient_swing_c"].as_f64().unwrap_or(f64::NAN),
                c["inlet_offset_c"].as_f64().unwrap_or(f64::NAN),
                c["filler_speeds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            )
        } else {
            String::new()
        };
        s.push_str(&format!(
            "seed {:>3}: {:.3} vs {:.3} Wh per good bottle ({:+.1} %){conditions}\n",
            run["seed"],
            run["with_agents"]["energy_per_good_bottle_wh"]
                .as_f64()
                .unwrap_or(f64::NAN),
            run["fixed_setpoints"]["energy_per_good_bottle_wh"]
                .as_f64()
                .unwrap_or(f64::NAN),
            run["change_pct"]["energy_per_good_bottle_wh"]
                .as_f64()
                .unwrap_or(f64::NAN)
        ));
    }
    s
}

/// The comparison as a table.
pub fn comparison(r: &Value) -> String {
    let mut s = format!(
        "seed {}, {} simulated hours: the same plant with the agents and with fixed setpoints\n\n{:<28} {:>14} {:>16} {:>9}\n",
        r["seed"], r["hours"], "", "with agents", "fixed setpoints", "change"
    );
    for (k, label) in [
        ("energy_per_good_bottle_wh", "energy per good bottle, Wh"),
        ("good_bottles_per_h", "good bottles per hour"),
        ("reject_pct", "rejects, %"),
        ("energy_kwh", "energy, kWh"),
        ("quality_violation_s", "outside quality limits, s"),
        ("pump_failures", "pump failures"),
        ("line_stops", "line stops"),
    ] {
        let v = |side: &str| {
            r[side][k]
                .as_f64()
                .map_or("-".to_string(), |v| format!("{v:.3}"))
        };
        let c = r["change_pct"][k]
            .as_f64()
            .map_or(String::new(), |c| format!("{c:+.1} %"));
        s.push_str(&format!(
            "{label:<28} {:>14} {:>16} {c:>9}\n",
            v("with_agents"),
            v("fixed_setpoints")
        ));
    }
    s
}

/// One seed's comparison from the key figures of its two runs (with the agents first).
pub fn pair(seed: u64, hours: f64, kpis: Vec<Value>) -> Result<Value> {
    let [with, without] = kpis.as_slice() else {
        anyhow::bail!("a comparison needs two runs, got {}", kpis.len());
    };
    Ok(json!({
        "seed": seed,
        "hours": hours,
        "with_agents": with,
        "fixed_setpoints": without,
        "change_pct": change(with, without),
    }))
}

/// The relative change of each figure from `baseline` to `agents`, %.
pub fn change(agents: &Value, baseline: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for k in [
        "energy_per_good_bottle_wh",
        "good_bottles_per_h",
        "reject_pct",
        "energy_kwh",
    ] {
        if let (Some(a), Some(b)) = (agents[k].as_f64(), baseline[k].as_f64())
            && b != 0.0
        {
            out.insert(k.to_string(), json!(100.0 * (a - b) / b));
        }
    }
    Value::Object(out)
}

/// An SVG of the comparisons in `runs` (each as [`pair`] makes it, with its `seed`):
/// energy per good bottle with the agents (green) and with fixed setpoints (grey), side by
/// side per seed, the change written above, and the seconds outside the quality limits
/// under each pair.
pub fn svg(runs: &[Value]) -> String {
    let wh = |r: &Value, side: &str| {
        r[side]["energy_per_good_bottle_wh"]
            .as_f64()
            .filter(|v| v.is_finite())
            .unwrap_or(0.0)
    };
    let (pad, group, h) = (50.0, 90.0, 320.0);
    let w = 2.0 * pad + group * runs.len().max(1) as f64;
    let top = runs
        .iter()
        .flat_map(|r| [wh(r, "with_agents"), wh(r, "fixed_setpoints")])
        .fold(1e-9, f64::max)
        * 1.15;
    let base = h - pad;
    let y = |v: f64| base - (h - 2.0 * pad) * v / top;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n<text x=\"{pad}\" y=\"20\">energy per good bottle, Wh: with the agents (green) and fixed setpoints (grey)</text>\n<line x1=\"{pad}\" x2=\"{:.1}\" y1=\"{base}\" y2=\"{base}\" stroke=\"black\"/>\n",
        w - pad
    );
    for (i, r) in runs.iter().enumerate() {
        let x0 = pad + group * i as f64 + 10.0;
        for (k, (side, colour)) in [("with_agents", "#2e7d32"), ("fixed_setpoints", "#9e9e9e")]
            .iter()
            .enumerate()
        {
            let v = wh(r, side);
            out += &format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"30\" height=\"{:.1}\" fill=\"{colour}\"><title>{v:.3} Wh</title></rect>\n",
                x0 + 32.0 * k as f64,
                y(v),
                base - y(v)
            );
        }
        let change = r["change_pct"]["energy_per_good_bottle_wh"]
            .as_f64()
            .map_or(String::new(), |c| format!("{c:+.1} %"));
        out += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\">{change}</text>\n<text x=\"{:.1}\" y=\"{:.1}\">seed {}</text>\n<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{} s / {} s out</text>\n",
            x0,
            y(wh(r, "with_agents").max(wh(r, "fixed_setpoints"))) - 6.0,
            x0 + 8.0,
            base + 16.0,
            r["seed"],
            x0,
            base + 30.0,
            r["with_agents"]["quality_violation_s"],
            r["fixed_setpoints"]["quality_violation_s"],
        );
    }
    out += "</svg>\n";
    out
}
